"""A2D-Sentences and JHMDB-Sentences (Gavrilyuk et al., CVPR 2018), read as MTTR and ReferFormer read them.

Layouts (as distributed; ``root`` is the dataset folder):

A2D-Sentences::

    Release/clips320H/<video>.mp4                                   the videos (frames decoded with PyAV)
    Release/videoset.csv                                            no header; 9 columns, the last is the
                                                                    subset (0 train, 1 test)
    text_annotations/a2d_annotation.txt                             "video_id,instance_id,query", with a header
    text_annotations/a2d_missed_videos.txt                          videos without sentences, one per line
    text_annotations/a2d_annotation_with_instances/<video>/<frame>.h5
        one file per annotated frame (1-based, 5 digits: 00012.h5): ``instance`` (the instance ids present)
        and ``reMask`` (N, W, H) -- MATLAB order, so transposed, and 2-D (W, H) when one instance is present

JHMDB-Sentences::

    Rename_Images/<class>/<video>/<frame>.png                       1-based, 5 digits: 00001.png
    puppet_mask/<class>/<video>/puppet_mask.mat                     ``part_mask`` (H, W, T); the last frames
                                                                    of a video may have no mask
    jhmdb_annotation.txt                                            "video_id,query", with a header

Evaluation protocol (MTTR ``datasets/a2d_sentences``, ``datasets/jhmdb_sentences``; ReferFormer
``datasets/a2d.py``, ``datasets/jhmdb.py``): a sample is one (expression, annotated frame) pair.
A2D: every annotated frame of the test videos in which the referred instance appears (frames where it is
absent are skipped, as in CMPC-V and MTTR). JHMDB-Sentences is test-only: three frames per expression
drawn at random among the frames that have masks. MTTR fixed that draw once in
``jhmdb_sentences_samples_metadata.json`` (also used by ReferFormer); pass that file (or put it in
``root``) to evaluate on the same frames, otherwise the three frames are drawn with a seeded generator.
The model sees a window of frames centred on the sample's frame (``window // 2`` before it,
``(window - 1) // 2`` after), out-of-range positions repeating the first / last frame.

Expressions: ``exp_id`` is the 0-based row of the sentence in the annotation file (A2D has no ids of its
own). A2D ``frames`` are the annotated frames only (a few per video); every frame of the mp4 can still be
read by name (``read_frames``, ``video_frames``). JHMDB ``frames`` are the frames that have masks.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np

from .expressions import (
    DatasetError,
    Expression,
    VideoExpressionDataset,
    clean_expression,
    list_frames,
    read_json,
    require_dir,
    require_file,
)

__all__ = ["A2D_SUBSETS", "A2DSentences", "Clip", "EvalSample", "JHMDBSentences", "window_indices"]

A2D_SUBSETS: dict[str, int] = {"train": 0, "test": 1}
JHMDB_METADATA_NAME = "jhmdb_sentences_samples_metadata.json"


class EvalSample(NamedTuple):
    """One evaluation sample: the expression, the annotated frame's name, and its (H, W) bool truth."""

    expression: Expression
    frame: str
    mask: np.ndarray


class Clip(NamedTuple):
    """The frames a model sees for one sample: (T, H, W, 3) uint8, their names, and the sample frame's index."""

    frames: np.ndarray
    names: tuple[str, ...]
    target: int


def window_indices(center: int, num_frames: int, window: int) -> list[int]:
    """0-based indices of a ``window``-frame clip around ``center``, clamped to the video (edge frames repeat).

    The sample frame sits at position ``window // 2`` (MTTR's convention).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not 0 <= center < num_frames:
        raise ValueError(f"frame index {center} outside a {num_frames}-frame video")
    start = center - window // 2
    return [min(max(i, 0), num_frames - 1) for i in range(start, start + window)]


def _frame_name(index: int) -> str:
    """0-based frame index -> the datasets' 1-based 5-digit name."""
    return f"{index + 1:05d}"


def _frame_index(name: str, *, where: str) -> int:
    """The datasets' 1-based frame name -> 0-based index."""
    try:
        index = int(name) - 1
    except ValueError:
        raise DatasetError(f"{where}: frame name {name!r} is not a 1-based frame number") from None
    if index < 0:
        raise DatasetError(f"{where}: frame name {name!r} is not a 1-based frame number")
    return index


