"""Process-wide torch settings, chosen by one rule each: the device (``auto``) and the thread count.

Both are used by every front end (the command line, :class:`ssa_rvos.SSAPredictor`, training, the
scripts under ``scripts/`` and ``bench/``), so a device name means the same everywhere and a thread
count set for one run does not outlive it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["resolve_device", "torch_threads"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): cuda if available, else mps, else cpu; a named device must be available."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: CUDA is not available on this machine")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device}: MPS is not available on this machine")
    return dev


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` (0 or None: leave the setting alone), and
    restore the caller's count afterwards, whatever happens: the count is process-wide, and an
    in-process caller (a test, a notebook) must not inherit a script's choice."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
