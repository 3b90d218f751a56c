"""A switch between the fast paths of the model's operators and their plain reference versions.

Every optimised path in :mod:`ssa_rvos.modeling` keeps the straightforward computation it replaces;
``reference_paths()`` makes the model run those instead, so tests can check that both agree and
benchmarks can time one against the other::

    with reference_paths():
        expected = model(frames, texts)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_state = threading.local()


def use_reference() -> bool:
    """True inside ``reference_paths()`` (per thread)."""
    return getattr(_state, "reference", False)


@contextmanager
def reference_paths(enabled: bool = True) -> Iterator[None]:
    """Run the reference version of every optimised operator inside the block."""
    previous = use_reference()
    _state.reference = enabled
    try:
        yield
    finally:
        _state.reference = previous
