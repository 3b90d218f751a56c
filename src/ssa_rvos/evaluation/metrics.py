"""Fast, exact region similarity J and boundary F-measure, as defined by the DAVIS-2017 toolkit.

The definitions are those of ``davis2017-evaluation`` (``davis2017/metrics.py``: ``db_eval_iou``,
``db_eval_boundary``, ``f_measure``, ``_seg2bmap``); :mod:`ssa_rvos.evaluation.reference` transcribes them
literally, frame by frame, and the tests check that the functions here return exactly the same values.

Conventions, shared by every function of this module:

* masks are ``(T, H, W)`` (T frames) or ``(H, W)`` (one frame) arrays of any dtype; any nonzero value is
  foreground;
* ``void`` (optional, same shape as the masks) marks pixels removed from both the truth and the prediction
  before anything is computed;
* for ``(T, H, W)`` inputs the per-frame results have shape ``(T,)``; for ``(H, W)`` inputs they are 0-d
  float64 arrays (``float(result)`` gives the value).

How F is made fast without changing a single value. The toolkit dilates each 1-pixel-wide boundary map with
a disk of radius ``r`` (offsets ``dy**2 + dx**2 <= r**2``) and counts, for each boundary, its pixels that lie
inside the dilated other boundary. A pixel lies inside ``dilate(B, disk(r))`` exactly when some pixel of ``B``
is at squared Euclidean distance ``<= r**2`` from it. So only the boundary pixels themselves need to be
tested: for sparse boundaries (the normal case: a few thousand pixels) each pixel of one boundary looks up,
row by row of the disk around it, whether the other boundary has a pixel in that row's run (one binary
search in the other boundary's sorted flat pixel indices, all frames of a stack at once; a k-d tree
nearest-neighbour query gives the same answer, kept as a second method); for dense boundaries
(noise-like masks) the exact Euclidean feature transform of :func:`scipy.ndimage.distance_transform_edt`
is computed on the bounding box of both boundaries. Either way the decision compares an integer squared
distance with ``r**2`` (the k-d tree with a bound of ``sqrt(r2 + 0.5)``, half an integer away from every
possible squared distance), so the counts, and therefore precision, recall and F, are bit-identical to
those of the disk dilation.

Each frame is scored on a crop: the bounding box of both masks widened by one pixel on each side (see
:func:`_crop`), the only part of the frame where boundary pixels or pixel counts can be; the tolerance radius
still comes from the whole frame's diagonal, and distances between boundary pixels do not depend on the crop,
so no disk is cut by it. Frames where one or both masks are empty are answered without image work.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["BOUND_TH", "bound_pixels", "boundary_f", "j_and_f", "jaccard", "mask_boxes", "seg2bmap", "unite_boxes"]

#: Default boundary tolerance of the toolkit: a fraction of the image diagonal.
BOUND_TH = 0.008

# When the two boundaries together hold more than this fraction of the pixels of their common bounding box,
# the feature transform of the box is cheaper than k-d tree queries.
_DENSE_FRACTION = 0.15


def _as_bool(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x if x.dtype == np.bool_ else x.astype(bool)


def _prepare(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, bool]:
    """Validate shapes; return boolean ``(T, H, W)`` arrays and whether the input was a single frame."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} must have the same shape")
    if gt.ndim not in (2, 3):
        raise ValueError(f"masks must be (H, W) or (T, H, W), got shape {gt.shape}")
    if gt.shape[-1] == 0 or gt.shape[-2] == 0:
        raise ValueError(f"frames must have at least one pixel, got shape {gt.shape}")
    if void is not None:
        void = np.asarray(void)
        if void.shape != gt.shape:
            raise ValueError(f"void mask {void.shape} must have the shape of the masks {gt.shape}")
    single = gt.ndim == 2
    if single:
        gt, pred = gt[None], pred[None]
        void = None if void is None else void[None]
    return _as_bool(gt), _as_bool(pred), None if void is None else _as_bool(void), single


def _finish(values: np.ndarray, single: bool) -> np.ndarray:
    return values.reshape(()) if single else values


def bound_pixels(height: int, width: int, bound_th: float = BOUND_TH) -> float:
    """Radius (pixels) of the boundary tolerance disk, as the toolkit computes it.

    ``bound_th`` if ``bound_th >= 1``, else ``ceil(bound_th * sqrt(H**2 + W**2))`` (8 at 480x854, 18 at
    1080x1920).
    """
    if not bound_th >= 0:
        raise ValueError(f"bound_th must be >= 0, got {bound_th}")
    if bound_th >= 1:
        return float(bound_th)
    return float(np.ceil(bound_th * np.linalg.norm((height, width))))


