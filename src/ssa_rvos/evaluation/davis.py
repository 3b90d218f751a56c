"""The Ref-DAVIS17 protocol: per-annotator label maps evaluated with the DAVIS-2017 *unsupervised* toolkit.

Facts reproduced here (``davis2017-evaluation``: ``davis2017/davis.py``, ``results.py``, ``evaluation.py``,
``utils.py``; and the SSA authors' ``tools/postprocess_davis.py`` / ``tools/eval_davis_official.py``):

* Ref-DAVIS17 has 4 annotators; each annotator's expressions of a video (one per object) are predicted
  separately and the binary predictions are merged into one label map per frame, expression ``i`` of the
  annotator (0-based, in object order) painting label ``i + 1`` on the pixels that are still 0 (the *first*
  object wins overlaps). The label maps of each annotator are evaluated as a DAVIS unsupervised submission,
  and the 4 resulting summaries are averaged.
* Ground truth: the toolkit reads each annotation PNG, turns the void label 255 into background (0), and
  takes ``N = max label of the first frame`` objects, object ``k`` being ``label == k`` in every frame.
  Note that the toolkit therefore never removes void pixels in the unsupervised task: its
  ``all_gt_masks[ii] == 255`` test runs on boolean masks and is always false. :func:`ground_truth_objects`
  returns the void mask all the same, for callers that want it, but reproducing the official numbers means
  calling :func:`evaluate_unsupervised` with ``void=None`` (void pixels count as background).
* Predictions: ``N = max label over all frames``, object ``k`` being ``label == k`` (no void label; a value of
  255 is object 255 and exceeds the proposal limit).
* Unsupervised evaluation: at most 20 proposals; fewer predicted objects than ground-truth objects are padded
  with empty objects; J and F are computed per frame for every (prediction, ground truth) pair, and predictions
  are assigned to ground-truth objects by the Hungarian algorithm maximising the mean over frames of
  ``(J + F) / 2``.
* Statistics (``db_statistics``) per ground-truth object: mean, recall (fraction of frames with value > 0.5)
  and decay (mean of the first quarter of the frames minus mean of the last quarter, with the toolkit's
  overlapping bins); the global ``J-Mean``, ``J-Recall``, ... are means over all objects of all sequences,
  and ``J&F-Mean = (J-Mean + F-Mean) / 2``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from .metrics import BOUND_TH, j_and_f

__all__ = [
    "MAX_PROPOSALS",
    "SUMMARY_KEYS",
    "VOID_LABEL",
    "db_statistics",
    "evaluate_unsupervised",
    "ground_truth_objects",
    "mean_over_annotators",
    "merge_annotator_masks",
    "predicted_objects",
    "split_label_map",
    "summarize",
]

VOID_LABEL = 255
MAX_PROPOSALS = 20
#: Keys of :func:`summarize`'s result, in the toolkit's column order.
SUMMARY_KEYS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


def merge_annotator_masks(masks_by_object: Sequence[np.ndarray]) -> np.ndarray:
    """Merge one annotator's per-object binary masks into a label map (``tools/postprocess_davis.py``).

    Args:
        masks_by_object: the predicted masks of the annotator's expressions in object order, each
            ``(T, H, W)`` (nonzero = foreground).

    Returns:
        uint8 ``(T, H, W)``: 0 background, ``i + 1`` for object ``i``; where objects overlap the first one (lowest
        index) keeps the pixel.
    """
    if len(masks_by_object) == 0:
        raise ValueError("need at least one object mask")
    if len(masks_by_object) >= VOID_LABEL:
        raise ValueError(f"at most {VOID_LABEL - 1} objects fit in a uint8 label map, got {len(masks_by_object)}")
    shape = np.shape(masks_by_object[0])
    if len(shape) != 3:
        raise ValueError(f"object masks must be (T, H, W), got shape {shape}")
    labels = np.zeros(shape, dtype=np.uint8)
    for i, mask in enumerate(masks_by_object):
        mask = np.asarray(mask)
        if mask.shape != shape:
            raise ValueError(f"object {i} has shape {mask.shape}, object 0 has {shape}")
        labels[(labels == 0) & (mask != 0)] = i + 1
    return labels


def split_label_map(labels: np.ndarray, num_objects: int | None = None) -> np.ndarray:
    """Binary masks of objects ``1..num_objects`` of a label map.

    Args:
        labels: integer ``(T, H, W)`` label map.
        num_objects: number of objects N; default: the maximum label. (The toolkit uses the maximum label of
            the *first* frame for ground truth, see :func:`ground_truth_objects`, and of all frames for
            predictions, see :func:`predicted_objects`.)

    Returns:
        bool ``(N, T, H, W)``, ``[k - 1] = (labels == k)``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"label map must be (T, H, W), got shape {labels.shape}")
    if num_objects is None:
        num_objects = int(labels.max()) if labels.size else 0
    if num_objects < 0:
        raise ValueError(f"num_objects must be >= 0, got {num_objects}")
    ids = np.arange(1, num_objects + 1).reshape(-1, 1, 1, 1)
    return labels[None] == ids


