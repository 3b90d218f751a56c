"""The web demo (`ssa-rvos demo`): the engine under the page, the page through the real Gradio client, and
the page in a real headless Chromium. All on CPU with the bundled model and examples/demo.mp4."""

import json
import os
import shutil
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ssa_rvos.cli import main
from ssa_rvos.data.masks import read_mask_png, rle_decode
from ssa_rvos.demo import DemoEngine, DemoInputError, build_app, example_video

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "demo.mp4"
SENTENCES = ["the star moving to the right", "the big white objects"]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    engine = DemoEngine(root=tmp_path_factory.mktemp("demo_sessions"), max_frames=40)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def server(engine):
    """The page served in this process on a free loopback port; yields its URL."""
    pytest.importorskip("gradio")
    app = build_app(engine)
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
               allowed_paths=[str(engine.root), str(DEMO.parent)])
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture(scope="module")
def segment_outputs(tmp_path_factory):
    """`ssa-rvos segment` on the demo with the page's output options: the reference the page must equal."""
    out = tmp_path_factory.mktemp("segment") / "out"
    args = ["segment", str(DEMO), "--output", str(out), "--format", "both", "--overlay", "--quiet"]
    assert main(args + [a for s in SENTENCES for a in ("--text", s)]) == 0
    return out


def _masks_of(masks_json: Path) -> list[np.ndarray]:
    data = json.loads(masks_json.read_text())
    return [np.stack([rle_decode(r) for r in e["masks"]]) for e in data["expressions"]]


def test_example_video_is_the_quick_start_video():
    assert example_video() == DEMO


def test_engine_writes_what_segment_writes(engine, segment_outputs):
    result = engine.run(str(DEMO), "\n".join(SENTENCES), session="engine-test", progress=False)
    for e in range(len(SENTENCES)):
        ours = sorted(p.name for p in (result.folder / str(e)).iterdir())
        assert ours == sorted(p.name for p in (segment_outputs / str(e)).iterdir())
        for name in ours:
            assert np.array_equal(read_mask_png(result.folder / str(e) / name),
                                  read_mask_png(segment_outputs / str(e) / name)), (e, name)
    ours, theirs = json.loads(result.masks_json.read_text()), json.loads((segment_outputs / "masks.json").read_text())
    assert ours["expressions"] == theirs["expressions"]  # texts, RLEs, selected queries and scores
    assert result.overlay.stat().st_size > 0
    with zipfile.ZipFile(result.masks_zip) as z:
        assert sorted(z.namelist()) == sorted(f"{e}/{p.name}" for e in range(len(SENTENCES))
                                              for p in (segment_outputs / str(e)).iterdir())
    assert [caption.split(" (")[0] for _, caption in result.strips] == [f"{e}: {s}" for e, s in enumerate(SENTENCES)]
    for path, _ in result.strips:
        assert path.is_file()
    engine.end_session("engine-test")
    assert not (engine.root / "engine-test").exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(texts="  \n\t\n"), "no sentence"),
    (dict(video=None), "no video"),
    (dict(selection="all"), "selection must be one of union, top1"),
    (dict(threshold=1.5), "threshold must be in [0, 1]"),
    (dict(start=5, end=5), "must be after the first frame"),
    (dict(start=2.5), "whole number"),
    (dict(start=20), "no frame in the chosen range"),
    (dict(model="nope"), "unknown model 'nope'"),
])
def test_engine_refuses_bad_requests_in_one_line(engine, kwargs, message):
    request = {"video": str(DEMO), "texts": "the star", "progress": False, **kwargs}
    with pytest.raises(DemoInputError) as caught:
        engine.run(request.pop("video"), request.pop("texts"), **request)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_engine_limits_the_video_length(tmp_path):
    engine = DemoEngine(root=tmp_path, max_frames=5)
    with pytest.raises(DemoInputError, match="more than 5 frames"):
        engine.run(str(DEMO), "the star", progress=False)
    result = engine.run(str(DEMO), "the star", start=2, end=7, progress=False)  # a range within the limit works
    assert sorted(p.name for p in (result.folder / "0").iterdir()) == [f"{t:05d}.png" for t in range(2, 7)]


def test_engine_reads_frames_given_as_images(engine, tmp_path):
    from PIL import Image

    from ssa_rvos.videoio import open_video

    frames = tmp_path / "frames"
    frames.mkdir()
    for f in open_video(str(DEMO)).frames():
        Image.fromarray(f.image).save(frames / f"{f.index:05d}.png")
    result = engine.run(None, "the star", images=sorted(frames.iterdir()), session="images", progress=False)
    assert main(["segment", str(frames), "--text", "the star", "-o", str(tmp_path / "ref_images"), "--quiet"]) == 0
    for png in (tmp_path / "ref_images" / "0").iterdir():
        assert np.array_equal(read_mask_png(result.folder / "0" / png.name), read_mask_png(png))


def test_model_is_loaded_once_per_process(engine):
    first = engine.model(next(iter(engine.models)))
    assert engine.model(next(iter(engine.models))) is first
    assert engine.loads == 1


# ------------------------------------------------------------------------------ the page, Gradio's client


