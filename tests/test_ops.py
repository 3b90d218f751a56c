import math

import torch

from ssa_rvos.modeling.ops import MSDeformAttn, ms_deform_attn_sample


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


def test_sampling_matches_hand_written_bilinear():
    torch.manual_seed(0)
    shapes = [(3, 4), (5, 2), (1, 1)]
    B, Q, M, D, P = 2, 5, 2, 3, 3
    S = sum(h * w for h, w in shapes)
    value = torch.randn(B, S, M, D, dtype=torch.float64)
    # Locations spill outside [0, 1] on purpose: the border and zero padding must match too.
    locations = torch.rand(B, Q, M, len(shapes), P, 2, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(B, Q, M, len(shapes), P, dtype=torch.float64)
    ours = ms_deform_attn_sample(value, shapes, locations, weights)
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
