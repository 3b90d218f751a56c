"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021, Eq. 3) in pure PyTorch.

The sampling is a ``grid_sample`` over each level, so it runs anywhere PyTorch runs (CPU, CUDA,
MPS) with no compiled extension. Shapes: B batch, Q queries, S = sum of H_l * W_l value tokens,
M heads, D channels per head, Lv levels, P points.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def ms_deform_attn_sample(
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
        offsets = self.sampling_offsets(query).view(B, Q, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(B, Q, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(B, Q, self.heads, self.levels, self.points)
        # Offsets are in pixels of each level: normalise by that level's (W, H).
        normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        out = ms_deform_attn_sample(v, spatial_shapes, locations, weights)
        return self.output_proj(out)