def _h5py():
    try:
        import h5py
    except ImportError as e:
        raise ImportError("reading A2D-Sentences masks needs h5py: pip install h5py") from e
    return h5py


def _read_csv_rows(path: Path, header_first_field: str | None) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank row; a first row starting with ``header_first_field`` is skipped."""
    require_file(path, "a comma-separated annotation file")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            for fields in reader:
                if not any(x.strip() for x in fields):
                    continue
                rows.append((reader.line_num, fields))
        except csv.Error as e:
            raise DatasetError(f"{path}, line {reader.line_num}: malformed CSV ({e})") from None
    if rows and header_first_field is not None and rows[0][1][0].strip() == header_first_field:
        rows = rows[1:]
    return rows


def _decode_video(path: Path) -> np.ndarray:
    """Decode every frame of a video into (T, H, W, 3) uint8 RGB."""
    try:
        import av
    except ImportError as e:
        raise ImportError("reading A2D-Sentences videos needs PyAV: pip install ssa-rvos[video]") from e
    if not path.is_file():
        raise DatasetError(f"{path}: video not found")
    frames = []
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
    except av.error.FFmpegError as e:
        raise DatasetError(f"{path}: cannot decode the video ({e})") from None
    if not frames:
        raise DatasetError(f"{path}: the video has no frames")
    return np.stack(frames)


class _ClipMixin:
    """``read_clip``, shared by both readers; each provides ``_clip_frame_names(expr)``."""

    def _clip_frame_names(self, expr: Expression) -> tuple[str, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def read_clip(self, expr: Expression, frame: str, *, window: int | None = 8) -> Clip:
        """The frames the model sees for the evaluation sample (``expr``, ``frame``).

        ``window`` frames centred on ``frame`` with edge frames repeated (MTTR's default window is 8), or
        with ``window=None`` the whole video. ``Clip.target`` is the sample frame's position in the clip.
        """
        names = self._clip_frame_names(expr)
        try:
            center = names.index(frame)
        except ValueError:
            raise DatasetError(f"{self._describe()}: video {expr.video!r} has no frame {frame!r} to centre a clip "
                               f"on (expression {expr.exp_id})") from None
        if window is None:
            picked, target = list(range(len(names))), center
        else:
            picked, target = window_indices(center, len(names), window), window // 2
        clip_names = tuple(names[i] for i in picked)
        unique = list(dict.fromkeys(clip_names))
        frames = self.read_frames(expr.video, unique)
        row = {n: i for i, n in enumerate(unique)}
        return Clip(frames=frames[[row[n] for n in clip_names]], names=clip_names, target=target)


# ------------------------------------------------------------------------------------------------------ A2D-Sentences

class A2DSentences(_ClipMixin, VideoExpressionDataset):
    """A2D-Sentences, ``split`` "train" or "test" (the subset column of ``videoset.csv``).

    ``videos()`` are the split's videos that have sentences (those in ``a2d_missed_videos.txt`` are left
    out, as MTTR does); ``expr.frames`` are the video's annotated frames; ``video_frames(video)`` and
    ``read_frames`` decode the mp4 (the last decoded video is kept, so a video's samples decode it once).
    """

    name = "a2d"

    def __init__(self, root: str | os.PathLike, split: str = "test"):
        if split not in A2D_SUBSETS:
            raise ValueError(f"A2D-Sentences split must be one of {sorted(A2D_SUBSETS)}, got {split!r}")
        super().__init__(root, split)
        require_dir(self.root, "the A2D-Sentences folder (Release/, text_annotations/)")
        self.videos_dir = self.root / "Release" / "clips320H"
        self.ann_path = self.root / "text_annotations" / "a2d_annotation.txt"
        self.masks_dir = self.root / "text_annotations" / "a2d_annotation_with_instances"
        require_dir(self.masks_dir, "one folder of <frame>.h5 mask annotations per video")
        videos = _read_videoset(self.root / "Release" / "videoset.csv", A2D_SUBSETS[split])
        missed = _read_lines(self.root / "text_annotations" / "a2d_missed_videos.txt")
        used = {v for v in videos if v not in missed}
        self.has_masks = True
        self._frame_counts: dict[str, int] = {}
        self._decoded: tuple[str, np.ndarray] | None = None
        expressions = []
        annotated: dict[str, tuple[str, ...]] = {}
        for row, (line, fields) in enumerate(_read_csv_rows(self.ann_path, "video_id")):
            if len(fields) < 3:
                raise DatasetError(f"{self.ann_path}, line {line}: expected 'video_id,instance_id,query', "
                                   f"got {','.join(fields)!r}")
            video, instance, query = fields[0].strip(), fields[1].strip(), ",".join(fields[2:])
            if video not in used:
                continue
            if instance.endswith("(copy)"):
                continue  # one known duplicated row ("1 (copy)", video T6bNPuKV-wY), dropped as MTTR drops it
            try:
                instance_id = int(instance)
            except ValueError:
                raise DatasetError(f"{self.ann_path}, line {line}: instance_id {instance!r} of video {video!r} "
                                   f"is not an integer") from None
            if video not in annotated:
                annotated[video] = self._annotated_frames(video, line)
            expressions.append(Expression(
                dataset=self.name, split=split, video=video, exp_id=str(row), text=clean_expression(query),
                raw_text=query, frames=annotated[video], obj_ids=(instance_id,)))
        self._set_expressions(expressions, annotated)

    def _describe(self) -> str:
        return str(self.ann_path)

    def _annotated_frames(self, video: str, line: int) -> tuple[str, ...]:
        folder = self.masks_dir / video
        if not folder.is_dir():
            raise DatasetError(f"{folder}: no mask annotations for video {video!r} ({self.ann_path}, line {line})")
        names = sorted(p.stem for p in folder.iterdir() if p.suffix == ".h5")
        if not names:
            raise DatasetError(f"{folder}: no <frame>.h5 mask annotations for video {video!r}")
        for name in names:
            _frame_index(name, where=str(folder / f"{name}.h5"))
        return tuple(names)

    # -- frames

    def video_path(self, video: str) -> Path:
        return self.videos_dir / f"{video}.mp4"

    def frame_path(self, video: str, frame: str) -> Path:
        """A2D frames live inside the video: this is the mp4."""
        return self.video_path(video)

    def _decode(self, video: str) -> np.ndarray:
        # Evaluation visits one video's samples in a row: keep the last decoded video.
        if self._decoded is None or self._decoded[0] != video:
            self._check_video(video)
            self._decoded = (video, _decode_video(self.video_path(video)))
            self._frame_counts[video] = len(self._decoded[1])
        return self._decoded[1]

    def video_frames(self, video: str) -> tuple[str, ...]:
        """Every frame of the mp4 (decoded once to count them): 00001, 00002, ..."""
        if video not in self._frame_counts:
            self._decode(video)
        return tuple(_frame_name(i) for i in range(self._frame_counts[video]))

    def read_frames(self, video: str, frames: Sequence[str] | None = None) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB of the named frames (default: every frame of the mp4)."""
        indices, _ = self._frame_indices(video, frames)
        return self._decode(video)[indices]

    def frame_size(self, video: str) -> tuple[int, int]:
        """(H, W), from the masks of the first annotated frame (no decoding)."""
        if video not in self._sizes:
            self._check_video(video)
            _, masks = self._read_h5(video, self._video_frames[video][0])
            self._sizes[video] = (int(masks.shape[1]), int(masks.shape[2]))
        return self._sizes[video]

    def _clip_frame_names(self, expr: Expression) -> tuple[str, ...]:
        return self.video_frames(expr.video)

    # -- masks

    def _read_h5(self, video: str, frame: str) -> tuple[list[int], np.ndarray]:
        """One annotated frame -> (instance ids, (N, H, W) bool masks in the same order)."""
        path = self.masks_dir / video / f"{frame}.h5"
        if not path.is_file():
            raise DatasetError(f"{path}: no annotation for frame {frame!r} of video {video!r}")
        h5py = _h5py()
        try:
            with h5py.File(path, "r") as f:
                instances = [int(v) for v in np.asarray(f["instance"]).ravel()]
                masks = np.asarray(f["reMask"])
        except (OSError, KeyError) as e:
            raise DatasetError(f"{path}: not an A2D annotation with 'instance' and 'reMask' "
                               f"(video {video!r}: {e})") from None
        if masks.ndim == 2:
            masks = masks[None]
        if masks.ndim != 3:
            raise DatasetError(f"{path}: reMask has shape {masks.shape}, expected (N, W, H) or (W, H) "
                               f"(video {video!r})")
        # Stored in MATLAB (column-major) order: (N, W, H) -> (N, H, W).
        masks = np.ascontiguousarray(masks.transpose(0, 2, 1)) > 0
        if len(masks) < len(instances):
            raise DatasetError(f"{path}: {len(instances)} instances but {len(masks)} masks (video {video!r})")
        # A few files carry extra trailing masks: the i-th mask belongs to the i-th instance id.
        return instances, masks[:len(instances)]

    def _read_instance_masks(self, expr: Expression, indices: list[int], names: list[str]) -> np.ndarray:
        # Frames without an .h5 file have no annotation at all (A2D annotates a few frames per video).
        h, w = self.frame_size(expr.video)
        out = np.zeros((len(expr.obj_ids), len(names), h, w), dtype=bool)
        for t, frame in enumerate(names):
            instances, masks = self._read_h5(expr.video, frame)
            if masks.shape[1:] != (h, w):
                raise DatasetError(f"{self.masks_dir / expr.video / (frame + '.h5')}: mask is "
                                   f"{masks.shape[1]}x{masks.shape[2]}, video {expr.video!r} is {h}x{w}")
            for n, obj in enumerate(expr.obj_ids):
                if obj in instances:
                    out[n, t] = masks[instances.index(obj)]  # first occurrence, as MTTR (one file repeats an id)
        return out

    def instance_masks(self, expr: Expression, frames: Sequence[str] | None = None) -> np.ndarray:
        """(1, T, H, W) bool over annotated frames (default ``expr.frames``); empty where the instance is absent."""
        frames = expr.frames if frames is None else list(frames)
        missing = [f for f in frames if f not in expr.frames]
        if missing:
            raise DatasetError(f"{self.masks_dir / expr.video}: frame {missing[0]!r} of video {expr.video!r} "
                               f"is not annotated (annotated: {', '.join(expr.frames)})")
        return self._read_instance_masks(expr, [expr.frames.index(f) for f in frames], list(frames))

    def eval_samples(self) -> Iterator[EvalSample]:
        """Every (expression, annotated frame) pair where the referred instance is annotated, in file order."""
        cache: dict[str, dict[str, tuple[list[int], np.ndarray]]] = {}
        for expr in self.expressions:
            if expr.video not in cache:
                cache.clear()  # the rows of a video are contiguous in the annotation file
                cache[expr.video] = {f: self._read_h5(expr.video, f) for f in expr.frames}
            obj = expr.obj_ids[0]
            for frame in expr.frames:
                instances, masks = cache[expr.video][frame]
                if obj in instances:
                    yield EvalSample(expr, frame, masks[instances.index(obj)])


def _read_videoset(path: Path, subset: int) -> list[str]:
    videos = []
    for line, fields in _read_csv_rows(path, None):
        if len(fields) < 9:
            raise DatasetError(f"{path}, line {line}: expected 9 columns (vid, label, start, end, height, width, "
                               f"frames, annotated frames, subset), got {len(fields)}")
        try:
            row_subset = int(float(fields[8]))
        except ValueError:
            raise DatasetError(f"{path}, line {line}: subset {fields[8]!r} of video {fields[0]!r} is not "
                               f"0 (train) or 1 (test)") from None
        if row_subset == subset:
            videos.append(fields[0].strip())
    return videos


def _read_lines(path: Path) -> set[str]:
    require_file(path, "one video id per line")
    with open(path, encoding="utf-8") as f:
        return {line.strip() for line in f if line.strip()}


# ---------------------------------------------------------------------------------------------------- JHMDB-Sentences

class JHMDBSentences(_ClipMixin, VideoExpressionDataset):
    """JHMDB-Sentences (evaluation only: split "test"; one actor, ``obj_ids == (1,)``).

    ``samples_metadata``: MTTR's ``jhmdb_sentences_samples_metadata.json`` fixing the evaluated frames
    (default: that file in ``root`` when present); without it, ``frames_per_expression`` frames per
    expression are drawn with ``numpy.random.default_rng(seed)``. ``samples_source`` says which was used.
    """

    name = "jhmdb"

    def __init__(self, root: str | os.PathLike, *, samples_metadata: str | os.PathLike | None = None,
                 frames_per_expression: int = 3, seed: int = 0):
        super().__init__(root, "test")
        require_dir(self.root, "the JHMDB-Sentences folder (Rename_Images/, puppet_mask/, jhmdb_annotation.txt)")
        self.ann_path = self.root / "jhmdb_annotation.txt"
        self.images_dir = self.root / "Rename_Images"
        self.masks_dir = self.root / "puppet_mask"
        rows = _read_csv_rows(self.ann_path, "video_id")
        require_dir(self.images_dir, "Rename_Images/<class>/<video>/<frame>.png")
        require_dir(self.masks_dir, "puppet_mask/<class>/<video>/puppet_mask.mat")
        self.has_masks = True
        # Videos are found by name under any class folder, as MTTR globs them.
        self._video_dirs: dict[str, Path] = {}
        for class_dir in sorted(p for p in self.images_dir.iterdir() if p.is_dir()):
            for video_dir in sorted(p for p in class_dir.iterdir() if p.is_dir()):
                self._video_dirs.setdefault(video_dir.name, video_dir)
        self._mask_paths = {p.parent.name: p for p in sorted(self.masks_dir.glob("*/*/puppet_mask.mat"))}
        expressions = []
        video_frames: dict[str, tuple[str, ...]] = {}
        masked: dict[str, tuple[str, ...]] = {}
        for row, (line, fields) in enumerate(rows):
            if len(fields) < 2:
                raise DatasetError(f"{self.ann_path}, line {line}: expected 'video_id,query', got {','.join(fields)!r}")
            video, query = fields[0].strip(), ",".join(fields[1:])
            if video not in self._video_dirs:
                raise DatasetError(f"{self.ann_path}, line {line}: video {video!r} has no folder "
                                   f"{self.images_dir}/<class>/{video}")
            if video not in video_frames:
                video_frames[video] = tuple(list_frames(self._video_dirs[video], ".png"))
                masked[video] = self._frames_with_masks(video, video_frames[video], line)
            expressions.append(Expression(
                dataset=self.name, split="test", video=video, exp_id=str(row), text=clean_expression(query),
                raw_text=query, frames=masked[video], obj_ids=(1,)))
        self._set_expressions(expressions, video_frames)
        if samples_metadata is None and (self.root / JHMDB_METADATA_NAME).is_file():
            samples_metadata = self.root / JHMDB_METADATA_NAME
        if samples_metadata is not None:
            self._samples = self._read_samples_metadata(Path(samples_metadata))
            self.samples_source = str(samples_metadata)
        else:
            self._samples = self._draw_samples(frames_per_expression, seed)
            self.samples_source = f"random: {frames_per_expression} frames per expression, seed {seed}"

    def _describe(self) -> str:
        return str(self.ann_path)

    # -- files

    def mask_path(self, video: str) -> Path:
        path = self._mask_paths.get(video)
        if path is None:
            raise DatasetError(f"{self.masks_dir}: no <class>/{video}/puppet_mask.mat for video {video!r}")
        return path

    def frame_path(self, video: str, frame: str) -> Path:
        self._check_video(video)
        return self._video_dirs[video] / f"{frame}.png"

    def _frames_with_masks(self, video: str, frames: tuple[str, ...], line: int) -> tuple[str, ...]:
        if not frames:
            raise DatasetError(f"{self._video_dirs[video]}: no <frame>.png for video {video!r} "
                               f"({self.ann_path}, line {line})")
        for name in frames:
            _frame_index(name, where=str(self._video_dirs[video] / f"{name}.png"))
        path = self.mask_path(video)
        from scipy.io import whosmat  # reads the header only
        from scipy.io.matlab import MatReadError

        try:
            shapes = {name: shape for name, shape, _ in whosmat(str(path))}
        except (OSError, ValueError, TypeError, NotImplementedError, MatReadError) as e:
            raise DatasetError(f"{path}: not a readable .mat file (video {video!r}: {e})") from None
        shape = shapes.get("part_mask")
        if shape is None or len(shape) not in (2, 3):
            raise DatasetError(f"{path}: expected 'part_mask' of shape (H, W, T) for video {video!r}")
        count = shape[2] if len(shape) == 3 else 1
        # The last frames of some videos have no mask; MTTR leaves them out of the evaluation and of the clip.
        return frames[:count]

    def _load_masks(self, video: str) -> np.ndarray:
        """(T, H, W) bool puppet masks of a video."""
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError

        path = self.mask_path(video)
        try:
            part = np.asarray(loadmat(str(path))["part_mask"])
        except (OSError, KeyError, ValueError, TypeError, NotImplementedError, MatReadError) as e:
            raise DatasetError(f"{path}: cannot read 'part_mask' (video {video!r}: {e})") from None
        if part.ndim == 2:
            part = part[..., None]
        return np.ascontiguousarray(part.transpose(2, 0, 1)) > 0

    def _clip_frame_names(self, expr: Expression) -> tuple[str, ...]:
        return expr.frames

    # -- masks

    def _read_instance_masks(self, expr: Expression, indices: list[int], names: list[str]) -> np.ndarray:
        path = self.mask_path(expr.video)
        masks = self._load_masks(expr.video)
        idx = [_frame_index(f, where=str(path)) for f in names]
        bad = [f for f, i in zip(names, idx) if i >= len(masks)]
        if bad:
            raise DatasetError(f"{path}: {len(masks)} masks, none for frame {bad[0]!r} of video {expr.video!r}")
        if masks.shape[1:] != self.frame_size(expr.video):
            raise DatasetError(f"{path}: masks are {masks.shape[1]}x{masks.shape[2]}, the frames of video "
                               f"{expr.video!r} are {self.frame_size(expr.video)[0]}x{self.frame_size(expr.video)[1]}")
        return masks[idx][None]

    # -- evaluation samples

    def _read_samples_metadata(self, path: Path) -> list[tuple[Expression, str]]:
        entries = read_json(path, "JHMDB-Sentences samples metadata")
        if not isinstance(entries, list):
            raise DatasetError(f"{path}: expected a list of [video_id, frame_path, mask_path, frames, query]")
        by_key = {(e.video, e.raw_text): e for e in self.expressions}
        by_video: dict[str, list[Expression]] = {}
        for e in self.expressions:
            by_video.setdefault(e.video, []).append(e)
        samples = []
        for k, entry in enumerate(entries):
            if not isinstance(entry, list) or len(entry) != 5:
                raise DatasetError(f"{path}: entry {k} is not [video_id, frame_path, mask_path, frames, query]")
            video, frame_path, _, _, query = entry
            expr = by_key.get((video, query))
            if expr is None and len(by_video.get(video, [])) == 1:
                expr = by_video[video][0]
            if expr is None:
                raise DatasetError(f"{path}: entry {k} (video {video!r}, {query!r}) matches no expression "
                                   f"of {self.ann_path}")
            frame = PurePosixPath(str(frame_path).replace("\\", "/")).stem
            if frame not in expr.frames:
                raise DatasetError(f"{path}: entry {k}: video {video!r} has no masked frame {frame!r}")
            samples.append((expr, frame))
        return samples

    def _draw_samples(self, per_expression: int, seed: int) -> list[tuple[Expression, str]]:
        if per_expression < 1:
            raise ValueError(f"frames_per_expression must be >= 1, got {per_expression}")
        rng = np.random.default_rng(seed)
        samples = []
        for expr in self.expressions:
            k = min(per_expression, len(expr.frames))
            picked = sorted(rng.choice(len(expr.frames), size=k, replace=False).tolist())
            samples.extend((expr, expr.frames[i]) for i in picked)
        return samples

    def eval_samples(self) -> Iterator[EvalSample]:
        """(expression, frame, (H, W) bool truth) for every evaluated frame, in order."""
        loaded: tuple[str, np.ndarray] | None = None
        for expr, frame in self._samples:
            if loaded is None or loaded[0] != expr.video:
                loaded = (expr.video, self._load_masks(expr.video))
            yield EvalSample(expr, frame, loaded[1][_frame_index(frame, where=str(self.mask_path(expr.video)))])
