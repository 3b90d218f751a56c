import dataclasses

import pytest
import torch

from ssa_rvos import build_model, model_config
from ssa_rvos.modeling import clean_sentence
from ssa_rvos.training.config import TrainConfig
from ssa_rvos.training.trainer import parameter_groups

TEXTS = ["the red square moving to the right", 'A  blue\tCIRCLE that stops !"#']


def _frames(B, T, H=70, W=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, T, 3, H, W, generator=g) * 255


@pytest.mark.parametrize("B", [1, 2])
@pytest.mark.parametrize("T", [1, 2, 5])
def test_output_shapes(tiny_model, B, T):
    cfg = tiny_model.config
    N, C = cfg.num_queries, cfg.hidden_dim
    with torch.no_grad():
        out = tiny_model(_frames(B, T), TEXTS[:B])
    h, w = 96 // 4, 128 // 4  # 70x100 is padded to 96x128
    Lf, Lv = cfg.frame_decoder.layers, cfg.video_decoder.layers
    assert out.image_size == (70, 100) and out.padded_size == (96, 128)
    assert out.frame_logits.shape == (Lf + 1, B, T, N, 2)
    assert out.frame_masks.shape == (Lf + 1, B, T, N, h, w)
    assert out.frame_queries.shape == (1, B, T, N, C)
    assert out.sentence_tokens.shape == (B, T, C)
    assert out.mask_features.shape == (B, T, C, h, w)
    assert out.video_logits.shape == (Lv, 1, B, N, 2)
    assert out.video_mask_embed.shape == (Lv, 1, B, N, C)
    assert out.video_sim_embed.shape == (Lv, 1, B, N, C)
    assert out.frame_sim_embed.shape == (1, B, T, N, C)
    assert out.trajectory.shape == (1, B, T, N)
    assert out.video_masks().shape == (1, B, N, T, h, w)
    for t in (out.frame_logits, out.frame_masks, out.video_logits, out.video_masks()):
        assert torch.isfinite(t).all()


def test_batch_of_two_equals_two_single_runs(tiny_model):
    frames = _frames(2, 3)
    with torch.no_grad():
        both = tiny_model(frames, TEXTS)
        singles = [tiny_model(frames[i:i + 1], TEXTS[i:i + 1]) for i in range(2)]
    for name in ("frame_logits", "frame_masks", "frame_queries", "video_logits", "video_mask_embed"):
        batched = getattr(both, name)
        dim = 1 if name in ("frame_logits", "frame_masks", "frame_queries") else 2
        for i, single in enumerate(singles):
            torch.testing.assert_close(batched.select(dim, i), getattr(single, name).select(dim, 0),
                                       atol=2e-5, rtol=1e-4, msg=name)
    for i, single in enumerate(singles):
        torch.testing.assert_close(both.trajectory[:, i], single.trajectory[:, 0])


def test_frame_stage_in_chunks_equals_one_pass(tiny_model):
    frames = _frames(2, 5)
    with torch.no_grad():
        whole = tiny_model(frames, TEXTS)
        chunked = tiny_model(frames, TEXTS, frame_chunk=3)  # chunks straddle the two clips
    assert chunked.frame_logits.shape[0] == 1 and chunked.frame_masks.shape[0] == 1
    torch.testing.assert_close(chunked.frame_masks, whole.frame_masks[-1:], atol=2e-5, rtol=1e-4)
    for name in ("frame_queries", "sentence_tokens", "video_mask_features", "video_logits", "video_mask_embed"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), atol=2e-5, rtol=1e-4, msg=name)
    assert torch.equal(chunked.trajectory, whole.trajectory)
    with pytest.raises(ValueError, match="frame_chunk"):
        tiny_model(frames, TEXTS, frame_chunk=0)


def test_training_uses_three_query_layers_as_extra_batch_entries(tiny_model):
    tiny_model.train()
    out = tiny_model(_frames(2, 2), TEXTS)
    assert out.frame_queries.shape[0] == 3
    assert out.video_logits.shape[:3] == (tiny_model.config.video_decoder.layers, 3, 2)
    assert out.video_masks().shape[:3] == (3, 2, tiny_model.config.num_queries)


