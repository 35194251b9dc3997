"""Experiments: seeds x models, trained, evaluated and recorded in an experiment store, resumably.

:func:`run_experiment` runs every (seed, model) pair of a dataset: finished runs are skipped, unfinished ones
resume from their last finished epoch, each trained model is evaluated (segment, track x 3 aggregations or
full-clip level) and its metrics and predictions are written to the store. ``"full"`` models need a full-clip
dataset: it is built next to the snippet dataset (``<dataset>-full``) from the same source files and the same
track split (the snippet dataset's ``split.json``).

CLI: ``python -m core run-experiment DATASET --store DIR ...`` and ``python -m core results --store DIR``.
"""
from __future__ import annotations

import functools
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from core.errors import GenreLabError
from core.train_config import ARCH_NAMES
from core.utils import format_duration

if TYPE_CHECKING:  # core.train imports keras: keep `python -m core --help` fast
    from core.train_config import TrainConfig

ProgressFn = Callable[[dict], None]

#: Training presets.
#:
#: * ``recommended`` (the default): what trains well on small data on a CPU, from the ablation in
#:   ``results/ablation`` (Emotify, 3 seeds): Adam 1e-3 with a one-epoch warm-up and cosine decay, model
#:   selection and early stopping on validation *track* accuracy, a fresh random draw of 14 snippets per
#:   training track every epoch, batch-norm statistics re-estimated after every epoch, and for the 30 s model
#:   a fresh random 30 s crop per track every epoch in batches of 16;
#: * ``paper``: the article exactly (Adam 1e-4, batch 32, early stopping and reduce-LR-on-plateau on
#:   validation loss, best checkpoint, the dataset's snippets as built);
#: * ``tuned``: the settings of the first reference results (Adam 1e-3, patience 8 on validation loss);
#: * ``small``: the recommended recipe on a budget for small (cross-validated) datasets, the experiment page's
#:   default there: at most 8 epochs, each of 7 of a track's snippets drawn afresh (on folds of 40-track Emotify
#:   folders about as accurate as 6 or 8 epochs of all 14 snippets, at 2.9 instead of 4.5 CPU-seconds an epoch;
#:   README, ``results/small-folder``);
#: * ``fast``: a smoke run (2 epochs of at most 20 batches).
PRESETS: dict[str, dict[str, Any]] = {
    "recommended": {"lr": 1e-3, "max_epochs": 30, "patience": 10, "schedule": "cosine", "warmup_epochs": 1.0,
                    "monitor": "val_track_accuracy", "snippets_per_track": 14, "snippet_selection": "random",
                    "full_crop": "random", "bn_recalibrate": 1024, "full_batch_size": 16},
    "paper": {},
    "tuned": {"lr": 1e-3, "max_epochs": 40, "patience": 8, "lr_patience": 4},
    "fast": {"lr": 1e-3, "max_epochs": 2, "patience": 2, "lr_patience": 2, "max_train_batches": 20},
}
PRESETS["small"] = {**PRESETS["recommended"], "max_epochs": 8, "snippets_per_track": 7}
DEFAULT_PRESET = "recommended"
#: one line per preset, for --help texts and the experiment page
PRESET_HELP = {
    "recommended": "Adam 1e-3, warm-up + cosine, best epoch by validation track accuracy, random snippets and 30 s "
                   "crops re-drawn every epoch, batch-norm statistics re-estimated each epoch",
    "small": "the recommended recipe on a budget for small datasets (at most 8 epochs of 7 random snippets per "
             "track)",
    "paper": "the article's settings: Adam 1e-4, batch 32, early stopping + reduce-LR-on-plateau on validation loss",
    "tuned": "the first reference results' settings: Adam 1e-3, patience 8 on validation loss",
    "fast": "a smoke run: 2 short epochs",
}
#: seconds of each track a full-clip dataset stores when training crops at random (the model still sees 30 s)
FULL_STORE_S = 60.0


#: The experiment page's default experiment on a small dataset (one that ``--cv auto`` cross-validates): the
#: snippet CRNN with the ``small`` preset (the recommended recipe on a budget), the linear baseline and the
#: pretrained musicnn + head (it learns from few tracks and trains in seconds on cached embeddings); no 30 s CRNN
#: (a few dozen clips are too few for it, and it doubles the time). Measured on 40-track Emotify folders:
#: results/small-folder/.
SMALL_DATA_DEFAULTS: dict[str, Any] = {"models": ["snippet", "linear", "musicnn"], "seeds": 2, "epochs": None,
                                       "preset": "small"}
#: ... and on a dataset whose held-out split is big enough
DEFAULTS: dict[str, Any] = {"models": ["snippet", "full", "linear"], "seeds": 3, "epochs": None,
                            "preset": "recommended"}


def default_experiment(dataset) -> dict[str, Any]:
    """The experiment page's default for ``dataset`` (a ``core.dataset.Dataset``): ``{"models", "seeds",
    "epochs" (None: the preset's), "preset", "cv": "auto", "n_folds" (what auto gives), "small"}``."""
    from core.folds import resolve_cv

    n_folds = resolve_cv("auto", dataset)
    d = SMALL_DATA_DEFAULTS if n_folds else DEFAULTS
    return {**d, "models": list(d["models"]), "cv": "auto", "n_folds": n_folds, "small": bool(n_folds)}


class ExperimentError(GenreLabError):
    """Bad input to an experiment (unknown dataset, wrong mode, unusable source ...); message for the user."""


def preset_config(name: str = DEFAULT_PRESET, **overrides: Any) -> TrainConfig:
    from core.train_config import TrainConfig

    if name not in PRESETS:
        raise ExperimentError(f"unknown preset {name!r} (use one of {', '.join(PRESETS)})")
    cfg = dict(PRESETS[name])
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**cfg)


def preset_name(config: dict | TrainConfig) -> str | None:
    """The preset whose settings a run's config dict has (``max_epochs`` may differ), or None."""
    from core.train_config import TrainConfig

    try:
        cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    except Exception:  # noqa: BLE001 - an unreadable config is simply no preset
        return None
    mine = {k: v for k, v in cfg.full_dict().items() if k not in ("max_epochs", "workers")}
    for name in PRESETS:
        ref = {k: v for k, v in preset_config(name).full_dict().items() if k not in ("max_epochs", "workers")}
        if ref == mine:
            return name
    return None


