"""The maintainer scripts behind the shipped model: scripts/export_model.py (how the bundled weights are
written) and scripts/synthref_table.py (the published SynthRef table)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ssa_rvos.checkpoint import load_model
from ssa_rvos.data import MeViS
from ssa_rvos.data.synthref import expression_kinds
from ssa_rvos.evaluation.evaluate import evaluate_predictions, scores_by_group
from ssa_rvos.evaluation.predict import predict_split

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_model_writes_fp16_weights_with_a_note(segment_model, tmp_path, capsys):
    model, checkpoint = segment_model
    export = load_script("export_model")
    out = tmp_path / "exported.safetensors"
    assert export.main([str(checkpoint), str(out), "--fp16", "--note", "a test export"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} (")
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["note"] == "a test export"
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert "F16" in dtypes and "F32" not in dtypes
    assert out.stat().st_size < 0.6 * checkpoint.stat().st_size
    loaded = load_model(out)
    assert loaded.config == model.config
    for name, p in model.state_dict().items():
        q = loaded.state_dict()[name]
        if p.is_floating_point():
            assert q.dtype == torch.float32 and torch.equal(q, p.half().float()), name
        else:
            assert torch.equal(q, p), name
    with pytest.raises(SystemExit):
        export.main([str(checkpoint), str(tmp_path / "exported.pt")])
    assert "must be a .safetensors file" in capsys.readouterr().err


def test_synthref_table_scores_each_model_per_kind(segment_model, synthref_root, tmp_path, capsys):
    _, checkpoint = segment_model
    data = synthref_root
    table = load_script("synthref_table")
    out = tmp_path / "table"
    argv = ["--data", str(data), "--model", f"tiny={checkpoint}", "--model", f"tiny again={checkpoint}",
            "--output", str(out), "--threads", "1"]
    assert table.main(argv) == 0
    stdout = capsys.readouterr().out
    saved = json.loads((out / "table.json").read_text())

    # the same numbers as predicting and scoring the split directly
    dataset = MeViS(data, "valid_u")
    with torch.inference_mode():
        predict_split(load_model(checkpoint), dataset, tmp_path / "direct")
    expected = scores_by_group(evaluate_predictions(dataset, tmp_path / "direct"), expression_kinds(data, "valid_u"))
    assert list(saved["results"]) == ["tiny", "tiny again"]
    for label in ("tiny", "tiny again"):
        assert saved["results"][label].keys() == expected.keys()
        for group, scores in expected.items():
            assert saved["results"][label][group] == pytest.approx(scores, abs=1e-9), (label, group)
    assert (out / "tiny").is_dir() and (out / "tiny_again").is_dir()  # labels made safe as folder names
    assert (out / "table.md").read_text().strip() == stdout.strip()
    overall = expected["overall"]
    assert f"| tiny again | {overall['J']:.1f} / {overall['F']:.1f} / **{overall['J&F']:.1f}** |" in stdout

    with pytest.raises(SystemExit):
        table.main(["--data", str(data), "--model", "no-label", "--output", str(out)])
    assert "expected LABEL=NAME_OR_PATH" in capsys.readouterr().err
