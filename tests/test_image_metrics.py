"""A2D / JHMDB-Sentences metrics: IoU metrics by hand, COCO mAP on perfect and hand-checkable predictions."""

import numpy as np
import pytest
import torch

from ssa_rvos.evaluation.image_metrics import (
    AP_LABELS,
    PRECISION_THRESHOLDS,
    ImageMetricAccumulator,
    intersection_and_union,
    mttr_iou,
)


def mask(shape, pixels):
    m = np.zeros(shape, dtype=bool)
    m.flat[:pixels] = True  # the first `pixels` pixels in raster order
    return m


def test_intersection_and_union():
    gt = np.zeros((10, 10), dtype=bool)
    gt[:, :5] = True
    pred = np.zeros((10, 10), dtype=np.uint8)
    pred[:, 3:8] = 7
    assert intersection_and_union(gt, pred) == (20, 80)
    with pytest.raises(ValueError):
        intersection_and_union(gt, pred[:, :9])


def test_mttr_iou_reproduces_float32_epsilon():
    assert mttr_iou(50, 100) == 0.5
    assert mttr_iou(75, 100) == 0.75
    assert mttr_iou(1, 2) > 0.5  # the epsilon survives in float32 for tiny masks: a tie becomes a pass
    assert mttr_iou(0, 40) == pytest.approx(0.0, abs=1e-7)
    assert mttr_iou(90, 100) == pytest.approx(0.9, abs=1e-7)


def test_mttr_iou_equals_torch_float32():
    inter = np.array([0, 1, 1, 8, 16, 50, 90, 333, 12345, 999_999])
    union = np.array([40, 2, 3, 16, 32, 100, 100, 1000, 54321, 2_000_001])
    expected = ((torch.tensor(inter, dtype=torch.float32) + 1e-6) / (torch.tensor(union, dtype=torch.float32) + 1e-6))
    assert [mttr_iou(i, u) for i, u in zip(inter, union)] == expected.tolist()


def hand_samples():
    """(gt, pred) with (I, U) = (50, 100), (90, 100), (0, 40), (75, 100)."""
    shape = (10, 10)
    full = mask(shape, 100)
    samples = [(full, mask(shape, 50)), (full, mask(shape, 90)), (mask(shape, 40), np.zeros(shape, bool))]
    samples.append((full, mask(shape, 75)))
    return samples


def test_iou_metrics_by_hand():
    acc = ImageMetricAccumulator()
    for gt, pred in hand_samples():
        assert acc.add(gt, pred)
    m = acc.iou_metrics()
    assert m["overall_iou"] == pytest.approx(215 / 340, abs=1e-15)
    assert m["mean_iou"] == pytest.approx((0.5 + 0.9 + 0.0 + 0.75) / 4, abs=1e-6)
    # IoU > K: 0.9 and 0.75 pass 0.5-0.7; only 0.9 passes 0.8; 0.5 is not > 0.5 and 0.9 is not > 0.9.
    expected = {0.5: 0.5, 0.6: 0.5, 0.7: 0.5, 0.8: 0.25, 0.9: 0.0}
    for k in PRECISION_THRESHOLDS:
        assert m[f"P@{k}"] == expected[k]
    assert acc.num_samples == 4


def test_empty_ground_truth_is_skipped():
    acc = ImageMetricAccumulator()
    for gt, pred in hand_samples():
        acc.add(gt, pred)
    before = acc.summary()
    assert acc.add(np.zeros((10, 10)), np.ones((10, 10))) is False
    assert acc.add(np.zeros((10, 10)), np.zeros((10, 10))) is False
    after = acc.summary()
    assert after["num_skipped"] == 2 and after["num_samples"] == 4
    for key in before:
        if key != "num_skipped":
            assert after[key] == before[key]


def test_highest_score_is_used_for_iou_metrics_last_one_on_ties():
    shape = (10, 10)
    gt = mask(shape, 100)
    preds = np.stack([mask(shape, 20), mask(shape, 60), mask(shape, 80)])
    acc = ImageMetricAccumulator()
    acc.add(gt, preds, [0.1, 0.9, 0.5])
    assert acc.iou_metrics()["overall_iou"] == pytest.approx(0.6)
    acc = ImageMetricAccumulator()
    acc.add(gt, preds, np.array([0.9, 0.2, 0.9]))  # MTTR: sorted(...)[-1] keeps the last of equal scores
    assert acc.iou_metrics()["overall_iou"] == pytest.approx(0.8)