def parse_seeds(text: str | int | Iterable[int]) -> list[int]:
    """``"3"`` -> ``[0, 1, 2]``; ``"0,5,7"`` -> ``[0, 5, 7]``; ``"7,"`` -> ``[7]``; ``"0-4"`` -> ``[0, ..., 4]``
    (every ``--seeds`` option: run-experiment, embedding-heads). :class:`ExperimentError` for anything else."""
    if isinstance(text, int):
        return list(range(text))
    if not isinstance(text, str):
        return [int(s) for s in text]
    text = text.strip()
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        elif "-" in text.lstrip("-"):
            a, b = text.split("-", 1)
            seeds = list(range(int(a), int(b) + 1))
        else:
            seeds = list(range(int(text)))
    except ValueError as exc:
        raise ExperimentError(f"--seeds takes a count (3), a list (0,5,7) or a range (0-4), not {text!r}") from exc
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ExperimentError("seeds must be a positive count or a list of distinct non-negative integers")
    return seeds


def full_dataset_path(dataset, store_s: float = 0.0) -> Path:
    suffix = "-full" if not store_s else f"-full{store_s:g}s"
    return dataset.path.with_name(dataset.path.name + suffix)


def ensure_full_dataset(dataset, progress: ProgressFn | None = None, should_stop=None, store_s: float = 0.0):
    """The full-clip twin of a snippet dataset (built on first use; same source files, same split).
    ``store_s`` > 30 keeps that many seconds of each track, for random 30 s crops in training."""
    from core.dataset import DatasetError, SplitConfig, build_dataset, is_dataset, load_dataset

    out = full_dataset_path(dataset, store_s)
    params = replace(dataset.params, mode="full", full_store_s=store_s)
    src = dataset.card.get("source")
    if not src or not Path(src).is_dir():
        if is_dataset(out) and load_dataset(out).params == params:
            return load_dataset(out)  # source gone: reuse the existing build as is
        raise ExperimentError(f"full-clip models need the source audio of {dataset.path}, but its source folder "
                              f"{src} is not there")
    sp = dataset.card.get("split", {})
    split = SplitConfig(sp.get("val_share", 0.1), sp.get("test_share", 0.1), sp.get("seed", 0),
                        split_file=str(dataset.path / "split.json"))

    def prog(done: int, total: int, msg: str) -> None:
        if progress:
            progress({"state": "running", "phase": "dataset", "message": f"full-clip dataset {done}/{total}: {msg}"})

    try:
        build_dataset(src, out, params, split, progress=prog, should_stop=should_stop,
                      limit_per_class=int(dataset.card.get("limit_per_class") or 0))  # a capped build: same cap
    except DatasetError as exc:
        raise ExperimentError(f"could not build the full-clip dataset {out}: {exc}") from exc
    full = load_dataset(out)
    if full.classes != dataset.classes:
        raise ExperimentError(f"the full-clip dataset {out} has classes {full.classes}, the snippet dataset "
                              f"{dataset.classes}: delete {out} and run again")
    return full


def _model_card(run_id: str, kind: str, seed: int, dataset, config: TrainConfig) -> dict:
    from core.models import build_model, describe
    from core.model_card import make_model_card

    p = dataset.params
    frames = p.input_frames
    info = describe(build_model(kind, len(dataset.classes), p.n_mels, frames, arch=config.arch), (frames, p.n_mels))
    cv = dataset.card.get("cv") or {}
    return make_model_card(kind, dataset.classes, p, dataset.norm, config.norm_method, model_file="best.keras",
                           run_id=run_id, seed=seed, dataset=str(dataset.path),
                           dataset_build_id=dataset.card.get("build_id"), input_shape=[frames, p.n_mels, 1],
                           n_params=info["params"], macs_per_sample=info["macs_per_sample"],
                           config=config.to_dict(), **_fold_fields(cv))


def _fold_fields(cv: dict) -> dict:
    """A fold dataset's ``card["cv"]`` as model-card fields (none for a held-out dataset)."""
    return {"fold": cv["fold"], "n_folds": cv["k"], "cv_parent": cv.get("parent")} if cv else {}


def run_fold(ds) -> tuple[int | None, int | None]:
    """``(fold, k)`` of a cross-validation fold dataset (``core.folds``), ``(None, None)`` otherwise."""
    cv = ds.card.get("cv") or {}
    return (int(cv["fold"]), int(cv["k"])) if cv else (None, None)


def plan_run(store, ds, kind: str, seed: int, config, emit) -> tuple[str, dict, dict | None]:
    """The run of ``kind`` x ``seed`` on dataset ``ds`` (a fold of a cross-validation too: its fold is in the
    run id and the events): ``(run_id, base event fields, done)``; ``done`` is the run's record (after a "skip"
    event) when the store already has it finished, else ``None``. Shared by the local loop and the Ray executor
    (``core.cluster``)."""
    from core.store import make_run_id

    fold, k = run_fold(ds)
    run_id = make_run_id(ds.card.get("build_id"), kind, seed, config.to_dict(), fold, k)
    base = {"seed": seed, "model": kind, "run": run_id}
    if k:
        base.update(fold=fold, n_folds=k)
    rec = store.get_run(run_id)
    if rec and rec["status"] == "done":
        emit({**base, "state": "done", "phase": "skip", "message": f"{run_id} already done"})
        return run_id, base, {**base, "status": "done", "skipped": True}
    return run_id, base, None


