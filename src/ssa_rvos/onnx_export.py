"""An SSA model as ONNX graphs, split where the engine's Python control flow is (``ssa-rvos export``).

Seven graphs, each a thin wrapper over the network's own methods (nothing is re-implemented here):

============== ============================================== ==================================================
graph          inputs                                         outputs
============== ============================================== ==================================================
text           tokens (E, context) int64                      words (E, L, Ct), word_mask (E, L) bool,
                                                              sentence (E, Ct): the CLIP text features
sentence_proj  sentence (E, Ct)                               projected (E, C)
pixel          images (n, 3, H, W), words, word_mask,         multi_scale0..2 (n, C, H/32..H/8),
               clip_sentence (n, Ct), sentence (n, C)         mask_features, video_mask_features
                                                              (n, Cm, H/4, W/4), sentence_tokens (n, 1, C):
                                                              backbone with adapters, pixel decoder
frame_decoder  multi_scale0..2, mask_features,                queries (n, N, C): the last layer's;
               sentence_tokens                                boxes (n, N, 4): its masks' ``mask_box``
video_proj     frame_queries (B, T, N, C)                     projected (B, T, N, C)
video          projected, trajectory (B, T, N) int64,         logits (B, N, 2), mask_embed (B, N, Cm): the
               sentence_tokens (B, T, C), boxes (B, T, N, 4)  last video-decoder layer
mask_head      embed (Q, Cm), features (T, Cm, h, w)          logits (Q, T, h, w) at stride 4
============== ============================================== ==================================================

The boxes exist only for a model with ``motion_embedding`` (not in the paper; the video stage reads where
each frame mask lies): without it the frame decoder has one output and the video graph three inputs.
The engine's first pass runs ``pixel`` then ``frame_decoder`` on each chunk of frames, its second pass
``pixel`` alone (the mask features), so the largest graph is exported once.
The Hungarian trajectory matching between ``video_proj`` and ``video`` stays in Python (scipy), as in
:meth:`ssa_rvos.modeling.video_decoder.VideoDecoder.forward`. Frames, height and width (multiples of the
model's ``size_divisibility`` after padding), sentences and clips are dynamic axes. The folder also holds
``ssa_onnx.json`` (the model config, the graphs' files and the exporter's settings); the onnxruntime
backend that reads it is :mod:`ssa_rvos.onnx_runtime`.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from .fileio import atomic_dir, atomic_write_text
from .modeling.clip_backbone import TextFeatures
from .modeling.video_decoder import mask_box

MANIFEST = "ssa_onnx.json"
FORMAT = "ssa-rvos-onnx/1"
OPSET = 18
GRAPHS = ("text", "sentence_proj", "pixel", "frame_decoder", "video_proj", "video", "mask_head")


class _Text(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.backbone = model.backbone

    def forward(self, tokens: Tensor):
        t = self.backbone.encode_tokens(tokens)
        return t.words, t.word_mask, t.sentence


class _SentenceProj(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.proj = model.sentence_proj

    def forward(self, sentence: Tensor) -> Tensor:
        return self.proj(sentence)


class _Pixel(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, images, words, word_mask, clip_sentence, sentence):
        text = TextFeatures(tokens=word_mask, words=words, word_mask=word_mask, sentence=clip_sentence)
        pix = self.model.forward_pixels(images, text, sentence=sentence)
        return (*pix.multi_scale, pix.mask_features, self.model.video_decoder.mask_features(pix.fpn), pix.sentence)


def has_motion(model) -> bool:
    """Whether the model's video stage reads the frame masks' boxes (``motion_embedding``)."""
    return model.video_decoder.motion is not None


class _FrameDecoder(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.decoder = model.frame_decoder
        self.boxes = has_motion(model)

    def forward(self, ms0, ms1, ms2, mask_features, sentence_tokens):
        out = self.decoder(multi_scale=[ms0, ms1, ms2], mask_features=mask_features, sentence=sentence_tokens)
        if self.boxes:  # as SSA.forward_frames: the boxes of the last layer's masks
            return out.queries[-1], mask_box(out.masks[-1])
        return out.queries[-1]


class _VideoProj(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.video = model.video_decoder

    def forward(self, frame_queries: Tensor) -> Tensor:
        return self.video.input_proj(frame_queries)


class _Video(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.video = model.video_decoder

    def forward(self, projected: Tensor, trajectory: Tensor, sentence_tokens: Tensor, boxes: Tensor | None = None):
        out = self.video.decode(projected, trajectory, sentence_tokens, boxes)
        return out.logits[-1], out.mask_embed[-1]


class _MaskHead(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, embed: Tensor, features: Tensor) -> Tensor:
        return self.model.mask_logits(embed, features)


def example_inputs(model, *, frames: int = 2, sentences: int = 2, size: tuple[int, int] = (64, 96)) -> dict:
    """Inputs of every graph for ``sentences`` sentences on ``frames`` frames of ``size`` (padded): real
    text features, random images; the frame decoder's from the pixel stage on those images; the video
    graph's boxes (with ``motion_embedding``) random centres and spreads in [0, 1) and [0, 0.25)."""
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        text = model.encode_text(["the red circle moving to the left", "a square"][:sentences] * sentences)
        text = text.slice(0, sentences)
        sentence = model.sentence_proj(text.sentence)
        rep = text.repeat_frames(frames)
        images = torch.randn(sentences * frames, 3, *size, generator=g)
        pixel = (images, rep.words, rep.word_mask, rep.sentence, sentence.repeat_interleave(frames, 0))
        ms0, ms1, ms2, mask_features, _, tokens = _Pixel(model)(*pixel)
        C, N = cfg.hidden_dim, cfg.num_queries
        Cm = model.video_decoder.mask_features.out_channels
        h, w = size[0] // 4, size[1] // 4
        video = (torch.randn(sentences, frames, N, C, generator=g),
                 torch.stack([torch.randperm(N, generator=g) for _ in range(sentences * frames)]).view(
                     sentences, frames, N),
                 torch.randn(sentences, frames, C, generator=g))
        if has_motion(model):
            boxes = torch.rand(sentences, frames, N, 4, generator=g) * torch.tensor([1.0, 1.0, 0.25, 0.25])
            video = (*video, boxes)
        return {
            "text": (text.tokens,),
            "sentence_proj": (text.sentence,),
            "pixel": pixel,
            "frame_decoder": (ms0, ms1, ms2, mask_features, tokens),
            "video_proj": (torch.randn(sentences, frames, N, C, generator=g),),
            "video": video,
            "mask_head": (torch.randn(3, Cm, generator=g), torch.randn(frames, Cm, h, w, generator=g)),
        }


