"""Write a segmentation result set to a folder: what ``ssa-rvos segment`` writes, callable from Python.

    from ssa_rvos import SSAPredictor
    from ssa_rvos.outputs import write_outputs

    predictor = SSAPredictor.from_pretrained()
    with predictor.init_state("video.mp4") as state:
        run = predictor.propagate(state, ["the dog running to the left"])   # or predictor.segment(...)
        summary = write_outputs("out/", state, run, format="both", overlay=True)

The folder holds

* ``<e>/<frame>.png`` per expression ``e`` (0/255 grayscale masks, named by the frames), with
  ``format="png"`` or ``"both"``;
* ``masks.json`` with ``format="rle"`` or ``"both"``: the input, the frames, the selection, and per
  expression its text, the COCO RLE of every frame's mask and every selected query's own masks with its
  score and mask score;
* ``overlay.mp4`` with ``overlay=True``: the input frames with the masks in colour and the sentences.

Each output is written under a temporary name and renamed into place when complete
(:mod:`ssa_rvos.fileio`); a rerun into the same folder replaces them and removes what an earlier run
wrote that this one does not (numbered folders holding only grayscale PNGs, ``masks.json``,
``overlay.mp4``) and the temporary files and folders an interrupted run left; a folder of the user's own
images is left alone. Given a
:class:`~ssa_rvos.predictor.Propagation`, the masks are written frame by frame as they are computed, so
memory stays flat on long videos.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data.masks import rle_encode, write_json_atomic, write_mask_png
from .fileio import exchange_dirs, is_temporary, link_tree, remove_temporaries, temporary_path

__all__ = ["FORMATS", "ExpressionSummary", "OutputSummary", "remove_stale_outputs", "write_outputs"]

FORMATS = ("png", "rle", "both")
MASKS_JSON = "masks.json"
OVERLAY = "overlay.mp4"


@dataclass
class ExpressionSummary:
    """What one expression's masks cover: frames with a non-empty mask, the mean mask area (fraction of
    the frame, over all frames), and its selected queries' scores."""

    text: str
    frames_with_mask: int
    num_frames: int
    mean_area: float
    scores: np.ndarray

    def line(self, index: int, *, max_text: int = 80) -> str:
        text = self.text if len(self.text) <= max_text else self.text[:max_text - 3] + "..."
        n = len(self.scores)
        top = f"top score {self.scores.max():.3f}" if n else "no query selected"
        return (f"[{index}] {text!r}: mask in {self.frames_with_mask}/{self.num_frames} frames, mean area "
                f"{100 * self.mean_area:.1f}%, {n} {'query' if n == 1 else 'queries'}, {top}")


@dataclass
class OutputSummary:
    folder: Path
    expressions: list[ExpressionSummary]
    written: list[str]  # what this run wrote: "2 mask folders", "masks.json", "overlay.mp4"
    removed: list[str] = field(default_factory=list)  # an earlier run's outputs removed


def _is_mask_png(f: Path) -> bool:
    from PIL import Image

    if not (f.is_file() and f.suffix == ".png"):
        return False
    try:
        with Image.open(f) as im:  # reads the header only
            return im.format == "PNG" and im.mode in ("L", "1")
    except OSError:
        return False


def _is_stale(entry: Path, written: set[str]) -> bool:
    """Whether ``entry`` is an earlier run's output that a run writing ``written`` leaves behind: a numbered
    folder holding nothing but grayscale .png files (a folder of the user's own images is not one), or
    ``masks.json`` / ``overlay.mp4``, when not in ``written``."""
    if entry.name in written:
        return False
    if entry.name in (MASKS_JSON, OVERLAY):
        return entry.is_file() and not entry.is_symlink()
    return (entry.is_dir() and not entry.is_symlink() and entry.name.isdigit()
            and all(_is_mask_png(f) for f in entry.iterdir()))


