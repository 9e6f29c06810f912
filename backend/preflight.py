"""Everything about a job that can be checked before a stage starts, in one place.

:func:`check_job` runs when a job is created (:func:`backend.jobs.create_job`) and again when it is run
(:func:`backend.jobs.run_job`, before the first stage and before the heavy stage modules are even
imported), so a hand-edited ``job.json`` is caught as early as one written by the CLI. What it covers:

* the spec itself: :meth:`JobSpec.from_json` has checked every field's type and range already
  (``protocol.Rule`` and its helpers: bool is not an int, numbers finite, camera matrices invertible);
* the ``fit`` block: every setting against ``avatar.settings.FIT_RULES``;
* ``run --until``: one of the job's stages;
* the generator's needs (CAP4D needs the real FLAME model: ``FLAME_REQUIRED``);
* the job's input files: the reference image is a file, the FLAME parameter and animation ``.npz``
  files hold finite real arrays of consistent shapes (:func:`backend.flame.lbs.read_param_arrays`),
  a ``builtin:`` animation exists.

Each failure is ``BAD_INPUT`` naming the field (``job.json: fit.lr_position ...``, ``--until ...``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .errors import MVP4DError, bad_input
from .protocol import BUILTIN_ANIMATIONS, JOB_STAGES, JobSpec, resolve_job_path


def check_until(until: str | None, stage_names: Sequence[str] = JOB_STAGES) -> None:
    """``--until`` names one of the job's stages (or is not given)."""
    if until is not None and until not in stage_names:
        raise bad_input(f"--until must be one of {', '.join(stage_names)} (got {until!r:.60})",
                        "Pass the name of the stage to stop after.")


def check_generator(spec: JobSpec) -> None:
    """What the chosen generator needs of the rest of the spec."""
    if spec.generator.name == "cap4d" and spec.inputs.flame_model == "toy":
        raise MVP4DError("FLAME_REQUIRED", "the CAP4D generator needs the real FLAME model; the embedded toy head "
                         "cannot be used")


def check_fit(spec: JobSpec) -> None:
    from .avatar.settings import FitSettings

    FitSettings.from_json(spec.fit, spec.cameras.preset)


def check_inputs(spec: JobSpec, job_dir: str | os.PathLike) -> None:
    """The files the spec names inside the job folder exist and are what the spec says they are."""
    image = resolve_job_path(job_dir, spec.inputs.reference_image, "job.json: inputs.reference_image")
    if not image.is_file():
        raise bad_input(f"job.json: inputs.reference_image {spec.inputs.reference_image} is not a file in the job",
                        "Create the job again with the photo (python -m backend generate or the add-on).")
    if spec.inputs.flame_params:
        from .flame.lbs import read_param_arrays

        read_param_arrays(resolve_job_path(job_dir, spec.inputs.flame_params, "job.json: inputs.flame_params"))
    check_animation_source(spec.animation.source, job_dir)


def check_animation_source(source: str, job_dir: str | os.PathLike | None) -> None:
    if source.startswith("builtin:"):
        if source.split(":", 1)[1] not in BUILTIN_ANIMATIONS:
            raise bad_input(f"job.json: animation.source {source!r:.60} is not a built-in animation",
                            f"Use one of {', '.join('builtin:' + n for n in BUILTIN_ANIMATIONS)} or an .npz.")
        return
    from .flame.lbs import read_param_arrays

    path = Path(source) if job_dir is None else resolve_job_path(job_dir, source, "job.json: animation.source")
    read_param_arrays(path)


def check_job(spec: JobSpec, job_dir: str | os.PathLike | None = None, *, until: str | None = None,
              stage_names: Sequence[str] = JOB_STAGES) -> None:
    """Every check that can run before a stage starts (see the module docstring); ``BAD_INPUT`` on the first
    failure. ``job_dir`` None checks the spec alone (a job being created has no files yet)."""
    check_until(until, stage_names)
    JobSpec.from_json(spec.to_json())  # a spec built in code gets the same field checks as job.json
    check_generator(spec)
    check_fit(spec)
    if job_dir is not None:
        spec.check_paths(job_dir)
        check_inputs(spec, job_dir)
