"""Weights on disk: our safetensors format, and conversion of the authors' checkpoints.

Our format is one ``.safetensors`` file holding the full state dict (CLIP included) with the
model config as JSON in its metadata, so a file describes itself. Files are written to a
temporary name and renamed, so a crash never leaves a half-written checkpoint.

The authors' implementation (detectron2, repository Tavarich/SSA) saves ``{"model": state_dict,
"iteration": int}`` with torch.save; :func:`convert_official_state_dict` is the one function
that maps its names to ours.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from .configs import from_dict
from .fileio import atomic_write
from .modeling import SSA, ClipConfig, SSAConfig

CONFIG_KEY = "ssa_config"
FORMAT_KEY = "format"
FORMAT = "ssa-rvos/1"


# --------------------------------------------------------------------------- our format


def save_model(model: SSA, path: str | os.PathLike, *, extra: dict[str, str] | None = None,
               dtype: torch.dtype | None = None, shown: str | os.PathLike | None = None) -> None:
    """Write the full state dict and config of ``model`` to a safetensors file atomically.

    dtype: store the floating-point tensors in this type (e.g. torch.float16 to halve a file that is
    shipped); :func:`load_model` casts them back to the model's own dtype. shown: the path an error names
    (default ``path``; a caller writing into a staging folder names the final one)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    metadata = {FORMAT_KEY: FORMAT, CONFIG_KEY: json.dumps(model.config.to_dict())}
    metadata.update(extra or {})
    save_state_dict_atomic(state, path, metadata, shown=shown)


def save_state_dict_atomic(state: dict[str, Tensor], path: str | os.PathLike, metadata: dict[str, str], *,
                           shown: str | os.PathLike | None = None) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
    except SafetensorError as e:  # e.g. a full disk: safetensors reports it as its own error type
        raise OSError(f"{shown or path}: cannot write the checkpoint ({e})") from None


