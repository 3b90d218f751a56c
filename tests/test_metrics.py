"""J and F: hand-made cases with known values, then the fast implementation against the literal reference."""

import numpy as np
import pytest
from scipy import ndimage

from ssa_rvos.evaluation import metrics
from ssa_rvos.evaluation.metrics import (
    bound_pixels,
    boundary_f,
    j_and_f,
    jaccard,
    seg2bmap,
)
from ssa_rvos.evaluation.reference import (
    boundary_f_reference,
    disk_reference,
    jaccard_reference,
    seg2bmap_reference,
)


def rect(shape, rows, cols):
    """Mask with the rectangle rows[0]..rows[1]-1 x cols[0]..cols[1]-1 set."""
    m = np.zeros(shape, dtype=bool)
    m[rows[0] : rows[1], cols[0] : cols[1]] = True
    return m


def both(gt, pred, void=None, bound_th=0.008):
    """(J, F) of one frame from the fast and the reference implementations, checked equal."""
    j, f = j_and_f(gt, pred, void, bound_th=bound_th)
    j_ref = jaccard_reference(gt, pred, void)[0]
    f_ref = boundary_f_reference(gt, pred, void, bound_th=bound_th)[0]
    assert float(j) == j_ref and float(f) == f_ref
    return float(j), float(f)


