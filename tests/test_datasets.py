"""Dataset readers on tiny generated trees (tests/datagen.py): listings, frames, masks, and every error case."""

import ast
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from datagen import write_davis, write_mevis, write_refcoco, write_ytvos
from PIL import Image

from ssa_rvos.data import (
    DatasetError,
    Expression,
    MeViS,
    RefCOCO,
    RefDAVIS17,
    RefYouTubeVOS,
    clean_expression,
)
from ssa_rvos.data.masks import rle_encode, write_label_png
from ssa_rvos.data.refcoco import load_refs


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _raises(fn, *needles):
    """fn() raises a DatasetError whose message contains every needle (paths as str)."""
    with pytest.raises(DatasetError) as info:
        fn()
    message = str(info.value)
    for needle in needles:
        assert str(needle) in message, f"{needle!r} not in {message!r}"
    return message


def _listing(dataset):
    return [(e.video, e.exp_id, e.text, e.raw_text, e.frames, e.obj_ids, e.anno_ids) for e in dataset]


def _expected(records):
    return [(r["video"], r["exp_id"], r["text"], r["exp"], r["frames"], r["obj_ids"], r["anno_ids"]) for r in records]


def test_clean_expression_matches_the_model():
    from ssa_rvos.modeling.clip_backbone import clean_sentence

    assert clean_expression("  The Bird\tflying\nAWAY ") == "the bird flying away"
    # The readers' normalisation must stay the one the model applies before tokenising.
    texts = ["  The Bird\tflying\nAWAY ", "A\r\nB\x0bC\x0cD", "Ünïcode\u00a0SPACE\u3000Straße İ",
             "already clean", "", " \t\n ", "Dog, 2nd from LEFT!"]
    for text in texts:
        assert clean_expression(text) == clean_sentence(text), repr(text)


def test_data_modules_import_only_numpy_and_pillow():
    allowed = {"__future__", "json", "os", "pickle", "pathlib", "dataclasses", "collections", "typing", "numpy", "PIL"}
    root = Path(__file__).resolve().parents[1] / "src" / "ssa_rvos" / "data"
    for name in ("__init__.py", "expressions.py", "mevis.py", "ytvos.py", "refcoco.py"):
        tree = ast.parse((root / name).read_text())
        for node in tree.body:  # module level only: optional packages are imported inside functions
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [] if node.level else [node.module]
            else:
                continue
            for mod in mods:
                assert mod.split(".")[0] in allowed, f"{name} imports {mod} at module level"


# ---------------------------------------------------------------------------------------------------- MeViS

@pytest.fixture
def mevis(tmp_path):
    info = write_mevis(tmp_path / "mevis", "valid_u")
    return info, MeViS(tmp_path / "mevis", "valid_u")


def test_mevis_expressions(mevis):
    info, ds = mevis
    assert ds.name == "mevis" and ds.split == "valid_u" and ds.has_masks and ds.root == info["root"]
    assert _listing(ds) == _expected(info["expressions"])
    assert len(ds) == len(info["expressions"]) == 5
    assert ds[0] == next(iter(ds)) and isinstance(ds[0], Expression)
    assert ds.videos() == sorted(info["videos"])
    for video in ds.videos():
        assert [e.video for e in ds.video_expressions(video)] == [video] * len(ds.video_expressions(video))
        assert ds.video_frames(video) == tuple(info["videos"][video]["frames"])
    texts = {e.text for e in ds}
    assert "the bird flying away" in texts and "two birds moving together" in texts  # cleaned
    assert any(e.raw_text == "The  Bird flying AWAY\n" for e in ds)
    _raises(lambda: ds.video_expressions("nope"), ds.meta_path, "nope")


