"""``python -m backend ...``: the backend's command line (``python -m backend --help`` lists the commands).

Every command reports through events (:mod:`backend.events`): one JSON object per line on stdout when
stdout is a pipe or ``--json`` is given, drawn as progress bars and a summary on a terminal
(:mod:`backend.console`). Failures end with an ``error`` event and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import EXIT_CANCELLED, EXIT_ERROR, Cancelled, MVP4DError, bad_input
from .events import CancelToken, EventSink
from .executors.options import add_executor_options
from .protocol import (
    CAP4D_QUALITY,
    DTYPES,
    GENERATORS,
    GUIDANCE_MODES,
    PRESETS,
    SAMPLERS,
    VRAM_PRESETS,
    AnimationSpec,
    CamerasSpec,
    ExecutorSpec,
    GeneratorSpec,
    InputsSpec,
    JobSpec,
)


def _flame_source(value: str) -> str:
    """``toy`` or an absolute path (the spec stores FLAME as a resource locator, not a job path)."""
    return value if value == "toy" else str(Path(value).expanduser().resolve())


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import doctor_report

    report = doctor_report(flame=args.flame, weights=args.weights)
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


def cmd_track(args: argparse.Namespace) -> int:
    from .fsutil import check_output_folder
    from .protocol import ADDON_RUN_FILE
    from .tracking import TRACK_FILES, track_image

    out = Path(args.out)
    try:  # the folder is the user's: write into it only when it is new, empty or an earlier track's
        check_output_folder(out, {*TRACK_FILES.values(), "events.jsonl", ADDON_RUN_FILE})
    except MVP4DError as e:
        EventSink(None, stream=sys.stdout).error(e, stage="track")
        return EXIT_ERROR
    sink = EventSink(out / "events.jsonl")
    try:
        sink.stage("track", "start")
        res = track_image(args.image, flame_source=_flame_source(args.flame), out_dir=out,
                          warn=lambda m: sink.warning(m, stage="track"))
        sink.log(
            f"landmark error {res.mean_error_px:.2f} px = {100 * res.relative_error:.2f} % of the face box",
            stage="track",
        )
        sink.stage("track", "end")
        sink.done({"flame_params": "flame_params.npz", "camera": "camera.json", "matted": "matted.png"})
        return 0
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - reported as an event, in the file too
        from .failures import classify, job_log_dir

        err = classify(e, log_dir=job_log_dir(out))
        sink.error(err, stage="track")
        return EXIT_CANCELLED if isinstance(err, Cancelled) else EXIT_ERROR


def _job_from_args(args: argparse.Namespace) -> JobSpec:
    return JobSpec(
        fit={} if args.fit_iterations is None else {"iterations": args.fit_iterations},
        inputs=InputsSpec(reference_image="", flame_model=_flame_source(args.flame)),
        animation=AnimationSpec(num_frames=args.frames),
        cameras=CamerasSpec(preset=args.preset, resolution=args.resolution),
        generator=GeneratorSpec(
            name=args.generator, weights=None if args.weights is None else str(Path(args.weights).resolve()),
            seed=args.seed, sampler=args.sampler, guidance=args.guidance, steps_key=args.steps_key,
            steps_other=args.steps_other, vram=args.vram, dtype=args.dtype, quality=args.quality,
        ),
        executor=_executor_spec(args) or ExecutorSpec(),
    )


def _executor_spec(args: argparse.Namespace) -> ExecutorSpec | None:
    """--executor/--ray-address/--gpus-per-unit/--fit-device/--fit-gpus (None: none given)."""
    from .executors.options import executor_spec

    return executor_spec(args)


def _run(job_dir: Path, until: str | None, executor: ExecutorSpec | None = None) -> int:
    from .jobs import run_job

    cancel = CancelToken(job_dir / "cancel")
    cancel.install_signal_handlers()
    return run_job(job_dir, until=until, cancel=cancel, executor=executor)


def _create_and_run(args: argparse.Namespace, image: str | Path, until: str | None) -> int:
    from .jobs import create_job

    out = Path(args.out)
    try:
        create_job(out, image, _job_from_args(args), animation_file=args.animation)
    except MVP4DError as e:
        EventSink(None).error(e)
        return EXIT_ERROR
    return _run(out, until)


def cmd_corpus(args: argparse.Namespace) -> int:
    return _create_and_run(args, args.image, until="corpus")


def cmd_generate(args: argparse.Namespace) -> int:
    """The whole job: track -> corpus -> fit -> export."""
    return _create_and_run(args, args.image, until=None)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        executor = _executor_spec(args)
    except MVP4DError as e:
        EventSink(None).error(e)
        return EXIT_ERROR
    return _run(Path(args.job_dir), until=args.until, executor=executor)


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on the embedded default: astronaut photo, toy head, projection generator."""
    import tempfile

    from .tracking.image import default_reference_image, save_png_atomic

    with tempfile.TemporaryDirectory(prefix="mvp4d-demo-") as tmp:  # never next to the job: not ours
        image = Path(tmp) / "astronaut.png"
        save_png_atomic(image, default_reference_image())
        return _create_and_run(args, image, until=None)