def brute_force_f(gt, pred, radius):
    """F from all pairwise squared distances between boundary pixels (independent of both implementations)."""
    gb, pb = seg2bmap_reference(gt), seg2bmap_reference(pred)
    g, p = np.argwhere(gb), np.argwhere(pb)
    if len(g) == 0 or len(p) == 0:
        raise AssertionError("brute force is for non-empty boundaries only")
    d2 = ((p[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    precision = np.count_nonzero(d2.min(axis=1) <= radius**2) / len(p)
    recall = np.count_nonzero(d2.min(axis=0) <= radius**2) / len(g)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------------------------------------------
# Boundary maps and tolerance radius


def test_bound_pixels_matches_the_toolkit_formula():
    assert bound_pixels(480, 854) == 8  # ceil(0.008 * 979.65)
    assert bound_pixels(1080, 1920) == 18  # ceil(0.008 * 2202.9)
    assert bound_pixels(100, 100) == 2
    assert bound_pixels(3, 500) == 5  # ceil(4.00007)
    assert bound_pixels(1, 1) == 1
    assert bound_pixels(480, 854, bound_th=3) == 3
    with pytest.raises(ValueError):
        bound_pixels(10, 10, bound_th=-0.1)


def test_disk_reference_is_the_skimage_disk():
    d = disk_reference(2)
    expected = np.array(
        [
            [0, 0, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
            [0, 1, 1, 1, 0],
            [0, 0, 1, 0, 0],
        ],
        dtype=bool,
    )
    assert np.array_equal(d, expected)
    assert disk_reference(0).shape == (1, 1) and disk_reference(0).all()


def test_seg2bmap_one_pixel():
    seg = np.zeros((6, 6), dtype=bool)
    seg[3, 3] = True
    expected = np.zeros((6, 6), dtype=bool)
    expected[2:4, 2:4] = True  # the pixel and its up, left and up-left neighbours
    assert np.array_equal(seg2bmap(seg), expected)
    assert np.array_equal(seg2bmap_reference(seg), expected)


@pytest.mark.parametrize("h,w", [(20, 20), (7, 13), (1, 1), (3, 9)])
def test_seg2bmap_rectangle_has_2h_plus_2w_pixels(h, w):
    seg = rect((40, 50), (10, 10 + h), (20, 20 + w))
    assert np.count_nonzero(seg2bmap(seg)) == 2 * h + 2 * w
    assert np.array_equal(seg2bmap(seg), seg2bmap_reference(seg))


def test_seg2bmap_border_cases():
    full = np.ones((10, 12), dtype=bool)
    assert not seg2bmap(full).any()  # toolkit quirk: a mask filling the frame has no boundary
    assert not seg2bmap(np.ones((1, 1))).any() and not seg2bmap(np.zeros((1, 1))).any()
    left = rect((10, 10), (0, 10), (0, 5))  # touches the top, left and bottom borders
    right = rect((10, 10), (0, 10), (5, 10))  # touches the top, right and bottom borders
    for seg in (left, right):
        b = seg2bmap(seg)
        assert np.array_equal(b, seg2bmap_reference(seg))
        assert np.array_equal(np.argwhere(b)[:, 1], np.full(10, 4))  # only column 4, all 10 rows


def test_seg2bmap_batched_matches_per_frame_and_accepts_any_nonzero():
    rng = np.random.default_rng(0)
    for shape in [(4, 1, 1), (3, 1, 9), (3, 9, 1), (2, 2, 2), (5, 17, 31)]:
        segs = rng.integers(0, 3, size=shape).astype(np.uint8) * 127  # 0, 127, 254
        batched = seg2bmap(segs)
        assert batched.dtype == bool and batched.shape == shape
        for t in range(shape[0]):
            assert np.array_equal(batched[t], seg2bmap_reference(segs[t] != 0))
            assert np.array_equal(seg2bmap(segs[t]), batched[t])


# --------------------------------------------------------------------------------------------------------------
# Hand-made cases


def test_empty_and_empty():
    z = np.zeros((30, 40), dtype=bool)
    assert both(z, z) == (1.0, 1.0)


def test_one_side_empty():
    z = np.zeros((30, 40), dtype=bool)
    m = rect((30, 40), (5, 15), (5, 20))
    assert both(m, z) == (0.0, 0.0)  # prediction empty: precision 1, recall 0
    assert both(z, m) == (0.0, 0.0)  # truth empty: precision 0, recall 1


def test_identical_masks():
    rng = np.random.default_rng(1)
    blob = ndimage.gaussian_filter(rng.random((60, 80)), 4) > 0.5
    for m in (rect((30, 40), (5, 15), (5, 20)), blob):
        assert both(m, m) == (1.0, 1.0)


def test_one_pixel_objects():
    gt = np.zeros((20, 20), dtype=bool)
    gt[5, 5] = True
    assert both(gt, gt) == (1.0, 1.0)
    pred = np.zeros_like(gt)
    pred[5, 7] = True
    # r = 1. gt boundary {(4,4),(4,5),(5,4),(5,5)}, pred boundary {(4,6),(4,7),(5,6),(5,7)}:
    # (4,6) and (5,6) are 1 pixel from the gt boundary, (4,7) and (5,7) are 2 away; symmetric for recall.
    assert both(gt, pred) == (0.0, 0.5)


def test_thin_line_shifted_by_one_and_two_rows():
    gt = rect((30, 30), (10, 11), (5, 15))  # 1 x 10 line, r = 1, boundary rows 9 and 10 (cols 4..14)
    assert np.count_nonzero(seg2bmap(gt)) == 22
    assert both(gt, gt) == (1.0, 1.0)
    down1 = rect((30, 30), (11, 12), (5, 15))
    assert both(gt, down1) == (0.0, 1.0)  # no overlap at all, but every boundary pixel within 1 pixel
    down2 = rect((30, 30), (12, 13), (5, 15))
    assert both(gt, down2) == (0.0, 0.5)  # half of each boundary within 1 pixel


def test_masks_touching_the_border():
    full = np.ones((10, 12), dtype=bool)
    empty = np.zeros((10, 12), dtype=bool)
    assert both(full, full) == (1.0, 1.0)
    # Toolkit quirk: both boundaries are empty, so F is 1 although J is 0.
    assert both(full, empty) == (0.0, 1.0)
    # 1x1 frames never have a boundary either.
    assert both(np.ones((1, 1)), np.zeros((1, 1))) == (0.0, 1.0)
    left = rect((10, 10), (0, 10), (0, 5))
    left4 = rect((10, 10), (0, 10), (0, 4))
    # r = 1: boundary columns 4 and 3, one pixel apart -> F = 1; J = 40 / 50.
    assert both(left, left4) == (0.8, 1.0)


def test_mask_with_a_hole():
    filled = rect((60, 60), (20, 40), (20, 40))  # 20 x 20, boundary 80 pixels
    ring = filled & ~rect((60, 60), (27, 33), (27, 33))  # 6 x 6 hole, boundary 24 pixels, far from the rim
    j, f = both(ring, filled)
    assert j == 364 / 400
    recall = 80 / 104  # the hole's boundary is never matched; precision is 1
    assert f == pytest.approx(2 * recall / (1 + recall), abs=1e-15)


def test_several_components_one_missed():
    shape = (100, 100)
    squares = [rect(shape, (5, 25), (5, 25)), rect(shape, (5, 25), (60, 80)), rect(shape, (60, 80), (30, 50))]
    gt = squares[0] | squares[1] | squares[2]
    pred = squares[0] | squares[1]
    j, f = both(gt, pred)
    assert j == 800 / 1200
    assert f == pytest.approx(0.8, abs=1e-15)  # precision 1, recall 160 / 240


def test_half_overlapping_squares():
    gt = rect((40, 40), (0, 10), (0, 10))
    pred = rect((40, 40), (0, 10), (5, 15))
    assert float(jaccard(gt, pred)) == 50 / 150


def test_thin_frames_3x500():
    gt = np.zeros((3, 500), dtype=bool)
    gt[:, 100:200] = True
    assert both(gt, gt) == (1.0, 1.0)
    shifted = np.zeros_like(gt)
    shifted[:, 105:205] = True  # r = 5 at 3 x 500: the two boundary columns move by exactly r
    assert both(gt, shifted) == (95 / 105, 1.0)


@pytest.mark.parametrize("bound_th,radius", [(0.008, 2), (3, 3), (5, 5)])
def test_tolerance_edge_shift_r_and_r_plus_1(bound_th, radius):
    shape = (100, 100)
    gt = rect(shape, (20, 60), (20, 70))
    assert bound_pixels(*shape, bound_th) == radius
    for dy, dx in [(0, radius), (radius, 0), (-radius, 0), (0, -radius)]:
        pred = np.roll(gt, (dy, dx), axis=(0, 1))
        assert float(boundary_f(gt, pred, bound_th=bound_th)) == 1.0
    for dy, dx in [(0, radius + 1), (radius + 1, 0)]:
        pred = np.roll(gt, (dy, dx), axis=(0, 1))
        _, f = both(gt, pred, bound_th=bound_th)
        assert 0.0 < f < 1.0
        assert f == pytest.approx(brute_force_f(gt, pred, radius), abs=1e-15)


def test_1080p_identical_and_tolerance_edge():
    shape = (1080, 1920)
    gt = rect(shape, (300, 700), (500, 1100))
    assert float(boundary_f(gt, gt)) == 1.0 and float(jaccard(gt, gt)) == 1.0
    pred = np.roll(gt, 18, axis=1)  # r = 18 at 1080p
    assert float(boundary_f(gt, pred)) == 1.0
    pred = np.roll(gt, (13, 13), axis=(0, 1))  # 13**2 + 13**2 = 338 > 18**2 = 324
    f = float(boundary_f(gt, pred))
    assert 0.0 < f < 1.0
    assert f == pytest.approx(brute_force_f(gt, pred, 18), abs=1e-15)
    j = float(jaccard(gt, pred))
    assert j == (387 * 587) / (2 * 400 * 600 - 387 * 587)


def test_void_pixels_are_removed_from_both_masks():
    shape = (40, 40)
    gt = rect(shape, (0, 10), (0, 10))
    pred = rect(shape, (0, 10), (5, 15))
    void = rect(shape, (0, 10), (10, 15))  # the part of the prediction outside the truth
    assert float(jaccard(gt, pred, void)) == 50 / 100
    extra = gt | rect(shape, (20, 30), (20, 30))
    void2 = rect(shape, (18, 32), (18, 32))
    assert both(gt, extra) != (1.0, 1.0)
    assert both(gt, extra, void2) == (1.0, 1.0)
    # Void over a part of the truth that the prediction misses.
    assert both(extra, gt, void2) == (1.0, 1.0)
    # Everything void: both masks empty.
    assert both(gt, pred, np.ones(shape, dtype=bool)) == (1.0, 1.0)


# --------------------------------------------------------------------------------------------------------------
# API


def test_shapes_of_results():
    rng = np.random.default_rng(2)
    gt = rng.random((5, 20, 30)) < 0.3
    pred = rng.random((5, 20, 30)) < 0.3
    j, f = j_and_f(gt, pred)
    assert j.shape == (5,) and f.shape == (5,) and j.dtype == np.float64
    assert np.array_equal(jaccard(gt, pred), j) and np.array_equal(boundary_f(gt, pred), f)
    j0, f0 = j_and_f(gt[2], pred[2])
    assert j0.shape == () and f0.shape == ()
    assert float(j0) == j[2] and float(f0) == f[2]
    assert jaccard(gt[2], pred[2]).shape == () and boundary_f(gt[2], pred[2]).shape == ()
    assert j_and_f(gt[:0], pred[:0])[0].shape == (0,)


def test_shape_errors():
    a = np.zeros((2, 10, 10), dtype=bool)
    with pytest.raises(ValueError, match="same shape"):
        j_and_f(a, a[:, :9])
    with pytest.raises(ValueError, match="same shape"):
        jaccard(a, a[0])
    with pytest.raises(ValueError, match="void"):
        boundary_f(a, a, void=a[0])
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        j_and_f(a[None], a[None])
    with pytest.raises(ValueError):
        seg2bmap(np.zeros((3, 0, 4)))


def _box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# (gt box, pred box) on a 40x60 frame; each scored with radii 1, 3 and 10 (pixels) against the reference
CROP_EDGES = {
    "both touch the top-left corner": ((0, 5, 0, 7), (0, 6, 0, 5)),
    "both touch the bottom-right corner": ((33, 40, 50, 60), (35, 40, 52, 60)),
    "touch the left and right edges": ((10, 20, 0, 60), (12, 22, 0, 59)),
    "touch the top and bottom edges": ((0, 40, 20, 30), (0, 39, 22, 33)),
    "one pixel in the last row and column": ((39, 40, 59, 60), (39, 40, 58, 59)),
    "disk reaches past the crop": ((18, 20, 28, 30), (24, 26, 34, 36)),  # 6-8 px apart, radius 10
    "apart by exactly the radius": ((5, 8, 5, 8), (5, 8, 18, 21)),
    "full frame against a box": ((0, 40, 0, 60), (3, 9, 4, 11)),
    "full frame against an empty mask": ((0, 40, 0, 60), (0, 0, 0, 0)),
    "empty against a full frame": ((0, 0, 0, 0), (0, 40, 0, 60)),
    "empty against a box on the edge": ((0, 0, 0, 0), (30, 40, 0, 3)),
}


@pytest.mark.parametrize("case", list(CROP_EDGES), ids=list(CROP_EDGES))
def test_crop_edges_equal_the_reference(case):
    (gy0, gy1, gx0, gx1), (py0, py1, px0, px1) = CROP_EDGES[case]
    gt, pred = _box(40, 60, gy0, gy1, gx0, gx1), _box(40, 60, py0, py1, px0, px1)
    for gt_, pred_ in ((gt, pred), (pred, gt)):
        for radius in (1, 3, 10):
            j, f = j_and_f(gt_, pred_, bound_th=radius)
            assert float(j) == float(jaccard_reference(gt_[None], pred_[None])[0])
            assert float(f) == float(boundary_f_reference(gt_[None], pred_[None], bound_th=radius)[0]), radius


def test_crop_edges_on_noise_touching_every_border():
    """Random masks confined to a band along each border (and to each corner), so that every crop meets the
    frame's edges, at a radius larger than the band."""
    rng = np.random.default_rng(5)
    h, w = 33, 47
    bands = [np.s_[:4, :], np.s_[-4:, :], np.s_[:, :4], np.s_[:, -4:], np.s_[:5, :5], np.s_[-5:, -5:],
             np.s_[:5, -5:], np.s_[-5:, :5]]
    for band in bands:
        gt, pred = np.zeros((6, h, w), bool), np.zeros((6, h, w), bool)
        gt[(slice(None), *band)] = rng.random(gt[(slice(None), *band)].shape) < 0.5
        pred[(slice(None), *band)] = rng.random(pred[(slice(None), *band)].shape) < 0.5
        for radius in (2, 9):
            j, f = j_and_f(gt, pred, bound_th=radius)
            assert np.array_equal(j, jaccard_reference(gt, pred))
            assert np.array_equal(f, boundary_f_reference(gt, pred, bound_th=radius))


def test_a_stack_scores_as_its_frames_one_by_one():
    rng = np.random.default_rng(3)
    gt = ndimage.gaussian_filter(rng.random((7, 30, 40)), (0, 3, 3)) > 0.5
    pred = ndimage.gaussian_filter(rng.random((7, 30, 40)), (0, 3, 3)) > 0.5
    gt[2], pred[4] = False, False  # one-side-empty frames among the others
    gt[5], pred[5] = False, False
    whole = j_and_f(gt, pred)
    one_by_one = [j_and_f(g, p) for g, p in zip(gt, pred)]
    assert np.array_equal(whole[0], [float(j) for j, _ in one_by_one])
    assert np.array_equal(whole[1], [float(f) for _, f in one_by_one])
    assert np.array_equal(whole[0], jaccard(gt, pred)) and np.array_equal(whole[1], boundary_f(gt, pred))
    assert np.array_equal(whole[0], jaccard_reference(gt, pred))
    assert np.array_equal(whole[1], boundary_f_reference(gt, pred))


# --------------------------------------------------------------------------------------------------------------
# Randomised: fast == reference, exactly


def random_masks(rng, shape, kind):
    t, h, w = shape
    if kind == "noise":
        return rng.random(shape) < rng.uniform(0.02, 0.6)
    if kind == "blobs":
        sigma = rng.uniform(1, max(1.5, min(h, w) / 8))
        return ndimage.gaussian_filter(rng.random(shape), (0, sigma, sigma)) > rng.uniform(0.45, 0.55)
    if kind == "shapes":
        m = np.zeros(shape, dtype=bool)
        yy, xx = np.mgrid[:h, :w]
        for i in range(t):
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.uniform(-0.1, 1.1) * h, rng.uniform(-0.1, 1.1) * w
                ay, ax = rng.uniform(0.05, 0.5) * h + 0.5, rng.uniform(0.05, 0.5) * w + 0.5
                if rng.random() < 0.5:
                    m[i] |= ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 <= 1
                else:
                    m[i] |= (np.abs(yy - cy) <= ay) & (np.abs(xx - cx) <= ax)
        return m
    raise ValueError(kind)


def perturb(rng, m):
    """Prediction close to the truth: shifted, grown or shrunk, with a little noise."""
    out = np.roll(m, tuple(rng.integers(-4, 5, size=2)), axis=(1, 2))
    k = int(rng.integers(-2, 3))
    if k > 0:
        out = ndimage.binary_dilation(out, np.ones((1, 3, 3), bool), iterations=k)
    elif k < 0:
        out = ndimage.binary_erosion(out, np.ones((1, 3, 3), bool), iterations=-k)
    return out ^ (rng.random(m.shape) < 0.002)


SIZES = [(1, 1), (1, 7), (7, 1), (2, 2), (3, 500), (5, 5), (37, 53), (64, 64), (121, 97), (240, 427)]


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_random_masks_fast_equals_reference(size):
    rng = np.random.default_rng(sum(size) * 7919)
    h, w = size
    t = 3 if h * w > 20000 else 6
    for trial, kind in enumerate(["noise", "blobs", "shapes"] * 2):
        gt = random_masks(rng, (t, h, w), kind)
        pred = perturb(rng, gt) if trial % 2 else random_masks(rng, (t, h, w), kind)
        void = rng.random((t, h, w)) < 0.03 if trial % 3 == 2 else None
        bound_th = [0.008, 0.02, 3][trial % 3]
        j, f = j_and_f(gt, pred, void, bound_th=bound_th)
        assert np.array_equal(j, jaccard_reference(gt, pred, void))
        assert np.array_equal(f, boundary_f_reference(gt, pred, void, bound_th=bound_th))


@pytest.mark.parametrize("method", ["rows", "sparse", "dense"])
def test_both_matching_methods_equal_reference(method):
    """The row-run, k-d tree and feature-transform paths, forced on sparse and dense boundaries alike."""
    rng = np.random.default_rng({"rows": 10, "sparse": 11, "dense": 12}[method])
    for kind in ["noise", "blobs", "shapes", "shapes"]:
        h, w = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        gt = random_masks(rng, (4, h, w), kind)
        pred = perturb(rng, gt)
        for radius in (0, 1, 2, 3.5, 6):
            r2 = metrics._disk_r2(radius)
            gb, pb = seg2bmap(gt), seg2bmap(pred)
            fast = [metrics._f_from_boundaries(gb[i], pb[i], r2, method) for i in range(4)]
            assert np.array_equal(fast, boundary_f_reference(gt, pred, bound_th=radius if radius >= 1 else 0))


def test_480p_video_fast_equals_reference():
    rng = np.random.default_rng(5)
    gt = random_masks(rng, (2, 480, 854), "shapes")
    pred = perturb(rng, gt)
    j, f = j_and_f(gt, pred)
    assert np.array_equal(j, jaccard_reference(gt, pred))
    assert np.array_equal(f, boundary_f_reference(gt, pred))
