"""The dashboard pages under ``streamlit.testing.v1.AppTest``: every page with no data at all, with a small
dataset, a store and a model; the demo's classification path through the real file uploader; bad uploads;
friendly errors instead of tracebacks; background jobs started from the pages (slow)."""
from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from conftest import make_cv_test_store, make_test_store

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
PAGES = {"home": "app_pages/home.py", "data": "app_pages/data.py", "experiment": "app_pages/experiment.py",
         "demo": "app_pages/demo.py"}


def open_page(name: str, timeout: float = 120):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    if name != "home":
        at.switch_page(PAGES[name])
        at.run()
    return at


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def assert_clean(at) -> None:
    """No uncaught exception element, and no generic 'something went wrong' message."""
    assert not at.exception, [e.value for e in at.exception]
    assert not any("something went wrong" in t for t in texts(at.error)), texts(at.error)


def _without_shipped_models(monkeypatch) -> None:
    """Hide the repository's models/ so a test sees only the models of its own data folder."""
    import core.workspace as support

    orig = support.model_dirs
    monkeypatch.setattr(support, "model_dirs", lambda home=None: [(k, p) for k, p in orig(home) if k != "shipped"])


@pytest.fixture
def fresh_clone_home(tmp_path, monkeypatch):
    """An empty data folder: what a fresh clone sees (the shipped models and reference results only)."""
    home = tmp_path / "fresh-home"
    home.mkdir()
    monkeypatch.setenv("GENRELAB_HOME", str(home))
    return home


def _bare_home(tmp_path, monkeypatch, name: str):
    """An empty data home (``$GENRELAB_HOME``) in which only its own models are listed."""
    home = tmp_path / name
    home.mkdir()
    monkeypatch.setenv("GENRELAB_HOME", str(home))
    _without_shipped_models(monkeypatch)
    return home


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    return _bare_home(tmp_path, monkeypatch, "empty-home")


@pytest.fixture(scope="module")
def full_home_dir(tmp_path_factory, demo_model_dir):
    """A data folder with an audio source, a built dataset, a store with results and the demo model."""
    from core.dataset import build_dataset
    from core.synth import make_dataset_folder

    home = tmp_path_factory.mktemp("full-home")
    src = make_dataset_folder(home / "sources" / "synth", n_classes=3, per_class=6, seconds=8.0)
    (src / "bass" / "notes.txt").write_text("not audio")  # shows up as a skipped file
    build_dataset(src, home / "datasets" / "synth", workers=1)
    make_test_store(home / "experiments", ["bass", "pulse", "tone"])
    shutil.copytree(demo_model_dir, home / "models" / "synthetic-demo")
    return home


@pytest.fixture
def full_home(full_home_dir, monkeypatch):
    monkeypatch.setenv("GENRELAB_HOME", str(full_home_dir))
    _without_shipped_models(monkeypatch)
    return full_home_dir


def test_demo_on_a_fresh_clone_uses_a_shipped_model(fresh_clone_home):
    from core.synth import demo_clip_wav

    shipped = sorted(p.name for p in (ROOT / "models").glob("*/model_card.json"))
    if not shipped:
        pytest.skip("no shipped models in models/")
    at = open_page("demo")
    assert_clean(at)
    choice = at.selectbox(key="demo_model").value
    assert "shipped" in str(choice) or any(p.parent.name in str(choice) for p in (ROOT / "models").glob("*/"))
    if "gtzan10-musicnn" in shipped:  # the 10-genre default, its cross-validated figure in the summary and card
        assert str(choice).endswith("gtzan10-musicnn")
        card = json.loads((ROOT / "models" / "gtzan10-musicnn" / "model_card.json").read_text())
        fig = card["cv"]["accuracy"][card["aggregation"]]
        assert any(f"cross-validated track accuracy {fig['mean']:.0%}" in t for t in texts(at.caption))
        md = " ".join(texts(at.markdown))
        assert "**Cross-validated accuracy** (5-fold, over all 80 tracks" in md
        assert f"{fig['mean']:.1%} ± {fig['sd']:.1%}" in md and "(default)" in md
        assert "| level | validation | test |" not in md  # no empty held-out table beside it
    _upload(at, "clip.wav", demo_clip_wav(1, 8.0))
    assert_clean(at)
    assert not at.error
    assert {m.label: m.value for m in at.metric}["Windows"] == "6"


# ---------------------------------------------------------------------------------------------------------
# no data at all
# ---------------------------------------------------------------------------------------------------------
def test_home_without_data(empty_home):
    at = open_page("home")
    assert_clean(at)
    assert not at.error
    assert texts(at.title) == ["Genre Lab"]
    assert len(at.get("image")) == 1  # the divide-and-conquer figure, computed (a static SVG: no plotly.js)
    captions = " ".join(texts(at.caption))
    assert "No dataset built yet" in captions and "No experiment run here yet" in captions


def test_data_without_data(empty_home):
    at = open_page("data")
    assert_clean(at)
    assert not at.error
    assert any("No dataset yet" in t for t in texts(at.info))


def test_experiment_without_data(empty_home):
    at = open_page("experiment")
    assert_clean(at)
    assert not at.error
    infos = " ".join(texts(at.info))
    assert "Build a snippet dataset" in infos
    shipped = sorted((ROOT / "results" / "reference").glob("*.json"))
    if shipped:  # a fresh clone shows the reference results produced by `python -m core reproduce`
        captions = " ".join(c.value for c in at.caption)
        assert "Reference results shipped with the project" in captions
        assert any(p.stem in captions for p in shipped)
    else:
        assert "no reference results are shipped" in infos  # never invented numbers


def test_demo_without_model(empty_home):
    at = open_page("demo")
    assert_clean(at)
    assert not at.error
    assert any("No model is available yet" in t for t in texts(at.info))
    assert any(b.label == "Train the demo model" for b in at.button)


def test_missing_folder_path_is_a_clear_error(empty_home):
    at = open_page("data")
    at.text_input(key="data_folder_path").set_value("/no/such/folder").run()
    assert_clean(at)
    assert any("folder not found" in t for t in texts(at.error))


# ---------------------------------------------------------------------------------------------------------
# with a dataset, a store and a model
# ---------------------------------------------------------------------------------------------------------
def test_home_with_data(full_home):
    at = open_page("home")
    assert_clean(at)
    captions = " ".join(texts(at.caption))
    assert "1 dataset built" in captions and "evaluated runs" in captions and "model" in captions