def test_mevis_frames(mevis):
    info, ds = mevis
    for video, v in info["videos"].items():
        assert ds.frame_size(video) == v["size"]
        assert ds.frame_path(video, v["frames"][0]) == info["root"] / "valid_u" / "JPEGImages" / video / "00000.jpg"
        frames = ds.read_frames(video)
        assert frames.dtype == np.uint8 and frames.shape == (len(v["frames"]), *v["size"], 3)
        assert np.array_equal(frames, v["images"])
        subset = [v["frames"][2], v["frames"][0]]
        assert np.array_equal(ds.read_frames(video, subset), v["images"][[2, 0]])
    video = ds.videos()[0]
    _raises(lambda: ds.read_frames(video, ["99999"]), "99999.jpg", video)


def test_mevis_masks(mevis):
    info, ds = mevis
    for expr in ds:
        truth = info["instance_masks"][(expr.video, expr.exp_id)]
        inst = ds.instance_masks(expr)
        assert inst.dtype == bool and inst.shape == truth.shape == (len(expr.anno_ids), len(expr.frames),
                                                                    *ds.frame_size(expr.video))
        assert np.array_equal(inst, truth)
        assert np.array_equal(ds.target_masks(expr), info["target_masks"][(expr.video, expr.exp_id)])
    multi = next(e for e in ds if len(e.anno_ids) == 2)
    inst = ds.instance_masks(multi)
    assert not np.array_equal(inst[0], inst[1])  # two instances, not merged
    assert np.array_equal(ds.target_masks(multi), inst[0] | inst[1])
    absent = next(e for e in ds if e.raw_text == "Bird that leaves")
    inst = ds.instance_masks(absent)
    assert not inst[0, 1].any() and not inst[0, 3].any() and inst[0, 0].any()
    sub = ds.instance_masks(absent, [absent.frames[3], absent.frames[0]])
    assert np.array_equal(sub, inst[:, [3, 0]])
    assert np.array_equal(ds.target_masks(absent, [absent.frames[1]]), inst[0, [1]])


def test_mevis_valid_has_no_masks(tmp_path):
    info = write_mevis(tmp_path, "valid")
    assert not (tmp_path / "valid" / "mask_dict.json").exists()
    ds = MeViS(tmp_path, "valid")
    assert not ds.has_masks
    assert _listing(ds) == _expected(info["expressions"])
    assert all(e.obj_ids == () and e.anno_ids == () for e in ds)
    video = ds.videos()[0]
    assert np.array_equal(ds.read_frames(video), info["videos"][video]["images"])
    _raises(lambda: ds.instance_masks(ds[0]), ds.meta_path, ds[0].video, "no ground-truth")
    _raises(lambda: ds.target_masks(ds[0]), "valid")


def test_mevis_train_split_and_unknown_keys(tmp_path):
    info = write_mevis(tmp_path, "train", seed=3)
    meta = tmp_path / "train" / "meta_expressions.json"

    def add_keys(data):
        for v in data["videos"].values():
            v["vid_extra"] = 1
            for e in v["expressions"].values():
                e["audio"] = "x.wav"
    _edit_json(meta, add_keys)
    ds = MeViS(tmp_path, "train")
    assert _listing(ds) == _expected(info["expressions"])
    assert np.array_equal(ds.instance_masks(ds[1]), info["instance_masks"][(ds[1].video, ds[1].exp_id)])


def test_mevis_no_target_expression(tmp_path):
    info = write_mevis(tmp_path, "valid_u")
    video = min(info["videos"])

    def add(data):
        data["videos"][video]["expressions"]["9"] = {"exp": "nothing moves", "obj_id": [], "anno_id": []}
    _edit_json(tmp_path / "valid_u" / "meta_expressions.json", add)
    ds = MeViS(tmp_path, "valid_u")
    expr = ds.video_expressions(video)[-1]
    assert expr.exp_id == "9" and expr.anno_ids == ()
    t = len(info["videos"][video]["frames"])
    assert ds.instance_masks(expr).shape == (0, t, *info["videos"][video]["size"])
    target = ds.target_masks(expr)
    assert target.shape == (t, *info["videos"][video]["size"]) and not target.any()


