"""Where a SynthRef model's errors come from: choosing the object, or drawing its mask.

For every expression of a held-out SynthRef split (the first ``--videos`` videos), the model runs once and
its outputs are scored (region similarity J, mean over frames, percent) in five ways:

* ``union``: the MeViS protocol (the union of the video queries scoring > 0.5), what the table reports;
* ``top1``: the single best-scoring video query;
* ``best query``: the video query whose mask is closest to the truth, whatever its score (an oracle of
  the choice: the mask quality the model could reach if it always picked the right query);
* ``frame top1`` and ``frame best``: the same two for the frame decoder's last layer, frame by frame
  (before the video stage);

plus the mean number of queries ``union`` selects (and, with ``--thresholds``, ``union`` at other score
thresholds than the protocol's 0.5). ``best query`` far above ``top1`` means grounding errors
(the right mask exists, the scores pick another); a low ``best query`` means the masks themselves are poor.
For multi-target expressions no single query covers every target, so their ``top1`` and ``best query`` are
low by construction. ``--short-side`` predicts at another size than the model's own.

``--text`` prints instead how far apart the frozen CLIP puts sentences that differ in one word (what the
decoders have to tell apart).

``--sensitivity`` asks whether the sentence changes the answer at all. Every expression of a video is run
on the same clip; then, for every ordered pair (a, b) of expressions of one video whose targets differ, the
output for sentence b is scored against a's ground truth, as if the model had been given another sentence
of the same video. A model that reads its sentence scores far lower with the wrong one; a model that
ignores it scores the same. Also reported: how often the selected set of queries (score > 0.5) changes
with the sentence, how far the video scores move (mean |s_a - s_b| over the queries), and how often the
top query is the same.

``--calibration`` asks what a video score of 0.5 means. Trained with cross-entropy weighted [1, w] (w the
no-object weight, 0.1 in every recipe), a query that is the matched one with probability p is best served
by the score s = p / (p + w (1 - p)): s > 0.5 then means only p > w / (1 + w) (1/11 for w = 0.1). For every
video query of every single-target expression it bins the scores and reports, per bin, the fraction of
queries whose mask is right (J >= 0.5 against the target), the fraction that are the expression's best
query with J >= 0.5 (one per expression at most: what the training's matching would pick, roughly), and
the p the formula gives for those scores.

    python scripts/synthref_diagnose.py --data datasets/synthref_heldout --model ssa_tiny.synthref --videos 40
    python scripts/synthref_diagnose.py --data datasets/synthref --split valid_u --thresholds 0.3,0.7,0.9
    python scripts/synthref_diagnose.py --text
    python scripts/synthref_diagnose.py --data datasets/synthref_heldout --videos 40 --sensitivity
    python scripts/synthref_diagnose.py --data datasets/synthref_heldout --videos 40 --calibration
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from ssa_rvos.data import MeViS
from ssa_rvos.data.synthref import KINDS, expression_kinds
from ssa_rvos.data.transforms import resize_frames, test_resize_shape
from ssa_rvos.evaluation.metrics import jaccard
from ssa_rvos.postprocess import query_masks
from ssa_rvos.pretrained import load_pretrained
from ssa_rvos.runtime import torch_threads

COLUMNS = ("union", "top1", "best query", "frame top1", "frame best")

# Sentence pairs that differ in one attribute, as the generator words them.
TEXT_PAIRS = (
    ("colour", "the red circle", "the blue circle"),
    ("shape", "the red circle", "the red square"),
    ("size", "the small red circle", "the big red circle"),
    ("left / right", "the circle moving to the left", "the circle moving to the right"),
    ("up / down", "the circle moving up", "the circle moving down"),
    ("still / moving", "the circle that is not moving", "the circle that is moving"),
    ("stops / starts", "the square that stops moving", "the square that starts moving"),
)


def score_expression(model, clip: torch.Tensor, text: str, gt: np.ndarray,
                     thresholds: tuple[float, ...] = ()) -> dict[str, float]:
    """clip: (1, T, 3, h, w) resized frames; gt: (T, H, W) bool at the original size; ``thresholds`` adds
    a ``union@t`` entry for each (the union of the queries scoring > t)."""
    T, H, W = gt.shape
    out = model(clip, [text])
    scores = out.video_scores()[-1, 0]  # (N,): the last video layer, eval-mode K = 1
    masks, _, _ = query_masks(out.video_mask_embed[-1, -1, 0], out.video_mask_features[0],
                              padded_size=out.padded_size, image_size=out.image_size, output_size=(H, W))
    masks = masks.numpy()  # (N, T, H, W)
    per_query = np.array([jaccard(gt, m).mean() for m in masks])

    def union_j(threshold: float) -> float:
        chosen = (scores > threshold).numpy()
        return float(jaccard(gt, masks[chosen].any(0) if chosen.any() else np.zeros_like(gt)).mean())

    selected = (scores > 0.5).numpy()

    # Frame decoder, last layer: its masks at stride 4 of the padded input, cropped and resized.
    h, w = out.image_size
    frame = F.interpolate(out.frame_masks[-1, 0], size=out.padded_size, mode="bilinear", align_corners=False)
    frame = F.interpolate(frame[..., :h, :w], size=(H, W), mode="bilinear", align_corners=False) > 0  # (T, N, H, W)
    frame_scores = out.frame_logits[-1, 0].softmax(-1)[..., 0]  # (T, N)
    frame_j = np.stack([jaccard(np.repeat(gt[t][None], frame.shape[1], 0), frame[t].numpy()) for t in range(T)])
    return {"union": union_j(0.5), "top1": float(per_query[int(scores.argmax())]),
            "best query": float(per_query.max()),
            "frame top1": float(frame_j[np.arange(T), frame_scores.argmax(1).numpy()].mean()),
            "frame best": float(frame_j.max(1).mean()), "selected": float(selected.sum()),
            **{f"union@{t:g}": union_j(t) for t in thresholds}}


def text_report(model) -> None:
    """Cosine similarity of the CLIP sentence features (the end-of-text token, as SSA uses it) and the
    relative distance ||a - b|| / ||a|| of the word features, for each pair of TEXT_PAIRS."""
    print("| attribute | sentence a | sentence b | sentence cosine | word features, relative distance |")
    print("|---|---|---|---|---|")
    for attribute, a, b in TEXT_PAIRS:
        text = model.backbone.encode_text([a, b])
        s = F.normalize(text.sentence.float(), dim=-1)
        keep = text.word_mask[0] | text.word_mask[1]
        wa, wb = text.words[0][keep].float(), text.words[1][keep].float()
        print(f"| {attribute} | {a} | {b} | {float(s[0] @ s[1]):.3f} | {float((wa - wb).norm() / wa.norm()):.3f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="SynthRef folder (required unless --text)")
    p.add_argument("--split", default="valid_u", help="held-out split (default: %(default)s)")
    p.add_argument("--model", default=None, help="bundled name, checkpoint file or folder (default: the bundled model)")
    p.add_argument("--videos", type=int, default=40, help="first N videos of the split (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--short-side", type=int, default=None,
                   help="resize frames to this short side (default: the model's test_short_side)")
    p.add_argument("--thresholds", default="",
                   help="comma-separated score thresholds: add a union column for each (e.g. 0.3,0.7,0.9)")
    p.add_argument("--text", action="store_true", help="only compare the CLIP features of one-word-apart sentences")
    p.add_argument("--sensitivity", action="store_true",
                   help="measure how much the outputs depend on the sentence (true vs another sentence of the video)")
    p.add_argument("--calibration", action="store_true",
                   help="bin the video scores: fraction of right queries against the weighted cross-entropy's optimum")
    p.add_argument("--no-object-weight", type=float, default=0.1,
                   help="the no-object weight of the training loss, for --calibration (default: %(default)s)")
    args = p.parse_args(argv)
    if not 0 < args.no_object_weight <= 1:
        p.error(f"--no-object-weight: expected a number in (0, 1], got {args.no_object_weight}")
    if not args.text and not args.data:
        p.error("--data is required (or --text)")
    try:
        thresholds = tuple(float(t) for t in args.thresholds.split(",") if t.strip())
    except ValueError:
        p.error(f"--thresholds: expected comma-separated numbers, got {args.thresholds!r}")
    if any(not 0 <= t < 1 for t in thresholds):
        p.error(f"--thresholds: every threshold must be in [0, 1), got {args.thresholds!r}")
    with torch_threads(args.threads):
        return _run(args, thresholds)


def _clip(dataset: MeViS, model, expr, short_side: int | None) -> tuple[torch.Tensor, np.ndarray]:
    """(1, T, 3, h, w) float frames resized for the model, and the (T, H, W) bool ground truth."""
    frames = dataset.read_frames(expr.video, list(expr.frames))
    H, W = frames.shape[1:3]
    short = short_side or model.config.test_short_side or min(H, W)
    size = test_resize_shape(H, W, short=short, max_long=1333)
    clip = torch.from_numpy(np.ascontiguousarray(resize_frames(frames, size)))
    return clip.permute(0, 3, 1, 2)[None].float(), dataset.target_masks(expr, list(expr.frames)).astype(bool)


def _video_outputs(model, clip: torch.Tensor, text: str, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Video scores (N,) of the last video layer and the union mask (T, H, W) of the queries above 0.5."""
    out = model(clip, [text])
    scores = out.video_scores()[-1, 0]
    masks, _, _ = query_masks(out.video_mask_embed[-1, -1, 0], out.video_mask_features[0],
                              padded_size=out.padded_size, image_size=out.image_size, output_size=size)
    chosen = (scores > 0.5).numpy()
    union = masks.numpy()[chosen].any(0) if chosen.any() else np.zeros((masks.shape[1], *size), dtype=bool)
    return scores.numpy(), union


