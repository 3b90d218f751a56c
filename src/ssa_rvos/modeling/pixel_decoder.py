"""Pixel decoder with the bi-directional vision-text encoder (paper Sec. 3.3, Eq. 5).

A Mask2Former multi-scale deformable-attention encoder over res3..res5 in which every layer is
preceded by a bi-directional attention block between the frame's visual tokens and its sentence
token (GroundingDINO style). The updated sentence token of each frame, ``s_t``, is the paper's
per-frame sentence feature used by both decoders. An FPN step brings the result to stride 4.

The whole block runs in fp32 even under autocast, as the original does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .config import PixelDecoderConfig
from .layers import sine_position_2d
from .ops import MSDeformAttn, use_reference


class BiDirectionalBlock(nn.Module):
    """Vision <-> text attention with pre-LayerNorm and small layer-scale on both outputs."""

    def __init__(self, *, dim: int, inner_dim: int, heads: int, dropout: float, init_value: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = inner_dim // heads
        self.scale = self.head_dim**-0.5
        self.dropout = dropout
        self.norm_v = nn.LayerNorm(dim)
        self.norm_l = nn.LayerNorm(dim)
        self.v_proj = nn.Linear(dim, inner_dim)
        self.l_proj = nn.Linear(dim, inner_dim)
        self.values_v_proj = nn.Linear(dim, inner_dim)
        self.values_l_proj = nn.Linear(dim, inner_dim)
        self.out_v_proj = nn.Linear(inner_dim, dim)
        self.out_l_proj = nn.Linear(inner_dim, dim)
        self.gamma_v = nn.Parameter(torch.full((dim,), init_value))
        self.gamma_l = nn.Parameter(torch.full((dim,), init_value))
        for proj in (self.v_proj, self.l_proj, self.values_v_proj, self.values_l_proj, self.out_v_proj, self.out_l_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, v: Tensor, l: Tensor) -> tuple[Tensor, Tensor]:
        """v: (B, S, C) visual tokens; l: (B, Lt, C) text tokens. Returns both updated."""
        v = self.norm_v(v)
        l = self.norm_l(l)
        if l.shape[1] == 1 and not self.training and not use_reference():
            return self._one_text_token(v, l)
        split = lambda t: rearrange(t, "b n (h d) -> b h n d", h=self.heads)  # noqa: E731
        q = split(self.v_proj(v)) * self.scale
        k = split(self.l_proj(l))
        logits = q @ k.transpose(-1, -2)  # (B, h, S, Lt)
        # Stabilise in the original's way: shift by the max, clamp to +-5e4 (fp16-safe range).
        # The shift is per clip here (the original used the whole batch's max), which keeps
        # batch entries independent; softmax itself is unchanged by any shift.
        logits = logits - logits.amax(dim=(1, 2, 3), keepdim=True)
        logits = logits.clamp(-50000, 50000)
        logits_t = logits.transpose(-1, -2)
        logits_t = (logits_t - logits_t.amax(dim=-1, keepdim=True)).clamp(-50000, 50000)
        attn_v = F.dropout(logits.softmax(-1), self.dropout, self.training)
        attn_l = F.dropout(logits_t.softmax(-1), self.dropout, self.training)
        delta_v = rearrange(attn_v @ split(self.values_l_proj(l)), "b h n d -> b n (h d)")
        delta_l = rearrange(attn_l @ split(self.values_v_proj(v)), "b h n d -> b n (h d)")
        # The residual goes onto the *normalised* inputs, as in GroundingDINO.
        return v + self.gamma_v * self.out_v_proj(delta_v), l + self.gamma_l * self.out_l_proj(delta_l)

    def _one_text_token(self, v: Tensor, l: Tensor) -> tuple[Tensor, Tensor]:
        """The block at inference when the text is one token (SSA's sentence token per frame), on normalised
        inputs, without a per-token projection. Vision side: every token attends to the one key with weight
        1, so all get the same update, ``out_v_proj(values_l_proj(l))``. Text side: the token's logits
        over the visual tokens are ``v . (W_q^T k)`` per head (plus ``b_q . k``, the same for every token, which
        the softmax ignores), and attention-weighted values are
        ``(attn @ v) W_v^T + b_v`` (the weights sum to 1): the query and value projections act on a few
        vectors instead of every visual token (on the large model at 320x448 the block did three
        256x512 products for each of ~2,900 tokens a frame). Softmax is shift-invariant, so the reference's
        max shift and its clamp (which only touches weights that underflow to 0) change nothing."""
        B, _, C = v.shape
        h, d = self.heads, self.head_dim
        k = self.l_proj(l).view(B, h, d)
        w_q = torch.einsum("bhd,hdc->bhc", k, self.v_proj.weight.view(h, d, C)) * self.scale
        attn = (w_q @ v.transpose(1, 2)).softmax(-1)  # (B, h, S); b_q . k is the same for every token
        pooled = attn @ v  # (B, h, C)
        delta_l = torch.einsum("bhc,hdc->bhd", pooled, self.values_v_proj.weight.view(h, d, C))
        delta_l = (delta_l + self.values_v_proj.bias.view(h, d)).reshape(B, 1, h * d)
        delta_v = self.out_v_proj(self.values_l_proj(l))  # (B, 1, C), the same for every visual token
        return v + self.gamma_v * delta_v, l + self.gamma_l * self.out_l_proj(delta_l)


class DeformableEncoderLayer(nn.Module):
    """Post-norm deformable self-attention + ReLU FFN."""

    def __init__(self, *, dim: int, ffn_dim: int, heads: int, levels: int, points: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(dim=dim, levels=levels, heads=heads, points=points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(self, x: Tensor, *, pos: Tensor, reference_points: Tensor, spatial_shapes: list[tuple[int, int]]) -> Tensor:
        x = self.norm1(x + self.dropout(self.self_attn(x + pos, reference_points, x, spatial_shapes)))
        y = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout(y))


@dataclass
class PixelDecoderOutput:
    """mask_features: (B, Cm, H/4, W/4) for frame masks; fpn: (B, C, H/4, W/4) the raw stride-4
    map (video masks are a separate projection of it); multi_scale: [1/32, 1/16, 1/8] maps
    (B, C, h, w); sentence: (B, 1, C) the updated per-frame sentence token s_t."""

    mask_features: Tensor
    fpn: Tensor
    multi_scale: list[Tensor]
    sentence: Tensor


def _reference_points(spatial_shapes: list[tuple[int, int]], device: torch.device) -> Tensor:
    """Pixel centres of every level, normalised to [0, 1] as (x, y) -> (S, 2)."""
    points = []
    for h, w in spatial_shapes:
        y, x = torch.meshgrid(
            (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h,
            (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w,
            indexing="ij",
        )
        points.append(torch.stack((x.reshape(-1), y.reshape(-1)), -1))
    return torch.cat(points, 0)


class PixelDecoder(nn.Module):
    def __init__(self, *, in_channels: list[int], dim: int, mask_dim: int, config: PixelDecoderConfig) -> None:
        """in_channels: channels of res2..res5."""
        super().__init__()
        self.levels = 3
        # res5, res4, res3: coarse to fine, the order of the encoder's token sequence.
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, dim, kernel_size=1), nn.GroupNorm(config.groups, dim))
            for c in in_channels[1:][::-1]
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight)
            nn.init.zeros_(proj[0].bias)
        self.level_embed = nn.Parameter(torch.randn(self.levels, dim))
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(dim=dim, ffn_dim=config.ffn_dim, heads=config.heads, levels=self.levels,
                                   points=config.points, dropout=config.dropout)
            for _ in range(config.layers)
        )
        self.fusion_layers = nn.ModuleList(
            BiDirectionalBlock(dim=dim, inner_dim=config.fusion_dim, heads=config.fusion_heads,
                               dropout=config.fusion_dropout, init_value=config.fusion_init)
            for _ in range(config.layers)
        )
        self.lateral_conv = nn.Sequential(
            nn.Conv2d(in_channels[0], dim, kernel_size=1, bias=False), nn.GroupNorm(config.groups, dim)
        )
        self.output_conv = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=False), nn.GroupNorm(config.groups, dim), nn.ReLU()
        )
        self.mask_features = nn.Conv2d(dim, mask_dim, kernel_size=1)
        for conv in (self.lateral_conv[0], self.output_conv[0], self.mask_features):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward(self, features: list[Tensor], sentence: Tensor) -> PixelDecoderOutput:
        """features: [res2, res3, res4, res5] (B, C_i, h_i, w_i); sentence: (B, 1, C) one token per
        frame."""
        device_type = features[0].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            return self._forward(features=[f.float() for f in features], sentence=sentence.float())

    def _forward(self, *, features: list[Tensor], sentence: Tensor) -> PixelDecoderOutput:
        device = features[0].device
        coarse_to_fine = features[1:][::-1]
        shapes = [tuple(f.shape[-2:]) for f in coarse_to_fine]
        tokens = torch.cat(
            [rearrange(proj(f), "b c h w -> b (h w) c") for proj, f in zip(self.input_proj, coarse_to_fine)], 1
        )
        dim = tokens.shape[-1]
        pos = torch.cat(
            [sine_position_2d(h, w, dim, normalize=True, device=device) + self.level_embed[i]
             for i, (h, w) in enumerate(shapes)],
            0,
        )[None]
        # No padding mask (the original treats the padded area as valid), so every level's
        # reference points are the same normalised pixel centres.
        ref = _reference_points(shapes, device)[None, :, None, :].expand(tokens.shape[0], -1, self.levels, -1)
        x, s = tokens, sentence
        for fusion, layer in zip(self.fusion_layers, self.layers):
            x, s = fusion(x, s)
            x = layer(x, pos=pos, reference_points=ref, spatial_shapes=shapes)

        maps = [
            rearrange(t, "b (h w) c -> b c h w", h=h, w=w)
            for t, (h, w) in zip(x.split([h * w for h, w in shapes], dim=1), shapes)
        ]
        lateral = self.lateral_conv(features[0])
        fpn = self.output_conv(
            lateral + F.interpolate(maps[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        )
        return PixelDecoderOutput(mask_features=self.mask_features(fpn), fpn=fpn, multi_scale=maps, sentence=s)