def ground_truth_objects(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth objects with the toolkit's convention (``DAVIS.get_all_masks(seq, True)``).

    The void label 255 is turned into background, then ``N = max label of the first frame`` objects are
    split off (objects appearing only in later frames are ignored, as in the toolkit).

    Args:
        labels: integer ``(T, H, W)`` annotation label maps of a sequence.

    Returns:
        ``(objects, void)``: bool ``(N, T, H, W)`` and bool ``(T, H, W)`` (``labels == 255``). The toolkit does
        not use the void mask in the unsupervised task (see the module docstring).
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.shape[0] == 0:
        raise ValueError(f"label map must be (T, H, W) with T >= 1, got shape {labels.shape}")
    void = labels == VOID_LABEL
    cleaned = np.where(void, 0, labels)
    num_objects = int(cleaned[0].max())
    return split_label_map(cleaned, num_objects), void


def predicted_objects(labels: np.ndarray) -> np.ndarray:
    """Predicted objects with the toolkit's convention (``Results.read_masks``): ``N = max label`` over all
    frames, bool ``(N, T, H, W)``; ``N = 0`` when the maps are all background."""
    return split_label_map(labels)


def evaluate_unsupervised(
    gt_objects: np.ndarray,
    pred_objects: np.ndarray,
    void: np.ndarray | None = None,
    max_proposals: int = MAX_PROPOSALS,
    bound_th: float = BOUND_TH,
) -> tuple[np.ndarray, np.ndarray]:
    """The toolkit's ``_evaluate_unsupervised`` for one sequence.

    Args:
        gt_objects: bool ``(Ng, T, H, W)`` ground-truth objects.
        pred_objects: bool ``(Np, T, H, W)`` predicted objects (``Np`` may be 0).
        void: optional ``(T, H, W)`` pixels to ignore (the toolkit effectively passes none).
        max_proposals: the largest ``Np`` accepted (20 in the toolkit).
        bound_th: boundary tolerance of F.

    Returns:
        ``(J, F)``, each float64 ``(Ng, T)``: the per-frame values of the prediction matched to each
        ground-truth object, in ground-truth order. (The toolkit lists the matched pairs in the order of the
        prediction index instead; the per-object statistics and every mean over objects are the same.)
    """
    gt_objects = np.asarray(gt_objects)
    pred_objects = np.asarray(pred_objects)
    if gt_objects.ndim != 4 or pred_objects.ndim != 4:
        raise ValueError(
            f"objects must be (N, T, H, W), got ground truth {gt_objects.shape} and prediction {pred_objects.shape}"
        )
    if gt_objects.shape[1:] != pred_objects.shape[1:]:
        raise ValueError(
            f"ground truth {gt_objects.shape[1:]} and prediction {pred_objects.shape[1:]} frames differ in shape"
        )
    num_gt, num_frames = gt_objects.shape[:2]
    num_pred = pred_objects.shape[0]
    if num_pred > max_proposals:
        raise ValueError(f"{num_pred} predicted objects: more than the {max_proposals} proposals allowed")
    if num_pred < num_gt:
        padding = np.zeros((num_gt - num_pred, *pred_objects.shape[1:]), dtype=pred_objects.dtype)
        pred_objects = np.concatenate([pred_objects, padding], axis=0)
        num_pred = num_gt
    j_all = np.zeros((num_pred, num_gt, num_frames))
    f_all = np.zeros((num_pred, num_gt, num_frames))
    for ii in range(num_gt):
        for jj in range(num_pred):
            j_all[jj, ii], f_all[jj, ii] = j_and_f(gt_objects[ii], pred_objects[jj], void, bound_th=bound_th)
    score = (np.mean(j_all, axis=2) + np.mean(f_all, axis=2)) / 2
    rows, cols = linear_sum_assignment(-score)
    pred_for_gt = np.empty(num_gt, dtype=np.int64)
    pred_for_gt[cols] = rows
    gt_ids = np.arange(num_gt)
    return j_all[pred_for_gt, gt_ids], f_all[pred_for_gt, gt_ids]


def db_statistics(per_frame_values: np.ndarray) -> tuple[float, float, float]:
    """``(mean, recall, decay)`` of one object's per-frame values (the toolkit's ``db_statistics``).

    recall = fraction of frames with value > 0.5. decay: with
    ``ids = round(linspace(1, T, 5) + 1e-10) - 1``, bin ``i`` holds frames ``ids[i] .. ids[i + 1]`` (inclusive,
    so neighbouring bins share a frame), and decay = mean(bin 0) - mean(bin 3). NaN values are ignored.
    (The toolkit casts ``ids`` to uint8, which only matters for sequences longer than 256 frames; here they
    stay exact.)
    """
    values = np.asarray(per_frame_values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"expected a non-empty 1-D array of per-frame values, got shape {values.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(values)
        recall = np.nanmean(values > 0.5)
        ids = (np.round(np.linspace(1, len(values), 4 + 1) + 1e-10) - 1).astype(np.int64)
        bins = [values[ids[i] : ids[i + 1] + 1] for i in range(4)]
        decay = np.nanmean(bins[0]) - np.nanmean(bins[3])
    return float(mean), float(recall), float(decay)


def summarize(per_object_j: Sequence[np.ndarray], per_object_f: Sequence[np.ndarray]) -> dict[str, float]:
    """Global DAVIS statistics over objects (all objects of all sequences, one ``(T,)`` array per object).

    Returns:
        ``{"J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"}``: each statistic
        of :func:`db_statistics` averaged over objects, and ``J&F-Mean = (J-Mean + F-Mean) / 2``.
    """
    if len(per_object_j) != len(per_object_f):
        raise ValueError(f"{len(per_object_j)} J arrays but {len(per_object_f)} F arrays")
    if len(per_object_j) == 0:
        raise ValueError("no objects to summarize")
    # Like the toolkit: one list per statistic, each averaged with np.mean (same summation order).
    j_m, j_r, j_d = zip(*(db_statistics(v) for v in per_object_j))
    f_m, f_r, f_d = zip(*(db_statistics(v) for v in per_object_f))
    j_mean, j_recall, j_decay = (float(np.mean(x)) for x in (j_m, j_r, j_d))
    f_mean, f_recall, f_decay = (float(np.mean(x)) for x in (f_m, f_r, f_d))
    return {
        "J&F-Mean": (j_mean + f_mean) / 2.0,
        "J-Mean": j_mean,
        "J-Recall": j_recall,
        "J-Decay": j_decay,
        "F-Mean": f_mean,
        "F-Recall": f_recall,
        "F-Decay": f_decay,
    }


def mean_over_annotators(summaries: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Average of the per-annotator summaries (Ref-DAVIS17 reports the mean of its 4 annotators), per key."""
    if len(summaries) == 0:
        raise ValueError("no summaries to average")
    keys = list(summaries[0].keys())
    for s in summaries[1:]:
        if set(s.keys()) != set(keys):
            raise ValueError(f"summaries have different keys: {sorted(keys)} vs {sorted(s.keys())}")
    return {k: float(np.mean([s[k] for s in summaries])) for k in keys}