def _written_names(num_expressions: int, *, png: bool, rle: bool, overlay: bool) -> set[str]:
    names = {str(e) for e in range(num_expressions)} if png else set()
    return names | ({MASKS_JSON} if rle else set()) | ({OVERLAY} if overlay else set())


def _listing(out: Path) -> list[Path]:
    return sorted(out.iterdir(), key=lambda p: (len(p.name), p.name))


def remove_stale_outputs(out: str | os.PathLike, *, keep: set[str], keep_rle: bool, keep_overlay: bool) -> list[str]:
    """Remove from ``out`` the segmentation outputs of an earlier run that a run writing the mask folders
    ``keep`` (and ``masks.json`` / ``overlay.mp4`` if ``keep_rle`` / ``keep_overlay``) did not write, so the
    folder describes one run. :func:`write_outputs` applies the same rule while staging. Returns the names
    removed."""
    written = set(keep) | ({MASKS_JSON} if keep_rle else set()) | ({OVERLAY} if keep_overlay else set())
    removed = []
    for entry in _listing(Path(out)):
        if _is_stale(entry, written):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            removed.append(f"{entry.name}/" if entry.is_dir() else entry.name)
    return removed


def _is_our_temporary(name: str) -> bool:
    """A temporary name of one of this module's outputs (``.3.<random>.partial``, ``.masks.json.<...>``,
    ``.overlay.mp4.<...>``), not some other hidden file of the user's."""
    first = name[1:].split(".", 1)[0]
    return first.isdigit() or name.startswith((f".{MASKS_JSON}.", f".{OVERLAY}."))


def _carry_over(out: Path, stage: Path, written: set[str]) -> list[str]:
    """Give ``stage`` (the new result set) everything else ``out`` holds, as hard links (nothing is copied
    or moved: ``out`` stays whole until the switch), except the earlier run's outputs this run does not
    rewrite (:func:`_is_stale`) and temporaries. Returns the outputs left behind."""
    removed = []
    for entry in _listing(out):
        if entry.name in written or is_temporary(entry.name):
            continue
        if _is_stale(entry, written):
            removed.append(f"{entry.name}/" if entry.is_dir() else entry.name)
        else:
            link_tree(entry, stage / entry.name)
    return removed


def _frames_of(results) -> Iterator:
    """FrameResults of a list of ExpressionResults (the masks already computed), in frame order."""
    from .predictor import FrameResult

    T = results[0].masks.shape[0]
    for t in range(T):
        yield FrameResult(index=t, name="", masks=np.stack([r.masks[t] for r in results]),
                          instance_masks=tuple(r.instance_masks[:, t] for r in results))


