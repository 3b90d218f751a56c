"""The fast evaluation path: a light import, the PNG decoders, predictions in RLE, the per-video ground
truth and the worker default. (The J and F values themselves are checked against the reference in
test_metrics.py.)"""

import io
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ssa_rvos.data.masks as masks_mod
from ssa_rvos.cli import main
from ssa_rvos.data import MeViS
from ssa_rvos.data.expressions import DatasetError
from ssa_rvos.data.masks import (
    decode_checked,
    decode_stack,
    read_label_png,
    read_mask_png,
    rle_check,
    rle_encode,
    stack_boxes,
    write_mask_png,
)
from ssa_rvos.evaluation.evaluate import (
    _pool_context,
    _stack_buffer,
    default_workers,
    evaluate_predictions,
    read_prediction,
)
from ssa_rvos.evaluation.metrics import j_and_f, mask_boxes

SRC = str(Path(__file__).resolve().parents[1] / "src")


# ------------------------------------------------------------------------------------------ light import


def test_evaluate_imports_no_torch(mevis_root, tmp_path):
    """`ssa-rvos evaluate` on prediction folders runs without importing torch or any model code; its import
    leaves out scipy's ndimage and spatial too (0.3 s; only dense boundaries, e.g. tiny objects, need them)."""
    root, infos = mevis_root
    for e in infos["valid_u"]["expressions"]:
        for t, frame in enumerate(e["frames"]):
            write_mask_png(tmp_path / "pred" / e["video"] / e["exp_id"] / f"{frame}.png",
                           infos["valid_u"]["target_masks"][(e["video"], e["exp_id"])][t])
    code = ("import sys; from ssa_rvos.cli import main; import ssa_rvos.evaluation.evaluate; "
            "scipy_at_import = [m for m in ('scipy.ndimage', 'scipy.spatial') if m in sys.modules]; "
            f"code = main(['evaluate', '--dataset', 'mevis', '--root', {str(root)!r}, '--split', 'valid_u', "
            f"'--predictions', {str(tmp_path / 'pred')!r}, '--workers', '1']); "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'open_clip', 'timm') "
            "or m.startswith('ssa_rvos.modeling')); print(code, heavy, scipy_at_import)")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": SRC}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "0 [] []"
    assert "100.00" in done.stdout  # the ground truth as prediction: a perfect score


def test_the_package_names_load_on_first_use():
    code = ("import sys, ssa_rvos; light = 'torch' not in sys.modules; "
            "from ssa_rvos import SSA, SSAPredictor, build_model; print(light, 'torch' in sys.modules, "
            "SSA.__name__, SSAPredictor.__name__, 'build_model' in dir(ssa_rvos))")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": SRC}, capture_output=True,
                          text=True, timeout=300)
    assert done.stdout.split() == ["True", "True", "SSA", "SSAPredictor", "True"], done.stderr


# ------------------------------------------------------------------------------------------- PNG decoders


