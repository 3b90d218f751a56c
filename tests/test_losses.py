"""Matchers, point sampling and the SSA criterion (spec Sec. 6)."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from ssa_rvos.modeling import SSAOutput
from ssa_rvos.training import losses as L
from ssa_rvos.training.clips import ClipTarget
from ssa_rvos.training.losses import LossConfig, SSACriterion, expected_loss_keys
from ssa_rvos.training.matcher import FrameMatcher, VideoMatcher, hungarian, pairwise_dice, pairwise_sigmoid_bce

BIG = 20.0  # a "certain" mask logit: sigmoid(-20) ~ 2e-9

# Point sampling pads with zeros (as detectron2's point_sample does), so within half a pixel of the
# image border both the labels and the logits are blended towards 0: even a perfect prediction of a
# frame-filling object has a small loss there. The clip below uses 32x32 predictions and 128x128
# targets to keep that band small, and the value checks allow for it.


def make_output(*, frame_logits, frame_masks, video_logits, video_mask_embed, video_mask_features,
                video_sim_embed=None, frame_sim_embed=None, trajectory=None, padded_size=None) -> SSAOutput:
    """An SSAOutput from hand-made predictions; unused fields are zeros."""
    Lf, B, T, N = frame_logits.shape[:4]
    Lv, K = video_logits.shape[:2]
    h, w = frame_masks.shape[-2:]
    C = 4
    if video_sim_embed is None:
        video_sim_embed = torch.zeros(Lv, K, B, N, C)
    if frame_sim_embed is None:
        frame_sim_embed = torch.zeros(K, B, T, N, C)
    if trajectory is None:
        trajectory = torch.arange(N).expand(K, B, T, N).clone()
    padded = padded_size or (4 * h, 4 * w)
    return SSAOutput(
        frame_logits=frame_logits, frame_masks=frame_masks, frame_queries=torch.zeros(K, B, T, N, C),
        sentence_tokens=torch.zeros(B, T, C), mask_features=torch.zeros(B, T, C, h, w),
        video_mask_features=video_mask_features, video_logits=video_logits, video_mask_embed=video_mask_embed,
        video_sim_embed=video_sim_embed, frame_sim_embed=frame_sim_embed, trajectory=trajectory,
        image_size=padded, padded_size=padded,
    )


def class_logits(fg: torch.Tensor) -> torch.Tensor:
    """(...,) bool -> (..., 2): strongly foreground where True, strongly no-object elsewhere."""
    x = torch.where(fg, torch.tensor(10.0), torch.tensor(-10.0))
    return torch.stack([x, -x], dim=-1)


# ------------------------------------------------------------------------------------------ a two-object clip
# Object A (id 5) fills frame 0 and is absent from frame 1; object B (id 9) the other way round.
# Frame predictions: query 2 is A in frame 0, query 1 is B in frame 1. Video: query 0 is A, query 3 is B.
N, T, h, w = 4, 2, 32, 32
FRAME_Q = {0: 2, 1: 1}
VIDEO_Q = {0: 0, 1: 3}  # object index -> video query


def two_object_target(objects=(0, 1)) -> ClipTarget:
    masks = torch.zeros(2, T, 4 * h, 4 * w, dtype=torch.bool)
    masks[0, 0] = True
    masks[1, 1] = True
    keep = list(objects)
    return ClipTarget(masks[keep], torch.tensor([5, 9])[keep])


def two_object_output(*, frame_ok=(True, True), video_ok=(True, True), K=3, Lf=10, Lv=6, sim=None, trajectory=None):
    """frame_ok[t]: whether the frame-t query predicts its object; video_ok[i]: whether the video query
    of object i does (else its masks are empty)."""
    fm = torch.full((Lf, 1, T, N, h, w), -BIG)
    fg = torch.zeros(Lf, 1, T, N, dtype=torch.bool)
    for t, q in FRAME_Q.items():
        fg[:, 0, t, q] = True
        if frame_ok[t]:
            fm[:, 0, t, q] = BIG
    # Video masks: channel 0 = +1 in frame 0 / -1 in frame 1, channel 1 the opposite, channel 2 = 1.
    feats = torch.ones(1, T, 3, h, w)
    feats[0, 0, 1] = -1
    feats[0, 1, 0] = -1
    embed = torch.zeros(Lv, K, 1, N, 3)
    embed[..., 2] = -BIG
    if video_ok[0]:
        embed[:, :, 0, VIDEO_Q[0]] = torch.tensor([BIG, 0, 0])
    if video_ok[1]:
        embed[:, :, 0, VIDEO_Q[1]] = torch.tensor([0, BIG, 0])
    vfg = torch.zeros(Lv, K, 1, N, dtype=torch.bool)
    vfg[..., 0, list(VIDEO_Q.values())] = True
    kw = {} if sim is None else {"frame_sim_embed": sim[0], "video_sim_embed": sim[1]}
    return make_output(frame_logits=class_logits(fg), frame_masks=fm, video_logits=class_logits(vfg),
                       video_mask_embed=embed, video_mask_features=feats, trajectory=trajectory, **kw)


def small_config(**kw) -> LossConfig:
    return LossConfig(num_points=kw.pop("num_points", 2048), **kw)


# ------------------------------------------------------------------------------------------ matchers


def exact_costs(pred_logits: torch.Tensor, fg: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Matching cost on every pixel: pred (N, ...) logits, fg (N,), targets (M, ...) -> (N, M)."""
    p, t = pred_logits.flatten(1), targets.flatten(1).float()
    return -2 * fg[:, None] + 5 * pairwise_sigmoid_bce(p, t) + 5 * pairwise_dice(p, t)