def test_data_page_overview_and_explorer(full_home):
    at = open_page("data")
    assert_clean(at)
    assert not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Classes"] == "3" and metrics["Tracks used"] == "18" and metrics["Skipped files"] == "1"
    assert len(at.get("plotly_chart")) == 3  # counts, waveform with snippets, mel spectrogram
    assert len(at.get("audio")) == 1  # the snippet can be heard
    skipped = at.dataframe[0].value
    assert list(skipped["path"]) == ["bass/notes.txt"] and "extension" in skipped["reason"][0]
    # pick another track and another snippet
    track = at.selectbox(key=f"data_x_track:{full_home / 'datasets' / 'synth'}:all:all")
    track.set_value(3).run()  # manifest row 3
    slider = [s for s in at.select_slider if s.key.startswith("data_x_snip:")][0]
    slider.set_value(2).run()
    assert_clean(at)
    assert "Snippet 3: 3.99–6.99 s" in " ".join(texts(at.caption))


def chart_spec(at, index: int = 0) -> dict:
    """The plotly figure of the page's ``index``-th chart, as plotly JSON."""
    import json

    return json.loads(at.get("plotly_chart")[index].proto.spec)


def bar_values(spec: dict, trace_name: str) -> dict[str, float | None]:
    """``{x category: y}`` of the named bar trace."""
    trace = next(t for t in spec["data"] if t.get("name") == trace_name)
    return dict(zip(trace["x"], trace["y"]))


def test_experiment_page_results(full_home):
    at = open_page("experiment")
    assert_clean(at)
    assert not at.error
    # 6 tracks per class, 1 test track per class: the small-data defaults, cross-validated (and said so)
    assert at.multiselect(key="exp_models").value == ["snippet", "linear", "musicnn"]
    assert at.selectbox(key="exp_cv").value == "auto" and at.number_input(key="exp_seeds").value == 2
    assert at.selectbox(key="exp_preset").value == "small" and at.number_input(key="exp_epochs").value is None
    captions = " ".join(texts(at.caption))
    assert "5-fold cross-validation (all 18 tracks tested once per seed)" in captions
    assert "one track = 33.3 points" in captions  # the held-out split's 3 test tracks
    assert "Settings **small (small datasets: fast)**: the recommended recipe on a budget for small datasets" \
        in captions  # each preset's line without its name repeated
    md = " ".join(texts(at.markdown))
    assert "mean ± SD over 3 seeds, held-out split" in md and "vs linear baseline" in md
    assert "one track = 3.33 points" in captions  # the test store's 30 test tracks
    assert "beat segment-level in" in md and "paired t-test" in md
    assert "The snippet CRNN's track-level accuracy beat the linear baseline's in 3 of 3 seeds, mean +" in md
    assert "beat the 30 s CRNN's in" in md
    assert len(at.get("plotly_chart")) >= 3  # headline, learning curves, confusion matrix, aggregation
    captions = " ".join(texts(at.caption))
    assert "published (Hilsdorf 2022, full GTZAN)" in captions and "**linear baseline**" in captions
    # the headline: CRNN bars and the baseline's segment and track bars side by side, labelled as such
    bars = bar_values(chart_spec(at), "this lab · test")
    assert [x.split("<br>")[0] for x in bars] == ["segment level", "track level", "30 s model", "linear baseline:",
                                                  "linear baseline:"]
    assert all(v is not None for v in bars.values())
    lin_seg, lin_track = list(bars.values())[3:]
    assert lin_track > lin_seg and bars["track level<br>(sum of snippet votes)"] > lin_track
    # per-seed table: every model and level, test split first, then validation
    table = at.dataframe[0].value
    assert list(table["seed"]) == [0, 1, 2]
    assert list(table.columns) == ["seed", "evaluation", "CRNN segment", "CRNN track (sum)", "30 s CRNN",
                                   "linear segment", "linear track (sum)"]
    assert table["evaluation"].iloc[0] == "held-out: 30 tracks"
    epochs = at.dataframe[1].value  # the epochs in a table of their own (the accuracies' table stays readable)
    assert list(epochs.columns) == ["seed", "model", "epochs run", "best epoch"]
    assert list(epochs["model"]) == ["snippet CRNN", "30 s CRNN"] * 3 and set(epochs["epochs run"]) == {"5"}
    assert set(epochs["best epoch"]) == {"4"}  # no monitor recorded in the test store: no value beside it
    assert table["linear track (sum)"].nunique() == 1  # the baseline's fit does not depend on the seed
    test_lin = float(table["linear track (sum)"].iloc[0])
    at.segmented_control(key="exp_seed_split").set_value("val").run()
    assert_clean(at)
    assert float(at.dataframe[0].value["linear track (sum)"].iloc[0]) != test_lin
    # aggregation: both models, the baseline in lighter bars
    agg = next(c for c in (json.loads(e.proto.spec) for e in at.get("plotly_chart"))
               if any(t.get("name") == "linear baseline · test" for t in c["data"]))
    assert {t["name"] for t in agg["data"]} == {"snippet CRNN · validation", "snippet CRNN · test",
                                                 "linear baseline · validation", "linear baseline · test"}
    assert any(b.label.startswith("Download results (CSV)") for b in at.get("download_button"))
    # the learning-curve selector offers the CRNNs only (the baseline is one L-BFGS fit)
    assert at.segmented_control(key="exp_curves_kind").options == ["snippet CRNN", "30 s CRNN"]


def test_experiment_page_model_choices_come_from_the_kind_table(empty_home, monkeypatch):
    """A kind put into core.kinds' table is offered by the page, under its label (test_kinds: every other list)."""
    from dataclasses import replace

    import core.kinds
    from core.dataset import build_dataset
    from core.synth import make_dataset_folder

    src = make_dataset_folder(empty_home / "sources" / "tiny", n_classes=2, per_class=4, seconds=4.0)
    build_dataset(src, empty_home / "datasets" / "tiny", workers=1)
    fake = replace(core.kinds.get_kind("linear"), key="fake", label="fake model", short="fake")
    monkeypatch.setattr(core.kinds, "KIND_TABLE", core.kinds.KIND_TABLE + (fake,))
    at = open_page("experiment")
    assert_clean(at)
    models = at.multiselect(key="exp_models")
    assert models.options == ["snippet CRNN", "30 s CRNN", "linear baseline", "musicnn embedding + head",
                              "fake model"]


