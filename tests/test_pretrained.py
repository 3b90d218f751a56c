"""Models by name (bundled, file, folder, hf://), fp16 export, the ablation switches of the training
config, per-kind scores, and the pretrain-clip command."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ssa_rvos.build import build_clip
from ssa_rvos.checkpoint import load_model, save_model
from ssa_rvos.cli import main
from ssa_rvos.data.synthref import expression_kinds, generate_split
from ssa_rvos.evaluation.evaluate import EvaluationReport, ExpressionScore, scores_by_group
from ssa_rvos.modeling import ClipConfig
from ssa_rvos.pretrained import BUNDLED, DEFAULT_MODEL, bundled_path, resolve_weights
from ssa_rvos.training.config import load_config


@pytest.fixture
def checkpoint(tiny_model, tmp_path):
    path = tmp_path / "run" / "checkpoints" / "step_0000010" / "model.safetensors"
    save_model(tiny_model, path)
    return path


def test_names_files_and_folders_resolve(checkpoint, tmp_path):
    assert resolve_weights(checkpoint) == checkpoint
    assert resolve_weights(str(checkpoint.parent)) == checkpoint  # a training checkpoint folder
    assert DEFAULT_MODEL in BUNDLED and resolve_weights(None) == bundled_path(DEFAULT_MODEL)
    with pytest.raises(ValueError, match="without trained weights"):
        resolve_weights("ssa_tiny")
    with pytest.raises(FileNotFoundError, match="no such file"):
        resolve_weights(tmp_path / "nothing.safetensors")
    with pytest.raises(FileNotFoundError, match="without model.safetensors"):
        resolve_weights(tmp_path)
    with pytest.raises(ValueError, match="expected hf://"):
        resolve_weights("hf://only-owner")


def test_bundled_weights_are_checked(monkeypatch, capsys, tmp_path):
    """A bundled name resolves only to an intact file: an unknown name, a file missing from the installation
    and a file whose SHA-256 differs from the registered one are refused (the CLI in one line)."""
    import ssa_rvos.pretrained as pretrained
    from ssa_rvos.releases import RELEASES

    # the bundled names first, then the authors' released ones
    assert pretrained.list_pretrained() == sorted(BUNDLED) + sorted(RELEASES)
    assert DEFAULT_MODEL in pretrained.list_pretrained()
    file, sha256 = BUNDLED[DEFAULT_MODEL]
    with pytest.raises(ValueError, match="unknown bundled model 'ssa_tiny.other'"):
        bundled_path("ssa_tiny.other")
    monkeypatch.setitem(pretrained.BUNDLED, "ssa_tiny.gone", ("ssa_tiny_gone.safetensors", sha256))
    with pytest.raises(FileNotFoundError, match="ssa_tiny_gone.safetensors is missing from this installation"):
        resolve_weights("ssa_tiny.gone")
    flipped = sha256[:-1] + ("0" if sha256[-1] != "0" else "1")  # the shipped file no longer matches
    monkeypatch.setitem(pretrained.BUNDLED, DEFAULT_MODEL, (file, flipped))
    with pytest.raises(ValueError, match="a damaged or replaced file"):
        resolve_weights(None)
    demo = Path(__file__).resolve().parents[1] / "examples" / "demo.mp4"
    assert main(["segment", str(demo), "-t", "the red star", "-o", str(tmp_path / "out")]) != 0
    assert not (tmp_path / "out").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "damaged or replaced" in err[0], err


def test_hub_names_go_through_hf_hub_download(checkpoint, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, filename, revision=None):
        calls.append((repo_id, filename, revision))
        return str(checkpoint)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert resolve_weights("hf://owner/repo/sub/model.safetensors") == checkpoint
    assert resolve_weights("hf://owner/repo/model.safetensors@v1.0") == checkpoint
    assert calls == [("owner/repo", "sub/model.safetensors", None), ("owner/repo", "model.safetensors", "v1.0")]


def test_fp16_export_halves_the_file_and_loads_back_as_float32(tiny_model, tmp_path):
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    save_model(tiny_model, full)
    save_model(tiny_model, half, dtype=torch.float16)
    stored = load_file(half)
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    assert half.stat().st_size < 0.55 * full.stat().st_size
    model = load_model(half)
    for k, v in model.state_dict().items():
        assert v.dtype == tiny_model.state_dict()[k].dtype
        assert torch.equal(v, tiny_model.state_dict()[k].half().to(v.dtype)), k


def test_training_config_ablation_switches_reach_the_network():
    config = load_config("synthref", ["model.clip_weights=null", "model.use_adapters=false",
                                      "model.sequential_alignment=false"])
    net = config.model.ssa_config()
    assert not net.use_adapters and not net.video_decoder.sequential_alignment and net.test_short_side == 96
    default = load_config("synthref", ["model.clip_weights=null"]).model.ssa_config()
    assert default.use_adapters and default.video_decoder.sequential_alignment
    with pytest.raises(ValueError, match="test_short_side"):
        load_config("synthref", ["model.test_short_side=0"])


def _score(video, exp_id, j, f):
    return ExpressionScore(video=video, exp_id=exp_id, text="", j=j, f=f, frames=1)


def test_scores_by_group_are_means_over_each_group():
    report = EvaluationReport(dataset="mevis", split="valid_u", protocol="mevis", j=0.5, f=0.5, jf=0.5,
                              num_expressions=3,
                              expressions=[_score("a", "0", 1.0, 0.8), _score("a", "1", 0.0, 0.2), _score("b", "0", 0.5, 0.5)])
    out = scores_by_group(report, {("a", "0"): "motion", ("a", "1"): "motion", ("b", "0"): "appearance"})
    assert list(out) == ["overall", "motion", "appearance"]
    assert out["overall"]["J"] == pytest.approx(50) and out["overall"]["expressions"] == 3
    assert out["motion"] == pytest.approx({"J": 50, "F": 50, "J&F": 50, "expressions": 2})
    assert out["appearance"]["J&F"] == pytest.approx(50)


def test_expression_kinds_of_a_split(synthref_root):
    kinds = expression_kinds(synthref_root, "valid_u")
    meta = json.loads((synthref_root / "valid_u" / "meta_expressions.json").read_text())["videos"]
    assert len(kinds) == sum(len(v["expressions"]) for v in meta.values())
    for (video, exp_id), kind in kinds.items():
        assert meta[video]["expressions"][exp_id]["kind"] == kind


def test_pretrain_clip_command(tmp_path, capsys):
    generate_split(tmp_path / "data", split="train", videos=12, frames=6, size=48, seed=0)
    generate_split(tmp_path / "data", split="valid_u", videos=4, frames=6, size=48, seed=1)
    out = tmp_path / "clip" / "c.safetensors"
    args = ["pretrain-clip", "--root", str(tmp_path / "data"), "-o", str(out), "--steps", "3", "--batch-size", "8",
            "--image-size", "32", "--threads", "1", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "held-out valid_u top-1 retrieval" in printed
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["config"]["steps"] == 3 and 0 <= report["i2t"] <= 1
    clip, _ = build_clip(ClipConfig(model_name="ssa_tiny_clip"), weights=str(out))  # loads strictly
    assert np.isfinite(report["loss"])
    # Bad values are one-line usage errors
    assert main(args + ["--batch-size", "1"]) == 2
    assert "--batch-size must be >= 2" in capsys.readouterr().err
    assert main(["pretrain-clip", "--root", str(tmp_path / "nothing"), "-o", str(out), "--quiet"]) == 1
    assert "nothing" in capsys.readouterr().err
