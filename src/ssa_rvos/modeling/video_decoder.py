"""Sequential object alignment and the video query decoder (paper Sec. 3.4, Eqs. 6-9).

Frame queries are projected, chained into trajectories (``trajectory.py``), enhanced along time
(short-term convolution, then long-term self-attention), and pooled over time with learned
weights into one video query per trajectory (trajectory ensemble). A VITA-style decoder then
refines the video queries against the per-frame sentence tokens and all trajectory tokens.

``motion_embedding`` (not in the paper) adds to every aligned trajectory token an embedding of where its
frame mask lies and how it moved (:class:`MotionEmbedding`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from .config import VideoDecoderConfig
from .layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer, sine_position_1d
from .trajectory import apply_permutation, match_trajectories


def mask_box(masks: Tensor) -> Tensor:
    """(..., 4) centre x, centre y, spread x, spread y of soft masks (..., h, w) given as logits: the
    :func:`weighted_box` of their sigmoid."""
    return weighted_box(masks.float().sigmoid())


def weighted_box(p: Tensor) -> Tensor:
    """(..., 4) centre x, centre y, spread x, spread y of non-negative weights (..., h, w): the weighted mean
    and standard deviation of the cell centres, as fractions of the map's width and height. Weights of
    total under 1e-6 get the map's centre and zero spread."""
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


def motion_features(boxes: Tensor) -> Tensor:
    """Aligned boxes (B, T, N, 4) of :func:`mask_box` -> (B, T, N, 8): the centre ((c - 0.5) x 4), the
    spread (x 4), the step from the previous frame (x 16; frame 0 repeats frame 1's, and a single frame
    has none) and the displacement from the first frame to the last (x 4, the same at every t). Scaled
    so that SynthRef's motions (a few pixels a frame) come out of order 1, linear in the positions."""
    centre, spread = boxes[..., :2], boxes[..., 2:]
    T = boxes.shape[1]
    # the step into frame a from frame a - 1, with a = t clamped to [1, T - 1] (frame 0 takes frame 1's
    # step; a single frame, a = 0, steps from itself): indices, not a branch on T, so that an exported
    # graph (traced at one T) stays right at every T
    now = torch.arange(T, device=boxes.device).clamp(min=1).clamp(max=T - 1)
    before = (now - 1).clamp(min=0)
    step = centre.index_select(1, now) - centre.index_select(1, before)
    shift = (centre[:, -1:] - centre[:, :1]).expand_as(centre)
    return torch.cat([(centre - 0.5) * 4, spread * 4, step * 16, shift * 4], dim=-1)


class MotionEmbedding(nn.Module):
    """``motion_embedding`` (not in the paper): MLP(:func:`motion_features`) -> (B, T, N, C), its last
    layer zero-initialised so that training starts from the network without it. The boxes carry no
    gradient (the frame masks are detached)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = MLP(in_dim=8, hidden=dim, out_dim=dim, num_layers=2)
        last = self.mlp.layers[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, boxes: Tensor) -> Tensor:
        x = motion_features(boxes.detach().float())
        return self.mlp(x.to(self.mlp.layers[0].weight.dtype))


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
    trajectory: (B, T, N) the permutation that aligned them (identity without alignment);
    displacement: (Lv, B, N, 2) with ``displacement_head`` (else None)."""

    logits: Tensor
    mask_embed: Tensor
    sim_embed: Tensor
    frame_sim_embed: Tensor
    trajectory: Tensor
    displacement: Tensor | None = None


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
        self.motion = MotionEmbedding(dim) if config.motion_embedding else None
        self.displacement_head = nn.Linear(dim, 2) if config.displacement_head else None

    def temporal_enhancement(self, x: Tensor) -> Tensor:
        """Eq. 7-8: x (B, T, N, C) aligned trajectories -> (B, T, N, C)."""
        B, T, N, C = x.shape
        seq = rearrange(x, "b t n c -> (b n) c t")
        seq = self.short_term_norm((self.short_term(seq) + seq).transpose(1, 2))  # (BN, T, C)
        pos = sine_position_1d(T, C, device=x.device).to(seq.dtype)
        seq = self.long_term(seq, pos=pos[None])
        return rearrange(seq, "(b n) t c -> b t n c", b=B)

    def forward(self, frame_queries: Tensor, sentences: Tensor, boxes: Tensor | None = None) -> VideoDecoderOutput:
        """frame_queries: (B, T, N, C) normed frame-decoder queries; sentences: (B, T, C) the
        per-frame sentence tokens s_t; boxes: (B, T, N, 4) the :func:`mask_box` of each query's frame
        mask, required with ``motion_embedding`` and ignored without."""
        B, T, N, _ = frame_queries.shape
        q = self.input_proj(frame_queries)
        if self.config.sequential_alignment:
            trajectory = match_trajectories(q)
        else:
            trajectory = torch.arange(N, device=q.device).expand(B, T, N)
        return self.decode(q, trajectory, sentences, boxes)

    def decode(self, q: Tensor, trajectory: Tensor, sentences: Tensor, boxes: Tensor | None = None) -> VideoDecoderOutput:
        """The video stage after the trajectory matching: q (B, T, N, C) the projected frame queries,
        trajectory (B, T, N) their permutation (ignored without sequential alignment), sentences (B, T, C),
        boxes (B, T, N, 4) as in :meth:`forward`."""
        T = q.shape[1]
        motion = None
        if self.motion is not None:
            if boxes is None:
                raise ValueError("this video decoder has motion_embedding on: it needs the frame masks' boxes")
            if self.config.sequential_alignment:
                boxes = apply_permutation(boxes, trajectory)
            motion = self.motion(boxes).to(q.dtype)
        if self.config.sequential_alignment:
            aligned = apply_permutation(q, trajectory)
            if motion is not None:
                aligned = aligned + motion
            aligned = self.temporal_enhancement(aligned)
            weights = self.ensemble(aligned).softmax(dim=1)  # over T
            x = (aligned * weights).sum(1)  # (B, N, C)
        else:
            aligned = q if motion is None else q + motion
            x = aligned.mean(1)
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
            displacement=None if self.displacement_head is None else self.displacement_head(normed),
        )
