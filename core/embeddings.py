"""Pretrained music embeddings (musicnn's 200-d penultimate layer) for a built dataset, a small classifier head
trained on them in seconds, saved as one musicnn + head model that :class:`core.predictor.Predictor` runs on raw
audio.

**Embeddings** (:func:`embed_dataset`, ``python -m core embed-dataset DATASET``). A dataset's ``{split}_X.npy``
holds the CRNN's 22.05 kHz features, so the audio is decoded again: each track listed in ``manifest.json``
(``abs_path``) at 16 kHz, musicnn's log-mel of the whole track (:func:`core.musicnn.log_mel`), a 3 s patch
(187 frames) at each snippet's start time (``{split}_start.npy``, nearest 16 ms frame), the network's
``penultimate`` output. Also, for the val and test tracks (every track with ``all_windows``: cross-validation
tests each track once, ``core.folds``), the patches every ``hop_s`` (1 s) over the whole track: the windows
that track-level evaluation aggregates (the :class:`core.predictor.Predictor` code path for the musicnn front
end, computed once per dataset instead of once per trained head). Written into
``DATASET/embeddings-msd-musicnn/``:

```
card.json             model (name, wheel and weights sha256), dataset build_id, counts, hop, input parameters,
                      library versions, time; written LAST (= complete)
{split}_E.npy         float32 (N, 200): one row per row of {split}_y.npy (same order)
{split}_W.npy         float32 (M, 200): windows every hop_s of each val/test track (train too: all_windows)
{split}_W_track.npy   int64 (M,): manifest index of each window's track
{split}_W_start.npy   float64 (M,): window start in seconds
.work-<hash>/         per-track results while computing (resume after a kill); removed when complete
```

A second call returns at once when the card matches (same dataset build, same model, same hop, and windows
for at least the splits asked for). A cross-validation fold's embeddings (:func:`fold_embeddings`) are the
parent's rows re-indexed, in the same format, without decoding audio.

**Head** (:func:`train_embedding_head`): standardisation (train statistics) -> [Dense(hidden, ReLU) -> Dropout]
-> Dense softmax, Adam, seeded; the epoch with the best validation accuracy (snippet level; ties: lower loss)
is kept. ``hidden=0`` is multinomial logistic regression. Returns the snippet scores of every split and the
window scores of val/test, from which :func:`embedding_results` computes segment- and track-level metrics in
the format of :func:`core.evaluate.evaluate_run`. Saves ``best.keras``: musicnn and the head as ONE Keras
model (input: ``(187, 96)`` log-mel patches, output: class scores) with a ``model_card.json`` of kind
``"musicnn"`` that carries musicnn's input parameters, from which :class:`core.predictor.Predictor` takes
musicnn's front end and classifies any audio with it (in NumPy: :mod:`core.musicnn_numpy` reads the file
without Keras), windows and aggregation as for the CRNNs.
"""
from __future__ import annotations

import functools
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core import musicnn as mn
from core.errors import GenreLabError, Stopped
from core.predictor import cut_patches, window_start_frames
from core.utils import atomic_save_npy, atomic_write_json, read_json, sha256_file, stable_hash

KIND = "musicnn"
#: the head the "musicnn" model kind trains: chosen on Emotify's VALIDATION track-level accuracy among four
#: settings (5 seeds each; docs/musicnn.md), never on the test split
DEFAULT_HEAD = {"hidden": 128, "dropout": 0.5, "lr": 3e-4, "l2": 1e-3, "monitor": "val_track_accuracy"}
#: the most epochs a head trains (early stopping on the monitor after ``patience`` epochs without a better one)
HEAD_EPOCHS = 60
EMBED_DIRNAME = "embeddings-msd-musicnn"
EMBED_FORMAT = 1
SPLITS = ("train", "val", "test")
WINDOW_SPLITS = ("val", "test")

ProgressFn = Callable[[int, int, str], None]


class EmbeddingError(GenreLabError):
    """Embeddings cannot be computed or are missing; the message is for the user."""


class HeadSettingsError(EmbeddingError, ValueError):
    """A head setting :func:`train_embedding_head` does not take; also a ``ValueError`` (a bad argument)."""


class EmbedStopped(Stopped):
    """``should_stop()`` returned True; what was computed so far is kept (run again to resume)."""


# =========================================================================================================
# the embedder (its windows: core.predictor.window_start_frames, cut_patches)
# =========================================================================================================
class MusicnnEmbedder:
    """The converted musicnn (default: the shipped ``models/msd-musicnn``) as a 200-d embedding of 3 s patches."""

    def __init__(self, model_dir: str | os.PathLike | None = None, batch_size: int = 32):
        self.model_dir = Path(model_dir) if model_dir else mn.default_model_dir()
        self.model, self.card = mn.load_musicnn(self.model_dir)
        self.batch_size = batch_size
        self._ow = None

    def embed_patches(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, mn.EMBEDDING_DIM), np.float32)
        return mn.predict_patches(self.model, x, self.batch_size)["penultimate"].astype(np.float32)

    def embed_track(self, mel: np.ndarray, start_frames) -> np.ndarray:
        """Embeddings of the patches of one track's log-mel at ``start_frames`` (all inside), in one pass."""
        if self._ow is None:
            self._ow = mn.OverlappingWindows(self.model)
        return self._ow.run(mel, start_frames, self.batch_size)["penultimate"].astype(np.float32)

    def identity(self) -> dict:
        w = self.model_dir / self.card.get("weights_file", mn.WEIGHTS_FILE)
        return {"name": self.card.get("name"), "model": self.card.get("model"),
                "wheel_sha256": self.card.get("source", {}).get("wheel_sha256"),
                "weights_sha256": sha256_file(w), "layer": "penultimate", "dim": mn.EMBEDDING_DIM}