def read_checkpoint(path: str | os.PathLike) -> tuple[SSAConfig, dict[str, Tensor]]:
    """Read one of our safetensors checkpoints -> (config, state dict)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a safetensors checkpoint ({e})") from None
    if CONFIG_KEY not in metadata:
        raise ValueError(f"{path}: no model config in its metadata (not an ssa-rvos checkpoint)")
    try:
        data = json.loads(metadata[CONFIG_KEY])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: its model config is not valid JSON ({e})") from None
    try:
        # one strict schema: unknown keys and values of the wrong type are errors, before anything is built
        config = from_dict(SSAConfig, data, "model", typed=True)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: bad model config: {e}") from None
    return config, state


def _available_memory() -> int | None:
    """Bytes of physical memory of this machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_weights(path: Path, model: SSA, state: dict[str, Tensor]) -> None:
    """Every tensor of the model present with its shape, nothing extra, every float finite: else a
    ValueError naming the file and the first mismatches (not torch's multi-line RuntimeError)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (first {', '.join(missing[:3])})")
    if extra:
        problems.append(f"{len(extra)} unexpected (first {', '.join(extra[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} of another shape (first {'; '.join(shapes[:2])})")
    if problems:
        raise ValueError(f"{path}: the weights do not fit the model its config describes: tensors "
                         + ", ".join(problems))
    bad = [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ValueError(f"{path}: {len(bad)} weight tensors hold NaN or infinite values (first {bad[0]}): "
                         "a damaged or diverged checkpoint")


def load_model(path: str | os.PathLike, *, device: str | torch.device | None = None) -> SSA:
    """Build the model a checkpoint describes and load its weights (strict).

    Everything about the file is checked before memory is committed: the config against its schema, the
    model's size against the machine's memory (built first on the meta device, which allocates nothing),
    then every tensor's name, shape and finiteness; each problem is a one-line ValueError naming the file.
    """
    from .build import build_model

    path = Path(path)
    config, state = read_checkpoint(path)
    try:
        with torch.device("meta"):
            skeleton = build_model(config)
    except (RuntimeError, ValueError, TypeError, KeyError, AssertionError) as e:
        raise ValueError(f"{path}: its model config does not describe a buildable model "
                         f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
    need = sum(t.numel() * t.element_size() for t in skeleton.state_dict().values())
    memory = _available_memory()
    if memory is not None and need > memory:
        raise ValueError(f"{path}: its model config asks for {need / 2**30:.1f} GiB of weights, more than this "
                         f"machine's {memory / 2**30:.1f} GiB of memory")
    check_weights(path, skeleton, state)
    del skeleton
    model = build_model(config)
    model.load_state_dict(state, strict=True)
    return model.to(device) if device is not None else model


# ------------------------------------------------------------ the authors' checkpoints

_PD = r"sem_seg_head\.pixel_decoder\."
_FD = r"sem_seg_head\.predictor\."
_VD = r"vita_module\."


def _attention(src: str, dst: str, module: str, inner: str) -> list[tuple[str, str]]:
    """Rules for a list of post-norm attention layers:
    ``{src}.{i}.{inner}.*`` -> ``{dst}.{i}.{module}.attn.*`` and its LayerNorm likewise."""
    return [
        (rf"{src}\.(\d+)\.{inner}\.(.+)", rf"{dst}.\1.{module}.attn.\2"),
        (rf"{src}\.(\d+)\.norm\.(.+)", rf"{dst}.\1.{module}.norm.\2"),
    ]


# (official regex, our replacement); the first full match wins.
_RULES: list[tuple[str, str]] = [
    (r"backbone\.clip_model\.(.+)", r"backbone.clip.\1"),
    (r"backbone\.stage_adapter_layers\.(\d+)\.linear_v\.(.+)", r"backbone.adapters.\1.visual_proj.\2"),
    (r"backbone\.stage_adapter_layers\.(\d+)\.linear_l\.(.+)", r"backbone.adapters.\1.text_proj.\2"),
    (r"backbone\.stage_adapter_layers\.(\d+)\.up_v\.(.+)", r"backbone.adapters.\1.out_proj.\2"),
    (r"backbone\.stage_adapter_layers\.(\d+)\.cross_attention\.multihead_attn\.(.+)",
     r"backbone.adapters.\1.cross_attn.attn.\2"),
    (r"backbone\.stage_adapter_layers\.(\d+)\.cross_attention\.norm\.(.+)", r"backbone.adapters.\1.cross_attn.norm.\2"),
    (r"backbone\.stage_adapter_layers\.(\d+)\.((?:conv1|conv2|gate\.layers\.\d+)\..+)", r"backbone.adapters.\1.\2"),
    (r"resizer\.fc\.(.+)", r"sentence_proj.fc.\1"),
    (r"resizer\.layer_norm\.(.+)", r"sentence_proj.norm.\1"),
    # pixel decoder
    (_PD + r"input_proj\.(\d+)\.([01])\.(.+)", r"pixel_decoder.input_proj.\1.\2.\3"),
    (_PD + r"transformer\.level_embed", "pixel_decoder.level_embed"),
    (_PD + r"transformer\.encoder\.layers\.(\d+)\.(.+)", r"pixel_decoder.layers.\1.\2"),
    (_PD + r"transformer\.encoder\.fusion_layers\.(\d+)\.layer_norm_([vl])\.(.+)",
     r"pixel_decoder.fusion_layers.\1.norm_\2.\3"),
    (_PD + r"transformer\.encoder\.fusion_layers\.(\d+)\.attn\.(.+)", r"pixel_decoder.fusion_layers.\1.\2"),
    (_PD + r"transformer\.encoder\.fusion_layers\.(\d+)\.(gamma_[vl])", r"pixel_decoder.fusion_layers.\1.\2"),
    (_PD + r"mask_features\.(.+)", r"pixel_decoder.mask_features.\1"),
    (_PD + r"adapter_1\.weight", "pixel_decoder.lateral_conv.0.weight"),
    (_PD + r"adapter_1\.norm\.(.+)", r"pixel_decoder.lateral_conv.1.\1"),
    (_PD + r"layer_1\.weight", "pixel_decoder.output_conv.0.weight"),
    (_PD + r"layer_1\.norm\.(.+)", r"pixel_decoder.output_conv.1.\1"),
    # frame query decoder
    *_attention(_FD + "transformer_cross_attention_layers", "frame_decoder.layers", "cross_attn", "multihead_attn"),
    *_attention(_FD + "transformer_self_attention_layers", "frame_decoder.layers", "self_attn", "self_attn"),
    *_attention(_FD + "text_cross_attention_layers", "frame_decoder.layers", "text_attn", "multihead_attn"),
    (_FD + r"transformer_ffn_layers\.(\d+)\.(.+)", r"frame_decoder.layers.\1.ffn.\2"),
    (_FD + r"decoder_norm\.(.+)", r"frame_decoder.norm.\1"),
    (_FD + r"query_embed\.(.+)", r"frame_decoder.query_pos.\1"),
    (_FD + r"level_embed\.(.+)", r"frame_decoder.level_embed.\1"),
    (_FD + r"class_embed\.(.+)", r"frame_decoder.class_head.\1"),
    (_FD + r"mask_embed\.(.+)", r"frame_decoder.mask_head.\1"),
    # sequential alignment + video decoder
    *_attention(_VD + "fusion", "video_decoder.layers", "text_attn", "multihead_attn"),
    *_attention(_VD + "transformer_cross_attention_layers", "video_decoder.layers", "cross_attn", "multihead_attn"),
    *_attention(_VD + "transformer_self_attention_layers", "video_decoder.layers", "self_attn", "self_attn"),
    (_VD + r"transformer_ffn_layers\.(\d+)\.(.+)", r"video_decoder.layers.\1.ffn.\2"),
    (_VD + r"short_temporal\.(.+)", r"video_decoder.short_term.\1"),
    (_VD + r"temporal_norm\.(.+)", r"video_decoder.short_term_norm.\1"),
    (_VD + r"long_temporal\.self_attn\.(.+)", r"video_decoder.long_term.attn.\1"),
    (_VD + r"long_temporal\.norm\.(.+)", r"video_decoder.long_term.norm.\1"),
    (_VD + r"time_aware_attn\.(.+)", r"video_decoder.ensemble.\1"),
    (_VD + r"vita_mask_features\.(.+)", r"video_decoder.mask_features.\1"),
    (_VD + r"decoder_norm\.(.+)", r"video_decoder.norm.\1"),
    (_VD + r"query_embed\.(.+)", r"video_decoder.query_pos.\1"),
    (_VD + r"fq_pos\.(.+)", r"video_decoder.slot_pos.\1"),
    (_VD + r"input_proj_dec\.(.+)", r"video_decoder.input_proj.\1"),
    (_VD + r"class_embed\.(.+)", r"video_decoder.class_head.\1"),
    (_VD + r"mask_embed\.(.+)", r"video_decoder.mask_head.\1"),
    (_VD + r"sim_embed_frame\.(.+)", r"video_decoder.sim_frame.\1"),
    (_VD + r"sim_embed_clip\.(.+)", r"video_decoder.sim_video.\1"),
]
_COMPILED = [(re.compile(pattern), repl) for pattern, repl in _RULES]

# Keys of the original that have no counterpart here on purpose: the class weights of its two
# loss modules (constants rebuilt by our losses).
DROPPED_OFFICIAL_KEYS = ("criterion.empty_weight", "vita_criterion.empty_weight")


def official_to_ours(key: str) -> str | None:
    """Our name for one of the original's state-dict keys; None when there is none."""
    for pattern, repl in _COMPILED:
        if pattern.fullmatch(key):
            return pattern.sub(repl, key)
    return None


