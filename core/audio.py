"""Audio I/O: decode any common format to mono float32 at a target sample rate.

Decoding order: ``soundfile`` (libsndfile bundled with the wheel: wav, au, aiff, flac, ogg, mp3), then the
ffmpeg binary shipped by ``imageio-ffmpeg`` (m4a/aac, opus, wma, video containers ...). Resampling uses
``soxr`` directly (what librosa uses by default; librosa itself is never imported: it compiles numba
functions for ~17 s on a cold start). Every failure is raised as :class:`AudioError` with a short human
reason, so that dataset builds can list skipped files and the dashboard can show a clear message.

Uploads (the demo page): :func:`check_upload` (name and size, before any decoding) and :func:`decode_clip`
(bytes -> :class:`DecodedClip` at the model's rate, long files cut, with notes for the user); anything
unusable is an :class:`UploadError`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import GenreLabError

#: File extensions the engine treats as audio when scanning a folder.
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".au", ".snd", ".aif", ".aiff", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac",
     ".wma", ".webm", ".mp4"}
)
_SOUNDFILE_FIRST = frozenset({".wav", ".au", ".snd", ".aif", ".aiff", ".flac", ".ogg", ".oga", ".mp3"})


class AudioError(GenreLabError):
    """A file that cannot be used as audio; ``str(err)`` is a short reason for the user."""


#: The reason every decoder gives for NaN or infinite samples (a damaged float file, or one written by a faulty
#: program): such a file is refused, never "repaired" (NaN -> 0 hid it, and +-Inf poisoned a dataset's
#: normalisation and every score).
NON_FINITE = "non-finite samples (NaN or infinity)"


def check_finite(y: np.ndarray, sr: int, offset: int = 0) -> np.ndarray:
    """``y`` unchanged when every sample is finite, else :class:`AudioError` ("non-finite samples ... at T s").

    The one check of every decoder's output (:func:`load_audio`, :func:`load_audio_prefix`, :func:`stream_audio`
    and the uploads' :func:`decode_clip`), applied to the samples as decoded, before mixing to mono or
    resampling smear them; ``offset`` is the first sample's index in the file (blocks), ``sr`` its rate."""
    ok = np.isfinite(y)
    if not ok.all():
        first = int(np.flatnonzero(~ok.reshape(ok.shape[0], -1).all(axis=1))[0]) if ok.ndim > 1 else \
            int(np.flatnonzero(~ok)[0])
        raise AudioError(f"{NON_FINITE} from {(offset + first) / sr:.2f} s: the file is damaged or was written "
                         "by a faulty program; export it again")
    return y


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
    return data.mean(axis=1), int(sr)  # checked by the caller (outside its fallback to ffmpeg)


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
    return check_finite(np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32), sr), sr


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
    p = _check_file(path)
    y: np.ndarray | None = None
    orig_sr = sr
    first_error = ""
    if p.suffix.lower() in _SOUNDFILE_FIRST:
        try:
            y, orig_sr = _read_soundfile(str(p))
        except Exception as exc:  # libsndfile's own errors are terse; keep one for the message
            first_error = type(exc).__name__
            y = None
        if y is not None:
            check_finite(y, orig_sr)
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
    if max_seconds is not None:
        y = y[: int(round(max_seconds * orig_sr))]
    y = resample(np.ascontiguousarray(y, dtype=np.float32), orig_sr, sr)
    return y


# ---------------------------------------------------------------------------------------------------------
# decoding only what is needed: a prefix, or the whole file in blocks (bounded memory for any length)
# ---------------------------------------------------------------------------------------------------------
def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise AudioError("file not found")
    if p.is_dir():
        raise AudioError("is a folder, not a file")
    if p.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    return p