def test_experiment_page_says_a_result_is_cross_validated(empty_home):
    """A cross-validated experiment: the headline, the captions and the per-seed table say that each seed's figure
    pools its folds (every track once) and how coarse it is; the epochs are listed fold by fold."""
    make_cv_test_store(empty_home / "experiments", ["a", "b", "c", "d"], seeds=(0, 1), kinds=("snippet", "linear"))
    at = open_page("experiment")
    assert_clean(at)
    md = " ".join(texts(at.markdown))
    # the headline names what ran (no 30 s CRNN here) and how it was evaluated
    assert "#### Segment vs track vs linear baseline: mean ± SD over 2 seeds of 5-fold cross-validation" in md
    assert "held-out split" not in md and "**Test** (every track once, the folds pooled)" in md
    captions = " ".join(texts(at.caption))
    assert "5-fold cross-validation: each seed's figure pools its 5 folds, every one of the 40 tracks tested once " \
           "(one track = 2.5 points)" in captions
    assert "each seed's 5 folds pooled (every track once)" in captions
    assert "held-out" not in captions and "figures are coarse" not in captions
    table = at.dataframe[0].value
    assert list(table["seed"]) == [0, 1] and set(table["evaluation"]) == {"5-fold cross-validation"}
    epochs = at.dataframe[1].value
    assert epochs.to_dict("records") == [{"seed": s, "model": "snippet CRNN", "epochs run": "5",
                                          "best epoch": "4, 4, 4, 4, 4"} for s in (0, 1)]
    assert "best epoch: the one kept, fold by fold (fold 1 to 5)" in captions
    # the headline chart: the approaches that ran, no empty 30 s column
    bars = bar_values(chart_spec(at), "this lab · test")
    assert [x.split("<br>")[0] for x in bars] == ["segment level", "track level", "linear baseline:",
                                                  "linear baseline:"]
    # the pooled figure: each seed's predictions over its folds, every track once (store: 60 % right per fold)
    assert all(20 <= v <= 100 and abs(v / 2.5 - round(v / 2.5)) < 1e-6 for v in table["CRNN track (sum)"])
    assert not at.warning  # 60 % for 4 classes is not at chance
    # the learning curves: one per fold run
    assert at.segmented_control(key="exp_curves_kind").options == ["snippet CRNN"]
    # the confusion matrix opens on the snippet CRNN's track level (the article's figure), not the first row found
    assert at.selectbox(key="exp_cm_level").value == ("snippet", "track_sum")


def test_experiment_page_says_a_small_held_out_split_is_coarse(empty_home):
    """Held out, one test track per class: the figures say so (one track = 25 points, steps that large) and point
    at cross-validation; the chance advice names cross-validation and musicnn (not run), not the recommended
    settings (used)."""
    from core.experiment import preset_config

    make_test_store(empty_home / "experiments", ["a", "b", "c", "d"], seeds=(0, 1), kinds=("snippet", "linear"),
                    per_class=1, crnn_accuracy=0.25, config=preset_config("recommended").to_dict())
    at = open_page("experiment")
    assert_clean(at)
    md = " ".join(texts(at.markdown))
    assert "#### Segment vs track vs linear baseline: mean ± SD over 2 seeds, held-out split" in md
    assert "**Test** (held-out tracks)" in md and "cross-validation" not in md.split("Segment vs track")[1][:80]
    captions = " ".join(texts(at.caption))
    assert "Each test figure: the dataset's held-out split: 4 test tracks (one track = 25 points; a figure moves " \
           "in steps that large)" in captions
    assert "With so few test tracks the figures are coarse: cross-validation" in captions
    assert "Training settings: recommended (default)" in captions
    table = at.dataframe[0].value
    assert set(table["evaluation"]) == {"held-out: 4 tracks"}
    assert list(table["CRNN track (sum)"]) == [25.0, 25.0]
    warn = " ".join(texts(at.warning))
    assert warn.startswith("At chance level (25% for 4 classes): snippet CRNN, segment; snippet CRNN, track (sum). "
                           "Try: ")
    tips = warn.split("Try: ", 1)[1]
    assert tips.startswith("cross-validation (*Cross-validation*: auto or a number of folds)")
    assert "the *musicnn embedding + head*" in tips
    assert "recommended* settings" not in tips and "more epochs" not in tips  # recommended used; best 4 of 30


def test_chance_warning_names_what_the_experiment_has_not_tried(empty_home):
    """A CRNN at chance in a cross-validated experiment: the advice comes from the run's own settings, never 'the
    recommended settings' when they were used, never cross-validation when the experiment was cross-validated;
    the tracks per class from the pooled figure (40 tracks tested once: 10 per class)."""
    make_cv_test_store(empty_home / "experiments", ["a", "b", "c", "d"], seeds=(0, 1), kinds=("snippet", "linear"),
                       accuracy={"snippet": 0.2})
    at = open_page("experiment")
    assert_clean(at)
    warn = " ".join(texts(at.warning))
    assert "At chance level (25% for 4 classes): snippet CRNN" in warn
    tips = warn.split("Try: ", 1)[1]
    # best epoch 4 of at most 5 in every fold; no musicnn run; 40 tracks
    assert tips.startswith("more epochs: every run's best epoch was one of its last (of at most 5)")
    assert "the *musicnn embedding + head*" in tips and "more tracks: 10 per class are few" in tips
    assert "recommended* settings" not in tips and "cross-validation" not in tips


def test_chance_advice_after_the_small_default_names_the_full_budget(empty_home):
    """The page's small-data default (snippet CRNN with the *small* settings, linear, musicnn; cross-validated)
    with the CRNN at chance: the advice is the recommended settings' full budget and more tracks, never musicnn or
    cross-validation (both done), nor more epochs (the best epochs were not the last ones)."""
    from core.experiment import preset_config

    make_cv_test_store(empty_home / "experiments", ["a", "b", "c", "d"], seeds=(0, 1),
                       kinds=("snippet", "linear", "musicnn"), accuracy={"snippet": 0.25},
                       config=preset_config("small").to_dict())
    at = open_page("experiment")
    assert_clean(at)
    captions = " ".join(texts(at.caption))
    assert "Training settings: small (small datasets: fast)" in captions
    warn = " ".join(texts(at.warning))
    assert "At chance level (25% for 4 classes): snippet CRNN, segment; snippet CRNN, track (sum). Try: " in warn
    tips = warn.split("Try: ", 1)[1]
    assert tips.startswith("the *recommended* settings: up to 30 epochs of all 14 snippets per track (the *small* "
                           "settings train 8 epochs of 7")
    assert "more tracks: 10 per class are few" in tips
    assert "musicnn" not in tips and "cross-validation" not in tips and "more epochs" not in tips


