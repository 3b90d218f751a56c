"""The web demo: one Gradio page over the engine and the output writer that ``ssa-rvos segment`` uses.

    ssa-rvos demo [--model NAME_OR_PATH ...] [--host 127.0.0.1] [--port 7860] [--device auto] [--max-frames 600]

A user uploads a video (or frames as images, or picks the bundled example), types one sentence per line,
optionally sets the selection rule, the score threshold and a frame range, and presses Run. The page shows
the progress (decode, frame stage, masks), the overlay video, one strip of masked key frames per sentence
with its top score, and download buttons for the PNG masks (zip) and ``masks.json``.

Two layers, so that the page is a thin shell:

* :class:`DemoEngine` (no Gradio): checks the input, loads each model once per process, runs
  :class:`~ssa_rvos.predictor.SSAPredictor` and :func:`~ssa_rvos.outputs.write_outputs` exactly as
  ``segment --format both --overlay`` does into a per-session folder, and builds the key-frame strips.
  Bad input is a :class:`DemoInputError` with a one-line message.
* :func:`build_app` (Gradio 6, ``pip install -e ".[demo]"``): the page. One model run at a time (the queue
  shows a waiting user their position); a session's files are removed when its page is closed, and the
  whole folder when the server stops.
"""


import contextlib
import os
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_MAX_FRAMES", "DemoEngine", "DemoInputError", "DemoResult", "build_app", "example_video"]

#: Longest video (frames after the range and step are applied) a request may ask for.
DEFAULT_MAX_FRAMES = 600
#: Key frames per sentence in its result picture (a 2 x 2 grid).
STRIP_FRAMES = 4
SELECTIONS = ("union", "top1")


class DemoInputError(ValueError):
    """Bad input from the page: the message is one line meant for the user."""


def example_video() -> Path | None:
    """``examples/demo.mp4`` of a source checkout (the quick start's video), or None where it is absent."""
    path = Path(__file__).resolve().parents[2] / "examples" / "demo.mp4"
    return path if path.is_file() else None


@dataclass
class DemoResult:
    """What one Run produced, all under ``folder``: the ``segment`` output set (``0/``, ``1/``, ...,
    ``masks.json``, ``overlay.mp4``), ``masks.zip`` (the PNG folders), and one strip image per sentence with
    its caption. ``lines``: one summary line per sentence, as ``segment`` prints them."""

    folder: Path
    overlay: Path
    masks_json: Path
    masks_zip: Path
    strips: list[tuple[Path, str]]
    lines: list[str] = field(default_factory=list)


def parse_sentences(text: str | None) -> list[str]:
    """One sentence per non-blank line; no sentence at all is a :class:`DemoInputError`."""
    from .text import is_blank

    sentences = [line.strip() for line in (text or "").splitlines() if not is_blank(line)]
    if not sentences:
        raise DemoInputError("no sentence: type at least one, one per line")
    return sentences


def _frame_range(start, end) -> tuple[int, int | None]:
    def whole(value, name: str) -> int | None:
        if value is None or value == "":
            return None
        number = float(value)
        if not number.is_integer() or number < 0:
            raise DemoInputError(f"{name} must be a whole number >= 0, got {value}")
        return int(number)

    first = whole(start, "the first frame") or 0
    last = whole(end, "the end frame")
    if last is not None and last <= first:
        raise DemoInputError(f"the end frame ({last}) must be after the first frame ({first})")
    return first, last


