"""Hostile and broken inputs: dataset names that would escape the output folder, RLEs that do not cover
their frame, invisible sentences, damaged model files, SIGTERM. Each ends in one line naming the file
(and key) at fault and what was expected, writes nothing outside the output folder, and loses nothing."""

import json
import os
import pickle
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from datagen import write_davis, write_mevis, write_refcoco, write_ytvos

from ssa_rvos.cli import main
from ssa_rvos.data import MeViS, RefCOCO, RefDAVIS17, RefYouTubeVOS
from ssa_rvos.data.expressions import DatasetError, Expression, VideoExpressionDataset, safe_name
from ssa_rvos.data.masks import rle_decode, rle_encode

# every form of a name that is not one safe path component
ESCAPES = ["../outside", "./../../X", "/abs/path", "a/b", "a\\b", ".", "..", "", "a\x00b", "tab\there", "line\nbreak"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "%|" not in line]  # progress bars aside
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


# ------------------------------------------------------------------------------------- path components


@pytest.mark.parametrize("name", ESCAPES + ["ok name", "00001", "ünïcode"])
def test_safe_name_accepts_one_component_only(name):
    if name in ESCAPES:
        with pytest.raises(DatasetError, match=r"meta\.json: video .* is not a safe name"):
            safe_name(name, where="meta.json", what="video")
    else:
        assert safe_name(name, where="meta.json", what="video") == name


def _rename_key(d: dict, old: str, new: str) -> None:
    d[new] = d.pop(old)


@pytest.mark.parametrize("key", ["video", "exp_id", "frame"])
@pytest.mark.parametrize("name", ESCAPES)
def test_mevis_reader_refuses_unsafe_names(tmp_path, key, name):
    write_mevis(tmp_path, "valid")
    meta_path = tmp_path / "valid" / "meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    video = sorted(meta["videos"])[0]
    entry = meta["videos"][video]
    if key == "video":
        _rename_key(meta["videos"], video, name)
    elif key == "exp_id":
        _rename_key(entry["expressions"], sorted(entry["expressions"])[0], name)
    else:
        entry["frames"][0] = name
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="is not a safe name") as info:
        MeViS(tmp_path, "valid")
    assert str(meta_path) in str(info.value)


@pytest.mark.parametrize("reader, writer", [(RefYouTubeVOS, write_ytvos), (RefDAVIS17, write_davis)])
@pytest.mark.parametrize("key", ["video", "exp_id"])
@pytest.mark.parametrize("name", ["../outside", "/abs", ".", ""])
def test_ytvos_and_davis_readers_refuse_unsafe_names(tmp_path, reader, writer, key, name):
    writer(tmp_path)
    meta_path = tmp_path / "meta_expressions" / "valid" / "meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    video = sorted(v for v in meta["videos"] if (tmp_path / "valid" / "JPEGImages" / v).is_dir())[0]
    if key == "video":
        _rename_key(meta["videos"], video, name)
    else:
        exps = meta["videos"][video]["expressions"]
        _rename_key(exps, sorted(exps)[0], name)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="is not a safe name") as info:
        reader(tmp_path, "valid")
    assert str(meta_path) in str(info.value)


