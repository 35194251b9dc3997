"""Evaluation at three levels, and comparison across seeds.

* **segment**: every val/test snippet of the dataset is classified on its own;
* **track** (``track_sum``, ``track_vote``, ``track_logprob``): each val/test track's audio (``abs_path`` in
  the manifest) goes through the :class:`core.predictor.Predictor` code path: re-cut into windows of the
  training snippet length with a 1 s hop, scored, aggregated three ways;
* **full**: a full-clip model, one prediction per track.

Per run: accuracy, macro-F1, confusion matrix, per-class precision/recall and the predictions. Across seeds:
mean ± SD and a paired test of two levels (``scipy.stats.ttest_rel``; also Wilcoxon signed-rank for n >= 6).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import numpy as np

from core.errors import GenreLabError
from core.predictor import AGGREGATIONS, Predictor, aggregate

LEVELS = ("segment", "track_sum", "track_vote", "track_logprob", "full")


class EvaluationError(GenreLabError):
    """Evaluation cannot run (e.g. a track's audio is gone); the message is for the user."""


# ---------------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------------
def confusion_matrix(y_true: Iterable[int], y_pred: Iterable[int], n_classes: int) -> np.ndarray:
    """``cm[i, j]`` = number of items of true class ``i`` predicted as ``j``."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(list(y_true), int), np.asarray(list(y_pred), int)), 1)
    return cm


def classification_metrics(y_true, y_pred, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 (over classes present in truth or predictions), per-class precision/recall/F1
    and the confusion matrix (rows = truth)."""
    y_true, y_pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    n = len(classes)
    cm = confusion_matrix(y_true, y_pred, n)
    tp = np.diag(cm).astype(float)
    pred_n, true_n = cm.sum(axis=0).astype(float), cm.sum(axis=1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(pred_n > 0, tp / pred_n, 0.0)
        recall = np.where(true_n > 0, tp / true_n, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = (pred_n + true_n) > 0
    return {
        "n": int(y_true.size),
        "accuracy": float((y_true == y_pred).mean()) if y_true.size else math.nan,
        "macro_f1": float(f1[present].mean()) if present.any() else math.nan,
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                          "support": int(true_n[i])} for i, c in enumerate(classes)},
        "confusion": cm.tolist(),
        "classes": list(classes),
    }


# ---------------------------------------------------------------------------------------------------------
# levels
# ---------------------------------------------------------------------------------------------------------
def _manifest_rows(dataset, split: str):
    m = dataset.manifest
    return m.iloc[np.asarray(dataset.track(split))] if len(dataset.y(split)) else m.iloc[[]]


def segment_level(predictor: Predictor, dataset, split: str, chunk: int = 512) -> dict[str, Any]:
    """Classify each snippet of ``split`` (from the dataset arrays, normalised like in training). Full-clip
    rows stored longer than the model's input (random-crop training) are cut to their first ``full_clip_s``."""
    X, y = dataset.X(split), np.asarray(dataset.y(split))
    if len(y) == 0:
        raise EvaluationError(f"the {split} split of {dataset.path} is empty")
    T = dataset.params.input_frames
    scores = np.concatenate([predictor.predict_features(np.asarray(X[a:a + chunk, :T]))
                             for a in range(0, len(y), chunk)])
    pred = scores.argmax(axis=1)
    rows = _manifest_rows(dataset, split)
    starts = np.asarray(dataset.start(split))
    predictions = [{"track": p, "start_s": float(s), "true": dataset.classes[t], "pred": dataset.classes[q],
                    "scores": sc} for p, s, t, q, sc in zip(rows["path"], starts, y, pred, scores.round(5).tolist())]
    return {"metrics": classification_metrics(y, pred, dataset.classes), "predictions": predictions}


def track_level(predictor: Predictor, dataset, split: str, hop_s: float = 1.0,
                progress: Callable[[int, int, str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Each track of ``split`` decoded from its audio file and classified by windows; all aggregations.
    Returns ``{"track_sum": {...}, "track_vote": {...}, "track_logprob": {...}}``."""
    from core.audio import AudioError, load_audio

    tracks = dataset.tracks(split)
    if len(tracks) == 0:
        raise EvaluationError(f"the {split} split of {dataset.path} has no tracks")
    cidx = {c: i for i, c in enumerate(dataset.classes)}
    y_true, preds = [], {a: [] for a in AGGREGATIONS}
    records = {a: [] for a in AGGREGATIONS}
    for k, row in enumerate(tracks.to_dict("records")):
        try:
            y = load_audio(row["abs_path"], predictor.sample_rate)
        except AudioError as exc:
            raise EvaluationError(f"track-level evaluation needs the source audio; {row['abs_path']}: {exc}") from exc
        res = predictor.predict_array(y, None, hop_s=hop_s, aggregation="sum")
        y_true.append(cidx[row["class"]])
        for a in AGGREGATIONS:
            agg = aggregate(res.window_scores, a)
            q = int(np.argmax(agg))
            preds[a].append(q)
            records[a].append({"track": row["path"], "start_s": 0.0, "true": row["class"],
                               "pred": dataset.classes[q], "scores": np.round(agg, 5).tolist(),
                               "n_windows": res.n_windows})
        if progress:
            progress(k + 1, len(tracks), row["path"])
    return {f"track_{a}": {"metrics": classification_metrics(y_true, preds[a], dataset.classes),
                           "predictions": records[a]} for a in AGGREGATIONS}


def full_level(predictor: Predictor, dataset, split: str) -> dict[str, Any]:
    """A full-clip model on a full-clip dataset: one prediction per track."""
    if dataset.params.mode != "full":
        raise EvaluationError("full-clip evaluation needs a full-clip dataset")
    out = segment_level(predictor, dataset, split)
    for p in out["predictions"]:
        p.pop("start_s", None)
    return out


def run_predictor(run_dir) -> Predictor:
    """A trained run's model for :func:`evaluate_run`: Keras in batches of 256 (the training process has Keras
    loaded anyway, and on thousands of windows its throughput is several times NumPy's)."""
    return Predictor(run_dir, "keras", batch_size=256)


def evaluate_run(predictor: Predictor, dataset, kind: str, splits=("val", "test"), hop_s: float = 1.0,
                 track_level_eval: bool = True, progress=None) -> dict[tuple[str, str], dict]:
    """All levels for one trained model: ``{(level, split): {"metrics": ..., "predictions": [...]}}``.
    Splits without tracks are left out."""
    out: dict[tuple[str, str], dict] = {}
    for split in splits:
        if len(dataset.y(split)) == 0:
            continue
        if kind == "full":
            out[("full", split)] = full_level(predictor, dataset, split)
            continue
        out[("segment", split)] = segment_level(predictor, dataset, split)
        if track_level_eval:
            for level, r in track_level(predictor, dataset, split, hop_s, progress).items():
                out[(level, split)] = r
    return out


# ---------------------------------------------------------------------------------------------------------
# across seeds
# ---------------------------------------------------------------------------------------------------------
def mean_sd(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def paired_test(a, b) -> dict[str, Any]:
    """Paired comparison of two score lists over the same seeds (``a`` - ``b``).

    Returns mean difference, ``ttest_rel`` statistic and p-value (NaN for n < 2 or zero variance) and,
    for n >= 6, the Wilcoxon signed-rank p-value.
    """
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError("paired test needs equally long lists")
    n = int(a.size)
    d = a - b
    out: dict[str, Any] = {"n": n, "mean_diff": float(d.mean()) if n else math.nan,
                           "t": math.nan, "p_ttest": math.nan, "p_wilcoxon": None}
    if n >= 2 and np.std(d) > 0:
        t = stats.ttest_rel(a, b)
        out.update(t=float(t.statistic), p_ttest=float(t.pvalue))
    elif n >= 2:
        out["note"] = "identical differences on every seed: the t-test is undefined"
    if n >= 6:
        try:
            out["p_wilcoxon"] = float(stats.wilcoxon(a, b).pvalue)
        except ValueError as exc:  # all differences zero
            out["note"] = f"wilcoxon: {exc}"
    return out


def compare_levels(results, level_a: str = "track_sum", level_b: str = "segment", split: str = "test",
                   metric: str = "accuracy", kind: str = "snippet") -> dict[str, Any]:
    """Paired test of two levels over the seeds present in a results frame (see ``core.store.results_frame``)."""
    df = results[(results["split"] == split) & (results["kind"] == kind)]
    a = df[df["level"] == level_a].set_index("seed")[metric]
    b = df[df["level"] == level_b].set_index("seed")[metric]
    seeds = sorted(set(a.index) & set(b.index))
    out = paired_test(a.loc[seeds].to_numpy(), b.loc[seeds].to_numpy())
    out.update(a=level_a, b=level_b, split=split, metric=metric, kind=kind, seeds=[int(s) for s in seeds])
    return out