def test_backward_reaches_every_trainable_parameter_and_no_clip_parameter():
    tiny_model = build_model("ssa_tiny")
    # Perturb the trainable weights first (as the fixture does) so that no zero init, like
    # deformable attention's zero offset weights, hides a broken path.
    with torch.no_grad():
        for p in tiny_model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    tiny_model.train()
    out = tiny_model(_frames(1, 2), TEXTS[:1])
    loss = sum(t.float().square().mean() for t in (
        out.frame_logits, out.frame_masks, out.video_logits, out.video_masks(), out.video_sim_embed,
        out.frame_sim_embed))
    loss.backward()
    trainable = [(n, p) for n, p in tiny_model.named_parameters() if p.requires_grad]
    assert trainable
    for name, p in trainable:
        assert not name.startswith("backbone.clip."), name
        assert p.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"zero gradient for {name}"
    for name, p in tiny_model.backbone.clip.named_parameters():
        assert not p.requires_grad and p.grad is None, name


def test_clip_stays_in_eval_mode_under_train(tiny_model):
    tiny_model.train()
    assert tiny_model.pixel_decoder.training and tiny_model.backbone.adapters.training
    assert not tiny_model.backbone.clip.training
    assert not any(m.training for m in tiny_model.backbone.clip.modules())


def test_original_train_mode_switch_leaves_clip_training():
    cfg = model_config("ssa_tiny")
    cfg = dataclasses.replace(cfg, clip=dataclasses.replace(cfg.clip, train_mode=True))
    model = build_model(cfg).train()
    assert model.backbone.clip.training
    assert not any(p.requires_grad for p in model.backbone.clip.parameters())
    model.eval()
    assert not model.backbone.clip.training


def test_train_text_switch_trains_the_text_tower_only():
    cfg = model_config("ssa_tiny")
    model = build_model(dataclasses.replace(cfg, clip=dataclasses.replace(cfg.clip, train_text=True)))
    clip = model.backbone.clip
    text_ids = {id(p) for p in model.backbone.text_parameters()}
    assert {id(clip.token_embedding.weight), id(clip.positional_embedding)} <= text_ids
    for name, p in clip.named_parameters():
        assert p.requires_grad == (id(p) in text_ids), name
        assert (name.startswith("visual.") or name == "logit_scale") == (id(p) not in text_ids), name
    model.train()
    assert not clip.training  # trained, but without dropout: the tower stays in eval mode
    out = model(_frames(1, 2), TEXTS[:1])
    (out.video_logits.float().square().mean() + out.frame_masks.float().square().mean()).backward()
    for p in model.backbone.text_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert clip.transformer.resblocks[-1].mlp.c_fc.weight.grad.abs().sum() > 0
    assert clip.token_embedding.weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in clip.named_parameters() if n.startswith("visual."))
    # the same text features as the frozen tower, and none of the graph at inference
    frozen = build_model(cfg)
    frozen.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected = frozen.encode_text(TEXTS).sentence
    model.eval()
    text = model.encode_text(TEXTS)
    assert not text.sentence.requires_grad
    torch.testing.assert_close(text.sentence, expected)  # float rounding: another attention kernel
    optim = TrainConfig().optim
    where = {id(p): g for g in parameter_groups(model, optim) for p in g["params"]}
    assert where[id(clip.transformer.resblocks[0].attn.in_proj_weight)]["lr"] == pytest.approx(optim.lr * 0.1)
    assert where[id(clip.token_embedding.weight)]["weight_decay"] == 0.0


def test_sentence_feature_equals_open_clip_encode_text(tiny_model):
    clip = tiny_model.backbone.clip
    with torch.no_grad():
        text = tiny_model.encode_text(TEXTS)
        expected = clip.encode_text(tiny_model.backbone.tokenize(TEXTS), normalize=False)
    torch.testing.assert_close(text.sentence, expected, atol=1e-5, rtol=0)
    assert text.words.shape == (2, 40, clip.text_projection.shape[1])