def greedy_trap():
    """3 predictions, 2 targets on 16x16: prediction 0 is the best for target A but the only good one
    for target B, so matching A greedily first is wrong."""
    A = torch.zeros(16, 16, dtype=torch.bool)
    A[:, :8] = True  # left half
    Bm = torch.zeros(16, 16, dtype=torch.bool)
    Bm[:8, :8] = True  # top-left quadrant
    preds = torch.full((3, 16, 16), -8.0)
    preds[0, :14, :8] = 8.0
    preds[1, 4:, :8] = 8.0
    preds[2, :, 8:] = 8.0
    return preds, torch.stack([A, Bm])


def test_greedy_trap_is_a_trap():
    preds, targets = greedy_trap()
    cost = exact_costs(preds, torch.full((3,), 0.5), targets)
    assert cost[:, 0].argmin() == 0  # greedy: A takes prediction 0 ...
    best = min(itertools.permutations(range(3), 2), key=lambda p: cost[p[0], 0] + cost[p[1], 1])
    assert best == (1, 0)  # ... but the optimum gives prediction 0 to B
    rows, cols = hungarian(cost)
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 1, 1: 0}


def test_frame_matcher_optimal_assignment_and_visibility():
    preds, targets = greedy_trap()
    # Clip 0, frame 0: only A is visible; frame 1: A and B. Clip 1 has no object.
    masks = torch.stack([preds, preds])[None].expand(2, -1, -1, -1, -1)  # (B, T, N, h, w)
    tgt = torch.stack([targets, targets], dim=1).float()  # (M, T, H, W)
    tgt[1, 0] = 0
    logits = torch.zeros(2, 2, 3, 2)
    torch.manual_seed(0)
    match = FrameMatcher(class_weight=2, mask_weight=5, dice_weight=5, num_points=4096)(
        logits=logits, masks=masks, targets=[tgt, torch.zeros(0, 2, 16, 16)])
    got = {(int(b), int(t), int(o)): int(q) for b, t, q, o in zip(match.clip, match.frame, match.query, match.target)}
    assert got == {(0, 0, 0): 0, (0, 1, 0): 1, (0, 1, 1): 0}


def test_frame_matcher_class_cost_breaks_ties():
    masks = torch.zeros(1, 1, 3, 4, 4)  # identical masks: only the class cost differs
    logits = torch.tensor([[[[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]]]])
    match = FrameMatcher(class_weight=2, mask_weight=5, dice_weight=5, num_points=64)(
        logits=logits, masks=masks, targets=[torch.ones(1, 1, 16, 16)])
    assert match.query.tolist() == [1] and match.target.tolist() == [0]


