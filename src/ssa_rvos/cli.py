"""The ``ssa-rvos`` command line (also ``python -m ssa_rvos``).

Every command reports bad input as one line on stderr and exits non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class UsageError(Exception):
    """Bad input from the command line: reported as one line, exit code 2."""


def _parts(model) -> list[tuple[str, object]]:
    return [
        ("clip (frozen)", model.backbone.clip),
        ("adapters", model.backbone.adapters),
        ("sentence projection", model.sentence_proj),
        ("pixel decoder", model.pixel_decoder),
        ("frame decoder", model.frame_decoder),
        ("video decoder", model.video_decoder),
    ]


def parameter_table(model) -> list[tuple[str, int, int]]:
    """(part, total, trainable) for every part of the model, then the whole model."""
    rows = []
    for name, module in _parts(model):
        params = list(module.parameters()) if module is not None else []
        rows.append((name, sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)))
    everything = list(model.parameters())
    rows.append(("total", sum(p.numel() for p in everything), sum(p.numel() for p in everything if p.requires_grad)))
    return rows


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from .build import build_model, model_config

    config = model_config(args.model)
    # The meta device allocates nothing: the paper model's 400M parameters are counted in a
    # second, with random CLIP weights and no download.
    with torch.device("meta"):
        model = build_model(config)
    print(f"model {args.model} (CLIP {config.clip.model_name}, hidden {config.hidden_dim}, {config.num_queries} queries)")
    print(f"{'part':<22}{'total':>14}{'trainable':>14}{'frozen':>14}")
    for name, total, trainable in parameter_table(model):
        print(f"{name:<22}{total:>14,}{trainable:>14,}{total - trainable:>14,}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .checkpoint import convert_official_checkpoint, save_model
    from .modeling import ClipConfig

    source, target = Path(args.input), Path(args.output)
    if not source.is_file():
        raise UsageError(f"{source}: no such file (expected the authors' .pth checkpoint)")
    if target.suffix != ".safetensors":
        raise UsageError(f"-o {target}: the output must be a .safetensors file")
    if target.is_dir():
        raise UsageError(f"-o {target}: is a directory")
    clip = ClipConfig(model_name=args.clip_model)
    if args.clip_config:
        try:
            arch = json.loads(Path(args.clip_config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UsageError(f"--clip-config {args.clip_config}: not a readable JSON file ({e})") from None
        arch = arch.get("clip_config", arch)  # accept the fixture's meta.json as well
        clip = replace(clip, architecture=arch)
    clip = replace(clip, word_mask_rule=args.word_mask)
    model, report = convert_official_checkpoint(source, clip=clip)
    save_model(model, target, extra={"converted_from": source.name})
    for line in report.lines():
        print(line)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"wrote {target} ({trainable:,} trainable parameters, CLIP {clip.model_name})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="ssa-rvos", description="Referring video object segmentation with SSA.")
    parser.add_argument("--version", action="version", version=f"ssa-rvos {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="parameter counts of a model, per part")
    p.add_argument("--model", default="ssa_convnext_large", help="preset name (default: %(default)s)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="convert an authors' checkpoint (.pth) to ssa-rvos safetensors")
    p.add_argument("input", help="checkpoint saved by the authors' code: {'model': state_dict, ...}")
    p.add_argument("-o", "--output", required=True, help="output .safetensors file")
    p.add_argument("--clip-model", default="convnext_large_d_320", help="open_clip architecture (default: %(default)s)")
    p.add_argument("--clip-config", help="open_clip model config JSON for a CLIP not known to open_clip")
    p.add_argument("--word-mask", choices=("eot", "nonzero"), default="eot",
                   help="valid word rule: 'eot' (ours) or 'nonzero' (the original's token != 0)")
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"ssa-rvos {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        print(f"ssa-rvos {args.command}: error: {e}".splitlines()[0], file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