def _png(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _kinds(rng) -> dict[str, tuple[bytes, np.ndarray]]:
    """PNG bytes of every kind a benchmark or a server uses, each with the mask it must read as."""
    labels = (rng.random((23, 31)) * 4).astype(np.uint8)
    labels[0, 0], labels[-1, -1] = 0, 3
    palette = Image.new("P", (31, 23))
    palette.putdata(list(labels.ravel()))
    # index 2 is black in this palette: a colour-based reader would miss it, the indices say foreground
    palette.putpalette([0, 0, 0, 128, 0, 0, 0, 0, 0, 128, 128, 0] + [0] * (252 * 3))
    rgb = np.zeros((23, 31, 3), np.uint8)
    rgb[..., rng.integers(0, 3)] = labels * 50  # one channel carries it
    rgba = np.dstack([rgb, np.full((23, 31), 255, np.uint8)])
    rgba[labels == 0, 3] = 0  # a transparent background changes nothing: alpha is ignored
    return {
        "L 0/255": (_png(Image.fromarray(np.where(labels > 0, 255, 0).astype(np.uint8))), labels > 0),
        "L labels": (_png(Image.fromarray(labels)), labels > 0),
        "L optimised": (_png(Image.fromarray(labels * 60), optimize=True), labels > 0),
        "1 bit": (_png(Image.fromarray(labels > 1).convert("1")), labels > 1),
        "P": (_png(palette), labels > 0),
        "P 2-bit": (_png(palette, bits=2), labels > 0),
        "RGB": (_png(Image.fromarray(rgb)), labels > 0),
        "RGBA": (_png(Image.fromarray(rgba)), labels > 0),
        "16-bit": (_png(Image.fromarray(labels.astype(np.uint16) * 1000)), labels > 0),
    }


def test_every_png_kind_reads_as_the_same_mask_with_and_without_libspng(tmp_path, monkeypatch):
    kinds = _kinds(np.random.default_rng(0))
    paths = {}
    for i, (name, (data, _)) in enumerate(kinds.items()):
        paths[name] = tmp_path / f"{i}.png"
        paths[name].write_bytes(data)
    fast = {name: read_mask_png(path) for name, path in paths.items()}
    monkeypatch.setattr(masks_mod, "_spng", lambda: None)  # the Pillow fallback
    slow = {name: read_mask_png(path) for name, path in paths.items()}
    for name, (_, expected) in kinds.items():
        assert fast[name].dtype == bool and np.array_equal(fast[name], expected), name
        assert np.array_equal(slow[name], expected), name
    for name in ("L labels", "P", "1 bit"):  # what the label reader gives, where it reads the kind at all
        assert np.array_equal(read_label_png(paths[name]) > 0, fast[name])


def test_libspng_takes_the_common_kinds(tmp_path, monkeypatch):
    """8-bit grayscale, RGB and RGBA go through libspng; palettes and 16-bit through Pillow."""
    calls = []
    real = masks_mod._spng()
    assert real is not None  # a dependency: the fast path is what users get

    class Spy:
        @staticmethod
        def load(data):
            calls.append(len(data))
            return real.load(data)

    monkeypatch.setattr(masks_mod, "_spng", lambda: Spy)
    for name, (data, _) in _kinds(np.random.default_rng(1)).items():
        path = tmp_path / "x.png"
        path.write_bytes(data)
        before = len(calls)
        read_mask_png(path)
        assert (len(calls) > before) == name.startswith(("L", "RGB")), name


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """A PNG's chunks as (kind, payload), the signature left out."""
    out, pos = [], 8
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        out.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]))
        pos += 12 + n
    return out


def _assemble(chunks: list[tuple[bytes, bytes]]) -> bytes:
    parts = [b"\x89PNG\r\n\x1a\n"]
    for kind, payload in chunks:
        parts += [len(payload).to_bytes(4, "big"), kind, payload, zlib.crc32(kind + payload).to_bytes(4, "big")]
    return b"".join(parts)


def _adam7_png(image: np.ndarray) -> bytes:
    """An interlaced 8-bit grayscale PNG (Pillow writes none): the seven passes' rows, filter 0."""
    h, w = image.shape
    rows = []
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
                           (0, 1, 1, 2)):
        sub = image[y0::dy, x0::dx]
        if sub.size:
            rows += [b"\0" + row.tobytes() for row in sub]
    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes((8, 0, 0, 0, 1))
    return _assemble([(b"IHDR", ihdr), (b"IDAT", zlib.compress(b"".join(rows))), (b"IEND", b"")])


def _restorable_kinds(rng) -> dict[str, tuple[bytes, np.ndarray]]:
    """The kinds the zlib-ng path takes, with the layouts it must handle: several stored blocks (an
    image of more than 64 KB), the image data split over several IDAT chunks, interlacing, an ancillary
    chunk between the image data and the end."""
    big = np.zeros((300, 410), np.uint8)
    big[40:260, 30:200] = 255
    big[rng.random(big.shape) < 0.01] = 7
    one = _png(Image.fromarray(big))
    chunks = _chunks(one)
    idat = b"".join(p for k, p in chunks if k == b"IDAT")
    pieces = [(b"IDAT", idat[i:i + 300]) for i in range(0, len(idat), 300)]
    split = _assemble([c for c in chunks if c[0] != b"IDAT" and c[0] != b"IEND"] + pieces
                      + [(b"tEXt", b"Comment\0after the image data"), (b"IEND", b"")])
    kinds = {name: v for name, v in _kinds(rng).items() if name.startswith(("L", "RGB"))}
    kinds.update({"L 300x410": (one, big > 0), "L split IDAT": (split, big > 0),
                  "L interlaced": (_adam7_png(big[:37, :29]), big[:37, :29] > 0)})
    return kinds