@pytest.mark.parametrize("name", ["../../x", "/etc/x", ".."])
def test_refcoco_reader_refuses_an_unsafe_sentence_id(tmp_path, name):
    info = write_refcoco(tmp_path)
    refs = info["refs"]
    refs[0]["sentences"][0]["sent_id"] = name
    with open(tmp_path / "refcoco" / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    with pytest.raises(DatasetError, match="is not a safe name"):
        RefCOCO(tmp_path, "refcoco", "unc", refs[0]["split"])


def test_every_reader_checks_names_in_the_base_class(tmp_path):
    """The check in VideoExpressionDataset covers the readers whose names come from elsewhere (A2D and
    JHMDB read theirs from CSV files and folders)."""

    class Reader(VideoExpressionDataset):
        name = "test"

        def __init__(self, video, exp_id, frame):
            super().__init__(tmp_path, "x")
            self._set_expressions([Expression(dataset="test", split="x", video=video, exp_id=exp_id, text="t",
                                              raw_text="t", frames=(frame,), obj_ids=())], {video: (frame,)})

    Reader("v", "0", "00000")
    for args in (("../v", "0", "00000"), ("v", "../0", "00000"), ("v", "0", "/00000")):
        with pytest.raises(DatasetError, match="is not a safe name"):
            Reader(*args)


def test_predict_on_a_hostile_split_writes_nothing_anywhere(tmp_path, capsys):
    from ssa_rvos.pretrained import resolve_weights

    root = tmp_path / "data"
    write_mevis(root, "valid")
    meta_path = root / "valid" / "meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    video = sorted(meta["videos"])[0]
    _rename_key(meta["videos"][video]["expressions"], "0", "./../../X")
    meta_path.write_text(json.dumps(meta))
    out = tmp_path / "a" / "b" / "pred"
    before = files_under(tmp_path)
    code = main(["predict", "--dataset", "mevis", "--root", str(root), "--split", "valid", "--model",
                 str(resolve_weights(None)), "-o", str(out)])
    line = one_error_line(capsys)
    assert code == 1 and str(meta_path) in line and "'./../../X' is not a safe name" in line
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("exp_id", ["/tmp/ssa-rvos-escape-test", "../../../../X", "."])
def test_masks_to_png_refuses_unsafe_names_before_writing(tmp_path, capsys, exp_id):
    write_mevis(tmp_path / "data", "valid_u")
    meta_path = tmp_path / "data" / "valid_u" / "meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    video = sorted(meta["videos"])[1]
    _rename_key(meta["videos"][video]["expressions"], "0", exp_id)
    meta_path.write_text(json.dumps(meta))
    out = tmp_path / "out"
    before = files_under(tmp_path)
    assert main(["masks", "to-png", str(tmp_path / "data" / "valid_u" / "mask_dict.json"), "-o", str(out)]) == 1
    assert "is not a safe name" in one_error_line(capsys)
    assert files_under(tmp_path) == before and not Path("/tmp/ssa-rvos-escape-test").exists()


# ------------------------------------------------------------------------------------------------- RLE


@pytest.mark.parametrize("counts", [5, None, [1, "3"], {"a": 1}])
def test_masks_to_png_names_rle_counts_of_the_wrong_type(tmp_path, capsys, counts):
    write_mevis(tmp_path / "data", "valid_u")
    path = tmp_path / "data" / "valid_u" / "mask_dict.json"
    masks = json.loads(path.read_text())
    anno = sorted(masks)[0]
    masks[anno][1] = {"size": masks[anno][1]["size"], "counts": counts}
    path.write_text(json.dumps(masks))
    out = tmp_path / "out"
    assert main(["masks", "to-png", str(path), "-o", str(out)]) == 1
    line = one_error_line(capsys)
    assert str(path) in line and f"anno_id {anno}" in line and "counts" in line
    assert not out.exists()


def test_an_rle_that_covers_less_than_its_size_is_refused():
    short = rle_encode(np.zeros((8, 8), dtype=bool))
    short["size"] = [512, 512]
    with pytest.raises(ValueError, match=r"RLE counts sum to 64, expected 512x512"):
        rle_decode(short)
    with pytest.raises(ValueError, match="counts sum to 3"):
        rle_decode({"size": [2, 2], "counts": [1, 2]})
    for bad, needle in (({"size": [2, 2], "counts": 5}, "must be a string or a list"),
                        ({"size": [2, -2], "counts": "0"}, "two non-negative integers"),
                        ({"size": [2, 2], "counts": "é"}, "not ASCII"),
                        ({"size": [2, 2], "counts": [1, "3"]}, "non-negative integers")):
        with pytest.raises(ValueError, match=needle):
            rle_decode(bad)
    rng = np.random.default_rng(0)
    for _ in range(50):  # every real RLE still decodes to its mask
        m = rng.random(tuple(rng.integers(1, 40, 2))) < rng.random()
        assert np.array_equal(rle_decode(rle_encode(m)), m)


def test_evaluate_refuses_ground_truth_with_a_short_rle(tmp_path, capsys):
    info = write_mevis(tmp_path / "data", "valid_u")
    path = tmp_path / "data" / "valid_u" / "mask_dict.json"
    masks = json.loads(path.read_text())
    anno = next(a for a, rles in masks.items() if any(rles))
    t = next(i for i, r in enumerate(masks[anno]) if r)
    h, w = masks[anno][t]["size"]
    short = rle_encode(np.zeros((2, 2), dtype=bool))
    masks[anno][t] = {"size": [h, w], "counts": short["counts"]}
    path.write_text(json.dumps(masks))
    pred = tmp_path / "pred"
    for e in info["expressions"]:
        (pred / e["video"] / e["exp_id"]).mkdir(parents=True)
    assert main(["evaluate", "--dataset", "mevis", "--root", str(tmp_path / "data"), "--predictions", str(pred)]) == 1
    line = one_error_line(capsys)
    assert str(path) in line and f"anno_id {anno}" in line and "counts sum to 4" in line


# ----------------------------------------------------------------------------------------- sentences


@pytest.mark.parametrize("text", ["\u200b\u200b", "\u2060\ufeff", "\u3000 \u00a0", "\u200e"])
def test_an_invisible_sentence_is_an_empty_one(segment_model, tmp_path, capsys, text):
    _, checkpoint = segment_model
    frames = tmp_path / "frames"
    frames.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(frames / "0.png")
    code = main(["segment", str(frames), "--text", text, "-o", str(tmp_path / "out"), "--model", str(checkpoint)])
    assert code == 2 and "an empty expression" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_a_long_sentence_is_shortened_in_the_summary(segment_model, tmp_path, capsys):
    _, checkpoint = segment_model
    frames = tmp_path / "frames"
    frames.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(frames / "0.png")
    text = "the cat " * 1250  # 10,000 characters
    assert main(["segment", str(frames), "--text", text, "-o", str(tmp_path / "out"), "--model", str(checkpoint),
                 "--quiet"]) == 0
    summary = capsys.readouterr().out.splitlines()[0]
    assert summary.startswith("[0] 'the cat the cat") and len(summary) < 200


# --------------------------------------------------------------------------------------- model files


def _damaged_models(tmp_path: Path, checkpoint: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a damaged copy of ``checkpoint``, what its error line must say)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(checkpoint), framework="pt") as f:
        meta = dict(f.metadata())
        state = {k: f.get_tensor(k) for k in f.keys()}
    from ssa_rvos.checkpoint import CONFIG_KEY as key

    config = json.loads(meta[key])
    first = sorted(k for k in state if state[k].is_floating_point() and state[k].dim() == 2)[0]

    def write(name, state=state, config=config):
        path = tmp_path / f"{name}.safetensors"
        save_file(state, str(path), metadata={**meta, key: json.dumps(config)})
        return path

    out = {}
    out["wrong shape"] = (write("shape", {**state, first: torch.zeros(3, 3)}), "of another shape")
    out["missing key"] = (write("missing", {k: v for k, v in state.items() if k != first}), "1 missing")
    out["extra key"] = (write("extra", {**state, "extra.weight": torch.zeros(2)}), "1 unexpected")
    out["wrong type"] = (write("type", config={**config, "hidden_dim": "wide"}), "model.hidden_dim")
    out["negative size"] = (write("negative", config={**config, "num_queries": -5}), "buildable model")
    out["huge"] = (write("huge", config={**config, "hidden_dim": 2**20}), "GiB of weights, more than")
    out["NaN"] = (write("nan", {**state, first: torch.full_like(state[first], float("nan"))}), "NaN or infinite")
    bad_json = tmp_path / "json.safetensors"
    save_file(state, str(bad_json), metadata={**meta, key: "{not json"})
    out["bad JSON"] = (bad_json, "not valid JSON")
    return out


