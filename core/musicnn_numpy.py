"""musicnn's forward pass in NumPy (no TensorFlow, no Keras) and its per-window features, streamed.

:mod:`core.musicnn` defines the network in Keras 3 (training heads, the converter, the reference); this module
runs the same network on a CPU with NumPy alone, so ``python -m core predict`` and the demo never import
TensorFlow for a musicnn-based model (TensorFlow alone takes ~650 MB of resident memory and seconds to import).

**Weights**: ``{"<keras layer>/<weight>": array}`` as in ``musicnn.weights.npz`` (:func:`load_weights`,
:func:`core.musicnn.load_weights_npz`), or read out of a ``.keras`` file that holds musicnn and a classifier head
as one model (:func:`read_combined_model`: the format of ``models/emotify-musicnn`` and of the experiment's
musicnn runs).

**Named per-window features** (:data:`FEATURE_DIMS`): ``max_pool`` and ``mean_pool`` (753 each: the back end's
temporal max / mean of the mid-end concatenation, before its batch norm), ``penultimate`` (200: musicnn's
embedding) and ``taggram`` (50 sigmoid tags). :func:`window_features` computes any of them for a signal (3 s
windows every ``hop_s``), :func:`file_window_features` for a file, both streamed.

**How it is computed** (the same numbers as the Keras model to float rounding; ``tests/test_musicnn_numpy.py``):

* each front-end branch ``conv -> ReLU -> batch norm -> max over the mel axis`` runs as ``conv -> max over the
  mel axis -> ReLU -> affine`` (:func:`core.musicnn.mel_pooled_conv` explains why this is exact); a channel whose
  batch-norm scale is negative needs the minimum instead, so its kernel column is negated and the maximum taken;
* the two **timbral** convolutions (7 frames x 38 / 67 mel bands: 80 % of the multiply-accumulates) are one
  matrix product each over an im2col view of the whole track, computed once per frame and shared by every
  window that contains the frame; only the 3 frames at each end of a window see the window's own zero padding
  and are recomputed (:class:`WindowStream`, as :class:`core.musicnn.OverlappingWindows` does in Keras);
* the three **temporal** convolutions (128, 64 and 32 frames x 1 band, 51 filters) run per window as one matrix
  product with a block-Toeplitz kernel: each block of 17 output frames is ``(17 + k - 1)`` input frames times a
  ``(17 + k - 1, 17 x 51)`` matrix, so the im2col copy is ~9x smaller than one row per output frame while the
  arithmetic grows by 1.1-1.5x;
* the mid end's 1D convolutions (7 frames) are one product with the 7 taps side by side, shifted and summed;
* float32 throughout; the big products go to BLAS in chunks of bounded size (memory is bounded for any length).

:class:`LogMelStream` computes musicnn's log-mel block by block (the frames of :func:`core.musicnn.log_mel` on
the whole signal), and :class:`WindowStream` turns blocks of samples into per-window features, keeping only the
frames that windows still to come need.

This module imports neither Keras nor TensorFlow (nor librosa).
"""
from __future__ import annotations

import functools
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from core import musicnn as mn
from core.errors import GenreLabError
from core.numpy_model import default_threads, trim_heap
from core.numpy_model import single_blas_thread as compute  # the network's products: BLAS on one thread

#: the per-window outputs a caller can ask for, and their widths
FEATURE_DIMS = {"mean_pool": 753, "max_pool": 753, "penultimate": 200, "taggram": 50}
FEATURES = tuple(FEATURE_DIMS)
TIMBRAL = (("timbral74", 0.4), ("timbral77", 0.7))
CONTEXT = mn.TIMBRAL_CONTEXT  # the timbral convolutions see +-3 frames
TOEPLITZ_BLOCK = 17  # output frames per block of the temporal convolutions (187 = 11 x 17)
_F32 = np.float32


class MusicnnNumpyError(GenreLabError):
    """Weights or a request this NumPy musicnn cannot serve; the message says which and why."""


# =========================================================================================================
# weights
# =========================================================================================================
def load_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """musicnn's weights from ``musicnn.weights.npz`` or from a converted folder (``musicnn_card.json`` +
    its weights file, e.g. ``models/msd-musicnn``)."""
    p = Path(path)
    if p.is_dir():
        card = p / mn.CARD_FILE
        name = mn.WEIGHTS_FILE
        if card.exists():
            import json

            try:
                name = json.loads(card.read_text()).get("weights_file") or name
            except (ValueError, OSError) as exc:
                raise MusicnnNumpyError(f"{card} is not readable: {exc}") from exc
        p = p / name
    if not p.is_file():
        raise MusicnnNumpyError(f"musicnn weights not found: {p}")
    try:
        return mn.load_weights_npz(p)
    except (OSError, ValueError, KeyError) as exc:
        raise MusicnnNumpyError(f"{p} is not a readable musicnn weights file ({exc})") from exc


