"""The training loop of SSA (spec Sec. 6): :func:`train`, one function to read top to bottom.

One optimizer step: this process's ``accumulation`` micro-batches go forward and backward (gradients
add up; DDP all-reduces on the last one only), then the gradients are unscaled (fp16), clipped to a
global L2 norm over every trainable parameter, AdamW steps and the lr schedule advances.

Processes: started by ``torchrun`` (its RANK / LOCAL_RANK / WORLD_SIZE variables), NCCL on GPUs, gloo
on CPUs. ``batch_size`` is the global number of clips per step; the clips of a step do not depend on
how they are spread over processes and micro-batches (``ssa_rvos.training.clips``). Gradients match a
single process holding the whole batch because the criterion normalises its mask losses by the
global number of target masks divided by the world size (Mask2Former's ``num_masks``): DDP averages
the per-process gradients, i.e. divides their sum by the world size, which turns that normaliser back
into the global count. The class and similarity losses are per-process means, equal to the global
mean when every process holds the same number of matches (the DDP test uses clips of one object
visible in every frame).

Randomness: every step re-seeds torch from ``(seed, step, rank)`` (dropout, the losses' point
sampling), and the clips are a function of ``(seed, sample index)``; so a resumed run repeats what an
uninterrupted one does, bit for bit on CPU.

Checkpoints, in ``output_dir/checkpoints/``::

    step_0005000/model.safetensors   the full model (frozen CLIP included) with its config in the
                                     metadata: ``ssa_rvos.checkpoint.load_model`` builds and loads it
    step_0005000/state.pt            optimizer, lr schedule, GradScaler, step, RNG states, the
                                     resolved run config; ``torch.load(..., weights_only=True)``
    latest                           the name of the newest complete checkpoint

A checkpoint is written into a temporary folder that is renamed when complete, and ``latest`` is
replaced atomically, so a run killed at any moment leaves the previous checkpoint intact. The run
folder also holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (a line per log step),
``eval.jsonl``, ``init_report.json`` (with ``model.init_from``) and ``tensorboard/`` when enabled.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..build import build_model
from ..checkpoint import check_weights, official_to_ours, read_checkpoint, save_model, unreadable_reason
from ..fileio import atomic_dir, atomic_write_text, remove_temporaries
from ..modeling import SSA
from ..runtime import DistEnv, setup_distributed
from .clips import Batch, build_batches, per_process_batch
from .config import EvalConfig, OptimConfig, TrainConfig, save_config
from .losses import SSACriterion

__all__ = [
    "DistEnv",
    "InitReport",
    "TrainResult",
    "accumulate_gradients",
    "build_optimizer",
    "build_scheduler",
    "evaluate_split",
    "latest_checkpoint",
    "load_checkpoint",
    "load_init_weights",
    "lr_multiplier",
    "parameter_groups",
    "save_checkpoint",
    "seed_step",
    "setup_distributed",
    "train",
    "wrap_ddp",
]

EvalFn = Callable[[SSA, int], Mapping[str, float]]

CHECKPOINTS = "checkpoints"
LATEST = "latest"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
_STEP_DIR = re.compile(r"^step_(\d{7,})$")

# Keys of the criterion's output shown in the log line (the final predictions; the deep-supervision
# terms go to metrics.jsonl and TensorBoard only).
_SHOWN = {"loss_ce": "ce", "loss_mask": "mask", "loss_dice": "dice", "loss_video_ce": "vce",
          "loss_video_mask": "vmask", "loss_video_dice": "vdice",
          "loss_video_motion": "vmotion", "loss_sim": "sim"}


# ------------------------------------------------------------------------------------------------ processes


def wrap_ddp(model: nn.Module, env: DistEnv, *, find_unused_parameters: bool = False) -> nn.Module:
    """DistributedDataParallel over ``model`` when there are several processes, else ``model``.

    No gradient rescaling is needed: see the module docstring (the criterion's normaliser).
    """
    if env.world_size == 1:
        return model
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def _barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        dist.barrier()


def seed_step(seed: int, step: int, rank: int) -> None:
    """Seed torch (CPU and every GPU) for one step of one process from ``(seed, step, rank)``: what a
    step draws (dropout masks, the losses' random points) does not depend on the steps before it."""
    state = np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0]
    torch.manual_seed(int(state))


# ------------------------------------------------------------------------------------------------ init_from


@dataclass
class InitReport:
    """What ``model.init_from`` gave the model. loaded: our keys filled; mismatched: (our key, checkpoint
    shape, model shape); missing: our trainable-part keys the checkpoint did not fill; unexpected:
    checkpoint keys with no counterpart here; skipped: the checkpoint's keys of the frozen CLIP parts, never
    loaded (they stay as ``model.clip_weights`` made them)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        def show(keys: Sequence[str]) -> str:
            return ", ".join(keys[:20]) + (f" ... ({len(keys) - 20} more)" if len(keys) > 20 else "") if keys else "-"

        mismatched = [f"{k} {list(a)} vs {list(b)}" for k, a, b in self.mismatched]
        return [
            f"init_from {self.source}",
            f"  loaded ({len(self.loaded)})",
            f"  shape mismatch, not loaded ({len(self.mismatched)}): {show(mismatched)}",
            f"  missing, left as initialised ({len(self.missing)}): {show(self.missing)}",
            f"  unexpected, ignored ({len(self.unexpected)}): {show(self.unexpected)}",
            f"  frozen CLIP keys, ignored ({len(self.skipped)})",
        ]

    def to_dict(self) -> dict:
        return asdict(self)


def _read_weights(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"model.init_from: no such file: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for foreign or unsafe files
        raise ValueError(f"model.init_from {path}: not a readable PyTorch checkpoint ({unreadable_reason(path, e)})") from None
    if isinstance(data, dict):
        for key in ("model", "state_dict"):  # detectron2 saves {"model": ..., "iteration": ...}
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict):
        raise ValueError(f"model.init_from {path}: expected a state dict or {{'model': state_dict}}")
    return {k: v for k, v in data.items() if isinstance(v, Tensor)}


def load_init_weights(model: SSA, path: str | os.PathLike) -> InitReport:
    """Start ``model`` from the tensors of a checkpoint that match by name and shape.

    ``path`` may be a released name (``mask2former_clip.coco``: fetched into the cache). Names may be
    ours (a run of this package) or the original's (detectron2 Mask2Former / SSA,
    renamed by :func:`ssa_rvos.checkpoint.official_to_ours`); a ``module.`` prefix (DDP) is dropped.
    With the authors' COCO CLIP-Mask2Former checkpoint this fills the pixel decoder and most of the
    frame decoder (its class head and 100+ queries do not fit and stay random). The frozen CLIP is
    never taken from it; with ``model.train_text`` the text tower trains, so it is taken like the other
    trainable parts (a run started from the bundled model keeps the text tower that model was trained with).
    """
    from ..releases import RELEASES

    report = InitReport(source=str(path))
    if str(path) in RELEASES:  # a released name: downloaded and converted once into the cache
        from ..download import fetch

        path = fetch(str(path))
    ours = model.state_dict()
    trained_clip = {n for n, p in model.named_parameters() if n.startswith("backbone.clip.") and p.requires_grad}

    def frozen_clip(name: str) -> bool:
        return name.startswith("backbone.clip.") and name not in trained_clip

    take: dict[str, Tensor] = {}
    for key, value in _read_weights(Path(path)).items():
        key = key.removeprefix("module.")
        name = key if key in ours else official_to_ours(key)
        if name is not None and frozen_clip(name):
            report.skipped.append(key)
        elif name is None or name not in ours:
            report.unexpected.append(key)
        elif tuple(ours[name].shape) != tuple(value.shape):
            report.mismatched.append((name, tuple(value.shape), tuple(ours[name].shape)))
        else:
            take[name] = value
    report.loaded = sorted(take)
    report.missing = sorted(k for k in ours if k not in take and not frozen_clip(k))
    model.load_state_dict(take, strict=False)
    return report


# ------------------------------------------------------------------------------------------------ optimizer

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def parameter_groups(model: nn.Module, optim: OptimConfig) -> list[dict]:
    """AdamW groups as the original builds them (detectron2 Mask2Former ``build_optimizer``).

    Every trainable parameter under ``model.backbone`` (the adapters; CLIP is frozen) gets
    ``lr * backbone_lr_multiplier``; parameters of normalisation layers (weights and biases) and of
    ``nn.Embedding`` tables (the learned queries, their positions and level embeddings) get no weight
    decay. Bare ``nn.Parameter`` tensors keep the decay, as in the original (the pixel decoder's level
    embedding, the fusion blocks' layer scales). Frozen parameters are in no group.
    """
    groups: dict[tuple[bool, bool], dict] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for _, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            backbone = module_name == "backbone" or module_name.startswith("backbone.")
            no_decay = isinstance(module, (*_NORM_TYPES, nn.Embedding))
            if (backbone, no_decay) not in groups:
                groups[(backbone, no_decay)] = {
                    "params": [],
                    "lr": optim.lr * (optim.backbone_lr_multiplier if backbone else 1.0),
                    "weight_decay": 0.0 if no_decay else optim.weight_decay,
                    "name": ("backbone" if backbone else "decoders") + ("_no_decay" if no_decay else ""),
                }
            groups[(backbone, no_decay)]["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameter_groups(model, optim), lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                             weight_decay=optim.weight_decay)


def lr_multiplier(step: int, optim: OptimConfig) -> float:
    """The lr factor of the update made at ``step`` (0-based): ``gamma`` per passed milestone, times
    detectron2's linear warmup ``warmup_factor * (1 - a) + a`` with ``a = step / warmup_steps``."""
    factor = optim.gamma ** bisect.bisect_right(optim.lr_steps, step)
    if step < optim.warmup_steps:
        alpha = step / optim.warmup_steps
        factor *= optim.warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, optim))


