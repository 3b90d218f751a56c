"""Text-conditioned stage adapter (paper Sec. 3.2, Eqs. 2-4).

One adapter follows every frozen ConvNeXt stage. It mixes three views of the stage output with
a per-frame softmax gate: a residual conv path, a word-level cross-attention path (Eq. 2) and a
sentence-level path (Eq. 3). With a single sentence key the sentence attention is 1 everywhere,
so that path adds one projected sentence vector to every pixel, as Eq. 3 is written.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .config import AdapterConfig
from .layers import MLP, CrossAttentionLayer, sine_position_1d, sine_position_2d
from .ops import use_reference


class StageAdapter(nn.Module):
    def __init__(self, *, visual_dim: int, text_dim: int, config: AdapterConfig) -> None:
        super().__init__()
        dim = config.dim
        self.conv1 = nn.Conv2d(visual_dim, dim, kernel_size=1)
        self.conv2 = nn.Conv2d(dim, visual_dim, kernel_size=1)
        self.visual_proj = nn.Conv2d(visual_dim, dim, kernel_size=1)
        # One text projection, one attention and one output projection serve both the word and
        # the sentence streams (shared weights, as in the original implementation).
        self.text_proj = nn.Linear(text_dim, dim)
        self.cross_attn = CrossAttentionLayer(dim=dim, heads=config.heads, dropout=config.dropout)
        self.out_proj = nn.Linear(dim, visual_dim)
        self.gate = MLP(in_dim=3 * visual_dim, hidden=dim, out_dim=3, num_layers=2)

    def forward(
        self,
        x: Tensor,
        *,
        sentence: Tensor,
        words: Tensor,
        word_mask: Tensor,
        return_gate: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x: (B, Cv, H, W); sentence: (B, Ct); words: (B, L, Ct); word_mask: (B, L) bool, True =
        a real word. Returns (B, Cv, H, W), and the gate (B, 3) if ``return_gate``."""
        _, _, H, W = x.shape
        conv_path = F.relu(self.conv2(F.relu(self.conv1(x)))) + x

        q = rearrange(self.visual_proj(x), "b c h w -> b (h w) c")
        dim = q.shape[-1]
        # Positions on raw (unnormalised) pixel and token indices, as the original.
        q_pos = sine_position_2d(H, W, dim, normalize=False, device=x.device).to(q.dtype)
        word_pos = sine_position_1d(words.shape[1], dim, device=x.device).to(q.dtype)

        w = self.text_proj(words)
        word_path = self.cross_attn(q, w, query_pos=q_pos, key_pos=word_pos, key_padding_mask=~word_mask)
        s = self.text_proj(sentence)[:, None, :]
        sentence_path = self._sentence_path(q, s, q_pos)

        word_path = rearrange(self.out_proj(word_path), "b (h w) c -> b c h w", h=H, w=W)
        sentence_path = rearrange(self.out_proj(sentence_path), "b (h w) c -> b c h w", h=H, w=W)

        pooled = torch.cat([sentence_path.mean((2, 3)), word_path.mean((2, 3)), conv_path.mean((2, 3))], dim=-1)
        gate = self.gate(pooled).softmax(-1)
        out = (
            gate[:, 0, None, None, None] * sentence_path
            + gate[:, 1, None, None, None] * word_path
            + gate[:, 2, None, None, None] * conv_path
        )
        return (out, gate) if return_gate else out

    def _sentence_path(self, q: Tensor, s: Tensor, q_pos: Tensor) -> Tensor:
        """Eq. 3: every pixel attends to the one sentence key. Its softmax weight is 1, so the attention
        output is the projected sentence value for every pixel; at inference that vector is computed once
        instead of projecting every pixel's query and output (two dim x dim products per pixel, a third
        of the adapters' time on the large model). Training (attention dropout acts on that weight) and
        ``ssa_rvos.modeling.ops.reference_paths()`` run the attention as written."""
        layer = self.cross_attn
        attn = layer.attn
        if self.training or use_reference() or not attn._qkv_same_embed_dim:
            return layer(q, s, query_pos=q_pos)
        E = attn.embed_dim
        value = F.linear(s, attn.in_proj_weight[2 * E:], None if attn.in_proj_bias is None else attn.in_proj_bias[2 * E:])
        return layer.norm(q + attn.out_proj(value))
