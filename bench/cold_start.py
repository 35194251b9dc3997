"""Cold start: the dashboard's first page view on a fresh server, and ``python -m core predict`` of one file.

* **First page view, cold server**: a fresh ``streamlit run app.py`` (new process, empty ``NUMBA_CACHE_DIR``,
  an empty data home: a fresh clone's view) and headless Chromium (playwright) that asks for the home page as
  soon as the server answers its health check. Measured from spawning the server until the home page's
  content is visible (its "The idea, computed" heading and the divide-and-conquer figure, a static SVG), and
  from the browser's request alone; then a reload of the same page (warm server). Repeated on new servers.
* **predict, cold and warm**: ``python -m core predict --model models/emotify-crnn CLIP`` in a fresh process:
  cold = the first run with an empty ``NUMBA_CACHE_DIR``, warm = the median of the next runs (same cache dir).
  Wall time of the whole command, its CPU time (user + system: less sensitive to other work on a shared
  machine) and its peak resident memory. The same with ``GENRELAB_INFERENCE=keras``
  (the Keras predictor: TensorFlow imported) as the baseline.

Goals (issue 11): first page view < 5 s cold, predict < 3 s cold and < 1.5 s warm.
Usage: ``python bench/cold_start.py [--clip SONG] [--repeats 3] [--page-repeats 3] [--no-page] [--no-baseline]
[--json OUT]``
(the default clip is a generated 60 s, 44.1 kHz stereo WAV, so decoding and resampling are part of it).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHROMIUM = os.environ.get("GENRELAB_CHROMIUM", "/usr/bin/chromium")
MODEL = ROOT / "models" / "emotify-crnn"


def _env(numba_dir: Path, home: Path | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(numba_dir), TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    if home is not None:
        env["GENRELAB_HOME"] = str(home)
    env.update(extra)
    return env


def _run_timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int, str, float]:
    """(wall seconds, peak RSS in MB, exit code, stdout, CPU seconds) of one fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = proc.stdout.read().decode("utf-8", "replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, proc.returncode, out, usage.ru_utime + usage.ru_stime


def bench_predict(clip: Path, repeats: int, keras: bool) -> dict:
    numba_dir = Path(tempfile.mkdtemp(prefix="genrelab-bench-numba-"))
    extra = {"GENRELAB_INFERENCE": "keras"} if keras else {}
    cmd = [sys.executable, "-m", "core", "predict", "--model", str(MODEL), str(clip)]
    try:
        runs = [_run_timed(cmd, _env(numba_dir, **extra)) for _ in range(1 + repeats)]
    finally:
        shutil.rmtree(numba_dir, ignore_errors=True)
    for wall, rss, rc, out, _cpu in runs:
        if rc != 0:
            raise SystemExit(f"predict failed (exit {rc}): {out}")
    warm = [r[0] for r in runs[1:]]
    return {"backend": "keras" if keras else "numpy", "cold_s": round(runs[0][0], 2),
            "warm_s": round(statistics.median(warm), 2), "warm_all_s": [round(w, 2) for w in warm],
            "cold_cpu_s": round(runs[0][4], 2), "warm_cpu_s": round(statistics.median(r[4] for r in runs[1:]), 2),
            "peak_rss_mb": round(max(r[1] for r in runs)), "output": runs[0][3].strip()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _page_view(pg, url: str) -> None:
    pg.goto(url)
    pg.get_by_role("heading", name="The idea, computed").wait_for(timeout=180_000)
    pg.locator('img[alt="the divide-and-conquer idea, computed"]').first.wait_for(timeout=180_000)


def bench_first_page(numba_dir: Path, home: Path) -> dict:
    """Spawn a server, load the home page in Chromium as soon as the server is up; then a reload."""
    from playwright.sync_api import sync_playwright

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless",
           "true", "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(numba_dir, home), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"streamlit exited with code {proc.returncode}")
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as r:
                        if r.read().strip() == b"ok":
                            break
                except OSError:
                    time.sleep(0.05)
            t_up = time.perf_counter()
            _page_view(pg, url)
            t_page = time.perf_counter()
            _page_view(pg, url)  # a reload: new session, warm server
            t_reload = time.perf_counter()
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
            browser.close()
    return {"server_up_s": round(t_up - t0, 2), "first_view_from_spawn_s": round(t_page - t0, 2),
            "first_view_from_request_s": round(t_page - t_up, 2), "reload_s": round(t_reload - t_page, 2)}


def _default_clip(folder: Path) -> Path:
    import numpy as np
    import soundfile as sf

    from core.synth import synth_clip

    y = synth_clip(2, 60.0, sr=44100, seed=7)
    clip = folder / "generated-60s-44k-stereo.wav"
    sf.write(clip, np.stack([y, 0.8 * y], axis=1), 44100)
    return clip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", type=Path, default=None, help="audio file for predict (default: generated 60 s)")
    ap.add_argument("--repeats", type=int, default=3, help="warm predict runs (median reported)")
    ap.add_argument("--page-repeats", type=int, default=3, help="cold servers for the page view (median)")
    ap.add_argument("--no-page", action="store_true", help="skip the dashboard measurement")
    ap.add_argument("--no-baseline", action="store_true", help="skip the Keras predict baseline")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="genrelab-bench-cold-"))
    results: dict = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        clip = a.clip or _default_clip(work)
        results["clip"] = str(clip)
        print(f"{os.cpu_count()} CPUs; clip {clip}")
        if not a.no_page:
            if not Path(CHROMIUM).exists():
                print(f"(no Chromium at {CHROMIUM}: the page view is not measured)")
            else:
                runs = []
                for i in range(a.page_repeats):  # each: a new server, a new empty numba cache, a new data home
                    numba_dir = work / f"numba-{i}"
                    numba_dir.mkdir()
                    r = bench_first_page(numba_dir, work / f"home-{i}")
                    runs.append(r)
                    print(f"first page view, cold server {i + 1}: {r['first_view_from_spawn_s']:.2f} s from spawning "
                          f"the server (server up after {r['server_up_s']:.2f} s, page "
                          f"{r['first_view_from_request_s']:.2f} s after the request); reload {r['reload_s']:.2f} s")
                first = sorted(r["first_view_from_spawn_s"] for r in runs)
                results["page_runs"] = runs
                results["page_cold"] = {"first_view_from_spawn_s": statistics.median(first), "max_s": first[-1]}
                print(f"first page view, cold server: median {statistics.median(first):.2f} s, max {first[-1]:.2f} s "
                      f"over {len(first)} servers")
        for keras in ([False] if a.no_baseline else [False, True]):
            r = bench_predict(clip, a.repeats, keras)
            results[f"predict_{r['backend']}"] = r
            print(f"predict ({r['backend']}): cold {r['cold_s']:.2f} s, warm {r['warm_s']:.2f} s "
                  f"(median of {a.repeats}: {r['warm_all_s']}); CPU time cold {r['cold_cpu_s']:.2f} s, warm "
                  f"{r['warm_cpu_s']:.2f} s; peak RSS {r['peak_rss_mb']} MB -> {r['output']}")
        goals = []
        if "page_cold" in results:
            met = results["page_cold"]["first_view_from_spawn_s"] < 5
            goals.append(f"first page < 5 s cold: {'met' if met else 'NOT met'}")
        p = results["predict_numpy"]
        goals.append(f"predict < 3 s cold: {'met' if p['cold_s'] < 3 else 'NOT met'}")
        goals.append(f"predict < 1.5 s warm: {'met' if p['warm_s'] < 1.5 else 'NOT met'}")
        print("goals: " + "; ".join(goals))
        if a.json:
            a.json.write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
