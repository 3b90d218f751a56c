"""The ``ssa-rvos`` command line (also ``python -m ssa_rvos``).

Every command reports bad input as one line on stderr and exits non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path


class UsageError(Exception):
    """Bad input from the command line: reported as one line, exit code 2."""


def _check_output(flag: str, path: str | os.PathLike, *, folder: bool = False) -> Path:
    """Refuse an output path that cannot be written, before any work starts: a folder where a file goes
    (or a file where a folder goes), or a place under a file or in a read-only folder. Missing parent
    folders are fine: they are created on writing."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path}: is a file, expected a folder")
    if not folder and path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory, expected a file")
    where = path if folder and path.is_dir() else path.parent
    while not where.exists() and where != where.parent:  # the nearest existing folder above it
        where = where.parent
    if not where.is_dir():
        raise UsageError(f"{flag} {path}: {where} is a file, not a folder")
    if not os.access(where, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: cannot write in {where} (permission denied)")
    return path


def _check_at_least(args: argparse.Namespace, minimum: int, *names: str) -> None:
    """Integer options that must be >= ``minimum`` (None: the option's default, not checked)."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise UsageError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def _check_threshold(value: float) -> None:
    if not 0 <= value <= 1:  # NaN fails this too
        raise UsageError(f"--threshold must be a number in [0, 1], got {value}")


def _option_error(error: ValueError, options) -> UsageError:
    """A library's "name must be ..." message as "--name must be ..." when ``name`` is one of ``options``."""
    message = str(error)
    name = message.split(" ", 1)[0]
    if name in options:
        message = f"--{name.replace('_', '-')}{message[len(name):]}"
    return UsageError(message)


def _resolve_device(name: str | None):
    """--device as a torch.device (None: auto); an unknown or unavailable device is a usage error."""
    from .runtime import resolve_device

    try:
        return resolve_device(name)
    except ValueError as e:
        raise UsageError(f"--device: {e}") from None


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
    _check_output("-o", target)
    if args.init:
        from .download import convert_release
        from .releases import Release

        convert_release(Release(name=source.stem, description="", source=str(source), filename=source.name,
                                kind="init"), source, target)
        print(f"wrote {target} (the tensors under our names, for model.init_from)")
        return 0
    clip = ClipConfig(model_name=args.clip_model)
    if args.clip_config:
        try:
            arch = json.loads(Path(args.clip_config).read_text())
        except UnicodeDecodeError:
            raise UsageError(f"--clip-config {args.clip_config}: not a text file (expected an open_clip model "
                             "config, JSON)") from None
        except (OSError, json.JSONDecodeError) as e:
            raise UsageError(f"--clip-config {args.clip_config}: not a readable JSON file ({e})") from None
        if isinstance(arch, dict):
            arch = arch.get("clip_config", arch)  # accept the fixture's meta.json as well
        if not isinstance(arch, dict):
            raise UsageError(f"--clip-config {args.clip_config}: expected a JSON object (an open_clip model "
                             f"config), got {type(arch).__name__}")
        clip = replace(clip, architecture=arch)
    clip = replace(clip, word_mask_rule=args.word_mask)
    model, report = convert_official_checkpoint(source, clip=clip)
    save_model(model, target, extra={"converted_from": source.name})
    for line in report.lines():
        print(line)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"wrote {target} ({trainable:,} trainable parameters, CLIP {clip.model_name})")
    return 0


