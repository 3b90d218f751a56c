"""Run a model over every expression of a benchmark split and write the standard prediction folders.

Output: ``<output>/<video>/<exp_id>/<frame>.png`` (0/255), the layout every evaluator and server reads.
Each expression's folder is written under a temporary name and renamed when complete
(:func:`ssa_rvos.fileio.atomic_dir`), so an interrupted run leaves no half-written expression, a rerun
skips what is already there and removes what the interrupted run left. With ``format="rle"`` each
expression is one ``<output>/<video>/<exp_id>.rle.json`` (COCO RLE per frame) instead, and
:func:`collect_rle` gathers them into ``<output>/masks.json``, which ``ssa-rvos evaluate --predictions``
reads without decoding a single PNG.

Inference is :class:`ssa_rvos.predictor.SSAPredictor`, the engine behind ``ssa-rvos segment`` too: per
distinct frame list of a video, its frames are decoded and resized once (``init_state``) and all its
sentences run through the model as one batch (``segment``). The test resize and the query selection
are the benchmark's (:mod:`ssa_rvos.benchmarks`) unless given.

Sharding: with ``world_size`` processes (``torchrun``), process ``rank`` predicts the videos
``rank, rank + world_size, ...`` of the split's video list, and only those; together they write the
same files as one process. Which expressions are done is read from the output folder, so a run resumes
under any number of processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..benchmarks import BENCHMARKS
from ..data.masks import rle_encode, write_json_atomic, write_mask_png
from ..fileio import atomic_dir, remove_temporaries


@dataclass
class PredictionStats:
    written: int = 0  # expressions predicted in this run
    skipped: int = 0  # expressions already present in the output
    videos: int = 0  # frame lists (videos) whose frames were read

    def add(self, other: PredictionStats) -> None:
        self.written += other.written
        self.skipped += other.skipped
        self.videos += other.videos


FORMATS = ("png", "rle")
RLE_SUFFIX = ".rle.json"
MASKS_JSON = "masks.json"


def expression_done(output: Path, video: str, exp_id: str, format: str = "png") -> bool:
    if format == "rle":
        return (output / video / f"{exp_id}{RLE_SUFFIX}").is_file()
    return (output / video / exp_id).is_dir()


def write_expression(output: Path, video: str, exp_id: str, frames: Sequence[str], masks: np.ndarray,
                     format: str = "png") -> None:
    """masks: (T, H, W) bool -> ``output/video/exp_id/<frame>.png`` (or ``output/video/exp_id.rle.json``),
    appearing all at once."""
    if format == "rle":
        (output / video).mkdir(parents=True, exist_ok=True)
        write_json_atomic(output / video / f"{exp_id}{RLE_SUFFIX}", {
            "frames": list(frames), "size": list(masks.shape[1:]), "masks": [rle_encode(m) for m in masks]})
        return
    with atomic_dir(output / video / exp_id) as tmp:
        for t, frame in enumerate(frames):
            write_mask_png(tmp / f"{frame}.png", masks[t])


def collect_rle(dataset, output: str | os.PathLike) -> Path:
    """Gather the ``<video>/<exp_id>.rle.json`` files of ``dataset``'s expressions in ``output`` into one
    ``output/masks.json`` (``{"dataset", "split", "videos": {video: {exp_id: {"frames", "size", "masks"}}}}``),
    written atomically; expressions without a file are left out. Returns its path."""
    from ..data.expressions import read_json

    output = Path(output)
    videos: dict[str, dict] = {}
    for expr in dataset.expressions:
        path = output / expr.video / f"{expr.exp_id}{RLE_SUFFIX}"
        if path.is_file():
            videos.setdefault(expr.video, {})[expr.exp_id] = read_json(path, "prediction file")
    write_json_atomic(output / MASKS_JSON, {"dataset": dataset.name, "split": dataset.split, "videos": videos})
    return output / MASKS_JSON


def shard_videos(videos: Sequence[str], rank: int, world_size: int) -> list[str]:
    """The videos process ``rank`` of ``world_size`` predicts: every ``world_size``-th of the split's list."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not one of {world_size} processes")
    return list(videos)[rank::world_size]


