"""NumPy inference (core.lite_inference) gives the same scores as Keras for every model kind we ship."""
from __future__ import annotations

import numpy as np
import pytest

from core.lite_inference import LitePredictor, UnsupportedModel, load_numpy_model, make_predictor


def _randomise_batchnorm(model, rng) -> None:
    """Fresh models have identity BN statistics: give them real ones so the comparison means something."""
    for layer in model.layers:
        if layer.__class__.__name__ == "BatchNormalization":
            g, b, m, v = (w.shape for w in layer.get_weights())
            layer.set_weights([rng.normal(1, 0.2, g), rng.normal(0, 0.2, b), rng.normal(0, 0.5, m),
                               rng.random(v) + 0.5])


@pytest.mark.parametrize("kind", ["snippet", "full"])
def test_crnn_matches_keras(tmp_path, kind):
    from core.models import build_full_crnn, build_snippet_crnn

    rng = np.random.default_rng(0)
    model = build_snippet_crnn(7, 100) if kind == "snippet" else build_full_crnn(7, 100, 1292)
    _randomise_batchnorm(model, rng)
    model.save(tmp_path / "m.keras")
    lite = load_numpy_model(tmp_path / "m.keras")
    x = rng.random((3, 130 if kind == "snippet" else 1292, 100, 1)).astype(np.float32)
    np.testing.assert_allclose(lite.predict_on_batch(x), np.asarray(model.predict_on_batch(x)), atol=1e-5)
    assert lite.input_shape == tuple(model.input_shape) and lite.output_shape == (None, 7)


def test_linear_baseline_matches_keras(tmp_path):
    from core.baseline import build_linear

    rng = np.random.default_rng(1)
    full, head = build_linear(5, 100, rng.normal(size=200).astype(np.float32),
                              (rng.random(200) + 0.5).astype(np.float32))
    head.get_layer("genre").set_weights([rng.normal(size=(200, 5)).astype(np.float32),
                                         rng.normal(size=5).astype(np.float32)])
    full.save(tmp_path / "lin.keras")
    x = rng.random((4, 130, 100, 1)).astype(np.float32)
    np.testing.assert_allclose(load_numpy_model(tmp_path / "lin.keras").predict_on_batch(x),
                               np.asarray(full.predict_on_batch(x)), atol=1e-6)


def test_lite_predictor_matches_predictor(demo_model_dir):
    from core.predictor import Predictor
    from core.synth import synth_clip

    y = synth_clip(1, 20.0, seed=11)
    lite, ref = LitePredictor(demo_model_dir), Predictor(demo_model_dir)
    a, b = lite.predict_array(y, hop_s=0.5), ref.predict_array(y, hop_s=0.5)
    np.testing.assert_allclose(a.window_scores, b.window_scores, atol=1e-5)
    assert a.predicted == b.predicted and a.n_windows == b.n_windows == 35
    assert make_predictor(demo_model_dir).backend == "numpy"


def test_unsupported_layers_fall_back_to_keras(tmp_path, monkeypatch):
    import keras

    from core.features import FeatureParams
    from core.predictor import make_model_card, write_model_card

    p = FeatureParams()
    x_in = keras.Input(shape=(None, p.n_mels, 1))
    x = keras.layers.Conv2D(4, 3, padding="same")(x_in)
    x = keras.layers.GlobalAveragePooling2D()(x)  # not implemented in NumPy
    model = keras.Model(x_in, keras.layers.Dense(3, activation="softmax")(x))
    model.save(tmp_path / "model.keras")
    norm = {"min": -100.0, "max": 40.0, "mean": [0.0] * p.n_mels, "std": [1.0] * p.n_mels}
    write_model_card(tmp_path, make_model_card("snippet", ["a", "b", "c"], p, norm, "minmax"))
    with pytest.raises(UnsupportedModel):
        load_numpy_model(tmp_path / "model.keras")
    pred = make_predictor(tmp_path)
    assert pred.backend == "keras"
    monkeypatch.setenv("GENRELAB_INFERENCE", "keras")
    assert make_predictor(tmp_path).backend == "keras"
