"""Bad command-line input across commands: one line on stderr naming the argument or file, a non-zero exit, no
traceback, and nothing written (or replaced) before the input is found bad."""

import os

import numpy as np
import pytest

from ssa_rvos.cli import main
from ssa_rvos.data.masks import write_mask_png
from ssa_rvos.data.synthref import generate_split


def error(capsys, *argv) -> str:
    """Run ``ssa-rvos argv`` in-process; it must fail with exactly one stderr line and no traceback."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code != 0, (argv, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"ssa-rvos {argv[0]}: error: "), lines[0]
    return lines[0]


@pytest.fixture
def synthref(synthref_root):
    """The shared tiny SynthRef root (train and valid_u, MeViS layout; conftest)."""
    return synthref_root


@pytest.fixture(scope="module")
def model_path():
    from ssa_rvos.pretrained import resolve_weights

    return resolve_weights(None)  # a real checkpoint, so that only the option under test can fail


def _snapshot(folder):
    """Every file under a folder with its inode and bytes: a replaced or rewritten file shows."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- synth


@pytest.mark.parametrize("extra, needle", [
    (["--splits", "train,valid_u", "--valid-videos", "0"], "--valid-videos"),
    (["--splits", "train,valid_u", "--valid-videos", "-3"], "--valid-videos"),
    (["--splits", "train,,x"], "--splits"),
    (["--splits", "train,other"], "other"),  # a folder that is not a SynthRef split is never replaced
])
def test_synth_checks_everything_before_replacing_a_split(tmp_path, capsys, extra, needle):
    root = tmp_path / "synthref"
    generate_split(root, split="train", videos=2, frames=6, size=48, seed=3)
    (root / "other").mkdir()
    (root / "other" / "notes.txt").write_text("mine")
    before = _snapshot(root)
    line = error(capsys, "synth", "--out", root, "--videos", "2", "--frames", "6", "--size", "48", "--seed", "9",
                 "--quiet", *extra)
    assert needle in line
    assert _snapshot(root) == before
    assert sorted(p.name for p in root.iterdir()) == ["other", "train"]  # no partial folder left


# ---------------------------------------------------------------------------------------------- masks


def _png_folder(root):
    for frame in ("00000", "00001"):
        write_mask_png(root / "v1" / "0" / f"{frame}.png", np.eye(8, dtype=bool))
    return root


def test_masks_to_json_checks_both_outputs_first(tmp_path, capsys):
    folder = _png_folder(tmp_path / "pngs")
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "out.json"
    for meta_output in (tmp_path / "a_dir", tmp_path / "a_file" / "meta.json", out):
        line = error(capsys, "masks", "to-json", folder, "-o", out, "--meta-output", meta_output)
        assert "--meta-output" in line and "Errno" not in line
        assert not out.exists()
    line = error(capsys, "masks", "to-json", folder, "-o", tmp_path / "a_file" / "m.json")  # was: [Errno 17]
    assert f"-o {tmp_path / 'a_file' / 'm.json'}" in line and "Errno" not in line


def test_masks_to_png_names_what_is_wrong(tmp_path, synthref, capsys):
    meta = synthref / "train" / "meta_expressions.json"
    out = tmp_path / "out"
    (tmp_path / "a_list.json").write_text("[1, 2]")
    line = error(capsys, "masks", "to-png", tmp_path / "a_list.json", "--meta", meta, "-o", out)
    assert "a_list.json" in line and "anno_id" in line
    line = error(capsys, "masks", "to-png", tmp_path / "nope.json", "-o", out)
    assert "nope.json: no such file" in line
    line = error(capsys, "masks", "to-png", synthref, "--meta", meta, "-o", out)
    assert f"{synthref}: is a directory" in line
    (tmp_path / "bad.json").write_text("{bad")  # no meta_expressions.json beside it and no --meta
    line = error(capsys, "masks", "to-png", tmp_path / "bad.json", "-o", out)
    assert "bad.json" in line and str(tmp_path / "meta_expressions.json") in line and "--meta" in line
    line = error(capsys, "masks", "to-png", synthref / "train" / "mask_dict.json", "--meta", synthref, "-o", out)
    assert f"--meta {synthref}: is a directory" in line
    (tmp_path / "a_file").write_text("x")
    line = error(capsys, "masks", "to-png", synthref / "train" / "mask_dict.json", "-o", tmp_path / "a_file")
    assert "-o" in line and "Errno" not in line
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- pretrain-clip


