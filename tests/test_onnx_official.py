"""The authors' fixture (official-tiny) through ONNX and onnxruntime, stage by stage and end to end. A file of
its own, so that pytest-xdist runs this export (about two minutes on 2 cores) beside test_onnx.py's."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("onnxruntime", reason="the [onnx] extra (CI installs it with [dev])")
pytest.importorskip("onnxscript", reason="the [onnx] extra (CI installs it with [dev])")

from ssa_rvos.onnx_export import export_onnx  # noqa: E402
from ssa_rvos.onnx_runtime import OnnxSSA  # noqa: E402
from ssa_rvos.predictor import SSAPredictor  # noqa: E402

ATOL = 1e-4


@pytest.mark.slow
def test_the_authors_fixture_through_onnxruntime(fixtures_dir, tmp_path):
    """official-tiny converted, exported and run by onnxruntime: each stage within 1e-4 of the authors'
    outputs (the rescaled class head's logits relatively, as in test_official.py) and the final masks and
    selected queries theirs, except where the upsampled logit is within 1e-4 of zero."""
    from ssa_rvos.checkpoint import convert_official_checkpoint
    from ssa_rvos.modeling import ClipConfig
    from ssa_rvos.postprocess import resize_mask_logits

    fixture = fixtures_dir / "official-tiny"
    meta = json.loads((fixture / "meta.json").read_text())
    ref = load_file(str(fixture / "reference_outputs.safetensors"))
    clip = ClipConfig(model_name="convnext_tinyfix", architecture=meta["clip_config"], word_mask_rule="nonzero")
    model, _ = convert_official_checkpoint(fixture / "official_tiny.pth", clip=clip)
    backend = OnnxSSA(export_onnx(model.eval(), tmp_path / "official", optimize=False))

    def close(ours, expected, rtol=0.0):
        assert ours.shape == expected.shape, (ours.shape, expected.shape)
        torch.testing.assert_close(ours.float(), expected.float(), atol=ATOL, rtol=rtol)

    text = backend.encode_text([meta["sentence"]])
    close(text.words, ref["word_feat"])
    close(text.sentence, ref["sentence_feat"])
    assert torch.equal(text.word_mask, ref["word_mask"].bool())
    frames = ref["frames_uint8"].permute(0, 3, 1, 2).float()
    images, size = backend.preprocess(frames)
    close(images, ref["images_padded"])
    T = frames.shape[0]
    sentence = backend.sentence_proj(text.sentence)
    stage = backend.forward_frames(images, text.repeat_frames(T), sentence=sentence.repeat_interleave(T, 0))
    close(stage.video_mask_features, ref["video_mask_features"])
    close(stage.sentence[:, None], ref["sentence_tokens_per_frame"])
    close(stage.queries[0], ref["frame_queries_last"])
    close(backend.forward_mask_features(images, text.repeat_frames(T), sentence=sentence.repeat_interleave(T, 0)),
          ref["video_mask_features"])
    video = backend.forward_video(stage.queries[:, None], stage.sentence[None])
    close(video.mask_embed[-1], ref["video_pred_mask_embed"])
    close(video.logits[-1], ref["video_pred_logits"], rtol=1e-5)
    # the engine end to end: the MeViS selection and masks of the authors' code
    predictor = SSAPredictor(backend, short_side=min(size))
    with predictor.init_state(ref["frames_uint8"].numpy()) as state:
        result = predictor.segment(state, [meta["sentence"]])[0]
    scores = ref["video_pred_logits"][0, 0].softmax(-1)[:, 0]
    assert np.array_equal(result.query_indices, torch.nonzero(scores > 0.5).flatten().numpy())
    embed = ref["video_pred_mask_embed"][0, 0, result.query_indices]
    logits = resize_mask_logits(torch.einsum("qc,tchw->qthw", embed, ref["video_mask_features"]),
                                padded_size=tuple(images.shape[-2:]), image_size=size)
    differ = result.masks != ref["final_masks"][0].bool().numpy()
    assert not (differ & ~(logits.abs() < 1e-4).any(0).numpy()).any()
    assert result.masks.sum() > 0
