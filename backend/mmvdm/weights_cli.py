"""``python -m backend weights build|check``: make an MMVDM folder from CogVideoX-2B, or check one."""

from __future__ import annotations

import argparse
import json



def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backend weights")
    sub = p.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="initial MMVDM weights from a local CogVideoX-2B diffusers folder")
    b.add_argument("--from", dest="src", required=True, help="CogVideoX-2B folder (transformer/, vae/, scheduler/)")
    b.add_argument("--out", required=True, help="MMVDM folder to write")
    b.add_argument("--conditioning-channels", type=int, default=59)
    b.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    b.add_argument("--attention-scale-mode", choices=("printed", "entropy", "none"), default="printed")
    c = sub.add_parser("check", help="check an MMVDM folder without loading it")
    c.add_argument("folder")
    args = p.parse_args(argv)
    # failures propagate to ``backend.cli.main``, which reports them as one ``error`` event
    if args.action == "build":
        import torch

        from .weights import build_mmvdm_from_cogvideox

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
        out = build_mmvdm_from_cogvideox(args.src, args.out, args.conditioning_channels, dtype,
                                         attention_scale_mode=args.attention_scale_mode)
        print(json.dumps({"built": str(out)}))
    else:
        from .weights import check_weights

        print(json.dumps(check_weights(args.folder), indent=2, sort_keys=True, default=str))
    return 0