def test_the_zlib_ng_path_reads_what_libspng_reads(tmp_path, monkeypatch):
    """PNGs re-wrapped with their image data inflated by zlib-ng decode to the same values as the
    originals, and read as the same masks as without zlib-ng; damaged PNGs are left to the original
    path (which names the problem)."""
    zng, spng = masks_mod._zlib_ng(), masks_mod._spng()
    assert zng is not None  # a dependency: the fast path is what users get
    for name, (data, expected) in _restorable_kinds(np.random.default_rng(2)).items():
        restored = masks_mod._restored_png(data, masks_mod.png_header(data), zng)
        assert restored is not None and restored != data, name
        assert np.array_equal(spng.load(restored), spng.load(data)), name
        path = tmp_path / "x.png"
        path.write_bytes(data)
        assert np.array_equal(read_mask_png(path), expected), name
        monkeypatch.setattr(masks_mod, "_zlib_ng", lambda: None)
        assert np.array_equal(read_mask_png(path), expected), name
        monkeypatch.undo()
    data = _png(Image.fromarray(np.full((20, 30), 255, np.uint8)))
    chunks = _chunks(data)
    header = masks_mod.png_header(data)
    bad_crc = bytearray(data)
    bad_crc[-13] ^= 1  # the IDAT chunk's CRC (IEND's 12 bytes follow it)
    idat = next(p for k, p in chunks if k == b"IDAT")
    damaged = {
        "IDAT CRC": bytes(bad_crc),
        "cut": data[: len(data) - 20],
        "IHDR CRC": data[:29] + bytes([data[29] ^ 1]) + data[30:],
        "no image data": _assemble([chunks[0], (b"IEND", b"")]),
        "IDAT not consecutive": _assemble([chunks[0], (b"IDAT", idat[:5]), (b"tEXt", b"a\0b"), (b"IDAT", idat[5:]),
                                           (b"IEND", b"")]),
        "short image data": _assemble([chunks[0], (b"IDAT", zlib.compress(b"\0" * 31 * 19)), (b"IEND", b"")]),
        "long image data": _assemble([chunks[0], (b"IDAT", zlib.compress(b"\0" * 31 * 21)), (b"IEND", b"")]),
        "not zlib": _assemble([chunks[0], (b"IDAT", b"not a zlib stream"), (b"IEND", b"")]),
    }
    for name, bad in damaged.items():
        assert masks_mod._restored_png(bad, header, zng) is None, name


def test_scoring_processes_keep_freed_memory(monkeypatch):
    """The allocator setting for scoring (``mallopt``) takes where glibc is, checked in a process of its
    own (it is process-wide and cannot be undone); the evaluation's worker processes make it first."""
    import platform

    import ssa_rvos.evaluation.evaluate as evaluate_mod

    code = "from ssa_rvos.evaluation.evaluate import keep_freed_memory; print(keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": SRC}, check=True).stdout.strip()
    assert out == str(sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")
    calls = []
    monkeypatch.setattr(evaluate_mod, "keep_freed_memory", lambda: calls.append(1))
    monkeypatch.setattr(evaluate_mod, "_WORKER_STATE", {})
    evaluate_mod._worker_init("dataset", "source")
    assert calls == [1] and evaluate_mod._WORKER_STATE["dataset"] == "dataset"


def test_into_a_stack_and_size_and_damage_errors(tmp_path):
    mask = np.zeros((6, 9), bool)
    mask[2:4, 3:7] = True
    write_mask_png(tmp_path / "a.png", mask)
    stack = np.ones((2, 6, 9), bool)
    read_mask_png(tmp_path / "a.png", out=stack[1])
    assert np.array_equal(stack[1], mask) and stack[0].all()
    with pytest.raises(DatasetError, match=r"a.png: prediction is 6x9, the frame is 9x6"):
        read_mask_png(tmp_path / "a.png", out=np.zeros((9, 6), bool))
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])  # libspng refuses it; Pillow names the problem
    with pytest.raises(DatasetError, match=r"cut.png: not a readable image"):
        read_mask_png(tmp_path / "cut.png")
    with pytest.raises(DatasetError, match=r"none.png: file not found"):
        read_mask_png(tmp_path / "none.png")


