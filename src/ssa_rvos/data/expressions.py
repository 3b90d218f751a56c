"""Shared types of the dataset readers: :class:`Expression`, :class:`DatasetError` and the base reader.

Every benchmark is read as a list of *expressions*: one referring sentence about one video, with the
frames it covers and the objects it refers to. RefCOCO images are one-frame videos. A reader
(:class:`VideoExpressionDataset`) lists the expressions in a fixed order and decodes, on request, the
frames (``(T, H, W, 3)`` uint8 RGB) and the ground truth (``(N, T, H, W)`` bool, one mask stack per
referred object). Readers check the files cheaply when they are built, and name the file and the
video / expression at fault in every error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..text import clean_sentence as clean_expression

__all__ = ["DatasetError", "Expression", "VideoExpressionDataset", "clean_expression", "list_frames", "read_json",
           "safe_name"]

FRAME_SUFFIX = ".jpg"


class DatasetError(ValueError):
    """A dataset file is missing, malformed or inconsistent; the message names the file and the
    video / expression at fault."""


@dataclass(frozen=True)
class Expression:
    """One referring expression of one video.

    ``text`` is the cleaned sentence the model sees (:func:`clean_expression`), ``raw_text`` the
    sentence as written in the annotation file. ``frames`` are frame names without extension, sorted.
    ``obj_ids`` are the referred objects (MeViS object ids, the Ref-YouTube-VOS / DAVIS label value,
    the COCO annotation id for RefCOCO; empty where the split does not say); ``anno_ids`` are the MeViS
    mask ids (one instance each) and the COCO annotation id for RefCOCO.
    """

    dataset: str
    split: str
    video: str
    exp_id: str
    text: str
    raw_text: str
    frames: tuple[str, ...]
    obj_ids: tuple[int, ...]
    anno_ids: tuple[int, ...] = ()


def read_json(path: Path, what: str = "JSON file"):
    """Load a JSON file; a missing or malformed file is a :class:`DatasetError` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a directory, expected a JSON file") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e})") from None


def list_frames(video_dir: Path, suffix: str = FRAME_SUFFIX) -> list[str]:
    """Sorted names (without extension) of the ``*.jpg`` frames in a video folder (hidden files skipped)."""
    try:
        entries = os.listdir(video_dir)
    except FileNotFoundError:
        raise DatasetError(f"{video_dir}: video folder not found") from None
    except NotADirectoryError:
        raise DatasetError(f"{video_dir}: not a folder") from None
    return sorted(name[: -len(suffix)] for name in entries if name.endswith(suffix) and not name.startswith("."))


def check_frames_agree(listed: Sequence[str], on_disk: Sequence[str], *, meta_path: Path, video_dir: Path,
                       video: str) -> None:
    """The frame list of a meta file must name exactly the frames on disk."""
    if len(set(listed)) != len(listed):
        twice = sorted(f for f in set(listed) if list(listed).count(f) > 1)
        raise DatasetError(f"{meta_path}: video {video!r} lists frame {twice[0]!r} twice")
    missing = sorted(set(listed) - set(on_disk))
    if missing:
        raise DatasetError(f"{meta_path}: video {video!r} lists frame {missing[0]!r} but "
                           f"{video_dir / (missing[0] + FRAME_SUFFIX)} does not exist "
                           f"({len(missing)} listed frames missing on disk)")
    extra = sorted(set(on_disk) - set(listed))
    if extra:
        raise DatasetError(f"{meta_path}: video {video!r} does not list frame {extra[0]!r} found at "
                           f"{video_dir / (extra[0] + FRAME_SUFFIX)} ({len(extra)} frames on disk not listed)")


