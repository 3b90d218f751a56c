"""Speed and peak memory of predicting a whole benchmark split (``ssa-rvos predict``'s computation).

The parent generates one SynthRef split in the MeViS layout (``--videos`` videos of ``--frames`` frames at
``--size`` pixels, about six expressions each; made once, in a temporary folder), then runs
``ssa_rvos.evaluation.predict.predict_split`` on it ``--repeats`` times, each in a fresh Python process into
an empty output folder, with the model ``--model`` (the bundled one by default). Reported: the median
seconds, expressions per second, and the processes' peak resident memory.

Whatever ``ssa_rvos`` is importable is timed, so a before/after comparison runs the script twice:

    python bench/bench_predict.py --threads 2 --output bench/results/predict_cpu_after.json
    PYTHONPATH=../old-checkout/src python bench/bench_predict.py --threads 2 --label before
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

from benchutil import machine, machine_line, rss_mib, run_child, write_results


def child(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from ssa_rvos.data import MeViS
    from ssa_rvos.evaluation.predict import predict_split
    from ssa_rvos.pretrained import load_pretrained

    model = load_pretrained(args.model, device="cpu").eval()
    dataset = MeViS(args.data, "valid_u")
    baseline = rss_mib()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        with torch.inference_mode():
            stats = predict_split(model, dataset, out)
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "expressions": stats.written, "peak_rss_mib": rss_mib(),
                      "baseline_rss_mib": baseline, "machine": machine()}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a model name or checkpoint (default: the bundled model)")
    p.add_argument("--videos", type=int, default=20, help="videos in the split (default: %(default)s)")
    p.add_argument("--frames", type=int, default=12, help="frames per video (default: %(default)s)")
    p.add_argument("--size", type=int, default=96, help="frame side (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="runs, each in a fresh process (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--label", default="", help="a name for this run in the table (e.g. before / after)")
    p.add_argument("--output", help="write the results as JSON here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0

    from ssa_rvos.data.synthref import generate_split

    with tempfile.TemporaryDirectory() as data:
        generate_split(data, split="valid_u", videos=args.videos, frames=args.frames, size=args.size, seed=1)
        cmd = [sys.executable, __file__, "--child", "--data", data, "--threads", str(args.threads)]
        if args.model:
            cmd += ["--model", args.model]
        results = [run_child(cmd) for _ in range(args.repeats)]
    seconds = statistics.median(r["seconds"] for r in results)
    n = results[0]["expressions"]
    runs = ", ".join(f"{r['seconds']:.2f}" for r in results)
    print(machine_line(results[0]["machine"], gpu=False))
    print(f"{args.label or 'predict'}: {n} expressions ({args.videos} videos x {args.frames} frames at "
          f"{args.size}px) in {seconds:.2f} s median of {args.repeats} ({n / seconds:.1f} expressions/s; runs "
          f"{runs} s), peak RSS "
          f"{max(r['peak_rss_mib'] for r in results):.0f} MiB")
    write_results(args.output, args, results, median_seconds=seconds, label=args.label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