class DemoEngine:
    """Runs the demo's requests; usable without Gradio (the tests call it directly too).

    models: label -> model name or path, as ``--model`` takes them (the first is the default); each is
    loaded on first use and kept. root: the folder for the sessions' files (default: a new temporary one,
    removed by :meth:`close`).
    """

    def __init__(self, models: dict[str, str | None] | None = None, *, device: str | None = None,
                 max_frames: int = DEFAULT_MAX_FRAMES, frame_chunk: int = 18, root: str | os.PathLike | None = None):
        from .pretrained import DEFAULT_MODEL

        self.models = dict(models) if models else {DEFAULT_MODEL: None}
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.device = device
        self.max_frames = max_frames
        self.frame_chunk = frame_chunk
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="ssa-rvos-demo-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._loaded: dict[str, object] = {}
        self._lock = threading.Lock()
        self.loads = 0  # how many times a model was read from disk (once per model per process)

    def model(self, label: str):
        """The model of ``label``, loaded once per process."""
        if label not in self.models:
            raise DemoInputError(f"unknown model {label!r}; choose one of: {', '.join(self.models)}")
        with self._lock:
            if label not in self._loaded:
                from .pretrained import load_pretrained
                from .runtime import resolve_device

                self._loaded[label] = load_pretrained(self.models[label], device=resolve_device(self.device))
                self.loads += 1
            return self._loaded[label]

    def session_folder(self, session: str) -> Path:
        if not session or os.sep in session or session in (".", ".."):
            raise ValueError(f"bad session name {session!r}")
        return self.root / session

    def end_session(self, session: str) -> None:
        """Remove a session's files (the page was closed)."""
        with contextlib.suppress(ValueError):
            shutil.rmtree(self.session_folder(session), ignore_errors=True)

    def close(self) -> None:
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def _open(self, video, images: Sequence[str | os.PathLike] | None):
        from .videoio import VideoError, open_video

        if images:
            source, what = [Path(p) for p in images], "the images"
        elif video:
            source, what = Path(video), Path(video).name
        else:
            raise DemoInputError("no video: upload a video file or frames as images")
        try:
            return open_video(source)
        except (VideoError, FileNotFoundError, ValueError, ImportError) as e:
            raise DemoInputError(_one_line(e, source, what)) from None

    def run(self, video: str | os.PathLike | None, texts: str | Sequence[str], *, session: str = "local",
            model: str | None = None, selection: str = "union", threshold: float = 0.5, start=0, end=None,
            images: Sequence[str | os.PathLike] | None = None, progress: bool = True) -> DemoResult:
        """Segment ``texts`` (a str of lines, or a list) in ``video`` (a file) or ``images`` (frame files,
        in name order) into this session's folder; the previous result of the session is replaced."""
        from .outputs import write_outputs
        from .predictor import SSAPredictor
        from .videoio import VideoError

        sentences = parse_sentences(texts) if isinstance(texts, str) else parse_sentences("\n".join(texts))
        if selection not in SELECTIONS:
            raise DemoInputError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
        if threshold is None or not 0 <= float(threshold) <= 1:
            raise DemoInputError(f"the threshold must be in [0, 1], got {threshold}")
        first, last = _frame_range(start, end)
        label = model or next(iter(self.models))
        source = self._open(video, images)
        total = source.num_frames
        wanted = None if total is None else max(0, min(total, last if last is not None else total) - first)
        if wanted is not None and wanted > self.max_frames:
            raise DemoInputError(f"the video has {wanted} frames in the chosen range; this server takes at most "
                                 f"{self.max_frames} (choose a shorter range)")
        if wanted == 0:
            raise DemoInputError(f"no frame in the chosen range (the video has {total} frames)")
        net = self.model(label)
        predictor = SSAPredictor(net, frame_chunk=self.frame_chunk, threshold=float(threshold), selection=selection)
        folder = self.session_folder(session)
        shutil.rmtree(folder, ignore_errors=True)  # the session's previous result
        out = folder / "result"
        # decode at most one frame more than the limit (where the count is unknown: to tell a long video apart)
        cap = first + self.max_frames + 1 if last is None else min(last, first + self.max_frames + 1)
        try:
            with predictor.init_state(source, start=first, end=cap, progress=progress) as state:
                if state.num_frames > self.max_frames:
                    raise DemoInputError(f"the video has more than {self.max_frames} frames in the chosen range; "
                                         "choose a shorter range")
                if state.num_frames == 0:
                    raise DemoInputError("no frame in the chosen range")
                run = predictor.propagate(state, sentences, progress=progress)
                summary = write_outputs(out, state, run, format="both", overlay=True,
                                        info={"model": self.models[label], "selection": selection,
                                              "threshold": float(threshold)})
                strips = self._strips(state, out, sentences, run.scores, folder)
        except VideoError as e:
            if "no frames in the selection" in str(e):
                raise DemoInputError(f"no frame in the chosen range: the video ends before frame {first}") from None
            raise DemoInputError(_one_line(e, video or "", "the video")) from None
        masks_zip = folder / "masks.zip"
        with zipfile.ZipFile(masks_zip, "w", zipfile.ZIP_DEFLATED) as z:
            for e in range(len(sentences)):
                for png in sorted((out / str(e)).iterdir()):
                    z.write(png, f"{e}/{png.name}")
        return DemoResult(folder=out, overlay=out / "overlay.mp4", masks_json=out / "masks.json", masks_zip=masks_zip,
                          strips=strips, lines=[s.line(e) for e, s in enumerate(summary.expressions)])

    def _strips(self, state, out: Path, sentences: list[str], scores, folder: Path) -> list[tuple[Path, str]]:
        """Per sentence, STRIP_FRAMES key frames in a 2 x 2 grid, in time order row by row (evenly spaced over
        the frames where its mask is not empty, or over all frames), with the mask in its overlay colour."""
        from PIL import Image

        from .data.masks import read_mask_png
        from .videoio import draw_overlay

        T = state.num_frames
        masks = [[read_mask_png(out / str(e) / f"{name}.png") > 0 for name in state.frame_names]
                 for e in range(len(sentences))]
        picks = []
        for e in range(len(sentences)):
            shown = [t for t in range(T) if masks[e][t].any()] or list(range(T))
            idx = np.linspace(0, len(shown) - 1, num=min(STRIP_FRAMES, len(shown))).round().astype(int)
            picks.append([shown[i] for i in idx])
        wanted = {t for p in picks for t in p}
        frames = {t: image for t, image in enumerate(state.original_frames()) if t in wanted}
        strips = []
        for e, sentence in enumerate(sentences):
            tiles = []
            for t in picks[e]:
                stack = np.zeros((len(sentences), *masks[e][t].shape), dtype=bool)
                stack[e] = masks[e][t]  # the sentence's own colour, as in the overlay video
                tiles.append(draw_overlay(frames[t], stack, []))
            while len(tiles) < STRIP_FRAMES:  # a short video: blank tiles keep the 2 x 2 layout
                tiles.append(np.full_like(tiles[0], 255))
            half = STRIP_FRAMES // 2  # 2 x 2 tiles: a square picture, as the page's gallery cells are
            grid = np.concatenate([np.concatenate(tiles[:half], axis=1), np.concatenate(tiles[half:], axis=1)])
            path = folder / f"strip_{e}.png"
            Image.fromarray(grid).save(path)
            top = f"top score {float(np.max(scores[e])):.2f}" if len(scores[e]) else "no query selected"
            strips.append((path, f"{e}: {sentence} ({top})"))
        return strips


