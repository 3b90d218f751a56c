"""Mask formats: COCO run-length encoding, palette (label) PNGs, and MeViS ``mask_dict.json`` <-> PNG folders.

MeViS stores every annotated object as one list of COCO compressed RLEs (``null`` where the object is
absent), one per frame in the order of the video's sorted frame list. Ref-YouTube-VOS and DAVIS store
one palette PNG per frame whose pixel value is the object id. Predictions are PNG folders of 0/255
binary masks, ``<video>/<exp_id>/<frame>.png``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..fileio import atomic_write
from .expressions import DatasetError, list_frames, read_json, safe_name


def _davis_palette() -> list[int]:
    """The DAVIS / Ref-YouTube-VOS colour map (the PASCAL VOC one): label i -> its bit-reversed RGB."""
    palette = []
    for label in range(256):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


DAVIS_PALETTE: list[int] = _davis_palette()


def _mask_api():
    try:
        from pycocotools import mask as mask_api
    except ImportError as e:  # pragma: no cover - a dependency; only a broken install gets here
        raise ImportError("COCO RLE needs pycocotools: pip install pycocotools") from e
    return mask_api


def rle_encode(mask: np.ndarray) -> dict:
    """(H, W) bool -> COCO compressed RLE ``{"size": [H, W], "counts": str}`` (JSON-ready)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode expects one (H, W) mask, got shape {mask.shape}")
    rle = _mask_api().encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def _compressed_counts(counts: bytes) -> np.ndarray:
    """The run lengths of a COCO compressed RLE string (pycocotools' ``rleFrString`` format: each count in
    5-bit groups with a continuation bit, a sign bit in the last group, counts from the third on stored as
    differences to the count two before), decoded to validate it before pycocotools reads it."""
    c = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    if (c < 0).any() or (c > 63).any():
        raise ValueError("RLE counts string has characters outside the COCO alphabet")
    last = (c & 0x20) == 0  # the last 5-bit group of a count
    if not last[-1]:
        raise ValueError("RLE counts string is truncated")
    group = np.concatenate([[0], np.cumsum(last)[:-1]])  # which count each character belongs to
    starts = np.concatenate([[0], np.flatnonzero(last)[:-1] + 1])
    k = np.arange(c.size) - starts[group]  # position of the character within its count
    if k.max() > 11:
        raise ValueError("RLE counts string holds a count too large to be real")
    raw = np.zeros(int(group[-1]) + 1, dtype=np.int64)
    np.add.at(raw, group, (c & 0x1F) << (5 * k))
    negative = last & ((c & 0x10) != 0)
    raw[group[negative]] -= np.left_shift(1, 5 * (k[negative] + 1))
    out = raw.copy()
    out[2::2] = np.cumsum(raw[2::2])  # from the third count on: a difference to the count two before
    out[3::2] = raw[1] + np.cumsum(raw[3::2]) if raw.size > 3 else out[3::2]
    return out


def rle_decode(rle: dict) -> np.ndarray:
    """COCO RLE (compressed ``counts`` as str or bytes, or uncompressed list counts) -> (H, W) bool.

    The counts must cover exactly H x W pixels (pycocotools would otherwise decode uninitialised memory
    for a short RLE): a ValueError says what is wrong.
    """
    return decode_checked(rle_check(rle))


def decode_checked(compact: dict) -> np.ndarray:
    """The (H, W) bool mask of an RLE that :func:`rle_check` returned."""
    return _mask_api().decode({"size": compact["size"], "counts": compact["counts"]}).astype(bool)


