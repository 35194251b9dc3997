"""The NumPy forward pass: the CRNNs (and the linear baseline) of a ``.keras`` file without TensorFlow.

Importing TensorFlow alone takes about 650 MB of resident memory, more than half of what Streamlit Community Cloud
gives an app; the dashboard's demo and ``python -m core predict`` only need forward passes of small, known models.
:func:`load_numpy_model` reads a ``.keras`` archive (``config.json`` + ``model.weights.h5``, read with h5py) and
evaluates the layer chain with NumPy: Conv2D (each BatchNormalization after a linear Conv2D folded into it),
BatchNormalization (and core.models' FastBatchNormalization), ELU / activations, MaxPooling2D, Dropout (identity),
Reshape, GRU (Keras' ``reset_after`` formulation), Dense, Normalization and the baseline's ``MelStats``. Anything
else raises :class:`UnsupportedModel`; :class:`core.predictor.Predictor` (``backend="auto"``) then runs the model
with Keras. The tests check both give the same scores (to ~1e-5).

This module imports neither Keras nor TensorFlow (nor anything of the engine but :mod:`core.errors`).
"""
from __future__ import annotations

import functools
import io
import json
import os
import re
import zipfile
from typing import Any, Callable

import numpy as np

from core.errors import GenreLabError


class NumpyModelError(GenreLabError):
    """A ``.keras`` file this runner cannot read; the message names it."""


class UnsupportedModel(NumpyModelError):
    """The model uses a layer (or a layer option) this NumPy runner does not implement."""


def _snake(name: str) -> str:
    """Keras' ``to_snake_case`` (the weight-file paths are named after the layer classes)."""
    s = re.sub(r"\W+", "", name)
    s = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", s)
    s = re.sub("([a-z])([A-Z])", r"\1_\2", s).lower()
    return s


