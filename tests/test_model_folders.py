"""Model folders beyond one .keras file (issue 22, inference side): ensembles (``members``: the mean of the
members' class scores) of CRNNs and of musicnn heads, musicnn heads on named features with the network's weights
in the folder (``embedding``), the model's own test-time defaults (``aggregation``, ``hop_s``); NumPy equals
Keras; bad folders are clear errors. Every model here is built by the test (tiny heads, random CRNNs)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import ROOT

MSD = ROOT / "models" / "msd-musicnn"
EMOTIFY = ROOT / "models" / "emotify-musicnn"
CLASSES = ["bass", "pulse", "tone"]


def _randomise_batchnorm(model, rng) -> None:
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = (w.shape for w in layer.get_weights())
            layer.set_weights([rng.normal(1, 0.2, g), rng.normal(0, 0.2, b), rng.normal(0, 0.5, m),
                               rng.random(v) + 0.5])


def _write_card(folder, card: dict) -> None:
    (folder / "model_card.json").write_text(json.dumps(card))


# ---------------------------------------------------------------------------------------------------------
# a 2-member CRNN ensemble
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def crnn_ensemble(tmp_path_factory):
    from core.features import FeatureParams
    from core.models import build_snippet_crnn
    from core.model_card import make_model_card

    folder = tmp_path_factory.mktemp("crnn-ensemble")
    p = FeatureParams()
    for i in range(2):
        rng = np.random.default_rng(10 + i)
        m = build_snippet_crnn(len(CLASSES), p.n_mels)
        _randomise_batchnorm(m, rng)
        m.save(folder / f"m{i}.keras")
    norm = {"min": -100.0, "max": 40.0, "mean": [0.0] * p.n_mels, "std": [1.0] * p.n_mels}
    card = make_model_card("snippet", CLASSES, p, norm, "minmax", name="crnn-ensemble", aggregation="vote",
                           hop_s=0.5, members=[{"file": "m0.keras", "seed": 0},
                                               {"file": "m1.keras", "norm": {"min": -90.0, "max": 30.0}}])
    _write_card(folder, card)
    return folder


def test_crnn_ensemble_is_the_mean_of_its_members_in_numpy_and_keras(crnn_ensemble):
    from core.predictor import Predictor
    from core.synth import synth_clip

    y = synth_clip(1, 7.0, seed=2)
    lite, ref = Predictor(crnn_ensemble), Predictor(crnn_ensemble, "keras")
    assert (lite.backend, ref.backend) == ("numpy", "keras")
    assert lite.members == ["m0.keras", "m1.keras"]
    a, b = lite.predict_array(y), ref.predict_array(y)
    np.testing.assert_allclose(a.window_scores, b.window_scores, atol=1e-4)
    assert a.aggregation == "vote" and np.allclose(np.diff(a.starts), 0.5, atol=0.03)  # the card's defaults
    assert lite.predict_array(y, hop_s=1.0, aggregation="sum").aggregation == "sum"  # a caller overrides them
    # each member alone (a .keras path: that member, with its own norm from the card)
    m0, m1 = Predictor(crnn_ensemble / "m0.keras"), Predictor(crnn_ensemble / "m1.keras")
    assert m0.members == [] and m1._files[0][1] == {"min": -90.0, "max": 30.0}
    mean = (m0.predict_array(y).window_scores + m1.predict_array(y).window_scores) / 2
    # float32 products in other batch sizes (the ensemble's members on two threads take half batches): 1e-6
    np.testing.assert_allclose(a.window_scores, mean, atol=1e-6)
    assert not np.allclose(m0.predict_array(y).window_scores, m1.predict_array(y).window_scores, atol=1e-3)
    X, *_ = lite.window_features(y)
    np.testing.assert_allclose(lite.predict_features(X), a.window_scores, atol=1e-9)


def test_predict_header_names_the_members_and_the_defaults(crnn_ensemble, tmp_path):
    import soundfile as sf

    from core.synth import synth_clip
    from engine_helpers import run_core

    clip = tmp_path / "clip.wav"
    sf.write(clip, synth_clip(2, 5.0), 22050)
    r = run_core("predict", "--model", str(crnn_ensemble), str(clip))
    assert r.returncode == 0, r.stderr
    assert "# ensemble of 2 members (mean of their class scores): m0.keras, m1.keras" in r.stderr
    assert "windows every 0.5 s, aggregation: vote (hop and aggregation: the model's default)" in r.stderr
    assert r.stdout.strip().endswith("windows") and r.stdout.split("\t")[1] in CLASSES
    r = run_core("predict", "--model", str(crnn_ensemble), "--hop", "1", "--aggregation", "sum", str(clip))
    assert "windows every 1 s, aggregation: sum; NumPy inference" in r.stderr


# ---------------------------------------------------------------------------------------------------------
# musicnn heads on named features, the network's weights in the folder
# ---------------------------------------------------------------------------------------------------------
def _need(folder):
    if not folder.is_dir():
        pytest.skip(f"the shipped model {folder.relative_to(ROOT)} is absent")
    return folder


def _musicnn_heads_folder(folder, features, n_members=2, **card_extra):
    """musicnn.weights.npz (the shipped MSD_musicnn) + small Dense heads on ``features`` + the card."""
    from core.embeddings import build_head
    from core.musicnn_numpy import FEATURE_DIMS
    from core.model_card import make_model_card

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(_need(MSD) / "musicnn.weights.npz", folder / "musicnn.weights.npz")
    dim = sum(FEATURE_DIMS[f] for f in features)
    rng = np.random.default_rng(5)
    members = []
    for i in range(n_members):
        head = build_head(len(CLASSES), hidden=16 * i, dropout=0.3, l2=1e-4, dim=dim,
                          mean=rng.normal(0, 0.5, dim).astype(np.float32),
                          var=(rng.random(dim) + 0.5).astype(np.float32))
        for layer in head.layers:  # weights large enough to move the scores
            if layer.get_weights():
                layer.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) for w in layer.get_weights()])
        head.save(folder / f"head{i}.keras")
        members.append({"file": f"head{i}.keras"})
    from core.embeddings import musicnn_card

    card = musicnn_card(CLASSES, {"name": "msd-musicnn", "model": "MSD_musicnn"}, name=folder.name,
                        embedding={"network": "MSD_musicnn", "weights": "musicnn.weights.npz", "features": features},
                        **card_extra)
    card.pop("model_file")
    if n_members > 1:
        card["members"] = members
    else:
        card["model_file"] = "head0.keras"
    _write_card(folder, card)
    return folder


@pytest.fixture(scope="module")
def heads_folder(tmp_path_factory):
    return _musicnn_heads_folder(tmp_path_factory.mktemp("m") / "musicnn-heads", ["penultimate", "taggram"],
                                 aggregation="logprob", hop_s=1.5)


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    import soundfile as sf

    from core.synth import synth_clip

    path = tmp_path_factory.mktemp("song") / "song.wav"
    sf.write(path, np.concatenate([synth_clip(0, 6.0, seed=1), synth_clip(2, 6.0, seed=2)]), 22050)
    return path


def test_musicnn_heads_ensemble_numpy_equals_keras(heads_folder, song):
    from core.audio import load_audio
    from core.predictor import Predictor

    lite, ref = Predictor(heads_folder), Predictor(heads_folder, "keras")
    assert (lite.backend, ref.backend) == ("numpy", "keras")
    assert lite.members == ["head0.keras", "head1.keras"] and lite.embedding["features"] == ["penultimate", "taggram"]
    y = load_audio(song, 16000)
    for kw in ({}, {"hop_s": 1.0, "aggregation": "sum"}):
        a, b = lite.predict_array(y, **kw), ref.predict_array(y, **kw)
        assert a.n_windows == b.n_windows and a.n_windows > 4
        np.testing.assert_allclose(a.window_scores, b.window_scores, atol=1e-4)
        assert a.predicted == b.predicted
    a = lite.predict_file(song, block_s=2.5)
    assert a.aggregation == "logprob" and np.allclose(np.diff(a.starts), 1.5, atol=0.02)
    np.testing.assert_allclose(a.window_scores, ref.predict_array(y).window_scores, atol=1e-4)
    # the mean of the members, each run alone
    singles = [Predictor(heads_folder / f"head{i}.keras").predict_array(y).window_scores for i in range(2)]
    np.testing.assert_allclose(lite.predict_array(y).window_scores, np.mean(singles, axis=0), atol=1e-7)
    assert not np.allclose(singles[0], singles[1], atol=1e-3)


def test_combined_file_split_into_weights_and_head_gives_identical_scores(tmp_path, song):
    """A classifier in the combined format (musicnn + head in one model.keras, what the experiment's runs save)
    and the same model as the folder format (musicnn.weights.npz + head.keras on "penultimate"): the same scores."""
    import keras

    from core.audio import load_audio
    from core.musicnn import load_weights_npz
    from core.musicnn_numpy import read_combined_model
    from core.predictor import Predictor

    from musicnn_fixtures import combined_classifier

    combo = combined_classifier(tmp_path / "combined")
    weights, _ = read_combined_model(combo / "model.keras")
    shipped = load_weights_npz(_need(MSD) / "musicnn.weights.npz")
    assert all(np.array_equal(weights[k], shipped[k]) for k in weights)  # the frozen MSD_musicnn
    folder = tmp_path / "emotify-musicnn-heads"
    folder.mkdir()
    shutil.copy(MSD / "musicnn.weights.npz", folder / "musicnn.weights.npz")
    combined = keras.saving.load_model(combo / "model.keras", compile=False)
    combined.layers[-1].save(folder / "head.keras")
    card = json.loads((combo / "model_card.json").read_text())
    card.update(model_file="head.keras", embedding={"network": "MSD_musicnn", "weights": "musicnn.weights.npz",
                                                    "features": ["penultimate"]})
    _write_card(folder, card)
    y = load_audio(song, 16000)
    a, b = Predictor(combo).predict_array(y), Predictor(folder).predict_array(y)
    np.testing.assert_allclose(a.window_scores, b.window_scores, atol=1e-6)


def test_musicnn_ensemble_header_and_demo_card(heads_folder, song, tmp_path, monkeypatch):
    from engine_helpers import run_core
    from test_app import _upload, _without_shipped_models, assert_clean, open_page, texts

    r = run_core("predict", "--model", str(heads_folder), "--json", str(song))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout.strip())
    assert d["class"] in CLASSES and d["aggregation"] == "logprob"
    r = run_core("predict", "--model", str(heads_folder), str(song))
    assert "# ensemble of 2 members (mean of their class scores): head0.keras, head1.keras" in r.stderr
    assert "# musicnn MSD_musicnn (musicnn.weights.npz) features: penultimate + taggram" in r.stderr
    # the demo: listed, its card names the members, the hop and aggregation start at the model's defaults
    home = tmp_path / "home"
    shutil.copytree(heads_folder, home / "models" / "musicnn-heads")
    monkeypatch.setenv("GENRELAB_HOME", str(home))
    _without_shipped_models(monkeypatch)
    at = open_page("demo")
    assert_clean(at)
    md = " ".join(texts(at.markdown))
    assert "- **ensemble**: 2 members, the mean of their class scores: `head0.keras`, `head1.keras`" in md
    assert "- **embedding**: musicnn MSD_musicnn features: penultimate + taggram" in md
    assert at.slider(key="demo_hop_s").value == 1.5 and at.selectbox(key="demo_agg").value == "logprob"
    assert any("ensemble of 2" in c for c in texts(at.caption))
    _upload(at, "song.wav", song.read_bytes())
    assert_clean(at)
    assert {m.label: m.value for m in at.metric}["Predicted genre"] in CLASSES


# ---------------------------------------------------------------------------------------------------------
# bad folders: clear errors naming the file and the reason
# ---------------------------------------------------------------------------------------------------------
def _edit_card(folder, **changes):
    card = json.loads((folder / "model_card.json").read_text())
    for k, v in changes.items():
        if v is None:
            card.pop(k, None)
        else:
            card[k] = v
    _write_card(folder, card)


CARD_ERRORS = [
    ({"members": []}, r"members is an empty list"),
    ({"members": {"file": "m0.keras"}}, r"members is an object \(a list of"),
    ({"members": [{"file": "../m0.keras"}]}, r"members\[0\]\.file is '\.\./m0\.keras' \(the name of a \.keras file"),
    ({"members": [{"file": "m0.h5"}]}, r"members\[0\]\.file is 'm0\.h5'"),
    ({"members": [{"file": "m0.keras"}, {"file": "m0.keras"}]}, r"members\[1\]\.file 'm0\.keras' is listed twice"),
    ({"members": [{"file": "m0.keras", "norm": {"min": "low", "max": 1}}]}, r"members\[0\]\.norm\.min is 'low'"),
    ({"aggregation": "max"}, r"aggregation is 'max' \(one of sum, vote, logprob"),
    ({"hop_s": 0}, r"hop_s is 0 \(a number of seconds above 0"),
    ({"embedding": {"network": "MSD_musicnn", "weights": "w.npz", "features": ["penultimate"]}},
     r"embedding is given but kind is 'snippet'"),
]


@pytest.mark.parametrize("changes,message", CARD_ERRORS, ids=[m.split(" ")[0] for _, m in CARD_ERRORS])
def test_card_schema_errors_name_the_field(crnn_ensemble, tmp_path, changes, message):
    from core.predictor import Predictor
    from core.model_card import ModelCardError

    folder = tmp_path / "m"
    shutil.copytree(crnn_ensemble, folder)
    _edit_card(folder, **changes)
    with pytest.raises(ModelCardError, match=message) as err:
        Predictor(folder)
    assert "model_card.json is not usable" in str(err.value)


def test_bad_member_files_are_clear_errors(crnn_ensemble, heads_folder, tmp_path):
    from core.errors import GenreLabError
    from core.predictor import Predictor, PredictorError
    from core.model_card import ModelCardError
    from core.workspace import list_model_folders

    home = tmp_path / "home"
    missing = shutil.copytree(crnn_ensemble, home / "models" / "missing")
    (missing / "m1.keras").unlink()
    truncated = shutil.copytree(crnn_ensemble, home / "models" / "truncated")
    data = (truncated / "m1.keras").read_bytes()
    (truncated / "m1.keras").write_bytes(data[:len(data) // 3])
    not_keras = shutil.copytree(crnn_ensemble, home / "models" / "not-keras")
    (not_keras / "m0.keras").write_bytes(b"not a model at all")
    outputs = shutil.copytree(crnn_ensemble, home / "models" / "outputs")
    _edit_card(outputs, classes=["a", "b", "c", "d"])
    no_weights = shutil.copytree(heads_folder, home / "models" / "no-weights")
    (no_weights / "musicnn.weights.npz").unlink()
    wrong_dim = shutil.copytree(heads_folder, home / "models" / "wrong-dim")
    _edit_card(wrong_dim, embedding={"network": "MSD_musicnn", "weights": "musicnn.weights.npz",
                                     "features": ["penultimate"]})
    cases = {
        "missing": (ModelCardError, r"lists the member m1\.keras, which is not in"),
        "truncated": (PredictorError, r"m1\.keras is unreadable: not a complete \.keras archive"),
        "not-keras": (PredictorError, r"m0\.keras is unreadable"),
        "outputs": (ModelCardError, r"the model has 3 outputs but its card lists 4 classes"),
        "no-weights": (ModelCardError, r"names the musicnn weights musicnn\.weights\.npz, which are not in"),
        "wrong-dim": (ModelCardError, r"head0\.keras takes inputs of shape \(250,\), but the card's embedding "
                                      r"features \(penultimate\) are 200 numbers per window"),
    }
    for name, (cls, message) in cases.items():
        for backend in ("auto", "keras"):
            with pytest.raises(cls, match=message) as err:
                Predictor(home / "models" / name, backend, warmup=False)
            assert isinstance(err.value, GenreLabError)
    listed = {m["name"]: m for m in list_model_folders(home) if m["origin"] != "shipped"}
    for name in ("missing", "truncated", "not-keras", "no-weights"):  # unusable on the demo page, with the reason
        assert listed[name]["card"] is None and listed[name]["error"], name
    with pytest.raises(ModelCardError, match="unknown|not a musicnn feature"):
        _edit_card(wrong_dim, embedding={"network": "MSD_musicnn", "weights": "musicnn.weights.npz",
                                         "features": ["pen"]})
        Predictor(wrong_dim)


def test_a_keras_only_member_falls_back_to_keras_for_the_whole_ensemble(crnn_ensemble, tmp_path):
    import keras

    from core.features import FeatureParams
    from core.predictor import Predictor, PredictorError

    folder = shutil.copytree(crnn_ensemble, tmp_path / "m")
    p = FeatureParams()
    x_in = keras.Input(shape=(None, p.n_mels, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, padding="same")(x_in))  # not in NumPy
    keras.Model(x_in, keras.layers.Dense(3, activation="softmax")(x)).save(folder / "m1.keras")
    assert Predictor(folder, warmup=False).backend == "keras"
    with pytest.raises(PredictorError, match=r"m1\.keras cannot run in NumPy \(not implemented there: layer "
                                             r"GlobalAveragePooling2D\)"):
        Predictor(folder, "numpy")


def test_demo_says_why_the_musicnn_tagger_is_not_listed(tmp_path, monkeypatch):
    from test_app import assert_clean, open_page, texts

    _need(MSD)
    monkeypatch.setenv("GENRELAB_HOME", str(tmp_path))  # a fresh clone: the shipped models only
    at = open_page("demo")
    assert_clean(at)
    assert not any("msd-musicnn" in o for o in at.selectbox(key="demo_model").options)
    assert any("Not listed: `msd-musicnn`, musicnn's MSD_musicnn tagger" in c
               and "`python -m core predict --model models/msd-musicnn FILE` prints its tags" in c
               for c in texts(at.caption)), texts(at.caption)