def run_experiment(
    dataset_path: str | os.PathLike,
    store_path: str | os.PathLike,
    seeds: Iterable[int] | int | str = (0,),
    models: Iterable[str] = ("snippet", "full"),
    config: TrainConfig | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    hop_s: float = 1.0,
    splits: Iterable[str] = ("val", "test"),
    lock: bool = True,
    executor: str = "local",
    ray_address: str | None = None,
    ray_cpus_per_task: int = 2,
    cv: int | str | None = None,
) -> dict[str, Any]:
    """Train and evaluate every (seed, model) pair; returns ``{"runs": [...], "stopped": bool, "results": df,
    "n_folds": k}``.

    ``progress(event)`` receives dicts with ``state`` (running/done/failed/stopped), ``phase`` (plan, dataset,
    train, batch, evaluate, pool), ``seed``, ``model``, ``run``, ``fold``, ``epoch``, ``max_epochs``,
    ``metrics`` and ``message``. ``should_stop()`` is polled between batches; a stop leaves every run
    resumable. Raises :class:`ExperimentError`, ``DatasetError``, ``TrainError``, ``StoreError`` or
    ``LockError`` with a message for the user.

    ``cv``: cross-validation (``core.folds``): ``None``/``0``/``"off"`` trains on the dataset's own split;
    ``k`` trains every (seed, model) on each of ``k`` track-wise stratified folds (every track tested once per
    seed) and pools each seed's predictions over the folds into one run (``n_folds`` k in the store);
    ``"auto"`` (the command line's and the experiment page's default) uses folds when the held-out test split
    has fewer than ``core.folds.MIN_TEST_PER_CLASS`` tracks of some class.

    ``executor="ray"`` runs each (seed, model) as a Ray task (``core.cluster``: ``ray_address``, else
    ``$RAY_ADDRESS``, else a local Ray for the run; ``ray_cpus_per_task`` CPUs each); the store is still
    written here only.
    """
    from core.dataset import DatasetError, load_dataset
    from core.evaluate import evaluate_run, run_predictor
    from core.jobs import StoreLock
    from core.model_card import ModelError as PredictorError, write_model_card
    from core.store import Store, make_run_id, results_frame
    from core.baseline import train_linear
    from core.train import TrainConfig, TrainError, train_run
    from core.train_config import KINDS

    config = config or TrainConfig()
    seeds = parse_seeds(seeds) if not isinstance(seeds, (list, tuple)) else [int(s) for s in seeds]
    models = list(models)
    bad = [m for m in models if m not in KINDS]
    if bad or not models:
        raise ExperimentError("models must be among snippet, full, linear and musicnn "
                              f"(got {', '.join(bad) or 'none'})")
    splits = tuple(splits)
    emit = progress or (lambda ev: None)
    if executor not in ("local", "ray"):
        raise ExperimentError(f"executor must be local or ray (got {executor!r})")
    if executor == "ray":
        from core.cluster import import_ray

        import_ray()  # fails now, with the install command, when Ray is missing

    try:
        dataset = load_dataset(dataset_path)
    except DatasetError as exc:
        raise ExperimentError(str(exc)) from exc
    if dataset.params.mode == "full" and "snippet" in models:
        raise ExperimentError(f"{dataset.path} is a full-clip dataset: pass the snippet dataset (the full-clip "
                              "one is derived from it), or use --models full")
    try:
        from core.folds import FoldError, resolve_cv

        n_folds = resolve_cv(cv, dataset)
    except FoldError as exc:
        raise ExperimentError(str(exc)) from exc
    for split in ("train", "val") if not n_folds else ():  # folds carve their own validation part
        if dataset.card["counts"][split]["tracks"] == 0:
            raise ExperimentError(f"the {split} split of {dataset.path} is empty: rebuild it with more tracks "
                                  "or a positive validation share")
    folds: list[int | None] = list(range(n_folds)) if n_folds else [None]
    store = Store(store_path)  # refuses a newer store before anything is written
    store_lock = StoreLock(store.path).acquire() if lock else None
    runs: list[dict] = []
    pooled: list[dict] = []
    stopped = False
    emit({"state": "running", "phase": "plan", "n_runs": len(seeds) * len(models) * len(folds),
          "n_folds": n_folds, "max_epochs": config.max_epochs, "seeds": seeds, "models": models,
          "message": _plan_message(dataset, n_folds, seeds, models)})
    try:
        base_ds = {}  # kind -> the dataset it trains on (held-out layout); folds are derived from these
        if "snippet" in models:
            base_ds["snippet"] = dataset
        if "linear" in models:
            base_ds["linear"] = dataset
        if "musicnn" in models:  # pretrained musicnn embeddings (core.embeddings), computed once per dataset
            from core.embeddings import EmbeddingError, EmbedStopped, embed_dataset

            base_ds["musicnn"] = dataset
            try:
                embed_dataset(dataset.path, should_stop=should_stop, all_windows=bool(n_folds),
                              progress=lambda d, t, p: emit(
                                  {"state": "running", "phase": "dataset", "model": "musicnn", "done": d, "total": t,
                                   "message": f"musicnn embeddings: {d}/{t} tracks"}))
            except EmbedStopped as exc:
                emit({"state": "stopped", "phase": "dataset", "model": "musicnn", "message": str(exc)})
                return {"runs": [], "stopped": True, "results": results_frame(store).iloc[0:0], "n_folds": n_folds}
            except EmbeddingError as exc:
                raise ExperimentError(str(exc)) from exc
        if "full" in models:
            base_ds["full"] = dataset if dataset.params.mode == "full" else ensure_full_dataset(
                dataset, emit, should_stop, FULL_STORE_S if config.full_crop == "random" else 0.0)
        datasets = _fold_datasets(dataset, base_ds, n_folds, emit)  # (kind, fold) -> dataset
        for seed in seeds:  # the plan, visible to readers of the store before training starts
            for kind in models:
                for fold in folds:
                    ds = datasets[(kind, fold)]
                    rid = make_run_id(ds.card.get("build_id"), kind, seed, config.to_dict(), fold, n_folds)
                    if store.get_run(rid) is None:
                        store.upsert_run(rid, str(ds.path), ds.card.get("build_id"), kind, seed, config.to_dict(),
                                         "queued", fold=fold, n_folds=n_folds)
        # with Ray, the CRNNs and the baseline train as tasks; the musicnn head (seconds on cached embeddings,
        # computed once above) trains here in the driver afterwards
        ray_kinds = [m for m in models if m != "musicnn"] if executor == "ray" else []
        local_kinds = [m for m in models if m not in ray_kinds]
        if ray_kinds:
            from core.cluster import run_on_ray

            runs, stopped = run_on_ray(store, datasets, seeds, ray_kinds, config, emit=emit, should_stop=should_stop,
                                       hop_s=hop_s, splits=splits, address=ray_address,
                                       cpus_per_task=ray_cpus_per_task, folds=folds)
            if n_folds and not stopped:
                for seed in seeds:
                    for kind in ray_kinds:
                        pooled += _pool(store, base_ds[kind], datasets, kind, seed, config, folds, emit)
        units = [(seed, kind, fold) for seed in seeds for kind in _cheap_first(local_kinds) for fold in folds]
        for seed, kind, fold in units if not stopped else ():
            if should_stop and should_stop():
                stopped = True
                break
            ds = datasets[(kind, fold)]
            run_id, base, done = plan_run(store, ds, kind, seed, config, emit)
            if done:
                runs.append(done)
            else:
                run_dir = store.run_dir(run_id)
                store.upsert_run(run_id, str(ds.path), ds.card.get("build_id"), kind, seed, config.to_dict(),
                                 "running", fold=fold, n_folds=n_folds)
                resumed = (run_dir / "state.json").exists()
                where = f", fold {fold + 1} of {n_folds}" if n_folds else ""
                emit({**base, "state": "running", "phase": "train", "max_epochs": _max_epochs(kind, config),
                      "message": f"{'resuming' if resumed else 'starting'} {kind} model, seed {seed}{where}"})
                try:
                    if kind != "musicnn" and not (run_dir / "model_card.json").exists():
                        write_model_card(run_dir, _model_card(run_id, kind, seed, ds, config))

                    def on_epoch(r, base=base, run_id=run_id):
                        store.add_epochs(run_id, [r])
                        emit({**base, "state": "running", "phase": "train", "epoch": r["epoch"],
                              "max_epochs": r["max_epochs"],
                              "metrics": {k: r[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy",
                                                            "val_track_accuracy", "lr", "seconds") if k in r},
                              "message": f"epoch {r['epoch']} done"})

                    def on_batch(epoch, batch, n, base=base):
                        emit({**base, "state": "running", "phase": "batch", "epoch": epoch + 1, "batch": batch,
                              "n_batches": n, "max_epochs": config.max_epochs})

                    if kind == "musicnn":  # a head on the cached embeddings; writes its own card
                        from core.embeddings import DEFAULT_HEAD, train_embedding_head

                        result = train_embedding_head(ds.path, seed, run_dir=run_dir, on_epoch=on_epoch,
                                                      **DEFAULT_HEAD)
                        if n_folds:  # the fold in the card, as the CRNNs' (the demo tells the folds apart)
                            from core.model_card import read_model_card

                            write_model_card(run_dir, {**read_model_card(run_dir / "model_card.json"),
                                                       **_fold_fields(ds.card.get("cv") or {})})
                    elif kind == "linear":
                        result = train_linear(ds, seed, run_dir, norm_method=config.norm_method,
                                              on_epoch=lambda r, on_epoch=on_epoch: on_epoch(
                                                  dict(r, max_epochs=1)))
                    else:
                        result = train_run(ds, kind, seed, config, run_dir, on_epoch=on_epoch,
                                           should_stop=should_stop, on_batch=on_batch)
                    store.add_epochs(run_id, result.history)
                    if result.status == "stopped":
                        store.set_status(run_id, "stopped", f"stopped after epoch {result.epochs_run}")
                        emit({**base, "state": "stopped", "phase": "train", "epoch": result.epochs_run,
                              "message": "stopped on request; run again to resume"})
                        runs.append({**base, "status": "stopped"})
                        stopped = True
                        break
                    best = (f"best epoch {result.best_epoch} of {result.epochs_run}"
                            + (f", {result.monitor} {result.best_value:.3f}" if result.best_value is not None
                               and kind != "linear" else ""))
                    emit({**base, "state": "running", "phase": "evaluate", "message": f"evaluating ({best})"})
                    def on_track(done, total, path, base=base):
                        if done == total or done % 20 == 0:
                            emit({**base, "state": "running", "phase": "evaluate",
                                  "message": f"track-level evaluation {done}/{total} tracks"})

                    if kind == "musicnn":  # from the cached snippet and 1 s-window embeddings: no audio decoding
                        from core.embeddings import embedding_results

                        results = embedding_results(ds, result, splits)
                    else:
                        results = evaluate_run(run_predictor(run_dir), ds, kind, splits, hop_s, progress=on_track)
                    store.write_evaluation(run_id, results, "done")
                    summary = {f"{lvl}/{sp}": round(r["metrics"]["accuracy"], 4) for (lvl, sp), r in results.items()}
                    emit({**base, "state": "done", "phase": "evaluate", "metrics": summary,
                          "message": f"{kind} seed {seed}{where} done"})
                    runs.append({**base, "status": "done", "metrics": summary})
                except KeyboardInterrupt:
                    store.set_status(run_id, "stopped", "interrupted; run again to resume")
                    raise
                except (TrainError, PredictorError, DatasetError, ExperimentError) as exc:
                    store.set_status(run_id, "failed", str(exc))
                    emit({**base, "state": "failed", "message": str(exc)})
                    raise
                except Exception as exc:
                    store.set_status(run_id, "failed", f"{type(exc).__name__}: {exc}"[:500])
                    emit({**base, "state": "failed", "message": f"{type(exc).__name__}: {exc}"})
                    raise
            if stopped:
                break
            if n_folds and fold == folds[-1]:  # the last fold of this (seed, kind): one accuracy per seed
                pooled += _pool(store, base_ds[kind], datasets, kind, seed, config, folds, emit)
    finally:
        if store_lock:
            store_lock.release()
    ids = {r["run"] for r in runs} | {r["run"] for r in pooled}
    df = results_frame(store)
    return {"runs": runs, "pooled": pooled, "stopped": stopped, "n_folds": n_folds,
            "results": df[df["run_id"].isin(ids)].reset_index(drop=True)}