# =========================================================================================================
# dataset embeddings
# =========================================================================================================
def embeddings_dir(dataset_path: str | os.PathLike) -> Path:
    return Path(dataset_path) / EMBED_DIRNAME


def _plan(dataset) -> dict[int, dict[str, Any]]:
    """Per manifest index: its split, the rows of ``{split}_*.npy`` it owns and their start times."""
    plan: dict[int, dict[str, Any]] = {}
    for split in SPLITS:
        tr = np.asarray(dataset.track(split))
        st = np.asarray(dataset.start(split), dtype=np.float64)
        for t in np.unique(tr):
            rows = np.nonzero(tr == t)[0]
            plan[int(t)] = {"split": split, "rows": rows, "starts": st[rows]}
    return plan


def embed_dataset(dataset_path: str | os.PathLike, model_dir: str | os.PathLike | None = None,
                  hop_s: float = 1.0, progress: ProgressFn | None = None,
                  should_stop: Callable[[], bool] | None = None, batch_size: int = 32,
                  embedder: MusicnnEmbedder | None = None, all_windows: bool = False) -> Path:
    """Compute (or find cached) musicnn embeddings of every snippet of a dataset; returns the embeddings folder.

    ``progress(done, total, track)`` after each track. ``all_windows``: the 1 s windows of the training tracks
    too (cross-validation). Raises :class:`EmbeddingError` (unreadable dataset, missing audio) or
    :class:`EmbedStopped` (on ``should_stop()``; run again to resume).
    """
    from core.audio import AudioError, load_audio
    from core.dataset import DatasetError, load_dataset

    try:
        ds = load_dataset(dataset_path)
    except DatasetError as exc:
        raise EmbeddingError(str(exc)) from exc
    if ds.params.mode == "full":
        raise EmbeddingError(f"{ds.path} is a full-clip dataset: embed the snippet dataset it was derived from")
    emb = embedder or MusicnnEmbedder(model_dir, batch_size)
    ident = emb.identity()
    base_key = stable_hash({"build_id": ds.card.get("build_id"), "model": ident, "hop_s": float(hop_s),
                            "format": EMBED_FORMAT})
    window_splits = SPLITS if all_windows else WINDOW_SPLITS
    key = base_key if not all_windows else stable_hash({"base": base_key, "windows": list(SPLITS)})
    out = embeddings_dir(ds.path)
    card_path = out / "card.json"
    if card_path.exists():
        try:
            old = read_json(card_path)
            if old.get("base_key", old.get("key")) == base_key and \
                    set(window_splits) <= set(old.get("window_splits", WINDOW_SPLITS)):
                return out
        except (ValueError, OSError, AttributeError):
            pass
        card_path.unlink()  # stale (other build or model, or windows missing): recompute
    out.mkdir(parents=True, exist_ok=True)
    work = out / f".work-{key}"
    work.mkdir(exist_ok=True)
    for old in out.glob(".work-*"):
        if old != work:
            shutil.rmtree(old, ignore_errors=True)

    plan = _plan(ds)
    manifest = ds.manifest
    t0 = time.perf_counter()
    done = 0
    for t, job in sorted(plan.items()):
        f = work / f"t{t:06d}.npz"
        if not f.exists():
            if should_stop and should_stop():
                raise EmbedStopped(f"stopped after {done} of {len(plan)} tracks; run again to resume")
            row = manifest.iloc[t]
            try:
                y = load_audio(row["abs_path"], mn.SR)
            except AudioError as exc:
                raise EmbeddingError(f"embeddings need the source audio; {row['abs_path']}: {exc}") from exc
            mel = mn.log_mel(y)
            sf = np.asarray([mn.frames_at(s) for s in job["starts"]], dtype=np.int64)
            wf = window_start_frames(mel.shape[0], hop_s) if job["split"] in window_splits else np.zeros(0, np.int64)
            if mel.shape[0] >= mn.PATCH_FRAMES:  # every patch of the track in one pass (shared timbral front end)
                clipped = np.clip(sf, 0, mel.shape[0] - mn.PATCH_FRAMES)
                moved = int((clipped != sf).sum())
                # snippet starts fall on the 1 s window grid (the same frame rounding): each patch once
                uniq, inv = np.unique(np.concatenate([clipped, wf]), return_inverse=True)
                pen = emb.embed_track(mel, uniq)[inv]
                arrays = {"E": pen[:len(sf)], "moved": np.array(moved)}
                if job["split"] in window_splits:
                    arrays["W"] = pen[len(sf):]
            else:
                xs, moved = cut_patches(mel, sf)
                arrays = {"E": emb.embed_patches(xs), "moved": np.array(moved)}
                if job["split"] in window_splits:
                    arrays["W"] = emb.embed_patches(cut_patches(mel, wf)[0])
            if job["split"] in window_splits:
                arrays["W_start"] = wf * mn.HOP / mn.SR
            import io

            buf = io.BytesIO()
            np.savez(buf, **arrays)
            from core.utils import atomic_write_bytes

            atomic_write_bytes(f, buf.getvalue())
        done += 1
        if progress:
            progress(done, len(plan), str(manifest.iloc[t]["path"]))

    moved_total = 0
    counts = {}
    for split in SPLITS:
        n = len(ds.y(split))
        E = np.zeros((n, mn.EMBEDDING_DIM), np.float32)
        W, W_track, W_start = [], [], []
        for t, job in sorted(plan.items()):
            if job["split"] != split:
                continue
            with np.load(work / f"t{t:06d}.npz") as z:
                E[job["rows"]] = z["E"]
                moved_total += int(z["moved"])
                if "W" in z.files:
                    W.append(z["W"])
                    W_track.append(np.full(len(z["W"]), t, np.int64))
                    W_start.append(z["W_start"].astype(np.float64))
        atomic_save_npy(out / f"{split}_E.npy", E)
        counts[split] = {"snippets": n, "tracks": int(sum(1 for j in plan.values() if j["split"] == split))}
        if split in window_splits:
            atomic_save_npy(out / f"{split}_W.npy", np.concatenate(W) if W else np.zeros((0, mn.EMBEDDING_DIM), np.float32))
            atomic_save_npy(out / f"{split}_W_track.npy", np.concatenate(W_track) if W_track else np.zeros(0, np.int64))
            atomic_save_npy(out / f"{split}_W_start.npy", np.concatenate(W_start) if W_start else np.zeros(0))
            counts[split]["windows"] = int(sum(len(w) for w in W))
    import keras

    card = {
        "format": EMBED_FORMAT, "key": key, "base_key": base_key, "window_splits": list(window_splits),
        "kind": "musicnn-embeddings", "model": ident,
        "model_dir": str(emb.model_dir), "dataset": str(ds.path), "dataset_build_id": ds.card.get("build_id"),
        "classes": ds.classes, "counts": counts, "hop_s": float(hop_s), "input": dict(mn.INPUT_PARAMS),
        "snippet_rule": "3 s patch (187 frames) of the track's 16 kHz musicnn log-mel at each snippet's start "
                        "(nearest frame); starts within 3 s of the end moved back so the patch fits",
        "dataset_snippet_s": ds.params.snippet_s, "moved_to_fit": moved_total, "seconds": round(time.perf_counter() - t0, 2),
        "versions": {"numpy": np.__version__, "keras": keras.__version__, "backend": keras.backend.backend()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(card_path, card)
    shutil.rmtree(work, ignore_errors=True)
    return out


@dataclass
class Embeddings:
    path: Path
    card: dict
    E: dict[str, np.ndarray]
    W: dict[str, np.ndarray]
    W_track: dict[str, np.ndarray]
    W_start: dict[str, np.ndarray]


def load_embeddings(dataset_path: str | os.PathLike) -> Embeddings:
    """The cached embeddings of a dataset (raises :class:`EmbeddingError` when not computed yet)."""
    d = embeddings_dir(dataset_path)
    if not (d / "card.json").exists():
        raise EmbeddingError(f"no musicnn embeddings for {dataset_path}: run `python -m core embed-dataset "
                             f"{dataset_path}` first")
    card = read_json(d / "card.json")
    E = {s: np.load(d / f"{s}_E.npy") for s in SPLITS}
    splits = [s for s in SPLITS if s in card.get("window_splits", WINDOW_SPLITS)]
    W = {s: np.load(d / f"{s}_W.npy") for s in splits}
    Wt = {s: np.load(d / f"{s}_W_track.npy") for s in splits}
    Ws = {s: np.load(d / f"{s}_W_start.npy") for s in splits}
    return Embeddings(d, card, E, W, Wt, Ws)


def fold_embeddings(parent_path: str | os.PathLike, fold_ds) -> Path:
    """The embeddings of a cross-validation fold (``core.folds.fold_dataset``) from its parent's, computed with
    ``all_windows`` (:func:`embed_dataset`): each fold row's snippet embedding and each val/test track's
    windows, re-indexed; nothing decoded. Written in the ordinary format; reused while the parent's
    embeddings and the fold are the same."""
    from core.dataset import load_dataset

    parent = load_dataset(parent_path)
    src = load_embeddings(parent.path)
    if set(src.card.get("window_splits", WINDOW_SPLITS)) != set(SPLITS):
        raise EmbeddingError(f"the embeddings of {parent.path} lack the training tracks' windows: run "
                             "embed_dataset(..., all_windows=True) first")
    key = stable_hash({"parent": src.card.get("key"), "fold": fold_ds.card.get("build_id")})
    out = embeddings_dir(fold_ds.path)
    card_path = out / "card.json"
    try:
        if card_path.exists() and read_json(card_path).get("key") == key:
            return out
    except (OSError, ValueError):
        pass
    card_path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    # parent row of each (track, start): the fold's rows are the parent's, re-indexed by track
    where: dict[tuple[int, float], tuple[str, int]] = {}
    for s in SPLITS:
        for r, (t, st) in enumerate(zip(np.asarray(parent.track(s)), np.asarray(parent.start(s)))):
            where[(int(t), round(float(st), 6))] = (s, r)
    wins: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for s in SPLITS:
        wt = src.W_track[s]
        for t in np.unique(wt):
            sel = wt == t
            wins[int(t)] = (src.W[s][sel], src.W_start[s][sel])
    counts = {}
    for s in SPLITS:
        tr, st = np.asarray(fold_ds.track(s)), np.asarray(fold_ds.start(s))
        E = np.zeros((len(tr), mn.EMBEDDING_DIM), np.float32)
        for i, (t, t0) in enumerate(zip(tr, st)):
            ps, r = where[(int(t), round(float(t0), 6))]
            E[i] = src.E[ps][r]
        atomic_save_npy(out / f"{s}_E.npy", E)
        counts[s] = {"snippets": int(len(tr)), "tracks": int(len(np.unique(tr)))}
        if s in WINDOW_SPLITS:
            ts = [int(t) for t in np.unique(tr)]
            atomic_save_npy(out / f"{s}_W.npy", np.concatenate([wins[t][0] for t in ts]) if ts
                            else np.zeros((0, mn.EMBEDDING_DIM), np.float32))
            atomic_save_npy(out / f"{s}_W_track.npy", np.concatenate([np.full(len(wins[t][0]), t, np.int64)
                                                                      for t in ts]) if ts else np.zeros(0, np.int64))
            atomic_save_npy(out / f"{s}_W_start.npy", np.concatenate([wins[t][1] for t in ts]) if ts
                            else np.zeros(0))
            counts[s]["windows"] = int(sum(len(wins[t][0]) for t in ts))
    card = {k: v for k, v in src.card.items() if k not in ("key", "base_key", "window_splits", "counts")}
    # base_key as embed_dataset computes it for the fold: a call on the fold finds these and decodes nothing
    base_key = stable_hash({"build_id": fold_ds.card.get("build_id"), "model": src.card.get("model"),
                            "hop_s": float(src.card.get("hop_s", 1.0)), "format": EMBED_FORMAT})
    card.update(key=key, base_key=base_key, window_splits=list(WINDOW_SPLITS), counts=counts, dataset=str(fold_ds.path),
                dataset_build_id=fold_ds.card.get("build_id"), derived_from=str(src.path),
                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    atomic_write_json(card_path, card)
    return out


# =========================================================================================================
# the head
# =========================================================================================================
def build_head(n_classes: int, hidden: int = 0, dropout: float = 0.3, l2: float = 1e-4,
               mean: np.ndarray | None = None, var: np.ndarray | None = None, dim: int = mn.EMBEDDING_DIM):
    """Embedding -> standardisation -> [Dense(hidden, ReLU) -> Dropout] -> Dense softmax."""
    import keras
    from keras import layers

    inp = keras.Input(shape=(dim,), name="embedding")
    x = layers.Normalization(mean=mean, variance=var, name="emb_norm")(inp) if mean is not None else inp
    if hidden:
        x = layers.Dropout(dropout, name="head_in_drop")(x)
        x = layers.Dense(hidden, activation="relu", kernel_regularizer=keras.regularizers.L2(l2), name="head_hidden")(x)
    x = layers.Dropout(dropout, name="head_drop")(x)
    out = layers.Dense(n_classes, activation="softmax", kernel_regularizer=keras.regularizers.L2(l2),
                       dtype="float32", name="genre")(x)
    return keras.Model(inp, out, name=f"musicnn_head_{hidden or 'linear'}")


def combined_model(musicnn_model, head):
    """musicnn patches ``(187, 96)`` -> penultimate -> head -> class scores, as one Keras model."""
    import keras

    emb = musicnn_model.get_layer("penultimate").output
    return keras.Model(musicnn_model.input, head(emb), name="musicnn_classifier")


@dataclass
class HeadResult:
    run_dir: Path | None
    seed: int
    hidden: int
    classes: list[str]
    best_epoch: int
    epochs_run: int
    history: list[dict]
    scores: dict[str, np.ndarray]  # split -> (N, C) snippet scores (rows of {split}_y.npy)
    window_scores: dict[str, np.ndarray]  # val/test -> (M, C) scores of the 1 s-hop windows
    seconds: float
    status: str = "done"
    monitor: str = "val_accuracy"
    extra: dict = field(default_factory=dict)

    # the fields of core.train.TrainResult that the experiment loop reads
    @property
    def best_value(self) -> float | None:
        return self.history[self.best_epoch - 1].get(self.monitor) if self.history else None

    @property
    def best_val_loss(self) -> float:
        return float(self.history[self.best_epoch - 1].get("val_loss", float("nan"))) if self.history else float("nan")

    @property
    def stop_reason(self) -> str:
        return f"best {self.monitor} at epoch {self.best_epoch} of {self.epochs_run}"


def _xent(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)))) if len(y) else float("nan")


