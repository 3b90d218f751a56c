"""The SSA network: frame stage (per frame, chunkable) then video stage (all frames at once).

Shape alphabet: B clips, T frames, N queries, C hidden width, H, W pixels. Frames are handled as
B*T images (b-major) in the frame stage; nothing assumes one clip per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .clip_backbone import ClipBackbone, TextFeatures
from .config import SSAConfig
from .frame_decoder import FrameDecoder
from .pixel_decoder import PixelDecoder
from .video_decoder import VideoDecoder, mask_box


def foreground_probability(logits: Tensor) -> Tensor:
    """Class logits (..., 2) -> the probability of "an object" (...): the score of a query (spec Sec. 5)."""
    return logits.float().softmax(-1)[..., 0]


def mask_logits(embed: Tensor, features: Tensor) -> Tensor:
    """The mask head: Q mask embeddings (Q, Cm) on T frames' mask features (T, Cm, h, w) -> (Q, T, h, w)."""
    return torch.einsum("qc,tchw->qthw", embed, features)


def padded_size(size: tuple[int, int], divisibility: int) -> tuple[int, int]:
    """(H, W) -> the next multiples of ``divisibility``."""
    return (size[0] + (-size[0]) % divisibility, size[1] + (-size[1]) % divisibility)


def preprocess(frames: Tensor, mean: Tensor, std: Tensor, divisibility: int) -> tuple[Tensor, tuple[int, int]]:
    """frames: (..., 3, H, W) RGB on a 0-255 scale -> normalised by ``mean`` / ``std`` (3, 1, 1), padded
    with zeros at the bottom/right to multiples of ``divisibility``, and the unpadded (H, W).

    Padding happens after normalising, so the padded area is the mean colour's zero."""
    H, W = frames.shape[-2:]
    x = (frames.to(mean.dtype) - mean) / std
    Hp, Wp = padded_size((H, W), divisibility)
    if Hp != H or Wp != W:
        x = F.pad(x, (0, Wp - W, 0, Hp - H))
    return x, (H, W)


class SentenceProjection(nn.Module):
    """CLIP sentence feature -> decoder width: Linear, LayerNorm (eps 1e-12), dropout."""

    def __init__(self, *, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.norm(self.fc(x)))


@dataclass
class FrameStageOutput:
    """Per-frame results for B*T frames (b-major).

    logits: (Lf + 1, BT, N, 2); masks: (Lf + 1, BT, N, H/4, W/4); queries: (K, BT, N, C) the
    normed queries of the last K frame-decoder layers; sentence: (BT, C) the tokens s_t;
    mask_features: (BT, Cm, H/4, W/4) frame level; video_mask_features: (BT, Cm, H/4, W/4);
    boxes: (K, BT, N, 4) where the masks of those K layers lie (``mask_box``), only for a video decoder
    with ``motion_embedding`` (else None).
    """

    logits: Tensor
    masks: Tensor
    queries: Tensor
    sentence: Tensor
    mask_features: Tensor
    video_mask_features: Tensor
    boxes: Tensor | None = None


@dataclass
class SSAOutput:
    """Everything the losses and the inference need, for B clips of T frames.

    K is the number of frame-decoder layers whose queries feed the video stage (3 in training,
    1 in eval); each acts as an extra batch entry there.

    frame_logits: (Lf + 1, B, T, N, 2)       frame_masks: (Lf + 1, B, T, N, H/4, W/4)
    frame_queries: (K, B, T, N, C)           sentence_tokens: (B, T, C)
    mask_features: (B, T, Cm, H/4, W/4)      video_mask_features: (B, T, Cm, H/4, W/4)
    video_logits: (Lv, K, B, N, 2)           video_mask_embed: (Lv, K, B, N, Cm)
    video_sim_embed: (Lv, K, B, N, C)        frame_sim_embed: (K, B, T, N, C)
    trajectory: (K, B, T, N)                 image_size / padded_size: (H, W) before / after padding
    video_displacement: (Lv, K, B, N, 2) with the video decoder's ``displacement_head``, else None
    """

    frame_logits: Tensor
    frame_masks: Tensor
    frame_queries: Tensor
    sentence_tokens: Tensor
    mask_features: Tensor
    video_mask_features: Tensor
    video_logits: Tensor
    video_mask_embed: Tensor
    video_sim_embed: Tensor
    frame_sim_embed: Tensor
    trajectory: Tensor
    image_size: tuple[int, int]
    padded_size: tuple[int, int]
    video_displacement: Tensor | None = None

    def video_masks(self, layer: int = -1) -> Tensor:
        """Mask logits of one video-decoder layer at stride 4: (K, B, N, T, H/4, W/4)."""
        return torch.einsum("kbnc,btchw->kbnthw", self.video_mask_embed[layer], self.video_mask_features)

    def video_scores(self, layer: int = -1) -> Tensor:
        """Foreground probability of every video query: (K, B, N)."""
        return foreground_probability(self.video_logits[layer])