def _stacked_runs(compacts: Sequence[dict | None], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All frames' run lengths end to end (an absent frame: one background run of the whole frame), which
    frame each run is of, and whether it is a foreground run (runs alternate background, foreground, ...
    within each frame)."""
    h, w = size
    empty = np.array([h * w], dtype=np.int64)
    runs = [empty if c is None else c["runs"] for c in compacts]
    lengths = np.fromiter(map(len, runs), np.int64, len(runs))
    frame = np.repeat(np.arange(len(runs)), lengths)
    first = np.cumsum(lengths) - lengths  # index of each frame's first run
    foreground = (np.arange(int(lengths.sum())) - first[frame]) % 2 == 1
    return (np.concatenate(runs) if runs else np.zeros(0, dtype=np.int64)), frame, foreground


def decode_stack(compacts: Sequence[dict | None], size: tuple[int, int]) -> np.ndarray:
    """Checked RLEs (:func:`rle_check`; None: an empty frame) of one size -> a ``(T, W, H)`` C-contiguous
    bool array: the masks in column-major order, the order RLE runs are in (``.transpose(0, 2, 1)`` is the
    (T, H, W) view). One ``np.repeat`` of the alternating values over the run lengths the check already
    parsed: several times faster than pycocotools' decode of the same RLEs (or one slice per run)."""
    h, w = size
    runs, _, foreground = _stacked_runs(compacts, size)
    return np.repeat(foreground, runs).reshape(len(compacts), w, h)


def stack_boxes(compacts: Sequence[dict | None], size: tuple[int, int]) -> np.ndarray:
    """Per frame of :func:`decode_stack`'s masks, a box ``[y0, y1, x0, x1]`` (half-open, in the (H, W)
    orientation) holding every foreground pixel, from the run lengths alone, no pixel touched: ``(T, 4)``
    int64, ``[H, 0, W, 0]`` for an empty frame. Exact in x; in y exact where every run stays in one column,
    else the whole height (a run that wraps from one column into the next holds the last and the first
    row)."""
    h, w = size
    boxes = np.tile(np.array([h, 0, w, 0], dtype=np.int64), (len(compacts), 1))
    runs, frame, foreground = _stacked_runs(compacts, size)
    if runs.size == 0:
        return boxes
    stops = np.cumsum(runs)
    starts = stops - runs
    frame_start = np.zeros(len(compacts) + 1, dtype=np.int64)
    frame_start[1:] = np.cumsum(np.fromiter((h * w for _ in compacts), np.int64, len(compacts)))
    keep = foreground & (runs > 0)
    frame = frame[keep]
    first = starts[keep] - frame_start[frame]  # first and last pixel of each run, within its frame
    last = stops[keep] - 1 - frame_start[frame]
    col0, col1 = first // h, last // h
    one_column = col0 == col1
    np.minimum.at(boxes[:, 0], frame, np.where(one_column, first % h, 0))
    np.maximum.at(boxes[:, 1], frame, np.where(one_column, last % h, h - 1) + 1)
    np.minimum.at(boxes[:, 2], frame, col0)
    np.maximum.at(boxes[:, 3], frame, col1 + 1)
    return boxes


def rle_check(rle: dict) -> dict:
    """Validate a COCO RLE as :func:`rle_decode` does, without decoding it: returns the compact form
    (``size`` and compressed ``counts`` bytes) that pycocotools decodes, plus the run lengths it was
    checked with (``runs``), or raises a ValueError."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("an RLE must be a dict with 'size' and 'counts'")
    size = rle["size"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in size)):
        raise ValueError(f"RLE 'size' must be [height, width] (two non-negative integers), got {size!r}")
    size = [int(v) for v in size]
    counts = rle["counts"]
    mask_api = _mask_api()
    if isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
            raise ValueError("RLE 'counts' must be non-negative integers")
        if sum(counts) != size[0] * size[1]:
            raise ValueError(f"RLE counts sum to {sum(counts)}, expected {size[0]}x{size[1]} = {size[0] * size[1]}")
        compact = mask_api.frPyObjects({"size": size, "counts": counts}, size[0], size[1])
        compact["runs"] = np.asarray(counts, dtype=np.int64)
    elif isinstance(counts, (str, bytes)):
        try:
            data = counts.encode("ascii") if isinstance(counts, str) else counts
        except UnicodeEncodeError:
            raise ValueError("RLE 'counts' string is not ASCII (expected a COCO compressed RLE)") from None
        runs = _compressed_counts(data)
        if (runs < 0).any():
            raise ValueError("RLE counts string decodes to a negative run length")
        if int(runs.sum()) != size[0] * size[1]:
            raise ValueError(f"RLE counts sum to {int(runs.sum())}, expected {size[0]}x{size[1]} = "
                             f"{size[0] * size[1]}")
        compact = {"size": size, "counts": data, "runs": runs}
    else:
        raise ValueError(f"RLE 'counts' must be a string or a list of integers, got {type(counts).__name__}")
    return compact


def rle_area(rle: dict) -> int:
    return int(_mask_api().area({"size": rle["size"], "counts": rle["counts"].encode("ascii")
                                 if isinstance(rle["counts"], str) else rle["counts"]}))


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """A palette or grayscale PNG -> (H, W) uint8 pixel values (palette indices, not colours)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode in ("P", "L", "1"):
                arr = np.array(im if im.mode != "1" else im.convert("L"))
            elif im.mode in ("I", "I;16"):
                arr = np.array(im)
                if arr.max(initial=0) > 255:
                    raise DatasetError(f"{path}: label values above 255 in a {im.mode} PNG")
            else:
                raise DatasetError(f"{path}: expected a palette or grayscale PNG, got mode {im.mode}")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{path}: not a readable image ({e})") from None
    return arr.astype(np.uint8)


def write_label_png(path: str | os.PathLike, labels: np.ndarray, palette: Sequence[int] | None = DAVIS_PALETTE) -> None:
    """(H, W) integer labels -> palette PNG (``palette=None``: 8-bit grayscale), written atomically."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a label map must be (H, W), got shape {labels.shape}")
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError("label values must lie in 0..255")
    im = Image.fromarray(labels.astype(np.uint8), mode="L")
    if palette is not None:
        im = im.convert("P")
        im.putpalette(list(palette))
    atomic_write(path, lambda tmp: im.save(tmp, format="PNG"))


def write_mask_png(path: str | os.PathLike, mask: np.ndarray) -> None:
    """(H, W) bool -> a 0/255 grayscale PNG (the prediction format of every benchmark), atomically."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be (H, W), got shape {mask.shape}")
    write_label_png(path, np.where(mask.astype(bool), 255, 0).astype(np.uint8), palette=None)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_header(data: bytes) -> tuple[int, int, int, int] | None:
    """``(height, width, bit depth, colour type)`` from a PNG's IHDR chunk, or None if ``data`` does not
    start like a PNG."""
    if len(data) < 26 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big"), data[24], data[25]


