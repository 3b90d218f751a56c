"""Hungarian matching of predictions to targets (spec Sec. 6).

Every prediction set is matched on its own: each of the 10 frame predictions frame by frame, each of
the 6 video layers x K frame-layer copies clip by clip. The cost of assigning query i to object j is

    class_weight * (-p_fg(i)) + mask_weight * BCE(i, j) + dice_weight * Dice(i, j)

with BCE and Dice evaluated on ``num_points`` uniformly random points that all queries and all objects
of one frame share (Mask2Former's matcher). At video level the same points are used in every frame of
the clip and the costs run over all T * points (VITA's matcher). Matching runs without gradients and
in fp32 whatever the autocast state.

Shape alphabet: B clips, T frames, N queries, M objects of a clip, P points, h, w prediction size
(stride 4 of the padded input), Hp, Wp padded input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

# A stand-in for non-finite costs: scipy refuses NaN/inf with an opaque error, while the losses of
# such predictions are non-finite themselves, so the trainer still sees the problem.
_BAD_COST = 1e8


def point_sample(x: Tensor, coords: Tensor) -> Tensor:
    """Bilinear samples of x (R, C, H, W) at coords (R, P, 2) -> (R, C, P).

    Coordinates are (x, y) in [0, 1] over the whole map, align_corners=False semantics: pixel (i, j)
    has its centre at ((j + 0.5) / W, (i + 0.5) / H), so the same coordinate means the same place in
    maps of different resolutions (stride-4 predictions and full-size targets).
    """
    grid = (2.0 * coords - 1.0).unsqueeze(2)  # (R, P, 1, 2) in grid_sample's [-1, 1]
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False).squeeze(3)


def pairwise_sigmoid_bce(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean binary cross-entropy over P points of every prediction against every target.

    logits: (..., N, P); labels: (..., M, P) in [0, 1] -> (..., N, M).
    """
    P = logits.shape[-1]
    pos = F.softplus(-logits)  # -log sigmoid(x): the cost of a point whose label is 1
    neg = F.softplus(logits)  # -log(1 - sigmoid(x)): label 0
    return (pos @ labels.transpose(-1, -2) + neg @ (1.0 - labels).transpose(-1, -2)) / P


