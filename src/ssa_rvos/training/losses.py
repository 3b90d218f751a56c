"""The training losses of SSA (spec Sec. 6): frame- and video-level set losses and VITA's similarity loss.

- Frame level (Mask2Former): each of the ``frame_layers`` frame predictions is matched frame by frame on
  its own and supervised with cross-entropy (class weights [1, no_object_weight]) plus point BCE and
  point Dice on importance-sampled points.
- Video level (VITA): each of the ``video_layers`` layers x K frame-layer copies is matched clip by clip
  on its own; the same three losses, with points drawn per frame and concatenated over T.
- Video motion (not in the paper; only with ``video_motion_weight`` > 0): per video layer, each matched
  video query's predicted displacement against its object's (:func:`object_displacement`), smooth L1.
- Similarity (VITA ``loss_fg_sim``), final video layer only: matched frame queries of the last K frame
  predictions and matched video queries carry the identity of their object; BCE-with-logits of the raw
  dot products of every pair within one (copy, clip) group against "same identity".

Losses are returned unweighted under the keys of ``SSACriterion.weight_dict``; ``SSACriterion.total``
weighs and sums them. Everything inside runs in fp32 with autocast disabled, so AMP training is safe.

Shape alphabet: B clips, T frames, N queries, M objects of a clip, K frame-layer copies, P points,
C embedding width, Cm mask-embedding width, h, w prediction size (stride 4), Hp, Wp padded input size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..configs import from_dict
from ..modeling.trajectory import apply_permutation
from ..modeling.video_decoder import weighted_box
from .matcher import FrameAssignment, FrameMatcher, VideoAssignment, VideoMatcher, point_sample

if TYPE_CHECKING:
    from ..modeling.ssa import SSAOutput

__all__ = [
    "LossConfig",
    "SSACriterion",
    "point_sample",
    "importance_sample_points",
    "uncertainty",
    "sigmoid_bce_loss",
    "dice_loss",
    "classification_loss",
    "object_displacement",
    "similarity_loss",
    "reduce_count",
    "expected_loss_keys",
]

SIM_FRAME_ORDERS = ("original", "reordered")


class ClipTargetLike(Protocol):
    """What the criterion reads from a target (``ssa_rvos.training.clips.ClipTarget``)."""

    masks: Tensor  # (M, T, H, W) bool, H <= Hp, W <= Wp
    ids: Tensor  # (M,) int64, unique within the clip


# ------------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and sampling of spec Sec. 6.

    The matching costs use the same class / mask / Dice weights as the losses (as the original does).
    ``sim_weight``: the released config says 0.5, but the original applied the similarity loss with
    weight 1.0 through a key mismatch; the official recipe sets 1.0. ``sim_frame_order``: "original"
    gathers the frame similarity embeddings in the order the frame matcher saw the queries;
    "reordered" reproduces the original, which gathered them after the trajectory matching had
    re-ordered them in place (so its indices point at other queries).
    ``video_motion_weight`` (not in the paper; 0 turns it off and adds no loss key): the weight of an
    auxiliary loss asking every matched video query to predict its object's displacement over the clip
    (the model needs the video decoder's ``displacement_head``), so that the video queries must carry the
    motion that motion-only sentences name.
    """

    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    sim_weight: float = 0.5
    video_motion_weight: float = 0.0
    sim_frame_order: str = "original"
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    frame_layers: int = 10  # frame predictions: the initial queries + 9 decoder layers
    video_layers: int = 6
    deep_supervision: bool = True  # supervise every frame prediction and every video layer, not only the last

    def __post_init__(self) -> None:
        for name in ("class_weight", "mask_weight", "dice_weight", "no_object_weight", "sim_weight",
                     "video_motion_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"loss.{name} must be a finite number >= 0, got {value}")
        if self.sim_frame_order not in SIM_FRAME_ORDERS:
            raise ValueError(f"loss.sim_frame_order must be one of {SIM_FRAME_ORDERS}, got {self.sim_frame_order!r}")
        if self.num_points < 1:
            raise ValueError(f"loss.num_points must be >= 1, got {self.num_points}")
        if not self.oversample_ratio >= 1:
            raise ValueError(f"loss.oversample_ratio must be >= 1, got {self.oversample_ratio}")
        if not 0 <= self.importance_sample_ratio <= 1:
            raise ValueError(f"loss.importance_sample_ratio must be in [0, 1], got {self.importance_sample_ratio}")
        if self.frame_layers < 1 or self.video_layers < 1:
            raise ValueError(f"loss.frame_layers and loss.video_layers must be >= 1, got "
                             f"{self.frame_layers} and {self.video_layers}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping, where: str = "loss") -> LossConfig:
        return from_dict(cls, data, where, style="key")


def expected_loss_keys(config: LossConfig) -> tuple[str, ...]:
    """The keys ``SSACriterion.forward`` returns under ``config``, in a fixed order.

    Final predictions carry the bare names; earlier ones the suffix ``_{i}`` with i their index
    (frame predictions 0 .. frame_layers - 2, video layers 0 .. video_layers - 2), as Mask2Former and
    VITA name their auxiliary losses. ``loss_sim`` is always present (with weight 0 when disabled) so
    the similarity heads stay in the graph, which DDP without unused-parameter search requires.
    ``loss_video_motion`` (and its suffixed copies) only where ``video_motion_weight`` > 0.
    """
    frame = ("loss_ce", "loss_mask", "loss_dice")
    video = ("loss_video_ce", "loss_video_mask", "loss_video_dice")
    if config.video_motion_weight > 0:
        video += ("loss_video_motion",)
    keys = list(frame)
    if config.deep_supervision:
        keys += [f"{k}_{i}" for i in range(config.frame_layers - 1) for k in frame]
    keys += video
    if config.deep_supervision:
        keys += [f"{k}_{i}" for i in range(config.video_layers - 1) for k in video]
    keys.append("loss_sim")
    return tuple(keys)


def _default_weight_dict(config: LossConfig) -> dict[str, float]:
    base = {"ce": config.class_weight, "mask": config.mask_weight, "dice": config.dice_weight,
            "motion": config.video_motion_weight}
    weights = {}
    for key in expected_loss_keys(config):
        if key == "loss_sim":
            weights[key] = config.sim_weight
        else:
            kind = key.removeprefix("loss_").removeprefix("video_").split("_")[0]
            weights[key] = base[kind]
    return weights


# ------------------------------------------------------------------------------------------------ helpers


def uncertainty(logits: Tensor) -> Tensor:
    """PointRend's uncertainty of class-agnostic mask logits: -|logit| (highest at the decision boundary)."""
    return -logits.abs()


def importance_sample_points(logits: Tensor, *, num_points: int, oversample_ratio: float,
                             importance_sample_ratio: float) -> Tensor:
    """PointRend's training point selection on mask logits (R, 1, H, W) -> coords (R, P, 2) in [0, 1].

    Draw ``int(P * oversample_ratio)`` uniform points, keep the ``int(P * importance_sample_ratio)`` most
    uncertain of them (smallest |logit| at the point), fill up with uniform points. No gradient.
    """
    R = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(num_points * importance_sample_ratio)
    num_random = num_points - num_uncertain
    with torch.no_grad():
        coords = torch.rand(R, num_sampled, 2, device=logits.device)
        scores = uncertainty(point_sample(logits.detach().float(), coords))[:, 0]  # (R, num_sampled)
        top = scores.topk(num_uncertain, dim=1).indices  # (R, num_uncertain)
        chosen = coords.gather(1, top[..., None].expand(-1, -1, 2))
        if num_random > 0:
            chosen = torch.cat([chosen, torch.rand(R, num_random, 2, device=logits.device)], dim=1)
    return chosen


def sigmoid_bce_loss(logits: Tensor, labels: Tensor, *, num_masks: float) -> Tensor:
    """Point BCE: mean over the P points of each of R masks, summed over masks, / num_masks.

    logits, labels: (R, P).
    """
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1).sum() / num_masks


def dice_loss(logits: Tensor, labels: Tensor, *, num_masks: float) -> Tensor:
    """Point Dice with +1 smoothing in numerator and denominator, summed over masks, / num_masks.

    logits, labels: (R, P).
    """
    prob = logits.sigmoid()
    numerator = 2.0 * (prob * labels).sum(-1)
    denominator = prob.sum(-1) + labels.sum(-1)
    return (1.0 - (numerator + 1.0) / (denominator + 1.0)).sum() / num_masks


def classification_loss(logits: Tensor, matched: Tensor, *, no_object_weight: float) -> Tensor:
    """Weighted cross-entropy of every query: class 0 (foreground) where ``matched``, else 1 (no object).

    logits: (..., 2); matched: (...) bool. PyTorch's weighted mean, sum(w_i * ce_i) / sum(w_i), over all
    queries of all frames (or copies and clips) at once, as Mask2Former and VITA compute it.
    """
    target = (~matched).long().flatten()
    weight = torch.tensor([1.0, no_object_weight], device=logits.device)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target, weight=weight)