def test_chance_advice_follows_the_runs_settings():
    from ui.text import chance_advice

    rec = {"lr": 1e-3, "max_epochs": 12, "monitor": "val_track_accuracy", "bn_recalibrate": 1024,
           "schedule": "cosine", "warmup_epochs": 1.0, "patience": 10, "snippets_per_track": 14,
           "snippet_selection": "random", "full_crop": "random", "full_batch_size": 16}
    held_out = chance_advice(rec, ["snippet", "linear"], None, 10, [1, 1, 1])
    assert any(t.startswith("cross-validation") for t in held_out) and any("musicnn" in t for t in held_out)
    assert not any("recommended" in t for t in held_out)  # the run used the recommended recipe
    paper = chance_advice({"lr": 1e-4, "max_epochs": 50}, ["snippet", "musicnn"], 5, 10, [3, 4])
    assert paper[0].startswith("the *recommended* settings: the learning rate 0.0001")
    assert not any("musicnn" in t or t.startswith("cross-validation") for t in paper)
    short = chance_advice({**rec, "max_epochs": 6}, ["snippet", "musicnn"], 5, 10, [6, 5, 6])
    assert short[0].startswith("more epochs") and "at most 6" in short[0]
    first = chance_advice(rec, ["snippet", "musicnn"], 5, 10, [1, 1])
    assert first == ["more tracks per class: the best epoch was the first in every run, so the validation part "
                     "could not tell the epochs apart"]
    assert chance_advice(rec, ["snippet", "musicnn"], 5, 100, [4])  # never empty
    small = {**rec, "max_epochs": 8, "snippets_per_track": 7}  # the small preset: the full recipe is a next step
    assert chance_advice(small, ["snippet", "musicnn"], 5, 10, [4])[0].startswith("the *recommended* settings: up to")


def test_experiment_page_reference_results(empty_home, tmp_path, monkeypatch):
    """No local store: results shipped in results/reference/ (the store's export format) are shown; several
    files are offered in a selectbox, each with its data set and the reproduction that produced it."""
    from core.store import export_results
    from core.utils import atomic_write_json

    import ui.state

    ref = tmp_path / "results" / "reference"
    ref.mkdir(parents=True)
    export_results(make_test_store(tmp_path / "s1", ["classical", "electronic", "pop", "rock"], seeds=(0, 1),
                                   dataset="dataset"), ref / "emotify.json")
    export_results(make_test_store(tmp_path / "s2", ["blues", "jazz", "metal"], seeds=(0, 1, 2), dataset="dataset"),
                   ref / "gtzan-excerpts.json")
    # the reproduction's results.json beside it (results/<name>/results.json) names the commit
    atomic_write_json(tmp_path / "results" / "emotify" / "results.json", {
        "preset": "tuned", "n_seeds": 2, "commit": "0123456789abcdef0123", "command": "python -m core reproduce x y",
        "dataset": {"source": "/shared/data/emotify", "classes": ["classical", "electronic", "pop", "rock"],
                    "counts": {s: {"tracks": n, "snippets": 10 * n} for s, n in
                               (("train", 320), ("val", 40), ("test", 40))}}})
    monkeypatch.setattr(ui.state, "REFERENCE_DIR", ref)
    at = open_page("experiment")
    assert_clean(at)
    assert at.selectbox(key="exp_source").value == str(ref / "emotify.json")
    caption = next(t for t in texts(at.caption) if t.startswith("Reference results shipped with the project"))
    assert "data set **emotify** (4 classes, 320/40/40 train/val/test tracks)" in caption
    assert "`python -m core reproduce`" in caption and "preset tuned, 2 seeds, commit `0123456789`" in caption
    assert "mean ± SD over 2 seeds" in " ".join(texts(at.markdown))
    assert not [s for s in at.selectbox if s.key and s.key.startswith("exp_group:")]  # one experiment, not 2
    bars = bar_values(chart_spec(at), "emotify · test")
    assert bars["30 s model<br>(whole clip at once)"] is not None  # the full-clip runs show as the 30 s model
    assert bars["linear baseline:<br>track level (sum)"] is not None
    # the other data set: no results.json beside it, still named and attributed
    at.selectbox(key="exp_source").set_value(str(ref / "gtzan-excerpts.json")).run()
    assert_clean(at)
    caption = next(t for t in texts(at.caption) if t.startswith("Reference results shipped with the project"))
    assert "data set **gtzan-excerpts**:" in caption and "`python -m core reproduce`" in caption
    assert "mean ± SD over 3 seeds" in " ".join(texts(at.markdown))
    assert bar_values(chart_spec(at), "gtzan-excerpts · test")["30 s model<br>(whole clip at once)"] is not None


def test_newer_store_is_a_friendly_error(empty_home):
    make_test_store(empty_home / "experiments", ["a", "b"], seeds=(0,), kinds=("snippet",))
    con = sqlite3.connect(empty_home / "experiments" / "experiments.sqlite")
    con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    con.commit()
    con.close()
    at = open_page("experiment")
    assert not at.exception
    assert any("newer Genre Lab" in t for t in texts(at.error))


def test_unexpected_error_shows_a_short_message(empty_home, monkeypatch):
    import core.workspace

    def boom(*a, **k):
        raise RuntimeError("internal detail that must not reach the page")

    monkeypatch.setattr(core.workspace, "list_datasets", boom)
    at = open_page("data")
    assert not at.exception
    errors = texts(at.error)
    assert any("something went wrong (RuntimeError)" in t for t in errors)
    assert not any("internal detail" in t or "Traceback" in t for t in errors)


def test_demo_lists_models_and_card(full_home):
    at = open_page("demo")
    assert_clean(at)
    options = at.selectbox(key="demo_model").options
    assert any("synthetic-demo" in o for o in options)
    md = " ".join(texts(at.markdown))  # the model card facts
    assert "- **model**: snippet CRNN (votes over windows)" in md and "- **classes**: 4: " in md
    assert "Measured accuracy" not in md  # the synthetic model has no measured accuracy or reproduction


def test_demo_keeps_experiment_models_apart_and_hides_those_at_chance(empty_home, demo_model_dir):
    """The model list with many runs: model folders and experiment runs in two groups, runs at chance level hidden
    until asked for, and two folders whose cards have the same name told apart."""
    import json

    from core.store import Store

    classes = json.loads((demo_model_dir / "model_card.json").read_text())["classes"]
    make_cv_test_store(empty_home / "experiments", classes, seeds=(0,), kinds=("snippet", "linear"), n_folds=3,
                       per_class=3, accuracy={"snippet": 1.0, "linear": 0.0})
    store = Store(empty_home / "experiments")
    for r in store.runs():
        if r["fold"] is not None:  # a model for every fold run (the pooled runs have none of their own)
            rd = store.run_dir(r["id"])
            rd.mkdir(parents=True)
            shutil.copyfile(demo_model_dir / "model.keras", rd / "best.keras")
            shutil.copyfile(demo_model_dir / "model_card.json", rd / "model_card.json")
    for name in ("demo-a", "demo-b"):  # two folders, the same name on their cards
        shutil.copytree(demo_model_dir, empty_home / "models" / name)
    at = open_page("demo")
    assert_clean(at)
    assert at.segmented_control(key="demo_group").value == "shipped"
    options = at.selectbox(key="demo_model").options
    assert len(options) == 2 and len(set(options)) == 2 and all("folder demo-" in o for o in options)
    at.segmented_control(key="demo_group").set_value("experiment").run()
    assert_clean(at)
    options = at.selectbox(key="demo_model").options
    assert sorted(o.split(", test")[0] for o in options) == [f"snippet CRNN, seed 0, fold {f}/3" for f in (1, 2, 3)]
    assert all("test 100% of " in o and "small" in o for o in options)  # accuracy, its tracks, the data set
    box = at.checkbox(key="demo_show_chance")
    assert box.label == "Show the 3 models at chance level" and not box.value
    box.check().run()
    options = at.selectbox(key="demo_model").options
    assert len(options) == 6 and sum("(at chance)" in o for o in options) == 3
    assert not [m for m in texts(at.markdown) if "cannot be used" in m]