def sensitivity_report(model, dataset: MeViS, kinds: dict, args: argparse.Namespace) -> None:
    """The ``--sensitivity`` table (see the module docstring), overall and by the kind of expression a."""
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for video in dataset.videos()[: args.videos]:
        exprs = dataset.video_expressions(video)
        runs = []
        for expr in exprs:
            clip, gt = _clip(dataset, model, expr, args.short_side)
            scores, union = _video_outputs(model, clip, expr.text, gt.shape[1:])
            runs.append((expr, gt, scores, union))
        for a, gt_a, scores_a, union_a in runs:
            own = float(jaccard(gt_a, union_a).mean())
            for b, gt_b, scores_b, union_b in runs:
                if b is a or np.array_equal(gt_a, gt_b):
                    continue
                pair = {"J true": own, "J other": float(jaccard(gt_a, union_b).mean()),
                        "selection changes": float(not np.array_equal(scores_a > 0.5, scores_b > 0.5)),
                        "same top query": float(scores_a.argmax() == scores_b.argmax()),
                        "mean |score change|": float(np.abs(scores_a - scores_b).mean())}
                for group in ("overall", kinds[(video, a.exp_id)]):
                    for key, value in pair.items():
                        rows[group][key].append(value)
    columns = ("J true", "J other", "selection changes", "same top query", "mean |score change|")
    print(f"sentence sensitivity; first {args.videos} videos of {args.data} {args.split}; pairs of expressions "
          "of one video with different targets; J in percent, the rest as fractions")
    print(f"| kind of a | pairs | {' | '.join(columns)} |")
    print("|" + "---|" * (len(columns) + 2))
    for group in ("overall", *KINDS):
        if group in rows:
            r = rows[group]
            cells = [f"{100 * np.mean(r[c]):.1f}" if c.startswith("J") else f"{np.mean(r[c]):.3f}" for c in columns]
            print(f"| {group} | {len(r['J true'])} | {' | '.join(cells)} |")