GRAPH_IO = {  # graph -> (input names, output names), the order of the wrappers' arguments and results; the
    # boxes (the frame decoder's second output, the video graph's fourth input) with motion_embedding only
    "text": (["tokens"], ["words", "word_mask", "sentence"]),
    "sentence_proj": (["sentence"], ["projected"]),
    "pixel": (["images", "words", "word_mask", "clip_sentence", "sentence"],
              ["multi_scale0", "multi_scale1", "multi_scale2", "mask_features", "video_mask_features",
               "sentence_tokens"]),
    "frame_decoder": (["multi_scale0", "multi_scale1", "multi_scale2", "mask_features", "sentence_tokens"],
                      ["queries", "boxes"]),
    "video_proj": (["frame_queries"], ["projected"]),
    "video": (["projected", "trajectory", "sentence_tokens", "boxes"], ["logits", "mask_embed"]),
    "mask_head": (["embed", "features"], ["logits"]),
}


def graph_io(model, name: str) -> tuple[list[str], list[str]]:
    """The input and output names of graph ``name`` for ``model``: GRAPH_IO's, less the boxes unless the
    model has ``motion_embedding``."""
    inputs, outputs = GRAPH_IO[name]
    if has_motion(model):
        return list(inputs), list(outputs)
    return [n for n in inputs if n != "boxes"], [n for n in outputs if n != "boxes"]


