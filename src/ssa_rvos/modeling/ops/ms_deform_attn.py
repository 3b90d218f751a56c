"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021, Eq. 3) in pure PyTorch.

The sampling is a ``grid_sample`` over each level, so it runs anywhere PyTorch runs (CPU, CUDA,
MPS) with no compiled extension. Shapes: B batch, Q queries, S = sum of H_l * W_l value tokens,
M heads, D channels per head, Lv levels, P points.

Two versions compute the same thing (up to float rounding: the terms are added in another order).
The reference (:func:`ms_deform_attn_sample_reference` and the plain arithmetic in
``MSDeformAttn.forward``) samples every (level, point) pair, stacks them and reduces over the last axis;
softmax and locations broadcast over short innermost axes. All of that is slow on CPUs: the stack is a
strided copy of the largest tensor in the pixel decoder, and reductions and broadcasts over innermost axes
of 2 to 12 elements do not vectorise. The fast path (the default): the locations come out of two matrix
products (``MSDeformAttn._grids``), the softmax runs over a middle axis of a (B, M, Lv * P, Q) layout, and
the grid is laid out as (points, queries) so that each point's samples are a contiguous (D, Q) plane,
accumulated as ``weight * sample`` into one output buffer (:func:`ms_deform_attn_sample`). Inside
:func:`ssa_rvos.modeling.ops.reference_paths` the module runs the reference; ``tests/test_ops.py`` and
``tests/test_model.py`` check that both agree, forward and backward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .reference import use_reference