def test_damaged_model_files_are_one_line_naming_the_file(segment_model, tmp_path, capsys):
    _, checkpoint = segment_model
    frames = tmp_path / "frames"
    frames.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(frames / "0.png")
    for what, (path, needle) in _damaged_models(tmp_path, checkpoint).items():
        code = main(["segment", str(frames), "--text", "a cat", "-o", str(tmp_path / "out"), "--model", str(path)])
        line = one_error_line(capsys)
        assert code == 1 and str(path) in line and needle in line, (what, line)
        assert not (tmp_path / "out").exists(), what


# -------------------------------------------------------------------------------------------- signals


def test_sigterm_cleans_up_like_ctrl_c(segment_model, tmp_path, capsys, monkeypatch):
    import ssa_rvos.outputs as outputs

    _, checkpoint = segment_model
    frames = tmp_path / "frames"
    frames.mkdir()
    from PIL import Image

    for i in range(6):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(frames / f"{i}.png")
    real, calls = outputs.write_mask_png, []

    def write_then_terminated(path, mask):
        calls.append(path)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # what `timeout` or a scheduler sends
        real(path, mask)

    monkeypatch.setattr(outputs, "write_mask_png", write_then_terminated)
    handler = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    code = main(["segment", str(frames), "--text", "a", "-o", str(out), "--model", str(checkpoint), "--overlay",
                 "--quiet"])
    assert code == 143 and capsys.readouterr().err.strip() == "terminated"
    assert not out.exists() and not list(tmp_path.glob(".out.*"))  # no staged set, partial folder or video left
    assert signal.getsignal(signal.SIGTERM) == handler  # the handler is the caller's again


