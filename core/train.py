"""Seeded, resumable training of the CRNNs, fed from the dataset memmaps.

Training runs its own epoch loop around ``model.fit(epochs=1)`` so that everything that carries over from one
epoch to the next is plain data in ``run_dir/state.json``: the epoch count, the best validation loss, the
early-stopping and LR-plateau wait counters, the current learning rate and the random streams. Nothing random
is carried implicitly: epoch ``e`` shuffles with ``default_rng([seed, e])`` and re-seeds the dropout layers
from ``(seed, e)``, so a run that is killed and resumed makes the same updates as one that never stopped.

Files in ``run_dir`` (all written atomically):

* ``state.json``   the commit point of an epoch (also holds the full history);
* ``history.json`` per-epoch ``loss, accuracy, val_loss, val_accuracy, lr, seconds``;
* ``last.keras``   model + optimizer after the last finished epoch (resume point);
* ``best.keras``   the model of the epoch with the lowest validation loss (the result of the run).

An epoch commits as: write ``last.next-E.keras`` (and ``best.next-E.keras``), write ``state.json``, rename the
``*.next-E.keras`` files into place. A crash at any point leaves either the old or the new epoch, never a mix:
:func:`_recover` finishes or discards pending renames on the next start.

Only ``keras`` APIs are used, so training works under any Keras backend.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np

from core.utils import atomic_write_json, read_json

STATE_VERSION = 1
EpochFn = Callable[[dict], None]
BatchFn = Callable[[int, int, int], None]


class TrainError(Exception):
    """A problem with a run folder, its dataset or its settings; the message is for the user."""


# ---------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Every number of a training run. Defaults follow the article (Adam 1e-4, batch 32, min-max scaling)."""

    lr: float = 1e-4
    batch_size: int = 32
    max_epochs: int = 50
    patience: int = 10  # early stopping on val_loss (best weights restored = best.keras)
    min_delta: float = 0.0  # an improvement must lower val_loss by more than this
    lr_factor: float = 0.5  # reduce-LR-on-plateau factor
    lr_patience: int = 3  # ... after this many epochs without improvement
    min_lr: float = 1e-6
    norm_method: str = "minmax"  # "minmax" (article) or "standard"
    dropout: float = 0.1
    shuffle: bool = True
    max_train_batches: int = 0  # 0 = all; > 0 caps batches per epoch (smoke runs)
    workers: int = 1  # PyDataset worker threads (1 = load in the training thread)
    jit_compile: bool = False  # XLA; measured slower than oneDNN for this CRNN on CPU
    precision: str = "float32"  # Keras dtype policy: "float32" or "mixed_bfloat16"

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.batch_size < 1 or self.max_epochs < 1:
            raise TrainError("lr must be > 0, batch_size >= 1 and max_epochs >= 1")
        if self.patience < 1 or self.lr_patience < 1:
            raise TrainError("patience and lr_patience must be >= 1")
        if not 0 < self.lr_factor <= 1:
            raise TrainError("lr_factor must be in (0, 1]")
        if self.norm_method not in ("minmax", "standard"):
            raise TrainError("norm_method must be 'minmax' or 'standard'")
        if self.precision not in ("float32", "mixed_bfloat16", "mixed_float16"):
            raise TrainError("precision must be float32, mixed_bfloat16 or mixed_float16")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


#: settings that may change between a run's start and its resume (everything else must match)
RESUMABLE_CHANGES = frozenset({"max_epochs", "patience", "workers", "max_train_batches"})


# ---------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------
class SnippetSequence(keras.utils.PyDataset):
    """Batches ``(x, one_hot_y)`` from a dataset split, normalised on the fly with the training statistics.

    ``x`` is ``(batch, frames, n_mels, 1)`` float32. With ``shuffle`` the order of epoch ``e`` is a
    permutation drawn from ``default_rng([seed, e])`` (set it with :meth:`set_epoch`); each batch's indices
    are sorted so memmap reads stay sequential. ``limit`` caps the number of batches.
    """

    def __init__(self, X, y, n_classes: int, norm: dict, method: str = "minmax", batch_size: int = 32,
                 shuffle: bool = True, seed: int = 0, limit: int = 0, workers: int = 1, **kwargs):
        super().__init__(workers=workers, use_multiprocessing=False, **kwargs)
        if len(X) != len(y):
            raise ValueError("X and y have different lengths")
        self.X, self.yv = X, np.asarray(y, dtype=np.int64)
        self.n_classes, self.norm, self.method = n_classes, norm, method
        self.batch_size, self.shuffle, self.seed, self.limit = batch_size, shuffle, seed, limit
        self._eye = np.eye(n_classes, dtype=np.float32)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        n = len(self.yv)
        self.epoch = epoch
        self.order = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                      else np.arange(n))

    def __len__(self) -> int:
        n = math.ceil(len(self.yv) / self.batch_size)
        return min(n, self.limit) if self.limit else n

    def __getitem__(self, i: int):
        idx = np.sort(self.order[i * self.batch_size:(i + 1) * self.batch_size])
        from core.dataset import apply_norm

        x = apply_norm(self.X[idx], self.norm, self.method)[..., None]
        return x, self._eye[self.yv[idx]]

    def on_epoch_end(self) -> None:  # the epoch loop sets the order explicitly
        pass