def test_page_through_gradio_client(server, segment_outputs, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server, verbose=False, download_files=str(tmp_path))
    fake = tmp_path / "holiday.mp4"
    fake.write_text("this is a text file, not a video\n")
    options = ("ssa_tiny.synthref", "union", 0.5, 0, None)
    with pytest.raises(AppError, match=r"holiday\.mp4: not a readable video"):
        client.predict(handle_file(str(fake)), None, "the star", *options, api_name="/segment")
    with pytest.raises(AppError, match="no sentence"):
        client.predict(handle_file(str(DEMO)), None, " \n ", *options, api_name="/segment")
    # the server keeps running: the next request works
    overlay, strips, masks_zip, masks_json, status = client.predict(
        handle_file(str(DEMO)), None, "\n".join(SENTENCES), *options, api_name="/segment")
    assert Path(overlay).stat().st_size > 0
    assert [s["caption"].split(" (")[0] for s in strips] == [f"{e}: {s}" for e, s in enumerate(SENTENCES)]
    for ours, theirs in zip(_masks_of(Path(masks_json)), _masks_of(segment_outputs / "masks.json")):
        assert np.array_equal(ours, theirs)
    with zipfile.ZipFile(masks_zip) as z:
        for e in range(len(SENTENCES)):
            for png in (segment_outputs / str(e)).iterdir():
                assert np.array_equal(_png_from_bytes(z.read(f"{e}/{png.name}")) > 0, read_mask_png(png) > 0)
    for sentence in SENTENCES:
        assert sentence in status


def _png_from_bytes(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


# ------------------------------------------------------------------------------ the page, a real browser


def _chromium(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def test_page_in_headless_chromium(server, engine, tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("SSA_RVOS_REQUIRE_BROWSER"):
            pytest.fail("chromium and chromedriver are not installed (.ci/run installs them)")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    sentence = SENTENCES[0]
    before = set(engine.root.iterdir())
    driver = _chromium(tmp_path)
    try:
        driver.get(server)
        wait = WebDriverWait(driver, 40)
        upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#video-input input[type=file]")))
        upload.send_keys(str(DEMO))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#video-input video")))
        driver.find_element(By.CSS_SELECTOR, "#sentences textarea").send_keys(sentence)
        driver.find_element(By.CSS_SELECTOR, "#run").click()
        video = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#overlay video[src]")))
        assert video.get_attribute("src")
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#status"), sentence))
        status = driver.find_element(By.CSS_SELECTOR, "#status").text
        shown = int(status.split("mask in ")[1].split("/")[0])
        assert shown > 0, status  # a non-empty mask on some frame
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#strips img")))
        shot = tmp_path / "demo.png"
        assert driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("SSA_RVOS_DEMO_SCREENSHOT"):  # how docs/images/demo.png is made
            shutil.copyfile(shot, os.environ["SSA_RVOS_DEMO_SCREENSHOT"])
        (session,) = set(engine.root.iterdir()) - before  # this page's files
    finally:
        driver.quit()
    # closing the page ends the session: its files go
    import time

    deadline = time.monotonic() + 30
    while session.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not session.exists()


# ------------------------------------------------------------------------------ the command and the Space


def test_demo_command_serves_the_page_and_cleans_up(tmp_path):
    import signal
    import subprocess
    import sys
    import threading
    import time
    import urllib.request

    port = _free_port()
    # PYTHONFAULTHANDLER: if the server hangs, SIGABRT makes it print every thread's stack into the failure
    env = {**os.environ, "TMPDIR": str(tmp_path), "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ssa_rvos", "demo", "--port", str(port), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()

    def stacks() -> str:
        """The child's output, with every thread's stack when it is still running."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGABRT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(timeout=10)
        return "".join(lines)[-8000:] or "no output"

    try:
        deadline, page = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert page is not None and "ssa-rvos" in page, stacks()
        assert list(tmp_path.glob("ssa-rvos-demo-*")), "the sessions' folder"
        # Ctrl-C once the server is waiting for requests (Gradio prints its address when it is)
        while time.monotonic() < deadline and not any("Running on" in line for line in lines):
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server did not stop on Ctrl-C:\n{stacks()}")
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines)
    assert proc.returncode == 0, out[-3000:]
    assert f"serving on http://127.0.0.1:{port}" in out
    assert not list(tmp_path.glob("ssa-rvos-demo-*")), "the sessions' folder is removed when the server stops"


@pytest.mark.parametrize("args, message", [
    (["--model", "no_such_model"], "--model:"),
    (["--port", "0"], "--port must be in 1..65535"),
    (["--max-frames", "0"], "--max-frames must be >= 1"),
    (["--device", "tpu"], "--device:"),
])
def test_demo_command_refuses_bad_options(args, message, capsys):
    assert main(["demo", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_space_app_builds_the_page(monkeypatch, tmp_path):
    import runpy

    import gradio as gr

    monkeypatch.setenv("SSA_RVOS_MAX_FRAMES", "7")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    space = runpy.run_path(str(REPO / "space" / "app.py"), run_name="space_app")
    try:
        assert isinstance(space["demo"], gr.Blocks)
        assert space["engine"].max_frames == 7 and list(space["engine"].models) == ["ssa_tiny.synthref"]
        assert "segment" in [fn.api_name for fn in space["demo"].fns.values()]
    finally:
        space["engine"].close()
