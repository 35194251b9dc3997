"""Screenshots of the dashboard for the README: ``python bench/screenshots.py [--clip PATH]``.

Starts ``streamlit run app.py`` on a free port with ``GENRELAB_HOME`` pointing to an empty temporary folder, so
the pages look as they do in a fresh clone (only the shipped models in ``models/`` and the shipped reference
results in ``results/reference/``), drives headless Chromium (playwright) through home, data, experiment and
demo, uploads a clip on the demo page and waits for the vote chart, and writes
``docs/screenshots/{home,data,experiment,demo}.png`` (1400 px wide, at most ~2200 px tall, under ~600 KB:
larger PNGs are re-encoded with a 256-colour palette). Stops the server when done.

``--clip PATH`` is the clip uploaded on the demo page (default: a generated ``core.synth`` clip; pass real
music for the README). Where no model is shipped yet the demo page shows how to get one, and that is what
gets captured; ``--demo-model`` trains the tiny synthetic demo model into the temporary data folder first, to
check the upload path anyway. ``--dataset-from DIR`` builds a small dataset (``--per-class`` tracks per
class) from a class-folder tree into the temporary data folder, so the data page shows its overview and
explorer instead of the empty state (and the experiment page its run form); the data folder is
``/tmp/genre-lab/data`` (removed afterwards) so that the path the pages print stays plain.

Needs ``playwright`` (the Python package) and Chromium (``/usr/bin/chromium``, or ``$GENRELAB_CHROMIUM``).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHROMIUM = os.environ.get("GENRELAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WIDTH, MIN_HEIGHT, MAX_HEIGHT = 1400, 900, 2200
MAX_BYTES = 600_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, GENRELAB_HOME=str(home), TF_CPP_MIN_LOG_LEVEL="2")
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    t0 = time.time()
    while time.time() - t0 < 120:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return proc, url
        except OSError:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise TimeoutError(f"streamlit did not answer on {url} within 120 s; see {log_path}")


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the server this script started (its own process group: streamlit and nothing else)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def settle(pg) -> None:
    """Wait until Streamlit has finished running the script and the charts have drawn."""
    pg.wait_for_timeout(600)
    for _ in range(480):
        if pg.locator('[data-testid="stStatusWidget"]').count() == 0:
            break
        pg.wait_for_timeout(250)
    pg.wait_for_timeout(1200)


def check_no_error(pg, name: str) -> None:
    if pg.locator('[data-testid="stException"]').count() or pg.get_by_text("Traceback").count():
        print(f"warning: the {name} page shows an exception", file=sys.stderr)
    for e in pg.locator('[data-testid="stAlertContentError"]').all():
        print(f"warning: the {name} page shows an error: {e.inner_text()[:200]}", file=sys.stderr)


#: Bottom of the page's last element (Streamlit pads its main block generously below the content).
CONTENT_HEIGHT_JS = """() => {
  const main = document.querySelector('[data-testid="stMain"]');
  if (main) main.scrollTo(0, 0);
  const block = document.querySelector('[data-testid="stMainBlockContainer"]');
  if (!block) return Math.max(main ? main.scrollHeight : 0, document.body.scrollHeight);
  let bottom = 0;
  for (const e of block.querySelectorAll('[data-testid="stVerticalBlock"] > *')) {
    const r = e.getBoundingClientRect();  // (a closed expander's content has a size but is not visible)
    if (r.height > 0 && (!e.checkVisibility || e.checkVisibility())) bottom = Math.max(bottom, r.bottom);
  }
  return bottom + 48;
}"""


def shot(pg, path: Path) -> None:
    """The page from the top, as tall as its content (Streamlit scrolls inside its main block) up to
    MAX_HEIGHT; re-encoded with a palette when the PNG is over MAX_BYTES."""
    height = pg.evaluate(CONTENT_HEIGHT_JS)
    pg.set_viewport_size({"width": WIDTH, "height": min(max(int(height) + 24, MIN_HEIGHT), MAX_HEIGHT)})
    pg.wait_for_timeout(900)  # plotly re-lays out on resize
    pg.evaluate("() => { const m = document.querySelector('[data-testid=\"stMain\"]'); if (m) m.scrollTo(0, 0); }")
    pg.wait_for_timeout(300)
    path.parent.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(path), type="png")
    pg.set_viewport_size({"width": WIDTH, "height": 1000})
    if path.stat().st_size > MAX_BYTES:
        from PIL import Image

        with Image.open(path) as im:
            im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE) \
                .save(path, optimize=True)
    print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {path.stat().st_size / 1000:.0f} KB")


def take(url: str, out: Path, clip: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        ctx = browser.new_context(viewport={"width": WIDTH, "height": 1000})
        pg = ctx.new_page()
        pg.set_default_timeout(120_000)
        try:
            pg.goto(url)
            pg.get_by_role("heading", name="Genre Lab").wait_for()
            pg.locator('img[alt="the divide-and-conquer idea, computed"]').first.wait_for()
            settle(pg)
            check_no_error(pg, "home")
            shot(pg, out / "home.png")

            for page, heading, results_text, missing in (
                    ("data", "Data", "Explore a track", None),
                    ("experiment", "Experiment", "Segment vs track vs 30 s",
                     "note: no results on the experiment page (no reference results shipped yet)")):
                pg.goto(f"{url}/{page}")
                pg.get_by_role("heading", name=heading, exact=True).wait_for()
                settle(pg)
                if pg.get_by_text(results_text).count():  # its charts: wait until plotly has drawn them
                    pg.locator(".js-plotly-plot").first.wait_for()
                    settle(pg)
                elif missing:
                    print(missing, file=sys.stderr)
                check_no_error(pg, page)
                shot(pg, out / f"{page}.png")

            pg.goto(f"{url}/demo")
            pg.get_by_role("heading", name="Demo: classify a clip").wait_for()
            settle(pg)
            if pg.locator('input[type="file"]').count():
                pg.locator('input[type="file"]').first.set_input_files(str(clip))
                pg.get_by_text("Predicted genre").wait_for()
                pg.locator(".js-plotly-plot").first.wait_for()
                settle(pg)
            else:
                print("note: no model on the demo page (none shipped in models/ yet): capturing the page as is",
                      file=sys.stderr)
            check_no_error(pg, "demo")
            shot(pg, out / "demo.png")
        finally:
            ctx.close()
            browser.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip", type=Path, help="audio file uploaded on the demo page (default: a generated clip)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="output folder (%(default)s)")
    ap.add_argument("--demo-model", action="store_true",
                    help="train the tiny synthetic demo model into the temporary data folder first (to check the "
                         "demo's upload path while no model is shipped); not for README screenshots")
    ap.add_argument("--dataset-from", type=Path, metavar="DIR",
                    help="build a small dataset from this class-folder tree first, so the data page shows a dataset")
    ap.add_argument("--per-class", type=int, default=10, help="tracks per class for --dataset-from (%(default)s)")
    a = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"error: Chromium not found at {CHROMIUM} (apt-get install chromium, or set GENRELAB_CHROMIUM)",
              file=sys.stderr)
        return 2
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        print("error: playwright is not installed (pip install playwright)", file=sys.stderr)
        return 2
    if a.clip is not None and not a.clip.is_file():
        print(f"error: no such clip: {a.clip}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.gettempdir()) / "genre-lab"  # the pages print the data folder: keep it plain
    try:
        tmp.mkdir()
    except FileExistsError:  # another run's, or someone's: not ours to reuse
        tmp = Path(tempfile.mkdtemp(prefix="genre-lab-"))
    try:
        home = tmp / "data"
        home.mkdir()
        clip = a.clip
        if clip is None:
            from core.synth import demo_clip_wav

            clip = tmp / "generated-tone.wav"
            clip.write_bytes(demo_clip_wav(1, 20.0))
        if a.demo_model:
            from core.synth import DEMO_MODEL_NAME, train_demo_model

            print("training the synthetic demo model ...", file=sys.stderr)
            train_demo_model(home / "models" / DEMO_MODEL_NAME)
        if a.dataset_from is not None:
            from core.dataset import build_dataset

            print(f"building a dataset from {a.dataset_from} ({a.per_class} tracks per class) ...", file=sys.stderr)
            build_dataset(a.dataset_from, home / "datasets" / a.dataset_from.resolve().name, workers=1,
                          limit_per_class=a.per_class)
        log_path = tmp / "streamlit.log"
        proc, url = start_server(home, log_path)
        try:
            take(url, a.out.resolve(), clip.resolve())
        except Exception:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
            print(f"--- streamlit log (last lines) ---\n{tail}", file=sys.stderr)
            raise
        finally:
            stop_server(proc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
