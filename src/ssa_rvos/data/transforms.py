"""Clip sampling and clip-consistent augmentation for training, the test-time resize, and RefCOCO pseudo-videos.

This follows the recipe of the SSA authors' detectron2 pipeline (SPEC section 6; their ``augmentation.py``,
``ytvos_mapper.py`` and ``refcoco_mapper.py``), restated as plain numpy-in / numpy-out functions:

* every random decision is drawn **once per clip** into a small frozen dataclass (:class:`ClipAugmentation`),
  then :meth:`ClipAugmentation.apply` runs the same geometry on every frame and every mask, so a mask stays
  on its object however the clip is cropped, resized or flipped;
* images are resized with PIL bilinear (which low-pass filters when shrinking, as detectron2's
  ``ResizeTransform`` does for uint8 images), masks with PIL nearest, sizes rounded as detectron2's
  ``ResizeShortestEdge`` rounds them (``int(x + 0.5)``);
* randomness comes only from the ``numpy.random.Generator`` passed in, so a seed reproduces a clip.

Shapes: frames (T, H, W, 3) uint8, masks (N, T, H, W) bool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = [
    "CROP_PRE_MAX_LONG",
    "CROP_PRE_SHORT_SIDES",
    "CROP_SIDE_RANGE",
    "PSEUDO_CENTER_RANGE",
    "PSEUDO_MAX_DEGREES",
    "TEST_MAX_LONG",
    "TRAIN_MAX_LONG",
    "TRAIN_SHORT_SIDES",
    "ClipAugmentation",
    "ClipRotation",
    "MovingCrop",
    "make_pseudo_video",
    "resize_frames",
    "resize_masks",
    "sample_clip_augmentation",
    "sample_clip_indices",
    "sample_pseudo_video_augmentation",
    "shortest_edge_shape",
    "test_resize_shape",
]

# Test resize (SPEC section 5): the short side is the benchmark's (ssa_rvos.benchmarks), the long side is
# capped at 1333 (detectron2's default).
TEST_MAX_LONG = 1333

# Training (the released configs: INPUT.MIN_SIZE_TRAIN / MAX_SIZE_TRAIN / CROP).
TRAIN_SHORT_SIDES: tuple[int, ...] = tuple(range(288, 513, 32))
TRAIN_MAX_LONG = 768
CROP_PRE_SHORT_SIDES: tuple[int, ...] = (400, 500, 600)
CROP_PRE_MAX_LONG = 1333
CROP_SIDE_RANGE: tuple[int, int] = (384, 600)

# RefCOCO pseudo-videos: a per-frame rotation in [-15, 15] degrees about one centre drawn in the middle 20 %.
PSEUDO_MAX_DEGREES = 15.0
PSEUDO_CENTER_RANGE: tuple[float, float] = (0.4, 0.6)

_BILINEAR = Image.Resampling.BILINEAR
_NEAREST = Image.Resampling.NEAREST


# ----------------------------------------------------------------------------------------------- sizes and resizing

def shortest_edge_shape(h: int, w: int, *, short: int, max_long: int) -> tuple[int, int]:
    """The (H, W) that detectron2's ``ResizeShortestEdge`` gives: short side -> ``short``, long side <= ``max_long``.

    The scale is computed in floating point and each side rounded with ``int(x + 0.5)``, exactly as there.
    """
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    scale = short / min(h, w)
    if h < w:
        newh, neww = float(short), scale * w
    else:
        newh, neww = scale * h, float(short)
    if max(newh, neww) > max_long:
        s = max_long / max(newh, neww)
        newh, neww = newh * s, neww * s
    return int(newh + 0.5), int(neww + 0.5)


def test_resize_shape(h: int, w: int, *, short: int, max_long: int = TEST_MAX_LONG) -> tuple[int, int]:
    """Test-time (H, W): e.g. 720x1280 at short 448 -> 448x796 (MeViS); 720x1280 at 480 -> 480x853."""
    return shortest_edge_shape(h, w, short=short, max_long=max_long)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    return frames


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, h, w, 3) uint8 with PIL bilinear (antialiased when shrinking, as detectron2)."""
    frames = _check_frames(frames)
    h, w = int(size[0]), int(size[1])
    if frames.shape[1:3] == (h, w):
        return frames.copy()
    out = np.empty((frames.shape[0], h, w, 3), dtype=np.uint8)
    for t, frame in enumerate(frames):
        out[t] = np.asarray(Image.fromarray(frame).resize((w, h), _BILINEAR))
    return out


def resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(..., H, W) bool -> (..., h, w) bool with nearest neighbour (PIL's, as detectron2's ``apply_segmentation``)."""
    masks = np.asarray(masks, dtype=bool)
    h, w = int(size[0]), int(size[1])
    if masks.shape[-2:] == (h, w):
        return masks.copy()
    flat = masks.reshape(-1, *masks.shape[-2:])
    out = np.empty((flat.shape[0], h, w), dtype=bool)
    for i, m in enumerate(flat):
        out[i] = np.asarray(Image.fromarray(m.astype(np.uint8)).resize((w, h), _NEAREST)) > 0
    return out.reshape(*masks.shape[:-2], h, w)


# ------------------------------------------------------------------------------------------------------ clip sampling

def sample_clip_indices(num_frames: int, *, rng: np.random.Generator, num: int = 8, window: int = 10) -> list[int]:
    """Training clip: a random reference frame plus ``num - 1`` frames from +-``window`` around it, sorted.

    As in the original mapper, the companions are drawn **with replacement** from the window (the reference
    itself excluded, the window clipped to the video), so short videos give repeated indices and the clip
    always has ``num`` entries. A one-frame video (where the original would fail on an empty window)
    yields ``num`` copies of frame 0.
    """
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if num < 1 or window < 0:
        raise ValueError(f"need num >= 1 and window >= 0, got num={num}, window={window}")
    ref = int(rng.integers(num_frames))
    start, end = max(0, ref - window), min(num_frames, ref + window + 1)
    pool = np.array([i for i in range(start, end) if i != ref], dtype=np.int64)
    if num == 1:
        return [ref]
    if pool.size == 0:
        return [ref] * num
    others = rng.choice(pool, size=num - 1, replace=True)
    return sorted([ref, *(int(i) for i in others)])


# ------------------------------------------------------------------------------------------- clip augmentation plan

@dataclass(frozen=True)
class MovingCrop:
    """A crop window that slides along a straight line across the clip.

    ``pre_size``: the (H, W) the frames are first resized to (short side 400/500/600, long <= 1333);
    ``size``: the window (h, w), each side drawn independently in [384, 600] (clipped to the image);
    ``offsets``: the window's top-left (y, x) in every frame.
    """

    pre_size: tuple[int, int]
    size: tuple[int, int]
    offsets: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class ClipRotation:
    """Per-frame rotation (degrees, counter-clockwise, monotone over the clip) about one relative centre (x, y)."""

    angles: tuple[float, ...]
    center: tuple[float, float]


@dataclass(frozen=True)
class ClipAugmentation:
    """Every random decision for one clip; :meth:`apply` runs them identically on each frame and mask.

    Order (as in the original): optional moving crop -> resize to ``out_size`` -> optional horizontal flip
    -> optional rotation (RefCOCO pseudo-videos only).
    """

    in_size: tuple[int, int]
    num_frames: int
    crop: MovingCrop | None
    out_size: tuple[int, int]
    flip: bool
    rotation: ClipRotation | None = None

    def apply(self, frames: np.ndarray, masks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(T, H, W, 3) uint8 frames and optional (N, T, H, W) bool masks -> the augmented pair (sizes ``out_size``).

        Text is not touched: the original flips without swapping "left" and "right".
        """
        frames = _check_frames(frames)
        t, h, w = frames.shape[:3]
        if (h, w) != tuple(self.in_size) or t != self.num_frames:
            raise ValueError(f"this augmentation was drawn for {self.num_frames} frames of {self.in_size}, "
                             f"got {t} frames of {(h, w)}")
        if masks is not None:
            masks = np.asarray(masks, dtype=bool)
            if masks.ndim != 4 or masks.shape[1:] != (t, h, w):
                raise ValueError(f"masks must be (N, {t}, {h}, {w}) bool, got {masks.shape}")
        if self.crop is not None:
            frames = resize_frames(frames, self.crop.pre_size)
            masks = None if masks is None else resize_masks(masks, self.crop.pre_size)
            ch, cw = self.crop.size
            frames = np.stack([frames[i, y:y + ch, x:x + cw] for i, (y, x) in enumerate(self.crop.offsets)])
            if masks is not None:
                masks = np.stack([masks[:, i, y:y + ch, x:x + cw] for i, (y, x) in enumerate(self.crop.offsets)],
                                 axis=1)
        frames = resize_frames(frames, self.out_size)
        masks = None if masks is None else resize_masks(masks, self.out_size)
        if self.flip:
            frames = np.ascontiguousarray(frames[:, :, ::-1])
            masks = None if masks is None else np.ascontiguousarray(masks[..., ::-1])
        if self.rotation is not None:
            frames, masks = _rotate_clip(frames, masks, self.rotation)
        return frames, masks


