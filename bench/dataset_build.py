"""Benchmark: Genre Lab's dataset build vs a SLAPP-style naive pipeline, on the same tracks, in one run.

The naive baseline does what SLAPP did: for each track, cut every snippet to its own MP3 file with pydub,
decode that MP3 again (librosa) and compute its mel spectrogram, one snippet at a time, in one process.
The engine decodes each track once, computes one mel spectrogram per track and slices it, in worker
processes (all cores by default).

    python bench/dataset_build.py                      # 100 generated 30 s MP3 tracks (GTZAN-like)
    python bench/dataset_build.py --src ../shared/data/emotify --limit 40
    python bench/dataset_build.py --baseline-limit 8   # baseline on a subset (tracks/s is per track)

Prints tracks/s, x-realtime and the ratio engine / baseline. Target: >= 20x on 2 cores.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from core.audio import ffmpeg_exe, load_audio  # noqa: E402
from core.dataset import build_dataset, scan_source  # noqa: E402
from core.features import FeatureParams  # noqa: E402
from core.synth import make_dataset_folder  # noqa: E402


def naive_track(path: str, params: FeatureParams, tmp: Path) -> int:
    """SLAPP-style: pydub cuts each snippet to an MP3, which is decoded again for its own mel spectrogram."""
    import warnings

    import librosa

    with warnings.catch_warnings():  # pydub warns at import that ffmpeg is not on PATH; we hand it one
        warnings.simplefilter("ignore", RuntimeWarning)
        from pydub import AudioSegment

    AudioSegment.converter = ffmpeg_exe()
    ext = Path(path).suffix.lower().lstrip(".")
    audio = AudioSegment.from_file(path, format=ext, codec=None if ext in ("wav",) else ext)
    snip_ms, step_ms = int(params.snippet_s * 1000), int(params.step_s * 1000)
    n = 0
    start = 0
    while start + snip_ms <= len(audio) and (params.max_snippets == 0 or n < params.max_snippets):
        out = tmp / f"snippet_{n}.mp3"
        audio[start:start + snip_ms].export(out, format="mp3")
        y, _ = librosa.load(out, sr=params.sample_rate, mono=True)
        mel = librosa.feature.melspectrogram(y=y, sr=params.sample_rate, n_fft=params.n_fft,
                                             hop_length=params.hop_length, n_mels=params.n_mels)
        librosa.power_to_db(mel)
        n += 1
        start += step_ms
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", help="a class-folder tree of audio (default: generated 30 s MP3 tracks)")
    ap.add_argument("--tracks", type=int, default=100, help="generated tracks when --src is not given")
    ap.add_argument("--limit", type=int, default=0, help="use at most this many tracks of --src (0 = all)")
    ap.add_argument("--baseline-limit", type=int, default=6, help="tracks the slow baseline processes")
    ap.add_argument("--workers", type=int, default=None, help="engine worker processes (default: all cores)")
    a = ap.parse_args()
    params = FeatureParams()
    tmp = Path(tempfile.mkdtemp(prefix="genrelab-bench-"))
    try:
        if a.src:
            src = Path(a.src)
            if a.limit:
                sub = tmp / "src"
                tracks, _, _ = scan_source(src)
                by_class: dict[str, list] = {}
                for t in tracks:
                    by_class.setdefault(t.label, []).append(t)
                per = max(3, a.limit // max(1, len(by_class)))
                for label, ts in by_class.items():
                    (sub / label).mkdir(parents=True)
                    for t in ts[:per]:
                        os.symlink(t.abs_path, sub / label / Path(t.relpath).name)
                src = sub
        else:
            per = max(3, a.tracks // 4)
            src = make_dataset_folder(tmp / "src", n_classes=4, per_class=per, seconds=30.0, fmt="mp3")
        tracks, _, _ = scan_source(src)
        audio_s = sum(load_audio(t.abs_path, params.sample_rate).size for t in tracks) / params.sample_rate
        print(f"tracks: {len(tracks)} ({audio_s / 60:.1f} min of audio) from {src}")

        t0 = time.perf_counter()
        build_dataset(src, tmp / "ds", params, workers=a.workers)
        t_engine = time.perf_counter() - t0
        eng_tps = len(tracks) / t_engine
        print(f"engine   : {t_engine:7.2f} s  {eng_tps:7.2f} tracks/s  {audio_s / t_engine:7.1f}x realtime"
              f"  (workers={a.workers or os.cpu_count()}, process start-up included)")

        base = tracks[: a.baseline_limit]
        base_s = sum(load_audio(t.abs_path, params.sample_rate).size for t in base) / params.sample_rate
        work = tmp / "naive"
        work.mkdir()
        t0 = time.perf_counter()
        n_snip = sum(naive_track(t.abs_path, params, work) for t in base)
        t_base = time.perf_counter() - t0
        base_tps = len(base) / t_base
        print(f"baseline : {t_base:7.2f} s  {base_tps:7.2f} tracks/s  {base_s / t_base:7.1f}x realtime"
              f"  ({len(base)} tracks, {n_snip} snippets, SLAPP-style, 1 process)")
        ratio = (audio_s / t_engine) / (base_s / t_base)
        print(f"ratio    : engine is {ratio:.1f}x the naive baseline (x-realtime; target >= 20x)")
        gtzan_s = 1000 / eng_tps * (30.0 / (audio_s / len(tracks)))
        print(f"estimate : 1000 GTZAN tracks of 30 s in about {gtzan_s / 60:.1f} min at this speed (target < 3)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
