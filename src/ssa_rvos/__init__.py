"""ssa-rvos: referring video object segmentation with SSA (CVPR 2025) in pure PyTorch.

The names below are imported on first use, so that ``import ssa_rvos`` (and the commands that need no
network, such as ``ssa-rvos evaluate``) do not pay for importing torch.
"""

import importlib

__version__ = "0.1.0"

# name -> the module that defines it
_LAZY = {
    "build_model": ".build", "list_models": ".build", "model_config": ".build",
    "SSA": ".modeling", "SSAConfig": ".modeling", "SSAOutput": ".modeling",
    "list_pretrained": ".pretrained", "load_pretrained": ".pretrained",
    "SSAPredictor": ".predictor",
}

__all__ = ["build_model", "list_models", "list_pretrained", "load_pretrained", "model_config", "SSA", "SSAConfig",
           "SSAOutput", "SSAPredictor", "__version__"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ssa_rvos' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
