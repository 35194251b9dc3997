"""Experiment: train the snippet and 30 s CRNNs (and the linear reference baseline) over seeds in the
background; compare the results with each other and with the published figures."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import streamlit as st

from core.experiment import (DEFAULT_PRESET, PRESET_HELP, PRESETS, experiment_groups, experiment_plan,
                             experiment_progress, preset_config, preset_name, run_experiment_args, time_left_words)
from core.kinds import kinds
from core.jobs import find_job, read_events, start_job
from core.reproduce import PUBLISHED
from core.workspace import home_dir, list_datasets
from ui.charts import aggregation_figure, confusion_figure, curves_figure, headline_figure
from ui.common import HOSTED_CAPS, guarded, hosted_mode, hosted_note, show_error
from ui.jobs_view import job_panel
from ui.nav import page
from ui.state import (local_results, reference_files, reference_info, reference_results, results_csv, results_json,
                      run_epochs, run_metrics_extra, store_path, store_stamp)
from ui.text import (CV_LABELS, EXECUTOR_LABELS, LEVEL_LABELS, MONITOR_WORDS, PRESET_LABELS, chance_advice,
                     compared_words, evaluation_basis, kind_label, kind_order, level_label, model_choices,
                     one_fit_kinds, paired_comparisons, paired_models_sentence, paired_sentence, table_columns,
                     table_help)


def job_dir() -> Path:
    return home_dir("jobs") / "experiment"


# ---------------------------------------------------------------------------------------------------------
# 1. run
# ---------------------------------------------------------------------------------------------------------
CV_CHOICES = ["auto", "off", "3", "4", "5", "6", "8", "10"]  # what run-experiment --cv takes (a few of the Ks)


@st.cache_data(show_spinner=False, max_entries=32)
def dataset_facts(path: str, mtime: float) -> dict:
    """What the form says about a dataset: tracks per class and split, what ``--cv auto`` does, the default
    experiment (``core.experiment.default_experiment``)."""
    from core.dataset import load_dataset
    from core.experiment import default_experiment
    from core.folds import max_folds, test_tracks_per_class

    ds = load_dataset(path)
    counts = ds.card.get("counts", {})
    n = {s: int((counts.get(s) or {}).get("tracks") or 0) for s in ("train", "val", "test")}
    return {"defaults": default_experiment(ds), "n": n, "n_tracks": sum(n.values()), "classes": ds.classes,
            "test_per_class": test_tracks_per_class(ds), "max_folds": max_folds(ds)}


def _facts(path: str) -> dict:
    card = Path(path) / "card.json"
    return dataset_facts(path, card.stat().st_mtime if card.exists() else 0.0)


def cv_sentence(facts: dict) -> str:
    """How the chosen dataset will be evaluated with ``--cv auto``, in a sentence."""
    from core.folds import MIN_TEST_PER_CLASS, describe_cv

    n, k = facts["n"], facts["defaults"]["n_folds"]
    if k:
        return (f"Its held-out split has only {facts['test_per_class']} test track(s) per class ({n['test']} in "
                f"all: one track = {100 / max(n['test'], 1):.3g} points), so *Cross-validation: auto* runs "
                f"{describe_cv(k, facts['n_tracks'])}: fold f tests 1/{k} of the tracks, fold f+1 validates, the "
                f"rest train; one track is then {100 / max(facts['n_tracks'], 1):.3g} points.")
    return (f"Its held-out split has {n['test']} test tracks (at least {MIN_TEST_PER_CLASS} per class: one track = "
            f"{100 / max(n['test'], 1):.3g} points), so *Cross-validation: auto* keeps it.")


def _form_defaults(ds_path: str, last: dict) -> dict:
    """The form's values for a dataset: the last experiment's when it ran on this dataset, else the dataset's
    defaults (small datasets: the fast small-data experiment, core.experiment.SMALL_DATA_DEFAULTS)."""
    d = _facts(ds_path)["defaults"]
    out = {"exp_seeds": d["seeds"], "exp_preset": d.get("preset", DEFAULT_PRESET), "exp_models": list(d["models"]),
           "exp_epochs": d["epochs"], "exp_cv": "auto"}
    if last.get("dataset") == ds_path:
        out.update({f"exp_{k}": v for k, v in last.items() if k != "dataset"})
    return out


def _on_dataset_change() -> None:
    ds_path = st.session_state.get("exp_dataset")
    if ds_path:
        for k, v in _form_defaults(ds_path, st.session_state.get("_exp_last", {})).items():
            st.session_state[k] = v


def run_section() -> None:
    st.subheader("Run an experiment", divider="gray")
    job = find_job(job_dir())
    state = job_panel(job_dir(), "Experiment", "experiment", resumable=True, draw_running=live_progress,
                      describe=_describe(job), resume_labels=("Resume", "Try again"), poll_s=1.5)
    if state == "running":
        return
    datasets = [d for d in list_datasets() if d["complete"] and d["card"]["params"].get("mode") != "full"]
    if not datasets:
        st.info("Build a snippet dataset on the Data page first; experiments train on it.", icon=":material/info:")
        st.page_link(page("data"), label="Go to the Data page")
        return
    if hosted_mode():
        st.info(hosted_note(), icon=":material/cloud:")
    last = _last_settings(job)  # the form shows what ran last on a dataset, else that dataset's defaults
    st.session_state["_exp_last"] = last
    paths = [d["path"] for d in datasets]
    if st.session_state.get("exp_dataset") not in paths:
        st.session_state["exp_dataset"] = last["dataset"] if last.get("dataset") in paths else paths[0]
    ds_path = st.selectbox("Dataset", paths, format_func=lambda p: Path(p).name, key="exp_dataset",
                           on_change=_on_dataset_change,
                           help="Snippet datasets of the data folder. The 30 s model's full-clip dataset is derived "
                                "from the same tracks and split automatically.")
    facts = _facts(ds_path)
    for k, v in _form_defaults(ds_path, last).items():
        st.session_state.setdefault(k, v)
    st.caption(f"**{Path(ds_path).name}**: {facts['n_tracks']} tracks, {len(facts['classes'])} classes "
               f"({facts['n']['train']} / {facts['n']['val']} / {facts['n']['test']} train / validation / test). "
               + cv_sentence(facts)
               + (" Defaults for a small dataset: the snippet CRNN with the *small* settings (the recommended recipe "
                  "on a budget), the linear baseline and the pretrained musicnn + head, 2 seeds (no 30 s CRNN: too "
                  "few clips for it); about 5 to 8 minutes for 40 one-minute tracks on 2 cores."
                  if facts["defaults"]["small"] else ""))
    with st.form("exp_form", enter_to_submit=False):
        c = st.columns([1, 1, 1])
        seeds = c[0].number_input("Seeds", 1, 30, key="exp_seeds",
                                  help="Each seed trains every chosen model once (seeds 0, 1, ...). "
                                       "The article used 10.")
        preset = c[1].selectbox("Settings", list(PRESET_HELP), key="exp_preset", format_func=PRESET_LABELS.get,
                                help="\n\n".join(f"**{k}**: {v}" for k, v in PRESET_HELP.items())
                                + "\n\n**recommended** is what learns on small data within a bounded budget "
                                  "(measured in `results/ablation`); **paper** reproduces the article exactly and "
                                  "under-trains on small data (Adam 1e-4).")
        cv = c[2].selectbox("Cross-validation", CV_CHOICES, key="exp_cv",
                            format_func=lambda v: CV_LABELS.get(v, f"{v} folds"),
                            help="**auto**: track-wise stratified 5-fold cross-validation when the dataset's test "
                                 "split has fewer than 5 tracks of some class (every track is tested once per seed, "
                                 "each seed's folds pooled into one figure), else the dataset's own split. A number: "
                                 f"that many folds (at most {facts['max_folds']} here: the smallest class's tracks). "
                                 "Each fold trains every model once: k folds take about k times as long.")
        c = st.columns([2, 1, 1])
        models = c[0].multiselect("Models", model_choices(), key="exp_models", format_func=kind_label,
                                  help="**snippet CRNN**: scores 3 s snippets, a track's snippets vote. "
                                       "**30 s CRNN**: one look at the whole clip. **linear baseline**: per-snippet "
                                       "mel-band mean and standard deviation, softmax regression, voting like the "
                                       "snippet CRNN; the reference every comparison shows (what the deep models add "
                                       "over a simple one). It fits in seconds. **musicnn embedding + head**: a "
                                       "network pretrained on a million songs (MSD) and a small head trained here; "
                                       "its embeddings of the dataset are computed once (about a minute for 40 "
                                       "one-minute tracks), then each head trains in seconds.")
        epochs = c[1].number_input("Max epochs", 1, 500, placeholder="preset's", key="exp_epochs",
                                   help="Empty = the preset's (" + ", ".join(
                                       f"{k} {preset_config(k).max_epochs}" for k in PRESETS)
                                   + "). Early stopping may end a run sooner.")
        c[2].caption(f"Results go to `{store_path()}`. Finished runs are skipped, stopped ones resume.")
        executor, ray_address = "local", ""
        if importlib.util.find_spec("ray") is not None:  # Ray installed: the runs may go to a cluster
            c = st.columns([1, 2])
            executor = c[0].selectbox("Executor", list(EXECUTOR_LABELS), key="exp_executor",
                                      format_func=EXECUTOR_LABELS.get,
                                      help="**local**: one run after the other in this process. **Ray**: each "
                                           "(model, seed, fold) run as a Ray task; every node must see the dataset, "
                                           "its source audio and the results folder at the same paths.")
            ray_address = c[1].text_input("Ray address", key="exp_ray_address", placeholder="auto, HEAD:6379 ...",
                                          help="Empty: $RAY_ADDRESS, else a local Ray started for the run. "
                                               "`auto`: the `ray start` cluster this machine belongs to.")
        else:
            st.caption("Install `requirements-cluster.txt` to run on a Ray cluster.")
        go = st.form_submit_button("Start in the background", type="primary", icon=":material/play_arrow:")
    st.caption(f"Settings **{PRESET_LABELS.get(preset, preset)}**: {PRESET_HELP.get(preset, '')}."
               + (" The article's own settings: expect under-trained models on small datasets (its learning rate "
                  "is 10x lower); pick *recommended* to get models that learn." if preset == "paper" else ""))
    if not go:
        return
    if not models:
        st.error("Choose at least one model.", icon=":material/error:")
        return
    if cv not in ("auto", "off") and int(cv) > facts["max_folds"]:
        st.error(f"{cv} folds need at least {cv} tracks in every class; the smallest class of this dataset has "
                 f"{facts['max_folds']}. Choose fewer folds or *auto*.", icon=":material/error:")
        return
    if hosted_mode():  # Community Cloud: capped, and the page says so (hosted_note above the form)
        seeds = min(int(seeds), HOSTED_CAPS["seeds"])
        epochs = min(int(epochs or HOSTED_CAPS["epochs"]), HOSTED_CAPS["epochs"])
    try:
        args = run_experiment_args(ds_path, store_path(), seeds=int(seeds), models=models, preset=preset, cv=cv,
                                   epochs=int(epochs) if epochs else None, executor=executor, address=ray_address)
        start_job(args, job_dir(), store=store_path())
    except Exception as exc:  # noqa: BLE001 - LockError and friends carry a message for the user
        show_error(exc, "could not start the experiment")
        return
    st.rerun()


def _last_settings(job) -> dict:
    """Dataset, seeds, preset, models, epochs and cross-validation of the last experiment job (empty when there
    is none)."""
    if job is None:
        return {}
    plan = experiment_plan(job.command)
    out: dict = {"dataset": plan["dataset"]}
    if plan["seeds"] == list(range(len(plan["seeds"]))) and 1 <= len(plan["seeds"]) <= 30:
        out["seeds"] = len(plan["seeds"])
    models = [m for m in plan["models"] if m in model_choices()]
    if models:
        out["models"] = models
    if plan["preset"] in PRESET_HELP:
        out["preset"] = plan["preset"]
    if plan["epochs"]:
        out["epochs"] = plan["epochs"]
    if plan.get("cv") in CV_CHOICES:
        out["cv"] = plan["cv"]
    return out


def _plan_words(plan: dict) -> str:
    return f"{Path(plan['dataset']).name}, {len(plan['seeds'])} seeds × {', '.join(map(kind_label, plan['models']))}"


def _describe(job):
    """How the last experiment's outcome reads (``ui.jobs_view`` describe)."""
    what = _plan_words(experiment_plan(job.command)) if job is not None else ""

    def describe(state: str, label: str, message: str) -> str:
        if state == "done":
            return f"Last experiment finished ({what})."
        if state == "stopped":
            return (f"The last experiment ({what}) was stopped. Resume it to continue where it stopped: "
                    "finished runs are kept, the current one continues from its last epoch.")
        return f"The last experiment ({what}) failed: {message}"
    return describe


