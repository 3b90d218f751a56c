"""Write tiny, deterministic dataset trees in the real on-disk formats, and return their ground truth.

Used by the dataset-reader tests and by any test that needs a benchmark on disk (evaluation,
prediction, submissions). Every writer takes a root folder and a seed, writes a few videos of a few
~24x32 frames, and returns a dict describing what it wrote:

* ``videos``: ``{video: {"frames": [names], "images": (T, H, W, 3) uint8, "size": (H, W)}}``; ``images``
  are the JPEGs *as decoded by Pillow*, so a reader's frames can be compared exactly;
* ``expressions``: one dict per expression in the readers' order (videos sorted, exp_ids in file order):
  ``video, exp_id, exp (raw text), text (cleaned), frames (tuple), obj_ids (tuple), anno_ids (tuple)``;
* ``instance_masks``: ``{(video, exp_id): (N, T, H, W) bool}`` one stack per referred object, and
  ``target_masks``: ``{(video, exp_id): (T, H, W) bool}`` their union (the truth exists even for splits
  whose files carry no masks; ``has_masks`` says whether they were written).

The trees include what the readers must handle: a multi-object MeViS expression, objects absent from
some frames, sentences with capitals and irregular whitespace, Ref-YouTube-VOS valid expressions mixed
with test videos, DAVIS void (255) pixels, RefCOCO polygons (one split in two parts), compressed and
uncompressed RLE, and a ref with only a degenerate polygon.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from ssa_rvos.data.masks import DAVIS_PALETTE, rle_encode, write_label_png

SIZE = (24, 32)


def _clean(text: str) -> str:
    return " ".join(text.lower().split())


def _video_name(tag: str, i: int, seed: int) -> str:
    return hashlib.md5(f"{tag}-{i}-{seed}".encode()).hexdigest()[:12]


def _image(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    coarse = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR), dtype=np.int16)
    noise = rng.integers(-20, 21, (h, w, 3))
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


def _write_jpeg(path: Path, image: np.ndarray) -> np.ndarray:
    """Save a JPEG and return it as Pillow decodes it (what a reader must return)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=95)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


