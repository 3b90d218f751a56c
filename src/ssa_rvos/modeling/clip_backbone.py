"""Frozen CLIP ConvNeXt backbone with text-conditioned stage adapters (paper Sec. 3.2).

Feature contract: ``forward(images, text)`` returns the four adapter outputs ``res2..res5`` at
strides 4/8/16/32. Each adapter output *replaces* the stage output and feeds the next frozen
stage, so gradients flow through frozen stages 1-3 into the earlier adapters.

Frozen is enforced: CLIP parameters have ``requires_grad=False`` and CLIP stays in eval mode
under ``model.train()`` unless the config asks for the original train-mode behaviour (its
stochastic depth then stays active while training). The one exception, not in the paper, is the
config's ``train_text``: the text tower's parameters then train (the image tower stays frozen).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..text import clean_sentence
from .adapter import StageAdapter
from .config import AdapterConfig, ClipConfig


def text_tower(clip: nn.Module, tokens: Tensor, *, length: int | None = None,
               positions: Tensor | None = None) -> Tensor:
    """(B, L, C) projected features of every position of open_clip's text tower (not normalised).

    length: run on the first ``length`` positions only, with the causal attention mask cut to match;
    no position attends to later ones, so their features do not change (up to float rounding).
    positions: (B,) one position of each sentence (e.g. its end-of-text token); only those are projected,
    and the result is (B, C).
    """
    x, mask = clip.token_embedding(tokens[:, :length]), clip.attn_mask
    if length is None:
        x = x + clip.positional_embedding
    else:
        x, mask = x + clip.positional_embedding[:length], mask[:length, :length]
    if getattr(clip.transformer, "batch_first", True):
        x = clip.transformer(x, attn_mask=mask)
    else:  # open_clip < 2.26 runs sequence-first
        x = clip.transformer(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
    x = clip.ln_final(x)
    if positions is not None:
        x = x[torch.arange(x.shape[0], device=x.device), positions]
    return clip.text_projection(x) if isinstance(clip.text_projection, nn.Linear) else x @ clip.text_projection


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


def tokenize(tokenizer, texts: list[str], *, warn_truncated: bool = False, stacklevel: int = 5) -> Tensor:
    """(B, context) token ids of the cleaned sentences, truncated to the context by ``tokenizer`` (open_clip's).

    warn_truncated: a UserWarning for each sentence that was cut (``stacklevel``: pointing at the engine's
    caller). A sentence fills the whole context only when it is at least that long, so only those are
    encoded a second time, to count their tokens.
    """
    cleaned = [clean_sentence(t) for t in texts]
    tokens = tokenizer(cleaned)
    encode = getattr(tokenizer, "encode", None)  # open_clip's SimpleTokenizer: BPE ids, no sot/eot
    if warn_truncated and encode is not None:
        context = tokens.shape[1]
        for i in torch.nonzero(tokens[:, -1] != 0).flatten().tolist():
            n = len(encode(cleaned[i])) + 2
            if n > context:
                shown = texts[i] if len(texts[i]) <= 60 else texts[i][:57] + "..."
                warnings.warn(f"expression {i} ({shown!r}) has {n} tokens, more than the text encoder's context "
                              f"of {context}: only its first {context - 2} are used", UserWarning, stacklevel=stacklevel)
    return tokens


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
        if config.train_text:
            for p in self.text_parameters():
                p.requires_grad_(True)
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

    def text_parameters(self) -> list[nn.Parameter]:
        """The text tower's parameters: token and position embeddings, transformer, final norm, projection."""
        parts = [self.clip.token_embedding, self.clip.transformer, self.clip.ln_final]
        params = [p for m in parts for p in m.parameters()] + [self.clip.positional_embedding]
        proj = self.clip.text_projection
        return params + (list(proj.parameters()) if isinstance(proj, nn.Module) else [proj])

    @property
    def context_length(self) -> int:
        return int(self.clip.positional_embedding.shape[0])

    def tokenize(self, texts: list[str], *, warn_truncated: bool = False) -> Tensor:
        """(B, context) token ids of the cleaned sentences (:func:`tokenize`)."""
        return tokenize(self.tokenizer, texts, warn_truncated=warn_truncated)

    def encode_text(self, texts: list[str], *, warn_truncated: bool = False) -> TextFeatures:
        """Run the frozen text tower on B sentences (paper Sec. 3.1); see :meth:`tokenize` for
        ``warn_truncated``. Without gradients unless training with the config's ``train_text``."""
        tokens = self.tokenize(texts, warn_truncated=warn_truncated).to(self.clip.positional_embedding.device)
        with torch.set_grad_enabled(self.config.train_text and self.training and torch.is_grad_enabled()):
            return self.encode_tokens(tokens)

    def encode_tokens(self, tokens: Tensor) -> TextFeatures:
        """:meth:`encode_text` from the (B, context) token ids (what the exported text graph computes)."""
        device = tokens.device
        x = text_tower(self.clip, tokens)
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
