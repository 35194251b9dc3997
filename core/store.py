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

A run folder holds ``best.keras``, ``last.keras``, ``state.json``, ``history.json``, ``model_card.json`` and,
once evaluated, ``results.json`` (the run's row, epochs, metrics and predictions: what the index holds about it).
:func:`results_frame` / :func:`summary_frame` give pandas views; :func:`export_results` /
:func:`import_results` move results through a JSON (full) or CSV (metrics only) file.

The database is only the index of the run folders: opening a store runs SQLite's ``PRAGMA quick_check`` (once per
version of the file and process) and refuses a damaged index, or a missing / empty one beside run folders, with a
:class:`StoreError` naming the file; :func:`repair_store` (``python -m core repair-store STORE``) rebuilds the
index from the run folders and keeps the old file beside it.
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
RUNS_NAME = "runs"
RESULTS_NAME = "results.json"  # in each evaluated run folder: what the index holds about the run
RESULTS_FORMAT = "genre-lab-run-results"
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


class DamagedStoreError(StoreError):
    """The store's index (``experiments.sqlite``) is damaged, empty or missing while run folders hold results; the
    message names the file and says to run ``python -m core repair-store``."""


def _repair_hint(path: Path) -> str:
    return (f"The runs themselves are in {path / RUNS_NAME}: rebuild the index from them with "
            f"`python -m core repair-store {path}` (the old file is kept beside it)")


