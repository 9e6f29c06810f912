"""The human command line (backend/console.py): events drawn as bars and a summary; JSON stays for pipes."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from backend.console import EventConsole, human_console, wants_human_output
from backend.events import EventSink
from backend.protocol import Event

REPO = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _console(base: Path | None) -> tuple[EventConsole, io.StringIO]:
    buf = io.StringIO()
    return EventConsole(Console(file=buf, force_terminal=True, width=120), base), buf


def _plain(buf: io.StringIO) -> str:
    return ANSI.sub("", buf.getvalue())


def test_a_job_is_drawn_as_stages_with_eta_and_a_summary_with_absolute_paths(tmp_path):
    con, buf = _console(tmp_path)
    sink = EventSink(None, stream=con)  # the one event source, writing JSON lines into the console
    sink.stage("track", "skip")
    sink.stage("fit", "start")
    for done in range(0, 5):
        sink.emit(Event("progress", stage="fit", done=done, total=4 if done < 4 else 4, eta_s=30.0 - 7 * done))
    sink.warning("few views see the chin", stage="fit")
    sink.log("iter 4 loss 0.01", stage="fit")
    sink.stage("fit", "end")
    sink.done({"bundle": "outputs/avatar", "sheet": "outputs/contact_sheet.png"})
    con.close()
    text = _plain(buf)
    assert "{" not in text  # not one JSON line reached the person
    assert re.search(r"track .*done earlier", text)
    assert re.search(r"fit .*4/4 .*done in \d+\.\d s", text)
    assert re.search(r"ETA 30\.0 s", text)  # the backend's own ETA, as the progress event gave it
    assert "! warning fit: few views see the chin" in text and "iter 4 loss 0.01" in text
    assert "finished in" in text and "1 warning(s)" in text
    assert str((tmp_path / "outputs" / "avatar").resolve()) in text
    assert str((tmp_path / "outputs" / "contact_sheet.png").resolve()) in text
    assert con.outcome == "done" and con.warnings == 1


def test_an_error_shows_code_message_and_hint_and_foreign_lines_pass_through(tmp_path):
    con, buf = _console(tmp_path)
    con.write("a tool's own report line\n")
    con.write(Event("stage", stage="corpus", status="start").dumps() + "\n")
    con.write(Event("error", stage="corpus", code="DISK_FULL", message="no space left", hint="Free space.").dumps())
    con.close()  # the last line had no newline: still drawn
    text = _plain(buf)
    assert "a tool's own report line" in text
    assert "DISK_FULL in stage 'corpus': no space left" in text and "hint: Free space." in text
    assert re.search(r"corpus .*failed", text)
    assert con.outcome == "error"


def test_output_mode_follows_the_terminal_the_flag_and_the_override(monkeypatch):
    monkeypatch.delenv("MVP4D_OUTPUT", raising=False)
    assert wants_human_output(False, io.StringIO()) is False  # a pipe or file: JSON lines

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert wants_human_output(False, Tty()) is True
    assert wants_human_output(True, Tty()) is False  # --json wins on a terminal
    monkeypatch.setenv("MVP4D_OUTPUT", "json")
    assert wants_human_output(False, Tty()) is False
    monkeypatch.setenv("MVP4D_OUTPUT", "human")
    assert wants_human_output(False, io.StringIO()) is True


def test_human_console_replaces_stdout_only_while_enabled():
    before = sys.stdout
    with human_console(False) as con:
        assert con is None and sys.stdout is before
    buf = io.StringIO()
    with human_console(True, console=Console(file=buf, force_terminal=True, width=80)) as con:
        assert sys.stdout is con
        print(Event("log", message="hello").dumps())
    assert sys.stdout is before and "hello" in _plain(buf) and "{" not in _plain(buf)


def _cli_on(tty: bool, *args: str) -> str:
    """Run ``python -m backend ARGS`` with stdout on a pseudo-terminal (or a pipe); its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "MVP4D_OUTPUT"}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "backend", *args]
    if not tty:
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120).stdout
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=slave, stderr=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=120) == 1
    return ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))


def test_the_cli_draws_for_a_terminal_and_prints_json_to_a_pipe(tmp_path):
    missing = str(tmp_path / "no-job")
    human = _cli_on(True, "run", missing)
    assert "✗ BAD_INPUT" in human and "no job.json" in human and "hint:" in human
    assert '"type"' not in human
    piped = _cli_on(False, "run", missing)
    assert Event.loads(piped.strip().splitlines()[-1]).code == "BAD_INPUT"
    forced = _cli_on(True, "--json", "run", missing)  # --json on a terminal: the machine interface
    assert Event.loads(forced.strip().splitlines()[-1].strip()).code == "BAD_INPUT"