SCORE_BINS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


def calibration_report(model, dataset: MeViS, kinds: dict, args: argparse.Namespace) -> None:
    """The ``--calibration`` table (see the module docstring): overall and on motion-only expressions."""
    w = args.no_object_weight
    rows: dict[str, list[tuple[float, bool, bool]]] = defaultdict(list)
    for video in dataset.videos()[: args.videos]:
        for expr in dataset.video_expressions(video):
            kind = kinds[(video, expr.exp_id)]
            if kind == "multi":  # no single query can be right
                continue
            clip, gt = _clip(dataset, model, expr, args.short_side)
            out = model(clip, [expr.text])
            scores = out.video_scores()[-1, 0].numpy()
            masks, _, _ = query_masks(out.video_mask_embed[-1, -1, 0], out.video_mask_features[0],
                                      padded_size=out.padded_size, image_size=out.image_size,
                                      output_size=gt.shape[1:])
            j = np.array([jaccard(gt, m).mean() for m in masks.numpy()])
            best = (np.arange(len(j)) == j.argmax()) & (j >= 0.5)
            for group in ("overall", kind):
                rows[group].extend(zip(scores.tolist(), (j >= 0.5).tolist(), best.tolist()))
    print(f"video score calibration; first {args.videos} videos of {args.data} {args.split}; every video query of "
          f"the single-target expressions; 'mask right': J >= 0.5; 'best query': also the expression's best; "
          f"'loss optimum': p = w s / (w s + 1 - s), w = {w:g}")
    print("| kind | scores | queries | mask right | best query | loss optimum |")
    print("|---|---|---|---|---|---|")
    for group in ("overall", "motion"):
        if group not in rows:
            continue
        s = np.array([r[0] for r in rows[group]])
        ok = np.array([r[1] for r in rows[group]])
        best = np.array([r[2] for r in rows[group]])
        for k, (lo, hi) in enumerate(zip(SCORE_BINS[:-1], SCORE_BINS[1:])):
            inside = (s >= lo) & ((s < hi) if k < len(SCORE_BINS) - 2 else (s <= hi))
            if inside.any():
                p = (w * s[inside] / (w * s[inside] + 1 - s[inside])).mean()
                print(f"| {group} | {lo:g}-{hi:g} | {int(inside.sum())} | {ok[inside].mean():.3f} | "
                      f"{best[inside].mean():.3f} | {p:.3f} |")


