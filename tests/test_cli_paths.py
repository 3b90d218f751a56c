"""Command-line paths whose library functions are tested elsewhere, run here through ``ssa_rvos.cli.main``:
predict's selection options, evaluate on Ref-DAVIS17 and with several workers, and a Ref-YouTube-VOS
submission."""

import json
import zipfile

import numpy as np
import pytest
import torch
from datagen import write_davis, write_ytvos

from ssa_rvos.cli import main
from ssa_rvos.data import RefDAVIS17, RefYouTubeVOS
from ssa_rvos.data.masks import read_mask_png
from ssa_rvos.evaluation.evaluate import evaluate_predictions
from ssa_rvos.evaluation.predict import predict_split

SHORT = "32"


def read_predictions(folder):
    return {p.relative_to(folder).as_posix(): read_mask_png(p) for p in sorted(folder.glob("*/*/*.png"))}


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis")
    write_davis(root)
    return root


def test_predict_selection_options_match_the_library(segment_model, davis, tmp_path):
    model, checkpoint = segment_model
    dataset = RefDAVIS17(davis, "valid")
    base = ["predict", "--model", str(checkpoint), "--dataset", "davis", "--root", str(davis), "--device", "cpu",
            "--short-side", SHORT]
    runs = {"union": ["--selection", "union"], "low": ["--selection", "union", "--threshold", "0.05"],
            "amp": ["--amp"]}
    for name, extra in runs.items():
        assert main([*base, *extra, "--output", str(tmp_path / name)]) == 0
    with torch.inference_mode():
        predict_split(model, dataset, tmp_path / "lib_union", selection="union", short_side=int(SHORT))
        predict_split(model, dataset, tmp_path / "lib_low", selection="union", threshold=0.05, short_side=int(SHORT))
        predict_split(model, dataset, tmp_path / "lib_default", short_side=int(SHORT))  # top1 on Ref-DAVIS17
    union, low, amp = (read_predictions(tmp_path / name) for name in runs)
    lib = {n: read_predictions(tmp_path / f"lib_{n}") for n in ("union", "low", "default")}
    assert union.keys() == lib["union"].keys() == low.keys() == amp.keys() and len(union) > 0
    assert all(np.array_equal(union[k], lib["union"][k]) for k in union)
    assert all(np.array_equal(low[k], lib["low"][k]) for k in low)
    assert all(np.array_equal(amp[k], lib["default"][k]) for k in amp)  # --amp is CUDA-only: no change on a CPU
    # the options changed the masks: the union differs from the best query alone, and a lower threshold
    # keeps more queries
    assert any(not np.array_equal(union[k], lib["default"][k]) for k in union)
    assert sum(int(m.sum()) for m in union.values()) < sum(int(m.sum()) for m in low.values())

def test_evaluate_davis_with_workers(segment_model, davis, tmp_path, capsys):
    model, _ = segment_model
    dataset = RefDAVIS17(davis, "valid")
    with torch.inference_mode():
        predict_split(model, dataset, tmp_path / "pred", short_side=int(SHORT))
    expected = evaluate_predictions(dataset, tmp_path / "pred")
    for workers in ("1", "2"):
        out = tmp_path / f"report{workers}.json"
        assert main(["evaluate", "--dataset", "davis", "--root", str(davis), "--predictions", str(tmp_path / "pred"),
                     "--workers", workers, "--output", str(out)]) == 0
        report = json.loads(out.read_text())
        assert report["jf"] == pytest.approx(expected.jf, abs=1e-12) and 0 < report["jf"] < 1
        assert report["j"] == pytest.approx(expected.j, abs=1e-12) and report["f"] == pytest.approx(expected.f, abs=1e-12)
    assert f"{100 * expected.jf:.1f}" in capsys.readouterr().out


def test_ytvos_submission_is_written_and_checked(segment_model, tmp_path, capsys):
    _, checkpoint = segment_model
    info = write_ytvos(tmp_path / "ytvos")["valid"]
    root = str(tmp_path / "ytvos")
    assert main(["predict", "--model", str(checkpoint), "--dataset", "ytvos", "--root", root, "--device", "cpu",
                 "--short-side", SHORT, "--output", str(tmp_path / "pred")]) == 0
    zip_path = tmp_path / "sub.zip"
    assert main(["submit", "--dataset", "ytvos", "--root", root, "--predictions", str(tmp_path / "pred"),
                 "-o", str(zip_path)]) == 0
    names = set(zipfile.ZipFile(zip_path).namelist())
    expected = {f"Annotations/{e['video']}/{e['exp_id']}/{f}.png" for e in info["expressions"] for f in e["frames"]}
    assert names == expected  # the server's layout; the test video listed in the valid file is left out
    capsys.readouterr()
    assert main(["submit", "--dataset", "ytvos", "--root", root, "--check", str(zip_path)]) == 0
    n = len(RefYouTubeVOS(root, "valid").expressions)
    assert capsys.readouterr().out.strip().endswith(f"OK (2 videos, {n} expressions, {len(expected)} frames)")
    with zipfile.ZipFile(zip_path) as z, zipfile.ZipFile(tmp_path / "bad.zip", "w") as bad:
        for name in sorted(z.namelist())[1:]:  # one frame missing
            bad.writestr(name, z.read(name))
    assert main(["submit", "--dataset", "ytvos", "--root", root, "--check", str(tmp_path / "bad.zip")]) == 1
    assert "1 problems" in capsys.readouterr().err
