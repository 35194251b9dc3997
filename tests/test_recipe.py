"""The training recipe: model selection on validation track accuracy, warm-up + cosine, augmentation, per-epoch
snippet selection and random 30 s crops (all exact on resume), and the presets."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from engine_helpers import load_tiny, quick_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_tiny(tmp_path_factory, "recipe")


_cfg = quick_config


def test_validation_metrics_sum_snippet_scores_per_track():
    from core.train import validation_metrics

    scores = np.array([[0.9, 0.1], [0.4, 0.6], [0.45, 0.55], [0.2, 0.8], [0.7, 0.3]])
    y = np.array([0, 0, 0, 1, 1])
    tracks = np.array([7, 7, 7, 9, 9])
    m = validation_metrics(scores, y, tracks)
    assert m["val_accuracy"] == pytest.approx(2 / 5)  # snippets 0 and 3 right
    assert m["val_track_accuracy"] == pytest.approx(1.0)  # track 7: 1.75 vs 1.25 -> 0; track 9: 1.0 vs 1.1 -> 1
    assert m["val_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.45, 0.8, 0.3])))


def test_track_monitor_picks_track_accuracy_then_snippet_accuracy_then_loss():
    from core.train import _update_schedule

    cfg = _cfg(max_epochs=50, patience=3, monitor="val_track_accuracy")
    state = {"best_val_loss": None, "best_epoch": 0, "es_wait": 0, "lr_wait": 0, "lr": 1e-3, "finished": False,
             "stop_reason": ""}
    recs = [(0.50, 0.40, 1.0), (0.60, 0.45, 1.4),  # track accuracy up although the loss rose: best
            (0.60, 0.50, 1.5),  # same track accuracy, better snippet accuracy: best (tie-break)
            (0.60, 0.50, 1.2),  # same two, lower loss: best
            (0.55, 0.70, 0.5), (0.60, 0.50, 1.3), (0.40, 0.3, 2.0)]  # no improvement x3: stop
    for e, (ta, a, loss) in enumerate(recs, start=1):
        _update_schedule(state, {"epoch": e, "val_track_accuracy": ta, "val_accuracy": a, "val_loss": loss}, cfg)
    assert state["best_epoch"] == 4 and state["best_value"] == 0.60
    assert state["finished"] and "val_track_accuracy" in state["stop_reason"]
    # the article's monitor on the same records keeps the lowest loss
    cfg2 = _cfg(max_epochs=50, patience=10, monitor="val_loss")
    s2 = {"best_val_loss": None, "best_epoch": 0, "es_wait": 0, "lr_wait": 0, "lr": 1e-3, "finished": False,
          "stop_reason": ""}
    for e, (ta, a, loss) in enumerate(recs, start=1):
        _update_schedule(s2, {"epoch": e, "val_track_accuracy": ta, "val_accuracy": a, "val_loss": loss}, cfg2)
    assert s2["best_epoch"] == 5


def test_cosine_schedule_warms_up_then_decays_and_never_reduces_on_plateau():
    from core.train import _update_schedule, cosine_lr

    cfg = _cfg(lr=1e-3, min_lr=1e-6, max_epochs=10, schedule="cosine", warmup_epochs=1.0, lr_patience=1)
    n = 20
    lrs = [cosine_lr(cfg, t, n) for t in range(10 * n + 1)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[n] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:n], lrs[1:n + 1]))  # warm-up rises
    assert all(a >= b for a, b in zip(lrs[n:], lrs[n + 1:]))  # then decays
    assert lrs[-1] == pytest.approx(1e-6)
    state = {"best_val_loss": None, "best_epoch": 0, "es_wait": 0, "lr_wait": 0, "lr": 5e-4, "finished": False,
             "stop_reason": ""}
    for e in range(1, 4):
        _update_schedule(state, {"epoch": e, "val_loss": 1.0 + e}, cfg)
    assert state["lr"] == 5e-4  # the plateau rule is off under the cosine schedule


def test_random_snippet_selection_is_per_track_and_redrawn_every_epoch(tiny):
    from core.train import SnippetSequence, TrainConfig

    X, y, tr = tiny.X("train"), tiny.y("train"), np.asarray(tiny.track("train"))
    seq = SnippetSequence(X, y, 3, tiny.norm, TrainConfig(batch_size=4, snippets_per_track=2,
                                                      snippet_selection="random"), seed=3, tracks=tr)
    counts = np.bincount(tr[seq.order])
    assert set(counts[counts > 0]) == {2} and len(seq.order) == 2 * len(np.unique(tr))
    e0 = np.sort(seq.order)
    seq.set_epoch(1)
    assert not np.array_equal(e0, np.sort(seq.order))
    seq.set_epoch(0)
    assert np.array_equal(e0, np.sort(seq.order))  # a function of (seed, epoch)
    first = SnippetSequence(X, y, 3, tiny.norm, TrainConfig(snippets_per_track=2, snippet_selection="first",
                                                        shuffle=False), seed=3, tracks=tr)
    for t in np.unique(tr):
        rows = np.flatnonzero(tr == t)
        assert list(first.order[np.isin(first.order, rows)]) == list(rows[:2])


def test_augmentation_masks_and_mixup_are_seeded_and_keep_labels_summing_to_one():
    from core.train import augment_batch

    rng = np.random.default_rng(0)
    x = rng.random((6, 40, 16)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]]
    cfg = _cfg(time_masks=2, time_mask_frames=10, freq_masks=1, freq_mask_bins=4, mixup=0.4)
    a = augment_batch(x, y, cfg, np.random.default_rng([1, 2, 3]))
    b = augment_batch(x, y, cfg, np.random.default_rng([1, 2, 3]))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], x) and np.allclose(a[1].sum(axis=1), 1)
    assert (a[1].max(axis=1) >= 0.5 - 1e-6).all()  # the sample's own label dominates
    masked, _ = augment_batch(x, y, _cfg(time_masks=1, time_mask_frames=40), np.random.default_rng(5))
    assert np.isclose(masked, x.mean(axis=(1, 2))[:, None, None]).any()


def test_recommended_recipe_resumes_exactly(tiny, tmp_path):
    from core.train import train_run

    cfg = _cfg(max_epochs=3, schedule="cosine", monitor="val_track_accuracy", snippets_per_track=3,
               snippet_selection="random", label_smoothing=0.1, time_masks=1, freq_masks=1, mixup=0.2,
               bn_recalibrate=16)
    straight = train_run(tiny, "snippet", 2, cfg, tmp_path / "straight")
    calls = {"n": 0}

    def stop_in_epoch_two():
        calls["n"] += 1
        return calls["n"] > 3

    part = train_run(tiny, "snippet", 2, cfg, tmp_path / "resumed", should_stop=stop_in_epoch_two)
    assert part.status == "stopped"
    done = train_run(tiny, "snippet", 2, cfg, tmp_path / "resumed")
    assert [h["loss"] for h in done.history] == [h["loss"] for h in straight.history]
    assert [h["val_track_accuracy"] for h in done.history] == [h["val_track_accuracy"] for h in straight.history]
    assert done.best_epoch == straight.best_epoch and done.monitor == "val_track_accuracy"
    hist = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert {"val_track_accuracy", "monitor", "best"} <= set(hist[0])
    assert hist[0]["lr"] < hist[1]["lr"]  # warm-up, then decay
    with pytest.raises(Exception, match="max_epochs"):  # the cosine curve depends on max_epochs
        train_run(tiny, "snippet", 2, _cfg(**{**cfg.full_dict(), "max_epochs": 5}), tmp_path / "resumed")


def test_batchnorm_recalibration_sets_the_population_statistics_with_dropout_off():
    import keras

    from core.models import build_snippet_crnn
    from core.train import recalibrate_batchnorm

    m = build_snippet_crnn(3, n_mels=16, dropout=0.5)
    bn = m.get_layer("block1_bn")
    w = bn.get_weights()
    w[2][:] = 100.0  # garbage moving mean
    bn.set_weights(w)
    x = np.random.default_rng(0).random((24, 40, 16, 1)).astype(np.float32)
    conv = keras.Model(m.input, m.get_layer("block1_conv").output)
    h = keras.ops.convert_to_numpy(conv(x))
    assert recalibrate_batchnorm(m, [x[:12], x[12:]]) == 4
    mean = bn.get_weights()[2]
    assert np.allclose(mean, h.mean(axis=(0, 1, 2)), atol=1e-4)  # average of the two batches' means
    assert m.get_layer("block1_drop").rate == 0.5 and bn.momentum == 0.9  # restored


@pytest.mark.parametrize("arch", ["standard", "keras_bn", "lean"])
def test_compiled_batchnorm_recalibration_equals_the_eager_forward_passes(arch):
    """recalibrate_batchnorm runs a compiled model of the layers up to the last batch norm (core.train.
    _batch_stats_model); it must set what the eager training-mode passes with the running-average momentum set."""
    import keras

    import core.train as train
    from core.models import build_model

    m = build_model("snippet", 3, 16, None, 0.3, arch)
    train.compile_model(m, 1e-2)
    rng = np.random.default_rng(1)
    m.fit(rng.random((16, 40, 16, 1)).astype(np.float32), np.eye(3, dtype=np.float32)[rng.integers(0, 3, 16)],
          epochs=2, verbose=0)  # trained weights: the later layers' statistics depend on the earlier ones
    batches = [(rng.random((8, 40, 16, 1)) * 3 - 1).astype(np.float32) for _ in range(3)]
    bns = [layer for layer in m.layers if isinstance(layer, keras.layers.BatchNormalization)]
    before = m.get_weights()
    stats_before = np.concatenate(bns[0].get_weights()[2:])
    train.recalibrate_batchnorm(m, batches)
    assert train._STATS_MODELS[m] is not None  # the compiled path ran
    compiled = [np.concatenate(b.get_weights()[2:]) for b in bns]
    m.set_weights(before)
    train._STATS_MODELS[m] = None  # force the eager path
    train.recalibrate_batchnorm(m, batches)
    eager = [np.concatenate(b.get_weights()[2:]) for b in bns]
    for c, e in zip(compiled, eager):
        np.testing.assert_allclose(c, e, rtol=1e-4, atol=1e-5)
    assert not np.allclose(compiled[0], stats_before)  # the statistics did change


def test_random_full_crops_stay_inside_each_track_and_validation_uses_the_first(tmp_path):
    from core.dataset import SplitConfig, build_dataset, load_dataset
    from core.features import FeatureParams
    from core.synth import make_dataset_folder
    from core.train import full_crop_limits, make_sequences, train_run

    src = make_dataset_folder(tmp_path / "src", n_classes=2, per_class=4, seconds=9.0)
    p = FeatureParams(n_mels=16, n_fft=1024, hop_length=512, mode="full", full_clip_s=4.0, full_store_s=8.0)
    ds = load_dataset(build_dataset(src, tmp_path / "full", p, SplitConfig(0.25, 0.25, 0), workers=1))
    T = p.input_frames
    assert ds.X("train").shape[1] == p.stored_frames > T
    assert ds.card["input_shape"][0] == T
    lim = full_crop_limits(ds, "train", T)
    assert (lim > 0).all() and (lim <= p.stored_frames - T).all()
    cfg = _cfg(full_crop="random", batch_size=2)
    train, val = make_sequences(ds, cfg, seed=1)
    offs = [train.offsets.copy()]
    train.set_epoch(1)
    offs.append(train.offsets.copy())
    assert not np.array_equal(*offs) and (offs[0] <= lim).all()
    xb, _ = train[0]
    assert xb.shape[1] == T
    xv, _ = val[0]
    assert xv.shape[1] == T and not val.random_crop
    res = train_run(ds, "full", 0, _cfg(full_crop="random", batch_size=2, max_epochs=2), tmp_path / "run")
    assert res.epochs_run == 2


def test_presets_and_old_run_ids():
    from core.experiment import DEFAULT_PRESET, PRESET_HELP, PRESETS, preset_config, preset_name
    from core.train import TrainConfig

    assert DEFAULT_PRESET == "recommended" and set(PRESET_HELP) == set(PRESETS)
    rec = preset_config("recommended")
    assert rec.monitor == "val_track_accuracy" and rec.snippet_selection == "random" and rec.full_crop == "random"
    paper = preset_config("paper")
    assert (paper.lr, paper.batch_size, paper.monitor, paper.schedule) == (1e-4, 32, "val_loss", "plateau")
    # settings added later are left out at their defaults: configs (and run ids) of earlier stores are unchanged
    old_keys = {"lr", "batch_size", "max_epochs", "patience", "min_delta", "lr_factor", "lr_patience", "min_lr",
                "norm_method", "dropout", "shuffle", "max_train_batches", "workers", "jit_compile", "precision"}
    assert set(paper.to_dict()) == old_keys
    assert TrainConfig.from_dict(rec.to_dict()) == rec
    for name in PRESETS:
        assert preset_name(preset_config(name, max_epochs=3).to_dict()) == name
    with pytest.raises(Exception, match="monitor"):
        TrainConfig(monitor="val_f1")
    assert math.isfinite(rec.lr)


def test_presets_and_run_configs_load_without_keras():
    """The experiment page reads presets and run configs on every view: that must not import Keras/TensorFlow
    (the dashboard server's memory; the demo runs in NumPy)."""
    import subprocess
    import sys

    from conftest import ROOT

    code = ("import sys; from core.experiment import PRESETS, preset_config, preset_name; "
            "from core.experiment import experiment_groups; "
            "[preset_name(preset_config(k).to_dict()) for k in PRESETS]; "
            "experiment_groups([{'id': 'a', 'kind': 'full', 'dataset': 'x-full60s', 'seed': 0, "
            "'config': preset_config('recommended').to_dict()}]); "
            "print('keras' in sys.modules, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]
