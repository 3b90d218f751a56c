"""Score prediction folders against a benchmark's ground truth (spec Sec. 8).

MeViS / Ref-YouTube-VOS protocol: per expression, J and F are means over its frames (the ground
truth is the union of the referred objects); the dataset J and F are means over expressions; J&F is
their mean. Ref-DAVIS17 protocol: per annotator k (exp_id % 4), the four expressions' predictions of
a video are merged into one label map (first object wins), scored with the DAVIS-2017 unsupervised
protocol (Hungarian matching of predicted to true objects by J&F), and the four results averaged.

Predictions are ``<video>/<exp_id>/<frame>.png`` (any nonzero pixel is foreground) or one RLE ``.json``
(:class:`PredictionRLE`). A missing
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


def read_prediction(folder: Path, frames: Sequence[str], size: tuple[int, int], *,
                    out: np.ndarray | None = None, boxes: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """``folder/<frame>.png`` for every frame -> (T, H, W) bool and the frames that had no PNG.

    A PNG of another size than the ground truth is an error naming the file. out: a (T, H, W) bool array
    to fill (and return) instead of a fresh one, e.g. one reused from expression to expression: every
    frame of it is written, absent frames with zeros. boxes: a (T, 4) integer array to fill with each
    frame's bounding box (as :func:`ssa_rvos.evaluation.metrics.mask_boxes` gives it), computed while the
    frame is still in cache.
    """
    if out is None:
        out = np.zeros((len(frames), *size), dtype=bool)
    elif out.shape != (len(frames), *size) or out.dtype != np.bool_:
        raise ValueError(f"out must be a ({len(frames)}, {size[0]}, {size[1]}) bool array, got {out.dtype} {out.shape}")
    if boxes is not None and boxes.shape != (len(frames), 4):
        raise ValueError(f"boxes must be a ({len(frames)}, 4) array, got {boxes.shape}")
    absent = []
    for t, frame in enumerate(frames):
        path = folder / f"{frame}.png"
        if not path.is_file():
            absent.append(frame)
            out[t] = False
            if boxes is not None:
                boxes[t] = (size[0], 0, size[1], 0)
            continue
        read_mask_png(path, out=out[t])  # a PNG of another size is an error naming it
        if boxes is not None:
            boxes[t] = _frame_box(out[t])
    return out, absent


def _frame_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``[y0, y1, x0, x1]`` of one (H, W) bool frame (``[H, 0, W, 0]`` when empty)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return mask.shape[0], 0, mask.shape[1], 0
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(mask[y0:y1].any(axis=0))
    return y0, y1, int(cols[0]), int(cols[-1]) + 1


def _stack_buffer(buffers: dict, frames: int, size: tuple[int, int]) -> np.ndarray:
    """A (frames, H, W) bool array from ``buffers`` (one evaluation's), reused from expression to expression
    (the largest asked for each frame size so far; the caller is done with the previous one). Writing a
    fresh 25 MB stack per expression costs a page fault every 4 KB: about an eighth of an evaluation."""
    buffer = buffers.get(size)
    if buffer is None or buffer.shape[0] < frames:
        buffer = buffers[size] = np.empty((frames, *size), dtype=bool)
    return buffer[:frames]


class PredictionFolders:
    """Predictions as ``<root>/<video>/<exp_id>/<frame>.png`` folders (what `ssa-rvos predict` writes and
    every benchmark's evaluator reads)."""

    layout = "<video>/<exp_id>/<frame>.png"

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: predictions folder not found (expected {self.layout})")

    def has(self, video: str, exp_id: str) -> bool:
        return (self.root / video / exp_id).is_dir()

    def read(self, expr: Expression, size: tuple[int, int], *, out: np.ndarray | None = None
             ) -> tuple[np.ndarray, list[str], np.ndarray]:
        """(T, H, W) bool (``out`` filled when given), the frames without a PNG, and the frames' boxes."""
        boxes = np.empty((len(expr.frames), 4), dtype=np.int64)
        pred, absent = read_prediction(self.root / expr.video / expr.exp_id, expr.frames, size, out=out, boxes=boxes)
        return pred, absent, boxes


class PredictionRLE:
    """Predictions as one JSON file of COCO RLEs, read without any PNG decoding: the ``masks.json`` of
    ``ssa-rvos predict --format rle`` (``{"videos": {video: {exp_id: {"frames": [...], "masks": [RLE per
    frame]}}}}``) or of ``ssa-rvos segment --format rle`` run on one video's frame folder (its input folder
    names the video; each of the dataset's expressions of that video takes the first unused sentence of
    the file with the same text)."""

    layout = "masks.json of `ssa-rvos predict --format rle` or `ssa-rvos segment --format rle`"

    def __init__(self, path: str | os.PathLike, dataset) -> None:
        from ..data.expressions import read_json

        self.path = Path(path)
        data = read_json(self.path, "predictions file")
        # (video, exp_id) -> {frame: RLE}
        self.masks: dict[tuple[str, str], dict[str, dict]] = {}
        if isinstance(data, dict) and isinstance(data.get("videos"), dict):
            for video, exps in data["videos"].items():
                if not isinstance(exps, dict):
                    raise DatasetError(f"{self.path}: video {video!r} must map expression ids to masks")
                for exp_id, entry in exps.items():
                    self.masks[(str(video), str(exp_id))] = self._frames(entry, f"video {video!r} expression {exp_id}")
        elif isinstance(data, dict) and isinstance(data.get("expressions"), list) and "input" in data:
            video = Path(str(data["input"])).name
            texts: dict[str, list[dict]] = {}
            for entry in data["expressions"]:
                if not isinstance(entry, dict) or "text" not in entry:
                    raise DatasetError(f"{self.path}: every expression needs 'text' and 'masks'")
                texts.setdefault(str(entry["text"]), []).append(
                    {"frames": data.get("frames"), "masks": entry.get("masks")})
            if video in dataset.videos():
                for expr in dataset.video_expressions(video):
                    if texts.get(expr.text):
                        entry = texts[expr.text].pop(0)
                        self.masks[(video, expr.exp_id)] = self._frames(entry, f"sentence {expr.text!r}")
        else:
            raise DatasetError(f"{self.path}: expected the masks.json of `ssa-rvos predict --format rle` "
                               "({'videos': {video: {exp_id: {'frames', 'masks'}}}}) or of `ssa-rvos segment "
                               "--format rle`")

    def _frames(self, entry, where: str) -> dict[str, dict]:
        if not (isinstance(entry, dict) and isinstance(entry.get("frames"), list)
                and isinstance(entry.get("masks"), list) and len(entry["frames"]) == len(entry["masks"])):
            raise DatasetError(f"{self.path}: {where} needs 'frames' and 'masks' lists of the same length")
        return dict(zip(map(str, entry["frames"]), entry["masks"]))

    def has(self, video: str, exp_id: str) -> bool:
        return (video, exp_id) in self.masks

    def read(self, expr: Expression, size: tuple[int, int]) -> tuple[np.ndarray, list[str], np.ndarray]:
        """(T, H, W) bool (a transposed view of a column-major stack, as RLEs decode), the frames
        without a mask, and the frames' boxes (from the runs)."""
        from ..data.masks import decode_stack, rle_check, stack_boxes

        frames = self.masks.get((expr.video, expr.exp_id), {})
        compacts: list[dict | None] = []
        absent = []
        for frame in expr.frames:
            rle = frames.get(frame)
            if rle is None:
                absent.append(frame)
                compacts.append(None)
                continue
            where = f"{self.path}: video {expr.video!r} expression {expr.exp_id} frame {frame!r}"
            try:
                compact = rle_check(rle)
            except (ValueError, TypeError) as e:
                raise DatasetError(f"{where}: {e}") from None
            if tuple(compact["size"]) != tuple(size):
                raise DatasetError(f"{where}: the mask is {compact['size'][0]}x{compact['size'][1]}, the frame is "
                                   f"{size[0]}x{size[1]}")
            compacts.append(compact)
        return decode_stack(compacts, size).transpose(0, 2, 1), absent, stack_boxes(compacts, size)


def open_predictions(path: str | os.PathLike, dataset) -> PredictionFolders | PredictionRLE:
    """The predictions at ``path``: a folder of PNG folders, or a ``.json`` file of RLEs."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".json":
        return PredictionRLE(path, dataset)
    if path.is_file():
        raise DatasetError(f"{path}: expected a predictions folder ({PredictionFolders.layout}) or a .json file "
                           f"({PredictionRLE.layout})")
    return PredictionFolders(path)


def _score_video(dataset, source, video: str, indices: Sequence[int], buffers: dict | None = None
                 ) -> list[tuple[int, ExpressionScore]]:
    """Score the expressions ``indices`` (of ``dataset.expressions``, all of one video); the ground truth
    of the video is decoded once for all of them. buffers: stacks to reuse (:func:`_stack_buffer`)."""
    buffers = {} if buffers is None else buffers
    exprs = [dataset.expressions[i] for i in indices]
    present = [source.has(e.video, e.exp_id) for e in exprs]
    targets = dataset.video_targets([e for e, p in zip(exprs, present) if p])
    out = []
    for i, expr, has in zip(indices, exprs, present):
        if not has:
            out.append((i, ExpressionScore(expr.video, expr.exp_id, expr.text, 0.0, 0.0, len(expr.frames), "missing")))
            continue
        gt, gt_boxes = next(targets)
        if isinstance(source, PredictionFolders):  # PNGs: into a stack reused from expression to expression
            pred, absent, pred_boxes = source.read(expr, gt.shape[1:],
                                                   out=_stack_buffer(buffers, len(expr.frames), gt.shape[1:]))
        else:
            pred, absent, pred_boxes = source.read(expr, gt.shape[1:])
        j, f = j_and_f(gt, pred, gt_boxes=gt_boxes, pred_boxes=pred_boxes)
        out.append((i, ExpressionScore(expr.video, expr.exp_id, expr.text, float(np.mean(j)), float(np.mean(f)),
                                       len(expr.frames), "incomplete" if absent else "ok")))
    return out


_WORKER_STATE: dict = {}

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Tell glibc's allocator to keep freed memory mapped in this process (``mallopt``: buffers up to
    4 MiB from the heap, no trimming below 256 MiB free); False where there is no glibc.

    Why: scoring decodes thousands of frames into fresh buffers of a few hundred KB (the inflated image
    data, the decoded mask). With the default settings glibc hands such buffers back to the system when
    they are freed, so every frame page-faults its buffers afresh: measured on a 480x854 mask PNG, 0.69
    ms a frame instead of 0.22. A process-wide setting with no way back, so only the processes that exist
    to score call it: the evaluation's worker processes (``--workers 1`` scores in the calling process,
    which keeps glibc's defaults)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, 4 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 256 << 20))


def _worker_init(dataset, source) -> None:
    keep_freed_memory()
    _WORKER_STATE.update(dataset=dataset, source=source, buffers={})


def _worker_score(job: tuple[str, list[int]]) -> list[tuple[int, ExpressionScore]]:
    return _score_video(_WORKER_STATE["dataset"], _WORKER_STATE["source"], *job, _WORKER_STATE["buffers"])


def default_workers(jobs: int) -> int:
    """The cores this process may run on (its CPU affinity, which schedulers and containers set),
    capped by the number of jobs (videos)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, jobs))


