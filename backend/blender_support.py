"""Helpers the Blender add-on runs with the backend interpreter: ``python -m backend.blender_support``.

Blender's Python has neither torch nor a safe FLAME unpickler, so the add-on asks the backend for the
few things it cannot compute itself. Command (prints one JSON line on success, an ``error`` event and
exit code 1 on failure):

* ``export-flame SOURCE OUT.npz`` - any head model ``load_flame`` reads (``toy``, FLAME .pkl/.npz)
  as the plain ``.npz`` of :func:`backend.flame.save_flame_npz`, which the add-on's rig builder reads
  with numpy.
"""

from __future__ import annotations

import argparse
import json
import sys


from .errors import MVP4DError
from .events import EventSink


def cmd_export_flame(args: argparse.Namespace) -> dict:
    from .flame.io import load_flame, save_flame_npz

    model = load_flame(args.source)
    out = save_flame_npz(model, args.out)
    return {"npz": str(out), "model_id": model.model_id, "vertices": model.num_vertices,
            "expressions": model.num_expr}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.blender_support", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export-flame")
    p.add_argument("source")
    p.add_argument("out")
    p.set_defaults(func=cmd_export_flame)
    return run_json_command(parser.parse_args(argv))


def run_json_command(args: argparse.Namespace) -> int:
    """Run a parsed helper command: its result as one JSON line, or its error as one error event (exit 1)."""
    try:
        print(json.dumps(args.func(args)), flush=True)
        return 0
    except MVP4DError as e:
        EventSink(None, stream=sys.stdout).error(e)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
