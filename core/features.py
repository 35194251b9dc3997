"""Log-mel features and the divide-and-conquer snippet cutting.

The mel spectrogram of a track is computed **once** and its frames are sliced into snippets. Snippet starts
are snapped to the STFT frame grid (a shift of at most ``hop / 2`` samples, 11.6 ms at the defaults), so every
interior frame of a slice equals the frame that a separate computation on the snippet's own samples gives.
Only the ``ceil(n_fft / 2 / hop)`` frames at each end of a snippet differ (2 at the defaults): there the
separate computation sees zero padding where the track has real neighbouring samples.

Decibels use a fixed reference (``ref=1.0``, no ``top_db`` clipping) so a frame's value never depends on
which excerpt it was computed from. Optional per-snippet peak normalisation is applied exactly in the dB
domain: scaling a waveform by ``g`` adds ``20 log10 g`` dB to each of its mel bins.
"""
from __future__ import annotations

import math
import os
import zlib
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from core.errors import GenreLabError

AMIN = 1e-10  # power floor before the log: -100 dB


class FeatureParamsError(GenreLabError, ValueError):
    """Feature parameters that cannot be used (a snippet of 0 s, an overlap longer than the snippet, an unknown
    normalisation ...); the message says which. Also a ``ValueError``, which callers of :class:`FeatureParams` catch."""