def test_perfect_predictions_give_map_1():
    rng = np.random.default_rng(0)
    acc = ImageMetricAccumulator()
    for _ in range(5):
        h, w = rng.integers(20, 60, size=2)
        gt = np.zeros((h, w), dtype=bool)
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        gt[y : y + h // 3, x : x + w // 3] = True
        acc.add(gt, gt, rng.uniform())
    s = acc.summary()
    assert s["mAP 0.5:0.95"] == 1.0 and s["AP 0.5"] == 1.0 and s["AP 0.75"] == 1.0
    assert s["overall_iou"] == 1.0 and s["P@0.9"] == 1.0
    assert set(AP_LABELS) <= set(s)


def imperfect_samples():
    """A: perfect (IoU 1). B: 10 x 10 truth, 9 x 8 prediction inside it (IoU 0.72)."""
    g_a = np.zeros((20, 20), dtype=bool)
    g_a[2:12, 2:12] = True
    g_b = np.zeros((20, 30), dtype=bool)
    g_b[5:15, 5:15] = True
    p_b = np.zeros_like(g_b)
    p_b[5:14, 5:13] = True
    return (g_a, g_a.copy()), (g_b, p_b)


@pytest.mark.parametrize("a_first", [True, False])
def test_map_by_hand(a_first):
    (g_a, p_a), (g_b, p_b) = imperfect_samples()
    acc = ImageMetricAccumulator()
    acc.add(g_a, p_a, 0.9 if a_first else 0.3)
    acc.add(g_b, p_b, 0.8)
    m = acc.coco_map()
    # IoU thresholds 0.50, 0.55, ..., 0.95: B (IoU 0.72) is a true positive for the first 5, a false positive for
    # the last 5. With one false positive, recall stops at 1/2 and COCO's 101-point interpolated precision is
    # non-zero on the 51 recall points 0.00 .. 0.50: it is 1 if A ranks first (precision 1/1 at recall 1/2),
    # 1/2 if B ranks first (precision 1/2 at recall 1/2).
    high = 51 / 101 if a_first else 0.5 * 51 / 101
    assert m["AP 0.5"] == pytest.approx(1.0)
    assert m["AP 0.75"] == pytest.approx(high)
    assert m["mAP 0.5:0.95"] == pytest.approx((5 * 1.0 + 5 * high) / 10)
    assert m["AP 0.5:0.95 M"] == -1.0  # no medium instance
    iou = acc.iou_metrics()
    assert iou["overall_iou"] == pytest.approx((100 + 72) / (100 + 100))
    assert iou["P@0.7"] == 1.0 and iou["P@0.8"] == 0.5


def test_an_extra_useless_prediction_counts_only_when_it_ranks_first():
    (g_a, p_a), (g_b, _) = imperfect_samples()
    acc = ImageMetricAccumulator()
    acc.add(g_a, p_a, 0.9)
    acc.add(g_b, np.stack([g_b, np.zeros_like(g_b)]), [0.8, 0.1])  # a perfect mask and a useless one
    m = acc.summary()
    assert m["mAP 0.5:0.95"] == pytest.approx(1.0)  # the extra detection ranks after every true positive
    assert m["overall_iou"] == m["mean_iou"] == 1.0  # IoU metrics use the top-scored (perfect) mask
    acc2 = ImageMetricAccumulator()
    acc2.add(g_a, p_a, 0.5)
    acc2.add(g_b, np.stack([g_b, np.zeros_like(g_b)]), [0.8, 0.9])  # the useless one ranks first
    m2 = acc2.summary()
    # A false positive, then two true positives: precision 2/3 at every recall, at every IoU threshold.
    assert m2["mAP 0.5:0.95"] == pytest.approx(2 / 3)
    assert m2["overall_iou"] == pytest.approx(100 / 200)  # IoU metrics use the top-scored (empty) mask
    assert m2["mean_iou"] == pytest.approx(0.5)


def test_no_samples_and_validation():
    acc = ImageMetricAccumulator()
    assert np.isnan(acc.summary()["mAP 0.5:0.95"]) and np.isnan(acc.summary()["overall_iou"])
    gt = np.ones((4, 4))
    with pytest.raises(ValueError):
        acc.add(gt, np.ones((4, 5)))
    with pytest.raises(ValueError):
        acc.add(gt, np.ones((2, 4, 4)))  # two masks need scores
    with pytest.raises(ValueError):
        acc.add(gt, np.ones((2, 4, 4)), [0.5])
    with pytest.raises(ValueError):
        acc.add(gt, np.ones((0, 4, 4)), [])