def test_an_unexpected_error_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    import ssa_rvos.cli as cli

    def boom(args):
        raise KeyError("some internal key")

    monkeypatch.setattr(cli, "cmd_info", boom)
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["info"].set_defaults(func=boom)
    assert main(["info"]) == 1
    line = one_error_line(capsys)
    assert line.startswith("ssa-rvos info: error: KeyError: 'some internal key'") and "SSA_RVOS_TRACEBACK" in line


# -------------------------------------------------------------------------------- zips and big images


def _bomb_png(path: Path, side: int = 100_000) -> Path:
    """A tiny PNG whose header claims ``side`` x ``side`` pixels (CRC fixed, so only the size is wrong)."""
    import io
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    at = data.index(b"IHDR")
    data[at + 4:at + 12] = struct.pack(">II", side, side)
    data[at + 17:at + 21] = struct.pack(">I", zlib.crc32(bytes(data[at:at + 17])))
    path.write_bytes(bytes(data))
    return path


def _mask_png_bytes(size) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros(size, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _patch_entry(path: Path, name: str, *, method: int | None = None, encrypted: bool = False) -> None:
    """Set the compression method of entry ``name``, or its "encrypted" flag, in its local header and its
    central-directory record (zipfile itself writes neither)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as zf:
        offset = zf.getinfo(name).header_offset
    data = bytearray(path.read_bytes())
    central = data.find(b"PK\x01\x02")
    while central >= 0:
        n = struct.unpack("<H", data[central + 28:central + 30])[0]
        if data[central + 46:central + 46 + n].decode() == name:
            break
        central = data.find(b"PK\x01\x02", central + 4)
    for header, flags, comp in ((offset, 6, 8), (central, 8, 10)):
        if method is not None:
            data[header + comp:header + comp + 2] = struct.pack("<H", method)
        if encrypted:
            data[header + flags] |= 0x1
    path.write_bytes(bytes(data))


def test_submit_check_lists_broken_zip_entries_as_problems(tmp_path, capsys):
    import zipfile

    info = write_mevis(tmp_path / "data", "valid")
    entries = [(f"{e['video']}/{e['exp_id']}/{f}.png", tuple(info["videos"][e["video"]]["size"]))
               for e in info["expressions"] for f in e["frames"]]
    zpath = tmp_path / "sub.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_STORED) as zf:
        for k, (name, size) in enumerate(entries):
            if k == 2:  # declares far more bytes than a mask of the frame's size
                zf.writestr(zipfile.ZipInfo(name), b"\0" * (4 * size[0] * size[1] + 2**21),
                            compress_type=zipfile.ZIP_DEFLATED)
            else:
                zf.writestr(name, _mask_png_bytes(size))
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr(entries[4][0], _mask_png_bytes(entries[4][1]))
    # a bad CRC: one byte of entry 0's data flipped (stored, so the PNG bytes sit in the file as they are)
    data = bytearray(zpath.read_bytes())
    with zipfile.ZipFile(zpath) as zf:
        zi = zf.getinfo(entries[0][0])
    at = zi.header_offset + 30 + len(zi.filename) + len(zi.extra) + 20
    data[at] ^= 0xFF
    zpath.write_bytes(bytes(data))
    _patch_entry(zpath, entries[1][0], encrypted=True)
    _patch_entry(zpath, entries[3][0], method=99)  # a compression method Python does not have
    code = main(["submit", "--dataset", "mevis", "--root", str(tmp_path / "data"), "--check", str(zpath)])
    out = capsys.readouterr().out
    assert code == 1 and "Traceback" not in out
    assert f"{entries[0][0]}: cannot be read from the zip (Bad CRC-32" in out
    assert f"{entries[1][0]}: cannot be read from the zip" in out and "encrypted" in out
    assert f"{entries[2][0]}: declares" in out and "(not read)" in out
    assert f"{entries[3][0]}: cannot be read from the zip" in out and "compression method" in out
    assert f"duplicate entry {entries[4][0]} (2 times" in out


def test_a_decompression_bomb_png_is_one_line_naming_it(tmp_path, capsys, segment_model):
    _, checkpoint = segment_model
    frames = tmp_path / "frames"
    frames.mkdir()
    bomb = _bomb_png(frames / "00000.png")
    code = main(["segment", str(frames), "--text", "a cat", "-o", str(tmp_path / "out"), "--model", str(checkpoint)])
    line = one_error_line(capsys)
    assert code == 1 and str(bomb) in line and "not a readable image" in line

    info = write_mevis(tmp_path / "data", "valid_u")
    e = info["expressions"][0]
    pred = tmp_path / "pred" / e["video"] / e["exp_id"]
    pred.mkdir(parents=True)
    _bomb_png(pred / f"{e['frames'][0]}.png")
    assert main(["evaluate", "--dataset", "mevis", "--root", str(tmp_path / "data"), "--predictions",
                 str(tmp_path / "pred")]) == 1
    line = one_error_line(capsys)
    assert f"{e['frames'][0]}.png: not a readable image" in line and "exceeds limit" in line
    assert main(["masks", "to-json", str(tmp_path / "pred"), "-o", str(tmp_path / "m.json")]) == 1
    assert "not a readable image" in one_error_line(capsys) and not (tmp_path / "m.json").exists()


def test_convert_names_a_binary_clip_config(fixtures_dir, tmp_path, capsys):
    binary = tmp_path / "config.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    code = main(["convert", str(fixtures_dir / "official-tiny" / "official_tiny.pth"), "-o", str(tmp_path / "m.safetensors"),
                 "--clip-config", str(binary)])
    line = one_error_line(capsys)
    assert code == 2 and f"--clip-config {binary}: not a text file" in line and "codec" not in line


def test_convert_says_in_one_line_why_a_checkpoint_does_not_fit(fixtures_dir, tmp_path, capsys):
    import json as _json

    source = fixtures_dir / "official-tiny"
    ckpt = torch.load(source / "official_tiny.pth", map_location="cpu", weights_only=True)
    state = ckpt["model"]
    dropped = sorted(k for k in state if k.startswith("sem_seg_head.predictor."))[:2]
    for k in dropped:
        del state[k]
    state["some.new.module.weight"] = torch.zeros(2)
    torch.save(ckpt, tmp_path / "other.pth")
    clip_config = tmp_path / "clip.json"
    clip_config.write_text(_json.dumps(_json.loads((source / "meta.json").read_text())["clip_config"]))
    code = main(["convert", str(tmp_path / "other.pth"), "-o", str(tmp_path / "m.safetensors"), "--clip-model",
                 "convnext_tinyfix", "--clip-config", str(clip_config)])
    line = one_error_line(capsys)
    assert code == 1 and str(tmp_path / "other.pth") in line
    assert "1 of its keys map to nothing in our model (some.new.module.weight)" in line
    assert "2 of our model's keys are not in it" in line and not (tmp_path / "m.safetensors").exists()


# ------------------------------------------------------------------------------------------ orientation


def _jpeg_with_orientation(path: Path, image: np.ndarray, orientation: int | None) -> None:
    from PIL import Image

    im = Image.fromarray(image)
    if orientation is None:
        im.save(path, quality=95)
        return
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, quality=95, exif=exif.tobytes())


def test_exif_orientation_is_applied_so_masks_match_what_the_user_sees(segment_model, tmp_path, capsys):
    from ssa_rvos.data.masks import read_mask_png
    from ssa_rvos.videoio import VideoError, open_video

    _, checkpoint = segment_model
    stored = np.zeros((64, 96, 3), np.uint8)
    stored[:8, :16] = 255  # top-left as stored; a phone's "rotate 90 clockwise" (6) shows it top-right
    upright = tmp_path / "upright"
    upright.mkdir()
    for i in range(3):
        _jpeg_with_orientation(upright / f"{i}.jpg", stored, 6)
    video = open_video(upright)
    assert video.size == (96, 64)
    frame = next(video.frames()).image
    assert frame.shape == (96, 64, 3) and frame[:16, -8:].mean() > 200 and frame[:8, :16].mean() < 50
    assert main(["segment", str(upright), "--text", "a", "-o", str(tmp_path / "out"), "--model", str(checkpoint),
                 "--quiet"]) == 0
    assert read_mask_png(tmp_path / "out" / "0" / "0.png").shape == (96, 64)

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _jpeg_with_orientation(mixed / "0.jpg", stored, 6)
    _jpeg_with_orientation(mixed / "1.jpg", stored, None)  # the same pixels shown 64x96
    with pytest.raises(VideoError, match=r"1\.jpg: frame size 64x96 differs from the first frame's 96x64"):
        open_video(mixed)


def _write_video(path: Path, frames: list[np.ndarray], *, rotation: int = 0, pts_ms: list[int] | None = None) -> None:
    """An mp4 written with PyAV: a display-matrix ``rotation`` (degrees counter-clockwise, as phones
    store it) and, with ``pts_ms``, each frame's own timestamp (a variable frame rate)."""
    from fractions import Fraction

    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if pts_ms is not None:
            stream.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_video_rotation_metadata_is_applied(segment_model, tmp_path):
    from ssa_rvos.data.masks import read_mask_png
    from ssa_rvos.videoio import open_video

    _, checkpoint = segment_model
    stored = np.zeros((64, 96, 3), np.uint8)
    stored[:8, :16] = 255
    for rotation, corner in ((90, (slice(-16, None), slice(None, 8))), (-90, (slice(None, 16), slice(-8, None)))):
        path = tmp_path / f"phone{rotation}.mp4"
        _write_video(path, [stored] * 3, rotation=rotation)
        video = open_video(path)
        frame = next(video.frames()).image
        assert video.size == (96, 64) and frame.shape == (96, 64, 3)
        assert frame[corner].mean() > 200 and frame[:8, :16].mean() < 60, rotation  # turned as players show it
    out = tmp_path / "out"
    assert main(["segment", str(path), "--text", "a", "-o", str(out), "--model", str(checkpoint), "--overlay",
                 "--quiet"]) == 0
    assert read_mask_png(out / "0" / "00000.png").shape == (96, 64)
    assert open_video(out / "overlay.mp4").size == (96, 64)  # upright pixels, no rotation needed


def test_a_variable_frame_rate_overlay_lasts_as_long_as_its_source(segment_model, tmp_path):
    import av

    _, checkpoint = segment_model
    pts = [0, 100, 150, 400, 500, 900, 1000, 1300, 1500, 1970]
    source = tmp_path / "vfr.mp4"
    _write_video(source, [np.full((48, 64, 3), 20 * i, np.uint8) for i in range(len(pts))], pts_ms=pts)
    with av.open(str(source)) as c:
        times = [f.time for f in c.decode(c.streams.video[0])]
    span = times[-1] - times[0]
    expected = span + span / (len(times) - 1)  # the last frame shown for the mean frame interval
    out = tmp_path / "out"
    assert main(["segment", str(source), "--text", "a", "-o", str(out), "--model", str(checkpoint), "--overlay",
                 "--quiet"]) == 0
    with av.open(str(out / "overlay.mp4")) as c:
        stream = c.streams.video[0]
        n = sum(1 for _ in c.decode(stream))
        duration = n / float(stream.average_rate)
    assert n == len(pts) and abs(duration - expected) < 0.05, (duration, expected)


# ---------------------------------------------------------------------------- one result set or the other


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def _frames_folder(tmp_path: Path, n: int = 6) -> Path:
    from PIL import Image

    frames = tmp_path / "frames"
    frames.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((24, 32, 3), 30 * (i % 8), np.uint8)).save(frames / f"{i:05d}.png")
    return frames


