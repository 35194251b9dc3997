"""CRNN architectures: sizes, variable-length input, FLOPs, and a train step under every installed backend."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT


def test_snippet_crnn_has_about_367k_parameters_and_takes_any_length():
    from core.models import build_snippet_crnn

    m = build_snippet_crnn(10)
    assert 350_000 <= m.count_params() <= 450_000
    assert m.input_shape == (None, None, 100, 1)
    for frames in (130, 200):  # variable-length inference windows
        out = m(np.zeros((2, frames, 100, 1), np.float32), training=False)
        assert tuple(out.shape) == (2, 10)
        assert np.allclose(np.asarray(out).sum(axis=1), 1.0, atol=1e-5)


def test_full_crnn_is_about_half_the_size():
    from core.models import build_full_crnn, build_snippet_crnn

    full = build_full_crnn(10)
    assert 180_000 <= full.count_params() <= 200_000
    assert full.count_params() < 0.6 * build_snippet_crnn(10).count_params()
    assert full.input_shape == (None, 1292, 100, 1)


def test_count_flops_matches_hand_count():
    from core.models import build_snippet_crnn, count_flops, describe

    m = build_snippet_crnn(10)
    c = count_flops(m, (130, 100))
    assert c["per_layer"]["block1_conv"] == 130 * 100 * 9 * 1 * 16
    assert c["per_layer"]["block2_conv"] == 65 * 50 * 9 * 16 * 32
    assert c["per_layer"]["gru1"] == 16 * 3 * (128 * 192 + 192 * 192)  # 130 frames -> 16 steps
    assert c["per_layer"]["genre"] == 96 * 10
    assert 45e6 < c["macs"] < 55e6 and c["flops"] == 2 * c["macs"]
    assert describe(m, (130, 100))["params"] == m.count_params()


def test_arch_names_are_the_models_archs():
    from core.models import ARCHS
    from core.train_config import ARCH_NAMES

    assert tuple(ARCHS) == ARCH_NAMES


def test_too_few_mels_is_a_clear_error():
    from core.models import build_snippet_crnn

    with pytest.raises(ValueError, match="n_mels"):
        build_snippet_crnn(4, n_mels=4)


def test_fast_batchnorm_is_keras_batchnorm_with_a_cheaper_gradient(tmp_path):
    """core.models.FastBatchNormalization (the CRNNs' batch norm) writes the training step out by hand: the
    output, the gradients of the input, gamma and beta, and the moving statistics must be Keras' own."""
    import keras
    import tensorflow as tf

    from core.models import FastBatchNormalization

    rng = np.random.default_rng(0)
    x = tf.constant((rng.standard_normal((6, 11, 9, 5)) * 3 + 2).astype(np.float32))
    dy = tf.constant(rng.standard_normal((6, 11, 9, 5)).astype(np.float32))
    out = []
    for layer in (keras.layers.BatchNormalization(momentum=0.9), FastBatchNormalization(momentum=0.9)):
        layer.build(x.shape)
        layer.gamma.assign(np.linspace(0.5, 2, 5))
        layer.beta.assign(np.linspace(-1, 1, 5))
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * dy)
        grads = tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])
        out.append([y, *grads, layer.moving_mean, layer.moving_variance, layer(x, training=False)])
    for name, ref, got in zip(["y", "dx", "dgamma", "dbeta", "moving mean", "moving var", "inference y"], *out):
        ref, got = np.asarray(ref), np.asarray(got)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max(), err_msg=name)
    assert np.abs(np.asarray(out[0][1])).max() > 0.1  # the gradient is not trivially zero
    # a mean far above the spread: the variance must not cancel out (E[x^2] - mean^2 in float32 would)
    far = tf.constant((rng.standard_normal((16, 40, 30, 3)) + 300).astype(np.float32))
    fast = FastBatchNormalization(momentum=0.0)  # momentum 0: the moving statistics are this batch's
    fast.build(far.shape)
    fast(far, training=True)
    np.testing.assert_allclose(np.asarray(fast.moving_variance), np.asarray(far, np.float64).var(axis=(0, 1, 2)),
                               rtol=1e-3)
    # a training step inside model.fit (graph mode) and a save / load round trip
    from core.models import build_snippet_crnn

    m = build_snippet_crnn(3, n_mels=16)
    assert sum(isinstance(layer, FastBatchNormalization) for layer in m.layers) == 4
    m.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    xb = rng.random((8, 24, 16, 1)).astype(np.float32)
    m.fit(xb, np.eye(3, dtype=np.float32)[rng.integers(0, 3, 8)], epochs=2, verbose=0)
    m.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras", compile=False)
    assert type(again.get_layer("block1_bn")) is FastBatchNormalization
    np.testing.assert_allclose(again.predict_on_batch(xb), m.predict_on_batch(xb), atol=1e-6)


_STEP = """
import numpy as np, keras
from core.models import build_snippet_crnn, build_full_crnn
keras.utils.set_random_seed(0)
for m, x in ((build_snippet_crnn(3, n_mels=16), np.random.rand(4, 24, 16, 1)),
             (build_full_crnn(3, n_mels=16, frames=128), np.random.rand(4, 128, 16, 1))):
    m.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    y = np.eye(3, dtype="float32")[[0, 1, 2, 0]]
    loss = m.train_on_batch(x.astype("float32"), y, return_dict=True)["loss"]
    assert np.isfinite(loss), loss
    assert m.predict_on_batch(x.astype("float32")).shape == (4, 3)
print("OK", keras.backend.backend())
"""


@pytest.mark.parametrize("backend,module", [("tensorflow", "tensorflow"), ("jax", "jax"), ("torch", "torch")])
def test_one_train_step_under_each_installed_backend(backend, module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"Keras backend {backend!r} not installed ({module} is not importable)")
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=path)
    p = subprocess.run([sys.executable, "-c", _STEP], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"OK {backend}" in p.stdout


_REGISTRY = """
import sys
import core.models as m
assert not {"core.baseline", "core.train"} & set(sys.modules), sorted(k for k in sys.modules if k.startswith("core"))
assert m.MODEL_KINDS == ("snippet", "full", "linear")
names = {k: m.build_model(k, 3, 16, 256).name for k in m.MODEL_KINDS}
assert names == {"snippet": "snippet_crnn", "full": "full_crnn", "linear": "linear_baseline"}, names
m.build_model("linear", 3, 16).save(sys.argv[1])
from core.models import load_model  # loads the baseline's MelStats layer without core.baseline
load_model(sys.argv[1], compile=False)
assert "core.baseline" not in sys.modules
import core.baseline  # and the baseline (which uses the registry and TrainResult) imports on its own
print("OK")
"""


def test_model_registry_builds_every_kind_without_an_import_circle(tmp_path):
    """models.build_model imported baseline, baseline imported train, train imported both (issue 12): the
    registry in core.models imports none of them."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", _REGISTRY, str(tmp_path / "lin.keras")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "OK" in p.stdout, p.stderr[-3000:]
