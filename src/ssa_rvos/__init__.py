"""ssa-rvos: referring video object segmentation with SSA (CVPR 2025) in pure PyTorch."""

from .build import build_model, list_models, model_config
from .modeling import SSA, SSAConfig, SSAOutput
from .pretrained import list_pretrained, load_pretrained

__version__ = "0.1.0"

__all__ = ["build_model", "list_models", "list_pretrained", "load_pretrained", "model_config", "SSA", "SSAConfig",
           "SSAOutput", "SSAPredictor", "__version__"]


def __getattr__(name: str):
    # The predictor is a front end (it reads video files): imported on first use, not with the package.
    if name == "SSAPredictor":
        from .predictor import SSAPredictor

        return SSAPredictor
    raise AttributeError(f"module 'ssa_rvos' has no attribute {name!r}")
