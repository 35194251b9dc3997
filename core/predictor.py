"""Inference on any audio: a trained model + the preprocessing it was trained with, loaded once.

Track-level inference re-cuts the whole track into windows of the training snippet length with its own hop
(default 1 s: 3 s windows overlapping by 2 s), predicts all windows in batches and aggregates the window
scores into one decision:

* ``"sum"``      sum of the class scores (the article's rule);
* ``"vote"``     majority vote of the window decisions (ties -> higher score sum);
* ``"logprob"``  mean log-probability (product of probabilities, i.e. independent-evidence rule).

Full-clip models predict once on the first ``full_clip_s`` seconds (zero-padded).

One :class:`Predictor` serves every model kind and every caller (``python -m core predict``, the evaluation, the
dashboard's demo): the model card says which feature front end the model takes (the CRNNs' and the baseline's
mel windows from :mod:`core.features`, or musicnn's 16 kHz log-mel patches for kind ``"musicnn"``), and
``backend`` which runtime runs it: NumPy (:mod:`core.numpy_model`, :mod:`core.musicnn_numpy`: no TensorFlow
import) when the models' layers allow it (every shipped kind), else Keras.

Every model folder has a ``model_card.json`` next to its model files (:mod:`core.model_card`: the schema, its
validation and the model files a card describes; ``docs/musicnn.md``); the predictor runs what the card says.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from core import musicnn as mn
from core.errors import GenreLabError
from core.features import (FeatureParams, apply_norm, full_clip, mel_spectrogram, peak_offset_db,
                           track_snippets)
from core.model_card import (AGGREGATIONS, CARD_NAME, ModelCardError, ModelError, check_model_matches_card,
                             default_aggregation, default_hop_s, embedding_weights, front_end_of, is_tagger_folder,
                             model_files, read_model_card, validate_model_card)

EPS = 1e-7

#: the predictor's errors are model errors (a model, model file or card that cannot be used)
PredictorError = ModelError


class PredictionInputError(GenreLabError, ValueError):
    """A signal or a setting a model cannot take (an empty signal, a hop <= 0, a window too short for the model,
    an unknown aggregation or backend); the message says which. Also a ``ValueError``, which callers catch."""


# ---------------------------------------------------------------------------------------------------------
# aggregation
# ---------------------------------------------------------------------------------------------------------
def aggregate(window_scores: np.ndarray, method: str = "sum") -> np.ndarray:
    """Aggregate ``(n_windows, n_classes)`` softmax scores into one ``(n_classes,)`` vector per the method.

    ``sum``: summed scores; ``vote``: number of windows whose top class is each class, plus a tie-breaking
    ``1e-6 x`` score sum; ``logprob``: mean log-probability. The argmax of each is the decision.
    """
    _check_aggregation(method)
    s = np.asarray(window_scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0:
        raise PredictionInputError("window_scores must be a non-empty (n_windows, n_classes) array")
    if method == "sum":
        return s.sum(axis=0)
    if method == "vote":
        votes = np.bincount(s.argmax(axis=1), minlength=s.shape[1]).astype(np.float64)
        return votes + 1e-6 * s.sum(axis=0) / s.shape[0]
    return np.log(np.clip(s, EPS, 1.0)).mean(axis=0)  # logprob


def _check_aggregation(method: str) -> None:
    if method not in AGGREGATIONS:
        raise PredictionInputError(f"unknown aggregation {method!r} (use one of {AGGREGATIONS})")


def confidence(agg: np.ndarray, method: str, n_windows: int) -> np.ndarray:
    """Aggregated values mapped to a distribution that sums to 1 (for display)."""
    a = np.asarray(agg, dtype=np.float64)
    if method == "logprob":
        e = np.exp(a - a.max())
        return e / e.sum()
    a = np.maximum(a, 0)
    return a / a.sum() if a.sum() > 0 else np.full_like(a, 1 / a.size)


# ---------------------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------------------
@dataclass
class PredictionResult:
    classes: list[str]
    window_scores: np.ndarray  # (n_windows, n_classes) softmax
    starts: np.ndarray  # (n_windows,) seconds
    ends: np.ndarray
    aggregation: str
    aggregated: np.ndarray  # (n_classes,) per the aggregation
    predicted_index: int
    duration_s: float
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0  # features + inference time

    @property
    def predicted(self) -> str:
        return self.classes[self.predicted_index]

    @property
    def n_windows(self) -> int:
        return int(self.window_scores.shape[0])

    @property
    def probabilities(self) -> np.ndarray:
        return confidence(self.aggregated, self.aggregation, self.n_windows)

    @property
    def score(self) -> float:
        """Confidence of the predicted class, in [0, 1]."""
        return float(self.probabilities[self.predicted_index])

    def with_aggregation(self, method: str) -> "PredictionResult":
        """The same windows aggregated another way (no new inference)."""
        agg = aggregate(self.window_scores, method)
        return replace(self, aggregation=method, aggregated=agg, predicted_index=int(np.argmax(agg)))

    def to_dict(self) -> dict:
        return {"class": self.predicted, "score": round(self.score, 4), "aggregation": self.aggregation,
                "probabilities": {c: round(float(p), 4) for c, p in zip(self.classes, self.probabilities)},
                "n_windows": self.n_windows, "duration_s": round(self.duration_s, 3),
                "window_starts": self.starts.round(3).tolist(), "window_ends": self.ends.round(3).tolist(),
                "window_scores": self.window_scores.round(4).tolist(), "notes": self.notes,
                "seconds": round(self.seconds, 4)}


# ---------------------------------------------------------------------------------------------------------
# the predictor
# ---------------------------------------------------------------------------------------------------------
BACKENDS = ("auto", "numpy", "keras")
#: batch sizes when none is given: NumPy's small matrix products run best in small batches (one BLAS thread);
#: 32 bounds Keras' activations on a long clip (256 costs ~1 GB). Evaluation passes 256 (~1.6x faster per window)
DEFAULT_BATCH = {"numpy": 16, "keras": 32}


def window_start_frames(n_frames: int, hop_s: float = 1.0) -> np.ndarray:
    """Start frames of musicnn windows every ``hop_s`` seconds (nearest frame) that fit in ``n_frames``;
    ``[0]`` when not even one fits (the patch is then repeat-padded)."""
    if hop_s <= 0:
        raise PredictionInputError("hop must be positive")
    out = []
    k = 0
    while True:
        f = mn.frames_at(k * hop_s)
        if f + mn.PATCH_FRAMES > n_frames:
            break
        if not out or f > out[-1]:
            out.append(f)
        k += 1
    return np.asarray(out or [0], dtype=np.int64)


def cut_patches(mel: np.ndarray, start_frames) -> tuple[np.ndarray, int]:
    """``(k, 187, 96)`` patches of a musicnn log-mel at the given start frames; a start too close to the end is
    moved back so the patch fits (returns how many were moved); a too-short representation is repeat-padded."""
    n = mel.shape[0]
    if n < mn.PATCH_FRAMES:
        x, _ = mn.patches(mel)
        return np.repeat(x, len(start_frames), axis=0), len(start_frames)
    s = np.asarray(start_frames, dtype=np.int64)
    clipped = np.clip(s, 0, n - mn.PATCH_FRAMES)
    idx = clipped[:, None] + np.arange(mn.PATCH_FRAMES)[None, :]
    return np.ascontiguousarray(mel[idx], dtype=np.float32), int((clipped != s).sum())


def _window_ends(starts: np.ndarray, window_s: float, dur: float, hop_s: float) -> tuple[np.ndarray, list[str]]:
    """Window ends (a window never ends past the signal, unless the signal is shorter than one window) and the
    note when the last ``> hop_s`` seconds are in no window."""
    ends = np.minimum(starts + window_s, max(dur, window_s))
    covered = float(ends[-1]) if len(ends) else 0.0
    notes = [f"last {dur - covered:.2f} s not covered by a full window"] if dur - covered > hop_s else []
    return ends, notes


class _UnsupportedIn(PredictorError):
    """A model file NumPy cannot run (internal: the Predictor falls back to Keras or says which file)."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path}: {why}")
        self.path, self.why = path, why


