"""The article's comparison, end to end: ``python -m core reproduce DATA_DIR OUT``.

Builds the dataset with the article's parameters (and the matching full-clip dataset with the same track
split), trains the snippet CRNN, the full-clip CRNN and the linear reference baseline over N seeds,
evaluates segment-level, track-level (sum of scores, majority vote, mean log-probability) and full-clip
accuracy on the same held-out tracks, and writes into ``OUT/results/``:

* ``runs.csv``      one row per (model, seed, level, split): accuracy, macro-F1, epochs run, best epoch;
* ``summary.csv``   mean ± SD over seeds per (model, level, split);
* ``results.json``  both tables, the paired tests (track vs segment, track vs full clip), the preset, the
  command, the git commit and the library versions that produced them;
* ``figure4.svg``   the article's Figure 4: mean ± SD bars of the approaches, validation and test;
* ``export.json``   the experiment store's export (what the dashboard's experiment page reads).

Every step is resumable: the dataset build, each run (per epoch) and the evaluation skip what is done.
"""
from __future__ import annotations

import math
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from core.errors import GenreLabError
from core.utils import atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    from core.runs import Executor

#: Presets of the reproduction: feature parameters, training preset (core.experiment.PRESETS), seeds, cap.
REPRO_PRESETS: dict[str, dict[str, Any]] = {
    # the recommended recipe (core.experiment.PRESETS["recommended"]): every snippet of each track is stored
    # (training draws 14 per track afresh every epoch; segment level scores them all), 10 seeds
    "recommended": {"features": {"max_snippets": 0}, "train": "recommended", "seeds": 10, "limit_per_class": 0},
    # the article: 3 s snippets, 1 s overlap, at most 14 per track, Adam 1e-4, 10 seeds
    "paper": {"features": {}, "train": "paper", "seeds": 10, "limit_per_class": 0},
    # the article's data pipeline with Adam 1e-3 (shared/MEASURED.md: 1e-4 under-trains on small data), 5 seeds
    "tuned": {"features": {}, "train": "tuned", "seeds": 5, "limit_per_class": 0},
    # a smoke run: 10 tracks per class, 2 short epochs, 2 seeds
    "fast": {"features": {}, "train": "fast", "seeds": 2, "limit_per_class": 10},
}
LEVEL_NAMES = {"segment": "segment-level", "track_sum": "track-level (sum)", "track_vote": "track-level (vote)",
               "track_logprob": "track-level (log-prob)", "full": "30 s model"}
PUBLISHED = {"segment_best_val": 0.673, "track_gain_points": 12.0, "full_mean": 0.558, "full_sd": 0.043,
             "source": "Hilsdorf 2022, full GTZAN (1000 x 30 s, 10 genres), random 80/10/10 split"}


class ReproduceError(GenreLabError):
    """Bad input to the reproduction; the message is for the user."""


def git_commit(root: Path | None = None) -> str | None:
    root = root or Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    import keras

    from core.dataset import library_versions

    v = library_versions()
    v["keras"] = keras.__version__
    v["keras_backend"] = keras.backend.backend()
    try:
        import tensorflow as tf  # noqa: F401  (only to record the version)

        v["tensorflow"] = tf.__version__
    except ImportError:
        pass
    v["platform"] = platform.platform()
    return v


def reproduce(data_dir: str | os.PathLike, out: str | os.PathLike, *, preset: str = "recommended",
              seeds: int | None = None, models: tuple[str, ...] = ("snippet", "full", "linear", "musicnn"),
              full_clip_s: float = 30.0, limit_per_class: int | None = None,
              workers: int | None = None, progress: Callable[[dict], None] | None = None,
              should_stop: Callable[[], bool] | None = None, command: str | None = None,
              overrides: dict[str, Any] | None = None, executor: str | Executor = "local") -> dict[str, Any]:
    """Run the whole reproduction (resumable); returns the ``results.json`` document. ``overrides`` change
    the preset's training settings (``TrainConfig`` fields, ``max_epochs`` included; None values are ignored);
    ``executor`` (a name or ``core.runs.make_executor``'s executor with its options) goes to
    :func:`core.experiment.run_experiment` (``"ray"``: the runs as Ray tasks)."""
    from core.dataset import build_dataset, load_dataset
    from core.experiment import preset_config, run_experiment
    from core.features import FeatureParams

    commit = git_commit()  # the code that produces the results: recorded now, not when they are written
    if preset not in REPRO_PRESETS:
        raise ReproduceError(f"unknown preset {preset!r} (use one of {', '.join(REPRO_PRESETS)})")
    spec = REPRO_PRESETS[preset]
    n_seeds = seeds or spec["seeds"]
    limit = spec["limit_per_class"] if limit_per_class is None else limit_per_class
    out = Path(out)
    emit = progress or (lambda ev: None)
    params = FeatureParams(**{**spec["features"], "full_clip_s": full_clip_s})
    emit({"phase": "dataset", "message": f"building the dataset from {data_dir}"})

    def on_build(done: int, total: int, msg: str) -> None:
        emit({"phase": "dataset", "done": done, "total": total, "message": msg})

    ds_path = build_dataset(data_dir, out / "dataset", params, workers=workers, progress=on_build,
                            should_stop=should_stop, limit_per_class=limit)
    dataset = load_dataset(ds_path)
    config = preset_config(spec["train"], **(overrides or {}))
    t0 = time.time()
    res = run_experiment(ds_path, out / "store", seeds=list(range(n_seeds)), models=models, config=config,
                         progress=emit, should_stop=should_stop, executor=executor)
    if res["stopped"]:
        return {"stopped": True}
    doc = write_results(out / "store", out / "results", dataset, preset=preset, config=config.to_dict(),
                        command=command, seconds=time.time() - t0, commit=commit)
    return doc


