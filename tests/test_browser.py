"""The dashboard in a real browser: ``streamlit run app.py`` driven by headless Chromium (playwright).

Visits every page, uploads a generated clip on the demo page, checks that the vote chart (plotly) appears and
that clicking a window plays it; screenshots go to ``test-artifacts/``. Skipped with a reason when Chromium or
playwright is missing.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import make_test_store

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("GENRELAB_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"streamlit did not answer on {url} within {timeout} s")


@pytest.fixture(scope="module")
def browser_home(tmp_path_factory, demo_model_dir):
    """A data folder with the demo model and a small built dataset (like a fresh install plus one build)."""
    from core.dataset import build_dataset
    from core.synth import make_dataset_folder

    home = tmp_path_factory.mktemp("browser-home")
    shutil.copytree(demo_model_dir, home / "models" / "synthetic-demo")
    src = make_dataset_folder(home / "sources" / "synth", n_classes=4, per_class=5, seconds=9.0)
    build_dataset(src, home / "datasets" / "synth", workers=1)
    make_test_store(home / "experiments", ["bass", "noise", "pulse", "tone"])  # test results, made up
    return home


SERVER: dict = {}


@pytest.fixture(scope="module")
def server(browser_home):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, GENRELAB_HOME=str(browser_home), TF_CPP_MIN_LOG_LEVEL="2")
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "streamlit-server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    SERVER["pid"] = proc.pid
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@pytest.fixture(scope="module")
def page(server):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
        pg = ctx.new_page()
        pg.set_default_timeout(90_000)
        try:
            yield pg
        finally:
            ctx.close()
            browser.close()


def _settle(pg) -> None:
    """Wait until Streamlit has finished running the script (no 'running' status widget)."""
    pg.wait_for_timeout(500)
    for _ in range(240):
        if pg.locator('[data-testid="stStatusWidget"]').count() == 0:
            break
        pg.wait_for_timeout(250)
    pg.wait_for_timeout(800)


def _shot(pg, name: str) -> None:
    """Screenshot of the whole page: Streamlit scrolls inside its main block, so grow the viewport to fit."""
    height = pg.evaluate("() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
                         " return Math.max(m ? m.scrollHeight : 0, document.body.scrollHeight); }")
    pg.set_viewport_size({"width": 1400, "height": min(max(int(height) + 40, 900), 6000)})
    pg.wait_for_timeout(700)
    pg.screenshot(path=str(ARTIFACTS / name), full_page=True)
    pg.set_viewport_size({"width": 1400, "height": 1000})


def _no_error(pg) -> None:
    assert pg.locator('[data-testid="stException"]').count() == 0, "a Python exception is shown"
    assert pg.get_by_text("Traceback").count() == 0


def test_deep_link_first(page, server):
    """The very first request of a fresh server goes to a sub-page: it must still run through app.py
    (titled navigation, wide layout), not as a stand-alone script."""
    page.goto(f"{server}/demo")
    page.get_by_role("heading", name="Demo: classify a clip").wait_for()
    _settle(page)
    nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
    assert "Experiment" in nav and "app" not in nav.split(), nav
    _no_error(page)


def test_home(page, server):
    page.goto(server)
    page.get_by_role("heading", name="Genre Lab").wait_for()
    page.locator('img[alt="the divide-and-conquer idea, computed"]').first.wait_for()
    _settle(page)
    _no_error(page)
    assert page.locator(".js-plotly-plot").count() == 0  # static SVG: no plotly.js on the first page
    _shot(page, "01-home.png")


def test_data(page, server):
    page.goto(f"{server}/data")
    page.get_by_role("heading", name="Data", exact=True).wait_for()
    page.get_by_text("Explore a track").wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    _settle(page)
    _no_error(page)
    assert page.locator(".js-plotly-plot").count() >= 3  # counts, waveform, mel spectrogram
    _shot(page, "02-data.png")


def test_experiment(page, server):
    page.goto(f"{server}/experiment")
    page.get_by_role("heading", name="Experiment", exact=True).wait_for()
    page.get_by_role("heading", name="Run an experiment").wait_for()
    page.get_by_text("Segment vs track vs 30 s").wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    _settle(page)
    _no_error(page)
    _shot(page, "03-experiment.png")
    for i, tab in enumerate(["Learning curves", "Confusion matrix", "Aggregation"]):
        page.get_by_role("tab", name=tab).click()
        page.wait_for_timeout(1200)
        _no_error(page)
        panel = page.locator('[data-baseweb="tab-panel"]:visible, [role="tabpanel"]:visible').first
        panel.screenshot(path=str(ARTIFACTS / f"03{'bcd'[i]}-experiment-{tab.split()[0].lower()}.png"))


def test_demo_upload(page, server, tmp_path):
    from core.synth import demo_clip_wav

    clip = tmp_path / "generated-tone.wav"
    clip.write_bytes(demo_clip_wav(1, 12.0))  # class "tone"
    page.goto(f"{server}/demo")
    page.get_by_role("heading", name="Demo: classify a clip").wait_for()
    _settle(page)
    page.locator('input[type="file"]').first.set_input_files(str(clip))
    page.get_by_text("Predicted genre").wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    _settle(page)
    _no_error(page)
    predicted = page.locator('[data-testid="stMetricValue"]').first.inner_text().strip()
    shipped = list((ROOT / "models").glob("*/model_card.json"))
    if shipped:  # a shipped model is the default choice: its answer is one of its classes
        classes = {c for p in shipped for c in json.loads(p.read_text())["classes"]}
        assert predicted in classes
    else:  # only the synthetic demo model: it knows this sound
        assert predicted == "tone"
    assert page.locator('[data-testid="stAudio"], audio').count() >= 1
    _shot(page, "04-demo.png")
    _record_server_memory()
    # click the third window's column: the caption and the audio follow the click
    chart = page.locator(".js-plotly-plot").first
    chart.scroll_into_view_if_needed()
    boxes = [b for b in (p.bounding_box() for p in chart.locator(".barlayer .point path").all())
             if b and b["height"] > 20 and b["width"] < 200]
    columns = sorted({round(b["x"]): b for b in boxes}.values(), key=lambda b: b["x"])
    assert len(columns) >= 3, "the vote chart has fewer than three window columns"
    target = columns[2]
    page.mouse.click(target["x"] + target["width"] / 2, target["y"] + target["height"] / 2)
    page.get_by_text("Window 3 of").wait_for(timeout=30_000)
    _settle(page)
    _no_error(page)
    _shot(page, "05-demo-window.png")


def _record_server_memory() -> None:
    """The server's resident memory after a classification, and proof that TensorFlow is not loaded
    (the demo runs its models in NumPy, core.numpy_model)."""
    pid = SERVER.get("pid")
    status, maps = Path(f"/proc/{pid}/status"), Path(f"/proc/{pid}/maps")
    if not pid or not status.exists():
        return
    fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
    rss, peak = fields.get("VmRSS", "?").strip(), fields.get("VmHWM", "?").strip()
    tf_loaded = "tensorflow" in maps.read_text()
    (ARTIFACTS / "server-memory.txt").write_text(
        f"streamlit server after a demo classification: VmRSS {rss}, peak (VmHWM) {peak}, "
        f"TensorFlow loaded: {tf_loaded}\n")
    assert not tf_loaded, "the demo path imported TensorFlow"


def test_demo_bad_upload(page, server, tmp_path):
    bad = tmp_path / "not-audio.mp3"
    bad.write_bytes(b"this is not an mp3 file at all" * 40)
    page.goto(f"{server}/demo")
    page.get_by_role("heading", name="Demo: classify a clip").wait_for()
    _settle(page)
    page.locator('input[type="file"]').first.set_input_files(str(bad))
    page.get_by_text("could not be read").wait_for()
    _settle(page)
    _no_error(page)
    _shot(page, "06-demo-bad-upload.png")


# ---------------------------------------------------------------------------------------------------------
# first use (issue 11): no Enter-key trap in the build form, the model card never pushes the demo down
# ---------------------------------------------------------------------------------------------------------
def _builds(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "jobs").glob("build-*")) if (home / "jobs").is_dir() else []


def test_enter_in_the_build_form_starts_nothing(page, server, browser_home):
    page.goto(f"{server}/data")
    page.get_by_role("heading", name="Data", exact=True).wait_for()
    page.get_by_text("2 · Build a dataset").wait_for()
    _settle(page)
    before = _builds(browser_home)
    page.get_by_text("Split and scope").click()
    tracks = page.get_by_role("spinbutton", name="Tracks per class")
    tracks.fill("10")
    tracks.press("Enter")  # used to submit the form: a build named after the default started
    _settle(page)
    name = page.get_by_role("textbox", name="Dataset name")
    name.fill("renamed")
    name.press("Enter")
    _settle(page)
    page.wait_for_timeout(2000)
    assert _builds(browser_home) == before, "Enter in a form field started a build"
    assert page.get_by_text("Building").count() == 0
    _no_error(page)
    _shot(page, "07-data-enter-starts-nothing.png")
    # the button does submit; the same audio with the same parameters as an existing dataset is refused
    tracks.fill("0")
    page.get_by_role("button", name="Build dataset").click()
    page.get_by_text("was built already from this audio with the same parameters").wait_for(timeout=30_000)
    _settle(page)
    assert _builds(browser_home) == before
    _shot(page, "08-data-identical-build-refused.png")


def test_demo_model_card_keeps_the_input_in_place(page, server, tmp_path):
    from core.synth import demo_clip_wav

    page.goto(f"{server}/demo")
    page.get_by_role("heading", name="Demo: classify a clip").wait_for()
    _settle(page)
    uploader = page.locator('[data-testid="stFileUploader"]').first
    y_closed = uploader.bounding_box()["y"]
    card = page.locator('[data-testid="stExpander"]').filter(has_text="Model card").first
    card.locator("summary").click()
    page.wait_for_timeout(1000)
    _settle(page)
    y_open = uploader.bounding_box()["y"]
    assert abs(y_open - y_closed) < 2, f"opening the model card moved the uploader by {y_open - y_closed:.0f} px"
    card_box = card.bounding_box()
    assert card_box["y"] > y_open, "the model card is above the input"
    title = page.locator('[data-testid="stHeading"]').first.bounding_box()  # a full-width block
    assert card_box["width"] > 0.97 * title["width"], "the model card is not full-width"
    _no_error(page)
    _shot(page, "09-demo-model-card-open.png")
    card.locator("summary").click()  # close it again

    clip = tmp_path / "four-minutes.wav"
    clip.write_bytes(demo_clip_wav(2, 240.0))  # a long clip: large sums in the side bars
    uploader.locator('input[type="file"]').set_input_files(str(clip))
    page.get_by_text("Predicted genre").wait_for(timeout=120_000)
    chart = page.locator(".js-plotly-plot").first
    chart.wait_for()
    _settle(page)
    chart.scroll_into_view_if_needed()
    chart.hover()
    page.wait_for_timeout(500)
    modebar = chart.locator(".modebar")
    assert modebar.count() == 0 or not modebar.first.is_visible(), "the plotly toolbar shows on the vote chart"
    labels = [t for t in chart.locator("text.bartext").all() if t.is_visible()]
    boxes = [t.bounding_box() for t in labels]
    assert boxes, "the side bars have no value labels"
    for b in boxes:
        assert b["width"] > b["height"], "a value label is rotated"
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            overlap = not (a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]
                           or a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"])
            assert not overlap, "two value labels of the side bars overlap"
    chart.screenshot(path=str(ARTIFACTS / "10-demo-vote-chart-long-clip.png"))
    titles = [t.text_content() or "" for t in chart.locator("g.annotation text").all()]
    assert any("sum of scores" in t for t in titles), titles
    _no_error(page)


# ---------------------------------------------------------------------------------------------------------
# issue 19: the musicnn model on the demo page, in NumPy, within a small host's memory
# ---------------------------------------------------------------------------------------------------------
#: Streamlit Community Cloud's smallest apps get 690 MB. The server (Streamlit, plotly, the pages, every model
#: used so far) must stay below it with room to spare for the interpreter's own growth between runs: 600 MB,
#: for the whole process tree at its peak. With TensorFlow the same page took the server from 355 to 962 MB.
SERVER_MEMORY_BOUND_MB = 600


def _tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _classify_one_minute_in_the_demo(page, server, tmp_path, model: str, summary: str, windows: int,
                                     bound_mb: float = SERVER_MEMORY_BOUND_MB) -> None:
    """Pick the shipped ``model`` on the demo page, classify a generated one-minute clip (44.1 kHz stereo) and check
    ``windows`` columns, no TensorFlow in the server and its peak memory (written to the artifacts)."""
    import re

    import numpy as np
    import soundfile as sf

    from core.synth import synth_clip

    if not (ROOT / "models" / model / "model_card.json").is_file():
        pytest.skip(f"the shipped model models/{model} is absent")
    pid = SERVER.get("pid")
    before_rss = sum(_status_kb(p, "VmRSS") for p in _tree_pids(pid)) / 1e3
    before_peak = _status_kb(pid, "VmHWM") / 1e3  # the earlier pages' peak
    clip = tmp_path / "one-minute.wav"  # a minute of generated music-like sound
    sf.write(clip, np.stack([synth_clip(0, 60.0, 44100, seed=1), synth_clip(2, 60.0, 44100, seed=2)], 1) * 0.5,
             44100)
    page.goto(f"{server}/demo")
    page.get_by_role("heading", name="Demo: classify a clip").wait_for()
    _settle(page)
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text="Model").first
    box.click()
    page.get_by_role("option", name=re.compile(rf"^{re.escape(model)}")).click()
    _settle(page)
    page.get_by_text(summary).first.wait_for()  # the one-line summary of the model
    page.locator('input[type="file"]').first.set_input_files(str(clip))
    page.get_by_text("Predicted genre").wait_for(timeout=180_000)
    page.locator(".js-plotly-plot").first.wait_for()
    _settle(page)
    _no_error(page)
    metrics = [m.inner_text().strip() for m in page.locator('[data-testid="stMetricValue"]').all()]
    assert metrics[0] in ("classical", "electronic", "pop", "rock") and metrics[2] == str(windows), metrics
    chart = page.locator(".js-plotly-plot").first
    assert chart.locator(".barlayer .point path").count() >= windows * 4  # a column per window and class
    _shot(page, f"11-demo-{model}.png")
    pids = _tree_pids(pid)
    rss = sum(_status_kb(p, "VmRSS") for p in pids) / 1e3
    peak = _status_kb(pid, "VmHWM") / 1e3 + sum(_status_kb(p, "VmHWM") for p in pids[1:]) / 1e3
    tf_loaded = any("tensorflow" in Path(f"/proc/{p}/maps").read_text() for p in pids if Path(f"/proc/{p}/maps").exists())
    (ARTIFACTS / f"server-memory-{model}.txt").write_text(
        f"streamlit server tree ({len(pids)} processes) before the {model} page: {before_rss:.0f} MB resident "
        f"(peak so far {before_peak:.0f} MB); "
        f"after classifying a one-minute clip with {model}: {rss:.0f} MB resident, peak {peak:.0f} MB "
        f"(bound {bound_mb:.0f} MB); TensorFlow loaded: {tf_loaded}\n")
    assert not tf_loaded, "the demo path imported TensorFlow"
    assert peak < bound_mb, f"server peak {peak:.0f} MB (resident now {rss:.0f} MB)"


def test_demo_musicnn_model_runs_in_numpy_within_a_small_hosts_memory(page, server, tmp_path):
    _classify_one_minute_in_the_demo(page, server, tmp_path, "emotify-musicnn", "pretrained musicnn embeddings", 58)


def test_demo_crnn_ensemble_scores_its_members_on_threads_within_a_small_hosts_memory(page, server, tmp_path):
    """The 15 members of the shipped ensemble on the server's threads: windows every 1.5 s (38 in this 60.0 s clip).
    The server has held the musicnn model too by now (the demo keeps two): its peak stays under Community Cloud's
    smallest memory, 690 MB (measured: 589 MB here; 335 MB for a fresh server that classifies with the ensemble
    only, 315 MB with GENRELAB_THREADS=1)."""
    _classify_one_minute_in_the_demo(page, server, tmp_path, "emotify-crnn", "ensemble of 15", 38, bound_mb=690)
