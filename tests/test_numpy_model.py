"""NumPy inference (core.numpy_model, Predictor(backend="numpy")) gives the same scores as Keras for every model
kind we ship; the one Predictor picks the backend."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import ROOT
from core.numpy_model import UnsupportedModel, load_numpy_model
from core.predictor import Predictor


def _randomise_batchnorm(model, rng) -> None:
    """Fresh models have identity BN statistics: give them real ones so the comparison means something."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):  # core.models' FastBatchNormalization too
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


def test_max_pools_run_before_monotone_activations_only():
    """A valid max-pool moves before the ELU / ReLU (and dropout) in front of it (the same numbers, a quarter of
    the activation's work); not before a softmax, nor a 'same'-padded pool."""
    from core.numpy_model import _pool_first

    def spec(cls, **cfg):
        return (cls, {"name": cls.lower(), **cfg}, [])

    names = lambda specs: [c for c, _, _ in specs]  # noqa: E731
    chain = [spec("Conv2D"), spec("ELU"), spec("Dropout"), spec("MaxPooling2D", pool_size=(2, 2))]
    assert names(_pool_first(chain)) == ["Conv2D", "MaxPooling2D", "ELU", "Dropout"]
    relu = [spec("Conv2D"), spec("Activation", activation="relu"), spec("MaxPooling2D", pool_size=(2, 2))]
    assert names(_pool_first(relu)) == ["Conv2D", "MaxPooling2D", "Activation"]
    soft = [spec("Conv2D"), spec("Activation", activation="softmax"), spec("MaxPooling2D", pool_size=(2, 2))]
    assert names(_pool_first(soft)) == names(soft)
    same = [spec("Conv2D"), spec("ELU"), spec("MaxPooling2D", pool_size=(2, 2), padding="same")]
    assert names(_pool_first(same)) == names(same)
    x = np.random.default_rng(1).normal(size=(2, 9, 7, 3)).astype(np.float32)  # odd sizes: valid pooling crops
    from core.numpy_model import _elu, _maxpool

    elu, pool = _elu({}, []), _maxpool({"pool_size": (2, 3)}, [])
    np.testing.assert_array_equal(pool(elu(x)), elu(pool(x)))
    assert pool(x).shape == (2, 4, 2, 3)


def test_linear_baseline_matches_keras(tmp_path):
    from core.models import build_linear

    rng = np.random.default_rng(1)
    full, head = build_linear(5, 100, rng.normal(size=200).astype(np.float32),
                              (rng.random(200) + 0.5).astype(np.float32))
    head.get_layer("genre").set_weights([rng.normal(size=(200, 5)).astype(np.float32),
                                         rng.normal(size=5).astype(np.float32)])
    full.save(tmp_path / "lin.keras")
    x = rng.random((4, 130, 100, 1)).astype(np.float32)
    np.testing.assert_allclose(load_numpy_model(tmp_path / "lin.keras").predict_on_batch(x),
                               np.asarray(full.predict_on_batch(x)), atol=1e-6)


def test_numpy_backend_matches_keras_backend(demo_model_dir):
    from core.synth import synth_clip

    y = synth_clip(1, 20.0, seed=11)
    lite, ref = Predictor(demo_model_dir, "numpy"), Predictor(demo_model_dir, "keras")
    a, b = lite.predict_array(y, hop_s=0.5), ref.predict_array(y, hop_s=0.5)
    np.testing.assert_allclose(a.window_scores, b.window_scores, atol=1e-5)
    assert a.predicted == b.predicted and a.n_windows == b.n_windows == 35
    assert (lite.backend, ref.backend) == ("numpy", "keras")
    assert Predictor(demo_model_dir).backend == "numpy"


def test_unsupported_layers_fall_back_to_keras(tmp_path, monkeypatch):
    import keras

    from core.features import FeatureParams
    from core.model_card import make_model_card, write_model_card

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
    pred = Predictor(tmp_path)
    assert pred.backend == "keras"
    monkeypatch.setenv("GENRELAB_INFERENCE", "keras")
    assert Predictor(tmp_path).backend == "keras"


def test_numpy_backend_refuses_a_keras_only_model_with_a_clear_error(tmp_path):
    """Asked for NumPy explicitly, a model NumPy cannot run is a GenreLabError that says what to do."""
    import keras

    from core.errors import GenreLabError
    from core.features import FeatureParams
    from core.predictor import PredictorError
    from core.model_card import make_model_card, write_model_card

    p = FeatureParams()
    x_in = keras.Input(shape=(None, p.n_mels, 1))
    x = keras.layers.GlobalMaxPooling2D()(keras.layers.Conv2D(4, 3, padding="same")(x_in))
    keras.Model(x_in, keras.layers.Dense(3, activation="softmax")(x)).save(tmp_path / "model.keras")
    norm = {"min": -100.0, "max": 40.0}
    write_model_card(tmp_path, make_model_card("snippet", ["a", "b", "c"], p, norm, "minmax"))
    with pytest.raises(PredictorError, match=r"model\.keras cannot run in NumPy \(not implemented there: layer "
                                             r"GlobalMaxPooling2D\); use the Keras backend") as err:
        Predictor(tmp_path, "numpy")
    assert isinstance(err.value, GenreLabError)
    with pytest.raises(ValueError, match="unknown backend 'tf'"):
        Predictor(tmp_path, "tf")


_NO_TF = """
import json, sys
sys.path.insert(0, {root!r})
from core.predictor import Predictor
p = Predictor({musicnn!r}, "numpy")
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
print(json.dumps({{"backend": p.backend, "members": len(p._models), "heavy": heavy}}))
"""


@pytest.mark.parametrize("which", ["combined", "shipped"])
def test_the_musicnn_classifier_runs_in_numpy_without_loading_tensorflow(which, tmp_path):
    """musicnn + head in one .keras file (the experiment's runs) and the shipped folder (weights + head.keras):
    read with h5py, run by core.musicnn_numpy."""
    from musicnn_fixtures import combined_classifier

    if which == "combined":
        musicnn = combined_classifier(tmp_path / "combined")
    else:
        musicnn = ROOT / "models" / "emotify-musicnn"
        if not (musicnn / "model_card.json").is_file():
            pytest.skip("the shipped model models/emotify-musicnn is absent")
    import json
    import subprocess
    import sys

    code = _NO_TF.format(root=str(ROOT), musicnn=str(musicnn))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res == {"backend": "numpy", "members": 1, "heavy": []}


def test_predict_cli_says_when_a_model_needs_keras_without_a_traceback(tmp_path):
    import keras
    import soundfile as sf

    from core.features import FeatureParams
    from core.model_card import make_model_card, write_model_card
    from core.synth import synth_clip
    from engine_helpers import run_core

    p = FeatureParams()
    x_in = keras.Input(shape=(None, p.n_mels, 1))
    x = keras.layers.GlobalMaxPooling2D()(keras.layers.Conv2D(4, 3, padding="same")(x_in))
    keras.Model(x_in, keras.layers.Dense(3, activation="softmax")(x)).save(tmp_path / "model.keras")
    write_model_card(tmp_path, make_model_card("snippet", ["a", "b", "c"], p, {"min": -100.0, "max": 40.0}, "minmax"))
    clip = tmp_path / "clip.wav"
    sf.write(clip, synth_clip(0, 4.0), 22050)
    r = run_core("predict", "--model", str(tmp_path), "--backend", "numpy", str(clip))
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stdout == "", r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "cannot run in NumPy" in r.stderr
