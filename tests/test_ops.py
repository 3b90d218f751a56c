import math

import pytest
import torch

from ssa_rvos.modeling.ops import (
    MSDeformAttn,
    ms_deform_attn_sample,
    ms_deform_attn_sample_reference,
    reference_paths,
    use_reference,
)


def _bilinear(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """img: (D, H, W); (x, y) in [0, 1] of the image extent; zeros outside (pixel centres at
    (i + 0.5) / size)."""
    D, H, W = img.shape
    px, py = x * W - 0.5, y * H - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(D, dtype=img.dtype)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            w = (1 - abs(px - xx)) * (1 - abs(py - yy))
            if 0 <= xx < W and 0 <= yy < H:
                out += w * img[:, yy, xx]
    return out


def _reference(value, shapes, locations, weights):
    B, S, M, D = value.shape
    _, Q, _, L, P, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(B, Q, M, D, dtype=value.dtype)
    for b in range(B):
        for q in range(Q):
            for m in range(M):
                for lvl, (h, w) in enumerate(shapes):
                    img = value[b, starts[lvl]:starts[lvl + 1], m].T.reshape(D, h, w)
                    for p in range(P):
                        x, y = locations[b, q, m, lvl, p].tolist()
                        out[b, q, m] += weights[b, q, m, lvl, p] * _bilinear(img, x, y)
    return out.reshape(B, Q, M * D)


@pytest.mark.parametrize("sample", [ms_deform_attn_sample, ms_deform_attn_sample_reference])
def test_sampling_matches_hand_written_bilinear(sample):
    torch.manual_seed(0)
    shapes = [(3, 4), (5, 2), (1, 1)]
    B, Q, M, D, P = 2, 5, 2, 3, 3
    S = sum(h * w for h, w in shapes)
    value = torch.randn(B, S, M, D, dtype=torch.float64)
    # Locations spill outside [0, 1] on purpose: the border and zero padding must match too.
    locations = torch.rand(B, Q, M, len(shapes), P, 2, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(B, Q, M, len(shapes), P, dtype=torch.float64)
    ours = sample(value, shapes, locations, weights)
    assert ours.shape == (B, Q, M * D)
    torch.testing.assert_close(ours, _reference(value, shapes, locations, weights), rtol=0, atol=1e-12)


def test_module_samples_at_reference_plus_offsets():
    torch.manual_seed(1)
    attn = MSDeformAttn(dim=8, levels=2, heads=2, points=2).double()
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    shapes = [(4, 4), (2, 3)]
    S = sum(h * w for h, w in shapes)
    query = torch.randn(1, 3, 8, dtype=torch.float64)
    value_in = torch.randn(1, S, 8, dtype=torch.float64)
    ref_points = torch.rand(1, 3, 2, 2, dtype=torch.float64)
    out = attn(query, ref_points, value_in, shapes)

    # The same computation spelled out: offsets are in pixels of each level.
    v = attn.value_proj(value_in).view(1, S, 2, 4)
    offsets = attn.sampling_offsets(query).view(1, 3, 2, 2, 2, 2)
    w = attn.attention_weights(query).view(1, 3, 2, 4).softmax(-1).view(1, 3, 2, 2, 2)
    norm = torch.tensor([[4.0, 4.0], [3.0, 2.0]], dtype=torch.float64)
    loc = ref_points[:, :, None, :, None, :] + offsets / norm[None, None, None, :, None, :]
    expected = attn.output_proj(_reference(v, shapes, loc, w))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


def _module_inputs(seed: int, dtype: torch.dtype, *, B=2, Q=30, dim=32, shapes=((6, 8), (3, 4), (2, 2))):
    torch.manual_seed(seed)
    attn = MSDeformAttn(dim=dim, levels=len(shapes), heads=4, points=3).to(dtype)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.5)  # offsets of several pixels, many samples outside the maps
    S = sum(h * w for h, w in shapes)
    query = torch.randn(B, Q, dim, dtype=dtype, requires_grad=True)
    value = torch.randn(B, S, dim, dtype=dtype, requires_grad=True)
    ref_points = torch.rand(B, Q, len(shapes), 2, dtype=dtype)
    return attn, (query, ref_points, value, list(shapes))


def test_fast_and_reference_paths_agree_in_float32():
    attn, args = _module_inputs(4, torch.float32)
    out_fast = attn(*args)
    with reference_paths():
        out_ref = attn(*args)
    # Same sums added in another order: float32 rounding only.
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-5, atol=1e-5)