def _spng():
    try:
        import pyspng
    except ImportError:  # the fallback: Pillow reads every PNG, about half as fast
        return None
    return pyspng


def _zlib_ng():
    try:
        from zlib_ng import zlib_ng
    except ImportError:  # the fallback: libspng inflates with its own zlib, about 3x slower on masks
        return None
    return zlib_ng


_STORED_BLOCK = 65535  # the largest stored (uncompressed) deflate block
_IEND = b"\0\0\0\0IEND\xaeB`\x82"


def _restored_png(data: bytes, header: tuple[int, int, int, int], zng) -> bytes | None:
    """The same PNG with its image data inflated by zlib-ng and stored uncompressed, or None where
    ``data`` is not a well-formed PNG of the size its header gives (the caller then decodes the original).

    zlib's inflate is nearly all of libspng's time on a mask PNG (0.6 of 0.63 ms at 480x854); zlib-ng
    inflates the same data 20x faster. Re-wrapped as stored deflate blocks, libspng then only copies
    and un-filters the rows: the PNG semantics (filters, interlacing, bit depths) stay libspng's. Each
    chunk's CRC is checked here and the zlib stream's own checksum by the inflate, as libspng would."""
    height, width, depth, colour = header
    if (len(data) < 33 or data[26:28] != b"\0\0" or data[28] not in (0, 1)
            or zng.crc32(data[12:29]) != int.from_bytes(data[29:33], "big")):
        return None
    channels = {0: 1, 2: 3, 6: 4}[colour]
    if data[28] == 0:
        expected = height * (width * channels + 1)
    else:  # Adam7: seven reduced images, each row with its filter byte
        expected = 0
        for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)):
            w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
            if w and h:
                expected += h * (w * channels + 1)
    parts: list[bytes] = []
    pos, end, after_image_data = 33, len(data), False
    while True:
        if pos + 12 > end:
            return None
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        stop = pos + 12 + n
        if stop > end:
            return None
        if kind == b"IDAT":
            if after_image_data or zng.crc32(data[pos + 4:stop - 4]) != int.from_bytes(data[stop - 4:stop], "big"):
                return None  # IDAT chunks not consecutive, or damaged
            parts.append(data[pos + 8:stop - 4])
        elif kind == b"IEND":
            break
        elif parts:
            after_image_data = True
        pos = stop
    if not parts:
        return None
    inflater = zng.decompressobj()
    try:
        raw = inflater.decompress(b"".join(parts), expected + 1)
    except zng.error:
        return None
    if len(raw) != expected or not inflater.eof:
        return None
    blocks = (expected + _STORED_BLOCK - 1) // _STORED_BLOCK
    image_data = [b"IDAT\x78\x01"]  # a zlib header (deflate, 32 KB window), then stored blocks
    view = memoryview(raw)
    for start in range(0, expected, _STORED_BLOCK):
        size = min(_STORED_BLOCK, expected - start)
        final = int(start + _STORED_BLOCK >= expected)
        image_data += [bytes((final, size & 255, size >> 8, ~size & 255, (~size >> 8) & 255)), view[start:start + size]]
    image_data.append(zng.adler32(raw).to_bytes(4, "big"))
    crc = 0
    for part in image_data:
        crc = zng.crc32(part, crc)
    size = (2 + 5 * blocks + expected + 4).to_bytes(4, "big")
    return b"".join([data[:33], size, *image_data, crc.to_bytes(4, "big"), _IEND])