def test_word_mask_ends_at_eot(tiny_model):
    text = tiny_model.encode_text(TEXTS)
    for tokens, mask in zip(text.tokens, text.word_mask):
        eot = int(tokens.argmax())
        assert mask[: eot + 1].all() and not mask[eot + 1:].any()
    # '!"#' tokenises to a bare "!", BPE id 0: the original's `token != 0` rule drops that real
    # word from the mask, ours keeps it.
    eot = int(text.tokens[1].argmax())
    bang = torch.nonzero(text.tokens[1, :eot] == 0).flatten()
    assert len(bang) == 1
    assert text.word_mask[1, bang[0]]


def test_original_word_mask_rule_is_token_not_zero():
    cfg = model_config("ssa_tiny")
    cfg = dataclasses.replace(cfg, clip=dataclasses.replace(cfg.clip, word_mask_rule="nonzero"))
    model = build_model(cfg)
    text = model.encode_text(TEXTS)
    torch.testing.assert_close(text.word_mask, (text.tokens != 0)[:, :40])


def test_sentences_are_lowercased_and_whitespace_collapsed(tiny_model):
    assert clean_sentence("  The  RED\tsquare\n ") == "the red square"
    a = tiny_model.encode_text(["  The  RED\tsquare\n "])
    b = tiny_model.encode_text(["the red square"])
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.sentence, b.sentence)


def test_adapter_gate_is_a_distribution_per_frame(tiny_model):
    text = tiny_model.encode_text(TEXTS)
    for i, c in enumerate(tiny_model.backbone.stage_channels):
        x = torch.randn(2, c, 5, 7)
        out, gate = tiny_model.backbone.adapters[i](
            x, sentence=text.sentence, words=text.words, word_mask=text.word_mask, return_gate=True)
        assert out.shape == x.shape and gate.shape == (2, 3)
        assert (gate >= 0).all()
        torch.testing.assert_close(gate.sum(-1), torch.ones(2))


def test_without_sequential_alignment_the_trajectory_is_identity():
    cfg = model_config("ssa_tiny")
    cfg = dataclasses.replace(cfg, video_decoder=dataclasses.replace(cfg.video_decoder, sequential_alignment=False))
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(_frames(1, 3), TEXTS[:1])
    assert torch.equal(out.trajectory[0, 0], torch.arange(cfg.num_queries).expand(3, -1))


def test_bad_inputs_are_rejected(tiny_model):
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\)"):
        tiny_model(torch.zeros(2, 3, 32, 32), TEXTS)
    with pytest.raises(ValueError, match="sentences"):
        tiny_model(_frames(2, 1), TEXTS[:1])


