"""Track-level inference latency: decoded 3-minute track -> class, after the model is loaded.

Builds an (untrained: latency does not depend on the weights) snippet CRNN at the default features
(22050 Hz, 3 s windows, 100 mels), saves it with a model card, loads it with ``Predictor`` and times
``predict_array`` on a 3-minute signal with 1 s hop (178 windows), sum aggregation. Also times a full-clip
model on the same track. ``--backend`` picks the runtime (default keras, as the README's numbers were measured;
``numpy`` is what ``predict`` and the demo use). Usage:
``python bench/predict_latency.py [--repeats 5] [--seconds 180] [--backend keras|numpy|auto]``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--hop", type=float, default=1.0)
    ap.add_argument("--backend", choices=("keras", "numpy", "auto"), default="keras")
    a = ap.parse_args()

    import keras

    from core.features import FeatureParams
    from core.models import build_full_crnn, build_snippet_crnn
    from core.predictor import Predictor
    from core.model_card import make_model_card, write_model_card
    from core.synth import synth_clip

    classes = [f"c{i}" for i in range(10)]
    norm = {"min": -100.0, "max": 40.0, "mean": [0.0] * 100, "std": [1.0] * 100}
    y = synth_clip(2, a.seconds)
    print(f"keras {keras.__version__} backend {keras.backend.backend()}, {os.cpu_count()} CPUs, Predictor backend "
          f"{a.backend}; "
          f"track {a.seconds:g} s, hop {a.hop:g} s")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, builder, params in (("snippet", build_snippet_crnn, FeatureParams()),
                                      ("full", build_full_crnn, FeatureParams(mode="full"))):
            d = Path(tmp) / kind
            d.mkdir()
            keras.utils.set_random_seed(0)
            builder(10).save(d / "best.keras")
            write_model_card(d, make_model_card(kind, classes, params, norm, "minmax"))
            t0 = time.perf_counter()
            pred = Predictor(d, a.backend)
            t_load = time.perf_counter() - t0
            times, cpu = [], []
            for _ in range(a.repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                r = pred.predict_array(y, params.sample_rate, hop_s=a.hop)
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            # split: features vs network
            t0 = time.perf_counter()
            X, *_ = pred.window_features(y, None, a.hop)
            t_feat = time.perf_counter() - t0
            print(f"{kind:8s}: load+warm-up {t_load:.2f} s; {r.n_windows} windows; decoded audio -> class: "
                  f"median {np.median(times):.3f} s, min {min(times):.3f} s (features {t_feat:.3f} s; "
                  f"CPU time {np.median(cpu):.3f} s)")


if __name__ == "__main__":
    main()
