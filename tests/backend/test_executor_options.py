"""The executor's settings: job.json's ``executor`` object, the command-line options, typed errors (no Ray needed)."""

from __future__ import annotations

import sys

import pytest

from backend.cli import _job_from_args, build_parser
from backend.errors import MVP4DError
from backend.executors import make_executor
from backend.executors.local import LocalExecutor
from backend.executors.options import executor_args, executor_spec
from backend.protocol import ExecutorSpec, InputsSpec, JobSpec


def test_job_json_records_the_executor_and_old_jobs_default_to_local():
    spec = JobSpec(inputs=InputsSpec(reference_image="inputs/reference.png"),
                   executor=ExecutorSpec(name="ray", ray_address="auto", gpus_per_unit=1, fit_gpus=1))
    back = JobSpec.loads(spec.dumps())
    assert back.executor == spec.executor
    d = spec.to_json()
    del d["executor"]  # a job written before executors existed
    assert JobSpec.from_json(d).executor == ExecutorSpec()


@pytest.mark.parametrize("bad", [{"name": "slurm"}, {"ray_address": "no port"}, {"gpus_per_unit": -1},
                                 {"fit_device": "gpu7"}, {"retries": 1.5}, {"workers": 3}])
def test_bad_executor_settings_are_bad_input(bad):
    with pytest.raises(MVP4DError) as e:
        ExecutorSpec.from_json(bad)
    assert e.value.code == "BAD_INPUT"


def test_cli_options_go_into_job_json_and_round_trip():
    args = build_parser().parse_args(["corpus", "--image", "x.png", "--out", "job", "--executor", "ray",
                                      "--ray-address", "10.1.2.3:6379", "--gpus-per-unit", "0.5", "--fit-gpus", "1"])
    spec = _job_from_args(args)
    assert spec.executor == ExecutorSpec(name="ray", ray_address="10.1.2.3:6379", gpus_per_unit=0.5, fit_gpus=1.0)
    again = build_parser().parse_args(["run", "job", *executor_args(spec.executor)])
    assert executor_spec(again) == spec.executor
    assert executor_spec(build_parser().parse_args(["run", "job"])) is None  # none given: job.json's executor
    implied = executor_spec(build_parser().parse_args(["run", "job", "--ray-address", "auto"]))
    assert implied.name == "ray"  # a Ray option alone means the Ray executor
    assert _job_from_args(build_parser().parse_args(["corpus", "--image", "x", "--out", "j"])).executor == ExecutorSpec()


def test_local_is_the_default_and_ray_missing_is_a_typed_error(monkeypatch):
    assert isinstance(make_executor(None), LocalExecutor)
    assert isinstance(make_executor(ExecutorSpec()), LocalExecutor)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the 'scale' extra were not installed
    with pytest.raises(MVP4DError) as e:
        make_executor(ExecutorSpec(name="ray"))
    assert e.value.code == "EXECUTOR_UNAVAILABLE"
