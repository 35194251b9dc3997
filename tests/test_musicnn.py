"""The Keras 3 port of musicnn against the ORIGINAL network's outputs (tests/fixtures/musicnn_msd_reference.npz,
made by tests/musicnn_reference.py with musicnn 0.1.0 on TensorFlow 1.15.5; see docs/musicnn.md).

Tolerances (max abs difference):
* sigmoid taggram, ported network on the original's own input patches: 1e-4 (measured ~1e-6);
* penultimate layer (values up to ~5) on the same patches: 1e-3 (measured ~1e-5);
* log-mel front end (NumPy) vs the original's librosa 0.7.2 patches: 2e-3 on the log10(10000 x + 1) values
  (measured 3e-4: a few float16 roundings land on the other side), and the taggram of the whole pipeline
  (clip -> NumPy log-mel -> network) within 1e-4 of the original's.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "musicnn_msd_reference.npz"
MODEL_DIR = ROOT / "models" / "msd-musicnn"
sys.path.insert(0, str(ROOT / "tests"))

import musicnn_reference as ref  # noqa: E402

TAG_TOL = 1e-4
PEN_TOL = 1e-3
MEL_TOL = 2e-3


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def model():
    from core.musicnn import load_musicnn

    m, card = load_musicnn(MODEL_DIR)
    return m, card


@pytest.mark.parametrize("clip", ref.CLIPS)
def test_port_matches_original_network(model, reference, clip):
    from core.musicnn import predict_patches

    m, _ = model
    out = predict_patches(m, reference[f"{clip}_mel"])
    assert np.abs(out["taggram"] - reference[f"{clip}_taggram"]).max() < TAG_TOL
    assert np.abs(out["penultimate"] - reference[f"{clip}_penultimate"]).max() < PEN_TOL


@pytest.mark.parametrize("clip", ref.CLIPS)
def test_numpy_front_end_and_whole_pipeline(model, reference, clip):
    from core.musicnn import log_mel, patches, predict_patches

    m, _ = model
    x, starts = patches(log_mel(ref.clip(clip)))
    assert x.shape == reference[f"{clip}_mel"].shape
    assert list(starts) == [i * 187 for i in range(len(x))]
    assert np.abs(x - reference[f"{clip}_mel"]).max() < MEL_TOL
    out = predict_patches(m, x)
    assert np.abs(out["taggram"] - reference[f"{clip}_taggram"]).max() < TAG_TOL


def test_filterbank_is_librosas():
    librosa = pytest.importorskip("librosa")
    from core.musicnn import mel_filterbank

    np.testing.assert_allclose(mel_filterbank(), librosa.filters.mel(sr=16000, n_fft=512, n_mels=96), atol=1e-7)


def test_log_mel_shape_and_short_signals():
    from core.musicnn import PATCH_FRAMES, log_mel, patches

    assert log_mel(np.zeros(16000 * 3, np.float32)).shape == (1 + 48000 // 256, 96)
    short = log_mel(np.full(4000, 0.1, np.float32))
    x, starts = patches(short)
    assert x.shape == (1, PATCH_FRAMES, 96) and list(starts) == [0]  # repeat-padded like musicnn's training
    assert patches(short, pad_short=False)[0].shape[0] == 0
    with pytest.raises(ValueError):
        log_mel(np.zeros(100, np.float32), sr=22050)


def test_pool_permutation_undoes_tf_interleaving():
    from core.musicnn.convert import _pool_permutation

    mx, mean = np.arange(753.0), 1000 + np.arange(753.0)
    tf_order = np.stack([mx, mean], axis=1).reshape(-1)  # tf.concat([max, mean], 2) then flatten
    np.testing.assert_array_equal(tf_order[_pool_permutation()], np.concatenate([mx, mean]))


def test_shipped_model_card():
    card = json.loads((MODEL_DIR / "musicnn_card.json").read_text())
    assert card["model"] == "MSD_musicnn" and card["licence"]["name"] == "ISC"
    assert "Permission to use, copy, modify, and/or distribute" in card["licence"]["text"]
    assert card["input"]["sample_rate"] == 16000 and card["input"]["n_mels"] == 96
    assert card["input"]["patch_frames"] == 187 and len(card["labels"]) == 50
    assert "Pons" in card["citation"] and card["n_params"] == 792079
    assert (MODEL_DIR / card["weights_file"]).stat().st_size < 4_000_000
    assert "ISC" in (MODEL_DIR / "MODEL_CARD.md").read_text()


def test_overlapping_windows_equal_patch_by_patch(model):
    """The shared timbral front end gives what cutting each patch and running the whole network gives."""
    from core.musicnn import OverlappingWindows, frames_at, log_mel, predict_patches

    m, _ = model
    mel = log_mel(np.tile(ref.clip("tones"), 2))  # 14 s
    starts = np.array([frames_at(s) for s in np.arange(0, 11.01, 1.0)] + [mel.shape[0] - 187])
    fast = OverlappingWindows(m, chunk_frames=128).run(mel, starts, batch_size=5)
    direct = predict_patches(m, mel[starts[:, None] + np.arange(187)[None, :]])
    assert np.abs(fast["taggram"] - direct["taggram"]).max() < 1e-5
    assert np.abs(fast["penultimate"] - direct["penultimate"]).max() < 1e-4


def test_inference_model_fused_branches_equal_the_network(model):
    """conv -> max/min over mel -> ReLU -> affine (mel_pooled_conv) gives what conv -> ReLU -> BN -> max gives,
    including channels whose batch norm has a negative scale (min instead of max)."""
    from core.musicnn import inference_model

    m, _ = model
    bn = m.get_layer("timbral74_bn")
    w = bn.get_weights()
    flipped = [w[0].copy()] + w[1:]
    flipped[0][::2] *= -1  # half the channels with a negative scale: the min branch is exercised
    bn.set_weights(flipped)
    try:
        x = np.random.default_rng(1).normal(0, 2, (3, 187, 96)).astype(np.float32)
        direct = m.predict_on_batch(x)
        fused = inference_model(m).predict_on_batch(x)
    finally:
        bn.set_weights(w)
    assert np.abs(np.asarray(fused["penultimate"]) - np.asarray(direct["penultimate"])).max() < 1e-4
    assert np.abs(np.asarray(fused["taggram"]) - np.asarray(direct["taggram"])).max() < 1e-5
