"""Training clips: sampling, augmentation, dataset mixing and batching (spec Sec. 6).

Every clip is a pure function of ``(seed, global sample index)``: the sample index picks the dataset
(by ratio), the expression, the frames and the augmentation from one generator seeded with both. The
global index of clip ``k`` of micro-batch ``m`` of optimizer step ``s`` on process ``r`` is

    ((s * accumulation + m) * world_size + r) * per_process + k,

so resuming at step ``s`` replays exactly what an uninterrupted run would have seen, and two processes
with one clip each see the same clips as one process with two (the DDP test relies on this).

Targets follow the original: every referred object is its own instance with its masks over the
clip's frames (empty where it is absent); objects that the augmentation removed from every frame are
dropped. A clip may have no object at all (every query then learns "no object").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..benchmarks import BENCHMARKS, open_benchmark
from ..configs import from_dict
from ..data.transforms import (
    TRAIN_MAX_LONG,
    TRAIN_SHORT_SIDES,
    make_pseudo_video,
    sample_clip_augmentation,
    sample_clip_indices,
)

# The CLIP pixel mean (0-255 RGB): batches are padded with it so that the padding normalises to 0,
# as the original pads after normalising.
CLIP_PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)

DATASET_NAMES = ("mevis", "ytvos", "davis", "refcoco", "refcoco+", "refcocog", "synthetic")


@dataclass(frozen=True)
class DatasetSpec:
    """One training source. ``ratio`` weighs how often it is drawn relative to the others."""

    name: str
    root: str = ""
    split: str = "train"
    ratio: float = 1.0
    split_by: str | None = None  # RefCOCO/+/g: "unc" (default), "umd" or "google"

    def __post_init__(self) -> None:
        if self.name not in DATASET_NAMES:
            raise ValueError(f"dataset name must be one of {DATASET_NAMES}, got {self.name!r}")
        if not self.ratio > 0:
            raise ValueError(f"dataset {self.name}: ratio must be > 0, got {self.ratio}")

    @classmethod
    def from_dict(cls, data: dict, where: str = "data.datasets") -> DatasetSpec:
        return from_dict(cls, data, where, style="key")


@dataclass(frozen=True)
class DataConfig:
    datasets: tuple[DatasetSpec, ...] = (DatasetSpec("synthetic"),)
    num_frames: int = 8
    frame_window: int = 10  # companions are drawn from +-frame_window around the reference frame
    augment: bool = True
    crop_prob: float = 0.5
    flip_prob: float = 0.5
    short_sides: tuple[int, ...] = TRAIN_SHORT_SIDES
    max_long: int = TRAIN_MAX_LONG
    pseudo_video: bool = False  # RefCOCO images as rotating pseudo-videos of num_frames (else num_frames copies)
    # Hard negatives: consecutive samples come in groups of this many that share one clip (video, frames,
    # augmentation) with different expressions of that video, so a step's loss can only fall by reading the
    # sentence (1: every sample is its own clip, as the original)
    expressions_per_clip: int = 1
    num_workers: int = 2
    synthetic_size: tuple[int, int] = (64, 64)
    pad_value: tuple[float, float, float] = CLIP_PIXEL_MEAN

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("data.datasets must name at least one dataset")
        if self.num_frames < 1:
            raise ValueError(f"data.num_frames must be >= 1, got {self.num_frames}")
        if self.expressions_per_clip < 1:
            raise ValueError(f"data.expressions_per_clip must be >= 1, got {self.expressions_per_clip}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["datasets"] = [asdict(s) for s in self.datasets]
        for k in ("short_sides", "synthetic_size", "pad_value"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, data: dict, where: str = "data") -> DataConfig:
        data = dict(data)
        if "datasets" in data:
            items = data["datasets"]
            if not isinstance(items, (list, tuple)):
                raise ValueError(f"{where}.datasets: expected a list of datasets")
            data["datasets"] = tuple(s if isinstance(s, DatasetSpec) else DatasetSpec.from_dict(s, f"{where}.datasets.{i}")
                                     for i, s in enumerate(items))
        return from_dict(cls, data, where, style="key")


@dataclass
class ClipTarget:
    """masks: (N, T, H, W) bool, one per referred object; ids: (N,) int64, unique within the clip."""

    masks: Tensor
    ids: Tensor

    def to(self, device) -> ClipTarget:
        return ClipTarget(self.masks.to(device), self.ids.to(device))


@dataclass
class Batch:
    """frames: (B, T, 3, H, W) float on a 0-255 scale, padded to a common size with ``pad_value``;
    texts: B sentences; targets: B clip targets, masks padded with False to (H, W)."""

    frames: Tensor
    texts: list[str]
    targets: list[ClipTarget]
    indices: list[int] = field(default_factory=list)  # global sample indices (for debugging / tests)

    def to(self, device) -> Batch:
        return Batch(self.frames.to(device), self.texts, [t.to(device) for t in self.targets], self.indices)


@dataclass
class Clip:
    frames: np.ndarray  # (T, H, W, 3) uint8
    masks: np.ndarray  # (N, T, H, W) bool
    ids: np.ndarray  # (N,) int64
    text: str
    index: int = -1
    source: str = ""


# ------------------------------------------------------------------------------------------------ sources

_COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 30),
            "white": (240, 240, 240), "purple": (150, 40, 180)}


def synthetic_clip(rng: np.random.Generator, *, num_frames: int, size: tuple[int, int]) -> Clip:
    """Squares of distinct colours moving in straight lines over a noisy background; the sentence names
    one square by its colour and direction ("the red square moving left"). Cheap, file-free clips for the
    tiny CPU recipe and the tests."""
    H, W = size
    n = int(rng.integers(2, 4))
    names = rng.choice(list(_COLOURS), size=n, replace=False)
    frames = np.clip(rng.normal(90, 20, size=(num_frames, H, W, 3)), 0, 255).astype(np.uint8)
    masks = np.zeros((n, num_frames, H, W), dtype=bool)
    side = max(4, min(H, W) // 4)
    directions = []
    for i in range(n):
        y0, x0 = rng.integers(0, H - side), rng.integers(0, W - side)
        dx = int(rng.choice([-1, 1])) * int(rng.integers(1, max(2, W // (2 * max(num_frames, 1)))))
        directions.append("right" if dx > 0 else "left")
        for t in range(num_frames):
            x = int(np.clip(x0 + dx * t, 0, W - side))
            masks[i, t, y0:y0 + side, x:x + side] = True
    for i in range(n):  # later squares are drawn on top: masks must match what is visible
        for j in range(i + 1, n):
            masks[i] &= ~masks[j]
        frames[masks[i]] = _COLOURS[names[i]]
    k = int(rng.integers(n))
    return Clip(frames, masks[k:k + 1], np.array([0]), f"the {names[k]} square moving {directions[k]}")


class _Source:
    """One dataset as a sampler of clips: ``clip(rng)`` draws an expression and its frames."""

    def __init__(self, spec: DatasetSpec, config: DataConfig) -> None:
        self.spec, self.config = spec, config
        self.reader = None
        if spec.name in BENCHMARKS:
            self.reader = open_benchmark(spec.name, spec.root, spec.split)
            if not self.reader.has_masks:
                raise ValueError(f"data.datasets: {spec.name} split {spec.split!r} has no masks to train on")
        elif spec.name.startswith("refcoco"):
            from ..data import RefCOCO

            self.reader = RefCOCO(spec.root, dataset=spec.name, split_by=spec.split_by or "unc", split=spec.split)
        if self.reader is not None and len(self.reader) == 0:
            raise ValueError(f"data.datasets: {spec.name} {spec.split!r} at {spec.root} has no expressions")

    def _options(self) -> dict:
        c = self.config
        return {"crop_prob": c.crop_prob, "flip_prob": c.flip_prob, "short_sides": c.short_sides, "max_long": c.max_long}

    def _augment(self, frames: np.ndarray, masks: np.ndarray, rng: np.random.Generator):
        if not self.config.augment:
            return frames, masks
        aug = sample_clip_augmentation(frames.shape[1], frames.shape[2], num_frames=frames.shape[0], rng=rng,
                                       **self._options())
        return aug.apply(frames, masks)

    def clip(self, rng: np.random.Generator, *, member: int = 0) -> Clip:
        """A clip drawn with ``rng``. ``member`` > 0 (a video dataset): the same frames and augmentation as
        member 0 draws with an identical ``rng``, but the ``member``-th other expression of its video, in
        an order drawn from ``rng`` (cycling when the video has fewer)."""
        c = self.config
        if self.reader is None:
            clip = synthetic_clip(rng, num_frames=c.num_frames, size=c.synthetic_size)
            clip.frames, clip.masks = self._augment(clip.frames, clip.masks, rng)
            return clip
        expr = self.reader[int(rng.integers(len(self.reader)))]
        if c.expressions_per_clip > 1 and not self.spec.name.startswith("refcoco"):
            # drawn for every member (the rng stays in step), used by members > 0
            others = [e for e in self.reader.video_expressions(expr.video) if e.exp_id != expr.exp_id]
            order = rng.permutation(len(others)) if others else []
            if member > 0 and others:
                expr = others[int(order[(member - 1) % len(others)])]
        if self.spec.name.startswith("refcoco"):
            image = self.reader.read_frames(expr.video)[0]
            masks = self.reader.instance_masks(expr)[:, 0]
            if c.pseudo_video:
                frames, clip_masks = make_pseudo_video(image, masks, num_frames=c.num_frames, rng=rng,
                                                       **self._options())
            else:
                frames, clip_masks = self._augment(np.repeat(image[None], c.num_frames, 0),
                                                   np.repeat(masks[:, None], c.num_frames, 1), rng)
        else:
            idx = sample_clip_indices(len(expr.frames), rng=rng, num=c.num_frames, window=c.frame_window)
            names = [expr.frames[i] for i in idx]
            frames = self.reader.read_frames(expr.video, names)
            clip_masks = self.reader.instance_masks(expr, names)
            frames, clip_masks = self._augment(frames, clip_masks, rng)
        ids = np.arange(len(clip_masks), dtype=np.int64)
        return Clip(frames, clip_masks, ids, expr.text)


class ClipStream(torch.utils.data.Dataset):
    """Map-style view of the infinite clip stream: item ``g`` is the clip of global sample index ``g``."""

    def __init__(self, config: DataConfig, *, seed: int) -> None:
        self.config, self.seed = config, seed
        self.sources = [_Source(s, config) for s in config.datasets]
        ratios = np.array([s.ratio for s in config.datasets], dtype=np.float64)
        self.probs = ratios / ratios.sum()

    def __len__(self) -> int:  # the stream is endless; DataLoader only needs a sampler
        return 2**62

    def __getitem__(self, index: int) -> Clip:
        group = self.config.expressions_per_clip
        # the members of a group draw with the same generator: the same source, video, frames and augmentation
        rng = np.random.default_rng([self.seed, int(index)] if group == 1 else [self.seed, int(index) // group, group])
        source = self.sources[int(rng.choice(len(self.sources), p=self.probs))]
        clip = source.clip(rng, member=int(index) % group)
        keep = clip.masks.reshape(len(clip.masks), -1).any(1)
        clip.masks, clip.ids, clip.index, clip.source = clip.masks[keep], clip.ids[keep], int(index), source.spec.name
        return clip


def collate(clips: Sequence[Clip], *, pad_value: Sequence[float] = CLIP_PIXEL_MEAN) -> Batch:
    T = clips[0].frames.shape[0]
    if any(c.frames.shape[0] != T for c in clips):
        raise ValueError("every clip of a batch needs the same number of frames")
    H = max(c.frames.shape[1] for c in clips)
    W = max(c.frames.shape[2] for c in clips)
    frames = torch.empty(len(clips), T, 3, H, W)
    frames[:] = torch.tensor(pad_value, dtype=torch.float32)[:, None, None]
    targets = []
    for b, c in enumerate(clips):
        h, w = c.frames.shape[1:3]
        frames[b, :, :, :h, :w] = torch.from_numpy(np.ascontiguousarray(c.frames)).permute(0, 3, 1, 2).float()
        masks = torch.zeros(len(c.masks), T, H, W, dtype=torch.bool)
        masks[:, :, :h, :w] = torch.from_numpy(np.ascontiguousarray(c.masks))
        targets.append(ClipTarget(masks, torch.from_numpy(c.ids).long()))
    return Batch(frames, [c.text for c in clips], targets, [c.index for c in clips])


class _StepSampler(torch.utils.data.Sampler):
    """Global sample indices of this process, micro-batch after micro-batch, from ``start_step`` on."""

    def __init__(self, *, per_process: int, rank: int, world_size: int, accumulation: int, start_step: int) -> None:
        self.per_process, self.rank, self.world_size = per_process, rank, world_size
        self.accumulation, self.start_step = accumulation, start_step

    def __iter__(self) -> Iterator[int]:
        micro = self.start_step * self.accumulation
        while True:
            base = (micro * self.world_size + self.rank) * self.per_process
            yield from range(base, base + self.per_process)
            micro += 1


def per_process_batch(batch_size: int, *, world_size: int, accumulation: int) -> int:
    if batch_size % (world_size * accumulation):
        raise ValueError(f"batch_size {batch_size} is not divisible by processes x accumulation "
                         f"({world_size} x {accumulation})")
    return batch_size // (world_size * accumulation)


def build_batches(config: DataConfig, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                  accumulation: int = 1, start_step: int = 0) -> Iterator[list[Batch]]:
    """For every optimizer step from ``start_step`` on: this process's ``accumulation`` micro-batches.

    ``batch_size`` is the global number of clips per optimizer step.
    """
    from functools import partial

    per_process = per_process_batch(batch_size, world_size=world_size, accumulation=accumulation)
    if per_process % config.expressions_per_clip:
        raise ValueError(f"data.expressions_per_clip {config.expressions_per_clip} must divide the clips per "
                         f"micro-batch ({per_process}), so that a clip's expressions train in one step")
    stream = ClipStream(config, seed=seed)
    sampler = _StepSampler(per_process=per_process, rank=rank, world_size=world_size, accumulation=accumulation,
                           start_step=start_step)
    loader = torch.utils.data.DataLoader(
        stream, batch_size=per_process, sampler=sampler, num_workers=config.num_workers,
        collate_fn=partial(collate, pad_value=config.pad_value), persistent_workers=config.num_workers > 0,
        prefetch_factor=2 if config.num_workers > 0 else None,
    )
    micro_batches = iter(loader)
    while True:
        yield [next(micro_batches) for _ in range(accumulation)]
