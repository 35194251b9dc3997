"""musicnn inference latency on a 3-minute track: NumPy log-mel + the Keras 3 network (shipped MSD_musicnn).

Times, after the model is loaded and warmed up, on a decoded 16 kHz signal (a synthetic clip, or ``--clip FILE``
decoded once beforehand): the log-mel front end, and the network on 3 s patches cut

* every 3 s (musicnn's own extractor: 60 patches on 3 minutes), and
* every 1 s (Genre Lab's track-level windows: 178 patches on 3 minutes), patch by patch and with the timbral
  front end shared between overlapping windows (``core.musicnn.OverlappingWindows``, same result);

the same 1 s windows with the network in NumPy (``core.musicnn_numpy``, what ``predict`` and the demo run), and
the whole classifier (``core.predictor.Predictor`` on a musicnn model folder: log-mel, 178 windows, musicnn +
head, sum) with the NumPy and the Keras backend.

Reports the median of ``--repeats`` runs (and the fastest: the CPU may be shared), wall and CPU time. Usage:
``python bench/embedding_latency.py [--seconds 180] [--repeats 5] [--batch 32] [--clip FILE]``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def _time(fn, repeats):
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    _time.min_wall = float(np.min(walls))  # the least disturbed run (the CPU is shared)
    return float(np.median(walls)), float(np.median(cpus)), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--clip", help="an audio file to use instead of the synthetic clip (tiled/cut to --seconds)")
    a = ap.parse_args()

    import keras

    from core import musicnn as mn

    if a.clip:
        from core.audio import load_audio

        y = load_audio(a.clip, mn.SR)
        y = np.tile(y, int(np.ceil(a.seconds * mn.SR / y.size)))[: int(a.seconds * mn.SR)]
    else:
        from core.synth import synth_clip

        import librosa

        y = librosa.resample(synth_clip(2, a.seconds), orig_sr=22050, target_sr=mn.SR).astype(np.float32)
    t0 = time.perf_counter()
    model, card = mn.load_musicnn(mn.default_model_dir())
    t_load = time.perf_counter() - t0
    print(f"keras {keras.__version__} backend {keras.backend.backend()}, {os.cpu_count()} CPUs; track {a.seconds:g} s; "
          f"model {card['name']} loaded in {t_load:.2f} s; batch {a.batch}")
    mn.predict_patches(model, np.zeros((a.batch, mn.PATCH_FRAMES, mn.N_MELS), np.float32), batch_size=a.batch)  # warm-up

    w_mel, c_mel, mel = _time(lambda: mn.log_mel(y), a.repeats)
    print(f"log-mel ({mel.shape[0]} frames): {w_mel * 1000:.0f} ms wall, {c_mel * 1000:.0f} ms CPU")
    for label, hop in (("every 3 s (musicnn extractor)", mn.PATCH_FRAMES), ("every 1 s (track-level windows)", None)):
        if hop is None:
            starts = np.arange(0, a.seconds - mn.PATCH_SECONDS + 1e-9, 1.0)
            idx = np.array([mn.frames_at(s) for s in starts])
            idx = idx[idx + mn.PATCH_FRAMES <= mel.shape[0]]
            x = mel[idx[:, None] + np.arange(mn.PATCH_FRAMES)[None, :]]
        else:
            x, _ = mn.patches(mel, hop)
        w_net, c_net, _ = _time(lambda: mn.predict_patches(model, x, batch_size=a.batch), a.repeats)
        print(f"network, {len(x)} patches {label}: {w_net * 1000:.0f} ms wall (min {_time.min_wall * 1000:.0f}; "
              f"{w_net / len(x) * 1000:.1f} ms/patch), "
              f"{c_net * 1000:.0f} ms CPU; mel + network = {(w_mel + w_net) * 1000:.0f} ms")
        if hop is None:  # the same windows with the timbral front end computed once per track
            ow = mn.OverlappingWindows(model)
            ow.run(mel, idx[:40], a.batch)  # traces its graphs
            w_f, c_f, _ = _time(lambda: ow.run(mel, idx, a.batch), a.repeats)
            print(f"network, {len(x)} patches {label}, shared timbral front end (OverlappingWindows): "
                  f"{w_f * 1000:.0f} ms wall (min {_time.min_wall * 1000:.0f}), {c_f * 1000:.0f} ms CPU; "
                  f"mel + network = {(w_mel + w_f) * 1000:.0f} ms")
            from core import musicnn_numpy as mnp

            net = mnp.network(mn.default_model_dir())
            net.windows(mel, idx[:8])  # warm-up
            w_n, c_n, _ = _time(lambda: net.windows(mel, idx, ["penultimate"]), a.repeats)
            print(f"network in NumPy (core.musicnn_numpy, {net.threads} threads), {len(x)} patches {label}, shared "
                  f"timbral front end: {w_n * 1000:.0f} ms wall (min {_time.min_wall * 1000:.0f}), "
                  f"{c_n * 1000:.0f} ms CPU; mel + network = {(w_mel + w_n) * 1000:.0f} ms")

    # the classifier a user runs: musicnn + a head (random weights: latency does not depend on them)
    import tempfile

    from core.embeddings import build_head, combined_model, musicnn_card
    from core.predictor import Predictor
    from core.model_card import write_model_card

    with tempfile.TemporaryDirectory() as tmp:
        combined_model(model, build_head(4)).save(Path(tmp) / "best.keras")
        write_model_card(tmp, musicnn_card(["a", "b", "c", "d"], card))
        for backend in ("numpy", "keras"):
            pred = Predictor(tmp, backend)
            w_p, c_p, r = _time(lambda: pred.predict_array(y, mn.SR, hop_s=1.0), a.repeats)
            print(f"Predictor.predict_array, {backend} backend (musicnn + head, {r.n_windows} windows every 1 s, "
                  f"sum): {w_p * 1000:.0f} ms wall (min {_time.min_wall * 1000:.0f}), {c_p * 1000:.0f} ms CPU")


if __name__ == "__main__":
    main()
