"""Cross-validation (core.folds): fold datasets derived from a built dataset without decoding, the --cv option,
fold runs pooled into one figure per seed, the store's fold columns (and the migration of older stores)."""
from __future__ import annotations

import json
import sqlite3
import time
from types import SimpleNamespace

import numpy as np
import pytest

from engine_helpers import build_tiny, run_core


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """3 classes x 5 tracks, split 60/20/20: 1 test track per class (what --cv auto folds)."""
    from core.dataset import load_dataset

    return load_dataset(build_tiny(tmp_path_factory.mktemp("folds")))


def _usable(ds) -> dict[str, str]:
    m = ds.manifest
    ok = m[(~m["skipped"].astype(bool)) & (m["split"] != "")]
    return dict(zip(ok["path"], ok["class"]))


def test_folds_deal_every_track_once_stratified_and_seeded(tiny):
    from core.folds import fold_assignment

    a = fold_assignment(tiny, 3)
    usable = _usable(tiny)
    assert set(a) == set(usable) and set(a.values()) == {0, 1, 2}
    for c in set(usable.values()):  # 5 tracks of a class over 3 folds: 2, 2, 1 (never 3 and 1)
        per = [sum(1 for p, f in a.items() if f == k and usable[p] == c) for k in range(3)]
        assert sorted(per) == [1, 2, 2]
    sizes = [sum(1 for f in a.values() if f == k) for k in range(3)]
    assert max(sizes) - min(sizes) <= 1  # the deal continues across classes: folds of equal size
    assert fold_assignment(tiny, 3) == a  # seeded by the dataset's split seed
    assert fold_assignment(tiny, 3, seed=5) != a


def test_fold_dataset_reindexes_the_parent_and_normalises_on_its_own_training_tracks(tiny):
    from core.dataset import load_dataset
    from core.folds import fold_assignment, fold_dataset

    a = fold_assignment(tiny, 3)
    tested, validated = [], []
    for f in range(3):
        fd = fold_dataset(tiny, 3, f, a)
        assert fd.path == tiny.path / "cv3" / f"fold{f}" and fd.card["cv"]["fold"] == f
        assert fd.card["cv"]["parent_build_id"] == tiny.card["build_id"] and fd.card["build_id"] != tiny.card["build_id"]
        split_of = {}
        for s in ("train", "val", "test"):
            for t in np.unique(fd.track(s)):
                split_of[fd.manifest.iloc[int(t)]["path"]] = s
        assert {p for p, s in split_of.items() if s == "test"} == {p for p, k in a.items() if k == f}
        assert {p for p, s in split_of.items() if s == "val"} == {p for p, k in a.items() if k == (f + 1) % 3}
        assert set(split_of) == set(a)  # every usable track, in one split
        tested += [p for p, s in split_of.items() if s == "test"]
        validated += [p for p, s in split_of.items() if s == "val"]
        # the same snippets as the parent (no decoding): rows of a track equal the parent's rows of that track
        for s in ("train", "test"):
            tr = np.asarray(fd.track(s))
            for t in np.unique(tr)[:2]:
                ps, rows, starts = tiny.snippet_rows(int(t))
                mine = np.flatnonzero(tr == t)
                np.testing.assert_array_equal(np.asarray(fd.X(s))[mine], np.asarray(tiny.X(ps))[rows])
                np.testing.assert_array_equal(np.asarray(fd.start(s))[mine], starts)
                assert (np.asarray(fd.y(s))[mine] == tiny.classes.index(tiny.manifest.iloc[int(t)]["class"])).all()
        # normalisation from this fold's training rows only
        X = np.asarray(fd.X("train"), np.float64)
        assert fd.norm["min"] == pytest.approx(X.min()) and fd.norm["max"] == pytest.approx(X.max())
        np.testing.assert_allclose(fd.norm["mean"], X.mean(axis=(0, 1)), rtol=1e-5, atol=1e-4)
        assert fd.card["counts"]["test"]["tracks"] == sum(1 for k in a.values() if k == f)
        # reused while the parent and the assignment are the same
        mtime = (fd.path / "train_X.npy").stat().st_mtime_ns
        assert (fold_dataset(tiny, 3, f, a).path / "train_X.npy").stat().st_mtime_ns == mtime
        assert load_dataset(fd.path).classes == tiny.classes
    assert sorted(tested) == sorted(a) and sorted(validated) == sorted(a)  # each track tested and validated once


def test_resolve_cv_auto_off_and_bad_values(tiny):
    from core.folds import FoldError, max_folds, resolve_cv, test_tracks_per_class

    assert test_tracks_per_class(tiny) == 1 and max_folds(tiny) == 5
    assert resolve_cv("auto", tiny) == 5  # 1 test track per class < 5: fold (5 tracks per class allow 5 folds)
    assert resolve_cv("off", tiny) == 0 and resolve_cv(None, tiny) == 0 and resolve_cv("0", tiny) == 0
    assert resolve_cv("3", tiny) == 3 and resolve_cv(4, tiny) == 4
    for bad, msg in (("2", "at least 3 folds"), ("6", "smallest class"), ("x", "auto, off or a number")):
        with pytest.raises(FoldError, match=msg):
            resolve_cv(bad, tiny)
    big = SimpleNamespace(path=tiny.path, classes=tiny.classes,
                          card={**tiny.card, "counts": {**tiny.card["counts"], "test": {
                              "tracks": 15, "per_class": {c: 5 for c in tiny.classes}}}})
    assert resolve_cv("auto", big) == 0  # 5 test tracks per class: the held-out split is kept


