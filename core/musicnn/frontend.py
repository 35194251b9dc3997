"""musicnn's input representation in NumPy (the original's ``musicnn/extractor.py``, ``batch_data``): the
16 kHz log-mel (:func:`log_mel`, equal to musicnn's librosa 0.7 call; librosa is not imported) and its 3 s
patches (:func:`patches`, :func:`patch_starts`, :func:`frames_at`)."""
from __future__ import annotations

import functools

import numpy as np

from core.musicnn.config import HOP, N_FFT, N_MELS, PATCH_FRAMES, SR, MusicnnError


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
        raise MusicnnError(f"musicnn needs {SR} Hz audio (got {sr}); resample first")
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    if y.size == 0:
        raise MusicnnError("empty signal")
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