def _box_track(rng: np.random.Generator, t: int, size: tuple[int, int], absent=()) -> np.ndarray:
    """(T, H, W) bool: a box of random size drifting across the frames, empty at ``absent`` frames."""
    h, w = size
    bh, bw = int(rng.integers(4, h // 2)), int(rng.integers(4, w // 2))
    y, x = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
    out = np.zeros((t, h, w), dtype=bool)
    for i in range(t):
        if i in absent:
            continue
        yy = min(max(y + int(rng.integers(-2, 3)) * i, 0), h - bh)
        xx = min(max(x + int(rng.integers(-2, 3)) * i, 0), w - bw)
        out[i, yy:yy + bh, xx:xx + bw] = True
    return out


def _write_frames(rng, video_dir: Path, frames: list[str], size) -> np.ndarray:
    return np.stack([_write_jpeg(video_dir / f"{f}.jpg", _image(rng, size)) for f in frames])


def _dump_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _expression_record(video, exp_id, exp, frames, obj_ids, anno_ids=()) -> dict:
    return {"video": video, "exp_id": str(exp_id), "exp": exp, "text": _clean(exp), "frames": tuple(frames),
            "obj_ids": tuple(obj_ids), "anno_ids": tuple(anno_ids)}


# ---------------------------------------------------------------------------------------------------- MeViS

def write_mevis(root, split: str = "valid_u", *, seed: int = 0, num_frames: int = 5,
                size: tuple[int, int] = SIZE) -> dict:
    """``<root>/<split>/{JPEGImages, meta_expressions.json[, mask_dict.json]}`` (mask_dict unless ``valid``).

    Video 0 (``num_frames`` frames, 3 objects): exp "0" object 0, exp "1" objects 0 and 1 (multi-object,
    two instances), exp "2" object 2 (absent from frames 1 and 3). Video 1 (``num_frames - 1`` frames,
    2 objects): exp "0" object 1 (absent from frame 0), exp "1" object 0. Also returns ``objects``:
    ``{anno_id: {"video", "obj_id", "masks": (T, H, W) bool}}``.
    """
    root = Path(root)
    rng = np.random.default_rng([seed, sum(map(ord, split))])
    has_masks = split != "valid"
    split_dir = root / split
    meta: dict = {"videos": {}}
    mask_dict: dict = {}
    info: dict = {"root": root, "split": split, "has_masks": has_masks, "videos": {}, "objects": {},
                  "expressions": [], "instance_masks": {}, "target_masks": {}}
    plans = [
        (num_frames, [(), (), (1, 3)],
         [("The  Bird flying AWAY\n", [0]), ("two birds\tmoving together", [0, 1]), ("Bird that leaves", [2])]),
        (num_frames - 1, [(), (0,)],
         [("the cat on the left", [1]), ("  Cat jumping", [0])]),
    ]
    next_anno = 0
    for i, (t, absences, exps) in enumerate(plans):
        video = _video_name(f"mevis-{split}", i, seed)
        frames = [f"{k:05d}" for k in range(t)]
        images = _write_frames(rng, split_dir / "JPEGImages" / video, frames, size)
        info["videos"][video] = {"frames": frames, "images": images, "size": tuple(size)}
        anno_of = {}
        for obj, absent in enumerate(absences):
            masks = _box_track(rng, t, size, absent)
            anno_of[obj] = next_anno
            info["objects"][next_anno] = {"video": video, "obj_id": obj, "masks": masks}
            mask_dict[str(next_anno)] = [rle_encode(m) if m.any() else None for m in masks]
            next_anno += 1
        expressions = {}
        for exp_id, (text, objs) in enumerate(exps):
            annos = [anno_of[o] for o in objs]
            expressions[str(exp_id)] = {"exp": text, "obj_id": objs, "anno_id": annos}
            inst = np.stack([info["objects"][a]["masks"] for a in annos])
            info["instance_masks"][(video, str(exp_id))] = inst
            info["target_masks"][(video, str(exp_id))] = inst.any(0)
        meta["videos"][video] = {"expressions": expressions, "frames": frames}
    for video in sorted(meta["videos"]):
        entry = meta["videos"][video]
        for exp_id, e in entry["expressions"].items():
            info["expressions"].append(_expression_record(video, exp_id, e["exp"], entry["frames"], e["obj_id"],
                                                          e["anno_id"]))
    if not has_masks:  # the server split: the expressions only
        for entry in meta["videos"].values():
            entry["expressions"] = {k: {"exp": e["exp"]} for k, e in entry["expressions"].items()}
        for rec in info["expressions"]:
            rec["obj_ids"], rec["anno_ids"] = (), ()
    _dump_json(split_dir / "meta_expressions.json", meta)
    if has_masks:
        _dump_json(split_dir / "mask_dict.json", mask_dict)
    return info


# ------------------------------------------------------------------------------------------ Ref-YouTube-VOS

_CATEGORIES = ["person", "dog", "cat", "giraffe", "skateboard"]


def _label_video(rng, video_dir_img: Path, video_dir_ann: Path | None, frames, size, absences, *, void=None):
    """Frames + label maps with objects 1..n (object i+1 absent at ``absences[i]``); returns
    (images, labels (T, H, W) uint8, per-object masks (n, T, H, W))."""
    images = _write_frames(rng, video_dir_img, frames, size)
    t = len(frames)
    objects = np.stack([_box_track(rng, t, size, absent) for absent in absences])
    labels = np.zeros((t, *size), dtype=np.uint8)
    for n in range(len(absences)):  # later objects are painted over earlier ones
        labels[objects[n]] = n + 1
    if void is not None:
        frame, (y0, y1, x0, x1) = void
        labels[frame, y0:y1, x0:x1] = 255
    objects = np.stack([labels == n + 1 for n in range(len(absences))])  # what the label maps say
    if video_dir_ann is not None:
        for k, f in enumerate(frames):
            write_label_png(video_dir_ann / f"{f}.png", labels[k], palette=DAVIS_PALETTE)
    return images, labels, objects


def write_ytvos(root, *, seed: int = 0, size: tuple[int, int] = SIZE) -> dict:
    """A Ref-YouTube-VOS tree: ``train`` (2 videos with Annotations and meta.json), ``valid`` (2 videos)
    and ``meta_expressions/{train,valid,test}``; the valid expressions file also lists a test video
    (whose frames are not written), which the valid split must leave out. The valid expressions carry no
    obj_id; their returned masks are a made-up truth (one object each) for prediction/submission tests.

    Train frames step by 5 (``00000, 00005, ...``) as in YouTube-VOS. Train video 0: objects 1 and 2
    (object 2 absent from frame 1), expressions "0", "1" (object 1) and "2" (object 2); video 1: one
    object, one expression. Returns ``{"train": info, "valid": info, "test_videos": [...]}`` with each
    info as the module docstring says, plus ``labels``: ``{video: (T, H, W) uint8}`` for train.
    """
    root = Path(root)
    rng = np.random.default_rng([seed, 7])
    out: dict = {}
    # train
    info: dict = {"root": root, "split": "train", "has_masks": True, "videos": {}, "labels": {},
                  "expressions": [], "instance_masks": {}, "target_masks": {}}
    meta_exp: dict = {"videos": {}}
    meta: dict = {"videos": {}}
    plans = [(4, [(), (1,)], [("A person  riding a Skateboard", 1), ("the skater", 1), ("a small dog\n", 2)]),
             (3, [()], [("Giraffe walking", 1)])]
    for i, (t, absences, exps) in enumerate(plans):
        video = _video_name("ytvos-train", i, seed)
        frames = [f"{5 * k:05d}" for k in range(t)]
        images, labels, objects = _label_video(rng, root / "train" / "JPEGImages" / video,
                                               root / "train" / "Annotations" / video, frames, size, absences)
        info["videos"][video] = {"frames": frames, "images": images, "size": tuple(size)}
        info["labels"][video] = labels
        meta["videos"][video] = {"objects": {
            str(n + 1): {"category": _CATEGORIES[(i + n) % len(_CATEGORIES)],
                         "frames": [f for k, f in enumerate(frames) if objects[n, k].any()]}
            for n in range(len(absences))}}
        expressions = {}
        for exp_id, (text, obj) in enumerate(exps):
            expressions[str(exp_id)] = {"exp": text, "obj_id": str(obj)}
            info["instance_masks"][(video, str(exp_id))] = objects[obj - 1][None]
            info["target_masks"][(video, str(exp_id))] = objects[obj - 1]
        meta_exp["videos"][video] = {"expressions": expressions, "frames": frames}
    for video in sorted(meta_exp["videos"]):
        entry = meta_exp["videos"][video]
        for exp_id, e in entry["expressions"].items():
            info["expressions"].append(_expression_record(video, exp_id, e["exp"], entry["frames"],
                                                          [int(e["obj_id"])]))
    _dump_json(root / "meta_expressions" / "train" / "meta_expressions.json", meta_exp)
    _dump_json(root / "train" / "meta.json", meta)
    out["train"] = info
    # valid (+ one test video listed in the valid expressions file)
    info = {"root": root, "split": "valid", "has_masks": False, "videos": {}, "expressions": [],
            "instance_masks": {}, "target_masks": {}}
    valid_meta: dict = {"videos": {}}
    test_meta: dict = {"videos": {}}
    for i, (t, exps) in enumerate([(3, ["a black Bear", "the bear on the right"]), (2, ["A red car  driving"])]):
        video = _video_name("ytvos-valid", i, seed)
        frames = [f"{5 * k:05d}" for k in range(t)]
        images = _write_frames(rng, root / "valid" / "JPEGImages" / video, frames, size)
        info["videos"][video] = {"frames": frames, "images": images, "size": tuple(size)}
        valid_meta["videos"][video] = {"expressions": {str(k): {"exp": e} for k, e in enumerate(exps)},
                                       "frames": frames}
        for k in range(len(exps)):  # a truth for tests of predictions / submissions; not written (server split)
            track = _box_track(rng, t, size, absent=(1,) if k else ())
            info["instance_masks"][(video, str(k))] = track[None]
            info["target_masks"][(video, str(k))] = track
    test_video = _video_name("ytvos-test", 0, seed)
    test_entry = {"expressions": {"0": {"exp": "a test-split zebra"}}, "frames": ["00000", "00005"]}
    valid_meta["videos"][test_video] = test_entry
    test_meta["videos"][test_video] = test_entry
    for video in sorted(info["videos"]):
        entry = valid_meta["videos"][video]
        for exp_id, e in entry["expressions"].items():
            info["expressions"].append(_expression_record(video, exp_id, e["exp"], entry["frames"], ()))
    _dump_json(root / "meta_expressions" / "valid" / "meta_expressions.json", valid_meta)
    _dump_json(root / "meta_expressions" / "test" / "meta_expressions.json", test_meta)
    out["valid"] = info
    out["test_videos"] = [test_video]
    return out


# ----------------------------------------------------------------------------------------------- Ref-DAVIS17

_DAVIS_KINDS = ["first-frame by annotator 1", "full-video by annotator 1",
                "first-frame by annotator 2", "full-video by annotator 2"]


def write_davis(root, *, seed: int = 0, size: tuple[int, int] = SIZE) -> dict:
    """A Ref-DAVIS17 tree as ReferFormer's ``convert_davis_to_ytvos.py`` leaves it: ``{train,valid}/
    {JPEGImages, Annotations, meta.json}`` and ``meta_expressions/{train,valid}/meta_expressions.json``.

    Every object has 4 expressions, exp_id = 4 * object_index + k (k = annotator). Valid video 0: objects
    1 and 2 (object 2 absent from frame 2) and void (255) pixels in frame 1; valid video 1 and the train
    video: one object. Returns ``{"train": info, "valid": info}``; each info also has ``labels``
    ``{video: (T, H, W) uint8}`` and ``objects`` ``{video: [obj ids]}``.
    """
    root = Path(root)
    rng = np.random.default_rng([seed, 17])
    out: dict = {}
    plans = {"train": [(3, [()], None)],
             "valid": [(4, [(), (2,)], (1, (0, 3, 0, 4))), (3, [()], None)]}
    for split, videos in plans.items():
        info: dict = {"root": root, "split": split, "has_masks": True, "videos": {}, "labels": {}, "objects": {},
                      "expressions": [], "instance_masks": {}, "target_masks": {}}
        meta_exp: dict = {"videos": {}}
        meta: dict = {"videos": {}}
        for i, (t, absences, void) in enumerate(videos):
            video = _video_name(f"davis-{split}", i, seed)
            frames = [f"{k:05d}" for k in range(t)]
            images, labels, objects = _label_video(rng, root / split / "JPEGImages" / video,
                                                   root / split / "Annotations" / video, frames, size, absences,
                                                   void=void)
            info["videos"][video] = {"frames": frames, "images": images, "size": tuple(size)}
            info["labels"][video] = labels
            info["objects"][video] = [n + 1 for n in range(len(absences))]
            meta["videos"][video] = {"objects": {str(n + 1): {"category": _CATEGORIES[n]}
                                                 for n in range(len(absences))}}
            expressions = {}
            for n in range(len(absences)):
                for k, kind in enumerate(_DAVIS_KINDS):
                    exp_id = str(4 * n + k)
                    expressions[exp_id] = {"exp": f"The {_CATEGORIES[n]}  {kind}", "obj_id": str(n + 1)}
                    info["instance_masks"][(video, exp_id)] = objects[n][None]
                    info["target_masks"][(video, exp_id)] = objects[n]
            meta_exp["videos"][video] = {"expressions": expressions, "frames": frames}
            for exp_id, e in expressions.items():
                info["expressions"].append(_expression_record(video, exp_id, e["exp"], frames, [int(e["obj_id"])]))
        info["expressions"].sort(key=lambda r: r["video"])  # stable: exp_ids stay in file order
        _dump_json(root / "meta_expressions" / split / "meta_expressions.json", meta_exp)
        _dump_json(root / split / "meta.json", meta)
        out[split] = info
    return out


# --------------------------------------------------------------------------------------------- RefCOCO/+/g

_SPLITS_BY = {"unc": ("train", "val", "testA", "testB"), "umd": ("train", "val", "test"),
              "google": ("train", "val", "val")}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with a run of 0s."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    counts, current, run = [], False, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _polygon_mask(polygons: list[list[float]], h: int, w: int) -> np.ndarray:
    from pycocotools import mask as mask_api

    return mask_api.decode(mask_api.merge(mask_api.frPyObjects(polygons, h, w))).astype(bool)


def _rect(x0, y0, x1, y1) -> list[float]:
    return [float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]


def write_refcoco(root, dataset: str = "refcoco", split_by: str = "unc", *, seed: int = 0,
                  protocol: int = 2) -> dict:
    """``<root>/train2014/*.jpg``, ``<root>/<dataset>/instances.json`` and ``refs(<split_by>).p``.

    Three images; refs with a two-part polygon (2 sentences, train), a compressed RLE (train), an
    uncompressed RLE (val, 2 sentences), plain polygons (the two test splits of ``split_by``), and a
    train ref whose only polygon is degenerate (skipped by the reader). ``raw`` sentences carry capitals,
    punctuation and extra spaces; ``sent`` is the REFER-cleaned form, so a reader using the wrong field
    shows. Returns ``{"root", "dataset", "split_by", "images": {video: (H, W, 3) uint8}, "sizes",
    "masks": {ann_id: (H, W) bool}, "samples": {split: [{"video", "exp_id", "raw", "text", "sent",
    "ann_id", "ref_id"}]}, "skipped_refs": [ref_id], "refs": [the pickled refs]}``.
    """
    root = Path(root)
    rng = np.random.default_rng([seed, 29])
    splits = _SPLITS_BY.get(split_by, _SPLITS_BY["unc"])
    image_specs = [(9, (24, 32)), (25, (30, 20)), (30, (24, 32))]
    info: dict = {"root": root, "dataset": dataset, "split_by": split_by, "images": {}, "sizes": {}, "masks": {},
                  "samples": {}, "skipped_refs": [], "refs": []}
    images_json = []
    for image_id, (h, w) in image_specs:
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        video = Path(file_name).stem
        info["images"][video] = _write_jpeg(root / "train2014" / file_name, _image(rng, (h, w)))
        info["sizes"][video] = (h, w)
        images_json.append({"license": 1, "file_name": file_name, "coco_url": f"http://images.cocodataset.org/"
                            f"train2014/{file_name}", "height": h, "width": w, "date_captured": "2013-11-14 11:18:45",
                            "flickr_url": "http://farm4.staticflickr.com/0/0.jpg", "id": image_id})
    sizes = dict(image_specs)

    rle_mask = np.zeros(sizes[9], dtype=bool)
    rle_mask[3:15, 20:30] = True
    rle_mask[5:8, 22:25] = False
    crowd_mask = np.zeros(sizes[25], dtype=bool)
    crowd_mask[10:25, 2:9] = True
    segmentations = {
        101: (9, 1, [_rect(2, 2, 10, 12), _rect(12, 14, 18, 22)]),  # one object in two parts
        102: (9, 18, rle_encode(rle_mask)),  # compressed RLE, counts as a string
        103: (25, 1, _uncompressed_rle(crowd_mask)),  # uncompressed RLE (list counts)
        104: (30, 3, [_rect(4, 4, 20, 16)]),
        105: (30, 3, [[1.0, 1.0, 5.0, 5.0]]),  # degenerate: 2 points only
        106: (25, 18, [[2.0, 3.0, 15.0, 3.0, 9.0, 14.0]]),  # a triangle
        107: (30, 1, [_rect(22, 2, 30, 20)]),  # in no ref
    }
    annotations = []
    for ann_id, (image_id, cat, segm) in segmentations.items():
        h, w = sizes[image_id]
        if isinstance(segm, dict):
            mask = rle_mask if ann_id == 102 else crowd_mask
            iscrowd = int(isinstance(segm["counts"], list))
        else:
            mask = _polygon_mask(segm, h, w) if any(len(p) >= 6 for p in segm) else np.zeros((h, w), bool)
            iscrowd = 0
        info["masks"][ann_id] = mask
        ys, xs = np.nonzero(mask)
        bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)] \
            if len(xs) else [1.0, 1.0, 4.0, 4.0]
        annotations.append({"segmentation": segm, "area": float(mask.sum()), "iscrowd": iscrowd, "image_id": image_id,
                            "bbox": bbox, "category_id": cat, "id": ann_id})
    categories = [{"supercategory": "person", "id": 1, "name": "person"},
                  {"supercategory": "vehicle", "id": 3, "name": "car"},
                  {"supercategory": "animal", "id": 18, "name": "dog"}]

    ref_specs = [  # ref_id, ann_id, split, raw sentences
        (0, 101, splits[0], ["Man on the LEFT!", "guy   in red shirt"]),
        (1, 102, splits[0], ["The brown Dog"]),
        (2, 103, splits[1], ["people at the back", "Crowd,  far  left"]),
        (3, 104, splits[2], ["CAR in front"]),
        (4, 105, splits[0], ["tiny thing"]),
        (5, 106, splits[3] if len(splits) > 3 else splits[2], ["dog lying down."]),
    ]
    refs = []
    sent_id = 0
    for ref_id, ann_id, split, raws in ref_specs:
        image_id, cat, _ = segmentations[ann_id]
        sentences = []
        for raw in raws:
            sent = " ".join("".join(c for c in raw.lower() if c.isalnum() or c.isspace()).split())
            sentences.append({"tokens": sent.split(), "raw": raw, "sent_id": sent_id, "sent": sent})
            if ann_id != 105:
                video = f"COCO_train2014_{image_id:012d}"
                info["samples"].setdefault(split, []).append({
                    "video": video, "exp_id": str(sent_id), "raw": raw, "text": _clean(raw), "sent": sent,
                    "ann_id": ann_id, "ref_id": ref_id})
            sent_id += 1
        if ann_id == 105:
            info["skipped_refs"].append(ref_id)
        refs.append({"sent_ids": [s["sent_id"] for s in sentences],
                     "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg", "ann_id": ann_id, "ref_id": ref_id,
                     "image_id": image_id, "split": split, "sentences": sentences, "category_id": cat})
    info["refs"] = refs
    data_dir = root / dataset
    _dump_json(data_dir / "instances.json", {"images": images_json, "annotations": annotations,
                                             "categories": categories})
    with open(data_dir / f"refs({split_by}).p", "wb") as f:
        pickle.dump(refs, f, protocol=protocol)
    return info