@pytest.mark.slow
def test_cross_validated_experiment_pools_every_track_once_per_seed(tiny, tmp_path):
    from core.experiment import experiment_groups, preset_config, run_experiment
    from core.store import Store, results_frame, summary_frame

    store_path = tmp_path / "store"
    events = []
    cfg = preset_config("fast", max_epochs=1, max_train_batches=2)
    out = run_experiment(tiny.path, store_path, seeds=[0], models=["snippet", "linear", "full"], config=cfg, cv=3,
                         progress=events.append)
    assert out["n_folds"] == 3 and not out["stopped"] and len(out["runs"]) == 9 and len(out["pooled"]) == 3
    plan = next(e for e in events if e.get("phase") == "plan")
    assert plan["n_runs"] == 9 and plan["n_folds"] == 3 and "3-fold cross-validation" in plan["message"]
    assert [e["fold"] for e in events if e.get("phase") == "train" and "starting" in e.get("message", "")] == \
        [0, 1, 2] * 3
    store = Store(store_path)
    runs = store.runs()
    folds = [r for r in runs if r["fold"] is not None]
    pooled = [r for r in runs if r["fold"] is None]
    assert len(folds) == 9 and len(pooled) == 3 and {r["n_folds"] for r in runs} == {3}
    assert all(f"-f{r['fold']}-" in r["id"] and r["dataset"].endswith(f"cv3/fold{r['fold']}") for r in folds)
    assert all("-cv3-" in r["id"] and r["status"] == "done" for r in pooled)
    usable = _usable(tiny)
    df = results_frame(store)
    assert set(df["run_id"]) == {r["id"] for r in pooled} and set(df["n_folds"]) == {3}
    assert len(results_frame(store, folds=True)) > len(df)
    for r in pooled:
        level = "full" if r["kind"] == "full" else "track_sum"
        for split in ("test", "val"):
            p = store.predictions_frame(r["id"], level, split)
            assert sorted(p["track"]) == sorted(usable)  # every track once: tested (and validated) once per seed
            acc = float((p["true_label"] == p["pred_label"]).mean())
            row = df[(df["run_id"] == r["id"]) & (df["level"] == level) & (df["split"] == split)].iloc[0]
            assert row["accuracy"] == pytest.approx(acc) and row["n"] == len(usable)
            # the pooled figure is the folds' predictions together
            fold_ids = [f["id"] for f in folds if f["kind"] == r["kind"]]
            n_right = sum(int((store.predictions_frame(i, level, split).eval("true_label == pred_label")).sum())
                          for i in fold_ids)
            assert n_right == round(acc * len(usable))
    # the 30 s model's folds test the same tracks as the snippet model's
    for f in range(3):
        by_kind = {r["kind"]: r["id"] for r in folds if r["fold"] == f}
        a = set(store.predictions_frame(by_kind["snippet"], "track_sum", "test")["track"])
        b = set(store.predictions_frame(by_kind["full"], "full", "test")["track"])
        assert a == b and a
    s = summary_frame(df)
    assert set(s["n_seeds"]) == {1}
    groups = experiment_groups(runs)
    assert len(groups) == 1 and groups[0]["n_folds"] == 3 and "3-fold cross-validation" in groups[0]["label"]
    assert set(groups[0]["run_ids"]) == {r["id"] for r in runs}
    # again: nothing trained, the pooled runs kept
    before = {r["id"]: r["updated_at"] for r in pooled}
    time.sleep(1.1)
    again = run_experiment(tiny.path, store_path, seeds=[0], models=["snippet", "linear", "full"], config=cfg, cv=3)
    assert all(r.get("skipped") for r in again["runs"]) and all(r.get("skipped") for r in again["pooled"])
    assert {r["id"]: r["updated_at"] for r in Store(store_path).runs() if r["fold"] is None} == before
    assert len(again["results"]) == len(df)