def test_segment_switches_the_whole_result_set_in_one_step(segment_model, tmp_path, capsys, monkeypatch):
    import ssa_rvos.fileio as fileio
    import ssa_rvos.outputs as outputs

    _, checkpoint = segment_model
    frames = _frames_folder(tmp_path)
    out = tmp_path / "out"
    old = ["segment", str(frames), "-t", "one", "-t", "two", "-o", str(out), "--model", str(checkpoint), "--overlay",
           "--format", "both", "--quiet"]
    assert main(old) == 0
    (out / "my_images").mkdir()  # the user's own things in the output folder
    Image = __import__("PIL.Image", fromlist=["Image"])
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(out / "my_images" / "a.png")
    (out / "notes.txt").write_text("mine")
    (out / ".hidden").write_text("mine too")
    before = _snapshot(out)
    assert {"0", "1", "masks.json", "overlay.mp4"} <= set(before)
    new = ["segment", str(frames), "-t", "three", "-o", str(out), "--model", str(checkpoint), "--quiet"]

    # A failure at any point before the switch leaves the old set, whole, and nothing staged.
    def fail(*_, **__):
        raise OSError(28, "No space left on device")

    for target, name in ((outputs, "write_mask_png"), (outputs, "_carry_over"), (outputs, "exchange_dirs"),
                         (fileio, "link_tree")):
        with monkeypatch.context() as m:
            m.setattr(target, name, fail)
            if name == "link_tree":
                m.setattr(outputs, "link_tree", fail)
            assert main(new) == 1, name
        assert "No space left on device" in capsys.readouterr().err
        assert _snapshot(out) == before, name
        assert not list(tmp_path.glob(".out.*")), name

    assert main(new) == 0
    summary = capsys.readouterr().out
    after = _snapshot(out)
    assert sorted(k for k in after if "/" not in k) == [".hidden", "0", "my_images", "notes.txt"]
    assert {k: after[k] for k in (".hidden", "notes.txt", "my_images/a.png")} == \
        {k: before[k] for k in (".hidden", "notes.txt", "my_images/a.png")}
    reference = tmp_path / "reference"  # the same run into a fresh folder: the switched-in masks are the new run's
    assert main(["segment", str(frames), "-t", "three", "-o", str(reference), "--model", str(checkpoint),
                 "--quiet"]) == 0
    assert {k: v for k, v in after.items() if k.startswith("0/")} == \
        {f"0/{k[2:]}": v for k, v in _snapshot(reference).items() if k.startswith("0/")}
    assert "removed from an earlier run: 1/, masks.json, overlay.mp4" in summary
    assert not list(tmp_path.glob(".out.*"))