@dataclass
class ConversionReport:
    """unmapped: original keys with no rule (not dropped on purpose); dropped: original keys
    left out on purpose; missing: our keys the checkpoint did not provide."""

    unmapped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.unmapped and not self.missing

    def lines(self) -> list[str]:
        out = [f"dropped on purpose ({len(self.dropped)}): {', '.join(self.dropped) or '-'}"]
        out.append(f"unmapped checkpoint keys ({len(self.unmapped)}): {', '.join(self.unmapped) or '-'}")
        out.append(f"model keys not in the checkpoint ({len(self.missing)}): {', '.join(self.missing) or '-'}")
        return out


def convert_official_state_dict(
    official: dict[str, Tensor], expected: dict[str, Tensor] | None = None
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Rename the original implementation's state dict to ours.

    expected: our model's state dict (or any mapping of name -> tensor with the target shapes);
    when given, every converted tensor must have the expected shape (a ValueError names the first
    that does not) and the report lists our keys left unfilled.
    """
    report = ConversionReport()
    ours: dict[str, Tensor] = {}
    for key, value in official.items():
        if key in DROPPED_OFFICIAL_KEYS:
            report.dropped.append(key)
            continue
        new = official_to_ours(key)
        if new is None:
            report.unmapped.append(key)
            continue
        if expected is not None:
            if new not in expected:
                report.unmapped.append(key)
                continue
            if tuple(expected[new].shape) != tuple(value.shape):
                raise ValueError(
                    f"shape mismatch for {key} -> {new}: checkpoint {tuple(value.shape)}, "
                    f"model {tuple(expected[new].shape)}"
                )
        ours[new] = value
    if expected is not None:
        report.missing = sorted(set(expected) - set(ours))
    return ours, report


def read_official_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """Load the original's ``{"model": state_dict, ...}`` file without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for foreign files
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({unreadable_reason(path, e)})") from None
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected {{'model': state_dict}} as the authors' code saves it")
    return state


def unreadable_reason(path: Path, error: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in a few words. Never torch's advice to retry
    with ``weights_only=False``: that runs whatever code the file holds."""
    if path.stat().st_size == 0:
        return "an empty file"
    if isinstance(error, pickle.UnpicklingError) or "weights_only" in str(error):
        return "damaged, or it holds Python objects other than tensors and plain data, which are not loaded"
    first = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def infer_official_config(state: dict[str, Tensor], clip: ClipConfig | None = None) -> SSAConfig:
    """Our model config for an original checkpoint: sizes read from its tensor shapes.

    The CLIP architecture cannot be read from weights alone (head counts), so it comes from
    ``clip`` (default: the paper's convnext_large_d_320); shapes are then checked on load.
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise ValueError(f"not an SSA checkpoint of the original format: no key {key}")
        return tuple(state[key].shape)

    def count(prefix: str) -> int:
        pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
        return len({m.group(1) for k in state if (m := pattern.match(k))})

    base = SSAConfig()
    hidden = shape("resizer.fc.weight")[0]
    return replace(
        base,
        clip=clip or base.clip,
        hidden_dim=hidden,
        num_queries=shape("sem_seg_head.predictor.query_embed.weight")[0],
        adapter=replace(base.adapter, dim=shape("backbone.stage_adapter_layers.0.conv1.weight")[0]),
        pixel_decoder=replace(
            base.pixel_decoder,
            layers=count("sem_seg_head.pixel_decoder.transformer.encoder.layers"),
            ffn_dim=shape("sem_seg_head.pixel_decoder.transformer.encoder.layers.0.linear1.weight")[0],
            fusion_dim=shape("sem_seg_head.pixel_decoder.transformer.encoder.fusion_layers.0.attn.v_proj.weight")[0],
        ),
        frame_decoder=replace(
            base.frame_decoder,
            layers=count("sem_seg_head.predictor.transformer_ffn_layers"),
            ffn_dim=shape("sem_seg_head.predictor.transformer_ffn_layers.0.linear1.weight")[0],
        ),
        video_decoder=replace(
            base.video_decoder,
            layers=count("vita_module.transformer_ffn_layers"),
            ffn_dim=shape("vita_module.transformer_ffn_layers.0.linear1.weight")[0],
        ),
    )


def convert_official_checkpoint(path: str | os.PathLike, *, clip: ClipConfig | None = None
                                ) -> tuple[SSA, ConversionReport]:
    """Build our model for an original checkpoint and load it (every tensor shape-checked)."""
    from .build import build_model

    state = read_official_checkpoint(path)
    config = infer_official_config(state, clip)
    model = build_model(config)
    ours, report = convert_official_state_dict(state, model.state_dict())
    if not report.complete:
        def first(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (" ..." if len(keys) > 3 else "")

        parts = ([f"{len(report.unmapped)} of its keys map to nothing in our model ({first(report.unmapped)})"]
                 if report.unmapped else []) + (
            [f"{len(report.missing)} of our model's keys are not in it ({first(report.missing)})"]
            if report.missing else [])
        raise ValueError(f"{path}: not an SSA checkpoint of the authors' code, or of another architecture: "
                         + "; ".join(parts))
    model.load_state_dict(ours, strict=True)
    return model, report
