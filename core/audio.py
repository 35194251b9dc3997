"""Audio I/O: decode any common format to mono float32 at a target sample rate.

Decoding order: ``soundfile`` (libsndfile bundled with the wheel: wav, au, aiff, flac, ogg, mp3), then the
ffmpeg binary shipped by ``imageio-ffmpeg`` (m4a/aac, opus, wma, video containers ...). Resampling uses
``soxr`` directly (what librosa uses by default; librosa itself is never imported: it compiles numba
functions for ~17 s on a cold start). Every failure is raised as :class:`AudioError` with a short human
reason, so that dataset builds can list skipped files and the dashboard can show a clear message.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

#: File extensions the engine treats as audio when scanning a folder.
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".au", ".snd", ".aif", ".aiff", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac",
     ".wma", ".webm", ".mp4"}
)
_SOUNDFILE_FIRST = frozenset({".wav", ".au", ".snd", ".aif", ".aiff", ".flac", ".ogg", ".oga", ".mp3"})


class AudioError(Exception):
    """A file that cannot be used as audio; ``str(err)`` is a short reason for the user."""


def ffmpeg_exe() -> str | None:
    """Path of an ffmpeg binary: the one imageio-ffmpeg ships, else one on PATH, else None."""
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        if exe and os.path.exists(exe):
            return exe
    except Exception:  # pragma: no cover - depends on the install
        pass
    return shutil.which("ffmpeg")


def _read_soundfile(path: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    data, sr = sf.read(path, dtype="float32", always_2d=True)
    return data.mean(axis=1), int(sr)


def _read_ffmpeg(path: str, sr: int) -> tuple[np.ndarray, int]:
    exe = ffmpeg_exe()
    if exe is None:
        raise AudioError("this format needs ffmpeg, which is not installed")
    cmd = [exe, "-nostdin", "-v", "error", "-i", path, "-vn", "-ac", "1", "-ar", str(sr), "-f", "f32le", "-"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = msg[-1] if msg else f"ffmpeg exit code {proc.returncode}"
        raise AudioError(f"not a readable audio file ({detail[:160]})")
    return np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32), sr


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a mono signal with soxr's high quality ("soxr_hq"); a no-op when the rates match.

    The same computation as ``librosa.resample(y, orig_sr=, target_sr=, res_type="soxr_hq")`` (librosa's
    default resampler), output length ``ceil(len(y) * target_sr / orig_sr)``, without importing librosa.
    """
    if orig_sr == target_sr:
        return y
    import soxr

    y = np.asarray(y, dtype=np.float32)
    n_out = int(np.ceil(y.shape[-1] * float(target_sr) / orig_sr))
    out = np.asarray(soxr.resample(y, orig_sr, target_sr, quality="soxr_hq"), dtype=np.float32)
    if out.shape[-1] > n_out:
        out = out[:n_out]
    elif out.shape[-1] < n_out:
        out = np.pad(out, (0, n_out - out.shape[-1]))
    return out


def load_audio(path: str | os.PathLike, sr: int = 22050, *, max_seconds: float | None = None) -> np.ndarray:
    """Decode ``path`` to a mono float32 signal at ``sr`` Hz.

    Stereo and multi-channel audio is averaged to mono; any input rate is resampled. ``max_seconds``
    keeps only the start of the file. Raises :class:`AudioError` for missing, empty, corrupt or
    non-audio files and for files that decode to zero samples.
    """
    p = Path(path)
    if not p.exists():
        raise AudioError("file not found")
    if p.is_dir():
        raise AudioError("is a folder, not a file")
    if p.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    y: np.ndarray | None = None
    orig_sr = sr
    first_error = ""
    if p.suffix.lower() in _SOUNDFILE_FIRST:
        try:
            y, orig_sr = _read_soundfile(str(p))
        except Exception as exc:  # libsndfile's own errors are terse; keep one for the message
            first_error = type(exc).__name__
            y = None
    if y is None:
        try:
            y, orig_sr = _read_ffmpeg(str(p), sr)
        except AudioError as exc:
            if first_error:
                raise AudioError("not a readable audio file (corrupt, truncated or not audio)") from exc
            raise
        except (OSError, subprocess.SubprocessError) as exc:
            raise AudioError(f"could not run the decoder: {exc}") from exc
    if y.size == 0:
        raise AudioError("contains no audio samples (zero length)")
    if not np.all(np.isfinite(y)):
        y = np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
    if max_seconds is not None:
        y = y[: int(round(max_seconds * orig_sr))]
    y = resample(np.ascontiguousarray(y, dtype=np.float32), orig_sr, sr)
    return y


def is_silent(y: np.ndarray, threshold_db: float = -80.0) -> bool:
    """True when the peak of ``y`` is below ``threshold_db`` dBFS (digital silence or near it)."""
    if y.size == 0:
        return True
    peak = float(np.max(np.abs(y)))
    return peak <= 10 ** (threshold_db / 20.0)


def encode_wav_bytes(y: np.ndarray, sr: int) -> bytes:
    """Encode a mono float signal as 16-bit PCM WAV bytes (for ``st.audio`` and downloads)."""
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(y, -1.0, 1.0), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()
