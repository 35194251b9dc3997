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
#: * ``fast``: a smoke run (2 epochs of at most 20 batches).
PRESETS: dict[str, dict[str, Any]] = {
    "recommended": {"lr": 1e-3, "max_epochs": 30, "patience": 10, "schedule": "cosine", "warmup_epochs": 1.0,
                    "monitor": "val_track_accuracy", "snippets_per_track": 14, "snippet_selection": "random",
                    "full_crop": "random", "bn_recalibrate": 1024, "full_batch_size": 16},
    "paper": {},
    "tuned": {"lr": 1e-3, "max_epochs": 40, "patience": 8, "lr_patience": 4},
    "fast": {"lr": 1e-3, "max_epochs": 2, "patience": 2, "lr_patience": 2, "max_train_batches": 20},
}
DEFAULT_PRESET = "recommended"
#: one line per preset, for --help texts and the experiment page
PRESET_HELP = {
    "recommended": "recommended: Adam 1e-3, warm-up + cosine, best epoch by validation track accuracy, random "
                   "snippets and 30 s crops re-drawn every epoch, batch-norm statistics re-estimated each epoch",
    "paper": "the article's settings: Adam 1e-4, batch 32, early stopping + reduce-LR-on-plateau on validation loss",
    "tuned": "the first reference results' settings: Adam 1e-3, patience 8 on validation loss",
    "fast": "a smoke run: 2 short epochs",
}
#: seconds of each track a full-clip dataset stores when training crops at random (the model still sees 30 s)
FULL_STORE_S = 60.0


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
    from core.predictor import make_model_card

    p = dataset.params
    frames = p.input_frames
    info = describe(build_model(kind, len(dataset.classes), p.n_mels, frames, arch=config.arch), (frames, p.n_mels))
    return make_model_card(kind, dataset.classes, p, dataset.norm, config.norm_method, model_file="best.keras",
                           run_id=run_id, seed=seed, dataset=str(dataset.path),
                           dataset_build_id=dataset.card.get("build_id"), input_shape=[frames, p.n_mels, 1],
                           n_params=info["params"], macs_per_sample=info["macs_per_sample"],
                           config=config.to_dict())