def _rotate_clip(frames: np.ndarray, masks: np.ndarray | None,
                 rot: ClipRotation) -> tuple[np.ndarray, np.ndarray | None]:
    # PIL's rotate works in continuous coordinates (pixel i spans [i, i + 1)), the convention detectron2 reaches
    # with its -0.5 offset for cv2; the output keeps the size (expand=False) and fills the corners with 0.
    h, w = frames.shape[1:3]
    center = (rot.center[0] * w, rot.center[1] * h)
    out = frames.copy()
    out_masks = None if masks is None else masks.copy()
    for t, angle in enumerate(rot.angles):
        if angle % 360 == 0:
            continue
        out[t] = np.asarray(Image.fromarray(frames[t]).rotate(angle, resample=_BILINEAR, center=center))
        if masks is not None:
            for n in range(masks.shape[0]):
                m = Image.fromarray(masks[n, t].astype(np.uint8))
                out_masks[n, t] = np.asarray(m.rotate(angle, resample=_NEAREST, center=center)) > 0
    return out, out_masks


def _sample_moving_crop(h: int, w: int, *, num_frames: int, rng: np.random.Generator,
                        pre_short_sides: Sequence[int], pre_max_long: int,
                        side_range: tuple[int, int]) -> MovingCrop:
    pre_h, pre_w = shortest_edge_shape(h, w, short=int(rng.choice(pre_short_sides)), max_long=pre_max_long)
    lo, hi = side_range
    ch = int(rng.integers(min(pre_h, lo), min(pre_h, hi) + 1))
    cw = int(rng.integers(min(pre_w, lo), min(pre_w, hi) + 1))
    # Two positions, the second below-right of the first; the frames sit at sorted uniform fractions of the
    # segment between them (so the window moves monotonically, not necessarily from corner to corner), and the
    # direction of travel is reversed half of the time.
    y0 = int(rng.integers(pre_h - ch + 1))
    x0 = int(rng.integers(pre_w - cw + 1))
    y1 = int(rng.integers(y0, pre_h - ch + 1))
    x1 = int(rng.integers(x0, pre_w - cw + 1))
    f = np.sort(rng.random(num_frames))
    ys = np.round(y0 * f + y1 * (1 - f)).astype(int)
    xs = np.round(x0 * f + x1 * (1 - f)).astype(int)
    if rng.random() < 0.5:
        ys, xs = ys[::-1], xs[::-1]
    return MovingCrop(pre_size=(pre_h, pre_w), size=(ch, cw),
                      offsets=tuple((int(y), int(x)) for y, x in zip(ys, xs)))


