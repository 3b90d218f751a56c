"""The SynthRef results table: J, F and J&F overall and per expression kind, for one or more models.

Each model predicts every expression of a held-out SynthRef split (``ssa-rvos predict``'s computation,
at the model's own test size), the predictions are scored with the MeViS protocol, and the scores are
grouped by the ``kind`` SynthRef writes beside every expression. Prints a Markdown table and writes it,
with the per-kind numbers as JSON, to ``--output``.

    python scripts/synthref_table.py --data datasets/synthref_heldout \\
        --model full=runs/synthref/checkpoints/step_0001500 --model "no adapters=..." \\
        --output runs/synthref_table

``--model`` takes ``LABEL=NAME_OR_PATH`` (a bundled name such as ``ssa_tiny.synthref``, a checkpoint
file, or a training checkpoint folder); predictions are kept under ``--output/<label>`` and reused when
the script is run again (delete the folder to predict afresh).

Below the table: a 95 % bootstrap interval (over expressions, percentile method, 2,000 resamples) of each
model's J&F overall and on motion-only expressions, and of each later model's difference from the
first on the same expressions (a paired bootstrap): a margin whose interval holds 0 is noise.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
import scipy.stats
import torch

from ssa_rvos.data import MeViS
from ssa_rvos.data.masks import write_json_atomic
from ssa_rvos.data.synthref import KINDS, expression_kinds
from ssa_rvos.evaluation.evaluate import evaluate_predictions, scores_by_group
from ssa_rvos.evaluation.predict import predict_split
from ssa_rvos.pretrained import load_pretrained
from ssa_rvos.runtime import torch_threads


def markdown(results: dict[str, dict[str, dict[str, float]]]) -> str:
    groups = ["overall", *KINDS]
    head = "| model | " + " | ".join(f"{g} J / F / J&F" for g in groups) + " |"
    rows = [head, "|" + "---|" * (len(groups) + 1)]
    for label, scores in results.items():
        cells = []
        for g in groups:
            s = scores.get(g)
            cells.append(f"{s['J']:.1f} / {s['F']:.1f} / **{s['J&F']:.1f}**" if s else "-")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    counts = results[next(iter(results))]
    rows.append("")
    rows.append("Expressions: " + ", ".join(f"{g} {counts[g]['expressions']}" for g in groups if g in counts) + ".")
    return "\n".join(rows)


INTERVAL_GROUPS = ("overall", "motion")


def per_expression_jf(report, kinds: dict[tuple[str, str], str]) -> dict[str, dict[tuple[str, str], float]]:
    """``{group: {(video, exp_id): J&F in percent}}`` for the groups of :data:`INTERVAL_GROUPS`."""
    out: dict[str, dict[tuple[str, str], float]] = {g: {} for g in INTERVAL_GROUPS}
    for e in report.expressions:
        key = (e.video, e.exp_id)
        for group in INTERVAL_GROUPS:
            if group == "overall" or kinds.get(key) == group:
                out[group][key] = 50 * (e.j + e.f)
    return out


def bootstrap_interval(values: np.ndarray, *, seed: int = 0) -> list[float]:
    """95 % percentile bootstrap interval of the mean of ``values`` (2,000 resamples, seeded)."""
    if len(values) < 2 or np.all(values == values[0]):
        return [float(values.mean()), float(values.mean())] if len(values) else [float("nan")] * 2
    result = scipy.stats.bootstrap((values,), np.mean, n_resamples=2000, confidence_level=0.95,
                                   method="percentile", random_state=np.random.default_rng(seed))
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def intervals(per_model: dict[str, dict[str, dict[tuple[str, str], float]]]) -> dict:
    """Each model's intervals, and each later model's paired difference from the first."""
    labels = list(per_model)
    first = per_model[labels[0]]
    out: dict = {"models": {}, "differences": {}}
    for label, groups in per_model.items():
        out["models"][label] = {g: bootstrap_interval(np.array(list(v.values()))) for g, v in groups.items()}
    for label in labels[1:]:
        out["differences"][label] = {}
        for g in INTERVAL_GROUPS:
            keys = sorted(set(first[g]) & set(per_model[label][g]))
            diff = np.array([per_model[label][g][k] - first[g][k] for k in keys])
            out["differences"][label][g] = {"mean": float(diff.mean()) if len(diff) else float("nan"),
                                            "interval": bootstrap_interval(diff), "expressions": len(keys)}
    return out


def interval_lines(results: dict, ci: dict) -> str:
    labels = list(results)
    lines = ["95 % bootstrap intervals (over expressions) of J&F:", ""]
    for label in labels:
        cells = [f"{g} {results[label][g]['J&F']:.1f} [{lo:.1f}, {hi:.1f}]"
                 for g, (lo, hi) in ci["models"][label].items() if g in results[label]]
        lines.append(f"- {label}: " + ", ".join(cells))
    for label, groups in ci["differences"].items():
        cells = [f"{g} {d['mean']:+.1f} [{d['interval'][0]:+.1f}, {d['interval'][1]:+.1f}]" for g, d in groups.items()]
        lines.append(f"- {label} minus {labels[0]} (paired): " + ", ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="SynthRef folder")
    p.add_argument("--split", default="valid_u", help="held-out split (default: %(default)s)")
    p.add_argument("--model", action="append", required=True, metavar="LABEL=NAME_OR_PATH")
    p.add_argument("--output", required=True, help="folder for predictions, table.md and table.json")
    p.add_argument("--workers", type=int, default=1, help="processes scoring expressions (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    with torch_threads(args.threads):
        return _run(p, args)


def _run(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    models = []
    for item in args.model:
        label, sep, spec = item.partition("=")
        if not sep or not label or not spec:
            p.error(f"--model {item!r}: expected LABEL=NAME_OR_PATH")
        models.append((label, spec))
    out = Path(args.output)
    dataset = MeViS(args.data, args.split)
    kinds = expression_kinds(args.data, args.split)

    results, timings, per_model = {}, {}, {}
    for label, spec in models:
        folder = out / re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
        model = load_pretrained(spec, device="cpu")
        start = time.perf_counter()
        with torch.inference_mode():
            predict_split(model, dataset, folder, progress=True)
        timings[label] = time.perf_counter() - start
        report = evaluate_predictions(dataset, folder, workers=args.workers, progress=True)
        if report.missing or report.incomplete:
            print(f"{label}: {len(report.missing)} missing, {len(report.incomplete)} incomplete predictions",
                  file=sys.stderr)
        results[label] = scores_by_group(report, kinds)
        per_model[label] = per_expression_jf(report, kinds)
        print(f"{label}: J&F {results[label]['overall']['J&F']:.2f} "
              f"(motion {results[label].get('motion', {}).get('J&F', float('nan')):.2f})", file=sys.stderr)

    ci = intervals(per_model)
    table = markdown(results) + "\n\n" + interval_lines(results, ci)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    write_json_atomic(out / "table.json", {"data": args.data, "split": args.split, "models": dict(models),
                                          "results": results, "intervals": ci,
                                          "predict_seconds": timings})
    return 0


if __name__ == "__main__":
    sys.exit(main())
