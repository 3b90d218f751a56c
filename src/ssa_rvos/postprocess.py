"""From network outputs to per-frame binary masks (inference protocol of the original, spec Sec. 5).

Score per video query = softmax(class logits)[foreground] of the last video-decoder layer.
Selection ``union`` (MeViS) keeps every query above a threshold and merges their masks;
``top1`` (Ref-YouTube-VOS, Ref-DAVIS17) keeps the best one. Mask logits are upsampled to the
padded input, cropped to the image, resized to the requested output size and thresholded at 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .modeling import SSAOutput

SELECTIONS = ("union", "top1")


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


def resize_mask_logits(
    logits: Tensor, *, padded_size: tuple[int, int], image_size: tuple[int, int]
) -> Tensor:
    """logits: (Q, T, h, w) at stride 4 -> (Q, T, H, W) at the input image size: bilinear to the
    padded size first, then crop the padding (so the padding does not bleed into the edge)."""
    up = F.interpolate(logits, size=padded_size, mode="bilinear", align_corners=False)
    return up[..., : image_size[0], : image_size[1]]


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
            logits = torch.einsum("qc,tchw->qthw", embed[b, idx], feats[start:start + frame_chunk])
            logits = resize_mask_logits(logits, padded_size=output.padded_size, image_size=output.image_size)
            prob = logits.sigmoid()
            hard = prob > 0.5
            num += (prob * hard).flatten(1).sum(1)
            den += hard.flatten(1).sum(1)
            if tuple(logits.shape[-2:]) != tuple(size):
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            inst[:, start:start + frame_chunk] = logits > 0
        results.append(
            VideoPrediction(
                masks=inst.any(0),
                instance_masks=inst,
                query_indices=idx,
                scores=scores[b, idx],
                mask_scores=scores[b, idx] * num / (den + 1e-6),
            )
        )
    return results