def _disk_r2(bound_pix: float) -> int:
    """Largest integer squared offset length inside the disk: ``dy**2 + dx**2 <= r**2`` iff ``<= _disk_r2(r)``."""
    return math.floor(bound_pix**2)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """Boundary map of a mask (the toolkit's ``_seg2bmap`` for a map of its own size).

    A pixel is on the boundary when it differs from its right (east), lower (south) or lower-right
    (south-east) neighbour; on the last row only the east neighbour counts, on the last column only the south
    one, and the bottom-right pixel is never a boundary pixel. (So a mask filling the whole frame, or a 1x1
    frame, has an empty boundary.)

    Args:
        seg: ``(H, W)`` or ``(T, H, W)``; nonzero is foreground.

    Returns:
        bool array of the same shape.
    """
    seg = _as_bool(seg)
    if seg.ndim not in (2, 3) or seg.shape[-1] == 0 or seg.shape[-2] == 0:
        raise ValueError(f"seg2bmap expects a non-empty (H, W) or (T, H, W) array, got shape {seg.shape}")
    b = np.zeros(seg.shape, dtype=bool)
    centre = seg[..., :-1, :-1]
    inner = centre ^ seg[..., :-1, 1:]
    tmp = np.empty_like(inner)
    inner |= np.bitwise_xor(centre, seg[..., 1:, :-1], out=tmp)
    inner |= np.bitwise_xor(centre, seg[..., 1:, 1:], out=tmp)
    b[..., :-1, :-1] = inner
    b[..., -1, :-1] = seg[..., -1, :-1] ^ seg[..., -1, 1:]
    b[..., :-1, -1] = seg[..., :-1, -1] ^ seg[..., 1:, -1]
    return b


def _count_within_sparse(src: np.ndarray, dst: np.ndarray, r2: int) -> int:
    """Number of points of ``src`` (n, 2) with a point of ``dst`` (m, 2) at squared distance ``<= r2``."""
    bound = math.sqrt(r2 + 0.5)
    from scipy.spatial import cKDTree  # imported on first use: 0.1 s that most evaluations never need

    dist, _ = cKDTree(dst).query(src, k=1, distance_upper_bound=bound)
    return int(np.count_nonzero(dist < bound))


def _count_within_rows(srcs: list[np.ndarray], dsts: list[np.ndarray], shapes: list[tuple[int, int]],
                       r2: int) -> np.ndarray:
    """For each map ``k`` of ``shapes``: how many pixels of ``srcs[k]`` have a pixel of ``dsts[k]`` at squared
    distance ``<= r2`` (both sorted flat, row-major indices, as ``flatnonzero`` returns them; ``dsts[k]``
    non-empty). All maps at once, row by row of the disk: the rows ``dy = -R..R`` (``R = isqrt(r2)``), each
    a run of half-width ``isqrt(r2 - dy**2)``.

    The maps are laid end to end, each with ``R`` empty rows above and ``R + 1`` below, so that the pixels
    of every ``dsts[k]`` become one sorted array of keys; a run of row ``y`` from ``x0`` to ``x1`` (clipped
    to its map, so that it stays in its row and its map) holds a pixel exactly when the first key
    ``>= key(y, x0)`` is ``<= key(y, x1)``: one binary search per point and disk row. Rows are tried
    nearest first, each only for the points not matched yet."""
    reach = math.isqrt(r2)
    n = len(shapes)
    hs = np.fromiter((h for h, _ in shapes), np.int64, n)
    ws = np.fromiter((w for _, w in shapes), np.int64, n)
    spans = (hs + 2 * reach + 1) * ws
    starts = np.cumsum(spans) - spans + reach * ws  # key of each map's pixel (0, 0)
    total = int(spans.sum())
    index = np.int32 if total < 2**31 - 1 else np.int64  # narrower keys: half the memory traffic
    dst_sizes = np.fromiter(map(len, dsts), np.int64, n)
    # a sentinel after every map: the search never runs off the end
    keys = np.append(np.concatenate(dsts) + np.repeat(starts, dst_sizes), total).astype(index)
    src_sizes = np.fromiter(map(len, srcs), np.int64, n)
    frame = np.repeat(np.arange(n, dtype=index), src_sizes)
    w = ws.astype(index)[frame]
    flat = np.concatenate(srcs).astype(index)
    xs = flat % w
    key = flat + starts.astype(index)[frame]  # each point's own key
    left, right = xs, w - 1 - xs  # how far its row reaches to either side
    counts = np.zeros(n, dtype=np.int64)
    for dy in sorted(range(-reach, reach + 1), key=abs):
        half = math.isqrt(r2 - dy * dy)
        row = key + w * dy if dy else key
        hit = keys[np.searchsorted(keys, row - np.minimum(left, half))] <= row + np.minimum(right, half)
        if hit.any():
            counts += np.bincount(frame[hit], minlength=n)
            keep = ~hit
            frame, w, key, left, right = frame[keep], w[keep], key[keep], left[keep], right[keep]
            if frame.size == 0:
                break
    return counts


