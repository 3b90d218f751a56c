"""Frozen CLIP ConvNeXt backbone with text-conditioned stage adapters (paper Sec. 3.2).

Feature contract: ``forward(images, text)`` returns the four adapter outputs ``res2..res5`` at
strides 4/8/16/32. Each adapter output *replaces* the stage output and feeds the next frozen
stage, so gradients flow through frozen stages 1-3 into the earlier adapters.

Frozen is enforced: CLIP parameters have ``requires_grad=False`` and CLIP stays in eval mode
under ``model.train()`` unless the config asks for the original train-mode behaviour (its
stochastic depth then stays active while training).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .adapter import StageAdapter
from .config import AdapterConfig, ClipConfig


def clean_sentence(text: str) -> str:
    """Lower-case and collapse whitespace, as the expressions are normalised before tokenising."""
    return " ".join(text.lower().split())


@dataclass
class TextFeatures:
    """CLIP text features of B sentences (already projected to the joint space, not normalised).

    tokens: (B, context) token ids; words: (B, L, Ct) the first L token features;
    word_mask: (B, L) bool, True = a real token; sentence: (B, Ct) the end-of-text feature.
    """

    tokens: Tensor
    words: Tensor
    word_mask: Tensor
    sentence: Tensor

    def repeat_frames(self, frames: int) -> TextFeatures:
        """Repeat each sentence's features for its T frames (b-major, like the frames)."""
        rep = lambda t: t.repeat_interleave(frames, dim=0)  # noqa: E731
        return TextFeatures(rep(self.tokens), rep(self.words), rep(self.word_mask), rep(self.sentence))

    def slice(self, start: int, stop: int) -> TextFeatures:
        """Entries start..stop-1 (e.g. one chunk of a clip's frames)."""
        return TextFeatures(self.tokens[start:stop], self.words[start:stop], self.word_mask[start:stop],
                            self.sentence[start:stop])


class ClipBackbone(nn.Module):
    def __init__(
        self,
        *,
        clip: nn.Module,
        tokenizer,
        config: ClipConfig,
        adapter: AdapterConfig,
        use_adapters: bool = True,
    ) -> None:
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.config = config
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.clip.eval()
        trunk = self.clip.visual.trunk
        self.stage_channels = [stage.blocks[-1].conv_dw.out_channels for stage in trunk.stages]
        self.text_dim = int(self.clip.text_projection.shape[-1])
        self.adapters = (
            nn.ModuleList(
                StageAdapter(visual_dim=c, text_dim=self.text_dim, config=adapter) for c in self.stage_channels
            )
            if use_adapters
            else None
        )

    def train(self, mode: bool = True) -> ClipBackbone:
        super().train(mode)
        if not self.config.train_mode:
            self.clip.eval()
        return self

    @property
    def context_length(self) -> int:
        return int(self.clip.positional_embedding.shape[0])

    def tokenize(self, texts: list[str]) -> Tensor:
        return self.tokenizer([clean_sentence(t) for t in texts])

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> TextFeatures:
        """Run the frozen text tower on B sentences (paper Sec. 3.1)."""
        device = self.clip.positional_embedding.device
        tokens = self.tokenize(texts).to(device)
        clip = self.clip
        x = clip.token_embedding(tokens) + clip.positional_embedding
        if getattr(clip.transformer, "batch_first", True):
            x = clip.transformer(x, attn_mask=clip.attn_mask)
        else:  # open_clip < 2.26 runs sequence-first
            x = clip.transformer(x.transpose(0, 1), attn_mask=clip.attn_mask).transpose(0, 1)
        x = clip.ln_final(x) @ clip.text_projection
        eot = tokens.argmax(dim=-1)  # end-of-text has the highest id in CLIP's vocabulary
        sentence = x[torch.arange(x.shape[0], device=device), eot]
        n = self.config.word_tokens
        positions = torch.arange(tokens.shape[1], device=device)
        if self.config.word_mask_rule == "eot":
            mask = positions[None, :] <= eot[:, None]
        elif self.config.word_mask_rule == "nonzero":
            mask = tokens != 0
        else:
            raise ValueError(f"word_mask_rule must be 'eot' or 'nonzero', got {self.config.word_mask_rule!r}")
        return TextFeatures(tokens=tokens, words=x[:, :n], word_mask=mask[:, :n], sentence=sentence)

    def forward(self, images: Tensor, text: TextFeatures) -> list[Tensor]:
        """images: (B, 3, H, W) normalised and padded to /32; text: one entry per image.
        Returns [res2, res3, res4, res5], each (B, C_i, H / s_i, W / s_i)."""
        trunk = self.clip.visual.trunk
        x = trunk.stem(images)
        features = []
        for i, stage in enumerate(trunk.stages):
            x = stage(x)
            if self.adapters is not None:
                x = self.adapters[i](x, sentence=text.sentence, words=text.words, word_mask=text.word_mask)
            features.append(x)
        return features
