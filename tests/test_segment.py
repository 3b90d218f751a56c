"""`ssa-rvos segment` in-process: outputs, frame selection, and every bad input ending in one line."""

import json

import numpy as np
import pytest
from PIL import Image

from ssa_rvos.cli import main
from ssa_rvos.data.masks import read_mask_png, rle_decode
from ssa_rvos.data.synthref import render_video, write_demo_video
from ssa_rvos.predictor import SSAPredictor

TEXTS = ["the bouncing one", "the star that moves up"]


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_demo_video(path, seed=0, frames=8, size=(48, 64))
    return path


def run(capsys, *argv):
    code = main(["segment", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_writes_pngs_rle_overlay_and_a_summary(segment_model, mp4, tmp_path, capsys):
    import av  # a dev dependency: the test fails, not skips, without it
    _, checkpoint = segment_model
    texts_file = tmp_path / "texts.txt"
    texts_file.write_text(f"\n  {TEXTS[1]}  \n\n", encoding="utf-8")
    out = tmp_path / "out"
    code, stdout, err = run(capsys, mp4, "--text", TEXTS[0], "--texts-file", texts_file, "-o", out, "--model",
                            checkpoint, "--format", "both", "--overlay", "--frame-chunk", "3", "--quiet")
    assert code == 0, err
    assert err == ""  # --quiet: no progress bars
    assert sorted(p.name for p in out.iterdir()) == ["0", "1", "masks.json", "overlay.mp4"]  # no leftovers
    names = [f"{t:05d}" for t in range(8)]
    # the same masks as the Python API on the same input
    predictor = SSAPredictor.from_pretrained(checkpoint, device="cpu", frame_chunk=3)
    expected = predictor.segment(predictor.init_state(mp4), TEXTS)
    meta = json.loads((out / "masks.json").read_text())
    assert meta["frames"] == names and meta["size"] == [48, 64]
    for e, result in enumerate(expected):
        assert sorted(p.stem for p in (out / str(e)).iterdir()) == names
        pngs = np.stack([read_mask_png(out / str(e) / f"{n}.png") for n in names])
        assert np.array_equal(pngs, result.masks)
        entry = meta["expressions"][e]
        assert entry["text"] == TEXTS[e] and entry["index"] == e
        assert np.array_equal(np.stack([rle_decode(r) for r in entry["masks"]]), result.masks)
        assert [i["query"] for i in entry["instances"]] == result.query_indices.tolist()
        np.testing.assert_allclose([i["score"] for i in entry["instances"]], result.scores)
        if len(result.query_indices):
            inst = np.stack([rle_decode(r) for r in entry["instances"][0]["masks"]])
            assert np.array_equal(inst, result.instance_masks[0])
    with av.open(str(out / "overlay.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 8
    summary = stdout.strip().splitlines()
    assert summary[0].startswith(f"[0] '{TEXTS[0]}': mask in ") and "mean area" in summary[0]
    assert summary[1].startswith(f"[1] '{TEXTS[1]}'") and summary[2].startswith("wrote 2 mask folders")

    # A rerun replaces the folders and removes the earlier run's outputs it does not rewrite (a folder
    # that is not segment's own is left alone); frame selection keeps the input's frame numbers as names.
    (out / "7").mkdir()
    (out / "7" / "notes.txt").write_text("mine", encoding="utf-8")
    (out / "8").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(out / "8" / "photo.png")  # a colour image: not a mask
    code, stdout, err = run(capsys, mp4, "-t", TEXTS[0], "-o", out, "--model", checkpoint, "--start", "1",
                            "--end", "7", "--every", "3", "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["0", "7", "8"]
    assert sorted(p.stem for p in (out / "0").iterdir()) == ["00001", "00004"]
    assert stdout.strip().splitlines()[-1].endswith("; removed from an earlier run: 1/, masks.json, overlay.mp4")


def test_default_model_frame_folders_grayscale_rgba_and_one_pixel(segment_model, tmp_path, capsys, monkeypatch):
    import ssa_rvos.pretrained as pretrained

    _, checkpoint = segment_model
    monkeypatch.setattr(pretrained, "bundled_path", lambda name: checkpoint)  # a tiny stand-in: the shipped model is slow on CPU
    frames = render_video(1, frames=6, size=(48, 56)).frames
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(frames[:3]):
        Image.fromarray(frame).convert("L").save(folder / f"img{t}.png")
    for t, frame in enumerate(frames[3:], start=3):
        Image.fromarray(frame).convert("RGBA").save(folder / f"img{t}.png")
    code, stdout, err = run(capsys, folder, "-t", "the red circle", "-o", tmp_path / "out", "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out" / "0").iterdir()) == [f"img{t}.png" for t in range(6)]
    assert read_mask_png(tmp_path / "out" / "0" / "img0.png").shape == (48, 56)
    Image.fromarray(np.array([[[9, 200, 9]]], np.uint8)).save(tmp_path / "dot.png")
    code, _, err = run(capsys, tmp_path / "dot.png", "-t", "the dot", "-o", tmp_path / "dot", "--quiet")
    assert code == 0, err
    assert read_mask_png(tmp_path / "dot" / "0" / "dot.png").shape == (1, 1)


def test_overlong_text_warns_in_one_line(segment_model, mp4, tmp_path, capsys):
    _, checkpoint = segment_model
    long = " ".join(["the big red ball rolling"] * 20)
    code, _, err = run(capsys, mp4, "-t", "a cat", "-t", long, "-o", tmp_path / "out", "--model", checkpoint,
                       "--end", "2", "--quiet", "--format", "rle")
    assert code == 0
    assert error_line(err).startswith("ssa-rvos segment: warning: expression 1 ('the big red ball")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["masks.json"]


def _bad_inputs(tmp_path, mp4):
    """name -> (input, extra arguments, exit code, message expected in the error line)."""
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    (tmp_path / "no_images").mkdir()
    (tmp_path / "no_images" / "a.txt").write_text("x")
    for name, size in (("0", (48, 64)), ("1", (48, 64)), ("2", (50, 64))):
        Image.fromarray(np.zeros((*size, 3), np.uint8)).save(tmp_path / f"mixed_{name}.jpg")
    (tmp_path / "mixed").mkdir()
    for name in ("0", "1", "2"):
        (tmp_path / f"mixed_{name}.jpg").rename(tmp_path / "mixed" / f"{name}.jpg")
    (tmp_path / "latin1.txt").write_bytes("la pelota amarilla que rueda cuesta abajo\ncafé\n".encode("latin-1"))
    (tmp_path / "blank.txt").write_text("\n  \n", encoding="utf-8")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "not_a_checkpoint.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    t = ["-t", "a cat"]
    return {
        "missing input": (tmp_path / "missing.mp4", t, 1, "missing.mp4: no such file or folder"),
        "corrupt video": (tmp_path / "corrupt.mp4", t, 1, "corrupt.mp4: not a readable video"),
        "folder without images": (tmp_path / "no_images", t, 1, "no_images: no JPEG or PNG frames"),
        "mixed frame sizes": (tmp_path / "mixed", t, 1, "2.jpg: frame size 50x64 differs from the first frame's 48x64"),
        "empty text": (mp4, ["-t", "   "], 2, "--text '   ': an empty expression"),
        "no text": (mp4, [], 2, "no expression"),
        "blank texts file": (mp4, ["--texts-file", tmp_path / "blank.txt"], 2, "no non-empty line"),
        "non-UTF-8 texts file": (mp4, ["--texts-file", tmp_path / "latin1.txt"], 2, "latin1.txt: not UTF-8 text"),
        "missing texts file": (mp4, ["--texts-file", tmp_path / "nope.txt"], 2, "nope.txt: no such file"),
        "output is a file": (mp4, [*t, "-o", tmp_path / "a_file"], 2, "a_file: is a file, expected a folder"),
        "not a checkpoint": (mp4, [*t, "--model", tmp_path / "not_a_checkpoint.safetensors"], 1,
                             "not_a_checkpoint.safetensors: not a safetensors checkpoint"),
        "unknown model": (mp4, [*t, "--model", "no_such_model"], 2, "--model: model no_such_model"),
        "bad frame range": (mp4, [*t, "--start", "5", "--end", "5"], 2, "--end (5) must be greater than --start (5)"),
        "empty frame range": (mp4, [*t, "--start", "50"], 1, "no frames in the selection"),
        "bad every": (mp4, [*t, "--every", "0"], 2, "--every must be >= 1"),
        "bad device": (mp4, [*t, "--device", "tpu"], 2, "--device: unknown device 'tpu'"),
    }


def test_bad_inputs_end_in_one_line_and_write_nothing(segment_model, mp4, tmp_path, capsys):
    _, checkpoint = segment_model
    cases = _bad_inputs(tmp_path, mp4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier file")
    for name, (source, extra, expected_code, message) in cases.items():
        args = [source, *extra]
        if "-o" not in extra:
            args += ["-o", out]
        if "--model" not in extra:
            args += ["--model", checkpoint]
        code, stdout, err = run(capsys, *args, "--quiet")
        assert code == expected_code, (name, err)
        line = error_line(err)
        assert line.startswith("ssa-rvos segment: error: ") and message in line, (name, line)
        assert [p.name for p in out.iterdir()] == ["keep.txt"], name  # nothing (half-)written


def test_a_failure_midway_leaves_nothing_half_written(segment_model, mp4, tmp_path, capsys, monkeypatch):
    import ssa_rvos.outputs as outputs

    _, checkpoint = segment_model
    written = []
    real = outputs.write_mask_png

    def failing(path, mask):
        if len(written) == 5:
            raise OSError(28, "No space left on device")
        written.append(path)
        real(path, mask)

    monkeypatch.setattr(outputs, "write_mask_png", failing)
    out = tmp_path / "out"
    code, _, err = run(capsys, mp4, "-t", TEXTS[0], "-t", TEXTS[1], "-o", out, "--model", checkpoint, "--overlay",
                       "--format", "both", "--quiet")
    assert code == 1 and "No space left on device" in error_line(err)
    assert len(written) == 5 and not out.exists() and not list(tmp_path.glob(".out.*"))  # nothing staged is left

