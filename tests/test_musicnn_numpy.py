"""musicnn in NumPy (core.musicnn_numpy): the same features as the Keras network, streamed log-mel and windows
equal to the whole-signal computation, files in blocks, and predict / Predictor without TensorFlow."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

MSD = ROOT / "models" / "msd-musicnn"
EMOTIFY = ROOT / "models" / "emotify-musicnn"


def _need(folder):
    if not folder.is_dir():
        pytest.skip(f"the shipped model {folder.relative_to(ROOT)} is absent")
    return folder


@pytest.fixture(scope="module")
def clip16():
    """11 s of music-like sound at 16 kHz (a melody over a drum pattern)."""
    from core.audio import resample
    from core.synth import synth_clip

    y = synth_clip(2, 11.0, 22050, seed=3) + 0.5 * synth_clip(0, 11.0, 22050, seed=4)
    return resample(y.astype(np.float32), 22050, 16000)


@pytest.fixture(scope="module")
def keras_features():
    """The Keras network (core.musicnn.build_musicnn with the shipped weights) with every feature as output."""
    from core import musicnn as mn
    from core.musicnn_numpy import FEATURES

    model, _ = mn.load_musicnn(_need(MSD))
    return mn.feature_model(model, FEATURES)


def test_features_equal_the_keras_network(clip16, keras_features):
    from core import musicnn as mn
    from core.musicnn_numpy import FEATURE_DIMS, FEATURES, network
    from core.predictor import window_start_frames

    net = network(MSD)
    mel = mn.log_mel(clip16)
    starts = window_start_frames(mel.shape[0], 1.0)  # 9 overlapping windows
    X = mel[starts[:, None] + np.arange(187)[None, :]]
    ref = {k: np.asarray(v) for k, v in keras_features.predict_on_batch(X).items()}
    shared = net.windows(mel, starts, FEATURES)  # the timbral front end once per frame
    alone = net.patches(X, FEATURES)  # each patch on its own
    for k in FEATURES:
        assert ref[k].shape == (len(starts), FEATURE_DIMS[k])
        scale = max(1.0, float(np.abs(ref[k]).max()))
        np.testing.assert_allclose(shared[k], ref[k], atol=1e-5 * scale, err_msg=k)
        np.testing.assert_allclose(alone[k], shared[k], atol=1e-5 * scale, err_msg=k)
    assert 0 <= ref["taggram"].min() and ref["taggram"].max() <= 1


def test_original_reference_patches():
    """On the original musicnn's own patches (TF 1.15 fixture): the taggram within 1e-4, as the Keras port."""
    from core.musicnn_numpy import network

    from core.musicnn_numpy import FEATURES

    ref = np.load(ROOT / "tests" / "fixtures" / "musicnn_msd_reference.npz")
    net = network(_need(MSD))
    for clip in ("tones", "beat"):
        out = net.patches(ref[f"{clip}_mel"], FEATURES)
        np.testing.assert_allclose(out["taggram"], ref[f"{clip}_taggram"], atol=1e-4)
        np.testing.assert_allclose(out["penultimate"], ref[f"{clip}_penultimate"], atol=1e-3)
        for k in ("max_pool", "mean_pool"):  # the original's pools: the same definition
            np.testing.assert_allclose(out[k], ref[f"{clip}_{k}"], atol=1e-5 * np.abs(ref[f"{clip}_{k}"]).max())


@pytest.mark.parametrize("n", [0, 1, 200, 256, 257, 300, 511, 512, 16000 * 4 + 77])
def test_streamed_log_mel_equals_the_whole_signal(n):
    from core import musicnn as mn
    from core.musicnn_numpy import LogMelStream

    y = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.1
    for block in (100, 333, 4096, 10 ** 6):
        s = LogMelStream()
        parts = [s.feed(y[a:a + block]) for a in range(0, n, block)] + [s.finish()]
        got = np.concatenate(parts)
        if n == 0:
            assert got.shape == (0, 96)
            continue
        whole = mn.log_mel(y)
        assert got.shape == whole.shape
        np.testing.assert_array_equal(got, whole)