def test_old_stores_gain_the_fold_columns_in_place(tmp_path):
    """A schema-2 store (before cross-validation) opens as schema 3: fold columns added, old runs unchanged."""
    from core.store import SCHEMA_VERSION, Store, results_frame

    db = tmp_path / "old" / "experiments.sqlite"
    db.parent.mkdir()
    con = sqlite3.connect(db)
    con.executescript("""
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE runs (id TEXT PRIMARY KEY, dataset TEXT NOT NULL, build_id TEXT, kind TEXT NOT NULL,
        seed INTEGER NOT NULL, config TEXT NOT NULL, status TEXT NOT NULL, created_at TEXT, updated_at TEXT,
        finished_at TEXT, epochs INTEGER NOT NULL DEFAULT 0, best_epoch INTEGER, message TEXT,
        source TEXT DEFAULT 'local', monitor TEXT, best_value REAL);
    CREATE TABLE epochs (run_id TEXT NOT NULL, epoch INTEGER NOT NULL, loss REAL, accuracy REAL, val_loss REAL,
        val_accuracy REAL, lr REAL, seconds REAL, val_track_accuracy REAL, PRIMARY KEY (run_id, epoch));
    CREATE TABLE metrics (run_id TEXT NOT NULL, level TEXT NOT NULL, split TEXT NOT NULL, accuracy REAL,
        macro_f1 REAL, n INTEGER, extra TEXT, PRIMARY KEY (run_id, level, split));
    CREATE TABLE predictions (run_id TEXT NOT NULL, level TEXT NOT NULL, split TEXT NOT NULL, track TEXT NOT NULL,
        start_s REAL, true_label TEXT, pred_label TEXT, scores TEXT);
    INSERT INTO meta VALUES ('schema_version', '2');
    INSERT INTO runs (id, dataset, build_id, kind, seed, config, status, epochs) VALUES
        ('snippet-s0-abc', '/d', 'b', 'snippet', 0, '{}', 'done', 3);
    INSERT INTO metrics VALUES ('snippet-s0-abc', 'track_sum', 'test', 0.75, 0.7, 4, '{}');
    """)
    con.commit()
    con.close()
    store = Store(db.parent)
    assert SCHEMA_VERSION == 3 and store.schema_version == 3
    run = store.get_run("snippet-s0-abc")
    assert run["fold"] is None and run["n_folds"] is None and run["epochs"] == 3
    df = results_frame(store)
    assert list(df["accuracy"]) == [0.75] and df["n_folds"].isna().all()
    store.upsert_run("snippet-s0-f1-x", "/d/cv3/fold1", "b1", "snippet", 0, {}, fold=1, n_folds=3)
    assert store.get_run("snippet-s0-f1-x")["fold"] == 1


def test_run_ids_of_folds_and_pooled_runs():
    from core.store import make_run_id

    held = make_run_id("b", "snippet", 0, {"lr": 1e-3})
    assert held == make_run_id("b", "snippet", 0, {"lr": 1e-3}, None, None)  # old ids hold
    f1 = make_run_id("b", "snippet", 0, {"lr": 1e-3}, 1, 5)
    pooled = make_run_id("b", "snippet", 0, {"lr": 1e-3}, None, 5)
    assert f1.startswith("snippet-s0-f1-") and pooled.startswith("snippet-s0-cv5-")
    assert len({held, f1, pooled, make_run_id("b", "snippet", 0, {"lr": 1e-3}, 2, 5)}) == 4


def test_cli_cv_option(tiny, tmp_path):
    r = run_core("run-experiment", "--help")
    text = " ".join(r.stdout.split())
    assert r.returncode == 0 and "--cv auto|off|K" in text and "every track is tested once per seed" in text
    assert "auto: 5 folds" in text and "(default: auto)" in text
    assert "; small: the recommended recipe on a budget for small datasets" in text  # every preset named once
    r = run_core("run-experiment", str(tiny.path), "--store", str(tmp_path / "s"), "--cv", "9", "--models", "linear")
    assert r.returncode == 2 and "9 folds need at least 9 tracks in every class" in r.stderr
    r = run_core("run-experiment", str(tiny.path), "--store", str(tmp_path / "s"), "--cv", "3", "--models", "linear",
                 "--seeds", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "3-fold cross-validation" in r.stdout + r.stderr and "3 folds pooled" in r.stdout + r.stderr
    assert "elapsed" in r.stdout + r.stderr  # the time so far and left, on the run lines
    from core.store import results_frame

    df = results_frame(tmp_path / "s")
    assert set(df["n_folds"]) == {3} and sorted(df["seed"].unique()) == [0, 1]
    assert "linear seed 0, fold 2 of 3 done" in r.stdout + r.stderr
    n = int(df[(df["split"] == "test") & (df["level"] == "track_sum")]["n"].max())
    assert n == 15  # every track of the 3 x 5 once
    # the results say what they rest on, and never average a cross-validated and a held-out figure together
    r = run_core("run-experiment", str(tiny.path), "--store", str(tmp_path / "s"), "--cv", "off", "--models",
                 "linear", "--seeds", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_core("results", "--store", str(tmp_path / "s"))
    assert r.returncode == 0, r.stderr[-2000:]
    cv_line = ("3-fold cross-validation: each seed's figures pool its 3 folds, every one of the 15 tracks tested "
               "once; one track = 6.67 points")
    held_line = "held-out split: 3 test tracks; one track = 33.3 points"
    assert cv_line in r.stdout and held_line in r.stdout
    blocks = r.stdout.split(cv_line)
    assert held_line in blocks[0] and held_line not in blocks[1]  # two tables, the held-out split's first
    for block in blocks:
        assert sum(1 for line in block.splitlines() if line.split()[:3] == ["test", "linear", "track_sum"]) == 1
