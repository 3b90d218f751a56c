import json
import math

import pytest
import torch

from ssa_rvos.checkpoint import convert_official_checkpoint, load_model, read_checkpoint, save_model
from ssa_rvos.cli import main
from ssa_rvos.modeling import ClipConfig


def test_save_and_load_round_trip(tiny_model, tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(tiny_model, path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left behind
    loaded = load_model(path).eval()
    assert loaded.config == tiny_model.config
    frames = torch.rand(1, 2, 3, 40, 50) * 255
    with torch.no_grad():
        a, b = tiny_model(frames, ["a red square"]), loaded(frames, ["a red square"])
    torch.testing.assert_close(a.video_logits, b.video_logits, rtol=0, atol=0)
    torch.testing.assert_close(a.video_masks(), b.video_masks(), rtol=0, atol=0)


def test_reading_a_file_that_is_not_a_checkpoint_names_it(tmp_path):
    bad = tmp_path / "notes.safetensors"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="notes.safetensors"):
        read_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        read_checkpoint(tmp_path / "missing.safetensors")


def test_info_prints_the_authors_trainable_count(fixtures_dir, capsys):
    rows = [line.split("\t") for line in (fixtures_dir / "official-large-keys.tsv").read_text().splitlines()[1:]]
    expected = sum(math.prod(int(x) for x in s.split("x")) if s else 1 for _, s, t in rows if t == "1")
    assert main(["info", "--model", "ssa_convnext_large"]) == 0
    out = capsys.readouterr().out
    total_line = [line for line in out.splitlines() if line.startswith("total")][0]
    assert f"{expected:,}" in total_line.split()
    assert "adapters" in out and "video decoder" in out


def test_convert_command_writes_a_loadable_checkpoint(fixtures_dir, tmp_path, capsys):
    folder = fixtures_dir / "official-tiny"
    out = tmp_path / "converted.safetensors"
    rc = main(["convert", str(folder / "official_tiny.pth"), "-o", str(out), "--clip-model", "convnext_tinyfix",
               "--clip-config", str(folder / "meta.json")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "unmapped checkpoint keys (0)" in text and "model keys not in the checkpoint (0)" in text
    config, state = read_checkpoint(out)
    assert config.hidden_dim == 64 and config.frame_decoder.ffn_dim == 128 and config.video_decoder.ffn_dim == 128
    assert config.clip.architecture["vision_cfg"]["timm_model_name"] == "convnext_atto"
    # The file holds what the library conversion makes of the same checkpoint and CLIP settings.
    arch = json.loads((folder / "meta.json").read_text())["clip_config"]
    clip = ClipConfig(model_name="convnext_tinyfix", architecture=arch)
    expected, _ = convert_official_checkpoint(folder / "official_tiny.pth", clip=clip)
    assert config == expected.config
    want = expected.state_dict()
    assert state.keys() == want.keys()
    assert all(torch.equal(state[k], want[k]) for k in want)
    loaded = load_model(out).state_dict()
    assert all(torch.equal(loaded[k], want[k]) for k in want)


@pytest.mark.parametrize("argv,needle", [
    (["convert", "no/such/file.pth", "-o", "x.safetensors"], "no such file"),
    (["info", "--model", "nope"], "unknown model"),
])
def test_bad_input_is_one_line_and_nonzero(argv, needle, capsys):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc != 0
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_convert_rejects_a_checkpoint_of_the_wrong_size(fixtures_dir, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    rc = main(["convert", str(fixtures_dir / "official-tiny" / "official_tiny.pth"), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc != 0 and "shape mismatch" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_convert_rejects_a_pickle_that_is_not_a_state_dict(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    torch.save([1, 2, 3], bad)
    rc = main(["convert", str(bad), "-o", str(tmp_path / "o.safetensors")])
    assert rc != 0 and "bad.pth" in capsys.readouterr().err