def test_segment_into_a_linked_folder_switches_the_folder_and_keeps_the_link(segment_model, tmp_path, capsys):
    _, checkpoint = segment_model
    frames = _frames_folder(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "notes.txt").write_text("mine")
    (tmp_path / "link").symlink_to("real")
    assert main(["segment", str(frames), "-t", "one", "-o", str(tmp_path / "link"), "--model", str(checkpoint),
                 "--quiet"]) == 0
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "0").is_dir()
    assert (tmp_path / "real" / "notes.txt").read_text() == "mine"


# A child `segment` that SIGKILLs itself (no cleanup at all) at a chosen point of the writer: while the
# masks of expression 1 are being staged, or just before the staged set is switched into place.
_KILLED_AT = """
import os, signal, sys
import ssa_rvos.outputs as outputs
at = sys.argv[1]
if at == "masks":
    write = outputs.write_mask_png
    def write_then_die(path, mask):
        if path.parent.name == "1" and path.stem == "00002":
            os.kill(os.getpid(), signal.SIGKILL)
        return write(path, mask)
    outputs.write_mask_png = write_then_die
else:
    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
    outputs.exchange_dirs = die
from ssa_rvos.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("at", ["masks", "switch"])
def test_a_killed_segment_leaves_the_old_set_and_the_rerun_clears_its_staging(segment_model, tmp_path, capsys, at):
    import subprocess
    import sys

    _, checkpoint = segment_model
    frames = _frames_folder(tmp_path / "video")
    out = tmp_path / "out"
    argv = ["segment", str(frames), "-o", str(out), "--model", str(checkpoint), "--quiet"]
    assert main(argv + ["-t", "old"]) == 0
    before = _snapshot(out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    killed = subprocess.run([sys.executable, "-c", _KILLED_AT, at, *argv, "-t", "new one", "-t", "new two"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    staged = list(tmp_path.glob(".out.*"))
    assert len(staged) == 1  # the kill landed while the new set was staged
    pngs = len(list((staged[0] / "1").glob("*.png")))
    assert pngs == 6 if at == "switch" else pngs < 6  # all staged, or stopped part-way through expression 1
    assert _snapshot(out) == before  # the old set, whole
    assert main(argv + ["-t", "new one", "-t", "new two"]) == 0
    assert not list(tmp_path.glob(".out.*")) and sorted(p.name for p in out.iterdir()) == ["0", "1"]
    assert len(list((out / "1").glob("*.png"))) == 6


# -------------------------------------------------------------------------------------------- full disk

# A child process whose files cannot grow past ``limit`` bytes gets the real EFBIG error from the kernel on
# the write that crosses it, as a full disk gives ENOSPC: the writers' own error paths run, nothing is faked.
# RLIMIT_FSIZE counts per file; ``at`` picks the writer it applies to ("start": every file of the run;
# "torch.save": only from the training-state write on, so the model file before it is written whole).
_LIMITED = """
import resource, signal, sys
limit, at = int(sys.argv[1]), sys.argv[2]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error from write(), not a signal that kills the process
def limit_files():
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
if at == "start":
    limit_files()