def _count_within_dense(src: np.ndarray, dst: np.ndarray, r2: int) -> int:
    """Number of ``True`` pixels of ``src`` with a ``True`` pixel of ``dst`` (same-shape maps, ``dst``
    non-empty) at squared distance ``<= r2``, via the exact Euclidean feature transform."""
    from scipy import ndimage  # imported on first use: 0.2 s that most evaluations never need

    nearest = ndimage.distance_transform_edt(~dst, return_distances=False, return_indices=True)
    ys, xs = np.nonzero(src)
    dy = nearest[0][ys, xs].astype(np.int64) - ys
    dx = nearest[1][ys, xs].astype(np.int64) - xs
    return int(np.count_nonzero(dy * dy + dx * dx <= r2))


def _dense(gt_flat: np.ndarray, fg_flat: np.ndarray, width: int) -> tuple[bool, tuple[slice, slice]]:
    """Whether two non-empty boundaries (flat indices in maps of ``width`` columns) are dense enough for the
    feature transform, and the bounding box of both."""
    y0 = min(gt_flat[0], fg_flat[0]) // width
    y1 = max(gt_flat[-1], fg_flat[-1]) // width + 1
    gx, fx = gt_flat % width, fg_flat % width
    x0, x1 = min(gx.min(), fx.min()), max(gx.max(), fx.max()) + 1
    dense = gt_flat.size + fg_flat.size > _DENSE_FRACTION * (y1 - y0) * (x1 - x0)
    return bool(dense), (slice(int(y0), int(y1)), slice(int(x0), int(x1)))


def _matches(gt_b: np.ndarray, fg_b: np.ndarray, r2: int, method: str = "auto") -> tuple[int, int]:
    """``(|fg_b & dilate(gt_b)|, |gt_b & dilate(fg_b)|)`` for two non-empty ``(H, W)`` boundary maps."""
    gt_flat, fg_flat = np.flatnonzero(gt_b), np.flatnonzero(fg_b)
    dense, box = _dense(gt_flat, fg_flat, gt_b.shape[1])
    if method == "auto":
        method = "dense" if dense else "rows"
    if method == "rows":
        fg_match = _count_within_rows([fg_flat], [gt_flat], [gt_b.shape], r2)[0]
        gt_match = _count_within_rows([gt_flat], [fg_flat], [gt_b.shape], r2)[0]
        return int(fg_match), int(gt_match)
    if method == "sparse":
        gt_pts = np.stack(np.divmod(gt_flat, gt_b.shape[1]), axis=1)
        fg_pts = np.stack(np.divmod(fg_flat, gt_b.shape[1]), axis=1)
        return _count_within_sparse(fg_pts, gt_pts, r2), _count_within_sparse(gt_pts, fg_pts, r2)
    if method == "dense":
        return _dense_matches(gt_b[box], fg_b[box], r2)
    raise ValueError(f"unknown method {method!r}")


def _dense_matches(gt_b: np.ndarray, fg_b: np.ndarray, r2: int) -> tuple[int, int]:
    """:func:`_matches` by the feature transform, both ways, on maps cropped to both boundaries' box."""
    return _count_within_dense(fg_b, gt_b, r2), _count_within_dense(gt_b, fg_b, r2)


def _f_value(fg_match: int, n_fg: int, gt_match: int, n_gt: int) -> float:
    """F from the match counts, with the toolkit's rules for empty boundaries."""
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = fg_match / float(n_fg)
        recall = gt_match / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _f_from_boundaries(gt_b: np.ndarray, fg_b: np.ndarray, r2: int, method: str = "auto") -> float:
    """F-measure of one frame from its ``(H, W)`` boundary maps, with the toolkit's rules for empty ones."""
    n_fg = int(np.count_nonzero(fg_b))
    n_gt = int(np.count_nonzero(gt_b))
    if n_fg == 0 or n_gt == 0:
        return _f_value(0, n_fg, 0, n_gt)
    fg_match, gt_match = _matches(gt_b, fg_b, r2, method)
    return _f_value(fg_match, n_fg, gt_match, n_gt)


