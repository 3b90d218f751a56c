import json
import shutil
import sys

import av
import h5py
import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from ssa_rvos.data.a2d import A2DSentences, JHMDBSentences, window_indices
from ssa_rvos.data.expressions import DatasetError

H, W = 48, 64          # A2D fixture frame size (even, for H.264)
A2D_FRAMES = 6


def _write_mp4(path, frames):
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "0", "preset": "ultrafast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_h5(path, instances, masks, *, extra_mask=False):
    """masks: (N, H, W) bool -> MATLAB-ordered reMask, 2-D when one instance (as the real files)."""
    re = np.asarray(masks, dtype=np.uint8).transpose(0, 2, 1)
    if extra_mask:
        re = np.concatenate([re, np.ones_like(re[:1])])
    if len(re) == 1:
        re = re[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["instance"] = np.asarray(instances, dtype=np.float64)
        f["reMask"] = re


def _rect(y0, y1, x0, x1, h=H, w=W):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture(scope="module")
def a2d_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("a2d_sentences")
    (root / "Release" / "clips320H").mkdir(parents=True)
    (root / "Release" / "videoset.csv").write_text(
        "vidA,11,0,5,240,320,6,2,1\n"
        "vidB,21,0,5,240,320,6,1,0\n"
        "vidC,31,0,5,240,320,6,1,1\n")
    ta = root / "text_annotations"
    ta.mkdir()
    (ta / "a2d_annotation.txt").write_text(
        "video_id,instance_id,query\n"
        'vidA,1,"A man, in RED,  running"\n'
        "vidB,1,a bird flying\n"
        "vidA,2,a dog jumping\n"
        "vidA,1 (copy),a man running\n"
        "vidC,1,never used\n")
    (ta / "a2d_missed_videos.txt").write_text("vidC\n")
    frames = np.zeros((A2D_FRAMES, H, W, 3), dtype=np.uint8)
    for t in range(A2D_FRAMES):
        frames[t] = 30 + 35 * t
    _write_mp4(root / "Release" / "clips320H" / "vidA.mp4", frames)
    _write_mp4(root / "Release" / "clips320H" / "vidB.mp4", frames[:3])
    inst = ta / "a2d_annotation_with_instances"
    # frame 2: instances 1 and 2 (plus a stray trailing mask, as a few real files have); frame 5: instance 2 only
    _write_h5(inst / "vidA" / "00002.h5", [1, 2], [_rect(5, 20, 3, 40), _rect(25, 45, 10, 30)], extra_mask=True)
    _write_h5(inst / "vidA" / "00005.h5", [2], [_rect(30, 47, 40, 63)])
    _write_h5(inst / "vidB" / "00001.h5", [1], [_rect(0, 10, 0, 10)])
    return root


def test_a2d_expressions(a2d_root):
    ds = A2DSentences(a2d_root, "test")
    assert len(ds) == 2
    e0, e1 = ds.expressions
    assert (e0.video, e0.exp_id, e0.obj_ids, e0.text) == ("vidA", "0", (1,), "a man, in red, running")
    assert e0.raw_text == "A man, in RED,  running"
    assert (e1.exp_id, e1.obj_ids, e1.text) == ("2", (2,), "a dog jumping")
    assert e0.frames == ("00002", "00005") and e0.split == "test" and e0.dataset == "a2d"
    train = A2DSentences(a2d_root, "train")
    assert [e.video for e in train.expressions] == ["vidB"]
    with pytest.raises(ValueError):
        A2DSentences(a2d_root, "val")


def test_a2d_masks_and_eval_samples(a2d_root):
    ds = A2DSentences(a2d_root, "test")
    e0, e1 = ds.expressions
    m = ds.instance_masks(e0)
    assert m.shape == (1, 2, H, W) and m.dtype == bool
    assert (m[0, 0] == _rect(5, 20, 3, 40)).all() and not m[0, 1].any()   # absent in frame 5
    t1 = ds.target_masks(e1)
    assert (t1[0] == _rect(25, 45, 10, 30)).all() and (t1[1] == _rect(30, 47, 40, 63)).all()
    samples = list(ds.eval_samples())
    assert [(s.expression.exp_id, s.frame) for s in samples] == [("0", "00002"), ("2", "00002"), ("2", "00005")]
    assert (samples[0].mask == _rect(5, 20, 3, 40)).all()
    assert (samples[2].mask == _rect(30, 47, 40, 63)).all()
    assert ds.frame_size("vidA") == (H, W)


def test_a2d_frames_and_clips(a2d_root):
    ds = A2DSentences(a2d_root, "test")
    assert ds.video_frames("vidA") == tuple(f"{i:05d}" for i in range(1, 7))
    frames = ds.read_frames("vidA", ["00001", "00006"])
    assert frames.shape == (2, H, W, 3) and frames.dtype == np.uint8
    assert abs(frames[0].mean() - 30) < 3 and abs(frames[1].mean() - (30 + 35 * 5)) < 3
    e0 = ds.expressions[0]
    clip = ds.read_clip(e0, "00002", window=4)
    assert clip.names == ("00001", "00001", "00002", "00003") and clip.target == 2
    assert clip.frames.shape == (4, H, W, 3)
    assert abs(clip.frames[clip.target].mean() - 65) < 3
    full = ds.read_clip(e0, "00005", window=None)
    assert len(full.names) == 6 and full.names[full.target] == "00005"
    with pytest.raises(DatasetError, match="00009"):
        ds.read_frames("vidA", ["00009"])


def test_window_indices():
    assert window_indices(0, 10, 8) == [0, 0, 0, 0, 0, 1, 2, 3]
    assert window_indices(5, 10, 8) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert window_indices(9, 10, 8) == [5, 6, 7, 8, 9, 9, 9, 9]
    assert window_indices(2, 3, 5) == [0, 1, 2, 2, 2]
    assert window_indices(3, 10, 1) == [3]


def test_a2d_errors(a2d_root, tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        A2DSentences(tmp_path / "nowhere")
    root = tmp_path / "a2d"
    shutil.copytree(a2d_root, root)
    (root / "Release" / "videoset.csv").write_text("vidA,11,0,5,240,320,6,2,x\n")
    with pytest.raises(DatasetError, match=r"videoset\.csv, line 1"):
        A2DSentences(root)
    (root / "Release" / "videoset.csv").write_text("vidA,11,0,5\n")
    with pytest.raises(DatasetError, match=r"line 1: expected 9 columns"):
        A2DSentences(root)
    (root / "Release" / "videoset.csv").write_text("vidA,11,0,5,240,320,6,2,1\nvidD,11,0,5,240,320,6,2,1\n")
    (root / "text_annotations" / "a2d_annotation.txt").write_text(
        "video_id,instance_id,query\nvidA,one,a man\n")
    with pytest.raises(DatasetError, match=r"a2d_annotation\.txt, line 2.*'one'"):
        A2DSentences(root)
    (root / "text_annotations" / "a2d_annotation.txt").write_text(
        "video_id,instance_id,query\nvidA,1\n")
    with pytest.raises(DatasetError, match=r"line 2: expected"):
        A2DSentences(root)
    (root / "text_annotations" / "a2d_annotation.txt").write_text(
        "video_id,instance_id,query\nvidD,1,a cat\n")
    with pytest.raises(DatasetError, match="vidD"):
        A2DSentences(root)
    (root / "text_annotations" / "a2d_missed_videos.txt").unlink()
    with pytest.raises(DatasetError, match="a2d_missed_videos"):
        A2DSentences(root)


# ----------------------------------------------------------------------------------------------------- JHMDB

JH, JW = 24, 32


@pytest.fixture(scope="module")
def jhmdb_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("jhmdb_sentences")
    (root / "jhmdb_annotation.txt").write_text(
        'video_id,query\nvid_run,Man  running\nvid_wave,"woman, waving"\n')
    for cls, video, n_frames, n_masks in [("run", "vid_run", 7, 6), ("wave", "vid_wave", 4, 4)]:
        fdir = root / "Rename_Images" / cls / video
        fdir.mkdir(parents=True)
        for t in range(n_frames):
            Image.fromarray(np.full((JH, JW, 3), 10 * t, dtype=np.uint8)).save(fdir / f"{t + 1:05d}.png")
        part = np.zeros((JH, JW, n_masks), dtype=np.uint8)
        for t in range(n_masks):
            part[2 + t:10 + t, 3:20, t] = 1
        mdir = root / "puppet_mask" / cls / video
        mdir.mkdir(parents=True)
        savemat(mdir / "puppet_mask.mat", {"part_mask": part})
    return root


def test_jhmdb_expressions_and_masks(jhmdb_root):
    ds = JHMDBSentences(jhmdb_root)
    assert len(ds) == 2
    run, wave = ds.expressions
    assert run.text == "man running" and wave.text == "woman, waving" and run.split == "test"
    assert run.frames == tuple(f"{i:05d}" for i in range(1, 7))   # the 7th frame has no mask
    m = ds.target_masks(run, ["00003"])
    expected = np.zeros((JH, JW), dtype=bool)
    expected[4:12, 3:20] = True
    assert m.shape == (1, JH, JW) and (m[0] == expected).all()
    assert ds.instance_masks(wave).shape == (1, 4, JH, JW)
    assert ds.frame_size("vid_run") == (JH, JW)
    frames = ds.read_frames("vid_run", ["00002", "00007"])
    assert frames.shape == (2, JH, JW, 3) and (frames[0] == 10).all() and (frames[1] == 60).all()


def test_jhmdb_random_eval_samples(jhmdb_root):
    ds = JHMDBSentences(jhmdb_root, seed=3)
    samples = list(ds.eval_samples())
    assert len(samples) == 6 and ds.samples_source.startswith("random")
    for expr in ds.expressions:
        picked = [s.frame for s in samples if s.expression is expr]
        assert len(picked) == 3 and picked == sorted(set(picked)) and set(picked) <= set(expr.frames)
    assert [s.frame for s in samples] == [s.frame for s in JHMDBSentences(jhmdb_root, seed=3).eval_samples()]
    for s in samples:
        t = int(s.frame) - 1
        assert s.mask.shape == (JH, JW) and s.mask[2 + t, 3] and not s.mask[1 + t, 3]


def test_jhmdb_metadata_file_and_clip(jhmdb_root, tmp_path):
    meta = [
        ["vid_run", "./jhmdb_sentences/Rename_Images/run/vid_run/00001.png",
         "./jhmdb_sentences/puppet_mask/run/vid_run/puppet_mask.mat", 6, "Man  running"],
        ["vid_wave", "./jhmdb_sentences/Rename_Images/wave/vid_wave/00004.png",
         "./jhmdb_sentences/puppet_mask/wave/vid_wave/puppet_mask.mat", 4, "woman, waving"],
    ]
    path = tmp_path / "jhmdb_sentences_samples_metadata.json"
    path.write_text(json.dumps(meta))
    ds = JHMDBSentences(jhmdb_root, samples_metadata=path)
    samples = list(ds.eval_samples())
    assert [(s.expression.video, s.frame) for s in samples] == [("vid_run", "00001"), ("vid_wave", "00004")]
    clip = ds.read_clip(samples[0].expression, "00001", window=8)
    assert clip.names == ("00001",) * 5 + ("00002", "00003", "00004") and clip.target == 4
    assert clip.frames.shape == (8, JH, JW, 3) and (clip.frames[5] == 10).all()
    clip = ds.read_clip(samples[1].expression, "00004", window=8)
    assert clip.names == ("00001", "00001", "00002", "00003", "00004", "00004", "00004", "00004")
    path.write_text(json.dumps([["vid_run", "x/00007.png", "m", 6, "Man  running"]]))
    with pytest.raises(DatasetError, match="00007"):
        JHMDBSentences(jhmdb_root, samples_metadata=path)


def test_jhmdb_errors(jhmdb_root, tmp_path):
    root = tmp_path / "jhmdb"
    shutil.copytree(jhmdb_root, root)
    (root / "jhmdb_annotation.txt").write_text("video_id,query\nvid_run,a\nvid_missing,b\n")
    with pytest.raises(DatasetError, match=r"jhmdb_annotation\.txt, line 3.*vid_missing"):
        JHMDBSentences(root)
    (root / "jhmdb_annotation.txt").write_text("video_id,query\nvid_run\n")
    with pytest.raises(DatasetError, match="line 2"):
        JHMDBSentences(root)
    (root / "jhmdb_annotation.txt").write_text("video_id,query\nvid_run,a\n")
    (root / "puppet_mask" / "run" / "vid_run" / "puppet_mask.mat").unlink()
    with pytest.raises(DatasetError, match="vid_run"):
        JHMDBSentences(root)
    shutil.rmtree(root / "puppet_mask")
    with pytest.raises(DatasetError, match="puppet_mask"):
        JHMDBSentences(root)


def test_a2d_unreadable_video_and_missing_optional_packages(a2d_root, tmp_path, monkeypatch):
    root = tmp_path / "a2d"
    shutil.copytree(a2d_root, root)
    (root / "Release" / "clips320H" / "vidA.mp4").write_bytes(b"not a video")
    ds = A2DSentences(root)
    with pytest.raises(DatasetError, match=r"vidA\.mp4: cannot decode"):
        ds.read_frames("vidA", ["00001"])
    (root / "Release" / "clips320H" / "vidA.mp4").unlink()
    with pytest.raises(DatasetError, match=r"vidA\.mp4: video not found"):
        A2DSentences(root).read_frames("vidA")
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImportError, match=r"pip install ssa-rvos\[video\]"):
        A2DSentences(root).read_frames("vidA")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match="pip install h5py"):
        next(A2DSentences(root).eval_samples())