def test_model_labels_are_told_apart_and_chance_is_judged_by_class_count():
    from core.workspace import at_chance, distinct_labels

    assert at_chance(0.29, 4) and not at_chance(0.31, 4) and at_chance(0.5, 2) and not at_chance(None, 4)
    models = [{"label": "emotify-crnn", "details": ["folder a", "snippet CRNN", "2026-01-01 10:00"]},
              {"label": "emotify-crnn", "details": ["folder b", "snippet CRNN", "2026-01-02 10:00"]},
              {"label": "other", "details": ["folder c"]},
              {"label": "same", "details": ["x"]}, {"label": "same", "details": ["x"]}]
    distinct_labels(models)
    assert [m["label"] for m in models] == ["emotify-crnn · folder a", "emotify-crnn · folder b", "other",
                                            "same · x", "same · x (2)"]


def _shipped_model(folder: Path, demo_model_dir: Path, name: str) -> Path:
    """A shipped-model folder: the demo model's weights with a card in ``ship-model``'s layout."""
    import json

    shutil.copytree(demo_model_dir, folder)
    card = json.loads((folder / "model_card.json").read_text())
    card.update(
        name=name, description=f"{name}: snippet CRNN trained on real music (test fixture).", model_file="model.keras",
        training_data={"source": "emotify", "citation": "Aljanaki et al. (2016), Emotify.",
                       "classes": card["classes"], "tracks": {"train": 320, "val": 40, "test": 40},
                       "snippets": {"train": 4480, "val": 560, "test": 560},
                       "split": {"val_share": 0.1, "test_share": 0.1, "seed": 0}},
        accuracy={"segment/val": 0.61, "segment/test": 0.58, "track_sum/val": 0.725, "track_sum/test": 0.7},
        reproduction={"preset": "tuned", "command": "python -m core reproduce ../shared/data/emotify out "
                                                    "--preset tuned", "commit": "abcdef0123456789", "n_seeds": 5},
        selected_by="best validation track-level (sum) accuracy among the reproduction's seeds", dataset=None)
    (folder / "model_card.json").write_text(json.dumps(card))
    (folder / "MODEL_CARD.md").write_text(f"# {name}\n")
    return folder


def test_demo_prefers_shipped_models_and_shows_their_card(full_home, tmp_path, monkeypatch, demo_model_dir):
    import core.workspace

    shipped = tmp_path / "models"
    _shipped_model(shipped / "aaa-crnn", demo_model_dir, "aaa-crnn")
    _shipped_model(shipped / "emotify-crnn", demo_model_dir, "emotify-crnn")
    monkeypatch.setattr(core.workspace, "model_dirs",
                        lambda home=None: [("shipped", shipped), ("local", full_home / "models")])
    at = open_page("demo")
    assert_clean(at)
    box = at.selectbox(key="demo_model")
    assert box.value == f"shipped:{shipped / 'emotify-crnn'}"  # shipped first, the emotify one preferred
    assert box.options[0].startswith("aaa-crnn, test 70%") and any("synthetic-demo" in o for o in box.options)
    md = " ".join(texts(at.markdown))
    assert "**emotify-crnn**" in md
    assert "**Training data:** emotify: 320 / 40 / 40 train / validation / test tracks" in md
    assert "split by track (10 % validation, 10 % test, seed 0)" in md
    assert "Citation: Aljanaki et al. (2016), Emotify." in texts(at.caption)
    assert "- **trained on**: emotify" in md
    assert ("| level | validation | test |\n| --- | ---: | ---: |\n| segment | 61.0% | 58.0% |\n"
            "| track (sum) | 72.5% | 70.0% |") in md
    assert [c.value for c in at.code] == ["python -m core reproduce ../shared/data/emotify out --preset tuned"]
    assert any("preset tuned, 5 seeds, commit `abcdef0123`" in t for t in texts(at.caption))
    # and it classifies
    from core.synth import demo_clip_wav

    _upload(at, "tone.wav", demo_clip_wav(2, 6.0))
    assert_clean(at)
    assert {m.label: m.value for m in at.metric}["Predicted genre"] == "pulse"


def test_default_model_key():
    from ui.state import default_model_key

    card = {"name": "x"}
    m = [{"key": "run:1", "origin": "experiment", "path": "/s/runs/1", "card": card},
         {"key": "local:a", "origin": "local", "path": "/h/models/a", "card": card},
         {"key": "shipped:b", "origin": "shipped", "path": "/r/models/b", "card": card},
         {"key": "shipped:e", "origin": "shipped", "path": "/r/models/gtzan", "card": {"name": "Emotify CRNN"}},
         {"key": "shipped:broken", "origin": "shipped", "path": "/r/models/emotify-old", "card": None,
          "error": "bad card"}]
    assert default_model_key(m) == "shipped:e"
    assert default_model_key(m[:3]) == "shipped:b"
    ten = {"key": "shipped:g", "origin": "shipped", "path": "/r/models/gtzan10-musicnn", "card": {"name": "x"}}
    assert default_model_key(m + [ten]) == "shipped:g"  # the 10-genre musicnn model first
    assert default_model_key(m[:2]) == "run:1"
    assert default_model_key([]) is None


# ---------------------------------------------------------------------------------------------------------
# demo classification through the uploader
# ---------------------------------------------------------------------------------------------------------
def _upload(at, name: str, data: bytes, mime: str = "audio/wav"):
    at.file_uploader(key="demo_upload").set_value((name, data, mime))
    at.run()
    return at


def test_demo_classifies_an_uploaded_clip(full_home):
    from core.synth import demo_clip_wav

    at = open_page("demo")
    _upload(at, "tone.wav", demo_clip_wav(2, 10.0))  # class index 2 = "pulse" in core.synth
    assert_clean(at)
    assert not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Predicted genre"] == "pulse"
    assert metrics["Windows"] == "8"  # 10 s, 3 s windows, 1 s hop
    assert len(at.get("plotly_chart")) == 1  # the vote chart
    assert len(at.get("audio")) == 1  # the selected window
    # another aggregation: no new inference, same decision here
    at.selectbox(key="demo_agg").set_value("vote").run()
    assert_clean(at)
    assert {m.label: m.value for m in at.metric}["Windows won"].endswith("%")
    # choose a window with the slider fallback
    slider = [s for s in at.select_slider if s.key.startswith("window:")][0]
    slider.set_value(0).run()
    assert "Window 1 of 8, 0.0–3.0 s" in " ".join(texts(at.caption))


