"""Inference on any audio: a trained model + the preprocessing it was trained with, loaded once.

Track-level inference re-cuts the whole track into windows of the training snippet length with its own hop
(default 1 s: 3 s windows overlapping by 2 s), predicts all windows in batches and aggregates the window
scores into one decision:

* ``"sum"``      sum of the class scores (the article's rule);
* ``"vote"``     majority vote of the window decisions (ties -> higher score sum);
* ``"logprob"``  mean log-probability (product of probabilities, i.e. independent-evidence rule).

Full-clip models predict once on the first ``full_clip_s`` seconds (zero-padded).

Every model folder has a ``model_card.json`` next to the ``.keras`` file: classes, feature parameters,
normalisation statistics and method, model kind; :func:`write_model_card` writes it.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.features import FeatureParams, full_clip, track_snippets
from core.utils import atomic_write_json, read_json

AGGREGATIONS = ("sum", "vote", "logprob")
CARD_NAME = "model_card.json"
CARD_FORMAT = 1
EPS = 1e-7


class PredictorError(Exception):
    """A model or model card that cannot be used; the message is for the user."""


# ---------------------------------------------------------------------------------------------------------
# aggregation
# ---------------------------------------------------------------------------------------------------------
def aggregate(window_scores: np.ndarray, method: str = "sum") -> np.ndarray:
    """Aggregate ``(n_windows, n_classes)`` softmax scores into one ``(n_classes,)`` vector per the method.

    ``sum``: summed scores; ``vote``: number of windows whose top class is each class, plus a tie-breaking
    ``1e-6 x`` score sum; ``logprob``: mean log-probability. The argmax of each is the decision.
    """
    s = np.asarray(window_scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0:
        raise ValueError("window_scores must be a non-empty (n_windows, n_classes) array")
    if method == "sum":
        return s.sum(axis=0)
    if method == "vote":
        votes = np.bincount(s.argmax(axis=1), minlength=s.shape[1]).astype(np.float64)
        return votes + 1e-6 * s.sum(axis=0) / s.shape[0]
    if method == "logprob":
        return np.log(np.clip(s, EPS, 1.0)).mean(axis=0)
    raise ValueError(f"unknown aggregation {method!r} (use one of {AGGREGATIONS})")


def confidence(agg: np.ndarray, method: str, n_windows: int) -> np.ndarray:
    """Aggregated values mapped to a distribution that sums to 1 (for display)."""
    a = np.asarray(agg, dtype=np.float64)
    if method == "logprob":
        e = np.exp(a - a.max())
        return e / e.sum()
    a = np.maximum(a, 0)
    return a / a.sum() if a.sum() > 0 else np.full_like(a, 1 / a.size)


# ---------------------------------------------------------------------------------------------------------
# model card
# ---------------------------------------------------------------------------------------------------------
def make_model_card(kind: str, classes: list[str], params: FeatureParams | dict, norm: dict, norm_method: str,
                    **extra: Any) -> dict:
    p = params.to_dict() if isinstance(params, FeatureParams) else dict(params)
    card = {"format": CARD_FORMAT, "kind": kind, "classes": list(classes), "params": p,
            "norm": {k: norm[k] for k in ("min", "max", "mean", "std") if k in norm},
            "norm_method": norm_method}
    card.update(extra)
    return card


def write_model_card(folder: str | os.PathLike, card: dict) -> Path:
    path = Path(folder) / CARD_NAME
    atomic_write_json(path, card)
    return path


def read_model_card(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise PredictorError(f"no {CARD_NAME} at {path}: a model needs its card (classes, features, normalisation)")
    try:
        card = read_json(path)
    except (ValueError, OSError) as exc:
        raise PredictorError(f"{path} is not a readable model card: {exc}") from exc
    if card.get("format", 0) > CARD_FORMAT:
        raise PredictorError(f"{path} was written by a newer Genre Lab (card format {card['format']}); update")
    missing = [k for k in ("kind", "classes", "params", "norm", "norm_method") if k not in card]
    if missing:
        raise PredictorError(f"model card {path} lacks {', '.join(missing)}")
    return card


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
def resolve_model_path(path: str | os.PathLike) -> Path:
    """A ``.keras`` file, or a folder holding ``best.keras`` (a run folder) or a single ``.keras`` file."""
    p = Path(path)
    if p.is_dir():
        if (p / "best.keras").exists():
            return p / "best.keras"
        found = sorted(p.glob("*.keras"))
        if len(found) == 1:
            return found[0]
        raise PredictorError(f"{p} holds {'no' if not found else 'several'} .keras model files: name one")
    if not p.exists():
        raise PredictorError(f"model file not found: {p}")
    return p


class Predictor:
    """A trained model with its preprocessing. ``Predictor(path)`` accepts a ``.keras`` file or its folder;
    the card is read from ``card`` or ``model_card.json`` beside the model."""

    def __init__(self, model_path: str | os.PathLike, card: str | os.PathLike | dict | None = None,
                 batch_size: int = 256, warmup: bool = True):
        self.model_path = resolve_model_path(model_path)
        if isinstance(card, dict):
            self.card = card
        else:
            self.card = read_model_card(card or self.model_path.parent / CARD_NAME)
        self.kind: str = self.card["kind"]
        self.classes: list[str] = list(self.card["classes"])
        self.params = FeatureParams.from_dict(self.card["params"])
        self.norm: dict = self.card["norm"]
        self.norm_method: str = self.card["norm_method"]
        self.batch_size = batch_size
        from core.train import TrainError, load_model

        try:
            self.model = load_model(self.model_path, compile=False)
        except TrainError as exc:
            raise PredictorError(str(exc)) from exc
        n_out = int(self.model.output_shape[-1])
        if n_out != len(self.classes):
            raise PredictorError(f"the model has {n_out} outputs but its card lists {len(self.classes)} classes")
        if int(self.model.input_shape[2]) != self.params.n_mels:
            raise PredictorError(f"the model takes {self.model.input_shape[2]} mel bands, its card says "
                                 f"{self.params.n_mels}")
        self._fixed_frames = self.model.input_shape[1]
        if warmup:  # two shapes: Keras' predict function then retraces once to a shape-generic graph
            f = self.params.input_frames
            self.predict_features(np.zeros((1, f, self.params.n_mels), np.float32))
            self.predict_features(np.zeros((2, f if self._fixed_frames else f + 8, self.params.n_mels), np.float32))

    @property
    def sample_rate(self) -> int:
        return self.params.sample_rate

    def predict_features(self, X: np.ndarray) -> np.ndarray:
        """Softmax scores of raw windows ``(k, frames, n_mels)``: normalised, then predicted in batches of up to
        ``batch_size`` (large batches are ~1.6x faster per window than 32 on CPU)."""
        from core.dataset import apply_norm

        X = apply_norm(X, self.norm, self.norm_method)[..., None]
        out = []
        bs = self.batch_size
        for a in range(0, X.shape[0], bs):
            out.append(np.asarray(self.model.predict_on_batch(X[a:a + bs]), dtype=np.float64))
        return np.concatenate(out)

    def window_features(self, y: np.ndarray, window_s: float | None = None, hop_s: float = 1.0):
        """``(X, starts, ends, notes)``: the windows a track is scored on, before normalisation."""
        p = self.params
        notes: list[str] = []
        dur = y.size / p.sample_rate
        if self.kind == "full":
            if dur < p.full_clip_s:
                notes.append(f"clip shorter than {p.full_clip_s:g} s: zero-padded")
            elif dur > p.full_clip_s + 0.5:
                notes.append(f"only the first {p.full_clip_s:g} s of {dur:.1f} s used (full-clip model)")
            return full_clip(y, p), np.zeros(1), np.full(1, min(dur, p.full_clip_s)), notes
        if hop_s <= 0:
            raise ValueError("hop must be positive")
        wp = p if window_s is None or abs(window_s - p.snippet_s) < 1e-9 else replace(
            p, snippet_s=float(window_s), overlap_s=0.0)
        if self._fixed_frames is not None and wp.snippet_frames != self._fixed_frames:
            raise PredictorError(f"this model takes exactly {self._fixed_frames} frames; window {window_s} s "
                                 f"gives {wp.snippet_frames}")
        if wp.snippet_frames < 8:
            raise ValueError("window too short for the model (needs >= 8 frames)")
        if y.size < wp.snippet_samples:
            notes.append(f"clip shorter than one window ({dur:.2f} s < {wp.snippet_s:g} s): zero-padded")
        X, starts = track_snippets(y, wp, step_s=hop_s, select=False)
        ends = np.minimum(starts + wp.snippet_s, max(dur, wp.snippet_s))
        covered = float(ends[-1]) if len(ends) else 0.0
        if dur - covered > hop_s:
            notes.append(f"last {dur - covered:.2f} s not covered by a full window")
        return X, starts, ends, notes

    def predict_array(self, y: np.ndarray, sr: int | None = None, window_s: float | None = None,
                      hop_s: float = 1.0, aggregation: str = "sum") -> PredictionResult:
        """Classify a mono signal (``sr`` defaults to the model's rate; other rates are resampled)."""
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r} (use one of {AGGREGATIONS})")
        t0 = time.perf_counter()
        y = np.asarray(y, dtype=np.float32)
        if y.ndim > 1:
            y = y.mean(axis=-1 if y.shape[-1] <= 8 else 0)
        if y.size == 0:
            raise ValueError("empty signal")
        notes: list[str] = []
        if sr is not None and sr != self.sample_rate:
            from core.audio import resample

            y = resample(y, sr, self.sample_rate)
            notes.append(f"resampled {sr} Hz -> {self.sample_rate} Hz")
        X, starts, ends, more = self.window_features(y, window_s, hop_s)
        scores = self.predict_features(X)
        agg = aggregate(scores, aggregation)
        return PredictionResult(self.classes, scores, starts, ends, aggregation, agg, int(np.argmax(agg)),
                                y.size / self.sample_rate, notes + more, time.perf_counter() - t0)

    def predict_file(self, path: str | os.PathLike, window_s: float | None = None, hop_s: float = 1.0,
                     aggregation: str = "sum") -> PredictionResult:
        """Decode ``path`` (any format :func:`core.audio.load_audio` reads) at the model's rate and classify.
        Raises :class:`core.audio.AudioError` with a reason for unreadable files."""
        from core.audio import AudioError, load_audio

        y = load_audio(path, self.sample_rate)
        if not np.any(y):
            raise AudioError("digital silence: nothing to classify")
        return self.predict_array(y, None, window_s, hop_s, aggregation)


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------
def register_cli(sub) -> None:
    p = sub.add_parser("predict", help="classify audio files with a trained model",
                       description="Classify audio files: one line per file (file, class, score, windows) "
                                   "on stdout, after a header on stderr (model, classes, windows). Unreadable "
                                   "files are reported with a reason and make the exit code 1. Runs the model "
                                   "in NumPy when it can (no TensorFlow import), else with Keras.")
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, mp3, flac, ogg, au, m4a ...)")
    p.add_argument("--model", required=True, help="a .keras file with model_card.json beside it, or a run folder")
    p.add_argument("--window", type=float, default=None, help="window length in s (default: training snippet)")
    p.add_argument("--hop", type=float, default=1.0, help="hop between windows in s (%(default)s)")
    p.add_argument("--aggregation", choices=AGGREGATIONS, default="sum", help="window aggregation (%(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    p.set_defaults(func=_cli_predict)


def _cli_predict(a) -> int:
    from core.audio import AudioError
    from core.lite_inference import make_predictor

    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # only matters if the model needs the Keras fallback
    _quiet_backend_logs()
    try:  # NumPy inference when the model allows it (no TensorFlow import), else Keras
        pred = make_predictor(a.model)
    except PredictorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not a.json:  # on stderr: stdout stays one line per file (for `> results.tsv` and scripts)
        print(_predict_header(pred, a), file=sys.stderr, flush=True)
    failed = 0
    for f in a.files:
        try:
            r = pred.predict_file(f, a.window, a.hop, a.aggregation)
        except (AudioError, ValueError, PredictorError) as exc:
            failed += 1
            if a.json:
                print(json.dumps({"file": f, "error": str(exc)}), flush=True)
            else:
                print(f"{f}\terror: {exc}", flush=True)
            continue
        if a.json:
            d = r.to_dict()
            for k in ("window_scores", "window_starts", "window_ends"):
                d.pop(k)
            print(json.dumps({"file": f, **d}), flush=True)
        else:
            note = f"\t({'; '.join(r.notes)})" if r.notes else ""
            print(f"{f}\t{r.predicted}\t{r.score:.3f}\t{r.n_windows} windows{note}", flush=True)
    if failed:
        print(f"{failed} of {len(a.files)} files could not be classified", file=sys.stderr)
    return 1 if failed else 0


def _predict_header(pred: "Predictor", a) -> str:
    """What ``predict`` prints before its table: the model, its classes, how windows are cut and the columns."""
    card = pred.card
    name = card.get("name") or pred.model_path.parent.name
    backend = "NumPy" if getattr(pred, "backend", "") == "numpy" else "Keras"
    if pred.kind == "full":
        how = f"one {pred.params.full_clip_s:g} s clip per file"
    else:
        how = (f"{a.window or pred.params.snippet_s:g} s windows every {a.hop:g} s, "
               f"aggregation: {a.aggregation}")
    return (f"# model {name} ({pred.model_path}), {len(pred.classes)} classes: {', '.join(pred.classes)}\n"
            f"# {how}; {backend} inference\n"
            "file\tclass\tscore\twindows")


def _quiet_backend_logs() -> None:
    """Hide TensorFlow's Python-side retracing warnings in CLI output (they are expected here)."""
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
