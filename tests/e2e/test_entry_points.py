"""Issue 14, class 5: every command turns every failure into one ``error`` event with a code and a hint.

The real CLI runs in a subprocess on hostile inputs: paths that are files, missing, too long or
symlink loops, job.json files in Latin-1 or nested 100 000 deep, a bundle whose safetensors header
nests deeply, bad command lines. Each must exit non-zero, end stdout with an error event (code,
message, hint) and print no traceback anywhere. ``INTERNAL`` (a true bug) names a log file that holds
the traceback instead.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from backend import cli
from backend.errors import ERROR_CODES

from .conftest import REPO

MINIMAL_JOB = {"schema_version": 1, "inputs": {"reference_image": "inputs/reference.png"}}


def _backend(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _job(root: Path, job_json: bytes | None = None) -> Path:
    job = root / "job"
    (job / "inputs").mkdir(parents=True)
    (job / "inputs" / "reference.png").write_bytes(b"\x89PNG fake")
    (job / "job.json").write_bytes(job_json if job_json is not None else json.dumps(MINIMAL_JOB).encode())
    return job


def _deep_bundle(path: Path) -> Path:
    header = b'{"__metadata__": {"x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


def _loop(root: Path) -> Path:
    (root / "loop-a").symlink_to(root / "loop-b")
    (root / "loop-b").symlink_to(root / "loop-a")
    return root / "loop-a"


LONG = "n" * 300  # longer than any file system's name limit (255 bytes)


# id -> (build the arguments from a temp folder, expected code, text the message must contain)
CASES = {
    "run-on-a-file": (lambda t: ["run", str(_touch(t / "a.txt"))], "BAD_INPUT", "no job.json"),
    "run-missing-folder": (lambda t: ["run", str(t / "missing")], "BAD_INPUT", "missing"),
    "run-long-name": (lambda t: ["run", str(t / LONG)], "BAD_INPUT", "too long"),
    "run-symlink-loop": (lambda t: ["run", str(_loop(t))], "BAD_INPUT", "loop-a"),
    "run-until-bogus": (lambda t: ["run", str(_job(t)), "--until", "bogus"], "BAD_INPUT", "--until"),
    "run-latin1-job": (lambda t: ["run", str(_job(t, '{"x": "café"}'.encode("latin-1")))], "BAD_INPUT", "UTF-8"),
    "run-deep-job": (lambda t: ["run", str(_job(t, b"[" * 200_000 + b"]" * 200_000))], "BAD_INPUT", "nests"),
    "run-nul-in-path": (lambda t: ["run", str(_job(t, json.dumps(
        {"schema_version": 1, "inputs": {"reference_image": "inputs/ref\u0000.png"}}).encode()))],
        "BAD_INPUT", "reference_image"),
    "run-job-json-is-folder": (lambda t: ["run", str(_job_json_dir(t))], "BAD_INPUT", "job.json"),
    "generate-out-is-file": (lambda t: ["generate", "--image", str(_touch(t / "face.png")), "--out",
                                        str(_touch(t / "out.txt"))], "BAD_INPUT", "out.txt"),
    "generate-image-loop": (lambda t: ["generate", "--image", str(_loop(t)), "--out", str(t / "j")],
                            "BAD_INPUT", "loop-a"),
    "generate-image-long-name": (lambda t: ["generate", "--image", str(t / (LONG + ".png")), "--out", str(t / "j")],
                                 "BAD_INPUT", "too long"),
    "generate-frames-bad": (lambda t: ["generate", "--image", str(_touch(t / "face.png")), "--out", str(t / "j"),
                                       "--frames", "6"], "BAD_INPUT", "num_frames"),
    "export-deep-header": (lambda t: ["export", str(_deep_bundle(t / "deep.safetensors")), "--format", "ply",
                                      "--out", str(t / "x.ply")], "BAD_INPUT", "deep.safetensors"),
    "export-bundle-is-folder": (lambda t: ["export", str(t), "--format", "ply", "--out", str(t / "x.ply")],
                                "BAD_INPUT", "bundle"),
    "export-missing": (lambda t: ["export", str(t / "none.safetensors"), "--format", "ply-sequence",
                                  "--out", str(t / "seq")], "BAD_INPUT", "none.safetensors"),
    "plan-usage": (lambda t: ["plan", "--preset", "bogus"], "BAD_INPUT", "command line"),
    "main-usage": (lambda t: ["teleport"], "BAD_INPUT", "command line"),
}

# These import torch (seconds each on a busy machine): a few, for the delegated tools.
SLOW_CASES = {
    "weights-check-file": (lambda t: ["weights", "check", str(_touch(t / "w.bin"))], "WEIGHTS_MISSING", "w.bin"),
    "dataset-validate-file": (lambda t: ["dataset", "validate", str(_touch(t / "d.bin"))], "BAD_INPUT", "d.bin"),
    "train-latin1-config": (lambda t: ["train", "--config", str(_write(t / "c.toml", "café = 1\n".encode("latin-1")))],
                            "BAD_INPUT", "c.toml"),
    "evaluate-missing": (lambda t: ["evaluate", str(t / "none.safetensors"), "--against", str(t)], "BAD_INPUT",
                         "none.safetensors"),
}


def _touch(p: Path) -> Path:
    p.write_bytes(b"x")
    return p


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def _job_json_dir(t: Path) -> Path:
    job = _job(t)
    (job / "job.json").unlink()
    (job / "job.json").mkdir()
    return job


def _assert_clean_error(proc: subprocess.CompletedProcess, code: str, text: str) -> dict:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stdout and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, proc.stderr[-2000:]
    last = json.loads(lines[-1])
    assert last["type"] == "error" and last["code"] in ERROR_CODES, last
    assert last["message"] and last["hint"] and "\n" not in last["message"]
    assert (last["code"], text in last["message"]) == (code, True), last
    return last


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_ends_in_one_clean_error_event(tmp_path, case):
    make, code, text = CASES[case]
    _assert_clean_error(_backend(*make(tmp_path)), code, text)
    assert not (tmp_path / "missing").exists()  # `run` on a missing folder creates nothing


@pytest.mark.parametrize("case", list(SLOW_CASES))
def test_delegated_tools_end_in_one_clean_error_event(tmp_path, case):
    make, code, text = SLOW_CASES[case]
    _assert_clean_error(_backend(*make(tmp_path)), code, text)


def test_read_only_file_system_is_not_writable(tmp_path):
    target = Path("/sys/mvp4d-test-job")  # sysfs: read-only in containers, refused otherwise
    try:
        target.mkdir()
    except OSError:
        pass
    else:  # pragma: no cover - a machine where /sys takes new folders: nothing to test here
        target.rmdir()
        pytest.skip("/sys is writable here")
    proc = _backend("generate", "--image", str(_touch(tmp_path / "face.png")), "--out", str(target))
    last = _assert_clean_error(proc, "NOT_WRITABLE", str(target))
    assert "permissions" in last["hint"]


def test_a_bug_is_internal_with_its_traceback_in_the_job_log(tmp_path, monkeypatch, capsys):
    job = _job(tmp_path)

    def bug(*a, **kw):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("backend.jobs.check_job", bug)
    assert cli.main(["run", str(job)]) == 1
    out, err = capsys.readouterr()
    last = json.loads(out.splitlines()[-1])
    assert last["code"] == "INTERNAL" and "ZeroDivisionError" in last["message"]
    logs = list((job / "logs").iterdir())
    assert len(logs) == 1 and str(logs[0]) in last["message"] and str(logs[0]) in last["hint"]
    assert "Traceback" in logs[0].read_text() and "a bug" in logs[0].read_text()
    assert "Traceback" not in out + err


def test_a_bug_outside_a_job_logs_to_the_temp_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))

    def bug(args):
        raise KeyError("doctor bug")

    monkeypatch.setattr(cli, "cmd_doctor", bug)
    assert cli.main(["doctor"]) == 1
    out, err = capsys.readouterr()
    last = json.loads(out.splitlines()[-1])
    assert last["code"] == "INTERNAL"
    (log,) = (tmp_path / "mvp4d-logs").iterdir()
    assert str(log) in last["message"] and "KeyError" in log.read_text() and "Traceback" not in out + err


def test_broken_stdout_does_not_crash_the_guard(tmp_path, monkeypatch):
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stdout", closed)
    assert cli.main(["run", str(tmp_path / "nope")]) == 1
    assert not (tmp_path / "nope").exists()


def test_help_lists_every_command_and_option():
    proc = _backend("run", "--help")
    assert proc.returncode == 0 and "job_dir" in proc.stdout and "--until" in proc.stdout
    proc = _backend("--help")
    assert proc.returncode == 0 and "--json" in proc.stdout
    for name in ("doctor", "track", "corpus", "generate", "run", "demo", *cli.DELEGATES):
        assert name in proc.stdout, name