def test_mevis_mask_dict_is_loaded_lazily_once(tmp_path, monkeypatch):
    write_mevis(tmp_path, "valid_u")
    ds = MeViS(tmp_path, "valid_u")
    assert ds._mask_dict is None  # not read by the constructor
    import ssa_rvos.data.mevis as mevis_module

    calls = []
    real = mevis_module.read_json
    monkeypatch.setattr(mevis_module, "read_json", lambda *a, **k: calls.append(a) or real(*a, **k))
    for expr in ds:
        ds.instance_masks(expr)
    assert len(calls) == 1


def test_mevis_construction_errors(tmp_path):
    _raises(lambda: MeViS(tmp_path / "missing", "valid_u"), tmp_path / "missing", "folder not found")
    write_mevis(tmp_path, "valid_u")
    _raises(lambda: MeViS(tmp_path, "test"), tmp_path, "'test'", "valid_u")
    _raises(lambda: MeViS(tmp_path, "train"), tmp_path / "train", "folder not found")
    meta = tmp_path / "valid_u" / "meta_expressions.json"
    original = meta.read_text()

    meta.write_text(original[:-7])
    _raises(lambda: MeViS(tmp_path, "valid_u"), meta, "malformed JSON at line 1 column")
    meta.unlink()
    _raises(lambda: MeViS(tmp_path, "valid_u"), meta, "not found")
    meta.write_text(original)
    masks = tmp_path / "valid_u" / "mask_dict.json"
    masks.rename(masks.with_suffix(".bak"))
    _raises(lambda: MeViS(tmp_path, "valid_u"), masks, "not found")
    masks.with_suffix(".bak").rename(masks)

    video = sorted(json.loads(original)["videos"])[1]
    _edit_json(meta, lambda d: d["videos"][video]["expressions"]["1"].pop("exp"))
    _raises(lambda: MeViS(tmp_path, "valid_u"), meta, video, "expression 1", "'exp'")
    meta.write_text(original)
    _edit_json(meta, lambda d: d["videos"][video]["expressions"]["2"].pop("anno_id"))
    _raises(lambda: MeViS(tmp_path, "valid_u"), meta, video, "expression 2", "anno_id")
    meta.write_text(original)
    _edit_json(meta, lambda d: d["videos"][video]["expressions"]["0"].update(obj_id="0"))
    _raises(lambda: MeViS(tmp_path, "valid_u"), meta, video, "expression 0", "obj_id")
    meta.write_text(original)
    _edit_json(meta, lambda d: d["videos"][video].pop("frames"))
    _raises(lambda: MeViS(tmp_path, "valid_u"), meta, video, "'frames'")
    meta.write_text(original)
    _edit_json(meta, lambda d: d.update(videos=[]))
    _raises(lambda: MeViS(tmp_path, "valid_u"), meta, "'videos'")
    meta.write_text(original)


def test_mevis_frames_must_agree_with_disk(tmp_path):
    info = write_mevis(tmp_path, "valid_u")
    video = min(info["videos"])
    video_dir = tmp_path / "valid_u" / "JPEGImages" / video
    (video_dir / "00002.jpg").rename(tmp_path / "moved.jpg")
    _raises(lambda: MeViS(tmp_path, "valid_u"), "meta_expressions.json", video, "'00002'", video_dir / "00002.jpg")
    (tmp_path / "moved.jpg").rename(video_dir / "00002.jpg")
    Image.new("RGB", (32, 24)).save(video_dir / "00042.jpg")
    _raises(lambda: MeViS(tmp_path, "valid_u"), "meta_expressions.json", video, "'00042'", "not list")
    (video_dir / "00042.jpg").unlink()
    (video_dir / "._00001.jpg").write_bytes(b"AppleDouble")  # hidden files are not frames
    assert MeViS(tmp_path, "valid_u").video_frames(video) == tuple(info["videos"][video]["frames"])
    import shutil

    shutil.rmtree(video_dir)
    _raises(lambda: MeViS(tmp_path, "valid_u"), video_dir, "video folder not found")


