import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The project's shared data: $SSA_RVOS_SHARED, else the folder beside the checkout."""
    return Path(os.environ.get("SSA_RVOS_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    path = shared_dir() / "fixtures"
    assert path.is_dir(), f"test fixtures not found at {path} (set SSA_RVOS_SHARED)"
    return path


@pytest.fixture(scope="session")
def tiny_model():
    from ssa_rvos import build_model

    torch.manual_seed(0)
    return build_model("ssa_tiny").eval()


@pytest.fixture(autouse=True)
def _eval_and_seed(request):
    torch.manual_seed(0)
    yield
    if "tiny_model" in request.fixturenames:
        request.getfixturevalue("tiny_model").eval().zero_grad(set_to_none=True)


@pytest.fixture(scope="session")
def segment_model(tmp_path_factory):
    """(model, checkpoint path): a random ``ssa_tiny`` whose test short side is 64 (fast), with its video
    mask features centred on a SynthRef clip so that masks cover about half of a frame (a random model's
    otherwise cover nearly all of it, which would make mask comparisons weak)."""
    import dataclasses

    from ssa_rvos import build_model, model_config
    from ssa_rvos.checkpoint import save_model
    from ssa_rvos.data.synthref import render_video
    from ssa_rvos.data.transforms import resize_frames, test_resize_shape

    torch.manual_seed(0)
    model = build_model(dataclasses.replace(model_config("ssa_tiny"), test_short_side=64)).eval()
    frames = render_video(0, frames=6, size=(48, 64)).frames
    frames = resize_frames(frames, test_resize_shape(48, 64, short=64))
    with torch.no_grad():
        images, _ = model.preprocess(torch.from_numpy(frames).permute(0, 3, 1, 2).float())
        text = model.encode_text(["the object"]).repeat_frames(len(frames))
        features = model.forward_mask_features(images, text)
        model.video_decoder.mask_features.bias.sub_(features.mean((0, 2, 3)))
    path = tmp_path_factory.mktemp("segment_model") / "ssa_tiny_test.safetensors"
    save_model(model, path)
    return model, path
