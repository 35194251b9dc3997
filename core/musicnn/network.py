"""musicnn's network in backend-neutral Keras 3 (the original's ``musicnn/models.py``: ``build_musicnn``,
``frontend``, ``midend``, ``backend``), its weights (``{"<layer>/<weight>": array}`` in ``musicnn.weights.npz``)
and the named per-window features as Keras outputs (:func:`feature_model`: the reference of
:mod:`core.musicnn_numpy`). Keras is imported inside the functions: importing this module loads NumPy only."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from core.musicnn.config import BN_EPSILON, CARD_FILE, N_MELS, PATCH_FRAMES, WEIGHTS_FILE, MusicnnError

TEMPORAL_KERNELS = (128, 64, 32)


def build_musicnn(n_classes: int = 50, frames: int | None = PATCH_FRAMES, n_mels: int = N_MELS,
                  num_filt_frontend: float = 1.6, num_filt_midend: int = 64, num_units_backend: int = 200,
                  name: str = "musicnn"):
    """musicnn as a Keras functional model: input ``(frames, 96)`` log-mel patches (``frames=None`` for any
    length), outputs ``{"taggram": (n, n_classes) sigmoid, "penultimate": (n, 200)}``."""
    import keras
    from keras import layers

    timbral_filters = int(num_filt_frontend * 128)
    temporal_filters = int(num_filt_frontend * 32)
    inp = keras.Input(shape=(frames, n_mels), name="log_mel")
    x = layers.Reshape((-1, n_mels, 1), name="expand")(inp)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="input_bn")(x)
    front = []
    xp = layers.ZeroPadding2D(((3, 3), (0, 0)), name="timbral_pad")(x)
    for frac, tag in ((0.4, "74"), (0.7, "77")):
        k = int(frac * n_mels)
        h = layers.Conv2D(timbral_filters, (7, k), padding="valid", activation="relu", name=f"timbral{tag}_conv")(xp)
        h = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"timbral{tag}_bn")(h)
        h = layers.MaxPooling2D((1, n_mels - k + 1), name=f"timbral{tag}_pool")(h)
        front.append(layers.Reshape((-1, timbral_filters), name=f"timbral{tag}_squeeze")(h))
    for k in TEMPORAL_KERNELS:
        # TF "same" padding for an even kernel: (k - 1) // 2 before, k // 2 after; explicit so that every
        # backend pads the same way
        h = layers.ZeroPadding2D((((k - 1) // 2, k // 2), (0, 0)), name=f"temporal{k}_pad")(x)
        h = layers.Conv2D(temporal_filters, (k, 1), padding="valid", activation="relu", name=f"temporal{k}_conv")(h)
        h = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"temporal{k}_bn")(h)
        h = layers.MaxPooling2D((1, n_mels), name=f"temporal{k}_pool")(h)
        front.append(layers.Reshape((-1, temporal_filters), name=f"temporal{k}_squeeze")(h))
    frontend = layers.Concatenate(axis=-1, name="frontend")(front)  # (T, 561)

    mids = [frontend]
    h = frontend
    for i in (1, 2, 3):
        c = layers.ZeroPadding1D(3, name=f"midend{i}_pad")(h)
        c = layers.Conv1D(num_filt_midend, 7, padding="valid", activation="relu", name=f"midend{i}_conv")(c)
        c = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"midend{i}_bn")(c)
        h = c if i == 1 else layers.Add(name=f"midend{i}_res")([c, h])
        mids.append(h)
    midend = layers.Concatenate(axis=-1, name="midend")(mids)  # (T, 753)

    max_pool = layers.GlobalMaxPooling1D(name="max_pool")(midend)
    mean_pool = layers.GlobalAveragePooling1D(name="mean_pool")(midend)
    pooled = layers.Concatenate(axis=-1, name="pool")([max_pool, mean_pool])  # [max..., mean...]
    pooled = layers.BatchNormalization(epsilon=BN_EPSILON, name="pool_bn")(pooled)
    dense = layers.Dense(num_units_backend, activation="relu", name="penultimate_dense")(pooled)
    penultimate = layers.BatchNormalization(epsilon=BN_EPSILON, name="penultimate")(dense)
    logits = layers.Dense(n_classes, name="tag_logits")(penultimate)
    taggram = layers.Activation("sigmoid", name="taggram", dtype="float32")(logits)
    return keras.Model(inp, {"taggram": taggram, "penultimate": penultimate}, name=name)


def feature_model(model, names=("penultimate",)):
    """A view of a :func:`build_musicnn` model whose outputs are the named per-window features
    (:data:`core.musicnn_numpy.FEATURES`: ``max_pool`` / ``mean_pool``, the back end's temporal max / mean of the
    mid-end concatenation, 753 each; ``penultimate``, 200; ``taggram``, 50): the Keras reference of
    :mod:`core.musicnn_numpy`, patch by patch."""
    import keras

    layer = {"max_pool": "max_pool", "mean_pool": "mean_pool", "penultimate": "penultimate", "taggram": "taggram"}
    unknown = [n for n in names if n not in layer]
    if unknown:
        raise MusicnnError(f"unknown musicnn feature {unknown[0]!r} (known: {', '.join(layer)})")
    return keras.Model(model.input, {n: model.get_layer(layer[n]).output for n in names},
                       name=model.name + "_features")


def count_macs(frames: int = PATCH_FRAMES, n_mels: int = N_MELS) -> int:
    """Multiply-accumulates of one forward pass on one patch (convolutions and dense layers)."""
    t = frames
    macs = 0
    for frac in (0.4, 0.7):
        k = int(frac * n_mels)
        macs += t * (n_mels - k + 1) * 204 * 7 * k
    for k in TEMPORAL_KERNELS:
        macs += t * n_mels * 51 * k
    macs += t * 64 * 7 * 561 + 2 * t * 64 * 7 * 64
    macs += 1506 * 200 + 200 * 50
    return macs


#: the layers that hold weights (creation order in :func:`build_musicnn`), each with its TF1 variable scope in
#: musicnn's checkpoints (:mod:`core.musicnn.convert` reads them; :mod:`core.musicnn_numpy` loads the same names)
#: Keras layer -> TF1 variable scope in musicnn's checkpoints (creation order in ``build_musicnn``)
CHECKPOINT_MAP = {
    "input_bn": "batch_normalization",
    "timbral74_conv": "conv2d", "timbral74_bn": "batch_normalization_1",
    "timbral77_conv": "conv2d_1", "timbral77_bn": "batch_normalization_2",
    "temporal128_conv": "conv2d_2", "temporal128_bn": "batch_normalization_3",
    "temporal64_conv": "conv2d_3", "temporal64_bn": "batch_normalization_4",
    "temporal32_conv": "conv2d_4", "temporal32_bn": "batch_normalization_5",
    "midend1_conv": "conv2d_5", "midend1_bn": "batch_normalization_6",
    "midend2_conv": "conv2d_6", "midend2_bn": "batch_normalization_7",
    "midend3_conv": "conv2d_7", "midend3_bn": "batch_normalization_8",
    "pool_bn": "batch_normalization_9",
    "penultimate_dense": "dense", "penultimate": "batch_normalization_10",
    "tag_logits": "dense_1",
}
BN_PARTS = ("gamma", "beta", "moving_mean", "moving_variance")


def weight_parts(layer: str) -> tuple[str, ...]:
    """The weights a layer of :data:`CHECKPOINT_MAP` holds: a batch norm's :data:`BN_PARTS`, else kernel and bias."""
    return BN_PARTS if layer.endswith("_bn") or layer == "penultimate" else ("kernel", "bias")