def object_displacement(masks: Tensor) -> Tensor:
    """masks (n, T, H, W) -> (n, 2): how far each object's centre (x, y) moves from the first frame it is
    visible in to the last, as a fraction of the width and height, times 4 (the scale of
    ``ssa_rvos.modeling.video_decoder.motion_features``). 0 for an object visible in fewer than two frames."""
    m = masks.float()
    visible = m.sum((-2, -1)) > 0  # (n, T)
    centre = weighted_box(m)[..., :2]  # (n, T, 2)
    T = m.shape[1]
    index = torch.arange(T, device=m.device).expand_as(visible)
    first = torch.where(visible, index, T).amin(1).clamp_max(T - 1)
    last = torch.where(visible, index, -1).amax(1).clamp_min(0)
    rows = torch.arange(m.shape[0], device=m.device)
    shift = (centre[rows, last] - centre[rows, first]) * 4
    return torch.where((visible.sum(1) >= 2)[:, None], shift, torch.zeros_like(shift))


def similarity_loss(embed: Tensor, identity: Tensor, group: Tensor) -> Tensor:
    """VITA's ``loss_fg_sim`` over E embedded queries (frame and video queries together).

    embed: (E, C); identity: (E,) the object each query was matched to; group: (E,) its (copy, clip).
    Pairs: every ordered pair (i, j) of the same group, i == j included, frame-frame, frame-video,
    video-frame and video-video alike; logit = embed_i . embed_j (raw dot product), label = same
    identity. Mean over those pairs (VITA divides the sum by their count, + 1e-6; with no pair the
    loss is 0 here, still attached to the graph).
    """
    logits = embed @ embed.T
    same_group = group[:, None] == group[None, :]
    label = (identity[:, None] == identity[None, :]) & same_group
    loss = F.binary_cross_entropy_with_logits(logits, label.float(), reduction="none")
    return (loss * same_group).sum() / same_group.sum().clamp(min=1)