def read_combined_model(path: str | os.PathLike):
    """``(weights, head)`` of a ``.keras`` file that holds musicnn and a classifier head as one model
    (:func:`core.embeddings.combined_model`): musicnn's weights in :func:`load_weights`' layout and the head as a
    :class:`core.numpy_model.NumpyModel` on the 200-d ``penultimate`` embedding. Raises
    :class:`core.numpy_model.UnsupportedModel` when the file is not such a model."""
    from core.numpy_model import UnsupportedModel, numpy_model_from_config, read_keras_model

    cfg, w = read_keras_model(path)
    layers = cfg["config"].get("layers") or []
    names = {layer["config"]["name"] for layer in layers}
    need = [n for n in mn.CHECKPOINT_MAP if n != "tag_logits"]
    if any(n not in names for n in need):
        raise UnsupportedModel("not a musicnn model (its layers are not musicnn's)")
    weights: dict[str, np.ndarray] = {}
    for layer in mn.CHECKPOINT_MAP:
        if layer not in names:
            continue
        parts = mn.weight_parts(layer)
        arrays = w.get(layer, [])
        if len(arrays) != len(parts):
            raise UnsupportedModel(f"musicnn layer {layer} has {len(arrays)} weights, {len(parts)} expected")
        weights.update({f"{layer}/{p}": np.asarray(a, _F32) for p, a in zip(parts, arrays)})
    head = layers[-1]
    if not isinstance(head["config"].get("layers"), list):
        raise UnsupportedModel(f"the last layer ({head['class_name']}) is not a classifier head model")
    return weights, numpy_model_from_config(head, w, prefix=head["config"]["name"] + "/")


def weights_digest(weights: dict[str, np.ndarray]) -> str:
    """A short hash of the weights (the same network in several files is computed once)."""
    h = hashlib.sha1()
    for k in sorted(weights):
        h.update(k.encode())
        h.update(np.ascontiguousarray(weights[k], _F32).tobytes())
    return h.hexdigest()[:16]


