"""Contrastive pretraining of a small CLIP on per-frame captions (SynthRef's ``captions.json``).

SSA keeps its vision-language model frozen; for the tiny CPU model there is no published CLIP of the
right size, so :func:`pretrain_clip` trains one first, both towers end to end, with CLIP's symmetric
InfoNCE loss and a learnable temperature, then saves its state dict as a safetensors file that
``ssa_rvos.build.build_clip(ClipConfig(model_name=...), weights=path)`` loads strictly (open_clip's
``load_checkpoint`` reads ``.safetensors`` files by their suffix).

Data: ``<root>/<split>/captions.json`` = ``{video: {frame: [caption, ...]}}`` and the frames
``<root>/<split>/JPEGImages/<video>/<frame>.jpg``. Every frame of a split is decoded once into memory
(SynthRef frames are small and of one size), and a batch is cropped, resized and normalised in one
batched ``roi_align`` call, so the data side costs little next to the model on a CPU. Distinct videos
matter more than frames: the frames of one video show the same objects, and a few hundred videos are
memorised within a few hundred steps (300 SynthRef videos: training retrieval ~100 %, held-out ~20 %),
so give this step thousands of short videos.

False negatives: captions repeat (SynthRef has 40 single-object captions such as "a small green
triangle", each naming an object in ~9 % of the frames), and a caption of one frame is often true of
another frame in the batch. Plain InfoNCE would push such pairs apart. Two cheap measures:

* a batch takes at most one frame per video (while the batch is not larger than the split), so the
  near-identical neighbouring frames of a video never meet as negatives;
* the loss is multi-positive: text j counts as a positive of image i whenever j is one of the captions
  of i's frame (exact text match after normalising), and each row and column is scored by the log of
  the probability mass on its positives. With no repeats this is exactly open_clip's ``ClipLoss``.

The held-out evaluation (:func:`retrieval_accuracy`) uses the same "caption of that frame" rule for
what a correct top-1 retrieval is, and reports the chance level beside each accuracy.

Determinism: the model's initialisation and stochastic depth come from ``torch.manual_seed(seed)``,
every data draw from one numpy Generator seeded with ``seed``; a run repeats bit for bit on the same
machine, thread count and library versions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..build import build_clip, clip_architecture
from ..checkpoint import save_state_dict_atomic
from ..configs import from_dict
from ..modeling.clip_backbone import clean_sentence, text_tower
from ..modeling.config import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, ClipConfig

__all__ = [
    "CLIP_FORMAT",
    "CaptionFrames",
    "ClipPretrainConfig",
    "contrastive_loss",
    "crop_resize",
    "encode_text",
    "load_caption_frames",
    "positives_matrix",
    "pretrain_clip",
    "retrieval_accuracy",
]

CLIP_FORMAT = "ssa-rvos-clip/1"  # the "format" entry of the saved file's metadata
# The ConvNeXt image towers downsample 32x (a stride-4 stem and three stride-2 stages): a smaller crop
# leaves the last stage less than one pixel.
MIN_IMAGE_SIZE = 32


@dataclass(frozen=True)
class ClipPretrainConfig:
    """One CLIP pretraining run. ``steps`` count optimizer updates of ``batch_size`` pairs each."""

    root: str  # the dataset folder holding <split>/captions.json and <split>/JPEGImages
    split: str = "train"
    # Held-out split for the retrieval accuracy (at the end, and every eval_every steps); None: none.
    eval_split: str | None = "valid_u"
    eval_images: int = 512  # held-out frames scored (spread over all its videos); the rest are unused
    eval_every: int = 0  # 0: evaluate after the last step only
    output: str = "runs/clip_pretrain/ssa_tiny_clip.safetensors"
    model_name: str = "ssa_tiny_clip"  # an open_clip architecture that ssa_rvos.build.build_clip accepts
    # Stochastic depth of the image tower while pretraining (None: the architecture's own, 0.1 for
    # ssa_tiny_clip). Off by default: a CPU-sized run underfits (held-out accuracy ~ training accuracy).
    # It has no weights, so the file loads into the unchanged architecture (SSA runs CLIP in eval mode).
    drop_path: float | None = 0.0
    # Starting value of the image tower's layer-scale gains (ConvNeXt's per-block ``gamma``; None: timm's
    # 1e-6, made for 300-epoch schedules). From 1e-6, 2000 AdamW steps leave the gains at ~0.05, i.e. the
    # residual blocks, whose outputs SSA reads, nearly unused. On SynthRef, 0.1 trained faster early
    # (loss 1.68 vs 1.81 after 300 steps) and ended at the same held-out retrieval after 2000.
    layer_scale_init: float | None = 0.1
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1  # on matrices only: norms, biases, layer scales and the temperature get none
    warmup: int = 100  # linear warmup steps, then cosine decay to 0 at the last step
    # Square training crops. SSA sees whole frames at their own size, so a crop size near the frame size
    # shows the objects at the scale SSA will see them.
    image_size: int = 64
    # Random resized crop: area fraction and aspect-ratio range. Mild, because a crop that cuts away an
    # object makes every caption naming it false.
    crop_scale: tuple[float, float] = (0.8, 1.0)
    crop_ratio: tuple[float, float] = (0.9, 1.1)
    # SynthRef's scene captions list the objects from left to right, so a mirrored frame contradicts
    # its caption's word order; off by default.
    hflip: float = 0.0
    seed: int = 0
    num_workers: int = 2  # threads decoding the JPEG frames into memory at the start
    threads: int = 0  # torch.set_num_threads for the run; 0 leaves the process setting alone
    device: str = "cpu"
    log_every: int = 50

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "image_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE} (the image tower downsamples 32x), "
                             f"got {self.image_size}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (a contrastive batch needs negatives), got {self.batch_size}")
        for name in ("warmup", "num_workers", "threads", "eval_every", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.eval_images < 2:
            raise ValueError(f"eval_images must be >= 2, got {self.eval_images}")
        if self.drop_path is not None and not 0 <= self.drop_path < 1:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path}")
        if self.layer_scale_init is not None and not self.layer_scale_init > 0:
            raise ValueError(f"layer_scale_init must be > 0, got {self.layer_scale_init}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {list(self.crop_scale)}")
        lo, hi = self.crop_ratio
        if not 0 < lo <= hi:
            raise ValueError(f"crop_ratio must satisfy 0 < min <= max, got {list(self.crop_ratio)}")
        if not 0 <= self.hflip <= 1:
            raise ValueError(f"hflip must be a probability, got {self.hflip}")
        if not str(self.output).endswith(".safetensors"):
            # open_clip.load_checkpoint picks the safetensors reader by this suffix
            raise ValueError(f"output must be a .safetensors file, got {self.output!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipPretrainConfig:
        return from_dict(cls, data, "clip pretrain config", required=True)


# ------------------------------------------------------------------------------------------------- data


@dataclass
class CaptionFrames:
    """Every captioned frame of a split, in memory.

    images: (N, 3, H, W) uint8 RGB; video: (N,) int64, the video index of each frame; captions: per frame
    the ids of its captions in ``texts`` (normalised with ``clean_sentence``, each text stored once);
    tokens: (len(texts), context) the tokenised texts.
    """

    images: Tensor
    video: np.ndarray
    captions: list[list[int]]
    texts: list[str]
    tokens: Tensor

    @property
    def num_videos(self) -> int:
        return int(self.video.max()) + 1

    def caption_sets(self, frames: np.ndarray) -> list[frozenset[int]]:
        return [frozenset(self.captions[f]) for f in frames]


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: frame not found (listed in captions.json)") from None
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image file") from None
    except (OSError, Image.DecompressionBombError) as e:  # truncated, damaged
        raise ValueError(f"{path}: not a readable image ({e})") from None


def load_caption_frames(root: str | os.PathLike, split: str, *, tokenizer, num_workers: int = 0) -> CaptionFrames:
    """Read ``<root>/<split>/captions.json`` and decode its frames (frames without captions are skipped)."""
    folder = Path(root) / split
    path = folder / "captions.json"
    if not path.is_file():
        raise FileNotFoundError(f"no captions file at {path}")
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(table, dict) or not all(isinstance(frames, dict) and
                                              all(isinstance(c, list) for c in frames.values())
                                              for frames in table.values()):
        raise ValueError(f"{path}: expected {{video: {{frame: [caption, ...]}}}}")
    texts: dict[str, int] = {}
    files, video, captions = [], [], []
    for v, name in enumerate(sorted(table)):
        for frame in sorted(table[name]):
            cleaned = [clean_sentence(c) for c in table[name][frame]]
            if not cleaned:
                continue
            files.append(folder / "JPEGImages" / name / f"{frame}.jpg")
            video.append(v)
            # dict.fromkeys: a caption listed twice for one frame is still one caption
            captions.append([texts.setdefault(c, len(texts)) for c in dict.fromkeys(cleaned)])
    if not files:
        raise ValueError(f"{path}: no captioned frames")
    if num_workers > 0:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:  # PIL decodes with the GIL released
            arrays = list(pool.map(_read_rgb, files))
    else:
        arrays = [_read_rgb(p) for p in files]
    sizes = sorted({a.shape[:2] for a in arrays})
    if len(sizes) > 1:
        raise ValueError(f"{folder}: frames of several sizes {sizes[:4]}; CLIP pretraining expects one frame size")
    # Renumber videos densely: a video whose frames all lack captions leaves no gap.
    _, dense = np.unique(np.asarray(video), return_inverse=True)
    text_list = list(texts)
    return CaptionFrames(images=torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(),
                         video=dense.astype(np.int64), captions=captions, texts=text_list,
                         tokens=tokenizer(text_list))


def _sample_batch(data: CaptionFrames, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(frame indices, text ids) of one batch: distinct videos (all of them, then again, when the batch is
    larger than the split), a random frame of each, a random caption of that frame."""
    num_videos = data.num_videos
    videos = np.concatenate([rng.permutation(num_videos) for _ in range(-(-batch_size // num_videos))])[:batch_size]
    starts = np.searchsorted(data.video, videos, side="left")  # frames are grouped by video, in order
    counts = np.searchsorted(data.video, videos, side="right") - starts
    frames = starts + (rng.random(batch_size) * counts).astype(np.int64)
    texts = np.array([data.captions[f][int(rng.integers(len(data.captions[f])))] for f in frames])
    return frames, texts


def _crop_boxes(height: int, width: int, n: int, *, scale: tuple[float, float], ratio: tuple[float, float],
                rng: np.random.Generator) -> np.ndarray:
    """(n, 4) random crops (x0, y0, x1, y1) in pixels: area ``scale`` x the frame's, aspect w/h in ``ratio``."""
    area = rng.uniform(*scale, size=n) * height * width
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=n))
    w = np.minimum(np.sqrt(area * aspect), width)
    h = np.minimum(np.sqrt(area / aspect), height)
    x0 = rng.random(n) * (width - w)
    y0 = rng.random(n) * (height - h)
    return np.stack([x0, y0, x0 + w, y0 + h], axis=1)


def crop_resize(images: Tensor, boxes: Tensor | None, *, size: int, flip: Tensor | None = None) -> Tensor:
    """Crop boxes (B, 4) ``(x0, y0, x1, y1)`` in pixels out of uint8 (B, 3, H, W) frames (None: the whole
    frame), resize to ``size`` x ``size``, mirror where ``flip`` (B,) is True and normalise with the CLIP
    statistics SSA uses (``SSAConfig.pixel_mean`` / ``pixel_std``) -> float (B, 3, size, size).

    ``roi_align`` with its adaptive sampling averages ceil(box / size) samples per output pixel, i.e.
    bilinear resizing with an area filter when shrinking, for the whole batch in one call.
    """
    from torchvision.ops import roi_align

    b, _, h, w = images.shape
    x = images.float()
    if boxes is None:
        boxes = torch.tensor([[0.0, 0.0, w, h]]).expand(b, 4)
    rois = torch.cat([torch.arange(b, dtype=x.dtype)[:, None], boxes.to(x.dtype)], dim=1)
    x = roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    if flip is not None:
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    mean = torch.tensor(CLIP_PIXEL_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_PIXEL_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def positives_matrix(image_captions: list[frozenset[int]], texts: np.ndarray | list[int]) -> Tensor:
    """(B, T) bool: text ``texts[j]`` is one of the captions of image i (both as text ids)."""
    return torch.tensor([[int(t) in caps for t in texts] for caps in image_captions], dtype=torch.bool)


# ------------------------------------------------------------------------------------------------- model


def encode_text(clip: nn.Module, tokens: Tensor) -> Tensor:
    """``clip.encode_text(tokens, normalize=True)``, computed on the tokens up to the batch's last
    end-of-text token only.

    CLIP's text attention is causal, so no position sees the padding after it and the pooled
    end-of-text features do not change (up to float rounding); captions of ~20 tokens in a 77-token
    context make this about 3x less text-tower work per step.
    """
    standard = (getattr(clip, "text_pool_type", "argmax") == "argmax" and getattr(clip, "attn_mask", None) is not None
                and getattr(clip.transformer, "batch_first", False))
    if not standard:  # another open_clip text tower: no shortcut
        return clip.encode_text(tokens, normalize=True)
    eot = tokens.argmax(dim=-1)  # end-of-text has the highest id in CLIP's vocabulary
    return F.normalize(text_tower(clip, tokens, length=int(eot.max()) + 1, positions=eot), dim=-1)


# ------------------------------------------------------------------------------------------------- loss


def contrastive_loss(image_features: Tensor, text_features: Tensor, logit_scale: Tensor,
                     positives: Tensor | None = None) -> Tensor:
    """CLIP's symmetric InfoNCE over a batch of B pairs (features L2-normalised, ``logit_scale`` already
    exponentiated).

    positives: (B, B) bool, True where text j describes image i; the diagonal must be True. Each image's
    term is ``-log`` of the softmax mass on its positive texts, each text's likewise over images; with
    None (or the identity) this equals ``open_clip.loss.ClipLoss``.
    """
    logits = logit_scale * image_features @ text_features.T
    if positives is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    if not bool(positives.diagonal().all()):
        raise ValueError("every pair must be a positive of itself (the diagonal of positives)")
    positives = positives.to(logits.device)
    on_positives = logits.masked_fill(~positives, float("-inf"))
    image_to_text = (logits.logsumexp(dim=1) - on_positives.logsumexp(dim=1)).mean()
    text_to_image = (logits.logsumexp(dim=0) - on_positives.logsumexp(dim=0)).mean()
    return (image_to_text + text_to_image) / 2


# ------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def retrieval_accuracy(clip: nn.Module, tokenizer, images: Tensor, captions: list[str], *,
                       positives: Tensor | None = None, batch_size: int = 256) -> dict[str, float]:
    """Top-1 retrieval among N (image, caption) pairs, both ways.

    images: (N, 3, H, W) normalised as :func:`crop_resize` does; captions: N sentences. positives (N, N)
    bool: which captions count as correct for which image (default: equal text after normalising, so a
    repeated caption is not an error). ``i2t``: fraction of images whose most similar caption is a
    positive; ``t2i``: fraction of captions whose most similar image is; ``*_chance``: the same for a
    random ranking.
    """
    texts = [clean_sentence(c) for c in captions]
    if positives is None:
        positives = torch.tensor([[a == b for b in texts] for a in texts], dtype=torch.bool)
    if images.shape[0] != len(texts) or positives.shape != (len(texts), len(texts)):
        raise ValueError(f"{images.shape[0]} images, {len(texts)} captions, positives {tuple(positives.shape)}")
    was_training = clip.training
    clip.eval()
    device = clip.logit_scale.device
    try:
        image_f = torch.cat([clip.encode_image(images[i:i + batch_size].to(device), normalize=True)
                             for i in range(0, len(texts), batch_size)])
        tokens = tokenizer(texts)
        text_f = torch.cat([encode_text(clip, tokens[i:i + batch_size].to(device))
                            for i in range(0, len(texts), batch_size)])
    finally:
        clip.train(was_training)
    sim = (image_f @ text_f.T).cpu()
    rows = torch.arange(len(texts))
    pos = positives.float()
    return {
        "i2t": pos[rows, sim.argmax(dim=1)].mean().item(),
        "t2i": pos[sim.argmax(dim=0), rows].mean().item(),
        "i2t_chance": pos.mean(dim=1).mean().item(),
        "t2i_chance": pos.mean(dim=0).mean().item(),
        "n": float(len(texts)),
    }


def _held_out_pairs(data: CaptionFrames, count: int, *, size: int, seed: int) -> tuple[Tensor, list[str], Tensor]:
    """A fixed evaluation set: ``count`` frames spread evenly over the split, one random caption each
    (its own seed, so it does not depend on the training run), the images resized whole."""
    rng = np.random.default_rng([seed, 1])
    n = data.images.shape[0]
    frames = np.unique(np.linspace(0, n - 1, num=min(count, n)).round().astype(np.int64))
    texts = np.array([data.captions[f][int(rng.integers(len(data.captions[f])))] for f in frames])
    images = crop_resize(data.images[torch.from_numpy(frames)], None, size=size)
    return images, [data.texts[t] for t in texts], positives_matrix(data.caption_sets(frames), texts)


# ------------------------------------------------------------------------------------------- training


def _optimizer(clip: nn.Module, config: ClipPretrainConfig) -> torch.optim.AdamW:
    # open_clip's rule: no weight decay on 0/1-d tensors (norm gains, biases, layer scales, logit_scale).
    params = [p for p in clip.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    # betas / eps of the CLIP paper (open_clip recommends them too); lr and decay come from the config.
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


def _lr_at(step: int, config: ClipPretrainConfig) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to 0 at ``steps`` (step is 0-based)."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def pretrain_clip(config: ClipPretrainConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train ``config.model_name`` from scratch on ``<root>/<split>`` and save it to ``config.output``.

    Returns the final metrics: ``loss`` (mean over the last ``log_every`` steps), ``first_loss`` (the
    same over the first ones), ``logit_scale``, ``seconds`` (training, without the evaluations'
    ``eval_seconds``), ``steps_per_second``, the held-out retrieval
    (``i2t``, ``t2i`` and their chance levels, without an eval split: none), ``history`` (one entry per
    log step, with the retrieval where it was evaluated) and ``output``.
    """
    from ..runtime import torch_threads

    with torch_threads(config.threads):  # the caller's setting comes back, whatever happens
        return _pretrain(config, progress=progress)


def _pretrain(config: ClipPretrainConfig, *, progress: bool) -> dict[str, Any]:
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    architecture = clip_architecture(ClipConfig(model_name=config.model_name))
    if config.drop_path is not None:
        architecture["vision_cfg"]["timm_drop_path"] = config.drop_path
    clip, tokenizer = build_clip(ClipConfig(model_name=config.model_name, architecture=architecture))
    if config.layer_scale_init is not None:
        with torch.no_grad():
            for name, param in clip.visual.named_parameters():
                if name.endswith(".gamma"):  # the layer scale of timm ConvNeXt blocks (other towers: none)
                    param.fill_(config.layer_scale_init)
    clip.to(device).train()

    data = load_caption_frames(config.root, config.split, tokenizer=tokenizer, num_workers=config.num_workers)
    held_out = None
    if config.eval_split is not None:
        frames = load_caption_frames(config.root, config.eval_split, tokenizer=tokenizer,
                                     num_workers=config.num_workers)
        held_out = _held_out_pairs(frames, config.eval_images, size=config.image_size, seed=config.seed)
    _, _, height, width = data.images.shape
    if progress:
        print(f"clip pretraining: {data.images.shape[0]} frames of {data.num_videos} videos ({height}x{width}), "
              f"{len(data.texts)} distinct captions; {config.steps} steps of {config.batch_size} at "
              f"{config.image_size} px, {torch.get_num_threads()} threads", flush=True)

    def evaluate() -> dict[str, float]:
        if held_out is None:
            return {}
        images, captions, positives = held_out
        return retrieval_accuracy(clip, tokenizer, images, captions, positives=positives)

    optimizer = _optimizer(clip, config)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, desc="clip", unit="step", dynamic_ncols=True)
    history: list[dict[str, float]] = []
    window: list[float] = []
    first_loss = None
    eval_seconds = 0.0
    start = time.perf_counter()
    for step in range(config.steps):
        # --- a batch: one frame from each of batch_size videos, one caption each, a mild random crop
        frames, texts = _sample_batch(data, config.batch_size, rng)
        boxes = _crop_boxes(height, width, len(frames), scale=config.crop_scale, ratio=config.crop_ratio, rng=rng)
        flip = rng.random(len(frames)) < config.hflip
        images = crop_resize(data.images[torch.from_numpy(frames)], torch.from_numpy(boxes),
                             size=config.image_size, flip=torch.from_numpy(flip)).to(device)
        tokens = data.tokens[torch.from_numpy(texts)].to(device)
        positives = positives_matrix(data.caption_sets(frames), texts)

        # --- one AdamW step on the symmetric, multi-positive InfoNCE
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        image_f = clip.encode_image(images, normalize=True)
        text_f = encode_text(clip, tokens)
        loss = contrastive_loss(image_f, text_f, clip.logit_scale.exp(), positives)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # CLIP caps the temperature at 1/100, as open_clip's training does
            clip.logit_scale.clamp_(0, math.log(100))

        # --- bookkeeping: a history entry at every log step and every evaluation
        window.append(loss.item())
        done = step + 1
        if bar is not None:
            bar.update(1)
        evaluate_now = held_out is not None and (done == config.steps or (config.eval_every and done % config.eval_every == 0))
        if evaluate_now or done % config.log_every == 0 or done == config.steps:
            mean = sum(window) / len(window)
            first_loss = mean if first_loss is None else first_loss
            entry = {"step": done, "loss": mean, "lr": _lr_at(step, config),
                     "logit_scale": clip.logit_scale.exp().item(),
                     "seconds": time.perf_counter() - start - eval_seconds}  # training time only
            if evaluate_now:
                tic = time.perf_counter()
                entry.update(evaluate())
                eval_seconds += time.perf_counter() - tic
            history.append(entry)
            window = []
            if bar is not None:
                bar.set_postfix(loss=f"{mean:.3f}", scale=f"{entry['logit_scale']:.1f}")
                bar.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()))
    if bar is not None:
        bar.close()

    last = history[-1]
    metrics = {"steps": config.steps, "loss": last["loss"], "first_loss": first_loss,
               "logit_scale": last["logit_scale"], "seconds": last["seconds"], "eval_seconds": eval_seconds,
               "steps_per_second": config.steps / last["seconds"],
               **{k: last[k] for k in ("i2t", "t2i", "i2t_chance", "t2i_chance", "n") if k in last}}
    clip.eval()
    state = {k: v.detach().contiguous().cpu() for k, v in clip.state_dict().items()}
    save_state_dict_atomic(state, config.output, {
        "format": CLIP_FORMAT, "clip_model": config.model_name,
        "pretrain_config": json.dumps(config.to_dict()), "metrics": json.dumps(metrics)})
    if progress and "i2t" in metrics:
        print(f"held-out retrieval on {config.eval_split} ({int(metrics['n'])} frames): "
              f"image->text top-1 {metrics['i2t']:.3f} (chance {metrics['i2t_chance']:.3f}), "
              f"text->image top-1 {metrics['t2i']:.3f} (chance {metrics['t2i_chance']:.3f})", flush=True)
    return {**metrics, "history": history, "output": str(config.output)}
