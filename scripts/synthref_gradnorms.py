"""Gradient norms per part of the network over training (issue 18: which of the places where the text enters
do the gradients actually use?).

For each checkpoint of a training run, the same micro-batches of the run's own data pipeline (its config,
``--steps`` optimizer steps from ``--start``) go through a forward and backward pass in training mode,
seeded as the trainer seeds a step; the gradient of the weighted total loss is split by part and its L2
norm averaged over the steps. Parts where the sentence enters are marked ``text``: the adapters' sentence
path, the sentence projection, the pixel decoder's bi-directional blocks, the decoders' attention to the
sentence token and the similarity heads; the rest is ``visual``. Also printed: each part's gradient norm
relative to its weights' norm (how fast the part would move under SGD). Prints a Markdown table, writes
it with the numbers as JSON to ``--output``.

    python scripts/synthref_gradnorms.py runs/hardneg1500 --output docs/results/gradnorms.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ssa_rvos.checkpoint import load_model
from ssa_rvos.data.masks import write_json_atomic
from ssa_rvos.runtime import torch_threads
from ssa_rvos.training.clips import build_batches
from ssa_rvos.training.config import load_config
from ssa_rvos.training.losses import SSACriterion
from ssa_rvos.training.trainer import accumulate_gradients, seed_step

# (part, kind, test on a parameter name), first match wins
PARTS = (
    ("adapters: sentence path", "text", lambda n: n.startswith("backbone.adapters.")
     and any(f".{k}." in n for k in ("text_proj", "cross_attn", "gate"))),
    ("adapters: visual path", "visual", lambda n: n.startswith("backbone.adapters.")),
    ("sentence projection", "text", lambda n: n.startswith("sentence_proj.")),
    ("pixel decoder: bi-directional blocks", "text", lambda n: n.startswith("pixel_decoder.fusion_layers.")),
    ("pixel decoder: deformable encoder, FPN", "visual", lambda n: n.startswith("pixel_decoder.")),
    ("frame decoder: sentence attention", "text", lambda n: n.startswith("frame_decoder.") and ".text_attn." in n),
    ("frame decoder: the rest", "visual", lambda n: n.startswith("frame_decoder.")),
    ("video decoder: similarity heads", "text", lambda n: n.startswith("video_decoder.sim_")),
    ("video decoder: sentence attention", "text", lambda n: n.startswith("video_decoder.") and ".text_attn." in n),
    ("video decoder: the rest", "visual", lambda n: n.startswith("video_decoder.")),
)


def part_of(name: str) -> str:
    for part, _, test in PARTS:
        if test(name):
            return part
    raise ValueError(f"parameter {name} belongs to no part")


def checkpoints(run: Path) -> list[Path]:
    found = sorted(p for p in (run / "checkpoints").glob("step_*") if (p / "model.safetensors").is_file())
    if not found:
        raise SystemExit(f"synthref_gradnorms.py: error: {run}/checkpoints holds no checkpoint")
    return found


def measure(checkpoint: Path, config, steps) -> dict[str, dict[str, float]]:
    model = load_model(checkpoint / "model.safetensors")
    model.train()
    criterion = SSACriterion(config=config.loss)
    names = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    sums = {part: 0.0 for part, _, _ in PARTS}
    for step, micro_batches in steps:
        model.zero_grad(set_to_none=True)
        seed_step(config.seed, step, 0)
        accumulate_gradients(model, criterion, micro_batches, device=torch.device("cpu"))
        squares = {part: 0.0 for part in sums}
        for n, p in names:
            if p.grad is not None:
                squares[part_of(n)] += float(p.grad.double().pow(2).sum())
        for part in sums:
            sums[part] += squares[part] ** 0.5 / len(steps)
    weights = {part: 0.0 for part in sums}
    for n, p in names:
        weights[part_of(n)] += float(p.detach().double().pow(2).sum())
    return {part: {"grad": sums[part], "relative": sums[part] / max(weights[part] ** 0.5, 1e-12)} for part in sums}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a training run folder (its config.yaml and checkpoints/)")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps' worth of batches (default: %(default)s)")
    p.add_argument("--start", type=int, default=100_000, help="index of the first step drawn (default: %(default)s, "
                   "past the run's own steps)")
    p.add_argument("--output", type=Path, required=True, help="the JSON file to write")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    config_file = args.run / "config.yaml"
    if not config_file.is_file():
        p.error(f"{config_file}: not found (is {args.run} a training run folder?)")
    config = load_config(config_file, ["data.num_workers=0"])
    found = checkpoints(args.run)
    batches = build_batches(config.data, batch_size=config.batch_size, seed=config.seed, start_step=args.start,
                            accumulation=config.accumulation)
    steps = [(args.start + i, next(batches)) for i in range(args.steps)]
    batches.close()

    results = {}
    with torch_threads(args.threads):
        for checkpoint in found:
            results[checkpoint.name] = measure(checkpoint, config, steps)
            print(f"{checkpoint.name} done", file=sys.stderr)
    kinds = {part: kind for part, kind, _ in PARTS}
    rows = ["| part | kind | " + " | ".join(results) + " |", "|---|---|" + "---|" * len(results)]
    for part in kinds:
        cells = [f"{results[c][part]['grad']:.3g} ({results[c][part]['relative']:.1e})" for c in results]
        rows.append(f"| {part} | {kinds[part]} | " + " | ".join(cells) + " |")
    table = "\n".join(rows)
    print(table)
    write_json_atomic(args.output, {"run": str(args.run), "steps": args.steps, "start": args.start,
                                    "kinds": kinds, "results": results, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
