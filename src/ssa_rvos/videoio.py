"""Read a user's video lazily, and write an overlay video.

A *video input* is one of

* a video file (mp4, avi, mkv, webm, ogv, mov, m4v; any container FFmpeg reads), decoded with PyAV
  (``pip install ssa-rvos[video]``); frames are named ``00000``, ``00001``, ... by their index in the file;
* a single image file (a one-frame video, named by its stem);
* a folder of JPEG / PNG frames, sorted naturally (``frame2`` before ``frame10``), named by their stems;
* a list of image paths, in the given order, named by their stems;
* a numpy array, (T, H, W, 3) RGB or (T, H, W) grayscale, uint8; frames are named like a video file's.

:func:`open_video` checks what it can cheaply up front (the file exists and decodes, a folder holds images
of one size) and raises a one-line :class:`VideoError` (a ``ValueError``) or ``FileNotFoundError``
naming the file at fault. Frames are decoded only when :meth:`VideoInput.frames` is iterated, one at a time,
as (T, H, W, 3) uint8 RGB (grayscale, RGBA and palette images are converted), so a start / end / every
selection never holds the whole video in memory.

:class:`VideoWriter` writes RGB frames to a video file under a temporary name and renames it when
closed, so an interrupted run leaves no half-written video.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .fileio import temporary_path

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "Frame",
    "VideoError",
    "VideoInput",
    "VideoWriter",
    "draw_overlay",
    "open_video",
]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".ogv", ".mov", ".m4v")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_INSTALL_HINT = "pip install ssa-rvos[video]"


class VideoError(ValueError):
    """A video input cannot be read: the message names the file and what is wrong."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame: ``index`` in the input, ``name`` (file stem or zero-padded index), ``image``
    (H, W, 3) uint8 RGB; ``time``: its presentation time in seconds (video files; None elsewhere)."""

    index: int
    name: str
    image: np.ndarray
    time: float | None = None


def _import_av():
    try:
        import av
    except ImportError as e:
        raise ImportError(f"reading and writing video files needs PyAV: {_INSTALL_HINT}") from e
    return av


def _natural_key(name: str) -> list:
    # digits compare as numbers, so frame2 sorts before frame10; ties broken by the plain name
    return [(0, int(part), part) if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name)] + [
        (2, 0, name)]


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode == "P":  # a palette may carry transparency; going through RGBA keeps Pillow quiet about it
        im = im.convert("RGBA")
    if im.mode != "RGB":
        im = im.convert("RGB")  # L, LA, RGBA (alpha dropped), CMYK, I;16, ...
    return np.asarray(im, dtype=np.uint8)


_EXIF_ORIENTATION = 0x0112


def _display_size(im: Image.Image) -> tuple[int, int]:
    """(H, W) of an image as viewers show it: an EXIF orientation of 5-8 (a phone held upright) swaps the
    stored width and height. Read from the header, nothing decoded."""
    orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    return (im.width, im.height) if orientation in (5, 6, 7, 8) else (im.height, im.width)


def _check_selection(start: int, end: int | None, every: int) -> None:
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if end is not None and end <= start:
        raise ValueError(f"end must be greater than start, got start={start}, end={end}")
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")


class VideoInput:
    """A lazily decoded video. ``size`` is the (H, W) of every frame; ``fps`` the frame rate where the
    input has one (video files), else None; ``num_frames`` the frame count where known without decoding
    (folders, lists, arrays), else None."""

    source: str
    size: tuple[int, int]
    fps: float | None = None
    num_frames: int | None = None

    def _decode(self, start: int, end: int | None, every: int) -> Iterator[Frame]:  # pragma: no cover - abstract
        raise NotImplementedError

    def frames(self, *, start: int = 0, end: int | None = None, every: int = 1) -> Iterator[Frame]:
        """Frames ``start, start + every, ...`` before ``end`` (None: to the last), decoded one at a time.

        Raises :class:`VideoError` if the selection holds no frame."""
        _check_selection(start, end, every)
        count = 0
        for frame in self._decode(start, end, every):
            count += 1
            yield frame
        if count == 0:
            raise VideoError(f"{self.source}: no frames in the selection start={start}, end={end}, every={every}"
                             + (f" (the input has {self.num_frames} frames)" if self.num_frames is not None else ""))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, size={self.size})"


class _ImageFiles(VideoInput):
    """Image files of one size (a folder's, a list's or a single image)."""

    def __init__(self, paths: Sequence[Path], *, source: str) -> None:
        if not paths:
            raise VideoError(f"{source}: no JPEG or PNG frames")
        stems: dict[str, Path] = {}
        size = None
        for path in paths:
            if path.stem in stems:
                raise VideoError(f"{path}: two frames named {path.stem!r} ({stems[path.stem].name} and {path.name}); "
                                 "their masks would overwrite each other")
            stems[path.stem] = path
            # Only the header is read here: checking thousands of frames stays cheap.
            try:
                with Image.open(path) as im:
                    hw = _display_size(im)
            except FileNotFoundError:
                raise FileNotFoundError(f"{path}: no such file") from None
            except (OSError, Image.DecompressionBombError) as e:
                raise VideoError(f"{path}: not a readable image ({e})") from None
            if size is None:
                size = hw
            elif hw != size:
                raise VideoError(f"{path}: frame size {hw[0]}x{hw[1]} differs from the first frame's "
                                 f"{size[0]}x{size[1]} ({paths[0].name}); all frames must have one size")
        self.paths = list(paths)
        self.source = source
        self.size = size
        self.num_frames = len(self.paths)

    def _decode(self, start: int, end: int | None, every: int) -> Iterator[Frame]:
        for i in range(start, min(end if end is not None else self.num_frames, self.num_frames), every):
            path = self.paths[i]
            try:
                with Image.open(path) as im:
                    image = _to_rgb(ImageOps.exif_transpose(im))  # as a viewer shows it
            except FileNotFoundError:
                raise FileNotFoundError(f"{path}: no such file (removed while reading?)") from None
            except (OSError, Image.DecompressionBombError) as e:
                raise VideoError(f"{path}: not a readable image ({e})") from None
            if image.shape[:2] != self.size:
                raise VideoError(f"{path}: frame size changed while reading")
            yield Frame(i, path.stem, image)


class _VideoFile(VideoInput):
    """A video file decoded with PyAV, frame by frame."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.source = str(path)
        first = None
        try:
            with self._open() as container:
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                self.fps = float(rate) if rate else None
                self.num_frames = None  # the container's count is a guess for many formats; never trusted
                try:
                    first = next(self._stream_frames(container), None)
                except EOFError:  # av.error.EOFError: a stream without a single frame
                    first = None
        except (VideoError, ImportError):
            raise
        except Exception as e:  # PyAV raises FFmpegError subclasses, and a few plain ones on broken headers
            raise VideoError(f"{path}: not a readable video ({_one_line(e)})") from None
        if first is None:
            raise VideoError(f"{path}: the video has no frames")
        # A phone video is often stored sideways with a display matrix saying how to turn it: frames are
        # turned as players show them (PyAV's rotation: degrees counter-clockwise), so masks match the view.
        self._quarter_turns = round((getattr(first, "rotation", 0) or 0) / 90) % 4
        self.size = (first.width, first.height) if self._quarter_turns % 2 else (first.height, first.width)

    def _open(self):
        av = _import_av()
        try:
            container = av.open(str(self.path))
        except av.error.EOFError:  # the headers end the file: not a single frame follows
            raise VideoError(f"{self.path}: the video has no frames (the file ends before its first frame)") from None
        except av.error.FFmpegError as e:
            raise VideoError(f"{self.path}: not a readable video ({_one_line(e)})") from None
        if not container.streams.video:
            container.close()
            raise VideoError(f"{self.path}: no video stream in this file")
        return container

    @staticmethod
    def _stream_frames(container):
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return container.decode(stream)

    def _decode(self, start: int, end: int | None, every: int) -> Iterator[Frame]:
        av = _import_av()
        with self._open() as container:
            frames = self._stream_frames(container)
            i = -1
            while True:
                try:
                    frame = next(frames)
                except (StopIteration, EOFError):
                    return
                except av.error.FFmpegError as e:
                    raise VideoError(f"{self.path}: decoding failed after frame {i} ({_one_line(e)})") from None
                i += 1
                if end is not None and i >= end:
                    return
                if i < start or (i - start) % every:
                    continue  # decoded (a stream cannot skip exactly) but never converted or kept
                image = frame.to_ndarray(format="rgb24")
                if self._quarter_turns:
                    image = np.ascontiguousarray(np.rot90(image, k=self._quarter_turns))
                if image.shape[:2] != self.size:
                    raise VideoError(f"{self.path}: frame {i} is {image.shape[0]}x{image.shape[1]}, the first "
                                     f"was {self.size[0]}x{self.size[1]} (a resolution change mid-stream)")
                yield Frame(i, f"{i:05d}", image, frame.time)