def test_fast_and_reference_paths_agree_forward_and_backward():
    # float64: in float32 a sample landing within rounding of a pixel centre can take the other side
    # of bilinear sampling's kink, and its location gradient jumps.
    attn, args = _module_inputs(2, torch.float64)
    out_fast = attn(*args)
    grads_fast = torch.autograd.grad(out_fast.square().sum(), [args[0], args[2], *attn.parameters()])
    with reference_paths():
        assert use_reference()
        out_ref = attn(*args)
        grads_ref = torch.autograd.grad(out_ref.square().sum(), [args[0], args[2], *attn.parameters()])
    assert not use_reference()
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-10, atol=1e-10)
    for g_fast, g_ref in zip(grads_fast, grads_ref):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-9, atol=1e-9)
    # And not trivially: the output depends on the value, the offsets and the weights.
    assert out_fast.abs().mean() > 0.1 and all(g.abs().sum() > 0 for g in grads_fast)


def test_fast_sampling_equals_reference_in_float64():
    torch.manual_seed(3)
    shapes = [(7, 5), (4, 3), (1, 2)]
    B, Q, M, D, P = 3, 11, 4, 5, 4
    value = torch.randn(B, sum(h * w for h, w in shapes), M, D, dtype=torch.float64)
    locations = torch.rand(B, Q, M, len(shapes), P, 2, dtype=torch.float64) * 1.6 - 0.3
    weights = torch.rand(B, Q, M, len(shapes), P, dtype=torch.float64)
    torch.testing.assert_close(ms_deform_attn_sample(value, shapes, locations, weights),
                               ms_deform_attn_sample_reference(value, shapes, locations, weights),
                               rtol=0, atol=1e-12)


def test_reference_paths_restores_the_previous_state_on_error():
    with pytest.raises(RuntimeError):
        with reference_paths():
            raise RuntimeError("boom")
    assert not use_reference()
    with reference_paths(), reference_paths(False):
        assert not use_reference()


def _adapter_inputs(dtype):
    from ssa_rvos.modeling.adapter import StageAdapter
    from ssa_rvos.modeling.config import AdapterConfig

    g = torch.Generator().manual_seed(0)
    adapter = StageAdapter(visual_dim=48, text_dim=32, config=AdapterConfig(dim=64, heads=4)).to(dtype)
    x = torch.randn(2, 48, 10, 14, generator=g, dtype=dtype)
    words = torch.randn(2, 7, 32, generator=g, dtype=dtype)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    return adapter, dict(sentence=torch.randn(2, 32, generator=g, dtype=dtype), words=words, word_mask=mask), x


def test_the_adapters_sentence_path_without_attention_equals_the_attention():
    """Eq. 3's attention has one key (weight 1): at inference the fast path skips the per-pixel query and
    output projections. Same result as the attention (float64: to rounding), and the fast path is taken
    (it never calls the attention module with the sentence)."""
    adapter, text, x = _adapter_inputs(torch.float64)
    adapter.eval()
    calls = []
    hook = adapter.cross_attn.register_forward_hook(lambda m, args, out: calls.append(args[1].shape[1]))
    with torch.no_grad():
        fast = adapter(x, **text)
        assert calls == [7]  # the word path only
        with reference_paths():
            ref = adapter(x, **text)
        assert calls == [7, 7, 1]
    hook.remove()
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    assert (fast - adapter.conv2.bias[None, :, None, None]).abs().mean() > 0.1  # not trivially equal
    # training runs the attention as written (its dropout acts on the one weight)
    adapter.train()
    calls.clear()
    hook = adapter.cross_attn.register_forward_hook(lambda m, args, out: calls.append(args[1].shape[1]))
    adapter(x, **text)
    hook.remove()
    assert calls == [7, 1]


def test_the_bidirectional_block_with_one_text_token_equals_the_attention():
    """The pixel decoder's vision <-> text block with SSA's one sentence token: at inference it projects a
    few vectors instead of every visual token. Same result as the attention as written (float64, to
    rounding), the fast path taken in eval only, and with several text tokens the attention as written."""
    from ssa_rvos.modeling.pixel_decoder import BiDirectionalBlock

    torch.manual_seed(0)
    block = BiDirectionalBlock(dim=32, inner_dim=48, heads=4, dropout=0.1, init_value=1.0).double()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))  # non-zero biases, uneven norms and gammas
    v, l = torch.randn(3, 57, 32, dtype=torch.float64), torch.randn(3, 1, 32, dtype=torch.float64)
    calls = []
    hook = block.v_proj.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[1]))
    block.eval()
    with torch.no_grad():
        fast = block(v, l)
        assert calls == []  # no per-token projection
        with reference_paths():
            ref = block(v, l)
        assert calls == [57]
        for a, b in zip(fast, ref):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert (fast[0] - block.norm_v(v)).abs().mean() > 0.1 and (fast[1] - block.norm_l(l)).abs().mean() > 0.1
        calls.clear()
        block(v, torch.randn(3, 2, 32, dtype=torch.float64))  # two text tokens: the attention as written
        assert calls == [57]
    calls.clear()
    block.train()
    block(v, l)  # training: attention dropout acts on the weights, so as written
    hook.remove()
    assert calls == [57]
