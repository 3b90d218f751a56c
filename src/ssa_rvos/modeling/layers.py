"""Transformer building blocks shared by the SSA parts.

All layers are batch-first and post-norm (``x = LayerNorm(x + sublayer(x))``), the layout of the
Mask2Former/VITA decoders that SSA builds on. Shape alphabet: B batch, N queries, L keys, C width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _xavier_matrices(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


def _add(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class _PostNormAttention(nn.Module):
    def __init__(self, *, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        _xavier_matrices(self)


class CrossAttentionLayer(_PostNormAttention):
    """Post-norm multi-head cross-attention: ``norm(q + drop(attn(q + q_pos, k + k_pos, k)))``."""

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        *,
        query_pos: Tensor | None = None,
        key_pos: Tensor | None = None,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """x: (B, N, C); memory: (B, L, C); attn_mask: (B*heads, N, L) bool, True = blocked;
        key_padding_mask: (B, L) bool, True = ignored."""
        out = self.attn(
            _add(x, query_pos),
            _add(memory, key_pos),
            memory,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            need_weights=False,
        )[0]
        return self.norm(x + self.dropout(out))


class SelfAttentionLayer(_PostNormAttention):
    """Post-norm multi-head self-attention; positions are added to queries and keys only."""

    def forward(self, x: Tensor, *, pos: Tensor | None = None) -> Tensor:
        """x: (B, N, C) -> (B, N, C)."""
        qk = _add(x, pos)
        out = self.attn(qk, qk, x, need_weights=False)[0]
        return self.norm(x + self.dropout(out))


class FFNLayer(nn.Module):
    """Post-norm two-layer ReLU feed-forward block."""

    def __init__(self, *, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        _xavier_matrices(self)

    def forward(self, x: Tensor) -> Tensor:
        out = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm(x + self.dropout(out))


class MLP(nn.Module):
    """Plain MLP with ReLU between layers (none after the last)."""

    def __init__(self, *, in_dim: int, hidden: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def _sine(positions: Tensor, channels: int, temperature: float) -> Tensor:
    """Interleaved sin/cos of ``positions[..., None] / temperature ** (2 * (i // 2) / channels)``."""
    i = torch.arange(channels, dtype=torch.float32, device=positions.device)
    dim_t = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / channels)
    angles = positions[..., None] / dim_t
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


def sine_position_1d(length: int, channels: int, *, temperature: float = 10000.0,
                     device: torch.device | None = None) -> Tensor:
    """1-D sine embedding of the unnormalised positions 1..length -> (length, channels)."""
    positions = torch.arange(1, length + 1, dtype=torch.float32, device=device)
    return _sine(positions, channels, temperature)


def sine_position_2d(height: int, width: int, channels: int, *, normalize: bool,
                     temperature: float = 10000.0, device: torch.device | None = None) -> Tensor:
    """2-D sine embedding (DETR style) -> (height * width, channels), row-major.

    Half the channels encode y, half x, on 1-based pixel indices; with ``normalize`` the indices
    are scaled to (0, 2*pi] as Mask2Former does for its decoders (no padding mask: the whole
    padded map counts as valid, like the original).
    """
    half = channels // 2
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    if normalize:
        eps, scale = 1e-6, 2 * math.pi
        y = y / (height + eps) * scale
        x = x / (width + eps) * scale
    pos_y = _sine(y, half, temperature)[:, None, :].expand(height, width, half)
    pos_x = _sine(x, half, temperature)[None, :, :].expand(height, width, half)
    return torch.cat((pos_y, pos_x), dim=-1).reshape(height * width, channels)
