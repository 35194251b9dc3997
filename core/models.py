"""Backend-neutral Keras 3 CRNNs for genre classification (TensorFlow, JAX or PyTorch via ``KERAS_BACKEND``).

Both models share one design: four conv blocks (Conv2D 3x3 -> BatchNorm -> ELU -> MaxPool -> Dropout, with
16/32/64/128 filters) whose pooling collapses the mel axis to 1 while keeping a time axis, a reshape to
``(time, 128)``, two stacked GRUs and a softmax layer.

* :func:`build_snippet_crnn` takes 3 s snippets (130 x 100 at the defaults) but accepts any number of frames
  (``frames=None``): the time axis is left open so inference can run on longer windows.
  ~368k parameters for 10 classes.
* :func:`build_full_crnn` takes whole 30 s clips (1292 x 100): it pools time 4x in the last three blocks
  (10 GRU steps) and uses half-width GRUs, ~185k parameters.

:func:`count_flops` gives the analytic multiply-accumulates of one forward pass (Conv2D, Dense, GRU).
Only ``keras.layers`` / ``keras.ops`` are used here, never a backend directly.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import keras
import numpy as np
from keras import layers, ops

from core.errors import GenreLabError

FILTERS = (16, 32, 64, 128)
BN_MOMENTUM = 0.9


class ModelBuildError(GenreLabError, ValueError):
    """A model that cannot be built as asked (fewer than two classes, too few mel bands, an unknown kind or
    architecture); the message says why. Also a ``ValueError``."""


#: architecture switches (measured in bench/train_throughput.py and results/ablation): batch norm on the first
#: (widest) block, the conv activation, an unrolled GRU loop (fixed input length only), and ``fast_bn``: the
#: batch norms as :class:`FastBatchNormalization` (the same function, a cheaper training step) or Keras' own
DEFAULT_ARCH = {"bn_first": True, "activation": "elu", "unroll": False, "pool_first": False, "fast_bn": True}
#: named architectures (``TrainConfig.arch``): ``standard`` is the design above; ``lean`` max-pools straight after
#: each convolution (batch norm and ELU run on the pooled map) and drops batch norm on the first, widest block:
#: the same parameters, ~1.3-1.4x less CPU per training sample (bench/train_throughput.py --arch); ``keras_bn`` is
#: the standard design with Keras' own BatchNormalization layer (the default before FastBatchNormalization)
ARCHS = {"standard": {}, "lean": {"pool_first": True, "bn_first": False}, "keras_bn": {"fast_bn": False}}


@keras.saving.register_keras_serializable(package="genrelab")
class FastBatchNormalization(layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` (same weights, config and inference) whose training step is written
    out: the batch statistics from ``keras.ops.moments``, the output as one ``x * s + t``, and the closed-form gradient

    ``dx = s * dy + k1 * x + k0``,  ``dgamma = inv_std * (sum(dy * x) - mean * sum(dy))``,  ``dbeta = sum(dy)``

    instead of the automatic differentiation of Keras' moments-then-normalise graph, which makes about twice
    as many passes over the activation (batch norm was 41 % of a training step; bench/train_throughput.py). Same
    function and same gradients up to float rounding (``tests/test_models.py``), with ``keras.ops`` only, so it
    runs on every Keras backend. Masks, renorm and other axes than the last fall back to Keras' own code.
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or self.renorm \
                or self.axis not in (-1, len(inputs.shape) - 1):
            return super().call(inputs, training=training, mask=mask)
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))  # as Keras': fp32 statistics
        axes = tuple(range(len(x.shape) - 1))
        count = 1
        for d in ops.shape(x)[:-1]:
            count = count * d
        n = ops.cast(count, x.dtype)
        # Keras' own two-pass statistics (E[x^2] - mean^2 would lose the variance when |mean| >> std in float32)
        mean, var = ops.moments(x, axes)
        inv = ops.rsqrt(var + self.epsilon)
        # "* 1": tensors, not the variables themselves (TensorFlow's custom gradient refuses to read variables)
        gamma = ops.cast(self.gamma, x.dtype) * 1 if self.scale else ops.ones_like(mean)
        beta = ops.cast(self.beta, x.dtype) * 1 if self.center else ops.zeros_like(mean)
        y = _batchnorm_train(x, gamma, beta, ops.stop_gradient(mean), ops.stop_gradient(inv), axes, n)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + var * (1.0 - self.momentum))
        return ops.cast(y, self.compute_dtype)


def _batchnorm_train(x, gamma, beta, mean, inv, axes, n):
    """``(x - mean) * inv * gamma + beta`` with the closed-form gradient (one output, for every backend's
    custom-gradient rules); ``mean`` and ``inv`` come in without gradient (their share is in the formula)."""

    @ops.custom_gradient
    def f(x, gamma, beta, mean, inv):
        s = gamma * inv
        y = x * s + (beta - mean * s)

        def grad(*args, upstream=None):
            dy = args[0] if upstream is None else upstream
            dbeta = ops.sum(dy, axis=axes)
            dgamma = inv * (ops.sum(dy * x, axis=axes) - mean * dbeta)
            k1 = -s * inv * dgamma / n
            k0 = -k1 * mean - s * dbeta / n
            dx = dy * s + (x * k1 + k0)
            return dx, dgamma, dbeta, ops.zeros_like(mean), ops.zeros_like(inv)

        return y, grad

    return f(x, gamma, beta, mean, inv)


def _freq_after_pools(n_mels: int, n_pools: int = 3, factor: int = 2) -> int:
    f = n_mels
    for _ in range(n_pools):
        f //= factor
    return f


def _conv_block(x, filters: int, pool: tuple[int, int], dropout: float, name: str, norm: bool = True,
                activation: str = "elu", pool_first: bool = False, fast_bn: bool = True):
    x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv")(x)
    if pool_first:
        # max-pool straight after the convolution: batch norm and the activation then run on a map 4x (or more)
        # smaller; for a monotonic activation without the norm it is the same function as pooling last
        x = layers.MaxPooling2D(pool_size=pool, strides=pool, name=f"{name}_pool")(x)
    if norm:
        # momentum 0.9, not Keras' 0.99: small datasets have few batches per epoch (GTZAN excerpts: 15), and
        # with 0.99 the moving statistics used at inference still lag their initial values when early stopping
        # ends the run, so validation sits at chance while training accuracy climbs.
        bn = FastBatchNormalization if fast_bn else layers.BatchNormalization
        x = bn(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    if activation == "elu":
        x = layers.ELU(name=f"{name}_elu")(x)
    else:
        x = layers.Activation(activation, name=f"{name}_{activation}")(x)
    if not pool_first:
        x = layers.MaxPooling2D(pool_size=pool, strides=pool, name=f"{name}_pool")(x)
    return layers.Dropout(dropout, name=f"{name}_drop")(x)


def _crnn(
    n_classes: int,
    n_mels: int,
    frames: int | None,
    time_pools: Sequence[int],
    gru_units: tuple[int, int],
    dropout: float,
    name: str,
    filters: Sequence[int] = FILTERS,
    arch: dict | None = None,
) -> keras.Model:
    if n_classes < 2:
        raise ModelBuildError("need at least 2 classes")
    freq_left = _freq_after_pools(n_mels)
    if freq_left < 1:
        raise ModelBuildError(f"n_mels={n_mels} is too small: the model halves the mel axis three times (need >= 8)")
    inputs = keras.Input(shape=(frames, n_mels, 1), name="mel")
    x = inputs
    pools = [(time_pools[0], 2), (time_pools[1], 2), (time_pools[2], 2), (time_pools[3], freq_left)]
    arch = {**DEFAULT_ARCH, **(arch or {})}
    for i, (n_filters, pool) in enumerate(zip(filters, pools), start=1):
        x = _conv_block(x, n_filters, pool, dropout, name=f"block{i}", norm=i > 1 or arch["bn_first"],
                        activation=arch["activation"], pool_first=arch["pool_first"], fast_bn=arch["fast_bn"])
    # (batch, time, 1, C) -> (batch, time, C); -1 keeps the time axis open for any input length
    x = layers.Reshape((-1, filters[-1]), name="to_sequence")(x)
    unroll = bool(arch["unroll"] and frames)  # unrolling needs a fixed number of steps
    x = layers.GRU(gru_units[0], return_sequences=True, unroll=unroll, name="gru1")(x)
    x = layers.GRU(gru_units[1], unroll=unroll, name="gru2")(x)
    x = layers.Dropout(dropout, name="head_drop")(x)
    # float32 output keeps the softmax/loss exact under a mixed-precision policy
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="genre")(x)
    return keras.Model(inputs, outputs, name=name)


def build_snippet_crnn(
    n_classes: int, n_mels: int = 100, frames: int | None = None, dropout: float = 0.1,
    filters: Sequence[int] = FILTERS, arch: dict | None = None,
) -> keras.Model:
    """CRNN for snippets; input ``(frames, n_mels, 1)`` with ``frames=None`` accepting any length >= 8.

    Pools time 2x in the first three blocks (a 130-frame snippet becomes 16 GRU steps) and collapses the
    remaining mel bins in the fourth. GRU(192, sequences) -> GRU(96) -> Dense softmax. ``filters`` (four
    conv widths) exists for comparisons: the cost is dominated by the early conv widths, not the parameters.
    """
    return _crnn(n_classes, n_mels, frames, (2, 2, 2, 1), (192, 96), dropout, "snippet_crnn", filters, arch)


def build_full_crnn(
    n_classes: int, n_mels: int = 100, frames: int | None = 1292, dropout: float = 0.1, arch: dict | None = None,
) -> keras.Model:
    """CRNN for full 30 s clips (1292 frames at the defaults): time pooled 2/4/4/4 (1292 -> 10 GRU steps),
    GRU(96, sequences) -> GRU(48) -> Dense softmax; about half the parameters of the snippet model."""
    return _crnn(n_classes, n_mels, frames, (2, 4, 4, 4), (96, 48), dropout, "full_crnn", FILTERS, arch)


# ---------------------------------------------------------------------------------------------------------
# the reference baseline's model (fitted by core.baseline)
# ---------------------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="genrelab")
class MelStats(layers.Layer):
    """``(batch, time, n_mels, 1)`` -> ``(batch, 2 * n_mels)``: per-band mean and standard deviation over time."""

    def call(self, x):
        x = ops.squeeze(x, axis=-1)
        mean = ops.mean(x, axis=1)
        std = ops.sqrt(ops.maximum(ops.mean(ops.square(x), axis=1) - ops.square(mean), 1e-12))
        return ops.concatenate([mean, std], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * input_shape[2])


def build_linear(n_classes: int, n_mels: int, mean: np.ndarray | None = None, var: np.ndarray | None = None,
                 l2: float = 1e-3) -> tuple[keras.Model, keras.Model]:
    """Returns ``(full_model, head)``: the head maps statistics to class scores, the full model wraps it."""
    norm = layers.Normalization(mean=mean, variance=var, name="stats_norm") if mean is not None else \
        layers.Normalization(name="stats_norm")
    dense = layers.Dense(n_classes, activation="softmax", kernel_regularizer=keras.regularizers.L2(l2),
                         dtype="float32", name="genre")
    s_in = keras.Input(shape=(2 * n_mels,), name="stats")
    head = keras.Model(s_in, dense(norm(s_in)), name="linear_head")
    x_in = keras.Input(shape=(None, n_mels, 1), name="mel")
    full = keras.Model(x_in, dense(norm(MelStats(name="mel_stats")(x_in))), name="linear_baseline")
    return full, head


# ---------------------------------------------------------------------------------------------------------
# the registry: model kind -> builder
# ---------------------------------------------------------------------------------------------------------
def _build_linear_model(n_classes: int, n_mels: int, frames: int | None, dropout: float, arch: dict) -> keras.Model:
    return build_linear(n_classes, n_mels)[0]  # frames are open; no dropout, no architecture variants


#: every model kind trained from scratch: ``kind -> builder(n_classes, n_mels, frames, dropout, arch)``
#: (``snippet`` leaves the time axis open, ``full`` fixes it; ``linear`` is the reference baseline, fitted by
#: :func:`core.baseline.train_linear`). The "musicnn" kind (a head on pretrained embeddings) is built by
#: :mod:`core.embeddings`.
BUILDERS = {
    "snippet": lambda n_classes, n_mels, frames, dropout, arch: build_snippet_crnn(n_classes, n_mels, None, dropout,
                                                                                  arch=arch),
    "full": lambda n_classes, n_mels, frames, dropout, arch: build_full_crnn(n_classes, n_mels, frames, dropout,
                                                                            arch=arch),
    "linear": _build_linear_model,
}
MODEL_KINDS = tuple(BUILDERS)


def build_model(kind: str, n_classes: int, n_mels: int, frames: int | None = None, dropout: float = 0.1,
                arch: str = "standard") -> keras.Model:
    """Build a model of any kind in :data:`BUILDERS`; ``frames`` is fixed for full clips (compute cost) and
    open otherwise; ``arch`` names an entry of :data:`ARCHS` (the CRNNs; the baseline has none)."""
    if arch not in ARCHS:
        raise ModelBuildError(f"unknown architecture {arch!r} (use one of {', '.join(ARCHS)})")
    if kind not in BUILDERS:
        raise ModelBuildError(f"unknown model kind {kind!r} (use one of {MODEL_KINDS})")
    return BUILDERS[kind](n_classes, n_mels, frames, dropout, ARCHS[arch])


def load_model(path: str | os.PathLike, compile: bool = True) -> keras.Model:
    """Load a ``.keras`` file of ours: any kind above, musicnn + head included (the layers of this module are
    registered with Keras on import). A file that does not load raises :class:`core.train_config.TrainError` with
    the file and the reason. Inference (:mod:`core.predictor`'s Keras backend) and training both load here."""
    try:
        return keras.models.load_model(path, compile=compile)
    except Exception as exc:
        from core.train_config import TrainError

        raise TrainError(f"model file {path} does not load: {type(exc).__name__}: {str(exc)[:200]}") from exc


def count_flops(model: keras.Model, input_shape: Sequence[int]) -> dict:
    """Analytic cost of one forward pass on one sample of ``input_shape`` = ``(frames, n_mels[, 1])``.

    Counts multiply-accumulates (MACs) of Conv2D, Dense and GRU layers (the rest is < 1 %); FLOPs = 2 x MACs.
    Returns ``{"macs": int, "flops": int, "per_layer": {name: macs}}``.
    """
    shape = tuple(input_shape)
    if len(shape) == 2:
        shape = shape + (1,)
    t, f, c = shape
    per_layer: dict[str, int] = {}
    seq_len = None
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            kh, kw = layer.kernel_size
            per_layer[layer.name] = t * f * kh * kw * c * layer.filters  # 'same' padding, stride 1
            c = layer.filters
        elif isinstance(layer, layers.MaxPooling2D):
            ph, pw = layer.pool_size
            t, f = t // ph, f // pw
        elif isinstance(layer, layers.Reshape):
            seq_len, c = t, f * c  # mel axis is 1 here
        elif isinstance(layer, layers.GRU):
            u = layer.units
            # 3 gates, each input (c) and recurrent (u) matmul, per time step
            per_layer[layer.name] = seq_len * 3 * (c * u + u * u)
            c = u
            if not layer.return_sequences:
                seq_len = 1
        elif isinstance(layer, layers.Dense):
            per_layer[layer.name] = c * layer.units
            c = layer.units
    macs = int(sum(per_layer.values()))
    return {"macs": macs, "flops": 2 * macs, "per_layer": per_layer}


def describe(model: keras.Model, input_shape: Sequence[int]) -> dict:
    """Parameters and forward cost in one dict (for model cards and the README)."""
    cost = count_flops(model, input_shape)
    return {
        "name": model.name,
        "params": int(model.count_params()),
        "trainable_params": int(sum(math.prod(w.shape) for w in model.trainable_weights)),
        "input_shape": list(input_shape),
        "macs_per_sample": cost["macs"],
        "mflops_per_sample": round(cost["flops"] / 1e6, 2),
    }
