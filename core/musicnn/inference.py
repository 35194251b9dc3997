"""musicnn rebuilt for fast Keras inference, with the same numbers: each front-end branch as one fused layer
(:func:`mel_pooled_conv`, :func:`inference_model`) and :class:`OverlappingWindows` (the timbral front end once per
track for many overlapping 3 s windows). The predictor's Keras backend and the embedding cache use them; the NumPy
path (:mod:`core.musicnn_numpy`) applies the same ideas without Keras."""
from __future__ import annotations

import functools

import numpy as np

from core.musicnn.config import PATCH_FRAMES
from core.musicnn.network import TEMPORAL_KERNELS


# =========================================================================================================
# each front-end branch as one fused layer (same numbers, fewer passes over the widest maps)
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