def _one_line(error: BaseException, source, what: str) -> str:
    """The error on one line, naming the upload by its file name (not the server's temporary path)."""
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(source, (str, os.PathLike)) and str(source):
        text = text.replace(str(source), Path(source).name)
    return text if what in text else f"{what}: {text}"


# ------------------------------------------------------------------------------------------------- the page


def build_app(engine: DemoEngine, *, example: Path | None = None):
    """The Gradio page over ``engine`` (call ``.launch()`` on the result, or :func:`serve`)."""
    try:
        import gradio as gr
    except ImportError:
        raise ImportError('the web demo needs Gradio: pip install -e ".[demo]"') from None

    example = example if example is not None else example_video()

    def segment(video, images, texts, model, selection, threshold, start, end, request: gr.Request,
                progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - Gradio's way to ask for a progress bar
        try:
            result = engine.run(video, texts, session=request.session_hash or "anonymous", model=model,
                                selection=selection, threshold=threshold, start=start, end=end,
                                images=[getattr(f, "name", f) for f in images] if images else None)
        except DemoInputError as e:
            raise gr.Error(str(e), print_exception=False) from None
        status = "\n".join(f"- {line}" for line in result.lines)
        return (str(result.overlay), [(str(p), caption) for p, caption in result.strips], str(result.masks_zip),
                str(result.masks_json), status)

    def end_session(request: gr.Request):
        if request.session_hash:
            engine.end_session(request.session_hash)

    labels = list(engine.models)
    with gr.Blocks(title="ssa-rvos", delete_cache=(600, 3600), analytics_enabled=False) as app:
        gr.Markdown("# ssa-rvos: referring video object segmentation\nUpload a video, type one sentence per line, "
                    "press Run: every frame gets a mask of what each sentence refers to.")
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Video", sources=["upload"], height=300, elem_id="video-input")
                images = gr.File(label="... or its frames as images (in name order)", file_count="multiple",
                                 file_types=["image"], height=120, elem_id="images-input")
                texts = gr.Textbox(label="Sentences, one per line", lines=3, elem_id="sentences",
                                   placeholder="the star moving to the right")
                with gr.Accordion("Options", open=False):
                    model = gr.Dropdown(labels, value=labels[0], label="Model")
                    selection = gr.Radio(list(SELECTIONS), value="union", label="Selection",
                                         info="union: every query scoring above the threshold (MeViS); "
                                              "top1: the best one")
                    threshold = gr.Slider(0.0, 0.95, value=0.5, step=0.05, label="Score threshold (union)")
                    with gr.Row():
                        start = gr.Number(0, precision=0, minimum=0, label="First frame")
                        end = gr.Number(None, precision=0, minimum=1, label="End frame (exclusive; empty: the last)")
                run = gr.Button("Run", variant="primary", elem_id="run")
                if example is not None:
                    gr.Examples([[str(example), "the star moving to the right\nthe big white objects"]],
                                inputs=[video, texts], label="Example")
            with gr.Column(elem_id="result"):
                overlay = gr.Video(label="Overlay", autoplay=True, interactive=False, height=300, elem_id="overlay")
                status = gr.Markdown(elem_id="status")
                strips = gr.Gallery(label="Key frames per sentence", columns=2, object_fit="contain",
                                    height="auto", elem_id="strips")
                with gr.Row():
                    zip_button = gr.DownloadButton("PNG masks (zip)", elem_id="download-zip")
                    json_button = gr.DownloadButton("masks.json", elem_id="download-json")
        run.click(segment, inputs=[video, images, texts, model, selection, threshold, start, end],
                  outputs=[overlay, strips, zip_button, json_button, status], api_name="segment",
                  concurrency_limit=1)
        app.unload(end_session)
    app.queue(default_concurrency_limit=1)
    return app


def serve(engine: DemoEngine, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
          block: bool = True):
    """Build the page and start the server; with ``block`` it runs until interrupted, then removes the
    sessions' files. Returns the app (for ``block=False``; call ``app.close()`` and ``engine.close()``)."""
    app = build_app(engine)
    example = example_video()
    allowed = [str(engine.root)] + ([str(example.parent)] if example is not None else [])
    if not block:
        app.launch(server_name=host, server_port=port, share=share, allowed_paths=allowed,
                   prevent_thread_lock=True, quiet=True)
        return app
    # The server runs in Gradio's threads; this thread waits for Ctrl-C (or SIGTERM, which the command
    # line turns into the same interrupt) itself, so the shutdown does not depend on where it lands.
    try:
        app.launch(server_name=host, server_port=port, share=share, allowed_paths=allowed,
                   prevent_thread_lock=True, quiet=False)
        while True:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
        engine.close()
    return app
