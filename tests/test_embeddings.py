"""musicnn embeddings of a dataset, the head trained on them, and the musicnn + head predictor, on tiny
generated data (3 synthetic classes x 6 tracks x 8 s)."""
from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from core.dataset import build_dataset
    from core.synth import make_dataset_folder

    root = tmp_path_factory.mktemp("emb")
    src = make_dataset_folder(root / "src", n_classes=3, per_class=6, seconds=8.0)
    return build_dataset(src, root / "ds", workers=1)


@pytest.fixture(scope="module")
def embedded(tiny_dataset):
    from core.embeddings import embed_dataset

    calls = []
    out = embed_dataset(tiny_dataset, progress=lambda d, t, p: calls.append((d, t)))
    return tiny_dataset, out, calls


def test_embed_dataset_files_and_cache(embedded):
    from core.dataset import load_dataset
    from core.embeddings import embed_dataset, load_embeddings

    path, out, calls = embedded
    ds = load_dataset(path)
    assert out == path / "embeddings-msd-musicnn" and (out / "card.json").exists()
    assert calls[-1] == (18, 18) and not list(out.glob(".work-*"))
    emb = load_embeddings(path)
    for split in ("train", "val", "test"):
        E = emb.E[split]
        assert E.dtype == np.float32 and E.shape == (len(ds.y(split)), 200) and np.isfinite(E).all()
    for split in ("val", "test"):
        # 8 s tracks: windows at 0..5 s every 1 s
        assert len(emb.W[split]) == 6 * len(ds.tracks(split))
        assert set(emb.W_track[split]) == set(ds.tracks(split).index)
        np.testing.assert_allclose(emb.W_start[split][:6], np.arange(6) * 1.0, atol=0.01)
    card = json.loads((out / "card.json").read_text())
    assert card["dataset_build_id"] == ds.card["build_id"] and card["model"]["dim"] == 200
    mtime = (out / "train_E.npy").stat().st_mtime_ns
    again = []
    embed_dataset(path, progress=lambda d, t, p: again.append(d))
    assert again == [] and (out / "train_E.npy").stat().st_mtime_ns == mtime  # cached


def test_embedding_rows_equal_musicnn_on_the_snippet(embedded):
    """A row of {split}_E.npy is musicnn's penultimate of the 3 s patch at that snippet's start."""
    from core import musicnn as mn
    from core.audio import load_audio
    from core.dataset import load_dataset
    from core.embeddings import load_embeddings

    path, _, _ = embedded
    ds = load_dataset(path)
    emb = load_embeddings(path)
    i = 3
    t, s = int(ds.track("train")[i]), float(ds.start("train")[i])
    y = load_audio(ds.manifest.iloc[t]["abs_path"], 16000)
    mel = mn.log_mel(y)
    f = mn.frames_at(s)
    model, _ = mn.load_musicnn(mn.default_model_dir())
    e = mn.predict_patches(model, mel[None, f:f + 187])["penultimate"][0]
    np.testing.assert_allclose(emb.E["train"][i], e, atol=1e-4)


def test_embed_dataset_resumes_after_stop(tiny_dataset, tmp_path):
    import shutil

    from core.embeddings import EmbedStopped, embed_dataset, load_embeddings

    ds2 = tmp_path / "ds"
    shutil.copytree(tiny_dataset, ds2, ignore=shutil.ignore_patterns("embeddings-*"))
    n = {"k": 0}

    def stop():
        n["k"] += 1
        return n["k"] > 5

    with pytest.raises(EmbedStopped):
        embed_dataset(ds2, should_stop=stop)
    work = list((ds2 / "embeddings-msd-musicnn").glob(".work-*/t*.npz"))
    assert len(work) == 5 and not (ds2 / "embeddings-msd-musicnn" / "card.json").exists()
    done = []
    embed_dataset(ds2, progress=lambda d, t, p: done.append(d))
    assert done[-1] == 18
    a, b = load_embeddings(ds2), load_embeddings(tiny_dataset)
    np.testing.assert_allclose(a.E["train"], b.E["train"], atol=1e-5)