def mask_boxes(m: np.ndarray) -> np.ndarray:
    """Per frame of boolean ``(T, H, W)`` masks, the bounding box ``[y0, y1, x0, x1]`` (half-open) of its
    pixels: ``(T, 4)`` int64, ``[H, 0, W, 0]`` for an empty frame (so that boxes unite by min / max)."""
    num_frames, height, width = m.shape
    rows, cols = m.any(axis=2), m.any(axis=1)
    boxes = np.empty((num_frames, 4), dtype=np.int64)
    boxes[:, 0] = rows.argmax(axis=1)
    boxes[:, 1] = height - rows[:, ::-1].argmax(axis=1)
    boxes[:, 2] = cols.argmax(axis=1)
    boxes[:, 3] = width - cols[:, ::-1].argmax(axis=1)
    boxes[~rows.any(axis=1)] = (height, 0, width, 0)
    return boxes


def unite_boxes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per frame, the box of the union of two masks from their boxes (:func:`mask_boxes`)."""
    return np.stack([np.minimum(a[:, 0], b[:, 0]), np.maximum(a[:, 1], b[:, 1]),
                     np.minimum(a[:, 2], b[:, 2]), np.maximum(a[:, 3], b[:, 3])], axis=1)


def _check_boxes(boxes: np.ndarray, shape: tuple[int, int, int], what: str) -> np.ndarray:
    boxes = np.asarray(boxes)
    if boxes.shape != (shape[0], 4) or not np.issubdtype(boxes.dtype, np.integer):
        raise ValueError(f"{what} boxes must be ({shape[0]}, 4) integers, got {boxes.dtype} {boxes.shape}")
    return boxes


def _crop(box: np.ndarray, height: int, width: int) -> tuple[slice, slice]:
    """The window of a frame that holds everything J and F look at: the box of both masks, one
    row/column more above and to the left (a pixel there is a boundary pixel when its east, south or
    south-east neighbour is foreground) and one more below and to the right (so that the box's last
    row and column are compared with their real, empty, neighbours, not given the frame's last-row and
    last-column rules). Where the box touches the frame's edge the window stops there, as the frame does.
    A box larger than the masks' gives the same values: it only adds empty pixels."""
    y0, y1, x0, x1 = (int(v) for v in box)
    return slice(max(y0 - 1, 0), min(y1 + 1, height)), slice(max(x0 - 1, 0), min(x1 + 1, width))


