"""musicnn (Pons & Serra 2019) in backend-neutral Keras 3, its log-mel front end in NumPy, and the converter
that reads the original TF1 checkpoints from the ``musicnn`` 0.1.0 wheel.

Pons, J. and Serra, X. (2019). *musicnn: pre-trained convolutional neural networks for music audio tagging.*
Late-breaking/demo session, ISMIR 2019. arXiv:1909.06654. Code and weights: https://github.com/jordipons/musicnn
(ISC licence, (c) Music Technology Group, Universitat Pompeu Fabra 2019). The graph below follows the wheel's
``musicnn/models.py`` (``build_musicnn``, ``frontend``, ``midend``, ``backend``); the front end follows its
``musicnn/extractor.py`` (``batch_data``) and ``musicnn/configuration.py``.

Input representation (:func:`log_mel`, exactly musicnn's ``batch_data`` librosa call)
    mono audio at **16 kHz**; ``librosa.feature.melspectrogram(y, sr=16000, hop_length=256, n_fft=512,
    n_mels=96)`` of librosa 0.7: centred frames with **reflect** padding, periodic Hann window, power 2,
    Slaney mel scale and Slaney (area) normalisation, 0 Hz to 8 kHz; then cast to **float16** (as musicnn
    does) and compressed with ``log10(10000 x + 1)``. Time first: ``(frames, 96)``; ``1 + len(y) // 256``
    frames.
Patches (:func:`patch_starts`)
    187 frames = 3 s (``librosa.time_to_frames(3, sr=16000, n_fft=512, hop_length=256) + 1``); musicnn's
    extractor cuts them every 187 frames by default (no overlap).
Network (:func:`build_musicnn`), ``MSD_musicnn`` / ``MTT_musicnn``: 792k parameters, 50 sigmoid tags
    * input batch norm (one channel);
    * front end, "7774timbraltemporal": two **timbral** convolutions (204 filters of 7 frames x 38 and 7 x 67
      mel bands, i.e. 0.4 and 0.7 x 96; time zero-padded by 3, mel axis valid) and three **temporal**
      convolutions (51 filters of 128, 64 and 32 frames x 1 band, TF "same" padding), each ReLU -> batch
      norm -> max over the whole mel axis; concatenated: 561 channels per frame;
    * mid end: three 1D convolutions (64 filters, 7 frames, zero-padded by 3) with ReLU and batch norm, the
      2nd and 3rd with residual connections; the front end and the three mid-end outputs are concatenated
      ("dense" connections): 753 channels per frame;
    * back end: max and mean over time (1506), batch norm, dense 200 + ReLU, batch norm = **penultimate**
      (what musicnn's ``extractor`` returns as ``features['penultimate']``; 200-d, used as the embedding),
      dense 50 = tag logits, sigmoid = taggram. Dropout layers (0.5) are inference no-ops and left out;
      every batch norm runs in inference mode (moving statistics, epsilon 1e-3 as ``tf.layers``).
    One detail of the conversion: TF concatenates max and mean pooling per channel ``[max_0, mean_0, max_1,
    ...]``; here the two pooled vectors are concatenated ``[max_0..752, mean_0..752]``, and the converter
    permutes the weights of the 1506-wide batch norm and the first dense layer to match.

Only ``keras.layers`` / ``keras.ops`` are used in the model (TensorFlow, JAX or PyTorch via ``KERAS_BACKEND``).
The converter needs TensorFlow (its checkpoint reader) and nothing of musicnn's own code.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

SR = 16000
N_FFT = 512
HOP = 256
N_MELS = 96
PATCH_FRAMES = 187  # 3 s
PATCH_SECONDS = 3.0
EMBEDDING_DIM = 200
BN_EPSILON = 1e-3

MODELS = ("MSD_musicnn", "MTT_musicnn")

MTT_LABELS = ['guitar', 'classical', 'slow', 'techno', 'strings', 'drums', 'electronic', 'rock', 'fast',
              'piano', 'ambient', 'beat', 'violin', 'vocal', 'synth', 'female', 'indian', 'opera', 'male',
              'singing', 'vocals', 'no vocals', 'harpsichord', 'loud', 'quiet', 'flute', 'woman', 'male vocal',
              'no vocal', 'pop', 'soft', 'sitar', 'solo', 'man', 'classic', 'choir', 'voice', 'new age',
              'dance', 'male voice', 'female vocal', 'beats', 'harp', 'cello', 'no voice', 'weird', 'country',
              'metal', 'female voice', 'choral']
MSD_LABELS = ['rock', 'pop', 'alternative', 'indie', 'electronic', 'female vocalists', 'dance', '00s',
              'alternative rock', 'jazz', 'beautiful', 'metal', 'chillout', 'male vocalists', 'classic rock',
              'soul', 'indie rock', 'Mellow', 'electronica', '80s', 'folk', '90s', 'chill', 'instrumental',
              'punk', 'oldies', 'blues', 'hard rock', 'ambient', 'acoustic', 'experimental', 'female vocalist',
              'guitar', 'Hip-Hop', '70s', 'party', 'country', 'easy listening', 'sexy', 'catchy', 'funk',
              'electro', 'heavy metal', 'Progressive rock', '60s', 'rnb', 'indie pop', 'sad', 'House', 'happy']
LABELS = {"MSD_musicnn": MSD_LABELS, "MTT_musicnn": MTT_LABELS}

CITATION = ("Pons, J. and Serra, X. (2019). musicnn: pre-trained convolutional neural networks for music audio "
            "tagging. ISMIR 2019 late-breaking/demo. arXiv:1909.06654")
LICENCE = ("ISC (musicnn 0.1.0 wheel, musicnn-0.1.0.dist-info/LICENSE.md): Copyright (c) Music Technology Group, "
           "Universitat Pompeu Fabra 2019. Code developed by Jordi Pons. Permission to use, copy, modify, and/or "
           "distribute this software for any purpose with or without fee is hereby granted, provided that the "
           "above copyright notice and this permission notice appear in all copies. THE SOFTWARE IS PROVIDED "
           "\"AS IS\" AND THE AUTHOR DISCLAIMS ALL WARRANTIES ...")
TRAINING_DATA = {
    "MSD_musicnn": "Million Song Dataset (Last.fm top-50 tags), ~200k training tracks",
    "MTT_musicnn": "MagnaTagATune (top-50 tags), ~19k training clips",
}
WEIGHTS_FILE = "musicnn.weights.npz"
CARD_FILE = "musicnn_card.json"  # not model_card.json: a tagger, not one of the classifiers the demo lists

#: the input representation, as stored in every card
INPUT_PARAMS = {
    "sample_rate": SR, "n_fft": N_FFT, "hop_length": HOP, "n_mels": N_MELS, "window": "hann (periodic)",
    "center": True, "pad_mode": "reflect", "power": 2.0, "mel_scale": "slaney", "mel_norm": "slaney",
    "fmin": 0.0, "fmax": SR / 2, "dtype_before_log": "float16", "compression": "log10(10000 x + 1)",
    "patch_frames": PATCH_FRAMES, "patch_seconds": PATCH_SECONDS,
}


# =========================================================================================================
# front end (NumPy)
# =========================================================================================================
@functools.cache
def mel_filterbank(sr: int = SR, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """musicnn's mel filter bank, ``librosa.filters.mel(sr=16000, n_fft=512, n_mels=96)`` (Slaney scale and
    area normalisation), float32 ``(96, 257)``: :func:`core.features.mel_filterbank`, cached."""
    from core.features import mel_filterbank as fb

    return fb(sr, n_fft, n_mels)


def log_mel(y: np.ndarray, sr: int = SR) -> np.ndarray:
    """musicnn's input representation of a 16 kHz mono signal: ``(1 + len(y) // 256, 96)`` float32.

    Reproduces ``np.log10(10000 * librosa.feature.melspectrogram(y, sr=16000, hop_length=256, n_fft=512,
    n_mels=96).T.astype(np.float16) + 1)`` of librosa 0.7 / NumPy 1.16 (the FFT in float64 as librosa 0.7
    does it, the power spectrum and mel projection in float32).
    """
    from core.features import stft_power

    if sr != SR:
        raise ValueError(f"musicnn needs {SR} Hz audio (got {sr}); resample first")
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    if y.size == 0:
        raise ValueError("empty signal")
    pad = N_FFT // 2
    if y.size <= pad:  # reflect padding needs more samples than the pad; zero-pad tiny signals
        y = np.pad(y, (0, pad + 1 - y.size))
    basis_t = mel_filterbank().T.copy()
    blocks: list[np.ndarray] = []
    stft_power(y, N_FFT, HOP, pad_mode="reflect", consume=lambda power: blocks.append(power @ basis_t))
    out = np.concatenate(blocks)
    mel16 = out.astype(np.float16).astype(np.float32)
    return np.log10(np.float32(10000.0) * mel16 + np.float32(1.0)).astype(np.float32)


def patch_starts(n_frames: int, hop_frames: int = PATCH_FRAMES, patch_frames: int = PATCH_FRAMES) -> list[int]:
    """Start frames of musicnn's patches: ``range(0, n_frames - patch_frames + 1, hop_frames)``."""
    return list(range(0, n_frames - patch_frames + 1, hop_frames))


