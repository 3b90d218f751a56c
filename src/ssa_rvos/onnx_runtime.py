"""An exported SSA (:mod:`ssa_rvos.onnx_export`) run by onnxruntime, behind the engine's model interface.

:class:`OnnxSSA` has the methods :class:`~ssa_rvos.predictor.SSAPredictor` calls on a model (text
encoding, the frame stage, the video stage, the mask head, preprocessing), each one onnxruntime graph;
only the glue between them is PyTorch (shapes, the chunks' concatenation) and the trajectory matching,
which stays the Hungarian algorithm of scipy as in the PyTorch model. So ``SSAPredictor.from_onnx(DIR)``
(or ``ssa-rvos segment --backend onnxruntime --model DIR``) runs the same two-pass engine, the same
chunking, selection and outputs, with the network in onnxruntime.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .configs import from_dict
from .modeling.clip_backbone import TextFeatures, tokenize
from .modeling.config import SSAConfig
from .modeling.ssa import padded_size, preprocess
from .modeling.trajectory import match_trajectories
from .onnx_export import FORMAT, GRAPH_IO, GRAPHS, MANIFEST


class OnnxModelError(ValueError):
    """A folder that is not a complete ONNX export of this package (a one-line message naming it)."""


@dataclass
class _FrameStage:
    queries: Tensor  # (1, n, N, C): the last frame-decoder layer
    sentence: Tensor  # (n, C)
    video_mask_features: Tensor  # (n, Cm, H/4, W/4)
    boxes: Tensor | None = None  # (1, n, N, 4) the last layer's mask boxes, with motion_embedding only


@dataclass
class _VideoStage:
    logits: Tensor  # (1, K, B, N, 2): the last video-decoder layer
    mask_embed: Tensor  # (1, K, B, N, Cm)


def read_manifest(folder: str | os.PathLike) -> dict:
    """The export's manifest, checked: its format, every graph file present, the text context and the
    model config (returned as an :class:`~ssa_rvos.modeling.config.SSAConfig`)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise OnnxModelError(f"{folder}: not an ONNX export (no {MANIFEST}; write one with "
                             "`ssa-rvos export CHECKPOINT --format onnx -o DIR`)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OnnxModelError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise OnnxModelError(f"{path}: format {manifest.get('format') if isinstance(manifest, dict) else None!r}, "
                             f"expected {FORMAT!r} (exported by another version?)")
    graphs = manifest.get("graphs")
    if not isinstance(graphs, dict) or set(graphs) != set(GRAPHS):
        raise OnnxModelError(f"{path}: expected the graphs {', '.join(GRAPHS)}")
    for name, file in graphs.items():
        if not isinstance(file, str) or Path(file).name != file or not (folder / file).is_file():
            raise OnnxModelError(f"{folder}: graph {name!r} file {file!r} is missing")
    context = manifest.get("context_length")
    if not isinstance(context, int) or isinstance(context, bool) or not 2 <= context <= 4096:
        raise OnnxModelError(f"{path}: context_length {context!r}, expected the text encoder's token count")
    if not isinstance(manifest.get("config"), dict):
        raise OnnxModelError(f"{path}: the model config is not readable (expected an object)")
    try:  # the checkpoints' strict schema: unknown keys and values of the wrong type are errors
        manifest["config"] = from_dict(SSAConfig, manifest["config"], "model", typed=True)
    except (ValueError, TypeError) as e:
        raise OnnxModelError(f"{path}: the model config is not readable ({e})") from None
    return manifest


