"""Shared fixtures: generated audio only. A few tests (marked ``shared`` / ``gtzan``) also run on real music in the
folder ``$GENRELAB_TEST_MUSIC`` names (default: ``../shared/data`` beside the checkout, where this project's
development machine keeps it); where it is absent they skip, saying what to download."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: the real-music folder of the ``shared`` tests: ``$GENRELAB_TEST_MUSIC``, else ``../shared/data``
SHARED_DATA = Path(os.environ.get("GENRELAB_TEST_MUSIC", "").strip() or ROOT.parent / "shared" / "data").expanduser()
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


#: how to get each real-data folder the ``shared`` tests use (the skip reason says it)
GET_SHARED = {
    "emotify": f"python -m core download-emotify {SHARED_DATA} (Emotify's 400 one-minute MP3s, ~363 MB, into "
               "emotify/<genre>/)",
    "gtzan": f"python -m core download-gtzan {SHARED_DATA} (GTZAN, ~1.2 GB, into genres/<genre>/)",
    "gtzan-splits": f"the fault-filtered GTZAN split lists (train_filtered.txt, valid_filtered.txt, test_filtered.txt "
                    "of Kereliuk, Sturm & Larsen 2015, e.g. from github.com/jongpillee/music_dataset_split, folder "
                    f"GTZAN_split) into {SHARED_DATA / 'gtzan-splits' / 'fault-filtered'}",
}


def shared_path(*parts: str) -> Path:
    """Path under :data:`SHARED_DATA`; the calling test is skipped when it is absent, with what to download."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        how = GET_SHARED.get(parts[0] if parts else "", f"a copy of it at {p}")
        pytest.skip(f"needs real music that is not here ({p}); to run it: {how} (or set GENRELAB_TEST_MUSIC to "
                    "a folder that holds it)")
    return p


def gtzan_path() -> Path:
    """Full GTZAN when it is in :data:`SHARED_DATA` (``gtzan/``, or ``genres/`` as ``download-gtzan`` leaves it), else the
    GTZAN excerpts; skip, saying how to download GTZAN, when none is there."""
    for name in ("gtzan", "genres", "gtzan-excerpts"):
        p = SHARED_DATA / name
        if p.exists():
            return p
    pytest.skip(f"needs GTZAN audio, not found in {SHARED_DATA}; to run it: {GET_SHARED['gtzan']} (or set "
                "GENRELAB_TEST_MUSIC to a folder that holds it)")


@pytest.fixture
def genre_folder(tmp_path):
    """A GTZAN-layout folder of 3 synthetic classes x 6 tracks x 8 s (wav)."""
    from core.synth import make_dataset_folder

    return make_dataset_folder(tmp_path / "src", n_classes=3, per_class=6, seconds=8.0)


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory):
    """The tiny synthetic demo model (core.synth.train_demo_model), trained once per session
    (about 20-30 s on two cores): ``<dir>/model.keras`` + ``model_card.json``."""
    from core.synth import train_demo_model

    return train_demo_model(tmp_path_factory.mktemp("demo-model") / "synthetic-demo", epochs=4)


def make_test_store(path, classes, seeds=(0, 1, 2), kinds=("snippet", "full", "linear"), dataset="synth",
                    per_class=10, crnn_accuracy=None, config=None):
    """An experiment store written through the store API with made-up but well-formed results (test data:
    per-run predictions drawn at fixed accuracies, so pages have curves, matrices and tests to show).

    Like a real experiment: full-clip runs sit on the ``<dataset>-full`` twin, and the linear baseline (a
    deterministic fit) scores the same in every seed, below the snippet CRNN. ``per_class``: test (and
    validation) tracks per class; ``crnn_accuracy``: the CRNNs right on exactly that share of the items of every
    level and seed (else drawn around fixed targets); ``config``: the runs' training settings."""
    import numpy as np

    from core.evaluate import classification_metrics
    from core.store import Store, make_run_id

    rng = np.random.default_rng(1)
    store = Store(path)
    n = len(classes)
    target = {"segment": 0.6, "track_sum": 0.72, "track_vote": 0.7, "track_logprob": 0.71, "full": 0.5}
    linear_target = {"segment": 0.42, "track_sum": 0.5, "track_vote": 0.48, "track_logprob": 0.49}
    for seed in seeds:
        for kind in kinds:
            cfg = config or {"lr": 0.001, "max_epochs": 5}
            run_id = make_run_id(f"build-{kind}", kind, seed, cfg)
            ds_path = f"/data/datasets/{dataset}" + ("-full" if kind == "full" else "")
            store.upsert_run(run_id, ds_path, f"build-{kind}", kind, seed, cfg, "running")
            if kind == "linear":
                store.add_epochs(run_id, [{"epoch": 1, "loss": 1.1, "accuracy": 0.55, "val_loss": 1.2,
                                           "val_accuracy": 0.45, "lr": 0.0, "seconds": 0.8, "best": True}])
            else:
                store.add_epochs(run_id, [{"epoch": e, "loss": 1.5 / e, "accuracy": 0.4 + 0.1 * e,
                                           "val_loss": 1.6 / e + 0.05 * e, "val_accuracy": 0.35 + 0.08 * e,
                                           "lr": 0.001, "seconds": 1.0, "best": e == 4} for e in range(1, 6)])
            levels = ["full"] if kind == "full" else ["segment", "track_sum", "track_vote", "track_logprob"]
            results = {}
            for split in ("val", "test"):
                for li, level in enumerate(levels):
                    y = np.repeat(np.arange(n), per_class)
                    if kind == "linear":  # the same predictions for every seed
                        r = np.random.default_rng(100 + 10 * li + (split == "test"))
                        hit = r.random(y.size) < linear_target[level]
                        wrong = r.integers(0, n - 1, y.size)
                    elif crnn_accuracy is not None:
                        hit = rng.permutation(y.size) < round(crnn_accuracy * y.size)
                        wrong = rng.integers(0, n - 1, y.size)
                    else:
                        hit = rng.random(y.size) < target[level] + 0.02 * seed
                        wrong = rng.integers(0, n - 1, y.size)
                    pred = np.where(hit, y, (y + 1 + wrong) % n)
                    preds = [{"track": f"{classes[t]}/{classes[t]}.{i:05d}.wav", "start_s": 0.0, "true": classes[t],
                              "pred": classes[p], "scores": [1.0 if j == p else 0.0 for j in range(n)]}
                             for i, (t, p) in enumerate(zip(y, pred))]
                    results[(level, split)] = {"metrics": classification_metrics(y, pred, classes),
                                               "predictions": preds}
            store.write_evaluation(run_id, results, "done")
    return store