def test_video_matcher_optimal_assignment_and_zero_targets():
    preds, targets = greedy_trap()
    masks = torch.stack([preds, preds], dim=1)[None].repeat(2, 1, 1, 1, 1)  # (B, N, T, h, w)
    tgt = torch.stack([targets, targets], dim=1).float()  # (M, T, H, W)
    torch.manual_seed(0)
    match = VideoMatcher(class_weight=2, mask_weight=5, dice_weight=5, num_points=4096)(
        logits=torch.zeros(2, 3, 2), masks=masks, targets=[torch.zeros(0, 2, 16, 16), tgt])
    assert match.clip.tolist() == [1, 1]
    assert dict(zip(match.target.tolist(), match.query.tolist())) == {0: 1, 1: 0}
    none = VideoMatcher(class_weight=2, mask_weight=5, dice_weight=5, num_points=16)(
        logits=torch.zeros(1, 3, 2), masks=masks[:1], targets=[torch.zeros(0, 2, 16, 16)])
    assert len(none) == 0 and none.query.dtype == torch.long


def test_hungarian_empty_and_non_finite():
    rows, cols = hungarian(torch.zeros(5, 0))
    assert rows.numel() == 0 and cols.numel() == 0
    rows, cols = hungarian(torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]))
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]


# ------------------------------------------------------------------------------------------ point sampling


def test_point_sample_is_pixel_lookup_at_centres():
    x = torch.randn(2, 3, 5, 7)
    i, j = torch.meshgrid(torch.arange(5), torch.arange(7), indexing="ij")
    coords = torch.stack([(j.flatten() + 0.5) / 7, (i.flatten() + 0.5) / 5], dim=-1)  # (x, y)
    got = L.point_sample(x, coords[None].expand(2, -1, -1))
    torch.testing.assert_close(got, x.flatten(2))


def test_importance_sampling_picks_the_most_uncertain_points():
    # Logit = 40 * (x - 0.5): |logit| is smallest around the vertical line x = 0.5.
    W = 256
    xs = (torch.arange(W) + 0.5) / W
    logits = (40 * (xs - 0.5)).expand(1, 1, 64, W).contiguous()
    P = 400
    coords = L.importance_sample_points(logits, num_points=P, oversample_ratio=3, importance_sample_ratio=0.75)
    assert coords.shape == (1, P, 2)
    uncertain, uniform = coords[0, :300, 0], coords[0, 300:, 0]
    # The 300 most uncertain of 1200 uniform draws lie within ~1/8 of the line.
    assert (uncertain - 0.5).abs().max() < 0.18
    assert (uniform - 0.5).abs().max() > 0.3  # the rest stays uniform
    plain = L.importance_sample_points(logits, num_points=P, oversample_ratio=3, importance_sample_ratio=0.0)
    assert (plain[0, :, 0] - 0.5).abs().mean() > 0.2


# ------------------------------------------------------------------------------------------ loss helpers


