"""Test-time window hop of a musicnn + logistic-regression model, cross-validated (issue 22, item 4).

The same protocol as ``python -m core train-transfer`` (per-window features every 1 s, cached in the data home;
the head fitted on every 3rd window of the training tracks; 5 folds x 3 repeats, stratified by class), with the
test tracks scored on windows every 1, 2 or 3 s (every window, every 2nd, every 3rd). Prints the out-of-fold track
accuracy per aggregation, mean ± SD over the repeats; the 1 s row is train-transfer's own figure.

Usage: ``python results/generalisation/musicnn_hop_cv.py SRC --features penultimate --C 0.1 [--weights DIR]
[--json OUT]`` (seconds when the features are cached, else the time to compute them).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core import musicnn as mn  # noqa: E402
from core.dataset import scan_source  # noqa: E402
from core.predictor import AGGREGATIONS, aggregate  # noqa: E402
from core.transfer import (DEFAULT_FOLDS, DEFAULT_REPEATS, TRAIN_EVERY, fit_linear_head,  # noqa: E402
                           stratified_folds, track_features)

STRIDES = (1, 2, 3)  # windows every 1, 2, 3 s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("--features", default="penultimate")
    ap.add_argument("--C", type=float, default=0.1)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    tracks, _, _ = scan_source(a.src)
    feats, skipped = track_features(tracks, a.weights or mn.default_model_dir(), a.features.split(","))
    classes = sorted({f.label for f in feats})
    y = np.array([classes.index(f.label) for f in feats])
    k = int(min(DEFAULT_FOLDS, np.bincount(y).min()))
    right = {(s, g): [] for s in STRIDES for g in AGGREGATIONS}
    for r in range(DEFAULT_REPEATS):
        fold = stratified_folds(y, k, r)  # train-transfer's seed 0 + repeat
        hits = {key: 0 for key in right}
        for f in range(k):
            tr = np.flatnonzero(fold != f)
            Xtr = np.concatenate([feats[i].X[::TRAIN_EVERY] for i in tr])
            ytr = np.concatenate([np.full(len(feats[i].X[::TRAIN_EVERY]), y[i]) for i in tr])
            head = fit_linear_head(Xtr, ytr, len(classes), a.C)
            for i in np.flatnonzero(fold == f):
                P = head.predict_proba(feats[i].X)
                for s in STRIDES:
                    for g in AGGREGATIONS:
                        hits[(s, g)] += int(np.argmax(aggregate(P[::s], g))) == y[i]
        for key in right:
            right[key].append(hits[key] / len(y))
    table = {}
    print(f"{a.src.name}: {len(feats)} tracks ({len(skipped)} skipped), features {a.features}, C {a.C}")
    for s in STRIDES:
        row = table[f"{s}.0"] = {g: {"mean": round(float(np.mean(right[(s, g)])), 4),
                                      "sd": round(float(np.std(right[(s, g)], ddof=1)), 4)} for g in AGGREGATIONS}
        print(f"windows every {s} s: " + "  ".join(f"{g} {row[g]['mean']:.1%} ± {row[g]['sd']:.1%}"
                                                   for g in AGGREGATIONS))
    if a.json:
        a.json.write_text(json.dumps({"features": a.features, "C": a.C, "n_tracks": len(feats), "by_hop": table},
                                     indent=2) + "\n")


if __name__ == "__main__":
    main()