def _pool_context():
    """The start method for scoring workers, and whether the workers inherit the parent's memory.

    fork is the cheap start (the workers share the dataset and its annotations), but a forked child
    gets only the calling thread: a lock another thread held at that moment (a web server's, a
    telemetry sender's, a test harness's) stays locked in the child, which can then wait forever. So
    fork only while no other thread runs (tqdm's monitor aside: it only ever takes tqdm's own lock,
    which the workers never use); otherwise forkserver (or spawn), whose workers start from a fresh
    interpreter and read the annotations themselves. Those re-run the main script, so where it cannot
    be (code from stdin) fork it is."""
    import multiprocessing as mp
    import sys
    import threading

    from tqdm import TMonitor

    methods = mp.get_all_start_methods()
    others = [t for t in threading.enumerate() if t is not threading.current_thread() and not isinstance(t, TMonitor)]
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    rerunnable = main_file is None or os.path.isfile(main_file)
    if "fork" in methods and (not others or not rerunnable):
        return mp.get_context("fork"), True
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn"), False


def _scores(dataset, source, *, workers: int | None, progress: bool) -> list[ExpressionScore]:
    from concurrent.futures.process import BrokenProcessPool

    from tqdm import tqdm

    by_video: dict[str, list[int]] = {}
    for i, expr in enumerate(dataset.expressions):
        by_video.setdefault(expr.video, []).append(i)
    jobs = list(by_video.items())
    workers = default_workers(len(jobs)) if workers is None else max(1, min(workers, len(jobs)))
    scores: list[ExpressionScore | None] = [None] * len(dataset.expressions)
    pool = None
    if workers <= 1:
        buffers: dict = {}  # this evaluation's, dropped with it
        results = (_score_video(dataset, source, *job, buffers) for job in jobs)
    else:
        from concurrent.futures import ProcessPoolExecutor

        # A process pool from concurrent.futures, not multiprocessing.Pool: a worker that dies (killed
        # for memory, say) fails the run instead of leaving it waiting forever.
        context, inherits = _pool_context()
        if inherits:  # annotations kept in memory (MeViS' mask_dict.json) are read once, here
            dataset.load_masks()
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                   initargs=(dataset, source))
        results = pool.map(_worker_score, jobs)  # in the split's order, one video per task
    bar = tqdm(total=len(dataset.expressions), desc=f"evaluate {dataset.name} {dataset.split}", unit="exp",
               disable=not progress)
    try:
        for done in results:
            for i, score in done:
                scores[i] = score
            bar.update(len(done))
    except BrokenProcessPool as e:
        raise DatasetError(f"a scoring worker process died ({e}); out of memory? Run with --workers 1 "
                           "to score in this process") from None
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return scores  # type: ignore[return-value]


