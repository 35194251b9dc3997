"""Words of the dashboard: the one set of labels for model kinds and evaluation levels, and paired comparisons
across seeds put into sentences. Pure functions (no Streamlit), so pages, charts and tests share them."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Model kinds (``runs.kind`` in the store, ``kind`` in a model card).
KIND_LABELS = {"snippet": "snippet CRNN", "full": "30 s CRNN", "linear": "linear baseline",
               "musicnn": "musicnn embedding + head"}
#: What each kind does, in a line (the demo page's model card).
KIND_DESCRIPTIONS = {"snippet": "snippet CRNN (votes over windows)", "full": "30 s CRNN (one look at the clip)",
                     "linear": "linear baseline: mel-band mean/std + softmax regression (votes over windows)",
                     "musicnn": "pretrained musicnn embeddings + a small head (votes over windows)"}
#: Evaluation levels (``metrics.level`` in the store): short labels for tables and selectors ...
LEVEL_LABELS = {"segment": "segment", "track_sum": "track (sum)", "track_vote": "track (vote)",
                "track_logprob": "track (log-prob)", "full": "30 s clip"}
#: ... and the same levels inside a sentence.
LEVEL_PHRASES = {"segment": "segment-level", "track_sum": "track-level (sum)", "track_vote": "track-level (vote)",
                 "track_logprob": "track-level (log-prob)", "full": "the 30 s model"}


def kind_label(kind: str) -> str:
    return KIND_LABELS.get(kind, kind)


def level_label(level: str) -> str:
    return LEVEL_LABELS.get(level, level)


def model_phrases(kind: str, level: str) -> tuple[str, str]:
    """How a model's accuracy reads in a comparison: ``("the snippet CRNN's track-level accuracy",
    "the snippet CRNN's")`` (as subject, as object)."""
    owner = f"the {kind_label(kind)}'s"
    what = {"track_sum": "track-level", "full": ""}.get(level, LEVEL_PHRASES.get(level, level))
    return f"{owner} {what + ' ' if what else ''}accuracy", owner


def _paired_words(a, b, name_a: str, name_b: str) -> dict[str, Any] | None:
    """Two accuracy series indexed by seed, compared over their common seeds (``core.evaluate.paired_test``)
    and put into one sentence: ``{"text", "n", "wins", "mean_diff", "p"}``; None when no seed has both."""
    from core.evaluate import paired_test

    seeds = sorted(set(a.index) & set(b.index))
    if not seeds:
        return None
    va, vb = a.loc[seeds].to_numpy(dtype=float), b.loc[seeds].to_numpy(dtype=float)
    d = va - vb
    if len(seeds) >= 2 and np.ptp(d) <= 1e-12:  # the same difference in every seed (e.g. two deterministic
        t = {"mean_diff": float(d.mean()), "p_ttest": math.nan, "p_wilcoxon": None}  # fits): no test
    else:
        t = paired_test(va, vb)
    wins = int(sum(a.loc[s] > b.loc[s] for s in seeds))
    ties = int(sum(a.loc[s] == b.loc[s] for s in seeds))
    diff = 100 * t["mean_diff"]
    n = len(seeds)
    if n == 1:
        text = (f"{name_a} {'beat' if diff > 0 else 'did not beat'} {name_b} on the one seed run "
                f"({diff:+.1f} points); run more seeds for a paired test.")
    else:
        p = t["p_ttest"]
        ptxt = f"p = {p:.3g} (paired t-test)" if p is not None and not math.isnan(p) else \
            "no p-value (the difference is the same in every seed)"
        if ties == n:
            text = f"{name_a} and {name_b} were equally accurate in all {n} seeds (difference 0), {ptxt}."
        else:
            tie_txt = f" (tied in {ties})" if ties else ""
            text = f"{name_a} beat {name_b} in {wins} of {n} seeds{tie_txt}, mean {diff:+.1f} points, {ptxt}."
        if t.get("p_wilcoxon") is not None:
            text = text[:-1] + f"; Wilcoxon signed-rank p = {t['p_wilcoxon']:.3g}."
    return {"text": text[0].upper() + text[1:], "n": n, "wins": wins, "mean_diff": t["mean_diff"],
            "p": t.get("p_ttest")}


def _accuracy_by_seed(results, kind: str, level: str, split: str):
    df = results[(results["split"] == split) & (results["kind"] == kind) & (results["level"] == level)]
    return df.drop_duplicates("seed").set_index("seed")["accuracy"]


def paired_sentence(results, level_a: str = "track_sum", level_b: str = "segment", split: str = "test",
                    kind: str = "snippet") -> dict[str, Any] | None:
    """The paired comparison of two levels of one model kind over seeds in plain words:
    ``{"text", "n", "wins", "mean_diff", "p"}``, or None when no seed has both levels."""
    return _paired_words(_accuracy_by_seed(results, kind, level_a, split),
                         _accuracy_by_seed(results, kind, level_b, split),
                         LEVEL_PHRASES.get(level_a, level_a), LEVEL_PHRASES.get(level_b, level_b))


def paired_models_sentence(results, a: tuple[str, str] = ("snippet", "track_sum"),
                           b: tuple[str, str] = ("linear", "track_sum"), split: str = "test",
                           ) -> dict[str, Any] | None:
    """Two models compared over the seeds they share, in plain words, e.g. "The snippet CRNN's track-level
    accuracy beat the linear baseline's in 5 of 5 seeds, mean +12.3 points, p = 0.001 (paired t-test)." ``a`` and
    ``b`` are ``(kind, level)``. None when no seed has both."""
    return _paired_words(_accuracy_by_seed(results, *a, split), _accuracy_by_seed(results, *b, split),
                         model_phrases(*a)[0], model_phrases(*b)[1])