def train_embedding_head(dataset_path: str | os.PathLike, seed: int, hidden: int = 0,
                         run_dir: str | os.PathLike | None = None, *, epochs: int = HEAD_EPOCHS, batch_size: int = 64,
                         lr: float = 1e-3, dropout: float = 0.3, l2: float = 1e-4, patience: int = 20,
                         monitor: str = "val_accuracy", model_dir: str | os.PathLike | None = None,
                         save_model: bool = True, on_epoch: Callable[[dict], None] | None = None) -> HeadResult:
    """Train a classifier head on a dataset's cached musicnn embeddings (:func:`embed_dataset` first).

    Seeded (``keras.utils.set_random_seed(seed)``: initialisation, shuffling, dropout). Keeps the epoch with the
    best validation snippet accuracy (ties: lower validation loss), or with ``monitor="val_track_accuracy"``
    the best validation track-level accuracy (the 1 s windows of each validation track, scores summed: the
    evaluation's rule; ties: snippet accuracy, then loss); stops after ``patience`` epochs without a better
    one. With ``run_dir`` and ``save_model``, writes ``best.keras`` (musicnn + head in one model),
    ``head.keras``, ``history.json`` and ``model_card.json`` (kind ``"musicnn"``).
    """
    import keras

    from core.dataset import load_dataset

    t0 = time.perf_counter()
    ds = load_dataset(dataset_path)
    emb = load_embeddings(ds.path)
    classes = ds.classes
    y = {s: np.asarray(ds.y(s)) for s in SPLITS}
    if len(y["train"]) == 0:
        raise EmbeddingError("the train split is empty")
    mean = emb.E["train"].mean(axis=0)
    var = emb.E["train"].var(axis=0) + 1e-6
    keras.utils.set_random_seed(int(seed))
    head = build_head(len(classes), hidden, dropout, l2, mean, var)
    head.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    has_val = len(y["val"]) > 0
    if monitor not in ("val_accuracy", "val_track_accuracy"):
        raise HeadSettingsError("monitor must be 'val_accuracy' or 'val_track_accuracy'")
    track_y = None
    if monitor == "val_track_accuracy" and has_val and len(emb.W["val"]):
        track_ids, track_pos = np.unique(emb.W_track["val"], return_inverse=True)
        track_y = np.array([classes.index(c) for c in ds.manifest.loc[track_ids, "class"]])
    best: tuple = (-np.inf,)
    best_w, best_epoch, wait, history = head.get_weights(), 1, 0, []
    order_rng = np.random.default_rng([int(seed), 11])
    E_tr, y_tr = emb.E["train"], y["train"]
    for epoch in range(1, epochs + 1):
        te = time.perf_counter()
        # minibatches through the compiled train step (Keras' fit() builds a tf.data pipeline per call: ~0.35 s
        # an epoch for a few hundred 200-d rows, the whole cost of a head)
        order = order_rng.permutation(len(y_tr))
        tot = {"loss": 0.0, "accuracy": 0.0}
        for a in range(0, len(order), batch_size):
            idx = order[a:a + batch_size]
            out = head.train_on_batch(E_tr[idx], y_tr[idx], return_dict=True)
            for k in tot:
                tot[k] += float(out[k]) * len(idx)
        rec = {"epoch": epoch, "loss": tot["loss"] / len(order), "accuracy": tot["accuracy"] / len(order),
               "lr": float(lr)}
        if has_val:
            p = head.predict_on_batch(emb.E["val"])
            p = np.asarray(p)
            rec["val_loss"] = _xent(p, y["val"])
            rec["val_accuracy"] = float((p.argmax(1) == y["val"]).mean())
            if track_y is not None:
                pw = np.asarray(head.predict_on_batch(emb.W["val"]))
                sums = np.zeros((len(track_ids), pw.shape[1]))
                np.add.at(sums, track_pos, pw)
                rec["val_track_accuracy"] = float((sums.argmax(1) == track_y).mean())
                key = (rec["val_track_accuracy"], rec["val_accuracy"], -rec["val_loss"])
            else:
                key = (rec["val_accuracy"], -rec["val_loss"])
            improved = key > best
        else:
            improved = True
        rec["best"], rec["monitor"] = bool(improved), monitor  # as core.train marks epochs (the store reads them)
        rec["seconds"] = round(time.perf_counter() - te, 3)
        history.append(rec)
        if improved:
            best = key if has_val else best
            best_w, best_epoch, wait = head.get_weights(), epoch, 0
        else:
            wait += 1
        if on_epoch:
            on_epoch(dict(rec, max_epochs=epochs))
        if wait >= patience:
            break
    head.set_weights(best_w)
    scores = {s: np.asarray(head.predict(emb.E[s], batch_size=1024, verbose=0), np.float64) if len(y[s])
              else np.zeros((0, len(classes))) for s in SPLITS}
    wscores = {s: np.asarray(head.predict(emb.W[s], batch_size=1024, verbose=0), np.float64) if len(emb.W[s])
               else np.zeros((0, len(classes))) for s in WINDOW_SPLITS}
    res = HeadResult(Path(run_dir) if run_dir else None, int(seed), int(hidden), classes, best_epoch, len(history),
                     history, scores, wscores, 0.0, monitor=monitor,
                     extra={"embeddings": str(emb.path), "hop_s": emb.card.get("hop_s", 1.0)})
    if run_dir and save_model:
        save_head_model(run_dir, head, ds, emb, res, model_dir=model_dir,
                        config={"hidden": hidden, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                                "dropout": dropout, "l2": l2, "patience": patience, "monitor": monitor})
    res.seconds = time.perf_counter() - t0
    return res