def reduce_count(counts: Sequence[float], *, device: torch.device) -> list[float]:
    """Mask2Former / VITA normalisers: the counts summed over processes, divided by the world size
    (DDP averages gradients over processes, so this is the global count per process), at least 1."""
    value = torch.tensor([float(c) for c in counts], dtype=torch.float32, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value)
        value = value / dist.get_world_size()
    return value.clamp(min=1).tolist()


def _attached_zero(*tensors: Tensor) -> Tensor:
    """A 0 that depends on ``tensors``: losses without matches still reach every head (DDP-safe)."""
    return sum(t.float().sum() for t in tensors) * 0.0


# ------------------------------------------------------------------------------------------------ criterion


@dataclass
class _Targets:
    """All objects of the batch: masks (sum M, T, Hp, Wp) float, zero-padded bottom/right; ids (sum M,)
    int64; clip b owns rows offsets[b]:offsets[b + 1]; per_clip[b] is a view of its rows."""

    masks: Tensor
    ids: Tensor
    offsets: list[int]

    @property
    def per_clip(self) -> list[Tensor]:
        return [self.masks[a:z] for a, z in zip(self.offsets[:-1], self.offsets[1:])]

    def rows(self, clip: Tensor, target: Tensor) -> Tensor:
        """Global object rows of (clip, object-of-clip) pairs: (n,) long on the CPU."""
        return torch.tensor(self.offsets[:-1], dtype=torch.long)[clip] + target

    @property
    def num_frame_masks(self) -> int:
        return int((self.masks.flatten(2).amax(-1) > 0).sum())

    @property
    def num_objects(self) -> int:
        return int(self.masks.shape[0])