def _size(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def cmd_models(args: argparse.Namespace) -> int:
    from .download import cache_dir, cached_models
    from .pretrained import BUNDLED, BUNDLED_INFO, bundled_path
    from .releases import RELEASES

    cached = {name: (path, record) for name, path, record in cached_models()}
    rows = []
    for name in sorted(BUNDLED):
        path = bundled_path(name)
        what, reported = BUNDLED_INFO.get(name, ("bundled", "-"))
        rows.append((name, what, reported, "bundled", _size(path.stat().st_size)))
    for name, release in RELEASES.items():
        entry = cached.pop(name, None)
        rows.append((name, release.description, release.reported_text(), "yes" if entry else "no",
                     _size(entry[0].stat().st_size) if entry else "-"))
    for name, (path, record) in sorted(cached.items()):
        rows.append((name, (record or {}).get("source", "in the cache"), "-", "yes", _size(path.stat().st_size)))
    # one line per model (name, cached, size, reported J&F), then what it is, indented
    header = ("name", "cached", "size", "reported")
    table = [header, *[(name, cached_, size, reported) for name, _, reported, cached_, size in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    print("  ".join(c.ljust(w) for c, w in zip(header, widths)).rstrip())
    for line, (_, what, *_rest) in zip(table[1:], rows):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
        print(f"    {what}")
    print(f"cache: {cache_dir()} (SSA_RVOS_CACHE to move it; SSA_RVOS_OFFLINE=1: no downloads)")
    return 0


def cmd_export_hub(args: argparse.Namespace) -> int:
    from .hub import export_for_hub

    path = _resolve_model_file(args.checkpoint, None if args.checkpoint else "--model")
    try:
        out = export_for_hub(path, args.output, name=args.name)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(f"wrote {out}/ (model.safetensors, config.json, README.md); upload it with: huggingface-cli upload "
          f"OWNER/REPO {out}")
    return 0


def _resolve_model_file(spec: str | None, option: str | None = "--model") -> Path:
    """The weights file of a model name or path (None: the bundled default); a bad one is a usage error,
    its message led by ``option`` (None: the message alone, for a positional argument)."""
    from .pretrained import resolve_weights

    try:
        return resolve_weights(spec)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e) if option is None else f"{option}: {e}") from None


def _open_dataset(name: str, root: str, split: str | None):
    from .benchmarks import open_benchmark

    return open_benchmark(name, root, split)


def _load_model(spec: str | None, device):
    """The model named by --model (None: the bundled default) on --device (None: auto = cuda, mps, cpu);
    bad names are usage errors."""
    from .pretrained import load_pretrained

    device = _resolve_device(device)
    return load_pretrained(_resolve_model_file(spec), device=device)


def _load_onnx(folder: str | None, device: str | None):
    """The network of an ONNX export folder in onnxruntime (``--backend onnxruntime``); CPU only."""
    if not folder:
        raise UsageError("--backend onnxruntime needs --model DIR: a folder written by "
                         "`ssa-rvos export CHECKPOINT --format onnx -o DIR`")
    if device not in (None, "auto", "cpu"):
        raise UsageError(f"--device {device}: the onnxruntime backend runs on the CPU (use --device cpu or auto)")
    from .onnx_runtime import OnnxModelError, OnnxSSA

    try:
        return OnnxSSA(folder)
    except OnnxModelError as e:
        raise UsageError(f"--model {e}") from None


def cmd_export(args: argparse.Namespace) -> int:
    from .pretrained import load_pretrained

    out = _check_output("--output", args.output, folder=True)
    path = _resolve_model_file(args.checkpoint, None)
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UsageError("export --format onnx needs onnx and onnxscript: pip install -e \".[onnx]\"") from None
    from .onnx_export import export_onnx

    model = load_pretrained(path, device="cpu")
    try:
        export_onnx(model, out, optimize=not args.no_optimize, progress=not args.quiet)
    except ValueError as e:
        raise UsageError(f"--output {e}") from None
    print(f"wrote {out}/ (7 ONNX graphs and ssa_onnx.json); segment with it: ssa-rvos segment VIDEO --text T "
          f"--backend onnxruntime --model {out}")
    return 0


def _predict(args: argparse.Namespace, dataset, output: Path) -> None:
    """Predict the split into ``output``; under torchrun each process takes its share of the videos and
    the first reports the totals."""
    import torch

    from .evaluation.predict import PredictionStats, predict_split
    from .runtime import setup_distributed, teardown_distributed

    env = setup_distributed(args.device if args.device not in (None, "auto") else None)
    try:
        model = _load_model(args.model, env.device if env.world_size > 1 else args.device)
        stats = predict_split(model, dataset, output, selection=args.selection, short_side=args.short_side,
                              frame_chunk=args.frame_chunk, threshold=args.threshold, amp=args.amp,
                              progress=env.main, rank=env.rank, world_size=env.world_size,
                              format=getattr(args, "format", "png"))
        if env.world_size > 1:
            import torch.distributed as dist

            counts = torch.tensor([stats.written, stats.skipped, stats.videos], dtype=torch.int64,
                                  device=env.device if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(counts)  # also waits for every process to finish
            stats = PredictionStats(*(int(c) for c in counts.tolist()))
    finally:
        teardown_distributed(env)
    if env.main:
        where = f" ({env.world_size} processes)" if env.world_size > 1 else ""
        print(f"predicted {stats.written} expressions, {stats.skipped} already in {output}{where}", file=sys.stderr)
        if getattr(args, "format", "png") == "rle":  # every process is done (the all_reduce above waited)
            from .evaluation.predict import collect_rle

            print(f"wrote {collect_rle(dataset, output)}", file=sys.stderr)


def _check_model_args(args: argparse.Namespace) -> None:
    """The options of ``_add_model_args``, checked before anything is read or written."""
    if args.device is not None:
        args.device = str(_resolve_device(args.device))
    _check_threshold(args.threshold)
    _check_at_least(args, 1, "short_side", "frame_chunk")


def cmd_predict(args: argparse.Namespace) -> int:
    _check_model_args(args)
    output = _check_output("--output", args.output, folder=True)
    dataset = _open_dataset(args.dataset, args.root, args.split)
    _predict(args, dataset, output)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from .data.masks import write_json_atomic
    from .evaluation.evaluate import evaluate_predictions, open_predictions

    if bool(args.predictions) == bool(args.model):
        raise UsageError("give either --predictions DIR or --model NAME_OR_PATH")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("evaluate runs in one process: predict with `torchrun ... -m ssa_rvos predict`, then "
                         "evaluate --predictions DIR")
    if args.predictions and args.save_predictions:
        raise UsageError("--save-predictions goes with --model (with --predictions the predictions are already "
                         "in a folder)")
    if args.workers is not None:
        _check_at_least(args, 1, "workers")
    if args.model:
        _check_model_args(args)
    if args.save_predictions:
        _check_output("--save-predictions", args.save_predictions, folder=True)
    if args.output:
        _check_output("--output", args.output)
    dataset = _open_dataset(args.dataset, args.root, args.split)
    if not dataset.has_masks:
        raise UsageError(f"--split {dataset.split}: {dataset.name} has no ground truth for it (a server split: "
                         "use `ssa-rvos predict` and `ssa-rvos submit`)")
    scratch = None
    predictions = None
    if args.predictions:
        predictions = open_predictions(args.predictions, dataset)
        if dataset.expressions and not any(predictions.has(e.video, e.exp_id) for e in dataset.expressions):
            raise UsageError(f"--predictions {args.predictions}: no prediction for any expression of {dataset.name} "
                             f"{dataset.split} (expected {predictions.layout})")
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

    _check_at_least(args, 0, "max_problems")
    if not args.check and args.output:
        if Path(args.output).suffix != ".zip":
            raise UsageError(f"-o {args.output}: the output must be a .zip file")
        _check_output("-o", args.output)
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
    n = write_submission(dataset, args.predictions, args.output, progress=True)
    print(f"wrote {args.output} ({n} masks, {len(dataset.expressions)} expressions)")
    return 0


def cmd_masks(args: argparse.Namespace) -> int:
    from .data.masks import mask_dict_to_pngs, pngs_to_mask_dict, write_json_atomic

    if args.direction == "to-png":
        source = Path(args.mask_dict)
        if not source.is_file():
            raise UsageError(f"{source}: " + ("is a directory" if source.is_dir() else "no such file")
                             + " (expected a MeViS mask_dict.json)")
        if args.meta:
            meta = Path(args.meta)
            if not meta.is_file():
                raise UsageError(f"--meta {meta}: " + ("is a directory" if meta.is_dir() else "no such file")
                                 + " (expected a meta_expressions.json)")
        else:
            meta = source.absolute().with_name("meta_expressions.json")
            if not meta.is_file():
                raise UsageError(f"no {meta} beside {source}: give its meta_expressions.json with --meta")
        _check_output("-o", args.output, folder=True)
        n = mask_dict_to_pngs(meta, source, args.output, progress=True)
        print(f"wrote {n} masks under {args.output}")
        return 0
    out = Path(args.output)
    if out.suffix != ".json":
        raise UsageError(f"-o {out}: the output must be a .json file (mask_dict.json)")
    _check_output("-o", out)
    if args.meta_output:
        _check_output("--meta-output", args.meta_output)
        if Path(args.meta_output).resolve() == out.resolve():
            raise UsageError(f"--meta-output {args.meta_output}: the same file as -o")
    meta, mask_dict = pngs_to_mask_dict(args.folder, args.meta)
    write_json_atomic(out, mask_dict)
    if args.meta_output:
        write_json_atomic(args.meta_output, meta)
    print(f"wrote {out} ({len(mask_dict)} objects)" + (f" and {args.meta_output}" if args.meta_output else ""))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .training.config import load_config
    from .training.trainer import train

    if args.output_dir:
        _check_output("--output-dir", args.output_dir, folder=True)
    overrides = list(args.overrides) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    config = load_config(args.config, overrides)
    result = train(config, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:  # one line, not one per torchrun process
        where = result.checkpoint / "model.safetensors" if result.checkpoint else result.output_dir
        print(f"trained to step {result.step}; model: {where}", file=sys.stderr)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .data.synthref import generate

    for name in ("videos", "valid_videos", "frames", "size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    out = _check_output("--out", args.out, folder=True)
    try:
        # generate checks every argument and split name before the first split is written
        info = generate(out, videos=args.videos, frames=args.frames, size=args.size, seed=args.seed,
                        splits=tuple(args.splits.split(",")), valid_videos=args.valid_videos,
                        referring_captions=args.referring_captions, progress=not args.quiet)
    except ValueError as e:
        options = ("videos", "valid_videos", "frames", "size")
        if str(e).startswith("a split"):
            raise UsageError(f"--splits {args.splits}: {e}") from None
        if str(e).split(" ", 1)[0] in options:
            raise _option_error(e, options) from None
        raise
    for split, meta in info.items():
        stats = meta["statistics"]
        kinds = ", ".join(f"{k} {n}" for k, n in stats["kinds"].items())
        print(f"{out / split}: {meta['videos']} videos, {stats['expressions']} expressions ({kinds})")
    return 0


def cmd_pretrain_clip(args: argparse.Namespace) -> int:
    import dataclasses

    from .data.masks import write_json_atomic
    from .training.clip_pretrain import ClipPretrainConfig, pretrain_clip

    options = {"root": args.root, "split": args.split, "output": args.output,
               "eval_split": None if args.eval_split.lower() == "none" else args.eval_split}
    for name in ("steps", "batch_size", "lr", "image_size", "threads", "seed", "eval_every"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.device is not None:
        options["device"] = str(_resolve_device(args.device))
    try:
        config = ClipPretrainConfig.from_dict(options)
    except ValueError as e:
        raise _option_error(e, options) from None
    # Both outputs are checked before training, not found unwritable after it.
    report = _check_output("-o", config.output).with_suffix(".json")
    if report.is_dir():
        raise UsageError(f"-o {config.output}: its metrics file {report} is a directory")
    metrics = pretrain_clip(config, progress=not args.quiet)
    write_json_atomic(report, {"config": dataclasses.asdict(config), **metrics})
    line = f"wrote {config.output} after {config.steps} steps (loss {metrics['first_loss']:.3f} -> {metrics['loss']:.3f})"
    if "i2t" in metrics:
        line += (f"; held-out {config.eval_split} top-1 retrieval image->text {metrics['i2t']:.3f}, "
                 f"text->image {metrics['t2i']:.3f}")
    print(line)
    print(f"metrics: {report}")
    return 0


def _read_texts_file(path: str) -> list[str]:
    """One expression per non-empty line of a UTF-8 file (a byte-order mark is allowed)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"--texts-file {p}: no such file") from None
    except OSError as e:
        raise UsageError(f"--texts-file {p}: cannot read it ({e.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UsageError(f"--texts-file {p}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    from .text import is_blank

    return [line.strip() for line in text.splitlines() if not is_blank(line)]


def cmd_segment(args: argparse.Namespace) -> int:
    import warnings

    from .text import is_blank

    texts = list(args.text or [])
    for t in texts:
        if is_blank(t):
            raise UsageError(f"--text {t!r}: an empty expression (nothing but whitespace or invisible characters)")
    if args.texts_file:
        texts += _read_texts_file(args.texts_file)
    if not texts:
        raise UsageError("no expression: give --text (repeatable) or --texts-file" +
                         (f" ({args.texts_file} has no non-empty line)" if args.texts_file else ""))
    out = _check_output("--output", args.output, folder=True)
    if args.every < 1:
        raise UsageError(f"--every must be >= 1, got {args.every}")
    if args.start < 0:
        raise UsageError(f"--start must be >= 0, got {args.start}")
    if args.end is not None and args.end <= args.start:
        raise UsageError(f"--end ({args.end}) must be greater than --start ({args.start})")
    _check_at_least(args, 1, "frame_chunk", "short_side")
    _check_threshold(args.threshold)
    from .outputs import check_output_folder, write_outputs
    from .predictor import SSAPredictor
    from .videoio import open_video

    try:
        check_output_folder(out, len(texts))
    except ValueError as e:
        raise UsageError(f"--output {e}") from None
    try:
        video = open_video(args.input)  # checks the input before the model is loaded
    except ImportError as e:
        raise UsageError(str(e)) from None
    if args.backend == "onnxruntime":
        model = _load_onnx(args.model, args.device)
        args.selection = args.selection or "union"
    else:
        model = _load_model(args.model, _resolve_device(args.device))
    if args.selection is None:
        from .pretrained import default_selection

        args.selection = default_selection(args.model)
    predictor = SSAPredictor(model, frame_chunk=args.frame_chunk, short_side=args.short_side,
                             threshold=args.threshold, selection=args.selection)
    texts = predictor.check_texts(texts)
    progress = not args.quiet
    if args.overlay:
        try:
            from .videoio import _import_av

            _import_av()
        except ImportError as e:
            raise UsageError(str(e)) from None
    with predictor.init_state(video, start=args.start, end=args.end, every=args.every, progress=progress) as state:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run = predictor.propagate(state, texts, progress=progress)  # text encoding: truncation warnings
        for w in caught:
            print(f"ssa-rvos segment: warning: {w.message}", file=sys.stderr)
        summary = write_outputs(out, state, run, format=args.format, overlay=args.overlay,
                                info={"model": args.model, "selection": args.selection, "threshold": args.threshold})
        T, (H, W) = state.num_frames, state.original_size
    for e, s in enumerate(summary.expressions):
        print(s.line(e))
    print(f"wrote {', '.join(summary.written)} to {out} ({T} frames of {H}x{W})"
          + (f"; removed from an earlier run: {', '.join(summary.removed)}" if summary.removed else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .pretrained import DEFAULT_MODEL

    _check_at_least(args, 1, "max_frames")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    _resolve_device(args.device)
    models = {}
    for spec in args.model or [DEFAULT_MODEL]:
        _resolve_model_file(spec)  # a bad name fails here, not in the page
        models[spec] = spec
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UsageError('the web demo needs Gradio: pip install -e ".[demo]"') from None
    from .demo import DemoEngine, serve

    engine = DemoEngine(models, device=args.device, max_frames=args.max_frames)
    print(f"ssa-rvos demo: serving on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    serve(engine, host=args.host, port=args.port, share=args.share)
    return 0


def _add_dataset_args(p: argparse.ArgumentParser, *, split_help: str) -> None:
    from .benchmarks import BENCHMARKS

    p.add_argument("--dataset", required=True, choices=tuple(BENCHMARKS))
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument("--split", help=split_help)


def _add_model_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--model", required=required, help="a model checkpoint (.safetensors)")
    p.add_argument("--device", help="auto (cuda, else mps, else cpu), cpu, cuda, mps (default: auto)")
    p.add_argument("--selection", choices=("union", "top1"),
                   help="query selection (default: union for mevis, top1 for ytvos/davis)")
    p.add_argument("--threshold", type=float, default=0.5, help="score threshold of 'union' (default: %(default)s)")
    p.add_argument("--short-side", type=int, help="test resize short side (default: 448 mevis, 480 ytvos/davis)")
    p.add_argument("--frame-chunk", type=int, default=18,
                   help="frames per frame-stage pass (default: %(default)s; the video stage sees all)")
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .benchmarks import BENCHMARKS

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
    p.add_argument("--init", action="store_true",
                   help="a training initialisation (the COCO CLIP-Mask2Former): rename its tensors for model.init_from")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("models", help="every model name: bundled, the authors' released ones, the cached ones")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("export-hub", help="write a checkpoint as a Hugging Face Hub model folder (safetensors, card)")
    p.add_argument("checkpoint", help="a model name or one of our .safetensors checkpoints")
    p.add_argument("-o", "--output", required=True, help="output folder (new, empty, or an earlier export)")
    p.add_argument("--name", help="the model's name in the card (default: the release name or the file name)")
    p.set_defaults(func=cmd_export_hub)

    p = sub.add_parser("export", help="write a model as ONNX graphs for onnxruntime (segment --backend onnxruntime)")
    p.add_argument("checkpoint", help="a model name or one of our .safetensors checkpoints")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="the format (default: %(default)s)")
    p.add_argument("-o", "--output", required=True, help="output folder (new, empty, or an earlier export)")
    p.add_argument("--no-optimize", action="store_true",
                   help="skip the exporter's graph optimisation (about half the export time; onnxruntime still "
                        "optimises when it loads the graphs)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="predict every expression of a benchmark split (resumable)")
    _add_dataset_args(p, split_help="split (default: valid_u for mevis, valid otherwise)")
    _add_model_args(p, required=True)
    p.add_argument("--output", "-o", required=True, help="folder of <video>/<exp_id>/<frame>.png predictions")
    p.add_argument("--format", choices=["png", "rle"], default="png",
                   help="png: the folders servers take (default); rle: <video>/<exp_id>.rle.json per expression "
                        "and one masks.json for `evaluate --predictions` (no PNG decoding)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="J, F and J&F of predictions (or of a model) on a benchmark split")
    _add_dataset_args(p, split_help="split with ground truth (default: valid_u for mevis, valid otherwise)")
    p.add_argument("--predictions", help="folder of <video>/<exp_id>/<frame>.png predictions, or the masks.json "
                   "of predict / segment --format rle")
    _add_model_args(p, required=False)
    p.add_argument("--save-predictions", help="with --model: keep the predictions in this folder")
    p.add_argument("--output", help="write the report with per-expression results to this .json file")
    p.add_argument("--workers", type=int, help="processes scoring videos (default: the cores this process may use, "
                   "at most one per video)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("submit", help="write or check a server submission zip (mevis valid, ytvos valid)")
    servers = tuple(b.name for b in BENCHMARKS.values() if b.submission_root is not None)
    p.add_argument("--dataset", required=True, choices=servers)
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
    p.add_argument("--referring-captions", action="store_true",
                   help="add referring-style phrases to the CLIP captions (\"the red star on the left\"); "
                        "frames, masks and expressions stay the same")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("pretrain-clip", help="contrastive pretraining of the tiny CLIP on SynthRef frames and captions")
    p.add_argument("--root", required=True, help="SynthRef folder (made by `ssa-rvos synth`)")
    p.add_argument("--split", default="train", help="training split (default: %(default)s)")
    p.add_argument("--eval-split", default="valid_u", help="held-out split for retrieval accuracy, or 'none' "
                   "(default: %(default)s)")
    p.add_argument("-o", "--output", default="runs/synthref_clip/ssa_tiny_clip.safetensors",
                   help="the CLIP weights to write, .safetensors (default: %(default)s); metrics go beside it as .json")
    p.add_argument("--steps", type=int, help="optimizer steps (default: 2000)")
    p.add_argument("--batch-size", type=int, help="image-caption pairs per step (default: 128)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: 1e-3)")
    p.add_argument("--image-size", type=int, help="training crop side in pixels (default: 64)")
    p.add_argument("--eval-every", type=int, help="also evaluate every N steps (default: at the end only)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    p.add_argument("--seed", type=int, help="random seed (default: 0)")
    p.add_argument("--device", help="torch device (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain_clip)

    p = sub.add_parser("segment", help="segment what sentences refer to in your own video")
    p.add_argument("input", help="a video file (mp4, avi, mkv, webm, ogv, ...), a folder of JPEG/PNG frames, or an image")
    p.add_argument("--text", "-t", action="append", metavar="T", help="a referring expression (repeat for several)")
    p.add_argument("--texts-file", metavar="F", help="a UTF-8 file of expressions, one per non-empty line")
    p.add_argument("--output", "-o", required=True, help="output folder: <expression index>/<frame>.png, masks.json, "
                   "overlay.mp4; a rerun into it replaces (and removes) the earlier run's outputs")
    p.add_argument("--model", help="a model name (ssa-rvos models lists them; the authors' download once), a "
                   "checkpoint, hf://OWNER/REPO/FILE or an https:// URL (default: the bundled ssa_tiny.synthref); "
                   "with --backend onnxruntime, the folder of `ssa-rvos export --format onnx`")
    p.add_argument("--backend", choices=("pytorch", "onnxruntime"), default="pytorch",
                   help="what runs the network: pytorch (default), or onnxruntime on the CPU for an ONNX export")
    p.add_argument("--selection", choices=("union", "top1"),
                   help="union: every video query above --threshold (multiple targets); top1: the best (default: "
                        "the model's own: top1 for ssa_convnext_large.ytvos, else union)")
    p.add_argument("--threshold", type=float, default=0.5, help="score threshold of 'union' (default: %(default)s)")
    p.add_argument("--overlay", action="store_true", help="also write overlay.mp4: coloured masks and the sentences")
    p.add_argument("--every", type=int, default=1, help="use every N-th frame (default: %(default)s)")
    p.add_argument("--start", type=int, default=0, help="first frame index (default: %(default)s)")
    p.add_argument("--end", type=int, help="stop before this frame index (default: the last frame)")
    p.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, mps (default: "
                   "%(default)s)")
    p.add_argument("--format", choices=("png", "rle", "both"), default="png",
                   help="png: 0/255 mask per frame; rle: masks.json with COCO RLEs and scores (default: %(default)s)")
    p.add_argument("--frame-chunk", type=int, default=18,
                   help="images per frame-stage pass (default: %(default)s); memory does not grow with the video")
    p.add_argument("--short-side", type=int, help="test resize short side (default: the model's, else 480)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("demo", help="the web demo: a page to segment an uploaded video (Gradio, pip install -e \".[demo]\")")
    p.add_argument("--model", action="append", metavar="NAME_OR_PATH",
                   help="a model for the page's picker (repeat for several; default: the bundled ssa_tiny.synthref)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, mps (default: "
                   "%(default)s)")
    p.add_argument("--max-frames", type=int, default=600,
                   help="longest video a request may segment, in frames (default: %(default)s)")
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    p.set_defaults(func=cmd_demo)

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


def _close_progress_bars() -> None:
    """End any progress bar an error interrupted, so the error starts its own line (and the bar is not
    drawn again after it when the process exits)."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


class Terminated(KeyboardInterrupt):
    """SIGTERM (what ``timeout``, schedulers and torchrun send) turned into the same unwinding as Ctrl-C:
    every ``finally`` and ``except BaseException`` cleanup runs, so temporary files are removed."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Handle SIGTERM like SIGINT while a command runs (main thread only; the previous handler comes back)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _one_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else ""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "train" and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides += extra  # KEY=VALUE changes placed after an option such as --output-dir
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    prefix = f"ssa-rvos {args.command}: error:"
    try:
        with _sigterm_as_interrupt():
            return args.func(args)
    except UsageError as e:
        _close_progress_bars()
        print(f"{prefix} {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        _close_progress_bars()
        print(f"{prefix} {_one_line(str(e))}", file=sys.stderr)
        return 1
    except Terminated:
        _close_progress_bars()
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        _close_progress_bars()
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the promise is one line, never a traceback
        _close_progress_bars()
        if os.environ.get("SSA_RVOS_TRACEBACK"):
            raise
        print(f"{prefix} {type(e).__name__}: {_one_line(str(e)) or 'no message'} (unexpected; "
              "SSA_RVOS_TRACEBACK=1 shows where)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
