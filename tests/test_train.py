"""Training: the batch feeder, determinism, exact epoch-granular resume, stop requests, bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from engine_helpers import load_tiny, quick_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_tiny(tmp_path_factory, "train")


_cfg = quick_config


def test_sequence_batches_are_normalised_one_hot_and_shuffled_per_epoch(tiny):
    from core.train import SnippetSequence, TrainConfig

    X, y = tiny.X("train"), tiny.y("train")
    seq = SnippetSequence(X, y, 3, tiny.norm, TrainConfig(norm_method="minmax", batch_size=8), seed=1)
    xb, yb = seq[0]
    assert xb.shape == (8, X.shape[1], X.shape[2], 1) and xb.dtype == np.float32
    assert yb.shape == (8, 3) and np.all(yb.sum(axis=1) == 1)
    assert xb.min() >= -1e-6 and xb.max() <= 1 + 1e-6  # min-max with train statistics
    assert len(seq) == math.ceil(len(y) / 8)
    first = seq.order.copy()
    seq.set_epoch(1)
    assert not np.array_equal(first, seq.order)
    seq.set_epoch(0)
    assert np.array_equal(first, seq.order)  # the order is a function of (seed, epoch) only
    std = SnippetSequence(X, y, 3, tiny.norm, TrainConfig(norm_method="standard", batch_size=len(y)),
                          training=False)
    xs, _ = std[0]
    assert abs(float(xs.mean())) < 0.2 and 0.5 < float(xs.std()) < 1.5


def test_same_seed_gives_same_first_epoch_loss(tiny, tmp_path):
    from core.train import train_run

    a = train_run(tiny, "snippet", 3, _cfg(), tmp_path / "a")
    b = train_run(tiny, "snippet", 3, _cfg(), tmp_path / "b")
    c = train_run(tiny, "snippet", 4, _cfg(), tmp_path / "c")
    assert a.history[0]["loss"] == b.history[0]["loss"]
    assert a.history[0]["val_loss"] == b.history[0]["val_loss"]
    assert c.history[0]["loss"] != a.history[0]["loss"]
    h = json.loads((tmp_path / "a" / "history.json").read_text())
    assert set(h[0]) >= {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"}
    assert (tmp_path / "a" / "best.keras").exists() and (tmp_path / "a" / "last.keras").exists()


def test_resume_continues_exactly_where_it_stopped(tiny, tmp_path):
    from core.train import train_run

    straight = train_run(tiny, "snippet", 5, _cfg(max_epochs=3), tmp_path / "straight")
    calls = {"n": 0}

    def stop_in_epoch_two():  # polled once per batch: stop in the middle of epoch 2
        calls["n"] += 1
        return calls["n"] > 1.5 * (len(tiny.y("train")) // 32 + 1)

    part = train_run(tiny, "snippet", 5, _cfg(max_epochs=3), tmp_path / "resumed", should_stop=stop_in_epoch_two)
    assert part.status == "stopped" and part.epochs_run == 1  # the unfinished epoch was dropped
    state = json.loads((tmp_path / "resumed" / "state.json").read_text())
    assert state["epoch"] == 1 and not state["finished"]
    done = train_run(tiny, "snippet", 5, _cfg(max_epochs=3), tmp_path / "resumed")
    assert done.status == "done" and done.epochs_run == 3
    assert [h["loss"] for h in done.history] == [h["loss"] for h in straight.history]
    assert [h["val_loss"] for h in done.history] == [h["val_loss"] for h in straight.history]
    again = train_run(tiny, "snippet", 5, _cfg(max_epochs=3), tmp_path / "resumed")  # finished: no-op
    assert again.epochs_run == 3 and len(again.history) == 3


def test_resume_refuses_other_settings_and_other_kind(tiny, tmp_path):
    from core.train import TrainError, train_run

    train_run(tiny, "snippet", 0, _cfg(), tmp_path / "r")
    with pytest.raises(TrainError, match="lr"):
        train_run(tiny, "snippet", 0, _cfg(lr=5e-4, max_epochs=2), tmp_path / "r")
    with pytest.raises(TrainError, match="seed"):
        train_run(tiny, "snippet", 1, _cfg(max_epochs=2), tmp_path / "r")
    with pytest.raises(TrainError, match="full-clip"):
        train_run(tiny, "full", 0, _cfg(), tmp_path / "other")


def test_schedule_reduces_lr_then_stops_early():
    from core.train import _update_schedule

    cfg = _cfg(max_epochs=50, patience=4, lr_patience=2, lr_factor=0.5)
    state = {"best_val_loss": None, "best_epoch": 0, "es_wait": 0, "lr_wait": 0, "lr": 1e-3, "finished": False,
             "stop_reason": ""}
    losses = [1.0, 0.8, 0.9, 0.85, 0.81, 0.82]
    lrs = []
    for e, vl in enumerate(losses, start=1):
        _update_schedule(state, {"epoch": e, "val_loss": vl}, cfg)
        lrs.append(state["lr"])
        if state["finished"]:
            break
    assert state["best_epoch"] == 2 and state["best_val_loss"] == 0.8
    assert lrs == [1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4]
    assert state["finished"] and "early stop" in state["stop_reason"]


def test_bad_config_is_refused():
    from core.train import TrainConfig, TrainError

    with pytest.raises(TrainError):
        TrainConfig(lr=0)
    with pytest.raises(TrainError):
        TrainConfig(norm_method="zscore")
