"""Score prediction folders against a benchmark's ground truth (spec Sec. 8).

MeViS / Ref-YouTube-VOS protocol: per expression, J and F are means over its frames (the ground
truth is the union of the referred objects); the dataset J and F are means over expressions; J&F is
their mean. Ref-DAVIS17 protocol: per annotator k (exp_id % 4), the four expressions' predictions of
a video are merged into one label map (first object wins), scored with the DAVIS-2017 unsupervised
protocol (Hungarian matching of predicted to true objects by J&F), and the four results averaged.

Predictions are ``<video>/<exp_id>/<frame>.png`` (any nonzero pixel is foreground). A missing
expression folder scores J = F = 0 and is listed; a missing frame counts as an empty mask and is listed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..benchmarks import BENCHMARKS
from ..data.expressions import DatasetError, Expression
from ..data.masks import read_mask_png
from .metrics import j_and_f


@dataclass
class ExpressionScore:
    video: str
    exp_id: str
    text: str
    j: float
    f: float
    frames: int
    status: str = "ok"  # "ok" | "missing" (no folder: scored 0) | "incomplete" (frames missing: empty)


@dataclass
class EvaluationReport:
    dataset: str
    split: str
    protocol: str  # "mevis" (per-expression means) or "davis-unsupervised"
    j: float
    f: float
    jf: float
    num_expressions: int
    expressions: list[ExpressionScore] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        rows = [f"{'dataset':<10}{'split':<10}{'J':>8}{'F':>8}{'J&F':>8}{'expressions':>13}",
                f"{self.dataset:<10}{self.split:<10}{100 * self.j:>8.2f}{100 * self.f:>8.2f}"
                f"{100 * self.jf:>8.2f}{self.num_expressions:>13}"]
        for k, ann in enumerate(self.details.get("annotators", [])):
            rows.append(f"{'':<10}{f'anno_{k}':<10}{100 * ann['J-Mean']:>8.2f}{100 * ann['F-Mean']:>8.2f}"
                        f"{100 * ann['J&F-Mean']:>8.2f}")
        return "\n".join(rows)


def scores_by_group(report: EvaluationReport, groups: Mapping[tuple[str, str], str]) -> dict[str, dict[str, float]]:
    """Mean J, F and J&F of a per-expression report over groups of expressions (e.g. SynthRef's
    expression kinds): ``groups[(video, exp_id)]`` names the group of each expression. Returns
    ``{group: {"J", "F", "J&F", "expressions"}}`` in percent, ``"overall"`` first; expressions that no
    group names count in "overall" only."""
    buckets: dict[str, list[ExpressionScore]] = {"overall": list(report.expressions)}
    for e in report.expressions:
        group = groups.get((e.video, e.exp_id))
        if group is not None:
            buckets.setdefault(group, []).append(e)
    out = {}
    for name, scores in buckets.items():
        j = float(np.mean([e.j for e in scores])) if scores else 0.0
        f = float(np.mean([e.f for e in scores])) if scores else 0.0
        out[name] = {"J": 100 * j, "F": 100 * f, "J&F": 50 * (j + f), "expressions": len(scores)}
    return out


def read_prediction(folder: Path, frames: Sequence[str], size: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """``folder/<frame>.png`` for every frame -> (T, H, W) bool and the frames that had no PNG.

    A PNG of another size than the ground truth is an error naming the file.
    """
    out = np.zeros((len(frames), *size), dtype=bool)
    absent = []
    for t, frame in enumerate(frames):
        path = folder / f"{frame}.png"
        if not path.is_file():
            absent.append(frame)
            continue
        mask = read_mask_png(path)
        if mask.shape != tuple(size):
            raise DatasetError(f"{path}: prediction is {mask.shape[0]}x{mask.shape[1]}, "
                               f"the frame is {size[0]}x{size[1]}")
        out[t] = mask
    return out, absent


def _score_expression(dataset, expr: Expression, predictions: Path) -> ExpressionScore:
    folder = predictions / expr.video / expr.exp_id
    if not folder.is_dir():
        return ExpressionScore(expr.video, expr.exp_id, expr.text, 0.0, 0.0, len(expr.frames), "missing")
    gt = dataset.target_masks(expr)
    pred, absent = read_prediction(folder, expr.frames, gt.shape[1:])
    j, f = j_and_f(gt, pred)
    return ExpressionScore(expr.video, expr.exp_id, expr.text, float(np.mean(j)), float(np.mean(f)),
                           len(expr.frames), "incomplete" if absent else "ok")


_WORKER_STATE: dict = {}


def _worker_init(dataset, predictions: Path) -> None:
    _WORKER_STATE["dataset"], _WORKER_STATE["predictions"] = dataset, predictions


def _worker_score(index: int) -> ExpressionScore:
    dataset = _WORKER_STATE["dataset"]
    return _score_expression(dataset, dataset.expressions[index], _WORKER_STATE["predictions"])


def _scores(dataset, predictions: Path, *, workers: int, progress: bool) -> list[ExpressionScore]:
    from tqdm import tqdm

    n = len(dataset.expressions)
    bar = tqdm(total=n, desc=f"evaluate {dataset.name} {dataset.split}", unit="exp", disable=not progress)
    if workers <= 1 or n < 2:
        scores = []
        for expr in dataset.expressions:
            scores.append(_score_expression(dataset, expr, predictions))
            bar.update()
        bar.close()
        return scores
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # Decode one expression first so that lazily loaded annotations (MeViS' mask_dict.json) are
    # read once here and inherited by the forked workers instead of being re-read by each.
    first = _score_expression(dataset, dataset.expressions[0], predictions)
    bar.update()
    context = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                             initargs=(dataset, predictions)) as pool:
        rest = []
        for score in pool.map(_worker_score, range(1, n), chunksize=8):
            rest.append(score)
            bar.update()
    bar.close()
    return [first, *rest]


def evaluate_predictions(dataset, predictions: str | os.PathLike, *, workers: int = 1,
                         progress: bool = False) -> EvaluationReport:
    """Score ``predictions`` on every expression of ``dataset`` (a reader with ground truth).

    Ref-DAVIS17 readers are scored with the DAVIS protocol (:func:`evaluate_davis`).
    """
    predictions = Path(predictions)
    if not predictions.is_dir():
        raise DatasetError(f"{predictions}: predictions folder not found (expected <video>/<exp_id>/<frame>.png)")
    if not dataset.has_masks:
        raise DatasetError(f"{dataset.root}: split {dataset.split!r} of {dataset.name} has no ground truth "
                           "(a server split: make a submission with `ssa-rvos submit`)")
    benchmark = BENCHMARKS.get(dataset.name)  # SynthRef reads as "mevis"; A2D and others score per expression
    if benchmark is not None and benchmark.protocol == "davis":
        return evaluate_davis(dataset, predictions, progress=progress)
    scores = _scores(dataset, predictions, workers=workers, progress=progress)
    j = float(np.mean([s.j for s in scores])) if scores else 0.0
    f = float(np.mean([s.f for s in scores])) if scores else 0.0
    return EvaluationReport(
        dataset=dataset.name, split=dataset.split, protocol="mevis", j=j, f=f, jf=(j + f) / 2,
        num_expressions=len(scores), expressions=scores,
        missing=[f"{s.video}/{s.exp_id}" for s in scores if s.status == "missing"],
        incomplete=[f"{s.video}/{s.exp_id}" for s in scores if s.status == "incomplete"],
    )


def evaluate_davis(dataset, predictions: str | os.PathLike, *, progress: bool = False) -> EvaluationReport:
    """Ref-DAVIS17: merge each annotator's predictions per video, DAVIS-2017 unsupervised protocol
    per annotator, mean of the four (spec Sec. 8)."""
    from tqdm import tqdm

    from .davis import (
        evaluate_unsupervised,
        ground_truth_objects,
        mean_over_annotators,
        merge_annotator_masks,
        predicted_objects,
        summarize,
    )

    predictions = Path(predictions)
    per_annotator_j: list[list[np.ndarray]] = [[] for _ in range(4)]
    per_annotator_f: list[list[np.ndarray]] = [[] for _ in range(4)]
    scores: list[ExpressionScore] = []
    for video in tqdm(dataset.videos(), desc=f"evaluate davis {dataset.split}", unit="video", disable=not progress):
        labels = dataset.label_maps(video)
        gt_objects, _ = ground_truth_objects(labels)
        exprs = dataset.video_expressions(video)
        size = gt_objects.shape[-2:]
        for k in range(4):
            masks = []
            for expr in (e for e in exprs if dataset.annotator(e) == k):
                folder = predictions / video / expr.exp_id
                status = "ok"
                if folder.is_dir():
                    pred, absent = read_prediction(folder, expr.frames, size)
                    status = "incomplete" if absent else "ok"
                else:
                    pred, status = np.zeros((len(expr.frames), *size), dtype=bool), "missing"
                masks.append(pred)
                # The plain per-expression score against the referred object, reported alongside; taken
                # from the label maps already read rather than re-reading every PNG per expression.
                gt = np.isin(labels, expr.obj_ids)
                j, f = j_and_f(gt, pred)
                scores.append(ExpressionScore(video, expr.exp_id, expr.text, float(np.mean(j)), float(np.mean(f)),
                                              len(expr.frames), status))
            if not masks:
                continue
            merged = merge_annotator_masks(masks)
            # void=None: the official toolkit turns void (255) into background and never excludes it in
            # the unsupervised task (see evaluation.davis); the numbers must match its.
            j, f = evaluate_unsupervised(gt_objects, predicted_objects(merged), None)
            per_annotator_j[k].extend(list(j))
            per_annotator_f[k].extend(list(f))
    annotators = [summarize(per_annotator_j[k], per_annotator_f[k]) for k in range(4) if per_annotator_j[k]]
    mean = mean_over_annotators(annotators)
    scores.sort(key=lambda s: (s.video, int(s.exp_id) if s.exp_id.isdigit() else s.exp_id))
    return EvaluationReport(
        dataset=dataset.name, split=dataset.split, protocol="davis-unsupervised",
        j=float(mean["J-Mean"]), f=float(mean["F-Mean"]), jf=float(mean["J&F-Mean"]),
        num_expressions=len(scores), expressions=scores,
        missing=[f"{s.video}/{s.exp_id}" for s in scores if s.status == "missing"],
        incomplete=[f"{s.video}/{s.exp_id}" for s in scores if s.status == "incomplete"],
        details={"annotators": [{k: float(v) for k, v in a.items()} for a in annotators],
                 "mean": {k: float(v) for k, v in mean.items()}},
    )
