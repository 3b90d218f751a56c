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
from .layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer, sine_position_2d


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


@dataclass
class FrameDecoderOutput:
    """logits: (Lf + 1, B, N, 2) and masks: (Lf + 1, B, N, H/4, W/4) for the initial queries and
    after every layer; queries: (Lf, B, N, C) the normed queries after every layer."""

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
            queries.append(normed)
        return FrameDecoderOutput(logits=torch.stack(logits), masks=torch.stack(masks), queries=torch.stack(queries))
