"""Cached access to what the pages show: the experiment store, shipped reference results, models and the
predictor. Everything heavy is cached here, keyed on file modification times so that new results appear
without a restart; pages call these and draw."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import streamlit as st

from core.kinds import track_level_of
from core.workspace import REPO_ROOT, home_dir, list_model_folders
from ui.text import kind_label

REFERENCE_DIR = REPO_ROOT / "results" / "reference"


# ---------------------------------------------------------------------------------------------------------
# experiment store
# ---------------------------------------------------------------------------------------------------------
def store_path() -> Path:
    """The dashboard's experiment store: ``HOME/experiments``."""
    return home_dir("experiments")


def store_stamp(path: Path) -> float:
    """Changes whenever the store's database changes (WAL file included)."""
    stamp = 0.0
    for name in ("experiments.sqlite", "experiments.sqlite-wal"):
        p = path / name
        if p.exists():
            s = p.stat()
            stamp = max(stamp, s.st_mtime) + s.st_size * 1e-12
    return stamp


def store_exists(path: Path | None = None) -> bool:
    """A store is there when its index is, or run folders are (an index lost beside them is reported, not
    taken for "no experiment yet")."""
    from core.store import DB_NAME, run_folders

    path = path or store_path()
    return (path / DB_NAME).is_file() or bool(run_folders(path))


@st.cache_data(show_spinner=False, max_entries=8)
def _results(path: str, stamp: float) -> dict[str, Any]:
    from core.store import Store, results_frame, summary_frame

    store = Store(path, create=False)
    every = results_frame(store, folds=True)  # cross-validation folds too (the model list; their pooled runs
    df = every[every["fold"].isna()].reset_index(drop=True)  # are the results)
    return {"results": df, "summary": summary_frame(df), "runs": store.runs(), "fold_results": every}


def local_results() -> dict[str, Any] | None:
    """Results frame, summary and runs of the local store, or None when there is no store yet."""
    p = store_path()
    if not store_exists(p):
        return None
    return _results(str(p), store_stamp(p))


def reference_files() -> list[Path]:
    """Results exports shipped with the project (``results/reference/*.json``)."""
    if not REFERENCE_DIR.is_dir():
        return []
    files = sorted(p for p in REFERENCE_DIR.glob("*.json") if not p.name.startswith("."))
    return sorted(files, key=_written_at, reverse=True)  # the newest reproduction first (stable: by name)


def _written_at(path: Path) -> str:
    """When the reproduction behind a reference export wrote its tables ('' when unknown)."""
    from core.utils import read_json

    doc_path = REFERENCE_DIR.parent / path.stem / "results.json"
    try:
        doc = read_json(doc_path) if doc_path.is_file() else {}
    except (OSError, ValueError):
        doc = {}
    return str(doc.get("written_at") or "") if isinstance(doc, dict) else ""


def reference_info(path: Path) -> dict[str, Any]:
    """What the page says about a shipped export ``results/reference/<name>.json``: its data set name and,
    when ``results/<name>/results.json`` (the reproduction's ``results.json``) is shipped beside it, the
    reproduction's command, preset, seeds, commit and dataset description. Missing or unreadable: name only."""
    from core.utils import read_json

    info: dict[str, Any] = {"name": path.stem, "results_json": None, "commit": None, "command": None,
                            "preset": None, "n_seeds": None, "source": None, "classes": None, "tracks": None}
    doc_path = REFERENCE_DIR.parent / path.stem / "results.json"
    try:
        doc = read_json(doc_path) if doc_path.is_file() else None
    except (OSError, ValueError):
        doc = None
    if isinstance(doc, dict):
        ds = doc.get("dataset") or {}
        counts = ds.get("counts") or {}
        tracks = {s: (counts.get(s) or {}).get("tracks") for s in ("train", "val", "test")}
        info.update(results_json=str(doc_path), commit=doc.get("commit"), command=doc.get("command"),
                    preset=doc.get("preset"), n_seeds=doc.get("n_seeds"),
                    seeds_per_kind=doc.get("seeds_per_kind") or {},
                    source=Path(str(ds["source"])).name if ds.get("source") else None, classes=ds.get("classes"),
                    tracks=tracks if all(isinstance(v, int) for v in tracks.values()) else None)
    return info


