"""One inference engine for every caller: ``ssa-rvos predict`` (one process or sharded with torchrun) and
``ssa-rvos segment`` write the same masks, a rerun resumes and clears what an interrupted run left, and the
readers of prediction folders skip those leftovers."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datagen import write_mevis

from ssa_rvos.cli import main
from ssa_rvos.data.masks import read_mask_png
from ssa_rvos.evaluation.predict import shard_videos

SRC = Path(__file__).resolve().parents[1] / "src" / "ssa_rvos"


def read_predictions(folder: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(folder).as_posix(): read_mask_png(p) for p in sorted(folder.glob("*/*/*.png"))}


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("mevis")
    # three videos, so that two processes get unequal shares
    # the server split (no ground truth): predictions only
    write_mevis(root, "valid", num_frames=6)
    write_mevis(root / "more", "valid", seed=3, num_frames=5)
    meta = json.loads((root / "valid" / "meta_expressions.json").read_text())
    more = json.loads((root / "more" / "valid" / "meta_expressions.json").read_text())
    video, entry = next((v, e) for v, e in more["videos"].items() if v not in meta["videos"])
    meta["videos"][video] = entry
    shutil.copytree(root / "more" / "valid" / "JPEGImages" / video, root / "valid" / "JPEGImages" / video)
    (root / "valid" / "meta_expressions.json").write_text(json.dumps(meta))
    assert len(meta["videos"]) == 3
    return root, meta


@pytest.fixture(scope="module")
def one_process(segment_model, split, tmp_path_factory):
    _, checkpoint = segment_model
    root, _ = split
    out = tmp_path_factory.mktemp("pred1")
    assert main(["predict", "--dataset", "mevis", "--root", str(root), "--split", "valid", "--model", str(checkpoint),
                 "-o", str(out)]) == 0
    return out


def test_predict_and_segment_write_identical_masks(segment_model, split, one_process, tmp_path, capsys):
    _, checkpoint = segment_model
    root, meta = split
    predicted = read_predictions(one_process)
    assert len(predicted) == sum(len(v["frames"]) * len(v["expressions"]) for v in meta["videos"].values())
    for video, entry in meta["videos"].items():
        exp_ids = list(entry["expressions"])
        texts = [" ".join(entry["expressions"][e]["exp"].lower().split()) for e in exp_ids]
        out = tmp_path / video
        argv = ["segment", str(root / "valid" / "JPEGImages" / video), "-o", str(out), "--model", str(checkpoint),
                "--selection", "union", "--quiet"]
        for text in texts:
            argv += ["--text", text]
        assert main(argv) == 0
        for i, exp_id in enumerate(exp_ids):
            for frame in entry["frames"]:
                seg = read_mask_png(out / str(i) / f"{frame}.png")
                assert np.array_equal(seg, predicted[f"{video}/{exp_id}/{frame}.png"]), (video, exp_id, frame)
    # not a comparison of empty (or full) masks
    stack = np.stack(list(predicted.values()))
    assert 0.05 < stack.mean() < 0.95


def test_videos_are_shared_out_deterministically():
    videos = [f"v{i}" for i in range(7)]
    shards = [shard_videos(videos, r, 3) for r in range(3)]
    assert shards == [["v0", "v3", "v6"], ["v1", "v4"], ["v2", "v5"]]
    assert sorted(sum(shards, [])) == videos
    with pytest.raises(ValueError, match="rank 3 is not one of 3 processes"):
        shard_videos(videos, 3, 3)


def _torchrun(nproc: int, argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC.parent)}
    # --standalone: a rendezvous on a free loopback port
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "ssa_rvos", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_two_torchrun_processes_write_what_one_process_writes(segment_model, split, one_process, tmp_path):
    _, checkpoint = segment_model
    root, meta = split
    out = tmp_path / "pred2"
    argv = ["predict", "--dataset", "mevis", "--root", str(root), "--split", "valid", "--model", str(checkpoint),
            "-o", str(out), "--device", "cpu"]
    done = _torchrun(2, argv)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = read_predictions(one_process)
    got = read_predictions(out)
    assert got.keys() == expected.keys()
    assert all(np.array_equal(got[k], expected[k]) for k in expected)
    total = sum(len(v["expressions"]) for v in meta["videos"].values())
    # one report, from the first process, with both processes' counts
    reports = re.findall(r"predicted (\d+) expressions, (\d+) already in .* \(2 processes\)", done.stderr)
    assert reports == [(str(total), "0")]

    # An interrupted run under another world size: a finished expression removed, a half-written one left
    # behind; the rerun with one process redoes only what is missing and clears the debris.
    video = sorted(meta["videos"])[1]
    exp_id = sorted(meta["videos"][video]["expressions"])[0]
    shutil.rmtree(out / video / exp_id)
    debris = out / video / f".{exp_id}.abcd1234.partial"
    debris.mkdir()
    (debris / "00000.png").write_bytes(b"half")
    assert main(argv) == 0
    assert not debris.exists()
    again = read_predictions(out)
    assert again.keys() == expected.keys() and all(np.array_equal(again[k], expected[k]) for k in expected)


def test_readers_of_prediction_folders_skip_leftover_partial_folders(one_process, split, tmp_path, capsys):
    root, meta = split
    pred = tmp_path / "pred"
    shutil.copytree(one_process, pred)
    video = sorted(meta["videos"])[0]
    junk = pred / video / ".0.deadbeef.partial"
    junk.mkdir()
    (junk / "00000.png").write_bytes(b"not a png")
    out = tmp_path / "mask_dict.json"
    assert main(["masks", "to-json", str(pred), "-o", str(out)]) == 0
    assert len(json.loads(out.read_text())) == sum(len(v["expressions"]) for v in meta["videos"].values())


def test_no_caller_but_the_engine_runs_the_network_for_inference():
    """Inference entry points of the model are called by the predictor only (training runs its own forward);
    the command line holds no output format."""
    calls = re.compile(r"\.(forward_frames|forward_video|forward_mask_features)\(|\bpostprocess\(|\bpredict_video\b")
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(("modeling/", "training/")) or rel in ("predictor.py", "postprocess.py"):
            continue
        hits = [line for line in path.read_text().splitlines() if calls.search(line)]
        assert not hits, (rel, hits)
    cli = (SRC / "cli.py").read_text()
    for name in ("rle_encode", "write_mask_png", "\"instances\"", "VideoWriter", "draw_overlay"):
        assert name not in cli, name


def test_segment_rerun_clears_what_an_interrupted_run_left(segment_model, split, tmp_path, capsys):
    _, checkpoint = segment_model
    root, meta = split
    video = sorted(meta["videos"])[0]
    out = tmp_path / "out"
    (out / ".0.abcd1234.partial").mkdir(parents=True)
    (out / ".0.abcd1234.partial" / "00000.png").write_bytes(b"half")
    (out / ".overlay.mp4.abcd1234.partial.mp4").write_bytes(b"half")
    (out / ".masks.json.x1y2.partial.tmp").write_text("{")
    (out / ".notes").write_text("the user's own hidden file")
    assert main(["segment", str(root / "valid" / "JPEGImages" / video), "-o", str(out), "--model", str(checkpoint),
                 "--text", "the object", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".notes", "0"]
    assert ".0.abcd1234.partial" in capsys.readouterr().out  # named in the summary's "removed" list