@dataclass(frozen=True)
class FeatureParams:
    """Every parameter that shapes a dataset's features (stored in the dataset card)."""

    sample_rate: int = 22050
    snippet_s: float = 3.0
    overlap_s: float = 1.0
    max_snippets: int = 14  # 0 = every snippet of the track
    selection: str = "first"  # "first" or "random"
    selection_seed: int = 0
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 100
    log: bool = True
    peak_normalize: bool = False
    pad_short: bool = False  # zero-pad tracks shorter than one snippet instead of skipping them
    mode: str = "snippet"  # "snippet" or "full" (one spectrogram per track)
    full_clip_s: float = 30.0
    # full mode: store up to this many seconds of each track (0 = only full_clip_s) so that training can cut a
    # fresh random full_clip_s crop every epoch; the model still sees full_clip_s (``input_frames``)
    full_store_s: float = 0.0

    def __post_init__(self) -> None:
        if self.sample_rate < 1000:
            raise FeatureParamsError("sample_rate must be at least 1000 Hz")
        if self.snippet_s <= 0:
            raise FeatureParamsError("snippet length must be positive")
        if not 0 <= self.overlap_s < self.snippet_s:
            raise FeatureParamsError("overlap must be >= 0 and shorter than the snippet")
        if self.max_snippets < 0:
            raise FeatureParamsError("max_snippets must be >= 0 (0 = all)")
        if self.selection not in ("first", "random"):
            raise FeatureParamsError("selection must be 'first' or 'random'")
        if self.mode not in ("snippet", "full"):
            raise FeatureParamsError("mode must be 'snippet' or 'full'")
        if self.n_fft < 16 or self.hop_length < 1 or self.n_mels < 1:
            raise FeatureParamsError("n_fft, hop_length and n_mels must be positive")
        if self.full_clip_s <= 0:
            raise FeatureParamsError("full_clip_s must be positive")
        if self.full_store_s < 0:
            raise FeatureParamsError("full_store_s must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        """Every parameter; ``full_store_s`` (added later) only when set, so earlier build ids hold."""
        d = asdict(self)
        if not d["full_store_s"]:
            d.pop("full_store_s")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FeatureParams":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    # derived sizes -------------------------------------------------------------------------------
    @property
    def snippet_samples(self) -> int:
        return int(round(self.snippet_s * self.sample_rate))

    @property
    def step_s(self) -> float:
        return self.snippet_s - self.overlap_s

    @property
    def snippet_frames(self) -> int:
        """Frames of one snippet: 130 at the defaults (3 s, hop 512, centred frames)."""
        return frames_for(self.snippet_samples, self.hop_length)

    @property
    def full_samples(self) -> int:
        return int(round(self.full_clip_s * self.sample_rate))

    @property
    def full_frames(self) -> int:
        """Frames of a full clip: 1292 at the defaults (30 s)."""
        return frames_for(self.full_samples, self.hop_length)

    @property
    def input_frames(self) -> int:
        return self.full_frames if self.mode == "full" else self.snippet_frames

    @property
    def stored_frames(self) -> int:
        """Frames of each stored row: ``input_frames``, or more in full mode with ``full_store_s``."""
        if self.mode == "full" and self.full_store_s > self.full_clip_s:
            return frames_for(int(round(self.full_store_s * self.sample_rate)), self.hop_length)
        return self.input_frames

    @property
    def edge_frames(self) -> int:
        return int(math.ceil(self.n_fft / 2 / self.hop_length))


def frames_for(n_samples: int, hop_length: int) -> int:
    """Number of centred STFT frames librosa gives for ``n_samples`` samples."""
    return 1 + n_samples // hop_length


_MEL_BASIS: dict[tuple, Any] = {}
_WINDOWS: dict[int, np.ndarray] = {}
_STFT_BLOCK = 512  # frames per FFT block: bounded memory (8 MB of float64 frames at n_fft 2048) on long clips


# ---------------------------------------------------------------------------------------------------------
# NumPy mel spectrogram, equal to librosa's (librosa is not imported: its numba functions compile for ~17 s
# on a cold start). tests/test_features_dsp.py checks every function against librosa.
# ---------------------------------------------------------------------------------------------------------
def hz_to_mel(freqs) -> np.ndarray:
    """Slaney mel scale (``librosa.hz_to_mel(htk=False)``): linear below 1 kHz, logarithmic above."""
    f = np.asarray(freqs, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-300) / min_log_hz) / logstep, mels)


def mel_to_hz(mels) -> np.ndarray:
    """Inverse of :func:`hz_to_mel` (``librosa.mel_to_hz(htk=False)``)."""
    m = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * m
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), freqs)


def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)`` (Slaney scale, Slaney area normalisation),
    float32 ``(n_mels, 1 + n_fft // 2)``: the same operations in the same order."""
    fmax = float(sr) / 2 if fmax is None else fmax
    weights = np.zeros((int(n_mels), int(1 + n_fft // 2)), dtype=np.float32)
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, np.newaxis]
    return weights


def hann_window(n_fft: int) -> np.ndarray:
    """Periodic Hann window (``scipy.signal.get_window("hann", n_fft, fftbins=True)``), float64."""
    if n_fft not in _WINDOWS:
        n = np.arange(n_fft, dtype=np.float64)
        _WINDOWS[n_fft] = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)
    return _WINDOWS[n_fft]


def frames_power(frames: np.ndarray, workers: int = 1) -> np.ndarray:
    """Power spectrum of ``(k, n_fft)`` signal frames (already cut, no padding), float32 ``(k, 1 + n_fft // 2)``:
    periodic Hann window, float64 FFT rounded to complex64 as librosa does (the inner step of :func:`stft_power`;
    musicnn's streamed log-mel cuts its own frames). On one thread NumPy's FFT (the same pocketfft as SciPy's:
    identical values, and importing it costs ~1 ms instead of ~0.3 s for ``scipy.fft``), else SciPy's with
    ``workers`` threads."""
    windowed = hann_window(frames.shape[-1]) * frames
    if workers == 1:
        spec = np.fft.rfft(windowed, axis=-1)
    else:
        import scipy.fft

        spec = scipy.fft.rfft(windowed, axis=-1, workers=workers)
    with np.errstate(over="ignore", invalid="ignore"):  # samples far outside [-1, 1]: inf, which the
        spec = spec.astype(np.complex64)                 # callers refuse (dataset builds, Predictor)
        return spec.real ** 2 + spec.imag ** 2


def stft_power(y: np.ndarray, n_fft: int, hop_length: int, *, workers: int = 1,
               consume=None, pad_mode: str = "constant") -> np.ndarray | None:
    """``|librosa.stft(y, n_fft, hop_length, center=True, pad_mode=pad_mode)|**2`` as float32
    ``(frames, 1 + n_fft // 2)`` (time first): padding of ``n_fft // 2`` on both sides (zeros, or ``"reflect"``
    as librosa < 0.10 did by default: musicnn's front end), periodic Hann window, float64 FFT rounded to
    complex64 as librosa does. Computed in blocks of frames; with ``consume`` each block's power is passed to
    ``consume(block)`` instead of being collected (bounded memory)."""
    y = np.ascontiguousarray(y, dtype=np.float32)
    pad = n_fft // 2
    yp = np.pad(y, (pad, pad), mode=pad_mode)
    frames = np.lib.stride_tricks.sliding_window_view(yp, n_fft)[::hop_length]
    out = []
    for a in range(0, frames.shape[0], _STFT_BLOCK):
        power = frames_power(frames[a:a + _STFT_BLOCK], workers)
        if consume is None:
            out.append(power)
        else:
            consume(power)
    if consume is not None:
        return None
    return np.concatenate(out) if out else np.zeros((0, 1 + n_fft // 2), np.float32)


def _mel_basis(sr: int, n_fft: int, n_mels: int):
    """The mel filter bank, transposed, as a sparse matrix (each filter spans a few FFT bins: ~2k non-zeros
    of 100k at the defaults, so the projection costs ~2 ms per 30 s instead of ~10 ms dense)."""
    key = (sr, n_fft, n_mels)
    if key not in _MEL_BASIS:
        import scipy.sparse

        _MEL_BASIS[key] = scipy.sparse.csr_matrix(mel_filterbank(sr, n_fft, n_mels))
    return _MEL_BASIS[key]


def mel_power(y: np.ndarray, params: FeatureParams) -> np.ndarray:
    """Mel power spectrogram, shape ``(frames, n_mels)`` (time first), float32.

    Same as ``librosa.feature.melspectrogram(y=y, sr, n_fft, hop_length, n_mels)`` (centred frames,
    zero padding, Hann window, power 2), transposed, computed without librosa.
    """
    y = np.ascontiguousarray(y, dtype=np.float32)
    basis = _mel_basis(params.sample_rate, params.n_fft, params.n_mels)
    blocks: list[np.ndarray] = []
    stft_power(y, params.n_fft, params.hop_length, workers=_fft_workers(y.size, params.sample_rate),
               consume=lambda pw: blocks.append(np.asarray(basis @ pw.T, dtype=np.float32).T))
    if not blocks:
        return np.zeros((0, params.n_mels), np.float32)
    return np.ascontiguousarray(np.concatenate(blocks))


def _fft_workers(n_samples: int, sr: int) -> int:
    """Threads for the FFT: all cores for signals over 20 s in a main process (inference on a long track),
    one inside pool workers (the dataset build already runs one process per core)."""
    import multiprocessing

    if n_samples < 20 * sr or multiprocessing.current_process().name != "MainProcess":
        return 1
    return max(1, os.cpu_count() or 1)


def to_db(power: np.ndarray) -> np.ndarray:
    """``10 log10(max(power, 1e-10))`` with a fixed reference of 1.0 (no top-dB clipping)."""
    return (10.0 * np.log10(np.maximum(power, AMIN))).astype(np.float32)


def mel_spectrogram(y: np.ndarray, params: FeatureParams) -> np.ndarray:
    """The feature matrix of a signal: log-mel (dB) if ``params.log`` else mel power, ``(frames, n_mels)``."""
    p = mel_power(y, params)
    return to_db(p) if params.log else p


def snippet_start_frames(n_samples: int, params: FeatureParams, step_s: float | None = None) -> list[int]:
    """Start frames of every snippet that fits in a signal of ``n_samples`` (snapped to the frame grid).

    ``step_s`` defaults to ``snippet_s - overlap_s``. Returns an empty list when not even one snippet fits.
    """
    step = params.step_s if step_s is None else step_s
    if step <= 0:
        raise FeatureParamsError("the hop between snippets must be positive")
    total = frames_for(n_samples, params.hop_length)
    need = params.snippet_frames
    if n_samples < params.snippet_samples:
        return []
    starts: list[int] = []
    k = 0
    while True:
        f = int(round(k * step * params.sample_rate / params.hop_length))
        if f + need > total or f * params.hop_length + params.snippet_samples > n_samples + params.hop_length:
            break
        if not starts or f > starts[-1]:
            starts.append(f)
        k += 1
    return starts


def select_snippets(starts: list[int], params: FeatureParams, key: str = "") -> list[int]:
    """Keep at most ``max_snippets`` starts: the first N, or N at random (seeded by the seed and ``key``)."""
    n = params.max_snippets
    if n == 0 or len(starts) <= n:
        return list(starts)
    if params.selection == "first":
        return list(starts[:n])
    seed = (params.selection_seed * 1_000_003 + zlib.crc32(key.encode("utf-8"))) % (2**32)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(starts), size=n, replace=False))
    return [starts[i] for i in idx]


def peak_offset_db(seg: np.ndarray) -> float:
    """The dB offset that peak-normalises ``seg`` (0 for silence)."""
    peak = float(np.max(np.abs(seg))) if seg.size else 0.0
    return 0.0 if peak <= 1e-8 else -20.0 * math.log10(peak)


def _peak_offsets_db(y: np.ndarray, starts: list[int], params: FeatureParams) -> np.ndarray:
    h = params.hop_length
    return np.asarray([peak_offset_db(y[f * h: f * h + params.snippet_samples]) for f in starts], dtype=np.float32)


def pad_to(y: np.ndarray, n_samples: int) -> np.ndarray:
    """Zero-pad (or cut) ``y`` to exactly ``n_samples``."""
    if y.size >= n_samples:
        return y[:n_samples]
    return np.concatenate([y, np.zeros(n_samples - y.size, dtype=np.float32)])


def track_snippets(
    y: np.ndarray,
    params: FeatureParams,
    *,
    key: str = "",
    step_s: float | None = None,
    select: bool = True,
    mel: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a track into snippet features with one mel computation.

    Returns ``(features, start_seconds)`` with features shaped ``(k, snippet_frames, n_mels)``. A track
    shorter than one snippet is zero-padded to one snippet (callers decide whether that is allowed).
    ``select=False`` keeps every snippet (inference); ``step_s`` overrides the hop between snippets.
    """
    if y.size < params.snippet_samples:
        y = pad_to(y, params.snippet_samples)
    starts = snippet_start_frames(y.size, params, step_s)
    if select:
        starts = select_snippets(starts, params, key)
    if mel is None:
        # Only the prefix that the kept snippets need (plus half a window, so its last frame is exact).
        last = (max(starts) + params.snippet_frames - 1) * params.hop_length + params.n_fft // 2 + 1
        mel = mel_spectrogram(y[: min(y.size, last)], params)
    F = params.snippet_frames
    out = np.stack([mel[f : f + F] for f in starts]).astype(np.float32)
    if params.peak_normalize:
        offs = _peak_offsets_db(y, starts, params)
        if params.log:
            out += offs[:, None, None]
        else:
            out *= (10.0 ** (offs / 10.0))[:, None, None]
    secs = np.asarray(starts, dtype=np.float64) * params.hop_length / params.sample_rate
    return out, secs


def full_clip(y: np.ndarray, params: FeatureParams, store: bool = False) -> np.ndarray:
    """One spectrogram of the first ``full_clip_s`` seconds (zero-padded), shape ``(1, full_frames, n_mels)``;
    with ``store`` the first ``full_store_s`` seconds when that is longer (``(1, stored_frames, n_mels)``, for
    a dataset from which training cuts random crops)."""
    n = params.full_samples
    if store and params.stored_frames > params.full_frames:
        n = int(round(params.full_store_s * params.sample_rate))
    y = pad_to(y, n)
    m = mel_spectrogram(y, params)
    if params.peak_normalize:
        peak = float(np.max(np.abs(y)))
        if peak > 1e-8:
            off = -20.0 * math.log10(peak)
            m = m + off if params.log else m * 10.0 ** (off / 10.0)
    return m[None].astype(np.float32)


def apply_norm(X: np.ndarray, norm: dict[str, Any], method: str = "minmax") -> np.ndarray:
    """Scale features with stored training statistics: ``minmax`` -> ``(X - min) / (max - min)``;
    ``standard`` -> per-mel ``(X - mean) / std``; ``none`` -> unchanged. ``norm`` is a dataset's ``norm.json`` (or
    a model card's ``norm``). Used identically in training and at inference."""
    X = np.asarray(X, dtype=np.float32)
    if method == "minmax":
        span = float(norm["max"]) - float(norm["min"])
        return (X - np.float32(norm["min"])) / np.float32(span if span > 0 else 1.0)
    if method == "standard":
        return (X - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)
    if method == "none":
        return X
    raise FeatureParamsError(f"unknown normalisation {method!r} (minmax, standard or none)")


def snippet_reference(y: np.ndarray, start_frame: int, params: FeatureParams) -> np.ndarray:
    """Features of one snippet computed on its own samples (slow path; used to test the slicing)."""
    s = start_frame * params.hop_length
    seg = pad_to(y[s : s + params.snippet_samples], params.snippet_samples)
    return mel_spectrogram(seg, params)
