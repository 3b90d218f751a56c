"""Operators with a pure-PyTorch reference implementation."""

from .ms_deform_attn import MSDeformAttn, ms_deform_attn_sample, ms_deform_attn_sample_reference
from .reference import reference_paths, use_reference

__all__ = ["MSDeformAttn", "ms_deform_attn_sample", "ms_deform_attn_sample_reference", "reference_paths",
           "use_reference"]
