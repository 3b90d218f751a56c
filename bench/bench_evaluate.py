"""Benchmark: `ssa-rvos evaluate` on a MeViS-shaped load, end to end and stage by stage.

It generates (once, into --data) a MeViS split in the layout the official script reads: ``valid_u`` with
``meta_expressions.json``, ``mask_dict.json`` (COCO RLE ground truth) and every video's JPEGs (links to one
image: only the first frame's size is read), plus prediction folders ``<video>/<exp_id>/<frame>.png`` (0/255 grayscale, as
`ssa-rvos predict` writes them) and the same predictions as ``masks.json`` (RLE). The default load is the
shape of MeViS valid_u as the issue measured it: 80 expressions x 60 frames at 480x854 (`--size 1080 1920`
for the 1080p variant). Ground truth: moving ellipses; prediction: a shifted / eroded / dilated copy with
missed objects and false positives; about a tenth of the frames have an empty ground truth or prediction.

Timed, in one run on the same machine:
* the command as a user runs it, in a fresh process (`python -m ssa_rvos evaluate ...`), with the default
  options and with each `--workers` given, from PNG folders and from masks.json;
* the same call in-process (import excluded), and its stages one by one in this process: import of the
  command, decoding the prediction PNGs, decoding the ground truth, J, F;
* the literal per-frame reference (`ssa_rvos.evaluation.reference`, PIL decoding) on the first
  `--reference-expressions` expressions, scaled to the whole load: the in-run anchor for this machine.

    python bench/bench_evaluate.py [--data DIR] [--size H W] [--videos N] [--expressions-per-video N]
                                   [--frames N] [--workers N ...] [--reference-expressions N] [--output F.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


# ------------------------------------------------------------------------------------------------ the load


def make_load(data: Path, *, videos: int, per_video: int, frames: int, size: tuple[int, int], seed: int) -> None:
    """Write the split and the predictions under ``data`` (skipped when a load of this shape is there)."""
    from bench_metrics import synthetic_video
    from PIL import Image

    from ssa_rvos.data.masks import rle_encode, write_mask_png

    shape = {"videos": videos, "per_video": per_video, "frames": frames, "size": list(size), "seed": seed}
    stamp = data / "load.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == shape:
        return
    rng = np.random.default_rng(seed)
    split = data / "valid_u"
    h, w = size
    meta, mask_dict, rle_predictions = {"videos": {}}, {}, {"videos": {}}
    names = [f"{t:05d}" for t in range(frames)]
    anno = 0
    for v in range(videos):
        video = f"video{v:03d}"
        (split / "JPEGImages" / video).mkdir(parents=True, exist_ok=True)
        first = split / "JPEGImages" / video / f"{names[0]}.jpg"
        Image.new("RGB", (w, h), (90, 90, 90)).save(first)
        for frame in names[1:]:  # the reader checks that every frame is there; only the first one is read
            os.link(first, first.with_name(f"{frame}.jpg"))
        expressions, predicted = {}, {}
        for e in range(per_video):
            gt, pred = synthetic_video(frames, h, w, rng)
            gt[rng.random(frames) < 0.1] = False  # the object leaves the frame
            pred[rng.random(frames) < 0.1] = False  # the model misses it
            mask_dict[str(anno)] = [rle_encode(m) if m.any() else None for m in gt]
            expressions[str(e)] = {"exp": f"object {e} of {video}", "obj_id": [e], "anno_id": [anno]}
            folder = data / "predictions" / video / str(e)
            for t, frame in enumerate(names):
                write_mask_png(folder / f"{frame}.png", pred[t])
            predicted[str(e)] = {"frames": names, "masks": [rle_encode(m) for m in pred]}
            anno += 1
        meta["videos"][video] = {"expressions": expressions, "frames": names}
        rle_predictions["videos"][video] = predicted
    split.mkdir(parents=True, exist_ok=True)
    (split / "meta_expressions.json").write_text(json.dumps(meta))
    (split / "mask_dict.json").write_text(json.dumps(mask_dict))
    (data / "masks.json").write_text(json.dumps(rle_predictions))
    stamp.write_text(json.dumps(shape))


# ------------------------------------------------------------------------------------------------- timing


def _command(data: Path, predictions: str, workers: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "ssa_rvos", "evaluate", "--dataset", "mevis", "--root", str(data), "--split", "valid_u",
           "--predictions", predictions]
    return cmd + ([] if workers is None else ["--workers", str(workers)])


def _run_command(cmd: list[str], json_out: Path) -> tuple[float, dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    done = subprocess.run(cmd + ["--output", str(json_out)], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    report = json.loads(json_out.read_text())
    return seconds, {"J": report["j"], "F": report["f"], "J&F": report["jf"],
                     "per_expression": [(e["j"], e["f"]) for e in report["expressions"]]}


def _import_seconds() -> float:
    code = ("import time; t = time.perf_counter(); import ssa_rvos.cli, ssa_rvos.evaluation.evaluate; "
            "print(time.perf_counter() - t)")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout)


def _stages(data: Path) -> dict:
    """The work of one default evaluation, stage by stage, in this process (one core)."""
    from ssa_rvos.data import MeViS
    from ssa_rvos.evaluation.evaluate import read_prediction
    from ssa_rvos.evaluation.metrics import boundary_f, jaccard

    dataset = MeViS(data, "valid_u")
    dataset.load_masks()
    out = {"decode_png": 0.0, "ground_truth": 0.0, "J": 0.0, "F": 0.0}
    targets = (gt for video in dataset.videos() for gt in dataset.video_target_masks(dataset.video_expressions(video)))
    for expr in dataset.expressions:  # in video order, as the targets
        t0 = time.perf_counter()
        gt = next(targets)
        t1 = time.perf_counter()
        pred, _ = read_prediction(data / "predictions" / expr.video / expr.exp_id, expr.frames, gt.shape[1:])
        t2 = time.perf_counter()
        jaccard(gt, pred)
        t3 = time.perf_counter()
        boundary_f(gt, pred)
        t4 = time.perf_counter()
        out["ground_truth"] += t1 - t0
        out["decode_png"] += t2 - t1
        out["J"] += t3 - t2
        out["F"] += t4 - t3
    return out


def _reference_seconds(data: Path, count: int) -> tuple[float, int, list]:
    """The literal per-frame path (PIL decode, reference J and F) on the first ``count`` expressions."""
    from PIL import Image

    from ssa_rvos.data import MeViS
    from ssa_rvos.evaluation.reference import boundary_f_reference, jaccard_reference

    dataset = MeViS(data, "valid_u")
    exprs = dataset.expressions[:count]
    scores = []
    start = time.perf_counter()
    for expr in exprs:
        gt = dataset.target_masks(expr)
        pred = np.zeros_like(gt)
        for t, frame in enumerate(expr.frames):
            with Image.open(data / "predictions" / expr.video / expr.exp_id / f"{frame}.png") as im:
                pred[t] = np.asarray(im.convert("L")) > 0
        # the reference functions work frame by frame
        scores.append((float(np.mean(jaccard_reference(gt, pred))), float(np.mean(boundary_f_reference(gt, pred)))))
    return time.perf_counter() - start, sum(len(e.frames) for e in exprs), scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="bench_evaluate_data", help="folder for the generated load (reused)")
    parser.add_argument("--size", type=int, nargs=2, default=[480, 854], metavar=("H", "W"))
    parser.add_argument("--videos", type=int, default=20)
    parser.add_argument("--expressions-per-video", type=int, default=4)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="also time these --workers")
    parser.add_argument("--reference-expressions", type=int, default=8,
                        help="expressions the per-frame reference runs on (scaled to the load); 0 skips it")
    parser.add_argument("--official-seconds", type=float, default=14.7,
                        help="the official MeViS script's time on the default load (the issue's idle figure)")
    parser.add_argument("--output", help="also write the results as JSON here")
    args = parser.parse_args()
    data = Path(args.data).resolve()
    sys.path.insert(0, str(SRC))
    start = time.perf_counter()
    make_load(data, videos=args.videos, per_video=args.expressions_per_video, frames=args.frames,
              size=tuple(args.size), seed=args.seed)
    num_expressions = args.videos * args.expressions_per_video
    num_frames = num_expressions * args.frames
    print(f"load: {num_expressions} expressions x {args.frames} frames at {args.size[0]}x{args.size[1]} "
          f"({num_frames} PNGs) in {data} (ready in {time.perf_counter() - start:.1f} s)")
    results: dict = {"load": {"expressions": num_expressions, "frames": args.frames, "size": args.size},
                     "command": {}}
    # the official script's figure is of the default load only
    default_load = (num_expressions, args.frames, list(args.size)) == (80, 60, [480, 854])
    json_out = data / "report.json"
    runs = [("png", "default", None)] + [("png", f"--workers {w}", w) for w in args.workers]
    runs += [("rle", "default", None)]
    values = {}
    for source, label, workers in runs:
        predictions = str(data / ("predictions" if source == "png" else "masks.json"))
        seconds, scores = _run_command(_command(data, predictions, workers), json_out)
        values[(source, label)] = scores
        results["command"][f"{source} {label}"] = seconds
        versus = (f"({args.official_seconds / seconds:4.1f}x the official script's {args.official_seconds} s) "
                  if default_load else "")
        print(f"command, {source:>3} predictions, {label:<12}: {seconds:6.2f} s {versus}J&F {100 * scores['J&F']:.4f}")
    first = next(iter(values.values()))
    same = all(v == first for v in values.values())
    print(f"identical J, F, J&F and per-expression scores across the runs: {same}")
    results["identical_across_runs"] = same

    results["import_seconds"] = _import_seconds()
    stages = _stages(data)
    results["stages_one_core"] = stages
    print(f"stages on one core: import {results['import_seconds']:.2f} s, "
          + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items()))
    if args.reference_expressions > 0:
        seconds, frames, scores = _reference_seconds(data, args.reference_expressions)
        scaled = seconds * num_frames / frames
        agree = scores == first["per_expression"][:len(scores)]
        results["reference"] = {"seconds": seconds, "frames": frames, "scaled_seconds": scaled, "agrees": agree}
        default = results["command"]["png default"]
        print(f"reference per-frame path: {seconds:.1f} s for {frames} frames, {scaled:.1f} s scaled to the load "
              f"({scaled / default:.1f}x the default command); same per-expression scores: {agree}")
    from benchutil import machine

    results["machine"] = {k: v for k, v in machine().items() if k != "threads"}
    results["affinity_cores"] = len(os.sched_getaffinity(0))
    print(f"machine: {results['machine']['cpu']} ({results['affinity_cores']} cores)")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        shown = {**vars(args), "data": os.path.basename(str(data))}  # no path of this machine in the results
        Path(args.output).write_text(json.dumps({"args": shown, **results}, indent=1))
    if not same:
        raise SystemExit("the runs disagree")


if __name__ == "__main__":
    main()
