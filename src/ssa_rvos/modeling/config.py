"""Typed configuration of the SSA network.

Only :func:`ssa_rvos.build.build_model` sees the whole :class:`SSAConfig`; each part receives
its own small dataclass. Configs round-trip through plain dicts (saved next to weights).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..configs import from_dict

# CLIP's own RGB statistics on a 0-255 scale (the backbone is a CLIP model).
CLIP_PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)
CLIP_PIXEL_STD = (68.5005327, 66.6321579, 70.32316305)


@dataclass(frozen=True)
class ClipConfig:
    """The frozen open_clip ConvNeXt model.

    ``model_name`` names an open_clip architecture (built in, or registered by this package);
    ``architecture``, when given, is a full open_clip model config dict used instead of the
    registry (how foreign checkpoints bring their own CLIP sizes).
    """

    model_name: str = "convnext_large_d_320"
    architecture: dict[str, Any] | None = None
    word_tokens: int = 40
    # "eot": valid words are the positions up to and including the end-of-text token.
    # "nonzero": the original implementation's rule ``token != 0`` (id 0 is the real BPE token
    # "!", so it drops that word and keeps nothing else different); used to match its outputs.
    word_mask_rule: str = "eot"
    # The original left CLIP in train mode, so its stochastic depth was active while training.
    train_mode: bool = False
    # Not in the paper: the text tower (token and position embeddings, transformer, final norm, projection)
    # trains with the model instead of staying frozen; for a CLIP whose text tower never saw the task's
    # words (the tiny SynthRef CLIP, pretrained on still-frame captions, never saw a motion word).
    train_text: bool = False


@dataclass(frozen=True)
class AdapterConfig:
    """Text-conditioned adapter after every ConvNeXt stage (paper Sec. 3.2)."""

    dim: int = 256
    heads: int = 8
    dropout: float = 0.1


@dataclass(frozen=True)
class PixelDecoderConfig:
    """Deformable-attention encoder with bi-directional vision-text blocks, plus FPN."""

    layers: int = 6
    ffn_dim: int = 1024
    heads: int = 8
    points: int = 4
    dropout: float = 0.0
    fusion_dim: int = 512
    fusion_heads: int = 4
    fusion_dropout: float = 0.1
    fusion_init: float = 1e-4
    groups: int = 32


@dataclass(frozen=True)
class FrameDecoderConfig:
    """Masked-attention decoder generating instance queries per frame (paper Sec. 3.3)."""

    layers: int = 9
    ffn_dim: int = 2048
    heads: int = 8
    # Frame queries of the last k layers go to the video stage while training (each as an extra
    # batch entry); inference uses the last layer only.
    train_query_layers: int = 3


@dataclass(frozen=True)
class VideoDecoderConfig:
    """Sequential object alignment + video query decoder (paper Sec. 3.4)."""

    layers: int = 6
    ffn_dim: int = 2048
    heads: int = 8
    short_kernels: tuple[int, int] = (5, 3)
    # Ablation switch: without alignment, no trajectory chaining, temporal enhancement or
    # ensemble; the video queries start from the mean of the frame queries over time.
    sequential_alignment: bool = True
    # Not in the paper (issue 18): each trajectory token gets an embedding of where its frame mask lies
    # and how it moved (centre, spread, step since the previous frame, displacement over the clip), so the
    # video stage can read motion that SSA's position-free frame queries do not carry. Off in every preset.
    motion_embedding: bool = False
    # Not in the paper (issue 18): a linear head on every video query predicting its object's displacement
    # over the clip, for the auxiliary loss ``loss.video_motion_weight``; unused at inference.
    displacement_head: bool = False


@dataclass(frozen=True)
class SSAConfig:
    clip: ClipConfig = field(default_factory=ClipConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    frame_decoder: FrameDecoderConfig = field(default_factory=FrameDecoderConfig)
    video_decoder: VideoDecoderConfig = field(default_factory=VideoDecoderConfig)
    hidden_dim: int = 256
    num_queries: int = 20
    text_dropout: float = 0.1
    use_adapters: bool = True
    pixel_mean: tuple[float, float, float] = CLIP_PIXEL_MEAN
    pixel_std: tuple[float, float, float] = CLIP_PIXEL_STD
    size_divisibility: int = 32
    # Short side of the test resize this model was trained for (None: the benchmark's, 448 for MeViS and
    # 480 otherwise). Not part of the network: the predictor reads it.
    test_short_side: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SSAConfig:
        return from_dict(cls, data, "model")