def make_sequences(dataset, config: TrainConfig, seed: int) -> tuple[SnippetSequence, SnippetSequence]:
    n = len(dataset.classes)
    for split in ("train", "val"):
        if len(dataset.y(split)) == 0:
            raise TrainError(f"the {split} split of {dataset.path} is empty: rebuild the dataset with "
                             f"{'more tracks or a ' if split == 'train' else 'a positive '}validation share")
    train = SnippetSequence(dataset.X("train"), dataset.y("train"), n, dataset.norm, config.norm_method,
                            config.batch_size, config.shuffle, seed, config.max_train_batches, config.workers)
    val = SnippetSequence(dataset.X("val"), dataset.y("val"), n, dataset.norm, config.norm_method,
                          config.batch_size, False, seed)
    return train, val


# ---------------------------------------------------------------------------------------------------------
# model helpers
# ---------------------------------------------------------------------------------------------------------
def set_precision(policy: str) -> None:
    keras.mixed_precision.set_global_policy(policy)


def build_compiled(kind: str, n_classes: int, params, config: TrainConfig):
    """A fresh compiled model for a dataset's feature params (``kind`` must match the dataset mode)."""
    from core.models import build_model

    set_precision(config.precision)
    try:
        model = build_model(kind, n_classes, params.n_mels, params.input_frames, config.dropout)
    finally:
        set_precision("float32")
    compile_model(model, config.lr, config.jit_compile)
    return model


def compile_model(model, lr: float, jit_compile: bool = False) -> None:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss="categorical_crossentropy",
                  metrics=["accuracy"], jit_compile=jit_compile)


def seed_everything(seed: int) -> None:
    """Python, numpy and backend RNGs (``keras.utils.set_random_seed``)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    keras.utils.set_random_seed(seed % 2**32)


def reseed_dropout(model, seed: int, epoch: int) -> None:
    """Set every layer's random-seed state from ``(seed, epoch, layer index)`` (exact resume of dropout)."""
    for i, layer in enumerate(model.layers):
        gen = getattr(layer, "seed_generator", None)
        state = getattr(gen, "state", None)
        if state is None:
            continue
        s = int(np.random.default_rng([seed, epoch, i]).integers(1, 2**31 - 1))
        state.assign(np.asarray([s, 0], dtype=state.dtype))


def get_lr(model) -> float:
    return float(np.asarray(model.optimizer.learning_rate))


def set_lr(model, lr: float) -> None:
    model.optimizer.learning_rate.assign(lr)


