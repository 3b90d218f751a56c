"""Ref-DAVIS17 protocol: annotator merging, object splitting, Hungarian matching and the DAVIS statistics."""

import numpy as np
import pytest

from ssa_rvos.evaluation.davis import (
    SUMMARY_KEYS,
    db_statistics,
    evaluate_unsupervised,
    ground_truth_objects,
    mean_over_annotators,
    merge_annotator_masks,
    predicted_objects,
    split_label_map,
    summarize,
)


def rect(shape, rows, cols):
    m = np.zeros(shape, dtype=bool)
    m[..., rows[0] : rows[1], cols[0] : cols[1]] = True
    return m


# --------------------------------------------------------------------------------------------------------------
# Label maps


def test_merge_first_object_wins_overlaps():
    shape = (2, 6, 8)
    a = rect(shape, (0, 4), (0, 4))
    b = rect(shape, (2, 6), (2, 8))
    c = rect(shape, (0, 6), (0, 8))  # covers everything: only gets what is left
    labels = merge_annotator_masks([a, b, c])
    assert labels.dtype == np.uint8 and labels.shape == shape
    assert (labels[a] == 1).all()
    assert (labels[b & ~a] == 2).all()
    assert (labels[~a & ~b] == 3).all()
    assert labels[0, 3, 3] == 1  # a and b overlap here: a was first
    # Order matters: with b first, the overlap goes to b.
    assert merge_annotator_masks([b, a])[0, 3, 3] == 1 and merge_annotator_masks([b, a])[0, 0, 0] == 2


def test_merge_accepts_nonzero_masks_and_checks_shapes():
    m = np.zeros((1, 3, 3), dtype=np.uint8)
    m[0, 1, 1] = 255
    assert merge_annotator_masks([np.zeros_like(m), m])[0, 1, 1] == 2
    with pytest.raises(ValueError):
        merge_annotator_masks([m, m[:, :2]])
    with pytest.raises(ValueError):
        merge_annotator_masks([])


def test_split_label_map():
    labels = np.array([[[0, 1], [2, 3]], [[3, 3], [0, 1]]])
    objects = split_label_map(labels)
    assert objects.shape == (3, 2, 2, 2) and objects.dtype == bool
    for k in range(3):
        assert np.array_equal(objects[k], labels == k + 1)
    assert split_label_map(labels, 1).shape == (1, 2, 2, 2)
    assert split_label_map(labels, 5)[4].sum() == 0


def test_ground_truth_objects_follow_the_toolkit():
    labels = np.zeros((3, 4, 4), dtype=np.uint8)
    labels[:, 0, 0] = 1
    labels[:, 1, 1] = 2
    labels[0, 3, 3] = 255  # void
    labels[1:, 2, 2] = 3  # object 3 only appears after the first frame: ignored, N = 2
    objects, void = ground_truth_objects(labels)
    assert objects.shape == (2, 3, 4, 4)
    assert np.array_equal(objects[0], labels == 1) and np.array_equal(objects[1], labels == 2)
    assert np.array_equal(void, labels == 255)
    assert not objects[:, 0, 3, 3].any()


def test_predicted_objects_use_the_max_over_all_frames():
    labels = np.zeros((2, 3, 3), dtype=np.uint8)
    labels[1, 0, 0] = 2
    objects = predicted_objects(labels)
    assert objects.shape == (2, 2, 3, 3)
    assert not objects[0].any() and objects[1, 1, 0, 0]
    assert predicted_objects(np.zeros((2, 3, 3), dtype=np.uint8)).shape == (0, 2, 3, 3)


# --------------------------------------------------------------------------------------------------------------
# Unsupervised evaluation


def hungarian_case(num_frames=2):
    """2 ground-truth and 3 predicted objects in 100 x 100 frames (F tolerance r = 2).

    gt0 = A (20 x 20 square), gt1 = B (20 x 20 square far from A).
    pred0 = A | B: against either gt J = 400/800 = 0.5, precision 80/160, recall 1, F = 2/3 -> score 0.5833.
    pred1 = left half of A (20 x 10): J = 0.5 against gt0; boundary 60 pixels against gt0's 80:
        precision: 41 pixels shared + 4 of its right column within 2 of the top/bottom rows = 45/60 = 3/4;
        recall: 41 shared + 2 + 2 pixels of the top and bottom rows within 2 of its corners = 45/80 = 9/16;
        F = 9/14 -> score 0.5714; against gt1 everything is 0.
    pred2 = small square far from both: 0 everywhere.
    Both ground-truth objects individually prefer pred0, but the best assignment is gt0 <- pred1, gt1 <- pred0.
    """
    shape = (num_frames, 100, 100)
    a = rect(shape, (10, 30), (10, 30))
    b = rect(shape, (60, 80), (60, 80))
    gt = np.stack([a, b])
    pred = np.stack([a | b, rect(shape, (10, 30), (10, 20)), rect(shape, (85, 90), (5, 10))])
    return gt, pred