def audio_info(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(frames, sample rate)`` from the file's header when soundfile reads it, else None (ffmpeg formats)."""
    p = Path(path)
    if p.suffix.lower() not in _SOUNDFILE_FIRST:
        return None
    try:
        import soundfile as sf

        info = sf.info(str(p))
        return int(info.frames), int(info.samplerate)
    except Exception:  # noqa: BLE001 - unreadable here: the decoder says why later
        return None


def _samples_at(frames: int, orig_sr: int, sr: int) -> int:
    """Samples a whole-file decode gives at ``sr`` (:func:`resample`'s output length)."""
    return frames if orig_sr == sr else int(np.ceil(frames * float(sr) / orig_sr))


def _ffmpeg_stream(path: str, sr: int):
    """``(process, read(n_samples) -> float32 array)`` decoding to mono f32 at ``sr`` on a pipe."""
    exe = ffmpeg_exe()
    if exe is None:
        raise AudioError("this format needs ffmpeg, which is not installed")
    import tempfile

    err = tempfile.TemporaryFile()  # stderr to a file: a chatty decoder never blocks on a full pipe
    cmd = [exe, "-nostdin", "-hide_banner", "-v", "info", "-i", path, "-vn", "-ac", "1", "-ar", str(sr),
           "-f", "f32le", "-"]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
    except OSError as exc:
        err.close()
        raise AudioError(f"could not run the decoder: {exc}") from exc
    proc._genrelab_err = err  # type: ignore[attr-defined]

    def read(n: int) -> np.ndarray:
        want, chunks, got = 4 * n, [], 0
        while got < want:
            b = proc.stdout.read(want - got)
            if not b:
                break
            chunks.append(b)
            got += len(b)
        data = b"".join(chunks)
        return np.frombuffer(data[: len(data) - len(data) % 4], dtype="<f4").astype(np.float32)

    return proc, read


def _ffmpeg_finish(proc, stop: bool) -> tuple[int | None, str]:
    """Stop (kill) or wait for the ffmpeg process; returns ``(returncode, stderr text)``."""
    if stop and proc.poll() is None:
        proc.kill()
    proc.stdout.close()
    rc = proc.wait()
    err = proc._genrelab_err
    err.seek(0)
    text = err.read().decode("utf-8", "replace")
    err.close()
    return (None if stop else rc), text


def _ffmpeg_duration(text: str) -> float | None:
    import re

    m = re.search(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)", text)
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)) if m else None


def _ffmpeg_error(text: str, rc: int | None) -> AudioError:
    lines = [ln for ln in text.strip().splitlines() if "rror" in ln or "nvalid" in ln] or text.strip().splitlines()
    detail = lines[-1] if lines else f"ffmpeg exit code {rc}"
    return AudioError(f"not a readable audio file ({detail[:160]})")


def load_audio_prefix(path: str | os.PathLike, sr: int, n_samples: int) -> tuple[np.ndarray, float | None]:
    """The first ``n_samples`` of ``path`` as :func:`load_audio` would decode them (fewer when the file is
    shorter), decoding only about that much: soundfile formats read the needed frames plus 1 s for the
    resampler's edge, others read ffmpeg's pipe until ``n_samples`` arrived and then stop the decoder.

    Returns ``(y, duration_s)``: ``duration_s`` is the whole file's (from the header: exact for soundfile
    formats, ffmpeg's 10 ms-resolution container duration otherwise; None when unknown). The samples equal
    ``load_audio(path, sr)[:n_samples]`` (soxr is causal in blocks: a prefix resamples to the same values).
    """
    p = _check_file(path)
    n_samples = max(1, int(n_samples))
    y: np.ndarray | None = None
    duration: float | None = None
    first_error = ""
    if p.suffix.lower() in _SOUNDFILE_FIRST:
        try:
            import soundfile as sf

            with sf.SoundFile(str(p)) as f:
                orig, frames = int(f.samplerate), int(f.frames)
                margin = 0 if orig == sr else orig  # the resampler's look-ahead at the cut
                want = min(frames, int(np.ceil(n_samples * orig / sr)) + margin)
                data = f.read(want, dtype="float32", always_2d=True)
            duration = _samples_at(frames, orig, sr) / sr
            if data.size == 0 and frames:
                raise RuntimeError("no frames decoded")
        except Exception as exc:  # noqa: BLE001 - libsndfile's errors are terse
            first_error, data = type(exc).__name__, None
        if data is not None:
            y = check_finite(data, orig).mean(axis=1)
            y = resample(np.ascontiguousarray(y, dtype=np.float32), orig, sr)[:n_samples]
    if y is None:
        proc, read = _ffmpeg_stream(str(p), sr)
        y = read(n_samples)
        complete = y.size < n_samples
        rc, text = _ffmpeg_finish(proc, stop=not complete)
        if complete and rc != 0:
            if first_error:
                raise AudioError("not a readable audio file (corrupt, truncated or not audio)")
            raise _ffmpeg_error(text, rc)
        duration = y.size / sr if complete else _ffmpeg_duration(text)
        check_finite(y, sr)
    if y.size == 0:
        raise AudioError("contains no audio samples (zero length)")
    return np.ascontiguousarray(y, dtype=np.float32), duration


