"""Words of the dashboard: the one set of labels for model kinds and evaluation levels, and paired comparisons
across seeds put into sentences. Pure functions (no Streamlit), so pages, charts and tests share them."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from core.kinds import kinds

#: Model kinds (``runs.kind`` in the store, ``kind`` in a model card): their words come from the kind table
#: (``core.kinds``); the functions below read it when called, so every list follows the table.
KIND_LABELS = {k.key: k.label for k in kinds()}
#: What each kind does, in a line (the demo page's model card).
KIND_DESCRIPTIONS = {k.key: k.description for k in kinds()}
#: Evaluation levels (``metrics.level`` in the store): short labels for tables and selectors ...
LEVEL_LABELS = {"segment": "segment", "track_sum": "track (sum)", "track_vote": "track (vote)",
                "track_logprob": "track (log-prob)", "full": "30 s clip"}
#: ... and the same levels inside a sentence.
LEVEL_PHRASES = {"segment": "segment-level", "track_sum": "track-level (sum)", "track_vote": "track-level (vote)",
                 "track_logprob": "track-level (log-prob)", "full": "the 30 s model"}


def kind_label(kind: str) -> str:
    return next((k.label for k in kinds() if k.key == kind), kind)


def kind_order(kind: str) -> int:
    """A kind's place in the table (the headline's order, the snippet CRNN first); unknown kinds last."""
    return next((i for i, k in enumerate(kinds()) if k.key == kind), len(kinds()))


def model_choices() -> list[str]:
    """The kinds an experiment can train (``run-experiment --models``): the experiment page's choices."""
    return [k.key for k in kinds()]


def one_fit_kinds() -> list[str]:
    """Kinds fitted in one step (the linear baseline): no learning curve, no epochs to speak of."""
    return [k.key for k in kinds() if k.epochs == "1"]


def headline_groups() -> list[tuple[str, str, str]]:
    """The headline figure's bar groups: ``(kind, level, label)`` of every kind's levels, in table order."""
    return [(k.key, lvl, label) for k in kinds() for lvl, label in zip(k.levels, k.headline)]


def band_labels() -> dict[str, str]:
    """Kinds drawn on a shaded band of their own (colour ``reference``: not the article's CRNNs) -> the band's
    label."""
    return {k.key: k.band or k.label for k in kinds() if k.colour == "reference"}


def table_columns() -> dict[tuple[str, str], str]:
    """The per-seed table's columns: ``(kind, level) -> "CRNN segment"`` (the headline's approaches)."""
    return {(k.key, lvl): k.short if len(k.levels) == 1 else f"{k.short} {LEVEL_LABELS.get(lvl, lvl)}"
            for k in kinds() for lvl in k.levels}


def table_help() -> dict[str, str]:
    """A column's help: what model and level it is."""
    cols = table_columns()
    return {cols[(k.key, lvl)]: f"{k.label}, {level_label(lvl)} level" if len(k.levels) > 1 else
            f"{k.label}: one prediction per clip" for k in kinds() for lvl in k.levels}


def compared_words(present) -> list[str]:
    """What the results heading compares (``segment vs track vs 30 s vs linear baseline``) for the kinds
    ``present`` (in table order)."""
    return [w for k in kinds() if k.key in set(present) for w in k.compared_as]


def paired_comparisons() -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """The paired model comparisons the results state, ``((kind, level), (kind, level))``: every other kind's
    track accuracy against the first kind's (the snippet CRNN), the kind expected to beat it named first."""
    first, *others = kinds()
    ref = (first.key, first.track_level)
    return [((k.key, k.track_level), ref) if k.compare_first else (ref, (k.key, k.track_level)) for k in others]


#: Training presets (``core.experiment.PRESETS``) on the experiment page.
PRESET_LABELS = {"recommended": "recommended (default)", "paper": "paper (the article's settings)",
                 "tuned": "tuned (first reference results)", "fast": "fast (smoke run)",
                 "small": "small (small datasets: fast)"}
#: ``--cv`` choices that are words.
CV_LABELS = {"auto": "auto (folds when the test split is small)", "off": "off (the dataset's own split)"}
#: Validation signals (``TrainConfig.monitor``) in a table cell.
MONITOR_WORDS = {"val_track_accuracy": "val track acc", "val_accuracy": "val acc", "val_loss": "val loss"}
#: Executors (``core.runs.EXECUTORS``).
EXECUTOR_LABELS = {"local": "local (this machine)", "ray": "Ray cluster"}


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


def evaluation_basis(n_folds: int | None, n_tracks: int | None, split: str = "test") -> str:
    """What one accuracy figure rests on, in words: cross-validation (every track once per seed) or the
    held-out split, and how coarse it is (one track = X points)."""
    step = f"one track = {100 / n_tracks:.3g} points" if n_tracks else ""
    if n_folds:
        what = "tested" if split == "test" else "in the validation part"
        return (f"{n_folds}-fold cross-validation: each seed's figure pools its {n_folds} folds, every one of the "
                f"{n_tracks or '?'} tracks {what} once ({step})")
    coarse = "; a figure moves in steps that large" if n_tracks and 100 / n_tracks >= 5 else ""
    name = "test" if split == "test" else "validation"
    return f"the dataset's held-out split: {n_tracks or '?'} {name} tracks ({step}{coarse})"


def chance_advice(config: dict | None, models: list[str], n_folds: int | None, tracks_per_class: int | None,
                  best_epochs: list[int] | None = None) -> list[str]:
    """What to try when a CRNN sits at chance level, computed from what the experiment did: only things its
    settings did not already do (a lower learning rate than the recommended one, epochs the runs ran out of,
    no cross-validation, no musicnn, few tracks), most telling first."""
    from core.experiment import preset_name

    cfg = config or {}
    tips: list[str] = []
    lr = cfg.get("lr", 1e-4)
    max_epochs = cfg.get("max_epochs")
    best = [int(b) for b in (best_epochs or []) if b]
    if lr < 5e-4:
        tips.append(f"the *recommended* settings: the learning rate {lr:g} (the article's) is too low to learn in a "
                    "few epochs on a small dataset")
    elif preset_name(cfg) != "recommended" and (cfg.get("monitor", "val_loss") != "val_track_accuracy"
                                                  or not cfg.get("bn_recalibrate")):
        tips.append("the *recommended* settings: best epoch by validation track accuracy and batch-norm statistics "
                    "re-estimated every epoch (what made the CRNNs learn on small data in results/ablation)")
    if preset_name(cfg) == "small":
        tips.append("the *recommended* settings: up to 30 epochs of all 14 snippets per track (the *small* "
                    "settings train 8 epochs of 7; about 4x the time)")
    if max_epochs and best and min(best) >= max_epochs - 1:
        tips.append(f"more epochs: every run's best epoch was one of its last (of at most {max_epochs}); raise "
                    "*Max epochs*")
    if not n_folds:
        tips.append("cross-validation (*Cross-validation*: auto or a number of folds): every track is then in a "
                    "validation part once, so the best epoch is chosen on many tracks instead of a handful")
    elif best and max(best) <= 1:
        tips.append("more tracks per class: the best epoch was the first in every run, so the validation part could "
                    "not tell the epochs apart")
    if "musicnn" not in models:
        tips.append("the *musicnn embedding + head*: a network pretrained on a million songs, with a small head "
                    "that learns from a few tracks per class in seconds")
    if tracks_per_class and (not tips or tracks_per_class < 30) and not any(t.startswith("more tracks") for t in tips):
        tips.append(f"more tracks: {tracks_per_class} per class are few for a CRNN trained from scratch")
    return tips