#: the order in which a seed's models train: the cheap ones first (their results, and the time estimates, come
#: early)
COST_ORDER = ("linear", "musicnn", "snippet", "full")


def _cheap_first(kinds: list[str]) -> list[str]:
    return sorted(kinds, key=lambda k: COST_ORDER.index(k) if k in COST_ORDER else len(COST_ORDER))


def _max_epochs(kind: str, config) -> int:
    """The most epochs a run of ``kind`` trains (the linear baseline: one fit; the musicnn head: its own)."""
    if kind == "linear":
        return 1
    if kind == "musicnn":
        from core.embeddings import HEAD_EPOCHS

        return HEAD_EPOCHS
    return int(config.max_epochs)


def _plan_message(dataset, n_folds: int, seeds: list[int], models: list[str]) -> str:
    """What the experiment will do, in one line (the first event; the CLI prints it)."""
    from core.folds import describe_cv, test_tracks_per_class

    n_tracks = sum(int(dataset.card["counts"][s]["tracks"]) for s in ("train", "val", "test"))
    if n_folds:
        how = (f"{describe_cv(n_folds, n_tracks)}: the held-out split has only {test_tracks_per_class(dataset)} "
               "test track(s) of some class")
    else:
        n_test = int(dataset.card["counts"]["test"]["tracks"])
        how = f"the dataset's held-out split ({n_test} test tracks: one track = {100 / max(n_test, 1):.3g} points)"
    return (f"{len(seeds)} seed(s) x {', '.join(models)} on {Path(dataset.path).name}, {how}; "
            f"{len(seeds) * len(models) * max(1, n_folds)} runs")


def _fold_datasets(dataset, base_ds: dict, n_folds: int, emit) -> dict:
    """``{(kind, fold): dataset}``: ``{(kind, None): its dataset}`` without cross-validation; else each kind's
    dataset folded (``core.folds``: the snippet dataset's assignment for every kind; musicnn's embeddings too)."""
    if not n_folds:
        return {(kind, None): ds for kind, ds in base_ds.items()}
    from core.folds import FoldError, fold_assignment, fold_dataset

    assignment = fold_assignment(dataset, n_folds)
    out: dict = {}
    built: dict[tuple[str, int], Any] = {}  # the snippet kinds share the snippet dataset's folds
    for kind, ds in base_ds.items():
        for f in range(n_folds):
            key = (str(ds.path), f)
            if key not in built:
                emit({"state": "running", "phase": "dataset", "model": kind, "done": f, "total": n_folds,
                      "message": f"cross-validation folds of {Path(ds.path).name}: {f + 1} of {n_folds}"})
                try:
                    built[key] = fold_dataset(ds, n_folds, f, assignment)
                except FoldError as exc:
                    raise ExperimentError(str(exc)) from exc
            out[(kind, f)] = built[key]
            if kind == "musicnn":
                from core.embeddings import fold_embeddings

                fold_embeddings(dataset.path, out[(kind, f)])
    return out


