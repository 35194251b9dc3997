"""``python -m core predict`` with a musicnn model: NumPy (core.musicnn_numpy) against the Keras path, same run.

Measures, each in a fresh process (what a user runs), the wall time, CPU time (user + system: less sensitive to
other work on a shared machine) and peak resident memory of

    python -m core predict --model models/emotify-musicnn CLIP

with the default NumPy inference (one cold run, then the median of ``--repeats``) and with the Keras path
(``GENRELAB_INFERENCE=keras``: TensorFlow imported), and prints the ratios; also the musicnn tagger
(``models/msd-musicnn``). Then, in this process, the largest difference between the two paths' window scores
on the clip, and the compute alone (the network's multiply-accumulates, counted, over its time: GMAC/s).

``--long SECONDS`` (e.g. 7200): a generated SECONDS-long 44.1 kHz stereo FLAC through the same command: peak
memory, wall time and the progress lines it printed (``--long-keras`` also runs the Keras path on it: slow).

The default clip is a generated one-minute 44.1 kHz stereo MP3 (ffmpeg, 128 kbit/s); ``--clip FILE`` takes
yours (e.g. an Emotify track). The machine's load average is printed before and after: compare ratios, and
absolute figures only with the load they were measured at.

``--all-models``: the same command for every folder in ``models/`` (the README's table of shipped models).

Usage: ``python bench/musicnn_predict.py [--clip SONG.mp3] [--repeats 5] [--keras-repeats 2] [--all-models]
[--long 7200]``
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
MODEL = ROOT / "models" / "emotify-musicnn"
TAGGER = ROOT / "models" / "msd-musicnn"


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


#: ``python -m core ARGS`` that prints its peak resident memory (VmHWM) on exit: ``ru_maxrss`` of a child counts
#: the parent's memory at the fork (1.4 GB once this process has imported TensorFlow for the score comparison)
_CORE = ("import atexit, runpy, sys\n"
         "def _hwm():\n"
         "    kb = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
         "    print('VMHWM_KB', kb, file=sys.stderr)\n"
         "atexit.register(_hwm)\n"
         "sys.argv = ['core'] + sys.argv[1:]\n"
         "runpy.run_module('core', run_name='__main__', alter_sys=True)\n")


def core_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", _CORE, *args]


def run_timed_streams(cmd: list[str], env: dict[str, str]) -> dict:
    """One fresh process: wall and CPU seconds, peak RSS (MB: the process's own VmHWM when it prints it, as
    :func:`core_cmd` does), exit code, stdout, stderr (both pipes read on threads; ``wait4`` reaps the child)."""
    import threading

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    bufs = {"out": b"", "err": b""}

    def pump(name, stream):
        bufs[name] = stream.read()

    threads = [threading.Thread(target=pump, args=("out", proc.stdout)),
               threading.Thread(target=pump, args=("err", proc.stderr))]
    for t in threads:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    for t in threads:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = bufs["err"].decode("utf-8", "replace")
    hwm = [ln.split()[1] for ln in err.splitlines() if ln.startswith("VMHWM_KB ")]
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
            "rss": int(hwm[-1]) / 1024 if hwm else usage.ru_maxrss / 1024,
            "rc": proc.returncode, "out": bufs["out"].decode("utf-8", "replace"), "err": err}


def bench_cli(model: Path, clip: Path, repeats: int, keras: bool) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    if keras:
        env["GENRELAB_INFERENCE"] = "keras"
    cmd = core_cmd("predict", "--model", str(model), str(clip))
    runs = [run_timed_streams(cmd, env) for _ in range(1 + repeats)]
    bad = [r for r in runs if r["rc"] != 0]
    if bad:
        raise SystemExit(f"predict failed ({bad[0]['rc']}): {bad[0]['err'][-1500:]}")
    warm = runs[1:] or runs
    return {"cold": runs[0], "wall": statistics.median(r["wall"] for r in warm),
            "wall_min": min(r["wall"] for r in warm), "cpu": statistics.median(r["cpu"] for r in warm),
            "rss": max(r["rss"] for r in runs), "line": runs[-1]["out"].strip(),
            "backend": "Keras" if "Keras inference" in runs[-1]["err"] else "NumPy"}


def make_clip(folder: Path, seconds: float = 60.0) -> Path:
    """A generated ``seconds``-long 44.1 kHz stereo MP3 (128 kbit/s)."""
    import numpy as np
    import soundfile as sf

    from core.audio import ffmpeg_exe
    from core.synth import synth_clip

    wav = folder / "clip.wav"
    y = np.stack([synth_clip(k % 3, seconds, 44100, seed=k) for k in (0, 1)], 1) * 0.5
    sf.write(wav, y, 44100)
    ff = ffmpeg_exe()
    if not ff:
        raise SystemExit("ffmpeg is needed to make the MP3 (or pass --clip)")
    mp3 = folder / "clip.mp3"
    subprocess.run([ff, "-v", "error", "-y", "-i", str(wav), "-b:a", "128k", str(mp3)], check=True)
    return mp3


def score_difference(clip: Path) -> float:
    """The largest difference between NumPy's and Keras' window scores on the clip (same windows)."""
    import numpy as np

    from core.predictor import Predictor

    a = Predictor(MODEL).predict_file(clip)
    b = Predictor(MODEL, "keras").predict_file(clip)
    assert a.n_windows == b.n_windows
    return float(np.abs(a.window_scores - b.window_scores).max())


def compute_rate(clip: Path) -> str:
    """The network alone (decoded 16 kHz signal -> every window's features) and its counted multiply-adds."""
    from core import musicnn_numpy as mnp
    from core.audio import load_audio

    y = load_audio(clip, 16000)
    net = mnp.network(TAGGER)
    mnp.window_features(y[:16000 * 5], weights=net)  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    wf = mnp.window_features(y, weights=net)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    macs = mnp.count_macs(1 + y.size // 256, wf.start_frames, net.batch)
    parts = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in macs.items() if k not in ("total", "one by one"))
    return (f"network on {wf.n_windows} windows of {y.size / 16000:.0f} s: {wall:.2f} s wall, {cpu:.2f} s CPU "
            f"({net.threads} threads); {macs['total'] / 1e9:.1f} G multiply-accumulates ({parts}; one window at a "
            f"time it would be {macs['one by one'] / 1e9:.1f} G) = {macs['total'] / 1e9 / cpu:.0f} GMAC per CPU "
            f"second, {macs['total'] / 1e9 / wall:.0f} GMAC/s")


def bench_long(seconds: float, keras: bool) -> None:
    from bench.demo_memory import write_long_flac

    tmp = Path(tempfile.mkdtemp(prefix="genrelab-musicnn-long-"))
    try:
        t0 = time.perf_counter()
        flac = write_long_flac(tmp / "long.flac", seconds)
        print(f"\ngenerated {seconds:g} s 44.1 kHz stereo FLAC ({flac.stat().st_size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - t0:.0f} s; load {_load()}")
        for use_keras in ((False, True) if keras else (False,)):
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
            if use_keras:
                env["GENRELAB_INFERENCE"] = "keras"
            r = run_timed_streams(core_cmd("predict", "--model", str(MODEL), str(flac)), env)
            progress = [ln for ln in r["err"].splitlines() if "min classified" in ln]
            name = "Keras" if use_keras else "NumPy"
            print(f"{name}: exit {r['rc']}, {r['wall']:.0f} s wall, {r['cpu']:.0f} s CPU, peak {r['rss']:.0f} MB, "
                  f"{len(progress)} progress lines; load {_load()}")
            if progress:
                print(f"  first: {progress[0]}\n  last:  {progress[-1]}")
            print(f"  {r['out'].strip()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", help="audio file (default: a generated one-minute 44.1 kHz stereo MP3)")
    ap.add_argument("--repeats", type=int, default=5, help="warm NumPy runs after the cold one (%(default)s)")
    ap.add_argument("--keras-repeats", type=int, default=2, help="warm Keras runs (%(default)s)")
    ap.add_argument("--long", type=float, default=0.0, metavar="SECONDS", help="also a generated long FLAC")
    ap.add_argument("--long-keras", action="store_true", help="also the Keras path on the long FLAC (slow)")
    ap.add_argument("--no-keras", action="store_true", help="skip the Keras baseline")
    ap.add_argument("--all-models", action="store_true",
                    help="also every folder in models/ (the README's table of shipped models)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="genrelab-musicnn-bench-"))
    try:
        clip = Path(a.clip) if a.clip else make_clip(tmp)
        print(f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, clip {clip.name}; load {_load()}")
        res = {"NumPy": bench_cli(MODEL, clip, a.repeats, False)}
        print(f"load {_load()}")
        if not a.no_keras:
            res["Keras"] = bench_cli(MODEL, clip, a.keras_repeats, True)
            print(f"load {_load()}")
        tagger = bench_cli(TAGGER, clip, max(1, a.repeats // 2), False)
        for name, r in list(res.items()) + [("tagger (msd-musicnn, NumPy)", tagger)]:
            print(f"{name:28s} cold {r['cold']['wall']:5.2f} s, warm {r['wall']:5.2f} s (min {r['wall_min']:.2f}), "
                  f"CPU {r['cpu']:5.2f} s, peak {r['rss']:5.0f} MB [{r['backend']}]  -> {r['line'].split(chr(9), 1)[-1]}")
        if "Keras" in res:
            n, k = res["NumPy"], res["Keras"]
            print(f"NumPy vs Keras: wall {k['wall'] / n['wall']:.1f}x faster (cold {k['cold']['wall'] / n['cold']['wall']:.1f}x), "
                  f"CPU {k['cpu'] / n['cpu']:.1f}x less, peak memory {k['rss'] / n['rss']:.1f}x less")
            print(f"largest window-score difference NumPy - Keras: {score_difference(clip):.2e}")
        print(compute_rate(clip))
        print(f"load {_load()}")
        if a.all_models:
            print("\nevery folder in models/ (predict in a fresh process, NumPy unless a model needs Keras):")
            for folder in sorted(p for p in (ROOT / "models").iterdir() if p.is_dir()):
                r = bench_cli(folder, clip, max(1, a.repeats // 2), False)
                print(f"{folder.name:24s} cold {r['cold']['wall']:5.2f} s, warm {r['wall']:5.2f} s, CPU {r['cpu']:5.2f} s, "
                      f"peak {r['rss']:4.0f} MB [{r['backend']}]; load {_load()}")
        if a.long:
            bench_long(a.long, a.long_keras)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