def test_fast_operators_match_their_reference_versions_in_the_whole_model():
    """Eval outputs and training gradients of the whole model agree between the fast operators and
    ``reference_paths()``: the same sums in another order, so float32 rounding only."""
    from ssa_rvos.modeling.ops import reference_paths
    from ssa_rvos.training.clips import ClipTarget
    from ssa_rvos.training.losses import LossConfig, SSACriterion

    torch.manual_seed(3)
    model = build_model("ssa_tiny")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # non-zero deformable offsets, so samples fall between pixels
                p.add_(0.05 * torch.randn_like(p))
    frames = _frames(1, 3)

    model.eval()
    with torch.no_grad():
        fast = model(frames, TEXTS[:1])
        with reference_paths():
            ref = model(frames, TEXTS[:1])
    for name in ("frame_logits", "frame_masks", "video_logits", "video_mask_embed", "video_mask_features"):
        torch.testing.assert_close(getattr(fast, name), getattr(ref, name), rtol=1e-4, atol=1e-4, msg=name)

    model.train()
    criterion = SSACriterion(config=LossConfig(num_points=256))
    masks = torch.zeros(1, 3, 70, 100, dtype=torch.bool)
    masks[0, :, 20:40, 30:60] = True
    target = [ClipTarget(masks=masks, ids=torch.tensor([0]))]
    grads = {}
    for path in ("fast", "reference"):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same dropout masks and sampled points for both
        with reference_paths(path == "reference"):
            losses = criterion(model(frames, TEXTS[:1]), target)
            criterion.total(losses).backward()
        grads[path] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["fast"].keys() == grads["reference"].keys()
    assert any("pixel_decoder.layers" in n for n in grads["fast"])
    # All gradients together (measured: 6e-5 of the norm).
    flat = torch.cat([g.flatten() for g in grads["fast"].values()])
    flat_ref = torch.cat([g.flatten() for g in grads["reference"].values()])
    assert (flat - flat_ref).norm() <= 2e-4 * flat_ref.norm()
    # Each tensor: a sample within rounding of a pixel centre can take the other side of bilinear
    # sampling's kink, which moves its location gradient by a finite step; upstream of the pixel
    # decoder (the adapters) that shows as up to ~1e-3 of a small tensor's gradient. A wrong
    # computation moves it by O(1).
    for name, g in grads["fast"].items():
        g_ref = grads["reference"][name]
        assert (g - g_ref).norm() <= 5e-3 * g_ref.norm() + 1e-6, name


# ------------------------------------------------------------------ motion_embedding (not in the paper)

def _motion_model(seed=0, motion=True):
    config = model_config("ssa_tiny")
    config = dataclasses.replace(config, video_decoder=dataclasses.replace(config.video_decoder,
                                                                         motion_embedding=motion))
    torch.manual_seed(seed)
    model = build_model(config)
    with torch.no_grad():  # as the fixture does: no zero init may hide a path
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    return model


def test_mask_box_is_the_centre_and_spread_of_the_mask():
    from ssa_rvos.modeling.video_decoder import mask_box

    logits = torch.full((2, 8, 10), -40.0)
    logits[0, 2:4, 4:8] = 40.0  # rows 2-3, columns 4-7
    box = mask_box(logits)
    # centres: x = mean of (4.5 .. 7.5) / 10, y = mean of (2.5, 3.5) / 8; spreads: their standard deviations
    expected = torch.tensor([6.0 / 10, 3.0 / 8, 1.25 ** 0.5 / 10, 0.5 / 8])
    assert torch.allclose(box[0], expected, atol=1e-6)
    assert torch.allclose(box[1], torch.tensor([0.5, 0.5, 0.0, 0.0]))  # an empty mask: the centre, no spread
    shifted = torch.roll(logits[0], shifts=(3, -2), dims=(0, 1))
    assert torch.allclose(mask_box(shifted)[:2], expected[:2] + torch.tensor([-2 / 10, 3 / 8]), atol=1e-6)


def test_motion_features_by_hand():
    from ssa_rvos.modeling.video_decoder import motion_features

    # One object moving right by 0.05 a frame and down by 0.1 once, three frames.
    cx, cy = torch.tensor([0.3, 0.35, 0.4]), torch.tensor([0.5, 0.5, 0.6])
    boxes = torch.stack([cx, cy, torch.full((3,), 0.1), torch.full((3,), 0.2)], -1)[None, :, None]  # (1, 3, 1, 4)
    f = motion_features(boxes)[0, :, 0]
    assert torch.allclose(f[:, 0], (cx - 0.5) * 4) and torch.allclose(f[:, 1], (cy - 0.5) * 4)
    assert torch.allclose(f[:, 2:4], torch.tensor([0.4, 0.8]).expand(3, 2))
    assert torch.allclose(f[:, 4], torch.full((3,), 0.05 * 16), atol=1e-6)  # frame 0 repeats frame 1's step
    assert torch.allclose(f[:, 5], torch.tensor([0.0, 0.0, 1.6]), atol=1e-6)
    assert torch.allclose(f[:, 6:], torch.tensor([0.1 * 4, 0.1 * 4]).expand(3, 2), atol=1e-6)
    single = motion_features(boxes[:, :1])[0, 0, 0]
    assert torch.all(single[4:] == 0)  # one frame: no step, no displacement


