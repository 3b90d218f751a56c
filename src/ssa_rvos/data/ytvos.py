"""Ref-YouTube-VOS (Seo et al., ECCV 2020) and Ref-DAVIS17 (Khoreva et al., ACCV 2018) readers.

Ref-YouTube-VOS, as distributed for the competition (spec Sec. 8)::

    <root>/meta_expressions/{train,valid,test}/meta_expressions.json
        {"videos": {video: {"expressions": {exp_id: {"exp": str, "obj_id": "1"}}, "frames": [...]}}}
    <root>/train/{JPEGImages/<video>/<frame>.jpg, Annotations/<video>/<frame>.png, meta.json}
    <root>/valid/JPEGImages/<video>/<frame>.jpg

Annotations are palette PNGs whose pixel value is the object id. The ``valid`` expressions file also
lists the 305 videos of the competition's ``test`` split; the valid split is its videos that are not
in ``test/meta_expressions.json`` (202 videos), as every reference inference script computes it. The
valid expressions carry no ``obj_id`` (their ground truth is on the server).

Ref-DAVIS17 after ReferFormer's ``tools/data/convert_davis_to_ytvos.py`` has the same layout for
``train`` and ``valid`` (both with ``Annotations``, DAVIS-2017 unsupervised label maps, 255 = void, and a
``meta.json`` of object categories). Every object has four expressions, stored as
``exp_id = 4 * object_index + k`` with k = 0: annotator 1 first-frame, 1: annotator 1 full-video,
2: annotator 2 first-frame, 3: annotator 2 full-video; the protocol treats each k as one "annotator".

``meta.json`` is not needed and not read. Frames on disk are the truth: the frame list is the sorted
``*.jpg`` of a video's folder, and must agree with the expressions file where it lists frames.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .expressions import (
    DatasetError,
    Expression,
    VideoExpressionDataset,
    check_frames_agree,
    clean_expression,
    list_frames,
    read_json,
    require_dir,
    require_file,
    safe_name,
)
from .masks import read_label_png

__all__ = ["RefDAVIS17", "RefYouTubeVOS"]


def _videos_of(meta, path: Path) -> dict:
    videos = meta.get("videos") if isinstance(meta, dict) else None
    if not isinstance(videos, dict):
        raise DatasetError(f"{path}: expected {{'videos': {{video: ...}}}} at the top level")
    return videos


def _parse_obj_id(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DatasetError(f"{where}: 'obj_id' must be an object id such as \"1\", got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise DatasetError(f"{where}: 'obj_id' must be an object id such as \"1\", got {value!r}") from None


class RefYouTubeVOS(VideoExpressionDataset):
    """Ref-YouTube-VOS ``train`` (with masks) | ``valid`` (the 202 server videos, no masks)."""

    name = "ytvos"
    SPLITS: tuple[str, ...] = ("train", "valid")
    MASK_SPLITS: tuple[str, ...] = ("train",)
    EXCLUDE_TEST_VIDEOS = True

    def __init__(self, root: str | os.PathLike, split: str):
        super().__init__(root, split)
        require_dir(self.root, f"the {self.name} root holding meta_expressions/ and {'/, '.join(self.SPLITS)}/")
        if split not in self.SPLITS:
            raise DatasetError(f"{self.root}: unknown {self.name} split {split!r} "
                               f"(expected one of {', '.join(self.SPLITS)})")
        self.has_masks = split in self.MASK_SPLITS
        self.meta_path = self.root / "meta_expressions" / split / "meta_expressions.json"
        self.image_dir = self.root / split / "JPEGImages"
        self.annotation_dir = self.root / split / "Annotations"
        require_file(self.meta_path, "the expressions {'videos': {video: {'expressions', 'frames'}}}")
        require_dir(self.image_dir, "one folder of <frame>.jpg per video")
        if self.has_masks:
            require_dir(self.annotation_dir, "one folder of <frame>.png label maps per video")
        videos = _videos_of(read_json(self.meta_path, "meta_expressions.json"), self.meta_path)
        names = sorted(videos)
        if self.EXCLUDE_TEST_VIDEOS and split == "valid":
            test_path = self.root / "meta_expressions" / "test" / "meta_expressions.json"
            require_file(test_path, "the test expressions, whose videos are removed from the valid ones")
            test_videos = set(_videos_of(read_json(test_path, "meta_expressions.json"), test_path))
            names = [v for v in names if v not in test_videos]
        self._parse_videos(videos, names)

    def _describe(self) -> str:
        return str(self.meta_path)

    def _parse_videos(self, videos: dict, names: list[str]) -> None:
        path = self.meta_path
        expressions: list[Expression] = []
        video_frames: dict[str, tuple[str, ...]] = {}
        for video in names:
            safe_name(video, where=str(path), what="video")
            entry = videos[video]
            if not isinstance(entry, dict) or not isinstance(entry.get("expressions"), dict):
                raise DatasetError(f"{path}: video {video!r} needs 'expressions', an object {{exp_id: ...}}")
            video_dir = self.image_dir / video
            on_disk = list_frames(video_dir)
            if "frames" in entry:
                listed = entry["frames"]
                if not isinstance(listed, list) or not all(isinstance(f, str) for f in listed):
                    raise DatasetError(f"{path}: video {video!r}: 'frames' must be a list of frame names")
                check_frames_agree(listed, on_disk, meta_path=path, video_dir=video_dir, video=video)
            if not on_disk:
                raise DatasetError(f"{video_dir}: no .jpg frames (video {video!r} of {path})")
            frames = tuple(on_disk)
            video_frames[video] = frames
            for exp_id, e in entry["expressions"].items():
                safe_name(exp_id, where=str(path), what=f"expression id of video {video!r}")
                where = f"{path}: video {video!r}, expression {exp_id}"
                if not isinstance(e, dict) or not isinstance(e.get("exp"), str):
                    raise DatasetError(f"{where}: needs 'exp', the sentence")
                if "obj_id" in e:
                    obj_ids: tuple[int, ...] = (_parse_obj_id(e["obj_id"], where),)
                elif self.has_masks:
                    raise DatasetError(f"{where}: missing 'obj_id'")
                else:
                    obj_ids = ()
                expressions.append(self._check_expression(Expression(
                    dataset=self.name, split=self.split, video=video, exp_id=str(exp_id),
                    text=clean_expression(e["exp"]), raw_text=e["exp"], frames=frames, obj_ids=obj_ids)))
        self._set_expressions(expressions, video_frames)

    def _check_expression(self, expr: Expression) -> Expression:
        return expr

    def frame_path(self, video: str, frame: str) -> Path:
        return self.image_dir / video / f"{frame}.jpg"

    def label_path(self, video: str, frame: str) -> Path:
        return self.annotation_dir / video / f"{frame}.png"

    def _read_labels(self, video: str, frame: str, context: str = "") -> np.ndarray:
        path = self.label_path(video, frame)
        labels = read_label_png(path)  # a missing / unreadable file is a DatasetError naming it
        h, w = self.frame_size(video)
        if labels.shape != (h, w):
            raise DatasetError(f"{path}: label map is {labels.shape[0]}x{labels.shape[1]} but video {video!r} is "
                               f"{h}x{w} (frame {frame!r}{context})")
        return labels

    def _read_instance_masks(self, expr: Expression, indices: list[int], names: list[str]) -> np.ndarray:
        h, w = self.frame_size(expr.video)
        out = np.zeros((len(expr.obj_ids), len(names), h, w), dtype=bool)
        if not expr.obj_ids:
            return out
        for t, frame in enumerate(names):
            labels = self._read_labels(expr.video, frame, f", expression {expr.exp_id}")
            for n, obj in enumerate(expr.obj_ids):
                out[n, t] = labels == obj
        return out


class RefDAVIS17(RefYouTubeVOS):
    """Ref-DAVIS17 in the converted Ref-YouTube-VOS layout: ``train`` | ``valid``, both with masks.

    Adds what the DAVIS protocol needs: :meth:`annotator` (k = exp_id % 4), :meth:`objects` (the
    video's object ids in exp-id order) and :meth:`label_maps` (the raw label maps, 255 = void).
    """

    name = "davis"
    SPLITS = ("train", "valid")
    MASK_SPLITS = ("train", "valid")
    EXCLUDE_TEST_VIDEOS = False

    def _check_expression(self, expr: Expression) -> Expression:
        if not expr.exp_id.isdigit():
            raise DatasetError(f"{self.meta_path}: video {expr.video!r}, expression {expr.exp_id}: Ref-DAVIS17 "
                               "exp_ids must be integers 4 * object + k (k: annotator)")
        return expr

    @staticmethod
    def annotator(expr: Expression) -> int:
        """k = exp_id % 4: 0/1 annotator 1 first-frame/full-video, 2/3 annotator 2 first-frame/full-video."""
        return int(expr.exp_id) % 4

    def objects(self, video: str) -> list[int]:
        """The video's referred object ids (label values), in exp-id order, each once."""
        exprs = sorted(self.video_expressions(video), key=lambda e: int(e.exp_id))
        seen: list[int] = []
        for e in exprs:
            for obj in e.obj_ids:
                if obj not in seen:
                    seen.append(obj)
        return seen

    def label_maps(self, video: str, frames=None) -> np.ndarray:
        """The raw DAVIS label maps of a video (all frames by default) -> (T, H, W) uint8 (0 background,
        i object i, 255 void)."""
        _, names = self._frame_indices(video, frames)
        h, w = self.frame_size(video)
        out = np.empty((len(names), h, w), dtype=np.uint8)
        for t, frame in enumerate(names):
            out[t] = self._read_labels(video, frame)
        return out