class SSA(nn.Module):
    def __init__(
        self,
        *,
        backbone: ClipBackbone,
        sentence_proj: SentenceProjection,
        pixel_decoder: PixelDecoder,
        frame_decoder: FrameDecoder,
        video_decoder: VideoDecoder,
        config: SSAConfig,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.sentence_proj = sentence_proj
        self.pixel_decoder = pixel_decoder
        self.frame_decoder = frame_decoder
        self.video_decoder = video_decoder
        self.config = config
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def padded_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) -> the size :meth:`preprocess` pads it to (the next multiples of the backbone's stride)."""
        return padded_size(size, self.config.size_divisibility)

    def preprocess(self, frames: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """frames: (..., 3, H, W) RGB on a 0-255 scale -> normalised (..., 3, Hp, Wp) padded with
        zeros at the bottom/right to a multiple of 32, and the unpadded (H, W) (:func:`preprocess`)."""
        return preprocess(frames, self.pixel_mean, self.pixel_std, self.config.size_divisibility)

    def encode_text(self, texts: list[str], *, warn_truncated: bool = False) -> TextFeatures:
        """The frozen CLIP text tower on B sentences; sentences longer than its context are truncated (with a
        UserWarning naming each when ``warn_truncated``)."""
        return self.backbone.encode_text(texts, warn_truncated=warn_truncated)

    def forward_frames(self, images: Tensor, text: TextFeatures, *, sentence: Tensor | None = None,
                       query_layers: int | None = None) -> FrameStageOutput:
        """Frame stage on BT preprocessed images; ``text`` holds one entry per image.

        sentence: (BT, C) the projected sentence per image; by default projected here. Projecting
        once per clip and repeating (as ``forward`` does) shares the dropout mask over a clip's
        frames, like the original.
        """
        k = query_layers or (self.config.frame_decoder.train_query_layers if self.training else 1)
        pix = self.forward_pixels(images, text, sentence=sentence)
        frames = self.frame_decoder(multi_scale=pix.multi_scale, mask_features=pix.mask_features, sentence=pix.sentence)
        return FrameStageOutput(
            logits=frames.logits,
            masks=frames.masks,
            queries=frames.queries[-k:],
            sentence=pix.sentence[:, 0],
            mask_features=pix.mask_features,
            video_mask_features=self.video_decoder.mask_features(pix.fpn),
            # masks[i + 1] is drawn by queries[i]: the last k masks belong to the last k query layers.
            boxes=mask_box(frames.masks[-k:].detach()) if self.video_decoder.motion is not None else None,
        )

    def forward_mask_features(self, images: Tensor, text: TextFeatures, *, sentence: Tensor | None = None) -> Tensor:
        """The video-level mask features alone, (BT, Cm, H/4, W/4): the frame stage without its frame
        decoder, the same computation as ``forward_frames(...).video_mask_features``.

        Inference on a long video runs the frame stage twice (queries first, then masks for the queries
        the video stage chose) instead of holding every frame's mask features; the second pass needs
        no frame decoder.
        """
        return self.video_decoder.mask_features(self.forward_pixels(images, text, sentence=sentence).fpn)

    def forward_pixels(self, images: Tensor, text: TextFeatures, *, sentence: Tensor | None = None):
        """The backbone with its adapters and the pixel decoder on BT preprocessed images
        (:class:`~ssa_rvos.modeling.pixel_decoder.PixelDecoderOutput`): what the frame decoder and the
        video mask features read."""
        features = self.backbone(images, text)
        if sentence is None:
            sentence = self.sentence_proj(text.sentence)
        return self.pixel_decoder(features, sentence[:, None, :])

    def mask_logits(self, embed: Tensor, features: Tensor) -> Tensor:
        """:func:`mask_logits` (the engine's pass 2 calls it through the model, so a backend can replace it)."""
        return mask_logits(embed, features)

    def forward_video(self, frame_queries: Tensor, sentence_tokens: Tensor, boxes: Tensor | None = None):
        """frame_queries: (K, B, T, N, C); sentence_tokens: (B, T, C); boxes: (K, B, T, N, 4) the frame
        stage's ``boxes`` (needed with ``motion_embedding`` only). The K query layers are folded into the
        batch; returns the video decoder output with leading (K, B) dims."""
        K, B = frame_queries.shape[:2]
        out = self.video_decoder(
            frame_queries.flatten(0, 1), sentence_tokens.repeat(K, 1, 1),
            None if boxes is None else boxes.flatten(0, 1),
        )
        unfold = lambda t, lead: t.unflatten(lead, (K, B))  # noqa: E731
        out.logits = unfold(out.logits, 1)
        out.mask_embed = unfold(out.mask_embed, 1)
        out.sim_embed = unfold(out.sim_embed, 1)
        out.frame_sim_embed = unfold(out.frame_sim_embed, 0)
        out.trajectory = unfold(out.trajectory, 0)
        if out.displacement is not None:
            out.displacement = unfold(out.displacement, 1)
        return out

    def _frames_in_chunks(self, images: Tensor, text: TextFeatures, sentence: Tensor, chunk: int) -> FrameStageOutput:
        # Only the last frame-decoder layer's predictions are kept: a long video's 10 layers of
        # stride-4 masks would not fit in memory, and inference reads the video stage only.
        parts = []
        for s in range(0, images.shape[0], chunk):
            fs = self.forward_frames(images[s:s + chunk], text.slice(s, s + chunk), sentence=sentence[s:s + chunk])
            fs.logits, fs.masks = fs.logits[-1:], fs.masks[-1:]
            parts.append(fs)
        cat = lambda name, dim: torch.cat([getattr(p, name) for p in parts], dim=dim)  # noqa: E731
        return FrameStageOutput(logits=cat("logits", 1), masks=cat("masks", 1), queries=cat("queries", 1),
                                sentence=cat("sentence", 0), mask_features=cat("mask_features", 0),
                                video_mask_features=cat("video_mask_features", 0),
                                boxes=None if parts[0].boxes is None else cat("boxes", 1))

    def forward(self, frames: Tensor, texts: list[str], *, frame_chunk: int | None = None) -> SSAOutput:
        """frames: (B, T, 3, H, W) RGB on a 0-255 scale, any H, W; texts: B sentences.

        frame_chunk: run the frame stage on at most this many images at a time (spec Sec. 5; the
        original used 18) to bound memory on long videos; the video stage still sees every frame.
        Chunked outputs hold only the last frame-decoder layer in ``frame_logits``/``frame_masks``.
        """
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be (B, T, 3, H, W), got {tuple(frames.shape)}")
        B, T = frames.shape[:2]
        if len(texts) != B:
            raise ValueError(f"got {len(texts)} sentences for {B} clips")
        if frame_chunk is not None and frame_chunk < 1:
            raise ValueError(f"frame_chunk must be >= 1, got {frame_chunk}")
        images, image_size = self.preprocess(frames.flatten(0, 1))
        text = self.encode_text(list(texts))
        sentence = self.sentence_proj(text.sentence).repeat_interleave(T, dim=0)
        if frame_chunk is None or frame_chunk >= B * T:
            fs = self.forward_frames(images, text.repeat_frames(T), sentence=sentence)
        else:
            fs = self._frames_in_chunks(images, text.repeat_frames(T), sentence, frame_chunk)
        per_clip = lambda t, lead: t.unflatten(lead, (B, T))  # noqa: E731
        queries = per_clip(fs.queries, 1)
        sentences = per_clip(fs.sentence, 0)
        video = self.forward_video(queries, sentences, None if fs.boxes is None else per_clip(fs.boxes, 1))
        return SSAOutput(
            frame_logits=per_clip(fs.logits, 1),
            frame_masks=per_clip(fs.masks, 1),
            frame_queries=queries,
            sentence_tokens=sentences,
            mask_features=per_clip(fs.mask_features, 0),
            video_mask_features=per_clip(fs.video_mask_features, 0),
            video_logits=video.logits,
            video_mask_embed=video.mask_embed,
            video_sim_embed=video.sim_embed,
            frame_sim_embed=video.frame_sim_embed,
            trajectory=video.trajectory,
            image_size=image_size,
            padded_size=tuple(images.shape[-2:]),
            video_displacement=video.displacement,
        )