def plan_run(store, ds, kind: str, seed: int, config, emit) -> tuple[str, dict, dict | None]:
    """The run of ``kind`` x ``seed`` on dataset ``ds``: ``(run_id, base event fields, done)``; ``done`` is the
    run's record (after a "skip" event) when the store already has it finished, else ``None``. Shared by the
    local loop and the Ray executor (``core.cluster``)."""
    from core.store import make_run_id

    run_id = make_run_id(ds.card.get("build_id"), kind, seed, config.to_dict())
    base = {"seed": seed, "model": kind, "run": run_id}
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
) -> dict[str, Any]:
    """Train and evaluate every (seed, model) pair; returns ``{"runs": [...], "stopped": bool, "results": df}``.

    ``progress(event)`` receives dicts with ``state`` (running/done/failed/stopped), ``phase`` (dataset, train,
    batch, evaluate), ``seed``, ``model``, ``run``, ``epoch``, ``metrics`` and ``message``. ``should_stop()``
    is polled between batches; a stop leaves every run resumable. Raises :class:`ExperimentError`,
    ``DatasetError``, ``TrainError``, ``StoreError`` or ``LockError`` with a message for the user.

    ``executor="ray"`` runs each (seed, model) as a Ray task (``core.cluster``: ``ray_address``, else
    ``$RAY_ADDRESS``, else a local Ray for the run; ``ray_cpus_per_task`` CPUs each); the store is still
    written here only.
    """
    from core.dataset import DatasetError, load_dataset
    from core.evaluate import evaluate_run, run_predictor
    from core.jobs import StoreLock
    from core.predictor import PredictorError, write_model_card
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
    for split in ("train", "val"):
        if dataset.card["counts"][split]["tracks"] == 0:
            raise ExperimentError(f"the {split} split of {dataset.path} is empty: rebuild it with more tracks "
                                  "or a positive validation share")
    store = Store(store_path)  # refuses a newer store before anything is written
    store_lock = StoreLock(store.path).acquire() if lock else None
    runs: list[dict] = []
    stopped = False
    try:
        datasets = {}
        if "snippet" in models:
            datasets["snippet"] = dataset
        if "linear" in models:
            datasets["linear"] = dataset
        if "musicnn" in models:  # pretrained musicnn embeddings (core.embeddings), computed once per dataset
            from core.embeddings import EmbeddingError, EmbedStopped, embed_dataset

            datasets["musicnn"] = dataset
            try:
                embed_dataset(dataset.path, should_stop=should_stop, progress=lambda d, t, p: emit(
                    {"state": "running", "phase": "dataset", "model": "musicnn",
                     "message": f"musicnn embeddings: {d}/{t} tracks"}))
            except EmbedStopped as exc:
                emit({"state": "stopped", "phase": "dataset", "model": "musicnn", "message": str(exc)})
                return {"runs": [], "stopped": True, "results": results_frame(store).iloc[0:0]}
            except EmbeddingError as exc:
                raise ExperimentError(str(exc)) from exc
        if "full" in models:
            datasets["full"] = dataset if dataset.params.mode == "full" else ensure_full_dataset(
                dataset, emit, should_stop, FULL_STORE_S if config.full_crop == "random" else 0.0)
        for seed in seeds:  # the plan, visible to readers of the store before training starts
            for kind in models:
                ds = datasets[kind]
                rid = make_run_id(ds.card.get("build_id"), kind, seed, config.to_dict())
                if store.get_run(rid) is None:
                    store.upsert_run(rid, str(ds.path), ds.card.get("build_id"), kind, seed, config.to_dict(),
                                     "queued")
        # with Ray, the CRNNs and the baseline train as tasks; the musicnn head (seconds on cached embeddings,
        # computed once above) trains here in the driver afterwards
        ray_kinds = [m for m in models if m != "musicnn"] if executor == "ray" else []
        local_kinds = [m for m in models if m not in ray_kinds]
        if ray_kinds:
            from core.cluster import run_on_ray

            runs, stopped = run_on_ray(store, datasets, seeds, ray_kinds, config, emit=emit, should_stop=should_stop,
                                       hop_s=hop_s, splits=splits, address=ray_address,
                                       cpus_per_task=ray_cpus_per_task)
        for seed in seeds if (local_kinds and not stopped) else ():
            for kind in local_kinds:
                if should_stop and should_stop():
                    stopped = True
                    break
                ds = datasets[kind]
                run_id, base, done = plan_run(store, ds, kind, seed, config, emit)
                if done:
                    runs.append(done)
                    continue
                run_dir = store.run_dir(run_id)
                store.upsert_run(run_id, str(ds.path), ds.card.get("build_id"), kind, seed, config.to_dict(),
                                 "running")
                resumed = (run_dir / "state.json").exists()
                emit({**base, "state": "running", "phase": "train",
                      "message": f"{'resuming' if resumed else 'starting'} {kind} model, seed {seed}"})
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
                              "n_batches": n})

                    if kind == "musicnn":  # a head on the cached embeddings; writes its own card
                        from core.embeddings import DEFAULT_HEAD, train_embedding_head

                        result = train_embedding_head(ds.path, seed, run_dir=run_dir, on_epoch=on_epoch,
                                                      **DEFAULT_HEAD)
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
                          "message": f"{kind} seed {seed} done"})
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
    finally:
        if store_lock:
            store_lock.release()
    ids = {r["run"] for r in runs}
    df = results_frame(store)
    return {"runs": runs, "stopped": stopped, "results": df[df["run_id"].isin(ids)].reset_index(drop=True)}


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------
def register_cli(sub) -> None:
    p = sub.add_parser(
        "run-experiment", help="train and evaluate models over several seeds into an experiment store",
        description="Train the snippet and/or full-clip CRNN for each seed, evaluate at segment, track (sum / "
                    "vote / log-prob) and full-clip level, record everything in the store. Resumable: after "
                    "Ctrl-C, a kill or a crash, run the same command again.")
    p.add_argument("dataset", help="snippet dataset folder (from build-dataset)")
    p.add_argument("--store", required=True, help="experiment store folder (created if missing)")
    p.add_argument("--seeds", default="1", help="a count (3 = seeds 0,1,2), a list (0,5,7) or a range (0-4) "
                                                  "(default: 1)")
    p.add_argument("--models", default="snippet,full",
                   help="comma list of snippet, full, linear (the reference baseline) and musicnn (pretrained musicnn "
                        "embeddings + a small head, core.embeddings) (%(default)s)")
    p.add_argument("--preset", choices=list(PRESETS), default=DEFAULT_PRESET,
                   help="; ".join(PRESET_HELP.values()) + " (default: %(default)s)")
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

    def progress(ev: dict) -> None:
        nonlocal bar, runs_bar
        phase = ev.get("phase")
        if a.executor == "ray" and ev.get("run"):
            if runs_bar is None:
                runs_bar = tqdm(total=len(seeds) * len(models), desc="runs", unit="run", dynamic_ncols=True)
            if ev.get("state") in ("done", "failed", "stopped"):
                runs_bar.update(1)
        if log and (phase != "batch" or time.time() - last_batch_event[0] > 2.0):
            if phase == "batch":
                last_batch_event[0] = time.time()
            log.emit(ev)
        if phase == "batch":
            desc = f"seed {ev['seed']} {ev['model']} epoch {ev['epoch']}"
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
        tqdm.write(f"[{ev.get('state')}] {ev.get('message', '')} {detail}".rstrip())

    if log:
        log.emit(state="running", phase="start", message=f"run-experiment {a.dataset} seeds {seeds}")
    try:
        out = run_experiment(a.dataset, a.store, seeds, models, config, progress=progress, should_stop=stop,
                             hop_s=a.hop, executor=a.executor, ray_address=a.ray_address,
                             ray_cpus_per_task=a.ray_cpus_per_task)
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
    s = summary_frame(df)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(s[["split", "kind", "level", "n_seeds", "accuracy", "macro_f1"]].to_string(index=False))
    for split in ("val", "test"):
        sub = df[(df["split"] == split) & (df["kind"] == "snippet")]
        if sub["seed"].nunique() >= 2 and {"segment", "track_sum"} <= set(sub["level"]):
            t = compare_levels(df, "track_sum", "segment", split)
            w = f", Wilcoxon p={t['p_wilcoxon']:.4g}" if t.get("p_wilcoxon") is not None else ""
            note = f" ({t['note']})" if t.get("note") else ""
            print(f"{split}: track (sum) - segment accuracy = {t['mean_diff']:+.4f} over {t['n']} seeds, "
                  f"paired t p={t['p_ttest']:.4g}{w}{note}")


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
    """Dataset, seeds, models, preset and epochs of a ``run-experiment`` job from its command line
    (``job.json``), read with the command's own parser; empty lists when it is not one."""
    import argparse

    from core.jobs import job_args

    parser = _job_parser()
    plan: dict[str, Any] = {"seeds": [], "models": [], "n_runs": 0, "dataset": "", "preset": None, "epochs": None}
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
                epochs=a.max_epochs)
    return plan