class SSACriterion(nn.Module):
    """Frame-level, video-level and similarity losses of SSA (spec Sec. 6).

    ``weight_dict`` maps every loss key to its weight; by default it is built from ``config``. A given
    ``weight_dict`` must have exactly the keys of ``expected_loss_keys(config)`` (a silently ignored
    key is how the original's similarity weight went wrong).
    """

    def __init__(self, *, config: LossConfig | None = None, weight_dict: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.config = config or LossConfig()
        c = self.config
        self.frame_matcher = FrameMatcher(class_weight=c.class_weight, mask_weight=c.mask_weight,
                                          dice_weight=c.dice_weight, num_points=c.num_points)
        self.video_matcher = VideoMatcher(class_weight=c.class_weight, mask_weight=c.mask_weight,
                                          dice_weight=c.dice_weight, num_points=c.num_points)
        self.loss_keys = expected_loss_keys(c)
        self.weight_dict = dict(_default_weight_dict(c) if weight_dict is None else weight_dict)
        if set(self.weight_dict) != set(self.loss_keys):
            missing = sorted(set(self.loss_keys) - set(self.weight_dict))
            extra = sorted(set(self.weight_dict) - set(self.loss_keys))
            raise ValueError(f"weight_dict keys differ from the losses the criterion produces: "
                             f"missing {missing}, unknown {extra}")

    def extra_repr(self) -> str:
        return f"config={self.config}"

    def total(self, losses: Mapping[str, Tensor]) -> Tensor:
        """The weighted sum of ``losses`` (a dict returned by ``forward``)."""
        if set(losses) != set(self.weight_dict):
            raise ValueError(f"loss keys {sorted(set(losses) ^ set(self.weight_dict))} do not match weight_dict")
        return sum(self.weight_dict[k] * losses[k] for k in self.loss_keys)

    # -------------------------------------------------------------------------------------------- forward

    def forward(self, output: SSAOutput, targets: Sequence[ClipTargetLike]) -> dict[str, Tensor]:
        """output: the model's output (training mode: K = 3 frame-layer copies; any K <= frame_layers
        works); targets: one per clip, masks (M, T, H, W) with H <= Hp, W <= Wp. Returns the unweighted
        losses keyed as ``weight_dict``."""
        c = self.config
        Lf, B, T = output.frame_logits.shape[:3]
        Lv, K = output.video_logits.shape[:2]
        if Lf != c.frame_layers:
            raise ValueError(f"output has {Lf} frame predictions, loss config expects frame_layers={c.frame_layers}")
        if Lv != c.video_layers:
            raise ValueError(f"output has {Lv} video layers, loss config expects video_layers={c.video_layers}")
        if K > Lf:
            raise ValueError(f"{K} frame-layer copies but only {Lf} frame predictions")
        if len(targets) != B:
            raise ValueError(f"got {len(targets)} targets for {B} clips")
        device = output.frame_logits.device
        with torch.autocast(device_type=device.type, enabled=False):
            tg = self._prepare_targets(targets, T=T, padded_size=tuple(output.padded_size), device=device)
            # Frame level: Mask2Former normalises by the frame-level target masks of the whole batch;
            # video level: VITA by the clip objects times the K copies that are supervised together.
            num_frame, num_video = reduce_count([tg.num_frame_masks, tg.num_objects * K], device=device)

            losses: dict[str, Tensor] = {}
            sim_layers = range(Lf - K, Lf)  # frame prediction Lf - K + k feeds video copy k
            frame_layers = range(Lf) if c.deep_supervision else [Lf - 1]
            frame_matches: dict[int, FrameAssignment] = {}
            # Unbound once: indexing output.frame_masks[layer] per layer would, in the backward pass,
            # allocate and zero a gradient of all Lf layers' masks for every layer.
            frame_logits, frame_masks = output.frame_logits.unbind(0), output.frame_masks.unbind(0)
            for layer in sorted(set(frame_layers) | set(sim_layers)):
                match = self.frame_matcher(logits=frame_logits[layer], masks=frame_masks[layer], targets=tg.per_clip)
                frame_matches[layer] = match
                if layer in frame_layers:
                    suffix = "" if layer == Lf - 1 else f"_{layer}"
                    losses.update(self._frame_losses(frame_logits[layer], frame_masks[layer], match, tg, num_frame,
                                                     suffix))

            video_layers = range(Lv) if c.deep_supervision else [Lv - 1]
            last_video: list[VideoAssignment] = []
            for layer in video_layers:
                matches = [self._match_video(output, layer, k, tg) for k in range(K)]
                suffix = "" if layer == Lv - 1 else f"_{layer}"
                losses.update(self._video_losses(output, layer, matches, tg, num_video, suffix))
                if layer == Lv - 1:
                    last_video = matches

            losses["loss_sim"] = self._similarity(output, [frame_matches[i] for i in sim_layers], last_video, tg)

        if set(losses) != set(self.weight_dict):
            raise RuntimeError(f"criterion produced keys that differ from weight_dict: "
                               f"{sorted(set(losses) ^ set(self.weight_dict))}")
        return {k: losses[k] for k in self.loss_keys}

    # -------------------------------------------------------------------------------------------- parts

    @staticmethod
    def _prepare_targets(targets: Sequence[ClipTargetLike], *, T: int, padded_size: tuple[int, int],
                         device: torch.device) -> _Targets:
        Hp, Wp = padded_size
        masks, ids, offsets = [], [], [0]
        for i, t in enumerate(targets):
            m = t.masks
            if m.dim() != 4 or m.shape[1] != T:
                raise ValueError(f"target {i}: masks must be (N_obj, {T}, H, W), got {tuple(m.shape)}")
            if len(t.ids) != m.shape[0]:
                raise ValueError(f"target {i}: {m.shape[0]} masks but {len(t.ids)} ids")
            H, W = m.shape[-2:]
            if H > Hp or W > Wp:
                raise ValueError(f"target {i}: masks of {H}x{W} exceed the padded input {Hp}x{Wp}")
            m = m.to(device)
            # Objects absent from every frame are no target at all (the original drops them).
            keep = m.flatten(1).any(1)
            # Zero-pad bottom/right like the images, so [0, 1] point coordinates mean the same place.
            masks.append(F.pad(m[keep].float(), (0, Wp - W, 0, Hp - H)))
            ids.append(t.ids.to(device=device, dtype=torch.long)[keep])
            offsets.append(offsets[-1] + masks[-1].shape[0])
        return _Targets(masks=torch.cat(masks), ids=torch.cat(ids), offsets=offsets)

    def _sampled(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """pred: (R, h, w) mask logits; target: (R, Hp, Wp) -> point logits and labels (R, P)."""
        c = self.config
        coords = importance_sample_points(pred[:, None], num_points=c.num_points, oversample_ratio=c.oversample_ratio,
                                          importance_sample_ratio=c.importance_sample_ratio)
        with torch.no_grad():
            labels = point_sample(target[:, None], coords)[:, 0]
        return point_sample(pred[:, None], coords)[:, 0], labels

    def _frame_losses(self, logits: Tensor, masks: Tensor, match: FrameAssignment, tg: _Targets,
                      num_masks: float, suffix: str) -> dict[str, Tensor]:
        """One frame prediction (logits (B, T, N, 2), masks (B, T, N, h, w)): cross-entropy over all
        B x T x N queries, BCE and Dice of the matched masks on importance-sampled points, divided by
        the batch's number of frame-level target masks."""
        device = logits.device
        matched = torch.zeros(logits.shape[:3], dtype=torch.bool, device=device)
        if len(match):
            b, t, q = (x.to(device) for x in (match.clip, match.frame, match.query))
            matched[b, t, q] = True
            pred = masks[b, t, q].float()  # (Nm, h, w)
            target = tg.masks[tg.rows(match.clip, match.target).to(device), t]  # (Nm, Hp, Wp)
            point_logits, point_labels = self._sampled(pred, target)
            loss_mask = sigmoid_bce_loss(point_logits, point_labels, num_masks=num_masks)
            loss_dice = dice_loss(point_logits, point_labels, num_masks=num_masks)
        else:
            loss_mask = loss_dice = _attached_zero(masks)
        loss_ce = classification_loss(logits, matched, no_object_weight=self.config.no_object_weight)
        return {f"loss_ce{suffix}": loss_ce, f"loss_mask{suffix}": loss_mask, f"loss_dice{suffix}": loss_dice}

    def _match_video(self, output: SSAOutput, layer: int, k: int, tg: _Targets) -> VideoAssignment:
        with torch.no_grad():
            embed = output.video_mask_embed[layer, k].float()  # (B, N, Cm)
            masks = torch.einsum("bnc,btchw->bnthw", embed, output.video_mask_features.float())
        return self.video_matcher(logits=output.video_logits[layer, k], masks=masks, targets=tg.per_clip)

    def _video_losses(self, output: SSAOutput, layer: int, matches: list[VideoAssignment], tg: _Targets,
                      num_masks: float, suffix: str) -> dict[str, Tensor]:
        """One video layer, its K copies supervised together as VITA does (the copies are extra batch
        entries there): BCE and Dice are summed over copies and objects and divided by objects x K, i.e.
        averaged over the copies; the cross-entropy is one weighted mean over all K x B x N queries, which
        equals the mean of the per-copy ones because every copy matches the same number of queries."""
        logits = output.video_logits[layer]  # (K, B, N, 2)
        embed = output.video_mask_embed[layer]  # (K, B, N, Cm)
        features = output.video_mask_features  # (B, T, Cm, h, w)
        device = logits.device
        matched = torch.zeros(logits.shape[:3], dtype=torch.bool, device=device)
        for k, match in enumerate(matches):
            matched[k, match.clip.to(device), match.query.to(device)] = True
        preds, rows = [], []
        per_clip = features.unbind(0)  # not features[b]: see forward() on indexing in the backward pass
        for b in range(features.shape[0]):
            # Masks only of the matched queries, clip by clip: gathering per-match copies of the
            # (T, Cm, h, w) features would cost far more memory than the masks themselves.
            copy, query, target = [], [], []
            for k, m in enumerate(matches):
                sel = m.clip == b
                copy.append(torch.full((int(sel.sum()),), k, dtype=torch.long))
                query.append(m.query[sel])
                target.append(m.target[sel])
            copy, query, target = torch.cat(copy), torch.cat(query), torch.cat(target)
            if not len(query):
                continue
            e = embed[copy.to(device), b, query.to(device)].float()  # (n, Cm)
            preds.append(torch.einsum("nc,tchw->nthw", e, per_clip[b].float()))
            rows.append(tg.rows(torch.full_like(target, b), target))
        if preds:
            pred = torch.cat(preds)  # (Nm, T, h, w)
            target = tg.masks[torch.cat(rows).to(device)]  # (Nm, T, Hp, Wp)
            Nm, T = pred.shape[:2]
            # Points per frame (uncertainty of that frame's logits), concatenated over T (VITA).
            point_logits, point_labels = self._sampled(pred.flatten(0, 1), target.flatten(0, 1))
            point_logits, point_labels = point_logits.view(Nm, -1), point_labels.view(Nm, -1)
            loss_mask = sigmoid_bce_loss(point_logits, point_labels, num_masks=num_masks)
            loss_dice = dice_loss(point_logits, point_labels, num_masks=num_masks)
        else:
            loss_mask = loss_dice = _attached_zero(embed, features)
        loss_ce = classification_loss(logits, matched, no_object_weight=self.config.no_object_weight)
        out = {f"loss_video_ce{suffix}": loss_ce, f"loss_video_mask{suffix}": loss_mask,
               f"loss_video_dice{suffix}": loss_dice}
        if self.config.video_motion_weight > 0:
            out[f"loss_video_motion{suffix}"] = self._displacement(output, layer, matches, tg, num_masks)
        return out

    @staticmethod
    def _displacement(output: SSAOutput, layer: int, matches: list[VideoAssignment], tg: _Targets,
                      num_masks: float) -> Tensor:
        """Smooth L1 (beta 0.1) between each matched video query's predicted displacement and its object's,
        summed over x, y and the matches, / the clip objects x K (as the mask losses)."""
        if output.video_displacement is None:
            raise ValueError("loss.video_motion_weight > 0 needs a model whose video decoder has displacement_head")
        pred = output.video_displacement[layer]  # (K, B, N, 2)
        picks = [(torch.full_like(m.query, k), m.clip, m.query, tg.rows(m.clip, m.target))
                 for k, m in enumerate(matches) if len(m.query)]
        if not picks:
            return _attached_zero(pred)
        k, b, q, rows = (torch.cat(x).to(pred.device) for x in zip(*picks))
        target = object_displacement(tg.masks[rows])
        return F.smooth_l1_loss(pred[k, b, q].float(), target, beta=0.1, reduction="sum") / num_masks

    def _similarity(self, output: SSAOutput, frame_matches: list[FrameAssignment], video_matches: list[VideoAssignment],
                    tg: _Targets) -> Tensor:
        """Copy k pairs frame prediction Lf - K + k with video copy k of the last video layer; a group is
        one (copy, clip), identities are object ids (compared within a group only, so ids of other
        clips or copies never collide; VITA offsets them by 1000 per group instead)."""
        frame_sim = output.frame_sim_embed  # (K, B, T, N, C), the frame queries' original order
        video_sim = output.video_sim_embed[-1]  # (K, B, N, C)
        device = video_sim.device
        B = frame_sim.shape[1]
        embeds, identities, groups = [], [], []
        for k, (fm, vm) in enumerate(zip(frame_matches, video_matches)):
            fs = frame_sim[k]
            if self.config.sim_frame_order == "reordered":
                # The original's indexing: frame-matcher indices (which refer to the queries in
                # their original order) applied to the trajectory-reordered embeddings.
                fs = apply_permutation(fs, output.trajectory[k])
            for match, emb in ((fm, None), (vm, video_sim[k])):
                if not len(match):
                    continue
                clip, query = match.clip.to(device), match.query.to(device)
                if emb is None:
                    embeds.append(fs[clip, match.frame.to(device), query])
                else:
                    embeds.append(emb[clip, query])
                identities.append(tg.ids[tg.rows(match.clip, match.target).to(device)])
                groups.append(clip + k * B)
        if not embeds:
            return _attached_zero(frame_sim, video_sim)
        return similarity_loss(torch.cat(embeds).float(), torch.cat(identities), torch.cat(groups))
