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
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

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

    results, timings = {}, {}
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
        print(f"{label}: J&F {results[label]['overall']['J&F']:.2f} "
              f"(motion {results[label].get('motion', {}).get('J&F', float('nan')):.2f})", file=sys.stderr)

    table = markdown(results)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    write_json_atomic(out / "table.json", {"data": args.data, "split": args.split, "models": dict(models),
                                          "results": results, "predict_seconds": timings})
    return 0


if __name__ == "__main__":
    sys.exit(main())
