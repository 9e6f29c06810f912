"""``python -m backend weights build|init|check``: an MMVDM folder from CogVideoX-2B or random weights, or check one."""

from __future__ import annotations

import argparse
import json

from ..errors import MVP4DError
from ..events import report_error
from .attention import ATTENTION_SCALE_MODES, DEFAULT_ATTENTION_SCALE_MODE



def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backend weights")
    sub = p.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="initial MMVDM weights from a local CogVideoX-2B diffusers folder")
    b.add_argument("--from", dest="src", required=True, help="CogVideoX-2B folder (transformer/, vae/, scheduler/)")
    b.add_argument("--out", required=True, help="MMVDM folder to write")
    b.add_argument("--conditioning-channels", type=int, default=59)
    b.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    b.add_argument("--attention-scale-mode", choices=ATTENTION_SCALE_MODES, default=DEFAULT_ATTENTION_SCALE_MODE)
    i = sub.add_parser("init", help="an MMVDM folder with random weights (smoke tests, benchmarks; outputs noise)")
    i.add_argument("--size", choices=("tiny", "2b"), default="tiny")
    i.add_argument("--out", required=True, help="MMVDM folder to write (must not exist)")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--conditioning-channels", type=int, default=59)
    i.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="fp32")
    c = sub.add_parser("check", help="check an MMVDM folder without loading it")
    c.add_argument("folder")
    args = p.parse_args(argv)
    try:  # typed errors as one error event; anything else reaches backend.cli.main's guard
        if args.action in ("build", "init"):
            import torch

            from ..fsutil import check_output_folder
            from .weights import build_mmvdm_from_cogvideox, init_random_mmvdm

            check_output_folder(args.out, frozenset())  # a new or empty folder, checked before the long work

            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
        if args.action == "init":
            out = init_random_mmvdm(args.out, args.size, args.seed, args.conditioning_channels, dtype)
            print(json.dumps({"initialised": str(out), "size": args.size, "seed": args.seed}))
        elif args.action == "build":
            out = build_mmvdm_from_cogvideox(args.src, args.out, args.conditioning_channels, dtype,
                                             attention_scale_mode=args.attention_scale_mode)
            print(json.dumps({"built": str(out)}))
        else:
            from .weights import check_weights

            print(json.dumps(check_weights(args.folder), indent=2, sort_keys=True, default=str))
    except MVP4DError as e:
        return report_error(e)
    return 0
