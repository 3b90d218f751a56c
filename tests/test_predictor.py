"""The video reader and SSAPredictor on tiny generated videos (random tiny model, CPU, fp32)."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ssa_rvos.data.synthref import render_video, write_demo_video
from ssa_rvos.data.transforms import resize_frames
from ssa_rvos.data.transforms import test_resize_shape as resize_shape  # not collected as a test
from ssa_rvos.postprocess import postprocess
from ssa_rvos.predictor import ExpressionResult, FrameResult, SSAPredictor, VideoState, resolve_device
from ssa_rvos.videoio import VideoError, VideoWriter, draw_overlay, open_video

SHORT = 64  # the test model's short side


@pytest.fixture(scope="module")
def video():
    return render_video(3, frames=10, size=(48, 64))


@pytest.fixture(scope="module")
def texts(video):
    return [e["exp"] for e in video.expressions][:3]


def reference(model, frames, texts, *, frame_chunk=None, selection="union"):
    """The full computation: every frame through SSA.forward at once, then postprocess."""
    H, W = frames.shape[1:3]
    resized = resize_frames(frames, resize_shape(H, W, short=SHORT))
    clip = torch.from_numpy(resized).permute(0, 3, 1, 2)[None].float().expand(len(texts), -1, -1, -1, -1)
    with torch.inference_mode():
        out = model(clip, list(texts), frame_chunk=frame_chunk)
    return postprocess(out, selection=selection, output_size=(H, W))


def assert_same(result: ExpressionResult, pred) -> None:
    """Bitwise equality with a postprocess() prediction (mask scores sum in another order: close)."""
    assert np.array_equal(result.masks, pred.masks.numpy())
    assert np.array_equal(result.instance_masks, pred.instance_masks.numpy())
    assert np.array_equal(result.query_indices, pred.query_indices.numpy())
    assert np.array_equal(result.scores, pred.scores.numpy())
    np.testing.assert_allclose(result.mask_scores, pred.mask_scores.numpy(), rtol=1e-5, atol=1e-6)


def assert_close(a: ExpressionResult, b: ExpressionResult) -> None:
    """Equal up to float rounding: CPU convolution and matmul kernels pick their blocking by batch size, so
    the same image in a batch of 3 or of 10 gets features that differ in the last bits (~1e-7 relative).
    A mask pixel can then flip only where its logit is within ~1e-6 of 0: allow 0.1 % of the pixels."""
    assert a.text == b.text
    assert np.array_equal(a.query_indices, b.query_indices)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    np.testing.assert_allclose(a.mask_scores, b.mask_scores, atol=1e-5)
    assert a.masks.shape == b.masks.shape and a.instance_masks.shape == b.instance_masks.shape
    assert np.count_nonzero(a.masks != b.masks) <= 1e-3 * a.masks.size
    assert np.count_nonzero(a.instance_masks != b.instance_masks) <= 1e-3 * a.instance_masks.size


# ------------------------------------------------------------------------------------------------ reading


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)


def test_frame_folder_is_sorted_naturally_and_named_by_stems(tmp_path, video):
    for i in (10, 2, 1):
        _save(tmp_path / "f" / f"frame{i}.png", video.frames[i % 6])
    (tmp_path / "f" / "notes.txt").write_text("not a frame")
    source = open_video(tmp_path / "f")
    assert source.num_frames == 3 and source.size == (48, 64)
    frames = list(source.frames())
    assert [f.name for f in frames] == ["frame1", "frame2", "frame10"]
    assert np.array_equal(frames[2].image, video.frames[10 % 6])


def test_grayscale_rgba_and_palette_frames_become_rgb(tmp_path):
    gray = np.arange(48 * 64, dtype=np.uint8).reshape(48, 64)
    rgba = np.dstack([gray, 255 - gray, gray // 2, np.full_like(gray, 7)])
    _save(tmp_path / "f" / "0.png", gray)
    _save(tmp_path / "f" / "1.png", rgba)
    Image.fromarray(gray).convert("P").save(tmp_path / "f" / "2.png")
    frames = [f.image for f in open_video(tmp_path / "f").frames()]
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in frames)
    assert np.array_equal(frames[0], np.repeat(gray[..., None], 3, axis=-1))
    assert np.array_equal(frames[1], rgba[..., :3])  # alpha dropped, colours kept
    arr = [f.image for f in open_video(np.stack([gray, gray])).frames()]  # (T, H, W) arrays as well
    assert np.array_equal(arr[1], frames[0])


def test_video_file_selection_decodes_only_what_is_asked(tmp_path):
    write_demo_video(tmp_path / "v.mp4", seed=0, frames=8, size=(48, 64))
    source = open_video(tmp_path / "v.mp4")
    assert source.size == (48, 64) and source.fps == pytest.approx(8)
    every = list(source.frames())
    assert [f.name for f in every] == [f"{i:05d}" for i in range(8)]
    picked = list(source.frames(start=1, end=7, every=2))
    assert [f.index for f in picked] == [1, 3, 5] and [f.name for f in picked] == ["00001", "00003", "00005"]
    assert all(np.array_equal(p.image, every[p.index].image) for p in picked)
    with pytest.raises(VideoError, match="no frames in the selection"):
        list(source.frames(start=20))


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mp4: no such file"):
        open_video(tmp_path / "missing.mp4")
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(VideoError, match="corrupt.mp4: not a readable video"):
        open_video(tmp_path / "corrupt.mp4")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(VideoError, match="empty: no JPEG or PNG frames"):
        open_video(tmp_path / "empty")
    for name, size in (("a", (48, 64)), ("b", (48, 64)), ("c", (40, 64)), ("d", (30, 30))):
        _save(tmp_path / "mixed" / f"{name}.jpg", np.zeros((*size, 3), np.uint8))
    with pytest.raises(VideoError, match=r"c\.jpg: frame size 40x64 differs from the first frame's 48x64"):
        open_video(tmp_path / "mixed")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "0.png").write_bytes(b"not a png")
    with pytest.raises(VideoError, match=r"0\.png: not a readable image"):
        open_video(tmp_path / "bad")
    for bad in (np.zeros((2, 8, 8, 4), np.uint8), np.zeros((2, 8, 8, 3), np.float32), np.zeros((8, 8), np.uint8),
                np.zeros((0, 8, 8, 3), np.uint8)):
        with pytest.raises(VideoError, match="video array"):
            open_video(bad)


def test_video_without_frames_is_an_error(tmp_path):
    import av  # a dev dependency: the test fails, not skips, without it
    with av.open(str(tmp_path / "empty.mkv"), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    with pytest.raises(VideoError, match="empty.mkv: the video has no frames"):
        open_video(tmp_path / "empty.mkv")


def test_video_writer_is_atomic_and_draws_overlays(tmp_path, video):
    import av  # a dev dependency: the test fails, not skips, without it
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(path, fps=8) as writer:
            writer.write(video.frames[0])
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    masks = np.zeros((2, 47, 63), bool)
    masks[0, :10] = True
    with VideoWriter(path, fps=8) as writer:
        for frame in video.frames[:3, :47, :63]:  # odd sides are padded for yuv420p
            image = draw_overlay(frame, masks, ["a", "b"])
            assert image.shape == frame.shape and not np.array_equal(image[:10], frame[:10])
            writer.write(image)
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 3


# --------------------------------------------------------------------------------------------- predictor


def test_state_holds_resized_frames_once(segment_model, video):
    model, _ = segment_model
    predictor = SSAPredictor(model)
    assert predictor.short_side == SHORT  # from the model's config
    state = predictor.init_state(video.frames, start=1, end=9, every=3)
    assert isinstance(state, VideoState)
    assert state.frame_names == ("00001", "00004", "00007") and state.frame_indices == (1, 4, 7)
    assert state.original_size == (48, 64) and state.input_size == (64, 85)
    assert np.array_equal(state.frames.read(0, 3), resize_frames(video.frames[[1, 4, 7]], (64, 85)))
    assert not state.frames.spilled
    assert np.array_equal(np.stack(list(state.original_frames())), video.frames[[1, 4, 7]])


@pytest.mark.parametrize("selection", ["union", "top1"])
def test_equals_postprocess_of_the_full_model(segment_model, video, texts, selection):
    model, _ = segment_model
    state = SSAPredictor(model).init_state(video.frames)
    # One pass (the video fits in one chunk): the very computation of SSA.forward, all expressions batched.
    results = SSAPredictor(model, frame_chunk=1000, selection=selection).segment(state, texts)
    for result, pred in zip(results, reference(model, video.frames, texts, selection=selection)):
        assert_same(result, pred)
    assert any(r.masks.any() and not r.masks.all() for r in results)  # the masks say something
    # Several chunks: pass 2 either reuses pass 1's mask features (they fit the cache) or recomputes the
    # same chunks as SSA.forward(frame_chunk=3) runs; equal bits either way.
    expected = reference(model, video.frames, texts[:1], frame_chunk=3, selection=selection)[0]
    for cache_bytes in (0, 2**30):
        predictor = SSAPredictor(model, frame_chunk=3, selection=selection, max_cache_bytes=cache_bytes)
        assert_same(predictor.segment(state, texts[0])[0], expected)


def test_mask_features_are_kept_from_pass_1_only_when_they_fit(segment_model, video, texts, monkeypatch):
    from ssa_rvos.modeling import SSA

    model, _ = segment_model
    state = SSAPredictor(model).init_state(video.frames)
    calls = []
    original = SSA.forward_mask_features
    monkeypatch.setattr(SSA, "forward_mask_features", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    T = state.num_frames
    for cache_bytes, recomputed in ((0, True), (2**30, False)):
        calls.clear()
        SSAPredictor(model, frame_chunk=2, max_cache_bytes=cache_bytes).segment(state, texts[:2])
        # two expressions, frame_chunk 2: one frame per call, so T calls when pass 2 recomputes
        assert len(calls) == (T if recomputed else 0)


def test_chunked_equals_unchunked_and_batched_equals_one_by_one(segment_model, video, texts):
    model, _ = segment_model
    state = SSAPredictor(model).init_state(video.frames)
    whole = SSAPredictor(model, frame_chunk=1000).segment(state, texts)
    for chunk in (1, 4, 7):  # 7 // 3 expressions = 2 frames per call, the last call has one
        for a, b in zip(whole, SSAPredictor(model, frame_chunk=chunk).segment(state, texts)):
            assert_close(a, b)
    for a, text in zip(whole, texts):
        assert_close(a, SSAPredictor(model, frame_chunk=1000).segment(state, text)[0])


def test_generator_yields_the_same_masks_frame_by_frame(segment_model, video, texts):
    model, _ = segment_model
    predictor = SSAPredictor(model, frame_chunk=4)
    state = predictor.init_state(video.frames, every=2)
    results = predictor.segment(state, texts)
    run = predictor.propagate(state, texts)
    with pytest.raises(RuntimeError, match="after iterating"):
        run.mask_scores  # noqa: B018 - the property raises
    frames = list(run)
    assert [f.index for f in frames] == list(range(5)) and [f.name for f in frames] == list(state.frame_names)
    assert all(isinstance(f, FrameResult) and f.masks.shape == (3, 48, 64) for f in frames)
    assert not torch.is_inference_mode_enabled()  # not left on between frames
    for e, result in enumerate(results):
        assert np.array_equal(np.stack([f.masks[e] for f in frames]), result.masks)
        assert np.array_equal(np.stack([f.instance_masks[e] for f in frames], axis=1), result.instance_masks)
        assert np.array_equal(run.query_indices[e], result.query_indices)
        assert np.array_equal(run.scores[e], result.scores) and np.array_equal(run.mask_scores[e], result.mask_scores)
        assert np.array_equal(result.masks, result.instance_masks.any(0))


def test_frames_spilled_to_disk_give_the_same_result(segment_model, video, texts):
    model, _ = segment_model
    ram = SSAPredictor(model, frame_chunk=4)
    disk = SSAPredictor(model, frame_chunk=4, max_ram_bytes=3 * 64 * 85 * 3)  # three frames fit, then a file
    s1, s2 = ram.init_state(video.frames), disk.init_state(video.frames)
    assert not s1.frames.spilled and s2.frames.spilled
    assert np.array_equal(s1.frames.read(2, 9), s2.frames.read(2, 9))
    for a, b in zip(ram.segment(s1, texts[:1]), disk.segment(s2, texts[:1])):
        assert np.array_equal(a.masks, b.masks) and np.array_equal(a.scores, b.scores)
    s2.close()
    with pytest.raises(ValueError, match="no frames"):
        disk.segment(s2, texts[:1])


def test_mp4_and_frame_folder_of_the_same_frames_agree(segment_model, tmp_path, texts):
    model, _ = segment_model
    write_demo_video(tmp_path / "v.mp4", seed=3, frames=6, size=(48, 64))
    decoded = np.stack([f.image for f in open_video(tmp_path / "v.mp4").frames()])  # lossy: compare on these
    for t, frame in enumerate(decoded):
        _save(tmp_path / "frames" / f"{t:05d}.png", frame)  # PNG is lossless
    predictor = SSAPredictor(model, frame_chunk=4)
    from_mp4 = predictor.segment(predictor.init_state(tmp_path / "v.mp4"), texts[:2])
    folder_state = predictor.init_state(tmp_path / "frames")
    from_folder = predictor.segment(folder_state, texts[:2])
    from_list = predictor.segment(predictor.init_state(sorted((tmp_path / "frames").glob("*.png"))), texts[:2])
    assert folder_state.frame_names == tuple(f"{t:05d}" for t in range(6))
    for a, b, c in zip(from_mp4, from_folder, from_list):
        assert np.array_equal(a.masks, b.masks) and np.array_equal(a.instance_masks, b.instance_masks)
        assert np.array_equal(b.masks, c.masks) and np.array_equal(a.scores, b.scores)


def test_one_pixel_and_4k_frames(segment_model):
    model, _ = segment_model
    predictor = SSAPredictor(model, selection="top1")
    tiny = predictor.segment(predictor.init_state(np.full((2, 1, 1, 3), 200, np.uint8)), "the dot")[0]
    assert tiny.masks.shape == (2, 1, 1) and tiny.instance_masks.shape == (1, 2, 1, 1)
    frame = np.zeros((1, 2160, 3840, 3), np.uint8)
    frame[:, 500:1500, 1000:2500] = (200, 30, 30)
    state = predictor.init_state(frame)
    assert state.input_size == (64, 114)
    big = predictor.segment(state, "the red box")[0]
    assert big.masks.shape == (1, 2160, 3840) and big.masks.dtype == bool


def test_empty_and_overlong_texts(segment_model, video):
    model, _ = segment_model
    predictor = SSAPredictor(model)
    state = predictor.init_state(video.frames[:2])
    for bad in ("", "  \t", ["a cat", " "]):
        with pytest.raises(ValueError, match="is empty: only whitespace or invisible characters"):
            predictor.segment(state, bad)
    with pytest.raises(ValueError, match="no expressions"):
        predictor.segment(state, [])
    long = " ".join(["the big red ball rolling"] * 20)  # 100 words > 75 tokens
    with pytest.warns(UserWarning, match=r"expression 1 .* tokens, more than the text encoder's context of 77"):
        results = predictor.segment(state, ["a cat", long])
    tokens = model.backbone.tokenize([long])[0]
    assert len(tokens) == 77 and tokens[-1] == tokens.max()  # truncated, the end-of-text token kept last
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and a text that fits gives no warning
        predictor.check_texts(["a cat", "the ball"])
    assert results[1].masks.shape == (2, 48, 64)


def test_from_pretrained_and_devices(segment_model, monkeypatch):
    import ssa_rvos.pretrained as pretrained

    model, path = segment_model
    predictor = SSAPredictor.from_pretrained(path, device="cpu", frame_chunk=4)
    assert predictor.device.type == "cpu" and predictor.frame_chunk == 4 and not predictor.model.training
    monkeypatch.setattr(pretrained, "bundled_path", lambda name: path)  # a tiny stand-in for the shipped one (speed)
    default = SSAPredictor.from_pretrained()
    assert all(torch.equal(a, b) for a, b in zip(default.model.state_dict().values(), model.state_dict().values()))
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="selection"):
        SSAPredictor(model, selection="all")


def test_forward_mask_features_is_the_frame_stage_without_its_decoder(segment_model, video):
    model, _ = segment_model
    images, _ = model.preprocess(torch.from_numpy(video.frames[:3]).permute(0, 3, 1, 2).float())
    text = model.encode_text(["a star"]).repeat_frames(3)
    with torch.inference_mode():
        assert torch.equal(model.forward_mask_features(images, text), model.forward_frames(images, text).video_mask_features)


def test_release_memory_trims_the_heap_where_glibc_has_malloc_trim(monkeypatch):
    import ctypes.util
    import sys

    from ssa_rvos.runtime import release_memory

    glibc = sys.platform.startswith("linux") and "libc.so.6" in (ctypes.util.find_library("c") or "")
    assert release_memory() is glibc
    monkeypatch.setenv("SSA_RVOS_MALLOC_TRIM", "0")  # how the benchmark measures without it
    assert release_memory() is False


def test_a_model_with_motion_embedding_gets_its_boxes_in_every_pass(video, texts):
    """The engine hands the video stage the frame masks' boxes chunk by chunk (motion_embedding, not in
    the paper): the same masks as SSA.forward in one pass or in chunks."""
    import dataclasses

    from ssa_rvos import build_model, model_config

    config = dataclasses.replace(model_config("ssa_tiny"), test_short_side=SHORT)
    config = dataclasses.replace(config, video_decoder=dataclasses.replace(config.video_decoder, motion_embedding=True))
    torch.manual_seed(0)
    model = build_model(config).eval()
    with torch.no_grad():
        for p in model.video_decoder.motion.parameters():
            p.normal_(0, 0.2)  # not zero-initialised: the boxes must matter
    state = SSAPredictor(model).init_state(video.frames)
    whole = SSAPredictor(model, frame_chunk=1000).segment(state, texts[:2])
    for result, pred in zip(whole, reference(model, video.frames, texts[:2])):
        assert_same(result, pred)
    chunked = SSAPredictor(model, frame_chunk=3).segment(state, texts[0])[0]
    assert_same(chunked, reference(model, video.frames, texts[:1], frame_chunk=3)[0])