class _FrameArray(VideoInput):
    def __init__(self, array: np.ndarray) -> None:
        if array.dtype != np.uint8 or not (array.ndim == 3 or (array.ndim == 4 and array.shape[-1] == 3)):
            raise VideoError(f"a video array must be (T, H, W, 3) or (T, H, W) uint8, got shape {array.shape} "
                             f"{array.dtype}")
        if min(array.shape[:3]) == 0:
            raise VideoError(f"a video array needs at least one frame of at least 1x1 pixels, got shape {array.shape}")
        self.array = array
        self.source = f"array{tuple(array.shape)}"
        self.size = (int(array.shape[1]), int(array.shape[2]))
        self.num_frames = int(array.shape[0])

    def _decode(self, start: int, end: int | None, every: int) -> Iterator[Frame]:
        for i in range(start, min(end if end is not None else self.num_frames, self.num_frames), every):
            frame = self.array[i]
            if frame.ndim == 2:
                frame = np.repeat(frame[..., None], 3, axis=-1)
            yield Frame(i, f"{i:05d}", np.ascontiguousarray(frame))


def _one_line(e: BaseException) -> str:
    # FFmpeg errors read "[Errno N] message: 'file'"; the message alone is enough beside our file name
    text = (getattr(e, "strerror", None) or str(e)).strip() or type(e).__name__
    return text.splitlines()[0]