def _pool(store, parent, datasets: dict, kind: str, seed: int, config, folds: list, emit) -> list[dict]:
    """Pool the fold runs of (``kind``, ``seed``) into one run (``core.folds.pool_fold_runs``) once every fold
    is done; returns ``[its record]`` (``[]`` while a fold is missing; already pooled: as it is)."""
    from core.folds import pool_fold_runs
    from core.store import make_run_id

    n_folds = len(folds)
    cfg = config.to_dict()
    ids = [make_run_id(datasets[(kind, f)].card.get("build_id"), kind, seed, cfg, f, n_folds) for f in folds]
    recs = [store.get_run(rid) for rid in ids]
    if not all(r and r["status"] == "done" for r in recs):
        return []
    pooled_id = make_run_id(parent.card.get("build_id"), kind, seed, cfg, None, n_folds)
    base = {"seed": seed, "model": kind, "pooled": pooled_id, "n_folds": n_folds}
    have = store.get_run(pooled_id)
    if have and have["status"] == "done" and have["updated_at"] >= max(r["updated_at"] for r in recs):
        return [{**base, "run": pooled_id, "status": "done", "skipped": True}]
    results = pool_fold_runs(store, ids, pooled_id, dataset=str(parent.path), build_id=parent.card.get("build_id"),
                             kind=kind, seed=seed, config=cfg, n_folds=n_folds)
    summary = {f"{lvl}/{sp}": round(r["metrics"]["accuracy"], 4) for (lvl, sp), r in results.items()}
    head = "full" if kind == "full" else "track_sum"
    n = results.get((head, "test"), {}).get("metrics", {}).get("n")
    acc = summary.get(f"{head}/test")
    emit({**base, "state": "done", "phase": "pool", "metrics": summary,
          "message": f"{kind} seed {seed}: {n_folds} folds pooled" + (f", test {acc:.1%} on {n} tracks"
                                                                       if acc is not None else "")})
    return [{**base, "run": pooled_id, "status": "done", "metrics": summary}]


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------
def register_cli(sub) -> None:
    p = sub.add_parser(
        "run-experiment", help="train and evaluate models over several seeds into an experiment store",
        description="Train the snippet and/or full-clip CRNN (and the linear baseline, musicnn + head) for each "
                    "seed, evaluate at segment, track (sum / vote / log-prob) and full-clip level, record everything "
                    "in the store. A dataset whose test split is small is cross-validated (--cv): every track "
                    "tested once per seed. Within a seed the cheap models train first. Resumable: after Ctrl-C, a "
                    "kill or a crash, run the same command again.")
    p.add_argument("dataset", help="snippet dataset folder (from build-dataset)")
    p.add_argument("--store", required=True, help="experiment store folder (created if missing)")
    p.add_argument("--seeds", default="1", help="a count (3 = seeds 0,1,2), a list (0,5,7) or a range (0-4) "
                                                  "(default: 1)")
    p.add_argument("--models", default="snippet,full",
                   help="comma list of snippet, full, linear (the reference baseline) and musicnn (pretrained musicnn "
                        "embeddings + a small head, core.embeddings) (%(default)s)")
    p.add_argument("--preset", choices=list(PRESETS), default=DEFAULT_PRESET,
                   help="; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items()) + " (default: %(default)s)")
    p.add_argument("--cv", default="auto", metavar="auto|off|K",
                   help="track-wise stratified K-fold cross-validation: every track is tested once per seed (fold "
                        "f tests, fold f+1 validates, the rest train; each seed's test predictions are pooled "
                        "over the folds into one accuracy). auto: 5 folds (fewer when a class has fewer "
                        "tracks) when the dataset's held-out test split has fewer than 5 tracks of some class, "
                        "else its own split; off: the dataset's own split (default: %(default)s)")
    add_training_args(p)
    p.add_argument("--hop", type=float, default=1.0, help="hop between track-level windows in s (%(default)s)")
    p.add_argument("--events", help="append progress events (JSON lines) to this file")
    p.add_argument("--stop-file", help="stop (resumably) when this file appears")
    add_executor_args(p)
    p.set_defaults(func=_cli_run)

    r = sub.add_parser("results", help="show (and export) the results of an experiment store",
                       description="Mean ± SD over seeds per model, level and split, and the paired test of "
                                   "track-level (sum) against segment-level accuracy.")
    r.add_argument("--store", required=True, help="experiment store folder")
    r.add_argument("--csv", help="write the per-run results to this CSV file")
    r.add_argument("--json", help="write a full JSON export (re-importable) to this file")
    r.set_defaults(func=_cli_results)


#: TrainConfig fields that the command line can set (dest names of :func:`add_training_args`)
TRAINING_ARGS = ("max_epochs", "lr", "batch_size", "patience", "lr_patience", "lr_factor", "norm_method", "dropout",
                 "max_train_batches", "precision", "monitor", "schedule", "warmup_epochs", "label_smoothing",
                 "time_masks", "freq_masks", "mixup", "snippets_per_track", "snippet_selection", "full_crop", "arch",
                 "bn_recalibrate", "full_batch_size")


def add_executor_args(p) -> None:
    """Where the runs train (run-experiment and reproduce): this process, or Ray tasks (``core.cluster``)."""
    g = p.add_argument_group("executor (where the runs train)")
    g.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: one run after the other in this process (default); ray: each (model, seed) run as "
                        "a Ray task, on a cluster or a local Ray (pip install -r requirements-cluster.txt)")
    g.add_argument("--ray-address",
                   help="the Ray cluster: auto (the `ray start` cluster this machine belongs to), HEAD:6379 "
                        "(default: $RAY_ADDRESS, else a local Ray started for the run). Every node must see the "
                        "dataset, its source audio and the store at the same paths")
    g.add_argument("--ray-cpus-per-task", type=int, default=2,
                   help="CPUs per run with --executor ray (= TensorFlow threads) (default: %(default)s)")


