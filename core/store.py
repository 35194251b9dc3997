"""SQLite experiment store: ``STORE/experiments.sqlite`` + ``STORE/runs/<run_id>/`` artefacts.

Tables (all writes in transactions; the database is in WAL mode so the dashboard can read while a job writes):

* ``meta``         ``schema_version`` (a store written by a newer schema is refused, untouched);
* ``runs``         one row per (dataset build, model kind, seed, config): status queued / running / done /
                   failed / stopped, timestamps, epochs run; with cross-validation (``core.folds``) one row
                   per fold (``fold`` 0..k-1, ``n_folds`` k; ``dataset`` is the fold's folder) and one
                   *pooled* row per (kind, seed) (``fold`` NULL, ``n_folds`` k): the folds' predictions
                   pooled, every track once, the row that results and summaries read;
* ``epochs``       per-epoch training history;
* ``metrics``      per run, level (segment | track_sum | track_vote | track_logprob | full) and split
                   (val | test): accuracy, macro-F1 and a JSON ``extra`` (confusion matrix, per-class P/R);
* ``predictions``  per run, level, split and item: track path, true and predicted class, scores.

A run folder holds ``best.keras``, ``last.keras``, ``state.json``, ``history.json`` and ``model_card.json``.
:func:`results_frame` / :func:`summary_frame` give pandas views; :func:`export_results` /
:func:`import_results` move results through a JSON (full) or CSV (metrics only) file.
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

from core.errors import GenreLabError
from core.utils import atomic_write_bytes, atomic_write_json, read_json, stable_hash

SCHEMA_VERSION = 3  # 2: runs.monitor, runs.best_value, epochs.val_track_accuracy; 3: runs.fold, runs.n_folds
#                      (cross-validation); added to older stores in place
DB_NAME = "experiments.sqlite"
EXPORT_FORMAT = "genre-lab-results"
STATUSES = ("queued", "running", "done", "failed", "stopped")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, dataset TEXT NOT NULL, build_id TEXT, kind TEXT NOT NULL, seed INTEGER NOT NULL,
    config TEXT NOT NULL, status TEXT NOT NULL, created_at TEXT, updated_at TEXT, finished_at TEXT,
    epochs INTEGER NOT NULL DEFAULT 0, best_epoch INTEGER, message TEXT, source TEXT DEFAULT 'local',
    monitor TEXT, best_value REAL, fold INTEGER, n_folds INTEGER);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL, epoch INTEGER NOT NULL, loss REAL, accuracy REAL, val_loss REAL,
    val_accuracy REAL, lr REAL, seconds REAL, val_track_accuracy REAL, PRIMARY KEY (run_id, epoch));
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL, level TEXT NOT NULL, split TEXT NOT NULL, accuracy REAL, macro_f1 REAL,
    n INTEGER, extra TEXT, PRIMARY KEY (run_id, level, split));
CREATE TABLE IF NOT EXISTS predictions (
    run_id TEXT NOT NULL, level TEXT NOT NULL, split TEXT NOT NULL, track TEXT NOT NULL, start_s REAL,
    true_label TEXT, pred_label TEXT, scores TEXT);
CREATE INDEX IF NOT EXISTS predictions_run ON predictions (run_id, level, split);
"""