@pytest.mark.parametrize("hidden", [0, 16])
def test_head_trains_saves_and_predicts_like_the_audio_path(embedded, tmp_path, hidden):
    from core.dataset import load_dataset
    from core.embeddings import embedding_results, is_musicnn_model, train_embedding_head

    path, _, _ = embedded
    ds = load_dataset(path)
    run = tmp_path / f"run{hidden}"
    r = train_embedding_head(path, seed=0, hidden=hidden, run_dir=run, epochs=15)
    assert 1 <= r.best_epoch <= r.epochs_run <= 15 and r.seconds < 120
    assert r.scores["train"].shape == (len(ds.y("train")), 3)
    np.testing.assert_allclose(r.scores["test"].sum(1), 1.0, atol=1e-5)
    res = embedding_results(ds, r)
    assert {k for k in res} >= {("segment", "val"), ("track_sum", "test"), ("track_vote", "val")}
    assert res[("track_sum", "test")]["metrics"]["n"] == len(ds.tracks("test"))
    assert res[("segment", "test")]["metrics"]["accuracy"] >= 0.5  # 3 easy synthetic classes
    # the saved musicnn + head model on the raw audio gives the cached windows' scores
    card = json.loads((run / "model_card.json").read_text())
    assert card["kind"] == "musicnn" and card["musicnn_input"]["sample_rate"] == 16000
    assert card["params"]["sample_rate"] == 16000 and card["params"]["n_mels"] == 96
    assert is_musicnn_model(run)
    from core.predictor import Predictor

    pred = Predictor(run)  # the demo's and `predict`'s entry point
    assert pred.front_end == "musicnn" and pred.backend == "numpy"  # musicnn's log-mel patches, in NumPy
    row = ds.tracks("test").iloc[0]
    out = pred.predict_file(row["abs_path"])
    assert out.n_windows == 6 and out.window_scores.shape == (6, 3)
    from core.embeddings import load_embeddings

    emb = load_embeddings(path)
    t = ds.tracks("test").index[0]
    np.testing.assert_allclose(out.window_scores, r.window_scores["test"][emb.W_track["test"] == t], atol=1e-4)
    assert out.predicted == res[("track_sum", "test")]["predictions"][0]["pred"]


def test_seeded_head_is_reproducible(embedded):
    from core.embeddings import train_embedding_head

    path, _, _ = embedded
    a = train_embedding_head(path, seed=3, hidden=16, epochs=5)
    b = train_embedding_head(path, seed=3, hidden=16, epochs=5)
    np.testing.assert_allclose(a.scores["val"], b.scores["val"], atol=1e-6)


def test_missing_embeddings_say_what_to_run(tiny_dataset, tmp_path):
    import shutil

    from core.embeddings import EmbeddingError, train_embedding_head

    ds2 = tmp_path / "ds"
    shutil.copytree(tiny_dataset, ds2, ignore=shutil.ignore_patterns("embeddings-*"))
    with pytest.raises(EmbeddingError, match="embed-dataset"):
        train_embedding_head(ds2, seed=0)


def test_short_clip_is_repeat_padded(embedded, tmp_path):
    from core.embeddings import train_embedding_head
    from core.predictor import Predictor

    path, _, _ = embedded
    run = tmp_path / "run"
    train_embedding_head(path, seed=0, run_dir=run, epochs=2)
    pred = Predictor(run)
    r = pred.predict_array(np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1, 16000)
    assert r.n_windows == 1 and any("repeat-padded" in n for n in r.notes)


def test_head_selected_on_validation_track_accuracy(embedded):
    from core.embeddings import train_embedding_head

    path, _, _ = embedded
    r = train_embedding_head(path, seed=1, hidden=0, epochs=4, monitor="val_track_accuracy")
    assert all("val_track_accuracy" in h for h in r.history)
    assert r.best_value == max(h["val_track_accuracy"] for h in r.history) and r.monitor == "val_track_accuracy"
    # epochs are marked like core.train's (the experiment store takes the last "best" epoch)
    assert [h["epoch"] for h in r.history if h["best"]][-1] == r.best_epoch
    assert all(h["monitor"] == "val_track_accuracy" for h in r.history)
    from core.errors import GenreLabError

    with pytest.raises(ValueError) as e:  # a bad argument, and an error of the one root (message for the user)
        train_embedding_head(path, seed=1, epochs=1, monitor="loss")
    assert isinstance(e.value, GenreLabError)


def test_ship_head_model(embedded, tmp_path):
    from core.dataset import load_dataset
    from core.embeddings import ship_head_model, train_embedding_head
    from core.predictor import Predictor
    from core.model_card import read_model_card

    path, _, _ = embedded
    ds = load_dataset(path)
    run = tmp_path / "run"
    train_embedding_head(path, seed=0, run_dir=run, epochs=2)
    dest = ship_head_model(run, tmp_path / "models" / "synth-musicnn", ds, {"track_sum/test": 1.0},
                           selected_by="test", command="cmd")
    card = read_model_card(dest / "model_card.json")  # the schema the demo page checks
    assert card["model_file"] == "model.keras" and card["accuracy"] == {"track_sum/test": 1.0}
    assert card["training_data"]["tracks"]["train"] == len(ds.tracks("train"))
    assert "musicnn" in (dest / "MODEL_CARD.md").read_text()
    assert Predictor(dest).classes == ds.classes


