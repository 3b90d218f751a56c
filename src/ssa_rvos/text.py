"""Text normalisation shared by the dataset readers and the model; imports nothing heavy (no torch)."""

from __future__ import annotations

__all__ = ["clean_sentence"]


def clean_sentence(text: str) -> str:
    """Lower-case and collapse whitespace: the normalisation of every expression before tokenising
    (every reference loader applies ``" ".join(exp.lower().split())``)."""
    return " ".join(text.lower().split())
