"""Segment your own video: :class:`SSAPredictor` (a front end over the model).

    predictor = SSAPredictor.from_pretrained()            # the bundled model, or a name / checkpoint path
    state = predictor.init_state("video.mp4")              # or a frame folder, image paths, a (T, H, W, 3) array
    results = predictor.segment(state, ["the dog running to the left", "the person in red"])
    results[0].masks                                       # (T, H, W) bool at the video's own size

    for frame in predictor.propagate(state, texts):        # the same masks, frame by frame, in order
        frame.index, frame.name, frame.masks               # (E, H, W) bool, one per expression

The per-video work is done once: :meth:`SSAPredictor.init_state` decodes the frames and resizes them to
the test size (short side ``short_side``, long side at most ``max_long_side``) into a :class:`VideoState`;
every expression then reuses them. Several expressions run through the model together, the batch
dimension being the expressions.

Memory does not grow with the video's length beyond small per-frame tensors (spec Sec. 5 runs the frame
stage in chunks; we also never hold the whole video's mask features):

1. pass 1 runs the frame stage (backbone with its text-conditioned adapters, pixel decoder, frame
   decoder) on at most ``frame_chunk`` images at a time and keeps only the frame queries (N x C per frame
   and expression) and the sentence tokens (C per frame and expression);
2. the video stage sees every frame's queries at once and chooses the video queries (selection ``union``
   or ``top1``, as in :func:`ssa_rvos.postprocess.select_queries`);
3. pass 2 recomputes, chunk by chunk, the video mask features (the frame stage without its frame decoder,
   :meth:`ssa_rvos.modeling.SSA.forward_mask_features`) and turns them into masks for the chosen queries
   at the original frame size, one frame at a time. When the mask features of every frame and expression
   fit in ``max_cache_bytes`` (default 256 MiB: 1,365 frames x expressions for the tiny model at
   96 x 128, 45 for the large one at 224 x 416), pass 1 keeps them and pass 2 does not recompute them.

The resized frames are kept in RAM up to ``max_ram_bytes`` (default 256 MiB, about 250 frames at
448 x 796); a longer video's frames go to an anonymous temporary file (``TMPDIR``), written once and read
back a chunk at a time with plain reads, not a memory map, so they count in the page cache, not in the
process's resident memory. On a GPU the frame and video stages run under bf16 autocast, the mask head in
fp32; on a CPU everything is fp32.

The result equals ``postprocess(model(clip, texts, frame_chunk=...))`` on the resized clip with the same
chunking; ``segment`` keeps every mask of the video in RAM (including the per-query instance masks),
``propagate`` streams them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .data.transforms import TEST_MAX_LONG, resize_frames, test_resize_shape
from .modeling.ssa import foreground_probability
from .postprocess import SELECTIONS, mask_scores, query_masks, select_queries
from .runtime import release_memory, resolve_device
from .text import is_blank

__all__ = ["DEFAULT_SHORT_SIDE", "ExpressionResult", "FrameResult", "Propagation", "SSAPredictor", "VideoState",
           "resolve_device"]

# The test short side when the model does not name one (Ref-YouTube-VOS / DAVIS; MeViS models carry 448).
DEFAULT_SHORT_SIDE = 480
DEFAULT_MAX_RAM_BYTES = 256 * 2**20
DEFAULT_MAX_CACHE_BYTES = 256 * 2**20


# --------------------------------------------------------------------------------------------------- state


class FrameStore:
    """The resized frames of a video, (T, h, w, 3) uint8, appended once and read back in slices.

    In RAM up to ``max_ram_bytes``; past that, every frame (those already held included) moves to an
    anonymous temporary file, removed by the operating system when the store is closed or collected.
    """

    def __init__(self, size: tuple[int, int], *, max_ram_bytes: int = DEFAULT_MAX_RAM_BYTES) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.max_ram_bytes = int(max_ram_bytes)
        self._frame_bytes = self.size[0] * self.size[1] * 3
        self._ram: list[np.ndarray] = []
        self._file = None
        self._count = 0

    @property
    def spilled(self) -> bool:
        """Whether the frames live in a temporary file rather than in RAM."""
        return self._file is not None

    def __len__(self) -> int:
        return self._count

    def append(self, image: np.ndarray) -> None:
        if image.shape != (*self.size, 3) or image.dtype != np.uint8:
            raise ValueError(f"expected a {self.size[0]}x{self.size[1]}x3 uint8 frame, got {image.shape} {image.dtype}")
        if self._file is None and (self._count + 1) * self._frame_bytes > self.max_ram_bytes:
            self._file = tempfile.TemporaryFile(prefix="ssa-rvos-frames-")
            for held in self._ram:
                self._file.write(held.tobytes())
            self._ram = []
        if self._file is not None:
            self._file.seek(self._count * self._frame_bytes)
            self._file.write(np.ascontiguousarray(image).tobytes())
        else:
            self._ram.append(np.ascontiguousarray(image))
        self._count += 1

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames start..stop-1 as a new (k, h, w, 3) uint8 array."""
        start, stop = max(0, start), min(stop, self._count)
        if self._file is None:
            return np.stack(self._ram[start:stop])
        out = np.empty((stop - start, *self.size, 3), dtype=np.uint8)
        self._file.seek(start * self._frame_bytes)
        if self._file.readinto(memoryview(out).cast("B")) != out.nbytes:
            raise OSError("the temporary frame file was truncated")
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._ram = []
        self._count = 0


