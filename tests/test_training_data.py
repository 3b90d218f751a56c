"""Training clips: determinism, resumability, process/accumulation invariance, mixing, targets."""

import numpy as np
import pytest
import torch
from datagen import write_mevis, write_refcoco

from ssa_rvos.data.transforms import TRAIN_MAX_LONG, TRAIN_SHORT_SIDES
from ssa_rvos.training.clips import (
    ClipStream,
    DataConfig,
    DatasetSpec,
    build_batches,
    collate,
    per_process_batch,
    synthetic_clip,
)

TINY = DataConfig(num_frames=3, augment=False, num_workers=0, synthetic_size=(32, 40))


def _same_clip(a, b):
    return (np.array_equal(a.frames, b.frames) and np.array_equal(a.masks, b.masks) and a.text == b.text
            and np.array_equal(a.ids, b.ids))


def test_a_clip_is_a_function_of_seed_and_index():
    s1, s2 = ClipStream(TINY, seed=3), ClipStream(TINY, seed=3)
    assert _same_clip(s1[17], s2[17])
    assert not _same_clip(s1[17], s1[18])
    assert not _same_clip(s1[17], ClipStream(TINY, seed=4)[17])


def test_synthetic_clip_masks_are_the_named_square():
    clip = synthetic_clip(np.random.default_rng(0), num_frames=4, size=(48, 48))
    colour = clip.text.split()[1]
    from ssa_rvos.training.clips import _COLOURS

    assert clip.masks.shape == (1, 4, 48, 48) and clip.masks.any(axis=(2, 3)).all()
    assert (clip.frames[clip.masks[0]] == _COLOURS[colour]).all()


def _indices(steps):
    return [[b.indices for b in micro] for micro in steps]


def test_resume_replays_the_same_batches():
    full = build_batches(TINY, batch_size=2, seed=0)
    first = [next(full) for _ in range(4)]
    resumed = build_batches(TINY, batch_size=2, seed=0, start_step=2)
    later = [next(resumed) for _ in range(2)]
    assert _indices(first[2:]) == _indices(later)
    for a, b in zip(first[2:], later):
        assert torch.equal(a[0].frames, b[0].frames)


