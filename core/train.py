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
* ``best.keras``   the model of the best epoch by the monitored validation signal (the result of the run).

**Model selection** (``TrainConfig.monitor``): after each epoch the model scores every validation snippet once;
from those scores come ``val_loss``, ``val_accuracy`` (snippet level) and ``val_track_accuracy`` (the snippet
scores of each validation track summed, argmax: the lab's track-level rule on the dataset's snippets).
``monitor="val_track_accuracy"`` keeps the epoch with the best track accuracy, ties broken by snippet accuracy
and then by loss; ``"val_accuracy"`` uses snippet accuracy then loss; ``"val_loss"`` (the article, Keras'
default) the lowest loss. Early stopping and reduce-LR-on-plateau watch the same signal.

**Recipe options** (all off in the article's settings): a warm-up + cosine learning-rate schedule, label
smoothing, SpecAugment-style time/frequency masks, mixup, a per-epoch snippet selection (``random``: a fresh
draw of ``snippets_per_track`` snippets of each training track every epoch) and, for the 30 s model, a fresh
random 30 s crop of each training track every epoch (``full_crop="random"``; needs a full-clip dataset that
stores more than 30 s, ``FeatureParams.full_store_s``), and ``bn_recalibrate``: after each epoch the
batch-norm statistics are re-estimated on a fixed-size sample of training data with dropout off (the moving
averages lag the weights and carry dropout's variance shift: on small data a model whose training accuracy
climbs can score at chance in inference mode; measured in ``results/ablation``). Every random choice is a pure
function of ``(seed, epoch, batch)``, so resumed runs stay exact.

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
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import keras
import numpy as np
from keras import ops

from core.models import build_model, load_model
from core.utils import atomic_write_json, read_json

STATE_VERSION = 1
EpochFn = Callable[[dict], None]
BatchFn = Callable[[int, int, int], None]


from core.train_config import (MONITORS, RESUMABLE_CHANGES, TrainConfig, TrainError,  # noqa: F401 (re-exported)
                                _V2_DEFAULTS, _V2_FIELDS)


# ---------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------
class SnippetSequence(keras.utils.PyDataset):
    """Batches ``(x, one_hot_y)`` from a dataset split, normalised on the fly with the training statistics.

    ``x`` is ``(batch, frames, n_mels, 1)`` float32. ``config`` (:class:`TrainConfig`) gives the normalisation
    method and the batch size (``batch_size`` overrides it: the 30 s model's own), and for ``training`` batches
    everything else: with ``shuffle`` the order of epoch ``e`` is a permutation drawn from
    ``default_rng([seed, e])`` (set it with :meth:`set_epoch`); each batch's indices are sorted so memmap reads
    stay sequential; ``max_train_batches`` caps the number of batches, ``workers`` sets the loader threads;
    ``snippets_per_track`` + ``snippet_selection`` choose which snippets of each track (``tracks``: the split's
    track of each row) an epoch uses; ``full_crop="random"`` draws the offset of the ``crop_frames`` window cut
    from each stored row (at most ``crop_max``; else offset 0) per epoch; SpecAugment masks and mixup apply, with
    label smoothing left to the loss. Validation batches (``training=False``) are read in order, whole and
    unaugmented. All draws come from ``default_rng([seed, epoch, ...])``.
    """

    def __init__(self, X, y, n_classes: int, norm: dict, config: TrainConfig | None = None, *, seed: int = 0,
                 training: bool = True, batch_size: int | None = None, tracks=None, crop_frames: int | None = None,
                 crop_max=None, **kwargs):
        config = config or TrainConfig()
        super().__init__(workers=config.workers if training else 1, use_multiprocessing=False, **kwargs)
        if len(X) != len(y):
            raise ValueError("X and y have different lengths")
        self.X, self.yv = X, np.asarray(y, dtype=np.int64)
        self.n_classes, self.norm, self.method = n_classes, norm, config.norm_method
        self.batch_size, self.seed = int(batch_size or config.batch_size), seed
        self.shuffle = training and config.shuffle
        self.limit = config.max_train_batches if training else 0
        self.per_track = config.snippets_per_track if training else 0
        self.selection = config.snippet_selection
        self.groups = _groups(tracks) if (tracks is not None and self.per_track) else None
        self.crop_frames = crop_frames if crop_frames and crop_frames < X.shape[1] else None
        self.crop_max = (np.zeros(len(self.yv), np.int64) if crop_max is None
                         else np.asarray(crop_max, np.int64))
        self.random_crop = training and config.full_crop == "random" and self.crop_frames is not None
        self.augment = config if training and _augments(config) else None
        self._eye = np.eye(n_classes, dtype=np.float32)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.groups is None:
            base = np.arange(len(self.yv))
        else:
            k = self.per_track
            if self.selection == "first":
                base = np.concatenate([g[:k] for g in self.groups])
            else:
                rng = np.random.default_rng([self.seed, epoch, 1])
                base = np.sort(np.concatenate([g if len(g) <= k else rng.choice(g, size=k, replace=False)
                                               for g in self.groups]))
        self.order = base[np.random.default_rng([self.seed, epoch]).permutation(len(base))] if self.shuffle else base
        self.offsets = (np.random.default_rng([self.seed, epoch, 2]).integers(0, self.crop_max + 1)
                        if self.random_crop else np.zeros(len(self.yv), np.int64))

    def __len__(self) -> int:
        n = math.ceil(len(self.order) / self.batch_size)
        return min(n, self.limit) if self.limit else n

    def rows(self, idx: np.ndarray) -> np.ndarray:
        if self.crop_frames is None:
            return np.asarray(self.X[idx])
        T = self.crop_frames
        return np.stack([self.X[j, o:o + T] for j, o in zip(idx, self.offsets[idx])])

    def calibration_batches(self, n: int, epoch: int):
        """``n`` training rows (without augmentation) drawn from ``default_rng([seed, epoch, 5])``, in batches."""
        from core.features import apply_norm

        rows = np.sort(np.random.default_rng([self.seed, epoch, 5]).permutation(self.order)[:n])
        for a in range(0, len(rows), self.batch_size):
            yield apply_norm(self.rows(rows[a:a + self.batch_size]), self.norm, self.method)[..., None]

    def __getitem__(self, i: int):
        idx = np.sort(self.order[i * self.batch_size:(i + 1) * self.batch_size])
        from core.features import apply_norm

        x = apply_norm(self.rows(idx), self.norm, self.method)
        y = self._eye[self.yv[idx]]
        if self.augment is not None:
            x, y = augment_batch(x, y, self.augment, np.random.default_rng([self.seed, self.epoch, 3, i]))
        return x[..., None], y

    def on_epoch_end(self) -> None:  # the epoch loop sets the order explicitly
        pass


def recalibrate_batchnorm(model, batches) -> int:
    """Set every BatchNormalization layer's moving statistics to the average of its batch statistics over
    ``batches`` (forward passes in training mode, dropout off, no weight update); returns the number of layers.
    A model trained for few steps, or with dropout before a batch norm, otherwise infers with statistics that
    do not match its weights.

    For a chain of layers (the CRNNs) the forward passes run compiled, through a model that shares the layers up
    to the last batch norm and outputs each one's batch statistics (:func:`_batch_stats_model`: 3.3 s -> 0.9 s
    for 1024 snippets, per epoch of the recommended preset); other models run eagerly, layer by layer."""
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    drops = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    if not bns:
        return 0
    if model not in _STATS_MODELS:
        _STATS_MODELS[model] = _batch_stats_model(model, bns)
    stats_model = _STATS_MODELS[model]
    if stats_model is not None:
        sums, k = None, 0
        for x in batches:
            out = [np.asarray(o, np.float64)[0] for o in stats_model.predict_on_batch(np.asarray(x, np.float32))]
            sums = out if sums is None else [s + o for s, o in zip(sums, out)]
            k += 1
        if k:
            for i, b in enumerate(bns):
                b.moving_mean.assign((sums[2 * i] / k).astype(np.float32))
                b.moving_variance.assign((sums[2 * i + 1] / k).astype(np.float32))
        return len(bns)
    momenta, rates = [b.momentum for b in bns], [d.rate for d in drops]
    try:
        for d in drops:
            d.rate = 0.0
        for k, x in enumerate(batches, start=1):
            for b in bns:
                b.momentum = (k - 1) / k  # a running mean of the batch statistics
            model(np.asarray(x, dtype=np.float32), training=True)
    finally:
        for b, m in zip(bns, momenta):
            b.momentum = m
        for d, r in zip(drops, rates):
            d.rate = r
    return len(bns)


#: model -> its batch-statistics model (or None), built once per model (a new one would be traced again)
_STATS_MODELS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class _BatchStats(keras.layers.Layer):
    """A batch norm in training mode that leaves its moving statistics alone: ``x -> (y, mean, var)``, the
    statistics repeated over the batch (a model's outputs keep the batch axis)."""

    def __init__(self, bn, **kwargs):
        super().__init__(dtype="float32", **kwargs)  # statistics in float32 under a mixed-precision policy too
        self.bn = bn

    def call(self, x):
        bn = self.bn
        x = ops.cast(x, "float32")
        mean, var = ops.moments(x, tuple(range(len(x.shape) - 1)))
        y = ops.batch_normalization(x, mean, var, axis=-1, epsilon=bn.epsilon,
                                    offset=ops.cast(bn.beta, "float32") if bn.center else None,
                                    scale=ops.cast(bn.gamma, "float32") if bn.scale else None)
        per_row = ops.zeros_like(ops.reshape(x, (ops.shape(x)[0], -1))[:, :1])  # (batch, 1)
        return y, per_row + mean, per_row + var


def _batch_stats_model(model, bns) -> "keras.Model | None":
    """A model sharing ``model``'s layers up to its last batch norm that returns every batch norm's batch mean
    and variance (dropout left out: off during recalibration), or None when ``model`` is not a single chain of
    layers with batch norms over the last axis."""
    layers_ = model.layers
    if len(model.inputs) != 1 or not layers_ or not isinstance(layers_[0], keras.layers.InputLayer):
        return None
    if any(b.axis not in (-1, len(b.input.shape) - 1) for b in bns):
        return None
    try:
        x = inp = keras.Input(batch_shape=model.inputs[0].shape)
        prev, outputs = layers_[0], []
        for layer in layers_[1:]:
            if layer.input is not prev.output:  # not a chain
                return None
            prev = layer
            if isinstance(layer, keras.layers.BatchNormalization):
                x, mean, var = _BatchStats(layer)(x)
                outputs += [mean, var]
                if len(outputs) == 2 * len(bns):
                    break
            elif not isinstance(layer, keras.layers.Dropout):
                x = layer(x)
        return keras.Model(inp, outputs)
    except Exception:  # any layer that will not rebuild: recalibrate eagerly
        return None


def _groups(tracks) -> list[np.ndarray]:
    """Row indices of each track, in row order (a track's snippets are stored in order of their start)."""
    t = np.asarray(tracks)
    if t.size == 0:
        return []
    order = np.argsort(t, kind="stable")
    cuts = np.flatnonzero(np.diff(t[order])) + 1
    return [np.sort(g) for g in np.split(order, cuts)]


def augment_batch(x: np.ndarray, y: np.ndarray, cfg: "TrainConfig", rng: np.random.Generator):
    """SpecAugment-style masks (set to the sample's mean) and mixup on a normalised ``(b, frames, mels)`` batch."""
    if cfg.time_masks or cfg.freq_masks:
        x = x.copy()
        b, T, M = x.shape
        fill = x.mean(axis=(1, 2))
        for j in range(b):
            for _ in range(cfg.time_masks):
                w = int(rng.integers(0, min(cfg.time_mask_frames, T) + 1))
                t0 = int(rng.integers(0, T - w + 1))
                x[j, t0:t0 + w, :] = fill[j]
            for _ in range(cfg.freq_masks):
                w = int(rng.integers(0, min(cfg.freq_mask_bins, M) + 1))
                f0 = int(rng.integers(0, M - w + 1))
                x[j, :, f0:f0 + w] = fill[j]
    if cfg.mixup > 0 and len(x) > 1:
        lam = rng.beta(cfg.mixup, cfg.mixup, size=len(x)).astype(np.float32)
        lam = np.maximum(lam, 1 - lam)  # the original sample dominates
        perm = rng.permutation(len(x))
        x = lam[:, None, None] * x + (1 - lam[:, None, None]) * x[perm]
        y = lam[:, None] * y + (1 - lam[:, None]) * y[perm]
    return x.astype(np.float32, copy=False), y.astype(np.float32, copy=False)


def _augments(config: "TrainConfig") -> bool:
    return bool(config.time_masks or config.freq_masks or config.mixup > 0)


def full_crop_limits(dataset, split: str, frames: int) -> np.ndarray:
    """Largest crop offset (in frames) of each row of a full-clip split: the usable audio of its track
    (``duration_s`` in the manifest, at most the stored frames) minus one ``frames``-long window."""
    from core.features import frames_for

    p = dataset.params
    stored = dataset.X(split).shape[1]
    rows = dataset.manifest.iloc[np.asarray(dataset.track(split))] if len(dataset.y(split)) else None
    if rows is None:
        return np.zeros(0, np.int64)
    dur = rows["duration_s"].fillna(0).to_numpy(dtype=float)
    usable = np.minimum([frames_for(int(d * p.sample_rate), p.hop_length) for d in dur], stored)
    return np.maximum(np.asarray(usable, np.int64) - frames, 0)


def make_sequences(dataset, config: TrainConfig, seed: int) -> tuple[SnippetSequence, SnippetSequence]:
    n = len(dataset.classes)
    for split in ("train", "val"):
        if len(dataset.y(split)) == 0:
            raise TrainError(f"the {split} split of {dataset.path} is empty: rebuild the dataset with "
                             f"{'more tracks or a ' if split == 'train' else 'a positive '}validation share")
    p = dataset.params
    crop = p.input_frames if p.mode == "full" else None
    bs = config.full_batch_size if (p.mode == "full" and config.full_batch_size) else config.batch_size
    train = SnippetSequence(dataset.X("train"), dataset.y("train"), n, dataset.norm, config, seed=seed, batch_size=bs,
                            tracks=dataset.track("train") if p.mode == "snippet" else None, crop_frames=crop,
                            crop_max=full_crop_limits(dataset, "train", crop) if crop else None)
    val = SnippetSequence(dataset.X("val"), dataset.y("val"), n, dataset.norm, config, seed=seed, training=False,
                          batch_size=bs, crop_frames=crop)
    return train, val


# ---------------------------------------------------------------------------------------------------------
# model helpers
# ---------------------------------------------------------------------------------------------------------
def set_precision(policy: str) -> None:
    keras.mixed_precision.set_global_policy(policy)


def build_compiled(kind: str, n_classes: int, params, config: TrainConfig):
    """A fresh compiled model for a dataset's feature params (``kind`` must match the dataset mode)."""
    set_precision(config.precision)
    try:
        model = build_model(kind, n_classes, params.n_mels, params.input_frames, config.dropout, config.arch)
    finally:
        set_precision("float32")
    compile_model(model, config.lr, config.jit_compile, config.label_smoothing)
    return model


def compile_model(model, lr: float, jit_compile: bool = False, label_smoothing: float = 0.0) -> None:
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing) if label_smoothing else \
        "categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss=loss, metrics=["accuracy"],
                  jit_compile=jit_compile)


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