def test_mevis_mask_dict_errors(tmp_path):
    info = write_mevis(tmp_path, "valid_u")
    masks = tmp_path / "valid_u" / "mask_dict.json"
    original = masks.read_text()
    multi = next(r for r in info["expressions"] if len(r["anno_ids"]) == 2)
    anno = multi["anno_ids"][1]

    _edit_json(masks, lambda d: d.pop(str(anno)))
    ds = MeViS(tmp_path, "valid_u")  # the constructor does not read mask_dict.json
    _raises(lambda: ds.instance_masks(ds[0]), masks, f"anno_id {anno}", multi["video"],
            f"expression {multi['exp_id']}")
    masks.write_text(original)
    _edit_json(masks, lambda d: d[str(anno)].pop())
    ds = MeViS(tmp_path, "valid_u")
    _raises(lambda: ds.target_masks(ds[0]), masks, f"anno_id {anno} has", multi["video"],
            f"expression {multi['exp_id']}")
    masks.write_text(original)
    masks.write_text(original[:50])
    ds = MeViS(tmp_path, "valid_u")
    _raises(lambda: ds.instance_masks(ds[0]), masks, "malformed JSON")
    masks.write_text(original)

    # an RLE of another size than the frames: named lazily, with the frame
    def shrink(d):
        d[str(anno)][1] = rle_encode(np.ones((5, 6), bool))
    _edit_json(masks, shrink)
    ds = MeViS(tmp_path, "valid_u")
    expr = next(e for e in ds if e.exp_id == multi["exp_id"] and e.video == multi["video"])
    _raises(lambda: ds.instance_masks(expr), masks, f"anno_id {anno}", f"frame {expr.frames[1]!r}",
            multi["video"], f"expression {multi['exp_id']}", "5x6")


def test_read_frames_size_mismatch_and_missing_file(mevis):
    info, ds = mevis
    video = ds.videos()[0]
    frames = info["videos"][video]["frames"]
    path = ds.frame_path(video, frames[2])
    Image.new("RGB", (10, 12)).save(path, format="JPEG")
    _raises(lambda: ds.read_frames(video), path, video, "12x10")
    path.unlink()
    _raises(lambda: ds.read_frames(video), path, video, "not found")


# ------------------------------------------------------------------------------------------ Ref-YouTube-VOS

@pytest.fixture
def ytvos(tmp_path):
    return write_ytvos(tmp_path / "ytvos")


def test_ytvos_train(ytvos):
    info = ytvos["train"]
    ds = RefYouTubeVOS(info["root"], "train")
    assert ds.name == "ytvos" and ds.has_masks
    assert _listing(ds) == _expected(info["expressions"])
    assert {e.frames for e in ds} == {("00000", "00005", "00010", "00015"), ("00000", "00005", "00010")}
    for video, v in info["videos"].items():
        assert np.array_equal(ds.read_frames(video), v["images"])
    for expr in ds:
        inst = ds.instance_masks(expr)
        assert inst.shape == (1, len(expr.frames), 24, 32)
        assert np.array_equal(inst, info["instance_masks"][(expr.video, expr.exp_id)])
        assert np.array_equal(ds.target_masks(expr), info["target_masks"][(expr.video, expr.exp_id)])
    second = next(e for e in ds if e.obj_ids == (2,))
    assert not ds.target_masks(second)[1].any()  # absent from frame 1
    labels = info["labels"][second.video]
    assert np.array_equal(ds.target_masks(second), labels == 2)


def test_ytvos_valid_is_valid_minus_test(ytvos):
    info = ytvos["valid"]
    ds = RefYouTubeVOS(info["root"], "valid")
    assert not ds.has_masks
    assert _listing(ds) == _expected(info["expressions"])
    assert not set(ytvos["test_videos"]) & set(ds.videos())
    assert ds.videos() == sorted(info["videos"])
    for video, v in info["videos"].items():
        assert np.array_equal(ds.read_frames(video), v["images"])
    _raises(lambda: ds.instance_masks(ds[0]), "meta_expressions.json", ds[0].video, "no ground-truth")

    test_meta = info["root"] / "meta_expressions" / "test" / "meta_expressions.json"
    test_meta.rename(test_meta.with_suffix(".bak"))
    _raises(lambda: RefYouTubeVOS(info["root"], "valid"), test_meta, "not found")
    test_meta.with_suffix(".bak").rename(test_meta)


