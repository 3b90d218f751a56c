"""A2D-Sentences / JHMDB-Sentences metrics, computed as MTTR and ReferFormer report them.

A *sample* is one annotated frame of one expression (one referred instance). Following MTTR
(``metrics.py: calculate_precision_at_k_and_iou_metrics``, ``trainer.py: evaluate_a2d_sentences``; ReferFormer's
``engine.py: evaluate_a2d`` is the same code):

* every sample is a COCO image holding exactly one ground-truth instance; the model's predicted masks for it
  (one or several, each with a score) are COCO detections of that image;
* **mAP**: ``COCOeval(iouType="segm")`` with ``params.useCats = 0`` over all samples; reported as
  ``stats[:6]``: AP@0.5:0.95, AP@0.5, AP@0.75 and AP@0.5:0.95 for small / medium / large instances (``-1``
  where a range holds no instance, pycocotools' convention);
* **IoU metrics** use the highest-scoring prediction of each sample (on equal scores, the last one given, as
  MTTR's stable ``sorted(...)[-1]`` picks it): overall IoU = sum of intersections / sum of unions; mean IoU =
  mean of the per-sample IoU; precision@K = fraction of samples with IoU *strictly* greater than K, for K in
  0.5, 0.6, 0.7, 0.8, 0.9;
* MTTR's per-sample IoU is ``(I + 1e-6) / (U + 1e-6)`` computed in float32 (torch); :func:`mttr_iou` reproduces
  it bit for bit. The epsilon only matters for very small masks (in float32 it vanishes once U is above ~16
  pixels), where it tips an exact tie such as I/U = 1/2 over the threshold.

**Empty ground truth.** MTTR's ground-truth COCO file (``create_gt_in_coco_format.py``) has no entry for a
frame in which the referred instance does not appear: such frame-instance pairs are ignored by the evaluation
(as in CMPC-V), and pycocotools could not hold an empty ground-truth instance meaningfully anyway. Likewise,
:meth:`ImageMetricAccumulator.add` skips a sample whose ground-truth mask is all zeros: it enters none of the
metrics (mAP, IoUs, precisions) and is only counted in ``num_skipped``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np

__all__ = [
    "AP_LABELS",
    "MTTR_IOU_EPS",
    "PRECISION_THRESHOLDS",
    "ImageMetricAccumulator",
    "intersection_and_union",
    "mttr_iou",
]

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
MTTR_IOU_EPS = 1e-6
#: Names of ``COCOeval.stats[:6]``, as MTTR / ReferFormer log them.
AP_LABELS = ("mAP 0.5:0.95", "AP 0.5", "AP 0.75", "AP 0.5:0.95 S", "AP 0.5:0.95 M", "AP 0.5:0.95 L")


def intersection_and_union(gt: np.ndarray, pred: np.ndarray) -> tuple[int, int]:
    """Pixel counts ``(|gt & pred|, |gt | pred|)`` of two same-shape masks (nonzero = foreground)."""
    gt = np.asarray(gt) != 0
    pred = np.asarray(pred) != 0
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} must have the same shape")
    return int(np.count_nonzero(gt & pred)), int(np.count_nonzero(gt | pred))


def mttr_iou(intersection: float, union: float, eps: float = MTTR_IOU_EPS) -> float:
    """MTTR's per-sample IoU: ``(I + eps) / (U + eps)`` evaluated in float32, returned as a Python float."""
    e = np.float32(eps)
    return float((np.float32(intersection) + e) / (np.float32(union) + e))


def _encode(masks: np.ndarray) -> list[dict]:
    """COCO RLEs (``counts`` as str) of bool ``(K, H, W)`` masks."""
    from pycocotools import mask as mask_utils

    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