def save_head_model(run_dir, head, ds, emb: Embeddings, res: HeadResult, model_dir=None, config=None) -> Path:
    """``run_dir/best.keras`` (musicnn + head), ``head.keras``, ``history.json``, ``model_card.json``."""
    from core.features import FeatureParams
    from core.model_card import make_model_card, write_model_card

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    musicnn_model, mcard = _musicnn(str(model_dir or mn.default_model_dir()))
    full = combined_model(musicnn_model, head)
    for name, m in (("best.keras", full), ("head.keras", head)):
        tmp = run_dir / f".{name}.tmp.keras"
        m.save(tmp)
        tmp.replace(run_dir / name)
    atomic_write_json(run_dir / "history.json", res.history)
    card = musicnn_card(ds.classes, mcard, run_id=run_dir.name, seed=res.seed, dataset=str(ds.path),
                        dataset_build_id=ds.card.get("build_id"), embeddings=emb.card.get("key"),
                        head={"hidden": res.hidden, "best_epoch": res.best_epoch, "epochs_run": res.epochs_run,
                              "monitor": res.monitor, **(config or {})},
                        n_params=int(full.count_params()), macs_per_sample=mn.count_macs())
    write_model_card(run_dir, card)
    return run_dir / "best.keras"


@functools.lru_cache(maxsize=2)
def _musicnn(model_dir: str):
    """The converted musicnn, built once per process (an experiment saves a musicnn + head model per run;
    the combined models share its layers)."""
    return mn.load_musicnn(model_dir)