def save_model_atomic(model, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def load_model(path: str | os.PathLike, compile: bool = True):
    """Load a ``.keras`` file of ours (raises :class:`TrainError` with the reason if it does not load)."""
    import core.baseline  # noqa: F401  (registers the baseline's MelStats layer for deserialisation)

    try:
        return keras.models.load_model(path, compile=compile)
    except Exception as exc:
        raise TrainError(f"model file {path} does not load: {type(exc).__name__}: {str(exc)[:200]}") from exc


# ---------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    run_dir: Path
    status: str  # "done" (early stop or max epochs) or "stopped" (on request; resumable)
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    history: list[dict] = field(default_factory=list)
    stop_reason: str = ""

    @property
    def best_model_path(self) -> Path:
        return self.run_dir / "best.keras"


class _StopCheck(keras.callbacks.Callback):
    """Asks ``should_stop`` between batches (drops the unfinished epoch) and reports batch progress."""

    def __init__(self, should_stop, on_batch, epoch: int, n_batches: int):
        super().__init__()
        self.should_stop, self.on_batch = should_stop, on_batch
        self.epoch_idx, self.n_batches, self.stopped = epoch, n_batches, False

    def on_train_batch_end(self, batch, logs=None):
        if self.on_batch:
            self.on_batch(self.epoch_idx, batch + 1, self.n_batches)
        if self.should_stop and self.should_stop():
            self.stopped = True
            self.model.stop_training = True


def _fresh_state(dataset, kind: str, seed: int, config: TrainConfig) -> dict:
    return {
        "version": STATE_VERSION, "kind": kind, "seed": seed, "config": config.to_dict(),
        "dataset": {"path": str(dataset.path), "build_id": dataset.card.get("build_id"),
                    "params": dataset.params.to_dict(), "classes": dataset.classes},
        "epoch": 0, "best_val_loss": None, "best_epoch": 0, "es_wait": 0, "lr_wait": 0, "lr": config.lr,
        "finished": False, "stop_reason": "", "history": [],
        "rng": {"scheme": "shuffle=default_rng([seed, epoch]); dropout=default_rng([seed, epoch, layer])",
                "seed": seed},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _recover(run_dir: Path, state: dict | None) -> None:
    """Finish the renames of a committed epoch, drop files of an uncommitted one."""
    done = state["epoch"] if state else 0
    for p in run_dir.glob(".*.tmp.keras"):  # half-written saves of a killed process
        p.unlink(missing_ok=True)
    for name in ("last", "best"):
        for p in run_dir.glob(f"{name}.next-*.keras"):
            try:
                e = int(p.stem.split("-")[-1])
            except ValueError:
                e = -1
            if e == done:
                os.replace(p, run_dir / f"{name}.keras")
            else:
                p.unlink(missing_ok=True)


def check_resume(state: dict, dataset, kind: str, seed: int, config: TrainConfig) -> None:
    """Refuse to resume a run folder with another dataset, model kind, seed or training settings."""
    problems = []
    if state.get("version", 0) > STATE_VERSION:
        problems.append("it was written by a newer Genre Lab")
    if state["kind"] != kind:
        problems.append(f"model kind {state['kind']!r} != {kind!r}")
    if state["seed"] != seed:
        problems.append(f"seed {state['seed']} != {seed}")
    if state["dataset"]["build_id"] != dataset.card.get("build_id"):
        problems.append("the dataset was rebuilt or is another dataset (build_id differs)")
    if state["dataset"]["params"] != dataset.params.to_dict():
        problems.append("the dataset's feature parameters differ from those the model was trained on")
    old = {k: v for k, v in state["config"].items() if k not in RESUMABLE_CHANGES}
    new = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_CHANGES}
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        problems.append("training settings differ: " + ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in diff))
    if problems:
        raise TrainError(f"cannot resume the run in {state.get('_dir', 'its folder')}: " + "; ".join(problems)
                         + ". Use a new run folder (or delete this one) to start over.")