def _pretrain(root, out, *extra):
    return ["pretrain-clip", "--root", root, "--eval-split", "none", "--steps", "1", "--batch-size", "2",
            "--threads", "1", "--quiet", "-o", out, *extra]


def test_pretrain_clip_checks_its_outputs_and_options_before_training(tmp_path, synthref, capsys):
    (tmp_path / "m.json").mkdir()
    line = error(capsys, *_pretrain(synthref, tmp_path / "m.safetensors"))
    assert "m.json" in line and "-o" in line
    assert not (tmp_path / "m.safetensors").exists()
    (tmp_path / "a_file").write_text("x")
    line = error(capsys, *_pretrain(synthref, tmp_path / "a_file" / "m.safetensors"))
    assert "-o" in line and "Errno" not in line
    (tmp_path / "d.safetensors").mkdir()
    assert "is a directory" in error(capsys, *_pretrain(synthref, tmp_path / "d.safetensors"))
    out = tmp_path / "x.safetensors"
    assert "--device" in error(capsys, *_pretrain(synthref, out, "--device", "no_such_device"))
    assert "--image-size must be >= 32" in error(capsys, *_pretrain(synthref, out, "--image-size", "3"))
    assert "--image-size must be >= 32" in error(capsys, *_pretrain(synthref, out, "--image-size", "31"))
    assert "--threads must be >= 0" in error(capsys, *_pretrain(synthref, out, "--threads", "-1"))
    assert not out.exists()


def test_pretrain_clip_names_a_damaged_data_file(tmp_path, synthref, capsys):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(synthref / "train", root / "train")
    captions = root / "train" / "captions.json"
    good = captions.read_text()
    captions.write_text("{not json")
    assert str(captions) in error(capsys, *_pretrain(root, tmp_path / "m.safetensors"))
    captions.write_text("[]")
    assert str(captions) in error(capsys, *_pretrain(root, tmp_path / "m.safetensors"))
    captions.write_text(good)
    frame = sorted((root / "train" / "JPEGImages").rglob("*.jpg"))[0]
    frame.write_bytes(frame.read_bytes()[:300])  # a truncated JPEG
    assert str(frame) in error(capsys, *_pretrain(root, tmp_path / "m.safetensors"))
    assert not (tmp_path / "m.safetensors").exists()


# ---------------------------------------------------------------------------------------------- predict, evaluate, segment


def _dataset(root):
    return ["--dataset", "mevis", "--root", root, "--split", "valid_u"]


@pytest.mark.parametrize("extra, needle", [
    (["--device", "no_such_device"], "--device: unknown device"),
    (["--threshold", "2"], "--threshold"),
    (["--threshold", "nan"], "--threshold"),
    (["--short-side", "-5"], "--short-side must be >= 1"),
    (["--short-side", "0"], "--short-side must be >= 1"),
    (["--frame-chunk", "0"], "--frame-chunk must be >= 1"),
])
def test_predict_and_evaluate_check_model_options_before_any_work(tmp_path, synthref, model_path, capsys,
                                                                  extra, needle):
    out = tmp_path / "predictions"
    assert needle in error(capsys, "predict", *_dataset(synthref), "--model", model_path, "-o", out, *extra)
    assert needle in error(capsys, "evaluate", *_dataset(synthref), "--model", model_path,
                           "--save-predictions", out, *extra)
    assert not out.exists()


def test_segment_checks_the_threshold(tmp_path, model_path, capsys):
    video = os.path.join(os.path.dirname(__file__), "..", "examples", "demo.mp4")
    for value in ("2", "-0.5", "nan"):
        line = error(capsys, "segment", video, "-t", "a cat", "-o", tmp_path / "out", "--model", model_path,
                     "--threshold", value)
        assert "--threshold" in line
    assert not (tmp_path / "out").exists()


def test_evaluate_checks_workers_and_save_predictions(tmp_path, synthref, capsys):
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    for workers in ("0", "-2"):
        line = error(capsys, "evaluate", *_dataset(synthref), "--predictions", predictions, "--workers", workers)
        assert "--workers must be >= 1" in line
    line = error(capsys, "evaluate", *_dataset(synthref), "--predictions", predictions,
                 "--save-predictions", tmp_path / "saved")
    assert "--save-predictions" in line and not (tmp_path / "saved").exists()
    line = error(capsys, "evaluate", *_dataset(synthref), "--predictions", predictions,  # an empty folder
                 "--output", tmp_path / "report.json")
    assert f"--predictions {predictions}: no prediction for any expression" in line
    assert not (tmp_path / "report.json").exists()