def _fmt(m: float, s: float) -> str:
    return "n/a" if m is None or math.isnan(m) else f"{100 * m:.1f} ± {100 * s:.1f}"


def write_results(store_path: Path, folder: Path, dataset, *, preset: str, config: dict, command: str | None,
                  seconds: float | None = None, commit: str | None = None) -> dict[str, Any]:
    """Tables, paired tests, Figure 4 and the store export of a finished reproduction."""
    from core.evaluate import mean_sd, paired_test
    from core.figures import bar_chart_svg
    from core.store import export_results, results_frame, summary_frame

    folder.mkdir(parents=True, exist_ok=True)
    df = results_frame(store_path)
    df = df[df["status"] == "done"].copy()
    from core.store import Store

    st = Store(store_path, create=False)
    secs = {r["run_id"]: r["s"] for r in st.query("SELECT run_id, SUM(seconds) AS s FROM epochs GROUP BY run_id")}
    df["train_seconds"] = [round(secs.get(r) or 0.0, 1) for r in df["run_id"]]
    runs = df[["kind", "seed", "level", "split", "accuracy", "macro_f1", "n", "epochs", "best_epoch", "monitor",
               "best_value", "train_seconds"]]
    atomic_write_bytes(folder / "runs.csv", runs.to_csv(index=False).encode("utf-8"))
    summ = summary_frame(df)
    atomic_write_bytes(folder / "summary.csv", summ.to_csv(index=False).encode("utf-8"))

    def series(kind: str, level: str, split: str):
        s = df[(df["kind"] == kind) & (df["level"] == level) & (df["split"] == split)]
        return s.set_index("seed")["accuracy"]

    tests: dict[str, Any] = {}
    for split in ("val", "test"):
        for name, (ka, la), (kb, lb) in [
            ("track_vs_segment", ("snippet", "track_sum"), ("snippet", "segment")),
            ("track_vs_full", ("snippet", "track_sum"), ("full", "full")),
            ("track_vs_linear_track", ("snippet", "track_sum"), ("linear", "track_sum")),
            ("musicnn_vs_track", ("musicnn", "track_sum"), ("snippet", "track_sum")),
            ("musicnn_vs_linear_track", ("musicnn", "track_sum"), ("linear", "track_sum")),
        ]:
            a, b = series(ka, la, split), series(kb, lb, split)
            common = sorted(set(a.index) & set(b.index))
            if len(common) >= 2:
                t = paired_test(a.loc[common].to_numpy(), b.loc[common].to_numpy())
                t["wins"] = int(sum(a.loc[s] > b.loc[s] for s in common))
                t["seeds"] = [int(s) for s in common]
                tests[f"{name}/{split}"] = t

    approaches = approach_labels()
    approaches = [a for a in approaches if not series(a[0], a[1], "test").empty or not series(a[0], a[1], "val").empty]
    means = [[mean_sd(series(k, lvl, sp))[0] if not series(k, lvl, sp).empty else None for k, lvl, _ in approaches]
             for sp in ("val", "test")]
    sds = [[mean_sd(series(k, lvl, sp))[1] if not series(k, lvl, sp).empty else None for k, lvl, _ in approaches]
           for sp in ("val", "test")]
    n_seeds = int(df["seed"].nunique()) if not df.empty else 0
    per_kind = {k: int(g["seed"].nunique()) for k, g in df.groupby("kind")} if not df.empty else {}
    over = (f"{n_seeds} seeds" if len(set(per_kind.values())) <= 1
            else "seeds: " + ", ".join(f"{k} {n}" for k, n in per_kind.items()) + " (unfinished)")
    counts = dataset.card["counts"]
    title = f"Segment- vs track-level vs 30 s model: {Path(dataset.card['source']).name}"
    notes = [f"mean ± SD over {over}; {len(dataset.classes)} classes; "
             f"{counts['train']['tracks']}/{counts['val']['tracks']}/{counts['test']['tracks']} train/val/test tracks; "
             f"preset {preset}",
             "published (Hilsdorf 2022, full GTZAN): segment 67.3 % best val, track ~ +12 points, 30 s 55.8 ± 4.3 %"]
    svg = bar_chart_svg(["validation", "test"], [a[2] for a in approaches], means, sds, title=title, notes=notes)
    atomic_write_bytes(folder / "figure4.svg", svg.encode("utf-8"))
    export_results(store_path, folder / "export.json")
    def _int(x) -> int:
        return 0 if x is None or (isinstance(x, float) and math.isnan(x)) else int(x)

    epochs = {f"{r.kind}/seed{r.seed}": {"epochs": _int(r.epochs), "best_epoch": _int(r.best_epoch),
                                         "monitor": r.monitor if isinstance(r.monitor, str) else None,
                                         "best_value": None if r.best_value is None or r.best_value != r.best_value
                                         else round(float(r.best_value), 4),
                                         "train_seconds": r.train_seconds}
              for r in df.drop_duplicates(["kind", "seed"]).itertuples()}
    doc = {
        "dataset": {"source": dataset.card["source"], "classes": dataset.classes, "counts": counts,
                    "params": dataset.card["params"], "split": dataset.card["split"],
                    "limit_per_class": dataset.card.get("limit_per_class", 0)},
        "preset": preset, "config": config, "n_seeds": n_seeds, "seeds_per_kind": per_kind, "epochs_per_run": epochs,
        "summary": summ.drop(columns=["accuracy", "macro_f1"]).to_dict(orient="records"),
        "headline": {f"{k}/{lvl}/{sp}": _fmt(*mean_sd(series(k, lvl, sp)))
                     for k, lvl, _ in approaches for sp in ("val", "test")},
        "paired_tests": tests, "published": PUBLISHED,
        "command": command, "commit": commit or git_commit(), "versions": versions(),
        "wall_seconds": round(seconds, 1) if seconds else None,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(folder / "results.json", doc)
    return doc


def approach_labels() -> list[tuple[str, str, str]]:
    """``(kind, level, label)`` of every approach the figure and the headline show, from the kind table
    (``core.kinds``): ``("snippet", "segment", "CRNN segment-level")`` ... ``("full", "full", "30 s CRNN")``."""
    from core.kinds import kinds

    return [(k.key, lvl, k.short if len(k.levels) == 1 else f"{k.short} {LEVEL_NAMES.get(lvl, lvl)}")
            for k in kinds() for lvl in k.levels]


def headline_markdown(doc: dict[str, Any]) -> str:
    """A Markdown table of the headline figures (test and validation, mean ± SD in %)."""
    rows = ["| approach | validation | test |", "| --- | --- | --- |"]
    for key, name in [("snippet/segment", "CRNN, segment-level (3 s snippets)"),
                      ("snippet/track_sum", "CRNN, track-level (sum of window scores)"),
                      ("snippet/track_vote", "CRNN, track-level (majority vote)"),
                      ("snippet/track_logprob", "CRNN, track-level (mean log-prob)"),
                      ("full/full", "30 s CRNN (one prediction per clip)"),
                      ("linear/segment", "linear baseline, segment-level"),
                      ("linear/track_sum", "linear baseline, track-level (sum)"),
                      ("musicnn/segment", "musicnn embeddings + head, segment-level"),
                      ("musicnn/track_sum", "musicnn embeddings + head, track-level (sum)")]:
        v, t = doc["headline"].get(f"{key}/val"), doc["headline"].get(f"{key}/test")
        if v or t:
            rows.append(f"| {name} | {v or 'n/a'} | {t or 'n/a'} |")
    return "\n".join(rows)


def register_cli(sub) -> None:
    from core.experiment import add_training_args
    from core.kinds import kind_keys, kinds
    from core.runs import add_executor_args

    shippable = [k.key for k in kinds() if k.shippable]
    p = sub.add_parser(
        "reproduce", help="the article's comparison end to end on a class-folder tree of audio",
        description="Build the dataset, train the snippet CRNN, the 30 s CRNN and the linear baseline over N "
                    "seeds, evaluate segment-, track- and full-clip level on the same held-out tracks, write "
                    "tables (CSV + JSON with paired tests), Figure 4 (SVG) and a store export into OUT/results. "
                    "Resumable: run the same command again after a stop.")
    p.add_argument("data_dir", help="source folder: one sub-folder per class")
    p.add_argument("out", help="output folder (dataset, store, results)")
    p.add_argument("--preset", choices=sorted(REPRO_PRESETS), default="recommended",
                   help="recommended (default): every snippet stored, the recommended training recipe (Adam 1e-3, "
                        "warm-up + cosine, best epoch by validation track accuracy, 14 random snippets per track "
                        "re-drawn every epoch, random 30 s crops), 10 seeds; paper: the article's settings exactly "
                        "(at most 14 snippets per track, Adam 1e-4, early stopping on validation loss), 10 seeds; "
                        "tuned: the first reference results' settings (Adam 1e-3), 5 seeds; fast: smoke run "
                        "(10 tracks/class, 2 short epochs, 2 seeds)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the preset's)")
    p.add_argument("--models", default=",".join(kind_keys()),
                   help="comma list of model kinds: " + ", ".join(f"{k.key} ({k.label})" for k in kinds())
                        + " (default: all)")
    p.add_argument("--full-clip", type=float, default=30.0,
                   help="seconds the full-clip model sees: the first N s of each track (default 30)")
    p.add_argument("--limit-per-class", type=int, default=None,
                   help="use only the first N tracks per class (default: the preset's; 0 = all)")
    p.add_argument("--workers", type=int, default=None, help="dataset build worker processes")
    add_training_args(p)
    add_executor_args(p)
    p.set_defaults(func=_cli_reproduce)
    q = sub.add_parser(
        "ship-model", help="copy the best run of a reproduction into a model folder with its model card",
        description="Pick the run with the best validation track-level accuracy from a reproduction's store and "
                    "write DEST/model.keras, DEST/model_card.json (classes, features, normalisation, training "
                    "data and citation, split, measured accuracies) and DEST/MODEL_CARD.md.")
    q.add_argument("repro_out", help="the OUT folder of a finished `reproduce`")
    q.add_argument("dest", help="model folder to write, e.g. models/emotify-crnn")
    q.add_argument("--name", required=True, help="model name")
    q.add_argument("--citation", required=True, help="the training data's citation")
    q.add_argument("--description", default="", help="one line about the model")
    q.add_argument("--kind", default="snippet", choices=shippable)
    q.set_defaults(func=_cli_ship)
    e = sub.add_parser(
        "ship-ensemble", help="every fold model of a cross-validation as one ensemble model folder",
        description="Collect the finished runs of KIND in the cross-validation stores (one store per fold, as "
                    "`run-experiment` writes for a dataset built with a fold's --split file; or one store of "
                    "`run-experiment --cv K`), check that each seed tests every track once, and write DEST: every "
                    "run's model as a member (each with its fold's normalisation), model_card.json with the "
                    "out-of-fold track accuracy per seed (mean ± SD) and of the seeds together, the aggregation with "
                    "the best cross-validated mean as the model's default, and MODEL_CARD.md.")
    e.add_argument("dest", help="model folder to write, e.g. models/emotify-crnn")
    e.add_argument("stores", nargs="+", help="experiment store folders")
    e.add_argument("--name", required=True, help="model name")
    e.add_argument("--citation", required=True, help="the training data's citation")
    e.add_argument("--description", default="", help="one line about the model")
    e.add_argument("--kind", default="snippet", choices=shippable)
    e.add_argument("--source-name", default=None,
                   help="the training data's name on the card (default: the dataset's source folder name)")
    e.add_argument("--reproduce", default=None, metavar="COMMAND",
                   help="the command that reproduces the whole model (folds, training and this step), recorded on "
                        "the card instead of this command line")
    e.set_defaults(func=_cli_ship_ensemble)


def _cli_ship_ensemble(a) -> int:
    from core.predictor import PredictorError

    cmd = "python -m core ship-ensemble " + " ".join(_shell_quote(x) for x in sys.argv[2:]) \
        if sys.argv[1:2] == ["ship-ensemble"] else None
    try:
        dest = ship_ensemble(a.stores, a.dest, name=a.name, citation=a.citation, description=a.description,
                             kind=a.kind, command=a.reproduce or cmd, source=a.source_name)
    except (ReproduceError, PredictorError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import json

    card = json.loads((dest / "model_card.json").read_text())
    cv = card["cv"]
    print(f"{dest}: {len(card['members'])} members; cross-validated track accuracy of one member "
          f"({cv['folds']} folds x {len(cv['seeds'])} seeds, {cv['n_tracks']} tracks):")
    for agg, s in cv["accuracy"].items():
        print(f"  {agg:8s} {s['mean']:.1%} ± {s['sd']:.1%}" + ("  <- default" if agg == card["aggregation"] else ""))
    print(f"  the seeds of each fold together (sum): {cv['seed_ensemble_sum']:.1%}")
    return 0


def _shell_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def _cli_ship(a) -> int:
    from core.predictor import PredictorError

    try:
        dest = ship_model(a.repro_out, a.dest, name=a.name, citation=a.citation, description=a.description,
                          kind=a.kind)
    except (ReproduceError, PredictorError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(dest)
    return 0


def _cli_reproduce(a) -> int:
    from tqdm import tqdm

    from core.dataset import DatasetError
    from core.experiment import TRAINING_ARGS, ExperimentError
    from core.jobs import LockError
    from core.runs import RunError, executor_from_args
    from core.store import StoreError
    from core.train import TrainError

    bar: dict[str, Any] = {}

    def progress(ev: dict) -> None:
        phase = ev.get("phase")
        if phase != "dataset" and bar.get("dataset"):
            bar.pop("dataset").close()
        if phase != "batch" and bar.get("batch"):
            bar.pop("batch").close()
            bar.pop("key", None)
        if phase == "dataset" and "total" in ev:
            if "dataset" not in bar:
                bar["dataset"] = tqdm(total=ev["total"], unit="track", desc="dataset", mininterval=0.5)
            bar["dataset"].update(ev["done"] - bar["dataset"].n)
        elif phase == "batch":
            key = (ev.get("model"), ev.get("seed"), ev.get("epoch"))
            if bar.get("key") != key:
                if bar.get("batch"):
                    bar["batch"].close()
                bar["key"] = key
                bar["batch"] = tqdm(total=ev.get("n_batches"), unit="batch", mininterval=1.0,
                                    desc=f"{ev.get('model')} seed {ev.get('seed')} epoch {ev.get('epoch')}")
            bar["batch"].update(ev["batch"] - bar["batch"].n)
        elif ev.get("message") and phase != "batch" and not re.match(r"full-clip dataset \d+/\d+: (?!done)",
                                                                      ev["message"]):
            tqdm.write(f"[{ev.get('model', '-')} seed {ev.get('seed', '-')}] {ev['message']}")

    models = tuple(m.strip() for m in a.models.split(",") if m.strip())
    cmd = "python -m core reproduce " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else None
    try:
        doc = reproduce(a.data_dir, a.out, preset=a.preset, seeds=a.seeds, models=models,
                        full_clip_s=a.full_clip, limit_per_class=a.limit_per_class, workers=a.workers,
                        progress=progress, command=cmd,
                        overrides={k: getattr(a, k) for k in TRAINING_ARGS if getattr(a, k, None) is not None},
                        executor=executor_from_args(a))
    except (ReproduceError, DatasetError, ExperimentError, StoreError, TrainError, LockError, RunError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        for b in bar.values():
            if hasattr(b, "close"):
                b.close()
    if doc.get("stopped"):
        print("stopped; run the same command again to resume.", file=sys.stderr)
        return 130
    print(headline_markdown(doc))
    for name, t in doc["paired_tests"].items():
        p = "n/a (no variance across seeds)" if math.isnan(t["p_ttest"]) else f"{t['p_ttest']:.4g}"
        print(f"{name}: mean difference {100 * t['mean_diff']:+.1f} points, wins {t['wins']}/{t['n']}, "
              f"p = {p} (paired t-test)")
    print(f"results: {Path(a.out) / 'results'}")
    return 0


# ---------------------------------------------------------------------------------------------------------
# shipping a model
# ---------------------------------------------------------------------------------------------------------
def best_run(store_path: str | os.PathLike, kind: str = "snippet", by: str = "track_sum") -> dict[str, Any]:
    """The finished run of ``kind`` with the best *validation* accuracy at level ``by`` (ties: segment level).
    Chosen on validation only, so its test figures stay honest."""
    from core.store import results_frame

    df = results_frame(store_path)
    df = df[(df["kind"] == kind) & (df["status"] == "done") & (df["split"] == "val")]
    if df.empty:
        raise ReproduceError(f"no finished {kind} run in {store_path}")
    piv = df.pivot_table(index="run_id", columns="level", values="accuracy")
    keys = [c for c in (by, "segment") if c in piv.columns]
    run_id = piv.sort_values(keys, ascending=False).index[0]
    return {"run_id": run_id, "val": piv.loc[run_id].to_dict()}


def ship_model(repro_out: str | os.PathLike, dest: str | os.PathLike, *, name: str, citation: str,
               description: str, kind: str = "snippet") -> Path:
    """Copy the best run of a reproduction into ``dest`` (a ``models/<name>/`` folder): the ``.keras`` file,
    its ``model_card.json`` extended with the training data, citation, split and measured accuracies, and a
    short ``MODEL_CARD.md``."""
    import shutil

    from core.dataset import load_dataset
    from core.model_card import read_model_card, write_model_card
    from core.store import results_frame

    repro_out, dest = Path(repro_out), Path(dest)
    store = repro_out / "store"
    pick = best_run(store, kind)
    run_dir = store / "runs" / pick["run_id"]
    card = read_model_card(run_dir / "model_card.json")
    ds = load_dataset(repro_out / "dataset")
    df = results_frame(store)
    mine = df[df["run_id"] == pick["run_id"]]
    acc = {f"{r.level}/{r.split}": round(float(r.accuracy), 4) for r in mine.itertuples()}
    doc = read_json_safe(repro_out / "results" / "results.json")
    n_seeds = int(df[df["kind"] == kind]["seed"].nunique())  # the seeds of this model the pick was made among
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    from core.models import load_model

    # re-saved without the optimizer state (Adam's moments would double the file: 4.5 MB -> ~1.5 MB)
    load_model(run_dir / card.get("model_file", "best.keras"), compile=False).save(tmp / "model.keras")
    counts = ds.card["counts"]
    card.update(
        name=name, model_file="model.keras", description=description,
        training_data={"source": Path(ds.card["source"]).name, "citation": citation, "classes": ds.classes,
                       "tracks": {s: counts[s]["tracks"] for s in ("train", "val", "test")},
                       "snippets": {s: counts[s]["snippets"] for s in ("train", "val", "test")},
                       "split": ds.card["split"]},
        accuracy=acc, selected_by="best validation track-level (sum) accuracy among the reproduction's seeds",
        reproduction={"preset": doc.get("preset"), "command": doc.get("command"), "commit": doc.get("commit"),
                      "n_seeds": n_seeds},
        dataset=None)
    write_model_card(tmp, card)
    p = card["params"]
    lines = [
        f"# {name}", "", description, "",
        f"- **Classes** ({len(ds.classes)}): {', '.join(ds.classes)}",
        f"- **Model**: {kind} CRNN, {card.get('n_params', '?')} parameters, input {card.get('input_shape')} "
        f"(log-mel, {p['n_mels']} bands, {p['sample_rate']} Hz, n_fft {p['n_fft']}, hop {p['hop_length']}; "
        f"{p['snippet_s']:g} s snippets), {card.get('norm_method')} scaling with training statistics",
        f"- **Training data**: {Path(ds.card['source']).name}, {counts['train']['tracks']} training tracks, "
        f"{counts['val']['tracks']} validation, {counts['test']['tracks']} test (track-wise, stratified, seed "
        f"{ds.card['split']['seed']}). {citation}",
        f"- **Measured** (this run, seed {card.get('seed')}): segment-level "
        f"{acc.get('segment/val', float('nan')):.1%} val / {acc.get('segment/test', float('nan')):.1%} test; "
        f"track-level (sum) {acc.get('track_sum/val', float('nan')):.1%} val / "
        f"{acc.get('track_sum/test', float('nan')):.1%} test",
        f"- **Selected** as the best validation track-level accuracy of {n_seeds} seeds; produced by "
        f"`{doc.get('command')}` at commit {doc.get('commit')}",
        "", "Development figures on a small set: expect lower accuracy on music unlike the training data.", ""]
    return _finish_folder(tmp, dest, lines)


def read_json_safe(path: Path) -> dict:
    from core.utils import read_json

    try:
        return read_json(path)
    except (OSError, ValueError):
        return {}



# ---------------------------------------------------------------------------------------------------------
# shipping an ensemble judged by cross-validation
# ---------------------------------------------------------------------------------------------------------
ENSEMBLE_AGGREGATIONS = ("sum", "vote", "logprob")


def cv_members(stores: list[str | os.PathLike], kind: str = "snippet") -> list[dict[str, Any]]:
    """The finished ``kind`` runs of cross-validation stores whose test splits are disjoint folds (one store per
    fold, or one store holding fold runs): each with its store, run folder, seed, fold and out-of-fold test
    predictions ``{track: {aggregation: (scores, true label)}}``. Pooled rows (no model of their own) are left
    out. Raises :class:`ReproduceError` when a track is tested twice by one seed or a seed misses a fold."""
    from core.store import Store

    members = []
    for i, sp in enumerate(stores):
        s = Store(sp, create=False)
        for r in s.runs():
            if r["kind"] != kind or r["status"] != "done":
                continue
            if r.get("n_folds") and r.get("fold") is None:
                continue  # a pooled cross-validation row
            run_dir = Path(sp) / "runs" / r["id"]
            if not (run_dir / "model_card.json").is_file():
                continue
            fold = r.get("fold") if r.get("fold") is not None else i
            preds = {}
            for agg in ENSEMBLE_AGGREGATIONS:
                df = s.predictions_frame(r["id"], f"track_{agg}", "test")
                for row in df.itertuples():
                    preds.setdefault(row.track, {})[agg] = (np.asarray(row.scores, float), row.true_label)
            members.append({"store": str(sp), "run_id": r["id"], "run_dir": run_dir, "seed": int(r["seed"]),
                            "fold": int(fold), "preds": preds, "best_epoch": r.get("best_epoch"),
                            "dataset": r.get("dataset")})
    if not members:
        raise ReproduceError(f"no finished {kind} run in {', '.join(map(str, stores))}")
    folds = sorted({m["fold"] for m in members})
    for seed in sorted({m["seed"] for m in members}):
        seen: dict[str, int] = {}
        for m in members:
            if m["seed"] != seed:
                continue
            for t in m["preds"]:
                if t in seen:
                    raise ReproduceError(f"seed {seed} tests {t} in two folds ({seen[t]} and {m['fold']}): the "
                                         "stores' test splits are not disjoint folds")
                seen[t] = m["fold"]
    return members


def cv_figures(members: list[dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    """Out-of-fold track accuracy: per seed (every track once, the seed's fold models), mean ± SD over the seeds
    that cover every fold, per aggregation; and the ensemble of those seeds in each fold (mean of the members'
    summed window scores = the ensemble's own sum aggregation)."""
    folds = sorted({m["fold"] for m in members})
    by_seed: dict[int, list[dict]] = {}
    for m in members:
        by_seed.setdefault(m["seed"], []).append(m)
    complete = sorted(s for s, ms in by_seed.items() if sorted(x["fold"] for x in ms) == folds)
    if not complete:
        raise ReproduceError("no seed has a finished run in every fold: cross-validation is incomplete")
    per_seed = {agg: [] for agg in ENSEMBLE_AGGREGATIONS}
    tracks: set[str] = set()
    for s in complete:
        for agg in ENSEMBLE_AGGREGATIONS:
            right = total = 0
            for m in by_seed[s]:
                for t, p in m["preds"].items():
                    scores, true = p[agg]
                    right += classes[int(np.argmax(scores))] == true
                    total += 1
                    tracks.add(t)
            per_seed[agg].append(right / total)
    ens_right, ens_total = 0, 0
    for f in folds:
        ms = [m for m in members if m["fold"] == f and m["seed"] in complete]
        for t in ms[0]["preds"]:
            tot = sum(m["preds"][t]["sum"][0] / max(m["preds"][t]["sum"][0].sum(), 1e-12) for m in ms)
            ens_right += classes[int(np.argmax(tot))] == ms[0]["preds"][t]["sum"][1]
            ens_total += 1
    acc = {agg: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                 "per_seed": [round(x, 4) for x in v]} for agg, v in per_seed.items()}
    return {"unit": "track", "folds": len(folds), "seeds": complete, "n_tracks": len(tracks), "accuracy": acc,
            "seed_ensemble_sum": round(ens_right / ens_total, 4)}


def _finish_folder(tmp: Path, dest: Path, card_md: list[str]) -> Path:
    """Write ``MODEL_CARD.md`` into the staged folder ``tmp``, then put it in the place of ``dest``."""
    atomic_write_bytes(tmp / "MODEL_CARD.md", "\n".join(card_md).encode("utf-8"))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def ship_ensemble(stores: list[str | os.PathLike], dest: str | os.PathLike, *, name: str, citation: str,
                  description: str = "", kind: str = "snippet", command: str | None = None,
                  source: str | None = None) -> Path:
    """Every finished ``kind`` run of the cross-validation ``stores`` as one model folder: the members'
    ``.keras`` files (re-saved without optimizer state), each with its own normalisation (its fold's training
    statistics), a card with the cross-validated figures (:func:`cv_figures`) and the aggregation with the best
    cross-validated mean as the default, and ``MODEL_CARD.md``. The members average their class scores per
    window (:class:`core.predictor.Predictor`, NumPy)."""
    import shutil

    from core.model_card import read_model_card, validate_model_card, write_model_card
    from core.models import load_model

    dest = Path(dest)
    members = cv_members(stores, kind)
    cards = [read_model_card(m["run_dir"] / "model_card.json") for m in members]
    classes, params = cards[0]["classes"], cards[0]["params"]
    for m, c in zip(members, cards):
        if c["classes"] != classes or c["params"] != params:
            raise ReproduceError(f"{m['run_id']} has other classes or features than {members[0]['run_id']}")
    cv = cv_figures(members, classes)
    keep = [i for i, m in enumerate(members) if m["seed"] in cv["seeds"]]  # seeds that cover every fold
    members, cards = [members[i] for i in keep], [cards[i] for i in keep]
    if not source:
        source = Path(str(read_json_safe(Path(str(members[0]["dataset"])) / "card.json").get("source")
                          or members[0]["store"])).name
    best = max(ENSEMBLE_AGGREGATIONS, key=lambda a: (round(cv["accuracy"][a]["mean"], 6),
                                                     -ENSEMBLE_AGGREGATIONS.index(a)))
    members_sorted = sorted(zip(members, cards), key=lambda mc: (mc[0]["fold"], mc[0]["seed"]))
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    entries = []
    for m, c in members_sorted:
        fname = f"fold{m['fold']}-seed{m['seed']}.keras"
        load_model(m["run_dir"] / c.get("model_file", "best.keras"), compile=False).save(tmp / fname)
        entries.append({"file": fname, "norm": c["norm"], "fold": m["fold"], "seed": m["seed"],
                        "run_id": m["run_id"], "best_epoch": m["best_epoch"]})
    first = cards[0]
    acc = cv["accuracy"]
    card = dict(first)
    for k in ("run_id", "seed", "dataset", "dataset_build_id", "model_file", "accuracy", "selected_by"):
        card.pop(k, None)
    card.update(
        name=name, description=description, model_file=entries[0]["file"], members=entries,
        aggregation=best, hop_s=1.0,
        training_data={"source": source, "citation": citation,
                       "classes": classes, "n_tracks": cv["n_tracks"]},
        cv={**cv, "chosen_aggregation": best},
        accuracy={f"track_{a}/cv": round(acc[a]["mean"], 4) for a in ENSEMBLE_AGGREGATIONS},
        selected_by=(f"cross-validation: {cv['folds']} folds x {len(cv['seeds'])} seeds over {cv['n_tracks']} "
                     f"tracks; every fold model is a member; the aggregation with the best mean ({best})"),
        reproduction={"command": command, "commit": git_commit(), "n_seeds": len(cv["seeds"])})
    card = validate_model_card(card, tmp / "model_card.json")
    write_model_card(tmp, card)
    s = acc[best]
    p = card["params"]
    lines = [
        f"# {name}", "", description, "",
        f"- **Classes** ({len(classes)}): {', '.join(classes)}",
        f"- **Model**: an ensemble of {len(entries)} {kind} CRNNs ({card.get('n_params', '?')} parameters each; "
        f"log-mel, {p['n_mels']} bands, {p['sample_rate']} Hz, {p['snippet_s']:g} s windows), one per "
        f"(fold, seed) of a {cv['folds']}-fold cross-validation; each window's class scores are the members' mean, "
        f"each member with its own fold's training statistics",
        f"- **Cross-validated track accuracy** of one member (every track tested once per seed by the model of "
        f"the fold that left it out; mean ± SD over seeds {', '.join(map(str, cv['seeds']))}): "
        + "; ".join(f"{a} {acc[a]['mean']:.1%} ± {acc[a]['sd']:.1%}" for a in ENSEMBLE_AGGREGATIONS)
        + f". The {len(cv['seeds'])} seeds of a fold together (sum): {cv['seed_ensemble_sum']:.1%}. The shipped "
        f"ensemble (all folds' models: together they saw every track) has no held-out figure of its own: expect "
        f"about the seed ensemble's.",
        f"- **Default aggregation**: {best} (the best cross-validated mean)",
        f"- **Training data**: {card['training_data']['source']}, {cv['n_tracks']} tracks. {citation}",
        f"- **Reproduce**: `{command}` at commit {card['reproduction']['commit']}",
        "", "Development figures on a small set: expect lower accuracy on music unlike the training data.", ""]
    return _finish_folder(tmp, dest, lines)
