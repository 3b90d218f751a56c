"""Export a trained model (a checkpoint file or a training checkpoint folder) as one safetensors file,
optionally with its weights stored in float16 (how the bundled ssa_tiny.synthref is shipped: half the
size; loading casts them back to float32).

    python scripts/export_model.py runs/synthref/checkpoints/step_0001500 \\
        src/ssa_rvos/weights/ssa_tiny_synthref.safetensors --fp16 --note "SynthRef, recipe synthref"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ssa_rvos.checkpoint import load_model, save_model
from ssa_rvos.pretrained import resolve_weights


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="checkpoint file, or a folder holding model.safetensors")
    p.add_argument("output", help="the .safetensors file to write")
    p.add_argument("--fp16", action="store_true", help="store floating-point weights as float16")
    p.add_argument("--note", default="", help="a line stored in the file's metadata under 'note'")
    args = p.parse_args(argv)
    if not args.output.endswith(".safetensors"):
        p.error(f"{args.output}: the output must be a .safetensors file")
    model = load_model(resolve_weights(args.source))
    extra = {"note": args.note} if args.note else {}
    save_model(model, args.output, dtype=torch.float16 if args.fp16 else None, extra=extra)
    size = Path(args.output).stat().st_size
    print(f"wrote {args.output} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