def run_folders(path: Path) -> list[Path]:
    """The run folders of a store (``runs/<run_id>/``): their presence means the store had data."""
    try:
        return sorted(p for p in (path / RUNS_NAME).iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


_DAMAGE_WORDS = ("malformed", "not a database", "disk image", "corrupt", "file is encrypted")


def _sqlite_error(db_path: Path, exc: sqlite3.DatabaseError) -> Exception:
    """A SQLite error as the user should read it: a damaged index -> :class:`DamagedStoreError`, a full disk ->
    :class:`core.errors.DiskFullError`; anything else is returned unchanged (to be re-raised)."""
    text = str(exc)
    if any(w in text.lower() for w in _DAMAGE_WORDS):
        return DamagedStoreError(f"the experiment store's index {db_path} is damaged ({text}). "
                                 + _repair_hint(db_path.parent))
    if "disk is full" in text.lower():
        from core.errors import DiskFullError

        return DiskFullError(f"the disk holding {db_path} is full ({text}): free some space and run again")
    return exc


@contextmanager
def _as_user_errors(db_path: Path):
    """Re-raise a SQLite error of the block as :func:`_sqlite_error` reads it (damaged index, full disk)."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        err = _sqlite_error(db_path, exc)
        if err is exc:
            raise
        raise err from exc


#: (db path) -> the file versions that passed quick_check in this process (checked once per version)
_CHECKED: dict[str, tuple] = {}


def _file_version(db_path: Path) -> tuple:
    out = []
    for suffix in ("", "-wal"):
        try:
            st = os.stat(f"{db_path}{suffix}")
            out.append((st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            out.append(None)
    return tuple(out)


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

    def __init__(self, path: str | os.PathLike, create: bool = True, *, _new_index: bool = False):
        self.path = Path(path)
        self.db_path = self.path / DB_NAME
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{self.path} is a file, not a store folder")
        runs = [] if _new_index else run_folders(self.path)
        if not self.db_path.exists():
            if runs:  # never start a new index over a store that had data
                raise DamagedStoreError(f"the experiment store {self.path} has {len(runs)} run folder(s) but no index "
                                        f"({DB_NAME} is missing), so its results cannot be listed. "
                                        + _repair_hint(self.path))
            if not create:
                raise StoreError(f"no experiment store at {self.path} (no {DB_NAME})")
            self.path.mkdir(parents=True, exist_ok=True)
        elif self.db_path.stat().st_size == 0 and runs:
            raise DamagedStoreError(f"the experiment store's index {self.db_path} is empty (0 bytes) although "
                                    f"{len(runs)} run folder(s) hold results: it was truncated or overwritten. "
                                    + _repair_hint(self.path))
        version = self._check_version()
        if version == 0 and runs:
            raise DamagedStoreError(f"the experiment store's index {self.db_path} holds no tables although "
                                    f"{len(runs)} run folder(s) hold results. " + _repair_hint(self.path))
        if runs and version:
            self._check_listed(runs)
        if version < SCHEMA_VERSION:  # a newer store is refused before any write
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
        (self.path / RUNS_NAME).mkdir(exist_ok=True)

    # connection ------------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        con.row_factory = sqlite3.Row
        return con

    def _damaged(self, detail: str) -> DamagedStoreError:
        return DamagedStoreError(f"the experiment store's index {self.db_path} is damaged ({detail}). "
                                 + _repair_hint(self.path))

    def _check_listed(self, runs: list[Path]) -> None:
        """Run folders with results that the index does not list mean the index was replaced (an empty one
        started over a store that had data) or lost rows: :class:`DamagedStoreError` instead of showing a part."""
        listed = {r["id"] for r in self.query("SELECT id FROM runs")}
        missing = [f.name for f in runs if f.name not in listed
                   and any((f / n).exists() for n in (RESULTS_NAME, "history.json", "state.json"))]
        if missing:
            raise DamagedStoreError(
                f"the experiment store's index {self.db_path} lists {len(listed)} run(s), but {len(missing)} run "
                f"folder(s) with results are not in it ({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}): "
                "the index was replaced or lost rows. " + _repair_hint(self.path))

    def integrity_problems(self, con: sqlite3.Connection) -> list[str]:
        """SQLite's ``PRAGMA quick_check`` (structure of every page, record formats, NOT NULL): [] when sound."""
        rows = [" ".join(str(r[0]).replace("*** in database main ***", "").split())
                for r in con.execute("PRAGMA quick_check(20)").fetchall()]
        return [] if rows == ["ok"] else rows

    def _check_version(self) -> int:
        """The store's schema version (0 = new or empty) after an integrity check of the file (``quick_check``,
        once per version of the file in this process); raises :class:`DamagedStoreError` for a damaged index
        and :class:`StoreError` for a newer one."""
        if not self.db_path.exists() or self.db_path.stat().st_size == 0:
            return 0
        key = str(self.db_path.resolve())
        try:
            con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
            try:
                version_now = _file_version(self.db_path)
                if _CHECKED.get(key) != version_now:
                    problems = self.integrity_problems(con)
                    if problems:
                        raise self._damaged("; ".join(problems[:3]) + (" ..." if len(problems) > 3 else ""))
                    _CHECKED[key] = version_now
                row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            finally:
                con.close()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0  # an empty database file: set it up
            err = _sqlite_error(self.db_path, exc)
            if err is not exc:
                raise err from exc
            raise StoreError(f"{self.db_path} is not a usable Genre Lab experiment store ({exc})") from exc
        except sqlite3.DatabaseError as exc:
            raise self._damaged(str(exc)) from exc
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(f"the store {self.path} was written by a newer Genre Lab (schema {version}, this "
                             f"version reads up to {SCHEMA_VERSION}): update Genre Lab or use another store folder")
        return version

    @contextmanager
    def transaction(self):
        """A write transaction (``BEGIN IMMEDIATE``): all or nothing. A damaged index or a full disk raise
        :class:`DamagedStoreError` / :class:`core.errors.DiskFullError`."""
        con = self._connect()
        try:
            with _as_user_errors(self.db_path):
                con.execute("BEGIN IMMEDIATE")
                try:
                    yield con
                    con.execute("COMMIT")
                except BaseException:
                    try:
                        con.execute("ROLLBACK")
                    except sqlite3.DatabaseError:
                        pass
                    raise
        finally:
            con.close()

    def query(self, sql: str, args: Iterable = ()) -> list[dict]:
        con = self._connect()
        try:
            with _as_user_errors(self.db_path):
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
        and set its status, in one transaction; the same goes to the run folder's ``results.json`` (when the
        folder exists), so the index can be rebuilt from the folders (:func:`repair_store`)."""
        now = _now()
        run_dir = self.run_dir(run_id)
        if run_dir.is_dir():
            atomic_write_json(run_dir / RESULTS_NAME, self._results_doc(run_id, results, status, now))
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

    def _results_doc(self, run_id: str, results: dict[tuple[str, str], dict], status: str, now: str) -> dict:
        """``results.json`` of a run: its row (status and finish time as they are about to be), epochs,
        metrics (with extras) and predictions."""
        run = self.get_run(run_id) or {"id": run_id}
        run.update(status=status, updated_at=now, finished_at=now)
        metrics, preds = [], []
        for (level, split), r in results.items():
            m = r["metrics"]
            metrics.append({"run_id": run_id, "level": level, "split": split, "accuracy": _num(m["accuracy"]),
                            "macro_f1": _num(m["macro_f1"]), "n": m.get("n"),
                            "extra": {k: v for k, v in m.items() if k not in ("accuracy", "macro_f1", "n")}})
            preds += [{"run_id": run_id, "level": level, "split": split, "track": p["track"],
                       "start_s": p.get("start_s"), "true_label": p["true"], "pred_label": p["pred"],
                       "scores": p.get("scores")} for p in r.get("predictions", [])]
        return {"format": RESULTS_FORMAT, "schema_version": SCHEMA_VERSION, "written_at": now, "run": run,
                "epochs": self.epochs(run_id), "metrics": metrics, "predictions": preds}

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


# ---------------------------------------------------------------------------------------------------------
# repair: rebuild the index from the run folders
# ---------------------------------------------------------------------------------------------------------
_TABLES = ("runs", "epochs", "metrics", "predictions")


def _salvage(db_path: Path) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """What can still be read of an old index: ``({table: rows}, {table: problem})``; a table with a problem
    was read only in part (or not at all) and is not trusted for runs whose folder lacks ``results.json``."""
    rows: dict[str, list[dict]] = {t: [] for t in _TABLES}
    problems: dict[str, str] = {}
    if not db_path.exists() or db_path.stat().st_size == 0:
        return rows, {t: "no index" for t in _TABLES}
    try:
        con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    except sqlite3.DatabaseError as exc:
        return rows, {t: str(exc) for t in _TABLES}
    con.row_factory = sqlite3.Row
    try:
        for t in _TABLES:
            try:
                for r in con.execute(f"SELECT * FROM {t}"):
                    rows[t].append(dict(r))
            except sqlite3.DatabaseError as exc:
                problems[t] = str(exc)
    finally:
        con.close()
    return rows, problems


def _read_json_or_none(path: Path) -> Any:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def _run_from_folder(folder: Path) -> tuple[dict | None, list[dict], str]:
    """``(run row, epoch records, note)`` rebuilt from an older run folder (no ``results.json``): the row from
    ``model_card.json`` and ``state.json``, the epochs from ``history.json`` (or the state's history). ``None``
    when the folder does not say which run it is."""
    card = _read_json_or_none(folder / "model_card.json")
    state = _read_json_or_none(folder / "state.json")
    history = _read_json_or_none(folder / "history.json")
    card = card if isinstance(card, dict) else {}
    state = state if isinstance(state, dict) else {}
    if not isinstance(history, list):
        history = state.get("history") if isinstance(state.get("history"), list) else []
    kind = card.get("kind") or state.get("kind")
    seed = card.get("seed", state.get("seed"))
    ds = state.get("dataset") if isinstance(state.get("dataset"), dict) else {}
    dataset = card.get("dataset") or ds.get("path")
    if not kind or seed is None or not dataset:
        return None, [], "no readable model_card.json or state.json naming its model kind, seed and dataset"
    config = card.get("config") if isinstance(card.get("config"), dict) else state.get("config")
    epochs = [r for r in history if isinstance(r, dict) and "epoch" in r]
    best = [r for r in epochs if r.get("best")]
    monitor = best[-1].get("monitor") if best else None
    row = {"id": folder.name, "dataset": str(dataset), "build_id": card.get("dataset_build_id") or ds.get("build_id"),
           "kind": str(kind), "seed": int(seed), "config": config if isinstance(config, dict) else {},
           "status": "stopped", "created_at": state.get("started_at"), "updated_at": _now(), "finished_at": None,
           "epochs": max([int(r["epoch"]) for r in epochs] or [0]), "best_epoch": best[-1]["epoch"] if best else None,
           "source": "local", "monitor": monitor, "best_value": _num(best[-1].get(monitor)) if monitor else None}
    note = "" if isinstance(config, dict) else "its training settings were not recorded (config left empty)"
    return row, epochs, note


def _insert_run(con, run: dict, epochs: list[dict], metrics: list[dict], predictions: list[dict]) -> None:
    cfg = run.get("config")
    cfg = cfg if isinstance(cfg, str) else json.dumps(cfg or {}, sort_keys=True)
    con.execute("INSERT OR REPLACE INTO runs (id, dataset, build_id, kind, seed, config, status, created_at,"
                " updated_at, finished_at, epochs, best_epoch, message, source, monitor, best_value)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run["id"], str(run.get("dataset") or ""), run.get("build_id"), run["kind"], int(run["seed"]), cfg,
                 run.get("status") if run.get("status") in STATUSES else "stopped", run.get("created_at"),
                 run.get("updated_at"), run.get("finished_at"), int(run.get("epochs") or 0), run.get("best_epoch"),
                 run.get("message"), run.get("source") or "local", run.get("monitor"), _num(run.get("best_value"))))
    con.executemany(_INSERT_EPOCHS, _epoch_rows(run["id"], epochs))
    con.executemany("INSERT OR REPLACE INTO metrics VALUES (?,?,?,?,?,?,?)",
                    [(run["id"], m["level"], m["split"], _num(m.get("accuracy")), _num(m.get("macro_f1")), m.get("n"),
                      m["extra"] if isinstance(m.get("extra"), str) else json.dumps(m.get("extra") or {}))
                     for m in metrics])
    con.executemany("INSERT INTO predictions VALUES (?,?,?,?,?,?,?,?)",
                    [(run["id"], p["level"], p["split"], p["track"], p.get("start_s"), p.get("true_label"),
                      p.get("pred_label"),
                      p["scores"] if isinstance(p.get("scores"), str) else json.dumps(p.get("scores")))
                     for p in predictions])


EVALUATE_AGAIN = ("index rebuilt by repair-store; its metrics were not in the run folder: run the same run-experiment "
                  "command again to evaluate it (a CRNN whose training finished is not trained again)")


def repair_store(path: str | os.PathLike, force: bool = False) -> dict[str, Any]:
    """Rebuild ``STORE/experiments.sqlite`` from the run folders (``python -m core repair-store STORE``).

    Each run folder gives its run: from ``results.json`` (runs evaluated by this version: row, epochs, metrics
    and predictions, complete), else from ``model_card.json`` / ``state.json`` / ``history.json`` (the row and
    its epochs) plus its metrics and predictions from the old index when those tables can still be read whole;
    otherwise the run is listed as ``stopped`` with a message, and running the same ``run-experiment`` command
    again evaluates it without training it again. Runs of the old index without a folder (imported results)
    are kept when their rows can be read. The old file is renamed ``experiments.sqlite.before-repair-TIME``
    (never deleted). Takes the store's lock (no experiment may write meanwhile). A sound index that lists every
    run folder is left alone unless ``force``. Returns a report: ``rebuilt``, ``from_old_index``,
    ``evaluate_again``, ``unreadable`` ({folder: why}), ``kept_from_old_index``, ``old_index`` (new name or
    None), ``lost`` (what could not be recovered) and ``healthy``.
    """
    from core.jobs import StoreLock

    path = Path(path)
    if not path.is_dir():
        raise StoreError(f"no experiment store at {path} (not a folder)")
    db = path / DB_NAME
    folders = run_folders(path)
    if not folders and not db.exists():
        raise StoreError(f"{path} is not an experiment store: it has neither {DB_NAME} nor run folders in "
                         f"{RUNS_NAME}/")
    report: dict[str, Any] = {"rebuilt": [], "from_old_index": [], "evaluate_again": [], "unreadable": {},
                              "kept_from_old_index": [], "old_index": None, "lost": [], "healthy": False,
                              "notes": {}}
    with StoreLock(path, command="python -m core repair-store " + str(path)):
        if not force:
            try:
                store = Store(path, create=False)
                listed = {r["id"] for r in store.query("SELECT id FROM runs")}
                if all(f.name in listed for f in folders):
                    report["healthy"] = True
                    return report
            except StoreError:
                pass
        old, problems = _salvage(db)
        old_runs = {r["id"]: r for r in old["runs"]}

        def by_run(table: str) -> dict[str, list[dict]]:
            out: dict[str, list[dict]] = {}
            for r in old[table]:
                out.setdefault(r["run_id"], []).append(r)
            return out

        old_epochs, old_metrics, old_preds = by_run("epochs"), by_run("metrics"), by_run("predictions")
        plan: list[tuple[dict, list, list, list]] = []
        for f in folders:
            doc = _read_json_or_none(f / RESULTS_NAME)
            if isinstance(doc, dict) and doc.get("format") == RESULTS_FORMAT and isinstance(doc.get("run"), dict):
                run = dict(doc["run"], id=f.name)
                plan.append((run, doc.get("epochs") or [], doc.get("metrics") or [], doc.get("predictions") or []))
                report["rebuilt"].append(f.name)
                continue
            run, epochs, note = _run_from_folder(f)
            if run is None:
                if f.name in old_runs and "runs" not in problems:
                    run = dict(old_runs[f.name])
                    epochs = old_epochs.get(f.name, [])
                else:
                    report["unreadable"][f.name] = note
                    continue
            if note:
                report["notes"][f.name] = note
            prev = old_runs.get(f.name)
            if prev and "runs" not in problems:  # the old row keeps the original timestamps, config and message
                run = dict(run, **{k: prev[k] for k in ("created_at", "config", "source", "dataset", "build_id")
                                   if prev.get(k)})
            if f.name in old_metrics and not {"metrics", "predictions"} & set(problems):
                run.update(status=(prev or {}).get("status") or "done", finished_at=(prev or {}).get("finished_at"),
                           message=(prev or {}).get("message"))
                plan.append((run, epochs, old_metrics[f.name], old_preds.get(f.name, [])))
                report["from_old_index"].append(f.name)
            else:
                run.update(status="stopped", message=EVALUATE_AGAIN)
                plan.append((run, epochs, [], []))
                report["evaluate_again"].append(f.name)
        in_folders = {f.name for f in folders}
        for rid, r in old_runs.items():  # imported results (no folder): kept when readable
            if rid in in_folders:
                continue
            if {"metrics", "epochs"} & set(problems):
                report["lost"].append(f"run {rid} (no run folder; the old index is damaged where its results were)")
                continue
            plan.append((dict(r), old_epochs.get(rid, []), old_metrics.get(rid, []), old_preds.get(rid, [])))
            report["kept_from_old_index"].append(rid)
        if "runs" in problems and db.exists() and db.stat().st_size:
            report["lost"].append(f"runs listed only in the old index could not be read ({problems['runs']})")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            p = path / f"{DB_NAME}{suffix}"
            if p.exists():
                target = path / f"{DB_NAME}.before-repair-{stamp}{suffix}"
                os.replace(p, target)
                if not suffix:
                    report["old_index"] = str(target)
        _CHECKED.pop(str(db.resolve()), None)
        store = Store(path, _new_index=True)
        with store.transaction() as con:
            for run, epochs, metrics, preds in plan:
                _insert_run(con, run, epochs, metrics, preds)
    return report


def _cli_repair(a) -> int:
    rep = repair_store(a.store, force=a.force)
    if rep["healthy"]:
        print(f"the index of {a.store} passes its integrity check and lists every run folder: nothing to repair "
              "(--force rebuilds it anyway)")
        return 0
    if rep["old_index"]:
        print(f"the old index was kept as {rep['old_index']}")
    print(f"rebuilt the index of {a.store}: {len(rep['rebuilt'])} run(s) complete from their results.json, "
          f"{len(rep['from_old_index'])} with their metrics from the old index, {len(rep['evaluate_again'])} "
          f"without metrics, {len(rep['kept_from_old_index'])} imported run(s) kept")
    if rep["evaluate_again"]:
        print("these runs have their training history but no metrics (evaluated before run folders kept results.json, "
              "or never): run the same run-experiment command again to evaluate them (a CRNN whose training finished "
              "is not trained again):")
        for rid in rep["evaluate_again"]:
            print(f"  {rid}")
    for rid, why in rep["notes"].items():
        print(f"note: {rid}: {why}")
    for rid, why in rep["unreadable"].items():
        print(f"could not rebuild {rid}: {why}")
    for what in rep["lost"]:
        print(f"lost: {what}")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser(
        "repair-store", help="rebuild a damaged experiment store's index from its run folders",
        description="Rebuild STORE/experiments.sqlite (the index of the runs) from the run folders in STORE/runs/: "
                    "runs evaluated by this version come back complete (results.json), older ones with their "
                    "training history (their metrics too when the old index still holds them readable; else run "
                    "the same run-experiment command again to evaluate them without training again). The old "
                    "file is kept as experiments.sqlite.before-repair-TIME. Stop any experiment writing the "
                    "store first.")
    p.add_argument("store", metavar="STORE", help="the store folder (holds experiments.sqlite and runs/)")
    p.add_argument("--force", action="store_true", help="rebuild even when the index looks sound")
    p.set_defaults(func=_cli_repair)