def set_lr(model, lr: float) -> None:
    model.optimizer.learning_rate.assign(lr)


def save_model_atomic(model, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


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
    monitor: str = "val_loss"
    best_value: float | None = None  # the monitored value at the best epoch


class _StopCheck(keras.callbacks.Callback):
    """Asks ``should_stop`` between batches (drops the unfinished epoch), reports batch progress and, with a
    ``lr_at(batch)`` function, sets each batch's learning rate (the cosine schedule)."""

    def __init__(self, should_stop, on_batch, epoch: int, n_batches: int, lr_at=None):
        super().__init__()
        self.should_stop, self.on_batch, self.lr_at = should_stop, on_batch, lr_at
        self.epoch_idx, self.n_batches, self.stopped = epoch, n_batches, False

    def on_train_batch_begin(self, batch, logs=None):
        if self.lr_at is not None:
            set_lr(self.model, self.lr_at(batch))

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
    changeable = RESUMABLE_CHANGES - ({"max_epochs"} if config.schedule == "cosine" else set())  # cosine: max_epochs shapes the curve
    old = {k: v for k, v in TrainConfig.from_dict(state["config"]).full_dict().items() if k not in changeable}
    new = {k: v for k, v in config.full_dict().items() if k not in changeable}
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
    val_y = np.asarray(dataset.y("val"))
    val_tracks = np.asarray(dataset.track("val"))
    n_batches = len(train_seq)
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
        lr_at = None
        if config.schedule == "cosine":
            def lr_at(batch, epoch=epoch):
                return cosine_lr(config, epoch * n_batches + batch, n_batches)
        cb = _StopCheck(should_stop, on_batch, epoch, n_batches, lr_at)
        h = model.fit(train_seq, epochs=1, verbose=0, callbacks=[cb], shuffle=False)
        if cb.stopped:
            stopped = True
            break
        logs = {k: float(v[-1]) for k, v in h.history.items()}
        if config.bn_recalibrate:
            recalibrate_batchnorm(model, train_seq.calibration_batches(config.bn_recalibrate, epoch))
        val = validation_metrics(model.predict(val_seq, verbose=0), val_y, val_tracks)
        rec = {"epoch": epoch + 1, "loss": logs.get("loss"), "accuracy": logs.get("accuracy"), **val,
               "lr": state["lr"] if lr_at is None else cosine_lr(config, epoch * n_batches, n_batches),
               "seconds": round(time.perf_counter() - t0, 3)}
        _update_schedule(state, rec, config)
        if config.schedule == "cosine":
            state["lr"] = cosine_lr(config, (epoch + 1) * n_batches, n_batches)
        rec["best"] = state["best_epoch"] == epoch + 1
        rec["monitor"] = config.monitor
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
                       list(state["history"]), "requested" if stopped else state["stop_reason"],
                       config.monitor, state.get("best_value"))