def test_hungarian_matching_two_gt_three_predictions():
    gt, pred = hungarian_case()
    j, f = evaluate_unsupervised(gt, pred)
    assert j.shape == (2, 2) and f.shape == (2, 2)
    assert j[0] == pytest.approx([0.5, 0.5], abs=1e-15)  # gt0 <- pred1
    assert f[0] == pytest.approx([9 / 14, 9 / 14], abs=1e-15)
    assert j[1] == pytest.approx([0.5, 0.5], abs=1e-15)  # gt1 <- pred0
    assert f[1] == pytest.approx([2 / 3, 2 / 3], abs=1e-15)


def test_prediction_order_does_not_matter():
    gt, pred = hungarian_case(num_frames=1)
    j, f = evaluate_unsupervised(gt, pred)
    j2, f2 = evaluate_unsupervised(gt, pred[[2, 1, 0]])
    assert np.array_equal(j, j2) and np.array_equal(f, f2)


def test_padding_when_fewer_predictions_than_objects():
    gt, pred = hungarian_case(num_frames=3)
    j, f = evaluate_unsupervised(gt, pred[1:2])  # only the left half of A
    assert j.shape == (2, 3)
    assert j[0] == pytest.approx([0.5] * 3, abs=1e-15) and f[0] == pytest.approx([9 / 14] * 3, abs=1e-15)
    assert np.array_equal(j[1], np.zeros(3)) and np.array_equal(f[1], np.zeros(3))  # an empty object
    j0, f0 = evaluate_unsupervised(gt, pred[:0])
    assert not j0.any() and not f0.any() and j0.shape == (2, 3)


def test_too_many_proposals():
    gt = np.zeros((1, 1, 8, 8), dtype=bool)
    gt[0, 0, 2:5, 2:5] = True
    pred = np.zeros((21, 1, 8, 8), dtype=bool)
    pred[3, 0, 2:5, 2:5] = True
    with pytest.raises(ValueError, match="20"):
        evaluate_unsupervised(gt, pred)
    j, f = evaluate_unsupervised(gt, pred[:20])
    assert j.tolist() == [[1.0]] and f.tolist() == [[1.0]]
    with pytest.raises(ValueError):
        evaluate_unsupervised(gt, pred[:, :, :7])


# --------------------------------------------------------------------------------------------------------------
# Statistics


def test_db_statistics_by_hand():
    values = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    mean, recall, decay = db_statistics(values)
    assert mean == pytest.approx(0.65)
    assert recall == 5 / 8  # 0.5 itself is not > 0.5
    # T = 8: ids = round(linspace(1, 8, 5)) - 1 = [0, 2, 4, 5, 7]; bins [0:3], [2:5], [4:6], [5:8]
    assert decay == pytest.approx(0.9 - 0.4)
    assert db_statistics(np.array([0.7])) == (pytest.approx(0.7), 1.0, 0.0)
    assert db_statistics(np.array([0.9, 0.2]))[2] == pytest.approx(0.7)  # bins [0:1],[0:2],[1:2],[1:2]
    # T = 5: ids = [0, 1, 2, 3, 4]: decay = mean(v[0:2]) - mean(v[3:5])
    assert db_statistics(np.array([1.0, 0.0, 0.5, 0.2, 0.4]))[2] == pytest.approx(0.5 - 0.3)


def test_db_statistics_ignores_nan():
    mean, recall, _ = db_statistics(np.array([1.0, np.nan, 0.0, 1.0]))
    assert mean == pytest.approx(2 / 3) and recall == pytest.approx(2 / 4)  # NaN > 0.5 is False


def test_summarize_by_hand():
    j = [np.array([1.0, 1.0, 1.0, 1.0]), np.array([0.8, 0.6, 0.4, 0.2])]
    f = [np.array([0.5, 0.5, 0.5, 0.5]), np.array([1.0, 1.0, 0.0, 0.0])]
    s = summarize(j, f)
    assert tuple(s) == SUMMARY_KEYS
    assert s["J-Mean"] == pytest.approx((1.0 + 0.5) / 2)
    assert s["J-Recall"] == pytest.approx((1.0 + 0.5) / 2)
    # T = 4: ids = [0, 1, 2, 2, 3]... round(linspace(1, 4, 5) + 1e-10) - 1 = [0, 1, 2, 2, 3]:
    # bins [0:2], [1:3], [2:3], [2:4] -> decay of object 2 = 0.7 - 0.3
    assert s["J-Decay"] == pytest.approx((0.0 + 0.4) / 2)
    assert s["F-Mean"] == pytest.approx((0.5 + 0.5) / 2)
    assert s["F-Recall"] == pytest.approx((0.0 + 0.5) / 2)
    assert s["F-Decay"] == pytest.approx((0.0 + 1.0) / 2)
    assert s["J&F-Mean"] == pytest.approx((0.75 + 0.5) / 2)
    with pytest.raises(ValueError):
        summarize(j, f[:1])


