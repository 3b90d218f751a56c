"""Many expressions on one video: batched against one by one (issue 7.3).

For each k (default 1, 4 and 16 expressions) and each way of running them, a fresh Python process builds
the predictor (random weights: time and memory do not depend on them), decodes one generated video of T
frames once (``SSAPredictor.init_state``; timed apart) and then segments it for the k expressions:

* **batched**: one ``propagate(state, texts)`` with all k (the expressions are the batch; each frame-stage
  call then holds ``max(1, frame_chunk // k)`` frames for all of them);
* **one by one**: k ``propagate(state, [text])`` calls.

Each frame's masks are dropped as they arrive (what ``ssa-rvos segment`` does; ``--api segment`` instead
keeps every mask of the video in RAM, as ``SSAPredictor.segment`` returns them). Reported per (k, way): the
seconds after one warm-up on a 2-frame clip (median of ``--repeats``), seconds per expression, and the peak
memory: on CUDA ``max_memory_allocated`` during the timed runs, on a CPU the process's peak resident memory
(``ru_maxrss``) and its growth over the peak after the model was loaded and warmed up.

    python bench/bench_expressions.py --threads 2                                 # ssa_tiny on CPU, 96x128
    python bench/bench_expressions.py --model ssa_convnext_large --device cuda --frames 64 \\
        --output bench/results/expressions_h100_large.json                        # 448x800
    OMP_NUM_THREADS=1 python bench/bench_expressions.py --k 1 2 --frames 2 --size 64 64 --short-side 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
from benchutil import machine, machine_line, rss_mib, run_child, write_results

DEFAULT_SIZES = {"ssa_tiny": (96, 128), "ssa_convnext_large": (448, 800)}
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 220), "yellow": (230, 210, 30)}
PHRASES = ("the {} square", "the {} square moving across the frame", "the {} block near the edge",
           "the small {} object that keeps moving")
TEXTS = [p.format(c) for p in PHRASES for c in COLOURS]  # 16 distinct expressions
MODES = ("batched", "one by one")






def make_video(frames: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8: one square of each colour drifting over a noisy background."""
    rng = np.random.default_rng(seed)
    H, W = size
    side = max(4, min(H, W) // 6)
    starts = rng.integers(0, [H - side, W - side], size=(len(COLOURS), 2))
    velocity = rng.integers(-3, 4, size=(len(COLOURS), 2))
    video = np.repeat(rng.integers(40, 90, size=(1, H, W, 3), dtype=np.uint8), frames, axis=0)
    for t in range(frames):
        for (y0, x0), (vy, vx), colour in zip(starts, velocity, COLOURS.values()):
            y, x = int((y0 + vy * t) % (H - side)), int((x0 + vx * t) % (W - side))
            video[t, y:y + side, x:x + side] = colour
    return video


def child(args: argparse.Namespace) -> None:
    import torch

    from ssa_rvos.build import build_model
    from ssa_rvos.predictor import SSAPredictor

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    predictor = SSAPredictor(build_model(args.model), device=device, short_side=args.short_side,
                             frame_chunk=args.frame_chunk)
    k = args.k[0]  # a child runs one k
    texts = TEXTS[:k]
    calls = [texts] if args.mode == "batched" else [[t] for t in texts]

    def run(state) -> None:
        for group in calls:
            if args.api == "segment":
                predictor.segment(state, group)
            else:
                for frame in predictor.propagate(state, group):
                    del frame

    video = make_video(args.frames, tuple(args.size))
    # Warm up on 2 frames so that one-time allocations (kernels, caches) count in the baseline
    with predictor.init_state(video[:2]) as state:
        run(state)
    start = time.perf_counter()
    state = predictor.init_state(video)
    decode = time.perf_counter() - start
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = rss_mib()
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run(state)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    state.close()
    median = statistics.median(seconds)
    out = {"k": k, "mode": args.mode, "api": args.api, "frames": args.frames, "input_size": list(state.input_size),
           "video_size": list(args.size), "model": args.model, "device": str(device), "frame_chunk": args.frame_chunk,
           "decode_seconds": decode, "seconds": seconds, "median_seconds": median, "seconds_per_expression": median / k,
           "peak_rss_mib": rss_mib(), "baseline_rss_mib": baseline,
           "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None, "machine": machine()}
    out["rss_growth_mib"] = out["peak_rss_mib"] - baseline
    print(json.dumps(out))


def print_table(results: list[dict]) -> None:
    r0 = results[0]
    m = r0["machine"]
    print(machine_line(m, gpu=r0["device"].startswith("cuda")))
    print(f"{r0['model']} (random weights) on {r0['device']}, {r0['frames']} frames of {r0['video_size'][0]}x"
          f"{r0['video_size'][1]} seen at {r0['input_size'][0]}x{r0['input_size'][1]}, frame chunk {r0['frame_chunk']}, "
          f"{r0['api']}; median of {len(r0['seconds'])} run(s)\n")
    cuda = r0["cuda_peak_mib"] is not None
    memory = "CUDA peak" if cuda else "peak RSS (growth)"
    print(f"{'k':>3} | {'way':<10} | {'seconds':>8} | {'s/expression':>12} | {'frames/s':>8} | {memory:>19}")
    print(f"{'-' * 3}-+-{'-' * 10}-+-{'-' * 8}-+-{'-' * 12}-+-{'-' * 8}-+-{'-' * 19}")
    for r in results:
        peak = f"{r['cuda_peak_mib']:.0f} MiB" if cuda else f"{r['peak_rss_mib']:.0f} MiB (+{r['rss_growth_mib']:.0f})"
        print(f"{r['k']:>3} | {r['mode']:<10} | {r['median_seconds']:>8.2f} | {r['seconds_per_expression']:>12.2f} | "
              f"{r['frames'] * r['k'] / r['median_seconds']:>8.1f} | {peak:>19}")
    print("\nframes/s counts every (frame, expression) pair")
    for k in sorted({r["k"] for r in results}):
        pair = {r["mode"]: r for r in results if r["k"] == k}
        if len(pair) == 2:
            print(f"k={k}: batched is {pair['one by one']['median_seconds'] / pair['batched']['median_seconds']:.2f}x "
                  f"as fast as one by one")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ssa_tiny", choices=sorted(DEFAULT_SIZES), help="preset, random weights")
    p.add_argument("--k", type=int, nargs="+", default=[1, 4, 16], help="numbers of expressions (default: 1 4 16)")
    p.add_argument("--frames", type=int, default=32, help="video length (default: %(default)s)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="frame size of the generated video (default: 96 128 for ssa_tiny, 448 800 for the large one)")
    p.add_argument("--short-side", type=int, help="test resize short side (default: the video's short side)")
    p.add_argument("--frame-chunk", type=int, default=18, help="images per frame-stage call (default: 18)")
    p.add_argument("--api", default="propagate", choices=("propagate", "segment"),
                   help="propagate: masks dropped frame by frame; segment: all kept (default: propagate)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="ways to run (default: both)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs, the median is reported (default: 1)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda if available")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--output", help="also write the results as JSON here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.size = list(args.size or DEFAULT_SIZES[args.model])
    args.short_side = args.short_side or min(args.size)
    if not all(1 <= k <= len(TEXTS) for k in args.k):
        p.error(f"--k must be between 1 and {len(TEXTS)}")
    if args.frames < 2 or args.repeats < 1:
        p.error("--frames must be >= 2 and --repeats >= 1")
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        child(args)
        return 0

    results = []
    for k in args.k:
        for mode in args.modes:
            if k == 1 and mode != args.modes[0]:
                continue  # one expression is the same run both ways
            print(f"k={k}, {mode}...", file=sys.stderr)
            cmd = [sys.executable, __file__, "--child", "--mode", mode, "--k", str(k), "--model", args.model,
                   "--frames", str(args.frames), "--size", *map(str, args.size), "--short-side", str(args.short_side),
                   "--frame-chunk", str(args.frame_chunk), "--api", args.api, "--repeats", str(args.repeats),
                   "--device", args.device, "--threads", str(args.threads)]
            results.append(run_child(cmd))
    print_table(results)
    write_results(args.output, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