def test_a_bomb_sized_header_is_left_to_pillow(tmp_path, monkeypatch):
    """A PNG whose header declares more pixels than Pillow's limit is not decoded by libspng: Pillow
    refuses it by name (the decompression-bomb rule of every other image reader)."""
    write_mask_png(tmp_path / "a.png", np.ones((40, 40), bool))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DatasetError, match=r"a.png: not a readable image.*exceeds"):
        read_mask_png(tmp_path / "a.png")


# ---------------------------------------------------------------------------------- ground truth, workers


def test_per_video_ground_truth_equals_each_expressions_own(mevis_root):
    root, _ = mevis_root
    dataset = MeViS(root, "valid_u")
    for video in dataset.videos():
        exprs = dataset.video_expressions(video)
        assert any(len(e.anno_ids) > 1 for e in dataset.expressions)  # a multi-object expression is among them
        for expr, target in zip(exprs, dataset.video_target_masks(exprs), strict=True):
            assert target.shape == (len(expr.frames), *dataset.frame_size(video))
            assert np.array_equal(target, dataset.target_masks(expr))


def _box_cases(rng):
    """Masks whose RLE runs stay in one column, wrap into the next, cover whole columns, touch every
    edge, fill the frame, and empty frames."""
    h, w = 7, 9
    m = np.zeros((8, h, w), dtype=bool)
    m[0, 2:4, 3] = True  # one run in one column
    m[1, 5:, 2] = m[1, :2, 3] = True  # a run that wraps from column 2 into column 3
    m[2, :, 4:6] = True  # whole columns: one run over two columns
    m[3, 0, 0] = m[3, -1, -1] = True  # the corners
    m[4] = True  # the whole frame
    m[6] = rng.random((h, w)) < 0.3
    m[7, 3, :] = True  # one row: a run per column
    return m  # m[5] stays empty


def test_boxes_from_runs_hold_the_masks_and_agree_on_empty_frames():
    """stack_boxes (from the RLE runs alone) against mask_boxes (from the pixels): exact in x, in y exact
    or the whole height, empty exactly on the empty frames; decode_stack equals pycocotools' decode."""
    rng = np.random.default_rng(0)
    m = _box_cases(rng)
    compacts = [rle_check(rle_encode(f)) if f.any() else None for f in m]
    compacts[4] = rle_check(rle_encode(m[4]))
    stack = decode_stack(compacts, m.shape[1:])
    assert np.array_equal(stack.transpose(0, 2, 1), m)
    assert all(np.array_equal(decode_checked(c), f) for c, f in zip(compacts, m) if c is not None)
    exact, runs = mask_boxes(m), stack_boxes(compacts, m.shape[1:])
    h, w = m.shape[1:]
    assert exact[5].tolist() == runs[5].tolist() == [h, 0, w, 0]
    assert exact[0].tolist() == runs[0].tolist() == [2, 4, 3, 4]
    assert exact[1].tolist() == [0, 7, 2, 4] and runs[1].tolist() == [0, 7, 2, 4]  # wraps: the whole height
    assert exact[3].tolist() == [0, 7, 0, 9] and exact[7].tolist() == [3, 4, 0, 9]
    assert np.array_equal(runs[:, 2:], exact[:, 2:])
    assert (runs[:, 0] <= exact[:, 0]).all() and (runs[:, 1] >= exact[:, 1]).all()
    assert stack_boxes([], (h, w)).shape == (0, 4) and decode_stack([], (h, w)).shape == (0, w, h)