def evaluate_predictions(dataset, predictions: str | os.PathLike, *, workers: int | None = None,
                         progress: bool = False) -> EvaluationReport:
    """Score ``predictions`` (a folder of PNG folders or an RLE ``.json``, see :func:`open_predictions`)
    on every expression of ``dataset`` (a reader with ground truth). workers: processes scoring videos
    (None: :func:`default_workers`).

    Ref-DAVIS17 readers are scored with the DAVIS protocol (:func:`evaluate_davis`).
    """
    if not dataset.has_masks:
        raise DatasetError(f"{dataset.root}: split {dataset.split!r} of {dataset.name} has no ground truth "
                           "(a server split: make a submission with `ssa-rvos submit`)")
    source = predictions if hasattr(predictions, "read") else open_predictions(predictions, dataset)
    benchmark = BENCHMARKS.get(dataset.name)  # SynthRef reads as "mevis"; A2D and others score per expression
    if benchmark is not None and benchmark.protocol == "davis":
        return evaluate_davis(dataset, source, progress=progress)
    scores = _scores(dataset, source, workers=workers, progress=progress)
    j = float(np.mean([s.j for s in scores])) if scores else 0.0
    f = float(np.mean([s.f for s in scores])) if scores else 0.0
    return EvaluationReport(
        dataset=dataset.name, split=dataset.split, protocol="mevis", j=j, f=f, jf=(j + f) / 2,
        num_expressions=len(scores), expressions=scores,
        missing=[f"{s.video}/{s.exp_id}" for s in scores if s.status == "missing"],
        incomplete=[f"{s.video}/{s.exp_id}" for s in scores if s.status == "incomplete"],
    )


def evaluate_davis(dataset, predictions, *, progress: bool = False) -> EvaluationReport:
    """Ref-DAVIS17: merge each annotator's predictions per video, DAVIS-2017 unsupervised protocol
    per annotator, mean of the four (spec Sec. 8). predictions: a path or an :func:`open_predictions` source."""
    from tqdm import tqdm

    from .davis import (
        evaluate_unsupervised,
        ground_truth_objects,
        mean_over_annotators,
        merge_annotator_masks,
        predicted_objects,
        summarize,
    )

    source = predictions if hasattr(predictions, "read") else open_predictions(predictions, dataset)
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
                status = "ok"
                if source.has(video, expr.exp_id):
                    pred, absent, _ = source.read(expr, size)
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
