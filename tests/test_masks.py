import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssa_rvos.cli import main
from ssa_rvos.data.expressions import DatasetError
from ssa_rvos.data.masks import (
    DAVIS_PALETTE,
    mask_dict_to_pngs,
    pngs_to_mask_dict,
    read_label_png,
    read_mask_png,
    rle_decode,
    rle_encode,
    write_label_png,
    write_mask_png,
)


def _shapes():
    rng = np.random.default_rng(0)
    yield np.zeros((5, 7), bool)
    yield np.ones((1, 1), bool)
    yield np.ones((3, 500), bool)
    yield rng.random((31, 17)) > 0.5
    m = np.zeros((40, 60), bool)
    m[5:30, 10:50] = True
    m[10:20, 20:30] = False  # a hole
    yield m


@pytest.mark.parametrize("mask", list(_shapes()), ids=lambda m: f"{m.shape}")
def test_rle_round_trip(mask):
    rle = rle_encode(mask)
    assert rle["size"] == list(mask.shape) and isinstance(rle["counts"], str)
    json.dumps(rle)  # JSON-ready
    out = rle_decode(rle)
    assert out.dtype == bool and np.array_equal(out, mask)
    assert np.array_equal(rle_decode({"size": rle["size"], "counts": rle["counts"].encode()}), mask)


def test_rle_decodes_uncompressed_counts_column_major():
    # COCO counts run down the columns: 2 zeros, 3 ones, 1 zero of a 3x2 mask.
    out = rle_decode({"size": [3, 2], "counts": [2, 3, 1]})
    assert np.array_equal(out, np.array([[0, 1], [0, 1], [1, 0]], bool))
    with pytest.raises(ValueError, match="sum"):
        rle_decode({"size": [3, 2], "counts": [2, 3]})


def test_known_rle_string():
    # A 2x2 mask with only the bottom-right pixel: runs 3 zeros then 1 one -> counts "31".
    mask = np.array([[0, 0], [0, 1]], bool)
    assert rle_encode(mask)["counts"] == "31"


def test_palette_png_round_trip_keeps_indices(tmp_path):
    labels = np.array([[0, 1, 2], [255, 3, 0]], np.uint8)
    write_label_png(tmp_path / "a.png", labels)
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode == "P"
        assert im.getpalette()[3:6] == [128, 0, 0]  # DAVIS colour of object 1
    assert np.array_equal(read_label_png(tmp_path / "a.png"), labels)
    assert DAVIS_PALETTE[6:9] == [0, 128, 0]


def test_mask_png_is_0_255_and_any_nonzero_reads_as_foreground(tmp_path):
    mask = np.array([[True, False], [False, True]])
    write_mask_png(tmp_path / "m.png", mask)
    assert set(np.unique(np.array(Image.open(tmp_path / "m.png"))).tolist()) == {0, 255}
    Image.fromarray(np.array([[0, 1], [7, 0]], np.uint8)).save(tmp_path / "n.png")
    assert np.array_equal(read_mask_png(tmp_path / "n.png"), np.array([[0, 1], [1, 0]], bool))


def test_unreadable_label_png_names_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="bad.png"):
        read_label_png(tmp_path / "bad.png")
    with pytest.raises(DatasetError, match="missing.png"):
        read_label_png(tmp_path / "missing.png")
    Image.new("RGB", (2, 2)).save(tmp_path / "rgb.png")
    with pytest.raises(DatasetError, match="rgb.png.*mode RGB"):
        read_label_png(tmp_path / "rgb.png")


def _mevis_meta(tmp_path):
    a = np.zeros((6, 8), bool)
    a[1:3, 2:5] = True
    b = np.zeros((6, 8), bool)
    b[4:6, 0:2] = True
    meta = {"videos": {"vid": {"frames": ["00000", "00001"], "expressions": {
        "0": {"exp": "left thing", "obj_id": [0], "anno_id": [10]},
        "1": {"exp": "both", "obj_id": [0, 1], "anno_id": [10, 11]},
        "2": {"exp": "nothing visible", "obj_id": [2], "anno_id": [12]},
    }}}}
    mask_dict = {"10": [rle_encode(a), None], "11": [rle_encode(b), rle_encode(b)], "12": [None, None]}
    (tmp_path / "meta_expressions.json").write_text(json.dumps(meta))
    (tmp_path / "mask_dict.json").write_text(json.dumps(mask_dict))
    return a, b


