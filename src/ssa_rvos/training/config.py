"""Run configuration of training: typed defaults in code, recipes as YAML deltas, dotted overrides.

The defaults below are the released MeViS configuration (Tavarich/SSA ``configs/mevis/ssa_clip_bs8.yaml``)
with the losses of :class:`~ssa_rvos.training.losses.LossConfig` (its two quirks fixed). A recipe
(``recipes/<name>.yaml`` in this package, or any YAML file) states only what differs from them and may
start from another recipe with ``base: <recipe name or path>``. Command-line overrides such as
``optim.lr=1e-4`` or ``data.datasets.0.root=/data/mevis`` come last; their values are YAML scalars (or
flow lists such as ``[20000]``). Every key is checked before anything runs: an unknown key, in a file or
an override, is a ValueError that names it. The resolved config is saved as ``config.yaml`` in the run
folder and loads back with :func:`load_config`.

YAML is read with YAML 1.2 scalars: ``5e-5`` is a number (PyYAML's YAML 1.1 reads it as a string) and
only ``true``/``false`` are booleans, so ``amp: off`` is the string "off".
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..benchmarks import BENCHMARKS
from ..build import list_models
from ..configs import dotted, from_dict
from .clips import DataConfig, DatasetSpec
from .losses import LossConfig

__all__ = [
    "AMP_MODES",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "apply_override",
    "list_recipes",
    "load_config",
    "read_yaml",
    "save_config",
]

AMP_MODES = ("off", "bf16", "fp16")
EVAL_DATASETS = tuple(BENCHMARKS)


@dataclass(frozen=True)
class ModelConfig:
    """preset: a name of :func:`ssa_rvos.build.list_models`. clip_weights: the frozen CLIP's weights, an
    open_clip tag of the preset's CLIP or a local file (None: random, for tests). init_from: a checkpoint
    whose matching decoder weights start the run (the authors' COCO CLIP-Mask2Former, or a run of ours);
    see :func:`ssa_rvos.training.trainer.load_init_weights`."""

    preset: str = "ssa_convnext_large"
    # The authors' CLIP: open_clip convnext_large_d_320 laion2b_s29b_b131k_ft_soup (their README).
    clip_weights: str | None = "laion2b_s29b_b131k_ft_soup"
    init_from: str | None = None
    # The paper's ablation switches (Table 4): false trains on frozen CLIP features only, or without
    # sequential alignment (video queries from the mean of the frame queries).
    use_adapters: bool = True
    sequential_alignment: bool = True
    # Test resize saved with the model (None: the benchmark's, 448 for MeViS and 480 otherwise); a model
    # trained on small frames, like the SynthRef one, predicts at the size it was trained at.
    test_short_side: int | None = None
    # Not in the paper (CLIP is frozen there): the CLIP text tower trains too, in the backbone's learning-rate
    # group; see ClipConfig.train_text.
    train_text: bool = False
    # Not in the paper: the video stage reads each trajectory's mask positions and motion
    # (VideoDecoderConfig.motion_embedding).
    motion_embedding: bool = False
    # Not in the paper: a head predicting each video query's displacement, trained by
    # loss.video_motion_weight (VideoDecoderConfig.displacement_head).
    displacement_head: bool = False

    def ssa_config(self):
        """The network this section describes: the preset with the switches above applied."""
        from ..build import model_config

        base = model_config(self.preset)
        return dataclasses.replace(
            base, use_adapters=self.use_adapters, test_short_side=self.test_short_side,
            clip=dataclasses.replace(base.clip, train_text=self.train_text),
            video_decoder=dataclasses.replace(base.video_decoder, sequential_alignment=self.sequential_alignment,
                                              motion_embedding=self.motion_embedding,
                                              displacement_head=self.displacement_head))

    def __post_init__(self) -> None:
        if self.preset not in list_models():
            raise ValueError(f"model.preset: unknown model {self.preset!r}; available: {', '.join(list_models())}")
        if self.test_short_side is not None and self.test_short_side < 1:
            raise ValueError(f"model.test_short_side must be >= 1 or null, got {self.test_short_side}")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a multi-step decay (spec Sec. 6). Steps count optimizer updates."""

    lr: float = 5e-5
    weight_decay: float = 0.05  # 0 for normalisation layers and nn.Embedding tables, as the original
    backbone_lr_multiplier: float = 0.1  # every trainable parameter under model.backbone (the adapters)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad_norm: float = 0.01  # global L2 norm over all trainable parameters; 0 disables
    max_steps: int = 75_000
    lr_steps: tuple[int, ...] = (55_000, 70_000)  # the lr is multiplied by gamma at each of these steps
    gamma: float = 0.1
    # The released configs say WARMUP_ITERS 10 with WARMUP_FACTOR 1.0: detectron2's linear warmup then
    # starts at 1.0 x lr, i.e. there is no warmup. Kept for fidelity; a factor < 1 makes it real.
    warmup_steps: int = 10
    warmup_factor: float = 1.0

    def __post_init__(self) -> None:
        for name in ("lr", "eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"optim.{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "backbone_lr_multiplier", "clip_grad_norm", "gamma", "warmup_steps"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"optim.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps < 1:
            raise ValueError(f"optim.max_steps must be >= 1, got {self.max_steps}")
        if list(self.lr_steps) != sorted(self.lr_steps) or any(s < 1 for s in self.lr_steps):
            raise ValueError(f"optim.lr_steps must be increasing positive steps, got {list(self.lr_steps)}")
        if not 0 < self.warmup_factor <= 1:
            raise ValueError(f"optim.warmup_factor must be in (0, 1], got {self.warmup_factor}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be in [0, 1), got {list(self.betas)}")


@dataclass(frozen=True)
class EvalConfig:
    """Periodic evaluation on a benchmark split with ground truth (``ssa-rvos evaluate``'s computation).

    Runs every ``every`` steps (0: only after the last step) when ``dataset`` is set, or when
    :func:`~ssa_rvos.training.trainer.train` is given an ``eval_fn``.
    """

    every: int = 0
    dataset: str | None = None  # "mevis", "ytvos" or "davis"; None: no built-in evaluation
    root: str = ""
    split: str | None = None  # default: valid_u for mevis, valid otherwise
    short_side: int | None = None  # test resize; default: the benchmark's (448 for mevis, 480 otherwise)
    frame_chunk: int = 18
    amp: bool = False

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"eval.every must be >= 0, got {self.every}")
        if self.dataset is not None and self.dataset not in EVAL_DATASETS:
            raise ValueError(f"eval.dataset must be one of {EVAL_DATASETS} or null, got {self.dataset!r}")
        if self.dataset is not None and not self.root:
            raise ValueError("eval.root: the folder of eval.dataset is required")


def _default_data() -> DataConfig:
    return DataConfig(datasets=(DatasetSpec("mevis", "datasets/mevis"),))


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=_default_data)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    batch_size: int = 8  # clips per optimizer step, over all processes and accumulation steps
    accumulation: int = 1  # micro-batches per optimizer step on each process
    amp: str = "fp16"  # "off", "bf16" or "fp16" (CUDA only; the original trained with fp16 AMP)
    seed: int = 0
    output_dir: str = "runs/train"
    log_every: int = 20
    checkpoint_every: int = 5000
    keep_last: int = 2  # checkpoints kept in output_dir/checkpoints (0: all)
    tensorboard: bool = False
    device: str | None = None  # default: this process's CUDA device if there is one, else cpu
    # Every trainable parameter reaches the losses in every step (the criterion keeps empty losses attached),
    # so DDP needs no search for unused parameters.
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        for name in ("batch_size", "accumulation", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.keep_last < 0:
            raise ValueError(f"keep_last must be >= 0, got {self.keep_last}")
        if self.batch_size % self.accumulation:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by accumulation {self.accumulation}")
        network = self.model.ssa_config()
        expected = (network.frame_decoder.layers + 1, network.video_decoder.layers)
        if (self.loss.frame_layers, self.loss.video_layers) != expected:
            raise ValueError(f"loss.frame_layers={self.loss.frame_layers} and loss.video_layers={self.loss.video_layers} do "
                             f"not fit model.preset {self.model.preset}: it makes {expected[0]} frame predictions (the "
                             f"initial queries + one per frame-decoder layer) and {expected[1]} video layers")

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return from_dict(cls, data, "", typed=True, style="config")


# ------------------------------------------------------------------------------------------------ dicts


def _plain(value: Any) -> Any:
    """Dataclasses, tuples and lists -> plain dicts and lists (what YAML and JSON can hold)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------------------------ YAML


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """SafeLoader (the C one when PyYAML has it) with YAML 1.2 core-schema booleans and floats."""


def _yaml_12_resolvers() -> None:
    bool_tag, float_tag = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
    _Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != bool_tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    _Loader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    _Loader.add_implicit_resolver(
        float_tag,
        re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."),
    )


_yaml_12_resolvers()


def _load_yaml_text(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ValueError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML mapping from a file (an empty file is an empty mapping)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the config ({e.strerror or e})") from None
    data = _load_yaml_text(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must be a mapping of keys, got {type(data).__name__}")
    return data


def list_recipes() -> list[str]:
    folder = resources.files("ssa_rvos.training") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _locate(source: str | os.PathLike, relative_to: Path | None = None) -> Path:
    """A recipe name or a YAML path -> the file."""
    text = str(source)
    looks_like_path = text.endswith((".yaml", ".yml")) or "/" in text or os.sep in text
    if looks_like_path:
        path = Path(text)
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
        if not path.is_file():
            raise ValueError(f"config file not found: {path}")
        return path
    if text in list_recipes():
        return Path(str(resources.files("ssa_rvos.training") / "recipes" / f"{text}.yaml"))
    raise ValueError(f"unknown recipe {text!r}; recipes: {', '.join(list_recipes())} (or give a .yaml file)")


def _deltas(source: str | os.PathLike, relative_to: Path | None = None,
            seen: tuple[Path, ...] = ()) -> list[tuple[str, dict[str, Any]]]:
    """The chain of (file, delta) from the innermost ``base`` to ``source``."""
    path = _locate(source, relative_to)
    if path.resolve() in seen:
        raise ValueError(f"{path}: recipes inherit from each other in a cycle")
    delta = read_yaml(path)
    base = delta.pop("base", None)
    chain = _deltas(base, path.parent, (*seen, path.resolve())) if base is not None else []
    return [*chain, (str(path), delta)]


def _merge(target: dict[str, Any], delta: dict[str, Any], where: str, source: str) -> None:
    """Apply ``delta`` onto ``target`` in place; every key must already exist in ``target``.
    Lists are replaced whole."""
    for key, value in delta.items():
        location = dotted(where, key)
        if key not in target:
            raise ValueError(f"unknown config key {location!r} in {source}")
        if isinstance(target[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"config key {location!r} in {source} is a section; expected a mapping, got {value!r}")
            _merge(target[key], value, location, source)
        else:
            target[key] = value


def apply_override(resolved: dict[str, Any], override: str) -> None:
    """Apply one ``dotted.key=value`` (value: a YAML scalar or flow list) to a resolved config dict."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"override {override!r}: expected KEY=VALUE, e.g. optim.lr=1e-4")
    value = _load_yaml_text(text, f"override {key}")
    node: Any = resolved
    parts = key.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, dict):
            if part not in node:
                raise ValueError(f"unknown config key {key!r} (in override {override!r})")
            if last:
                if isinstance(node[part], dict) and not isinstance(value, dict):
                    raise ValueError(f"override {override!r}: {key!r} is a section, not a value")
                node[part] = value
            else:
                node = node[part]
        elif isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ValueError(f"unknown config key {key!r} (in override {override!r}): "
                                 f"{'.'.join(parts[:i]) or 'config'} has {len(node)} entries")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        else:
            raise ValueError(f"unknown config key {key!r} (in override {override!r})")


def load_config(source: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults, then the recipe chain of ``source`` (a recipe name or a YAML file; None: defaults only),
    then ``overrides``; validated in full before anything runs."""
    resolved = TrainConfig().to_dict()
    if source is not None:
        for path, delta in _deltas(source):
            _merge(resolved, delta, "", path)
        # Round trip through the types: list entries (datasets) get their defaults, so an override can
        # address any of their keys.
        resolved = TrainConfig.from_dict(resolved).to_dict()
    for override in overrides:
        apply_override(resolved, override)
    return TrainConfig.from_dict(resolved)


def save_config(config: TrainConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically), loadable with :func:`load_config`."""
    from ..fileio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
