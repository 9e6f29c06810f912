"""A stand-in for ``python -m backend run JOB`` that misbehaves on purpose (crash, hang, slow, error).

The tests point the add-on's backend interpreter at a tiny shell script that runs this file, like a
user pointing the preferences at a broken Python. The mode comes from ``MVP4D_FAKE_MODE``.
"""

import json
import os
import signal
import sys
import time


JOB = {"dir": "."}


def emit(**ev):
    """Like the real backend: one JSON line on stdout and appended to the job's events.jsonl."""
    ev.setdefault("t", time.time())
    line = json.dumps(ev)
    print(line, flush=True)
    if os.path.isdir(JOB["dir"]):
        with open(os.path.join(JOB["dir"], "events.jsonl"), "a") as fh:
            fh.write(line + "\n")


def main():
    args = [a for a in sys.argv[1:] if a not in ("-m", "backend")]
    job = args[1] if len(args) > 1 else "."
    JOB["dir"] = job
    mode = os.environ.get("MVP4D_FAKE_MODE", "done")
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("flag", True))
    emit(type="stage", stage="track", status="start")
    emit(type="progress", stage="track", done=1, total=3, eta_s=2.0)
    if mode == "warn":
        emit(type="warning", stage="track", message="animation has 30 frames, the job needs 9: using its first frames")
    if mode == "crash":
        print("Fatal Python error: Segmentation fault", file=sys.stderr, flush=True)
        os._exit(139)
    if mode == "error":
        emit(type="error", stage="track", code="NO_FACE", message="no face found in the image",
             hint="Use a photo where one face is clearly visible.")
        sys.exit(1)
    if mode == "hang":
        time.sleep(120)
    if mode in ("slow", "finish_later"):
        t0 = time.time()
        while time.time() - t0 < (2.0 if mode == "finish_later" else 60.0):
            if stop["flag"] or os.path.exists(os.path.join(job, "cancel")):
                emit(type="error", stage="track", code="CANCELLED", message="The job was cancelled (signal).",
                     hint="Run the job again to resume where it stopped.")
                sys.exit(130)
            emit(type="progress", stage="track", done=2, total=3, eta_s=1.0)
            time.sleep(0.2)
    emit(type="stage", stage="track", status="end")
    emit(type="done", outputs={"track": "stages/track"})


if __name__ == "__main__":
    main()