def set_weights(model, weights: dict[str, np.ndarray]) -> None:
    """Load ``{"<layer>/<weight>": array}`` into a :func:`build_musicnn` model (shapes checked)."""
    for layer_name in CHECKPOINT_MAP:
        layer = model.get_layer(layer_name)
        parts = weight_parts(layer_name)
        arrays = [weights[f"{layer_name}/{p}"] for p in parts]
        current = layer.get_weights()
        for a, c, p in zip(arrays, current, parts):
            if a.shape != c.shape:
                raise MusicnnError(f"{layer_name}/{p}: weights {a.shape} do not fit the layer {c.shape}")
        layer.set_weights(arrays)


def save_weights_npz(path: str | os.PathLike, weights: dict[str, np.ndarray]) -> None:
    from core.utils import atomic_write_bytes
    import io

    buf = io.BytesIO()
    np.savez(buf, **{k: v.astype(np.float32) for k, v in weights.items()})
    atomic_write_bytes(path, buf.getvalue())


def load_weights_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def load_musicnn(folder: str | os.PathLike, frames: int | None = PATCH_FRAMES):
    """Build the network and load the weights of a converted model folder (``musicnn.weights.npz`` + card)."""
    folder = Path(folder)
    card = json.loads((folder / CARD_FILE).read_text())
    model = build_musicnn(n_classes=len(card["labels"]), frames=frames, name=card.get("name", "musicnn").replace("-", "_"))
    set_weights(model, load_weights_npz(folder / card.get("weights_file", WEIGHTS_FILE)))
    return model, card

