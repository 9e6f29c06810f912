"""``python -m backend weights convert|fixture``: CAP4D checkpoint conversion and golden-fixture checks.

``weights convert --from cap4d_mmdm_100k.ckpt --out DIR`` writes the safetensors folder the ``cap4d``
generator loads (see :mod:`backend.cap4d.weights`). ``weights fixture FILE`` evaluates a golden fixture
(:mod:`backend.cap4d.fixture`) and prints one JSON object; exit 0 only when ``max_abs_error`` <= 1e-4.
"""

from __future__ import annotations

import argparse
import json

from ..errors import MVP4DError
from ..events import report_error


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backend weights")
    sub = p.add_subparsers(dest="action", required=True)
    c = sub.add_parser("convert", help="CAP4D .ckpt -> safetensors folder for --generator cap4d")
    c.add_argument("--from", dest="src", required=True, help="cap4d_mmdm_100k.ckpt")
    c.add_argument("--out", required=True, help="folder to create (must not exist)")
    c.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="stored dtype (fp32 keeps the file exact; the generator casts on load)")
    f = sub.add_parser("fixture", help="evaluate a CAP4D golden fixture (tiny_golden.safetensors format)")
    f.add_argument("file")
    args = p.parse_args(argv)
    try:
        if args.action == "convert":
            import torch

            from .weights import convert_checkpoint

            dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
            print(json.dumps(convert_checkpoint(args.src, args.out, dtype=dtype), sort_keys=True))
            return 0
        from .fixture import evaluate_fixture

        result = evaluate_fixture(args.file)
        print(json.dumps(result, sort_keys=True))
        return 0 if result["passed"] else 1
    except MVP4DError as e:
        return report_error(e)
