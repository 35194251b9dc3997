"""One run of an experiment, and the executors that run many.

A run is one (model kind, seed[, fold]) trained and evaluated in its run folder of the store. :func:`execute_run`
is its one body, the same wherever it runs: the kind's card writer (``core.kinds``), its trainer (resumable:
stopped runs continue from their last finished epoch), then, unless stopped, its evaluator. It writes nothing
to the SQLite store: the caller records what it returns (the local executor here, the Ray driver in
``core.cluster``), so the store keeps one writer.

Executors run a :class:`RunBatch` (the experiment's (seed, kind, fold) runs) and return what each run became:

* ``local`` (:class:`LocalExecutor`): one run after the other in this process, the cheap kinds of a seed first,
  each fold's runs of a (seed, kind) pooled as soon as its last fold is done;
* ``ray`` (``core.cluster.RayExecutor``): each run as a Ray task (the kinds marked ``remote``), the others after
  it in this process.

:data:`EXECUTORS` names them (``--executor``); :class:`ExecutorOptions` holds their options with neutral names
(``address``, ``cpus_per_task``). Keras and TensorFlow load only when a run trains.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from core.errors import GenreLabError
from core.kinds import cheap_first, get_kind, resolve

if TYPE_CHECKING:
    from core.train_config import TrainConfig

Emit = Callable[[dict], None]
#: the per-epoch numbers an epoch event carries (of a run's history record)
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "val_track_accuracy", "lr", "seconds")


class RunError(GenreLabError, ValueError):
    """A run or an executor that cannot be set up (an unknown executor, bad options); message for the user.
    Also a ``ValueError``: callers that checked the options that way keep working."""


# ---------------------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """What one run's trainer, evaluator and card writer get."""

    run_id: str
    kind: str
    seed: int
    dataset: Any  # core.dataset.Dataset (a fold of a cross-validation is one too)
    run_dir: Path
    config: "TrainConfig"
    hop_s: float = 1.0  # hop between track-level windows
    splits: tuple[str, ...] = ("val", "test")

    @property
    def fold_fields(self) -> dict:
        """The dataset's fold as model-card fields (none for a held-out dataset)."""
        return fold_fields(self.dataset.card.get("cv") or {})


@dataclass
class RunHooks:
    """How a run talks to its executor: ``on_epoch(record)`` after each finished epoch, ``on_batch(epoch,
    batch, n)``, ``should_stop()`` (polled between batches: a stop leaves the run resumable), ``report(phase,
    message)`` for what it is doing (evaluating ...)."""

    on_epoch: Callable[[dict], None] | None = None
    on_batch: Callable[[int, int, int], None] | None = None
    should_stop: Callable[[], bool] | None = None
    report: Callable[[str, str], None] = field(default=lambda phase, message: None)


@dataclass
class RunOutcome:
    status: str  # "done" or "stopped" (resumable)
    result: Any  # the trainer's result (core.train.TrainResult, core.embeddings.HeadResult): history, best epoch
    results: dict | None = None  # the evaluation: {(level, split): {"metrics", ...}} (None when stopped)


def execute_run(run: Run, hooks: RunHooks | None = None) -> RunOutcome:
    """Train (or resume) and evaluate one run: the kind's card writer (when the folder has no card yet), its
    trainer, then its evaluator. Errors propagate (the caller records them as the run's failure)."""
    hooks = hooks or RunHooks()
    kind = get_kind(run.kind)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    if kind.card_writer and not (run.run_dir / "model_card.json").exists():
        resolve(kind.card_writer)(run)
    result = resolve(kind.trainer)(run, hooks)
    if result.status == "stopped":
        return RunOutcome("stopped", result)
    hooks.report("evaluate", f"evaluating ({best_words(run.kind, result)})")
    return RunOutcome("done", result, resolve(kind.evaluator)(run, result, hooks))


def best_words(kind: str, result) -> str:
    """``best epoch 3 of 8, val_track_accuracy 0.812`` (a one-fit kind: no monitored value)."""
    one_fit = get_kind(kind).epochs == "1"
    value = (f", {result.monitor} {result.best_value:.3f}" if result.best_value is not None and not one_fit
             else "")
    return f"best epoch {result.best_epoch} of {result.epochs_run}{value}"


