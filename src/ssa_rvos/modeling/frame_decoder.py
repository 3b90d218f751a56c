"""Frame query decoder: instance query generation per frame (paper Sec. 3.3).

A Mask2Former masked-attention decoder whose queries all start from the frame's sentence token
``s_t`` (language as query): only the learned query positions tell the N queries apart. Each
layer attends to one memory level (1/32, 1/16, 1/8 in turn) under the mask predicted by the
previous layer, then to the other queries, then to ``s_t``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .config import FrameDecoderConfig
from .layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer, _sine, sine_position_2d


class FrameDecoderLayer(nn.Module):
    def __init__(self, *, dim: int, heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.cross_attn = CrossAttentionLayer(dim=dim, heads=heads)
        self.self_attn = SelfAttentionLayer(dim=dim, heads=heads)
        self.text_attn = CrossAttentionLayer(dim=dim, heads=heads)
        self.ffn = FFNLayer(dim=dim, hidden=ffn_dim)

    def forward(self, x: Tensor, *, memory: Tensor, memory_pos: Tensor, attn_mask: Tensor, sentence: Tensor,
                query_pos: Tensor) -> Tensor:
        x = self.cross_attn(x, memory, query_pos=query_pos, key_pos=memory_pos, attn_mask=attn_mask)
        x = self.self_attn(x, pos=query_pos)
        x = self.text_attn(x, sentence, query_pos=query_pos)
        return self.ffn(x)


def mask_box(masks: Tensor) -> Tensor:
    """(..., 4) centre x, centre y, spread x, spread y of soft masks (..., h, w) given as logits: the
    sigmoid-weighted mean and standard deviation of the cell centres, as fractions of the map's width and
    height. A mask of total weight under 1e-6 (cells) gets the map's centre and zero spread."""
    p = masks.sigmoid()
    h, w = p.shape[-2:]
    ys = (torch.arange(h, device=p.device, dtype=p.dtype) + 0.5) / h
    xs = (torch.arange(w, device=p.device, dtype=p.dtype) + 0.5) / w
    px, py = p.sum(-2), p.sum(-1)  # marginals over x (..., w) and over y (..., h)
    mass = px.sum(-1)
    some = mass > 1e-6
    safe = mass.clamp_min(1e-6)
    cx = torch.where(some, (px * xs).sum(-1) / safe, torch.full_like(mass, 0.5))
    cy = torch.where(some, (py * ys).sum(-1) / safe, torch.full_like(mass, 0.5))
    sx = torch.where(some, ((px * (xs - cx[..., None]) ** 2).sum(-1) / safe).clamp_min(0).sqrt(), 0.0)
    sy = torch.where(some, ((py * (ys - cy[..., None]) ** 2).sum(-1) / safe).clamp_min(0).sqrt(), 0.0)
    return torch.stack((cx, cy, sx, sy), dim=-1)


class QueryBoxEmbedding(nn.Module):
    """``query_box_position`` (not in the paper): Linear(sine embedding of :func:`mask_box`), one quarter
    of the channels per box value. Values are scaled to [0, 16 pi] and the temperature is 64, so the
    periods run from 1/8 of the frame to several frames at any width. The masks are detached."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 8:
            raise ValueError(f"query_box_position needs a width divisible by 8, got {dim}")
        self.proj = nn.Linear(dim, dim)

    def forward(self, masks: Tensor) -> Tensor:
        box = mask_box(masks.detach().float()) * (16 * torch.pi)
        return self.proj(_sine(box, self.proj.in_features // 4, 64.0).flatten(-2).to(self.proj.weight.dtype))


@dataclass
class FrameDecoderOutput:
    """logits: (Lf + 1, B, N, 2) and masks: (Lf + 1, B, N, H/4, W/4) for the initial queries and
    after every layer; queries: (Lf, B, N, C) the normed queries after every layer (with
    ``query_box_position``, plus the embedding of where that layer's mask of each query lies)."""

    logits: Tensor
    masks: Tensor
    queries: Tensor


class FrameDecoder(nn.Module):
    def __init__(self, *, dim: int, num_queries: int, mask_dim: int, config: FrameDecoderConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.levels = 3
        self.layers = nn.ModuleList(
            FrameDecoderLayer(dim=dim, heads=config.heads, ffn_dim=config.ffn_dim) for _ in range(config.layers)
        )
        self.query_pos = nn.Embedding(num_queries, dim)
        self.level_embed = nn.Embedding(self.levels, dim)
        self.norm = nn.LayerNorm(dim)
        self.class_head = nn.Linear(dim, 2)  # foreground, no-object
        self.mask_head = MLP(in_dim=dim, hidden=dim, out_dim=mask_dim, num_layers=3)
        self.box_embed = QueryBoxEmbedding(dim) if config.query_box_position else None

    def _heads(self, x: Tensor, mask_features: Tensor, target_size: tuple[int, int]) -> tuple[Tensor, ...]:
        normed = self.norm(x)
        logits = self.class_head(normed)
        masks = torch.einsum("bnc,bchw->bnhw", self.mask_head(normed), mask_features)
        # Masked attention (Mask2Former): the next layer only looks where this prediction is
        # foreground at that layer's resolution; no gradient flows through the mask.
        small = F.interpolate(masks, size=target_size, mode="bilinear", align_corners=False)
        blocked = (small.sigmoid().flatten(2) < 0.5).detach()
        # A query with nothing above threshold would attend nowhere: let it see everything.
        blocked = blocked & ~blocked.all(-1, keepdim=True)
        blocked = blocked.repeat_interleave(self.heads, dim=0)  # (B*heads, N, hw), batch-major
        return logits, masks, normed, blocked

    def forward(self, *, multi_scale: list[Tensor], mask_features: Tensor, sentence: Tensor) -> FrameDecoderOutput:
        """multi_scale: 3 maps (B, C, h, w) coarse to fine; mask_features: (B, Cm, H/4, W/4);
        sentence: (B, 1, C) the frame's sentence token s_t."""
        B = sentence.shape[0]
        sizes = [tuple(m.shape[-2:]) for m in multi_scale]
        memory = [rearrange(m, "b c h w -> b (h w) c") + self.level_embed.weight[i] for i, m in enumerate(multi_scale)]
        dim = memory[0].shape[-1]
        memory_pos = [sine_position_2d(h, w, dim, normalize=True, device=sentence.device) for h, w in sizes]
        query_pos = self.query_pos.weight[None].expand(B, -1, -1)
        x = sentence.expand(-1, query_pos.shape[1], -1)

        logits, masks, queries = [], [], []
        lg, mk, _, blocked = self._heads(x, mask_features, sizes[0])
        logits.append(lg)
        masks.append(mk)
        for i, layer in enumerate(self.layers):
            level = i % self.levels
            x = layer(x, memory=memory[level], memory_pos=memory_pos[level][None], attn_mask=blocked,
                      sentence=sentence, query_pos=query_pos)
            lg, mk, normed, blocked = self._heads(x, mask_features, sizes[(i + 1) % self.levels])
            logits.append(lg)
            masks.append(mk)
            queries.append(normed if self.box_embed is None else normed + self.box_embed(mk))
        return FrameDecoderOutput(logits=torch.stack(logits), masks=torch.stack(masks), queries=torch.stack(queries))