def test_ytvos_frames_from_disk(ytvos):
    info = ytvos["valid"]
    meta = info["root"] / "meta_expressions" / "valid" / "meta_expressions.json"
    original = meta.read_text()
    _edit_json(meta, lambda d: [v.pop("frames") for v in d["videos"].values()])
    ds = RefYouTubeVOS(info["root"], "valid")
    assert _listing(ds) == _expected(info["expressions"])
    meta.write_text(original)
    video = sorted(info["videos"])[1]
    _edit_json(meta, lambda d: d["videos"][video]["frames"].append("00100"))
    _raises(lambda: RefYouTubeVOS(info["root"], "valid"), meta, video, "'00100'")


def test_ytvos_errors(ytvos):
    root = ytvos["train"]["root"]
    _raises(lambda: RefYouTubeVOS(root, "test"), root, "'test'")
    _raises(lambda: RefYouTubeVOS(root.parent / "nowhere", "train"), root.parent / "nowhere")
    meta = root / "meta_expressions" / "train" / "meta_expressions.json"
    original = meta.read_text()
    video = max(ytvos["train"]["videos"], key=lambda v: len(ytvos["train"]["videos"][v]["frames"]))  # 3 expressions
    _edit_json(meta, lambda d: d["videos"][video]["expressions"]["1"].pop("obj_id"))
    _raises(lambda: RefYouTubeVOS(root, "train"), meta, video, "expression 1", "obj_id")
    meta.write_text(original)
    _edit_json(meta, lambda d: d["videos"][video]["expressions"]["2"].update(obj_id="two"))
    _raises(lambda: RefYouTubeVOS(root, "train"), meta, video, "expression 2", "'two'")
    meta.write_text(original)
    meta.write_text(original.replace('"expressions"', '"expressions" "', 1))
    _raises(lambda: RefYouTubeVOS(root, "train"), meta, "malformed JSON at line 1 column")
    meta.write_text(original)
    annotations = root / "train" / "Annotations"
    annotations.rename(root / "train" / "Annotations.bak")
    _raises(lambda: RefYouTubeVOS(root, "train"), annotations, "folder not found")
    (root / "train" / "Annotations.bak").rename(annotations)

    ds = RefYouTubeVOS(root, "train")
    expr = ds.video_expressions(video)[2]
    png = annotations / video / f"{expr.frames[2]}.png"
    write_label_png(png, np.zeros((5, 5), np.uint8))
    _raises(lambda: ds.instance_masks(expr), png, video, f"frame {expr.frames[2]!r}", "expression 2", "5x5")
    png.unlink()
    _raises(lambda: ds.instance_masks(expr), png, "not found")


# ----------------------------------------------------------------------------------------------- Ref-DAVIS17

@pytest.fixture
def davis(tmp_path):
    return write_davis(tmp_path / "davis")


