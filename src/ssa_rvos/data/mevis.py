"""MeViS reader (Ding et al., ICCV 2023): ``<root>/<split>/{JPEGImages, meta_expressions.json, mask_dict.json}``.

Layout (spec Sec. 8; the MeViS repository's README and loaders)::

    <root>/{train,valid_u,valid}/JPEGImages/<video>/<frame>.jpg
    <root>/<split>/meta_expressions.json   {"videos": {video: {"frames": [...],
                                             "expressions": {exp_id: {"exp", "obj_id": [int], "anno_id": [int]}}}}}
    <root>/{train,valid_u}/mask_dict.json   {str(anno_id): [COCO RLE or null, one per frame of the sorted frame list]}

An expression may refer to several objects (and, in MeViS v2, to none); each anno_id is one
instance and the ground truth is their union. ``valid`` is the server split (no masks). Unknown keys
(MeViS v2 adds some) are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
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
from .masks import decode_checked, decode_stack, rle_check, stack_boxes

__all__ = ["MeViS"]


def _int_list(value, *, what: str, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        raise DatasetError(f"{where}: '{what}' must be a list of integers, got {value!r}")
    return tuple(value)


class MeViS(VideoExpressionDataset):
    """MeViS ``train`` | ``valid_u`` (with masks) | ``valid`` (server split, no masks).

    ``mask_dict.json`` (about 1 GB for ``train``) is not read when the reader is built: it is loaded
    once, on the first call that needs masks, checked against every expression (each anno_id present,
    one entry per frame), and kept in memory for the reader's lifetime.
    """

    name = "mevis"
    SPLITS = ("train", "valid_u", "valid")

    def __init__(self, root: str | os.PathLike, split: str):
        super().__init__(root, split)
        require_dir(self.root, "the MeViS root holding train/, valid_u/, valid/")
        if split not in self.SPLITS:
            raise DatasetError(f"{self.root}: unknown MeViS split {split!r} (expected one of {', '.join(self.SPLITS)})")
        split_dir = self.root / split
        require_dir(split_dir, f"the MeViS {split} split: JPEGImages/ and meta_expressions.json")
        self.image_dir = split_dir / "JPEGImages"
        self.meta_path = split_dir / "meta_expressions.json"
        self.mask_dict_path = split_dir / "mask_dict.json"
        self.has_masks = split != "valid"
        require_dir(self.image_dir, "one folder of <frame>.jpg per video")
        require_file(self.meta_path, "the MeViS expressions {'videos': {video: {'frames', 'expressions'}}}")
        if self.has_masks:
            require_file(self.mask_dict_path, "the MeViS masks {anno_id: [RLE or null per frame]}")
        self._mask_dict: dict | None = None
        self._parse_meta(read_json(self.meta_path, "meta_expressions.json"))

    def _describe(self) -> str:
        return str(self.meta_path)

    def _parse_meta(self, meta) -> None:
        path = self.meta_path
        videos = meta.get("videos") if isinstance(meta, dict) else None
        if not isinstance(videos, dict):
            raise DatasetError(f"{path}: expected {{'videos': {{video: ...}}}} at the top level")
        expressions: list[Expression] = []
        video_frames: dict[str, tuple[str, ...]] = {}
        for video in sorted(videos):
            safe_name(video, where=str(path), what="video")
            entry = videos[video]
            if not isinstance(entry, dict):
                raise DatasetError(f"{path}: video {video!r} must be an object with 'frames' and 'expressions'")
            listed = entry.get("frames")
            if not isinstance(listed, list) or not all(isinstance(f, str) for f in listed):
                raise DatasetError(f"{path}: video {video!r} needs 'frames', a list of frame names")
            for frame in listed:
                safe_name(frame, where=str(path), what=f"frame of video {video!r}")
            exps = entry.get("expressions")
            if not isinstance(exps, dict):
                raise DatasetError(f"{path}: video {video!r} needs 'expressions', an object {{exp_id: ...}}")
            video_dir = self.image_dir / video
            check_frames_agree(listed, list_frames(video_dir), meta_path=path, video_dir=video_dir, video=video)
            if not listed:
                raise DatasetError(f"{path}: video {video!r} has no frames")
            frames = tuple(sorted(listed))
            video_frames[video] = frames
            for exp_id, e in exps.items():
                safe_name(exp_id, where=str(path), what=f"expression id of video {video!r}")
                where = f"{path}: video {video!r}, expression {exp_id}"
                if not isinstance(e, dict) or not isinstance(e.get("exp"), str):
                    raise DatasetError(f"{where}: needs 'exp', the sentence")
                if self.has_masks:
                    for key in ("obj_id", "anno_id"):
                        if key not in e:
                            raise DatasetError(f"{where}: missing '{key}'")
                obj_ids = self._ids(e, "obj_id", where)
                anno_ids = self._ids(e, "anno_id", where)
                expressions.append(Expression(
                    dataset=self.name, split=self.split, video=video, exp_id=str(exp_id),
                    text=clean_expression(e["exp"]), raw_text=e["exp"], frames=frames,
                    obj_ids=obj_ids, anno_ids=anno_ids))
        self._set_expressions(expressions, video_frames)

    def _ids(self, e: dict, key: str, where: str) -> tuple[int, ...]:
        if key not in e:
            return ()
        try:
            return _int_list(e[key], what=key, where=where)
        except DatasetError:
            if self.has_masks:
                raise
            return ()  # the server split: ids are not used, whatever they hold

    def frame_path(self, video: str, frame: str) -> Path:
        return self.image_dir / video / f"{frame}.jpg"

    # --------------------------------------------------------------------------------------- masks

    def mask_dict(self) -> dict:
        """``mask_dict.json``, loaded and checked on first use, then kept."""
        if self._mask_dict is None:
            if not self.has_masks:
                raise DatasetError(f"{self.meta_path}: split {self.split!r} of MeViS has no mask_dict.json")
            data = read_json(self.mask_dict_path, "mask_dict.json")
            if not isinstance(data, dict):
                raise DatasetError(f"{self.mask_dict_path}: expected {{anno_id: [RLE or null per frame]}}")
            self._check_mask_dict(data)
            self._mask_dict = data
        return self._mask_dict

    def _check_mask_dict(self, data: dict) -> None:
        for expr in self.expressions:
            for anno in expr.anno_ids:
                rles = data.get(str(anno))
                if rles is None:
                    raise DatasetError(f"{self.mask_dict_path}: no anno_id {anno} (video {expr.video!r}, "
                                       f"expression {expr.exp_id})")
                if not isinstance(rles, list) or len(rles) != len(expr.frames):
                    n = len(rles) if isinstance(rles, list) else type(rles).__name__
                    raise DatasetError(f"{self.mask_dict_path}: anno_id {anno} has {n} masks but video "
                                       f"{expr.video!r} has {len(expr.frames)} frames (expression {expr.exp_id})")

    def load_masks(self) -> None:
        if self.has_masks:
            self.mask_dict()

    def video_targets(self, exprs: Sequence[Expression]) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """As the base reader's, faster: expressions of a MeViS video refer to the same few objects, so
        each object's masks are decoded once, all frames at once, and handed out in the column-major
        layout RLEs decode to (a transposed view: (T, H, W) like every mask, but not C-contiguous), which
        saves a transposing copy of every frame; the boxes come from the RLE runs."""
        from ..evaluation.metrics import unite_boxes  # numpy only

        decoded: dict[tuple[int, tuple[str, ...]], tuple[np.ndarray, np.ndarray]] = {}
        for expr in exprs:
            if not self.has_masks:
                yield self.target_masks(expr), None  # the reader's own error
                continue
            indices, names = self._frame_indices(expr.video, expr.frames)
            h, w = self.frame_size(expr.video)
            union = boxes = None
            for anno in expr.anno_ids:
                key = (anno, tuple(names))
                if key not in decoded:
                    rles = self.mask_dict()[str(anno)]
                    compacts = [self._compact(rles[i], anno, frame, expr, h, w) for i, frame in zip(indices, names)]
                    decoded[key] = decode_stack(compacts, (h, w)), stack_boxes(compacts, (h, w))  # (T, W, H)
                stack, stack_box = decoded[key]
                if union is None:
                    union, boxes = stack, stack_box
                else:
                    union = union | stack
                    boxes = unite_boxes(boxes, stack_box)
            if union is None:
                yield np.zeros((len(names), h, w), dtype=bool), None
            else:
                yield union.transpose(0, 2, 1), boxes

    def _compact(self, rle, anno: int, frame: str, expr: Expression, h: int, w: int) -> dict | None:
        """One frame's RLE of one object, checked (None where the object is absent)."""
        if not rle:  # null (or empty): the object is absent from this frame
            return None
        where = f"anno_id {anno}, frame {frame!r} (video {expr.video!r}, expression {expr.exp_id})"
        if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
            raise DatasetError(f"{self.mask_dict_path}: {where} is not a COCO RLE")
        size = rle["size"]
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) for s in size)):
            raise DatasetError(f"{self.mask_dict_path}: {where} has a malformed size {size!r}")
        if size != [h, w]:
            raise DatasetError(f"{self.mask_dict_path}: {where} has size {size[0]}x{size[1]} "
                               f"but the frames are {h}x{w}")
        try:
            return rle_check(rle)
        except (ValueError, TypeError) as e:
            raise DatasetError(f"{self.mask_dict_path}: {where} is not a valid COCO RLE ({e})") from None

    def _read_instance_masks(self, expr: Expression, indices: list[int], names: list[str]) -> np.ndarray:
        data = self.mask_dict()
        h, w = self.frame_size(expr.video)
        out = np.zeros((len(expr.anno_ids), len(indices), h, w), dtype=bool)
        for n, anno in enumerate(expr.anno_ids):
            rles = data[str(anno)]
            for t, (i, frame) in enumerate(zip(indices, names)):
                compact = self._compact(rles[i], anno, frame, expr, h, w)
                if compact is not None:
                    out[n, t] = decode_checked(compact)
        return out