class _Frame(NamedTuple):
    index: int
    name: str
    image: np.ndarray


class SplitVideo:
    """The frames of one video of a dataset reader, as a video input of :meth:`SSAPredictor.init_state`:
    decoded one at a time through the reader (so its checks and error messages apply), never all at once."""

    fps = None

    def __init__(self, dataset, video: str, frames: Sequence[str]) -> None:
        self.dataset, self.video, self.names = dataset, video, tuple(frames)
        self.source = f"{dataset.name} {dataset.split} {video}"
        self.size = dataset.frame_size(video)
        self.num_frames = len(self.names)

    def frames(self, *, start: int = 0, end: int | None = None, every: int = 1) -> Iterator[_Frame]:
        for i in range(start, min(end if end is not None else self.num_frames, self.num_frames), every):
            yield _Frame(i, self.names[i], self.dataset.read_frames(self.video, [self.names[i]])[0])


def make_predictor(model, dataset_name: str, *, selection: str | None = None, short_side: int | None = None,
                   **kwargs):
    """The engine set up for a benchmark: its query selection and test short side unless given (the
    model's own ``test_short_side`` comes before the benchmark's)."""
    from ..predictor import DEFAULT_SHORT_SIDE, SSAPredictor

    benchmark = BENCHMARKS.get(dataset_name)
    selection = selection or (benchmark.selection if benchmark else "top1")
    short_side = short_side or model.config.test_short_side or (benchmark.test_short_side if benchmark
                                                                  else DEFAULT_SHORT_SIDE)
    return SSAPredictor(model, selection=selection, short_side=short_side, **kwargs)


def predict_split(model, dataset, output: str | os.PathLike, *, selection: str | None = None,
                  short_side: int | None = None, frame_chunk: int | None = 18, threshold: float = 0.5,
                  amp: bool = False, progress: bool = False, rank: int = 0, world_size: int = 1,
                  format: str = "png", **predictor_options) -> PredictionStats:
    """Predict every expression of ``dataset`` not yet in ``output`` (resumable); with ``world_size`` > 1,
    only this process's share of the videos (:func:`shard_videos`). Returns this process's counts.

    amp: bf16 autocast on CUDA (False: fp32 everywhere). frame_chunk None: the frame stage on all
    frames at once. format: "png" folders or "rle" files (then :func:`collect_rle` once every process is
    done). Other keywords go to :class:`~ssa_rvos.predictor.SSAPredictor`.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    from tqdm import tqdm

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    predictor = make_predictor(model, dataset.name, selection=selection, short_side=short_side,
                               frame_chunk=frame_chunk, threshold=threshold, amp=amp, **predictor_options)
    videos = shard_videos(dataset.videos(), rank, world_size)
    stats = PredictionStats()
    total = sum(len(dataset.video_expressions(v)) for v in videos)
    bar = tqdm(total=total, desc=f"predict {dataset.name} {dataset.split}", unit="exp", disable=not progress)
    for video in videos:
        exprs = dataset.video_expressions(video)
        # this process is the only writer of this video's folder: what is temporary there is debris
        remove_temporaries(output / video)
        todo = [e for e in exprs if not expression_done(output, video, e.exp_id, format)]
        stats.skipped += len(exprs) - len(todo)
        bar.update(len(exprs) - len(todo))
        # Expressions of one video may list the same frames (they always do in these benchmarks): one
        # state and one batched segment call per distinct frame list.
        by_frames: dict[tuple[str, ...], list] = {}
        for e in todo:
            by_frames.setdefault(tuple(e.frames), []).append(e)
        for frame_names, group in by_frames.items():
            with predictor.init_state(SplitVideo(dataset, video, frame_names)) as state:
                stats.videos += 1
                results = predictor.segment(state, [e.text for e in group])
            for expr, result in zip(group, results):
                write_expression(output, video, expr.exp_id, frame_names, result.masks, format)
                stats.written += 1
                bar.update()
    bar.close()
    return stats
