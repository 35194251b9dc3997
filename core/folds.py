"""Track-wise stratified k-fold cross-validation, derived from a built dataset without decoding audio again.

A small dataset's held-out split gives coarse figures: with one test track per class, one track moves the
accuracy by 25 points for four classes. Cross-validation tests every track once per seed instead:

* :func:`fold_assignment` deals the dataset's usable tracks (every split pooled) into ``k`` folds, per class
  (stratified), seeded; a track's snippets never leave its fold;
* fold ``f`` of ``k`` (:func:`fold_dataset`) is a dataset folder ``DATASET/cv<k>/fold<f>/`` in the ordinary
  format (``core.train`` and ``core.evaluate`` run on it unchanged): its **test** split is fold ``f``, its
  **validation** split (early stopping, the best epoch) fold ``f + 1 (mod k)``, its **training** split the
  other ``k - 2`` folds. Its arrays are the parent's snippet arrays re-indexed by track (the same rows, the
  same manifest indices; no decoding), and its ``norm.json`` is recomputed from its own training tracks only;
* the 30 s model's full-clip twin is folded with the same assignment (tracks matched by path), and the
  musicnn kind's cached embeddings too (``core.embeddings.fold_embeddings``);
* each seed's test predictions of the ``k`` folds are pooled into one accuracy per seed, every track once
  (``core.experiment``; the validation figure likewise, since every track is validation once).

:func:`resolve_cv` turns the ``--cv`` option into a fold count: ``auto`` (the default of ``run-experiment``
and of the experiment page) uses :data:`AUTO_FOLDS` folds when the held-out test split has fewer than
:data:`MIN_TEST_PER_CLASS` tracks of some class, and the held-out split otherwise.

A fold folder costs about the parent dataset's disk space (its arrays are a copy) and is built in seconds; it
is reused while the parent build and the assignment are the same (its ``card.json`` records both).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import GenreLabError
from core.utils import atomic_save_npy, atomic_write_json, read_json, stable_hash

#: below this many held-out test tracks in some class, ``--cv auto`` cross-validates
MIN_TEST_PER_CLASS = 5
#: folds of ``--cv auto`` (fewer when a class has fewer tracks)
AUTO_FOLDS = 5
#: the fewest folds: a test fold, a validation fold and at least one training fold
MIN_FOLDS = 3
FOLD_FORMAT = 1
SPLITS = ("train", "val", "test")


class FoldError(GenreLabError):
    """Cross-validation cannot be set up (too few tracks, a bad --cv value); the message is for the user."""


def usable_tracks(dataset) -> dict[str, list[str]]:
    """``{class: [relative paths]}`` of the tracks the dataset uses (every split), sorted by path."""
    out: dict[str, list[str]] = {c: [] for c in dataset.classes}
    for rec in read_json(Path(dataset.path) / "manifest.json"):
        if rec.get("skipped") or rec.get("split") not in SPLITS or rec.get("class") not in out:
            continue
        out[rec["class"]].append(rec["path"])
    return {c: sorted(v) for c, v in out.items()}


def test_tracks_per_class(dataset) -> int:
    """The fewest held-out test tracks of any class (0 when some class has none)."""
    per = (dataset.card.get("counts", {}).get("test", {}) or {}).get("per_class") or {}
    return min((int(per.get(c, 0)) for c in dataset.classes), default=0)


def max_folds(dataset) -> int:
    """The most folds the dataset allows: every fold must hold a track of every class."""
    return min((len(v) for v in usable_tracks(dataset).values()), default=0)


def resolve_cv(spec: str | int | None, dataset) -> int:
    """The fold count for ``--cv`` ``spec``: ``"auto"`` (:data:`AUTO_FOLDS` folds when the held-out test split
    has fewer than :data:`MIN_TEST_PER_CLASS` tracks of some class, capped at the smallest class; else 0),
    ``"off"`` / ``0`` / ``None`` (0: the dataset's own split), or a number of folds >= :data:`MIN_FOLDS`.
    Raises :class:`FoldError` for anything else, or for more folds than the smallest class has tracks."""
    if spec is None:
        return 0
    text = str(spec).strip().lower()
    if text in ("off", "0", "no", "none", ""):
        return 0
    most = max_folds(dataset)
    if text == "auto":
        if test_tracks_per_class(dataset) >= MIN_TEST_PER_CLASS:
            return 0
        k = min(AUTO_FOLDS, most)
        return k if k >= MIN_FOLDS else 0
    try:
        k = int(text)
    except ValueError as exc:
        raise FoldError(f"--cv takes auto, off or a number of folds (3 or more), not {spec!r}") from exc
    if k < MIN_FOLDS:
        raise FoldError(f"cross-validation needs at least {MIN_FOLDS} folds (test, validation, training); got {k}")
    if k > most:
        raise FoldError(f"{k} folds need at least {k} tracks in every class; the smallest class of "
                        f"{dataset.path} has {most}: use --cv {most} or fewer")
    return k


def fold_assignment(dataset, k: int, seed: int | None = None) -> dict[str, int]:
    """``{relative path: fold}``: each class's tracks (sorted by path) in a seeded random order, dealt round
    the ``k`` folds, so every fold holds ``n/k`` (+-1) tracks of every class. ``seed``: the dataset's split
    seed by default."""
    if seed is None:
        seed = int((dataset.card.get("split") or {}).get("seed") or 0)
    rng = np.random.default_rng([int(seed), int(k), 7])
    out: dict[str, int] = {}
    start = 0
    for label, paths in sorted(usable_tracks(dataset).items()):
        order = rng.permutation(len(paths))
        for rank, idx in enumerate(order):
            out[paths[idx]] = (start + rank) % k  # continue the deal across classes: folds stay balanced in size
        start = (start + len(paths)) % k
    return out


def fold_split(fold_of: int, fold: int, k: int) -> str:
    """The split a track of fold ``fold_of`` is in, in fold ``fold`` of ``k``."""
    if fold_of == fold:
        return "test"
    if fold_of == (fold + 1) % k:
        return "val"
    return "train"


def fold_dir(dataset, k: int, fold: int) -> Path:
    return Path(dataset.path) / f"cv{k}" / f"fold{fold}"


def is_fold_path(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.name.startswith("fold") and p.parent.name.startswith("cv") and p.parent.name[2:].isdigit()


def fold_parent(path: str | os.PathLike) -> str:
    """The dataset a fold folder was derived from (``X/cv5/fold2`` -> ``X``); other paths unchanged."""
    p = Path(path)
    return str(p.parent.parent) if is_fold_path(p) else str(path)


def fold_dataset(dataset, k: int, fold: int, assignment: dict[str, int]):
    """Fold ``fold`` of ``k`` of ``dataset`` as a dataset folder (built on first use, then reused); returns it
    loaded. ``assignment``: :func:`fold_assignment` of the snippet dataset (the full-clip twin takes the same)."""
    from core.dataset import BuildLock, load_dataset

    if not 0 <= fold < k:
        raise FoldError(f"fold {fold} is not one of 0..{k - 1}")
    out = fold_dir(dataset, k, fold)
    build_id = stable_hash({"parent": dataset.card.get("build_id"), "k": int(k), "fold": int(fold),
                            "assignment": sorted(assignment.items()), "format": FOLD_FORMAT})
    card_path = out / "card.json"

    def current() -> bool:
        try:
            return card_path.exists() and read_json(card_path).get("build_id") == build_id
        except (OSError, ValueError):
            return False

    if current():
        return load_dataset(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = BuildLock(out).acquire(timeout=600.0)  # another experiment writing the same fold: wait for it
    try:
        if not current():
            _write_fold(dataset, out, k, fold, assignment, build_id)
    finally:
        lock.release()
    return load_dataset(out)


def _write_fold(dataset, out: Path, k: int, fold: int, assignment: dict[str, int], build_id: str) -> None:
    from core.dataset import _norm_stats

    card_path = out / "card.json"
    card_path.unlink(missing_ok=True)  # written last: a fold without it is unfinished
    manifest = read_json(Path(dataset.path) / "manifest.json")
    classes = dataset.classes
    new_split: dict[int, str] = {}
    for i, rec in enumerate(manifest):
        if rec.get("skipped") or rec.get("split") not in SPLITS:
            continue
        f = assignment.get(rec["path"])
        rec["split"] = "" if f is None else fold_split(f, fold, k)
        if f is None:
            rec["reason"] = "not in the cross-validation folds"
        else:
            new_split[i] = rec["split"]
    # where each track's rows are in the parent: (parent split, row indices), in manifest order
    rows_of: dict[int, tuple[str, np.ndarray]] = {}
    for s in SPLITS:
        tr = np.asarray(dataset.track(s))
        order = np.argsort(tr, kind="stable")
        cuts = np.flatnonzero(np.diff(tr[order])) + 1
        for g in np.split(order, cuts) if len(order) else []:
            rows_of[int(tr[g[0]])] = (s, np.sort(g))
    for s in SPLITS:
        tracks = [i for i in sorted(new_split) if new_split[i] == s and i in rows_of]
        n = int(sum(len(rows_of[i][1]) for i in tracks))
        shape = (n,) + tuple(dataset.X("train").shape[1:])
        tmp = out / f".{s}_X.npy.tmp"
        X = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        y = np.empty(n, np.int64)
        track = np.empty(n, np.int64)
        start = np.empty(n, np.float64)
        pos = 0
        for i in tracks:
            ps, rows = rows_of[i]
            m = len(rows)
            X[pos:pos + m] = dataset.X(ps)[rows]
            y[pos:pos + m] = np.asarray(dataset.y(ps))[rows]
            track[pos:pos + m] = i
            start[pos:pos + m] = np.asarray(dataset.start(ps))[rows]
            pos += m
        X.flush()
        del X
        os.replace(tmp, out / f"{s}_X.npy")
        atomic_save_npy(out / f"{s}_y.npy", y)
        atomic_save_npy(out / f"{s}_track.npy", track)
        atomic_save_npy(out / f"{s}_start.npy", start)
    atomic_write_json(out / "norm.json", _norm_stats(out, dataset.params))  # this fold's training tracks only
    atomic_write_json(out / "split.json", {s: [manifest[i]["path"] for i in sorted(new_split) if new_split[i] == s]
                                           for s in SPLITS})
    atomic_write_json(out / "manifest.json", manifest)
    counts: dict[str, Any] = {}
    for s in SPLITS:
        recs = [manifest[i] for i in sorted(new_split) if new_split[i] == s]
        counts[s] = {"tracks": len(recs), "snippets": int(sum(len(rows_of[i][1]) for i in sorted(new_split)
                                                              if new_split[i] == s and i in rows_of)),
                     "per_class": {c: sum(1 for r in recs if r["class"] == c) for c in classes}}
    card = dict(dataset.card)
    card.update({
        "build_id": build_id,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "counts": counts,
        "split": {"cv_folds": int(k), "fold": int(fold), "val_fold": (fold + 1) % k},
        "cv": {"k": int(k), "fold": int(fold), "val_fold": (fold + 1) % k, "parent": str(dataset.path),
               "parent_build_id": dataset.card.get("build_id"), "format": FOLD_FORMAT,
               "rule": f"test = fold {fold}, validation = fold {(fold + 1) % k}, training = the other {k - 2} "
                       "folds; folds dealt per class from the parent's usable tracks; norm from this fold's "
                       "training tracks"},
    })
    atomic_write_json(card_path, card)


def describe_cv(k: int, n_tracks: int | None = None) -> str:
    """One phrase for pages and logs: ``"5-fold cross-validation (every track tested once per seed)"``."""
    tracks = f"all {n_tracks} tracks" if n_tracks else "every track"
    return f"{k}-fold cross-validation ({tracks} tested once per seed)"


def pool_fold_runs(store, fold_run_ids: list[str], pooled_id: str, *, dataset: str, build_id: str | None,
                   kind: str, seed: int, config: dict, n_folds: int) -> dict[tuple[str, str], dict]:
    """Pool the predictions of one (kind, seed)'s ``n_folds`` fold runs into the pooled run ``pooled_id``:
    per (level, split) that every fold has, the folds' predictions together (every track once) and their
    metrics; written to the store as a done run (``fold`` NULL, ``n_folds`` k). Returns the results."""
    from core.evaluate import classification_metrics

    if len(fold_run_ids) != n_folds:
        raise FoldError(f"pooling needs the {n_folds} fold runs, got {len(fold_run_ids)}")
    keys = None
    classes = None
    for rid in fold_run_ids:
        have = {(r["level"], r["split"]) for r in store.query("SELECT level, split FROM metrics WHERE run_id=?",
                                                                (rid,))}
        keys = have if keys is None else keys & have
    results: dict[tuple[str, str], dict] = {}
    for level, split in sorted(keys or ()):
        preds: list[dict] = []
        for fold, rid in enumerate(fold_run_ids):
            extra = store.metrics_extra(rid, level, split) or {}
            classes = classes or extra.get("classes")
            for p in store.query("SELECT track, start_s, true_label, pred_label, scores FROM predictions"
                                 " WHERE run_id=? AND level=? AND split=?", (rid, level, split)):
                preds.append({"track": p["track"], "start_s": p["start_s"], "true": p["true_label"],
                              "pred": p["pred_label"], "fold": fold,
                              "scores": json.loads(p["scores"]) if p["scores"] else None})
        if not classes:
            raise FoldError(f"the fold runs of {pooled_id} have no class list in their metrics")
        idx = {c: i for i, c in enumerate(classes)}
        metrics = classification_metrics([idx[p["true"]] for p in preds], [idx[p["pred"]] for p in preds], classes)
        metrics["n_folds"] = int(n_folds)
        results[(level, split)] = {"metrics": metrics, "predictions": preds}
    store.upsert_run(pooled_id, dataset, build_id, kind, seed, config, "running", fold=None, n_folds=n_folds)
    store.write_evaluation(pooled_id, results, "done")
    store.set_status(pooled_id, "done", f"pooled over {n_folds} folds: {', '.join(fold_run_ids)}")
    return results