@pytest.mark.parametrize("split", ["train", "valid"])
def test_davis(davis, split):
    info = davis[split]
    ds = RefDAVIS17(info["root"], split)
    assert ds.name == "davis" and ds.has_masks
    assert _listing(ds) == _expected(info["expressions"])
    for video, v in info["videos"].items():
        assert np.array_equal(ds.read_frames(video), v["images"])
        assert ds.objects(video) == info["objects"][video]
        maps = ds.label_maps(video)
        assert maps.dtype == np.uint8 and np.array_equal(maps, info["labels"][video])
        exprs = ds.video_expressions(video)
        assert len(exprs) == 4 * len(info["objects"][video])
        assert [ds.annotator(e) for e in exprs] == [0, 1, 2, 3] * len(info["objects"][video])
        for e in exprs:
            assert e.obj_ids == (info["objects"][video][int(e.exp_id) // 4],)
    for expr in ds:
        assert np.array_equal(ds.instance_masks(expr), info["instance_masks"][(expr.video, expr.exp_id)])


def test_davis_void_and_errors(davis):
    info = davis["valid"]
    ds = RefDAVIS17(info["root"], "valid")
    video = next(v for v, objs in info["objects"].items() if len(objs) == 2)
    maps = ds.label_maps(video)
    assert (maps == 255).any()  # void is kept in the raw label maps
    for expr in ds.video_expressions(video):
        assert not ds.target_masks(expr)[maps == 255].any()  # ... and is never an object
    assert np.array_equal(ds.label_maps(video, [ds.video_frames(video)[1]]), maps[[1]])
    meta = info["root"] / "meta_expressions" / "valid" / "meta_expressions.json"

    def rename(d):
        d["videos"][video]["expressions"]["x1"] = d["videos"][video]["expressions"].pop("1")
    _edit_json(meta, rename)
    _raises(lambda: RefDAVIS17(info["root"], "valid"), meta, video, "expression x1")


# --------------------------------------------------------------------------------------------- RefCOCO/+/g

@pytest.mark.parametrize("dataset,split_by", [("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd"),
                                              ("refcocog", "google")])
def test_refcoco_samples(tmp_path, dataset, split_by):
    info = write_refcoco(tmp_path, dataset, split_by)
    for split, samples in info["samples"].items():
        ds = RefCOCO(tmp_path, dataset, split_by, split)
        assert ds.name == dataset and ds.split == split and ds.has_masks
        # one sample per (ref, sentence), in refs order, with the "raw" sentence
        assert [(e.video, e.exp_id, e.raw_text, e.text) for e in ds] == \
            [(s["video"], s["exp_id"], s["raw"], s["text"]) for s in samples]
        for expr, s in zip(ds, samples):
            assert expr.frames == (expr.video,) and expr.obj_ids == expr.anno_ids == (s["ann_id"],)
            assert ds.ref_id(expr) == s["ref_id"]
            assert ds.frame_size(expr.video) == info["sizes"][expr.video]
            frames = ds.read_frames(expr.video)
            assert np.array_equal(frames, info["images"][expr.video][None])
            inst = ds.instance_masks(expr)
            assert inst.shape == (1, 1, *info["sizes"][expr.video])
            assert np.array_equal(inst[0, 0], info["masks"][s["ann_id"]])
            assert np.array_equal(ds.target_masks(expr), inst[0])
        assert ds.skipped_refs == ([4] if split == "train" else [])


def test_refcoco_segmentation_kinds(tmp_path):
    info = write_refcoco(tmp_path)
    train = RefCOCO(tmp_path, "refcoco", "unc", "train")
    assert [e.text for e in train] == ["man on the left!", "guy in red shirt", "the brown dog"]  # not "sent"
    two_parts = train.target_masks(train[0])[0]
    assert two_parts[5, 5] and two_parts[18, 15] and not two_parts[13, 5]  # both polygons, merged
    rle = train.target_masks(train[2])[0]
    assert np.array_equal(rle, info["masks"][102]) and rle[4, 21] and not rle[6, 23]
    val = RefCOCO(tmp_path, "refcoco", "unc", "val")
    crowd = val.target_masks(val[0])[0]  # uncompressed RLE (list counts)
    assert crowd.shape == (30, 20) and crowd[10:25, 2:9].all() and crowd.sum() == 15 * 7
    assert [e.exp_id for e in val] == ["3", "4"] and val.videos() == ["COCO_train2014_000000000025"]


def test_refcoco_errors(tmp_path):
    write_refcoco(tmp_path)
    refs = tmp_path / "refcoco" / "refs(unc).p"
    instances = tmp_path / "refcoco" / "instances.json"
    _raises(lambda: RefCOCO(tmp_path, "refcoco", "unc", "testC"), refs, "testA", "testB", "train", "val")
    _raises(lambda: RefCOCO(tmp_path, "refclef", "unc", "train"), "refclef")
    _raises(lambda: RefCOCO(tmp_path, "refcoco", "google", "train"), tmp_path / "refcoco" / "refs(google).p")
    _raises(lambda: RefCOCO(tmp_path / "none", "refcoco", "unc", "train"), tmp_path / "none")

    original = instances.read_text()
    _edit_json(instances, lambda d: d["annotations"].pop(0))
    _raises(lambda: RefCOCO(tmp_path, "refcoco", "unc", "train"), refs, "ref 0", "annotation 101", instances)
    instances.write_text(original[:100])
    _raises(lambda: RefCOCO(tmp_path, "refcoco", "unc", "train"), instances, "malformed JSON")

    def wrong_size(d):
        ann = next(a for a in d["annotations"] if a["id"] == 102)
        ann["segmentation"] = rle_encode(np.ones((4, 4), bool))
    instances.write_text(original)
    _edit_json(instances, wrong_size)
    ds = RefCOCO(tmp_path, "refcoco", "unc", "train")
    _raises(lambda: ds.instance_masks(ds[2]), instances, "annotation 102", ds[2].video, "expression 2")

    def wrong_image_size(d):
        d["images"][0]["height"] = 40
    instances.write_text(original)
    _edit_json(instances, wrong_image_size)
    ds = RefCOCO(tmp_path, "refcoco", "unc", "train")
    image = tmp_path / "train2014" / "COCO_train2014_000000000009.jpg"
    _raises(lambda: ds.read_frames(ds[0].video), image, ds[0].video, "40x32")
    instances.write_text(original)

    loaded = load_refs(refs)
    loaded[1].pop("sentences")
    refs.write_bytes(pickle.dumps(loaded, protocol=2))
    _raises(lambda: RefCOCO(tmp_path, "refcoco", "unc", "train"), refs, "ref 1", "'sentences'")
    refs.write_bytes(pickle.dumps(loaded[:1], protocol=2)[:-5])
    _raises(lambda: RefCOCO(tmp_path, "refcoco", "unc", "train"), refs, "cannot read")


def test_refs_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    malicious = tmp_path / "refcoco" / "refs(unc).p"
    write_refcoco(tmp_path)

    class Exploit:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    malicious.write_bytes(pickle.dumps([{"ref_id": 0, "payload": Exploit()}], protocol=2))
    assert b"system" in malicious.read_bytes()
    message = _raises(lambda: RefCOCO(tmp_path, "refcoco", "unc", "train"), malicious, "system")
    assert "refusing" in message and not marker.exists()
    _raises(lambda: load_refs(malicious), malicious)
    # the protocol-0 spelling of a global, and builtins other than set/frozenset, are refused too
    malicious.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    _raises(lambda: load_refs(malicious), malicious, "builtins.eval")
    malicious.write_bytes(b"c__builtin__\ngetattr\n.")
    _raises(lambda: load_refs(malicious), malicious, "__builtin__.getattr")


def test_refs_unpickler_reads_python2_data(tmp_path):
    # what Python 2 writes: byte strings (SHORT_BINSTRING) and sets as __builtin__.set
    py2 = (b"\x80\x02]q\x00}q\x01(U\x03rawq\x02U\x05Hello"
           b"U\x04tagsq\x03c__builtin__\nset\nq\x04]q\x05K\x01a\x85Rq\x06ua.")
    path = tmp_path / "refs(unc).p"
    path.write_bytes(py2)
    assert load_refs(path) == [{"raw": "Hello", "tags": {1}}]
    for protocol in (0, 2, 4):
        path.write_bytes(pickle.dumps([{"raw": "café", "sent_ids": [1, 2], "x": 1.5, "y": None}], protocol=protocol))
        assert load_refs(path) == [{"raw": "café", "sent_ids": [1, 2], "x": 1.5, "y": None}]
    path.write_bytes(pickle.dumps({"not": "a list"}))
    _raises(lambda: load_refs(path), path, "list")