def test_dice_and_bce_helpers_by_hand():
    logits = torch.tensor([[0.0, 0.0], [BIG, -BIG]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    bce = L.sigmoid_bce_loss(logits, labels, num_masks=2.0)
    assert bce.item() == pytest.approx(math.log(2) / 2, rel=1e-5)
    # Mask 0: prob 0.5 each -> 1 - (2 * 0.5 + 1) / (1 + 1 + 1) = 1/3; mask 1 ~ 0.
    assert L.dice_loss(logits, labels, num_masks=2.0).item() == pytest.approx((1 / 3) / 2, rel=1e-5)


def test_similarity_loss_pairs():
    e = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    identity, group = torch.tensor([1, 1, 1]), torch.tensor([0, 0, 1])
    got = L.similarity_loss(e, identity, group)
    # Same-group ordered pairs, self-pairs included: (0,0)=1, (0,1)=(1,0)=2, (1,1)=4, (2,2)=1; all positive.
    logits = torch.tensor([1.0, 2.0, 2.0, 4.0, 1.0])
    assert got.item() == pytest.approx(F.softplus(-logits).mean().item(), rel=1e-6)


def test_reduce_count_clamps_and_averages_over_processes(monkeypatch):
    assert L.reduce_count([0, 3], device=torch.device("cpu")) == [1.0, 3.0]
    # Another process contributes (3, 5): the global sum divided by the world size of 2.
    monkeypatch.setattr(L.dist, "is_available", lambda: True)
    monkeypatch.setattr(L.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(L.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(L.dist, "all_reduce", lambda t: t.add_(torch.tensor([3.0, 5.0])))
    assert L.reduce_count([1, 2], device=torch.device("cpu")) == [2.0, 3.5]


# ------------------------------------------------------------------------------------------ criterion values


def test_perfect_predictions_give_near_zero_losses():
    K = 3
    vA, vB = torch.tensor([5.0, -5.0, 0, 0]), torch.tensor([-5.0, 5.0, 0, 0])
    fsim = torch.zeros(K, 1, T, N, 4)
    fsim[:, 0, 0, FRAME_Q[0]] = vA
    fsim[:, 0, 1, FRAME_Q[1]] = vB
    vsim = torch.zeros(6, K, 1, N, 4)
    vsim[-1, :, 0, VIDEO_Q[0]] = vA
    vsim[-1, :, 0, VIDEO_Q[1]] = vB
    out = two_object_output(sim=(fsim, vsim))
    losses = SSACriterion(config=small_config())(out, [two_object_target()])
    for key, value in losses.items():
        if "_ce" in key:
            assert value.item() < 1e-6, key
        elif "mask" in key:
            assert value.item() < 0.2, key  # vs ~19 for an empty prediction (see BIG), all of it at the border
        else:
            assert value.item() < 0.01, key  # Dice; ~1 for an empty prediction
    assert losses["loss_sim"].item() < 1e-6


def test_empty_predictions_give_known_values():
    P = 2048
    out = two_object_output(frame_ok=(False, False), video_ok=(False, False))
    # Uniform points, so that only ~6 % of them fall in the border band (importance sampling would
    # seek out the band, where the blended logits are the least certain).
    losses = SSACriterion(config=small_config(num_points=P, importance_sample_ratio=0.0))(out, [two_object_target()])
    # Frame: each object fills its frame, every point has label 1 and logit -20: BCE 20.
    assert losses["loss_mask"].item() == pytest.approx(BIG, rel=0.04)
    # Dice of an empty prediction: 1 - 1 / (sum of the target labels + 1).
    assert losses["loss_dice"].item() == pytest.approx(1 - 1 / (P + 1), rel=1e-3)
    # Video: half of an object's T * P points lie in its empty frame, where -20 is right.
    assert losses["loss_video_mask_2"].item() == pytest.approx(BIG / 2, rel=0.04)
    assert losses["loss_video_dice"].item() == pytest.approx(1 - 1 / (P + 1), rel=1e-3)


def test_cross_entropy_weighting_by_hand():
    # Identical (empty) masks, so the class cost decides: query 0 (highest p_fg) is matched in each frame.
    q = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]])
    out = two_object_output(frame_ok=(False, False), video_ok=(False, False))
    out.frame_logits = q.expand(10, 1, T, N, 2).clone()
    out.video_logits = q.expand(6, 3, 1, N, 2).clone()
    losses = SSACriterion(config=small_config())(out, [two_object_target()])

    def ce(logit, cls):
        return -(logit[cls] - torch.logsumexp(logit, 0)).item()

    per_frame_num = ce(q[0], 0) + 0.1 * sum(ce(q[i], 1) for i in (1, 2, 3))
    per_frame_den = 1 + 0.1 * 3
    expected = (T * per_frame_num) / (T * per_frame_den)
    assert losses["loss_ce"].item() == pytest.approx(expected, rel=1e-5)
    assert losses["loss_ce_0"].item() == pytest.approx(expected, rel=1e-5)
    # Video: both objects are matched to the two most foreground queries (0 and 2) in every copy.
    expected = (ce(q[0], 0) + ce(q[2], 0) + 0.1 * (ce(q[1], 1) + ce(q[3], 1))) / (2 + 0.1 * 2)
    assert losses["loss_video_ce"].item() == pytest.approx(expected, rel=1e-5)
    assert losses["loss_video_ce_3"].item() == pytest.approx(expected, rel=1e-5)


def test_object_displacement_by_hand():
    m = torch.zeros(3, 3, 10, 20)
    m[0, 0, 2:4, 2:4] = 1  # centre x 3 / 20
    m[0, 2, 6:8, 12:14] = 1  # absent in frame 1, then centre x 13 / 20, y 7 / 10
    m[1, 1, 5:7, 5:7] = 1  # visible in one frame only: no displacement
    m[2, 0, 0:2, 0:20] = 1
    m[2, 1, 0:4, 0:20] = 1  # grows downwards: the centre moves by 1 / 10
    d = L.object_displacement(m)
    assert torch.allclose(d[0], torch.tensor([10 / 20 * 4, 4 / 10 * 4]))
    assert torch.equal(d[1], torch.zeros(2))
    assert torch.allclose(d[2], torch.tensor([0.0, 1 / 10 * 4]))


def test_video_motion_loss_keys_value_and_requirements():
    out = two_object_output()
    crit = SSACriterion(config=small_config(video_motion_weight=1.5))
    with pytest.raises(ValueError, match="displacement_head"):
        crit(out, [two_object_target()])
    # Objects A and B are visible in one frame each: their displacement is 0, so the loss is the
    # smooth L1 of the matched queries' predictions (video queries 0 and 3) summed, / (2 objects x K).
    pred = torch.zeros(6, 3, 1, N, 2)
    pred[..., VIDEO_Q[0], :] = torch.tensor([1.0, 0.05])  # |1| - 0.05 and 0.05^2 / (2 * 0.1)
    pred[..., 1, :] = 7.0  # an unmatched query costs nothing
    out.video_displacement = pred
    losses = crit(out, [two_object_target()])
    assert set(losses) == set(crit.weight_dict) and len(losses) == 10 * 3 + 6 * 4 + 1
    assert crit.weight_dict["loss_video_motion"] == crit.weight_dict["loss_video_motion_4"] == 1.5
    expected = 3 * ((1.0 - 0.05) + 0.05 ** 2 / 0.2) / (2 * 3)
    assert losses["loss_video_motion"].item() == pytest.approx(expected, rel=1e-5)
    assert losses["loss_video_motion_0"].item() == pytest.approx(expected, rel=1e-5)
    assert not any("motion" in k for k in expected_loss_keys(small_config()))
    with pytest.raises(ValueError, match="video_motion_weight"):
        LossConfig(video_motion_weight=float("nan"))


def test_clip_without_objects():
    out = two_object_output()
    losses = SSACriterion(config=small_config())(out, [ClipTarget(torch.zeros(0, T, 32, 32, dtype=torch.bool),
                                                                  torch.zeros(0, dtype=torch.long))])
    assert losses["loss_mask"].item() == 0 and losses["loss_video_dice"].item() == 0 and losses["loss_sim"].item() == 0
    # Every query is "no object": the weighted mean is the plain mean of the class-1 cross-entropies.
    expected = F.cross_entropy(out.frame_logits[-1].reshape(-1, 2), torch.ones(T * N, dtype=torch.long))
    assert losses["loss_ce"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_normalisation_by_the_number_of_target_masks():
    # A is predicted right, B is predicted empty, at frame and at video level.
    out = two_object_output(frame_ok=(True, False), video_ok=(True, False))
    crit = SSACriterion(config=small_config(importance_sample_ratio=0.0))
    both = crit(out, [two_object_target((0, 1))])
    only_b = crit(out, [two_object_target((1,))])
    # Frame level: B's BCE (~20) over 2 masks, then over 1.
    assert only_b["loss_mask"].item() == pytest.approx(BIG, rel=0.04)
    assert both["loss_mask"].item() / only_b["loss_mask"].item() == pytest.approx(0.5, abs=0.02)
    # Video level: the K = 3 copies each add B's BCE (~10); divided by 2 objects x 3 copies, then 1 x 3.
    assert only_b["loss_video_mask"].item() == pytest.approx(BIG / 2, rel=0.04)
    assert both["loss_video_mask"].item() / only_b["loss_video_mask"].item() == pytest.approx(0.5, abs=0.02)
    assert both["loss_video_dice"].item() / only_b["loss_video_dice"].item() == pytest.approx(0.5, abs=0.02)


def test_targets_are_zero_padded_bottom_right():
    # A 20x24 object filling its whole (unpadded) frame; predictions right exactly on that region.
    Lf, Lv, K = 10, 6, 1
    fm = torch.full((Lf, 1, 1, 2, 8, 8), -BIG)
    fm[:, 0, 0, 0, :5, :6] = BIG  # 20/4 x 24/4 cells at stride 4
    feats = torch.ones(1, 1, 1, 8, 8)
    out = make_output(frame_logits=torch.zeros(Lf, 1, 1, 2, 2), frame_masks=fm, video_logits=torch.zeros(Lv, K, 1, 2, 2),
                      video_mask_embed=torch.zeros(Lv, K, 1, 2, 1), video_mask_features=feats, padded_size=(32, 32))
    target = ClipTarget(torch.ones(1, 1, 20, 24, dtype=torch.bool), torch.tensor([1]))
    crit = SSACriterion(config=small_config(num_points=4096, importance_sample_ratio=0.0))
    assert crit(out, [target])["loss_dice"].item() < 0.05  # a stretched target would give ~0.36
    with pytest.raises(ValueError, match="exceed the padded input"):
        crit(out, [ClipTarget(torch.ones(1, 1, 36, 24, dtype=torch.bool), torch.tensor([1]))])


def test_losses_are_fp32_under_low_precision_predictions():
    out = two_object_output()
    for name in ("frame_logits", "frame_masks", "video_logits", "video_mask_embed", "video_mask_features"):
        setattr(out, name, getattr(out, name).bfloat16())
    losses = SSACriterion(config=small_config())(out, [two_object_target()])
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


# ------------------------------------------------------------------------------------------ keys and config


def test_loss_keys_equal_weight_dict_keys():
    crit = SSACriterion(config=small_config())
    losses = crit(two_object_output(), [two_object_target()])
    assert set(losses) == set(crit.weight_dict) and len(losses) == 10 * 3 + 6 * 3 + 1
    for key in ("loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_dice_8", "loss_video_ce", "loss_video_mask_4",
                "loss_video_dice_0", "loss_sim"):
        assert key in losses
    assert "loss_ce_9" not in losses and "loss_video_ce_5" not in losses
    assert crit.weight_dict["loss_ce_3"] == 2.0 and crit.weight_dict["loss_video_dice"] == 5.0
    assert crit.weight_dict["loss_sim"] == 0.5
    total = crit.total(losses)
    assert total.item() == pytest.approx(sum(crit.weight_dict[k] * v.item() for k, v in losses.items()), rel=1e-5)

    shallow = SSACriterion(config=small_config(deep_supervision=False, sim_weight=1.0))
    assert set(shallow(two_object_output(), [two_object_target()])) == {
        "loss_ce", "loss_mask", "loss_dice", "loss_video_ce", "loss_video_mask", "loss_video_dice", "loss_sim"}
    assert shallow.weight_dict["loss_sim"] == 1.0


def test_mismatched_configuration_raises():
    config = small_config()
    weights = {k: 1.0 for k in expected_loss_keys(config)}
    SSACriterion(config=config, weight_dict=weights)
    weights.pop("loss_sim")
    weights["loss_vita_sim"] = 1.0  # the original's silently ignored key
    with pytest.raises(ValueError, match="loss_vita_sim"):
        SSACriterion(config=config, weight_dict=weights)
    with pytest.raises(ValueError, match="frame_layers=9"):
        SSACriterion(config=small_config(frame_layers=9))(two_object_output(), [two_object_target()])
    with pytest.raises(ValueError, match="'sim_wieght'"):
        LossConfig.from_dict({"sim_wieght": 1.0})
    with pytest.raises(ValueError, match="sim_frame_order"):
        LossConfig(sim_frame_order="shuffled")
    assert LossConfig.from_dict(LossConfig(sim_weight=1.0).to_dict()) == LossConfig(sim_weight=1.0)


# ------------------------------------------------------------------------------------------ similarity order


def _sim_output(trajectory):
    K = 3
    g = torch.Generator().manual_seed(1)
    fsim = torch.randn(K, 1, T, N, 4, generator=g)
    vsim = torch.randn(6, K, 1, N, 4, generator=g)
    return two_object_output(sim=(fsim, vsim), trajectory=trajectory), fsim, vsim


def _expected_sim(fsim, vsim, perm):
    """Hand-built pair set: per copy, frame entries (t=0, A), (t=1, B) and video entries A, B; all 4x4
    ordered pairs of the copy; mean over all copies' pairs."""
    total, count = 0.0, 0
    for k in range(fsim.shape[0]):
        entries = [(fsim[k, 0, t, perm[k, 0, t, q]], obj) for obj, (t, q) in enumerate(FRAME_Q.items())]
        entries += [(vsim[-1, k, 0, q], obj) for obj, q in VIDEO_Q.items()]
        for (ei, oi), (ej, oj) in itertools.product(entries, repeat=2):
            total += F.binary_cross_entropy_with_logits(ei @ ej, torch.tensor(float(oi == oj))).item()
            count += 1
    return total / count


def test_sim_frame_order_reordered_vs_original():
    identity = torch.arange(N).expand(3, 1, T, N).clone()
    swapped = identity.clone()
    swapped[:, 0, 1] = torch.tensor([0, 2, 1, 3])  # frame 1: slots 1 and 2 exchange queries
    crit = {o: SSACriterion(config=small_config(sim_frame_order=o)) for o in ("original", "reordered")}

    out, fsim, vsim = _sim_output(identity)
    same = {o: c(out, [two_object_target()])["loss_sim"].item() for o, c in crit.items()}
    assert same["original"] == pytest.approx(same["reordered"], rel=1e-6)
    assert same["original"] == pytest.approx(_expected_sim(fsim, vsim, identity), rel=1e-5)

    out, fsim, vsim = _sim_output(swapped)
    diff = {o: c(out, [two_object_target()])["loss_sim"].item() for o, c in crit.items()}
    assert diff["original"] == pytest.approx(same["original"], rel=1e-6)  # the trajectory does not matter
    assert diff["reordered"] == pytest.approx(_expected_sim(fsim, vsim, swapped), rel=1e-5)
    assert abs(diff["reordered"] - diff["original"]) > 1e-3


# ------------------------------------------------------------------------------------------ through the model


def test_backward_through_tiny_model(tiny_model):
    model = tiny_model.train()
    frames = torch.rand(2, 3, 3, 64, 64) * 255
    masks = torch.zeros(2, 3, 64, 64, dtype=torch.bool)
    masks[0, :, 8:30, 10:40] = True
    masks[1, 1:, 30:60, 5:20] = True  # absent from frame 0
    targets = [ClipTarget(masks, torch.tensor([3, 7])),
               ClipTarget(torch.zeros(0, 3, 64, 64, dtype=torch.bool), torch.zeros(0, dtype=torch.long))]
    out = model(frames, ["the red square", "a blue circle"])
    crit = SSACriterion(config=small_config(num_points=1024, sim_weight=1.0))
    losses = crit(out, targets)
    assert set(losses) == set(crit.weight_dict)
    assert all(torch.isfinite(v) for v in losses.values())
    crit.total(losses).backward()
    for module in (model.frame_decoder, model.video_decoder):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum().item() for g in grads) > 0
    for head in (model.video_decoder.sim_frame, model.video_decoder.sim_video):
        assert head.weight.grad.abs().sum() > 0