def open_video(video: str | os.PathLike | Sequence[str | os.PathLike] | np.ndarray | VideoInput) -> VideoInput:
    """Open a video input (see the module docstring) without decoding more than its first frame."""
    if isinstance(video, VideoInput):
        return video
    if isinstance(video, np.ndarray):
        return _FrameArray(video)
    if isinstance(video, (str, os.PathLike)):
        path = Path(video)
        if path.is_dir():
            try:
                entries = [path / name for name in os.listdir(path)]
            except OSError as e:
                raise VideoError(f"{path}: cannot list the folder ({e.strerror})") from None
            images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                      and p.is_file()]
            if not images:
                raise VideoError(f"{path}: no JPEG or PNG frames in this folder")
            return _ImageFiles(sorted(images, key=lambda p: _natural_key(p.name)), source=str(path))
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        if not path.is_file():
            raise VideoError(f"{path}: not a file or folder")
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return _ImageFiles([path], source=str(path))
        return _VideoFile(path)  # any other suffix: whatever FFmpeg can read
    if isinstance(video, Sequence) and not isinstance(video, (bytes, bytearray)):
        paths = [Path(p) for p in video]
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"{p}: no such file")
        return _ImageFiles(paths, source=f"{len(paths)} image files" if paths else "an empty list of images")
    raise TypeError(f"a video must be a path, a list of image paths or a uint8 array, got {type(video).__name__}")


