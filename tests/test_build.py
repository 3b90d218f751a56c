import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from ssa_rvos import build_model, list_models, model_config


def test_presets():
    assert {"ssa_convnext_large", "ssa_tiny"} <= set(list_models())
    large = model_config("ssa_convnext_large")
    assert large.clip.model_name == "convnext_large_d_320" and large.hidden_dim == 256
    assert (large.frame_decoder.layers, large.video_decoder.layers, large.pixel_decoder.layers) == (9, 6, 6)
    with pytest.raises(ValueError, match="unknown model"):
        model_config("nope")
    tiny, shallow = model_config("ssa_tiny"), model_config("ssa_tiny_shallow")
    assert (shallow.frame_decoder.layers, shallow.video_decoder.layers, shallow.pixel_decoder.layers) == (3, 3, 2)
    assert shallow.hidden_dim == tiny.hidden_dim and shallow.clip == tiny.clip and shallow.adapter == tiny.adapter


def test_every_recipe_counts_the_layers_its_model_has():
    """The losses weigh one prediction per decoder layer: a recipe whose counts do not fit its preset is refused
    when loaded (not at the first step), and every shipped recipe fits."""
    from importlib import resources

    from ssa_rvos.training.config import load_config

    recipes = sorted(p.name[:-5] for p in (resources.files("ssa_rvos") / "training" / "recipes").iterdir()
                     if p.name.endswith(".yaml"))
    assert "synthref_shallow" in recipes and len(recipes) >= 10
    for name in recipes:
        config = load_config(name)
        network = config.model.ssa_config()
        assert config.loss.frame_layers == network.frame_decoder.layers + 1, name
        assert config.loss.video_layers == network.video_decoder.layers, name
    with pytest.raises(ValueError, match="loss.frame_layers=10 and loss.video_layers=6 do not fit model.preset "
                                         "ssa_tiny_shallow: it makes 4 frame predictions"):
        load_config("synthref", ["model.preset=ssa_tiny_shallow"])


def test_clip_weights_from_a_local_file(tmp_path):
    source = build_model("ssa_tiny")
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in source.backbone.clip.state_dict().items()}, str(path))
    loaded = build_model("ssa_tiny", clip_weights=str(path))
    for (name, a), b in zip(source.backbone.clip.state_dict().items(), loaded.backbone.clip.state_dict().values()):
        assert torch.equal(a, b), name
    # Random init differs, so the file really was read.
    other = build_model("ssa_tiny")
    assert not torch.equal(other.backbone.clip.token_embedding.weight, loaded.backbone.clip.token_embedding.weight)


def test_clip_weights_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        build_model("ssa_tiny", clip_weights=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="unknown CLIP weights 'no_such_tag'"):
        build_model("ssa_tiny", clip_weights="no_such_tag")


def test_import_does_not_pull_optional_or_training_packages():
    code = "import sys, ssa_rvos; bad = [m for m in ('av', 'pycocotools', 'tensorboard') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "ssa_rvos", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("ssa-rvos ")