def musicnn_card(classes: list[str], musicnn_card_: dict, **extra: Any) -> dict:
    """A ``model_card.json`` for a musicnn-based classifier: kind ``"musicnn"``; ``params`` describe the 16 kHz,
    96-mel, 3 s input for generic readers (sample rate, snippet length); ``musicnn_input`` is exact."""
    from core.features import FeatureParams
    from core.model_card import make_model_card

    params = FeatureParams(sample_rate=mn.SR, snippet_s=mn.PATCH_SECONDS, overlap_s=2.0, max_snippets=0,
                           n_fft=mn.N_FFT, hop_length=mn.HOP, n_mels=mn.N_MELS, log=True)
    return make_model_card(KIND, classes, params, {}, "none", model_file="best.keras",
                           musicnn_input=dict(mn.INPUT_PARAMS), input_shape=[mn.PATCH_FRAMES, mn.N_MELS],
                           base_model={"name": musicnn_card_.get("name"), "model": musicnn_card_.get("model"),
                                       "citation": musicnn_card_.get("citation"),
                                       "licence": musicnn_card_.get("licence", {}).get("name"),
                                       "wheel_sha256": musicnn_card_.get("source", {}).get("wheel_sha256")},
                           **extra)


# =========================================================================================================
# evaluation from cached embeddings (same format as core.evaluate.evaluate_run)
# =========================================================================================================
def embedding_results(dataset, res: HeadResult, splits=("val", "test")) -> dict[tuple[str, str], dict]:
    """``{(level, split): {"metrics", "predictions"}}``: ``segment`` from the snippet scores, ``track_sum`` /
    ``track_vote`` / ``track_logprob`` from the windows every ``hop_s`` over each whole track (the same windows
    :class:`core.predictor.Predictor` scores on the audio)."""
    from core.evaluate import classification_metrics
    from core.predictor import AGGREGATIONS, aggregate

    emb = load_embeddings(dataset.path)
    classes = dataset.classes
    cidx = {c: i for i, c in enumerate(classes)}
    m = dataset.manifest
    out: dict[tuple[str, str], dict] = {}
    for split in splits:
        y = np.asarray(dataset.y(split))
        if len(y) == 0:
            continue
        sc = res.scores[split]
        pred = sc.argmax(1)
        tr = np.asarray(dataset.track(split))
        st = np.asarray(dataset.start(split))
        paths = m["path"].to_numpy()
        out[("segment", split)] = {
            "metrics": classification_metrics(y, pred, classes),
            "predictions": [{"track": paths[t], "start_s": float(s), "true": classes[a], "pred": classes[b],
                             "scores": r} for t, s, a, b, r in zip(tr, st, y, pred, sc.round(5).tolist())]}
        if split not in WINDOW_SPLITS:
            continue
        wt, ws = emb.W_track[split], res.window_scores[split]
        rows = dataset.tracks(split)
        y_true, preds, recs = [], {a: [] for a in AGGREGATIONS}, {a: [] for a in AGGREGATIONS}
        for t, row in zip(rows.index, rows.to_dict("records")):
            w = ws[wt == t]
            if len(w) == 0:
                continue
            y_true.append(cidx[row["class"]])
            for a in AGGREGATIONS:
                agg = aggregate(w, a)
                q = int(np.argmax(agg))
                preds[a].append(q)
                recs[a].append({"track": row["path"], "start_s": 0.0, "true": row["class"], "pred": classes[q],
                                "scores": np.round(agg, 5).tolist(), "n_windows": int(len(w))})
        for a in AGGREGATIONS:
            out[(f"track_{a}", split)] = {"metrics": classification_metrics(y_true, preds[a], classes),
                                          "predictions": recs[a]}
    return out