def test_submit_checks_max_problems_and_the_zip_path(tmp_path, synthref, capsys):
    line = error(capsys, "submit", "--dataset", "mevis", "--root", synthref, "--split", "valid_u",
                 "--check", tmp_path / "x.zip", "--max-problems", "-1")
    assert "--max-problems must be >= 0" in line
    (tmp_path / "dz.zip").mkdir()
    line = error(capsys, "submit", "--dataset", "mevis", "--root", synthref, "--split", "valid_u",
                 "--predictions", tmp_path, "-o", tmp_path / "dz.zip")
    assert f"-o {tmp_path / 'dz.zip'}: is a directory" in line and ".tmp" not in line


# ---------------------------------------------------------------------------------------------- convert, train


def test_convert_explains_unreadable_checkpoints(tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    (tmp_path / "empty.pth").write_bytes(b"")
    line = error(capsys, "convert", tmp_path / "empty.pth", "-o", out)
    assert "empty.pth: not a readable PyTorch checkpoint (an empty file)" in line
    (tmp_path / "garbage.pth").write_bytes(bytes(range(256)) * 8)
    line = error(capsys, "convert", tmp_path / "garbage.pth", "-o", out)
    assert "garbage.pth: not a readable PyTorch checkpoint" in line and "weights_only" not in line
    assert not out.exists()


@pytest.mark.parametrize("content", ["[1, 2]", '"convnext"', "3"])
def test_convert_clip_config_must_be_a_json_object(tmp_path, capsys, content):
    (tmp_path / "model.pth").write_bytes(b"x")
    (tmp_path / "clip.json").write_text(content)
    line = error(capsys, "convert", tmp_path / "model.pth", "-o", tmp_path / "x.safetensors",
                 "--clip-config", tmp_path / "clip.json")
    assert f"--clip-config {tmp_path / 'clip.json'}: expected a JSON object" in line


def test_convert_output_under_a_file(tmp_path, capsys):
    (tmp_path / "model.pth").write_bytes(b"x")
    (tmp_path / "g.pth").write_text("x")
    line = error(capsys, "convert", tmp_path / "model.pth", "-o", tmp_path / "g.pth" / "x.safetensors")
    assert f"{tmp_path / 'g.pth'} is a file, not a folder" in line and "Errno" not in line


def test_train_resume_reports_a_damaged_state_file(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "tiny_cpu", "optim.max_steps=1", "checkpoint_every=1", "--output-dir", str(run)]) == 0
    capsys.readouterr()
    state = run / "checkpoints" / "step_0000001" / "state.pt"
    for damaged in (b"", b"not a pickle at all" * 10):
        state.write_bytes(damaged)
        line = error(capsys, "train", "tiny_cpu", "optim.max_steps=2", "--resume", "--output-dir", run)
        assert f"{state}: not a readable training state" in line and "weights_only" not in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_0000001"]


def test_an_error_under_a_progress_bar_starts_its_own_line(tmp_path, synthref, capsys):
    video = sorted((synthref / "valid_u" / "JPEGImages").iterdir())[0].name
    (tmp_path / "pred" / video / "0").mkdir(parents=True)
    (tmp_path / "pred" / video / "0" / "00000.png").write_text("not a png")
    assert main(["evaluate", *map(str, _dataset(synthref)), "--predictions", str(tmp_path / "pred")]) == 1
    err = capsys.readouterr().err
    assert "evaluate mevis valid_u:" in err  # the bar was drawn
    assert err.endswith("\n") and err.splitlines()[-1].startswith("ssa-rvos evaluate: error: ")
    assert "00000.png: not a readable image" in err.splitlines()[-1]


def test_train_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "tiny_cpu", "optim.max_steps=2", "checkpoint_every=1", "--output-dir", str(run)]) == 0
    capsys.readouterr()
    newest = run / "checkpoints" / "step_0000002"
    (newest / "model.safetensors").write_bytes((newest / "model.safetensors").read_bytes()[:1000])  # truncated
    assert main(["train", "tiny_cpu", "optim.max_steps=3", "checkpoint_every=1", "--resume",
                 "--output-dir", str(run)]) == 0
    out = capsys.readouterr().out  # the run's log lines
    assert "skipping a damaged checkpoint" in out and "step_0000002" in out
    assert "resumed from" in out and "step_0000001 (step 1)" in out
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000003"
    from ssa_rvos.checkpoint import load_model

    load_model(newest / "model.safetensors")  # rewritten by the resumed run
