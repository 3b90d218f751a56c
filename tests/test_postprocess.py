import pytest
import torch

from ssa_rvos.postprocess import postprocess, resize_mask_logits, select_queries


def test_union_selects_every_query_strictly_above_threshold():
    scores = torch.tensor([0.2, 0.7, 0.5, 0.9, 0.51])
    assert select_queries(scores, selection="union").tolist() == [1, 3, 4]
    assert select_queries(scores, selection="union", threshold=0.8).tolist() == [3]
    assert select_queries(scores, selection="union", threshold=0.95).tolist() == []


def test_top1_selects_the_best_query():
    assert select_queries(torch.tensor([0.2, 0.7, 0.95, 0.9]), selection="top1").tolist() == [2]
    assert select_queries(torch.tensor([0.1, 0.2]), selection="top1").tolist() == [1]


def test_unknown_selection_is_rejected():
    with pytest.raises(ValueError, match="selection"):
        select_queries(torch.rand(3), selection="all")


def test_padding_is_cropped_after_upsampling():
    # Positive in the image area, strongly negative in the padding: no bleeding at the edge.
    logits = torch.full((1, 1, 16, 16), -10.0)
    logits[..., :13, :15] = 10.0  # 52 x 60 image inside 64 x 64 padded input
    up = resize_mask_logits(logits, padded_size=(64, 64), image_size=(50, 60))
    assert up.shape == (1, 1, 50, 60)
    assert (up > 0).all()


def test_postprocess_unions_selected_queries_and_resizes(tiny_model):
    with torch.no_grad():
        out = tiny_model(torch.rand(2, 3, 3, 40, 50) * 255, ["a red square", "a blue circle"])
    # Force known scores: queries 2 and 5 pass for clip 0, none for clip 1.
    logits = torch.full_like(out.video_logits, 0.0)
    logits[-1, -1, 0, [2, 5], 0] = 5.0
    out.video_logits = logits
    preds = postprocess(out, selection="union", output_size=(80, 100))
    assert preds[0].query_indices.tolist() == [2, 5]
    assert preds[0].masks.shape == (3, 80, 100) and preds[0].instance_masks.shape == (2, 3, 80, 100)
    assert torch.equal(preds[0].masks, preds[0].instance_masks.any(0))
    # The original has no fallback: nothing above threshold gives empty masks.
    assert preds[1].query_indices.numel() == 0 and not preds[1].masks.any()
    top = postprocess(out, selection="top1")
    assert top[0].query_indices.tolist() == [2] and top[0].masks.shape == (3, 40, 50)