def test_given_boxes_give_the_same_scores_and_bad_ones_are_refused(tmp_path):
    """j_and_f with boxes from the runs, from the PNG reader and widened ones = without boxes, frame by
    frame; the PNG reader's boxes are mask_boxes'."""
    rng = np.random.default_rng(1)
    gt = _box_cases(rng)
    pred = np.roll(gt, 1, axis=2) | (rng.random(gt.shape) < 0.05)
    pred[2] = False
    frames = [f"{t:05d}" for t in range(len(pred))]
    for t in range(len(pred)):
        if t != 6:  # frame 6 has no PNG
            write_mask_png(tmp_path / f"{frames[t]}.png", pred[t])
    pred[6] = False
    boxes = np.zeros((len(frames), 4), dtype=np.int64)
    read, _ = read_prediction(tmp_path, frames, gt.shape[1:], boxes=boxes)
    assert np.array_equal(read, pred) and np.array_equal(boxes, mask_boxes(pred))
    gt_boxes = stack_boxes([rle_check(rle_encode(f)) if f.any() else None for f in gt], gt.shape[1:])
    h, w = gt.shape[1:]
    wide = np.where(mask_boxes(gt)[:, :1] < h, [[0, h, 0, w]], mask_boxes(gt))  # every non-empty box: the frame
    expected = j_and_f(gt, pred)
    for gb, pb in ((gt_boxes, boxes), (wide, None), (None, boxes)):
        got = j_and_f(gt, pred, gt_boxes=gb, pred_boxes=pb)
        assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    with pytest.raises(ValueError, match=r"gt boxes must be \(8, 4\) integers"):
        j_and_f(gt, pred, gt_boxes=gt_boxes[:3])
    with pytest.raises(ValueError, match="without a void mask"):
        j_and_f(gt, pred, np.zeros_like(gt), gt_boxes=gt_boxes)
    with pytest.raises(ValueError, match=r"boxes must be a \(8, 4\) array"):
        read_prediction(tmp_path, frames, gt.shape[1:], boxes=boxes[:2])


def test_default_workers_are_the_allowed_cores_capped_by_the_videos(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5})
    assert [default_workers(n) for n in (0, 1, 2, 3, 50)] == [1, 1, 2, 3, 3]


def test_a_reused_stack_is_overwritten_everywhere(tmp_path):
    rng = np.random.default_rng(4)
    masks = rng.random((3, 9, 11)) < 0.4
    for t in (0, 2):  # frame 1 has no PNG
        write_mask_png(tmp_path / f"{t:05d}.png", masks[t])
    frames = ["00000", "00001", "00002"]
    fresh, absent = read_prediction(tmp_path, frames, (9, 11))
    stale = np.ones((3, 9, 11), dtype=bool)  # what a previous expression left in the buffer
    reused, absent_again = read_prediction(tmp_path, frames, (9, 11), out=stale)
    assert reused is stale and absent == absent_again == ["00001"]
    assert np.array_equal(reused, fresh) and not reused[1].any() and np.array_equal(reused[[0, 2]], masks[[0, 2]])
    with pytest.raises(ValueError, match=r"out must be a \(3, 9, 11\) bool array"):
        read_prediction(tmp_path, frames, (9, 11), out=np.zeros((2, 9, 11), dtype=bool))
    buffers = {}
    one = _stack_buffer(buffers, 3, (9, 11))
    assert one.shape == (3, 9, 11) and _stack_buffer(buffers, 2, (9, 11)).base is one.base  # the same memory
    assert _stack_buffer(buffers, 5, (9, 11)).shape == (5, 9, 11) and _stack_buffer(buffers, 4, (9, 12)).shape == (4, 9, 12)


def test_fork_when_the_main_script_cannot_be_rerun(monkeypatch):
    # Beside another thread the workers start from a fresh interpreter, which re-runs the main script;
    # code read from stdin cannot be, so fork it is there (as it is with no other thread).
    import threading

    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    try:
        assert _pool_context()[0].get_start_method() != "fork"
        monkeypatch.setattr(sys.modules["__main__"], "__file__", "<stdin>", raising=False)
        assert _pool_context()[0].get_start_method() == "fork"
    finally:
        stop.set()
        thread.join()


# ------------------------------------------------------------------------------------------ RLE predictions



def test_predict_rle_scores_as_the_png_folders(mevis_root, tiny_checkpoint, tmp_path, capsys):
    root, _ = mevis_root
    common = ["--model", str(tiny_checkpoint), "--dataset", "mevis", "--root", str(root), "--split", "valid_u",
              "--device", "cpu", "--short-side", "32"]
    assert main(["predict", *common, "-o", str(tmp_path / "png")]) == 0
    assert main(["predict", *common, "--format", "rle", "-o", str(tmp_path / "rle")]) == 0
    assert "wrote" in capsys.readouterr().err and (tmp_path / "rle" / "masks.json").is_file()
    dataset = MeViS(root, "valid_u")
    # the same masks, one expression at a time
    for expr in dataset.expressions:
        entry = json.loads((tmp_path / "rle" / expr.video / f"{expr.exp_id}.rle.json").read_text())
        assert entry["frames"] == list(expr.frames)
        pngs = [read_mask_png(tmp_path / "png" / expr.video / expr.exp_id / f"{f}.png") for f in expr.frames]
        assert all(np.array_equal(masks_mod.rle_decode(r), p) for r, p in zip(entry["masks"], pngs))
    # and the same report, without a PNG read
    from_png = evaluate_predictions(dataset, tmp_path / "png", workers=1)
    from_rle = evaluate_predictions(dataset, tmp_path / "rle" / "masks.json", workers=2)
    assert from_png.to_dict() == from_rle.to_dict()
    assert 0 < from_png.jf < 1 and from_png.missing == []
    # a rerun skips everything and writes the same file
    before = (tmp_path / "rle" / "masks.json").read_bytes()
    assert main(["predict", *common, "--format", "rle", "-o", str(tmp_path / "rle")]) == 0
    assert "predicted 0 expressions, 5 already" in capsys.readouterr().err
    assert (tmp_path / "rle" / "masks.json").read_bytes() == before