def experiment_progress(events: list[dict], n_runs: int) -> dict[str, Any]:
    """Where a running experiment is, from its events: current run, epoch, batch, per-epoch curves of the
    current run, runs finished, the last messages."""
    cur: dict[str, Any] = {"run": None, "seed": None, "model": None, "epoch": 0, "max_epochs": None, "batch": 0,
                           "n_batches": None, "phase": None, "curves": [], "finished": [], "messages": []}
    finished: dict[str, str] = {}
    for ev in events:
        run = ev.get("run")
        if run and run != cur["run"]:
            cur.update(run=run, seed=ev.get("seed"), model=ev.get("model"), epoch=0, batch=0, n_batches=None,
                       curves=[])
        phase = ev.get("phase")
        cur["phase"] = phase or cur["phase"]
        if phase == "batch":
            cur.update(epoch=ev.get("epoch", cur["epoch"]), batch=ev.get("batch", 0), n_batches=ev.get("n_batches"))
        elif phase == "train" and ev.get("metrics"):
            cur["curves"].append({"epoch": ev.get("epoch"), **ev["metrics"]})
            cur.update(epoch=ev.get("epoch", cur["epoch"]), max_epochs=ev.get("max_epochs", cur["max_epochs"]),
                       batch=0)
        if run and ev.get("state") in ("done", "failed", "stopped") and phase in ("evaluate", "skip", "train", None):
            finished[run] = ev["state"]
        if ev.get("message") and phase != "batch":
            cur["messages"].append(ev["message"])
    cur["finished"] = finished
    cur["n_done"] = sum(1 for s in finished.values() if s == "done")
    cur["n_runs"] = n_runs
    cur["messages"] = cur["messages"][-6:]
    return cur


def experiment_groups(runs: list[dict]) -> list[dict[str, Any]]:
    """Runs of a store grouped into experiments: same (snippet) dataset and same training settings.

    A store can hold several experiments (other datasets, other presets); averaging across them would mix
    apples and oranges. Returns ``[{"key", "label", "dataset", "run_ids", "n_seeds", "updated"}]``, the most
    recently updated first. Full-clip runs belong to the snippet dataset they were derived from (``X-full``).
    """
    import json
    import re

    groups: dict[str, dict[str, Any]] = {}
    for r in runs:
        ds = str(r.get("dataset") or "")
        if r.get("kind") == "full":
            ds = re.sub(r"-full(\d+(\.\d+)?s)?$", "", ds)  # X-full or X-full60s: derived from X
        cfg = r.get("config") or {}
        if isinstance(cfg, str):
            try:
                cfg = json.loads(cfg)
            except ValueError:
                cfg = {}
        cfg = {k: v for k, v in cfg.items() if k not in ("workers",)}
        key = f"{ds}|{json.dumps(cfg, sort_keys=True)}"
        g = groups.setdefault(key, {"key": key, "dataset": ds, "config": cfg, "run_ids": [], "seeds": set(),
                                    "kinds": set(), "updated": ""})
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
        name = Path(g["dataset"]).name or "?"
        g["n_seeds"] = len(g["seeds"])
        g["label"] = f"{name} · {', '.join(bits) or 'default settings'} · {g['n_seeds']} seed" + \
            ("s" if g["n_seeds"] != 1 else "")
        out.append(g)
    out.sort(key=lambda g: g["updated"], reverse=True)
    return out
