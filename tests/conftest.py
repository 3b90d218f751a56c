import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


MAX_WORKERS = 4  # pytest-xdist's `-n auto` (pyproject's addopts): one worker per core, at most this many
# The files with the longest tests, longest first (150, 135, 85, 45 and 35 s of a worker's time, two workers
# on a 2-core AVX-512 machine; the next is under 20 s). xdist hands out whole files in collection order:
# these start first and the short files fill in around them, so that no long file starts last and runs alone.
LONGEST_FIRST = ("test_scripts.py", "test_onnx.py", "test_onnx_official.py", "test_hostile.py", "test_training.py")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pytest_xdist_auto_num_workers(config):
    """Workers for ``-n auto``: one per core, at most MAX_WORKERS (each holds its own torch, models and
    exports in memory)."""
    return max(1, min(MAX_WORKERS, _cores()))


@pytest.hookimpl(trylast=True)  # after pytest-randomly's shuffle, whose order it keeps otherwise
def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def suite_threads(env) -> int | None:
    """The torch threads the suite runs at. SSA_RVOS_TEST_THREADS=N: N for the whole suite (the results must
    not depend on it; the suite is checked at 1 and 2 threads). Else, in a pytest-xdist worker, its share of
    the cores, so that the workers together do not oversubscribe them. None: torch's default."""
    threads, workers = env.get("SSA_RVOS_TEST_THREADS"), env.get("PYTEST_XDIST_WORKER_COUNT")
    if threads:
        return int(threads)
    if workers:
        return max(1, _cores() // int(workers))
    return None


def pytest_configure(config):
    threads = suite_threads(os.environ)
    if threads:
        torch.set_num_threads(threads)


def _process_state() -> dict:
    """The process-wide settings a test may change and that change what later tests compute."""
    from ssa_rvos.modeling.ops import use_reference

    return {
        "torch threads": torch.get_num_threads(),
        "grad mode": torch.is_grad_enabled(),
        "inference mode": torch.is_inference_mode_enabled(),
        "default dtype": torch.get_default_dtype(),
        "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
        "float32 matmul precision": torch.get_float32_matmul_precision(),
        "reference operators": use_reference(),
        "working directory": os.getcwd(),
        "numpy errors": np.geterr(),
    }


@pytest.fixture(autouse=True)
def _no_leaked_process_state():
    """Fail a test that leaves process-wide state changed (and restore it, so the tests after it run
    as they would alone): order independence is checked on every test, not only by shuffled runs."""
    before = _process_state()
    yield
    after = _process_state()
    if after != before:
        torch.set_num_threads(before["torch threads"])
        torch.set_grad_enabled(before["grad mode"])
        torch.set_default_dtype(before["default dtype"])
        torch.use_deterministic_algorithms(before["deterministic algorithms"])
        torch.set_float32_matmul_precision(before["float32 matmul precision"])
        os.chdir(before["working directory"])
        np.seterr(**before["numpy errors"])
        from ssa_rvos.modeling.ops.reference import _state

        _state.reference = before["reference operators"]
        changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
        pytest.fail(f"the test changed process-wide state (before, after): {changed}")


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


@pytest.fixture
def tiny_checkpoint(tiny_model, tmp_path):
    """The session's tiny random model as a checkpoint file."""
    from ssa_rvos.checkpoint import save_model

    path = tmp_path / "tiny.safetensors"
    save_model(tiny_model, path)
    return path


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


# ------------------------------------------------------------------------------ shared data (read-only)


@pytest.fixture(scope="session")
def synthref_root(tmp_path_factory) -> Path:
    """A tiny SynthRef root (MeViS layout) with the splits train and valid_u: 2 videos each, 6 frames of
    64x64, seed 3. Built once per session and shared: tests read it, never write into it."""
    from ssa_rvos.data.synthref import generate_split

    root = tmp_path_factory.mktemp("synthref")
    for split in ("train", "valid_u"):
        generate_split(root, split=split, videos=2, frames=6, size=64, seed=3)
    return root


@pytest.fixture(scope="session")
def mevis_root(tmp_path_factory):
    """(root, infos): a generated MeViS tree (tests/datagen.write_mevis) with the splits valid_u (ground
    truth) and valid (server split, none), ``infos[split]`` describing each. Built once per session and
    shared: tests read it, never write into it."""
    from datagen import write_mevis

    root = tmp_path_factory.mktemp("mevis")
    return root, {split: write_mevis(root, split) for split in ("valid_u", "valid")}