def train_run(
    dataset,
    model_kind: str,
    seed: int,
    config: TrainConfig | None = None,
    run_dir: str | os.PathLike = "run",
    on_epoch: EpochFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_batch: BatchFn | None = None,
) -> TrainResult:
    """Train (or resume) one model on ``dataset`` (a :class:`core.dataset.Dataset` or its path).

    ``on_epoch(record)`` is called after each finished epoch with ``{"epoch", "loss", "accuracy",
    "val_loss", "val_accuracy", "lr", "seconds", "best", ...}``; ``should_stop()`` is polled between
    batches: when it returns True the unfinished epoch is dropped and the result has ``status="stopped"``
    (call again with the same ``run_dir`` to continue). ``on_batch(epoch, batch, n_batches)`` reports
    progress inside an epoch.
    """
    from core.dataset import load_dataset

    config = config or TrainConfig()
    if not hasattr(dataset, "card"):
        dataset = load_dataset(dataset)
    mode = dataset.params.mode
    if model_kind not in ("snippet", "full"):
        raise TrainError(f"unknown model kind {model_kind!r} (snippet or full)")
    if (model_kind == "full") != (mode == "full"):
        raise TrainError(f"a {model_kind!r} model needs a {'full-clip' if model_kind == 'full' else 'snippet'} "
                         f"dataset, but {dataset.path} is in {mode!r} mode")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "state.json"
    state = read_json(state_path) if state_path.exists() else None
    _recover(run_dir, state)

    if state is not None:
        state["_dir"] = str(run_dir)
        check_resume(state, dataset, model_kind, seed, config)
        state.pop("_dir")
        state["config"] = config.to_dict()
        if not (run_dir / "last.keras").exists():
            raise TrainError(f"{run_dir} has state.json but no last.keras: delete the folder to start over")
        model = load_model(run_dir / "last.keras")
        if not state["finished"] and state["epoch"] >= config.max_epochs:
            state.update(finished=True, stop_reason="max_epochs")
        elif state["finished"] and state["stop_reason"] == "max_epochs" and state["epoch"] < config.max_epochs:
            state.update(finished=False, stop_reason="")  # more epochs were asked for: continue
    else:
        seed_everything(seed)
        model = build_compiled(model_kind, len(dataset.classes), dataset.params, config)
        state = _fresh_state(dataset, model_kind, seed, config)

    expected = tuple(dataset.card.get("input_shape") or (dataset.params.input_frames, dataset.params.n_mels, 1))
    got = tuple(model.input_shape[1:])
    if got[1:] != expected[1:] or (got[0] is not None and got[0] != expected[0]):
        raise TrainError(f"the model in {run_dir} takes inputs {got}, the dataset gives {expected}")

    train_seq, val_seq = make_sequences(dataset, config, seed)
    stopped = False
    while not state["finished"]:
        epoch = state["epoch"]  # 0-based index of the epoch about to run
        if should_stop and should_stop():
            stopped = True
            break
        t0 = time.perf_counter()
        seed_everything(seed * 1000 + epoch)
        reseed_dropout(model, seed, epoch)
        set_lr(model, state["lr"])
        train_seq.set_epoch(epoch)
        cb = _StopCheck(should_stop, on_batch, epoch, len(train_seq))
        h = model.fit(train_seq, validation_data=val_seq, epochs=1, verbose=0, callbacks=[cb], shuffle=False)
        if cb.stopped:
            stopped = True
            break
        logs = {k: float(v[-1]) for k, v in h.history.items()}
        rec = {"epoch": epoch + 1, "loss": logs.get("loss"), "accuracy": logs.get("accuracy"),
               "val_loss": logs.get("val_loss"), "val_accuracy": logs.get("val_accuracy"),
               "lr": state["lr"], "seconds": round(time.perf_counter() - t0, 3)}
        _update_schedule(state, rec, config)
        rec["best"] = state["best_epoch"] == epoch + 1
        state["history"].append(rec)
        state["epoch"] = epoch + 1
        # commit: pending model files, then state.json, then renames
        e = state["epoch"]
        save_model_atomic(model, run_dir / f"last.next-{e}.keras")
        if rec["best"]:
            save_model_atomic(model, run_dir / f"best.next-{e}.keras")
        atomic_write_json(state_path, state)
        _recover(run_dir, state)
        atomic_write_json(run_dir / "history.json", state["history"])
        if on_epoch:
            on_epoch(dict(rec, seed=seed, kind=model_kind, max_epochs=config.max_epochs))
    atomic_write_json(run_dir / "history.json", state["history"])
    return TrainResult(run_dir, "stopped" if stopped else "done", state["epoch"], state["best_epoch"],
                       state["best_val_loss"] if state["best_val_loss"] is not None else math.nan,
                       list(state["history"]), "requested" if stopped else state["stop_reason"])


def _update_schedule(state: dict, rec: dict, config: TrainConfig) -> None:
    """Early stopping + reduce-LR-on-plateau on ``val_loss`` (the Keras callbacks' semantics, as plain data)."""
    vl = rec["val_loss"]
    best = state["best_val_loss"]
    if vl is not None and math.isfinite(vl) and (best is None or vl < best - config.min_delta):
        state.update(best_val_loss=vl, best_epoch=rec["epoch"], es_wait=0, lr_wait=0)
    else:
        state["es_wait"] += 1
        state["lr_wait"] += 1
        if state["lr_wait"] >= config.lr_patience and state["lr"] > config.min_lr:
            state["lr"] = max(state["lr"] * config.lr_factor, config.min_lr)
            state["lr_wait"] = 0
        if state["es_wait"] >= config.patience:
            state.update(finished=True, stop_reason=f"early stop: no val_loss improvement in {config.patience} epochs")
    if not state["finished"] and rec["epoch"] >= config.max_epochs:
        state.update(finished=True, stop_reason="max_epochs")
    if vl is None or not math.isfinite(vl):
        if rec["epoch"] == 1 and state["best_epoch"] == 0:
            state.update(best_epoch=1)  # keep a best.keras even if the first val loss is not finite