def test_window_stream_equals_whole_windows_in_bounded_memory(clip16):
    from core import musicnn as mn
    from core.musicnn_numpy import WindowStream, network, window_features
    from core.predictor import window_start_frames

    net = network(_need(MSD))
    mel = mn.log_mel(clip16)
    for hop in (1.0, 0.4, 3.0, 4.5):
        starts = window_start_frames(mel.shape[0], hop)
        ref = net.windows(mel, starts, ["penultimate", "max_pool"])
        wf = window_features(clip16, 16000, ["penultimate", "max_pool"], hop, MSD, block_s=0.9)
        np.testing.assert_array_equal(wf.start_frames, starts)
        for k in ref:
            np.testing.assert_allclose(wf.features[k], ref[k], atol=2e-4 * max(1, np.abs(ref[k]).max()))
        assert wf.concatenated(["penultimate", "max_pool"]).shape == (len(starts), 953)
    # what the stream holds stays a few windows long, whatever the length
    ws = WindowStream(net, ["penultimate"], 1.0)
    held = 0
    for k in range(40):  # 40 blocks of 1.5 s = a minute
        ws.feed(clip16[(k % 5) * 24000:(k % 5) * 24000 + 24000])
        held = max(held, ws.mel.shape[0])
    assert ws.n_windows == 58 and held < 187 + 2 * 94 + 10, held  # frames_at(57) = 3562: 3562 + 187 <= 3749
    # musicnn's own extractor: every 187 frames
    tags = window_features(clip16, 16000, ["taggram"], weights=MSD, hop_frames=187)
    np.testing.assert_array_equal(tags.start_frames, mn.patch_starts(mel.shape[0]))


def test_short_signal_is_one_repeat_padded_window(clip16):
    from core import musicnn as mn
    from core.musicnn_numpy import network, window_features

    net = network(_need(MSD))
    short = clip16[:16000 * 2]
    wf = window_features(short, 16000, ["taggram"], weights=net)
    assert wf.padded and wf.n_windows == 1 and wf.start_frames.tolist() == [0]
    x, _ = mn.patches(mn.log_mel(short))
    np.testing.assert_allclose(wf.features["taggram"], net.patches(x, ["taggram"])["taggram"], atol=1e-6)
    with pytest.raises(ValueError, match="empty signal"):
        window_features(np.zeros(0, np.float32))


def test_file_features_stream_the_file(tmp_path, clip16):
    import soundfile as sf

    from core.audio import load_audio
    from core.musicnn_numpy import file_window_features, window_features

    _need(MSD)
    path = tmp_path / "clip.flac"
    sf.write(path, np.stack([clip16, 0.5 * clip16], 1), 16000)
    seen = []
    wf = file_window_features(path, ["mean_pool"], 1.0, MSD, block_s=2.0, progress=lambda s, w: seen.append((s, w)))
    ref = window_features(load_audio(path, 16000), 16000, ["mean_pool"], 1.0, MSD)
    np.testing.assert_array_equal(wf.start_frames, ref.start_frames)
    np.testing.assert_allclose(wf.features["mean_pool"], ref.features["mean_pool"], atol=1e-5)
    assert len(seen) >= 5 and seen[-1][0] == pytest.approx(11.0, abs=0.01)


def test_unknown_features_and_weights_are_clear_errors(tmp_path):
    from core.errors import GenreLabError
    from core.musicnn_numpy import MusicnnNumpyError, network, read_combined_model, window_features

    _need(MSD)
    with pytest.raises(MusicnnNumpyError, match="unknown musicnn feature 'pen'") as err:
        window_features(np.ones(16000 * 4, np.float32), names=["pen"])
    assert isinstance(err.value, GenreLabError)
    with pytest.raises(MusicnnNumpyError, match="weights not found"):
        network(tmp_path / "none.npz")
    from musicnn_fixtures import combined_classifier

    if True:  # the musicnn part of a classifier file has no tag layer
        weights, head = read_combined_model(combined_classifier(tmp_path / "combined") / "model.keras")
        with pytest.raises(MusicnnNumpyError, match="no tag layer"):
            network(weights).check_names(["taggram"])
        assert head.input_shape == (None, 200) and head.output_shape == (None, 4)


