"""From network outputs to per-frame binary masks (inference protocol of the original, spec Sec. 5).

Score per video query = softmax(class logits)[foreground] of the last video-decoder layer.
Selection ``union`` (MeViS) keeps every query above a threshold and merges their masks;
``top1`` (Ref-YouTube-VOS, Ref-DAVIS17) keeps the best one. Mask logits are upsampled to the
padded input, cropped to the image, resized to the requested output size and thresholded at 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .modeling import SSAOutput
from .modeling.ssa import mask_logits

SELECTIONS = ("union", "top1")
_UPSAMPLE_ELEMENTS = 2**25  # float logits upsampled at once by query_masks (128 MB)


@dataclass
class VideoPrediction:
    """One clip's result.

    masks: (T, H, W) bool, the union of the selected queries' masks; instance_masks: (Q, T, H, W)
    bool, one per selected query; query_indices: (Q,) which video queries were selected;
    scores: (Q,) their foreground probabilities; mask_scores: (Q,) scores times the mean
    probability inside each mask (the original's ranking score).
    """

    masks: Tensor
    instance_masks: Tensor
    query_indices: Tensor
    scores: Tensor
    mask_scores: Tensor


def select_queries(scores: Tensor, *, selection: str = "union", threshold: float = 0.5) -> Tensor:
    """scores: (N,) foreground probabilities -> indices of the selected queries (ascending).

    ``union`` may select none (the original has no fallback; the masks are then empty).
    """
    if selection == "union":
        return torch.nonzero(scores > threshold).flatten()
    if selection == "top1":
        return scores.argmax().reshape(1)
    raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")


def mask_scores(scores: Tensor, prob_sum: Tensor, area: Tensor) -> Tensor:
    """The original's ranking score of Q queries: score x mean foreground probability inside the mask.
    prob_sum / area: (Q,) that probability summed over the mask's pixels and the mask's area, over every
    frame (as :func:`query_masks` returns them per frame, so they can be added up frame by frame)."""
    return scores * prob_sum / (area + 1e-6)


def resize_mask_logits(
    logits: Tensor, *, padded_size: tuple[int, int], image_size: tuple[int, int]
) -> Tensor:
    """logits: (Q, T, h, w) at stride 4 -> (Q, T, H, W) at the input image size: bilinear to the
    padded size first, then crop the padding (so the padding does not bleed into the edge)."""
    up = F.interpolate(logits, size=padded_size, mode="bilinear", align_corners=False)
    return up[..., : image_size[0], : image_size[1]]


def query_masks(
    embed: Tensor,
    features: Tensor,
    *,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    output_size: tuple[int, int] | None = None,
    head: Callable[[Tensor, Tensor], Tensor] = mask_logits,
) -> tuple[Tensor, Tensor, Tensor]:
    """The masks of Q selected video queries on T frames.

    embed: (Q, C) their mask embeddings; features: (T, C, h, w) video mask features at stride 4.
    Returns masks (Q, T, H, W) bool at ``output_size`` (default: the image size), and per query the
    summed foreground probability inside its mask and the mask's area, both (Q,) at the image size:
    the parts of the mask score, which add up over frames. head: the mask head (embed, features) -> (Q, T, h, w)
    logits (:func:`ssa_rvos.modeling.ssa.mask_logits`; a backend's own in the engine).
    """
    logits = head(embed, features)
    logits = resize_mask_logits(logits, padded_size=padded_size, image_size=image_size)
    prob = logits.sigmoid()
    hard = prob > 0.5
    num = (prob * hard).flatten(1).sum(1)
    area = hard.flatten(1).sum(1)
    size = tuple(output_size or image_size)
    if tuple(logits.shape[-2:]) == size:
        return logits > 0, num, area
    # Upsampled a few queries at a time: Q float planes of a 4K frame would take 33 MB each.
    masks = torch.empty((*logits.shape[:2], *size), dtype=torch.bool, device=logits.device)
    step = max(1, _UPSAMPLE_ELEMENTS // (logits.shape[1] * size[0] * size[1]))
    for q in range(0, logits.shape[0], step):
        masks[q:q + step] = F.interpolate(logits[q:q + step], size=size, mode="bilinear", align_corners=False) > 0
    return masks, num, area


def postprocess(
    output: SSAOutput,
    *,
    selection: str = "union",
    threshold: float = 0.5,
    output_size: tuple[int, int] | None = None,
    frame_chunk: int = 16,
) -> list[VideoPrediction]:
    """Binary masks for every clip of ``output`` (eval-mode output: the last query layer is
    used). output_size: (H, W) of the original frames when the model saw resized ones."""
    scores = output.video_scores()[-1]  # (B, N)
    embed = output.video_mask_embed[-1, -1]  # (B, N, C)
    results = []
    for b in range(scores.shape[0]):
        idx = select_queries(scores[b], selection=selection, threshold=threshold)
        feats = output.video_mask_features[b]  # (T, C, h, w)
        T = feats.shape[0]
        size = output_size or output.image_size
        inst = torch.zeros(len(idx), T, *size, dtype=torch.bool, device=feats.device)
        num = torch.zeros(len(idx), device=feats.device)
        den = torch.zeros(len(idx), device=feats.device)
        for start in range(0, T, frame_chunk):
            masks, n, d = query_masks(embed[b, idx], feats[start:start + frame_chunk], padded_size=output.padded_size,
                                      image_size=output.image_size, output_size=size)
            num += n
            den += d
            inst[:, start:start + frame_chunk] = masks
        results.append(
            VideoPrediction(
                masks=inst.any(0),
                instance_masks=inst,
                query_indices=idx,
                scores=scores[b, idx],
                mask_scores=mask_scores(scores[b, idx], num, den),
            )
        )
    return results