# Sub-tools that own their argument parsing: ``python -m backend <tool> [<sub>] ...`` forwards the rest.
DELEGATES: dict[str, dict[str, str]] = {
    "bench": {"mmvdm": "backend.mmvdm.bench", "fit": "backend.avatar.bench", "cap4d": "backend.cap4d.bench",
              "track-video": "backend.tracking.video_bench", "scaling": "backend.executors.scaling"},
    "plan": {"": "backend.mmvdm.plan"},
    "weights": {"build": "backend.mmvdm.weights_cli", "init": "backend.mmvdm.weights_cli",
                "check": "backend.mmvdm.weights_cli",
                "convert": "backend.cap4d.weights_cli", "fixture": "backend.cap4d.weights_cli"},
    "export": {"": "backend.avatar.export"},
    "render": {"": "backend.avatar.render_cli"},
    "train": {"": "backend.training.train_cli"},
    "experiment": {"cfg-ablation": "backend.training.experiment"},
    "dataset": {"validate": "backend.training.data", "synthetic": "backend.training.synthetic"},
    "gpu-check": {"": "backend.gpucheck.runner"},
    "track-video": {"": "backend.tracking.video_cli"},
    "evaluate": {"": "backend.evaluation.evaluate"},
}


def cmd_delegate(args: argparse.Namespace) -> int:
    import importlib

    table = DELEGATES[args.command]
    rest = list(args.rest)
    if "" in table:
        module, argv = table[""], rest
    else:
        if not rest or rest[0] not in table:
            print(f"usage: python -m backend {args.command} {{{','.join(table)}}} ...", file=sys.stderr)
            return 2
        module, argv = table[rest[0]], (rest if args.command == "weights" else rest[1:])
    return int(importlib.import_module(module).main(argv))


