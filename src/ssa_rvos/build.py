"""Build SSA models from named presets: one flat name -> config map, plain builder functions."""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable
from importlib import resources

import torch
from torch import nn

from .modeling import (
    SSA,
    AdapterConfig,
    ClipBackbone,
    ClipConfig,
    FrameDecoderConfig,
    PixelDecoderConfig,
    SSAConfig,
    VideoDecoderConfig,
)
from .modeling.frame_decoder import FrameDecoder
from .modeling.pixel_decoder import PixelDecoder
from .modeling.ssa import SentenceProjection
from .modeling.video_decoder import VideoDecoder

# CLIP architectures this package registers with open_clip (files in ssa_rvos/clip_configs).
_PACKAGE_CLIP_CONFIGS = ("ssa_tiny_clip",)


def ssa_convnext_large() -> SSAConfig:
    """The paper's model: open_clip convnext_large_d_320, all sizes as published."""
    return SSAConfig()


def ssa_tiny() -> SSAConfig:
    """A small random-init model with the paper's structure (every layer count as published),
    narrow widths: for tests and CPU experiments."""
    return SSAConfig(
        clip=ClipConfig(model_name="ssa_tiny_clip"),
        adapter=AdapterConfig(dim=64, heads=4),
        pixel_decoder=PixelDecoderConfig(ffn_dim=256, fusion_dim=128, fusion_heads=4),
        frame_decoder=FrameDecoderConfig(ffn_dim=128),
        video_decoder=VideoDecoderConfig(ffn_dim=128),
        hidden_dim=64,
    )


def ssa_tiny_shallow() -> SSAConfig:
    """``ssa_tiny`` with fewer layers, for training on a CPU: 2 deformable encoder layers (paper 6), 3
    frame-decoder layers (9: one round over the three feature levels instead of three) whose last layer
    alone feeds the video stage in training (3), and 3 video-decoder layers (6). A training step of the
    SynthRef recipe takes about 0.4x the time of ``ssa_tiny``'s."""
    base = ssa_tiny()
    return dataclasses.replace(
        base,
        pixel_decoder=dataclasses.replace(base.pixel_decoder, layers=2),
        frame_decoder=dataclasses.replace(base.frame_decoder, layers=3, train_query_layers=1),
        video_decoder=dataclasses.replace(base.video_decoder, layers=3),
    )


PRESETS: dict[str, Callable[[], SSAConfig]] = {
    "ssa_convnext_large": ssa_convnext_large,
    "ssa_tiny": ssa_tiny,
    "ssa_tiny_shallow": ssa_tiny_shallow,
}


def list_models() -> list[str]:
    return sorted(PRESETS)


def model_config(name: str) -> SSAConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None


def register_clip_configs() -> None:
    """Make this package's CLIP architectures known to open_clip by name (idempotent)."""
    import open_clip

    for name in _PACKAGE_CLIP_CONFIGS:
        if open_clip.get_model_config(name) is None:
            open_clip.add_model_config(str(resources.files("ssa_rvos") / "clip_configs" / f"{name}.json"))


def clip_architecture(config: ClipConfig) -> dict:
    """The open_clip model config dict for ``config`` (its own, or the registered one)."""
    import open_clip

    if config.architecture is not None:
        return copy.deepcopy(config.architecture)
    register_clip_configs()
    arch = open_clip.get_model_config(config.model_name)
    if arch is None:
        raise ValueError(f"open_clip has no model named {config.model_name!r}")
    return arch


def build_clip(config: ClipConfig, weights: str | None = None) -> tuple[nn.Module, object]:
    """Create the open_clip model and its tokenizer.

    weights: None (random init, never touches the network), a local checkpoint file
    (.safetensors, or a torch file loaded with ``weights_only=True``), or an open_clip pretrained
    tag for ``config.model_name`` (downloaded once into the open_clip/Hugging Face cache).
    """
    import open_clip

    arch = clip_architecture(config)
    if arch.pop("custom_text", False) or "hf_model_name" in arch.get("text_cfg", {}):
        raise ValueError(f"{config.model_name}: only open_clip models with the built-in text tower are supported")
    if "timm_model_name" not in arch.get("vision_cfg", {}):
        raise ValueError(f"{config.model_name}: the SSA backbone needs a timm ConvNeXt image tower")
    arch["vision_cfg"]["timm_model_pretrained"] = False
    clip = open_clip.model.CLIP(**arch)
    if weights is not None:
        if os.path.isfile(weights):
            path = weights
        elif any(sep in weights for sep in ("/", os.sep)) or weights.endswith((".pt", ".pth", ".bin", ".safetensors")):
            raise FileNotFoundError(f"CLIP weights file not found: {weights}")
        else:
            tag_cfg = open_clip.get_pretrained_cfg(config.model_name, weights)
            if not tag_cfg:
                tags = open_clip.list_pretrained_tags_by_model(config.model_name)
                raise ValueError(f"unknown CLIP weights {weights!r} for {config.model_name}; tags: {tags or 'none'}")
            path = open_clip.download_pretrained(tag_cfg)
        open_clip.load_checkpoint(clip, path, strict=True, weights_only=True)
    tokenizer = open_clip.SimpleTokenizer(context_length=arch["text_cfg"].get("context_length", 77))
    return clip, tokenizer


def build_model(model: str | SSAConfig = "ssa_tiny", *, clip_weights: str | None = None,
                device: str | torch.device | None = None) -> SSA:
    """Build an SSA network from a preset name or a config, with random decoder weights."""
    config = model_config(model) if isinstance(model, str) else model
    clip, tokenizer = build_clip(config.clip, clip_weights)
    backbone = ClipBackbone(clip=clip, tokenizer=tokenizer, config=config.clip, adapter=config.adapter,
                            use_adapters=config.use_adapters)
    dim = config.hidden_dim
    net = SSA(
        backbone=backbone,
        sentence_proj=SentenceProjection(in_dim=backbone.text_dim, out_dim=dim, dropout=config.text_dropout),
        pixel_decoder=PixelDecoder(in_channels=backbone.stage_channels, dim=dim, mask_dim=dim,
                                   config=config.pixel_decoder),
        frame_decoder=FrameDecoder(dim=dim, num_queries=config.num_queries, mask_dim=dim,
                                   config=config.frame_decoder),
        video_decoder=VideoDecoder(dim=dim, num_queries=config.num_queries, mask_dim=dim,
                                   config=config.video_decoder),
        config=config,
    )
    return net.to(device) if device is not None else net