class ImageMetricAccumulator:
    """Collects samples one by one, then reports the A2D / JHMDB-Sentences metrics.

    Example::

        acc = ImageMetricAccumulator()
        for gt, masks, scores in samples:      # gt (H, W); masks (K, H, W) or (H, W); scores (K,)
            acc.add(gt, masks, scores)
        metrics = acc.summary()                # {"mAP 0.5:0.95": ..., "overall_iou": ..., "P@0.5": ..., ...}
    """

    def __init__(self) -> None:
        self._intersections: list[int] = []
        self._unions: list[int] = []
        self._ious: list[float] = []
        self._images: list[dict] = []
        self._gt_anns: list[dict] = []
        self._detections: list[dict] = []
        self.num_skipped = 0

    @property
    def num_samples(self) -> int:
        """Number of samples evaluated (samples with an empty ground truth are not counted)."""
        return len(self._ious)

    def add(self, gt: np.ndarray, pred: np.ndarray, scores: float | Sequence[float] | np.ndarray | None = None) -> bool:
        """Add one sample.

        Args:
            gt: ``(H, W)`` ground-truth mask (nonzero = foreground).
            pred: ``(H, W)`` predicted mask, or ``(K, H, W)`` predicted masks (e.g. one per query).
            scores: the ``K`` prediction scores (ranking for mAP; the top one is used for the IoU metrics);
                may be omitted for a single prediction (score 1).

        Returns:
            ``True`` if the sample was recorded, ``False`` if it was skipped because ``gt`` is empty.
        """
        gt = np.asarray(gt) != 0
        pred = np.asarray(pred) != 0
        if gt.ndim != 2:
            raise ValueError(f"ground truth must be (H, W), got shape {gt.shape}")
        if pred.ndim == 2:
            pred = pred[None]
        if pred.ndim != 3 or pred.shape[1:] != gt.shape:
            raise ValueError(f"prediction must be (H, W) or (K, H, W) with (H, W) = {gt.shape}, got {pred.shape}")
        num_pred = pred.shape[0]
        if num_pred == 0:
            raise ValueError("at least one predicted mask is needed per sample")
        if scores is None:
            if num_pred != 1:
                raise ValueError(f"scores are required for {num_pred} predicted masks")
            scores = [1.0]
        score_list = [float(s) for s in np.atleast_1d(np.asarray(scores, dtype=np.float64))]
        if len(score_list) != num_pred:
            raise ValueError(f"{len(score_list)} scores for {num_pred} predicted masks")
        if not gt.any():
            self.num_skipped += 1
            return False

        # Highest score; on ties the last one, like MTTR's stable sorted(...)[-1].
        top = max(range(num_pred), key=lambda k: (score_list[k], k))
        inter, union = intersection_and_union(gt, pred[top])
        self._intersections.append(inter)
        self._unions.append(union)
        self._ious.append(mttr_iou(inter, union))

        from pycocotools import mask as mask_utils

        image_id = len(self._images) + 1
        height, width = gt.shape
        self._images.append({"id": image_id, "height": height, "width": width})
        gt_rle = _encode(gt[None])[0]
        self._gt_anns.append({
            "id": image_id,
            "image_id": image_id,
            "category_id": 1,
            "segmentation": gt_rle,
            "area": float(mask_utils.area(gt_rle)),
            "bbox": [float(x) for x in mask_utils.toBbox(gt_rle)],
            "iscrowd": 0,
        })
        for rle, score in zip(_encode(pred), score_list):
            self._detections.append({"image_id": image_id, "category_id": 1, "segmentation": rle, "score": score})
        return True

    def iou_metrics(self) -> dict[str, float]:
        """``overall_iou``, ``mean_iou`` and ``P@0.5`` ... ``P@0.9`` (NaN when no sample was added)."""
        n = self.num_samples
        if n == 0:
            out = {f"P@{k}": float("nan") for k in PRECISION_THRESHOLDS}
            out.update(overall_iou=float("nan"), mean_iou=float("nan"))
            return out
        counts = np.array([sum(iou > k for iou in self._ious) for k in PRECISION_THRESHOLDS])
        precision = counts / n
        out = {f"P@{k}": float(p) for k, p in zip(PRECISION_THRESHOLDS, precision)}
        out["overall_iou"] = float(sum(self._intersections)) / float(sum(self._unions))
        out["mean_iou"] = float(np.mean(self._ious))
        return out

    def coco_map(self) -> dict[str, float]:
        """COCO segmentation AP over all samples (keys :data:`AP_LABELS`; NaN when no sample was added)."""
        if self.num_samples == 0:
            return {label: float("nan") for label in AP_LABELS}
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and the summary table
            coco_gt = COCO()
            coco_gt.dataset = {
                "images": list(self._images),
                "annotations": list(self._gt_anns),
                "categories": [{"id": 1, "name": "dummy_class"}],
            }
            coco_gt.createIndex()
            coco_pred = coco_gt.loadRes([dict(d) for d in self._detections])
            coco_eval = COCOeval(coco_gt, coco_pred, iouType="segm")
            coco_eval.params.useCats = 0  # categories are not predicted in referring segmentation
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        return {label: float(v) for label, v in zip(AP_LABELS, coco_eval.stats[:6])}

    def summary(self, with_map: bool = True) -> dict[str, float]:
        """All metrics: :meth:`coco_map` (unless ``with_map`` is false), :meth:`iou_metrics`, and the counts
        ``num_samples`` / ``num_skipped``."""
        out: dict[str, float] = {}
        if with_map:
            out.update(self.coco_map())
        out.update(self.iou_metrics())
        out["num_samples"] = self.num_samples
        out["num_skipped"] = self.num_skipped
        return out