@dataclass
class VideoState:
    """One video, decoded and resized once, for any number of expressions.

    frame_names / frame_indices: the T selected frames' names (output file stems) and their indices in
    the input; original_size: (H, W) of the input frames (the masks' size); input_size: (h, w) the model
    sees; frames: the resized frames (:class:`FrameStore`); fps: the selected frames' average rate, from
    their timestamps (else the input's rate divided by ``every``; None for frame folders and arrays);
    video / start / end / every: the input and the selection, to read the original frames again
    (:meth:`original_frames`).
    """

    source: str
    frame_names: tuple[str, ...]
    frame_indices: tuple[int, ...]
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    frames: FrameStore
    fps: float | None
    video: object  # the video input (ssa_rvos.videoio.VideoInput or anything with .frames() and .size)
    start: int
    end: int | None
    every: int

    @property
    def num_frames(self) -> int:
        return len(self.frame_names)

    def __len__(self) -> int:
        return self.num_frames

    def original_frames(self) -> Iterator[np.ndarray]:
        """The selected frames at their original size, (H, W, 3) uint8, decoded again one at a time."""
        for frame in self.video.frames(start=self.start, end=self.end, every=self.every):
            yield frame.image

    def close(self) -> None:
        """Free the resized frames (and their temporary file)."""
        self.frames.close()

    def __enter__(self) -> VideoState:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------- results


@dataclass
class ExpressionResult:
    """One expression's result on the whole video (numpy, at the original frame size).

    masks: (T, H, W) bool, the union of the selected queries' masks; instance_masks: (Q, T, H, W) bool,
    one per selected query (the targets of a multi-target expression under ``union``); query_indices:
    (Q,) int64 the selected video queries; scores: (Q,) float32 their foreground probabilities;
    mask_scores: (Q,) float32 scores times the mean probability inside each mask.
    """

    text: str
    masks: np.ndarray
    instance_masks: np.ndarray
    query_indices: np.ndarray
    scores: np.ndarray
    mask_scores: np.ndarray


@dataclass
class FrameResult:
    """One frame's masks for every expression, in the order the expressions were given.

    index: the frame's position in the state (0..T-1); name: its name; masks: (E, H, W) bool;
    instance_masks: per expression, (Q_e, H, W) bool for its selected queries.
    """

    index: int
    name: str
    masks: np.ndarray
    instance_masks: tuple[np.ndarray, ...]


class Propagation:
    """The masks of some expressions on one video, produced frame by frame.

    Made by :meth:`SSAPredictor.propagate`, which has already run pass 1 and the video stage: the
    selected queries and their scores are known. Iterating runs pass 2 and yields :class:`FrameResult`
    in frame order (each iteration recomputes it). ``mask_scores`` are known after a full iteration.
    """

    def __init__(self, predictor: SSAPredictor, state: VideoState, texts: list[str], *, progress: bool) -> None:
        self.texts = tuple(texts)
        self.frame_names = state.frame_names
        self._predictor = predictor
        self._state = state
        self._progress = progress
        self._text, self._sentence, self._embed, idx, scores, self._cache = predictor._select(state, texts, progress)
        self.query_indices: tuple[np.ndarray, ...] = tuple(i.cpu().numpy().astype(np.int64) for i in idx)
        self.scores: tuple[np.ndarray, ...] = tuple(s.cpu().numpy().astype(np.float32) for s in scores)
        self._score_tensors = scores
        self._mask_scores: tuple[np.ndarray, ...] | None = None

    @property
    def mask_scores(self) -> tuple[np.ndarray, ...]:
        """Per expression, (Q,) float32 scores times the mean probability inside each query's mask."""
        if self._mask_scores is None:
            raise RuntimeError("mask scores are known after iterating over every frame")
        return self._mask_scores

    def __len__(self) -> int:
        return len(self.frame_names)

    def __iter__(self) -> Iterator[FrameResult]:
        E = len(self.texts)
        num = [torch.zeros(len(i), dtype=torch.float64) for i in self.query_indices]
        area = [torch.zeros(len(i), dtype=torch.float64) for i in self.query_indices]
        for frame, sums in self._predictor._masks(self._state, self._text, self._sentence, self._embed, self._cache,
                                                  progress=self._progress):
            for e in range(E):
                num[e] += sums[e][0].double().cpu()
                area[e] += sums[e][1].double().cpu()
            yield frame
        self._mask_scores = tuple(mask_scores(s.double().cpu(), n, a).numpy().astype(np.float32)
                                  for s, n, a in zip(self._score_tensors, num, area))


