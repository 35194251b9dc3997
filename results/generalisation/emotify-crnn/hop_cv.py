"""Test-time window hop and aggregation of the shipped emotify-crnn, cross-validated (issue 22, item 4).

Each fold's 3 members (``fold{k}-seed{s}.keras`` in the model folder) score that fold's test tracks
(``fold{k}.json`` here: tracks they never trained on) at window hops 1, 1.5, 2 and 3 s. Printed and written to
``hop_cv.json``: per aggregation, the out-of-fold track accuracy of one member (mean ± SD over the 3 seeds) and of
the fold's 3 seeds averaged. The window scores are cached per track (``--cache``: rerun to resume).

Usage: ``python results/generalisation/emotify-crnn/hop_cv.py EMOTIFY_DIR [--model models/emotify-crnn]
[--cache hop_cache.pkl]`` (about 8 minutes on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from core.audio import load_audio  # noqa: E402
from core.features import apply_norm  # noqa: E402
from core.predictor import Predictor, aggregate  # noqa: E402

HOPS = (1.0, 1.5, 2.0, 3.0)
AGGS = ("sum", "vote", "logprob")


def window_scores(p: Predictor, y: np.ndarray, members: list[int], hop: float) -> np.ndarray:
    """``(len(members), windows, classes)``: each member's softmax scores of the windows every ``hop`` s."""
    X, _, _, _ = p.window_features(y, None, hop)
    out = []
    for i in members:
        Xn = apply_norm(np.asarray(X, np.float32), p.card["members"][i]["norm"], p.norm_method)[..., None]
        out.append(p._batched(p._models[i], Xn))
    return np.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("emotify", type=Path)
    ap.add_argument("--model", type=Path, default=HERE.parents[2] / "models" / "emotify-crnn")
    ap.add_argument("--cache", type=Path, default=Path("hop_cache.pkl"))
    a = ap.parse_args()
    p = Predictor(a.model, threads=1)
    members = p.card["members"]
    cache = pickle.loads(a.cache.read_bytes()) if a.cache.exists() else {}
    t0 = time.time()
    for k in range(5):
        test = json.loads((HERE / f"fold{k}.json").read_text())["test"]
        idx = [i for i, m in enumerate(members) if m["fold"] == k]
        for n, key in enumerate(test):
            if key in cache:
                continue
            f = next(iter(sorted(a.emotify.glob(key + ".*"))), None)
            if f is None:
                sys.exit(f"{key}: no audio file in {a.emotify}")
            y = load_audio(f, p.sample_rate)
            cache[key] = {hop: window_scores(p, y, idx, hop) for hop in HOPS}
            if n % 16 == 15:
                a.cache.write_bytes(pickle.dumps(cache))
                print(f"fold {k}: {n + 1}/{len(test)} tracks, {time.time() - t0:.0f} s", flush=True)
        a.cache.write_bytes(pickle.dumps(cache))
    keys = sorted(cache)
    truth = [p.classes.index(key.split("/")[0]) for key in keys]
    table: dict = {"n_tracks": len(keys), "seeds": sorted({m["seed"] for m in members}), "by_hop": {}}
    for hop in HOPS:
        row = table["by_hop"][str(hop)] = {}
        for agg in AGGS:
            per_seed = [float(np.mean([aggregate(cache[key][hop][s], agg).argmax() == t for key, t in zip(keys, truth)]))
                        for s in range(len(table["seeds"]))]
            together = float(np.mean([aggregate(cache[key][hop].mean(0), agg).argmax() == t
                                      for key, t in zip(keys, truth)]))
            row[agg] = {"mean": float(np.mean(per_seed)), "sd": float(np.std(per_seed, ddof=1)),
                        "per_seed": [round(x, 4) for x in per_seed], "seeds_together": round(together, 4)}
            print(f"hop {hop:3.1f} s  {agg:8s} one member {np.mean(per_seed):.1%} ± {np.std(per_seed, ddof=1):.1%}"
                  f"  the fold's seeds together {together:.1%}")
    (HERE / "hop_cv.json").write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