def summarise(results: dict) -> dict[str, float]:
    """An evaluation's accuracies as an event's ``metrics``: ``{"track_sum/test": 0.8125, ...}``."""
    return {f"{lvl}/{sp}": round(r["metrics"]["accuracy"], 4) for (lvl, sp), r in results.items()}


def epoch_event(base: dict, record: dict, max_epochs: int) -> dict:
    """The event of a finished epoch (``record``: a history row)."""
    return {**base, "state": "running", "phase": "train", "epoch": record["epoch"], "max_epochs": max_epochs,
            "metrics": {k: record[k] for k in EPOCH_METRICS if k in record}, "message": f"epoch {record['epoch']} done"}


def fold_words(base: dict) -> str:
    """``, fold 2 of 5`` for a fold run's event fields, ``""`` otherwise."""
    return f", fold {base['fold'] + 1} of {base['n_folds']}" if base.get("n_folds") else ""


def run_words(base: dict) -> str:
    """``snippet seed 0`` / ``snippet seed 0, fold 2 of 5``."""
    return f"{base['model']} seed {base['seed']}{fold_words(base)}"


# --- the kinds' trainers, evaluators and card writers (core.kinds names them) ------------------------------
def write_crnn_card(run: Run) -> None:
    """The model card of a CRNN or linear-baseline run (its folder is then a model ``Predictor`` opens)."""
    from core.models import build_model, describe
    from core.model_card import make_model_card, write_model_card

    ds, config = run.dataset, run.config
    p = ds.params
    frames = p.input_frames
    info = describe(build_model(run.kind, len(ds.classes), p.n_mels, frames, arch=config.arch), (frames, p.n_mels))
    write_model_card(run.run_dir, make_model_card(
        run.kind, ds.classes, p, ds.norm, config.norm_method, model_file="best.keras", run_id=run.run_id,
        seed=run.seed, dataset=str(ds.path), dataset_build_id=ds.card.get("build_id"),
        input_shape=[frames, p.n_mels, 1], n_params=info["params"], macs_per_sample=info["macs_per_sample"],
        config=config.to_dict(), **run.fold_fields))


def train_crnn(run: Run, hooks: RunHooks):
    from core.train import train_run

    return train_run(run.dataset, run.kind, run.seed, run.config, run.run_dir, on_epoch=hooks.on_epoch,
                     should_stop=hooks.should_stop, on_batch=hooks.on_batch)


def train_linear_run(run: Run, hooks: RunHooks):
    from core.baseline import train_linear

    on_epoch = hooks.on_epoch
    return train_linear(run.dataset, run.seed, run.run_dir, norm_method=run.config.norm_method,
                        on_epoch=(lambda r: on_epoch(dict(r, max_epochs=1))) if on_epoch else None)


def train_musicnn_head(run: Run, hooks: RunHooks):
    """A head on the dataset's cached musicnn embeddings; it writes its own card (the fold added here, as the
    CRNNs': the demo tells the folds apart)."""
    from core.embeddings import DEFAULT_HEAD, train_embedding_head

    result = train_embedding_head(run.dataset.path, run.seed, run_dir=run.run_dir, on_epoch=hooks.on_epoch,
                                  **DEFAULT_HEAD)
    if run.fold_fields and result.status != "stopped":
        from core.model_card import read_model_card, write_model_card

        card = run.run_dir / "model_card.json"
        write_model_card(run.run_dir, {**read_model_card(card), **run.fold_fields})
    return result


def evaluate_windows(run: Run, result, hooks: RunHooks) -> dict:
    """Segment, track (sum / vote / log-prob) or full-clip level of the run's saved model on the audio."""
    from core.evaluate import evaluate_run, run_predictor

    def on_track(done, total, path):
        if done == total or done % 20 == 0:
            hooks.report("evaluate", f"track-level evaluation {done}/{total} tracks")

    return evaluate_run(run_predictor(run.run_dir), run.dataset, run.kind, run.splits, run.hop_s, progress=on_track)


def evaluate_embeddings(run: Run, result, hooks: RunHooks) -> dict:
    """From the cached snippet and 1 s-window embeddings: no audio decoding."""
    from core.embeddings import embedding_results

    return embedding_results(run.dataset, result, run.splits)