def validation_metrics(scores: np.ndarray, y: np.ndarray, tracks: np.ndarray) -> dict[str, float]:
    """``val_loss`` (cross-entropy, no smoothing), ``val_accuracy`` (per snippet) and ``val_track_accuracy``
    (per track: the argmax of the summed snippet scores) from one pass over the validation snippets."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    loss = float(-np.log(np.clip(s[np.arange(len(y)), y], 1e-7, 1.0)).mean())
    acc = float((s.argmax(axis=1) == y).mean())
    uniq, inv = np.unique(np.asarray(tracks), return_inverse=True)
    sums = np.zeros((len(uniq), s.shape[1]))
    np.add.at(sums, inv, s)
    truth = np.zeros(len(uniq), np.int64)
    truth[inv] = y
    track_acc = float((sums.argmax(axis=1) == truth).mean())
    return {"val_loss": loss, "val_accuracy": acc, "val_track_accuracy": track_acc}


def cosine_lr(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up from ``lr / 10`` to ``lr`` over ``warmup_epochs``, then cosine decay to ``min_lr`` at
    ``max_epochs`` (a pure function of the global step, so resumes are exact)."""
    warm = int(round(config.warmup_epochs * steps_per_epoch))
    total = max(config.max_epochs * steps_per_epoch, warm + 1)
    if step < warm:
        return config.lr * (0.1 + 0.9 * step / warm)
    frac = min(1.0, (step - warm) / max(1, total - warm))
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * frac))