def test_demo_short_clip_is_padded_with_a_note(full_home):
    from core.synth import demo_clip_wav

    at = open_page("demo")
    _upload(at, "short.wav", demo_clip_wav(1, 1.2))
    assert_clean(at)
    assert not at.error
    assert any("zero-padded" in t for t in texts(at.info))
    assert {m.label: m.value for m in at.metric}["Windows"] == "1"


def test_demo_generated_example_and_settings(full_home):
    at = open_page("demo")
    at.segmented_control(key="demo_source").set_value("Generated example").run()
    assert_clean(at)
    assert {m.label for m in at.metric} >= {"Predicted genre", "Windows"}
    at.slider(key="demo_hop_s").set_value(2.0).run()
    assert_clean(at)
    assert {m.label: m.value for m in at.metric}["Windows"] == "5"  # 12 s, 3 s windows every 2 s


@pytest.mark.parametrize("name, data, mime, message", [
    ("not-audio.mp3", b"this is not an mp3 at all " * 50, "audio/mpeg", "could not be read"),
    ("empty.wav", b"", "audio/wav", "empty (0 bytes)"),
    ("notes.txt", b"hello", "text/plain", "not an audio file"),
    ("broken.wav", b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 20, "audio/wav", "could not be read"),
])
def test_demo_bad_uploads_give_a_message(full_home, name, data, mime, message):
    at = open_page("demo")
    _upload(at, name, data, mime)
    assert not at.exception
    errors = texts(at.error)
    assert any(message in t for t in errors), errors
    assert not any("something went wrong" in t for t in errors)
    assert not at.metric


def test_upload_checks_before_decoding():
    from core.audio import MAX_CLIP_BYTES, UploadError, check_upload

    assert check_upload("a.MP3", 10) == ".mp3"
    with pytest.raises(UploadError, match="limit"):
        check_upload("long.wav", MAX_CLIP_BYTES + 1)
    with pytest.raises(UploadError, match="empty"):
        check_upload("a.wav", 0)
    with pytest.raises(UploadError, match="not an audio file"):
        check_upload("a.pdf", 10)


def test_decode_clip_keeps_the_first_minutes_of_a_long_file():
    from core.audio import encode_wav_bytes
    from core.audio import decode_clip
    from core.synth import synth_clip

    data = encode_wav_bytes(synth_clip(1, 20.0, 16000), 16000)
    clip = decode_clip(data, "long.wav", 22050, max_seconds=6.0)
    assert abs(clip.duration_s - 6.0) < 0.01 and clip.sr == 22050
    assert any("first" in n for n in clip.notes)


# ---------------------------------------------------------------------------------------------------------
# engine helpers of the pages
# ---------------------------------------------------------------------------------------------------------
def test_build_args_round_trip():
    from core.__main__ import build_parser
    from core.dataset import SplitConfig, build_dataset_args, params_from_args
    from core.features import FeatureParams

    p = FeatureParams(snippet_s=2.5, overlap_s=0.5, max_snippets=0, selection="random", n_mels=64, log=False,
                      peak_normalize=True, pad_short=True, mode="full", full_clip_s=20.0)
    split = SplitConfig(0.2, 0.15, 7, "/x/split.json")
    args = build_dataset_args("/src", "/out", p, split, 2, 20) + ["--events", "e", "--stop-file", "s"]
    a = build_parser().parse_args(args)
    assert params_from_args(a) == p
    assert (a.val_share, a.test_share, a.split_seed, a.split_file, a.workers, a.limit_per_class) == \
        (0.2, 0.15, 7, "/x/split.json", 2, 20)


def test_paired_sentence_in_plain_words(tmp_path):
    from ui.text import paired_models_sentence, paired_sentence
    from core.store import results_frame

    store = make_test_store(tmp_path / "s", ["a", "b", "c"], seeds=(0, 1, 2, 3, 4, 5))
    df = results_frame(store)
    s = paired_sentence(df, "track_sum", "segment", "test")
    assert s["n"] == 6 and 0 <= s["wins"] <= 6
    assert s["text"].startswith("Track-level (sum) beat segment-level in ")
    assert "paired t-test" in s["text"] and "Wilcoxon" in s["text"]
    # the CRNN against the linear baseline (another model kind, same seeds)
    s = paired_models_sentence(df, ("snippet", "track_sum"), ("linear", "track_sum"), "test")
    assert s["n"] == 6 and s["wins"] == 6 and s["mean_diff"] > 0.1
    assert s["text"].startswith("The snippet CRNN's track-level accuracy beat the linear baseline's in 6 of 6 seeds, "
                                f"mean +{100 * s['mean_diff']:.1f} points, p = ")
    assert paired_models_sentence(df[df["kind"] != "linear"], ("snippet", "track_sum"), ("linear", "track_sum")) \
        is None


def test_experiment_progress_from_events():
    from core.experiment import experiment_plan, experiment_progress

    plan = experiment_plan(["python", "-m", "core", "run-experiment", "/d", "--store", "/s", "--seeds", "2",
                            "--models", "snippet,full"])
    assert plan["n_runs"] == 4 and plan["seeds"] == [0, 1]
    plan3 = experiment_plan(["python", "-m", "core", "run-experiment", "/d", "--store", "/s", "--seeds", "0,4,7",
                             "--models", "snippet,full,linear"])
    assert plan3["n_runs"] == 9 and plan3["models"] == ["snippet", "full", "linear"] and plan3["seeds"] == [0, 4, 7]
    events = [{"state": "running", "phase": "start", "message": "go"},
              {"state": "running", "phase": "train", "run": "r1", "seed": 0, "model": "snippet", "message": "start"},
              {"state": "running", "phase": "batch", "run": "r1", "seed": 0, "model": "snippet", "epoch": 1,
               "batch": 3, "n_batches": 10},
              {"state": "running", "phase": "train", "run": "r1", "seed": 0, "model": "snippet", "epoch": 1,
               "max_epochs": 5, "metrics": {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.4}},
              {"state": "done", "phase": "evaluate", "run": "r1", "seed": 0, "model": "snippet", "message": "ok"},
              {"state": "running", "phase": "train", "run": "r2", "seed": 0, "model": "full", "message": "start"}]
    prog = experiment_progress(events, plan["n_runs"])
    assert prog["n_done"] == 1 and prog["run"] == "r2" and prog["model"] == "full" and prog["curves"] == []
    prog1 = experiment_progress(events[:4], 4)
    # between epochs: epoch 1 done, the bar is on epoch 2 (not "epoch 1, batch 0")
    assert prog1["epoch"] == 2 and prog1["epochs_done"] == 1 and prog1["batch"] == 0
    assert len(prog1["curves"]) == 1 and prog1["max_epochs"] == 5


