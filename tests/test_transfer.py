"""Transfer classifiers (core.transfer): the linear head, stratified folds, cross-validation over tracks, the model
folder run by the Predictor in NumPy, caching / resuming, bad input."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from core import transfer as tr
from core.synth import make_dataset_folder

ROOT = Path(__file__).resolve().parent.parent


def test_linear_head_minimises_the_same_objective_as_sklearn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6)) * [1, 2, 3, 0.5, 10, 1] + [0, 5, 0, 0, 100, 0]
    y = (X[:, 0] + 0.3 * X[:, 1] + rng.normal(size=300) > 1.5).astype(int) + (X[:, 2] > 2)
    head = tr.fit_linear_head(X, y, 3, C=0.5)
    Z = (X - head.mean) / head.scale
    ref = sklearn.LogisticRegression(C=0.5, max_iter=5000, tol=1e-10).fit(Z, y)
    np.testing.assert_allclose(head.predict_proba(X), ref.predict_proba(Z), atol=2e-4)
    kernel, bias = head.folded()  # the standardisation folded into one Dense layer
    z = X @ kernel + bias
    p = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(p / p.sum(1, keepdims=True), head.predict_proba(X), atol=1e-4)


def test_stratified_folds_deal_each_class_evenly_and_depend_on_the_seed():
    y = np.array([0] * 10 + [1] * 7 + [2] * 3)
    f = tr.stratified_folds(y, 3, seed=1)
    for c in range(3):
        counts = np.bincount(f[y == c], minlength=3)
        assert counts.max() - counts.min() <= 1
    sizes = np.bincount(f, minlength=3)
    assert sizes.max() - sizes.min() <= 1
    assert not np.array_equal(f, tr.stratified_folds(y, 3, seed=2))
    assert np.array_equal(f, tr.stratified_folds(y, 3, seed=1))


def _feats(n_per_class=6, dim=5, sep=3.0, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for c, label in enumerate(["a", "b"]):
        for i in range(n_per_class):
            X = rng.normal(size=(7, dim)).astype(np.float32)
            X[:, 0] += sep * c
            out.append(tr.TrackFeatures(f"{label}/{i}", label, X))
    return out


def test_cross_validation_tests_every_track_once_per_repeat():
    feats = _feats()
    cv = tr.cross_validate(feats, ["a", "b"], C=1.0, folds=4, repeats=2)
    assert cv.folds == 4 and len(cv.oof) == 2
    for rep in cv.oof:
        assert sorted(rep) == sorted(f.key for f in feats)
    assert all(len(v) == 2 for v in cv.accuracy.values())
    assert cv.summary()["sum"]["mean"] > 0.9  # separable classes
    assert sum(map(sum, cv.confusion["sum"])) == 2 * len(feats)
    # noise: accuracy near chance, not a trivially high figure
    noise = tr.cross_validate(_feats(n_per_class=20, sep=0.0, seed=3), ["a", "b"], folds=5, repeats=2)
    assert noise.summary()["sum"]["mean"] < 0.8


def test_cross_validation_needs_two_tracks_per_class():
    feats = _feats(n_per_class=4)[:5]  # class b keeps 1 track
    with pytest.raises(tr.TransferError, match="at least 2 tracks"):
        tr.cross_validate(feats, ["a", "b"])


def test_best_aggregation_prefers_the_best_mean_then_sum():
    cv = tr.CVResult(5, 2, 0, {"sum": [0.8, 0.8], "vote": [0.9, 0.8], "logprob": [0.86, 0.86]}, {})
    assert cv.best_aggregation() == "logprob"
    cv = tr.CVResult(5, 2, 0, {"sum": [0.8, 0.8], "vote": [0.8, 0.8], "logprob": [0.8, 0.8]}, {})
    assert cv.best_aggregation() == "sum"


@pytest.fixture(scope="module")
def small_source(tmp_path_factory):
    root = make_dataset_folder(tmp_path_factory.mktemp("src") / "audio", n_classes=2, per_class=4, seconds=4.0,
                               sr=16000)
    # a broken file is skipped with its reason, the rest is used
    first = sorted(p for p in root.iterdir() if p.is_dir())[0]
    (first / "broken.wav").write_bytes(b"RIFF not really")
    return root


def test_train_transfer_writes_a_model_folder_the_predictor_runs_in_numpy(small_source, tmp_path, monkeypatch):
    monkeypatch.setenv("GENRELAB_HOME", str(tmp_path / "home"))
    out = tmp_path / "model"
    stages = []
    card = tr.train_transfer(small_source, out, folds=2, repeats=2, C=1.0,
                             progress=lambda s, d, t, m: stages.append(s))
    assert {"features", "cross-validation"} <= set(stages)
    assert {p.name for p in out.iterdir()} == {"model_card.json", "head.keras", "musicnn.weights.npz",
                                               "MODEL_CARD.md", "cv.json"}
    assert card["kind"] == "musicnn" and card["embedding"]["features"] == ["penultimate"]
    assert card["cv"]["n_tracks"] == 8 and card["cv"]["folds"] == 2 and card["cv"]["repeats"] == 2
    assert card["aggregation"] in tr.AGGREGATIONS and card["hop_s"] == 1.0
    assert card["accuracy"][f"track_{card['aggregation']}/cv"] == round(
        card["cv"]["accuracy"][card["aggregation"]]["mean"], 4)
    skipped = json.loads((out / "cv.json").read_text())["skipped"]
    assert any(s["path"].endswith("broken.wav") for s in skipped)
    from core.predictor import Predictor

    pred = Predictor(out)
    assert pred.backend == "numpy"
    f = sorted(sorted(p for p in small_source.iterdir() if p.is_dir())[1].glob("*.wav"))[0]
    r = pred.predict_file(f)
    assert r.aggregation == card["aggregation"] and r.n_windows >= 2
    assert abs(r.window_scores.sum(axis=1) - 1).max() < 1e-5
    # the features are cached: a second run with another head computes none again
    calls = []
    import core.musicnn_numpy as mnp

    real = mnp.file_window_features
    monkeypatch.setattr(mnp, "file_window_features", lambda *a, **k: calls.append(a) or real(*a, **k))
    tr.train_transfer(small_source, out, folds=2, repeats=1, C=0.1, overwrite=True)
    assert calls == [] or all(str(c[0]).endswith("broken.wav") for c in calls)


def test_train_transfer_refuses_an_existing_folder_and_a_one_class_source(small_source, tmp_path, monkeypatch):
    monkeypatch.setenv("GENRELAB_HOME", str(tmp_path / "home"))
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(tr.TransferError, match="not empty"):
        tr.train_transfer(small_source, out)
    assert (out / "keep.txt").read_text() == "mine"
    one = tmp_path / "one" / "only"
    one.mkdir(parents=True)
    sf.write(one / "x.wav", np.zeros(16000, np.float32) + 0.1, 16000)
    with pytest.raises(tr.TransferError, match="two class folders"):
        tr.train_transfer(one.parent, tmp_path / "m2")


def test_train_transfer_stops_and_resumes(small_source, tmp_path, monkeypatch):
    monkeypatch.setenv("GENRELAB_HOME", str(tmp_path / "home"))
    seen = []

    def stop_after_three():
        seen.append(1)
        return len(seen) > 3

    with pytest.raises(tr.TransferStopped):
        tr.train_transfer(small_source, tmp_path / "m", folds=2, repeats=1, should_stop=stop_after_three)
    assert not (tmp_path / "m").exists()
    cached = list((tmp_path / "home" / "cache" / "musicnn-features").rglob("*.npz"))
    assert len(cached) == 3
    tr.train_transfer(small_source, tmp_path / "m", folds=2, repeats=1)
    assert (tmp_path / "m" / "model_card.json").exists()


def test_cli_train_transfer_prints_the_cross_validated_figures(small_source, tmp_path):
    env = {"GENRELAB_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    import os

    env = {**os.environ, **env}
    r = subprocess.run([sys.executable, "-m", "core", "train-transfer", str(small_source), str(tmp_path / "m"),
                        "--folds", "2", "--repeats", "1"], cwd=ROOT, capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert "cross-validated track accuracy" in r.stdout and "<- default" in r.stdout
    r = subprocess.run([sys.executable, "-m", "core", "train-transfer", str(small_source), str(tmp_path / "m")],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 2 and "not empty" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "core", "train-transfer", str(small_source), str(tmp_path / "m3"),
                        "--features", "bogus"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 2 and "unknown musicnn feature" in r.stderr