_WRAPPERS = {"text": _Text, "sentence_proj": _SentenceProj, "pixel": _Pixel, "frame_decoder": _FrameDecoder,
             "video_proj": _VideoProj, "video": _Video, "mask_head": _MaskHead}


def _dynamic_shapes(name: str, divisibility: int):
    from torch.export import Dim

    n, e, b, t, q = Dim("n", min=1), Dim("e", min=1), Dim("b", min=1), Dim("t", min=1), Dim("q", min=1)
    # images are padded to multiples of the stride (32): their height and width are 32 * (a symbol), the
    # feature maps 1, 2, 4 and 8 times that symbol
    hs, ws = Dim("hs", min=1, max=1024), Dim("ws", min=1, max=1024)
    h32, w32 = Dim("h32", min=1, max=4096), Dim("w32", min=1, max=4096)  # the stride-32 map's size
    h4, w4 = Dim("h4", min=1), Dim("w4", min=1)
    level = lambda k: {0: n, 2: k * h32, 3: k * w32}  # noqa: E731
    return {
        "text": ({0: e},),
        "sentence_proj": ({0: e},),
        "pixel": ({0: n, 2: divisibility * hs, 3: divisibility * ws}, {0: n}, {0: n}, {0: n}, {0: n}),
        "frame_decoder": (level(1), level(2), level(4), level(8), {0: n}),
        "video_proj": ({0: b, 1: t},),
        "video": ({0: b, 1: t}, {0: b, 1: t}, {0: b, 1: t}, {0: b, 1: t}),
        "mask_head": ({0: q}, {0: t, 2: h4, 3: w4}),
    }[name]


def export_graph(model, name: str, path: str | os.PathLike, inputs: tuple, *, optimize: bool = True) -> None:
    """Export one graph of ``model`` (eval mode, CPU, fp32) to ``path`` and check it with ``onnx.checker``.
    optimize: the exporter's own graph optimisation (constant folding, ...; about half the export time)."""
    import onnx

    wrapper = _WRAPPERS[name](model).eval()
    input_names, output_names = graph_io(model, name)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(wrapper, inputs, dynamo=True, opset_version=OPSET, input_names=input_names,
                                    output_names=output_names, verbose=False, report=False, optimize=optimize,
                                    dynamic_shapes=_dynamic_shapes(name, model.config.size_divisibility)[:len(inputs)])
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path), full_check=True)


def export_onnx(model, out_dir: str | os.PathLike, *, optimize: bool = True, progress: bool = False) -> Path:
    """Write every graph of ``model`` and the manifest into ``out_dir``, which must be new, empty, or an
    earlier export (it is then replaced as a whole, in one step). optimize: see :func:`export_graph`."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ValueError(f"{out_dir}: exists and is not a folder")
        known = {MANIFEST, *(f"{g}.onnx" for g in GRAPHS)}
        extra = sorted(p.name for p in out_dir.iterdir() if p.name not in known)
        if extra:
            raise ValueError(f"{out_dir}: not empty and not an earlier export (holds {', '.join(extra[:3])}); "
                             "choose a new folder")
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).float().cpu()  # the graphs are fp32 on the CPU; the caller's model stays
    training = model.training
    model.eval()
    try:
        inputs = example_inputs(model)
        with atomic_dir(out_dir) as tmp:
            files = {}
            for name in tqdm(GRAPHS, desc="export", unit="graph", disable=not progress):
                files[name] = f"{name}.onnx"
                export_graph(model, name, tmp / files[name], inputs[name], optimize=optimize)
            manifest = {"format": FORMAT, "opset": OPSET, "torch": torch.__version__, "optimized": optimize,
                        "graphs": files, "config": model.config.to_dict(),
                        "context_length": model.backbone.context_length}
            atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    finally:
        model.train(training)
    return out_dir