def is_musicnn_model(path: str | os.PathLike) -> bool:
    """True when ``path`` (a ``.keras`` file or its folder) has a card of kind ``"musicnn"``."""
    p = Path(path)
    card = (p if p.is_dir() else p.parent) / "model_card.json"
    try:
        data = read_json(card) if card.exists() else None
    except (ValueError, OSError):
        return False
    return isinstance(data, dict) and data.get("kind") == KIND  # a tampered card (a list ...) is not musicnn


# =========================================================================================================
# CLI
# =========================================================================================================
def _cmd_embed(a) -> int:
    from tqdm import tqdm

    bar = None

    def progress(done, total, path):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="track", desc="embedding", file=sys.stderr)
        bar.n = done
        bar.set_postfix_str(path, refresh=False)
        bar.refresh()

    try:
        out = embed_dataset(a.dataset, a.model_dir, a.hop, progress=progress)
    except EmbeddingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    card = read_json(out / "card.json")
    print(f"{out}: " + ", ".join(f"{s} {c['snippets']} snippets" + (f" / {c['windows']} windows" if 'windows' in c else "")
                                 for s, c in card["counts"].items()) + f" ({card['seconds']:.0f} s)")
    return 0


def _cmd_heads(a) -> int:
    from core.dataset import load_dataset
    from core.experiment import parse_seeds

    try:
        embed_dataset(a.dataset, a.model_dir, a.hop)
    except EmbeddingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ds = load_dataset(a.dataset)
    rows = []
    for hidden in [int(h) for h in str(a.hidden).split(",")]:
        for seed in parse_seeds(a.seeds):
            run_dir = Path(a.out) / f"musicnn-h{hidden}-s{seed}" if a.out else None
            r = train_embedding_head(a.dataset, seed, hidden, run_dir, epochs=a.epochs, lr=a.lr, dropout=a.dropout,
                                     l2=a.l2, patience=a.patience, monitor=a.monitor, model_dir=a.model_dir)
            res = embedding_results(ds, r)
            row = {"hidden": hidden, "seed": seed, "best_epoch": r.best_epoch, "seconds": round(r.seconds, 1)}
            row.update({f"{lvl}/{sp}": round(v["metrics"]["accuracy"], 4) for (lvl, sp), v in res.items()
                        if lvl in ("segment", "track_sum")})
            rows.append(row)
            print(row, flush=True)
    import pandas as pd

    df = pd.DataFrame(rows)
    cols = [c for c in df.columns if "/" in c]
    print(df.groupby("hidden")[cols].agg(["mean", "std"]).round(4).to_string())
    if a.csv:
        df.to_csv(a.csv, index=False)
    if a.ship:
        if not a.out:
            print("error: --ship needs --out (the runs to choose from)", file=sys.stderr)
            return 2
        # best validation track-level (sum) accuracy, then validation segment accuracy, then the lower seed
        best = sorted(rows, key=lambda r: (-r["track_sum/val"], -r["segment/val"], r["hidden"], r["seed"]))[0]
        run = Path(a.out) / f"musicnn-h{best['hidden']}-s{best['seed']}"
        command = "python -m core embedding-heads " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else ""
        dest = ship_head_model(run, Path(a.ship), ds, accuracy={k: v for k, v in best.items() if "/" in k},
                               selected_by=f"best validation track-level (sum) accuracy among {len(rows)} runs "
                                           f"(hidden {a.hidden}, seeds {a.seeds})",
                               command=command, n_runs=len(rows))
        print(f"shipped {run.name} -> {dest}")
    return 0


