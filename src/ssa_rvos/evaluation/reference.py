"""Slow, literal reference implementation of the DAVIS-2017 J and F metrics.

This is the reference path that the tests and ``bench/bench_metrics.py`` compare the fast implementation
(:mod:`ssa_rvos.evaluation.metrics`) against. It follows the toolkit (``davis2017-evaluation``,
``davis2017/metrics.py``) step by step, one frame at a time, and favours obviousness over speed:

* ``_seg2bmap``: explicit east / south / south-east shifted copies, XORs, then the last-row / last-column
  overrides;
* the boundaries are dilated with :func:`scipy.ndimage.binary_dilation` and an explicit disk structuring
  element ``dy**2 + dx**2 <= r**2`` (what ``skimage.morphology.disk(r)`` builds; the toolkit applies it with
  ``cv2.dilate``, which treats the outside of the image as background, as ``binary_dilation`` does);
* then the toolkit's precision / recall rules.

Do not use it for real evaluations: at 1080p one frame takes seconds.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = [
    "boundary_f_reference",
    "disk_reference",
    "f_measure_reference",
    "jaccard_reference",
    "seg2bmap_reference",
]


def seg2bmap_reference(seg: np.ndarray) -> np.ndarray:
    """Boundary map of one ``(H, W)`` mask, transcribed from the toolkit's ``_seg2bmap``."""
    seg = np.asarray(seg).astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def disk_reference(radius: float) -> np.ndarray:
    """Disk structuring element: the integer offsets ``(dy, dx)`` with ``dy**2 + dx**2 <= radius**2``.

    For the integer radii the toolkit uses (``ceil(...)`` of the default ``bound_th``, or an integer ``bound_th``)
    this is ``skimage.morphology.disk(radius)``. For a non-integer radius (a non-integer ``bound_th >= 1``)
    skimage would build its grid on half-integer offsets; here the offsets stay integer.
    """
    half = math.floor(radius)
    offsets = np.arange(-half, half + 1)
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    return dy**2 + dx**2 <= radius**2


def _frames(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x[None] if x.ndim == 2 else x


def jaccard_reference(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> np.ndarray:
    """Per-frame J of ``(T, H, W)`` (or ``(H, W)``, treated as T = 1) masks; returns ``(T,)`` float64."""
    gt, pred = _frames(gt), _frames(pred)
    assert gt.shape == pred.shape
    void = np.zeros(gt.shape, dtype=bool) if void is None else _frames(void).astype(bool)
    out = np.zeros(gt.shape[0])
    for t in range(gt.shape[0]):
        g = gt[t].astype(bool)
        p = pred[t].astype(bool)
        inters = np.sum((g & p) & np.logical_not(void[t]))
        union = np.sum((g | p) & np.logical_not(void[t]))
        out[t] = 1.0 if union == 0 else inters / union
    return out


def f_measure_reference(
    foreground_mask: np.ndarray, gt_mask: np.ndarray, void_pixels: np.ndarray | None = None, bound_th: float = 0.008
) -> float:
    """Boundary F-measure of one ``(H, W)`` frame, transcribed from the toolkit's ``f_measure``."""
    if void_pixels is None:
        void_pixels = np.zeros(np.shape(foreground_mask), dtype=bool)
    void_pixels = np.asarray(void_pixels).astype(bool)
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(np.shape(foreground_mask)))

    fg_boundary = seg2bmap_reference(np.asarray(foreground_mask).astype(bool) * np.logical_not(void_pixels))
    gt_boundary = seg2bmap_reference(np.asarray(gt_mask).astype(bool) * np.logical_not(void_pixels))

    disk = disk_reference(bound_pix)
    fg_dil = ndimage.binary_dilation(fg_boundary, structure=disk)
    gt_dil = ndimage.binary_dilation(gt_boundary, structure=disk)

    gt_match = gt_boundary & fg_dil
    fg_match = fg_boundary & gt_dil
    n_fg = np.sum(fg_boundary)
    n_gt = np.sum(gt_boundary)

    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = np.sum(fg_match) / float(n_fg)
        recall = np.sum(gt_match) / float(n_gt)

    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def boundary_f_reference(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = 0.008
) -> np.ndarray:
    """Per-frame F of ``(T, H, W)`` (or ``(H, W)``, treated as T = 1) masks; returns ``(T,)`` float64."""
    gt, pred = _frames(gt), _frames(pred)
    assert gt.shape == pred.shape
    void = None if void is None else _frames(void)
    out = np.zeros(gt.shape[0])
    for t in range(gt.shape[0]):
        out[t] = f_measure_reference(pred[t], gt[t], None if void is None else void[t], bound_th=bound_th)
    return out
