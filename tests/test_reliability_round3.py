"""Reliability, round three (issue 20): poisoned audio, archive bombs, full disks, damaged stores, model cards
and smaller attacks. Each test here failed on the code before the fix (see the issue for the exact repros)."""
from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT, make_test_store

SHIPPED = ROOT / "models" / "emotify-crnn"


def _poisoned_wav(path: Path, seconds: float = 4.0, sr: int = 22050, value: float = np.inf) -> Path:
    """A float WAV of noise with NaN, +Inf and -Inf samples (or ``value`` everywhere from 1 s on)."""
    y = (np.random.default_rng(7).standard_normal(int(sr * seconds)) * 0.1).astype(np.float32)
    if np.isfinite(value):
        y[sr:] = value
    else:
        y[sr:sr + 1000] = np.inf
        y[sr + 2000] = np.nan
        y[sr + 3000] = -np.inf
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, y, sr, subtype="FLOAT")
    return path


def _shipped_model() -> Path:
    if not (SHIPPED / "model.keras").exists():
        pytest.skip("the shipped models/emotify-crnn is not in this checkout")
    return SHIPPED


# --- 1. non-finite samples ------------------------------------------------------------------------------------
def test_a_float_wav_with_nan_and_inf_is_skipped_and_the_dataset_stays_finite(tmp_path):
    from core.dataset import build_dataset, load_dataset
    from core.synth import make_dataset_folder

    src = make_dataset_folder(tmp_path / "src", n_classes=2, per_class=4, seconds=4.0)
    _poisoned_wav(src / "bass" / "poison.wav")
    _poisoned_wav(src / "tone" / "huge.wav", value=1e30)  # finite, but its power spectrum overflows
    ds = load_dataset(build_dataset(src, tmp_path / "ds", workers=1))
    m = ds.manifest.set_index("path")
    assert m.loc["bass/poison.wav", "skipped"] and "non-finite samples" in m.loc["bass/poison.wav", "reason"]
    assert m.loc["tone/huge.wav", "skipped"] and "non-finite features" in m.loc["tone/huge.wav", "reason"]
    assert int((~m["skipped"].astype(bool)).sum()) == 8  # every other file is built
    norm = json.loads((ds.path / "norm.json").read_text())
    assert np.isfinite([norm["min"], norm["max"]]).all() and norm["max"] > norm["min"]
    assert np.isfinite(norm["mean"]).all() and np.isfinite(norm["std"]).all()
    for s in ("train", "val", "test"):
        assert np.isfinite(np.asarray(ds.X(s))).all()


@pytest.mark.parametrize("name", ["poison.wav", "poison.mp4"], ids=["soundfile", "ffmpeg"])
def test_every_decoder_refuses_non_finite_samples(tmp_path, name):
    from core.audio import AudioError, UploadError, decode_clip, load_audio, load_audio_prefix, stream_audio

    p = _poisoned_wav(tmp_path / "poison.wav")
    if name != p.name:
        p = Path(shutil.copy(p, tmp_path / name))  # ffmpeg reads it (not a soundfile extension)
    for decode in (lambda: load_audio(p, 22050), lambda: load_audio(p, 16000),
                   lambda: load_audio_prefix(p, 22050, 3 * 22050), lambda: list(stream_audio(p, 22050, 1.0)),
                   lambda: list(stream_audio(p, 16000, 1.0))):
        with pytest.raises(AudioError, match=r"non-finite samples \(NaN or infinity\) from 1\.00 s"):
            decode()
    with pytest.raises(UploadError, match="could not be read: non-finite samples"):
        decode_clip(p.read_bytes(), "poison.wav", 22050)
    with pytest.raises(UploadError, match="non-finite samples"):  # a long upload is read partially: checked too
        decode_clip(p.read_bytes(), "poison.wav", 22050, max_seconds=2.0)


def test_predict_refuses_non_finite_audio_clearly(tmp_path):
    from core.audio import AudioError
    from core.predictor import Predictor

    model = _shipped_model()
    p = _poisoned_wav(tmp_path / "poison.wav")
    huge = _poisoned_wav(tmp_path / "huge.wav", value=1e30)
    pred = Predictor(model)
    with pytest.raises(AudioError, match="non-finite samples"):
        pred.predict_file(p)
    with pytest.raises(AudioError, match="non-finite features"):
        pred.predict_file(huge)
    with pytest.raises(AudioError, match="non-finite features"):
        pred.predict_array(sf.read(huge, dtype="float32")[0])
    r = subprocess.run([sys.executable, "-m", "core", "predict", "--model", str(model), str(p)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.strip() == f"{p}\terror: " + r.stdout.strip().split("error: ", 1)[1]
    assert "non-finite samples" in r.stdout and "0.250" not in r.stdout
