"""Peak memory and speed of segmenting long videos with SSAPredictor (issue 6's memory goal).

For each length (default 100 and 1,000 frames) a fresh Python process opens the same generated mp4, runs
``SSAPredictor.init_state`` + ``propagate`` over its first T frames for E expressions and throws each
frame's masks away as it arrives (what ``ssa-rvos segment`` does: it writes them to disk). Reported per
length: seconds and frames per second; the process's peak resident memory (``ru_maxrss``) and its growth
over the peak after the model was loaded; on CUDA the peak allocated memory (``max_memory_allocated``).
The goal: the 1,000-frame run uses at most 1.5x the memory of the 100-frame run.

    python bench/bench_long_video.py                                   # ssa_tiny, random weights, CPU
    python bench/bench_long_video.py --model ssa_convnext_large --device cuda --size 720 1280
    python bench/bench_long_video.py --model path/to/checkpoint.safetensors --frames 100 1000 3000

``--model`` takes a preset name (random weights: memory and speed do not depend on them) or anything
:func:`ssa_rvos.pretrained.resolve_weights` accepts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchutil import rss_mib


def write_video(path: Path, *, frames: int, size: tuple[int, int], seed: int = 0) -> None:
    """Squares of a few colours drifting over a noisy background, written frame by frame."""
    from ssa_rvos.videoio import VideoWriter

    rng = np.random.default_rng(seed)
    H, W = size
    side = max(8, min(H, W) // 6)
    starts = rng.integers(0, [H - side, W - side], size=(3, 2))
    velocity = rng.integers(-3, 4, size=(3, 2))
    colours = [(220, 40, 40), (40, 200, 60), (40, 80, 220)]
    background = rng.integers(40, 90, size=(H, W, 3), dtype=np.uint8)
    with VideoWriter(path, fps=25) as writer:
        for t in range(frames):
            image = background.copy()
            for (y0, x0), (vy, vx), colour in zip(starts, velocity, colours):
                y = int((y0 + vy * t) % (H - side))
                x = int((x0 + vx * t) % (W - side))
                image[y:y + side, x:x + side] = colour
            writer.write(image)




def child(args: argparse.Namespace) -> None:
    import torch

    from ssa_rvos.build import build_model, list_models
    from ssa_rvos.predictor import SSAPredictor
    from ssa_rvos.runtime import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.model in list_models():
        torch.manual_seed(0)
        predictor = SSAPredictor(build_model(args.model), device=device, short_side=args.short_side,
                                 frame_chunk=args.frame_chunk)
    else:
        predictor = SSAPredictor.from_pretrained(args.model, device=device, short_side=args.short_side,
                                                 frame_chunk=args.frame_chunk)
    texts = ["the red square", "the square moving to the left", "all the squares", "the green one"][: args.texts]
    # Warm up on 2 frames so that one-time allocations (kernels, caches) count in the baseline
    with predictor.init_state(args.video, end=2) as state:
        for _ in predictor.propagate(state, texts):
            pass
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = rss_mib()
    start = time.perf_counter()
    frames = 0
    with predictor.init_state(args.video, end=args.length) as state:
        decoded = time.perf_counter()
        for result in predictor.propagate(state, texts):
            frames += 1
            del result
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    out = {"frames": frames, "texts": len(texts), "seconds": seconds, "decode_seconds": decoded - start,
           "fps": frames / seconds, "input_size": list(state.input_size), "peak_rss_mib": rss_mib(),
           "baseline_rss_mib": baseline, "device": str(device), "threads": torch.get_num_threads()}
    out["rss_growth_mib"] = out["peak_rss_mib"] - baseline
    if device.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ssa_tiny", help="preset (random weights) or checkpoint (default: %(default)s)")
    p.add_argument("--frames", type=int, nargs="+", default=[100, 1000], help="video lengths (default: 100 1000)")
    p.add_argument("--size", type=int, nargs=2, default=[240, 320], metavar=("H", "W"),
                   help="frame size of the generated video (default: 240 320)")
    p.add_argument("--short-side", type=int, default=240, help="test resize short side (default: %(default)s)")
    p.add_argument("--texts", type=int, default=2, choices=range(1, 5), help="expressions at once (default: 2)")
    p.add_argument("--frame-chunk", type=int, default=18, help="images per frame-stage call (default: 18)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--repeat", type=int, default=1, help="run every length this many times (default: 1)")
    p.add_argument("--no-trim", action="store_true",
                   help="children run with SSA_RVOS_MALLOC_TRIM=0 (no malloc_trim between chunks), to compare")
    p.add_argument("--output", help="also write the results as JSON here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--video", help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0

    results = []
    with tempfile.TemporaryDirectory(prefix="ssa-bench-") as tmp:
        video = Path(tmp) / "long.mp4"
        print(f"writing a {max(args.frames)}-frame {args.size[0]}x{args.size[1]} video...", file=sys.stderr)
        write_video(video, frames=max(args.frames), size=tuple(args.size))
        env = {**os.environ, **({"SSA_RVOS_MALLOC_TRIM": "0"} if args.no_trim else {})}
        ratios = []
        for run in range(args.repeat):
            batch = []
            for length in args.frames:
                cmd = [sys.executable, __file__, "--child", "--video", str(video), "--length", str(length),
                       "--model", args.model, "--short-side", str(args.short_side), "--texts", str(args.texts),
                       "--frame-chunk", str(args.frame_chunk), "--device", args.device, "--threads", str(args.threads)]
                done = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if done.returncode:
                    print(done.stderr, file=sys.stderr)
                    return done.returncode
                r = {"run": run, **json.loads(done.stdout.strip().splitlines()[-1])}
                batch.append(r)
                print(f"run {run}: {r['frames']:>6} frames: {r['seconds']:7.1f} s ({r['fps']:.1f} frames/s), peak RSS "
                      f"{r['peak_rss_mib']:.0f} MiB (+{r['rss_growth_mib']:.0f} over the loaded model)"
                      + (f", CUDA peak {r['cuda_peak_mib']:.0f} MiB" if "cuda_peak_mib" in r else ""), file=sys.stderr)
            results += batch
            if len(batch) >= 2:
                # the goal compares 1,000 frames with 100; otherwise the longest run with the shortest
                by_length = {r["frames"]: r for r in batch}
                first, last = (by_length[100], by_length[1000]) if {100, 1000} <= set(by_length) else (batch[0], batch[-1])
                key = "cuda_peak_mib" if "cuda_peak_mib" in first else "peak_rss_mib"
                ratios.append(last[key] / first[key])
                print(f"run {run}: {key} ratio {last['frames']} / {first['frames']} frames: {ratios[-1]:.2f} "
                      f"(goal <= 1.5)", file=sys.stderr)
        if len(ratios) > 1:
            print(f"ratios over {len(ratios)} runs: {', '.join(f'{x:.2f}' for x in ratios)} (min {min(ratios):.2f}, "
                  f"max {max(ratios):.2f}); runs <= 1.5: {sum(x <= 1.5 for x in ratios)} of {len(ratios)}",
                  file=sys.stderr)
    print(json.dumps(results, indent=1))
    if args.output:
        shown = {**vars(args), "output": os.path.basename(args.output)}  # no path of this machine in the results
        Path(args.output).write_text(json.dumps({"args": shown, "results": results, "ratios": ratios}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