def pairwise_dice(logits: Tensor, labels: Tensor) -> Tensor:
    """Dice loss with +1 smoothing of every prediction against every target.

    logits: (..., N, P); labels: (..., M, P) -> (..., N, M).
    """
    prob = logits.sigmoid()
    numerator = 2.0 * (prob @ labels.transpose(-1, -2))
    denominator = prob.sum(-1)[..., :, None] + labels.sum(-1)[..., None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


def hungarian(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one assignment of a (N, M) cost matrix.

    Returns (rows, cols), int64 on the CPU, sorted by row; min(N, M) pairs (none if N or M is 0).
    """
    if cost.numel() == 0:
        empty = torch.empty(0, dtype=torch.long)
        return empty, empty.clone()
    c = torch.nan_to_num(cost.detach().float().cpu(), nan=_BAD_COST, posinf=_BAD_COST, neginf=-_BAD_COST)
    rows, cols = linear_sum_assignment(c.numpy())
    return torch.from_numpy(rows.astype(np.int64)), torch.from_numpy(cols.astype(np.int64))


@dataclass(frozen=True)
class FrameAssignment:
    """Matched pairs of one frame prediction, flat over all frames of all clips, in (clip, frame,
    query) order. Each field is (Nm,) int64 on the CPU; ``target`` indexes the clip's objects
    (the rows of its (M, T, Hp, Wp) masks), not the objects visible in the frame."""

    clip: Tensor
    frame: Tensor
    query: Tensor
    target: Tensor

    def __len__(self) -> int:
        return int(self.query.numel())


@dataclass(frozen=True)
class VideoAssignment:
    """Matched pairs of one video prediction set, in (clip, query) order; (Nm,) int64 on the CPU."""

    clip: Tensor
    query: Tensor
    target: Tensor

    def __len__(self) -> int:
        return int(self.query.numel())


class _CostWeights:
    def __init__(self, *, class_weight: float, mask_weight: float, dice_weight: float, num_points: int) -> None:
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        self.class_weight = float(class_weight)
        self.mask_weight = float(mask_weight)
        self.dice_weight = float(dice_weight)
        self.num_points = int(num_points)

    def cost(self, *, fg_prob: Tensor, point_logits: Tensor, point_labels: Tensor) -> Tensor:
        """fg_prob: (..., N); point_logits: (..., N, P); point_labels: (..., M, P) -> (..., N, M)."""
        # Mask2Former's class cost is -p(target class); every target here is class 0 (foreground).
        return (self.class_weight * -fg_prob[..., None]
                + self.mask_weight * pairwise_sigmoid_bce(point_logits, point_labels)
                + self.dice_weight * pairwise_dice(point_logits, point_labels))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(class_weight={self.class_weight}, mask_weight={self.mask_weight}, "
                f"dice_weight={self.dice_weight}, num_points={self.num_points})")


class FrameMatcher(_CostWeights):
    """Per-frame Hungarian matching (Mask2Former's matcher, applied to each of the B*T frames).

    A frame's targets are the clip objects whose mask is non-empty in that frame (spec Sec. 6).
    """

    @torch.no_grad()
    def __call__(self, *, logits: Tensor, masks: Tensor, targets: Sequence[Tensor]) -> FrameAssignment:
        """logits: (B, T, N, 2) class logits (index 0 foreground); masks: (B, T, N, h, w) mask logits;
        targets: B float masks (M_b, T, Hp, Wp) in [0, 1], zero-padded to the padded input size.
        """
        B, T, N = logits.shape[:3]
        if len(targets) != B:
            raise ValueError(f"got {len(targets)} targets for {B} clips")
        with torch.autocast(device_type=masks.device.type, enabled=False):
            costs, visible = [], []
            for b in range(B):
                tgt = targets[b]
                M = tgt.shape[0]
                if M == 0:
                    costs.append(None)
                    visible.append(None)
                    continue
                # Fresh uniform points per frame, shared by that frame's queries and objects.
                coords = torch.rand(T, self.num_points, 2, device=masks.device)
                pred = point_sample(masks[b].float(), coords)  # (T, N, P)
                lab = point_sample(tgt.transpose(0, 1).float(), coords)  # (T, M, P)
                fg = logits[b].float().softmax(-1)[..., 0]  # (T, N)
                costs.append(self.cost(fg_prob=fg, point_logits=pred, point_labels=lab))  # (T, N, M)
                visible.append(tgt.flatten(2).amax(-1).transpose(0, 1) > 0)  # (T, M)
            # One device-to-host transfer per call, not one per frame.
            present = [b for b in range(B) if costs[b] is not None]
            host_costs = _to_host([costs[b] for b in present])
            host_visible = _to_host([visible[b] for b in present])
        clip, frame, query, target = [], [], [], []
        for b, cost, vis in zip(present, host_costs, host_visible):
            for t in range(T):
                cols = vis[t].nonzero().flatten()
                if cols.numel() == 0:
                    continue
                rows, sub = hungarian(cost[t][:, cols])
                n = rows.numel()
                clip.append(torch.full((n,), b, dtype=torch.long))
                frame.append(torch.full((n,), t, dtype=torch.long))
                query.append(rows)
                target.append(cols[sub])
        return FrameAssignment(*(_cat_long(x) for x in (clip, frame, query, target)))


class VideoMatcher(_CostWeights):
    """Per-clip Hungarian matching of video queries to clip objects (VITA's matcher): the same random
    points in every frame, costs over all T * points; every object of the clip is a target, with its
    empty frames."""

    @torch.no_grad()
    def __call__(self, *, logits: Tensor, masks: Tensor, targets: Sequence[Tensor]) -> VideoAssignment:
        """logits: (B, N, 2); masks: (B, N, T, h, w) mask logits; targets: B float masks (M_b, T, Hp, Wp)."""
        B, N, T = masks.shape[:3]
        if len(targets) != B:
            raise ValueError(f"got {len(targets)} targets for {B} clips")
        with torch.autocast(device_type=masks.device.type, enabled=False):
            costs, present = [], []
            for b in range(B):
                tgt = targets[b]
                M = tgt.shape[0]
                if M == 0:
                    continue
                coords = torch.rand(1, self.num_points, 2, device=masks.device).expand(T, -1, -1)
                pred = point_sample(masks[b].transpose(0, 1).float(), coords)  # (T, N, P)
                lab = point_sample(tgt.transpose(0, 1).float(), coords)  # (T, M, P)
                pred = pred.transpose(0, 1).flatten(1)  # (N, T*P)
                lab = lab.transpose(0, 1).flatten(1)  # (M, T*P)
                fg = logits[b].float().softmax(-1)[..., 0]  # (N,)
                costs.append(self.cost(fg_prob=fg, point_logits=pred, point_labels=lab))  # (N, M)
                present.append(b)
            host_costs = _to_host(costs)
        clip, query, target = [], [], []
        for b, cost in zip(present, host_costs):
            rows, cols = hungarian(cost)
            clip.append(torch.full((rows.numel(),), b, dtype=torch.long))
            query.append(rows)
            target.append(cols)
        return VideoAssignment(*(_cat_long(x) for x in (clip, query, target)))


def _to_host(tensors: list[Tensor]) -> list[Tensor]:
    """Move several tensors to the CPU with one transfer."""
    if not tensors:
        return []
    flat = torch.cat([t.reshape(-1).float() for t in tensors]).cpu()
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].view(t.shape).to(t.dtype))
        start += t.numel()
    return out


def _cat_long(parts: list[Tensor]) -> Tensor:
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