def test_evaluate_reads_an_rle_file_without_decoding_pngs(mevis_root, tmp_path, monkeypatch, capsys):
    root, infos = mevis_root
    dataset = MeViS(root, "valid_u")
    rng = np.random.default_rng(4)
    videos: dict = {}
    for e in infos["valid_u"]["expressions"]:
        target = infos["valid_u"]["target_masks"][(e["video"], e["exp_id"])]
        pred = target ^ (rng.random(target.shape) < 0.05)
        for t, frame in enumerate(e["frames"]):
            write_mask_png(tmp_path / "pred" / e["video"] / e["exp_id"] / f"{frame}.png", pred[t])
        videos.setdefault(e["video"], {})[e["exp_id"]] = {
            "frames": list(e["frames"]), "masks": [masks_mod.rle_encode(m) for m in pred]}
    (tmp_path / "masks.json").write_text(json.dumps({"videos": videos}))
    from_png = evaluate_predictions(dataset, tmp_path / "pred", workers=1)

    def no_png(*args, **kwargs):
        raise AssertionError("a PNG was read")

    monkeypatch.setattr("ssa_rvos.evaluation.evaluate.read_mask_png", no_png)
    assert main(["evaluate", "--dataset", "mevis", "--root", str(root), "--split", "valid_u", "--predictions",
                 str(tmp_path / "masks.json"), "--output", str(tmp_path / "report.json"), "--workers", "1"]) == 0
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(from_png.to_dict()))
    # a damaged entry is one line naming the file, video, expression and frame
    e = infos["valid_u"]["expressions"][0]
    videos[e["video"]][e["exp_id"]]["masks"][1] = {"size": [2, 2], "counts": "0"}
    (tmp_path / "bad.json").write_text(json.dumps({"videos": videos}))
    capsys.readouterr()
    assert main(["evaluate", "--dataset", "mevis", "--root", str(root), "--split", "valid_u", "--predictions",
                 str(tmp_path / "bad.json"), "--workers", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(tmp_path / "bad.json") in err and repr(e["video"]) in err and repr(e["frames"][1]) in err


def test_evaluate_reads_segments_masks_json_of_a_dataset_video(mevis_root, segment_model, tmp_path, capsys):
    """`segment --format rle` on a video's frame folder with its sentences: the file scores like the
    same masks written as PNG folders."""
    root, _ = mevis_root
    _, checkpoint = segment_model
    dataset = MeViS(root, "valid_u")
    video = dataset.videos()[0]
    exprs = dataset.video_expressions(video)
    argv = ["segment", str(dataset.image_dir / video), "-o", str(tmp_path / "seg"), "--model", str(checkpoint),
            "--format", "both", "--quiet"]
    for expr in exprs:
        argv += ["-t", expr.text]
    assert main(argv) == 0
    for i, expr in enumerate(exprs):  # the PNG folders under the dataset's names
        (tmp_path / "pred" / video).mkdir(parents=True, exist_ok=True)
        (tmp_path / "seg" / str(i)).rename(tmp_path / "pred" / video / expr.exp_id)
    from_png = evaluate_predictions(dataset, tmp_path / "pred", workers=1)
    from_rle = evaluate_predictions(dataset, tmp_path / "seg" / "masks.json", workers=1)
    assert from_rle.to_dict() == from_png.to_dict()
    assert len(from_rle.missing) == len(dataset.expressions) - len(exprs)  # the other video has none
