"""SSA model parts, one file per concept of the paper."""

from .clip_backbone import ClipBackbone, TextFeatures, clean_sentence
from .config import (
    AdapterConfig,
    ClipConfig,
    FrameDecoderConfig,
    PixelDecoderConfig,
    SSAConfig,
    VideoDecoderConfig,
)
from .ssa import SSA, FrameStageOutput, SSAOutput

__all__ = [
    "SSA",
    "SSAConfig",
    "SSAOutput",
    "FrameStageOutput",
    "ClipConfig",
    "AdapterConfig",
    "PixelDecoderConfig",
    "FrameDecoderConfig",
    "VideoDecoderConfig",
    "ClipBackbone",
    "TextFeatures",
    "clean_sentence",
]
