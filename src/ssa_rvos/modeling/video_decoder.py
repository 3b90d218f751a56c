"""Sequential object alignment and the video query decoder (paper Sec. 3.4, Eqs. 6-9).

Frame queries are projected, chained into trajectories (``trajectory.py``), enhanced along time
(short-term convolution, then long-term self-attention), and pooled over time with learned
weights into one video query per trajectory (trajectory ensemble). A VITA-style decoder then
refines the video queries against the per-frame sentence tokens and all trajectory tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from .config import VideoDecoderConfig
from .layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer, sine_position_1d
from .trajectory import apply_permutation, match_trajectories


class VideoDecoderLayer(nn.Module):
    def __init__(self, *, dim: int, heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.text_attn = CrossAttentionLayer(dim=dim, heads=heads)
        self.cross_attn = CrossAttentionLayer(dim=dim, heads=heads)
        self.self_attn = SelfAttentionLayer(dim=dim, heads=heads)
        self.ffn = FFNLayer(dim=dim, hidden=ffn_dim)

    def forward(self, x: Tensor, *, sentences: Tensor, tokens: Tensor, token_pos: Tensor, query_pos: Tensor) -> Tensor:
        x = self.text_attn(x, sentences, query_pos=query_pos)
        x = self.cross_attn(x, tokens, query_pos=query_pos, key_pos=token_pos)
        x = self.self_attn(x, pos=query_pos)
        return self.ffn(x)


@dataclass
class VideoDecoderOutput:
    """logits: (Lv, B, N, 2), mask_embed: (Lv, B, N, Cm) and sim_embed: (Lv, B, N, C) after every
    decoder layer; frame_sim_embed: (B, T, N, C) for the frame queries in their original order;
    trajectory: (B, T, N) the permutation that aligned them (identity without alignment)."""

    logits: Tensor
    mask_embed: Tensor
    sim_embed: Tensor
    frame_sim_embed: Tensor
    trajectory: Tensor


class VideoDecoder(nn.Module):
    def __init__(self, *, dim: int, num_queries: int, mask_dim: int, config: VideoDecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.input_proj = nn.Linear(dim, dim)
        k_short, k_long = config.short_kernels
        self.short_term = nn.Sequential(
            nn.Conv1d(dim, dim, kernel_size=k_short, padding="same", padding_mode="replicate"),
            nn.ReLU(),
            nn.Conv1d(dim, dim, kernel_size=k_long, padding="same", padding_mode="replicate"),
        )
        self.short_term_norm = nn.LayerNorm(dim)
        self.long_term = SelfAttentionLayer(dim=dim, heads=config.heads)
        self.ensemble = nn.Linear(dim, 1)
        self.layers = nn.ModuleList(
            VideoDecoderLayer(dim=dim, heads=config.heads, ffn_dim=config.ffn_dim) for _ in range(config.layers)
        )
        self.query_pos = nn.Embedding(num_queries, dim)
        self.slot_pos = nn.Embedding(num_queries, dim)
        self.norm = nn.LayerNorm(dim)
        self.class_head = nn.Linear(dim, 2)
        self.mask_head = MLP(in_dim=dim, hidden=dim, out_dim=mask_dim, num_layers=3)
        self.sim_frame = nn.Linear(dim, dim)
        self.sim_video = nn.Linear(dim, dim)
        # Video masks read their own projection of the raw stride-4 FPN map.
        self.mask_features = nn.Conv2d(dim, mask_dim, kernel_size=1)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        nn.init.zeros_(self.mask_features.bias)

    def temporal_enhancement(self, x: Tensor) -> Tensor:
        """Eq. 7-8: x (B, T, N, C) aligned trajectories -> (B, T, N, C)."""
        B, T, N, C = x.shape
        seq = rearrange(x, "b t n c -> (b n) c t")
        seq = self.short_term_norm((self.short_term(seq) + seq).transpose(1, 2))  # (BN, T, C)
        pos = sine_position_1d(T, C, device=x.device).to(seq.dtype)
        seq = self.long_term(seq, pos=pos[None])
        return rearrange(seq, "(b n) t c -> b t n c", b=B)

    def forward(self, frame_queries: Tensor, sentences: Tensor) -> VideoDecoderOutput:
        """frame_queries: (B, T, N, C) normed frame-decoder queries; sentences: (B, T, C) the
        per-frame sentence tokens s_t."""
        B, T, N, _ = frame_queries.shape
        q = self.input_proj(frame_queries)
        if self.config.sequential_alignment:
            trajectory = match_trajectories(q)
        else:
            trajectory = torch.arange(N, device=q.device).expand(B, T, N)
        return self.decode(q, trajectory, sentences)

    def decode(self, q: Tensor, trajectory: Tensor, sentences: Tensor) -> VideoDecoderOutput:
        """The video stage after the trajectory matching: q (B, T, N, C) the projected frame queries,
        trajectory (B, T, N) their permutation (ignored without sequential alignment), sentences (B, T, C)."""
        T = q.shape[1]
        if self.config.sequential_alignment:
            aligned = self.temporal_enhancement(apply_permutation(q, trajectory))
            weights = self.ensemble(aligned).softmax(dim=1)  # over T
            x = (aligned * weights).sum(1)  # (B, N, C)
        else:
            aligned = q
            x = q.mean(1)
        tokens = rearrange(aligned, "b t n c -> b (t n) c")
        token_pos = self.slot_pos.weight.repeat(T, 1)[None]  # slot j keeps its embedding at every t
        query_pos = self.query_pos.weight[None].expand(q.shape[0], -1, -1)

        outputs = []
        for layer in self.layers:
            x = layer(x, sentences=sentences, tokens=tokens, token_pos=token_pos, query_pos=query_pos)
            outputs.append(self.norm(x))
        normed = torch.stack(outputs)  # (Lv, B, N, C)
        return VideoDecoderOutput(
            logits=self.class_head(normed),
            mask_embed=self.mask_head(normed),
            sim_embed=self.sim_video(normed),
            frame_sim_embed=self.sim_frame(q),
            trajectory=trajectory,
        )