def _scores(g: np.ndarray, p: np.ndarray, r2: int, *, want_j: bool = True, want_f: bool = True,
            boxes: tuple[np.ndarray | None, np.ndarray | None] = (None, None)) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F of boolean ``(T, H, W)`` masks (void already removed), each frame on its crop.

    boxes: each mask's per-frame boxes (:func:`mask_boxes`) where the caller has them, e.g. from RLE runs
    or computed while a frame was decoded; computed here where None.

    Frames where both masks are empty score J = F = 1 and frames where one is empty J = 0 without any
    image work; F is then 1 only when the other mask fills the whole frame (its boundary is empty too)."""
    num_frames, height, width = g.shape
    j = np.zeros(num_frames, dtype=np.float64)
    f = np.zeros(num_frames, dtype=np.float64)
    g_box, p_box = (mask_boxes(m) if b is None else b for m, b in zip((g, p), boxes))
    g_empty, p_empty = g_box[:, 1] <= g_box[:, 0], p_box[:, 1] <= p_box[:, 0]
    box = unite_boxes(g_box, p_box)
    whole = (box == (0, height, 0, width)).all(axis=1)
    by_rows: list[tuple[int, np.ndarray, np.ndarray, tuple[int, int]]] = []  # frames for _count_within_rows
    for t in range(num_frames):
        if g_empty[t] and p_empty[t]:
            j[t] = f[t] = 1.0
            continue
        if g_empty[t] or p_empty[t]:
            other = p[t] if g_empty[t] else g[t]
            f[t] = 1.0 if (want_f and whole[t] and other.all()) else 0.0
            continue
        ys, xs = _crop(box[t], height, width)
        gc, pc = g[t, ys, xs], p[t, ys, xs]
        if want_j:
            inter = np.count_nonzero(np.logical_and(gc, pc))
            j[t] = inter / (np.count_nonzero(gc) + np.count_nonzero(pc) - inter)
        if not want_f:
            continue
        gb, pb = seg2bmap(gc), seg2bmap(pc)
        gt_flat, fg_flat = np.flatnonzero(gb), np.flatnonzero(pb)
        if gt_flat.size == 0 or fg_flat.size == 0:
            f[t] = _f_value(0, fg_flat.size, 0, gt_flat.size)
            continue
        dense, dense_box = _dense(gt_flat, fg_flat, gb.shape[1])
        if dense:
            fg_match, gt_match = _dense_matches(gb[dense_box], pb[dense_box], r2)
            f[t] = _f_value(fg_match, fg_flat.size, gt_match, gt_flat.size)
        else:  # matched below, all such frames of the stack at once
            by_rows.append((t, gt_flat, fg_flat, gb.shape))
    if by_rows:
        frames, gt_flats, fg_flats, shapes = zip(*by_rows)
        fg_match = _count_within_rows(fg_flats, gt_flats, shapes, r2)
        gt_match = _count_within_rows(gt_flats, fg_flats, shapes, r2)
        for k, t in enumerate(frames):
            f[t] = _f_value(int(fg_match[k]), fg_flats[k].size, int(gt_match[k]), gt_flats[k].size)
    return j, f


def _without_void(g: np.ndarray, p: np.ndarray, v: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if v is None:
        return g, p
    keep = ~v
    return g & keep, p & keep


def jaccard(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> np.ndarray:
    """Region similarity J = |gt & pred| / |gt | pred| per frame (1 where both are empty).

    Args:
        gt: ``(T, H, W)`` or ``(H, W)`` ground truth (nonzero = foreground).
        pred: prediction, same shape.
        void: optional mask of ignored pixels, same shape.

    Returns:
        float64 ``(T,)``, or a 0-d array for ``(H, W)`` inputs.
    """
    g, p, v, single = _prepare(gt, pred, void)
    j, _ = _scores(*_without_void(g, p, v), 0, want_f=False)
    return _finish(j, single)


def boundary_f(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = BOUND_TH
) -> np.ndarray:
    """Boundary F-measure per frame (the toolkit's ``db_eval_boundary``).

    Precision is the fraction of predicted boundary pixels within ``bound_pixels(H, W, bound_th)`` pixels of
    the true boundary, recall the converse; F = 2PR / (P + R), 0 when P + R = 0. Empty boundaries: both
    empty gives P = R = 1 (F = 1); only the predicted one empty gives P = 1, R = 0; only the true one empty
    gives P = 0, R = 1 (F = 0 in both cases).

    Args:
        gt: ``(T, H, W)`` or ``(H, W)`` ground truth (nonzero = foreground).
        pred: prediction, same shape.
        void: optional mask of ignored pixels, same shape (removed from both masks before the boundaries).
        bound_th: tolerance; a fraction of the image diagonal when < 1, else a radius in pixels.

    Returns:
        float64 ``(T,)``, or a 0-d array for ``(H, W)`` inputs.
    """
    g, p, v, single = _prepare(gt, pred, void)
    r2 = _disk_r2(bound_pixels(g.shape[1], g.shape[2], bound_th))
    _, f = _scores(*_without_void(g, p, v), r2, want_j=False)
    return _finish(f, single)


def j_and_f(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = BOUND_TH, *,
    gt_boxes: np.ndarray | None = None, pred_boxes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F in one pass (see :func:`jaccard` and :func:`boundary_f`).

    Args:
        gt: ``(T, H, W)`` or ``(H, W)`` ground truth (nonzero = foreground).
        pred: prediction, same shape.
        void: optional mask of ignored pixels, same shape.
        bound_th: boundary tolerance of F.
        gt_boxes, pred_boxes: optional per-frame boxes of ``(T, H, W)`` masks, as :func:`mask_boxes`
            gives them, where the caller already has them (e.g. from RLE runs, or computed while each
            frame was decoded and still in cache): each box must hold all of its frame's foreground and be
            empty (``y1 <= y0``) exactly when the frame is; a larger box gives the same values. Not with
            ``void``.

    Returns:
        ``(J, F)``, each float64 ``(T,)`` (0-d arrays for ``(H, W)`` inputs).
    """
    g, p, v, single = _prepare(gt, pred, void)
    if (gt_boxes is not None or pred_boxes is not None) and (v is not None or single):
        raise ValueError("gt_boxes / pred_boxes are for (T, H, W) masks without a void mask")
    boxes = tuple(None if b is None else _check_boxes(b, g.shape, what)
                  for b, what in ((gt_boxes, "gt"), (pred_boxes, "pred")))
    r2 = _disk_r2(bound_pixels(g.shape[1], g.shape[2], bound_th))
    j, f = _scores(*_without_void(g, p, v), r2, boxes=boxes)
    return _finish(j, single), _finish(f, single)
