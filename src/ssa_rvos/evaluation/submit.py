"""Server submissions (spec Sec. 8): write the zip layout, and check a zip before uploading it.

MeViS ``valid``: a zip of ``<video>/<exp_id>/<frame>.png``; Ref-YouTube-VOS ``valid``: the same under an
``Annotations/`` root folder. Every expression of the split needs a binary (0/255) PNG of the frame's
size for every frame the meta file lists.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..benchmarks import BENCHMARKS, get_benchmark
from ..data.expressions import DatasetError
from ..fileio import atomic_write


class SubmissionError(ValueError):
    """A submission that cannot be written as asked."""


def _root(dataset) -> str:
    root = get_benchmark(dataset.name).submission_root
    if root is None:
        servers = sorted(b.name for b in BENCHMARKS.values() if b.submission_root is not None)
        raise SubmissionError(f"no evaluation server takes {dataset.name} submissions (only {servers})")
    return root


def _check_png(data: bytes, where: str, size: tuple[int, int]) -> str | None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                return f"{where}: not a PNG ({im.format})"
            if im.mode not in ("L", "P", "1"):
                return f"{where}: expected a single-channel PNG, got mode {im.mode}"
            if (im.size[1], im.size[0]) != tuple(size):  # from the header: nothing decoded yet
                return f"{where}: {im.size[1]}x{im.size[0]}, the frame is {size[0]}x{size[1]}"
            arr = np.array(im.convert("L") if im.mode == "1" else im)
    except (OSError, Image.DecompressionBombError) as e:
        return f"{where}: unreadable image ({e})"
    if arr.shape != tuple(size):
        return f"{where}: {arr.shape[0]}x{arr.shape[1]}, the frame is {size[0]}x{size[1]}"
    values = np.unique(arr)
    if not set(values.tolist()) <= {0, 255}:
        return f"{where}: not binary 0/255 (values {values[:6].tolist()})"
    return None


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _expected(dataset) -> list[tuple[str, str, str]]:
    return [(e.video, e.exp_id, f) for e in dataset.expressions for f in e.frames]


def write_submission(dataset, predictions: str | os.PathLike, output: str | os.PathLike, *,
                     progress: bool = False) -> int:
    """Zip every expected PNG of ``predictions`` into ``output`` in the server's layout; returns the
    number of PNGs. Refuses (writing nothing) when any is missing or malformed."""
    from tqdm import tqdm

    root = _root(dataset)
    predictions, output = Path(predictions), Path(output)
    if not predictions.is_dir():
        raise SubmissionError(f"{predictions}: predictions folder not found (expected <video>/<exp_id>/<frame>.png)")
    expected = _expected(dataset)
    problems = []
    for video, exp_id, frame in expected:
        if not (predictions / video / exp_id / f"{frame}.png").is_file():
            problems.append(f"{video}/{exp_id}/{frame}.png")
    if problems:
        raise SubmissionError(f"{predictions}: {len(problems)} of {len(expected)} PNGs missing, "
                              f"first {problems[0]} (predict the whole split first)")
    sizes: dict[str, tuple[int, int]] = {}

    def save(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for video, exp_id, frame in tqdm(expected, desc="submission", unit="png", disable=not progress):
                path = predictions / video / exp_id / f"{frame}.png"
                data = path.read_bytes()
                if video not in sizes:
                    sizes[video] = dataset.frame_size(video)
                problem = _check_png(data, str(path), sizes[video])
                if problem:
                    raise SubmissionError(problem)
                zf.writestr(f"{root}{video}/{exp_id}/{frame}.png", data)

    atomic_write(output, save)
    return len(expected)


def check_submission(dataset, path: str | os.PathLike, *, progress: bool = False) -> list[str]:
    """Everything wrong with a submission zip: missing videos/expressions/frames, extra files,
    PNGs that are not binary or not of the frame's size. An empty list means ready to upload."""
    from tqdm import tqdm

    root = _root(dataset)
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except zipfile.BadZipFile:
        raise DatasetError(f"{path}: not a zip file") from None
    problems: list[str] = []
    with zf:
        listed = [n for n in zf.namelist() if not n.endswith("/")]
        names = set(listed)
        for name in sorted({n for n in listed if listed.count(n) > 1} if len(names) < len(listed) else ()):
            problems.append(f"duplicate entry {name} ({listed.count(name)} times; a server reads one of them)")
        expected = _expected(dataset)
        wanted = {f"{root}{v}/{e}/{f}.png" for v, e, f in expected}
        present_videos = {n[len(root):].split("/")[0] for n in names if n.startswith(root)}
        present_exps = {tuple(n[len(root):].split("/")[:2]) for n in names if n.startswith(root)}
        reported_videos, reported_exps = set(), set()
        for video, exp_id, frame in expected:
            name = f"{root}{video}/{exp_id}/{frame}.png"
            if name in names:
                continue
            if video not in present_videos:
                if video not in reported_videos:
                    problems.append(f"missing video {video}")
                    reported_videos.add(video)
            elif (video, exp_id) not in present_exps:
                if (video, exp_id) not in reported_exps:
                    problems.append(f"missing expression {video}/{exp_id}")
                    reported_exps.add((video, exp_id))
            else:
                problems.append(f"missing frame {name}")
        for name in sorted(names - wanted):
            problems.append(f"unexpected file {name}")
        sizes: dict[str, tuple[int, int]] = {}
        for video, exp_id, frame in tqdm(expected, desc="check", unit="png", disable=not progress):
            name = f"{root}{video}/{exp_id}/{frame}.png"
            if name not in names:
                continue
            if video not in sizes:
                sizes[video] = dataset.frame_size(video)
            h, w = sizes[video]
            info = zf.getinfo(name)
            limit = 4 * h * w + 2**20  # far above any PNG of the frame's size (RGBA, no compression)
            if info.file_size > limit:
                problems.append(f"{name}: declares {info.file_size:,} bytes uncompressed, more than a {h}x{w} "
                                f"mask can take (not read)")
                continue
            try:
                data = zf.read(name)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, NotImplementedError, OSError) as e:
                # bad CRC, an encrypted entry (RuntimeError), a compression method Python lacks
                problems.append(f"{name}: cannot be read from the zip ({_one_line(e)})")
                continue
            problem = _check_png(data, name, sizes[video])
            if problem:
                problems.append(problem)
    return problems