def _check_finite_features(X: np.ndarray) -> None:
    """Refuse features that overflowed (samples far outside [-1, 1] give an infinite spectrogram)."""
    if not np.isfinite(X).all():
        from core.audio import AudioError

        raise AudioError("non-finite features: sample values far outside [-1, 1] overflow the spectrogram")


class Predictor:
    """A trained model with its preprocessing, loaded once: ``Predictor(path, backend="auto")``.

    ``path`` is a model folder (``model_card.json`` + the model files) or one ``.keras`` file beside its card.
    The card gives the classes, the kind, the normalisation and the features, and with them the front end
    (:func:`front_end_of`): the CRNNs' and the baseline's mel windows, or musicnn's log-mel patches. Windowing,
    scoring and aggregation are the same code for both. The card may describe:

    * an **ensemble**: ``"members": [{"file": "m0.keras", "norm": {...}?}, ...]``: every member scores the same
      windows and a window's class scores are the mean of the members' softmax scores (then aggregation as
      usual); ``members`` names them;
    * **musicnn heads** (kind ``"musicnn"``): either ``.keras`` files holding musicnn and a head as one model
      (``models/emotify-musicnn``, the experiment's runs), or, with ``"embedding": {"network": "MSD_musicnn",
      "weights": "musicnn.weights.npz", "features": ["penultimate", ...]}``, the network's weights in the folder
      and small Dense heads on the named per-window features (:data:`core.musicnn_numpy.FEATURES`) concatenated
      in that order; the network runs once per window for all heads;
    * test-time defaults ``"aggregation"`` and ``"hop_s"`` (``default_aggregation``, ``default_hop_s``): used
      when a caller passes None.

    ``backend``: ``"numpy"`` runs everything with :mod:`core.numpy_model` and :mod:`core.musicnn_numpy` (no
    TensorFlow import, a fraction of the memory; every kind shipped), ``"keras"`` loads the models with Keras,
    ``"auto"`` uses NumPy when the models' layers allow it and Keras otherwise (``$GENRELAB_INFERENCE=keras``
    forces Keras). ``.backend`` says which one runs. ``batch_size``: windows per forward pass (default per
    backend, :data:`DEFAULT_BATCH`); ``warmup`` traces Keras' predict function on load (NumPy needs none);
    ``threads``: an ensemble's NumPy members score on this many threads at once, each with one BLAS thread
    (default :func:`core.numpy_model.default_threads`: the CPUs this process may use, at most 4).
    """

    def __init__(self, model_path: str | os.PathLike, backend: str = "auto", *,
                 card: str | os.PathLike | dict | None = None, batch_size: int | None = None, warmup: bool = True,
                 threads: int | None = None):
        if backend not in BACKENDS:
            raise PredictionInputError(f"unknown backend {backend!r} (use one of {', '.join(BACKENDS)})")
        path = Path(model_path)
        if not path.exists():
            raise PredictorError(f"model file not found: {path}")
        self.folder = path if path.is_dir() else path.parent
        if isinstance(card, dict):
            self.card = validate_model_card(card, "(given as a dict)")
        else:
            if card is None and is_tagger_folder(path):
                raise PredictorError(f"{path} is musicnn's tagger ({mn.CARD_FILE}: 50 tags, not genre classes), not a "
                                     f"classifier: `python -m core predict --model {path} FILE` prints its top tags")
            self.card = read_model_card(card or self.folder / CARD_NAME)
        self.kind: str = self.card["kind"]
        self.classes: list[str] = list(self.card["classes"])
        self.params = FeatureParams.from_dict(self.card["params"])
        self.norm: dict = self.card["norm"]
        self.norm_method: str = self.card["norm_method"]
        self.front_end = front_end_of(self.card)
        self.default_hop_s = default_hop_s(self.card)
        self.default_aggregation = default_aggregation(self.card)
        self.embedding: dict | None = self.card.get("embedding")  # validated: kind musicnn
        self._files = model_files(path, self.card)
        self.model_path = self._files[0][0]
        self.model_files = [f for f, _ in self._files]
        self.members = [f.name for f in self.model_files] if path.is_dir() and self.card.get("members") else []
        self._weights_path = embedding_weights(self.folder, self.card)
        self._overlapping: dict = {}  # Keras musicnn: the shared front end per member (built on first use)
        from core.numpy_model import default_threads

        self.threads = max(1, int(threads)) if threads else default_threads()
        self._pool = None  # the threads an ensemble's NumPy members run on (_member_pool)
        self.backend = self._load(backend)
        self.model = self._models[0]  # the first (or only) model: its input and output shapes
        self.batch_size = int(batch_size or DEFAULT_BATCH[self.backend])
        for f, m in zip(self.model_files, self._models):
            check_model_matches_card(tuple(m.input_shape), int(m.output_shape[-1]), self.card, self.params, f,
                                     getattr(m, "name", None))
            if self.front_end == "musicnn" and self.embedding is None and self.backend == "keras" \
                    and tuple(m.input_shape[1:]) != (mn.PATCH_FRAMES, mn.N_MELS):
                raise ModelCardError(f"{f} takes {m.input_shape[1:]} inputs, not musicnn's "
                                     f"({mn.PATCH_FRAMES}, {mn.N_MELS}) log-mel patches")
        self._fixed_frames = self.model.input_shape[1] if self.front_end == "mel" else mn.PATCH_FRAMES
        if warmup and self.backend == "keras":
            self._warm_up()

    # ----- loading -------------------------------------------------------------------------------------------
    def _load(self, backend: str) -> str:
        """Load the models with NumPy or Keras per ``backend``; returns the backend that runs them."""
        if backend == "auto" and os.environ.get("GENRELAB_INFERENCE", "").strip().lower() == "keras":
            backend = "keras"
        if backend != "keras":
            from core.musicnn_numpy import MusicnnNumpyError
            from core.numpy_model import NumpyModelError

            try:
                self._load_numpy()
                return "numpy"
            except _UnsupportedIn as exc:
                if backend == "numpy":
                    raise PredictorError(f"{exc.path} cannot run in NumPy (not implemented there: {exc.why}); use "
                                         "the Keras backend ('keras' or 'auto')") from exc
            except (NumpyModelError, MusicnnNumpyError) as exc:
                raise PredictorError(str(exc)) from exc
        self._load_keras()
        return "keras"

    def _load_numpy(self) -> None:
        """``_models`` (NumpyModel per file); musicnn: ``_groups`` = [(network, feature names, [heads])]."""
        from core import musicnn_numpy as mnp
        from core.numpy_model import UnsupportedModel, load_numpy_model

        models, groups = [], {}
        for f, _ in self._files:
            try:
                if self.front_end == "musicnn" and self.embedding is None:
                    weights, head = mnp.read_combined_model(f)  # musicnn + head in one file
                    key = mnp.weights_digest(weights)
                    if key not in groups:
                        groups[key] = (mnp.MusicnnNetwork(weights, name=f.stem), ("penultimate",), [])
                    groups[key][2].append(head)
                    models.append(head)
                else:
                    models.append(load_numpy_model(f))
            except UnsupportedModel as exc:
                raise _UnsupportedIn(f, str(exc)) from exc
        if self.embedding is not None:
            net = mnp.network(self._weights_path)
            names = net.check_names(self.embedding["features"])
            dim = net.feature_dim(names)
            for f, m in zip(self.model_files, models):
                self._check_head(f, m.input_shape, dim, names)
            groups["embedding"] = (net, names, models)
        self._models = models
        self._groups = list(groups.values())

    def _check_head(self, f: Path, input_shape, dim: int, names) -> None:
        if len(input_shape) != 2 or input_shape[-1] != dim:
            raise ModelCardError(f"{f.name} takes inputs of shape {tuple(input_shape[1:])}, but the card's embedding "
                                 f"features ({' + '.join(names)}) are {dim} numbers per window: a head on them is "
                                 f"a Dense model with {dim} inputs ({self.folder / CARD_NAME})")

    def _load_keras(self) -> None:
        from core.models import load_model
        from core.train_config import TrainError

        models = []
        for f, _ in self._files:
            try:
                models.append(load_model(f, compile=False))
            except TrainError as exc:
                raise PredictorError(str(exc)) from exc
        self._models = models
        self._keras_features = None
        if self.embedding is not None:
            from core import musicnn_numpy as mnp

            weights = mnp.load_weights(self._weights_path)
            net = mn.build_musicnn(n_classes=int(weights["tag_logits/kernel"].shape[1]) if "tag_logits/kernel"
                                   in weights else 50, name="musicnn")
            try:
                mn.set_weights(net, weights)
            except (KeyError, ValueError) as exc:
                raise PredictorError(f"{self._weights_path} does not fit musicnn ({exc})") from exc
            names = tuple(self.embedding["features"])
            dim = sum(mnp.FEATURE_DIMS[n] for n in names)
            for f, m in zip(self.model_files, models):
                self._check_head(f, m.input_shape, dim, names)
            self._keras_features = (mn.feature_model(net, names), names)

    def _warm_up(self) -> None:
        """Trace Keras' predict function: two shapes (it then retraces once to a shape-generic graph); musicnn
        also traces its shared-front-end graphs (a 10 s signal: overlapping windows)."""
        if self.front_end == "musicnn":
            self.predict_features(np.zeros((1, mn.PATCH_FRAMES, mn.N_MELS), np.float32))
            self.predict_array(np.zeros(10 * self.sample_rate, np.float32) + 1e-3)
            return
        f, m = self._fixed_frames or self.params.input_frames, self.params.n_mels
        self.predict_features(np.zeros((1, f, m), np.float32))
        self.predict_features(np.zeros((2, f if self._fixed_frames else f + 8, m), np.float32))

    @property
    def sample_rate(self) -> int:
        return self.params.sample_rate

    # ----- scoring -------------------------------------------------------------------------------------------
    def _batched(self, model, X: np.ndarray, held: bool = False, bs: int | None = None) -> np.ndarray:
        """``model``'s scores of ``X`` in batches of ``bs`` (default :attr:`batch_size`); ``held``: the caller
        holds one BLAS thread (NumPy models)."""
        bs = bs or self.batch_size
        run = model.forward if held and hasattr(model, "forward") else model.predict_on_batch
        out = [np.asarray(run(X[a:a + bs]), dtype=np.float64) for a in range(0, len(X), bs)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)))

    def predict_features(self, X: np.ndarray) -> np.ndarray:
        """Class scores of raw windows (``(k, frames, n_mels)``: the CRNNs' mel windows, or musicnn's 187-frame
        log-mel patches): each model's softmax in batches of up to ``batch_size``, averaged over the members.
        Non-finite features (samples far outside [-1, 1]) raise :class:`core.audio.AudioError`."""
        X = np.asarray(X, dtype=np.float32)
        _check_finite_features(X)
        if self.front_end == "musicnn":
            return self._musicnn_patch_scores(X)
        pairs = list(zip(self._models, self._files))
        threaded = self.backend == "numpy" and len(pairs) > 1 and self.threads > 1
        # members on T threads take batches of batch_size / T: as many windows in flight as one thread's batch
        bs = max(1, self.batch_size // self.threads) if threaded else self.batch_size

        def member(pair) -> np.ndarray:
            model, (_, norm) = pair
            Xn = apply_norm(X, norm if norm is not None else self.norm, self.norm_method)
            if len(model.input_shape) == 4:  # the CRNNs and the baseline take one channel
                Xn = Xn[..., None]
            return self._batched(model, Xn, held=threaded, bs=bs)

        if not threaded:
            return np.sum([member(p) for p in pairs], axis=0) / len(pairs)
        from core.numpy_model import single_blas_thread, trim_heap

        with single_blas_thread():  # one BLAS thread each, the members on threads of their own
            scores = list(self._member_pool().map(member, pairs))
        trim_heap()  # what the threads freed stays in their malloc arenas until trimmed (a server would keep it)
        return np.sum(scores, axis=0) / len(pairs)

    def _member_pool(self):
        """The threads an ensemble's NumPy members run on (:attr:`threads`; created on first use)."""
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="members")
        return self._pool

    def _musicnn_patch_scores(self, X: np.ndarray) -> np.ndarray:
        """Mean class scores of the members on ``(k, 187, 96)`` patches, each patch on its own."""
        total = np.zeros((len(X), len(self.classes)))
        if len(X) == 0:
            return total
        if self.backend == "numpy":
            for net, names, heads in self._groups:
                feats = net.patches(X, names)
                x = np.concatenate([feats[n] for n in names], axis=1)
                for h in heads:
                    total += self._batched(h, x)
            return total / len(self._models)
        if self._keras_features is not None:
            fm, names = self._keras_features
            outs = [fm.predict_on_batch(X[a:a + self.batch_size]) for a in range(0, len(X), self.batch_size)]
            x = np.concatenate([np.concatenate([np.asarray(o[n]) for n in names], axis=1) for o in outs])
            for h in self._models:
                total += self._batched(h, x)
        else:
            for m in self._models:
                total += self._batched(m, X)
        return total / len(self._models)

    def _musicnn_stream_scores(self, blocks, hop_s: float, progress=None, total_s: float | None = None):
        """NumPy musicnn on a 16 kHz signal given in blocks: ``(scores, start frames, samples, padded, heard)``.
        Each network runs once per window (:class:`core.musicnn_numpy.WindowStream`: the timbral front end
        shared by overlapping windows), every head on its features, scores averaged over the members; only the
        frames that later windows need are kept (bounded memory for any length)."""
        from core.musicnn_numpy import WindowStream

        streams = [(WindowStream(net, names, hop_s), heads) for net, names, heads in self._groups]
        parts: list[list[np.ndarray]] = [[] for _ in streams]
        starts: list[np.ndarray] = []
        heard = False

        def take(i, done):
            for s, feats in done:
                x = np.concatenate([feats[n] for n in streams[i][0].names], axis=1)
                parts[i].append(sum(self._batched(h, x) for h in streams[i][1]))
                if i == 0:
                    starts.append(s)

        for block in blocks:
            heard = heard or bool(np.any(block))
            for i, (ws, _) in enumerate(streams):
                take(i, ws.feed(block))
            if progress is not None:
                progress(streams[0][0].n_samples / mn.SR, total_s)
        for i, (ws, _) in enumerate(streams):
            take(i, ws.finish())
        ws = streams[0][0]
        if ws.n_samples == 0:
            raise PredictionInputError("empty signal")
        scores = sum(np.concatenate(p) for p in parts) / len(self._models)
        return scores, np.concatenate(starts), ws.n_samples, ws.padded, heard

    def _musicnn_result(self, scores, start_frames, n_samples: int, padded: bool, hop_s: float):
        dur = n_samples / mn.SR
        starts = np.asarray(start_frames, dtype=np.float64) * mn.HOP / mn.SR
        ends, notes = _window_ends(starts, mn.PATCH_SECONDS, dur, hop_s)
        if padded:
            notes = [f"clip shorter than one window ({dur:.2f} s < 3 s): repeat-padded"] + notes
        return scores, starts, ends, notes

    def window_features(self, y: np.ndarray, window_s: float | None = None, hop_s: float | None = None):
        """``(X, starts, ends, notes)``: the windows a track is scored on, before normalisation."""
        hop_s = self.default_hop_s if hop_s is None else hop_s
        if self.front_end == "musicnn":
            mel, starts_f, starts, ends, notes = self._patch_windows(y, window_s, hop_s)
            return cut_patches(mel, starts_f)[0], starts, ends, notes
        p = self.params
        notes: list[str] = []
        dur = y.size / p.sample_rate
        if self.kind == "full":
            if dur < p.full_clip_s:
                notes.append(f"clip shorter than {p.full_clip_s:g} s: zero-padded")
            elif dur > p.full_clip_s + 0.5:
                notes.append(f"only the first {p.full_clip_s:g} s of {dur:.1f} s used (full-clip model)")
            return full_clip(y, p), np.zeros(1), np.full(1, min(dur, p.full_clip_s)), notes
        wp = self._window_params(window_s, hop_s)
        if y.size < wp.snippet_samples:
            notes.append(f"clip shorter than one window ({dur:.2f} s < {wp.snippet_s:g} s): zero-padded")
        X, starts = track_snippets(y, wp, step_s=hop_s, select=False)
        ends, more = _window_ends(starts, wp.snippet_s, dur, hop_s)
        return X, starts, ends, notes + more

    def _window_params(self, window_s: float | None, hop_s: float) -> FeatureParams:
        """The feature parameters of ``window_s``-second windows (the mel front end), checked against the model."""
        p = self.params
        if hop_s <= 0:
            raise PredictionInputError("hop must be positive")
        wp = p if window_s is None or abs(window_s - p.snippet_s) < 1e-9 else replace(
            p, snippet_s=float(window_s), overlap_s=0.0)
        if self._fixed_frames is not None and wp.snippet_frames != self._fixed_frames:
            raise PredictorError(f"this model takes exactly {self._fixed_frames} frames; window {window_s} s "
                                 f"gives {wp.snippet_frames}")
        if wp.snippet_frames < 8:
            raise PredictionInputError("window too short for the model (needs >= 8 frames)")
        return wp

    @staticmethod
    def _check_musicnn_window(window_s: float | None, hop_s: float) -> None:
        if window_s is not None and abs(window_s - mn.PATCH_SECONDS) > 1e-9:
            raise PredictorError(f"musicnn takes 3 s windows (187 frames), not {window_s} s")
        if hop_s <= 0:
            raise PredictionInputError("hop must be positive")

    def _patch_windows(self, y: np.ndarray, window_s: float | None, hop_s: float):
        """musicnn's front end: ``(log-mel, start frames, starts, ends, notes)`` of 3 s windows every ``hop_s``."""
        self._check_musicnn_window(window_s, hop_s)
        dur = y.size / mn.SR
        mel = mn.log_mel(y)
        notes = []
        if mel.shape[0] < mn.PATCH_FRAMES:
            notes.append(f"clip shorter than one window ({dur:.2f} s < 3 s): repeat-padded")
        starts_f = window_start_frames(mel.shape[0], hop_s)
        starts = starts_f * mn.HOP / mn.SR
        ends, more = _window_ends(starts, mn.PATCH_SECONDS, dur, hop_s)
        return mel, starts_f, starts, ends, notes + more

    def _keras_musicnn_scores(self, y: np.ndarray, window_s: float | None, hop_s: float):
        """The Keras path for musicnn: each combined model on the windows (the timbral front end shared when they
        overlap: :class:`core.musicnn.OverlappingWindows`), or the network's features and the heads."""
        mel, starts_f, starts, ends, notes = self._patch_windows(y, window_s, hop_s)
        shared = hop_s < mn.PATCH_SECONDS and len(starts_f) > 1 and mel.shape[0] >= mn.PATCH_FRAMES
        if self._keras_features is not None or not shared:
            return self.predict_features(cut_patches(mel, starts_f)[0]), starts, ends, notes
        total = np.zeros((len(starts_f), len(self.classes)))
        for i, m in enumerate(self._models):
            if i not in self._overlapping:
                self._overlapping[i] = mn.OverlappingWindows(m)
            total += np.asarray(self._overlapping[i].run(mel, starts_f, self.batch_size), dtype=np.float64)
        return total / len(self._models), starts, ends, notes

    def _score_signal(self, y: np.ndarray, window_s: float | None, hop_s: float):
        """``(window scores, starts, ends, notes)`` of a whole signal at the model's rate."""
        if self.front_end == "musicnn":
            if self.backend == "keras":
                return self._keras_musicnn_scores(y, window_s, hop_s)
            self._check_musicnn_window(window_s, hop_s)
            step = 60 * mn.SR
            scores, starts_f, n, padded, _ = self._musicnn_stream_scores(
                (y[a:a + step] for a in range(0, y.size, step)), hop_s)
            return self._musicnn_result(scores, starts_f, n, padded, hop_s)
        X, starts, ends, notes = self.window_features(y, window_s, hop_s)
        return self.predict_features(X), starts, ends, notes

    def _result(self, scores, starts, ends, aggregation: str, dur: float, notes: list[str], t0: float):
        agg = aggregate(scores, aggregation)
        return PredictionResult(self.classes, scores, starts, ends, aggregation, agg, int(np.argmax(agg)), dur,
                                notes, time.perf_counter() - t0)

    def _defaults(self, hop_s: float | None, aggregation: str | None) -> tuple[float, str]:
        """The model's defaults (the card's ``hop_s`` and ``aggregation``; else 1 s and sum) for None."""
        hop_s = self.default_hop_s if hop_s is None else float(hop_s)
        aggregation = self.default_aggregation if aggregation is None else aggregation
        _check_aggregation(aggregation)
        return hop_s, aggregation

    def predict_array(self, y: np.ndarray, sr: int | None = None, window_s: float | None = None,
                      hop_s: float | None = None, aggregation: str | None = None) -> PredictionResult:
        """Classify a mono signal (``sr`` defaults to the model's rate; other rates are resampled); ``hop_s`` and
        ``aggregation`` default to the model's (:attr:`default_hop_s`, :attr:`default_aggregation`). With the
        musicnn front end, overlapping windows (hop < 3 s) share one pass of the timbral convolutions."""
        hop_s, aggregation = self._defaults(hop_s, aggregation)
        t0 = time.perf_counter()
        y = np.asarray(y, dtype=np.float32)
        if y.ndim > 1:
            y = y.mean(axis=-1 if y.shape[-1] <= 8 else 0)
        if y.size == 0:
            raise PredictionInputError("empty signal")
        notes: list[str] = []
        if sr is not None and sr != self.sample_rate:
            from core.audio import resample

            y = resample(y, sr, self.sample_rate)
            notes.append(f"resampled {sr} Hz -> {self.sample_rate} Hz")
        scores, starts, ends, more = self._score_signal(y, window_s, hop_s)
        return self._result(scores, starts, ends, aggregation, y.size / self.sample_rate, notes + more, t0)

    def predict_file(self, path: str | os.PathLike, window_s: float | None = None, hop_s: float | None = None,
                     aggregation: str | None = None, progress=None, block_s: float = 60.0) -> PredictionResult:
        """Decode ``path`` (any format :func:`core.audio.load_audio` reads) at the model's rate and classify.
        Raises :class:`core.audio.AudioError` with a reason for unreadable files.

        Streamed, so memory is bounded for any length: the file is decoded in blocks of ``block_s`` seconds
        (:func:`core.audio.stream_audio`), the windows a block completes are scored and only their scores are
        kept (the samples, or musicnn's log-mel frames, a later window still needs are carried over). The
        windows, features and scores are those of :meth:`predict_array` on the whole decoded signal (the tests
        check equality). A full-clip model decodes only its clip; musicnn with the Keras backend decodes the
        whole file. ``progress(seconds_done, total_seconds | None)`` is called per block."""
        from core.audio import AudioError, audio_info, load_audio, load_audio_prefix, stream_audio

        hop_s, aggregation = self._defaults(hop_s, aggregation)
        if self.front_end == "musicnn":
            if self.backend == "keras":
                y = load_audio(path, self.sample_rate)
                if not np.any(y):
                    raise AudioError("digital silence: nothing to classify")
                return self.predict_array(y, None, window_s, hop_s, aggregation)
            self._check_musicnn_window(window_s, hop_s)
            t0 = time.perf_counter()
            info = audio_info(path)
            total_s = None if info is None else info[0] / info[1]
            scores, starts_f, n, padded, heard = self._musicnn_stream_scores(
                stream_audio(path, mn.SR, block_s), hop_s, progress, total_s)
            if not heard:
                raise AudioError("digital silence: nothing to classify")
            scores, starts, ends, notes = self._musicnn_result(scores, starts_f, n, padded, hop_s)
            return self._result(scores, starts, ends, aggregation, n / mn.SR, notes, t0)
        t0 = time.perf_counter()
        sr = self.sample_rate
        p = self.params
        if self.kind == "full":
            y, dur = load_audio_prefix(path, sr, p.full_samples)
            if not np.any(y):
                raise AudioError("digital silence: nothing to classify")
            dur = y.size / sr if dur is None else dur
            X, starts, ends, notes = self.window_features(y, window_s, hop_s)
            if dur > p.full_clip_s + 0.5:
                notes = [n for n in notes if "zero-padded" not in n]
                notes.append(f"only the first {p.full_clip_s:g} s of {dur:.1f} s used (full-clip model)")
            return self._result(self.predict_features(X), starts, ends, aggregation, dur, notes, t0)
        wp = self._window_params(window_s, hop_s)
        info = audio_info(path)
        total_s = None if info is None else info[0] / info[1]
        H, F, E = wp.hop_length, wp.snippet_frames, wp.edge_frames
        half = wp.n_fft // 2
        buf = np.zeros(0, np.float32)
        b0 = n = 0  # buf holds samples [b0, n) of the decoded signal
        k, f_prev = 0, -1  # next window index and the last start frame used
        pending: int | None = None  # start frame of the next window
        scores_parts: list[np.ndarray] = []
        starts_f: list[int] = []
        heard = False
        eof = False

        def next_start() -> int:
            nonlocal k, f_prev
            while True:
                f = int(round(k * hop_s * sr / H))
                k += 1
                if f > f_prev:
                    f_prev = f
                    return f

        blocks = stream_audio(path, sr, block_s)
        while not eof:
            block = next(blocks, None)
            if block is None:
                eof = True
            else:
                heard = heard or bool(np.any(block))
                buf = np.concatenate([buf, block]) if buf.size else block
                n += block.size
            if eof and n < wp.snippet_samples:  # shorter than one window: the whole-signal path pads it
                if not heard:
                    raise AudioError("digital silence: nothing to classify")
                return self.predict_array(buf, None, window_s, hop_s, aggregation)
            ready: list[int] = []
            while True:
                f = pending if pending is not None else next_start()
                pending = f
                if eof:
                    ok = f + F <= 1 + n // H and f * H + wp.snippet_samples <= n + H
                else:
                    ok = (f + F - 1) * H + half + 1 <= n
                if not ok:
                    break
                ready.append(f)
                pending = None
            if ready:
                for i in range(0, len(ready), 512):
                    part = ready[i:i + 512]
                    a = max(0, (part[0] - E) * H)
                    b = min(n, (part[-1] + F - 1) * H + half + 1 + H)
                    seg = buf[a - b0:b - b0]
                    mel = mel_spectrogram(seg, wp)
                    X = np.stack([mel[f - a // H: f - a // H + F] for f in part]).astype(np.float32)
                    if wp.peak_normalize:
                        offs = np.asarray([peak_offset_db(buf[f * H - b0: f * H - b0 + wp.snippet_samples])
                                           for f in part], np.float32)
                        X = X + offs[:, None, None] if wp.log else X * (10.0 ** (offs / 10.0))[:, None, None]
                    scores_parts.append(self.predict_features(X))
                    starts_f.extend(part)
            if progress is not None:
                progress(n / sr, total_s)
            if not eof:  # keep only what the next windows need
                nxt = pending if pending is not None else f_prev + 1
                keep_from = max(b0, min(n, max(0, (nxt - E) * H)))
                if keep_from > b0:
                    buf = buf[keep_from - b0:].copy()
                    b0 = keep_from
        if not heard:
            raise AudioError("digital silence: nothing to classify")
        scores = np.concatenate(scores_parts)
        dur = n / sr
        starts = np.asarray(starts_f, dtype=np.float64) * H / sr
        ends, notes = _window_ends(starts, wp.snippet_s, dur, hop_s)
        return self._result(scores, starts, ends, aggregation, dur, notes, t0)


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------
def register_cli(sub) -> None:
    p = sub.add_parser("predict", help="classify audio files with a trained model (or tag them with musicnn)",
                       description="Classify audio files: one line per file (file, class, score, windows) "
                                   "on stdout, after a header on stderr (model, members, classes, windows). "
                                   "Unreadable files are reported with a reason and make the exit code 1. Runs "
                                   "the model in NumPy when it can (every shipped model: no TensorFlow import), "
                                   "else with Keras. A converted musicnn folder (musicnn_card.json, e.g. "
                                   "models/msd-musicnn) is a tagger: one line per file with its top tags.")
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, mp3, flac, ogg, au, m4a ...)")
    p.add_argument("--model", required=True,
                   help="a model folder (model_card.json + its model files), a .keras file with model_card.json "
                        "beside it, a run folder, or a musicnn tagger folder (musicnn_card.json)")
    p.add_argument("--window", type=float, default=None, help="window length in s (default: training snippet)")
    p.add_argument("--hop", type=float, default=None,
                   help="hop between windows in s (default: the model card's hop_s, else 1; a tagger: 3)")
    p.add_argument("--aggregation", choices=AGGREGATIONS, default=None,
                   help="window aggregation (default: the model card's aggregation, else sum)")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto: NumPy when the model allows it (every shipped kind), else Keras (%(default)s)")
    p.add_argument("--top", type=int, default=5, help="tags per file for a musicnn tagger (%(default)s)")
    p.set_defaults(func=_cli_predict)


def _cli_predict(a) -> int:
    from core.audio import AudioError

    if is_tagger_folder(a.model):
        return _cli_tags(a)
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # only matters if the model needs Keras
    _quiet_backend_logs()
    with _without_tensorflow_banner():  # a PredictorError goes to core.__main__: "error: ...", exit code 2
        pred = Predictor(a.model, a.backend)
    if not a.json:  # on stderr: stdout stays one line per file (for `> results.tsv` and scripts)
        print(_predict_header(pred, a), file=sys.stderr, flush=True)
    failed = 0
    for f in a.files:
        try:
            r = pred.predict_file(f, a.window, a.hop, a.aggregation, progress=_ProgressLine(f))
        except (AudioError, ValueError, PredictorError) as exc:
            failed += 1
            if a.json:
                print(json.dumps({"file": f, "error": str(exc)}), flush=True)
            else:
                print(f"{one_line(f)}\terror: {one_line(str(exc))}", flush=True)
            continue
        if a.json:
            d = r.to_dict()
            for k in ("window_scores", "window_starts", "window_ends"):
                d.pop(k)
            print(json.dumps({"file": f, **d}), flush=True)
        else:
            note = f"\t({one_line('; '.join(r.notes))})" if r.notes else ""
            print(f"{one_line(f)}\t{one_line(r.predicted)}\t{r.score:.3f}\t{r.n_windows} windows{note}", flush=True)
    if failed:
        print(f"{failed} of {len(a.files)} files could not be classified", file=sys.stderr)
    return 1 if failed else 0


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text: str) -> str:
    """``text`` with every control or line-breaking character escaped (``\\n``, ``\\t``, ``\\x1b``, ``\\u2028``
    ...), so a file or class name can never break ``predict``'s one line per file and tab-separated columns
    (the ``--json`` output is escaped by JSON itself)."""
    import unicodedata

    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


class _ProgressLine:
    """Progress of a long file on stderr (files over 10 minutes): ``FILE: 12.0 of 120.0 min decoded``."""

    LONG_S = 600.0

    def __init__(self, name: str):
        self.name, self.shown, self.last = name, False, 0.0

    def __call__(self, done_s: float, total_s: float | None) -> None:
        if max(done_s, total_s or 0.0) < self.LONG_S or time.monotonic() - self.last < 1.0:
            return
        self.last, self.shown = time.monotonic(), True
        of = f" of {total_s / 60:.1f}" if total_s else ""
        print(f"{one_line(self.name)}: {done_s / 60:.1f}{of} min classified", file=sys.stderr, flush=True)


def _predict_header(pred: "Predictor", a) -> str:
    """What ``predict`` prints before its table: the model (and an ensemble's members), its classes, how windows
    are cut (the model's own defaults say so) and the columns."""
    card = pred.card
    name = card.get("name") or pred.folder.name
    backend = "NumPy" if pred.backend == "numpy" else "Keras"
    where = pred.folder if pred.members else pred.model_path
    lines = [f"# model {one_line(str(name))} ({one_line(str(where))}), {len(pred.classes)} classes: "
             f"{', '.join(one_line(c) for c in pred.classes)}"]
    if pred.members:
        lines.append(f"# ensemble of {len(pred.members)} members (mean of their class scores): "
                     f"{', '.join(one_line(m) for m in pred.members)}")
    emb = pred.embedding
    if emb:
        lines.append(f"# musicnn {emb['network']} ({emb['weights']}) features: {' + '.join(emb['features'])}")
    if pred.kind == "full":
        how = f"one {pred.params.full_clip_s:g} s clip per file"
    else:
        hop = pred.default_hop_s if a.hop is None else a.hop
        agg = pred.default_aggregation if a.aggregation is None else a.aggregation
        own = [k for k, given in (("hop", a.hop), ("aggregation", a.aggregation))
               if given is None and card.get("hop_s" if k == "hop" else "aggregation") is not None]
        how = (f"{a.window or pred.params.snippet_s:g} s windows every {hop:g} s, aggregation: {agg}"
               + (f" ({' and '.join(own)}: the model's default)" if own else ""))
    lines += [f"# {how}; {backend} inference", "file\tclass\tscore\twindows"]
    return "\n".join(lines)


def _cli_tags(a) -> int:
    """``predict`` with a converted musicnn folder: the top tags of each file (mean tag likelihood over its 3 s
    windows, every 3 s by default: musicnn's own extractor), in NumPy."""
    from core.audio import AudioError, audio_info
    from core import musicnn_numpy as mnp

    folder = Path(a.model)
    try:
        card = json.loads((folder / mn.CARD_FILE).read_text())
        labels = list(card["labels"])
        net = mnp.network(folder)
    except (ValueError, OSError, KeyError, TypeError, mnp.MusicnnNumpyError) as exc:
        raise PredictorError(f"{folder} is not a usable musicnn folder: {exc}") from exc
    if len(labels) != net.n_tags:
        raise PredictorError(f"{folder / mn.CARD_FILE} lists {len(labels)} labels, the network has {net.n_tags} tags")
    if a.window is not None and abs(a.window - mn.PATCH_SECONDS) > 1e-9:
        raise PredictorError(f"musicnn takes 3 s windows, not {a.window} s")
    if a.aggregation not in (None, "sum"):
        print(f"note: --aggregation {a.aggregation} does not apply to tags (mean likelihood per tag)", file=sys.stderr)
    hop = mn.PATCH_SECONDS if a.hop is None else a.hop
    top = max(1, min(a.top, len(labels)))
    if not a.json:
        print(f"# model {card.get('name') or folder.name} ({folder}): musicnn {card.get('model', '')} tagger, "
              f"{len(labels)} tags (not a genre classifier)\n"
              f"# top {top} tags by mean likelihood over 3 s windows every {hop:g} s; NumPy inference\n"
              "file\ttags\twindows", file=sys.stderr, flush=True)
    failed = 0
    for f in a.files:
        line = _ProgressLine(f)
        try:
            info = audio_info(f) if Path(f).exists() else None
            total = None if info is None else info[0] / info[1]
            wf = mnp.file_window_features(f, ["taggram"], hop, net, progress=lambda d, _w: line(d, total))
        except (AudioError, ValueError) as exc:
            failed += 1
            print(json.dumps({"file": f, "error": str(exc)}) if a.json else f"{one_line(f)}\terror: {one_line(str(exc))}", flush=True)
            continue
        mean = wf.features["taggram"].mean(axis=0)
        order = np.argsort(-mean)[:top]
        if a.json:
            print(json.dumps({"file": f, "tags": {labels[i]: round(float(mean[i]), 4) for i in order},
                              "n_windows": wf.n_windows, "duration_s": round(wf.duration_s, 3)}), flush=True)
        else:
            note = "\t(shorter than one window: repeat-padded)" if wf.padded else ""
            print(f"{one_line(f)}\t{', '.join(f'{one_line(labels[i])} {mean[i]:.2f}' for i in order)}\t{wf.n_windows} windows{note}",
                  flush=True)
    if failed:
        print(f"{failed} of {len(a.files)} files could not be tagged", file=sys.stderr)
    return 1 if failed else 0


#: What TensorFlow's C++ side prints on import and on its first graph whatever TF_CPP_MIN_LOG_LEVEL says
#: ("All log messages before absl::InitializeLog() ...", "I0000 ... port.cc:153] oneDNN custom operations ...").
_TF_BANNER = ("All log messages before absl::InitializeLog()", "oneDNN custom operations", "cpu_feature_guard",
              "Unable to register cu", "TF-TRT Warning", "computation placer already registered")


class _without_tensorflow_banner:
    """Capture file descriptor 2 while the predictor is built (TensorFlow's import and warm-up happen there, when
    the Keras fallback is needed) and pass on every line that is not TensorFlow's start-up banner."""

    def __enter__(self):
        import tempfile

        sys.stderr.flush()
        self._saved = os.dup(2)
        self._tmp = tempfile.TemporaryFile(mode="w+b")
        os.dup2(self._tmp.fileno(), 2)
        return self

    def __exit__(self, *exc) -> bool:
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._tmp.seek(0)
        kept = [ln for ln in self._tmp.read().decode("utf-8", "replace").splitlines(keepends=True)
                if not any(b in ln for b in _TF_BANNER)]
        self._tmp.close()
        if kept:
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
        return False


def _quiet_backend_logs() -> None:
    """Hide TensorFlow's Python-side retracing warnings in CLI output (they are expected here)."""
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