def live_progress(job, status: dict) -> None:
    """A running experiment (``ui.jobs_view`` draw_running): runs finished, the current run's epoch (of max N)
    and batch, the time elapsed and left, its learning curves; the page reruns when a run finishes (new results
    below)."""
    plan = experiment_plan(job.command)
    events, _ = read_events(job.events_path)
    prog = experiment_progress(events, plan["n_runs"])
    seen = st.session_state.get("exp_seen_done")
    st.session_state["exp_seen_done"] = prog["n_done"]
    if seen is not None and prog["n_done"] != seen:
        st.rerun(scope="app")  # a run finished: refresh the results below
    n_runs = max(prog["n_runs"], 1)
    folds = f" × {prog['n_folds']} folds (cross-validation)" if prog.get("n_folds") else ""
    st.markdown(f"Experiment on **{Path(plan['dataset']).name}**: {prog['n_runs']} runs "
                f"({len(plan['seeds'])} seeds × {', '.join(map(kind_label, plan['models']))}{folds})")
    st.progress(min(prog["n_done"] / n_runs, 1.0), text=f"runs finished: {prog['n_done']} of {prog['n_runs']}")
    if prog["run"]:
        ep, mx = prog["epoch"], prog["max_epochs"]
        fold = f", fold {prog['fold'] + 1} of {prog['n_folds']}" if prog.get("fold") is not None else ""
        what = f"{kind_label(prog['model'])}, seed {prog['seed']}{fold}"
        of_max = f" of max {mx}" if mx else ""
        if prog["phase"] == "evaluate":
            st.progress(1.0, text=f"{what}: evaluating ...")
        elif prog["n_batches"] and prog["batch"] >= prog["n_batches"]:
            st.progress(1.0, text=f"{what}: epoch {ep}{of_max}, validating")
        elif prog["n_batches"] or prog["epochs_done"]:
            n_b = prog["n_batches"] or 0
            batch = f", batch {prog['batch']}/{n_b}" if n_b and prog["batch"] else ", starting"
            st.progress(min(prog["batch"] / n_b, 1.0) if n_b else 0.0, text=f"{what}: epoch {ep}{of_max}{batch}")
        else:
            st.progress(0.0, text=f"{what}: {prog['messages'][-1] if prog['messages'] else 'starting'}")
    else:
        st.progress(0.0, text=prog["messages"][-1] if prog["messages"] else "starting ...")
    words = time_left_words(prog)
    st.caption(words[:1].upper() + words[1:] + (" (early stopping may end runs sooner)"
                                                if prog.get("eta_s") is not None else ""))
    if prog["curves"]:
        st.plotly_chart(curves_figure({f"seed {prog['seed']}": prog["curves"]}), key="exp_live_curves",
                        config={"displayModeBar": False})
    with st.expander("Recent messages"):
        st.text("\n".join(prog["messages"]) or "(none yet)")