def session_options(threads: int | None = None, optimization: str = "all"):
    """onnxruntime session options: intra-op threads (None: torch's current thread count, so a
    ``--threads`` / ``torch.set_num_threads`` applies to both backends), graph optimisation level
    (``all``, ``extended``, ``basic`` or ``off``)."""
    import onnxruntime as ort

    levels = {"off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if optimization not in levels:
        raise ValueError(f"optimization must be one of {', '.join(levels)}, got {optimization!r}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = levels[optimization]
    opts.log_severity_level = 3  # errors only: its notes on unused initialisers are not the user's concern
    # no busy-waiting between runs: the engine's own PyTorch work (upsampling, thresholding the masks)
    # runs between the graphs, and spinning onnxruntime threads would take its cores
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class OnnxSSA:
    """The model interface of :class:`~ssa_rvos.predictor.SSAPredictor` over an ONNX export folder.

    threads: onnxruntime's intra-op threads (default: torch's thread count); optimization: its graph
    optimisation level (``all`` by default). CPU only (the CPU execution provider)."""

    def __init__(self, folder: str | os.PathLike, *, threads: int | None = None, optimization: str = "all") -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise OnnxModelError("the onnxruntime backend needs onnxruntime: pip install onnxruntime") from None
        import open_clip

        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        self.config = manifest["config"]
        self.context_length = manifest["context_length"]
        self.tokenizer = open_clip.SimpleTokenizer(context_length=self.context_length)
        opts = session_options(threads, optimization)
        self.sessions = {}
        for name, file in manifest["graphs"].items():
            try:
                self.sessions[name] = ort.InferenceSession(str(self.folder / file), opts,
                                                           providers=["CPUExecutionProvider"])
            except Exception as e:  # noqa: BLE001 - onnxruntime's own exception types
                raise OnnxModelError(f"{self.folder / file}: onnxruntime cannot load it "
                                     f"({str(e).splitlines()[0][:200]})") from None
        self._inputs = {name: [i.name for i in s.get_inputs()] for name, s in self.sessions.items()}
        self.pixel_mean = torch.tensor(self.config.pixel_mean).view(-1, 1, 1)
        self.pixel_std = torch.tensor(self.config.pixel_std).view(-1, 1, 1)

    def __repr__(self) -> str:
        return f"OnnxSSA({str(self.folder)!r})"

    # the parts of nn.Module's interface the engine uses
    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def eval(self) -> OnnxSSA:
        return self

    def to(self, device) -> OnnxSSA:
        if torch.device(device).type != "cpu":
            raise ValueError(f"the onnxruntime backend runs on the CPU, not {device}")
        return self

    def float(self) -> OnnxSSA:
        return self

    def _run(self, name: str, *inputs: Tensor) -> list[Tensor]:
        # a graph may drop an input it does not use (the trajectory without sequential alignment)
        names = GRAPH_IO[name][0]
        feeds = {n: np.ascontiguousarray(x.detach().cpu().numpy()) for n, x in zip(names, inputs)
                 if n in self._inputs[name]}
        return [torch.from_numpy(o) for o in self.sessions[name].run(None, feeds)]

    # ------------------------------------------------------------------------------ what the engine calls

    def padded_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return padded_size(size, self.config.size_divisibility)

    def preprocess(self, frames: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """As :meth:`ssa_rvos.modeling.SSA.preprocess`: normalise, then pad with zeros to the stride."""
        return preprocess(frames, self.pixel_mean, self.pixel_std, self.config.size_divisibility)

    def encode_text(self, texts: list[str], *, warn_truncated: bool = False) -> TextFeatures:
        tokens = tokenize(self.tokenizer, texts, warn_truncated=warn_truncated, stacklevel=3)
        words, word_mask, sentence = self._run("text", tokens)
        return TextFeatures(tokens=tokens, words=words, word_mask=word_mask, sentence=sentence)

    def sentence_proj(self, sentence: Tensor) -> Tensor:
        return self._run("sentence_proj", sentence)[0]

    def _pixels(self, images: Tensor, text: TextFeatures, sentence: Tensor | None) -> list[Tensor]:
        if sentence is None:
            sentence = self.sentence_proj(text.sentence)
        return self._run("pixel", images, text.words, text.word_mask, text.sentence, sentence)

    def forward_frames(self, images: Tensor, text: TextFeatures, *, sentence: Tensor | None = None) -> _FrameStage:
        ms0, ms1, ms2, mask_features, video_mask_features, tokens = self._pixels(images, text, sentence)
        queries, *boxes = self._run("frame_decoder", ms0, ms1, ms2, mask_features, tokens)
        return _FrameStage(queries=queries[None], sentence=tokens[:, 0], video_mask_features=video_mask_features,
                           boxes=boxes[0][None] if boxes else None)

    def forward_mask_features(self, images: Tensor, text: TextFeatures, *, sentence: Tensor | None = None) -> Tensor:
        return self._pixels(images, text, sentence)[4]

    def forward_video(self, frame_queries: Tensor, sentence_tokens: Tensor, boxes: Tensor | None = None) -> _VideoStage:
        """frame_queries (K, B, T, N, C), sentence_tokens (B, T, C), boxes (K, B, T, N, 4) (with
        ``motion_embedding`` only), as :meth:`ssa_rvos.modeling.SSA.forward_video`; only the last
        video-decoder layer's logits and mask embeddings."""
        K, B, T, N = frame_queries.shape[:4]
        motion = "boxes" in self._inputs["video"]
        if motion and boxes is None:
            raise ValueError(f"{self.folder}: this model has motion_embedding: its video stage needs the frame "
                             "masks' boxes")
        projected = self._run("video_proj", frame_queries.flatten(0, 1))[0]
        if self.config.video_decoder.sequential_alignment:
            trajectory = match_trajectories(projected)
        else:
            trajectory = torch.arange(N).expand(K * B, T, N)
        extra = (boxes.flatten(0, 1),) if motion else ()
        logits, embed = self._run("video", projected, trajectory, sentence_tokens.repeat(K, 1, 1), *extra)
        return _VideoStage(logits=logits.unflatten(0, (K, B))[None], mask_embed=embed.unflatten(0, (K, B))[None])

    def mask_logits(self, embed: Tensor, features: Tensor) -> Tensor:
        return self._run("mask_head", embed, features)[0]