@st.cache_resource(show_spinner="Loading the reference results ...", max_entries=4)
def _reference_store(path: str, mtime: float) -> str:
    """Import a shipped export into a private temporary store (so every view works the same way)."""
    from core.store import Store, import_results

    folder = Path(tempfile.mkdtemp(prefix="genrelab-reference-"))
    import_results(path, Store(folder))
    return str(folder)


def reference_results(path: Path) -> tuple[str, dict[str, Any]]:
    """``(store folder, results)`` of a shipped reference export."""
    folder = _reference_store(str(path), path.stat().st_mtime)
    return folder, _results(folder, store_stamp(Path(folder)))


@st.cache_data(show_spinner=False, max_entries=64)
def run_epochs(store: str, stamp: float, run_id: str) -> list[dict]:
    from core.store import Store

    return Store(store, create=False).epochs(run_id)


@st.cache_data(show_spinner=False, max_entries=64)
def run_metrics_extra(store: str, stamp: float, run_id: str, level: str, split: str) -> dict | None:
    from core.store import Store

    return Store(store, create=False).metrics_extra(run_id, level, split)


@st.cache_data(show_spinner=False, max_entries=16)
def results_csv(store: str, stamp: float) -> bytes:
    from core.store import results_frame

    return results_frame(store).to_csv(index=False).encode("utf-8")


@st.cache_data(show_spinner=False, max_entries=8)
def results_json(store: str, stamp: float) -> bytes:
    from core.store import export_results

    with tempfile.TemporaryDirectory() as tmp:
        out = export_results(store, Path(tmp) / "results.json")
        return out.read_bytes()


def experiment_overview() -> str:
    """One line for the home page."""
    try:
        res = local_results()
    except Exception:  # noqa: BLE001 - an unreadable store is reported on the experiment page
        return "The experiment store could not be read; open the page for details."
    if res is not None and len(res["results"]):
        n_runs = res["results"]["run_id"].nunique()
        return f"{n_runs} evaluated run{'s' if n_runs != 1 else ''} in this lab's store."
    if reference_files():
        return "No experiment run here yet; reference results are shipped."
    return "No experiment run here yet."


# ---------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------
#: the demo page's model groups
MODEL_GROUPS = {"shipped": "shipped and your model folders", "experiment": "from experiments"}


