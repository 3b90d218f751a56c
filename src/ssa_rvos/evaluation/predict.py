"""Run a model over every expression of a benchmark split and write the standard prediction folders.

Output: ``<output>/<video>/<exp_id>/<frame>.png`` (0/255), the layout every evaluator and server reads.
Each expression's folder is written under a temporary name and renamed when complete, so an
interrupted run leaves no half-written expression and a rerun skips what is already there.
Inference follows spec Sec. 5: test resize (short side 448 for MeViS, 480 otherwise, long side <= 1333),
the frame stage in chunks, the video stage on all frames, selection ``union`` for MeViS and ``top1``
for Ref-YouTube-VOS / Ref-DAVIS17, masks resized back to the original frame size.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.masks import write_mask_png
from ..data.transforms import TEST_SHORT_SIDE, resize_frames, test_resize_shape
from ..postprocess import postprocess

DEFAULT_SELECTION = {"mevis": "union", "ytvos": "top1", "davis": "top1"}


@dataclass
class PredictionStats:
    written: int = 0  # expressions predicted in this run
    skipped: int = 0  # expressions already present in the output
    videos: int = 0  # videos whose frames were read


def expression_done(output: Path, video: str, exp_id: str) -> bool:
    return (output / video / exp_id).is_dir()


def write_expression(output: Path, video: str, exp_id: str, frames: list[str] | tuple[str, ...],
                     masks: np.ndarray) -> None:
    """masks: (T, H, W) bool -> ``output/video/exp_id/<frame>.png``, appearing all at once."""
    video_dir = output / video
    video_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=video_dir, prefix=f".{exp_id}.", suffix=".partial"))
    try:
        for t, frame in enumerate(frames):
            write_mask_png(tmp / f"{frame}.png", masks[t])
        os.replace(tmp, video_dir / exp_id)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@torch.inference_mode()
def predict_video(model, frames: np.ndarray, texts: list[str], *, selection: str, short_side: int,
                  max_long_side: int = 1333, frame_chunk: int | None = 18, threshold: float = 0.5,
                  amp: bool = False) -> list[np.ndarray]:
    """frames: (T, H, W, 3) uint8 RGB; one (T, H, W) bool mask per sentence, at the frames' size."""
    T, H, W = frames.shape[:3]
    size = test_resize_shape(H, W, short=short_side, max_long=max_long_side)
    resized = resize_frames(frames, size)
    device = model.device
    clip = torch.from_numpy(np.ascontiguousarray(resized)).to(device).permute(0, 3, 1, 2)[None].float()
    results = []
    for text in texts:
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            out = model(clip, [text], frame_chunk=frame_chunk)
        pred = postprocess(out, selection=selection, threshold=threshold, output_size=(H, W))[0]
        results.append(pred.masks.cpu().numpy())
    return results


def predict_split(model, dataset, output: str | os.PathLike, *, selection: str | None = None,
                  short_side: int | None = None, max_long_side: int = 1333, frame_chunk: int | None = 18,
                  threshold: float = 0.5, amp: bool = False, progress: bool = False) -> PredictionStats:
    """Predict every expression of ``dataset`` not yet in ``output`` (resumable)."""
    from tqdm import tqdm

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    selection = selection or DEFAULT_SELECTION.get(dataset.name, "top1")
    short_side = short_side or model.config.test_short_side or TEST_SHORT_SIDE.get(dataset.name, 480)
    model.eval()
    stats = PredictionStats()
    bar = tqdm(total=len(dataset.expressions), desc=f"predict {dataset.name} {dataset.split}", unit="exp",
               disable=not progress)
    for video in dataset.videos():
        exprs = dataset.video_expressions(video)
        todo = [e for e in exprs if not expression_done(output, video, e.exp_id)]
        stats.skipped += len(exprs) - len(todo)
        bar.update(len(exprs) - len(todo))
        # Expressions of one video may list the same frames (they always do in these benchmarks):
        # read them once per distinct frame list.
        by_frames: dict[tuple[str, ...], list] = {}
        for e in todo:
            by_frames.setdefault(tuple(e.frames), []).append(e)
        for frame_names, group in by_frames.items():
            frames = dataset.read_frames(video, list(frame_names))
            stats.videos += 1
            # One call per frame list: the frames are resized and moved to the device once for all
            # of its sentences.
            results = predict_video(model, frames, [e.text for e in group], selection=selection,
                                    short_side=short_side, max_long_side=max_long_side, frame_chunk=frame_chunk,
                                    threshold=threshold, amp=amp)
            for expr, masks in zip(group, results):
                write_expression(output, video, expr.exp_id, frame_names, masks)
                stats.written += 1
                bar.update()
    bar.close()
    return stats
