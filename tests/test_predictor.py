"""Predictor: windows, aggregation, notes, file decoding, the predict CLI; evaluation metrics."""
from __future__ import annotations

import json

import numpy as np
import pytest

from engine_helpers import build_tiny, run_core


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-epoch snippet model with its model card, and its dataset."""
    from core.dataset import load_dataset
    from core.model_card import make_model_card, write_model_card
    from core.train import TrainConfig, train_run

    root = tmp_path_factory.mktemp("pred")
    ds = load_dataset(build_tiny(root))
    run = root / "run"
    train_run(ds, "snippet", 0, TrainConfig(lr=1e-3, max_epochs=2), run)
    write_model_card(run, make_model_card("snippet", ds.classes, ds.params, ds.norm, "minmax"))
    return ds, run


def test_aggregations_differ_as_documented():
    from core.predictor import aggregate

    s = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.4, 0.6], [0.0, 0.4, 0.6], [0.0, 0.4, 0.6]])
    s[0] = [0.51, 0.49, 0.0]
    s[1] = [0.51, 0.49, 0.0]
    assert np.argmax(aggregate(s, "sum")) == 1  # 0.98 + 1.2 = 2.18 beats 1.8 and 1.02
    assert np.argmax(aggregate(s, "vote")) == 2  # 3 windows vote class 2
    assert np.argmax(aggregate(s, "logprob")) == 1  # the only class never scored ~0
    with pytest.raises(ValueError):
        aggregate(s, "max")


def test_predict_array_windows_and_notes(trained):
    from core.predictor import Predictor

    ds, run = trained
    pred = Predictor(run)
    p = ds.params
    y = np.random.default_rng(0).standard_normal(int(5.3 * p.sample_rate)).astype(np.float32) * 0.1
    r = pred.predict_array(y, p.sample_rate, hop_s=0.5)
    assert r.window_scores.shape == (r.n_windows, 3) and r.n_windows == 9  # 1 s windows every 0.5 s in 5.3 s
    assert np.allclose(np.diff(r.starts), 0.5, atol=p.hop_length / p.sample_rate)
    assert np.allclose(r.ends - r.starts, 1.0)
    assert r.predicted in ds.classes and 0 <= r.score <= 1
    assert np.isclose(r.probabilities.sum(), 1.0)
    for agg in ("vote", "logprob"):
        assert pred.predict_array(y, p.sample_rate, hop_s=0.5, aggregation=agg).aggregation == agg
    short = pred.predict_array(y[: p.sample_rate // 2], p.sample_rate)
    assert short.n_windows == 1 and any("zero-padded" in n for n in short.notes)
    longer = pred.predict_array(y, p.sample_rate, window_s=2.0, hop_s=1.0)  # variable-length windows
    assert longer.n_windows == 4 and np.allclose(longer.ends - longer.starts, 2.0)
    resampled = pred.predict_array(y[::2], p.sample_rate // 2)
    assert any("resampled" in n for n in resampled.notes)


def test_track_prediction_matches_segment_scores(trained):
    """The Predictor's windows at the dataset hop are the dataset's snippets: same scores."""
    from core.predictor import Predictor

    ds, run = trained
    pred = Predictor(run)
    row = ds.tracks("test").iloc[0]
    r = pred.predict_file(row["abs_path"], hop_s=ds.params.step_s)
    i = np.flatnonzero(np.asarray(ds.track("test")) == row.name)
    seg = pred.predict_features(np.asarray(ds.X("test")[i]))
    assert r.n_windows == len(i)
    assert np.allclose(r.window_scores, seg, atol=1e-5)


def test_predict_cli_reports_bad_files_and_still_classifies_the_rest(trained, tmp_path):
    ds, run = trained
    good = ds.tracks("val").iloc[0]["abs_path"]
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF1234WAVEnot really")
    p = run_core("predict", "--model", str(run), good, str(bad), str(tmp_path / "missing.mp3"))
    assert p.returncode == 1, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].split("\t")[1] in ds.classes and "windows" in lines[0]
    assert "error" in lines[1] and "error: file not found" in lines[2]
    pj = run_core("predict", "--model", str(run / "best.keras"), good, "--json")
    assert pj.returncode == 0
    d = json.loads(pj.stdout.strip().splitlines()[0])
    assert d["class"] in ds.classes and d["n_windows"] > 1


def test_predictor_refuses_model_without_card(tmp_path, trained):
    import shutil

    from core.predictor import Predictor, PredictorError

    _, run = trained
    shutil.copy(run / "best.keras", tmp_path / "m.keras")
    with pytest.raises(PredictorError, match="model_card"):
        Predictor(tmp_path / "m.keras")
    (tmp_path / "x.keras").write_bytes(b"not a zip")
    shutil.copy(run / "model_card.json", tmp_path / "model_card.json")
    with pytest.raises(PredictorError, match="x.keras is unreadable: not a complete .keras archive"):
        Predictor(tmp_path / "x.keras")


def test_metrics_and_paired_test():
    from scipy import stats

    from core.evaluate import classification_metrics, paired_test

    m = classification_metrics([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3) and m["per_class"]["b"]["recall"] == 1.0
    f1 = [2 * 0.5 * 0.5 / 1.0, 2 * (2 / 3) / (2 / 3 + 1), 2 * 0.5 / 1.5]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    a, b = [0.8, 0.82, 0.79, 0.85, 0.81, 0.83], [0.75, 0.8, 0.74, 0.8, 0.8, 0.78]
    t = paired_test(a, b)
    assert t["p_ttest"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert t["p_wilcoxon"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert paired_test(a[:3], b[:3])["p_wilcoxon"] is None