def add_training_args(p) -> None:
    """The options that override a preset's training settings (run-experiment and reproduce)."""
    g = p.add_argument_group("training (override the preset)")
    g.add_argument("--epochs", type=int, dest="max_epochs", help="maximum epochs")
    g.add_argument("--lr", type=float, help="initial learning rate")
    g.add_argument("--batch-size", type=int, help="batch size")
    g.add_argument("--patience", type=int, help="early-stopping patience on val loss")
    g.add_argument("--lr-patience", type=int, help="reduce-LR-on-plateau patience")
    g.add_argument("--lr-factor", type=float, help="reduce-LR-on-plateau factor")
    g.add_argument("--norm", dest="norm_method", choices=["minmax", "standard"], help="feature scaling")
    g.add_argument("--dropout", type=float, help="dropout rate")
    g.add_argument("--max-batches", type=int, dest="max_train_batches", help="cap batches per epoch (0 = all)")
    g.add_argument("--precision", choices=["float32", "mixed_bfloat16"], help="Keras dtype policy")
    g.add_argument("--monitor", choices=["val_track_accuracy", "val_accuracy", "val_loss"],
                   help="validation signal for the best epoch, early stopping and LR reduction")
    g.add_argument("--schedule", choices=["plateau", "cosine"],
                   help="learning rate: reduce-on-plateau, or warm-up + cosine decay")
    g.add_argument("--warmup-epochs", type=float, help="warm-up of the cosine schedule, in epochs")
    g.add_argument("--label-smoothing", type=float, help="label smoothing of the loss (0 = off)")
    g.add_argument("--time-masks", type=int, help="SpecAugment time masks per sample (0 = off)")
    g.add_argument("--freq-masks", type=int, help="SpecAugment frequency masks per sample (0 = off)")
    g.add_argument("--mixup", type=float, help="mixup Beta(a, a) parameter (0 = off)")
    g.add_argument("--snippets-per-track", type=int,
                   help="training snippets per track and epoch (0 = every snippet the dataset holds)")
    g.add_argument("--snippet-selection", choices=["first", "random"],
                   help="first: the same snippets every epoch; random: re-drawn every epoch")
    g.add_argument("--full-crop", choices=["first", "random"],
                   help="30 s model: the first 30 s, or a random 30 s crop re-drawn every epoch")
    g.add_argument("--bn-recalibrate", type=int,
                   help="re-estimate batch-norm statistics on this many training samples after each epoch (0 = off)")
    g.add_argument("--full-batch-size", type=int, help="batch size of the 30 s model (0 = --batch-size)")
    g.add_argument("--arch", choices=list(ARCH_NAMES),
                   help="CRNN design: standard (BN + ELU, then max-pool), lean (max-pool first, no BN on the "
                        "first block: ~1.3x less CPU per sample), or keras_bn (standard with Keras' own batch-norm "
                        "layer instead of the written-out one: same function, slower training step)")


def _cli_run(a) -> int:
    _quiet_backend_logs()
    from tqdm import tqdm

    from core.dataset import DatasetError
    from core.jobs import EventLog, LockError, StopFlag
    from core.store import StoreError
    from core.train_config import TrainError

    try:
        config = preset_config(a.preset, **{k: getattr(a, k) for k in TRAINING_ARGS})
        seeds = parse_seeds(a.seeds)
    except (ExperimentError, TrainError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log = EventLog(a.events) if a.events else None
    stop = StopFlag(a.stop_file).install_signals()
    bar = None
    last_batch_event = [0.0]
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    runs_bar = None  # --executor ray: parallel runs, a bar of finished runs (no batch bar)
    seen: list[dict] = []  # the events so far but batches (elapsed time and time left: experiment_progress)

    def progress(ev: dict) -> None:
        nonlocal bar, runs_bar
        phase = ev.get("phase")
        ev = {"ts": round(time.time(), 2), **ev}
        if phase != "batch":
            seen.append(ev)
        if a.executor == "ray" and ev.get("run"):
            if runs_bar is None:
                prog = experiment_progress(seen, len(seeds) * len(models))
                runs_bar = tqdm(total=prog["n_runs"], desc="runs", unit="run", dynamic_ncols=True)
            if ev.get("state") in ("done", "failed", "stopped"):
                runs_bar.update(1)
        if log and (phase != "batch" or time.time() - last_batch_event[0] > 2.0):
            if phase == "batch":
                last_batch_event[0] = time.time()
            log.emit(ev)
        if phase == "dataset" and ev.get("total") and ev.get("state") == "running":  # embeddings, folds: a bar
            desc = str(ev.get("message", "")).split(":")[0]
            if bar is None or bar.desc != desc:
                if bar is not None:
                    bar.close()
                bar = tqdm(total=ev["total"], desc=desc, unit="step", dynamic_ncols=True, leave=False)
            bar.n = int(ev.get("done") or 0)
            bar.refresh()
            return
        if phase == "batch":
            fold = f" fold {ev['fold'] + 1}/{ev['n_folds']}" if ev.get("n_folds") else ""
            mx = f" of max {ev['max_epochs']}" if ev.get("max_epochs") else ""
            desc = f"seed {ev['seed']} {ev['model']}{fold} epoch {ev['epoch']}{mx}"
            if bar is None or bar.desc != desc:
                if bar is not None:
                    bar.close()
                bar = tqdm(total=ev["n_batches"], desc=desc, unit="batch", dynamic_ncols=True, leave=False)
            bar.n = ev["batch"]
            bar.refresh()
            return
        if bar is not None:
            bar.close()
            bar = None
        m = ev.get("metrics") or {}
        detail = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items())
        when = ""
        if phase in ("train", "evaluate", "pool", "skip") and ev.get("state") in ("running", "done"):
            when = f" ({time_left_words(experiment_progress(seen, len(seeds) * len(models)))})"
        tqdm.write(f"[{ev.get('state')}] {ev.get('message', '')} {detail}".rstrip() + when)

    if log:
        log.emit(state="running", phase="start", message=f"run-experiment {a.dataset} seeds {seeds}")
    try:
        out = run_experiment(a.dataset, a.store, seeds, models, config, progress=progress, should_stop=stop,
                             hop_s=a.hop, executor=a.executor, ray_address=a.ray_address,
                             ray_cpus_per_task=a.ray_cpus_per_task, cv=a.cv)
    except (ExperimentError, DatasetError, TrainError, StoreError, LockError) as exc:
        if log:
            log.emit(state="failed", phase="end", message=str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if log:
            log.emit(state="stopped", phase="end", message="interrupted; run again to resume")
        raise
    finally:
        if bar is not None:
            bar.close()
        if runs_bar is not None:
            runs_bar.close()
    if out["stopped"]:
        if log:
            log.emit(state="stopped", phase="end", message="stopped; run the same command again to resume")
        print("stopped; run the same command again to resume.", file=sys.stderr)
        return 3
    if log:
        log.emit(state="done", phase="end", message="experiment finished")
    _print_results(a.store)
    return 0


def _print_results(store) -> None:
    import pandas as pd

    from core.evaluate import compare_levels
    from core.store import results_frame, summary_frame

    df = results_frame(store)
    if df.empty:
        print("no results yet")
        return
    folds = df["n_folds"].fillna(0).astype(int)
    for k in sorted(folds.unique()):  # cross-validated and held-out figures are never averaged together
        part = df[folds == k]
        print(evaluation_line(part, int(k)))
        s = summary_frame(part)
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            print(s[["split", "kind", "level", "n_seeds", "accuracy", "macro_f1"]].to_string(index=False))
        for split in ("val", "test"):
            sub = part[(part["split"] == split) & (part["kind"] == "snippet")]
            if sub["seed"].nunique() >= 2 and {"segment", "track_sum"} <= set(sub["level"]):
                t = compare_levels(part, "track_sum", "segment", split)
                w = f", Wilcoxon p={t['p_wilcoxon']:.4g}" if t.get("p_wilcoxon") is not None else ""
                note = f" ({t['note']})" if t.get("note") else ""
                print(f"{split}: track (sum) - segment accuracy = {t['mean_diff']:+.4f} over {t['n']} seeds, "
                      f"paired t p={t['p_ttest']:.4g}{w}{note}")


def evaluation_line(results, n_folds: int) -> str:
    """What the figures of ``results`` (a results frame of one evaluation) rest on, in one line for the CLI:
    ``k``-fold cross-validation (every track tested once per seed) or the held-out split, and how many points
    one test track is worth."""
    rows = results[(results["split"] == "test") & results["level"].isin(["track_sum", "full"])]["n"].dropna()
    n = int(rows.max()) if len(rows) else 0
    step = f"; one track = {100 / n:.3g} points" if n else ""
    if n_folds:
        return (f"{n_folds}-fold cross-validation: each seed's figures pool its {n_folds} folds, every one of the "
                f"{n or '?'} tracks tested once{step}")
    return f"held-out split: {n or '?'} test tracks{step}"


def _cli_results(a) -> int:
    from core.store import StoreError, Store, export_results

    try:
        store = Store(a.store, create=False)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_results(store)
    if a.csv:
        print(f"wrote {export_results(store, a.csv)}")
    if a.json:
        print(f"wrote {export_results(store, a.json)}")
    return 0


def _quiet_backend_logs() -> None:
    """Hide TensorFlow's Python-side retracing warnings in CLI output (they are expected here)."""
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)