def _run(args: argparse.Namespace, thresholds: tuple[float, ...]) -> int:
    model = load_pretrained(args.model, device="cpu").eval()
    if args.text:
        with torch.inference_mode():
            text_report(model)
        return 0
    if args.calibration:
        with torch.inference_mode():
            calibration_report(model, MeViS(args.data, args.split), expression_kinds(args.data, args.split), args)
        return 0
    if args.sensitivity:
        with torch.inference_mode():
            sensitivity_report(model, MeViS(args.data, args.split), expression_kinds(args.data, args.split), args)
        return 0
    dataset = MeViS(args.data, args.split)
    kinds = expression_kinds(args.data, args.split)
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with torch.inference_mode():
        for video in dataset.videos()[: args.videos]:
            for expr in dataset.video_expressions(video):
                clip, gt = _clip(dataset, model, expr, args.short_side)
                result = score_expression(model, clip, expr.text, gt, thresholds)
                for group in ("overall", kinds[(video, expr.exp_id)]):
                    for key, value in result.items():
                        rows[group][key].append(value)

    print(f"J (percent, mean over frames and expressions); first {args.videos} videos of {args.data} {args.split}")
    columns = (*COLUMNS, *(f"union@{t:g}" for t in thresholds))
    print(f"| kind | expressions | {' | '.join(columns)} | queries selected |")
    print("|" + "---|" * (len(columns) + 3))
    for group in ("overall", *KINDS):
        if group not in rows:
            continue
        r = rows[group]
        cells = " | ".join(f"{100 * np.mean(r[c]):.1f}" for c in columns)
        print(f"| {group} | {len(r['union'])} | {cells} | {np.mean(r['selected']):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
