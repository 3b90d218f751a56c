"""RefCOCO / RefCOCO+ / RefCOCOg reader: COCO 2014 train images as one-frame videos.

Layout (the REFER API's ``data/<dataset>/`` next to COCO's ``train2014``; the SSA authors' DATA.md)::

    <root>/train2014/COCO_train2014_%012d.jpg
    <root>/<dataset>/instances.json      COCO format: images, annotations (polygons or RLE), categories
    <root>/<dataset>/refs(<split_by>).p  pickled list of refs: {ref_id, ann_id, image_id, split, category_id,
                                         file_name, sent_ids, sentences: [{raw, sent, tokens, sent_id}]}

Splits by ``split_by``: refcoco / refcoco+ ``unc`` (train, val, testA, testB), refcocog ``umd`` (train,
val, test) or ``google`` (train, val). As in the SSA authors' loader (GRES-style ``load_refcoco_json``)
there is one sample per (ref, sentence), in the order of the refs file, its text is the sentence's
``raw`` field (their mapper lower-cases it; :attr:`Expression.text` also collapses whitespace), and a
ref whose polygons are all degenerate (fewer than 3 points) is left out (listed in :attr:`skipped_refs`).

The refs files were pickled by Python 2. They are read with a restricted unpickler that builds only
plain containers and scalars: any reference to a class or function (other than ``set``/``frozenset``)
is refused, so a tampered file cannot run code.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np

from .expressions import (
    DatasetError,
    Expression,
    VideoExpressionDataset,
    clean_expression,
    read_json,
    require_dir,
    require_file,
)
from .masks import rle_decode

__all__ = ["RefCOCO", "RefsUnpickler", "load_refs"]

DATASETS = ("refcoco", "refcoco+", "refcocog")


class RefsUnpickler(pickle.Unpickler):
    """An unpickler for data-only pickles: every global except ``set``/``frozenset`` is refused.

    Python 2 names the builtins module ``__builtin__``; both spellings are accepted for the two
    allowed names. Strings pickled as Python 2 ``str`` are decoded as UTF-8.
    """

    ALLOWED: ClassVar[dict[tuple[str, str], type]] = {
        ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
        ("__builtin__", "set"): set, ("__builtin__", "frozenset"): frozenset}

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} "
                                         "(only plain data is allowed in a refs file)") from None


# What a corrupt or hostile data pickle can make the unpickler raise (UnicodeDecodeError is a ValueError).
_UNPICKLING_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                      OverflowError, MemoryError, RecursionError)


def load_refs(path: str | os.PathLike) -> list[dict]:
    """Read a ``refs(<split_by>).p`` file with :class:`RefsUnpickler` -> its list of ref dicts."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            refs = RefsUnpickler(f, encoding="utf-8").load()
    except FileNotFoundError:
        raise DatasetError(f"{path}: refs file not found") from None
    except _UNPICKLING_ERRORS as e:  # a refused global, truncated or corrupt data, undecodable text
        raise DatasetError(f"{path}: cannot read the refs pickle: {type(e).__name__}: {e}") from None
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise DatasetError(f"{path}: expected a pickled list of ref dicts, got {type(refs).__name__}")
    return refs


def _split_matches(wanted: str, ref_split: str) -> bool:
    # The REFER API's rule: testA/testB/testC match every test split containing that letter
    # (e.g. "testAB"), "test" matches every test split, train / val match exactly.
    if wanted in ("testA", "testB", "testC"):
        return ref_split.startswith("test") and wanted[-1] in ref_split[4:]
    if wanted == "test":
        return ref_split.startswith("test")
    return ref_split == wanted


def _valid_polygons(segm: list) -> list:
    return [p for p in segm if isinstance(p, list) and len(p) % 2 == 0 and len(p) >= 6]


def _mask_api():
    try:
        from pycocotools import mask as mask_api
    except ImportError as e:  # pragma: no cover - an optional dependency
        raise ImportError("decoding COCO polygons needs pycocotools: pip install pycocotools") from e
    return mask_api