# ---------------------------------------------------------------------------------------------------------
# the shipped musicnn classifier: NumPy = Keras, and no TensorFlow on the predict path
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["shipped", "combined"])
def emotify_pair(request, tmp_path_factory):
    """The shipped emotify-musicnn (weights + head.keras) and a classifier in the combined format (musicnn + head
    in one model.keras, as the experiment's runs save it), each in NumPy and in Keras."""
    from core.predictor import Predictor
    from musicnn_fixtures import combined_classifier

    _need(MSD)
    folder = _need(EMOTIFY) if request.param == "shipped" else combined_classifier(
        tmp_path_factory.mktemp("combined"))
    return Predictor(folder), Predictor(folder, "keras")


def test_shipped_musicnn_classifier_runs_in_numpy_with_the_keras_scores(emotify_pair, clip16):
    lite, ref = emotify_pair
    assert (lite.backend, ref.backend) == ("numpy", "keras")
    y = np.concatenate([clip16, clip16[::-1]])
    for kw in ({}, {"hop_s": 0.5}, {"hop_s": 3.0, "aggregation": "vote"}):
        a, b = lite.predict_array(y, **kw), ref.predict_array(y, **kw)
        assert a.n_windows == b.n_windows > 3
        np.testing.assert_allclose(a.window_scores, b.window_scores, atol=1e-4)
        np.testing.assert_allclose(a.starts, b.starts)
        np.testing.assert_allclose(a.ends, b.ends)
        assert a.predicted == b.predicted and a.notes == b.notes
    a, b = lite.predict_array(y[:16000]), ref.predict_array(y[:16000])
    np.testing.assert_allclose(a.window_scores, b.window_scores, atol=1e-4)
    assert a.notes == b.notes and "repeat-padded" in a.notes[0]


def test_predict_file_streams_musicnn_with_the_keras_scores(emotify_pair, clip16, tmp_path):
    import soundfile as sf

    from core.audio import AudioError

    lite, ref = emotify_pair
    path = tmp_path / "song.wav"
    sf.write(path, np.tile(clip16, 3) * 0.7, 16000)
    a = lite.predict_file(path, block_s=4.0)
    b = ref.predict_file(path)
    assert a.n_windows == b.n_windows == 31
    np.testing.assert_allclose(a.window_scores, b.window_scores, atol=1e-4)
    assert a.duration_s == pytest.approx(b.duration_s) and a.predicted == b.predicted
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000 * 5, np.float32), 16000)
    with pytest.raises(AudioError, match="digital silence"):
        lite.predict_file(silent)


_NO_TF = """
import json, sys
sys.path.insert(0, {root!r})
from core.__main__ import main
rc = main(["predict", "--model", {model!r}, {clip!r}])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "librosa", "numba", "torch", "jax"))
print("HEAVY=" + json.dumps(heavy), file=sys.stderr)
sys.exit(rc)
"""


@pytest.mark.parametrize("name", ["emotify-musicnn", "msd-musicnn"])
def test_predict_runs_musicnn_folders_without_tensorflow(tmp_path, clip16, name):
    import soundfile as sf

    folder = _need(ROOT / "models" / name)
    clip = tmp_path / "clip.wav"
    sf.write(clip, clip16, 16000)
    out = subprocess.run([sys.executable, "-c", _NO_TF.format(root=str(ROOT), model=str(folder), clip=str(clip))],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    heavy = json.loads(out.stderr.rsplit("HEAVY=", 1)[1].splitlines()[0])
    assert heavy == [], heavy
    line = out.stdout.strip().splitlines()
    assert len(line) == 1 and line[0].startswith(str(clip))
    if name == "msd-musicnn":  # a tagger: its top tags, not "holds no .keras model files"
        assert "tagger, 50 tags (not a genre classifier)" in out.stderr and "NumPy inference" in out.stderr
        tags = line[0].split("\t")[1].split(", ")
        assert len(tags) == 5 and all(0 <= float(t.rsplit(" ", 1)[1]) <= 1 for t in tags)
        assert line[0].endswith("3 windows")  # 3 s windows every 3 s in 11 s
    else:
        assert "NumPy inference" in out.stderr and line[0].endswith("9 windows")
        assert line[0].split("\t")[1] in ("classical", "electronic", "pop", "rock")