def _activation(name: str | None) -> Callable[[np.ndarray], np.ndarray]:
    name = name or "linear"
    if name == "linear":
        return lambda x: x
    if name == "relu":
        return lambda x: np.maximum(x, 0)
    if name == "elu":
        return lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0)))
    if name == "tanh":
        return np.tanh
    if name == "sigmoid":
        return _sigmoid
    if name == "softmax":
        return _softmax
    raise UnsupportedModel(f"activation {name!r}")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1 / (1 + exp(-x)), without overflow warnings


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------------------------
def _conv2d(cfg: dict, w: list[np.ndarray]) -> Callable:
    if cfg.get("data_format", "channels_last") != "channels_last" or tuple(cfg.get("strides", (1, 1))) != (1, 1) \
            or tuple(cfg.get("dilation_rate", (1, 1))) != (1, 1) or cfg.get("groups", 1) != 1:
        raise UnsupportedModel("Conv2D with strides, dilation, groups or channels_first")
    kernel = w[0].astype(np.float32)
    bias = w[1].astype(np.float32) if cfg.get("use_bias", True) else None
    kh, kw = kernel.shape[:2]
    kmat = np.ascontiguousarray(kernel.reshape(-1, kernel.shape[3]))  # rows ordered (kh, kw, c)
    act = _activation(cfg.get("activation"))
    same = cfg.get("padding", "valid") == "same"

    def run(x: np.ndarray) -> np.ndarray:
        n, t, f, _ = x.shape
        if same:
            pt, pf = kh - 1, kw - 1
            x = np.pad(x, ((0, 0), (pt // 2, pt - pt // 2), (pf // 2, pf - pf // 2), (0, 0)))
        to, fo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
        # im2col: one (n*t*f, kh*kw*c) x (kh*kw*c, filters) matrix product
        cols = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # (n, to, fo, c, kh, kw)
        cols = np.ascontiguousarray(cols.transpose(0, 1, 2, 4, 5, 3)).reshape(n * to * fo, -1)
        out = cols @ kmat
        if bias is not None:
            out += bias
        return act(out.reshape(n, to, fo, -1))

    return run


def _bn_affine(cfg: dict, w: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Inference-mode BatchNormalization as ``x * scale + shift`` (per channel, float32)."""
    if cfg.get("axis", -1) not in (-1, 3, [3], [-1]):
        raise UnsupportedModel("BatchNormalization on another axis than the last")
    k = 0
    gamma = beta = None
    if cfg.get("scale", True):
        gamma, k = w[k], k + 1
    if cfg.get("center", True):
        beta, k = w[k], k + 1
    mean, var = w[k], w[k + 1]
    scale = (gamma if gamma is not None else 1.0) / np.sqrt(var + cfg.get("epsilon", 1e-3))
    shift = (beta if beta is not None else 0.0) - mean * scale
    return np.asarray(scale, np.float32), np.asarray(shift, np.float32)


def _batchnorm(cfg: dict, w: list[np.ndarray]) -> Callable:
    scale, shift = _bn_affine(cfg, w)
    return lambda x: x * scale + shift


def _maxpool(cfg: dict, w) -> Callable:
    if cfg.get("padding", "valid") != "valid" or cfg.get("data_format", "channels_last") != "channels_last":
        raise UnsupportedModel("MaxPooling2D with 'same' padding or channels_first")
    ph, pw = cfg["pool_size"]
    if tuple(cfg.get("strides") or (ph, pw)) != (ph, pw):
        raise UnsupportedModel("MaxPooling2D with strides other than the pool size")

    def run(x: np.ndarray) -> np.ndarray:
        n, t, f, c = x.shape
        t2, f2 = t // ph, f // pw
        y = x[:, :t2 * ph, :f2 * pw, :].reshape(n, t2, ph, f2, pw, c)
        out = y[:, :, 0, :, 0].copy()  # the maximum of strided slices: ~4x faster than .max(axis=(2, 4))
        for i in range(ph):
            for j in range(pw):
                if i or j:
                    np.maximum(out, y[:, :, i, :, j], out=out)
        return out

    return run


def _reshape(cfg: dict, w) -> Callable:
    target = tuple(cfg["target_shape"])
    return lambda x: x.reshape((x.shape[0],) + target)


def _gru(cfg: dict, w: list[np.ndarray]) -> Callable:
    if not cfg.get("reset_after", True) or cfg.get("go_backwards") or cfg.get("stateful") \
            or not cfg.get("use_bias", True):
        raise UnsupportedModel("GRU variant (reset_after=False, go_backwards, stateful or no bias)")
    units = int(cfg["units"])
    kernel, rec, bias = (a.astype(np.float32) for a in w[:3])
    b_in, b_rec = (bias[0], bias[1]) if bias.ndim == 2 else (bias, np.zeros_like(bias))
    act, rec_act = _activation(cfg.get("activation", "tanh")), _activation(cfg.get("recurrent_activation", "sigmoid"))
    seqs = bool(cfg.get("return_sequences"))

    def run(x: np.ndarray) -> np.ndarray:
        n, t, d = x.shape
        xs = (x.reshape(n * t, d) @ kernel + b_in).reshape(n, t, -1)  # (n, t, 3u): z, r, h
        h = np.zeros((n, units), np.float32)
        out = []
        for s in range(t):
            inner = h @ rec + b_rec
            xz, xr, xh = xs[:, s, :units], xs[:, s, units:2 * units], xs[:, s, 2 * units:]
            z = rec_act(xz + inner[:, :units])
            r = rec_act(xr + inner[:, units:2 * units])
            hh = act(xh + r * inner[:, 2 * units:])
            h = z * h + (1.0 - z) * hh
            if seqs:
                out.append(h)
        return np.stack(out, axis=1) if seqs else h

    return run


def _dense(cfg: dict, w: list[np.ndarray]) -> Callable:
    kernel = w[0].astype(np.float32)
    bias = w[1].astype(np.float32) if cfg.get("use_bias", True) else 0.0
    act = _activation(cfg.get("activation"))
    return lambda x: act(x @ kernel + bias)


def _elu(cfg: dict, w) -> Callable:
    alpha = float(cfg.get("alpha", 1.0))
    return lambda x: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def _activation_layer(cfg: dict, w) -> Callable:
    return _activation(cfg.get("activation"))


def _normalization(cfg: dict, w: list[np.ndarray]) -> Callable:
    if len(w) >= 2:
        mean, var = w[0], w[1]
    elif cfg.get("mean") is not None:
        mean, var = np.asarray(cfg["mean"]), np.asarray(cfg["variance"])
    else:
        raise UnsupportedModel("Normalization layer without statistics")
    if cfg.get("invert"):
        raise UnsupportedModel("inverted Normalization")
    mean = np.asarray(mean, np.float32).reshape(-1)
    std = np.sqrt(np.maximum(np.asarray(var, np.float32).reshape(-1), 1e-7)).astype(np.float32)
    return lambda x: (x - mean) / std


def _mel_stats(cfg: dict, w) -> Callable:
    def run(x: np.ndarray) -> np.ndarray:
        x = x[..., 0]
        mean = x.mean(axis=1)
        std = np.sqrt(np.maximum((x * x).mean(axis=1) - mean * mean, 1e-12))
        return np.concatenate([mean, std], axis=-1)

    return run


def _identity(cfg: dict, w) -> Callable:
    return lambda x: x


LAYERS: dict[str, Callable[[dict, list], Callable]] = {
    "Conv2D": _conv2d, "BatchNormalization": _batchnorm, "MaxPooling2D": _maxpool, "Reshape": _reshape,
    "GRU": _gru, "Dense": _dense, "ELU": _elu, "Activation": _activation_layer, "Dropout": _identity,
    "SpatialDropout2D": _identity, "GaussianNoise": _identity, "Normalization": _normalization,
    "MelStats": _mel_stats,
}
#: our subclasses that are their base class at inference (core.models): the base's code runs them
ALIASES = {"FastBatchNormalization": "BatchNormalization"}


# ---------------------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------------------
class NumpyModel:
    """A chain of layers from a ``.keras`` file, evaluated in NumPy; mimics the parts of ``keras.Model`` the
    :class:`core.predictor.Predictor` uses (``predict_on_batch``, ``input_shape``, ``output_shape``, ``name``)."""

    def __init__(self, name: str, steps: list[tuple[str, Callable]], input_shape: tuple, n_outputs: int):
        self.name = name
        self.steps = steps
        self.input_shape = input_shape
        self.output_shape = (None, n_outputs)

    def predict_on_batch(self, x) -> np.ndarray:
        with single_blas_thread():  # small matrix products: threads cost more than they bring (2x on 2 cores)
            return self.forward(x)

    def forward(self, x) -> np.ndarray:
        """:meth:`predict_on_batch` without setting the BLAS threads (for a caller that holds
        :func:`single_blas_thread` around several models run on threads of its own)."""
        x = np.asarray(x, dtype=np.float32)
        for _, fn in self.steps:
            x = fn(x)
        return x

    __call__ = predict_on_batch


# ---------------------------------------------------------------------------------------------------------
# the NumPy runtime (also core.musicnn_numpy's and an ensemble's threads in core.predictor)
# ---------------------------------------------------------------------------------------------------------
def single_blas_thread():
    """Context limiting BLAS to one thread (threadpoolctl, installed with scikit-learn); a no-op without it. The
    work is split across threads at a coarser level instead (chunks, window batches, ensemble members): on 2
    shared cores a threaded BLAS spent ~1.8x the CPU time for the same small products."""
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        import contextlib

        return contextlib.nullcontext()


def default_threads() -> int:
    """Threads for NumPy inference: the CPUs this process may use (at most 4), or ``$GENRELAB_THREADS``."""
    env = os.environ.get("GENRELAB_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(4, n))


@functools.cache
def _libc():
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def trim_heap() -> None:
    """glibc's ``malloc_trim(0)``: memory worker threads freed stays in their malloc arenas (resident) until
    trimmed; a long-running server (the demo) would keep ~100 MB after each musicnn classification. A no-op
    elsewhere."""
    lib = _libc()
    if lib is not None and hasattr(lib, "malloc_trim"):
        lib.malloc_trim(0)


def _inbound_names(layer: dict) -> list[str]:
    """Names of the layers feeding ``layer`` in a Keras 3 functional config."""
    names: list[str] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            if obj.get("class_name") == "__keras_tensor__":
                names.append(obj["config"]["keras_history"][0])
                return
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    walk(layer.get("inbound_nodes", []))
    return names


def _fold_batchnorm(specs: list[tuple[str, dict, list]]) -> list[tuple[str, dict, list]]:
    """Merge each BatchNormalization into the linear Conv2D before it (inference: a per-channel affine map),
    which saves a full pass over the largest activations."""
    out: list[tuple[str, dict, list]] = []
    for cls, cfg, w in specs:
        prev = out[-1] if out else None
        if cls == "BatchNormalization" and prev is not None and prev[0] == "Conv2D" \
                and (prev[1].get("activation") or "linear") == "linear" and cfg.get("axis", -1) in (-1, 3, [3], [-1]):
            scale, shift = _bn_affine(cfg, w)
            kernel = prev[2][0] * scale
            bias = (prev[2][1] if prev[1].get("use_bias", True) else 0.0) * scale + shift
            out[-1] = ("Conv2D", {**prev[1], "use_bias": True, "name": f"{prev[1]['name']}+bn"},
                       [kernel.astype(np.float32), np.asarray(bias, np.float32)])
            continue
        out.append((cls, cfg, w))
    return out


#: layers that change no value (inference) and element-wise activations that never decrease: a max-pool after
#: them may run before them (``max(f(a), f(b)) == f(max(a, b))``), so they touch a quarter of the values
_PASS_THROUGH = {"Dropout", "SpatialDropout2D", "GaussianNoise"}
_MONOTONE = {"linear", "relu", "elu", "tanh", "sigmoid"}


def _is_monotone(cls: str, cfg: dict) -> bool:
    if cls == "ELU":
        return float(cfg.get("alpha", 1.0)) >= 0
    return cls == "Activation" and (cfg.get("activation") or "linear") in _MONOTONE


def _pool_first(specs: list[tuple[str, dict, list]]) -> list[tuple[str, dict, list]]:
    """Move each valid max-pool before the monotone activation (and pass-through layers) right before it: the
    same numbers, the activation on the pooled map (the CRNN's ELU on the widest block was a third of its
    time)."""
    out = list(specs)
    for k, (cls, cfg, _) in enumerate(out):
        if cls != "MaxPooling2D" or cfg.get("padding", "valid") != "valid":
            continue
        j = k - 1
        while j >= 0 and out[j][0] in _PASS_THROUGH:
            j -= 1
        if j >= 0 and _is_monotone(out[j][0], out[j][1]):
            out.insert(j, out.pop(k))
    return out


def read_keras_model(path: str | os.PathLike) -> tuple[dict, dict[str, list[np.ndarray]]]:
    """``(config, weights)`` of a ``.keras`` archive without Keras: ``config.json`` and every layer's weights
    from ``model.weights.h5`` (read with h5py), keyed by layer name; a nested model's layers as
    ``"<model layer>/<layer>"``. Raises :class:`NumpyModelError` for a file that is not a readable archive."""
    import h5py

    try:
        with zipfile.ZipFile(path) as z:
            cfg = json.loads(z.read("config.json"))
            weights_blob = z.read("model.weights.h5")
    except RecursionError:  # a config.json nested too deeply for the parser
        raise NumpyModelError(f"model file {path} is not a readable .keras archive (config.json nested too "
                              "deeply)") from None
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as exc:
        raise NumpyModelError(f"model file {path} is not a readable .keras archive ({exc})") from exc
    if not isinstance(cfg, dict) or not isinstance(cfg.get("config"), dict):
        raise NumpyModelError(f"model file {path} has no model configuration")
    weights: dict[str, list[np.ndarray]] = {}
    try:
        with h5py.File(io.BytesIO(weights_blob), "r") as h5:
            _read_weights(cfg["config"].get("layers") or [], h5, "", weights)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise NumpyModelError(f"model file {path}: its weights cannot be read ({exc})") from exc
    return cfg, weights


def _read_weights(layers: list[dict], group, prefix: str, out: dict[str, list[np.ndarray]]) -> None:
    """The weights of ``layers`` (a model config's layer list) in an h5 group: Keras names each layer's group
    after its class, numbered in the order of the layers (``conv2d``, ``conv2d_1``, ...)."""
    counters: dict[str, int] = {}
    for layer in layers:
        if layer.get("class_name") == "InputLayer":
            continue
        base = _snake(layer["class_name"])  # the weight file names the layer's own class
        k = counters.get(base, 0)
        counters[base] = k + 1
        path = f"layers/{base}" + (f"_{k}" if k else "")
        name = prefix + layer["config"]["name"]
        w: list[np.ndarray] = []
        if path in group:
            g = group[path]
            vars_group = g["cell/vars"] if "cell" in g else g.get("vars")
            if vars_group is not None:
                w = [np.asarray(vars_group[str(i)]) for i in range(len(vars_group))]
            if isinstance(layer["config"].get("layers"), list):  # a nested model
                _read_weights(layer["config"]["layers"], g, name + "/", out)
        out[name] = w


def load_numpy_model(path: str | os.PathLike) -> NumpyModel:
    """Read a ``.keras`` file into a :class:`NumpyModel` (raises :class:`UnsupportedModel`, or
    :class:`NumpyModelError` for a file that is not a readable archive)."""
    cfg, weights = read_keras_model(path)
    return numpy_model_from_config(cfg, weights)


def numpy_model_from_config(cfg: dict, weights: dict[str, list[np.ndarray]], prefix: str = "") -> NumpyModel:
    """A :class:`NumpyModel` from a model's config (``{"class_name", "config": {"layers", ...}}``) and its
    weights by layer name (:func:`read_keras_model`; ``prefix`` for a model nested in another)."""
    if cfg.get("class_name") not in ("Functional", "Sequential", "Model"):
        raise UnsupportedModel(f"model class {cfg.get('class_name')!r}")
    layers = cfg["config"]["layers"]
    if cfg.get("class_name") != "Sequential":
        prev = None
        for layer in layers:  # a plain chain: every layer fed by the one before
            inbound = _inbound_names(layer)
            if layer["class_name"] != "InputLayer" and inbound != [prev]:
                raise UnsupportedModel("a model that is not a simple chain of layers")
            prev = layer["config"]["name"]
    first = layers[0]
    if first["class_name"] != "InputLayer":
        raise UnsupportedModel("no input layer")
    shape = first["config"].get("batch_shape") or first["config"].get("batch_input_shape")
    input_shape = tuple(shape)
    specs: list[tuple[str, dict, list[np.ndarray]]] = []
    for layer in layers[1:]:
        cls = ALIASES.get(layer["class_name"], layer["class_name"])
        if cls not in LAYERS:
            raise UnsupportedModel(f"layer {cls}")
        specs.append((cls, layer["config"], weights.get(prefix + layer["config"]["name"], [])))
    steps = [(cfg["name"], LAYERS[cls](cfg, w)) for cls, cfg, w in _pool_first(_fold_batchnorm(specs))]
    last = layers[-1]["config"]
    n_out = int(last.get("units") or 0)
    if not n_out:
        raise UnsupportedModel("the last layer is not a Dense layer")
    return NumpyModel(cfg["config"].get("name", "model"), steps, input_shape, n_out)
