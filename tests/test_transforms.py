import math

import numpy as np
import pytest

from ssa_rvos.data.transforms import (
    CROP_SIDE_RANGE,
    TRAIN_MAX_LONG,
    TRAIN_SHORT_SIDES,
    ClipAugmentation,
    ClipRotation,
    MovingCrop,
    make_pseudo_video,
    resize_frames,
    resize_masks,
    sample_clip_augmentation,
    sample_clip_indices,
    sample_pseudo_video_augmentation,
    shortest_edge_shape,
)
from ssa_rvos.data.transforms import (
    test_resize_shape as resize_shape,  # aliased: pytest would collect test_*
)


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def _coloured_clip(t=8, h=240, w=320, seed=0):
    """Frames whose red channel is 255 exactly on object 0 and green exactly on object 1 (moving over time)."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((t, h, w, 3), dtype=np.uint8)
    frames[..., 2] = rng.integers(0, 256, size=(t, h, w), dtype=np.uint8)
    masks = np.zeros((2, t, h, w), dtype=bool)
    yy, xx = np.mgrid[:h, :w]
    for i in range(t):
        masks[0, i, 40 + 5 * i:140 + 5 * i, 30 + 12 * i:120 + 12 * i] = True
        masks[1, i] = (yy - 150) ** 2 + (xx - 220 + 6 * i) ** 2 < 45 ** 2
    frames[..., 0] = np.where(masks[0], 255, 0)
    frames[..., 1] = np.where(masks[1], 255, 0)
    return frames, masks


# ------------------------------------------------------------------------------------------------------ test resize

@pytest.mark.parametrize("h, w, short, expected", [
    (720, 1280, 448, (448, 796)),    # 1280 * 448 / 720 = 796.44
    (720, 1280, 480, (480, 853)),    # 1280 * 480 / 720 = 853.33
    (1080, 1920, 448, (448, 796)),
    (1280, 720, 448, (796, 448)),
    (480, 854, 480, (480, 854)),
    (500, 500, 480, (480, 480)),
    (100, 1000, 448, (133, 1333)),   # long side capped: 448 * 1333 / 4480 = 133.3
    (360, 641, 448, (448, 798)),     # 641 * 448 / 360 = 797.69 -> rounds up
])
def test_test_resize_shape(h, w, short, expected):
    assert resize_shape(h, w, short=short) == expected


def test_test_short_side_constants():
    from ssa_rvos.benchmarks import BENCHMARKS

    assert {b.name: b.test_short_side for b in BENCHMARKS.values()} == {"mevis": 448, "ytvos": 480, "davis": 480}


def test_resize_frames_and_masks():
    frames = np.full((2, 30, 40, 3), 77, dtype=np.uint8)
    out = resize_frames(frames, (15, 21))
    assert out.shape == (2, 15, 21, 3) and out.dtype == np.uint8 and (out == 77).all()
    masks = np.zeros((3, 2, 30, 40), dtype=bool)
    masks[:, :, :15] = True
    rm = resize_masks(masks, (60, 80))
    assert rm.shape == (3, 2, 60, 80) and rm.dtype == bool
    assert rm[..., :30, :].all() and not rm[..., 30:, :].any()


# ------------------------------------------------------------------------------------------------------ clip sampling

@pytest.mark.parametrize("n", [2, 3, 5, 12, 30, 200])
def test_sample_clip_indices_bounds(n):
    for seed in range(50):
        idx = sample_clip_indices(n, rng=np.random.default_rng(seed), num=8, window=10)
        assert len(idx) == 8
        assert idx == sorted(idx)
        assert all(0 <= i < n for i in idx)
        # some entry is a reference frame with every other entry within +-10 of it
        assert any(all(abs(j - i) <= 10 for j in idx) for i in idx)
        # the reference frame is drawn once; the others exclude it, so it is never the only value unless n == 1
        assert len(set(idx)) >= 2


def test_sample_clip_indices_short_and_single_frame_videos():
    rng = np.random.default_rng(0)
    idx = sample_clip_indices(3, rng=rng, num=8)
    assert len(idx) == 8 and set(idx) <= {0, 1, 2}          # short videos repeat frames (drawn with replacement)
    assert sample_clip_indices(1, rng=rng, num=8) == [0] * 8
    assert sample_clip_indices(50, rng=rng, num=1)[0] in range(50)
    with pytest.raises(ValueError):
        sample_clip_indices(0, rng=rng)


def test_sample_clip_indices_deterministic():
    a = sample_clip_indices(100, rng=np.random.default_rng(7))
    b = sample_clip_indices(100, rng=np.random.default_rng(7))
    assert a == b


# ------------------------------------------------------------------------------------------------ clip augmentation

def test_augmentation_keeps_masks_on_their_pixels():
    frames, masks = _coloured_clip()
    seen_crop = seen_flip = False
    for seed in range(6):
        aug = sample_clip_augmentation(240, 320, num_frames=8, rng=np.random.default_rng(seed))
        seen_crop |= aug.crop is not None
        seen_flip |= aug.flip
        f, m = aug.apply(frames, masks)
        assert f.shape == (8, *aug.out_size, 3) and m.shape == (2, 8, *aug.out_size)
        assert f.dtype == np.uint8 and m.dtype == bool
        for t in range(8):
            for n in range(2):
                if m[n, t].sum() < 50:
                    continue  # cropped (almost) out of view
                assert _iou(f[t, :, :, n] > 127, m[n, t]) > 0.9, (seed, t, n)
    assert seen_crop and seen_flip


def test_augmentation_same_for_every_frame():
    # A clip of identical frames must stay identical frame to frame when no crop is drawn...
    frames = np.repeat(_coloured_clip(t=1)[0], 5, axis=0)
    aug = sample_clip_augmentation(240, 320, num_frames=5, rng=np.random.default_rng(1), crop_prob=0.0,
                                   flip_prob=1.0)
    f, _ = aug.apply(frames)
    assert all((f[t] == f[0]).all() for t in range(5))
    # ...and with a crop, frames differ only by the window shift: equal where the offsets are equal.
    aug = sample_clip_augmentation(240, 320, num_frames=5, rng=np.random.default_rng(2), crop_prob=1.0)
    f, _ = aug.apply(frames)
    for t in range(5):
        if aug.crop.offsets[t] == aug.crop.offsets[0]:
            assert (f[t] == f[0]).all()


def test_moving_crop_positions():
    for seed in range(40):
        rng = np.random.default_rng(seed)
        aug = sample_clip_augmentation(360, 640, num_frames=8, rng=rng, crop_prob=1.0)
        crop = aug.crop
        ph, pw = crop.pre_size
        assert min(ph, pw) in (400, 500, 600)
        ch, cw = crop.size
        assert CROP_SIDE_RANGE[0] <= ch <= min(ph, CROP_SIDE_RANGE[1])
        assert CROP_SIDE_RANGE[0] <= cw <= min(pw, CROP_SIDE_RANGE[1])
        ys = np.array([o[0] for o in crop.offsets])
        xs = np.array([o[1] for o in crop.offsets])
        assert len(ys) == 8
        assert (ys >= 0).all() and (ys <= ph - ch).all() and (xs >= 0).all() and (xs <= pw - cw).all()
        # one straight monotone path: y and x move in the same direction (the second corner is below-right)
        dy, dx = np.diff(ys), np.diff(xs)
        assert ((dy >= 0).all() and (dx >= 0).all()) or ((dy <= 0).all() and (dx <= 0).all())
        # the positions lie on the segment between the path's end corners (up to rounding)
        (y0, x0), (y1, x1) = (ys.min(), xs.min()), (ys.max(), xs.max())
        if y1 > y0 and x1 > x0:
            frac_y = (ys - y0) / (y1 - y0)
            expected_x = x0 + frac_y * (x1 - x0)
            assert np.abs(xs - expected_x).max() <= 1 + (x1 - x0) / max(y1 - y0, 1)
        assert any(aug.out_size == shortest_edge_shape(ch, cw, short=s, max_long=TRAIN_MAX_LONG)
                   for s in TRAIN_SHORT_SIDES)


def test_apply_crops_at_the_drawn_offsets_and_flips():
    t, h, w = 3, 20, 30
    yy, xx = np.mgrid[:h, :w]
    frames = np.stack([np.stack([yy, xx, np.full_like(yy, i)], axis=-1) for i in range(t)]).astype(np.uint8)
    masks = np.zeros((1, t, h, w), dtype=bool)
    masks[0, :, 5:9, 10:20] = True
    crop = MovingCrop(pre_size=(h, w), size=(8, 12), offsets=((0, 0), (3, 6), (12, 18)))
    aug = ClipAugmentation(in_size=(h, w), num_frames=t, crop=crop, out_size=(8, 12), flip=False)
    f, m = aug.apply(frames, masks)
    for i, (y, x) in enumerate(crop.offsets):
        assert (f[i] == frames[i, y:y + 8, x:x + 12]).all()
        assert (m[0, i] == masks[0, i, y:y + 8, x:x + 12]).all()
    flipped = ClipAugmentation(in_size=(h, w), num_frames=t, crop=None, out_size=(h, w), flip=True)
    f, m = flipped.apply(frames, masks)
    assert (f == frames[:, :, ::-1]).all() and (m == masks[..., ::-1]).all()
    with pytest.raises(ValueError):
        aug.apply(frames[:2], masks[:, :2])


@pytest.mark.parametrize("h, w", [(240, 320), (720, 1280), (1280, 720), (100, 900), (600, 600)])
def test_output_sizes_obey_short_and_long_rules(h, w):
    for seed in range(30):
        aug = sample_clip_augmentation(h, w, num_frames=2, rng=np.random.default_rng(seed))
        oh, ow = aug.out_size
        assert max(oh, ow) <= TRAIN_MAX_LONG
        assert min(oh, ow) in TRAIN_SHORT_SIDES or max(oh, ow) == TRAIN_MAX_LONG
        src = aug.crop.size if aug.crop is not None else (h, w)
        assert (oh >= ow) == (src[0] >= src[1]) or oh == ow  # aspect orientation kept


def test_augmentation_is_deterministic_given_the_rng():
    a = sample_clip_augmentation(360, 640, num_frames=8, rng=np.random.default_rng(3))
    b = sample_clip_augmentation(360, 640, num_frames=8, rng=np.random.default_rng(3))
    assert a == b


# -------------------------------------------------------------------------------------------------- pseudo-videos

def test_pseudo_video_rotation_is_monotone_and_bounded():
    for seed in range(30):
        aug = sample_pseudo_video_augmentation(300, 400, num_frames=8, rng=np.random.default_rng(seed))
        angles = np.array(aug.rotation.angles)
        assert len(angles) == 8 and (np.abs(angles) <= 15).all()
        d = np.diff(angles)
        assert (d >= 0).all() or (d <= 0).all()
        assert all(0.4 <= c <= 0.6 for c in aug.rotation.center)


def test_rotation_is_counter_clockwise():
    h, w = 101, 201
    frame = np.zeros((1, h, w, 3), dtype=np.uint8)
    mask = np.zeros((1, 1, h, w), dtype=bool)
    mask[0, 0, 48:53, 40:160] = True
    frame[0, mask[0, 0]] = 255
    aug = ClipAugmentation(in_size=(h, w), num_frames=1, crop=None, out_size=(h, w), flip=False,
                           rotation=ClipRotation(angles=(10.0,), center=(0.5, 0.5)))
    f, m = aug.apply(frame, mask)
    ys, xs = np.nonzero(m[0, 0])
    slope = np.polyfit(xs, ys, 1)[0]
    angle = math.degrees(math.atan(-slope))  # y points down, so counter-clockwise lifts the right end
    assert abs(angle - 10.0) < 1.0
    assert _iou(f[0, :, :, 0] > 127, m[0, 0]) > 0.85


def test_make_pseudo_video():
    frames, masks = _coloured_clip(t=1, h=300, w=400)
    image, image_masks = frames[0], masks[:, 0]
    clip, clip_masks = make_pseudo_video(image, image_masks, num_frames=6, rng=np.random.default_rng(5))
    aug = sample_pseudo_video_augmentation(300, 400, num_frames=6, rng=np.random.default_rng(5))
    assert clip.shape == (6, *aug.out_size, 3) and clip_masks.shape == (2, 6, *aug.out_size)
    ref, ref_masks = aug.apply(np.repeat(image[None], 6, 0), np.repeat(image_masks[:, None], 6, 1))
    assert (clip == ref).all() and (clip_masks == ref_masks).all()
    for t in range(6):
        for n in range(2):
            if clip_masks[n, t].sum() >= 50:
                assert _iou(clip[t, :, :, n] > 127, clip_masks[n, t]) > 0.85
    with pytest.raises(ValueError):
        make_pseudo_video(image, image_masks[:, :10], num_frames=2, rng=np.random.default_rng(0))
