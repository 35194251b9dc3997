"""The table of model kinds (core.kinds) drives every list of kinds: the Keras-free KINDS that model cards are
checked against, the CLI's --models / --kind options, the run-experiment command line the page builds, the
order of a seed's runs, the dashboard's labels, columns, headline bars, bands and colours; a kind put into the
table shows up in all of them. Executors by name, with neutral options (the --ray-* flags as aliases)."""
from __future__ import annotations

import argparse
from dataclasses import replace

import pytest


def _fake_table(monkeypatch, **kw):
    """The table with one more kind, ``fake`` (a reference kind on a band of its own unless ``kw`` says else)."""
    import core.kinds as kinds_mod

    base = kinds_mod.get_kind("linear")
    fake = replace(base, key="fake", model_name="fake_model", label="fake model", description="a fake model",
                   short="fake", headline=("fake:<br>segment", "fake:<br>track"), compared_as=("fake",),
                   band="<b>fake</b> band", cost=-1, **kw)
    monkeypatch.setattr(kinds_mod, "KIND_TABLE", kinds_mod.KIND_TABLE + (fake,))
    return fake


def test_kinds_equal_the_table_and_every_named_function_resolves():
    from core.kinds import KIND_TABLE, COLOURS, NEEDS, kind_keys, resolve
    from core.train_config import KIND_MODEL_NAMES, KINDS

    assert KINDS == kind_keys() == tuple(k.key for k in KIND_TABLE)
    assert KIND_MODEL_NAMES == {k.key: k.model_name for k in KIND_TABLE}
    for k in KIND_TABLE:
        assert k.needs in NEEDS and k.colour in COLOURS and len(k.levels) == len(k.headline) >= 1
        for name in (k.trainer, k.evaluator, k.card_writer):
            if name:
                assert callable(resolve(name)), name
        assert k.max_epochs(argparse.Namespace(max_epochs=7)) >= 1
    assert len({k.cost for k in KIND_TABLE}) == len(KIND_TABLE)  # a definite order within a seed
    assert len({k.short for k in KIND_TABLE}) == len({k.label for k in KIND_TABLE}) == len(KIND_TABLE)  # columns


def test_a_kind_added_to_the_table_shows_up_in_every_list(monkeypatch):
    from core.experiment import experiment_plan, register_cli, run_experiment_args
    from core.kinds import cheap_first, models_help
    from ui.text import (band_labels, compared_words, headline_groups, kind_label, model_choices, one_fit_kinds,
                         paired_comparisons, table_columns, table_help)

    _fake_table(monkeypatch)
    assert model_choices()[-1] == "fake" and kind_label("fake") == "fake model"
    assert ("fake", "segment", "fake:<br>segment") in headline_groups()
    assert band_labels()["fake"] == "<b>fake</b> band"
    assert table_columns()[("fake", "track_sum")] == "fake track (sum)"
    assert table_help()["fake segment"] == "fake model, segment level"
    assert compared_words({"snippet", "fake"}) == ["segment", "track", "fake"]
    assert (("snippet", "track_sum"), ("fake", "track_sum")) in paired_comparisons()
    assert "fake" in one_fit_kinds()  # copied from the linear baseline: one fit
    assert cheap_first(["snippet", "fake", "linear"]) == ["fake", "linear", "snippet"]
    assert models_help().endswith("musicnn and fake")
    # the command line: the page's builder takes it, run-experiment's parser reads it back
    args = run_experiment_args("/d", "/s", seeds=2, models=["snippet", "fake"], cv="off")
    assert experiment_plan(["python", "-m", "core", *args])["models"] == ["snippet", "fake"]
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    sub = parser._subparsers._group_actions[0].choices["run-experiment"]
    assert "fake (fake model)" in next(a.help for a in sub._actions if a.dest == "models")


def test_the_headline_figure_draws_a_new_reference_kind_on_its_band(monkeypatch):
    import pandas as pd

    from ui.charts import BASELINE_COLORS, headline_figure

    _fake_table(monkeypatch)
    summary = pd.DataFrame([{"kind": k, "level": "track_sum", "split": sp, "accuracy_mean": 0.5,
                             "accuracy_sd": 0.1, "n_seeds": 2} for k in ("snippet", "fake") for sp in ("val", "test")])
    fig = headline_figure(summary, None)
    assert list(fig.data[0].x) == ["track level<br>(sum of snippet votes)", "fake:<br>track"]
    assert list(fig.data[0].marker.color)[1] == BASELINE_COLORS["val"]
    assert any(a.text == "<b>fake</b> band" for a in fig.layout.annotations)


def test_run_experiment_args_refuses_what_the_command_does_not_take():
    from core.experiment import ExperimentError, experiment_plan, run_experiment_args

    args = run_experiment_args("/data/ds", "/home/store", seeds=3, models=["snippet", "linear"], preset="fast",
                               cv=3, epochs=4, executor="ray", address=" auto ")
    assert args == ["run-experiment", "/data/ds", "--store", "/home/store", "--seeds", "3", "--models",
                    "snippet,linear", "--preset", "fast", "--cv", "3", "--epochs", "4", "--executor", "ray",
                    "--address", "auto"]
    plan = experiment_plan(["python", "-m", "core", *args])
    assert plan["seeds"] == [0, 1, 2] and plan["models"] == ["snippet", "linear"] and plan["epochs"] == 4
    for bad in ({"models": ["cnn"]}, {"models": []}, {"preset": "best"}, {"executor": "dask"}, {"cv": "2"},
                {"cv": "many"}, {"seeds": "x"}):
        with pytest.raises(ExperimentError):
            run_experiment_args("/d", "/s", **bad)


def test_executors_by_name_with_neutral_options_and_the_old_flags():
    from core.errors import GenreLabError
    from core.runs import (EXECUTORS, ExecutorOptions, LocalExecutor, RunError, add_executor_args,
                           executor_from_args, make_executor)

    assert set(EXECUTORS) == {"local", "ray"}
    assert isinstance(make_executor("local"), LocalExecutor) and not make_executor("local").remote
    with pytest.raises(RunError, match="executor must be local or ray") as e:
        make_executor("dask")
    assert isinstance(e.value, GenreLabError) and isinstance(e.value, ValueError)
    with pytest.raises(RunError, match="cpus-per-task"):
        make_executor("local", ExecutorOptions(cpus_per_task=0))
    p = argparse.ArgumentParser()
    add_executor_args(p)
    new = p.parse_args(["--address", "auto", "--cpus-per-task", "3"])
    old = p.parse_args(["--ray-address", "auto", "--ray-cpus-per-task", "3"])
    assert (new.address, new.cpus_per_task) == (old.address, old.cpus_per_task) == ("auto", 3)
    pytest.importorskip("ray")
    ex = executor_from_args(p.parse_args(["--executor", "ray", "--ray-address", "auto", "--ray-cpus-per-task", "3"]))
    assert ex.remote and ex.name == "ray" and ex.options == ExecutorOptions("auto", 3)