def patches(mel: np.ndarray, hop_frames: int = PATCH_FRAMES, pad_short: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Cut a ``(frames, 96)`` log-mel into ``(n, 187, 96)`` patches every ``hop_frames`` frames (musicnn's
    ``batch_data``); returns ``(patches, start_frames)``. A representation shorter than one patch is
    repeated to 187 frames (musicnn's training used "repeat-pad") when ``pad_short``, else ``n = 0``."""
    n = mel.shape[0]
    if n < PATCH_FRAMES:
        if not pad_short or n == 0:
            return np.zeros((0, PATCH_FRAMES, mel.shape[1]), np.float32), np.zeros(0, np.int64)
        reps = int(np.ceil(PATCH_FRAMES / n))
        return np.tile(mel, (reps, 1))[None, :PATCH_FRAMES].astype(np.float32), np.zeros(1, np.int64)
    starts = np.asarray(patch_starts(n, hop_frames), dtype=np.int64)
    idx = starts[:, None] + np.arange(PATCH_FRAMES)[None, :]
    return np.ascontiguousarray(mel[idx], dtype=np.float32), starts


def frames_at(seconds: float) -> int:
    """Frame index of a time in seconds (nearest frame of the 16 ms grid)."""
    return int(round(seconds * SR / HOP))


# =========================================================================================================
# network (Keras 3)
# =========================================================================================================
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


def embedding_model(model):
    """A view of a musicnn model with the penultimate layer (200-d embedding) as its only output."""
    import keras

    return keras.Model(model.input, model.get_layer("penultimate").output, name=model.name + "_embedding")


def feature_model(model, names=("penultimate",)):
    """A view of a :func:`build_musicnn` model whose outputs are the named per-window features
    (:data:`core.musicnn_numpy.FEATURES`: ``max_pool`` / ``mean_pool``, the back end's temporal max / mean of the
    mid-end concatenation, 753 each; ``penultimate``, 200; ``taggram``, 50): the Keras reference of
    :mod:`core.musicnn_numpy`, patch by patch."""
    import keras

    layer = {"max_pool": "max_pool", "mean_pool": "mean_pool", "penultimate": "penultimate", "taggram": "taggram"}
    unknown = [n for n in names if n not in layer]
    if unknown:
        raise ValueError(f"unknown musicnn feature {unknown[0]!r} (known: {', '.join(layer)})")
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


# =========================================================================================================
# checkpoint conversion
# =========================================================================================================
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


def _pool_permutation(n: int = 1506) -> np.ndarray:
    """TF order ``[max_0, mean_0, max_1, mean_1, ...]`` -> ours ``[max_0.., mean_0..]``: ours[j] = tf[perm[j]]."""
    return np.concatenate([np.arange(0, n, 2), np.arange(1, n, 2)])


def read_checkpoint(prefix: str) -> dict[str, np.ndarray]:
    """Every model variable (not the Adam slots) of a TF1 checkpoint, read with TensorFlow's reader."""
    import tensorflow as tf

    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    out = {}
    for name in reader.get_variable_to_shape_map():
        if "Adam" in name or name.endswith("_power"):
            continue
        out[name] = np.asarray(reader.get_tensor(name))
    return out


def convert_variables(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """TF1 musicnn variables -> ``{"<keras layer>/<weight>": array}`` in this module's layout."""
    perm = _pool_permutation()
    out: dict[str, np.ndarray] = {}
    for layer, scope in CHECKPOINT_MAP.items():
        if layer.endswith("_conv") or layer in ("penultimate_dense", "tag_logits"):
            kernel = variables[f"{scope}/kernel"].astype(np.float32)
            if layer.startswith("midend"):  # conv2d [7, C, 1, F] over a (T, C, 1) map == Conv1D [7, C, F]
                kernel = kernel[:, :, 0, :]
            if layer == "penultimate_dense":
                kernel = kernel[perm]
            out[f"{layer}/kernel"] = kernel
            out[f"{layer}/bias"] = variables[f"{scope}/bias"].astype(np.float32)
        else:
            for part in BN_PARTS:
                v = variables[f"{scope}/{part}"].astype(np.float32)
                out[f"{layer}/{part}"] = v[perm] if layer == "pool_bn" else v
    return out


def set_weights(model, weights: dict[str, np.ndarray]) -> None:
    """Load ``{"<layer>/<weight>": array}`` into a :func:`build_musicnn` model (shapes checked)."""
    for layer_name in CHECKPOINT_MAP:
        layer = model.get_layer(layer_name)
        parts = BN_PARTS if layer_name.endswith("_bn") or layer_name == "penultimate" else ("kernel", "bias")
        arrays = [weights[f"{layer_name}/{p}"] for p in parts]
        current = layer.get_weights()
        for a, c, p in zip(arrays, current, parts):
            if a.shape != c.shape:
                raise ValueError(f"{layer_name}/{p}: weights {a.shape} do not fit the layer {c.shape}")
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


def default_model_dir() -> Path:
    """The shipped converted MSD_musicnn (``models/msd-musicnn``)."""
    return Path(__file__).resolve().parent.parent / "models" / "msd-musicnn"


def find_wheel_checkpoint(wheel: str | os.PathLike, model: str, workdir: str | os.PathLike) -> str:
    """Extract ``musicnn/<model>/`` from the wheel into ``workdir``; return the checkpoint prefix."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r} (use one of {', '.join(MODELS)})")
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.startswith(f"musicnn/{model}/")]
        if not names:
            raise ValueError(f"{wheel} has no musicnn/{model}/ checkpoint")
        lic = [n for n in zf.namelist() if n.endswith("LICENSE.md")]
        zf.extractall(workdir, members=names + lic)
    return os.path.join(workdir, "musicnn", model) + "/"  # the checkpoint's prefix is the folder itself


def wheel_licence(wheel: str | os.PathLike) -> str:
    with zipfile.ZipFile(wheel) as zf:
        lic = [n for n in zf.namelist() if n.endswith("LICENSE.md")]
        return zf.read(lic[0]).decode("utf-8") if lic else ""


def download_wheel(dest: str | os.PathLike) -> Path:
    """``pip download musicnn==0.1.0 --no-deps -d dest`` (the package index's ordinary client)."""
    import subprocess

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "musicnn==0.1.0", "--no-deps", "--only-binary", ":all:",
                    "-d", str(dest)], check=True)
    wheels = sorted(dest.glob("musicnn-0.1.0-*.whl"))
    if not wheels:
        raise RuntimeError("pip download gave no musicnn 0.1.0 wheel")
    return wheels[0]


def convert(wheel: str | os.PathLike, out_dir: str | os.PathLike, model: str = "MSD_musicnn",
            check: bool = True) -> dict:
    """Read ``model``'s TF1 checkpoint from the musicnn 0.1.0 wheel and write ``out_dir`` (weights + card)."""
    import hashlib

    wheel = Path(wheel)
    out_dir = Path(out_dir)
    licence = wheel_licence(wheel)
    if "Permission to use, copy, modify, and/or distribute this software for any purpose" not in licence:
        raise RuntimeError("the wheel's LICENSE.md is not the expected ISC licence: check it before converting")
    with tempfile.TemporaryDirectory() as tmp:
        prefix = find_wheel_checkpoint(wheel, model, tmp)
        variables = read_checkpoint(prefix)
        train_cfg = json.loads(Path(prefix, "config.json").read_text()) if Path(prefix, "config.json").exists() else {}
    weights = convert_variables(variables)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_weights_npz(out_dir / WEIGHTS_FILE, weights)
    n_params = int(sum(v.size for v in weights.values()))
    name = model.lower().replace("_", "-")
    card = {
        "format": 1,
        "kind": "musicnn-tagger",
        "name": name,
        "model": model,
        "description": f"musicnn ({model}) converted to Keras 3 from the TF1 checkpoint of the musicnn 0.1.0 wheel: "
                       f"50 tags; its 200-d penultimate layer is Genre Lab's music embedding.",
        "labels": LABELS[model],
        "weights_file": WEIGHTS_FILE,
        "n_params": n_params,
        "macs_per_patch": count_macs(),
        "input": dict(INPUT_PARAMS),
        "embedding": {"layer": "penultimate", "dim": EMBEDDING_DIM,
                      "what": "batch-normalised output of the 200-unit dense layer (musicnn's 'penultimate')"},
        "source": {"package": "musicnn==0.1.0 (PyPI wheel)", "wheel": wheel.name,
                   "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
                   "checkpoint": f"musicnn/{model}/", "upstream": "https://github.com/jordipons/musicnn",
                   "training": TRAINING_DATA[model],
                   "training_config": {k: train_cfg.get(k) for k in ("n_frames", "pre_processing", "pad_short",
                                                                      "epochs", "batch_size", "learning_rate",
                                                                      "optimizer")} if train_cfg else {}},
        "licence": {"name": "ISC", "checked": "musicnn-0.1.0.dist-info/LICENSE.md read from the wheel at conversion: "
                    "ISC, permits use, copying, modification and redistribution with the copyright and permission "
                    "notice kept (reproduced in full in MODEL_CARD.md)", "text": licence.strip()},
        "citation": CITATION,
        "conversion": {"tool": "python -m core convert-musicnn", "weights_layout": "Keras layer/weight names of "
                       "core.musicnn.build_musicnn; pool_bn and penultimate_dense rows permuted from TF's "
                       "interleaved [max, mean] order", "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    from core.utils import atomic_write_json

    atomic_write_json(out_dir / CARD_FILE, card)
    (out_dir / "MODEL_CARD.md").write_text(model_card_md(card))
    if check:
        m, _ = load_musicnn(out_dir)
        out = m.predict(np.zeros((1, PATCH_FRAMES, N_MELS), np.float32), verbose=0)
        if not np.all(np.isfinite(out["taggram"])):
            raise RuntimeError("converted model gives non-finite outputs")
    return card


def model_card_md(card: dict) -> str:
    inp = card["input"]
    return f"""# {card['name']}: musicnn ({card['model']}) in Keras 3

{card['description']}

* **Source**: `{card['source']['package']}`, checkpoint `{card['source']['checkpoint']}` of
  `{card['source']['wheel']}` (sha256 `{card['source']['wheel_sha256']}`); upstream {card['source']['upstream']}.
  Trained by its authors on the {card['source']['training']}.
* **Converted with** `python -m core convert-musicnn --wheel {card['source']['wheel']} OUT --model {card['model']}`
  (TensorFlow's checkpoint reader; weights in `{card['weights_file']}`, {card['n_params']:,} parameters,
  float32; the network is `core.musicnn.build_musicnn`). {card['macs_per_patch'] / 1e9:.2f} G multiply-accumulates
  per 3 s patch.
* **Port checked** against the original network (musicnn 0.1.0 on TensorFlow 1.15.5 in a scratch environment):
  `tests/test_musicnn.py` on `tests/fixtures/musicnn_msd_reference.npz`; see `docs/musicnn.md`.
* **Input**: mono audio at {inp['sample_rate']} Hz; log-mel with n_fft {inp['n_fft']}, hop {inp['hop_length']},
  {inp['n_mels']} mel bands (Slaney scale and normalisation, 0 to {inp['fmax']:.0f} Hz), centred frames with reflect
  padding, periodic Hann window, power 2, cast to float16, `log10(10000 x + 1)`; patches of {inp['patch_frames']}
  frames ({inp['patch_seconds']:.0f} s). `core.musicnn.log_mel` computes it in NumPy.
* **Outputs**: 50 sigmoid tags (`labels` in `musicnn_card.json`) and the 200-d `penultimate` layer (the embedding).
* **Citation**: {card['citation']}

## Licence (checked)

The wheel's `musicnn-0.1.0.dist-info/LICENSE.md` is the ISC licence; it permits use, copying, modification and
distribution of the software (the package ships the weights) for any purpose, provided the copyright notice and
this permission notice appear in all copies. Both are reproduced here:

```
{card['licence']['text']}
```
"""


# =========================================================================================================
# inference: each front-end branch as one fused layer (same numbers, fewer passes over the widest maps)
# =========================================================================================================
def mel_pooled_conv(conv, bn, name: str | None = None):
    """One front-end branch of a trained musicnn, ``conv -> ReLU -> batch norm -> max over the mel axis``, as
    one inference layer that computes ``conv -> max (or min) over the mel axis -> ReLU -> affine``: the same
    numbers.

    Inference-mode batch norm is an affine map ``a * v + b`` per channel, and ReLU is non-decreasing, so for a
    channel with ``a >= 0`` the maximum over the mel axis of ``a * relu(z) + b`` is ``a * relu(max z) + b``, and
    for ``a < 0`` it is ``a * relu(min z) + b``: the winning element is the same, so the result is equal up to
    the rounding of one multiply-add. ReLU and the batch norm then run on the pooled ``(T, filters)`` map
    instead of the ``(T, mel positions, filters)`` one (59 and 30 positions for the timbral branches, 96 for the
    temporal ones). Built from the model's own ``Conv2D`` and ``BatchNormalization`` layers (weights copied
    once); backend-neutral (``keras.ops``); inference only, not a training layer.
    """
    kernel, bias = (np.asarray(w, np.float32) for w in conv.get_weights())
    scale, shift = _bn_scale_shift(bn)
    return _mel_pooled_conv_class()(kernel, bias, scale.astype(np.float32), shift.astype(np.float32),
                                    name=name or f"{conv.name}_fused")


def _bn_scale_shift(bn) -> tuple[np.ndarray, np.ndarray]:
    """An inference-mode BatchNormalization layer as ``x * scale + shift`` (per channel, computed in float64)."""
    gamma, beta, mean, var = (np.asarray(w, np.float64) for w in bn.get_weights())
    scale = gamma / np.sqrt(var + bn.epsilon)
    return scale, beta - mean * scale


@functools.cache
def _mel_pooled_conv_class():
    """The Keras layer class behind :func:`mel_pooled_conv` (defined on first use: importing this module does
    not import Keras)."""
    import keras
    from keras import ops

    class MelPooledConv(keras.layers.Layer):
        def __init__(self, kernel, bias, scale, shift, **kwargs):
            super().__init__(**kwargs)
            self.kernel, self.bias, self.scale, self.shift = kernel, bias, scale, shift
            self.positive = (scale >= 0)[None, None, :]

        def call(self, x):
            z = ops.conv(x, self.kernel, strides=1, padding="valid", data_format="channels_last") + self.bias
            pooled = ops.where(self.positive, ops.max(z, axis=2), ops.min(z, axis=2))
            return ops.relu(pooled) * self.scale + self.shift

        def compute_output_shape(self, input_shape):
            t = None if input_shape[1] is None else input_shape[1] - self.kernel.shape[0] + 1
            return (input_shape[0], t, self.kernel.shape[-1])

    return MelPooledConv


def front_branch(model, name: str, x):
    """The output ``(T, filters)`` of one front-end branch of ``model`` (``"timbral74"``, ``"timbral77"``,
    ``"temporal128"``, ...) applied to ``x`` = the padded, input-normalised ``(T, mels, 1)`` tensor, fused
    (:func:`mel_pooled_conv`, inference)."""
    g = model.get_layer
    return mel_pooled_conv(g(f"{name}_conv"), g(f"{name}_bn"))(x)


def inference_model(model):
    """``model`` (musicnn, or musicnn + head from :func:`core.embeddings.combined_model`) rebuilt for
    inference with fused front-end branches (:func:`mel_pooled_conv`): same inputs, same outputs, ~1.3x faster
    on a CPU. The mid and back end are the model's own layers (shared weights)."""
    import keras

    g = model.get_layer
    inp = keras.Input(shape=model.input_shape[1:], name="log_mel")
    x = g("input_bn")(g("expand")(inp))
    xp = g("timbral_pad")(x)
    front = [front_branch(model, f"timbral{t}", xp) for t in ("74", "77")]
    front += [front_branch(model, f"temporal{k}", g(f"temporal{k}_pad")(x)) for k in TEMPORAL_KERNELS]
    return keras.Model(inp, _rest(model, keras.layers.Concatenate(axis=-1)(front)), name=model.name + "_inference")


def _rest(model, frontend):
    """Mid end + back end (+ head) of ``model`` on a ``(T, 561)`` front-end tensor: the model's outputs."""
    g = model.get_layer
    mids = [frontend]
    h = frontend
    for i in (1, 2, 3):
        c = g(f"midend{i}_bn")(g(f"midend{i}_conv")(g(f"midend{i}_pad")(h)))
        h = c if i == 1 else g(f"midend{i}_res")([c, h])
        mids.append(h)
    m = g("midend")(mids)
    pooled = g("pool")([g("max_pool")(m), g("mean_pool")(m)])
    pen = g("penultimate")(g("penultimate_dense")(g("pool_bn")(pooled)))
    if "taggram" in {l.name for l in model.layers}:
        return {"taggram": g("taggram")(g("tag_logits")(pen)), "penultimate": pen}
    return model.layers[-1](pen)  # musicnn + head (core.embeddings.combined_model): the head is the last layer


# =========================================================================================================
# overlapping windows: the timbral front end once per track (exact)
# =========================================================================================================
TIMBRAL_CONTEXT = 3  # the timbral convolutions see 7 frames: +-3


class OverlappingWindows:
    """Run a musicnn model (or musicnn + head) on many OVERLAPPING 3 s windows of one track, ~2.5x faster than
    cutting the patches and running the model on each, with the same result (within float rounding).

    * The two timbral convolutions (80 % of musicnn's multiply-accumulates) see only +-3 frames, and
      everything between the input and the mel-axis max pooling is per frame, so their output for a frame
      inside a patch does not depend on where the patch starts: it is computed once over the whole track (in
      chunks) and sliced. Only each patch's first and last 3 frames differ (they see the patch's own zero
      padding): those 6 frames per patch are recomputed from the patch's first / last 6 frames.
    * The input batch norm (one channel: an affine map) and the zero padding are applied in NumPy, so the
      timbral part is one ``valid`` convolution model for the track chunks and the patch edges alike.
    * Every front-end branch runs fused (:func:`mel_pooled_conv`); the temporal convolutions (+-64 frames), the
      mid end and the back end run per patch, fed batch by batch (no full copy of the per-patch maps).
    """

    def __init__(self, model, chunk_frames: int = 1024):
        import keras

        g = model.get_layer
        self.chunk = chunk_frames
        n_mels = int(model.input_shape[-1])
        scale, shift = _bn_scale_shift(g("input_bn"))
        self.in_scale, self.in_shift = np.float32(scale[0]), np.float32(shift[0])

        # timbral: normalised, zero-padded input (any length) -> (length - 6, 408)
        xin = keras.Input(shape=(None, n_mels), name="mel_normalised_padded")
        x = g("expand")(xin)
        tim = [front_branch(model, f"timbral{t}", x) for t in ("74", "77")]
        self.timbral = keras.Model(xin, keras.layers.Concatenate(axis=-1)(tim), name="timbral_front")
        self.timbral_width = int(self.timbral.output_shape[-1])

        # the rest: (mel patch, its timbral features) -> the model's outputs
        mel = keras.Input(shape=(PATCH_FRAMES, n_mels), name="mel_patch")
        tim_in = keras.Input(shape=(PATCH_FRAMES, self.timbral_width), name="timbral")
        x = g("input_bn")(g("expand")(mel))
        front = [tim_in] + [front_branch(model, f"temporal{k}", g(f"temporal{k}_pad")(x)) for k in TEMPORAL_KERNELS]
        self.rest = keras.Model([mel, tim_in], _rest(model, keras.layers.Concatenate(axis=-1)(front)),
                                name="musicnn_rest")

    def _normalise(self, mel: np.ndarray) -> np.ndarray:
        return mel * self.in_scale + self.in_shift

    @staticmethod
    def _fixed_batches(fn, x, size: int) -> list:
        """``fn`` on ``x`` in batches of exactly ``size`` (the last one zero-padded): one traced shape."""
        outs = []
        for a in range(0, len(x), size):
            part = x[a:a + size]
            n = len(part)
            if n < size:
                part = np.concatenate([part, np.zeros((size - n,) + part.shape[1:], part.dtype)])
            outs.append(np.asarray(fn(part))[:n])
        return outs

    def _timbral_track(self, mel: np.ndarray) -> np.ndarray:
        T, c, L = mel.shape[0], TIMBRAL_CONTEXT, self.chunk
        n_chunks = -(-T // L)
        padded = np.zeros((n_chunks * L + 2 * c, mel.shape[1]), np.float32)
        padded[c:c + T] = self._normalise(mel)  # the frames beyond the track only reach patch edges (recomputed)
        chunks = np.stack([padded[i * L:i * L + L + 2 * c] for i in range(n_chunks)])
        out = self._fixed_batches(self.timbral.predict_on_batch, chunks, 1)
        return np.concatenate(out).reshape(-1, self.timbral_width)[:T]

    def _edges(self, mel: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The timbral features of each patch's first and last 3 frames, with the patch's own zero padding."""
        c, n = TIMBRAL_CONTEXT, len(starts)
        ex = np.zeros((2 * n, 3 * c, mel.shape[1]), np.float32)  # 3 zero frames + 6 frames, or 6 + 3 zeros
        left = starts[:, None] + np.arange(2 * c)[None, :]
        right = starts[:, None] + (PATCH_FRAMES - 2 * c) + np.arange(2 * c)[None, :]
        ex[:n, c:] = self._normalise(mel[left])
        ex[n:, :2 * c] = self._normalise(mel[right])
        fixed = np.concatenate(self._fixed_batches(self.timbral.predict_on_batch, ex, 128))  # (2n, 3, width)
        return fixed[:n], fixed[n:]

    def run(self, mel: np.ndarray, start_frames, batch_size: int = 32):
        """The model's output for the 187-frame patches of ``mel`` at ``start_frames`` (all must fit)."""
        starts = np.asarray(start_frames, dtype=np.int64)
        if len(starts) == 0:
            raise ValueError("no windows")
        if starts.min() < 0 or starts.max() + PATCH_FRAMES > mel.shape[0]:
            raise ValueError("every patch must lie inside the representation")
        mel = np.asarray(mel, dtype=np.float32)
        tim = self._timbral_track(mel)
        left, right = self._edges(mel, starts)
        c, n = TIMBRAL_CONTEXT, len(starts)
        outs = []
        X = np.zeros((batch_size, PATCH_FRAMES, mel.shape[1]), np.float32)
        TIM = np.zeros((batch_size, PATCH_FRAMES, self.timbral_width), np.float32)
        for a in range(0, n, batch_size):
            part = starts[a:a + batch_size]
            for i, s in enumerate(part):  # slices: plain copies, no fancy-index gather
                X[i] = mel[s:s + PATCH_FRAMES]
                TIM[i] = tim[s:s + PATCH_FRAMES]
            TIM[:len(part), :c] = left[a:a + batch_size]
            TIM[:len(part), -c:] = right[a:a + batch_size]
            o = self.rest.predict_on_batch([X, TIM])
            k = len(part)
            outs.append({key: np.asarray(v)[:k] for key, v in o.items()} if isinstance(o, dict) else np.asarray(o)[:k])
        if isinstance(outs[0], dict):
            return {key: np.concatenate([o[key] for o in outs]) for key in outs[0]}
        return np.concatenate(outs)


# =========================================================================================================
# tagging helpers
# =========================================================================================================
def predict_patches(model, x: np.ndarray, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Run a musicnn model on ``(n, 187, 96)`` patches in batches; ``{"taggram", "penultimate"}`` as NumPy."""
    outs: dict[str, list] = {"taggram": [], "penultimate": []}
    for a in range(0, len(x), batch_size):
        o = model.predict_on_batch(x[a:a + batch_size])  # compiled (tf.function on TensorFlow): ~1.7x eager
        for k in outs:
            outs[k].append(np.asarray(o[k]))
    if not outs["taggram"]:
        return {"taggram": np.zeros((0, 50), np.float32), "penultimate": np.zeros((0, EMBEDDING_DIM), np.float32)}
    return {k: np.concatenate(v, axis=0) for k, v in outs.items()}


def tag_audio(model, y: np.ndarray, labels: list[str], hop_frames: int = PATCH_FRAMES, top: int = 5):
    """musicnn's ``extractor`` on a 16 kHz signal: taggram, penultimate and the top tags by mean likelihood."""
    x, _ = patches(log_mel(y), hop_frames)
    out = predict_patches(model, x)
    mean = out["taggram"].mean(axis=0)
    order = np.argsort(-mean)[:top]
    return out, [(labels[i], float(mean[i])) for i in order]


# =========================================================================================================
# CLI
# =========================================================================================================
def _cmd_convert(args) -> int:
    if bool(args.wheel) == bool(args.download):
        print("give exactly one of --wheel PATH or --download", file=sys.stderr)
        return 2
    tmp = None
    try:
        if args.download:
            tmp = tempfile.mkdtemp(prefix="musicnn-wheel-")
            wheel = download_wheel(tmp)
        else:
            wheel = Path(args.wheel)
            if not wheel.exists():
                print(f"no such wheel: {wheel}", file=sys.stderr)
                return 2
        card = convert(wheel, args.out_dir, args.model)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    size = (Path(args.out_dir) / WEIGHTS_FILE).stat().st_size
    print(f"{card['model']} -> {args.out_dir} ({card['n_params']:,} parameters, {size / 1e6:.2f} MB weights)")
    return 0


def _cmd_tag(args) -> int:
    """musicnn's extractor (patches every 187 frames, mean likelihood per tag), run in NumPy
    (:mod:`core.musicnn_numpy`: no TensorFlow)."""
    from core import musicnn_numpy as mnp

    net = mnp.network(args.model_dir)
    labels = json.loads((Path(args.model_dir) / CARD_FILE).read_text())["labels"]
    for f in args.files:
        mean = mnp.file_window_features(f, ["taggram"], weights=net, hop_frames=PATCH_FRAMES).features["taggram"].mean(0)
        print(f"{f}: " + ", ".join(f"{labels[i]} {mean[i]:.2f}" for i in np.argsort(-mean)[:args.top]))
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("convert-musicnn", help="convert musicnn's TF1 checkpoint (musicnn 0.1.0 wheel) to Keras 3",
                       description="Read MSD_musicnn or MTT_musicnn from the musicnn 0.1.0 wheel with TensorFlow's "
                                   "checkpoint reader and write OUT_DIR: musicnn.weights.npz, musicnn_card.json, "
                                   "MODEL_CARD.md (source, ISC licence, citation, input parameters).")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--wheel", help="path of musicnn-0.1.0-py3-none-any.whl (pip download musicnn==0.1.0 --no-deps)")
    p.add_argument("--download", action="store_true", help="fetch the wheel with pip download first")
    p.add_argument("--model", default="MSD_musicnn", choices=MODELS)
    p.set_defaults(func=_cmd_convert)
    t = sub.add_parser("musicnn-tags", help="musicnn's top tags of audio files (converted model, run in NumPy)")
    t.add_argument("files", nargs="+")
    t.add_argument("--model-dir", default=str(default_model_dir()))
    t.add_argument("--top", type=int, default=5)
    t.set_defaults(func=_cmd_tag)
