"""Operators with a pure-PyTorch reference implementation."""

from .ms_deform_attn import MSDeformAttn, ms_deform_attn_sample

__all__ = ["MSDeformAttn", "ms_deform_attn_sample"]