def test_mask_dict_to_pngs_writes_each_expression_union(tmp_path):
    a, b = _mevis_meta(tmp_path)
    n = mask_dict_to_pngs(tmp_path / "meta_expressions.json", tmp_path / "mask_dict.json", tmp_path / "out")
    assert n == 6
    assert np.array_equal(read_mask_png(tmp_path / "out/vid/0/00000.png"), a)
    assert not read_mask_png(tmp_path / "out/vid/0/00001.png").any()
    assert np.array_equal(read_mask_png(tmp_path / "out/vid/1/00000.png"), a | b)
    assert np.array_equal(read_mask_png(tmp_path / "out/vid/1/00001.png"), b)
    assert read_mask_png(tmp_path / "out/vid/2/00000.png").shape == (6, 8)


def test_pngs_to_mask_dict_round_trip(tmp_path):
    a, b = _mevis_meta(tmp_path)
    mask_dict_to_pngs(tmp_path / "meta_expressions.json", tmp_path / "mask_dict.json", tmp_path / "out")
    meta, mask_dict = pngs_to_mask_dict(tmp_path / "out", tmp_path / "meta_expressions.json")
    exps = meta["videos"]["vid"]["expressions"]
    assert list(exps) == ["0", "1", "2"] and exps["1"]["exp"] == "both"
    assert meta["videos"]["vid"]["frames"] == ["00000", "00001"]
    union_1 = mask_dict[str(exps["1"]["anno_id"][0])]
    assert np.array_equal(rle_decode(union_1[0]), a | b)
    assert mask_dict[str(exps["0"]["anno_id"][0])][1] is None  # empty frame -> null, as MeViS writes absence
    assert mask_dict[str(exps["2"]["anno_id"][0])] == [None, None]


def test_mask_dict_errors_name_file_video_and_expression(tmp_path):
    _mevis_meta(tmp_path)
    md = json.loads((tmp_path / "mask_dict.json").read_text())
    md["10"] = md["10"][:1]
    (tmp_path / "mask_dict.json").write_text(json.dumps(md))
    with pytest.raises(DatasetError, match=r"mask_dict.json: anno_id 10 has 1 masks.*'vid'.*expression 0"):
        mask_dict_to_pngs(tmp_path / "meta_expressions.json", tmp_path / "mask_dict.json", tmp_path / "out")
    (tmp_path / "mask_dict.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"mask_dict.json: malformed JSON at line 1"):
        mask_dict_to_pngs(tmp_path / "meta_expressions.json", tmp_path / "mask_dict.json", tmp_path / "out")


def test_masks_command_both_directions(tmp_path, capsys):
    a, b = _mevis_meta(tmp_path)
    assert main(["masks", "to-png", str(tmp_path / "mask_dict.json"), "-o", str(tmp_path / "pngs")]) == 0
    assert np.array_equal(read_mask_png(tmp_path / "pngs/vid/1/00000.png"), a | b)
    assert main(["masks", "to-json", str(tmp_path / "pngs"), "-o", str(tmp_path / "back.json"),
                 "--meta-output", str(tmp_path / "back_meta.json")]) == 0
    back = json.loads((tmp_path / "back.json").read_text())
    back_meta = json.loads((tmp_path / "back_meta.json").read_text())
    anno = back_meta["videos"]["vid"]["expressions"]["1"]["anno_id"][0]
    assert np.array_equal(rle_decode(back[str(anno)][1]), b)
    capsys.readouterr()
    assert main(["masks", "to-json", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.json")]) == 1
    err = capsys.readouterr().err
    assert "nowhere" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main(["masks", "to-json", str(tmp_path / "pngs"), "-o", str(tmp_path / "x.txt")]) == 2
    assert not (tmp_path / "x.json").exists()


def test_atomic_writes_are_readable_by_all_and_leave_nothing_on_failure(tmp_path):
    import stat

    from ssa_rvos.fileio import atomic_write

    write_mask_png(tmp_path / "m.png", np.ones((3, 4), dtype=bool))
    assert stat.S_IMODE((tmp_path / "m.png").stat().st_mode) == 0o644  # not mkstemp's 0600
    (tmp_path / "keep.txt").write_text("old")

    def failing(tmp):
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "keep.txt", failing)
    assert (tmp_path / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "m.png"]
