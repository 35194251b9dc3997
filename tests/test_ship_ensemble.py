"""ship-ensemble: the fold models of a cross-validation as one model folder, judged out of fold."""
import json

import numpy as np
import pytest

from engine_helpers import TINY, quick_config, run_core

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fold_stores(tmp_path_factory):
    """Two folds of 2 classes x 4 tracks: each fold's test half is the other's training half (val: one track
    per class carved from the training half); one seed per fold, plus a second seed in fold 0 only."""
    from core.dataset import SplitConfig, build_dataset
    from core.experiment import run_experiment
    from core.features import FeatureParams
    from core.synth import make_dataset_folder

    root = tmp_path_factory.mktemp("cv")
    src = make_dataset_folder(root / "src", n_classes=2, per_class=4, seconds=5.0)
    classes = sorted(p.name for p in src.iterdir() if p.is_dir())
    stores = []
    for f in range(2):
        split = {"train": [], "val": [], "test": []}
        for c in classes:
            keys = [f"{c}/{p.name}" for p in sorted((src / c).iterdir())]
            test, rest = (keys[:2], keys[2:]) if f == 0 else (keys[2:], keys[:2])
            split["test"] += test
            split["val"] += rest[:1]
            split["train"] += rest[1:]
        (root / f"split{f}.json").write_text(json.dumps(split))
        ds = build_dataset(src, root / f"ds{f}", FeatureParams(**TINY),
                           SplitConfig(split_file=str(root / f"split{f}.json")), workers=1)
        run_experiment(ds, root / f"store{f}", seeds=[0, 1] if f == 0 else [0], models=["snippet"],
                       config=quick_config(max_epochs=2), lock=False)
        stores.append(root / f"store{f}")
    return root, stores, classes


def test_cv_figures_pool_each_seed_over_the_folds(fold_stores):
    from core.reproduce import cv_figures, cv_members

    _, stores, classes = fold_stores
    members = cv_members(stores)
    assert sorted((m["fold"], m["seed"]) for m in members) == [(0, 0), (0, 1), (1, 0)]
    cv = cv_figures(members, classes)
    assert cv["folds"] == 2 and cv["seeds"] == [0] and cv["n_tracks"] == 8  # seed 1 misses fold 1
    ok = 0
    for m in members:
        if m["seed"] == 0:
            for t, p in m["preds"].items():
                ok += classes[int(np.argmax(p["sum"][0]))] == p["sum"][1]
    assert cv["accuracy"]["sum"]["per_seed"] == [round(ok / 8, 4)]


def test_overlapping_test_splits_are_refused(fold_stores):
    from core.reproduce import ReproduceError, cv_members

    _, stores, _ = fold_stores
    with pytest.raises(ReproduceError, match="not disjoint folds"):
        cv_members([stores[0], stores[0]])


def test_ship_ensemble_writes_a_folder_the_predictor_runs_as_the_mean_of_its_members(fold_stores, tmp_path):
    from core.predictor import Predictor
    from core.synth import synth_clip

    root, stores, classes = fold_stores
    dest = tmp_path / "ens"
    r = run_core("ship-ensemble", str(dest), *map(str, stores), "--name", "tiny-cv", "--citation", "synthetic")
    assert r.returncode == 0, r.stderr
    assert "cross-validated track accuracy" in r.stdout and "<- default" in r.stdout
    card = json.loads((dest / "model_card.json").read_text())
    assert [m["file"] for m in card["members"]] == ["fold0-seed0.keras", "fold1-seed0.keras"]
    assert card["members"][0]["norm"] != card["members"][1]["norm"]  # each fold's training statistics
    assert card["cv"]["n_tracks"] == 8 and card["aggregation"] in ("sum", "vote", "logprob")
    assert card["reproduction"]["command"].startswith("python -m core ship-ensemble")
    assert (dest / "MODEL_CARD.md").read_text().count("Cross-validated") == 1
    # the card can name its data and the whole recipe (folds, training, this step) instead of this command
    again = tmp_path / "ens2"
    r = run_core("ship-ensemble", str(again), *map(str, stores), "--name", "tiny-cv", "--citation", "synthetic",
                 "--source-name", "Tiny textures (8 tracks)", "--reproduce", "bash make_all.sh DATA WORK")
    assert r.returncode == 0, r.stderr
    card2 = json.loads((again / "model_card.json").read_text())
    assert card2["training_data"]["source"] == "Tiny textures (8 tracks)"
    assert card2["reproduction"]["command"] == "bash make_all.sh DATA WORK"
    assert "`bash make_all.sh DATA WORK`" in (again / "MODEL_CARD.md").read_text()
    y = synth_clip(0, 4.0, 22050, seed=5)
    ens = Predictor(dest)
    assert ens.backend == "numpy"
    res = ens.predict_array(y, aggregation="sum")
    singles = [Predictor(dest / m["file"], card={**card, "norm": m["norm"], "members": None,
                                                  "model_file": m["file"]}).predict_array(y, aggregation="sum")
               for m in card["members"]]
    np.testing.assert_allclose(res.window_scores, np.mean([s.window_scores for s in singles], axis=0), atol=1e-6)
    # the members score on threads of their own (one BLAS thread each): the same numbers as one after another
    one = Predictor(dest, threads=1).predict_array(y, aggregation="sum")
    two = Predictor(dest, threads=2).predict_array(y, aggregation="sum")
    assert two.window_scores.shape == one.window_scores.shape
    np.testing.assert_allclose(two.window_scores, one.window_scores, atol=1e-6)
    # an incomplete store set is a clear error, not a folder
    r = run_core("ship-ensemble", str(tmp_path / "none"), str(tmp_path / "nostore"), "--name", "x", "--citation", "y")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert not (tmp_path / "none").exists()