def _fast_decode(data: bytes, header: tuple[int, int, int, int] | None) -> np.ndarray | None:
    """8-bit grayscale, RGB and RGBA PNGs through libspng (pyspng; the image data inflated by zlib-ng first,
    see :func:`_restored_png`): (H, W) or (H, W, C) uint8, or None
    where the PNG is of another kind, too large for Pillow's decompression-bomb limit, damaged, or pyspng
    is missing (the caller then reads it with Pillow, which names the problem). Palette PNGs are not
    decoded here: libspng would expand them to colours, and a label map needs the indices."""
    if header is None or header[2] != 8 or header[3] not in (0, 2, 6):
        return None
    height, width = header[0], header[1]
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and height * width > limit:
        return None
    spng = _spng()
    if spng is None:
        return None
    zng = _zlib_ng()
    if zng is not None:
        data = _restored_png(data, header, zng) or data
    try:
        arr = spng.load(data)
    except Exception:  # noqa: BLE001 - any failure: Pillow reads it again and reports it
        return None
    return arr if arr.shape[:2] == (height, width) else None


def read_mask_png(path: str | os.PathLike, out: np.ndarray | None = None) -> np.ndarray:
    """A prediction PNG -> (H, W) bool: any nonzero value is foreground, as the official evaluators read it.

    Grayscale and palette PNGs give the same masks as :func:`read_label_png` (palette indices, not
    colours), 16-bit grayscale any nonzero value (labels above 255 included); RGB and RGBA PNGs are
    foreground where any colour channel is nonzero (the alpha channel is ignored). 8-bit grayscale, RGB
    and RGBA go through libspng (pyspng), about twice as fast as Pillow; everything else, and any PNG
    libspng refuses, through Pillow.

    out: an (H, W) bool array to write the mask into (saves a fresh allocation per frame when a caller
    fills a stack); the PNG must then be of that size, else a DatasetError names both sizes."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a folder, not a PNG") from None
    header = png_header(data)
    arr = _fast_decode(data, header)
    if arr is not None and arr.ndim == 2:
        if out is None:
            return arr > 0
        _check_size(path, arr.shape, out.shape)
        return np.greater(arr, 0, out=out)
    if arr is not None:
        mask = arr[..., :3].any(axis=-1)
    elif header is not None and header[3] in (2, 6):  # RGB / RGBA that libspng did not take (16-bit, ...)
        try:
            with Image.open(path) as im:
                mask = np.asarray(im.convert("RGB")).any(axis=-1)
        except (OSError, Image.DecompressionBombError) as e:
            raise DatasetError(f"{path}: not a readable image ({e})") from None
    elif header is not None and header[3] in (0, 4) and header[2] == 16:  # 16-bit: any nonzero value
        try:
            with Image.open(path) as im:
                mask = np.array(im.getchannel(0) if im.mode in ("LA", "La") else im) > 0
        except (OSError, Image.DecompressionBombError) as e:
            raise DatasetError(f"{path}: not a readable image ({e})") from None
    else:
        mask = read_label_png(path) > 0
    if out is None:
        return mask
    _check_size(path, mask.shape, out.shape)
    out[...] = mask
    return out


def _check_size(path: Path, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if tuple(shape) != tuple(expected):
        raise DatasetError(f"{path}: prediction is {shape[0]}x{shape[1]}, the frame is {expected[0]}x{expected[1]}")


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    def save(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f)

    atomic_write(path, save)


def mask_dict_to_pngs(meta_path: str | os.PathLike, mask_dict_path: str | os.PathLike, out_dir: str | os.PathLike,
                      *, videos: Iterable[str] | None = None, progress: bool = False) -> int:
    """Write every MeViS expression's ground truth (union of its anno_ids) as ``<video>/<exp_id>/<frame>.png``.

    Frame sizes come from the RLEs; an expression whose objects are absent from every frame of a
    video takes the size of any other object of that video. Returns the number of PNGs written.
    """
    meta_path, mask_dict_path, out_dir = Path(meta_path), Path(mask_dict_path), Path(out_dir)
    meta = read_json(meta_path, "file")
    mask_dict = read_json(mask_dict_path, "file")
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
        raise DatasetError(f"{meta_path}: expected {{'videos': {{video: ...}}}}")
    if not isinstance(mask_dict, dict) or not all(rles is None or isinstance(rles, list) for rles in mask_dict.values()):
        raise DatasetError(f"{mask_dict_path}: expected {{anno_id: [RLE or null per frame]}} (a MeViS mask_dict.json)")
    wanted = None if videos is None else set(videos)
    items = [(v, m) for v, m in sorted(meta["videos"].items()) if wanted is None or v in wanted]
    if wanted is not None and len(items) != len(wanted):
        missing = sorted(wanted - {v for v, _ in items})
        raise DatasetError(f"{meta_path}: no video {missing[0]!r}")
    from tqdm import tqdm

    # Every name that becomes part of an output path, checked before anything is written.
    for video, entry in items:
        safe_name(video, where=str(meta_path), what="video")
        if not isinstance(entry, dict) or not isinstance(entry.get("frames"), list) or not isinstance(
                entry.get("expressions"), dict):
            raise DatasetError(f"{meta_path}: video {video!r} needs 'frames' and 'expressions'")
        for frame in entry["frames"]:
            safe_name(frame, where=str(meta_path), what=f"frame of video {video!r}")
        for exp_id in entry["expressions"]:
            safe_name(exp_id, where=str(meta_path), what=f"expression id of video {video!r}")
    # Every RLE, checked before anything is written (a bad one must not leave half the output written).
    plans = []
    for video, entry in items:
        frames, exps = entry["frames"], entry["expressions"]
        size, per_exp = None, {}
        for exp_id, exp in exps.items():
            annos = exp.get("anno_id", []) if isinstance(exp, dict) else None
            if not isinstance(annos, list):
                raise DatasetError(f"{meta_path}: expression {exp_id} of video {video!r} needs an 'anno_id' list")
            checked = []
            for anno in annos:
                rles = mask_dict.get(str(anno))
                if rles is None:
                    raise DatasetError(f"{mask_dict_path}: no anno_id {anno} (video {video!r}, expression {exp_id})")
                if len(rles) != len(frames):
                    raise DatasetError(f"{mask_dict_path}: anno_id {anno} has {len(rles)} masks but video {video!r} "
                                       f"has {len(frames)} frames (expression {exp_id})")
                for t, rle in enumerate(rles):
                    if not rle:
                        continue
                    try:
                        compact = rle_check(rle)
                    except (ValueError, TypeError) as e:
                        raise DatasetError(f"{mask_dict_path}: anno_id {anno} frame {frames[t]!r}: {e}") from None
                    if size is None:
                        size = tuple(compact["size"])
                    elif tuple(compact["size"]) != size:
                        raise DatasetError(f"{mask_dict_path}: anno_id {anno} frame {frames[t]!r} is "
                                           f"{tuple(compact['size'])}, expected {size} (video {video!r}, "
                                           f"expression {exp_id})")
                    checked.append((t, compact))
            per_exp[exp_id] = checked
        if size is None and exps:
            raise DatasetError(f"{mask_dict_path}: video {video!r} has no mask to take a frame size from")
        plans.append((video, frames, size, per_exp))
    written = 0
    for video, frames, size, per_exp in tqdm(plans, desc="masks", unit="video", disable=not progress):
        for exp_id, checked in per_exp.items():
            union = np.zeros((len(frames), *size), dtype=bool)
            for t, compact in checked:
                union[t] |= decode_checked(compact)
            for t, frame in enumerate(frames):
                write_mask_png(out_dir / video / str(exp_id) / f"{frame}.png", union[t])
                written += 1
    return written


def pngs_to_mask_dict(png_dir: str | os.PathLike, meta_path: str | os.PathLike | None = None) -> tuple[dict, dict]:
    """Read ``<video>/<exp_id>/<frame>.png`` folders into a MeViS-style pair (meta_expressions, mask_dict).

    Every expression folder becomes one object with a fresh anno_id (= obj_id), numbered in sorted
    (video, exp_id) order; with ``meta_path`` the expression texts and frame lists are taken from that
    meta file (every frame it lists must have a PNG), else the text is empty and the frames are the PNGs.
    """
    png_dir = Path(png_dir)
    if not png_dir.is_dir():
        raise DatasetError(f"{png_dir}: not a folder of <video>/<exp_id>/<frame>.png masks")
    meta_videos = None
    if meta_path is not None:
        meta = read_json(Path(meta_path), "file")
        meta_videos = meta.get("videos") if isinstance(meta, dict) else None
        if not isinstance(meta_videos, dict):
            raise DatasetError(f"{meta_path}: expected {{'videos': {{video: ...}}}}")
    out_meta: dict = {"videos": {}}
    mask_dict: dict = {}
    next_id = 0
    # Hidden entries are never predictions: an interrupted writer's temporary folders
    # (``.<exp_id>.<random>.partial``, ssa_rvos.fileio) are hidden.
    for video_dir in sorted(p for p in png_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        video = video_dir.name
        src = meta_videos.get(video) if meta_videos is not None else None
        if meta_videos is not None and src is None:
            raise DatasetError(f"{meta_path}: no video {video!r} (found in {png_dir})")
        exp_dirs = sorted((p for p in video_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                          key=lambda p: (0, int(p.name)) if p.name.isdigit() else (1, p.name))
        frames = list(src["frames"]) if src is not None else None
        exps = {}
        for exp_dir in exp_dirs:
            names = list_frames(exp_dir, ".png")
            if frames is None:
                frames = names
            missing = sorted(set(frames) - set(names))
            if missing:
                raise DatasetError(f"{exp_dir}: no mask for frame {missing[0]!r} (video {video!r}, "
                                   f"expression {exp_dir.name})")
            rles = []
            for frame in frames:
                m = read_mask_png(exp_dir / f"{frame}.png")
                rles.append(rle_encode(m) if m.any() else None)
            text = ""
            if src is not None:
                text = src.get("expressions", {}).get(exp_dir.name, {}).get("exp", "")
            mask_dict[str(next_id)] = rles
            exps[exp_dir.name] = {"exp": text, "obj_id": [next_id], "anno_id": [next_id]}
            next_id += 1
        out_meta["videos"][video] = {"frames": frames or [], "expressions": exps}
    return out_meta, mask_dict