class StoreError(GenreLabError):
    """A store that cannot be used (newer schema, not a store, ...); the message is for the user."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def make_run_id(build_id: str, kind: str, seed: int, config: dict, fold: int | None = None,
                n_folds: int | None = None) -> str:
    """Deterministic id: the same dataset, model, seed and settings always map to the same run.

    Cross-validation: fold ``f`` of ``k`` gives ``KIND-sSEED-fF-HASH`` (``build_id``: the fold's), the pooled run
    of the ``k`` folds ``KIND-sSEED-cvK-HASH`` (``build_id``: the parent dataset's); held-out runs keep the ids
    they always had."""
    cfg = {k: v for k, v in config.items() if k not in ("workers",)}
    key: dict = {'build': build_id, 'kind': kind, 'seed': seed, 'config': cfg}
    tag = ""
    if n_folds:
        key.update(fold=fold, n_folds=int(n_folds))
        tag = f"-f{fold}" if fold is not None else f"-cv{int(n_folds)}"
    return f"{kind}-s{seed}{tag}-{stable_hash(key, 10)}"


#: columns added after schema 1: (table, column, type); a v1 store gains them in place (NULL in old rows)
ADDED_COLUMNS = (("runs", "monitor", "TEXT"), ("runs", "best_value", "REAL"),
                 ("epochs", "val_track_accuracy", "REAL"), ("runs", "fold", "INTEGER"), ("runs", "n_folds", "INTEGER"))
EPOCH_COLUMNS = ("run_id", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds",
                 "val_track_accuracy")


def _add_missing_columns(con) -> None:
    for table, column, kind in ADDED_COLUMNS:
        have = {r[1] for r in con.execute(f"PRAGMA table_info({table})").fetchall()}
        if column not in have:
            con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _epoch_rows(run_id: str | None, records: Iterable[dict]) -> list[tuple]:
    return [(run_id if run_id is not None else r["run_id"], int(r["epoch"]), _num(r.get("loss")),
             _num(r.get("accuracy")), _num(r.get("val_loss")), _num(r.get("val_accuracy")), _num(r.get("lr")),
             _num(r.get("seconds")), _num(r.get("val_track_accuracy"))) for r in records]


_INSERT_EPOCHS = f"INSERT OR REPLACE INTO epochs ({', '.join(EPOCH_COLUMNS)}) VALUES ({','.join('?' * len(EPOCH_COLUMNS))})"


class Store:
    """An experiment store folder. ``Store(path)`` creates it when missing (``create=False`` refuses)."""

    def __init__(self, path: str | os.PathLike, create: bool = True):
        self.path = Path(path)
        self.db_path = self.path / DB_NAME
        if not self.db_path.exists():
            if not create:
                raise StoreError(f"no experiment store at {self.path} (no {DB_NAME})")
            if self.path.exists() and not self.path.is_dir():
                raise StoreError(f"{self.path} is a file, not a store folder")
            self.path.mkdir(parents=True, exist_ok=True)
        if self._check_version() < SCHEMA_VERSION:  # a newer store is refused before any write
            con = self._connect()
            try:
                con.execute("PRAGMA journal_mode=WAL")  # readers (the dashboard) never wait for the writer
            finally:
                con.close()
            with self.transaction() as con:
                for stmt in SCHEMA.split(";"):
                    if stmt.strip():
                        con.execute(stmt)
                _add_missing_columns(con)
                con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                con.execute("INSERT OR IGNORE INTO meta VALUES ('created_at', ?)", (_now(),))
        (self.path / "runs").mkdir(exist_ok=True)

    # connection ------------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        con.row_factory = sqlite3.Row
        return con

    def _check_version(self) -> int:
        """The store's schema version (0 = new or empty); raises :class:`StoreError` for a newer one."""
        if not self.db_path.exists():
            return 0
        try:
            con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
            try:
                row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            finally:
                con.close()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0  # an empty database file: set it up
            raise StoreError(f"{self.db_path} is not a usable Genre Lab experiment store ({exc})") from exc
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.db_path} is not a Genre Lab experiment store ({exc})") from exc
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(f"the store {self.path} was written by a newer Genre Lab (schema {version}, this "
                             f"version reads up to {SCHEMA_VERSION}): update Genre Lab or use another store folder")
        return version

    @contextmanager
    def transaction(self):
        """A write transaction (``BEGIN IMMEDIATE``): all or nothing."""
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.close()

    def query(self, sql: str, args: Iterable = ()) -> list[dict]:
        con = self._connect()
        try:
            return [dict(r) for r in con.execute(sql, tuple(args)).fetchall()]
        finally:
            con.close()

    @property
    def schema_version(self) -> int:
        return int(self.query("SELECT value FROM meta WHERE key='schema_version'")[0]["value"])

    # runs ------------------------------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        return self.path / "runs" / run_id

    def get_run(self, run_id: str) -> dict | None:
        rows = self.query("SELECT * FROM runs WHERE id=?", (run_id,))
        if not rows:
            return None
        r = rows[0]
        r["config"] = json.loads(r["config"])
        return r

    def upsert_run(self, run_id: str, dataset: str, build_id: str | None, kind: str, seed: int, config: dict,
                   status: str = "queued", source: str = "local", fold: int | None = None,
                   n_folds: int | None = None) -> None:
        """Insert a run, or update its status (and dataset path). ``fold`` / ``n_folds``: a fold run
        (``fold`` 0..k-1) or a pooled cross-validation run (``fold`` None, ``n_folds`` k)."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        now = _now()
        with self.transaction() as con:
            con.execute(
                "INSERT INTO runs (id, dataset, build_id, kind, seed, config, status, created_at, updated_at, source,"
                " fold, n_folds) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET"
                " status=excluded.status, updated_at=excluded.updated_at, dataset=excluded.dataset",
                (run_id, str(dataset), build_id, kind, int(seed), json.dumps(config, sort_keys=True), status, now,
                 now, source, None if fold is None else int(fold), int(n_folds) if n_folds else None))

    def set_status(self, run_id: str, status: str, message: str | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        now = _now()
        with self.transaction() as con:
            con.execute("UPDATE runs SET status=?, updated_at=?, message=COALESCE(?, message),"
                        " finished_at=CASE WHEN ? IN ('done','failed','stopped') THEN ? ELSE finished_at END"
                        " WHERE id=?", (status, now, message, status, now, run_id))

    def add_epochs(self, run_id: str, records: list[dict]) -> None:
        """Insert or replace epoch records (``epoch`` 1-based) and update the run's epoch count."""
        if not records:
            return
        with self.transaction() as con:
            con.executemany(_INSERT_EPOCHS, _epoch_rows(run_id, records))
            best = [r for r in records if r.get("best")]
            monitor = best[-1].get("monitor") if best else None
            con.execute("UPDATE runs SET epochs=MAX(epochs, ?), best_epoch=COALESCE(?, best_epoch),"
                        " monitor=COALESCE(?, monitor), best_value=COALESCE(?, best_value), updated_at=?"
                        " WHERE id=?", (max(int(r["epoch"]) for r in records), best[-1]["epoch"] if best else None,
                                        monitor, _num(best[-1].get(monitor)) if monitor else None, _now(), run_id))

    def write_evaluation(self, run_id: str, results: dict[tuple[str, str], dict], status: str = "done") -> None:
        """Replace a run's metrics and predictions with ``results`` (from ``core.evaluate.evaluate_run``)
        and set its status, in one transaction."""
        now = _now()
        with self.transaction() as con:
            con.execute("DELETE FROM metrics WHERE run_id=?", (run_id,))
            con.execute("DELETE FROM predictions WHERE run_id=?", (run_id,))
            for (level, split), r in results.items():
                m = r["metrics"]
                extra = {k: v for k, v in m.items() if k not in ("accuracy", "macro_f1", "n")}
                con.execute("INSERT INTO metrics VALUES (?,?,?,?,?,?,?)",
                            (run_id, level, split, _num(m["accuracy"]), _num(m["macro_f1"]), m.get("n"),
                             json.dumps(extra)))
                con.executemany(
                    "INSERT INTO predictions VALUES (?,?,?,?,?,?,?,?)",
                    [(run_id, level, split, p["track"], p.get("start_s"), p["true"], p["pred"],
                      json.dumps(p.get("scores"))) for p in r.get("predictions", [])])
            con.execute("UPDATE runs SET status=?, updated_at=?, finished_at=? WHERE id=?",
                        (status, now, now, run_id))

    def runs(self) -> list[dict]:
        return self.query("SELECT * FROM runs ORDER BY kind, seed, created_at")

    def epochs(self, run_id: str) -> list[dict]:
        return self.query("SELECT * FROM epochs WHERE run_id=? ORDER BY epoch", (run_id,))

    def predictions_frame(self, run_id: str, level: str | None = None, split: str | None = None):
        import pandas as pd

        sql, args = "SELECT * FROM predictions WHERE run_id=?", [run_id]
        if level:
            sql, args = sql + " AND level=?", args + [level]
        if split:
            sql, args = sql + " AND split=?", args + [split]
        df = pd.DataFrame(self.query(sql, args))
        if len(df):
            df["scores"] = df["scores"].map(json.loads)
        return df

    def metrics_extra(self, run_id: str, level: str, split: str) -> dict | None:
        rows = self.query("SELECT extra FROM metrics WHERE run_id=? AND level=? AND split=?", (run_id, level, split))
        return json.loads(rows[0]["extra"]) if rows else None


# ---------------------------------------------------------------------------------------------------------
# frames
# ---------------------------------------------------------------------------------------------------------
RESULT_COLUMNS = ["run_id", "kind", "seed", "level", "split", "accuracy", "macro_f1", "n", "status", "epochs",
                  "best_epoch", "dataset", "build_id", "source", "monitor", "best_value", "n_folds", "fold"]


def _as_store(store) -> Store:
    return store if isinstance(store, Store) else Store(store, create=False)


def results_frame(store, folds: bool = False):
    """One row per (run, level, split) with the run's kind, seed and status: the results in one call.

    Cross-validated experiments appear as their pooled runs (one per kind and seed, ``n_folds`` = k, every
    track once); the single folds' rows only with ``folds=True`` (``fold`` 0..k-1): averaging them with the
    pooled rows would count every track twice."""
    import pandas as pd

    s = _as_store(store)
    where = "" if folds else " WHERE r.fold IS NULL"
    rows = s.query("SELECT m.run_id, r.kind, r.seed, m.level, m.split, m.accuracy, m.macro_f1, m.n, r.status,"
                   " r.epochs, r.best_epoch, r.dataset, r.build_id, r.source, r.monitor, r.best_value, r.n_folds,"
                   f" r.fold FROM metrics m JOIN runs r ON r.id = m.run_id{where}"
                   " ORDER BY r.kind, m.level, m.split, r.seed")
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def summary_frame(results):
    """Mean ± SD over seeds per (kind, level, split); ``results`` is a frame or a store."""
    import pandas as pd

    df = results if isinstance(results, pd.DataFrame) else results_frame(results)
    cols = ["kind", "level", "split", "n_seeds", "accuracy_mean", "accuracy_sd", "macro_f1_mean", "macro_f1_sd",
            "accuracy", "macro_f1"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    g = df.groupby(["kind", "level", "split"], sort=False)
    out = g.agg(n_seeds=("seed", "nunique"), accuracy_mean=("accuracy", "mean"), accuracy_sd=("accuracy", "std"),
                macro_f1_mean=("macro_f1", "mean"), macro_f1_sd=("macro_f1", "std")).reset_index()
    out[["accuracy_sd", "macro_f1_sd"]] = out[["accuracy_sd", "macro_f1_sd"]].fillna(0.0)
    out["accuracy"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(out["accuracy_mean"], out["accuracy_sd"])]
    out["macro_f1"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(out["macro_f1_mean"], out["macro_f1_sd"])]
    order = {lvl: i for i, lvl in enumerate(("segment", "track_sum", "track_vote", "track_logprob", "full"))}
    out = out.sort_values(["split", "kind", "level"], key=lambda c: c.map(order) if c.name == "level" else c)
    return out[cols].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------
# export / import
# ---------------------------------------------------------------------------------------------------------
def export_results(store, path: str | os.PathLike, include_predictions: bool = False) -> Path:
    """Write the store's results to ``path``: ``.json`` (runs, epochs, metrics with extras, optionally
    predictions; re-importable) or ``.csv`` (the results frame)."""
    s = _as_store(store)
    path = Path(path)
    if path.suffix.lower() == ".csv":
        atomic_write_bytes(path, results_frame(s).to_csv(index=False).encode("utf-8"))
        return path
    runs = s.runs()
    for r in runs:
        r["config"] = json.loads(r["config"])
    metrics = s.query("SELECT * FROM metrics ORDER BY run_id, level, split")
    for m in metrics:
        m["extra"] = json.loads(m["extra"]) if m["extra"] else {}
    doc = {"format": EXPORT_FORMAT, "schema_version": SCHEMA_VERSION, "exported_at": _now(), "runs": runs,
           "epochs": s.query("SELECT * FROM epochs ORDER BY run_id, epoch"), "metrics": metrics}
    if include_predictions:
        preds = s.query("SELECT * FROM predictions")
        for p in preds:
            p["scores"] = json.loads(p["scores"]) if p["scores"] else None
        doc["predictions"] = preds
    atomic_write_json(path, doc)
    return path


def import_results(path: str | os.PathLike, store=None):
    """Read an export (JSON or CSV) as a results frame (same columns as :func:`results_frame`); with
    ``store``, also insert its runs, epochs and metrics there (``source='imported'``; existing runs kept)."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise StoreError(f"results file not found: {path}")
    if path.suffix.lower() == ".csv":
        df = pd.read_csv(path)
        missing = [c for c in ("kind", "seed", "level", "split", "accuracy") if c not in df.columns]
        if missing:
            raise StoreError(f"{path} is not a results export (missing columns: {', '.join(missing)})")
        if store is not None:
            raise StoreError("CSV exports hold metrics only; import a JSON export into a store")
        for c in RESULT_COLUMNS:
            if c not in df.columns:
                df[c] = None
        return df[RESULT_COLUMNS]
    try:
        doc = read_json(path)
    except (ValueError, OSError) as exc:
        raise StoreError(f"{path} is not a readable results export ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        raise StoreError(f"{path} is not a Genre Lab results export")
    if int(doc.get("schema_version", 0)) > SCHEMA_VERSION:
        raise StoreError(f"{path} was exported by a newer Genre Lab (schema {doc['schema_version']}); update")
    runs = {r["id"]: r for r in doc["runs"]}
    rows = []
    for m in doc["metrics"]:
        r = runs.get(m["run_id"], {})
        if r.get("fold") is not None:  # a single fold: its pooled run is the result (as in results_frame)
            continue
        rows.append({"run_id": m["run_id"], "kind": r.get("kind"), "seed": r.get("seed"), "level": m["level"],
                     "split": m["split"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m.get("n"),
                     "status": r.get("status"), "epochs": r.get("epochs"), "best_epoch": r.get("best_epoch"),
                     "dataset": r.get("dataset"), "build_id": r.get("build_id"), "source": "imported",
                     "monitor": r.get("monitor"), "best_value": r.get("best_value"), "n_folds": r.get("n_folds"),
                     "fold": None})
    if store is not None:
        s = store if isinstance(store, Store) else Store(store)
        with s.transaction() as con:
            have = {r["id"] for r in con.execute("SELECT id FROM runs").fetchall()}
            for r in doc["runs"]:
                if r["id"] in have:
                    continue
                con.execute("INSERT INTO runs (id, dataset, build_id, kind, seed, config, status, created_at,"
                            " updated_at, finished_at, epochs, best_epoch, message, source)"
                            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?, 'imported')",
                            (r["id"], r["dataset"], r.get("build_id"), r["kind"], r["seed"],
                             json.dumps(r.get("config", {}), sort_keys=True), r["status"], r.get("created_at"),
                             r.get("updated_at"), r.get("finished_at"), r.get("epochs", 0), r.get("best_epoch"),
                             r.get("message")))
                con.executemany(_INSERT_EPOCHS, _epoch_rows(None, [e for e in doc.get("epochs", [])
                                                                    if e["run_id"] == r["id"]]))
                con.execute("UPDATE runs SET monitor=?, best_value=?, fold=?, n_folds=? WHERE id=?",
                            (r.get("monitor"), _num(r.get("best_value")), r.get("fold"), r.get("n_folds"), r["id"]))
                con.executemany("INSERT OR REPLACE INTO metrics VALUES (?,?,?,?,?,?,?)",
                                [(m["run_id"], m["level"], m["split"], m["accuracy"], m["macro_f1"], m.get("n"),
                                  json.dumps(m.get("extra") or {})) for m in doc["metrics"] if m["run_id"] == r["id"]])
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)