# =========================================================================================================
# the network
# =========================================================================================================
def _bn_affine(w: dict, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """Inference-mode batch norm as ``x * scale + shift`` (computed in float64)."""
    gamma, beta, mean, var = (np.asarray(w[f"{layer}/{p}"], np.float64) for p in mn.BN_PARTS)
    scale = gamma / np.sqrt(var + mn.BN_EPSILON)
    return scale, beta - mean * scale


@dataclass
class _Pooled:
    """One front-end branch: the (sign-adjusted) kernel as a matrix, then max over the mel axis, then
    ``relu(sign * max + bias) * scale + shift``."""
    matrix: np.ndarray
    sign: np.ndarray
    bias: np.ndarray
    scale: np.ndarray
    shift: np.ndarray

    def finish(self, pooled: np.ndarray) -> np.ndarray:
        z = pooled * self.sign
        z += self.bias
        np.maximum(z, 0, out=z)
        z *= self.scale
        z += self.shift
        return z


def _pooled_branch(w: dict, name: str, matrix: np.ndarray, n_tiles: int = 1) -> _Pooled:
    scale, shift = _bn_affine(w, f"{name}_bn")
    sign = np.where(scale >= 0, 1.0, -1.0).astype(_F32)
    matrix = (matrix * np.tile(sign, n_tiles)).astype(_F32)
    return _Pooled(np.ascontiguousarray(matrix), sign, np.asarray(w[f"{name}_conv/bias"], _F32),
                   scale.astype(_F32), shift.astype(_F32))


class MusicnnNetwork:
    """musicnn (:func:`core.musicnn.build_musicnn`) in NumPy: ``MusicnnNetwork(weights)``.

    ``patches(X, names)`` runs it on ``(n, 187, 96)`` log-mel patches (each on its own), ``windows(mel, starts,
    names)`` on the overlapping 187-frame windows of one log-mel (the timbral front end shared), and
    :class:`WindowStream` on a signal fed in blocks. Without the tag layer (the musicnn part of a classifier
    file) every feature but ``taggram`` is available.
    """

    def __init__(self, weights: dict[str, np.ndarray], name: str = "musicnn", batch: int = 4,
                 timbral_chunk: int = 64, threads: int | None = None):
        missing = [f"{layer}/{p}" for layer in mn.CHECKPOINT_MAP if layer != "tag_logits"
                   for p in mn.weight_parts(layer) if f"{layer}/{p}" not in weights]
        if missing:
            raise MusicnnNumpyError(f"musicnn weights incomplete: {', '.join(missing[:4])}"
                                    + (" ..." if len(missing) > 4 else ""))
        w = {k: np.asarray(v, _F32) for k, v in weights.items()}
        self.name = name
        self.batch = max(1, int(batch))
        self.timbral_chunk = max(8, int(timbral_chunk))
        self.threads = max(1, int(threads or default_threads()))
        self._pool = None
        self._scratch: dict[int, dict[str, np.ndarray]] = {}  # per thread: work arrays reused between chunks
        self.digest = weights_digest(w)
        scale, shift = _bn_affine(w, "input_bn")
        self.in_scale, self.in_shift = _F32(scale[0]), _F32(shift[0])
        self.n_mels = mn.N_MELS
        # timbral: (7 frames x k bands) kernels as (7 k, 204) matrices, rows ordered (frame, band)
        self.timbral_branches = []
        for name_, _ in TIMBRAL:
            kern = w[f"{name_}_conv/kernel"]  # (7, k, 1, 204)
            kh, kw, _, f = kern.shape
            br = _pooled_branch(w, name_, kern.reshape(kh * kw, f))
            br.kw = kw  # type: ignore[attr-defined]
            self.timbral_branches.append(br)
        self.timbral_width = sum(b.matrix.shape[1] for b in self.timbral_branches)
        # temporal: (k frames x 1 band) kernels as block-Toeplitz matrices (L + k - 1, L x 51)
        L = TOEPLITZ_BLOCK
        self.temporal_branches = []
        for k in mn.TEMPORAL_KERNELS:
            kern = w[f"temporal{k}_conv/kernel"][:, 0, 0, :]  # (k, 51)
            f = kern.shape[1]
            T = np.zeros((L + k - 1, L, f), np.float32)
            for i in range(L):
                T[i:i + k, i, :] = kern
            br = _pooled_branch(w, f"temporal{k}", T.reshape(L + k - 1, L * f), n_tiles=L)
            br.k = k  # type: ignore[attr-defined]
            # the inputs just outside a window, as their contribution to its first / last output frames:
            # left[j, t] = kernel[j - t] (t <= j < before), right[j, r] = kernel[before + after + j - r] (j <= r)
            before, after = (k - 1) // 2, k // 2
            ks = kern * br.sign
            left = np.zeros((before, before, f), np.float32)
            for t in range(before):
                left[t:, t] = ks[:before - t]
            right = np.zeros((after, after, f), np.float32)
            for r in range(after):
                right[:r + 1, r] = ks[before + after - r:before + after + 1]
            br.before, br.after = before, after  # type: ignore[attr-defined]
            br.left = left.reshape(before, before * f)  # type: ignore[attr-defined]
            br.right = right.reshape(after, after * f)  # type: ignore[attr-defined]
            self.temporal_branches.append(br)
        # mid end: 1D convolutions of 7 frames as (C, 7 x 64) matrices (taps side by side)
        self.midend = []
        for i in (1, 2, 3):
            kern = w[f"midend{i}_conv/kernel"]  # (7, C, 64)
            taps, c, f = kern.shape
            s, t = _bn_affine(w, f"midend{i}_bn")
            self.midend.append((np.ascontiguousarray(kern.transpose(1, 0, 2).reshape(c, taps * f)),
                                taps, f, w[f"midend{i}_conv/bias"], s.astype(_F32), t.astype(_F32)))
        # back end
        s, t = _bn_affine(w, "pool_bn")
        self.pool_scale, self.pool_shift = s.astype(_F32), t.astype(_F32)
        self.dense_w, self.dense_b = w["penultimate_dense/kernel"], w["penultimate_dense/bias"]
        s, t = _bn_affine(w, "penultimate")
        self.pen_scale, self.pen_shift = s.astype(_F32), t.astype(_F32)
        self.has_tags = "tag_logits/kernel" in w and "tag_logits/bias" in w
        if self.has_tags:
            self.tag_w, self.tag_b = w["tag_logits/kernel"], w["tag_logits/bias"]
        self.n_tags = int(self.tag_w.shape[1]) if self.has_tags else 0

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kw) -> "MusicnnNetwork":
        """From ``musicnn.weights.npz`` or a converted folder (:func:`load_weights`)."""
        return cls(load_weights(path), name=Path(path).stem, **kw)

    # ----- threads ------------------------------------------------------------------------------------------------
    def map(self, fn: Callable, items: Sequence) -> list:
        """``[fn(x) for x in items]``, on ``threads`` threads when there is more than one item: each runs
        single-threaded BLAS (:func:`compute`), so the copies and reductions around the products run in parallel
        too (NumPy releases the GIL in both)."""
        if self.threads == 1 or len(items) < 2:
            return [fn(x) for x in items]
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="musicnn")
        return list(self._pool.map(fn, items))

    def _buf(self, key: str, shape: tuple) -> np.ndarray:
        """A float32 work array of ``shape`` (uninitialised), the calling thread's own, reused until
        :meth:`release`: the large temporaries are allocated once per block instead of once per chunk (freshly
        mapped memory costs a page fault per 4 kB: ~0.3 s of system time per minute of audio)."""
        d = self._scratch.setdefault(threading.get_ident(), {})
        n = int(np.prod(shape))
        a = d.get(key)
        if a is None or a.size < n:
            a = d[key] = np.empty(n, _F32)
        return a[:n].reshape(shape)

    def release(self, trim: bool = False) -> None:
        """Drop the work arrays (after a block: nothing of them is kept between calls); with ``trim`` (after a
        whole signal) also hand the freed memory back to the system (:func:`trim_heap`)."""
        self._scratch = {}
        if trim:
            trim_heap()

    # ----- checks ---------------------------------------------------------------------------------------------
    def check_names(self, names: Iterable[str]) -> tuple[str, ...]:
        names = tuple(names)
        if not names:
            raise MusicnnNumpyError(f"name at least one feature ({', '.join(FEATURES)})")
        bad = [n for n in names if n not in FEATURE_DIMS]
        if bad:
            raise MusicnnNumpyError(f"unknown musicnn feature {bad[0]!r} (known: {', '.join(FEATURES)})")
        if "taggram" in names and not self.has_tags:
            raise MusicnnNumpyError("these musicnn weights have no tag layer: 'taggram' is not available")
        return names

    def feature_dim(self, names: Iterable[str]) -> int:
        return sum(FEATURE_DIMS[n] if n != "taggram" else self.n_tags for n in names)

    # ----- pieces --------------------------------------------------------------------------------------------
    def normalise(self, mel: np.ndarray) -> np.ndarray:
        """The input batch norm (one channel: an affine map)."""
        out = np.asarray(mel, _F32) * self.in_scale
        out += self.in_shift
        return out

    def _timbral_block(self, x: np.ndarray) -> np.ndarray:
        """``(B, F, 96)`` normalised, already padded input -> ``(B, F - 6, 408)`` timbral features."""
        B, F, _ = x.shape
        To = F - 2 * CONTEXT
        out = np.empty((B, To, self.timbral_width), _F32)
        c0 = 0
        for br in self.timbral_branches:
            view = np.lib.stride_tricks.sliding_window_view(x, (2 * CONTEXT + 1, br.kw), axis=(1, 2))
            P = view.shape[2]  # (B, To, P, 7, kw)
            f = br.matrix.shape[1]
            cols = self._buf("timbral_cols", view.shape)
            np.copyto(cols, view)  # im2col
            z = self._buf("timbral_z", (B * To * P, f))
            np.matmul(cols.reshape(B * To * P, -1), br.matrix, out=z)
            out[:, :, c0:c0 + f] = br.finish(z.reshape(B, To, P, f).max(axis=2))
            c0 += f
        return out

    def timbral(self, x: np.ndarray, parallel: bool = True) -> np.ndarray:
        """The timbral front end of ``(B, F, 96)`` normalised, zero-padded inputs: ``(B, F - 6, 408)``, in
        chunks of about ``timbral_chunk`` output frames (the im2col copy is ~120 kB per frame), on the threads
        when ``parallel`` (not from inside a task that already runs on them)."""
        run = self.map if parallel else (lambda fn, items: [fn(i) for i in items])
        B, F, _ = x.shape
        To = F - 2 * CONTEXT
        ch = self.timbral_chunk
        if To <= 0:
            return np.zeros((B, 0, self.timbral_width), _F32)
        out = np.empty((B, To, self.timbral_width), _F32)
        if To >= ch:
            def one(job):
                b, a = job
                e = min(To, a + ch)
                out[b, a:e] = self._timbral_block(x[b:b + 1, a:e + 2 * CONTEXT])[0]

            run(one, [(b, a) for b in range(B) for a in range(0, To, ch)])
        else:
            step = max(1, ch // To)

            def some(b):
                out[b:b + step] = self._timbral_block(x[b:b + step])

            run(some, list(range(0, B, step)))
        return out

    def edges(self, xn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Timbral features of each window's first and last 3 frames, with the window's own zero padding:
        ``xn`` is ``(n, 187, 96)`` normalised windows; returns two ``(n, 3, 408)`` arrays."""
        n = xn.shape[0]
        c = CONTEXT
        ex = np.zeros((2 * n, 3 * c, xn.shape[2]), _F32)  # 3 zero frames + 6 frames, or 6 frames + 3 zeros
        ex[:n, c:] = xn[:, :2 * c]
        ex[n:, :2 * c] = xn[:, -2 * c:]
        t = self.timbral(ex, parallel=False)  # called from the window tasks
        return t[:n], t[n:]

    def _temporal(self, xn: np.ndarray) -> np.ndarray:
        """The three temporal branches of ``(n, 187, 96)`` normalised windows: ``(n, 187, 153)``."""
        n, T, M = xn.shape
        L = TOEPLITZ_BLOCK
        nb = -(-T // L)
        xt = xn.transpose(0, 2, 1)  # (n, bands, frames)
        outs = []
        for br in self.temporal_branches:
            k = br.k
            before = (k - 1) // 2  # TF "same" padding for an even kernel
            xp = np.zeros((n, M, nb * L + k - 1), _F32)
            xp[:, :, before:before + T] = xt
            cols = np.lib.stride_tricks.sliding_window_view(xp, L + k - 1, axis=2)[:, :, ::L]  # (n, M, nb, L+k-1)
            z = np.ascontiguousarray(cols).reshape(-1, L + k - 1) @ br.matrix  # (n M nb, L f)
            f = br.sign.size
            pooled = z.reshape(n, M, nb * L, f).max(axis=1)[:, :T]
            outs.append(br.finish(pooled))
        return np.concatenate(outs, axis=-1)

    def _midend(self, front: np.ndarray) -> np.ndarray:
        """Mid end (three 7-frame 1D convolutions, zero-padded per window, residual from the 2nd on) and the
        dense concatenation: ``(n, 187, 561)`` -> ``(n, 187, 753)``."""
        n, T, _ = front.shape
        mids = [front]
        h = front
        for i, (wmat, taps, f, bias, s, t) in enumerate(self.midend):
            y = self._buf("midend_y", (n * T, taps * f))
            np.matmul(h.reshape(n * T, -1), wmat, out=y)
            y = y.reshape(n, T, taps, f)
            half = taps // 2
            c = np.empty((n, T, f), _F32)
            c[:] = bias
            for tap in range(taps):
                d = tap - half  # output frame t takes input frame t + d
                lo, hi = max(0, -d), min(T, T - d)
                c[:, lo:hi] += y[:, lo + d:hi + d, tap]
            np.maximum(c, 0, out=c)
            c *= s
            c += t
            h = c if i == 0 else c + h
            mids.append(h)
        return np.concatenate(mids, axis=-1)

    def _temporal_shared(self, xc: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """The temporal branches of windows of one normalised log-mel ``xc`` (``(F, 96)``: every window inside)
        at ``starts``: ``(n, 187, 153)``, the same as :meth:`_temporal` on the windows cut out.

        Each window zero-pads its own input, so a frame's convolution differs from the whole log-mel's only by
        the inputs outside the window: the convolution runs once over ``xc``; its max over the bands is the
        answer for a window's inner frames, and the first ``before`` / last ``after`` frames (63 / 64 for the
        128-frame kernel) subtract what the ``before`` / ``after`` frames just outside the window contributed
        (one product with a triangular kernel matrix per side) before their max over the bands. For windows 1 s
        apart this is ~1.7x fewer multiply-accumulates than running every window on its own."""
        F, M = xc.shape
        P, L = mn.PATCH_FRAMES, TOEPLITZ_BLOCK
        n = len(starts)
        nb = -(-F // L)
        xt = xc.T  # (bands, frames)
        outs = []
        for br in self.temporal_branches:
            k, before, after = br.k, br.before, br.after
            f = br.sign.size
            xp = self._buf("temporal_x", (M, nb * L + k - 1))
            xp[:, :before] = 0
            xp[:, before + F:] = 0
            xp[:, before:before + F] = xt
            view = np.lib.stride_tricks.sliding_window_view(xp, L + k - 1, axis=1)[:, ::L]  # (M, nb, L+k-1)
            cols = self._buf("temporal_cols", view.shape)
            np.copyto(cols, view)
            z = self._buf("temporal_z", (M * nb, L * f))
            np.matmul(cols.reshape(-1, L + k - 1), br.matrix, out=z)
            z = z.reshape(M, nb * L, f)[:, :F]
            pooled = z.max(axis=0)  # (F, f): the inner frames of every window
            out = np.empty((n, P, f), _F32)
            xl = self._buf("temporal_xl", (n, M, before))  # the frames just before / after each window
            xr = self._buf("temporal_xr", (n, M, after))
            xl[:] = 0  # zeros beyond xc
            xr[:] = 0
            for i, s in enumerate(starts):
                out[i] = pooled[s:s + P]
                lo = max(0, s - before)
                xl[i, :, lo - (s - before):] = xt[:, lo:s]
                hi = min(F, s + P + after)
                xr[i, :, :hi - s - P] = xt[:, s + P:hi]
            zl = self._buf("temporal_zl", (n * M, before * f))  # what the outside frames contributed ...
            np.matmul(xl.reshape(-1, before), br.left, out=zl)
            zr = self._buf("temporal_zr", (n * M, after * f))
            np.matmul(xr.reshape(-1, after), br.right, out=zr)
            zl, zr = zl.reshape(n, M, before, f), zr.reshape(n, M, after, f)
            for i, s in enumerate(starts):  # ... taken from the whole log-mel's convolution
                np.subtract(z[:, s:s + before], zl[i], out=zl[i])
                np.subtract(z[:, s + P - after:s + P], zr[i], out=zr[i])
            out[:, :before] = zl.max(axis=1)
            out[:, P - after:] = zr.max(axis=1)
            outs.append(br.finish(out))
        return np.concatenate(outs, axis=-1)

    def rest(self, xn: np.ndarray, tim: np.ndarray, names: Sequence[str],
             temporal: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The named outputs of windows given their normalised log-mel ``(n, 187, 96)``, their timbral features
        ``(n, 187, 408)`` and, when already computed (:meth:`_temporal_shared`), their temporal ones."""
        front = np.concatenate([tim, self._temporal(xn) if temporal is None else temporal], axis=-1)
        mid = self._midend(front)
        out: dict[str, np.ndarray] = {}
        mx, mean = mid.max(axis=1), mid.mean(axis=1, dtype=_F32)
        if "max_pool" in names:
            out["max_pool"] = mx
        if "mean_pool" in names:
            out["mean_pool"] = mean
        if "penultimate" in names or "taggram" in names:
            pooled = np.concatenate([mx, mean], axis=-1) * self.pool_scale + self.pool_shift
            d = pooled @ self.dense_w + self.dense_b
            pen = np.maximum(d, 0) * self.pen_scale + self.pen_shift
            if "penultimate" in names:
                out["penultimate"] = pen
            if "taggram" in names:
                out["taggram"] = (0.5 * (1.0 + np.tanh(0.5 * (pen @ self.tag_w + self.tag_b)))).astype(_F32)
        return {k: out[k] for k in names}

    # ----- whole runs ----------------------------------------------------------------------------------------
    def patches(self, X: np.ndarray, names: Sequence[str] = ("penultimate",)) -> dict[str, np.ndarray]:
        """The named outputs of ``(n, 187, 96)`` log-mel patches, each run on its own (musicnn's extractor)."""
        names = self.check_names(names)
        X = np.asarray(X, _F32)
        if X.ndim != 3 or X.shape[1:] != (mn.PATCH_FRAMES, self.n_mels):
            raise MusicnnNumpyError(f"musicnn takes (n, {mn.PATCH_FRAMES}, {self.n_mels}) patches, not {X.shape}")
        def one(a):
            xn = self.normalise(X[a:a + self.batch])
            padded = np.zeros((len(xn), mn.PATCH_FRAMES + 2 * CONTEXT, self.n_mels), _F32)
            padded[:, CONTEXT:-CONTEXT] = xn
            return self.rest(xn, self.timbral(padded, parallel=False), names)

        with compute():
            parts = self.map(one, list(range(0, len(X), self.batch)))
        self.release(trim=True)
        return _concat(parts, names, self.feature_dim)

    def windows(self, mel: np.ndarray, start_frames, names: Sequence[str] = ("penultimate",)) -> dict[str, np.ndarray]:
        """The named outputs of the 187-frame windows of one log-mel ``(frames, 96)`` at ``start_frames`` (all
        inside), the timbral front end computed once per frame."""
        names = self.check_names(names)
        starts = np.asarray(start_frames, np.int64)
        mel = np.asarray(mel, _F32)
        if len(starts) == 0:
            return _concat([], names, self.feature_dim)
        if starts.min() < 0 or starts.max() + mn.PATCH_FRAMES > mel.shape[0]:
            raise MusicnnNumpyError("every window must lie inside the log-mel")
        lo, hi = int(starts.min()), int(starts.max()) + mn.PATCH_FRAMES
        xn = self.normalise(mel[lo:hi])
        padded = np.zeros((hi - lo + 2 * CONTEXT, self.n_mels), _F32)
        padded[CONTEXT:-CONTEXT] = xn
        with compute():
            tim = self.timbral(padded[None])[0]
            parts = self.window_batches(xn, tim, starts - lo, names)
        self.release(trim=True)
        return _concat(parts, names, self.feature_dim)

    def window_batches(self, xn: np.ndarray, tim: np.ndarray, rel_starts: np.ndarray, names) -> list[dict]:
        """:meth:`_window_batch` on batches of ``batch`` windows, on the threads."""
        return self.map(lambda a: self._window_batch(xn, tim, rel_starts[a:a + self.batch], names),
                        list(range(0, len(rel_starts), self.batch)))



    def _window_batch(self, xn: np.ndarray, tim: np.ndarray, rel_starts: np.ndarray, names) -> dict:
        """Windows at ``rel_starts`` of a normalised log-mel ``xn`` whose timbral features are ``tim`` (the
        windows' 3 edge frames each side recomputed with their own zero padding)."""
        P, c = mn.PATCH_FRAMES, CONTEXT
        n = len(rel_starts)
        X = np.empty((n, P, xn.shape[1]), _F32)
        TIM = np.empty((n, P, self.timbral_width), _F32)
        for i, s in enumerate(rel_starts):
            X[i] = xn[s:s + P]
            TIM[i, c:P - c] = tim[s + c:s + P - c]
        TIM[:, :c], TIM[:, P - c:] = self.edges(X)
        a, b = int(rel_starts[0]), int(rel_starts[-1]) + P
        if b - a >= n * P:  # windows that do not overlap (a hop of 3 s or more): nothing to share
            return self.rest(X, TIM, names)
        return self.rest(X, TIM, names, self._temporal_shared(xn[a:b], np.asarray(rel_starts) - a))


def count_macs(n_frames: int, start_frames: Sequence[int], batch: int = 4) -> dict[str, int]:
    """Multiply-accumulates of :class:`WindowStream` on ``n_frames`` log-mel frames with windows at
    ``start_frames`` in batches of ``batch``, by part, as computed here (the block-Toeplitz and triangular
    products' zeros included), and ``"one by one"``: the same windows each run through the whole network
    (:func:`core.musicnn.count_macs`)."""
    starts = np.asarray(start_frames, np.int64)
    n = len(starts)
    P, L, M, f = mn.PATCH_FRAMES, TOEPLITZ_BLOCK, mn.N_MELS, 51
    timbral_frame = sum((M - int(r * M) + 1) * 7 * int(r * M) * 204 for _, r in TIMBRAL)
    temporal = 0
    for a in range(0, n, batch):
        m = min(batch, n - a)
        span = int(starts[a + m - 1] - starts[a]) + P
        for k in mn.TEMPORAL_KERNELS:
            before, after = (k - 1) // 2, k // 2
            if span >= m * P:  # windows that do not overlap: each on its own
                temporal += m * M * (-(-P // L)) * (L + k - 1) * L * f
                continue
            temporal += M * -(-span // L) * (L + k - 1) * L * f  # the span's convolution
            temporal += m * M * f * (before * before + after * after)  # the windows' edges
    out = {"timbral (shared)": n_frames * timbral_frame, "timbral edges": n * 6 * timbral_frame,
           "temporal": temporal, "mid end": n * P * 7 * 64 * (561 + 64 + 64),
           "back end": n * (1506 * 200 + 200 * 50)}
    out["total"] = sum(out.values())
    out["one by one"] = n * mn.count_macs()
    return out


def _concat(parts: list[dict], names: Sequence[str], dim_of: Callable) -> dict[str, np.ndarray]:
    if not parts:
        return {k: np.zeros((0, dim_of([k])), _F32) for k in names}
    return {k: np.concatenate([p[k] for p in parts]) for k in names}


@functools.lru_cache(maxsize=2)
def _network_from(path: str, mtime: float) -> MusicnnNetwork:
    return MusicnnNetwork.from_file(path)


def network(weights: str | os.PathLike | dict | MusicnnNetwork | None = None) -> MusicnnNetwork:
    """A :class:`MusicnnNetwork` from weights (a dict), a weights file or folder, or the shipped
    ``models/msd-musicnn`` (None); networks from files are cached."""
    if isinstance(weights, MusicnnNetwork):
        return weights
    if isinstance(weights, dict):
        return MusicnnNetwork(weights)
    p = Path(weights) if weights is not None else mn.default_model_dir()
    if not p.exists():
        raise MusicnnNumpyError(f"musicnn weights not found: {p}")
    return _network_from(str(p.resolve()), p.stat().st_mtime)


# =========================================================================================================
# streaming: log-mel and windows block by block
# =========================================================================================================
class LogMelStream:
    """musicnn's log-mel (:func:`core.musicnn.log_mel`) of a 16 kHz signal fed in blocks: ``feed(samples)``
    returns the frames that are complete, ``finish()`` the rest (the reflect padding at the end); together
    they are the frames of the whole signal (the same arithmetic per frame)."""

    PAD = mn.N_FFT // 2

    def __init__(self):
        self.buf = np.zeros(0, _F32)  # samples of the padded signal, from padded index p0
        self.p0 = 0
        self.n = 0  # samples received
        self.frame = 0  # next frame to compute
        self.started = False
        self._basis_t = mn.mel_filterbank().T.copy()

    def _frames(self, upto: int) -> np.ndarray:
        """Frames ``[self.frame, upto)`` from the buffer."""
        from core.features import frames_power

        if upto <= self.frame:
            return np.zeros((0, mn.N_MELS), _F32)
        a = self.frame * mn.HOP - self.p0
        b = (upto - 1) * mn.HOP + mn.N_FFT - self.p0
        frames = np.lib.stride_tricks.sliding_window_view(self.buf[a:b], mn.N_FFT)[::mn.HOP]
        out = []
        for i in range(0, frames.shape[0], 512):  # as core.features.stft_power: 512 frames per FFT block
            out.append(frames_power(frames[i:i + 512]) @ self._basis_t)
        self.frame = upto
        mel16 = np.concatenate(out).astype(np.float16).astype(_F32)
        return np.log10(_F32(10000.0) * mel16 + _F32(1.0)).astype(_F32)

    def _trim(self) -> None:
        """Keep what the next frame and the end's reflect padding need (the last 512 samples at least)."""
        keep = min(self.frame * mn.HOP, self.p0 + self.buf.size - mn.N_FFT)
        if keep > self.p0:
            self.buf = self.buf[keep - self.p0:].copy()
            self.p0 = keep

    def feed(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, _F32).reshape(-1)
        self.n += y.size
        self.buf = np.concatenate([self.buf, y]) if self.buf.size else y.copy()
        if not self.started:
            if self.n <= self.PAD:  # reflect padding needs PAD + 1 samples
                return np.zeros((0, mn.N_MELS), _F32)
            self.buf = np.concatenate([self.buf[self.PAD:0:-1], self.buf])  # np.pad(..., mode="reflect")
            self.started = True
        end = self.p0 + self.buf.size  # padded index
        upto = max(self.frame, (end - mn.N_FFT) // mn.HOP + 1)
        out = self._frames(upto)
        self._trim()
        return out

    def finish(self) -> np.ndarray:
        if not self.started:  # a signal of at most PAD samples: log_mel pads it (all of it is in the buffer)
            return mn.log_mel(self.buf) if self.n else np.zeros((0, mn.N_MELS), _F32)
        self.buf = np.concatenate([self.buf, self.buf[-2:-self.PAD - 2:-1]])
        return self._frames(1 + self.n // mn.HOP)


class WindowStream:
    """Per-window musicnn features of a 16 kHz signal fed in blocks, in bounded memory.

    Windows: 187 frames (3 s) starting every ``hop_s`` seconds (the nearest frame, as
    :func:`core.predictor.window_start_frames`), or every ``hop_frames`` frames (musicnn's own extractor: 187).
    ``feed(samples)`` and ``finish()`` return ``[(start_frames, {name: (k, dim)}), ...]`` for the windows that
    became complete, in order; a signal shorter than one window gives one window of its log-mel repeated to
    187 frames (``padded`` is then True). Only the log-mel and timbral frames that later windows need are
    kept: a few seconds, whatever the length.
    """

    def __init__(self, net: MusicnnNetwork, names: Sequence[str] = ("penultimate",), hop_s: float = 1.0,
                 hop_frames: int | None = None):
        if hop_frames is None and not hop_s > 0:
            raise mn.MusicnnError("hop must be positive")
        if hop_frames is not None and hop_frames < 1:
            raise mn.MusicnnError("hop must be at least one frame")
        self.net = net
        self.names = net.check_names(names)
        self.hop_s, self.hop_frames = float(hop_s), hop_frames
        self.logmel = LogMelStream()
        self.mel = np.zeros((0, net.n_mels), _F32)  # log-mel frames [m0, m0 + len)
        self.tim = np.zeros((0, net.timbral_width), _F32)  # timbral frames [m0, m0 + len)
        self.m0 = 0
        self.padded = False
        self.n_windows = 0
        self._k = 0
        self._last = -1
        self._pending: int | None = None
        self._done = False

    @property
    def n_samples(self) -> int:
        return self.logmel.n

    @property
    def n_frames(self) -> int:
        return self.m0 + self.mel.shape[0]

    def _next_start(self) -> int:
        if self._pending is None:
            while True:
                f = self._k * self.hop_frames if self.hop_frames else mn.frames_at(self._k * self.hop_s)
                self._k += 1
                if f > self._last:
                    self._last = self._pending = f
                    break
        return self._pending

    def _extend_timbral(self, end: int) -> None:
        """Timbral features of frames up to ``end`` (frames beyond the log-mel read as zeros: the track's end)."""
        t1 = self.m0 + self.tim.shape[0]
        if end <= t1:
            return
        c = CONTEXT
        lo = t1 - c
        x = np.zeros((end - t1 + 2 * c, self.net.n_mels), _F32)
        a, b = max(lo, self.m0), min(end + c, self.n_frames)
        assert a == lo or lo < 0, "the log-mel frames before the timbral front end were dropped"
        x[a - lo:b - lo] = self.net.normalise(self.mel[a - self.m0:b - self.m0])
        self.tim = np.concatenate([self.tim, self.net.timbral(x[None])[0]])

    def _ready(self, eof: bool) -> list[tuple[np.ndarray, dict]]:
        n = self.n_frames
        self._extend_timbral(n if eof else n - CONTEXT)
        starts = []
        while self._next_start() + mn.PATCH_FRAMES <= n:
            starts.append(self._pending)
            self._pending = None
        out = []
        if starts:
            xn = self.net.normalise(self.mel[starts[0] - self.m0:starts[-1] + mn.PATCH_FRAMES - self.m0])
            tim = self.tim[starts[0] - self.m0:]
            st = np.asarray(starts, np.int64)
            feats = self.net.window_batches(xn, tim, st - st[0], self.names)
            out = [(st[a:a + self.net.batch], f) for a, f in zip(range(0, len(st), self.net.batch), feats)]
            self.n_windows += len(st)
        if not eof:  # keep only what the next windows (and the next timbral frames) need
            keep = min(self._next_start(), self.m0 + self.tim.shape[0] - CONTEXT)
            if keep > self.m0:
                self.mel = self.mel[keep - self.m0:].copy()
                self.tim = self.tim[keep - self.m0:].copy()
                self.m0 = keep
        return out

    def feed(self, y: np.ndarray) -> list[tuple[np.ndarray, dict]]:
        if self._done:
            raise RuntimeError("the stream is finished")
        frames = self.logmel.feed(y)
        if frames.shape[0]:
            self.mel = np.concatenate([self.mel, frames])
        if self.n_frames < mn.PATCH_FRAMES:
            return []
        try:
            with compute():
                return self._ready(False)
        finally:
            self.net.release()

    def finish(self) -> list[tuple[np.ndarray, dict]]:
        self._done = True
        frames = self.logmel.finish()
        if frames.shape[0]:
            self.mel = np.concatenate([self.mel, frames])
        if self.n_frames < mn.PATCH_FRAMES:  # shorter than one window: repeat-padded (musicnn's training did)
            if self.n_frames == 0:
                return []
            x, _ = mn.patches(self.mel)
            self.padded = True
            self.n_windows = 1
            return [(np.zeros(1, np.int64), self.net.patches(x, self.names))]
        try:
            with compute():
                return self._ready(True)
        finally:
            self.net.release(trim=True)


# =========================================================================================================
# features of a signal or a file
# =========================================================================================================
@dataclass
class WindowFeatures:
    """Per-window features of one signal: ``features[name]`` is ``(n_windows, dim)`` float32, window ``i``
    covers ``starts[i]`` to ``starts[i] + 3`` seconds (frame ``start_frames[i]`` of musicnn's 16 ms grid)."""
    start_frames: np.ndarray
    features: dict[str, np.ndarray]
    n_samples: int
    padded: bool = False  # shorter than one window: its log-mel repeated to 3 s

    @property
    def starts(self) -> np.ndarray:
        return self.start_frames * mn.HOP / mn.SR

    @property
    def duration_s(self) -> float:
        return self.n_samples / mn.SR

    @property
    def n_windows(self) -> int:
        return int(len(self.start_frames))

    def concatenated(self, names: Sequence[str] | None = None) -> np.ndarray:
        """The named features side by side, in the given order: ``(n_windows, sum of dims)``."""
        return np.concatenate([self.features[n] for n in (names or list(self.features))], axis=1)


def stream_features(blocks: Iterable[np.ndarray], names: Sequence[str] = ("penultimate",), hop_s: float = 1.0,
                    weights=None, hop_frames: int | None = None,
                    progress: Callable[[float, int], None] | None = None) -> WindowFeatures:
    """:class:`WindowFeatures` of a 16 kHz signal given as blocks of samples; ``progress(seconds_done,
    windows_done)`` after each block."""
    ws = WindowStream(network(weights), names, hop_s, hop_frames)
    starts: list[np.ndarray] = []
    parts: list[dict] = []

    def take(done):
        for s, f in done:
            starts.append(s)
            parts.append(f)

    for block in blocks:
        take(ws.feed(block))
        if progress is not None:
            progress(ws.n_samples / mn.SR, ws.n_windows)
    take(ws.finish())
    if ws.n_samples == 0:
        raise mn.MusicnnError("empty signal")
    return WindowFeatures(np.concatenate(starts) if starts else np.zeros(0, np.int64),
                          _concat(parts, ws.names, ws.net.feature_dim), ws.n_samples, ws.padded)


def window_features(y: np.ndarray, sr: int = mn.SR, names: Sequence[str] = ("penultimate",), hop_s: float = 1.0,
                    weights=None, *, hop_frames: int | None = None, block_s: float = 60.0,
                    progress: Callable[[float, int], None] | None = None) -> WindowFeatures:
    """Named musicnn features (:data:`FEATURES`) of the 3 s windows of a mono signal, every ``hop_s`` seconds.

    ``y`` at ``sr`` (resampled to 16 kHz when it differs); ``weights``: a dict, a ``musicnn.weights.npz`` or a
    converted folder (default: the shipped ``models/msd-musicnn``). Computed in ``block_s`` blocks (memory
    bounded by the block, not the signal). For training heads::

        wf = window_features(y, sr, ["penultimate", "max_pool"], hop_s=1.0)
        X = wf.concatenated(["penultimate", "max_pool"])   # (n_windows, 953)
    """
    y = np.asarray(y, _F32)
    if y.ndim > 1:
        y = y.mean(axis=-1 if y.shape[-1] <= 8 else 0)
    if y.size == 0:
        raise mn.MusicnnError("empty signal")
    if sr != mn.SR:
        from core.audio import resample

        y = resample(y, sr, mn.SR)
    step = max(mn.N_FFT, int(block_s * mn.SR))
    return stream_features((y[a:a + step] for a in range(0, y.size, step)), names, hop_s, weights, hop_frames,
                           progress)


def file_window_features(path: str | os.PathLike, names: Sequence[str] = ("penultimate",), hop_s: float = 1.0,
                         weights=None, *, hop_frames: int | None = None, block_s: float = 60.0,
                         progress: Callable[[float, int], None] | None = None) -> WindowFeatures:
    """:func:`window_features` of an audio file, decoded in ``block_s`` blocks (:func:`core.audio.stream_audio`):
    bounded memory for any length. Raises :class:`core.audio.AudioError` for unreadable files."""
    from core.audio import stream_audio

    return stream_features(stream_audio(path, mn.SR, block_s), names, hop_s, weights, hop_frames, progress)
