"""Text normalisation shared by the dataset readers and the model; imports nothing heavy (no torch)."""

from __future__ import annotations

__all__ = ["clean_sentence", "is_blank"]


def clean_sentence(text: str) -> str:
    """Lower-case and collapse whitespace: the normalisation of every expression before tokenising
    (every reference loader applies ``" ".join(exp.lower().split())``)."""
    return " ".join(text.lower().split())


def is_blank(text: str) -> bool:
    """True when nothing in ``text`` would be seen: only whitespace (any Unicode space), invisible format
    characters (zero-width spaces and joiners, byte-order marks, direction marks) and control characters.
    Such a sentence refers to nothing, though its tokens are not empty."""
    import unicodedata

    return all(c.isspace() or unicodedata.category(c) in ("Cf", "Cc", "Zs", "Zl", "Zp") for c in text)