# ---------------------------------------------------------------------------------------------------- writing


class VideoWriter:
    """Write (H, W, 3) uint8 RGB frames to ``path`` (H.264 if FFmpeg has it, else MPEG-4 Part 2; yuv420p).

    The file appears under its name only when :meth:`close` succeeds; :meth:`abort` (or leaving a ``with``
    block by an exception) removes the partial file. Odd heights and widths are padded by one edge pixel,
    as yuv420p needs even sides.
    """

    def __init__(self, path: str | os.PathLike, *, fps: float = 10.0) -> None:
        av = _import_av()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A fresh hidden name beside the target (not mkstemp, whose 0600 mode the renamed video would keep);
        # the container format follows the suffix (.mp4 when none).
        self._tmp = temporary_path(self.path, suffix=self.path.suffix or ".mp4")
        self._container = av.open(str(self._tmp), mode="w")
        self._codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        # a rational rate: PyAV wants one, and 29.97 fps must not become 29
        self._rate = Fraction(fps).limit_denominator(1001) if fps and fps > 0 else Fraction(10)
        self._stream = None
        self._size = None

    def write(self, image: np.ndarray) -> None:
        av = _import_av()
        image = np.asarray(image, dtype=np.uint8)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"a frame must be (H, W, 3) uint8, got shape {image.shape}")
        h, w = image.shape[:2]
        if self._stream is None:
            self._size = (h, w)
            self._stream = self._container.add_stream(self._codec, rate=self._rate)
            self._stream.width, self._stream.height = w + w % 2, h + h % 2
            self._stream.pix_fmt = "yuv420p"
            if self._codec == "libx264":
                self._stream.options = {"crf": "20"}
            else:
                self._stream.bit_rate = 8_000_000
        elif (h, w) != self._size:
            raise ValueError(f"frame size {h}x{w} differs from the first frame's {self._size[0]}x{self._size[1]}")
        if h % 2 or w % 2:
            image = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        if self._container is None:
            return
        try:
            if self._stream is None:
                raise ValueError(f"{self.path}: no frames were written")
            for packet in self._stream.encode():  # flush the encoder's delayed frames
                self._container.mux(packet)
            self._container.close()
            self._container = None
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - the file is thrown away anyway
                pass
            self._container = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# Distinct, saturated colours for up to ten expressions (then they repeat).
OVERLAY_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (245, 130, 48), (210, 245, 60), (0, 128, 128),
)


def draw_overlay(image: np.ndarray, masks: np.ndarray, labels: Sequence[str], *, alpha: float = 0.5) -> np.ndarray:
    """image: (H, W, 3) uint8; masks: (E, H, W) bool, one per label -> (H, W, 3) uint8 with every mask
    blended in its colour and the labels written top-left, one line each in the mask's colour."""
    from PIL import ImageDraw, ImageFont

    out = image.astype(np.float32)
    for e, mask in enumerate(masks):
        colour = np.array(OVERLAY_COLOURS[e % len(OVERLAY_COLOURS)], dtype=np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    im = Image.fromarray(out.round().astype(np.uint8))
    draw = ImageDraw.Draw(im)
    h, w = image.shape[:2]
    size = max(10, min(h, w) // 30)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        font = ImageFont.load_default()
    y = 2
    for e, label in enumerate(labels):
        text = f"{e}: {label}"
        left, top, right, bottom = draw.textbbox((4, y), text, font=font)
        if top >= h:
            break  # a tiny frame: no room for more lines
        draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=(0, 0, 0))
        draw.text((4, y), text, fill=OVERLAY_COLOURS[e % len(OVERLAY_COLOURS)], font=font)
        y = bottom + 3
    return np.asarray(im)