def check_output_folder(out: str | os.PathLike, num_expressions: int) -> None:
    """Refuse a folder where the outputs cannot go (a file in place of the folder or of a mask folder),
    before any work: a ValueError naming the path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file, expected a folder")
    for e in range(num_expressions):
        if (out / str(e)).exists() and not (out / str(e)).is_dir():
            raise ValueError(f"{out}: {out / str(e)} is a file, where the masks of expression {e} go")


def write_outputs(out: str | os.PathLike, state, results, *, format: str = "png", overlay: bool = False,
                  info: dict | None = None) -> OutputSummary:
    """Write ``results`` on the video ``state`` to the folder ``out`` (see the module docstring).

    state: the :class:`~ssa_rvos.predictor.VideoState` the results are of; results: a
    :class:`~ssa_rvos.predictor.Propagation` (iterated here: the masks are computed while written) or
    the list of :class:`~ssa_rvos.predictor.ExpressionResult` of ``segment``. info: extra entries for
    ``masks.json`` (e.g. the model's name, the selection and threshold used).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    out = Path(os.path.abspath(out))  # "." has no name to stage beside
    if out.is_symlink():  # the switch replaces the folder the link names, not the link
        out = out.resolve()
    streamed = not isinstance(results, (list, tuple))
    if streamed:
        texts, queries, scores = list(results.texts), results.query_indices, results.scores
        frames = iter(results)
    else:
        if not results:
            raise ValueError("no results to write")
        texts = [r.text for r in results]
        queries, scores = [r.query_indices for r in results], [r.scores for r in results]
        frames = _frames_of(results)
    check_output_folder(out, len(texts))
    png, rle = format in ("png", "both"), format in ("rle", "both")
    E, T = len(texts), state.num_frames
    H, W = state.original_size
    out.parent.mkdir(parents=True, exist_ok=True)
    # what an interrupted earlier run left: its staging folder beside ``out`` (and, from before the
    # one-step switch, temporaries inside it)
    removed_debris = remove_temporaries(out.parent, names=lambda n: n.startswith(f".{out.name}."))
    if out.is_dir():
        removed_debris += remove_temporaries(out, names=_is_our_temporary)
    # The whole new result set is staged in one hidden folder beside ``out`` and switched in by one
    # rename: a reader sees the old set or the new one, never a mix.
    stage = temporary_path(out)
    stage.mkdir(mode=0o755)
    if out.is_dir():
        shutil.copymode(out, stage)
    writer = None
    try:
        if png:
            for e in range(E):
                (stage / str(e)).mkdir()
        if overlay:
            from .videoio import VideoWriter, draw_overlay

            writer = VideoWriter(stage / OVERLAY, fps=state.fps or 10.0)
            originals = state.original_frames()
        mask_rles: list[list] = [[] for _ in range(E)]
        inst_rles = [[[] for _ in q] for q in queries]
        frames_with_mask = np.zeros(E, dtype=np.int64)
        area = np.zeros(E, dtype=np.float64)
        for t, frame in enumerate(frames):
            name = state.frame_names[t]
            for e in range(E):
                mask = frame.masks[e]
                if png:
                    write_mask_png(stage / str(e) / f"{name}.png", mask)
                if rle:
                    mask_rles[e].append(rle_encode(mask))
                    for q, inst in enumerate(frame.instance_masks[e]):
                        inst_rles[e][q].append(rle_encode(inst))
                n = int(mask.sum())
                frames_with_mask[e] += n > 0
                area[e] += n / (H * W)
            if writer is not None:
                writer.write(draw_overlay(next(originals), frame.masks, texts))
        mask_score_sets = results.mask_scores if streamed else [r.mask_scores for r in results]
        if writer is not None:
            writer.close()
        if rle:
            write_json_atomic(stage / MASKS_JSON, {
                "input": state.source,
                **(info or {}),
                "size": [H, W],
                "frames": list(state.frame_names),
                "frame_indices": list(state.frame_indices),
                "expressions": [
                    {"index": e, "text": texts[e], "masks": mask_rles[e],
                     "instances": [{"query": int(q), "score": float(s), "mask_score": float(ms), "masks": inst_rles[e][i]}
                                   for i, (q, s, ms) in enumerate(zip(queries[e], scores[e], mask_score_sets[e]))]}
                    for e in range(E)],
            })
        written_names = _written_names(E, png=png, rle=rle, overlay=overlay)
        removed = _carry_over(out, stage, written_names) if out.is_dir() else []
        exchange_dirs(stage, out)  # the switch: one step
    except BaseException:
        if writer is not None:
            writer.abort()
        shutil.rmtree(stage, ignore_errors=True)
        raise
    shutil.rmtree(stage, ignore_errors=True)  # now the old set (or nothing)
    written = [f"{E} mask folders" if png else None, MASKS_JSON if rle else None, OVERLAY if overlay else None]
    summaries = [ExpressionSummary(text=texts[e], frames_with_mask=int(frames_with_mask[e]), num_frames=T,
                                   mean_area=float(area[e] / T), scores=np.asarray(scores[e]))
                 for e in range(E)]
    return OutputSummary(folder=out, expressions=summaries, written=[w for w in written if w],
                         removed=removed + removed_debris)