class RefCOCO(VideoExpressionDataset):
    """One RefCOCO-family split as one-frame clips: ``video`` = image file stem, ``frames = (video,)``.

    ``exp_id`` is the sentence id; ``obj_ids`` and ``anno_ids`` are the referred COCO annotation id.
    Every split has masks (decoded from ``instances.json``: polygons merged, or RLE).
    """

    def __init__(self, root: str | os.PathLike, dataset: str = "refcoco", split_by: str = "unc",
                 split: str = "train"):
        super().__init__(root, split)
        if dataset not in DATASETS:
            raise DatasetError(f"{self.root}: unknown dataset {dataset!r} (expected one of {', '.join(DATASETS)})")
        self.name = dataset
        self.dataset = dataset
        self.split_by = split_by
        self.has_masks = True
        require_dir(self.root, "the COCO root holding train2014/ and refcoco*/")
        self.image_dir = self.root / "train2014"
        self.instances_path = self.root / dataset / "instances.json"
        self.refs_path = self.root / dataset / f"refs({split_by}).p"
        require_dir(self.image_dir, "the COCO 2014 train images")
        require_file(self.refs_path, f"the {dataset} refs pickled by the REFER API (split by {split_by})")
        require_file(self.instances_path, f"the {dataset} COCO annotations")
        refs = load_refs(self.refs_path)
        instances = read_json(self.instances_path, "instances.json")
        self.skipped_refs: list[int] = []
        self._file_names: dict[str, str] = {}
        self._image_sizes: dict[str, tuple[int, int]] = {}
        self._segmentations: dict[int, object] = {}
        self._ref_ids: dict[tuple[str, str], int] = {}
        self._build(refs, instances)

    def _describe(self) -> str:
        return str(self.refs_path)

    def _build(self, refs: list[dict], instances) -> None:
        ipath, rpath = self.instances_path, self.refs_path
        if not isinstance(instances, dict) or not isinstance(instances.get("images"), list) \
                or not isinstance(instances.get("annotations"), list):
            raise DatasetError(f"{ipath}: expected COCO format with 'images' and 'annotations' lists")
        images, anns = {}, {}
        for img in instances["images"]:
            if not isinstance(img, dict) or not all(k in img for k in ("id", "file_name", "height", "width")):
                raise DatasetError(f"{ipath}: every image needs 'id', 'file_name', 'height', 'width' (got {img!r:.200})")
            images[img["id"]] = img
        for ann in instances["annotations"]:
            if not isinstance(ann, dict) or not all(k in ann for k in ("id", "image_id", "segmentation")):
                raise DatasetError(f"{ipath}: every annotation needs 'id', 'image_id', 'segmentation' "
                                   f"(got {ann!r:.200})")
            anns[ann["id"]] = ann

        expressions: list[Expression] = []
        video_frames: dict[str, tuple[str, ...]] = {}
        splits_seen: set[str] = set()
        for ref in refs:
            missing = [k for k in ("ref_id", "ann_id", "image_id", "split", "sentences") if k not in ref]
            if missing:
                raise DatasetError(f"{rpath}: ref {ref.get('ref_id', '?')} has no {missing[0]!r}")
            splits_seen.add(str(ref["split"]))
            if not _split_matches(self.split, str(ref["split"])):
                continue
            ref_id, ann_id, image_id = ref["ref_id"], ref["ann_id"], ref["image_id"]
            ann = anns.get(ann_id)
            if ann is None:
                raise DatasetError(f"{rpath}: ref {ref_id} refers to annotation {ann_id}, which is not in {ipath}")
            img = images.get(image_id)
            if img is None:
                raise DatasetError(f"{rpath}: ref {ref_id} refers to image {image_id}, which is not in {ipath}")
            if ann["image_id"] != image_id:
                raise DatasetError(f"{rpath}: ref {ref_id} says image {image_id} but annotation {ann_id} in {ipath} "
                                   f"belongs to image {ann['image_id']}")
            segm = ann["segmentation"]
            if isinstance(segm, list):
                if not _valid_polygons(segm):
                    self.skipped_refs.append(ref_id)
                    continue
            elif not isinstance(segm, dict):
                raise DatasetError(f"{ipath}: annotation {ann_id} (ref {ref_id}): segmentation must be polygons "
                                   "or an RLE")
            video = Path(img["file_name"]).stem
            self._file_names[video] = img["file_name"]
            self._image_sizes[video] = (int(img["height"]), int(img["width"]))
            self._segmentations[ann_id] = segm
            video_frames[video] = (video,)
            sentences = ref["sentences"]
            if not isinstance(sentences, list):
                raise DatasetError(f"{rpath}: ref {ref_id}: 'sentences' must be a list")
            for k, sent in enumerate(sentences):
                if not isinstance(sent, dict) or not isinstance(sent.get("raw"), str):
                    raise DatasetError(f"{rpath}: ref {ref_id} (image {video!r}), sentence {k}: needs 'raw', "
                                       "the sentence")
                exp_id = str(sent.get("sent_id", f"{ref_id}_{k}"))
                self._ref_ids[(video, exp_id)] = ref_id
                expressions.append(Expression(
                    dataset=self.name, split=self.split, video=video, exp_id=exp_id,
                    text=clean_expression(sent["raw"]), raw_text=sent["raw"], frames=(video,),
                    obj_ids=(ann_id,), anno_ids=(ann_id,)))
        if not expressions:
            raise DatasetError(f"{rpath}: no sentences in split {self.split!r} "
                               f"(the file has splits: {', '.join(sorted(splits_seen)) or 'none'})")
        self._set_expressions(expressions, video_frames)

    def ref_id(self, expr: Expression) -> int:
        """The REFER ``ref_id`` an expression (one of its sentences) belongs to."""
        return self._ref_ids[(expr.video, expr.exp_id)]

    def frame_path(self, video: str, frame: str) -> Path:
        return self.image_dir / self._file_names.get(frame, f"{frame}.jpg")

    def frame_size(self, video: str) -> tuple[int, int]:
        """(H, W) as ``instances.json`` gives it (:meth:`read_frames` checks the image agrees)."""
        self._check_video(video)
        return self._image_sizes[video]

    def _read_instance_masks(self, expr: Expression, indices: list[int], names: list[str]) -> np.ndarray:
        h, w = self.frame_size(expr.video)
        out = np.zeros((len(expr.anno_ids), len(names), h, w), dtype=bool)
        for n, ann_id in enumerate(expr.anno_ids):
            mask = self._decode(ann_id, h, w, expr)
            out[n, :] = mask
        return out

    def _decode(self, ann_id: int, h: int, w: int, expr: Expression) -> np.ndarray:
        segm = self._segmentations[ann_id]
        where = f"{self.instances_path}: annotation {ann_id} (image {expr.video!r}, expression {expr.exp_id})"
        try:
            if isinstance(segm, list):
                api = _mask_api()
                polygons = [[float(x) for x in p] for p in _valid_polygons(segm)]
                mask = api.decode(api.merge(api.frPyObjects(polygons, h, w))).astype(bool)
            else:
                size = [int(s) for s in segm.get("size", [])]
                if size != [h, w]:
                    raise DatasetError(f"{where}: RLE size {size} differs from the image size {h}x{w}")
                mask = rle_decode(segm)
        except (ValueError, TypeError) as e:
            if isinstance(e, DatasetError):
                raise
            raise DatasetError(f"{where}: cannot decode the segmentation ({e})") from None
        return mask
