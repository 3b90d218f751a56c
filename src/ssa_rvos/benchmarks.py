"""The video benchmarks by name: everything the package knows about each, in one table.

``"mevis"``, ``"ytvos"`` and ``"davis"`` are the keys every front end takes (``--dataset``, the training
config's ``eval.dataset`` and ``data.datasets[].name``). Each :class:`Benchmark` says which reader opens
it, its default evaluation split, the test resize and query selection of the authors' inference (spec
Sec. 5), how it is scored, and the layout of its server submission (spec Sec. 8). Pure data: importing
this module imports no reader, no torch.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

__all__ = ["BENCHMARKS", "Benchmark", "get_benchmark", "open_benchmark"]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark.

    reader: ``module:Class`` of its reader; default_split: the split used when none is named;
    test_short_side: the test resize's short side (the long side is capped at
    :data:`ssa_rvos.data.transforms.TEST_MAX_LONG`); selection: the inference's query selection (``union``:
    every query above the threshold, for MeViS's multi-object expressions; ``top1``); protocol: how
    :func:`ssa_rvos.evaluation.evaluate.evaluate_predictions` scores it (``mevis``: J and F averaged per
    expression; ``davis``: the Ref-DAVIS17 annotator-merged DAVIS protocol); submission_root: the folder of
    ``<video>/<exp_id>/<frame>.png`` inside a server submission zip, None where no server takes one.
    Predictions are always ``<video>/<exp_id>/<frame>.png`` (0/255), frames named as the dataset's JPEGs.
    """

    name: str
    title: str
    reader: str
    default_split: str
    test_short_side: int
    selection: str
    protocol: str
    submission_root: str | None

    def reader_class(self) -> type:
        module, name = self.reader.split(":")
        return getattr(importlib.import_module(module), name)


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(name="mevis", title="MeViS", reader="ssa_rvos.data.mevis:MeViS", default_split="valid_u",
                  test_short_side=448, selection="union", protocol="mevis", submission_root=""),
        Benchmark(name="ytvos", title="Ref-YouTube-VOS", reader="ssa_rvos.data.ytvos:RefYouTubeVOS",
                  default_split="valid", test_short_side=480, selection="top1", protocol="mevis",
                  submission_root="Annotations/"),
        Benchmark(name="davis", title="Ref-DAVIS17", reader="ssa_rvos.data.ytvos:RefDAVIS17", default_split="valid",
                  test_short_side=480, selection="top1", protocol="davis", submission_root=None),
    )
}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``; an unknown name is a ValueError listing the known ones."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r} (expected one of {', '.join(BENCHMARKS)})") from None


def open_benchmark(name: str, root: str | os.PathLike, split: str | None = None):
    """The reader of benchmark ``name`` on ``root`` (split None: its default split)."""
    benchmark = get_benchmark(name)
    return benchmark.reader_class()(root, split or benchmark.default_split)
