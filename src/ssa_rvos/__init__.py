"""ssa-rvos: referring video object segmentation with SSA (CVPR 2025) in pure PyTorch."""

from .build import build_model, list_models, model_config
from .modeling import SSA, SSAConfig, SSAOutput

__version__ = "0.1.0"

__all__ = ["build_model", "list_models", "model_config", "SSA", "SSAConfig", "SSAOutput", "__version__"]