def make_cv_test_store(path, classes, seeds=(0, 1), kinds=("snippet", "linear"), n_folds=5, per_class=10,
                       accuracy=None, dataset="small", config=None):
    """A store of a cross-validated experiment written through the store API: each (kind, seed) has ``n_folds``
    fold runs (every track of ``per_class`` x classes tested in exactly one fold, predictions right at a fixed
    rate per kind: ``accuracy``) with epochs, pooled by ``core.folds.pool_fold_runs`` as the engine does."""
    import numpy as np

    from core.evaluate import classification_metrics
    from core.folds import pool_fold_runs
    from core.store import Store, make_run_id

    accuracy = {"snippet": 0.6, "linear": 0.7, "musicnn": 0.85, "full": 0.5, **(accuracy or {})}
    cfg = config or {"lr": 0.001, "max_epochs": 5, "monitor": "val_track_accuracy", "bn_recalibrate": 1024}
    store = Store(path)
    n = len(classes)
    tracks = [(c, f"{c}/{i}.mp3") for i in range(per_class) for c in range(n)]
    fold_of = {t: i % n_folds for i, t in enumerate(tracks)}
    for seed in seeds:
        for kind in kinds:
            rng = np.random.default_rng([seed, len(kind)])
            ids = []
            for f in range(n_folds):
                rid = make_run_id(f"build-{kind}-f{f}", kind, seed, cfg, f, n_folds)
                ds_path = f"/data/datasets/{dataset}" + ("-full60s" if kind == "full" else "") + f"/cv{n_folds}/fold{f}"
                store.upsert_run(rid, ds_path, f"build-{kind}-f{f}", kind, seed, cfg, "running", fold=f, n_folds=n_folds)
                if kind != "linear":
                    store.add_epochs(rid, [{"epoch": e, "loss": 1.5 / e, "accuracy": 0.4 + 0.1 * e, "val_loss": 1.0,
                                            "val_accuracy": 0.5, "val_track_accuracy": 0.5, "lr": 0.001,
                                            "seconds": 1.0, "best": e == 4, "monitor": "val_track_accuracy"}
                                           for e in range(1, 6)])
                results = {}
                for split, which in (("test", f), ("val", (f + 1) % n_folds)):
                    mine = [t for t in tracks if fold_of[t] == which]
                    y = np.array([c for c, _ in mine])
                    hit = rng.random(len(y)) < accuracy[kind]
                    pred = np.where(hit, y, (y + 1) % n)
                    preds = [{"track": p, "start_s": 0.0, "true": classes[c], "pred": classes[q],
                              "scores": [1.0 if j == q else 0.0 for j in range(n)]} for (c, p), q in zip(mine, pred)]
                    for level in (["full"] if kind == "full" else ["segment", "track_sum", "track_vote",
                                                                    "track_logprob"]):
                        results[(level, split)] = {"metrics": classification_metrics(y, pred, classes),
                                                   "predictions": preds}
                store.write_evaluation(rid, results, "done")
                ids.append(rid)
            parent = f"/data/datasets/{dataset}" + ("-full60s" if kind == "full" else "")
            pool_fold_runs(store, ids, make_run_id(f"build-{kind}", kind, seed, cfg, None, n_folds), dataset=parent,
                           build_id=f"build-{kind}", kind=kind, seed=seed, config=cfg, n_folds=n_folds)
    return store