# ---------------------------------------------------------------------------------------------------------
# planning a run (every executor)
# ---------------------------------------------------------------------------------------------------------
def fold_fields(cv: dict) -> dict:
    """A fold dataset's ``card["cv"]`` as model-card fields (none for a held-out dataset)."""
    return {"fold": cv["fold"], "n_folds": cv["k"], "cv_parent": cv.get("parent")} if cv else {}


def run_fold(ds) -> tuple[int | None, int | None]:
    """``(fold, k)`` of a cross-validation fold dataset (``core.folds``), ``(None, None)`` otherwise."""
    cv = ds.card.get("cv") or {}
    return (int(cv["fold"]), int(cv["k"])) if cv else (None, None)


def plan_run(store, ds, kind: str, seed: int, config, emit: Emit) -> tuple[str, dict, dict | None]:
    """The run of ``kind`` x ``seed`` on dataset ``ds`` (a fold of a cross-validation too: its fold is in the
    run id and the events): ``(run_id, base event fields, done)``; ``done`` is the run's record (after a "skip"
    event) when the store already has it finished, else ``None``."""
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


# ---------------------------------------------------------------------------------------------------------
# executors
# ---------------------------------------------------------------------------------------------------------
@dataclass
class RunBatch:
    """The runs an executor runs: every (seed, kind, fold) of ``seeds`` x ``kinds`` x ``folds`` on
    ``datasets[(kind, fold)]`` into ``store`` (finished ones are skipped). ``pool(seed, kind)`` pools a (seed,
    kind)'s fold runs into one run once every fold is done (cross-validation; ``[]`` while one is missing)."""

    store: Any
    datasets: dict
    seeds: list[int]
    kinds: list[str]
    folds: list
    config: "TrainConfig"
    emit: Emit
    should_stop: Callable[[], bool] | None = None
    hop_s: float = 1.0
    splits: tuple[str, ...] = ("val", "test")
    pool: Callable[[int, str], list[dict]] = field(default=lambda seed, kind: [])

    @property
    def n_folds(self) -> int:
        return len(self.folds) if self.folds != [None] else 0

    def stop_requested(self) -> bool:
        return bool(self.should_stop and self.should_stop())


@dataclass
class ExecutorOptions:
    """Where remote runs go: ``address`` (a cluster; None: the executor's default) and ``cpus_per_task``."""

    address: str | None = None
    cpus_per_task: int = 2


class Executor:
    """Runs a :class:`RunBatch`: ``run(batch) -> (runs, pooled, stopped)`` (each run's record as the local
    loop returns it, the pooled cross-validation runs, whether a stop was asked for). ``remote``: the kinds
    marked ``remote`` in ``core.kinds`` go to it, the others run locally after it. ``check()`` fails early
    (before anything is written) when it cannot run at all."""

    name = ""
    remote = False

    def __init__(self, options: ExecutorOptions | None = None):
        self.options = options or ExecutorOptions()
        if self.options.cpus_per_task < 1:
            raise RunError("--cpus-per-task must be >= 1")

    def check(self) -> None:
        return None

    def run(self, batch: RunBatch) -> tuple[list[dict], list[dict], bool]:
        raise NotImplementedError