def stream_audio(path: str | os.PathLike, sr: int, block_s: float = 60.0):
    """Decode ``path`` to mono float32 at ``sr`` in blocks of about ``block_s`` seconds (a generator): only one
    block (and the resampler's state) is in memory, whatever the file's length. The concatenated blocks equal
    :func:`load_audio` (soxr's stream resampler gives the one-shot resampler's values). Raises
    :class:`AudioError` like :func:`load_audio`."""
    p = _check_file(path)
    any_out = False
    if p.suffix.lower() in _SOUNDFILE_FIRST:
        try:
            import soundfile as sf

            f = sf.SoundFile(str(p))
        except Exception:  # noqa: BLE001 - not readable by libsndfile: ffmpeg below
            f = None
        if f is not None:
            with f:
                orig, frames = int(f.samplerate), int(f.frames)
                block = max(1, int(block_s * orig))
                rs = None
                if orig != sr:
                    import soxr

                    rs = soxr.ResampleStream(orig, sr, 1, dtype="float32", quality="soxr_hq")
                n_in = n_out = 0
                while True:
                    try:
                        data = f.read(block, dtype="float32", always_2d=True)
                    except Exception as exc:  # noqa: BLE001
                        raise AudioError("not a readable audio file (corrupt or truncated)") from exc
                    last = data.shape[0] < block or f.tell() >= frames
                    x = check_finite(data, orig, n_in).mean(axis=1).astype(np.float32)
                    n_in += x.size
                    if rs is not None:
                        x = np.asarray(rs.resample_chunk(x, last=last), dtype=np.float32)
                        if last:  # the one-shot length: ceil(n_in * sr / orig)
                            want = int(np.ceil(n_in * float(sr) / orig)) - n_out
                            x = x[:want] if x.size >= want else np.pad(x, (0, want - x.size))
                    n_out += x.size
                    if x.size:
                        any_out = True
                        yield x
                    if last:
                        break
            if not any_out:
                raise AudioError("contains no audio samples (zero length)")
            return
    proc, read = _ffmpeg_stream(str(p), sr)
    finished = False
    n_in = 0
    try:
        block = max(1, int(block_s * sr))
        while True:
            x = read(block)
            check_finite(x, sr, n_in)
            n_in += x.size
            if x.size:
                any_out = True
                yield x
            if x.size < block:
                break
        finished = True
    finally:  # closed early by the consumer: stop the decoder
        rc, text = _ffmpeg_finish(proc, stop=not finished)
    if rc != 0:
        raise _ffmpeg_error(text, rc)
    if not any_out:
        raise AudioError("contains no audio samples (zero length)")


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


# ---------------------------------------------------------------------------------------------------------
# uploads: checks before decoding, a clip decoded for a model, a window of it to play
# ---------------------------------------------------------------------------------------------------------
#: Formats the demo page accepts (the file uploader lists these; anything else gets a clear message).
UPLOAD_AUDIO_EXTENSIONS = (".mp3", ".wav", ".ogg", ".flac", ".m4a", ".au", ".aiff", ".aif", ".opus")
#: Size limit checked before any decoding (a 5-minute WAV at 48 kHz, 24-bit stereo is about 86 MB).
MAX_CLIP_BYTES = 100 * 1000 * 1000
#: Formats soundfile cannot read are decoded whole by ffmpeg before cutting: a tighter limit (25 MB of AAC
#: at 128 kbit/s is 26 minutes, 140 MB of float32 at 22.05 kHz).
MAX_FFMPEG_BYTES = 25 * 1000 * 1000
#: Longer uploads are cut to their first MAX_CLIP_SECONDS. Peak memory of the demo path (bench/demo_memory.py)
#: is ~450 MB for 3 minutes, ~580 MB for 5 and ~1 GB for 10, so 5 minutes keeps it well under 1 GB.
MAX_CLIP_SECONDS = 300.0


class UploadError(GenreLabError):
    """An uploaded file that cannot be used; the message is for the user."""