def test_motion_embedding_starts_as_the_paper_model_and_reads_the_aligned_boxes():
    """Zero-initialised, the embedding leaves every output as the paper's SSA with the same weights;
    once its last layer is not zero, the video stage's outputs change and the frame stage's do not."""
    frames = _frames(1, 3)
    plain = _motion_model(motion=False).eval()
    model = _motion_model(motion=True).eval()
    model.load_state_dict(plain.state_dict(), strict=False)  # everything but the new MLP
    with torch.no_grad():
        nn = model.video_decoder.motion.mlp.layers
        nn[-1].weight.zero_(), nn[-1].bias.zero_()
        a, b = plain(frames, TEXTS[:1]), model(frames, TEXTS[:1])
        torch.testing.assert_close(a.video_logits, b.video_logits)
        nn[-1].weight.normal_(0, 0.5)
        c = model(frames, TEXTS[:1])
    assert torch.equal(a.frame_masks, c.frame_masks) and torch.equal(a.frame_queries, c.frame_queries)
    assert not torch.allclose(a.video_logits, c.video_logits, atol=1e-4)
    with pytest.raises(ValueError, match="motion_embedding"):
        model.video_decoder(a.frame_queries[0], a.sentence_tokens)


def test_motion_embedding_trains_in_chunks_and_keeps_the_masks_out_of_its_gradient():
    model = _motion_model().train()
    out = model(_frames(1, 2), TEXTS[:1])
    out.video_logits.float().square().mean().backward()
    for layer in model.video_decoder.motion.mlp.layers:
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    boxes = torch.rand(1, 2, 3, 4, requires_grad=True)
    model.video_decoder.motion(boxes).sum().backward()
    assert boxes.grad is None
    model.eval()
    frames = _frames(2, 5)
    with torch.no_grad():
        whole = model(frames, TEXTS)
        chunked = model(frames, TEXTS, frame_chunk=3)
    torch.testing.assert_close(chunked.video_logits, whole.video_logits, atol=2e-5, rtol=1e-4)


def test_motion_embedding_config_switch_and_old_configs():
    from ssa_rvos.modeling.config import SSAConfig
    from ssa_rvos.training.config import load_config

    data = model_config("ssa_tiny_shallow").to_dict()
    del data["video_decoder"]["motion_embedding"]
    assert build_model(SSAConfig.from_dict(data)).video_decoder.motion is None
    recipe = load_config("synthref_motion", ["model.clip_weights=null"]).model
    assert recipe.motion_embedding and recipe.train_text
    assert recipe.ssa_config().video_decoder.motion_embedding and recipe.ssa_config().video_decoder.layers == 3
    assert not load_config("synthref_text", ["model.clip_weights=null"]).model.ssa_config().video_decoder.motion_embedding


def test_displacement_head_outputs_per_video_layer_and_is_optional():
    config = model_config("ssa_tiny")
    config = dataclasses.replace(config, video_decoder=dataclasses.replace(config.video_decoder,
                                                                         displacement_head=True))
    torch.manual_seed(0)
    model = build_model(config).train()
    out = model(_frames(2, 3), TEXTS)
    Lv, K = out.video_logits.shape[:2]
    assert out.video_displacement.shape == (Lv, K, 2, config.num_queries, 2)
    out.video_displacement.square().mean().backward()
    assert model.video_decoder.displacement_head.weight.grad.abs().sum() > 0
    plain = build_model(model_config("ssa_tiny")).eval()
    with torch.no_grad():
        assert plain(_frames(1, 2), TEXTS[:1]).video_displacement is None
    from ssa_rvos.training.config import load_config

    aux = load_config("synthref_motionaux", ["model.clip_weights=null"])
    vd = aux.model.ssa_config().video_decoder
    assert vd.displacement_head and vd.motion_embedding and aux.loss.video_motion_weight == 2.0
