"""core.features / core.audio compute what librosa computes, without importing librosa (cold start).

librosa is imported here only as the reference. The features of a generated clip must equal those of the
librosa-based implementation that built every dataset so far (so datasets and shipped models stay valid).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.audio import resample
from core.features import FeatureParams, mel_filterbank, mel_power, mel_spectrogram, stft_power, to_db
from core.synth import synth_clip

ROOT = Path(__file__).resolve().parents[1]
librosa = pytest.importorskip("librosa")


@pytest.mark.parametrize("sr,n_fft,n_mels", [(22050, 2048, 100), (16000, 512, 40), (44100, 4096, 128),
                                             (22050, 1024, 256), (8000, 256, 20)])
def test_mel_filterbank_equals_librosa(sr, n_fft, n_mels):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa warns about empty filters at (22050, 1024, 256)
        ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)
    got = mel_filterbank(sr, n_fft, n_mels)
    assert got.dtype == ref.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("n", [100, 2047, 2048, 2049, 5000, 66150, 70001])
@pytest.mark.parametrize("n_fft,hop", [(2048, 512), (512, 128), (1024, 300)])
def test_stft_power_equals_librosa(n, n_fft, hop):
    import warnings

    y = (np.random.default_rng(n).normal(size=n) * 0.1).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_fft larger than the signal
        S = librosa.stft(y, n_fft=n_fft, hop_length=hop, center=True, pad_mode="constant")
    ref = (S.real ** 2 + S.imag ** 2).T
    got = stft_power(y, n_fft, hop)
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7 * float(ref.max()))


def test_mel_power_equals_librosa_melspectrogram_long_clip():
    """Longer than one FFT block (512 frames) and long enough for the multi-threaded FFT path."""
    y = synth_clip(2, 65.0, seed=5)
    p = FeatureParams()
    ref = librosa.feature.melspectrogram(y=y, sr=p.sample_rate, n_fft=p.n_fft, hop_length=p.hop_length,
                                         n_mels=p.n_mels).T
    got = mel_power(y, p)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6 * float(ref.max()))


def _librosa_features(y: np.ndarray, p: FeatureParams) -> np.ndarray:
    """The feature code every dataset so far was built with (core.features before the NumPy port)."""
    import scipy.sparse

    stft = librosa.stft(y, n_fft=p.n_fft, hop_length=p.hop_length, center=True, pad_mode="constant")
    power = stft.real ** 2 + stft.imag ** 2
    basis = scipy.sparse.csr_matrix(librosa.filters.mel(sr=p.sample_rate, n_fft=p.n_fft,
                                                        n_mels=p.n_mels).astype(np.float32))
    mel = np.ascontiguousarray(np.asarray(basis @ power, dtype=np.float32).T)
    return to_db(mel) if p.log else mel


@pytest.mark.parametrize("params", [FeatureParams(), FeatureParams(sample_rate=16000, n_fft=1024, hop_length=256,
                                                                   n_mels=64), FeatureParams(log=False)])
@pytest.mark.parametrize("seconds", [3.0, 7.3, 31.0])
def test_features_equal_the_librosa_based_ones(params, seconds):
    y = synth_clip(1, seconds, sr=params.sample_rate, seed=int(seconds * 10))
    old = _librosa_features(y, params)
    new = mel_spectrogram(y, params)
    assert new.shape == old.shape and new.dtype == np.float32
    if params.log:
        assert float(np.max(np.abs(new - old))) <= 1e-4  # dB
    else:
        np.testing.assert_allclose(new, old, rtol=1e-5, atol=1e-9 * float(old.max()))


@pytest.mark.parametrize("n,orig,target", [(44100 * 3 + 7, 44100, 22050), (48000 * 2 + 1, 48000, 22050),
                                           (8000 * 5, 8000, 22050), (22050, 22050, 16000), (10, 44100, 22050)])
def test_resample_equals_librosa_soxr_hq(n, orig, target):
    y = (np.random.default_rng(n).normal(size=n) * 0.2).astype(np.float32)
    ref = librosa.resample(y, orig_sr=orig, target_sr=target, res_type="soxr_hq")
    got = resample(y, orig, target)
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)


def test_inference_path_imports_neither_librosa_nor_tensorflow(tmp_path):
    """Decoding (with resampling), features and NumPy inference with a shipped model, in a fresh process."""
    import soundfile as sf

    clip = tmp_path / "clip.wav"
    sf.write(clip, synth_clip(0, 8.0, sr=44100, seed=3), 44100)
    model = ROOT / "models" / "emotify-crnn"
    if not (model / "model_card.json").is_file():
        pytest.skip("the shipped model models/emotify-crnn is absent")
    code = (
        "import json, sys\n"
        "from core.predictor import Predictor\n"
        f"r = Predictor({str(model)!r}).predict_file({str(clip)!r})\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('librosa', 'tensorflow', 'keras', 'numba'))\n"
        "print(json.dumps({'heavy': heavy, 'n': r.n_windows}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["heavy"] == [] and res["n"] == 4  # 8 s, windows every 1.5 s (the card's default)
