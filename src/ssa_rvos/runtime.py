"""Process-wide torch settings, chosen by one rule each: the device (``auto``), the thread count, and
the process group of a ``torchrun`` launch; and handing freed memory back to the system between the
chunks of a long video (:func:`release_memory`).

They are used by every front end (the command line, :class:`ssa_rvos.SSAPredictor`, training, sharded
prediction, the scripts under ``scripts/`` and ``bench/``), so a device name means the same everywhere,
a thread count set for one run does not outlive it, and training and prediction join torchrun's
processes the same way.
"""

from __future__ import annotations

import ctypes
import datetime
import functools
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "release_memory", "resolve_device", "setup_distributed", "teardown_distributed",
           "torch_threads"]


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


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None off glibc (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_memory() -> bool:
    """Return the heap's free pages to the system (glibc ``malloc_trim(0)``); False where there is no such
    call. Why: a chunk's tensors are freed in a different order than they were allocated, and glibc keeps
    the freed pages mapped, so with the default allocator the resident memory of a long video grows with
    its length although the live data does not. Trimming between chunks keeps the peak at what one chunk
    needs. ``SSA_RVOS_MALLOC_TRIM=0`` turns it off (to measure the difference)."""
    trim = _malloc_trim()
    if trim is None or os.environ.get("SSA_RVOS_MALLOC_TRIM") == "0":
        return False
    trim(0)
    return True


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    owns_group: bool  # this module initialised the process group (and destroys it at the end)

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | None = None) -> DistEnv:
    """Join the process group torchrun describes (or one a caller already made) and pick the device."""
    owns = False
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
        if use_cuda:
            torch.cuda.set_device(local)
        # A long timeout: the other processes wait at a barrier while rank 0 evaluates.
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(hours=2))
        owns = True
    else:
        rank, world, local = 0, 1, 0
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        device = f"cuda:{local}"
    return DistEnv(rank=rank, local_rank=local, world_size=world, device=torch.device(device), owns_group=owns)


def teardown_distributed(env: DistEnv) -> None:
    """Leave the process group if :func:`setup_distributed` made it."""
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()