def safe_name(value, *, where: str, what: str) -> str:
    """``value`` if it is one safe path component, else a :class:`DatasetError` naming ``where`` (the file)
    and ``what`` (the key): names from dataset files (videos, expression ids, frames) become folder and file
    names of predictions, so ``../x``, an absolute path or a separator would write outside the output.

    Safe: a non-empty str, not ``.`` or ``..``, without ``/`` or ``\\``, NUL or other control characters.
    """
    if not isinstance(value, str):
        raise DatasetError(f"{where}: {what} {value!r} must be a string")
    if value in ("", ".", "..") or "/" in value or "\\" in value or any(
            ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        raise DatasetError(f"{where}: {what} {value!r} is not a safe name (expected one file-name component: "
                           "not empty, '.' or '..', no '/' or '\\', no control characters)")
    return value


def require_dir(path: Path, expected: str) -> None:
    if not path.is_dir():
        raise DatasetError(f"{path}: folder not found (expected {expected})")


def require_file(path: Path, expected: str) -> None:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (expected {expected})")


class VideoExpressionDataset:
    """Base reader: a fixed list of :class:`Expression` over videos of JPEG frames.

    Subclasses fill :attr:`expressions` and the per-video frame lists with :meth:`_set_expressions`,
    and implement :meth:`frame_path` and :meth:`_read_instance_masks`. Shapes: frames (T, H, W, 3)
    uint8 RGB; masks (N, T, H, W) bool with N the referred objects (instances), T the frames asked for.
    """

    name: str = ""

    def __init__(self, root: str | os.PathLike, split: str):
        self.root = Path(root)
        self.split = split
        self.has_masks = False
        self.expressions: list[Expression] = []
        self._video_frames: dict[str, tuple[str, ...]] = {}
        self._by_video: dict[str, list[int]] = {}
        self._sizes: dict[str, tuple[int, int]] = {}

    # ------------------------------------------------------------------------------------- listing

    def _set_expressions(self, expressions: list[Expression], video_frames: dict[str, tuple[str, ...]]) -> None:
        # Every name that becomes a path component of a prediction is checked here, for every reader.
        where = self._describe()
        for video, frames in video_frames.items():
            safe_name(video, where=where, what="video")
            for frame in frames:
                safe_name(frame, where=where, what=f"frame of video {video!r}")
        for expr in expressions:
            safe_name(expr.video, where=where, what="video")
            safe_name(expr.exp_id, where=where, what=f"expression id of video {expr.video!r}")
        self.expressions = list(expressions)
        self._video_frames = {v: tuple(video_frames[v]) for v in sorted(video_frames)}
        self._by_video = {v: [] for v in self._video_frames}
        for i, expr in enumerate(self.expressions):
            self._by_video[expr.video].append(i)

    def __len__(self) -> int:
        return len(self.expressions)

    def __getitem__(self, index: int) -> Expression:
        return self.expressions[index]

    def __iter__(self) -> Iterator[Expression]:
        return iter(self.expressions)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}: "
                f"{len(self._video_frames)} videos, {len(self.expressions)} expressions)")

    def _describe(self) -> str:
        """The file or folder that defines this split (used in error messages)."""
        return str(self.root / self.split)

    def videos(self) -> list[str]:
        """The split's videos, sorted."""
        return list(self._video_frames)

    def _check_video(self, video: str) -> None:
        if video not in self._video_frames:
            raise DatasetError(f"{self._describe()}: no video {video!r} in split {self.split!r} of {self.name}")

    def video_expressions(self, video: str) -> list[Expression]:
        """The expressions of one video, in the reader's order."""
        self._check_video(video)
        return [self.expressions[i] for i in self._by_video[video]]

    def video_frames(self, video: str) -> tuple[str, ...]:
        """All frames of a video (names without extension, sorted)."""
        self._check_video(video)
        return self._video_frames[video]

    def _frame_indices(self, video: str, frames: Sequence[str] | None) -> tuple[list[int], list[str]]:
        all_frames = self.video_frames(video)
        if frames is None:
            return list(range(len(all_frames))), list(all_frames)
        if isinstance(frames, str):
            raise TypeError("frames must be a sequence of frame names, not one string")
        position = {f: i for i, f in enumerate(all_frames)}
        indices = []
        for f in frames:
            if f not in position:
                raise DatasetError(f"{self.frame_path(video, f)}: frame {f!r} is not a frame of video {video!r} "
                                   f"in split {self.split!r} of {self.name}")
            indices.append(position[f])
        return indices, list(frames)

    # -------------------------------------------------------------------------------------- frames

    def frame_path(self, video: str, frame: str) -> Path:
        raise NotImplementedError

    def frame_size(self, video: str) -> tuple[int, int]:
        """(H, W) of a video, read from the header of its first frame and cached."""
        if video not in self._sizes:
            first = self.video_frames(video)[0]
            path = self.frame_path(video, first)
            try:
                with Image.open(path) as im:
                    w, h = im.size
            except FileNotFoundError:
                raise DatasetError(f"{path}: frame file not found (video {video!r}, frame {first!r})") from None
            except (OSError, Image.DecompressionBombError) as e:
                raise DatasetError(f"{path}: not a readable image (video {video!r}, frame {first!r}: {e})") from None
            self._sizes[video] = (int(h), int(w))
        return self._sizes[video]

    def read_frames(self, video: str, frames: Sequence[str] | None = None) -> np.ndarray:
        """Frames of a video (all of them, or the named ones in the given order) -> (T, H, W, 3) uint8 RGB.

        A missing file, an unreadable image, or a frame of another size than the video's first
        frame is a :class:`DatasetError` naming the file.
        """
        _, names = self._frame_indices(video, frames)
        h, w = self.frame_size(video)
        out = np.empty((len(names), h, w, 3), dtype=np.uint8)
        for t, frame in enumerate(names):
            path = self.frame_path(video, frame)
            try:
                with Image.open(path) as im:
                    arr = np.asarray(im.convert("RGB"))
            except FileNotFoundError:
                raise DatasetError(f"{path}: frame file not found (video {video!r}, frame {frame!r})") from None
            except (OSError, Image.DecompressionBombError) as e:
                raise DatasetError(f"{path}: not a readable image (video {video!r}, frame {frame!r}: {e})") from None
            if arr.shape[:2] != (h, w):
                raise DatasetError(f"{path}: frame is {arr.shape[0]}x{arr.shape[1]} but video {video!r} is {h}x{w} "
                                   f"(its first frame; frame {frame!r})")
            out[t] = arr
        return out

    # --------------------------------------------------------------------------------------- masks

    def instance_masks(self, expr: Expression, frames: Sequence[str] | None = None) -> np.ndarray:
        """Ground truth of one expression, one mask stack per referred object -> (N, T, H, W) bool.

        Frames where an object is absent are empty. ``frames`` selects frames of ``expr.video`` (default:
        all of ``expr.frames``). A split without ground truth is a :class:`DatasetError`.
        """
        if not self.has_masks:
            raise DatasetError(f"{self._describe()}: split {self.split!r} of {self.name} has no ground-truth masks "
                               f"(asked for video {expr.video!r}, expression {expr.exp_id})")
        if frames is None:
            frames = expr.frames
        indices, names = self._frame_indices(expr.video, frames)
        return self._read_instance_masks(expr, indices, names)

    def _read_instance_masks(self, expr: Expression, indices: list[int], names: list[str]) -> np.ndarray:
        raise NotImplementedError

    def video_target_masks(self, exprs: Sequence[Expression]) -> Iterator[np.ndarray]:
        """:meth:`target_masks` of several expressions of one video, one after the other (an evaluator's
        loop); readers whose expressions share annotated objects decode each object once here."""
        for mask, _ in self.video_targets(exprs):
            yield mask

    def video_targets(self, exprs: Sequence[Expression]) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """:meth:`video_target_masks` with each mask's per-frame boxes (``(T, 4)`` ``[y0, y1, x0, x1]``, as
        :func:`ssa_rvos.evaluation.metrics.mask_boxes` gives them) where the reader gets them cheaply,
        else None."""
        for expr in exprs:
            yield self.target_masks(expr), None

    def load_masks(self) -> None:
        """Read the split's mask annotations now if the reader keeps them in memory (before forking
        workers, so that each does not read them again); a no-op for readers of per-frame files."""

    def target_masks(self, expr: Expression, frames: Sequence[str] | None = None) -> np.ndarray:
        """Ground truth of one expression as the union of its objects -> (T, H, W) bool."""
        inst = self.instance_masks(expr, frames)
        if inst.shape[0] == 0:
            return np.zeros(inst.shape[1:], dtype=bool)
        return inst.any(axis=0)