def monitor_key(rec: dict, monitor: str) -> tuple[float, ...]:
    """The monitored signal as a tuple compared lexicographically (higher is better): track accuracy, then
    snippet accuracy, then -loss for ``val_track_accuracy``; snippet accuracy then -loss for
    ``val_accuracy``; -loss for ``val_loss``."""
    def num(k: str) -> float:
        v = rec.get(k)
        return float(v) if v is not None and math.isfinite(v) else -math.inf

    loss = rec.get("val_loss")
    neg_loss = -float(loss) if loss is not None and math.isfinite(loss) else -math.inf
    if monitor == "val_track_accuracy":
        return (num("val_track_accuracy"), num("val_accuracy"), neg_loss)
    if monitor == "val_accuracy":
        return (num("val_accuracy"), neg_loss)
    return (neg_loss,)


def _improved(new: tuple, best: list | tuple | None, min_delta: float) -> bool:
    if best is None:
        return math.isfinite(new[0])
    best = tuple(best)
    if new[0] > best[0] + min_delta:
        return True
    if abs(new[0] - best[0]) <= 1e-12:
        return new[1:] > best[1:]
    return False


def _update_schedule(state: dict, rec: dict, config: TrainConfig) -> None:
    """Best epoch, early stopping and reduce-LR-on-plateau on the monitored signal (the Keras callbacks'
    semantics, as plain data in ``state``)."""
    key = monitor_key(rec, config.monitor)
    if "best_key" not in state:  # a state from before the monitor option: it monitored val_loss
        bl = state.get("best_val_loss")
        state["best_key"] = None if bl is None else [-bl]
    if _improved(key, state["best_key"], config.min_delta):
        state.update(best_key=list(key), best_val_loss=rec["val_loss"], best_epoch=rec["epoch"], es_wait=0,
                     lr_wait=0, best_value=rec.get(config.monitor))
    else:
        state["es_wait"] += 1
        state["lr_wait"] += 1
        if (config.schedule == "plateau" and state["lr_wait"] >= config.lr_patience
                and state["lr"] > config.min_lr):
            state["lr"] = max(state["lr"] * config.lr_factor, config.min_lr)
            state["lr_wait"] = 0
        if state["es_wait"] >= config.patience:
            state.update(finished=True,
                         stop_reason=f"early stop: no {config.monitor} improvement in {config.patience} epochs")
    if not state["finished"] and rec["epoch"] >= config.max_epochs:
        state.update(finished=True, stop_reason="max_epochs")
    if state["best_epoch"] == 0 and rec["epoch"] == 1:
        state.update(best_epoch=1)  # keep a best.keras even if the first validation is not finite