# ---------------------------------------------------------------------------------------------------------
# 2. results
# ---------------------------------------------------------------------------------------------------------
def results_section() -> None:
    st.subheader("Results", divider="gray")
    try:
        local = local_results()
    except Exception as exc:  # noqa: BLE001 - e.g. a store written by a newer version
        show_error(exc, "the experiment store cannot be read")
        local = None
    sources: dict[str, str] = {}
    if local is not None and len(local["results"]):
        sources["local"] = f"this lab's experiments ({local['results']['run_id'].nunique()} runs)"
    infos = {str(p): reference_info(p) for p in reference_files()}
    for k, info in infos.items():
        sources[k] = f"reference results: {info['name']}"
    if not sources:
        st.info("No experiment has been run here yet, and no reference results are shipped with the project yet. "
                "Run an experiment above: its results appear here as each run finishes.", icon=":material/info:")
        return
    key = next(iter(sources))
    if "local" in sources and not st.session_state.get("exp_local_seen"):
        # this lab's first results (e.g. an experiment just finished): show them, not the shipped reference
        st.session_state["exp_local_seen"] = True
        st.session_state["exp_source"] = "local"
    if len(sources) > 1:
        key = st.selectbox("Results", list(sources), format_func=sources.get, key="exp_source",
                           help="This lab's own experiments, or the reference results shipped with the project "
                                "(one file per data set in results/reference/).")
    if key == "local":
        st.caption(f"Showing {sources['local']}.")
        store, res, label = str(store_path()), local, "this lab"
    else:
        info = infos[key]
        st.caption(reference_caption(info))
        try:
            store, res = reference_results(Path(key))
        except Exception as exc:  # noqa: BLE001
            show_error(exc, f"the reference results {Path(key).name} cannot be read")
            return
        label = info["name"]
    show_results(store, res, label)


