"""Resident memory of the dashboard's demo path: load a Predictor, classify a 3-minute clip, print peak RSS.

Runs exactly what the demo page runs (``core.predictor.Predictor(path)``: NumPy inference when the model
allows it, else Keras; ``core.audio.decode_clip`` on uploaded WAV bytes, then ``predict_array``),
with Streamlit imported as the server has it, and
prints the process's resident memory after each step and its peak (``ru_maxrss``). Streamlit Community
Cloud gives an app about 1 GB: the target is well under that.

    python bench/demo_memory.py                       # a model from models/ if there is one, else a 10-class
                                                      # untrained snippet CRNN (memory does not depend on weights)
    python bench/demo_memory.py --model models/NAME   # a given model folder
    python bench/demo_memory.py --seconds 600         # the longest clip the page accepts
    python bench/demo_memory.py --keras               # the same with TensorFlow, for comparison
    python bench/demo_memory.py --long 7200           # Predictor.predict_file on a generated 2-hour 44.1 kHz
                                                      # stereo FLAC: streamed, bounded memory for any length
    python bench/demo_memory.py --long-file SONG.flac # the same on a given file

The ``--long`` run is the bound the README states (resident memory of ``predict`` on any length: the file is
decoded and scored in 60 s blocks); the FLAC is written in 60 s blocks too, so generating it costs no memory.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:
        return peak_mb()


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # KB on Linux


def untrained_model(folder: Path) -> Path:
    """A 10-class snippet CRNN with a card, written by a child process (so that TensorFlow, needed to build
    it, is never loaded into the process being measured)."""
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from core.features import FeatureParams\n"
        "from core.models import build_snippet_crnn\n"
        "from core.model_card import make_model_card, write_model_card\n"
        "p = FeatureParams(); m = build_snippet_crnn(10, p.n_mels); m.save(%r)\n"
        "norm = {'min': -100.0, 'max': 40.0, 'mean': [0.0] * p.n_mels, 'std': [1.0] * p.n_mels}\n"
        "write_model_card(%r, make_model_card('snippet', ['genre%%d' %% i for i in range(10)], p, norm, 'minmax'))\n"
    ) % (str(ROOT), str(folder / "model.keras"), str(folder))
    subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return folder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder (a .keras file + model_card.json)")
    ap.add_argument("--seconds", type=float, default=180.0, help="clip length (%(default)s s)")
    ap.add_argument("--hop", type=float, default=1.0, help="hop between windows (%(default)s s)")
    ap.add_argument("--keras", action="store_true", help="force Keras (TensorFlow) inference, for comparison")
    ap.add_argument("--long", type=float, default=0.0, metavar="SECONDS",
                    help="instead: predict_file on a generated SECONDS-long 44.1 kHz stereo FLAC (7200 = 2 hours)")
    ap.add_argument("--long-file", default=None, help="instead: predict_file on this file")
    ap.add_argument("--block", type=float, default=60.0, help="predict_file's block length (%(default)s s)")
    a = ap.parse_args()
    if a.long or a.long_file:
        return long_file(a)

    steps = [("start", rss_mb())]
    import streamlit  # noqa: F401  (the server has it loaded)

    steps.append(("streamlit imported", rss_mb()))
    from core.audio import decode_clip, encode_wav_bytes
    from core.synth import synth_clip
    from core.workspace import list_model_folders

    model_dir = a.model
    tmp = tempfile.TemporaryDirectory(prefix="genrelab-membench-")
    if not model_dir:
        shipped = [m["path"] for m in list_model_folders() if m.get("card") and m["origin"] == "shipped"]
        model_dir = shipped[0] if shipped else str(untrained_model(Path(tmp.name)))
    from core.predictor import Predictor

    t0 = time.perf_counter()
    pred = Predictor(model_dir, "keras" if a.keras else "auto")  # what the demo page does (auto)
    steps.append((f"{type(pred).__name__} loaded ({pred.backend} inference, {Path(model_dir).name}, "
                  f"{time.perf_counter() - t0:.1f} s)", rss_mb()))

    wav = encode_wav_bytes(synth_clip(3, a.seconds, 44100, seed=5), 44100)  # a 44.1 kHz upload
    steps.append((f"{a.seconds:g} s upload in memory ({len(wav) / 1e6:.1f} MB WAV)", rss_mb()))
    t0 = time.perf_counter()
    clip = decode_clip(wav, "clip.wav", pred.sample_rate)
    res = pred.predict_array(clip.y, clip.sr, None, a.hop, "sum")  # what the demo page does
    dt = time.perf_counter() - t0
    steps.append((f"decoded + classified: {res.n_windows} windows in {dt:.1f} s -> {res.predicted}", rss_mb()))
    for name, mb in steps:
        print(f"{mb:8.0f} MB  {name}")
    print(f"peak RSS: {peak_mb():.0f} MB")
    tmp.cleanup()
    return 0


def write_long_flac(path: Path, seconds: float, sr: int = 44100) -> Path:
    """A ``seconds``-long stereo FLAC of generated music-like sound, written in 60 s blocks."""
    import numpy as np
    import soundfile as sf

    from core.synth import synth_clip

    with sf.SoundFile(str(path), "w", sr, 2, format="FLAC", subtype="PCM_16") as f:
        done, k = 0.0, 0
        while done < seconds:
            n = min(60.0, seconds - done)
            f.write(np.stack([synth_clip(k % 3, n, sr, seed=k), synth_clip((k + 1) % 3, n, sr, seed=k + 1000)], 1)
                    * 0.5)
            done, k = done + n, k + 1
    return path


def long_file(a) -> int:
    """Peak RSS of ``Predictor.predict_file`` (the ``predict`` command's path) on a long file."""
    import threading

    tmp = tempfile.TemporaryDirectory(prefix="genrelab-membench-")
    steps = [("start", rss_mb())]
    if a.long_file:
        path = Path(a.long_file)
    else:
        t0 = time.perf_counter()
        path = write_long_flac(Path(tmp.name) / "long.flac", a.long)
        steps.append((f"generated {a.long:g} s 44.1 kHz stereo FLAC ({path.stat().st_size / 1e6:.0f} MB) in "
                      f"{time.perf_counter() - t0:.0f} s", rss_mb()))
    from core.predictor import Predictor

    model_dir = a.model
    if not model_dir:
        from core.workspace import list_model_folders

        shipped = [m["path"] for m in list_model_folders() if m.get("card") and m["origin"] == "shipped"
                   and m["card"].get("kind") == "snippet"]
        model_dir = shipped[0] if shipped else str(untrained_model(Path(tmp.name)))
    pred = Predictor(model_dir, "keras" if a.keras else "auto")
    steps.append((f"{type(pred).__name__} loaded ({pred.backend} inference, {Path(model_dir).name})", rss_mb()))
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:  # resident memory every 0.2 s while predict_file runs
        while not stop.wait(0.2):
            samples.append(rss_mb())

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()

    def progress(done_s: float, total_s: float | None) -> None:
        if int(done_s) // 600 != int(done_s - a.block) // 600:
            print(f"  {done_s / 60:6.1f} of {(total_s or 0) / 60:.1f} min  {rss_mb():6.0f} MB resident", flush=True)

    res = pred.predict_file(path, None, a.hop, "sum", progress=progress, block_s=a.block)
    dt = time.perf_counter() - t0
    stop.set()
    th.join()
    steps.append((f"predict_file: {res.n_windows} windows over {res.duration_s / 60:.1f} min in {dt:.0f} s -> "
                  f"{res.predicted} (resident during it: max {max(samples, default=0):.0f} MB)", rss_mb()))
    for name, mb in steps:
        print(f"{mb:8.0f} MB  {name}")
    print(f"peak RSS: {peak_mb():.0f} MB")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