def check_upload(name: str, size: int, max_bytes: int = MAX_CLIP_BYTES,
                 extensions: tuple[str, ...] = UPLOAD_AUDIO_EXTENSIONS) -> str:
    """Validate an upload's name and size before anything is decoded; returns the lower-case extension."""
    ext = Path(name or "").suffix.lower()
    if ext not in extensions:
        shown = ", ".join(e.lstrip(".") for e in extensions)
        raise UploadError(f"“{name}” is not an audio file this app reads ({ext or 'no extension'}); "
                          f"use one of: {shown}")
    if size == 0:
        raise UploadError(f"“{name}” is empty (0 bytes)")
    if size > max_bytes:
        raise UploadError(f"“{name}” is {size / 1e6:.0f} MB; the limit is {max_bytes / 1e6:.0f} MB. "
                          "Cut the part you want to classify (a minute is plenty) and upload that")
    return ext


@dataclass
class DecodedClip:
    y: np.ndarray  # mono float32 at ``sr``
    sr: int
    duration_s: float
    notes: list[str] = field(default_factory=list)


def decode_clip(data: bytes, name: str, sr: int, *, max_seconds: float = MAX_CLIP_SECONDS,
                max_bytes: int = MAX_CLIP_BYTES) -> DecodedClip:
    """Decode uploaded bytes to mono float32 at ``sr`` (the model's rate), with checks and user notes.

    Size and extension are checked first; files longer than ``max_seconds`` keep only their start (read
    partially when the container reports its length, so a long WAV is never decoded whole). Raises
    :class:`UploadError` with a reason for anything unusable (corrupt, not audio, silent).
    """
    ext = check_upload(name, len(data), max_bytes)
    notes: list[str] = []
    import tempfile

    with tempfile.TemporaryDirectory(prefix="genrelab-upload-") as tmp:
        path = Path(tmp) / f"clip{ext}"
        path.write_bytes(data)
        y = None
        total_s = None
        try:
            import soundfile as sf

            info = sf.info(str(path))
            total_s = info.frames / info.samplerate if info.samplerate and info.frames > 0 else None
            raw = None
            if total_s and total_s > max_seconds:
                raw, orig_sr = sf.read(str(path), frames=int(max_seconds * info.samplerate), dtype="float32",
                                       always_2d=True)
        except Exception:  # soundfile cannot tell: the normal decoder below decides
            raw = None
        if raw is not None:
            try:
                check_finite(raw, int(orig_sr))
            except AudioError as exc:
                raise UploadError(f"“{name}” could not be read: {exc}") from None
            y = resample(np.ascontiguousarray(raw.mean(axis=1)), int(orig_sr), sr)
        if y is None:
            if total_s is None and len(data) > MAX_FFMPEG_BYTES:
                raise UploadError(f"“{name}” is {len(data) / 1e6:.0f} MB; files in this format are limited to "
                                  f"{MAX_FFMPEG_BYTES / 1e6:.0f} MB (they are decoded whole). Cut the part you want "
                                  "to classify, or convert it to mp3, ogg, flac or wav")
            try:
                y = load_audio(path, sr, max_seconds=max_seconds)
            except AudioError as exc:
                raise UploadError(f"“{name}” could not be read: {exc}") from None
            if total_s is None and y.size >= int(max_seconds * sr) - 1:
                notes.append(f"only the first {max_seconds / 60:g} minutes of the file are used")
        if total_s and total_s > max_seconds:
            notes.append(f"only the first {max_seconds / 60:g} minutes of the {total_s / 60:.1f}-minute file "
                         "are used")
    if y.size == 0:
        raise UploadError(f"“{name}” contains no audio samples")
    if not np.any(np.abs(y) > 1e-4):
        raise UploadError(f"“{name}” is silent: nothing to classify")
    return DecodedClip(np.ascontiguousarray(y, dtype=np.float32), sr, y.size / sr, notes)


def slice_wav(y: np.ndarray, sr: int, start_s: float, end_s: float) -> bytes:
    """WAV bytes of ``y[start_s:end_s]`` (for playing one window)."""
    a = max(0, int(round(start_s * sr)))
    b = min(y.size, max(a + 1, int(round(end_s * sr))))
    return encode_wav_bytes(y[a:b], sr)