# ---------------------------------------------------------------------------------------------------------
# an experiment job seen from outside: its plan (command line), its progress (events), the store's experiments
# ---------------------------------------------------------------------------------------------------------
@functools.cache
def _job_parser():
    """The CLI parser of this module's commands (built once: the experiment page reads job plans on every rerun)."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    register_cli(parser.add_subparsers(dest="command"))
    return parser


def experiment_plan(command: list[str]) -> dict[str, Any]:
    """Dataset, seeds, models, preset, epochs and ``--cv`` of a ``run-experiment`` job from its command line
    (``job.json``), read with the command's own parser; empty lists when it is not one. ``n_runs`` counts one
    run per seed and model: with cross-validation the job's first event (phase ``plan``) has the real count,
    which :func:`experiment_progress` reads."""
    import argparse

    from core.jobs import job_args

    parser = _job_parser()
    plan: dict[str, Any] = {"seeds": [], "models": [], "n_runs": 0, "dataset": "", "preset": None, "epochs": None,
                            "cv": None}
    try:
        a, _ = parser.parse_known_args(job_args(command))
    except (argparse.ArgumentError, SystemExit):
        return plan
    if getattr(a, "command", None) != "run-experiment":
        return plan
    try:
        seeds = parse_seeds(a.seeds)
    except ExperimentError:
        seeds = []
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    plan.update(seeds=seeds, models=models, n_runs=len(seeds) * len(models), dataset=a.dataset, preset=a.preset,
                epochs=a.max_epochs, cv=getattr(a, "cv", None))
    return plan


def _event_time(ev: dict) -> float | None:
    """An event's time in seconds since the epoch: ``ts`` (written by ``core.jobs.EventLog``), else ``t``."""
    if isinstance(ev.get("ts"), (int, float)):
        return float(ev["ts"])
    t = ev.get("t")
    if not t:
        return None
    import calendar

    try:
        return float(calendar.timegm(time.strptime(str(t), "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def experiment_progress(events: list[dict], n_runs: int, now: float | None = None) -> dict[str, Any]:
    """Where a running experiment is, from its events: current run (``fold`` too), the epoch in progress
    (``epoch``; ``epochs_done`` finished, ``max_epochs``: "of max N" from the start), batch, per-epoch curves of
    the current run, runs finished, the last messages, and time: ``elapsed_s`` since the first event and
    ``eta_s`` (an estimate of the time left, or None before anything can be estimated; ``eta_partial``: some
    runs of a model kind not run yet are left out, so it is a lower bound)."""
    now = time.time() if now is None else now
    cur: dict[str, Any] = {"run": None, "seed": None, "model": None, "fold": None, "n_folds": None, "epoch": 0,
                           "epochs_done": 0, "max_epochs": None, "batch": 0, "n_batches": None, "phase": None,
                           "curves": [], "finished": [], "messages": [], "n_runs": n_runs, "plan": None,
                           "dataset_done": None, "dataset_total": None}
    finished: dict[str, str] = {}
    t_first = None
    run_start: dict[str, float] = {}
    durations: dict[str, list[float]] = {}
    kind_of: dict[str, str] = {}
    epoch_secs: dict[str, list[float]] = {}
    phase_start: float | None = None
    for ev in events:
        t = _event_time(ev)
        if t is not None and t_first is None:
            t_first = t
        phase = ev.get("phase")
        if phase == "plan":
            cur["plan"] = ev
            cur["n_runs"] = int(ev.get("n_runs") or n_runs)
            cur["n_folds"] = ev.get("n_folds") or None
        run = ev.get("run")
        if run and run != cur["run"]:
            cur.update(run=run, seed=ev.get("seed"), model=ev.get("model"), fold=ev.get("fold"), epoch=0,
                       epochs_done=0, batch=0, n_batches=None, curves=[])
            if t is not None:
                run_start.setdefault(run, t)
        if run:
            kind_of[run] = ev.get("model") or kind_of.get(run, "")
        if ev.get("max_epochs") and run:
            cur["max_epochs"] = ev["max_epochs"]
        cur["phase"] = phase or cur["phase"]
        if phase == "dataset":
            if cur["dataset_done"] is None or ev.get("done") in (0, None):
                phase_start = t
            cur.update(dataset_done=ev.get("done"), dataset_total=ev.get("total"))
        if phase == "batch":
            cur.update(epoch=ev.get("epoch", cur["epoch"]), batch=ev.get("batch", 0), n_batches=ev.get("n_batches"))
        elif phase == "train" and ev.get("metrics"):
            cur["curves"].append({"epoch": ev.get("epoch"), **ev["metrics"]})
            done = int(ev.get("epoch") or 0)
            mx = cur["max_epochs"]
            cur.update(epochs_done=done, epoch=min(done + 1, mx) if mx else done + 1, batch=0)
            if run and isinstance(ev["metrics"].get("seconds"), (int, float)):
                epoch_secs.setdefault(run, []).append(float(ev["metrics"]["seconds"]))
        if run and ev.get("state") in ("done", "failed", "stopped") and phase in ("evaluate", "skip", "train", None):
            finished[run] = ev["state"]
            if ev["state"] == "done" and phase == "evaluate" and t is not None and run in run_start:
                durations.setdefault(kind_of.get(run, ""), []).append(max(0.0, t - run_start[run]))
        if ev.get("message") and phase != "batch":
            cur["messages"].append(ev["message"])
    cur["finished"] = finished
    cur["n_done"] = sum(1 for s in finished.values() if s == "done")
    cur["messages"] = cur["messages"][-6:]
    cur["elapsed_s"] = max(0.0, now - t_first) if t_first is not None else 0.0
    cur.update(_eta(cur, finished, durations, run_start, epoch_secs, phase_start, now, kind_of))
    return cur


def _eta(cur: dict, finished: dict, durations: dict, run_start: dict, epoch_secs: dict,
         phase_start: float | None, now: float, kind_of: dict) -> dict[str, Any]:
    """Time left: runs not started at the mean duration of their kind's finished runs (this job's), the
    current run at its kind's mean less its time so far (or, before a run of its kind has finished, its epochs
    left at its mean epoch time: an upper bound, early stopping may end it sooner), a dataset phase (embedding,
    folds) at its rate so far."""
    plan = cur.get("plan") or {}
    models, seeds = plan.get("models"), plan.get("seeds")
    if not models or not seeds:
        return {"eta_s": None, "eta_partial": False}
    per_kind_total = len(seeds) * max(1, int(plan.get("n_folds") or 0))
    mean = {k: sum(v) / len(v) for k, v in durations.items() if v}
    left, partial = 0.0, False
    run, kind = cur.get("run"), cur.get("model")
    if run and kind and kind not in mean and epoch_secs.get(run) and cur.get("max_epochs"):
        # no run of this kind finished yet: the current one's epochs so far, at its maximum epochs (an upper
        # bound: early stopping may end runs sooner)
        per = sum(epoch_secs[run]) / len(epoch_secs[run])
        mean[kind] = per * int(cur["max_epochs"])
    for k in models:
        n_left = per_kind_total - sum(1 for r in finished if kind_of.get(r) == k)
        if run and kind == k and run not in finished:
            n_left -= 1
        n_left = max(0, n_left)
        if k in mean:
            left += n_left * mean[k]
        elif n_left:
            partial = True
    if run and run not in finished and kind:
        spent = now - run_start.get(run, now)
        if kind in durations:
            left += max(0.0, mean[kind] - spent)
        elif kind in mean:  # its own epochs left
            mx = int(cur["max_epochs"])
            left += mean[kind] / mx * max(0, mx - int(cur.get("epochs_done") or 0))
        else:
            partial = True
    if cur.get("phase") == "dataset" and cur.get("dataset_total") and phase_start is not None:
        d, t = int(cur.get("dataset_done") or 0), int(cur["dataset_total"])
        if d > 0:
            left += (now - phase_start) * (t - d) / d
        partial = True  # the runs after it are not known yet
    if partial and left == 0:
        return {"eta_s": None, "eta_partial": True}
    return {"eta_s": left, "eta_partial": partial}


def time_left_words(prog: dict) -> str:
    """``"elapsed 3:12 · about 4:30 left"`` (``at least`` when runs of a model not yet run are unknown;
    ``estimated after the first run`` before anything is known)."""
    el = f"elapsed {format_duration(prog.get('elapsed_s'))}"
    eta = prog.get("eta_s")
    if eta is None:
        return f"{el} · time left: estimated after the first run"
    return f"{el} · {'at least' if prog.get('eta_partial') else 'about'} {format_duration(eta)} left"


def experiment_groups(runs: list[dict]) -> list[dict[str, Any]]:
    """Runs of a store grouped into experiments: same (snippet) dataset, same training settings and the same
    evaluation (the held-out split, or k-fold cross-validation).

    A store can hold several experiments (other datasets, other presets); averaging across them would mix
    apples and oranges. Returns ``[{"key", "label", "dataset", "run_ids", "n_seeds", "n_folds", "updated"}]``,
    the most recently updated first. Full-clip runs belong to the snippet dataset they were derived from
    (``X-full``); the runs of cross-validation folds (``X/cv5/fold2``) to the dataset they were folded from,
    with the pooled runs.
    """
    import json
    import re

    from core.folds import fold_parent

    groups: dict[str, dict[str, Any]] = {}
    for r in runs:
        ds = fold_parent(str(r.get("dataset") or ""))
        if r.get("kind") == "full":
            ds = re.sub(r"-full(\d+(\.\d+)?s)?$", "", ds)  # X-full or X-full60s: derived from X
        cfg = r.get("config") or {}
        if isinstance(cfg, str):
            try:
                cfg = json.loads(cfg)
            except ValueError:
                cfg = {}
        cfg = {k: v for k, v in cfg.items() if k not in ("workers",)}
        n_folds = int(r.get("n_folds") or 0) or None
        key = f"{ds}|{json.dumps(cfg, sort_keys=True)}" + (f"|cv{n_folds}" if n_folds else "")
        g = groups.setdefault(key, {"key": key, "dataset": ds, "config": cfg, "run_ids": [], "seeds": set(),
                                    "kinds": set(), "updated": "", "n_folds": n_folds})
        g["run_ids"].append(r["id"])
        g["seeds"].add(r.get("seed"))
        g["kinds"].add(r.get("kind"))
        g["updated"] = max(g["updated"], str(r.get("updated_at") or r.get("created_at") or ""))
    out = []
    for g in groups.values():
        cfg = g["config"]
        preset = preset_name(cfg)
        bits = [f"preset {preset}"] if preset else []
        if "lr" in cfg:
            bits.append(f"lr {cfg['lr']:g}")
        if "max_epochs" in cfg:
            bits.append(f"≤ {cfg['max_epochs']} epochs")
        if cfg.get("max_train_batches"):
            bits.append(f"{cfg['max_train_batches']} batches/epoch")
        if g["n_folds"]:
            bits.append(f"{g['n_folds']}-fold cross-validation")
        name = Path(g["dataset"]).name or "?"
        g["n_seeds"] = len(g["seeds"])
        g["label"] = f"{name} · {', '.join(bits) or 'default settings'} · {g['n_seeds']} seed" + \
            ("s" if g["n_seeds"] != 1 else "")
        out.append(g)
    out.sort(key=lambda g: g["updated"], reverse=True)
    return out