def reference_caption(info: dict) -> str:
    """Which data set a shipped reference export is about and how it was produced."""
    what = [f"{len(info['classes'])} classes"] if info.get("classes") else []
    if info.get("tracks"):
        t = info["tracks"]
        what.append(f"{t['train']}/{t['val']}/{t['test']} train/val/test tracks")
    how = [f"preset {info['preset']}"] if info.get("preset") else []
    counts = sorted(set((info.get("seeds_per_kind") or {}).values()))
    if len(counts) > 1:  # an unfinished reproduction: say how far each model got
        how.append(f"{counts[0]}–{counts[-1]} seeds per model (unfinished)")
    elif info.get("n_seeds"):
        how.append(f"{info['n_seeds']} seeds")
    commit = info.get("commit")
    if commit:
        dirty = commit.endswith("-dirty")
        how.append(f"commit `{commit.removesuffix('-dirty')[:10]}`" + (" with local changes" if dirty else ""))
    return (f"Reference results shipped with the project, data set **{info['name']}**"
            f"{' (' + ', '.join(what) + ')' if what else ''}: produced on real music by `python -m core reproduce`"
            f"{' (' + ', '.join(how) + ')' if how else ''} and exported from its experiment store into "
            f"`results/reference/{info['name']}.json`.")


def show_results(store: str, res: dict, label: str) -> None:
    from core.store import summary_frame

    df = res["results"]
    groups = [g for g in experiment_groups(res["runs"]) if set(g["run_ids"]) & set(df["run_id"])]
    if len(groups) > 1:
        key = st.selectbox("Experiment", [g["key"] for g in groups], key=f"exp_group:{store}",
                           format_func=lambda k: next(g["label"] for g in groups if g["key"] == k),
                           help="Runs on the same dataset with the same training settings form one experiment; "
                                "results are never averaged across experiments.")
        ids = set(next(g for g in groups if g["key"] == key)["run_ids"])
        df = df[df["run_id"].isin(ids)].reset_index(drop=True)
        res = {**res, "runs": [r for r in res["runs"] if r["id"] in ids]}
        summary = summary_frame(df)
    else:
        summary = res["summary"]
    stamp = store_stamp(Path(store))
    n_folds, n_test, n_val = evaluation_of(df)
    n_seeds = int(df["seed"].nunique())
    per_kind = df.groupby("kind")["seed"].nunique()
    has_linear = bool((df["kind"] == "linear").any())
    has_musicnn = bool((df["kind"] == "musicnn").any())
    over = (f"{n_seeds} seed{'s' if n_seeds != 1 else ''}" if per_kind.nunique() <= 1 else
            "seeds: " + ", ".join(f"{kind_label(k)} {int(per_kind[k])}" for k in sorted(per_kind.index,
                                                                                        key=kind_order)))
    compared = compared_words(set(df["kind"]))
    st.markdown(f"#### {' vs '.join(compared)[:1].upper() + ' vs '.join(compared)[1:]}: mean ± SD over {over}"
                + (f" of {n_folds}-fold cross-validation" if n_folds else ", held-out split"))
    if n_folds:
        st.caption(f"Each figure: {evaluation_basis(n_folds, n_test)}; every track is in a validation part once too "
                   "(the fold after its test fold).")
    else:
        st.caption(f"Each test figure: {evaluation_basis(n_folds, n_test)}."
                   + (f" Validation: {evaluation_basis(n_folds, n_val, 'val')}." if n_val else "")
                   + (" With so few test tracks the figures are coarse: cross-validation (*Cross-validation: auto* or "
                      "a number of folds) tests every track once per seed." if n_test and n_test < 20 else ""))
    configs = [r.get("config") for r in res["runs"] if r.get("kind") in {k.key for k in kinds() if k.uses_config}]
    cfg = configs[0] if configs else None
    if isinstance(cfg, str):
        import json

        cfg = json.loads(cfg)
    if cfg:
        p = preset_name(cfg)
        st.caption(f"Training settings: {PRESET_LABELS.get(p, p) if p else 'custom'}"
                   f" (learning rate {cfg.get('lr', 1e-4):g}, best epoch by "
                   f"{MONITOR_WORDS.get(cfg.get('monitor', 'val_loss'), 'val loss')}).")
    first = df.iloc[0]
    extra = run_metrics_extra(store, stamp, first["run_id"], first["level"], first["split"]) or {}
    n_classes = len(extra.get("classes") or []) or None
    warn = chance_warning(summary, n_classes, cfg, res["runs"], n_folds,
                          n_test if n_folds else None)  # pooled folds: every track of the dataset once
    if warn:
        st.warning(warn, icon=":material/warning:")
    st.plotly_chart(headline_figure(summary, PUBLISHED, label), key="exp_headline", config={"displayModeBar": False})
    st.caption(f"Grey hatched bars: published (Hilsdorf 2022, full GTZAN): segment {PUBLISHED['segment_best_val']:.1%} "
               f"best validation accuracy, track level about +{PUBLISHED['track_gain_points']:g} points, 30 s model "
               f"{PUBLISHED['full_mean']:.1%} ± {PUBLISHED['full_sd']:.1%}. Error bars: one standard deviation over "
               "seeds. Our numbers depend on the dataset; compare them with the published ones only on full GTZAN."
               + (" Light bars on the shaded band: the **linear baseline** (per-snippet mel-band mean and standard "
                  "deviation, softmax regression), scored on the same snippets and tracks; its fit is convex and "
                  "deterministic, so every seed gives the same figure." if has_linear else "")
               + (" **Pretrained musicnn** + head: embeddings of a network trained on a million songs (MSD), a small "
                  "classifier on top, the same windows and the same tracks." if has_musicnn else ""))
    comparisons = [lambda sp: paired_sentence(df, "track_sum", "segment", sp)] + \
        [lambda sp, a=a, b=b: paired_models_sentence(df, a, b, sp) for a, b in paired_comparisons()]
    for split in ("test", "val"):
        lines = [s["text"] for s in (f(split) for f in comparisons) if s]
        if lines:
            where = "every track once, the folds pooled" if n_folds else "held-out tracks"
            st.markdown(f"**{f'Test** ({where})' if split == 'test' else 'Validation**'}:\n"
                        + "\n".join(f"- {t}" for t in lines))

    tab_seed, tab_curves, tab_cm, tab_agg = st.tabs(["Per seed", "Learning curves", "Confusion matrix",
                                                     "Aggregation"])
    with tab_seed:
        split = st.segmented_control("Split", ["test", "val"], default="test", key="exp_seed_split",
                                     format_func={"test": "test", "val": "validation"}.get) or "test"
        table = per_seed_table(df, res["runs"], split)
        if len(table) and "seed" in table.columns:
            n_items = n_test if split == "test" else n_val
            table.insert(1, "evaluation", (f"{n_folds}-fold cross-validation" if n_folds else
                                           f"held-out: {n_items} tracks") if n_items else
                         ("cross-validation" if n_folds else "held-out split"))
        # fixed widths: the seed and accuracy columns narrow, so that seven approaches fit beside the evaluation
        st.dataframe(table, hide_index=True, width="stretch", column_config={
            "seed": st.column_config.NumberColumn("seed", width=45),
            "evaluation": st.column_config.TextColumn("evaluation", width=155, help=(
                "What each seed's figure rests on: every track once (cross-validation, the folds pooled"
                + (f"; {n_items} tracks" if n_folds and n_items else "") + ") or the dataset's held-out tracks.")),
            **{c: st.column_config.NumberColumn(c, format="%.1f %%", help=table_help().get(c),
                                                width=int(18 + 6.3 * len(c)))  # as wide as the header
               for c in table.columns if c not in ("seed", "evaluation")}})
        st.caption(f"Accuracy in % per seed on the {'test' if split == 'test' else 'validation'} split"
                   + (f", each seed's {n_folds} folds pooled (every track once)" if n_folds else
                      ", the dataset's held-out tracks")
                   + ". CRNN = the snippet CRNN; linear = the linear baseline (majority vote and log-prob "
                     "aggregation: the Aggregation tab).")
        ep = epochs_table([r for r in res["runs"] if r["kind"] not in one_fit_kinds()])
        if len(ep):
            st.dataframe(ep, hide_index=True, width="content")
            st.caption("How many epochs each CRNN (and musicnn head) trained, and its best epoch: the one kept"
                       + (f", fold by fold (fold 1 to {n_folds})." if n_folds else
                          " (with the validation figure it was chosen on)."))
        c1, c2 = st.columns(2)
        c1.download_button("Download results (CSV)", results_csv(store, stamp), file_name="genre-lab-results.csv",
                           mime="text/csv", icon=":material/download:")
        c2.download_button("Download full export (JSON)", results_json(store, stamp),
                           file_name="genre-lab-results.json", mime="application/json", icon=":material/download:",
                           help="The store's export format: core.store.import_results reads it into another store.")
    runs = [r for r in res["runs"] if r["id"] in set(df["run_id"]) or r["status"] != "done"
            or r.get("fold") is not None]
    with tab_curves:
        curve_kinds = sorted({r["kind"] for r in runs if r["kind"] not in one_fit_kinds()}, key=kind_order)
        if curve_kinds:
            kind = st.segmented_control("Model", curve_kinds, default=curve_kinds[0], format_func=kind_label,
                                        key="exp_curves_kind") or curve_kinds[0]
            hist = {f"seed {r['seed']}" + (f" fold {r['fold'] + 1}" if r.get("fold") is not None else ""):
                    run_epochs(store, stamp, r["id"]) for r in runs if r["kind"] == kind}
            hist = {k: v for k, v in hist.items() if v}
            if hist:
                st.plotly_chart(curves_figure(hist), key="exp_curves", config={"displayModeBar": False})
            else:
                st.caption("No per-epoch history recorded for these runs.")
        if any(r["kind"] in one_fit_kinds() for r in runs):
            st.caption("The linear baseline is fitted in one step (L-BFGS on a convex problem): it has no learning "
                       "curve.")
    with tab_cm:
        confusion_tab(store, stamp, df)
    with tab_agg:
        agg_kinds = [k.key for k in kinds() if k.aggregations]
        if (summary["kind"].isin(agg_kinds) & summary["level"].str.startswith("track")).any():
            st.plotly_chart(aggregation_figure(summary), key="exp_agg", config={"displayModeBar": False})
            st.caption("Three ways to turn window scores into a track's class: sum of scores (the article), "
                       "majority vote of the windows' top classes, mean log-probability"
                       + (" (lighter bars: the linear baseline's snippets aggregated the same ways)."
                          if has_linear else "."))
            lines = []
            for kind in agg_kinds:
                for split in ("test", "val"):
                    for other in ("track_vote", "track_logprob"):
                        s = paired_sentence(df, "track_sum", other, split, kind)
                        if s and s["n"] > 1 and (kind == agg_kinds[0] or (s["p"] is not None and s["p"] == s["p"])):
                            lines.append(f"- {kind_label(kind)}, {'test' if split == 'test' else 'validation'}: "
                                         f"{s['text']}")
            if lines:
                st.markdown("\n".join(lines))
        else:
            st.caption("No track-level results yet.")


