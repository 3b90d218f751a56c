"""Benchmark: fast J and F (ssa_rvos.evaluation.metrics) against the literal reference implementation.

For each resolution (480x854 and 1080x1920) it draws a synthetic video: a few moving, rotated ellipses
covering roughly 5-30% of the frame as ground truth, and a perturbed copy as prediction (shifted by a few
pixels, eroded or dilated, one ellipse dropped or a false positive added). It times the per-frame J and F of
both implementations, checks that the values are identical, and prints frames per second and the speed-up.

    python bench/bench_metrics.py [--frames-480 N] [--frames-1080 N] [--repeats N] [--seed S]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from benchutil import machine, write_results
from scipy import ndimage

from ssa_rvos.evaluation.metrics import j_and_f
from ssa_rvos.evaluation.reference import boundary_f_reference, jaccard_reference


def _ellipse(height: int, width: int, cy: float, cx: float, ay: float, ax: float, angle: float) -> np.ndarray:
    y0, y1 = max(0, int(cy - max(ay, ax)) - 1), min(height, int(cy + max(ay, ax)) + 2)
    x0, x1 = max(0, int(cx - max(ay, ax)) - 1), min(width, int(cx + max(ay, ax)) + 2)
    mask = np.zeros((height, width), dtype=bool)
    if y0 >= y1 or x0 >= x1:
        return mask
    yy, xx = np.mgrid[y0:y1, x0:x1]
    c, s = np.cos(angle), np.sin(angle)
    u = (yy - cy) * c + (xx - cx) * s
    v = -(yy - cy) * s + (xx - cx) * c
    mask[y0:y1, x0:x1] = (u / ay) ** 2 + (v / ax) ** 2 <= 1.0
    return mask


def synthetic_video(
    num_frames: int, height: int, width: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(gt, pred)``, bool ``(T, H, W)``: moving ellipses and a perturbed copy of them."""
    num_objects = int(rng.integers(2, 5))
    target = rng.uniform(0.05, 0.30) * height * width  # total area aimed at
    centres = rng.uniform([0.2 * height, 0.2 * width], [0.8 * height, 0.8 * width], size=(num_objects, 2))
    velocity = rng.normal(0.0, 0.004 * min(height, width), size=(num_objects, 2))
    shapes = rng.uniform(0.5, 1.5, size=(num_objects, 2))
    scale = np.sqrt(target / (np.pi * shapes.prod(axis=1).sum()))
    axes = shapes * scale
    angles = rng.uniform(0, np.pi, size=num_objects)
    gt = np.zeros((num_frames, height, width), dtype=bool)
    pred = np.zeros_like(gt)
    for t in range(num_frames):
        objects = [
            _ellipse(height, width, *(centres[k] + t * velocity[k]), *axes[k], angles[k] + 0.02 * t)
            for k in range(num_objects)
        ]
        gt[t] = np.logical_or.reduce(objects)
        kept = objects[1:] if rng.random() < 0.2 else objects  # sometimes one object is missed
        p = np.logical_or.reduce(kept) if kept else np.zeros((height, width), dtype=bool)
        p = np.roll(p, tuple(rng.integers(-3, 4, size=2)), axis=(0, 1))
        grow = int(rng.integers(-3, 4))
        if grow > 0:
            p = ndimage.binary_dilation(p, iterations=grow)
        elif grow < 0:
            p = ndimage.binary_erosion(p, iterations=-grow)
        if rng.random() < 0.3:  # a false positive
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            p |= _ellipse(height, width, cy, cx, 0.05 * height, 0.08 * width, rng.uniform(0, np.pi))
        pred[t] = p
    return gt, pred


def _best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench(name: str, height: int, width: int, num_frames: int, repeats: int, rng: np.random.Generator) -> dict:
    gt, pred = synthetic_video(num_frames, height, width, rng)
    cover = gt.mean(axis=(1, 2))
    j_fast, f_fast = j_and_f(gt, pred)
    t_fast = _best_time(lambda: j_and_f(gt, pred), repeats)
    start = time.perf_counter()
    j_ref = jaccard_reference(gt, pred)
    f_ref = boundary_f_reference(gt, pred)
    t_ref = time.perf_counter() - start
    same = bool(np.array_equal(j_fast, j_ref) and np.array_equal(f_fast, f_ref))
    fps_fast, fps_ref = num_frames / t_fast, num_frames / t_ref
    print(
        f"{name:>6} {height}x{width}: {num_frames} frames, foreground {cover.min():.0%}-{cover.max():.0%}, "
        f"mean J {j_fast.mean():.4f} F {f_fast.mean():.4f}\n"
        f"        fast {fps_fast:8.1f} frames/s | reference {fps_ref:7.2f} frames/s | "
        f"speed-up {t_ref / t_fast:6.1f}x | identical values: {same}"
    )
    return {"name": name, "size": [height, width], "frames": num_frames,
            "foreground": [float(cover.min()), float(cover.max())], "fast_seconds": t_fast,
            "reference_seconds": t_ref, "fast_fps": fps_fast, "reference_fps": fps_ref,
            "speed_up": t_ref / t_fast, "identical": same, "mean_J": float(j_fast.mean()), "mean_F": float(f_fast.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames-480", type=int, default=24, help="frames at 480x854 (default 24)")
    parser.add_argument("--frames-1080", type=int, default=8, help="frames at 1080x1920 (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats of the fast path (best kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="also write the results as JSON here")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    results = []
    if args.frames_480 > 0:
        results.append(bench("480p", 480, 854, args.frames_480, args.repeats, rng))
    if args.frames_1080 > 0:
        results.append(bench("1080p", 1080, 1920, args.frames_1080, args.repeats, rng))
    if results:
        results[0]["machine"] = machine()
    write_results(args.output, args, results)
    if not all(r["identical"] for r in results):
        raise SystemExit("fast and reference values differ")


if __name__ == "__main__":
    main()
