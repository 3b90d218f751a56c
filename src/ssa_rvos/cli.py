"""The ``ssa-rvos`` command line (also ``python -m ssa_rvos``).

Every command reports bad input as one line on stderr and exits non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
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


DATASETS = ("mevis", "ytvos", "davis")
DEFAULT_SPLIT = {"mevis": "valid_u", "ytvos": "valid", "davis": "valid"}


def _open_dataset(name: str, root: str, split: str | None):
    from .data import MeViS, RefDAVIS17, RefYouTubeVOS

    readers = {"mevis": MeViS, "ytvos": RefYouTubeVOS, "davis": RefDAVIS17}
    return readers[name](root, split or DEFAULT_SPLIT[name])


def _load_model(spec: str, device: str | None):
    import torch

    from .build import list_models
    from .checkpoint import load_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = Path(spec)
    if path.is_file():
        return load_model(path, device=device)
    if spec in list_models():
        raise UsageError(f"--model {spec}: this preset has no trained weights; pass a checkpoint file "
                         "(e.g. one made by `ssa-rvos convert`)")
    raise UsageError(f"--model {spec}: no such checkpoint file")


def _predict(args: argparse.Namespace, dataset, output: Path) -> None:
    from .evaluation.predict import predict_split

    model = _load_model(args.model, args.device)
    stats = predict_split(model, dataset, output, selection=args.selection, short_side=args.short_side,
                          frame_chunk=args.frame_chunk, threshold=args.threshold, amp=args.amp, progress=True)
    print(f"predicted {stats.written} expressions, {stats.skipped} already in {output}", file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> int:
    dataset = _open_dataset(args.dataset, args.root, args.split)
    _predict(args, dataset, Path(args.output))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from .data.masks import write_json_atomic
    from .evaluation.evaluate import evaluate_predictions

    if bool(args.predictions) == bool(args.model):
        raise UsageError("give either --predictions DIR or --model NAME_OR_PATH")
    if args.output and Path(args.output).is_dir():
        raise UsageError(f"--output {args.output}: is a directory (expected a .json file)")
    dataset = _open_dataset(args.dataset, args.root, args.split)
    if not dataset.has_masks:
        raise UsageError(f"--split {dataset.split}: {dataset.name} has no ground truth for it (a server split: "
                         "use `ssa-rvos predict` and `ssa-rvos submit`)")
    scratch = None
    predictions = Path(args.predictions) if args.predictions else None
    try:
        if predictions is None:
            if args.save_predictions:
                predictions = Path(args.save_predictions)
            else:
                scratch = tempfile.mkdtemp(prefix="ssa-rvos-predictions-")
                predictions = Path(scratch)
            _predict(args, dataset, predictions)
        report = evaluate_predictions(dataset, predictions, workers=args.workers, progress=True)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    print(report.table())
    if report.missing:
        shown = ", ".join(report.missing[:10]) + (" ..." if len(report.missing) > 10 else "")
        print(f"{len(report.missing)} expressions have no predictions and score 0: {shown}")
    if report.incomplete:
        shown = ", ".join(report.incomplete[:10]) + (" ..." if len(report.incomplete) > 10 else "")
        print(f"{len(report.incomplete)} expressions miss some frames (scored as empty masks): {shown}")
    if args.output:
        write_json_atomic(args.output, report.to_dict())
        print(f"wrote {args.output}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from .evaluation.submit import check_submission, write_submission

    dataset = _open_dataset(args.dataset, args.root, args.split or "valid")
    if args.check:
        problems = check_submission(dataset, args.check, progress=True)
        for line in problems[:args.max_problems]:
            print(line)
        if len(problems) > args.max_problems:
            print(f"... and {len(problems) - args.max_problems} more")
        if problems:
            print(f"{args.check}: {len(problems)} problems", file=sys.stderr)
            return 1
        frames = sum(len(e.frames) for e in dataset.expressions)
        print(f"{args.check}: OK ({len(dataset.videos())} videos, {len(dataset.expressions)} expressions, "
              f"{frames} frames)")
        return 0
    if not args.predictions or not args.output:
        raise UsageError("writing a submission needs --predictions DIR and -o FILE.zip (or --check FILE.zip)")
    if Path(args.output).suffix != ".zip":
        raise UsageError(f"-o {args.output}: the output must be a .zip file")
    n = write_submission(dataset, args.predictions, args.output, progress=True)
    print(f"wrote {args.output} ({n} masks, {len(dataset.expressions)} expressions)")
    return 0


def cmd_masks(args: argparse.Namespace) -> int:
    from .data.masks import mask_dict_to_pngs, pngs_to_mask_dict, write_json_atomic

    if args.direction == "to-png":
        meta = Path(args.meta) if args.meta else Path(args.mask_dict).with_name("meta_expressions.json")
        n = mask_dict_to_pngs(meta, args.mask_dict, args.output, progress=True)
        print(f"wrote {n} masks under {args.output}")
        return 0
    out = Path(args.output)
    if out.suffix != ".json":
        raise UsageError(f"-o {out}: the output must be a .json file (mask_dict.json)")
    meta, mask_dict = pngs_to_mask_dict(args.folder, args.meta)
    write_json_atomic(out, mask_dict)
    if args.meta_output:
        write_json_atomic(args.meta_output, meta)
    print(f"wrote {out} ({len(mask_dict)} objects)" + (f" and {args.meta_output}" if args.meta_output else ""))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .training.config import load_config
    from .training.trainer import train

    overrides = list(args.overrides) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    config = load_config(args.config, overrides)
    result = train(config, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:  # one line, not one per torchrun process
        where = result.checkpoint / "model.safetensors" if result.checkpoint else result.output_dir
        print(f"trained to step {result.step}; model: {where}", file=sys.stderr)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .data.synthref import generate

    for name in ("videos", "frames", "size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, expected a folder")
    splits = tuple(args.splits.split(","))
    info = generate(out, videos=args.videos, frames=args.frames, size=args.size, seed=args.seed, splits=splits,
                    valid_videos=args.valid_videos, progress=not args.quiet)
    for split, meta in info.items():
        stats = meta["statistics"]
        kinds = ", ".join(f"{k} {n}" for k, n in stats["kinds"].items())
        print(f"{out / split}: {meta['videos']} videos, {stats['expressions']} expressions ({kinds})")
    return 0


def _add_dataset_args(p: argparse.ArgumentParser, *, split_help: str) -> None:
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument("--split", help=split_help)


def _add_model_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--model", required=required, help="a model checkpoint (.safetensors)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--selection", choices=("union", "top1"),
                   help="query selection (default: union for mevis, top1 for ytvos/davis)")
    p.add_argument("--threshold", type=float, default=0.5, help="score threshold of 'union' (default: %(default)s)")
    p.add_argument("--short-side", type=int, help="test resize short side (default: 448 mevis, 480 ytvos/davis)")
    p.add_argument("--frame-chunk", type=int, default=18,
                   help="frames per frame-stage pass (default: %(default)s; the video stage sees all)")
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA")


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

    p = sub.add_parser("predict", help="predict every expression of a benchmark split (resumable)")
    _add_dataset_args(p, split_help="split (default: valid_u for mevis, valid otherwise)")
    _add_model_args(p, required=True)
    p.add_argument("--output", "-o", required=True, help="folder of <video>/<exp_id>/<frame>.png predictions")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="J, F and J&F of predictions (or of a model) on a benchmark split")
    _add_dataset_args(p, split_help="split with ground truth (default: valid_u for mevis, valid otherwise)")
    p.add_argument("--predictions", help="folder of <video>/<exp_id>/<frame>.png predictions")
    _add_model_args(p, required=False)
    p.add_argument("--save-predictions", help="with --model: keep the predictions in this folder")
    p.add_argument("--output", help="write the report with per-expression results to this .json file")
    p.add_argument("--workers", type=int, default=1, help="processes scoring expressions (default: %(default)s)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("submit", help="write or check a server submission zip (mevis valid, ytvos valid)")
    p.add_argument("--dataset", required=True, choices=("mevis", "ytvos"))
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument("--split", help="split (default: valid)")
    p.add_argument("--predictions", help="folder of <video>/<exp_id>/<frame>.png predictions")
    p.add_argument("-o", "--output", help="the .zip to write")
    p.add_argument("--check", metavar="ZIP", help="validate this zip instead of writing one")
    p.add_argument("--max-problems", type=int, default=50, help="problems to print with --check")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("train", help="train a model from a recipe (also under torchrun for several GPUs)")
    p.add_argument("config", help="a recipe name (the YAML files in ssa_rvos/training/recipes, e.g. mevis_official) "
                                  "or a YAML file of changes to the defaults")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config changes, e.g. optim.lr=1e-4 "
                   "data.datasets.0.root=/data/mevis")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the output folder")
    p.add_argument("--output-dir", help="run folder (same as output_dir=DIR)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("synth", help="generate SynthRef, a procedural motion-referring benchmark (MeViS layout)")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per split)")
    p.add_argument("--videos", type=int, default=200, help="training videos (default: %(default)s)")
    p.add_argument("--valid-videos", type=int, help="videos of each other split (default: a quarter of --videos)")
    p.add_argument("--frames", type=int, default=12, help="frames per video (default: %(default)s)")
    p.add_argument("--size", type=int, default=96, help="frame side in pixels (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--splits", default="train,valid_u", help="comma-separated split names (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("masks", help="convert MeViS mask_dict.json <-> <video>/<exp_id>/<frame>.png folders")
    msub = p.add_subparsers(dest="direction", required=True)
    q = msub.add_parser("to-png", help="mask_dict.json -> PNG folders (each expression's union of objects)")
    q.add_argument("mask_dict", help="MeViS mask_dict.json")
    q.add_argument("--meta", help="meta_expressions.json (default: the one beside mask_dict.json)")
    q.add_argument("-o", "--output", required=True, help="output folder")
    q.set_defaults(func=cmd_masks)
    q = msub.add_parser("to-json", help="PNG folders -> mask_dict.json (one object per expression folder)")
    q.add_argument("folder", help="folder of <video>/<exp_id>/<frame>.png masks")
    q.add_argument("--meta", help="meta_expressions.json to take frame lists and texts from")
    q.add_argument("-o", "--output", required=True, help="mask_dict.json to write")
    q.add_argument("--meta-output", help="also write the matching meta_expressions.json here")
    q.set_defaults(func=cmd_masks)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"ssa-rvos {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"ssa-rvos {args.command}: error: {e}".splitlines()[0], file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