def ship_head_model(run_dir: str | os.PathLike, dest: str | os.PathLike, dataset, accuracy: dict,
                    selected_by: str, command: str = "", n_runs: int = 1) -> Path:
    """Copy a head run (``best.keras`` = musicnn + head) into a model folder: ``model.keras``,
    ``model_card.json`` (training data, split, measured accuracy, selection, command, commit) and
    ``MODEL_CARD.md``."""
    import subprocess

    run_dir, dest = Path(run_dir), Path(dest)
    card = read_json(run_dir / "model_card.json")
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / ".model.tmp.keras"
    shutil.copyfile(run_dir / "best.keras", tmp)
    tmp.replace(dest / "model.keras")
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    counts = dataset.card.get("counts", {})
    source = Path(str(dataset.card.get("source", "") or dataset.path)).name
    name = dest.name
    card.update({
        "model_file": "model.keras", "name": name, "dataset": None,
        "description": f"{len(dataset.classes)}-genre classifier ({', '.join(dataset.classes)}): musicnn (MSD_musicnn, "
                       f"Pons & Serra 2019) 200-d embeddings of 3 s windows + a head trained on "
                       f"{counts.get('train', {}).get('tracks', '?')} tracks; windows vote by summed scores.",
        "training_data": {"source": source, "classes": dataset.classes,
                          "tracks": {s: counts.get(s, {}).get("tracks") for s in SPLITS},
                          "snippets": {s: counts.get(s, {}).get("snippets") for s in SPLITS},
                          "split": dataset.card.get("split")},
        "accuracy": accuracy, "selected_by": selected_by,
        "reproduction": {"command": command, "commit": commit, "n_runs": n_runs,
                         "dataset_command": f"python -m core build-dataset SRC DATASET --max-snippets "
                                            f"{dataset.params.max_snippets}"},
    })
    write = __import__("core.model_card", fromlist=["write_model_card"]).write_model_card
    write(dest, card)
    acc = "; ".join(f"{k} {v:.1%}" for k, v in sorted(accuracy.items()))
    head = card.get("head", {})
    (dest / "MODEL_CARD.md").write_text(f"""# {name}

{card['description']}

- **Classes** ({len(dataset.classes)}): {', '.join(dataset.classes)}
- **Model**: musicnn MSD_musicnn (792k parameters, frozen; converted from the musicnn 0.1.0 wheel, ISC licence,
  see `models/msd-musicnn/MODEL_CARD.md`) -> 200-d penultimate embedding -> head (hidden {head.get('hidden')},
  dropout {head.get('dropout')}, L2 {head.get('l2')}, Adam {head.get('lr')}, best epoch {head.get('best_epoch')} by
  {head.get('monitor')}); {card.get('n_params', 0):,} parameters in `model.keras`
- **Input**: mono 16 kHz, musicnn log-mel (n_fft 512, hop 256, 96 Slaney mel bands, log10(10000 x + 1)), 3 s
  windows (187 frames) every 1 s, scores summed over the windows
- **Training data**: {source}, {counts.get('train', {}).get('tracks')} training tracks, {counts.get('val', {}).get('tracks')} validation,
  {counts.get('test', {}).get('tracks')} test (track-wise split of the dataset build)
- **Measured** (this run): {acc}
- **Selected** as the {selected_by}; produced by `{command}` at commit {commit}
- **Citation**: {mn.CITATION}

Development figures on a small set: expect lower accuracy on music unlike the training data.
""")
    return dest


