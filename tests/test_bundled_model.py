"""The bundled default model ssa_tiny.synthref: it ships inside the package, loads offline, is small,
and segments unseen SynthRef videos well (a held-out sample, generated with a seed used nowhere in
training or in the published table)."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from ssa_rvos.data import MeViS
from ssa_rvos.data.masks import read_mask_png
from ssa_rvos.data.synthref import expression_kinds, generate_split, render_video
from ssa_rvos.evaluation.evaluate import evaluate_predictions, scores_by_group
from ssa_rvos.evaluation.predict import predict_split
from ssa_rvos.pretrained import BUNDLED, DEFAULT_MODEL, bundled_path, load_pretrained

REPO = Path(__file__).resolve().parents[1]

# The shipped weights score J&F 71.6 on this sample (10 videos, 62 expressions; an untrained SSA on the same
# frozen CLIP scores 5.5): appearance 86.7 (19 expressions), motion-only 30.8 (6). The floors leave room for
# numerical differences across machines, and catch a regression of the weights or of the inference path.
FLOOR = 66.0
KIND_FLOORS = {"appearance": 81.0, "motion": 20.0}
# The quick start's demo (examples/demo.mp4, 8 sentences in examples/demo_expressions.txt): mean IoU over
# the sentences 0.432 measured, 3 of 8 at >= 0.5 (the models before: 0.422, 0.363 and 0.311); marking every
# object scores 0.242. So the floor asks for better than "mark everything", averaged over the demo. (The
# README's own sentence, "the star moving to the right", alone: IoU 0.09; the model does not single that
# star out, see docs/synthref.md.)
DEMO_FLOOR = 0.40
SAMPLE_SEED = 7  # training used seed 0, the published table seed 1


def test_bundled_file_is_small_and_matches_its_hash():
    path = bundled_path(DEFAULT_MODEL)
    assert path.stat().st_size <= 30 * 2**20
    _, sha256 = BUNDLED[DEFAULT_MODEL]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthref_sample")
    generate_split(root, split="valid_u", videos=10, frames=12, size=96, seed=SAMPLE_SEED)
    return root


@pytest.mark.slow
def test_bundled_model_segments_held_out_videos(sample, tmp_path):
    model = load_pretrained()  # the default: no name
    assert not model.training and model.config.test_short_side == 96
    dataset = MeViS(sample, "valid_u")
    with torch.inference_mode():
        predict_split(model, dataset, tmp_path / "pred")
    report = evaluate_predictions(dataset, tmp_path / "pred")
    scores = scores_by_group(report, expression_kinds(sample, "valid_u"))
    assert report.num_expressions >= 50 and not report.missing
    assert scores["overall"]["J&F"] >= FLOOR, scores
    for kind, floor in KIND_FLOORS.items():
        assert scores[kind]["J&F"] >= floor, (kind, scores)


def test_quick_start_command_segments_the_demo(tmp_path, capsys):
    """The README's first command, on the shipped demo video, with the default model; then every
    sentence of the demo at once (``--texts-file``), scored against the demo's own masks."""
    from ssa_rvos.cli import main

    out = tmp_path / "out"
    assert main(["segment", str(REPO / "examples" / "demo.mp4"), "--text", "the star moving to the right",
                 "--output", str(out), "--quiet"]) == 0
    assert "[0] 'the star moving to the right'" in capsys.readouterr().out
    masks = np.stack([read_mask_png(out / "0" / f"{t:05d}.png") for t in range(12)])
    assert masks.shape == (12, 192, 192) and masks.any()

    video = render_video(12, frames=12, size=192)  # examples/README.md: the demo is seed 12
    texts = (REPO / "examples" / "demo_expressions.txt").read_text().splitlines()
    assert main(["segment", str(REPO / "examples" / "demo.mp4"), "--texts-file",
                 str(REPO / "examples" / "demo_expressions.txt"), "--output", str(tmp_path / "all"), "--quiet"]) == 0
    ious = []
    for k, text in enumerate(texts):
        (expression,) = [e for e in video.expressions if e["exp"] == text]
        target = np.any([video.objects[i].masks for i in expression["obj_id"]], axis=0)
        masks = np.stack([read_mask_png(tmp_path / "all" / str(k) / f"{t:05d}.png") for t in range(12)])
        ious.append((masks & target).sum() / (masks | target).sum())
    assert len(ious) == 8 and np.mean(ious) >= DEMO_FLOOR, ious


def _diagnose_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("synthref_diagnose", REPO / "scripts" / "synthref_diagnose.py")
    diagnose = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diagnose)
    return diagnose


def test_diagnose_calibration_counts_every_query_once(sample, capsys):
    """``--calibration``: every video query of every single-target expression falls in exactly one score
    bin; a best query is also a right mask; the loss optimum rises with the score and is the formula's;
    a no-object weight outside (0, 1] is refused."""
    diagnose = _diagnose_module()
    assert diagnose.main(["--data", str(sample), "--videos", "2", "--calibration", "--threads", "1"]) == 0
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| overall")]
    dataset, kinds = MeViS(sample, "valid_u"), expression_kinds(sample, "valid_u")
    single = sum(kinds[(v, e.exp_id)] != "multi" for v in dataset.videos()[:2] for e in dataset.video_expressions(v))
    model_queries = load_pretrained().config.num_queries
    assert single >= 3 and sum(int(r[2]) for r in rows) == single * model_queries
    for row in rows:  # kind, scores, queries, mask right, best query, loss optimum
        assert 0 <= float(row[4]) <= float(row[3]) <= 1
    optima = [float(r[5]) for r in rows]
    assert optima == sorted(optima) and 0 <= optima[0] and optima[-1] <= 1
    low, high = (float(x) for x in rows[-1][1].split("-"))
    # the optimum of the weighted cross-entropy at the bin's edges bounds the bin's mean
    assert 0.1 * low / (0.1 * low + 1 - low) - 1e-3 <= optima[-1] <= 0.1 * high / (0.1 * high + 1 - high) + 1e-3
    with pytest.raises(SystemExit):
        diagnose.main(["--data", str(sample), "--calibration", "--no-object-weight", "0"])
    assert "--no-object-weight" in capsys.readouterr().err


def test_diagnose_script_scores_agree(sample, capsys):
    """scripts/synthref_diagnose.py: its columns obey their definitions on the default model (the oracle
    ``best query`` is never below ``top1``; ``union@0.5`` is the protocol's ``union``), and a bad
    ``--thresholds`` is refused."""
    diagnose = _diagnose_module()
    assert diagnose.main(["--data", str(sample), "--videos", "2", "--thresholds", "0.5,0.9", "--threads", "1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    overall = dict(zip(header, (c.strip() for c in lines[2].strip("|").split("|"))))
    assert header[:2] == ["kind", "expressions"] and overall["kind"] == "overall"
    assert int(overall["expressions"]) >= 5
    assert float(overall["best query"]) >= float(overall["top1"]) > 0
    assert float(overall["frame best"]) >= float(overall["frame top1"])
    assert overall["union@0.5"] == overall["union"]
    with pytest.raises(SystemExit):
        diagnose.main(["--data", str(sample), "--thresholds", "0.5,high"])
    assert "--thresholds" in capsys.readouterr().err
