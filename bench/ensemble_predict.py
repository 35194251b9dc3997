"""A CRNN ensemble's NumPy inference: this code's path against the previous one, same process, same run.

Loads ``models/emotify-crnn`` (15 snippet CRNNs; ``--model`` another ensemble folder) and times
``Predictor.predict_array`` on a one-minute signal (a generated clip, or ``--clip FILE``) in four set-ups:

* **baseline**: the members one after the other, max-pool after the ELU (the order in the saved model), windows
  every 1 s: what the code did before the members ran on threads (only the max-pool itself is this code's
  faster one: the old ``.max(axis=(2, 4))`` made the previous commit slower still);
* **pool first**: the same with each max-pool moved before its monotone activation (``core.numpy_model._pool_first``);
* **threads**: and the members on ``core.numpy_model.default_threads()`` threads (one BLAS thread each);
* **default**: and the model card's window hop (its cross-validated default; 1.5 s for emotify-crnn).

Prints the median of ``--repeats`` per set-up (after one warm-up), CPU time, the ratio to the baseline, and the
largest window-score difference between the set-ups that score the same windows (they must agree: the same numbers
in another order). The machine's load average is printed: compare ratios, not absolute figures across runs.

Usage: ``python bench/ensemble_predict.py [--model DIR] [--clip FILE] [--repeats 5]``
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def _timed(fn, repeats: int) -> tuple[float, float, object]:
    fn()  # warm-up
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "emotify-crnn")
    ap.add_argument("--clip", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()

    import core.numpy_model as nm
    from core.audio import load_audio
    from core.predictor import Predictor
    from core.synth import synth_clip

    print(f"load average before: {os.getloadavg()[0]:.2f}")
    probe = Predictor(a.model)
    sr = probe.sample_rate
    y = load_audio(a.clip, sr) if a.clip else synth_clip(1, 60.0, sr, seed=4)
    print(f"{a.model.name}: {len(probe.model_files)} members; clip {y.size / sr:.1f} s; "
          f"card hop {probe.default_hop_s:g} s; threads {probe.threads}")

    real_pool_first = nm._pool_first
    nm._pool_first = lambda specs: specs  # the saved order: the baseline's
    try:
        base = Predictor(a.model, threads=1)
    finally:
        nm._pool_first = real_pool_first
    setups = [("baseline (saved layer order, 1 thread, hop 1 s)", base, 1.0),
              ("pool first (1 thread, hop 1 s)", Predictor(a.model, threads=1), 1.0),
              (f"threads ({probe.threads}), hop 1 s", Predictor(a.model), 1.0),
              (f"default (threads {probe.threads}, hop {probe.default_hop_s:g} s)", Predictor(a.model), None)]
    ref_wall = ref_scores = None
    for label, pred, hop in setups:
        wall, cpu, res = _timed(lambda: pred.predict_array(y, sr, hop_s=hop), a.repeats)
        ref_wall = ref_wall or wall
        diff = ""
        if hop == 1.0:
            if ref_scores is None:
                ref_scores = res.window_scores
            diff = f", max |score diff| vs baseline {np.abs(res.window_scores - ref_scores).max():.1e}"
        print(f"{label:50s} {wall:6.3f} s wall, {cpu:6.3f} s CPU, {res.n_windows} windows: "
              f"{ref_wall / wall:4.2f}x the baseline{diff}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