def register_cli(sub) -> None:
    p = sub.add_parser("embed-dataset", help="musicnn embeddings of every snippet of a dataset (cached)",
                       description="Decode each track of DATASET again at 16 kHz, compute musicnn's 200-d "
                                   "penultimate embedding of a 3 s patch at every snippet start, and of windows "
                                   "every --hop s over each val/test track; writes DATASET/embeddings-msd-musicnn/. "
                                   "Cached and resumable: run it again after a stop.")
    p.add_argument("dataset", metavar="DATASET")
    p.add_argument("--model-dir", default=None, help="converted musicnn folder (default: models/msd-musicnn)")
    p.add_argument("--hop", type=float, default=1.0, help="hop of the track-level windows in s (%(default)s)")
    p.set_defaults(func=_cmd_embed)
    h = sub.add_parser("embedding-heads", help="train musicnn-embedding heads over seeds and print their accuracy",
                       description="Embed DATASET (cached), train a linear (hidden 0) and/or one-hidden-layer head "
                                   "per seed, print segment- and track-level (sum) accuracy on val and test.")
    h.add_argument("dataset", metavar="DATASET")
    h.add_argument("--seeds", default="0-4", help="e.g. 5, 0-4 or 0,3,7 (%(default)s)")
    h.add_argument("--hidden", default="0,128", help="comma list of hidden sizes, 0 = linear (%(default)s)")
    h.add_argument("--epochs", type=int, default=60)
    h.add_argument("--lr", type=float, default=1e-3)
    h.add_argument("--dropout", type=float, default=0.3)
    h.add_argument("--l2", type=float, default=1e-4)
    h.add_argument("--patience", type=int, default=20)
    h.add_argument("--monitor", choices=("val_accuracy", "val_track_accuracy"), default="val_accuracy")
    h.add_argument("--hop", type=float, default=1.0)
    h.add_argument("--model-dir", default=None)
    h.add_argument("--out", default=None, help="save each run (musicnn + head model, card) under this folder")
    h.add_argument("--csv", default=None, help="write the per-run table here")
    h.add_argument("--ship", default=None, metavar="MODEL_DIR",
                   help="copy the run with the best validation track-level accuracy into MODEL_DIR (needs --out)")
    h.set_defaults(func=_cmd_heads)