def evaluation_of(df: pd.DataFrame) -> tuple[int | None, int | None, int | None]:
    """``(n_folds, test tracks, validation tracks)`` of an experiment's results: the folds of its pooled runs
    (None: the held-out split) and the tracks each seed's figure rests on (from its track-level rows)."""
    nf = df["n_folds"].dropna() if "n_folds" in df.columns else pd.Series([], dtype=float)
    n_folds = int(nf.iloc[0]) if len(nf) and nf.iloc[0] else None

    def tracks(split: str) -> int | None:
        rows = df[(df["split"] == split) & df["level"].isin(["track_sum", "full"])]["n"].dropna()
        return int(rows.max()) if len(rows) else None

    return n_folds, tracks("test"), tracks("val")


def chance_warning(summary: pd.DataFrame, n_classes: int | None, config: dict | None, runs: list[dict] | None = None,
                   n_folds: int | None = None, n_tracks: int | None = None) -> str | None:
    """A sentence when the CRNNs score at chance level on the test split, with what to try: only what this
    experiment did not already do (``ui.text.chance_advice`` reads its settings, models and runs)."""
    if not n_classes or summary.empty:
        return None
    chance = 1.0 / n_classes
    lab = [k for k in kinds() if k.colour == "lab"]  # the CRNNs trained here from scratch
    crnn = summary[(summary["split"] == "test") & summary["kind"].isin([k.key for k in lab])
                   & summary["level"].isin({lvl for k in lab for lvl in k.levels})]
    low = [(k, f"{kind_label(k)}, {level_label(lv)}") for k, lv, m in
           zip(crnn["kind"], crnn["level"], crnn["accuracy_mean"]) if m <= chance + 0.05]
    if not low:
        return None
    runs = runs or []
    low_kinds = {k for k, _ in low}
    best = [r.get("best_epoch") for r in runs if r.get("kind") in low_kinds and r.get("best_epoch")]
    models = sorted({r.get("kind") for r in runs if r.get("kind")})
    n_tracks = n_tracks or _dataset_tracks(runs)
    per_class = round(n_tracks / n_classes) if n_tracks else None
    tips = chance_advice(config, models, n_folds, per_class, best)
    return (f"At chance level ({chance:.0%} for {n_classes} classes): {'; '.join(t for _, t in low)}. Try: "
            + "; ".join(tips[:3]) + ".")