class LocalExecutor(Executor):
    """One run after the other in this process; within a seed the cheap kinds first; a (seed, kind)'s folds
    pooled as soon as its last fold is done."""

    name = "local"

    def run(self, batch: RunBatch) -> tuple[list[dict], list[dict], bool]:
        runs: list[dict] = []
        pooled: list[dict] = []
        units = [(seed, kind, fold) for seed in batch.seeds for kind in cheap_first(batch.kinds)
                 for fold in batch.folds]
        for seed, kind, fold in units:
            if batch.stop_requested():
                return runs, pooled, True
            ds = batch.datasets[(kind, fold)]
            run_id, base, done = plan_run(batch.store, ds, kind, seed, batch.config, batch.emit)
            rec = done or self._run_one(batch, Run(run_id, kind, seed, ds, batch.store.run_dir(run_id),
                                                   batch.config, batch.hop_s, batch.splits), base)
            runs.append(rec)
            if rec["status"] == "stopped":
                return runs, pooled, True
            if batch.n_folds and fold == batch.folds[-1]:  # the last fold of this (seed, kind): one per seed
                pooled += batch.pool(seed, kind)
        return runs, pooled, False

    @staticmethod
    def _run_one(batch: RunBatch, run: Run, base: dict) -> dict:
        store, emit, config = batch.store, batch.emit, batch.config
        ds = run.dataset
        store.upsert_run(run.run_id, str(ds.path), ds.card.get("build_id"), run.kind, run.seed, config.to_dict(),
                         "running", fold=base.get("fold"), n_folds=base.get("n_folds"))
        resumed = (run.run_dir / "state.json").exists()
        where = fold_words(base)
        max_epochs = get_kind(run.kind).max_epochs(config)
        emit({**base, "state": "running", "phase": "train", "max_epochs": max_epochs,
              "message": f"{'resuming' if resumed else 'starting'} {run.kind} model, seed {run.seed}{where}"})

        def on_epoch(r):
            store.add_epochs(run.run_id, [r])
            emit(epoch_event(base, r, r["max_epochs"]))

        def on_batch(epoch, b, n):
            emit({**base, "state": "running", "phase": "batch", "epoch": epoch + 1, "batch": b, "n_batches": n,
                  "max_epochs": config.max_epochs})

        hooks = RunHooks(on_epoch=on_epoch, on_batch=on_batch, should_stop=batch.should_stop,
                         report=lambda phase, message: emit({**base, "state": "running", "phase": phase,
                                                             "message": message}))
        try:
            out = execute_run(run, hooks)
            store.add_epochs(run.run_id, out.result.history)
            if out.status == "stopped":
                store.set_status(run.run_id, "stopped", f"stopped after epoch {out.result.epochs_run}")
                emit({**base, "state": "stopped", "phase": "train", "epoch": out.result.epochs_run,
                      "message": "stopped on request; run again to resume"})
                return {**base, "status": "stopped"}
            store.write_evaluation(run.run_id, out.results, "done")
            summary = summarise(out.results)
            emit({**base, "state": "done", "phase": "evaluate", "metrics": summary,
                  "message": f"{run_words(base)} done"})
            return {**base, "status": "done", "metrics": summary}
        except KeyboardInterrupt:
            store.set_status(run.run_id, "stopped", "interrupted; run again to resume")
            raise
        except GenreLabError as exc:
            store.set_status(run.run_id, "failed", str(exc))
            emit({**base, "state": "failed", "message": str(exc)})
            raise
        except Exception as exc:
            store.set_status(run.run_id, "failed", f"{type(exc).__name__}: {exc}"[:500])
            emit({**base, "state": "failed", "message": f"{type(exc).__name__}: {exc}"})
            raise


#: ``--executor`` name -> its class (imported when chosen: Ray only with ``ray``)
EXECUTORS = {"local": "core.runs:LocalExecutor", "ray": "core.cluster:RayExecutor"}


def make_executor(name: str | Executor = "local", options: ExecutorOptions | None = None) -> Executor:
    """The executor called ``name`` with ``options`` (an :class:`Executor` is returned as it is)."""
    if isinstance(name, Executor):
        return name
    if name not in EXECUTORS:
        raise RunError(f"executor must be {' or '.join(EXECUTORS)} (got {name!r})")
    return resolve(EXECUTORS[name])(options)


def add_executor_args(p) -> None:
    """Where the runs train (run-experiment and reproduce): ``--executor``, ``--address``, ``--cpus-per-task``
    (``--ray-address`` and ``--ray-cpus-per-task`` still work: the names of earlier versions)."""
    g = p.add_argument_group("executor (where the runs train)")
    g.add_argument("--executor", choices=list(EXECUTORS), default="local",
                   help="local: one run after the other in this process (default); ray: each (model, seed) run as "
                        "a Ray task, on a cluster or a local Ray (pip install -r requirements-cluster.txt)")
    g.add_argument("--address", "--ray-address", dest="address",
                   help="the cluster of a remote executor; Ray: auto (the `ray start` cluster this machine belongs "
                        "to), HEAD:6379 (default: $RAY_ADDRESS, else a local Ray started for the run). Every node "
                        "must see the dataset, its source audio and the store at the same paths")
    g.add_argument("--cpus-per-task", "--ray-cpus-per-task", dest="cpus_per_task", type=int, default=2,
                   help="CPUs per run of a remote executor (= TensorFlow threads) (default: %(default)s)")


def executor_from_args(a) -> Executor:
    """The executor of :func:`add_executor_args`' options."""
    return make_executor(a.executor, ExecutorOptions(address=a.address or None, cpus_per_task=a.cpus_per_task))