def test_experiment_progress_knows_max_epochs_from_the_start_and_estimates_the_time_left():
    from core.experiment import experiment_progress, time_left_words

    t0 = 1_000_000.0
    plan = {"state": "running", "phase": "plan", "n_runs": 6, "n_folds": 3, "seeds": [0], "models": ["linear", "snippet"],
            "ts": t0}
    base = {"seed": 0, "model": "linear"}
    events = [plan,
              {**base, "run": "linear-s0-f0-a", "fold": 0, "state": "running", "phase": "train", "ts": t0 + 1,
               "max_epochs": 1, "message": "starting"},
              {**base, "run": "linear-s0-f0-a", "fold": 0, "state": "done", "phase": "evaluate", "ts": t0 + 11}]
    p = experiment_progress(events, 2, now=t0 + 12)
    assert p["n_runs"] == 6 and p["n_folds"] == 3 and p["elapsed_s"] == 12
    # two linear folds left at 10 s each; the snippet CRNN has not run: a lower bound
    assert p["eta_s"] == pytest.approx(20) and p["eta_partial"]
    assert time_left_words(p) == "elapsed 0:12 · at least 0:20 left"
    snip = {"seed": 0, "model": "snippet", "run": "snippet-s0-f0-b", "fold": 0}
    events += [{"seed": 0, "model": "linear", "run": f"linear-s0-f{f}-a", "fold": f, "state": "done",
                "phase": "evaluate", "ts": t0 + 11 + 10 * f} for f in (1, 2)]
    events[-2]["ts"] = t0 + 21
    events += [{**snip, "state": "running", "phase": "train", "ts": t0 + 32, "max_epochs": 10, "message": "starting"},
               {**snip, "state": "running", "phase": "batch", "epoch": 1, "batch": 3, "n_batches": 10,
                "max_epochs": 10, "ts": t0 + 33}]
    p = experiment_progress(events, 2, now=t0 + 34)
    assert p["epoch"] == 1 and p["max_epochs"] == 10 and p["fold"] == 0  # "of max 10" before epoch 1 ends
    assert p["eta_s"] is None and p["eta_partial"]  # nothing known about the CRNN yet
    events.append({**snip, "state": "running", "phase": "train", "epoch": 1, "max_epochs": 10, "ts": t0 + 37,
                   "metrics": {"loss": 1.0, "seconds": 5.0}})
    p = experiment_progress(events, 2, now=t0 + 37)
    # this fold: 9 epochs of 5 s left; the two other folds: at most 10 epochs of 5 s each
    assert p["epoch"] == 2 and p["eta_s"] == pytest.approx(9 * 5 + 2 * 50) and not p["eta_partial"]
    assert time_left_words(p).startswith("elapsed 0:37 · about 2:25 left")


def test_divide_and_conquer_example_is_computed():
    from core.synth import divide_and_conquer_example

    ex = divide_and_conquer_example()
    assert len(ex["starts"]) == 7 and ex["snippet_s"] == 3.0 and ex["overlap_s"] == 1.0
    assert ex["scores"].shape == (7, 5)
    assert ex["classes"][int(ex["total"].argmax())] == ex["true_class"]  # the sum is right ...
    assert any(ex["classes"][int(r.argmax())] != ex["true_class"] for r in ex["scores"])  # ... a snippet is fooled


# ---------------------------------------------------------------------------------------------------------
# background jobs started from the pages (slow: real subprocesses)
# ---------------------------------------------------------------------------------------------------------
def _wait_job(job_dir: Path, timeout: float = 240) -> dict:
    from core.jobs import find_job, job_status

    t0 = time.time()
    while time.time() - t0 < timeout:
        job = find_job(job_dir)
        if job is not None and not job.alive():
            return job_status(job)
        time.sleep(0.5)
    raise TimeoutError(f"job in {job_dir} still running after {timeout} s")


@pytest.mark.slow
def test_build_a_dataset_from_the_page(empty_home):
    from core.synth import make_dataset_folder

    make_dataset_folder(empty_home / "sources" / "tiny", n_classes=2, per_class=4, seconds=7.0)
    at = open_page("data")
    assert_clean(at)
    submit = next(b for b in at.button if b.label == "Build dataset")
    submit.click().run()
    assert_clean(at)
    status = _wait_job(empty_home / "jobs" / "build-tiny")
    assert status["state"] == "done", status
    at.run()
    assert_clean(at)
    assert any("dataset built" in t for t in texts(at.success))
    assert {m.label: m.value for m in at.metric}["Classes"] == "2"


@pytest.mark.slow
def test_stop_and_resume_a_build(empty_home):
    """Stop from the page, the job ends 'stopped', 'Start again' resumes it to completion."""
    from core.synth import make_dataset_folder

    make_dataset_folder(empty_home / "sources" / "slow", n_classes=2, per_class=30, seconds=20.0)
    at = open_page("data")
    next(b for b in at.button if b.label == "Build dataset").click().run()
    job_dir = empty_home / "jobs" / "build-slow"
    from core.jobs import find_job, job_status

    t0 = time.time()
    while time.time() - t0 < 60:  # wait for the first tracks
        st_ = job_status(find_job(job_dir))
        if (st_.get("done") or 0) >= 2:
            break
        time.sleep(0.3)
    at.run()
    stop = [b for b in at.button if b.label == "Stop"]
    assert stop, "no Stop button while the build runs"
    stop[0].click().run()
    status = _wait_job(job_dir)
    if status["state"] == "done":
        pytest.skip("the build finished before the stop request arrived (very fast machine)")
    assert status["state"] == "stopped", status
    at.run()
    assert any("Start it again to resume" in t for t in texts(at.warning))
    next(b for b in at.button if b.label == "Start again (resumes)").click().run()
    status = _wait_job(job_dir)
    assert status["state"] == "done", status
    log = (job_dir / "events.jsonl").read_text()
    assert "already done" in log  # the second run resumed from the finished tracks


