"""Time and peak memory of one training step (issue 7.4): the tiny recipe on a CPU, the paper's shape on a GPU.

Setups (random weights: time and memory do not depend on them):

* **tiny**: the ``tiny_cpu`` recipe as it is (``ssa_tiny``, 2 clips of 2 frames at 64x64 per step);
* **synthref**: the recipe of the bundled model (``ssa_tiny``, 4 clips of 8 frames at 96x96, 2,304 loss
  points), with ``model.clip_weights=null`` and frames from the synthetic source: the CPU training that
  ``scripts/train_synthref.sh`` runs;
* **paper**: the ``mevis_official`` recipe (``ssa_convnext_large``, the released optimizer, losses and
  gradient clipping) with ``model.clip_weights=null`` and the shape of one GPU's share of its step: one
  clip (``--batch-size``) of 8 frames (``--frames``) at ``--size`` (default 448x768: a training short side
  of 448, the long side at the recipe's cap of 768), drawn from the synthetic source without augmentation
  so that every step has the same shape.

Each run (setup x device x AMP x compile) is a fresh Python process that builds the model, optimizer,
schedule and criterion as ``ssa_rvos.training.trainer.train`` does (its ``build_optimizer``,
``build_scheduler`` and ``accumulate_gradients``), draws its batches beforehand with
``ssa_rvos.training.clips.build_batches`` (data loading is not timed), and runs ``--warmup`` untimed then
``--steps`` timed optimizer steps, each the body of ``train``'s loop: seed, zero the gradients, forward and
backward of the micro-batches, unscale (fp16), clip the gradient norm, step the optimizer (through the
GradScaler with fp16) and the schedule. Reported: the median seconds per step, the first step's seconds
(with ``torch.compile`` it holds the compilation: the compile time is reported as first step minus the
median), and the peak memory (CUDA ``max_memory_allocated`` over the timed steps, or the process's
``ru_maxrss`` and its growth over the peak before the first step).

AMP (``--amp off bf16 fp16``) needs CUDA, as in the trainer; on a CPU only ``off`` runs. ``--compile`` adds
a ``torch.compile``'d model to every run; when compiling fails the run goes on in eager mode and says so.

    python bench/bench_train_step.py --threads 2                                # tiny on CPU (+ paper on a GPU)
    python bench/bench_train_step.py --setups paper --amp off bf16 fp16 --compile \\
        --output bench/results/train_step_h100.json                             # on a GPU
    python bench/bench_train_step.py --setups paper --paper-device cpu --size 128 128 --frames 2 --steps 2
    OMP_NUM_THREADS=1 python bench/bench_train_step.py --setups tiny --warmup 1 --steps 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from benchutil import machine, machine_line, operator_paths, rss_mib, run_child, write_results

AMP = ("off", "bf16", "fp16")
SETUPS = ("tiny", "synthref", "paper")






def setup_overrides(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The recipe and the command-line overrides (as ``ssa-rvos train`` takes them) of ``args.setup``."""
    if args.setup == "tiny":
        return "tiny_cpu", []
    if args.setup == "synthref":
        return "synthref", ["model.clip_weights=null", "data.datasets=[{name: synthetic}]", "data.num_workers=0",
                            "data.synthetic_size=[96, 96]"]
    H, W = args.size
    return "mevis_official", ["model.clip_weights=null", f"batch_size={args.batch_size}", "accumulation=1",
                              f"data.num_frames={args.frames}", "data.datasets=[{name: synthetic}]",
                              "data.augment=false", "data.num_workers=0", f"data.synthetic_size=[{H}, {W}]"]


def child(args: argparse.Namespace) -> None:
    with operator_paths(args.path):  # --paths reference: the reference version of every optimised operator
        measure(args)