def _dataset_tracks(runs: list[dict]) -> int | None:
    """The tracks of the (snippet) dataset the runs trained on, from its card when it is still there."""
    from core.folds import fold_parent
    from core.utils import read_json

    for r in runs:
        if r.get("kind") in {k.key for k in kinds() if k.needs != "full_twin"} and r.get("dataset"):
            card = Path(fold_parent(str(r["dataset"]))) / "card.json"
            try:
                counts = read_json(card).get("counts", {}) if card.is_file() else {}
                return sum(int((counts.get(sp) or {}).get("tracks") or 0) for sp in ("train", "val", "test")) or None
            except (OSError, ValueError, AttributeError):
                return None
    return None


def per_seed_table(df: pd.DataFrame, runs: list[dict], split: str = "test") -> pd.DataFrame:
    """Accuracy per seed (rows) and approach (columns, those of the headline) on one split, in %."""
    columns = table_columns()
    d = df[(df["split"] == split) & pd.Series([kl in columns for kl in zip(df["kind"], df["level"])],
                                              index=df.index)].copy()
    if d.empty:
        return pd.DataFrame({"seed": []})
    d["column"] = [columns[kl] for kl in zip(d["kind"], d["level"])]
    t = d.pivot_table(index="seed", columns="column", values="accuracy", aggfunc="first")
    t = t[[c for c in columns.values() if c in t.columns]] * 100
    return t.reset_index()