@pytest.mark.slow
def test_run_an_experiment_from_the_page(empty_home):
    from core.dataset import build_dataset
    from core.synth import make_dataset_folder

    src = make_dataset_folder(empty_home / "sources" / "tiny", n_classes=2, per_class=5, seconds=7.0)
    build_dataset(src, empty_home / "datasets" / "tiny", workers=1)
    at = open_page("experiment")
    assert_clean(at)
    at.number_input(key="exp_seeds").set_value(1)
    at.selectbox(key="exp_preset").set_value("fast")
    at.multiselect(key="exp_models").set_value(["snippet"])
    at.selectbox(key="exp_cv").set_value("3")  # 5 tracks per class: cross-validated, in 3 folds to be quick
    next(b for b in at.button if b.label == "Start in the background").click().run()
    assert_clean(at)
    assert (empty_home / "jobs" / "experiment" / "job.json").exists()
    status = _wait_job(empty_home / "jobs" / "experiment", timeout=600)
    assert status["state"] == "done", status
    at.run()
    assert_clean(at)
    assert any("Last experiment finished" in t for t in texts(at.success))
    assert "mean ± SD over 1 seed of 3-fold cross-validation" in " ".join(texts(at.markdown))
    assert "every one of the 10 tracks tested once" in " ".join(texts(at.caption))
    # the trained models (one per fold) are offered on the demo page, told apart by their fold
    at.switch_page(PAGES["demo"]).run()
    options = at.selectbox(key="demo_model").options
    if any("Show the" in c.label for c in at.checkbox):
        at.checkbox(key="demo_show_chance").check().run()
        options = at.selectbox(key="demo_model").options
    assert sorted(o.split(", test")[0] for o in options) == [f"snippet CRNN, seed 0, fold {f}/3" for f in (1, 2, 3)]


@pytest.mark.slow
def test_stop_and_resume_an_experiment(empty_home):
    from core.dataset import build_dataset
    from core.jobs import read_events
    from core.synth import make_dataset_folder

    src = make_dataset_folder(empty_home / "sources" / "tiny", n_classes=2, per_class=5, seconds=7.0)
    build_dataset(src, empty_home / "datasets" / "tiny", workers=1)
    job_dir = empty_home / "jobs" / "experiment"
    at = open_page("experiment")
    at.number_input(key="exp_seeds").set_value(1)
    at.selectbox(key="exp_preset").set_value("tuned")
    at.multiselect(key="exp_models").set_value(["snippet"])
    at.number_input(key="exp_epochs").set_value(200)
    at.selectbox(key="exp_cv").set_value("off")  # one run on the dataset's own split
    next(b for b in at.button if b.label == "Start in the background").click().run()
    t0 = time.time()
    while time.time() - t0 < 120:  # until the first epoch is done
        events, _ = read_events(job_dir / "events.jsonl")
        if any(e.get("epoch") and e.get("metrics") for e in events):
            break
        time.sleep(0.5)
    at.run()
    assert_clean(at)
    assert "runs finished: 0 of 1" in " ".join(p.proto.text for p in at.get("progress"))
    next(b for b in at.button if b.label == "Stop").click().run()
    status = _wait_job(job_dir, timeout=120)
    assert status["state"] == "stopped", status
    at.run()
    assert_clean(at)
    assert any("was stopped" in t for t in texts(at.warning))
    next(b for b in at.button if b.label == "Resume").click().run()
    from core.experiment import experiment_plan
    from core.jobs import open_job

    job = open_job(job_dir)
    assert job.alive()
    assert experiment_plan(job.command)["n_runs"] == 1
    events = job_dir / "events.jsonl"
    t0 = time.time()
    while time.time() - t0 < 120 and not (events.exists() and "resuming snippet model" in events.read_text()):
        time.sleep(0.5)
    job.stop()
    assert _wait_job(job_dir, timeout=120)["state"] == "stopped"
    assert "resuming snippet model" in (job_dir / "events.jsonl").read_text()  # from its last epoch


# ---------------------------------------------------------------------------------------------------------
# data sources: zip upload, GTZAN without network
# ---------------------------------------------------------------------------------------------------------
def _zip_of(folder: Path) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(folder.parent).as_posix())
    return buf.getvalue()


def test_zip_upload_becomes_a_source(empty_home, tmp_path):
    from core.synth import make_dataset_folder

    src = make_dataset_folder(tmp_path / "mymusic", n_classes=2, per_class=3, seconds=4.0)
    at = open_page("data")
    at.segmented_control(key="data_how").set_value("Upload a .zip").run()
    at.file_uploader(key="data_zip").set_value(("mymusic.zip", _zip_of(src), "application/zip")).run()
    next(b for b in at.button if b.label == "Unpack").click().run()
    assert_clean(at)
    assert any("Unpacked to" in t and "2 classes, 6 audio files" in t for t in texts(at.success))
    assert (empty_home / "sources" / "mymusic" / "mymusic" / "bass").is_dir()
    assert any(t.startswith("Source:") for t in texts(at.markdown))  # the build form is ready for it


def test_bad_zip_is_a_clear_error(empty_home):
    at = open_page("data")
    at.segmented_control(key="data_how").set_value("Upload a .zip").run()
    at.file_uploader(key="data_zip").set_value(("broken.zip", b"PK\x03\x04 not really a zip", "application/zip"))
    at.run()
    next(b for b in at.button if b.label == "Unpack").click().run()
    assert not at.exception
    assert any("This zip cannot be used" in t and "not a zip archive" in t for t in texts(at.error))
    assert not (empty_home / "sources").exists() or not any((empty_home / "sources").iterdir())


@pytest.mark.slow
def test_gtzan_download_without_network_says_so(empty_home, monkeypatch):
    monkeypatch.setenv("GENRELAB_GTZAN_URL", "http://127.0.0.1:9/genres.tar.gz")  # nothing listens there
    at = open_page("data")
    at.segmented_control(key="data_how").set_value("Download a dataset").run()
    next(b for b in at.button if b.label == "Download GTZAN").click().run()
    status = _wait_job(empty_home / "jobs" / "download-gtzan", timeout=120)
    assert status["state"] == "failed"
    at.run()
    assert not at.exception
    errors = " ".join(texts(at.error))
    assert "GTZAN download failed" in errors and "127.0.0.1" in errors
    assert any(b.label == "Start again (resumes)" for b in at.button)


@pytest.mark.slow
def test_train_the_demo_model_from_the_demo_page(empty_home):
    at = open_page("demo")
    next(b for b in at.button if b.label == "Train the demo model").click().run()
    assert_clean(at)
    status = _wait_job(empty_home / "jobs" / "demo-model", timeout=300)
    assert status["state"] == "done", status
    at.run()
    assert_clean(at)
    assert any("synthetic-demo" in o for o in at.selectbox(key="demo_model").options)


def test_hosted_mode_caps_training_and_says_so(empty_home, monkeypatch):
    from ui.common import HOSTED_CAPS, hosted_mode

    monkeypatch.setenv("GENRELAB_HOSTED", "1")
    assert hosted_mode()
    for page in ("data", "experiment"):
        at = open_page(page)
        assert_clean(at)
        infos = " ".join(texts(at.info))
        if page == "data":
            assert f"at most {HOSTED_CAPS['tracks_per_class']} tracks per class" in infos
    monkeypatch.setenv("GENRELAB_HOSTED", "0")
    assert not hosted_mode()