def measure(args: argparse.Namespace) -> None:
    import torch
    from torch import nn

    from ssa_rvos.build import build_model
    from ssa_rvos.training.clips import build_batches
    from ssa_rvos.training.config import load_config
    from ssa_rvos.training.losses import SSACriterion
    from ssa_rvos.training.trainer import accumulate_gradients, build_optimizer, build_scheduler, seed_step

    if args.threads:
        torch.set_num_threads(args.threads)
    recipe, overrides = setup_overrides(args)
    config = load_config(recipe, overrides)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]

    # As train() builds them
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    model = build_model(config.model.ssa_config(), clip_weights=config.model.clip_weights).to(device)
    build_seconds = time.perf_counter() - start
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    criterion = SSACriterion(config=config.loss).to(device)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    batches = build_batches(config.data, batch_size=config.batch_size, seed=config.seed,
                            accumulation=config.accumulation)
    steps = [next(batches) for _ in range(args.warmup + args.steps)]
    batches.close()
    model.train()
    net = torch.compile(model) if args.compile else model

    def optimizer_step(step: int, micro_batches) -> float:
        """The body of train()'s loop, without logging and checkpoints."""
        seed_step(config.seed, step, 0)
        optimizer.zero_grad(set_to_none=True)
        losses = accumulate_gradients(net, criterion, micro_batches, device=device, amp_dtype=amp_dtype, scaler=scaler)
        if scaler is not None:
            scaler.unscale_(optimizer)
        if config.optim.clip_grad_norm > 0:
            nn.utils.clip_grad_norm_(trainable, config.optim.clip_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        return losses["total"]

    compile_error = None
    cuda_warmup_peak = None
    baseline = rss_mib()
    seconds, losses = [], []
    for step, micro_batches in enumerate(steps):
        if cuda and step == args.warmup:
            cuda_warmup_peak = torch.cuda.max_memory_allocated() / 2**20
            torch.cuda.reset_peak_memory_stats()
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            loss = optimizer_step(step, micro_batches)
        except Exception as e:  # noqa: BLE001 - torch.compile fails in many ways; eager errors are re-raised
            if net is model or step > 0:
                raise
            message = str(e).strip().splitlines()
            compile_error = f"{type(e).__name__}: {message[0] if message else ''}"[:500]
            print(f"torch.compile failed ({compile_error}); falling back to eager", file=sys.stderr)
            net = model
            loss = optimizer_step(step, micro_batches)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        losses.append(loss)

    timed = seconds[args.warmup:]
    median = statistics.median(timed)
    n_clips, n_frames = steps[0][0].frames.shape[:2]
    out = {"setup": args.setup, "paths": args.path, "recipe": recipe, "overrides": overrides, "device": str(device),
           "amp": args.amp,
           "compile": args.compile, "compiled": net is not model, "compile_error": compile_error,
           "clips_per_step": config.batch_size, "frames": int(n_frames),
           "size": list(steps[0][0].frames.shape[-2:]), "model": config.model.preset,
           "trainable_parameters": sum(p.numel() for p in trainable), "build_seconds": build_seconds,
           "step_seconds": seconds, "warmup": args.warmup, "median_step_seconds": median,
           "first_step_seconds": seconds[0], "compile_seconds": seconds[0] - median if net is not model else None,
           "losses": losses, "peak_rss_mib": rss_mib(), "baseline_rss_mib": baseline,
           "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
           "cuda_warmup_peak_mib": cuda_warmup_peak, "machine": machine()}
    out["rss_growth_mib"] = out["peak_rss_mib"] - baseline
    print(json.dumps(out))


def print_table(results: list[dict], skipped: list[str]) -> None:
    m = results[0]["machine"]
    print(machine_line(m, gpu=True))
    described = set()
    for r in results:
        if r["setup"] not in described:
            described.add(r["setup"])
            print(f"{r['setup']}: {r['model']} (random weights), recipe {r['recipe']}, {r['clips_per_step']} clip(s) x "
                  f"{r['frames']} frames at {r['size'][0]}x{r['size'][1]} per step, {r['trainable_parameters']:,} "
                  f"trainable parameters")
    print(f"median of {len(results[0]['step_seconds']) - results[0]['warmup']} timed step(s) after "
          f"{results[0]['warmup']} untimed\n")
    print(f"{'setup':<8} | {'ops':<9} | {'device':<6} | {'amp':<4} | {'compile':<7} | {'s/step':>7} | "
          f"{'first step s':>12} | {'compile s':>9} | {'peak memory':>21}")
    print("-+-".join("-" * w for w in (8, 9, 6, 4, 7, 7, 12, 9, 21)))
    for r in results:
        if r["cuda_peak_mib"] is not None:
            peak = f"CUDA {r['cuda_peak_mib']:.0f} MiB"
        else:
            peak = f"RSS {r['peak_rss_mib']:.0f} MiB (+{r['rss_growth_mib']:.0f})"
        compiled = "yes" if r["compiled"] else ("FAILED" if r["compile"] else "no")
        compile_s = f"{r['compile_seconds']:.1f}" if r["compiled"] else "-"
        print(f"{r['setup']:<8} | {r['paths']:<9} | {r['device']:<6} | {r['amp']:<4} | {compiled:<7} | "
              f"{r['median_step_seconds']:>7.3f} | {r['first_step_seconds']:>12.2f} | {compile_s:>9} | {peak:>21}")
    for r in results:
        if r["compile_error"]:
            print(f"\n{r['setup']} {r['amp']}: torch.compile failed, measured in eager mode: {r['compile_error']}")
    if skipped:
        print("\n" + "\n".join(skipped))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setups", nargs="+", default=list(SETUPS), choices=SETUPS, help="default: tiny synthref paper")
    p.add_argument("--tiny-device", default="cpu", choices=("cpu", "cuda"), help="tiny and synthref (default: cpu)")
    p.add_argument("--paper-device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto (default): cuda, skipped without a GPU")
    p.add_argument("--amp", nargs="+", default=list(AMP), choices=AMP, help="AMP modes (CUDA only but off)")
    p.add_argument("--compile", action="store_true", help="also run every configuration with torch.compile")
    p.add_argument("--paths", nargs="+", default=["fast"], choices=("fast", "reference"),
                   help="operator versions (default: fast; 'reference fast' compares them)")
    p.add_argument("--size", type=int, nargs=2, default=[448, 768], metavar=("H", "W"),
                   help="paper setup: frame size (default: 448 768)")
    p.add_argument("--frames", type=int, default=8, help="paper setup: frames per clip (default: 8)")
    p.add_argument("--batch-size", type=int, default=1, help="paper setup: clips per step (default: 1)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first, at least 1 (default: 2)")
    p.add_argument("--steps", type=int, default=5, help="timed steps, the median is reported (default: 5)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--output", help="also write the results as JSON here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--setup", choices=SETUPS, help=argparse.SUPPRESS)
    p.add_argument("--device", help=argparse.SUPPRESS)
    p.add_argument("--path", default="fast", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.frames < 1 or args.batch_size < 1:
        p.error("--warmup, --steps, --frames and --batch-size must be >= 1")
    if args.child:
        args.amp = args.amp[0]
        child(args)
        return 0

    import torch

    has_cuda = torch.cuda.is_available()
    runs, skipped = [], []
    for setup in args.setups:
        device = args.paper_device if setup == "paper" else args.tiny_device
        if device == "auto":
            device = "cuda" if has_cuda else None
        if device is None:
            skipped.append(f"{setup}: no GPU here, skipped (run it on a CPU with --paper-device cpu and a small --size)")
            continue
        if device == "cuda" and not has_cuda:
            p.error(f"{setup}: CUDA is not available on this machine")
        for amp in args.amp:
            if amp != "off" and device != "cuda":
                skipped.append(f"{setup}: amp {amp} needs CUDA (the trainer trains in fp32 on a CPU), skipped")
                continue
            for compiled in (False, True) if args.compile else (False,):
                for path in dict.fromkeys(args.paths):
                    runs.append((setup, device, amp, compiled, path))
    if not runs:
        print("\n".join(skipped), file=sys.stderr)
        return 1

    results = []
    for setup, device, amp, compiled, path in runs:
        print(f"{setup} on {device}, amp {amp}{', compiled' if compiled else ''}, {path} operators...", file=sys.stderr)
        cmd = [sys.executable, __file__, "--child", "--setup", setup, "--device", device, "--amp", amp,
               "--size", *map(str, args.size), "--frames", str(args.frames), "--batch-size", str(args.batch_size),
               "--warmup", str(args.warmup), "--steps", str(args.steps), "--threads", str(args.threads),
               "--path", path]
        if compiled:
            cmd.append("--compile")
        results.append(run_child(cmd))
    print_table(results, skipped)
    write_results(args.output, args, results, skipped=skipped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