# ------------------------------------------------------------------------------------------------ one step


def accumulate_gradients(net: nn.Module, criterion: SSACriterion, micro_batches: Sequence[Batch], *,
                         device: torch.device, amp_dtype: torch.dtype | None = None,
                         scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """Forward and backward of this process's micro-batches of one optimizer step; the gradients add up
    in ``.grad``. ``net`` is the model or its DDP wrapper. Returns every unweighted loss and the weighted
    ``total``, averaged over the micro-batches (this process's values)."""
    n = len(micro_batches)
    sums: Tensor | None = None
    keys: list[str] = []
    for i, batch in enumerate(micro_batches):
        batch = batch.to(device)
        # DDP all-reduces gradients inside backward; before the last micro-batch they only need to add
        # up locally, so the others skip the communication.
        last = i == n - 1
        sync = net.no_sync() if isinstance(net, DistributedDataParallel) and not last else contextlib.nullcontext()
        autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
        with sync:
            with autocast:
                output = net(batch.frames, batch.texts)
                losses = criterion(output, batch.targets)
                total = criterion.total(losses)
            # Gradients add up over the micro-batches: dividing each loss by their number makes the sum the
            # mean, the scale of one batch holding all the clips, so the lr and the gradient-norm clip mean
            # the same whatever the accumulation.
            loss = total / n
            (scaler.scale(loss) if scaler is not None else loss).backward()
        values = torch.stack([v.detach().float() for v in (*losses.values(), total)])
        sums = values if sums is None else sums + values
        keys = [*losses, "total"]
    means = (sums / n).tolist()  # one device sync per step
    return dict(zip(keys, means))


# ------------------------------------------------------------------------------------------------ checkpoints


def _rng_state() -> dict:
    """RNG states in types ``torch.load(weights_only=True)`` accepts (numpy and Python as plain lists)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # This process's GPU only: asking for every device's state would create a context on each.
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "numpy": {"name": np_state[0], "keys": np_state[1].tolist(), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _checkpoint_dirs(output_dir: Path) -> list[tuple[int, Path]]:
    root = output_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / MODEL_FILE).is_file() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder of a run (the one ``latest`` names, unless the run died
    between renaming a newer one into place and updating ``latest``); None when there is none."""
    found = _checkpoint_dirs(Path(output_dir))
    return found[-1][1] if found else None


def save_checkpoint(output_dir: str | os.PathLike, step: int, *, model: SSA, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler | None,
                    config: TrainConfig, keep_last: int = 0) -> Path:
    """Write ``checkpoints/step_{step:07d}/`` atomically, point ``latest`` at it, keep the newest
    ``keep_last`` (0: all). Call on one process."""
    root = Path(output_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    # what a killed earlier save left (this process is the only writer here)
    remove_temporaries(root, names=lambda name: name.startswith(".step_"))
    with atomic_dir(final) as tmp:  # replaces a folder left by an earlier run that went past this step
        save_model(model, tmp / MODEL_FILE, extra={"step": str(step)}, shown=final / MODEL_FILE)
        state = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": _rng_state(),
            "config": config.to_dict(),
        }
        try:
            torch.save(state, tmp / STATE_FILE)
        except RuntimeError as e:  # torch reports a full disk as "[enforce fail ...] unexpected pos ..."
            reason = str(e).splitlines()[0]
            if "unexpected pos" in reason:
                reason = "a write stopped part-way: is the disk full?"
            raise OSError(f"{final}: cannot write the training state ({reason})") from None
    atomic_write_text(root / LATEST, final.name + "\n")
    if keep_last > 0:
        for _, old in _checkpoint_dirs(Path(output_dir))[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


class DamagedCheckpoint(ValueError):
    """A checkpoint folder whose files cannot be read (truncated by a kill or a full disk)."""


def load_checkpoint(path: str | os.PathLike, *, model: SSA, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    scaler: torch.amp.GradScaler | None = None) -> dict:
    """Restore a checkpoint folder into ``model`` (strict) and the optional trainer parts; returns the
    saved state (``step``, ``config``, ...)."""
    path = Path(path)
    try:
        _, weights = read_checkpoint(path / MODEL_FILE)
    except ValueError as e:
        raise DamagedCheckpoint(str(e)) from None
    try:
        check_weights(path / MODEL_FILE, model, weights)
    except ValueError as e:
        raise ValueError(f"{e} (was the run's model config changed since? resume needs the same architecture)") from None
    state_file = path / STATE_FILE
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for damaged files
        raise DamagedCheckpoint(f"{state_file}: not a readable training state "
                                f"({unreadable_reason(state_file, e)})") from None
    model.load_state_dict(weights, strict=True)
    missing = [k for k in ("step", "optimizer", "scheduler", "rng", "config")
               if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{state_file}: not a training state of ssa-rvos (no {missing[0]!r})")
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"])
    return state


def _config_changes(old: dict, new: dict, where: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        dotted = f"{where}.{key}" if where else key
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_changes(a, b, dotted)
        elif a != b:
            out.append(f"{dotted}: {a!r} -> {b!r}")
    return out


def _resume_from(output_dir: Path, log, **parts) -> tuple[Path | None, dict | None]:
    """The newest checkpoint that reads back, loaded into ``parts``; a damaged newer one is skipped with a
    line in the log (a kill or a full disk during its write), so a run can always go on from the last good
    one. (None, None) when there are no checkpoints; the newest one's error when none reads back."""
    first_error = None
    for _, folder in reversed(_checkpoint_dirs(output_dir)):
        try:
            return folder, load_checkpoint(folder, **parts)
        except DamagedCheckpoint as e:
            first_error = first_error or e
            log.line(f"skipping a damaged checkpoint: {e}; trying the one before it")
    if first_error is not None:  # checkpoints, none readable: an error, not a silent restart from step 0
        raise first_error
    return None, None


# ------------------------------------------------------------------------------------------------ evaluation


def evaluate_split(model: SSA, config: EvalConfig, *, workdir: str | os.PathLike) -> dict[str, float]:
    """J, F and J&F of ``model`` on the split ``config`` names (predictions in a scratch folder under
    ``workdir``, removed afterwards)."""
    from ..benchmarks import open_benchmark
    from ..evaluation.evaluate import evaluate_predictions
    from ..evaluation.predict import predict_split

    dataset = open_benchmark(config.dataset, config.root, config.split)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="eval-", dir=workdir) as tmp:
        predict_split(model, dataset, tmp, short_side=config.short_side, frame_chunk=config.frame_chunk, amp=config.amp)
        # in this process: no fork of a training process (torch threads, CUDA, process groups)
        report = evaluate_predictions(dataset, tmp, workers=1)
    return {"J": report.j, "F": report.f, "J&F": report.jf}


# ------------------------------------------------------------------------------------------------ the loop


@dataclass
class TrainResult:
    step: int  # optimizer steps done in total (including those before a resume)
    losses: list[float]  # weighted total loss of every step of this call (this process)
    checkpoint: Path | None  # the newest checkpoint folder
    output_dir: Path
    model: SSA  # the trained model (not the DDP wrapper)
    evals: dict[int, dict[str, float]] = field(default_factory=dict)


def train(config: TrainConfig, *, resume: bool = False, eval_fn: EvalFn | None = None,
          max_steps_this_run: int | None = None) -> TrainResult:
    """Train as ``config`` says; with ``resume``, continue from the newest checkpoint in
    ``config.output_dir`` (none: start at step 0).

    eval_fn: ``eval_fn(model, step) -> {metric: value}``, run on rank 0 every ``config.eval.every``
    steps and after the last one (default: :func:`evaluate_split` when ``config.eval.dataset`` is set).
    max_steps_this_run: stop after this many steps without a final checkpoint, like a killed job.
    """
    output_dir = Path(config.output_dir)
    # Everything that can be wrong with the request fails here, before any model is built.
    if not resume and _checkpoint_dirs(output_dir):
        raise ValueError(f"{output_dir} already holds checkpoints: resume them (--resume) or choose another output_dir")
    if max_steps_this_run is not None and max_steps_this_run < 0:
        raise ValueError(f"max_steps_this_run must be >= 0, got {max_steps_this_run}")
    SummaryWriter = None
    if config.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("tensorboard=true needs the tensorboard package: pip install 'ssa-rvos[train]'") from None

    def evaluate_configured(model: SSA, step: int) -> Mapping[str, float]:
        return evaluate_split(model, config.eval, workdir=output_dir / "eval")

    evaluate = eval_fn or (evaluate_configured if config.eval.dataset is not None else None)

    env = setup_distributed(config.device)
    try:
        per_process = per_process_batch(config.batch_size, world_size=env.world_size, accumulation=config.accumulation)
        log = _Logger(env, output_dir, SummaryWriter)
        amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.amp]
        if amp_dtype is not None and env.device.type != "cuda":
            log.line(f"amp={config.amp} needs CUDA: training in fp32 on {env.device}")
            amp_dtype = None

        # Model, optimizer, schedule. Every process builds the same initial weights from the seed (DDP
        # would broadcast rank 0's anyway). Rank 0 goes first so that a CLIP download happens once.
        if not env.main:
            _barrier(env)
        torch.manual_seed(config.seed)
        model = build_model(config.model.ssa_config(), clip_weights=config.model.clip_weights).to(env.device)
        if env.main:
            _barrier(env)
        optimizer = build_optimizer(model, config.optim)
        scheduler = build_scheduler(optimizer, config.optim)
        scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
        criterion = SSACriterion(config=config.loss).to(env.device)
        trainable = [p for g in optimizer.param_groups for p in g["params"]]

        step = 0
        found, state = (_resume_from(output_dir, log, model=model, optimizer=optimizer, scheduler=scheduler,
                                     scaler=scaler) if resume else (None, None))
        if found is not None:
            step = int(state["step"])
            log.line(f"resumed from {found} (step {step})")
            changes = [c for c in _config_changes(state["config"], config.to_dict()) if not c.startswith("output_dir")]
            if changes:
                log.line("config differs from the checkpoint's: " + "; ".join(changes))
        else:
            if resume:
                log.line(f"no checkpoint in {output_dir}: starting at step 0")
            if config.model.init_from:
                report = load_init_weights(model, config.model.init_from)
                if env.main:
                    output_dir.mkdir(parents=True, exist_ok=True)
                    (output_dir / "init_report.json").write_text(json.dumps(report.to_dict(), indent=1))
                for line in report.lines():
                    log.line(line)
        if env.main:
            save_config(config, output_dir / "config.yaml")
        net = wrap_ddp(model, env, find_unused_parameters=config.find_unused_parameters)

        max_steps = config.optim.max_steps
        stop = max_steps if max_steps_this_run is None else min(max_steps, step + max_steps_this_run)
        log.line(f"training {config.model.preset} on {env.device} x {env.world_size} process(es): steps {step}..{stop} "
                 f"of {max_steps}, {config.batch_size} clips per step ({per_process} per micro-batch x "
                 f"{config.accumulation}), {sum(p.numel() for p in trainable):,} trainable parameters, "
                 f"amp {config.amp if amp_dtype is not None else 'off'}")
        batches = build_batches(config.data, batch_size=config.batch_size, seed=config.seed, rank=env.rank,
                                world_size=env.world_size, accumulation=config.accumulation, start_step=step)
        result = TrainResult(step=step, losses=[], checkpoint=latest_checkpoint(output_dir) if resume else None,
                             output_dir=output_dir, model=model)
        bar = log.progress(total=max_steps, initial=step)
        model.train()
        tick, logged = time.perf_counter(), step
        while step < stop:
            micro_batches = next(batches)
            # After fetching: the DataLoader draws from torch's RNG when its iterator starts (step 0, or the
            # first step after a resume), which must not shift what this step draws.
            seed_step(config.seed, step, env.rank)
            optimizer.zero_grad(set_to_none=True)
            losses = accumulate_gradients(net, criterion, micro_batches, device=env.device, amp_dtype=amp_dtype,
                                          scaler=scaler)
            if scaler is not None:
                scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
            elif not math.isfinite(losses["total"]):
                raise FloatingPointError(f"step {step}: the loss is {losses['total']}; stopping "
                                         f"(the last checkpoint is intact)")
            grad_norm = None
            if config.optim.clip_grad_norm > 0:
                grad_norm = float(nn.utils.clip_grad_norm_(trainable, config.optim.clip_grad_norm))
            if scaler is not None:
                scaler.step(optimizer)  # skipped when the fp16 gradients overflowed
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            step += 1
            result.step = step
            result.losses.append(losses["total"])
            bar.update(1)

            if step % config.log_every == 0 or step == stop:
                seconds = (time.perf_counter() - tick) / (step - logged)
                log.metrics(step, losses, lr=optimizer.param_groups[0]["lr"], grad_norm=grad_norm,
                            seconds_per_step=seconds, recent=result.losses[-(step - logged):])
                tick, logged = time.perf_counter(), step
            if step % config.checkpoint_every == 0 or step == max_steps:
                if env.main:
                    result.checkpoint = save_checkpoint(output_dir, step, model=model, optimizer=optimizer,
                                                        scheduler=scheduler, scaler=scaler, config=config,
                                                        keep_last=config.keep_last)
                _barrier(env)
            if evaluate is not None and ((config.eval.every and step % config.eval.every == 0) or step == max_steps):
                if env.main:
                    model.eval()
                    with torch.no_grad():
                        scores = dict(evaluate(model, step))
                    model.train()
                    result.evals[step] = scores
                    log.evaluation(step, scores)
                _barrier(env)
        batches.close()  # stops the DataLoader's workers
        bar.close()
        log.close()
        return result
    finally:
        if env.owns_group:
            dist.destroy_process_group()


class _Logger:
    """Rank 0's output: the progress bar, log lines, metrics.jsonl, eval.jsonl and TensorBoard."""

    def __init__(self, env: DistEnv, output_dir: Path, summary_writer: type | None) -> None:
        self.main = env.main
        self.output_dir = output_dir
        self.writer = None
        self.bar = None
        if self.main:
            output_dir.mkdir(parents=True, exist_ok=True)
            if summary_writer is not None:
                self.writer = summary_writer(log_dir=str(output_dir / "tensorboard"))

    def progress(self, *, total: int, initial: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                        disable=not self.main)
        return self.bar

    def line(self, text: str) -> None:
        if not self.main:
            return
        if self.bar is not None and not self.bar.disable:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def _append(self, name: str, record: dict) -> None:
        with open(self.output_dir / name, "a") as f:
            f.write(json.dumps(record) + "\n")

    def metrics(self, step: int, losses: dict[str, float], *, lr: float, grad_norm: float | None,
                seconds_per_step: float, recent: list[float]) -> None:
        if not self.main:
            return
        shown = " ".join(f"{short} {losses[key]:.3f}" for key, short in _SHOWN.items() if key in losses)
        norm = f" grad_norm {grad_norm:.3g}" if grad_norm is not None else ""
        self.line(f"step {step} loss {sum(recent) / len(recent):.4f} ({shown}) lr {lr:.2e}{norm} "
                  f"{seconds_per_step:.2f}s/step")
        self._append("metrics.jsonl", {"step": step, **losses, "lr": lr, "grad_norm": grad_norm})
        if self.writer is not None:
            for key, value in losses.items():
                self.writer.add_scalar(f"loss/{key}", value, step)
            self.writer.add_scalar("lr", lr, step)
            if grad_norm is not None:
                self.writer.add_scalar("grad_norm", grad_norm, step)

    def evaluation(self, step: int, scores: dict[str, float]) -> None:
        if not self.main:
            return
        self.line(f"eval at step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        self._append("eval.jsonl", {"step": step, **scores})
        if self.writer is not None:
            for key, value in scores.items():
                self.writer.add_scalar(f"eval/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