def sample_clip_augmentation(
    h: int,
    w: int,
    *,
    num_frames: int,
    rng: np.random.Generator,
    crop_prob: float = 0.5,
    crop_pre_short_sides: Sequence[int] = CROP_PRE_SHORT_SIDES,
    crop_pre_max_long: int = CROP_PRE_MAX_LONG,
    crop_side_range: tuple[int, int] = CROP_SIDE_RANGE,
    short_sides: Sequence[int] = TRAIN_SHORT_SIDES,
    max_long: int = TRAIN_MAX_LONG,
    flip_prob: float = 0.5,
    rotation_degrees: float | None = None,
    rotation_center_range: tuple[float, float] = PSEUDO_CENTER_RANGE,
) -> ClipAugmentation:
    """Draw one clip's augmentation for ``num_frames`` frames of size (h, w) (SPEC section 6).

    1. with ``crop_prob``: resize the short side to one of ``crop_pre_short_sides`` (long <= 1333) and take a
       moving crop whose sides are drawn in ``crop_side_range``;
    2. resize the short side to one of ``short_sides`` with the long side <= ``max_long``;
    3. flip horizontally with ``flip_prob``;
    4. with ``rotation_degrees`` (pseudo-videos): per-frame angles = sorted uniform draws in
       [-deg, deg], reversed half of the time, about one centre drawn in ``rotation_center_range``.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    crop = None
    size = (h, w)
    if rng.random() < crop_prob:
        crop = _sample_moving_crop(h, w, num_frames=num_frames, rng=rng, pre_short_sides=crop_pre_short_sides,
                                   pre_max_long=crop_pre_max_long, side_range=crop_side_range)
        size = crop.size
    out_size = shortest_edge_shape(*size, short=int(rng.choice(short_sides)), max_long=max_long)
    flip = bool(rng.random() < flip_prob)
    rotation = None
    if rotation_degrees is not None:
        angles = np.sort(rng.uniform(-rotation_degrees, rotation_degrees, size=num_frames))
        lo, hi = rotation_center_range
        center = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
        if rng.random() < 0.5:
            angles = angles[::-1]
        rotation = ClipRotation(angles=tuple(float(a) for a in angles), center=center)
    return ClipAugmentation(in_size=(int(h), int(w)), num_frames=int(num_frames), crop=crop,
                            out_size=out_size, flip=flip, rotation=rotation)


# ------------------------------------------------------------------------------------------- RefCOCO pseudo-videos

def sample_pseudo_video_augmentation(h: int, w: int, *, num_frames: int, rng: np.random.Generator,
                                     **options) -> ClipAugmentation:
    """The pseudo-video recipe: the clip augmentation above plus a monotone +-15 degree rotation.
    ``options`` are passed on to :func:`sample_clip_augmentation` (e.g. ``short_sides``)."""
    return sample_clip_augmentation(h, w, num_frames=num_frames, rng=rng, rotation_degrees=PSEUDO_MAX_DEGREES,
                                    **options)


def make_pseudo_video(image: np.ndarray, masks: np.ndarray, *, num_frames: int,
                      rng: np.random.Generator, **options) -> tuple[np.ndarray, np.ndarray]:
    """A still image (H, W, 3) uint8 with masks (N, H, W) bool -> a clip (T, h, w, 3) and masks (N, T, h, w).

    As the original RefCOCO mapper does for multi-frame training: the image is repeated ``num_frames`` times
    and the clip augmentation (moving crop with p 0.5, resize, flip) plus a per-frame rotation whose angle
    changes monotonically within +-15 degrees is applied, which makes the repeated image look like a camera
    pan. The text is unchanged.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise ValueError(f"masks must be (N, {image.shape[0]}, {image.shape[1]}) bool, got {masks.shape}")
    aug = sample_pseudo_video_augmentation(*image.shape[:2], num_frames=num_frames, rng=rng, **options)
    frames = np.repeat(image[None], num_frames, axis=0)
    clip_masks = np.repeat(masks[:, None], num_frames, axis=1)
    frames, clip_masks = aug.apply(frames, clip_masks)
    return frames, clip_masks