def test_two_processes_or_accumulation_see_the_clips_of_one_big_batch():
    one = next(build_batches(TINY, batch_size=4, seed=0))
    assert len(one) == 1 and one[0].indices == [0, 1, 2, 3]
    ranks = [next(build_batches(TINY, batch_size=4, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert ranks[0][0].indices + ranks[1][0].indices == [0, 1, 2, 3]
    accum = next(build_batches(TINY, batch_size=4, seed=0, accumulation=2))
    assert [m.indices for m in accum] == [[0, 1], [2, 3]]
    both = next(build_batches(TINY, batch_size=4, seed=0, rank=1, world_size=2, accumulation=2))
    assert [m.indices for m in both] == [[1], [3]]
    torch.testing.assert_close(ranks[1][0].frames[0], one[0].frames[2])
    with pytest.raises(ValueError, match="divisible"):
        per_process_batch(6, world_size=4, accumulation=1)


def test_workers_do_not_change_the_stream():
    a = next(build_batches(TINY, batch_size=2, seed=5))
    b = next(build_batches(DataConfig(**{**TINY.__dict__, "num_workers": 2}), batch_size=2, seed=5))
    assert torch.equal(a[0].frames, b[0].frames) and a[0].texts == b[0].texts


def test_collate_pads_with_the_pixel_mean_and_false():
    rng = np.random.default_rng(0)
    small = synthetic_clip(rng, num_frames=2, size=(20, 30))
    big = synthetic_clip(rng, num_frames=2, size=(32, 24))
    batch = collate([small, big], pad_value=(1.0, 2.0, 3.0))
    assert batch.frames.shape == (2, 2, 3, 32, 30)
    assert torch.equal(batch.frames[0, :, :, 20:, :], torch.tensor([1.0, 2.0, 3.0])[None, :, None, None].expand(2, 3, 12, 30))
    assert not batch.targets[0].masks[..., 20:, :].any() and batch.targets[0].masks.shape == (1, 2, 32, 30)
    assert torch.equal(batch.frames[0, :, :, :20, :30], torch.from_numpy(small.frames).permute(0, 3, 1, 2).float())


def test_mevis_clips_keep_every_object_as_its_own_instance(tmp_path):
    info = write_mevis(tmp_path, "train", num_frames=6)
    config = DataConfig(datasets=(DatasetSpec("mevis", str(tmp_path), "train"),), num_frames=4, augment=False,
                        num_workers=0)
    stream = ClipStream(config, seed=0)
    seen_multi = False
    for g in range(40):
        clip = stream[g]
        assert clip.frames.shape == (4, 24, 32, 3) and clip.source == "mevis"
        truth = next(e for e in info["expressions"] if e["text"] == clip.text)
        inst = info["instance_masks"][(truth["video"], truth["exp_id"])]
        # the clip's masks are the expression's objects at some sorted choice of frames
        assert clip.masks.shape[0] <= inst.shape[0]
        for m in clip.masks:
            assert any(all(any(np.array_equal(m[t], o[s]) for s in range(o.shape[0])) for t in range(4)) for o in inst)
        seen_multi |= clip.masks.shape[0] == 2
    assert seen_multi


def test_objects_absent_from_the_whole_clip_are_dropped(tmp_path):
    rng = np.random.default_rng(0)
    clip = synthetic_clip(rng, num_frames=2, size=(16, 16))
    clip.masks = np.concatenate([clip.masks, np.zeros_like(clip.masks)])
    clip.ids = np.array([0, 1])
    stream = ClipStream(TINY, seed=0)
    stream.sources[0].clip = lambda rng, member=0: clip
    out = stream[0]
    assert out.masks.shape[0] == 1 and out.ids.tolist() == [0]


def test_augmented_clips_follow_the_resize_rules(tmp_path):
    write_mevis(tmp_path, "train", num_frames=6)
    config = DataConfig(datasets=(DatasetSpec("mevis", str(tmp_path), "train"),), num_frames=3, num_workers=0)
    for g in range(6):
        clip = ClipStream(config, seed=1)[g]
        h, w = clip.frames.shape[1:3]
        assert max(h, w) <= TRAIN_MAX_LONG
        assert min(h, w) in TRAIN_SHORT_SIDES or max(h, w) == TRAIN_MAX_LONG
        assert clip.masks.shape[2:] == (h, w)


def test_datasets_are_mixed_by_ratio(tmp_path):
    write_mevis(tmp_path, "train")
    config = DataConfig(datasets=(DatasetSpec("mevis", str(tmp_path), "train", ratio=1.0),
                                  DatasetSpec("synthetic", ratio=3.0)), num_frames=2, augment=False, num_workers=0)
    stream = ClipStream(config, seed=0)
    share = np.mean([stream[g].source == "mevis" for g in range(400)])
    assert 0.18 < share < 0.32


def test_refcoco_pseudo_videos(tmp_path):
    write_refcoco(tmp_path)
    config = DataConfig(datasets=(DatasetSpec("refcoco", str(tmp_path), "train"),), num_frames=3, pseudo_video=True,
                        num_workers=0, short_sides=(64,), max_long=96)
    clip = ClipStream(config, seed=0)[0]
    assert clip.frames.shape[0] == 3 and clip.masks.shape[1] == 3 and min(clip.frames.shape[1:3]) == 64


def test_config_round_trip_and_unknown_keys():
    config = DataConfig(datasets=(DatasetSpec("mevis", "data/mevis", ratio=1.0), DatasetSpec("ytvos", "y", ratio=0.6)))
    assert DataConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown key 'num_frame'"):
        DataConfig.from_dict({"num_frame": 3})
    with pytest.raises(ValueError, match=r"data.datasets.0: unknown key 'path'"):
        DataConfig.from_dict({"datasets": [{"name": "mevis", "path": "x"}]})
    with pytest.raises(ValueError, match="dataset name"):
        DatasetSpec("kinetics")


def test_server_split_cannot_be_trained_on(tmp_path):
    write_mevis(tmp_path, "valid")
    with pytest.raises(ValueError, match="no masks"):
        ClipStream(DataConfig(datasets=(DatasetSpec("mevis", str(tmp_path), "valid"),)), seed=0)


def test_hard_negatives_share_a_clip_with_other_expressions_of_its_video(tmp_path):
    info = write_mevis(tmp_path, "train", num_frames=6)
    spec = (DatasetSpec("mevis", str(tmp_path), "train"),)
    config = DataConfig(datasets=spec, num_frames=4, augment=True, num_workers=0, expressions_per_clip=2)
    stream = ClipStream(config, seed=0)
    by_text = {e["text"]: e for e in info["expressions"]}
    differ = 0
    for group in range(12):
        a, b = stream[2 * group], stream[2 * group + 1]
        assert np.array_equal(a.frames, b.frames)  # one clip: video, frames and augmentation
        ea, eb = by_text[a.text], by_text[b.text]
        assert ea["video"] == eb["video"]
        if a.text != b.text:
            differ += 1
            assert ea["exp_id"] != eb["exp_id"]
    assert differ == 12  # every video of the fixture has several expressions
    # groups are independent draws, and member 0 is not the plain stream's clip (another seed)
    assert not np.array_equal(stream[0].frames, stream[2].frames)
    with pytest.raises(ValueError, match="expressions_per_clip 2 must divide the clips per micro-batch"):
        next(build_batches(config, batch_size=3, seed=0))
    with pytest.raises(ValueError, match="expressions_per_clip must be >= 1"):
        DataConfig(expressions_per_clip=0)
    batch = next(build_batches(config, batch_size=4, seed=0))[0]
    assert len(batch.texts) == 4 and torch.equal(batch.frames[0], batch.frames[1])