else:
    import torch
    save = torch.save
    def limited_save(*args, **kwargs):
        limit_files()
        return save(*args, **kwargs)
    torch.save = limited_save
from ssa_rvos.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _run_with_file_limit(argv: list[str], limit: int, at: str = "start"):
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.run([sys.executable, "-c", _LIMITED, str(limit), at, *argv], env=env, capture_output=True,
                          text=True, timeout=600)


def _last_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    return stderr.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("at", ["start", "torch.save"])
def test_a_full_disk_during_a_checkpoint_write_is_one_line_and_keeps_the_last_checkpoint(tmp_path, at):
    run = tmp_path / "run"
    train = ["train", "tiny_cpu", "checkpoint_every=1", "--output-dir", str(run)]
    assert main(train + ["optim.max_steps=1"]) == 0
    checkpoints = run / "checkpoints"
    first = checkpoints / "step_0000001"
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    model_size, state_size = (first / "model.safetensors").stat().st_size, (first / "state.pt").stat().st_size
    assert state_size < model_size  # so a limit below the state file stops whichever writer it applies to
    done = _run_with_file_limit(train + ["optim.max_steps=2", "--resume"], state_size // 2, at)
    line = _last_line(done.stderr)
    assert done.returncode == 1 and line.startswith("ssa-rvos train: error: ")
    if at == "start":  # safetensors' writer: the model file
        assert f"{checkpoints / 'step_0000002' / 'model.safetensors'}: cannot write the checkpoint" in line
        assert "File too large" in line
    else:  # torch.save: the training state
        assert f"{checkpoints / 'step_0000002'}: cannot write the training state" in line
        assert "a write stopped part-way: is the disk full?" in line and "enforce fail" not in line
    assert ".partial" not in line  # names the checkpoint, not the staging folder
    # the earlier checkpoint is whole and still the latest; no staging debris
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_0000001"]
    assert (checkpoints / "latest").read_text().strip() == "step_0000001"
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    # and the run goes on from it once there is room
    assert main(train + ["optim.max_steps=2", "--resume"]) == 0
    assert (checkpoints / "latest").read_text().strip() == "step_0000002"


def test_a_full_disk_during_convert_is_one_line_and_keeps_the_old_output(fixtures_dir, tmp_path):
    folder = fixtures_dir / "official-tiny"
    out = tmp_path / "converted.safetensors"
    out.write_bytes(b"an earlier output")
    done = _run_with_file_limit(["convert", str(folder / "official_tiny.pth"), "-o", str(out), "--clip-model",
                                 "convnext_tinyfix", "--clip-config", str(folder / "meta.json")], 1_000_000)
    line = _last_line(done.stderr)
    assert done.returncode == 1 and line.startswith("ssa-rvos convert: error: ")
    assert f"{out}: cannot write the checkpoint" in line and "File too large" in line
    assert out.read_bytes() == b"an earlier output" and sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_train_resume_after_an_architecture_change_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    train = ["train", "tiny_cpu", "checkpoint_every=1", "--output-dir", str(run)]
    assert main(train + ["optim.max_steps=1"]) == 0
    capsys.readouterr()
    assert main(train + ["optim.max_steps=2", "model.use_adapters=false", "--resume"]) == 1
    line = one_error_line(capsys)
    assert f"{run / 'checkpoints' / 'step_0000001' / 'model.safetensors'}:" in line
    assert "unexpected" in line and "backbone.adapters." in line and "resume needs the same architecture" in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_0000001"]


def test_a_checkpoint_write_killed_earlier_leaves_no_debris_after_the_next_save(tmp_path):
    run = tmp_path / "run"
    train = ["train", "tiny_cpu", "checkpoint_every=1", "--output-dir", str(run)]
    assert main(train + ["optim.max_steps=1"]) == 0
    checkpoints = run / "checkpoints"
    debris = [checkpoints / ".step_0000002.k1ll3d.partial", checkpoints / ".step_0000001.k1ll3d.old"]
    for folder in debris:  # what SIGKILL during a save leaves: a staged folder, a replaced one
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half" * 1000)
    assert main(train + ["optim.max_steps=2", "--resume"]) == 0
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_0000001", "step_0000002"]
