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
