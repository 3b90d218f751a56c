"""Where inference time goes: the frozen CLIP backbone alone against the whole SSA model, part by part.

For each clip length T (default 8, 32 and 128 frames) a fresh Python process builds the model with random
weights (time does not depend on them), draws one random clip of T frames and takes one expression, then
measures, after ``--warmup`` untimed runs, the median of ``--repeats`` runs of

* **backbone**: the frozen CLIP image trunk alone (its stem and four ConvNeXt stages, without the adapters)
  on the normalised frames, ``--frame-chunk`` images at a time as the model runs them: the floor of this
  design, which cannot be faster than the backbone it adapts;
* **whole model**: ``SSAPredictor.segment(state, [text])``, the engine every caller runs (``segment``,
  ``predict``, the training-time evaluation), on a state made once (``init_state``, not timed, at the clip's
  own size so nothing is resized): its frame stage in chunks of ``--frame-chunk`` images, the video stage,
  and the masks at the input size (pass 2 reuses pass 1's mask features when they fit in the predictor's
  256 MiB cache, else recomputes them);
* **breakdown**: the whole model again, with timers around its parts, installed from this script (forward
  hooks and wrapped methods, each also a ``torch.profiler.record_function`` range): text encoding, CLIP
  stages, adapters, pixel decoder, frame decoder, video mask features (the 1x1 projection of the stride-4
  map the video masks read), trajectory matching, temporal enhancement, video decoder (the rest of the
  video stage) and postprocess (mask embedding x features, upsampling, thresholding); ``other`` is what no
  part covers (normalising and padding, reading the frames from the state, concatenating the chunks).
  Every part boundary synchronises on CUDA, so the breakdown's total is a little above the clean one; the
  shares are what to read from it.

Reported per T: milliseconds per frame of the backbone and of the whole model, the throughput ratio
whole / backbone (issue 7's goal: >= 0.8), the peak memory (CUDA ``max_memory_allocated`` or the
process's ``ru_maxrss``) and the share of every part.

    python bench/bench_inference_parts.py --threads 2                       # ssa_tiny on CPU, 96x128
    python bench/bench_inference_parts.py --model ssa_convnext_large --size 224 400 --frames 8 32
    python bench/bench_inference_parts.py --model ssa_convnext_large --device cuda --dtype bf16 \\
        --output bench/results/inference_parts_h100_large_bf16.json       # 448x800 on a GPU
    OMP_NUM_THREADS=1 python bench/bench_inference_parts.py --frames 2 --size 64 64 --repeats 1 --warmup 0

Default sizes: ``ssa_tiny`` 96x128, ``ssa_convnext_large`` 448x800 (the MeViS test short side 448).
``--trace DIR`` also writes one Chrome trace per T (``torch.profiler``, open in chrome://tracing or
Perfetto) with the parts as named ranges.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from benchutil import machine, machine_line, operator_paths, rss_mib, run_child, write_results

DEFAULT_SIZES = {"ssa_tiny": (96, 128), "ssa_convnext_large": (448, 800)}
TEXT = "the red square moving to the left"
# Table order; "other" is the whole model's time that no part covers.
PARTS = ("text encoding", "CLIP stages", "adapters", "pixel decoder", "frame decoder", "video mask features",
         "trajectory matching", "temporal enhancement", "video decoder", "postprocess", "other")






# ------------------------------------------------------------------------------------------------ timers


class PartTimer:
    """Exclusive wall time per label over nested ``enter``/``exit`` pairs: a part's time excludes the
    labelled parts called inside it. ``sync`` runs at every boundary (``torch.cuda.synchronize`` on CUDA)
    so that asynchronous GPU work lands in the part that launched it."""

    def __init__(self, sync: Callable[[], None], flops: Callable[[], int] | None = None) -> None:
        import torch

        self._record = torch.profiler.record_function
        self.sync = sync
        self._flops = flops or (lambda: 0)  # running total of a FlopCounterMode, attributed as the time is
        self.seconds: dict[str, float] = defaultdict(float)
        self.flops: dict[str, int] = defaultdict(int)
        # [label, start, seconds of labelled children, record_function range, flops at start, children's flops]
        self._stack: list[list] = []

    def enter(self, label: str) -> None:
        self.sync()
        scope = self._record(label)
        scope.__enter__()
        self._stack.append([label, time.perf_counter(), 0.0, scope, self._flops(), 0])

    def exit(self) -> None:
        self.sync()
        label, start, children, scope, flops_start, children_flops = self._stack.pop()
        elapsed = time.perf_counter() - start
        scope.__exit__(None, None, None)
        flops = self._flops() - flops_start
        self.seconds[label] += elapsed - children
        self.flops[label] += flops - children_flops
        if self._stack:
            self._stack[-1][2] += elapsed
            self._stack[-1][5] += flops

    @contextlib.contextmanager
    def part(self, label: str):
        self.enter(label)
        try:
            yield
        finally:
            self.exit()


def instrument(model, timer: PartTimer) -> Callable[[], None]:
    """Put timers around the parts of ``model`` (an SSA); returns the function that removes them.

    Modules get forward pre-/post-hooks; the text encoder and the temporal enhancement are methods, wrapped
    on the instance; the trajectory matching is a function the video decoder module imports by name.
    """
    import ssa_rvos.modeling.video_decoder as video_decoder_module
    import ssa_rvos.predictor as predictor_module

    handles = []

    def hook(module, label: str) -> None:
        handles.append(module.register_forward_pre_hook(lambda *_: timer.enter(label)))
        handles.append(module.register_forward_hook(lambda *_: timer.exit()))

    def timed(fn: Callable, label: str) -> Callable:
        def wrapper(*args, **kwargs):
            with timer.part(label):
                return fn(*args, **kwargs)

        return wrapper

    backbone, trunk = model.backbone, model.backbone.clip.visual.trunk
    hook(trunk.stem, "CLIP stages")
    for stage in trunk.stages:
        hook(stage, "CLIP stages")
    for adapter in backbone.adapters or ():
        hook(adapter, "adapters")
    hook(model.sentence_proj, "text encoding")
    hook(model.pixel_decoder, "pixel decoder")
    hook(model.frame_decoder, "frame decoder")
    hook(model.video_decoder.mask_features, "video mask features")
    hook(model.video_decoder, "video decoder")
    model.encode_text = timed(model.encode_text, "text encoding")
    model.video_decoder.temporal_enhancement = timed(model.video_decoder.temporal_enhancement, "temporal enhancement")
    match = video_decoder_module.match_trajectories
    video_decoder_module.match_trajectories = timed(match, "trajectory matching")
    masks = predictor_module.query_masks
    predictor_module.query_masks = timed(masks, "postprocess")

    def remove() -> None:
        for h in handles:
            h.remove()
        del model.encode_text, model.video_decoder.temporal_enhancement  # back to the class's methods
        video_decoder_module.match_trajectories = match
        predictor_module.query_masks = masks

    return remove


# ------------------------------------------------------------------------------------------------ child


def child(args: argparse.Namespace) -> None:
    with operator_paths(args.path):  # --paths reference: the reference version of every optimised operator
        measure(args)


def measure(args: argparse.Namespace) -> None:
    import torch

    from ssa_rvos.build import build_model
    from ssa_rvos.predictor import SSAPredictor

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if args.dtype == "bf16" else contextlib.nullcontext
    torch.manual_seed(0)
    model = build_model(args.model).to(device).eval()
    T, (H, W), chunk = args.length, args.size, args.frame_chunk
    frames = torch.randint(0, 256, (T, 3, H, W), generator=torch.Generator().manual_seed(0)).float().to(device)
    trunk = model.backbone.clip.visual.trunk

    @torch.inference_mode()
    def backbone_only() -> None:
        with autocast():
            images, _ = model.preprocess(frames)
            for s in range(0, T, chunk):
                x = trunk.stem(images[s:s + chunk])
                for stage in trunk.stages:
                    x = stage(x)

    # the engine at the clip's own size (short side = the clip's): the frames are not resized
    predictor = SSAPredictor(model, frame_chunk=chunk, selection=args.selection, short_side=min(H, W),
                             max_long_side=max(H, W), amp=args.dtype == "bf16")
    state = predictor.init_state(frames.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy())

    def whole_model(timer: PartTimer | None = None) -> None:
        predictor.segment(state, [TEXT])

    def timed_runs(fn: Callable[[], None]) -> list[float]:
        for _ in range(args.warmup):
            fn()
        seconds = []
        for _ in range(args.repeats):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            seconds.append(time.perf_counter() - start)
        return seconds

    baseline_rss = rss_mib()
    backbone_s = timed_runs(backbone_only)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    whole_s = timed_runs(whole_model)
    cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None

    # The breakdown: the same calls with timers (already warm, so no warmup of their own).
    timer = PartTimer(sync)
    remove = instrument(model, timer)
    instrumented = []
    for _ in range(args.repeats):
        sync()
        start = time.perf_counter()
        with timer.part("other"):
            whole_model(timer)
        instrumented.append(time.perf_counter() - start)
    if args.trace:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        counted = dict(timer.seconds)  # the traced run (slowed by the profiler) does not count
        with profile(activities=activities) as prof:
            with timer.part("other"):
                whole_model(timer)
        Path(args.trace).mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(Path(args.trace) / f"trace_{args.model}_T{T}_{args.path}.json"))
        timer.seconds = defaultdict(float, counted)
    remove()
    parts = {label: timer.seconds.get(label, 0.0) / args.repeats for label in PARTS}

    # One more run counting the floating-point operations of matrix products and convolutions per part
    # (torch's FlopCounterMode; element-wise work, grid_sample and softmax are not counted).
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    flop_timer = PartTimer(sync, flops=counter.get_total_flops)
    remove = instrument(model, flop_timer)
    with counter, flop_timer.part("other"):
        whole_model(flop_timer)
    remove()
    flops = {label: flop_timer.flops.get(label, 0) for label in PARTS}
    with FlopCounterMode(display=False) as counter:
        backbone_only()
    backbone_flops = counter.get_total_flops()

    backbone, whole = statistics.median(backbone_s), statistics.median(whole_s)
    padded = list(model.preprocess(frames[:1])[0].shape[-2:])
    out = {"model": args.model, "frames": T, "paths": args.path, "size": [H, W], "padded_size": padded,
           "device": str(device), "dtype": args.dtype, "frame_chunk": chunk, "selection": args.selection,
           "backbone_seconds": backbone_s, "whole_seconds": whole_s, "instrumented_seconds": instrumented,
           "backbone_ms_per_frame": 1e3 * backbone / T, "whole_ms_per_frame": 1e3 * whole / T,
           "throughput_ratio": backbone / whole, "parts_seconds": parts,
           "parts_flops": flops, "backbone_flops": backbone_flops,
           "peak_rss_mib": rss_mib(), "baseline_rss_mib": baseline_rss, "cuda_peak_mib": cuda_peak,
           "machine": machine()}
    print(json.dumps(out))


# ------------------------------------------------------------------------------------------------ parent


def print_comparison(results: list[dict]) -> None:
    """Whole-model time of the reference operators against the fast ones, per T."""
    by = {(r["paths"], r["frames"]): r for r in results}
    lengths = sorted({r["frames"] for r in results})
    print("fast operators against their reference versions (whole model, ms per frame):")
    print(f"{'T':>5} | {'reference':>9} | {'fast':>9} | {'speed-up':>8} | {'pixel decoder ref / fast':>24}")
    print(f"{'-' * 5}-+-{'-' * 9}-+-{'-' * 9}-+-{'-' * 8}-+-{'-' * 24}")
    for T in lengths:
        ref, fast = by[("reference", T)], by[("fast", T)]
        pd_ref, pd_fast = (1e3 * r["parts_seconds"]["pixel decoder"] / T for r in (ref, fast))
        print(f"{T:>5} | {ref['whole_ms_per_frame']:>9.2f} | {fast['whole_ms_per_frame']:>9.2f} | "
              f"{ref['whole_ms_per_frame'] / fast['whole_ms_per_frame']:>7.2f}x | {pd_ref:>11.2f} / {pd_fast:<10.2f}")
    print()


def print_tables(results: list[dict]) -> None:
    r0 = results[0]
    m = r0["machine"]
    print(machine_line(m, gpu=r0["device"].startswith("cuda")))
    print(f"{r0['model']} on {r0['device']} in {r0['dtype']}, {r0['size'][0]}x{r0['size'][1]} frames (padded to "
          f"{r0['padded_size'][0]}x{r0['padded_size'][1]}), 1 expression, frame chunk {r0['frame_chunk']}, "
          f"random weights; {r0['paths']} operators; median of {len(r0['whole_seconds'])} run(s)\n")
    memory = "CUDA peak" if r0["cuda_peak_mib"] is not None else "peak RSS"
    print(f"{'T':>5} | {'backbone ms/frame':>17} | {'whole ms/frame':>14} | {'whole/backbone throughput':>25} | {memory:>10}")
    print(f"{'-' * 5}-+-{'-' * 17}-+-{'-' * 14}-+-{'-' * 25}-+-{'-' * 10}")
    for r in results:
        peak = r["cuda_peak_mib"] if r["cuda_peak_mib"] is not None else r["peak_rss_mib"]
        print(f"{r['frames']:>5} | {r['backbone_ms_per_frame']:>17.2f} | {r['whole_ms_per_frame']:>14.2f} | "
              f"{r['throughput_ratio']:>25.2f} | {peak:>6.0f} MiB")
    print("\ngoal: whole/backbone throughput >= 0.8\n")
    print("where the whole model's time goes (ms per frame, share of the instrumented run):")
    header = "".join(f" | {'T=' + str(r['frames']):>16}" for r in results)
    print(f"{'part':<21}{header}")
    print("-" * 21 + "-+-".join([""] + ["-" * 16] * len(results)))
    for label in PARTS:
        cells = ""
        for r in results:
            total = sum(r["parts_seconds"].values())
            s = r["parts_seconds"][label]
            cells += f" | {1e3 * s / r['frames']:>9.2f} ({s / total:>4.0%})"
        print(f"{label:<21}{cells}")
    totals = "".join(f" | {1e3 * statistics.median(r['instrumented_seconds']) / r['frames']:>16.2f}" for r in results)
    print(f"{'total (instrumented)':<21}{totals}")
    print("\nmatrix-product and convolution work per part (GFLOP per frame, and the rate it ran at in GFLOP/s):")
    print(f"{'part':<21}{header}")
    print("-" * 21 + "-+-".join([""] + ["-" * 16] * len(results)))
    rows = [("CLIP trunk alone", lambda r: (r["backbone_flops"], statistics.median(r["backbone_seconds"])))]
    rows += [(label, lambda r, label=label: (r["parts_flops"][label], r["parts_seconds"][label])) for label in PARTS]
    for label, get in rows:
        cells = ""
        for r in results:
            flops, seconds = get(r)
            rate = f"{flops / seconds / 1e9:>5.0f}" if seconds > 0 and flops else "    -"
            cells += f" | {flops / 1e9 / r['frames']:>9.2f} {rate}"
        print(f"{label:<21}{cells}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ssa_tiny", choices=sorted(DEFAULT_SIZES), help="preset, random weights")
    p.add_argument("--frames", type=int, nargs="+", default=[8, 32, 128], help="clip lengths T (default: 8 32 128)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="frame size (default: 96 128 for ssa_tiny, 448 800 for ssa_convnext_large)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda if available")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="bf16: autocast, CUDA only")
    p.add_argument("--frame-chunk", type=int, default=18, help="images per frame-stage call (default: 18)")
    p.add_argument("--selection", default="top1", choices=("top1", "union"),
                   help="postprocess query selection (default top1: union's count is arbitrary with random weights)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing (default: 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs, the median is reported (default: 3)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--paths", nargs="+", default=["fast"], choices=("fast", "reference"),
                   help="operator versions to time, each in its own processes (default: fast; "
                        "'reference fast' compares them)")
    p.add_argument("--trace", metavar="DIR", help="also write a torch.profiler Chrome trace per T here")
    p.add_argument("--output", help="also write the results as JSON here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    p.add_argument("--path", default="fast", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.size = list(args.size or DEFAULT_SIZES[args.model])
    if args.repeats < 1 or args.warmup < 0 or args.frame_chunk < 1 or min(args.frames) < 1:
        p.error("--repeats, --frame-chunk and --frames must be >= 1, --warmup >= 0")
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dtype == "bf16" and args.device != "cuda":
        p.error("--dtype bf16 runs under CUDA autocast; on a CPU use fp32")
    if args.child:
        child(args)
        return 0

    results = []
    for path in dict.fromkeys(args.paths):
        for length in args.frames:
            print(f"T={length}: {args.model} on {args.device} ({args.dtype}, {path} operators)...", file=sys.stderr)
            cmd = [sys.executable, __file__, "--child", "--length", str(length), "--model", args.model,
                   "--size", *map(str, args.size), "--device", args.device, "--dtype", args.dtype,
                   "--frame-chunk", str(args.frame_chunk), "--selection", args.selection, "--warmup",
                   str(args.warmup), "--repeats", str(args.repeats), "--threads", str(args.threads), "--path", path]
            if args.trace:
                cmd += ["--trace", args.trace]
            results.append(run_child(cmd))
    for path in dict.fromkeys(args.paths):
        print_tables([r for r in results if r["paths"] == path])
    if len(set(args.paths)) == 2:
        print_comparison(results)
    write_results(args.output, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
