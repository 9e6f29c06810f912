"""``python -m backend train --config FILE [--resume auto|DIR] [--max-steps N]``: the MMVDM trainer's
command line (:mod:`.trainer`; config format in :mod:`.config`)."""

from __future__ import annotations

import argparse
import sys

from ..errors import EXIT_CANCELLED, EXIT_ERROR, MVP4DError
from .config import load_config
from .trainer import Trainer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backend train", description="train the MMVDM (see "
                                "backend/training/config.py for the config format)")
    p.add_argument("--config", required=True, help="training config (.json or .toml)")
    p.add_argument("--resume", default="auto", help="auto (latest checkpoint in run_dir), none, or a checkpoint folder")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps in all")
    p.add_argument("--stop-after", type=int, default=None, help="stop after this many steps in this invocation")
    p.add_argument("--run-dir", default=None, help="override run_dir")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="force a device")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m backend train --config FILE``; prints one JSON line per log message and a summary."""
    from ..events import EventSink

    args = build_parser().parse_args(argv)
    sink = EventSink(None, stream=sys.stdout)
    try:
        cfg = load_config(args.config, max_steps=args.max_steps, run_dir=args.run_dir, device=args.device)
        trainer = Trainer(cfg, log=lambda m: sink.log(m, stage="train"))
        summary = trainer.run(args.resume, stop_after=args.stop_after, install_signals=True)
    except MVP4DError as e:
        sink.error(e, stage="train")
        return EXIT_ERROR
    summary.pop("losses", None)
    sink.done(summary)
    return EXIT_CANCELLED if summary["status"] == "interrupted" else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