def available_models() -> list[dict[str, Any]]:
    """Every model the demo can use: shipped / local model folders (group ``"shipped"``), then the finished runs
    of the local store (group ``"experiment"``, newest first; the folds of a cross-validation too).

    Each: ``{"key", "label", "path", "origin", "group", "card", "error"?, "accuracy", "at_chance", "when"}``;
    ``path`` is what ``Predictor`` takes; ``accuracy`` the model's test accuracy (track level, or the 30 s
    model's) as measured, ``at_chance`` whether it is within a few points of chance (``core.workspace``);
    labels are unique (``core.workspace.distinct_labels``: data set, kind, seed / fold, date).
    """
    from core.folds import fold_parent
    from core.model_card import CARD_NAME, ModelError as PredictorError, read_model_card
    from core.workspace import at_chance, distinct_labels

    folders: list[dict[str, Any]] = []
    for m in list_model_folders():
        card = m.get("card") or {}
        acc = (card.get("accuracy") or {}).get(f"{track_level_of(str(card.get('kind')))}/test")
        acc = float(acc) if isinstance(acc, (int, float)) else None
        chance = at_chance(acc, len(card.get("classes") or []))
        note = f", test {acc:.0%}" + (" (at chance)" if chance else "") if acc is not None else ""
        origin = "shipped" if m["origin"] == "shipped" else "local"
        label = f"{card.get('name') or m['name']}{note}  ·  {origin}"
        trained_on = (card.get("training_data") or {}).get("source") or card.get("dataset") or "?"
        folders.append({"key": f"{m['origin']}:{m['path']}", "label": label, "path": m["path"],
                        "origin": m["origin"], "group": "shipped", "card": m.get("card"), "error": m.get("error"),
                        "accuracy": acc, "at_chance": chance, "when": m.get("modified"),
                        "details": [f"folder {m['name']}", kind_label(str(card.get("kind"))),
                                    f"trained on {Path(str(trained_on)).name}", m.get("modified") or ""]})
    distinct_labels(folders)
    runs_out: list[dict[str, Any]] = []
    try:
        res = local_results()
    except Exception:  # noqa: BLE001
        res = None
    if res is not None:
        acc_df = res.get("fold_results", res["results"])
        for r in sorted(res["runs"], key=lambda r: str(r.get("finished_at") or r.get("updated_at") or ""),
                        reverse=True):
            if r["status"] != "done" or r.get("source") == "imported":
                continue
            run_dir = store_path() / "runs" / r["id"]
            if not (run_dir / CARD_NAME).exists() or not (run_dir / "best.keras").exists():
                continue  # a pooled cross-validation run has no model of its own (its folds do)
            try:
                card = read_model_card(run_dir / CARD_NAME)
            except PredictorError:
                continue
            sub = acc_df[(acc_df["run_id"] == r["id"]) & (acc_df["split"] == "test")]
            level = track_level_of(r["kind"])
            a = sub[sub["level"] == level]
            acc = float(a["accuracy"].iloc[0]) if len(a) and a["accuracy"].iloc[0] == a["accuracy"].iloc[0] else None
            n = int(a["n"].iloc[0]) if len(a) and a["n"].iloc[0] == a["n"].iloc[0] else None
            chance = at_chance(acc, len(card.get("classes") or []))
            fold = f", fold {int(r['fold']) + 1}/{int(r['n_folds'])}" if r.get("fold") is not None else ""
            when = str(r.get("finished_at") or r.get("updated_at") or "")[:16].replace("T", " ")
            ds_name = Path(fold_parent(str(r["dataset"]))).name
            note = (f", test {acc:.0%}" + (f" of {n} tracks" if n else "") + (" (at chance)" if chance else "")
                    if acc is not None else "")
            runs_out.append({"key": f"run:{r['id']}", "origin": "experiment", "group": "experiment",
                             "path": str(run_dir), "card": card, "accuracy": acc, "at_chance": chance,
                             "when": when, "label": f"{kind_label(r['kind'])}, seed {r['seed']}{fold}{note}  ·  "
                                                    f"{ds_name}  ·  {when}",
                             "details": [r["id"]]})
        distinct_labels(runs_out)
    return folders + runs_out


#: the demo's first choices among shipped models, in order: the 10-genre musicnn model (GTZAN's genres, the
#: broadest set), then the 4-genre Emotify ones; both musicnn models run in NumPy in about 2 s a minute of audio
DEMO_PREFERENCE = ("gtzan10-musicnn", "emotify-musicnn", "emotify")


def default_model_key(models: list[dict[str, Any]], prefer: tuple[str, ...] = DEMO_PREFERENCE) -> str | None:
    """The model the demo starts with: the first shipped one whose folder or name contains an entry of
    ``prefer`` (in that order), else the first shipped one, else the first listed."""
    usable = [m for m in models if m.get("card") and not m.get("error")]
    if not usable:
        return None
    shipped = [m for m in usable if m.get("origin") == "shipped"]

    def name(m: dict) -> str:
        return f"{(m.get('card') or {}).get('name') or ''} {Path(m['path']).name}".lower()

    for want in prefer:
        hit = [m for m in shipped if want in name(m)]
        if hit:
            return hit[0]["key"]
    return (shipped or usable)[0]["key"]


def model_stamp(path: str) -> float:
    p = Path(path)
    files = list(p.glob("*.keras")) + list(p.glob("*.npz")) + [p / "model_card.json"] if p.is_dir() else [p]
    return max((f.stat().st_mtime for f in files if f.exists()), default=0.0)


@st.cache_resource(show_spinner="Loading the model ...", max_entries=2)
def get_predictor(path: str, stamp: float):
    """One predictor per model folder (at most two kept in memory): NumPy inference when the model allows it
    (every shipped kind, musicnn included: no TensorFlow in the server, ~200-300 MB instead of ~1 GB), else
    Keras."""
    from core.predictor import Predictor

    return Predictor(path)