# ----------------------------------------------------------------------------------------------- predictor


class SSAPredictor:
    """Segment the objects that sentences refer to in a video, with a trained SSA model.

    frame_chunk: images per frame-stage call, as in :meth:`ssa_rvos.modeling.SSA.forward` (the original's
    18): each call runs ``max(1, frame_chunk // E)`` frames for all E expressions, so the peak memory does
    not grow with the number of expressions either. short_side: the test resize's short side (default: the
    one the model was trained for, else 480); max_long_side: its cap on the long side. selection /
    threshold: how video queries are chosen (``union``: every query scoring above the threshold, for
    multi-target expressions; ``top1``: the best one). max_ram_bytes: resized frames kept in RAM (more go
    to a temporary file); max_cache_bytes: mask features kept from pass 1 (0: always recompute them).
    frame_chunk None: every frame in one call. amp: bf16 autocast of the frame and video stages on CUDA
    (None, the default: on; False: fp32); CPU and MPS always run fp32.
    """

    def __init__(self, model, *, device: str | torch.device | None = None, frame_chunk: int | None = 18,
                 short_side: int | None = None, max_long_side: int = TEST_MAX_LONG, threshold: float = 0.5,
                 selection: str = "union", max_ram_bytes: int = DEFAULT_MAX_RAM_BYTES,
                 max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES, amp: bool | None = None) -> None:
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if frame_chunk is not None and frame_chunk < 1:
            raise ValueError(f"frame_chunk must be >= 1, got {frame_chunk}")
        if (short_side is not None and short_side < 1) or max_long_side < 1:
            raise ValueError(f"short_side and max_long_side must be positive, got {short_side}, {max_long_side}")
        if device is not None:
            model = model.to(resolve_device(device))
        self.model = model.eval()
        self.frame_chunk = None if frame_chunk is None else int(frame_chunk)
        self.amp = True if amp is None else bool(amp)
        self.short_side = int(short_side or model.config.test_short_side or DEFAULT_SHORT_SIDE)
        self.max_long_side = int(max_long_side)
        self.threshold = float(threshold)
        self.selection = selection
        self.max_ram_bytes = int(max_ram_bytes)
        if max_cache_bytes < 0:
            raise ValueError(f"max_cache_bytes must be >= 0, got {max_cache_bytes}")
        self.max_cache_bytes = int(max_cache_bytes)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None = None, *, device: str | torch.device = "auto",
                        **kwargs) -> SSAPredictor:
        """A predictor for a named or saved model (None: the bundled default; see :mod:`ssa_rvos.pretrained`;
        the authors' released names download once). device: ``auto`` = cuda, else mps, else cpu. The
        selection defaults to the model's own (``top1`` for ``ssa_convnext_large.ytvos``, else ``union``)."""
        from .pretrained import default_selection, load_pretrained

        kwargs.setdefault("selection", default_selection(name_or_path))
        return cls(load_pretrained(name_or_path, device=resolve_device(device)), **kwargs)

    @classmethod
    def from_onnx(cls, folder: str | os.PathLike, *, threads: int | None = None, optimization: str = "all",
                  **kwargs) -> SSAPredictor:
        """A predictor whose network runs in onnxruntime (CPU): ``folder`` is an export of
        ``ssa-rvos export CHECKPOINT --format onnx -o DIR`` (:class:`ssa_rvos.onnx_runtime.OnnxSSA`; threads
        and optimization are its session settings). The engine, its chunking and outputs are the same."""
        from .onnx_runtime import OnnxSSA

        return cls(OnnxSSA(folder, threads=threads, optimization=optimization), **kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _autocast(self):
        # bf16 on a GPU (the frame and video stages); CPU and MPS stay in fp32 (no autocast context at all:
        # older torch warns about one on MPS even when disabled)
        if self.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---------------------------------------------------------------------------------------- per video

    def init_state(self, video, *, start: int = 0, end: int | None = None, every: int = 1,
                   progress: bool = False) -> VideoState:
        """Decode frames ``start, start + every, ...`` before ``end`` of ``video`` (a video file, a folder of
        frames, a list of image paths, a (T, H, W[, 3]) uint8 array) and resize them once to the test size."""
        from tqdm import tqdm

        if hasattr(video, "frames") and hasattr(video, "size"):
            source = video  # already a video input (ssa_rvos.videoio, or a dataset's frames)
        else:
            from .videoio import open_video

            source = open_video(video)
        H, W = source.size
        h, w = test_resize_shape(H, W, short=self.short_side, max_long=self.max_long_side)
        size = (max(1, h), max(1, w))  # an extreme aspect ratio may round a side to 0
        store = FrameStore(size, max_ram_bytes=self.max_ram_bytes)
        names, indices, times = [], [], []
        total = source.num_frames
        if total is not None:
            total = max(0, (min(total, end if end is not None else total) - start + every - 1) // every)
        try:
            with tqdm(total=total, desc="decode", unit="frame", disable=not progress) as bar:
                for frame in source.frames(start=start, end=end, every=every):
                    store.append(resize_frames(frame.image[None], size)[0])
                    names.append(frame.name)
                    indices.append(frame.index)
                    times.append(getattr(frame, "time", None))
                    bar.update()
        except BaseException:
            store.close()
            raise
        fps = source.fps / every if getattr(source, "fps", None) else None
        if len(times) > 1 and None not in times and times[-1] > times[0]:
            # the selected frames' own average rate: a variable-rate video's overlay then lasts as long as
            # the source did (its nominal rate can be far off)
            fps = (len(times) - 1) / (times[-1] - times[0])
        return VideoState(source=source.source, frame_names=tuple(names), frame_indices=tuple(indices),
                          original_size=(H, W), input_size=size, frames=store, fps=fps, video=source,
                          start=start, end=end, every=every)

    # ---------------------------------------------------------------------------------------- per text

    def check_texts(self, texts: str | Sequence[str]) -> list[str]:
        """The expressions as a list; an empty one (nothing but whitespace or invisible format characters)
        is a ValueError. Ones longer than the text encoder's context are truncated when encoded, with a
        warning naming them (:meth:`ssa_rvos.modeling.SSA.encode_text`)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("no expressions given")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"expression {i} must be a str, got {type(text).__name__}")
            if is_blank(text):
                raise ValueError(f"expression {i} ({text!r}) is empty: only whitespace or invisible characters")
        return texts

    def segment(self, state: VideoState, texts: str | Sequence[str], *, progress: bool = False) -> list[ExpressionResult]:
        """Masks of each expression on the whole video (see :class:`ExpressionResult`); one str or a list."""
        run = self.propagate(state, texts, progress=progress)
        T = state.num_frames
        H, W = state.original_size
        masks = [np.zeros((T, H, W), dtype=bool) for _ in run.texts]
        inst = [np.zeros((len(i), T, H, W), dtype=bool) for i in run.query_indices]
        for frame in run:
            for e in range(len(run.texts)):
                masks[e][frame.index] = frame.masks[e]
                inst[e][:, frame.index] = frame.instance_masks[e]
        return [ExpressionResult(text=t, masks=m, instance_masks=i, query_indices=q, scores=s, mask_scores=ms)
                for t, m, i, q, s, ms in zip(run.texts, masks, inst, run.query_indices, run.scores, run.mask_scores)]

    def propagate(self, state: VideoState, texts: str | Sequence[str], *, progress: bool = False) -> Propagation:
        """Choose each expression's video queries now (pass 1 and the video stage); iterate over the result
        for the masks frame by frame (pass 2)."""
        texts = self.check_texts(texts)
        if state.num_frames == 0 or len(state.frames) != state.num_frames:
            raise ValueError("this video state has no frames (closed?)")
        return Propagation(self, state, texts, progress=progress)

    # ---------------------------------------------------------------------------------------- the passes

    def _chunks(self, T: int, E: int) -> list[tuple[int, int]]:
        per = T if self.frame_chunk is None else max(1, self.frame_chunk // E)
        return [(s, min(s + per, T)) for s in range(0, T, per)]

    def _images(self, state: VideoState, s: int, e: int, E: int) -> torch.Tensor:
        frames = torch.from_numpy(state.frames.read(s, e)).to(self.device).permute(0, 3, 1, 2).float()
        images, _ = self.model.preprocess(frames)
        return images.repeat(E, 1, 1, 1)  # expression-major, as SSA.forward lays out B clips of T frames

    @torch.inference_mode()
    def _select(self, state: VideoState, texts: list[str], progress: bool):
        """Pass 1 and the video stage -> text features, projected sentences, the selected queries' mask
        embeddings, indices and scores per expression, and the mask features of every chunk when they fit in
        ``max_cache_bytes`` (else None: pass 2 recomputes them)."""
        from tqdm import tqdm

        model = self.model
        E, T = len(texts), state.num_frames
        chunks = self._chunks(T, E)
        queries, tokens, boxes, cache = [], [], [], []
        with self._autocast():
            text = model.encode_text(texts, warn_truncated=True)
            sentence = model.sentence_proj(text.sentence)  # (E, C)
            with tqdm(total=T, desc="frame stage", unit="frame", disable=not progress) as bar:
                for s, e in chunks:
                    k = e - s
                    fs = model.forward_frames(self._images(state, s, e, E), text.repeat_frames(k),
                                              sentence=sentence.repeat_interleave(k, dim=0))
                    queries.append(fs.queries.unflatten(1, (E, k)))  # (K, E, k, N, C)
                    tokens.append(fs.sentence.unflatten(0, (E, k)))  # (E, k, C)
                    if fs.boxes is not None:  # motion_embedding: where each query's mask lies
                        boxes.append(fs.boxes.unflatten(1, (E, k)))  # (K, E, k, N, 4)
                    if cache is not None:  # decided on the first chunk: the whole video's features fit, or none kept
                        f = fs.video_mask_features
                        if f.numel() * f.element_size() / k * T <= self.max_cache_bytes:
                            cache.append(f)
                        else:
                            cache = None
                    del fs  # the frame masks and mask features of this chunk are not needed again
                    release_memory()
                    bar.update(k)
            video = model.forward_video(torch.cat(queries, dim=2), torch.cat(tokens, dim=1),
                                        *([torch.cat(boxes, dim=2)] if boxes else []))
        scores = foreground_probability(video.logits[-1, -1])  # (E, N), as SSAOutput.video_scores
        embed = video.mask_embed[-1, -1].float()  # (E, N, Cm)
        idx = [select_queries(scores[b], selection=self.selection, threshold=self.threshold) for b in range(E)]
        return (text, sentence, [embed[b, i] for b, i in enumerate(idx)], idx,
                [scores[b, i] for b, i in enumerate(idx)], cache)

    def _masks(self, state: VideoState, text, sentence, embed: list[torch.Tensor], cache, *,
               progress: bool) -> Iterator[tuple[FrameResult, list[tuple[torch.Tensor, torch.Tensor]]]]:
        """Pass 2: (frame result, per expression the (num, area) parts of its mask scores) in frame order."""
        from tqdm import tqdm

        model = self.model
        E, T = len(embed), state.num_frames
        H, W = state.original_size
        padded = model.padded_size(state.input_size)
        # Inference mode and autocast are entered per step, never held across a yield: they are
        # thread-wide and would leak into the caller's code between frames.
        with tqdm(total=T, desc="masks", unit="frame", disable=not progress) as bar:
            for i, (s, e) in enumerate(self._chunks(T, E)):
                k = e - s
                if cache is not None:
                    feats = cache[i]
                    cache[i] = None  # released as pass 2 moves on
                else:
                    with torch.inference_mode(), self._autocast():
                        feats = model.forward_mask_features(self._images(state, s, e, E), text.repeat_frames(k),
                                                            sentence=sentence.repeat_interleave(k, dim=0))
                with torch.inference_mode():
                    feats = feats.float().unflatten(0, (E, k))  # (E, k, Cm, h/4, w/4)
                for j in range(k):
                    inst, sums = [], []
                    with torch.inference_mode():
                        for b in range(E):
                            m, num, area = query_masks(embed[b], feats[b, j:j + 1], padded_size=padded,
                                                       image_size=state.input_size, output_size=(H, W),
                                                       head=model.mask_logits)
                            inst.append(m[:, 0].cpu().numpy())
                            sums.append((num, area))
                    frame = FrameResult(index=s + j, name=state.frame_names[s + j],
                                        masks=np.stack([m.any(0) for m in inst]), instance_masks=tuple(inst))
                    yield frame, sums
                    bar.update()
                del feats
                release_memory()