def epochs_table(runs: list[dict]) -> pd.DataFrame:
    """How long each CRNN and musicnn head trained, one row per seed and model: the epochs run and the best epoch
    (with cross-validation fold by fold; held out, with the value it was chosen on). The linear baseline is one
    L-BFGS fit: no epochs to speak of."""
    groups: dict[tuple[int, str], list[dict]] = {}
    for r in runs:
        if r["kind"] in one_fit_kinds() or not r.get("epochs") or r.get("status") != "done":
            continue
        if r.get("fold") is None and r.get("n_folds"):  # a pooled run: its folds are the runs
            continue
        groups.setdefault((r["seed"], r["kind"]), []).append(r)
    rows = []
    for (seed, kind), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kind_order(kv[0][1]))):
        rs = sorted(rs, key=lambda r: -1 if r.get("fold") is None else r["fold"])
        ran = sorted({int(r["epochs"]) for r in rs})
        best = ", ".join(str(r["best_epoch"] or "–") for r in rs)
        if len(rs) == 1 and rs[0].get("monitor") and rs[0].get("best_value") is not None:
            best += f" ({MONITOR_WORDS.get(rs[0]['monitor'], rs[0]['monitor'])} {rs[0]['best_value']:.3g})"
        rows.append({"seed": seed, "model": kind_label(kind),
                     "epochs run": ", ".join(str(int(r["epochs"])) for r in rs) if len(ran) > 1 else str(ran[0]),
                     "best epoch": best})
    return pd.DataFrame(rows, columns=["seed", "model", "epochs run", "best epoch"])