def test_mean_over_annotators():
    a = {"J&F-Mean": 0.5, "J-Mean": 0.4}
    b = {"J&F-Mean": 0.7, "J-Mean": 0.8}
    assert mean_over_annotators([a, b]) == pytest.approx({"J&F-Mean": 0.6, "J-Mean": 0.6})
    with pytest.raises(ValueError):
        mean_over_annotators([a, {"J-Mean": 1.0}])


def test_end_to_end_perfect_predictions_from_label_maps():
    shape = (3, 40, 50)
    gt_labels = np.zeros(shape, dtype=np.uint8)
    gt_labels[:, 5:15, 5:15] = 1
    gt_labels[:, 20:35, 25:45] = 2
    gt_objects, _ = ground_truth_objects(gt_labels)
    # The expressions of the annotator, predicted in the other order and merged into one label map.
    pred_labels = merge_annotator_masks([gt_labels == 2, gt_labels == 1])
    j, f = evaluate_unsupervised(gt_objects, predicted_objects(pred_labels))
    s = summarize(list(j), list(f))
    assert s["J&F-Mean"] == 1.0 and s["J-Recall"] == 1.0 and s["J-Decay"] == 0.0
    assert mean_over_annotators([s] * 4) == s


def toolkit_unsupervised(all_gt_masks, all_res_masks, max_n_proposals=20):
    """The toolkit's _evaluate_unsupervised, transcribed with the reference metrics (rows in prediction order)."""
    from scipy.optimize import linear_sum_assignment

    from ssa_rvos.evaluation.reference import boundary_f_reference, jaccard_reference

    assert all_res_masks.shape[0] <= max_n_proposals
    if all_res_masks.shape[0] < all_gt_masks.shape[0]:
        zero_padding = np.zeros((all_gt_masks.shape[0] - all_res_masks.shape[0], *all_res_masks.shape[1:]))
        all_res_masks = np.concatenate([all_res_masks, zero_padding], axis=0)
    j_res = np.zeros((all_res_masks.shape[0], all_gt_masks.shape[0], all_gt_masks.shape[1]))
    f_res = np.zeros_like(j_res)
    for ii in range(all_gt_masks.shape[0]):
        for jj in range(all_res_masks.shape[0]):
            j_res[jj, ii, :] = jaccard_reference(all_gt_masks[ii], all_res_masks[jj])
            f_res[jj, ii, :] = boundary_f_reference(all_gt_masks[ii], all_res_masks[jj])
    all_metrics = (np.mean(j_res, axis=2) + np.mean(f_res, axis=2)) / 2
    row_ind, col_ind = linear_sum_assignment(-all_metrics)
    return j_res[row_ind, col_ind, :], f_res[row_ind, col_ind, :]


@pytest.mark.parametrize("seed", range(4))
def test_random_sequences_match_the_transcribed_toolkit(seed):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    t, h, w = 4, 36, 52
    field = ndimage.gaussian_filter(rng.random((t, h, w)), (0, 4, 4))
    gt_labels = np.digitize(field, np.quantile(field, [0.5, 0.7, 0.85])).astype(np.uint8)  # labels 0..3
    pred_field = field + 0.02 * rng.standard_normal(field.shape)
    pred_labels = np.digitize(pred_field, np.quantile(pred_field, np.sort(rng.uniform(0.3, 0.95, 4))))
    pred_labels = rng.permutation(5)[pred_labels].astype(np.uint8)  # shuffle the label ids
    gt_objects, _ = ground_truth_objects(gt_labels)
    pred_objects = predicted_objects(pred_labels)
    j, f = evaluate_unsupervised(gt_objects, pred_objects)
    j_tk, f_tk = toolkit_unsupervised(gt_objects, pred_objects)
    # The same matched pairs; the toolkit lists them in prediction order, we list them in object order.
    assert sorted(map(tuple, np.concatenate([j, f], 1))) == sorted(map(tuple, np.concatenate([j_tk, f_tk], 1)))
    assert summarize(list(j), list(f)) == pytest.approx(summarize(list(j_tk), list(f_tk)), abs=1e-15)