def _add_job_options(p: argparse.ArgumentParser, *, preset: str) -> None:
    p.add_argument("--out", required=True, help="job folder to create (or resume)")
    p.add_argument("--preset", default=preset, choices=list(PRESETS), help="camera ring and quality preset")
    p.add_argument("--flame", default="toy", help="'toy' (embedded) or a FLAME .pkl/.npz file")
    p.add_argument("--animation", default=None, help=".npz of FLAME parameters driving the avatar")
    p.add_argument("--frames", type=int, default=None, help="frames per view, 1 + 4k (default: the preset's)")
    p.add_argument("--resolution", type=int, default=None, help="image size in pixels (default: the preset's)")
    p.add_argument("--generator", default="projection", choices=list(GENERATORS))
    p.add_argument("--weights", default=None,
                   help="weights: MMVDM folder (--generator mmvdm) or CAP4D folder/.ckpt (--generator cap4d)")
    p.add_argument("--quality", default=None, choices=list(CAP4D_QUALITY),
                   help="CAP4D image budget: low 210x50, medium 420x50, high 840x100 (default: from --preset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default="joint", choices=list(SAMPLERS), help="MMVDM sampler")
    p.add_argument("--guidance", default="multiview", choices=list(GUIDANCE_MODES), help="MMVDM guidance")
    p.add_argument("--steps-key", type=int, default=100, help="DDIM steps of key-view passes")
    p.add_argument("--steps-other", type=int, default=50, help="DDIM steps of cluster passes")
    p.add_argument("--vram", default=None, choices=list(VRAM_PRESETS), help="MMVDM/CAP4D memory preset")
    p.add_argument("--dtype", default="auto", choices=list(DTYPES))
    p.add_argument("--fit-iterations", type=int, default=None, help="avatar fitting iterations (default: preset's)")
    add_executor_options(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true",
                        help="print events as JSON lines even on a terminal (always so when stdout is a pipe)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("doctor", help="report versions, device, gsplat path, FLAME and weights (JSON)")
    p.add_argument("--flame", default=None, help="FLAME file to check (default: $MVP4D_FLAME)")
    p.add_argument("--weights", default=None, help="weights folder to check (default: $MVP4D_WEIGHTS)")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("track", help="fit FLAME and the camera to one reference image")
    p.add_argument("--image", required=True)
    p.add_argument("--flame", default="toy")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_track)

    p = sub.add_parser("corpus", help="create a job and run it up to the multi-view corpus")
    p.add_argument("--image", required=True)
    _add_job_options(p, preset="preview")
    p.set_defaults(func=cmd_corpus)

    p = sub.add_parser("generate", help="photo -> avatar: track, corpus, fit and export (outputs/ in the job)")
    p.add_argument("--image", required=True)
    _add_job_options(p, preset="preview")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("run", help="run or resume a job folder")
    p.add_argument("job_dir")
    p.add_argument("--until", default=None, help="stop after this stage")
    add_executor_options(p)  # given: replaces job.json's executor for this run
    p.set_defaults(func=cmd_run)

    helps = {"bench": "benchmarks: 'bench mmvdm ...', 'bench fit ...', 'bench cap4d ...', 'bench track-video ...' (JSON), "
                      "'bench scaling' (GPUs)",
             "plan": "print the MMVDM sampling plan for a preset",
             "weights": "'weights build --from COGVIDEOX_DIR --out DIR', 'weights init --size tiny --out DIR' "
                        "(random), 'weights check DIR', 'weights convert --from CAP4D.ckpt --out DIR' "
                        "or 'weights fixture FILE'",
             "export": "export an avatar bundle: 'export BUNDLE --format ply|ply-sequence|cap4d-animated|glb|spz'",
             "render": "render an avatar: 'render BUNDLE --view NAME --frame F --out PNG' (or --turntable N)",
             "train": "train the MMVDM: 'train --config FILE' (multi-GPU: accelerate launch -m backend train ...)",
             "experiment": "'experiment cfg-ablation [--preset smallest|larger]': the paper's Table 7 at small scale",
             "dataset": "'dataset validate DIR [--full]' or 'dataset synthetic OUT ...': training data tools",
             "gpu-check": "measure every GPU path in one short run (docs/benchmarks.md, 'GPU check')",
             "track-video": "performance clip -> animation: 'track-video --video FILE|DIR --out DIR' (FLAME per frame)",
             "evaluate": "'evaluate JOB|BUNDLE --against GT_DIR': PSNR, SSIM, JOD (+ LPIPS, CSIM) per view, like "
                         "the paper's Table 1"}
    for name in DELEGATES:
        p = sub.add_parser(name, help=helps[name], add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=cmd_delegate)

    p = sub.add_parser("demo", help="run the main job on the embedded default (astronaut, toy head)")
    _add_job_options(p, preset="preview")
    p.set_defaults(func=cmd_demo)
    return parser


def _job_dir_of(args: argparse.Namespace | None) -> str | None:
    """The job folder a command works on (where an INTERNAL error's log goes), if any."""
    if args is None:
        return None
    return getattr(args, "job_dir", None) or getattr(args, "out", None)


def main(argv: list[str] | None = None) -> int:
    """Run one command; whatever goes wrong ends as one ``error`` event on stdout and a non-zero exit.

    This guard is the last line of every entry point, delegated tools included: :func:`classify`
    turns the exception into a typed error (``INTERNAL`` only for bugs, with its traceback in a log
    file named in the message), so no traceback reaches the console. Usage errors keep argparse's
    message on stderr and exit 2, with a ``BAD_INPUT`` event on stdout as well.

    On a terminal the events are drawn for a person (:mod:`backend.console`); with ``--json``, or
    when stdout is a pipe (the add-on), they stay one JSON object per line.
    """
    from .console import human_console, wants_human_output

    argv = list(sys.argv[1:] if argv is None else argv)
    json_lines = _take_json_flag(argv)
    with human_console(wants_human_output(json_lines)) as console:
        return _main(argv, console)


def _take_json_flag(argv: list[str]) -> bool:
    """Remove ``--json`` (before the command, or anywhere in a job command's options); True if present.

    Delegated tools keep theirs (``plan --json`` is the plan tool's own option).
    """
    if argv[:1] == ["--json"]:
        del argv[0]
        return True
    if "--json" in argv and not (argv and argv[0] in DELEGATES):
        argv.remove("--json")
        return True
    return False


def _main(argv: list[str], console) -> int:  # noqa: ANN001 - console.EventConsole | None
    from .failures import classify, job_log_dir

    args: argparse.Namespace | None = None
    try:
        if argv and argv[0] in DELEGATES:  # argparse's REMAINDER drops leading options, so route directly
            return cmd_delegate(argparse.Namespace(command=argv[0], rest=argv[1:]))
        args = build_parser().parse_args(argv)
        if console is not None:
            console.base_dir = Path(_job_dir_of(args)) if _job_dir_of(args) else None
        return int(args.func(args))
    except SystemExit as e:
        if e.code in (None, 0) or not isinstance(e.code, int):
            raise
        tool = " ".join(["python -m backend", *argv[:1]])
        err = bad_input(f"the command line is not valid for '{tool}' (argparse's message is on stderr)",
                        f"Run '{tool} --help' for the options.")
        EventSink(None, stream=sys.stdout).error(err)
        return e.code
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - the last line of defence
        err = classify(e, log_dir=job_log_dir(_job_dir_of(args)))
        EventSink(None, stream=sys.stdout).error(err)
        return EXIT_CANCELLED if isinstance(err, Cancelled) else EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