def confusion_tab(store: str, stamp: float, df: pd.DataFrame) -> None:
    if df.empty:
        return
    c = st.columns(3)
    combos = df[["kind", "level"]].drop_duplicates().itertuples(index=False)
    levels = list(LEVEL_LABELS)  # the models in the headline's order, the CRNN first
    combos = sorted(((k, lvl) for k, lvl in combos), key=lambda kl: (
        kind_order(kl[0]), levels.index(kl[1]) if kl[1] in levels else 9))
    first = next((i for i, kl in enumerate(combos) if kl[1] in ("track_sum", "full")), 0)  # the article's figure
    combo = c[0].selectbox("Model and level", combos, index=first, key="exp_cm_level",
                           format_func=lambda kl: f"{kind_label(kl[0])} · {level_label(kl[1])}")
    split = c[1].selectbox("Split", ["test", "val"], key="exp_cm_split")
    sub = df[(df["kind"] == combo[0]) & (df["level"] == combo[1]) & (df["split"] == split)]
    if sub.empty:
        st.caption("No results for this combination.")
        return
    seeds = ["all seeds (summed)"] + [int(s) for s in sorted(sub["seed"].unique())]
    seed = c[2].selectbox("Seed", seeds, key="exp_cm_seed")
    chosen = sub if isinstance(seed, str) else sub[sub["seed"] == seed]
    total, classes = None, None
    for run_id in chosen["run_id"]:
        extra = run_metrics_extra(store, stamp, run_id, combo[1], split)
        if not extra or "confusion" not in extra:
            continue
        import numpy as np

        m = np.asarray(extra["confusion"])
        total = m if total is None else total + m
        classes = extra.get("classes")
    if total is None:
        st.caption("No confusion matrix stored for these runs.")
        return
    acc = float(np.trace(total) / total.sum()) if total.sum() else 0.0
    st.plotly_chart(confusion_figure(total, classes or [str(i) for i in range(len(total))],
                                     title=f"accuracy {acc:.1%} on {int(total.sum())} items"),
                    key="exp_cm", config={"displayModeBar": False})


# ---------------------------------------------------------------------------------------------------------
@guarded()
def main() -> None:
    st.title("Experiment")
    st.write("Does voting over 3-second snippets beat single snippets and a model that hears the whole 30 s? "
             "And what do the deep models add over a simple one? Train both CRNNs and a linear reference "
             "baseline over several seeds and see, with the spread.")
    run_section()
    results_section()


main()