def test_run_experiment_with_the_musicnn_kind(embedded, tmp_path):
    """The "musicnn" kind in the experiment engine: embeddings (cached), head, store, no-audio evaluation."""
    from core.experiment import run_experiment
    from core.predictor import Predictor
    from core.store import Store

    path, _, _ = embedded
    events = []
    out = run_experiment(path, tmp_path / "store", seeds=[0], models=["musicnn"], progress=events.append)
    assert [r["status"] for r in out["runs"]] == ["done"]
    df = out["results"]
    assert set(df["kind"]) == {"musicnn"} and {"segment", "track_sum"} <= set(df["level"])
    st = Store(tmp_path / "store")
    rec = st.get_run(out["runs"][0]["run"])
    assert rec["status"] == "done" and rec["monitor"] == "val_track_accuracy" and rec["best_epoch"] >= 1
    pred = Predictor(st.run_dir(out["runs"][0]["run"]))
    assert pred.kind == "musicnn"
    again = run_experiment(path, tmp_path / "store", seeds=[0], models=["musicnn"])
    assert again["runs"][0].get("skipped")
    # with --executor ray the musicnn head (seconds on the cached embeddings) trains in the driver: same result
    pytest.importorskip("ray")
    ray_out = run_experiment(path, tmp_path / "store2", seeds=[0], models=["musicnn"], executor="ray")
    assert [r["status"] for r in ray_out["runs"]] == ["done"]
    a = df.sort_values(["level", "split"])["accuracy"].to_numpy()
    b = ray_out["results"].sort_values(["level", "split"])["accuracy"].to_numpy()
    assert list(a) == list(b)


def test_cross_validation_folds_take_their_embeddings_from_the_parent(embedded, tmp_path):
    """--cv with the musicnn kind: the dataset's embeddings once with every track's 1 s windows (a fold tests
    tracks that were training tracks), each fold's embeddings re-indexed from them (nothing decoded), the head
    trained per fold and pooled to every track once."""
    from core.dataset import load_dataset
    from core.embeddings import embed_dataset, fold_embeddings, load_embeddings
    from core.experiment import run_experiment
    from core.folds import fold_assignment, fold_dataset
    from core.store import Store

    path, out, _ = embedded
    ds = load_dataset(path)
    with pytest.raises(Exception, match="lack the training tracks' windows"):
        fold_embeddings(path, fold_dataset(ds, 3, 0, fold_assignment(ds, 3)))
    calls = []
    embed_dataset(path, all_windows=True, progress=lambda d, t, p: calls.append(d))
    assert calls  # recomputed: the cache had the val/test windows only
    parent = load_embeddings(path)
    assert set(parent.W) == {"train", "val", "test"}
    assert len(parent.W["train"]) == 6 * len(ds.tracks("train"))
    again = []
    embed_dataset(path, progress=lambda d, t, p: again.append(d))  # windows of val/test asked: the cache has them
    assert again == []
    fd = fold_dataset(ds, 3, 1, fold_assignment(ds, 3))
    fold_embeddings(path, fd)
    emb = load_embeddings(fd.path)
    for s in ("train", "val", "test"):
        for i, (t, st) in enumerate(zip(np.asarray(fd.track(s)), np.asarray(fd.start(s)))):
            ps, rows, starts = ds.snippet_rows(int(t))
            r = rows[int(np.argmin(np.abs(starts - st)))]
            np.testing.assert_array_equal(emb.E[s][i], parent.E[ps][r])
    for s in ("val", "test"):
        assert set(emb.W_track[s]) == set(np.unique(fd.track(s)))
        for t in set(emb.W_track[s]):
            ps = ds.manifest.iloc[int(t)]["split"]
            np.testing.assert_array_equal(emb.W[s][emb.W_track[s] == t], parent.W[ps][parent.W_track[ps] == t])
    before = []
    embed_dataset(fd.path, progress=lambda d, t, p: before.append(d))  # the fold's own call: nothing decoded
    assert before == []
    res = run_experiment(path, tmp_path / "store", seeds=[0], models=["musicnn"], cv=3)
    assert len(res["runs"]) == 3 and len(res["pooled"]) == 1
    st = Store(tmp_path / "store")
    pooled = res["pooled"][0]["run"]
    tracks = st.predictions_frame(pooled, "track_sum", "test")["track"]
    assert sorted(tracks) == sorted(ds.manifest[~ds.manifest["skipped"].astype(bool)]["path"])
    card = json.loads((st.run_dir(res["runs"][0]["run"]) / "model_card.json").read_text())
    assert card["kind"] == "musicnn" and card["fold"] == 0 and card["n_folds"] == 3