def ms_deform_attn_sample_reference(
    value: Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Bilinearly sample every level at the given locations and sum with the attention weights.

    value: (B, S, M, D); sampling_locations: (B, Q, M, Lv, P, 2) as (x, y) in [0, 1] of each
    level's extent (outside samples read zeros); attention_weights: (B, Q, M, Lv, P).
    Returns (B, Q, M * D).
    """
    B, _, M, D = value.shape
    _, Q, _, Lv, P, _ = sampling_locations.shape
    per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    # grid_sample wants [-1, 1] with align_corners=False: pixel centres sit at (i + 0.5) / size.
    grids = 2 * sampling_locations - 1
    samples = []
    for level, (h, w) in enumerate(spatial_shapes):
        v = per_level[level].permute(0, 2, 3, 1).reshape(B * M, D, h, w)
        g = grids[:, :, :, level].transpose(1, 2).reshape(B * M, Q, P, 2)
        samples.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    sampled = torch.stack(samples, dim=-2).flatten(-2)  # (B*M, D, Q, Lv*P)
    weights = attention_weights.transpose(1, 2).reshape(B * M, 1, Q, Lv * P)
    out = (sampled * weights).sum(-1)  # (B*M, D, Q)
    return out.view(B, M * D, Q).transpose(1, 2)


def ms_deform_attn_sample(
    value: Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """:func:`ms_deform_attn_sample_reference` without the stacked samples; same arguments."""
    return _sample_grids(value, spatial_shapes, 2 * sampling_locations - 1, attention_weights.permute(0, 2, 3, 4, 1))


def _sample_grids(value: Tensor, spatial_shapes: list[tuple[int, int]], grids: Tensor, weights: Tensor) -> Tensor:
    """grids: (B, Q, M, Lv, P, 2) in grid_sample's [-1, 1] convention; weights: (B, M, Lv, P, Q)."""
    B, _, M, D = value.shape
    _, Q, _, Lv, P, _ = grids.shape
    per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    # (B, M, Lv, P, Q, ...): every (level, point) becomes a (P, Q) "image" of sample positions, so the
    # samples of one point form a contiguous (D, Q) plane of grid_sample's (B*M, D, P, Q) output.
    grids = grids.permute(0, 2, 3, 4, 1, 5)
    out = None
    for level, (h, w) in enumerate(spatial_shapes):
        v = per_level[level].permute(0, 2, 3, 1).reshape(B * M, D, h, w)
        g = grids[:, :, level].reshape(B * M, P, Q, 2)
        sampled = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        wl = weights[:, :, level].reshape(B * M, 1, P, Q)
        # unbind, not indexing: in training, each indexed view's backward would allocate and zero a
        # gradient of the whole (B*M, D, P, Q) tensor; unbind's backward stacks them once.
        for s, w_p in zip(sampled.unbind(2), wl.unbind(2)):
            out = s * w_p if out is None else out.addcmul_(s, w_p)
    return out.view(B, M * D, Q).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Each query attends to ``points`` learned offsets around its reference point on every level."""

    def __init__(self, *, dim: int, levels: int, heads: int, points: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.dim, self.levels, self.heads, self.points = dim, levels, heads, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        # Fast path: column (m, l, p, c) of the offsets reads 2 * reference_points[l, c] (a constant,
        # not saved in checkpoints), so the grid comes out of two matrix products (see _grids).
        expand = torch.zeros(levels, 2, heads, levels, points, 2)
        for level in range(levels):
            for c in range(2):
                expand[level, c, :, level, :, c] = 2.0
        self.register_buffer("_reference_expand", expand.view(levels * 2, -1), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Offsets start on a ring of directions, one per head, at growing radius per point.
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.heads, 1, 1, 2).repeat(1, self.levels, self.points, 1)
        grid = grid * torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: list[tuple[int, int]],
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """query: (B, Q, C); reference_points: (B, Q, Lv, 2) as (x, y) in [0, 1];
        value: (B, S, C); padding_mask: (B, S) bool, True = padded. Returns (B, Q, C)."""
        B, Q, _ = query.shape
        S = value.shape[1]
        v = self.value_proj(value)
        if padding_mask is not None:
            v = v.masked_fill(padding_mask[..., None], 0.0)
        v = v.view(B, S, self.heads, self.dim // self.heads)
        logits = self.attention_weights(query).view(B, Q, self.heads, self.levels * self.points)
        # Offsets are in pixels of each level: normalise by that level's (W, H).
        normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        if use_reference():
            offsets = self.sampling_offsets(query).view(B, Q, self.heads, self.levels, self.points, 2)
            weights = logits.softmax(-1).view(B, Q, self.heads, self.levels, self.points)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
            out = ms_deform_attn_sample_reference(v, spatial_shapes, locations, weights)
        else:
            grids = self._grids(query, reference_points, normalizer)
            # The softmax over a short innermost axis (Lv * P) is slow on CPUs; over a middle axis
            # of the (B, M, Lv * P, Q) layout the sampling wants it is ~10x faster.
            weights = logits.permute(0, 2, 3, 1).softmax(2).view(B, self.heads, self.levels, self.points, Q)
            out = _sample_grids(v, spatial_shapes, grids, weights)
        return self.output_proj(out)

    def _grids(self, query: Tensor, reference_points: Tensor, normalizer: Tensor) -> Tensor:
        """The reference path's locations in grid_sample's [-1, 1], 2 * (ref + offsets / n) - 1, as
        ``ref @ expand + query @ (W / n)^T + (b / n - 1)``: two matrix products instead of broadcasting
        over (Lv, 2) and (P, 2) innermost axes, which is slow on CPUs. -> (B, Q, M, Lv, P, 2)."""
        B, Q, C = query.shape
        M, Lv, P = self.heads, self.levels, self.points
        scale = (2 / normalizer)[None, :, None, :].expand(M, Lv, P, 2).reshape(-1)  # per output column
        base = torch.addmm(self.sampling_offsets.bias * scale - 1, reference_points.reshape(B * Q, Lv * 2),
                           self._reference_expand.to(query.dtype))
        grids = torch.addmm(base, query.reshape(B * Q, C), (self.sampling_offsets.weight * scale[:, None]).t())
        return grids.view(B, Q, M, Lv, P, 2)
