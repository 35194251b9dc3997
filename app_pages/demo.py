"""Demo: classify a clip of any length with any available model and watch every window vote."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import streamlit as st

from core.audio import MAX_CLIP_BYTES, MAX_CLIP_SECONDS, UPLOAD_AUDIO_EXTENSIONS, UploadError, decode_clip, slice_wav
from core.jobs import start_job
from core.errors import GenreLabError
from core.model_card import AGGREGATIONS
from core.synth import DEMO_MODEL_NAME, demo_clip_wav
from core.utils import sha256_bytes
from core.workspace import REPO_ROOT, home_dir, list_tagger_folders
from ui.charts import vote_figure
from ui.common import guarded, show_error
from ui.jobs_view import job_panel, job_running
from ui.nav import page
from ui.state import MODEL_GROUPS, available_models, default_model_key, get_predictor, model_stamp
from ui.text import KIND_DESCRIPTIONS, LEVEL_LABELS

AGG_LABELS = {"sum": "sum of scores (article)", "vote": "majority vote", "logprob": "mean log-probability"}
AGG_AXIS = {"sum": "sum of scores", "vote": "votes (windows won)", "logprob": "mean log-probability"}
RECORD_RATES = {8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000}  # what st.audio_input accepts


# ---------------------------------------------------------------------------------------------------------
# cached work
# ---------------------------------------------------------------------------------------------------------
@st.cache_resource(show_spinner=False, max_entries=3)
def _decoded(clip_hash: str, _data: bytes, name: str, sr: int):
    """Decoded clip at the model's rate (kept without copying; a few clips at most)."""
    return decode_clip(_data, name, sr)


@st.cache_data(show_spinner=False, max_entries=32)
def _classify(model_path: str, stamp: float, clip_hash: str, _data: bytes, name: str, window_s: float | None,
              hop_s: float):
    """Window scores of a clip (aggregation is applied afterwards: it needs no new inference)."""
    pred = get_predictor(model_path, stamp)
    clip = _decoded(clip_hash, _data, name, pred.sample_rate)
    res = pred.predict_array(clip.y, clip.sr, window_s, hop_s, "sum")
    res.notes = list(clip.notes) + list(res.notes)  # the clip's notes (cut, resampled ...) first
    return res


@st.cache_data(show_spinner=False)
def _example_clip(label_index: int, seconds: float, sr: int) -> bytes:
    return demo_clip_wav(label_index, seconds, sr)


# ---------------------------------------------------------------------------------------------------------
# pieces of the page
# ---------------------------------------------------------------------------------------------------------
def no_model() -> None:
    models_dir = home_dir("models")
    job_dir = home_dir("jobs") / "demo-model"
    st.info("No model is available yet. The demo needs a trained model; here is how to get one.",
            icon=":material/info:")
    c1, c2 = st.columns(2, border=True)
    with c1:
        st.markdown("**Quick: a tiny demo model, trained here**")
        st.write("About half a minute on two cores. It learns to tell the generated test sounds apart "
                 "(not music), which is enough to see how the window votes work.")
        running = job_running(job_dir)
        if st.button("Train the demo model", type="primary", disabled=running, icon=":material/model_training:"):
            try:
                start_job(["demo-model", str(models_dir / DEMO_MODEL_NAME)], job_dir)
                st.rerun()
            except Exception as exc:  # noqa: BLE001
                show_error(exc, "could not start the training")
        job_panel(job_dir, "Demo model", "demo-model")
    with c2:
        st.markdown("**Real: a genre model**")
        st.write("Run an experiment on the **Experiment** page: every finished run appears here. "
                 "Or copy a model folder (a `.keras` file with its `model_card.json`) into "
                 f"`{models_dir}/<name>/`.")
        st.page_link(page("experiment"), label="Go to the Experiment page")


def _pct(v) -> str:
    return f"{v:.1%}" if isinstance(v, (int, float)) and v == v else "–"


def model_card_view(card: dict) -> None:
    """A model card (``model_card.json``): what the model is, what it was trained on, how accurate it measured
    and how to reproduce it (the last three for shipped models, written by ``python -m core ship-model``)."""
    p = card.get("params", {})
    td = card.get("training_data") or {}
    if card.get("name"):
        st.markdown(f"**{card['name']}**")
    if card.get("description"):
        st.write(card["description"])
    classes = card.get("classes", [])
    facts = {
        "model": KIND_DESCRIPTIONS.get(card.get("kind"), str(card.get("kind"))),
        "classes": f"{len(classes)}: {', '.join(classes)}",
        "trained on": td.get("source") or card.get("trained_on") or card.get("dataset") or "–",
        "window": f"first {p.get('full_clip_s', 30):g} s" if card.get("kind") == "full"
        else f"{p.get('snippet_s', '–')} s snippets",
        "features": f"{p.get('n_mels')} mel bands, {p.get('sample_rate')} Hz, "
                    f"FFT {p.get('n_fft')}, hop {p.get('hop_length')}",
        "scaling": card.get("norm_method", "–"),
    }
    members = card.get("members") or []
    if members:
        facts["ensemble"] = (f"{len(members)} members, the mean of their class scores: "
                             + ", ".join(f"`{m.get('file')}`" for m in members))
    emb = card.get("embedding") or {}
    if emb:
        facts["embedding"] = f"musicnn {emb.get('network')} features: {' + '.join(emb.get('features') or [])}"
    defaults = [f"{k} {v}" for k, v in (("hop", f"{card['hop_s']:g} s" if card.get("hop_s") else None),
                                        ("aggregation", card.get("aggregation"))) if v]
    if defaults:
        facts["defaults"] = ", ".join(defaults) + " (the model's own test-time settings)"
    if card.get("seed") is not None:
        facts["seed"] = str(card["seed"])
    if card.get("n_folds"):
        facts["cross-validation"] = (f"fold {int(card.get('fold', 0)) + 1} of {card['n_folds']}: trained on "
                                     f"{card['n_folds'] - 2} of {card['n_folds']} folds of its data set, tested on "
                                     "one (the experiment's figures pool all folds)")
    if card.get("n_params"):
        facts["parameters"] = f"{card['n_params']:,}"
    for k, v in (card.get("metrics") or {}).items():
        if isinstance(v, float):
            facts[k.replace("_", " ")] = f"{v:.1%}" if v <= 1 else f"{v:.3g}"
        elif v is not None:
            facts[k.replace("_", " ")] = str(v)
    st.markdown("\n".join(f"- **{k}**: {v}" for k, v in facts.items()))

    if td:
        tracks, snippets, split = td.get("tracks") or {}, td.get("snippets") or {}, td.get("split") or {}
        bits = []
        if tracks:
            bits.append(f"{tracks.get('train', '?')} / {tracks.get('val', '?')} / {tracks.get('test', '?')} "
                        "train / validation / test tracks")
        if snippets.get("train"):
            bits.append(f"{snippets['train']:,} training snippets")
        if split:
            shares = [f"{100 * split[k]:g} % {n}" for k, n in (("val_share", "validation"), ("test_share", "test"))
                      if isinstance(split.get(k), (int, float))]
            bits.append("split by track" + (f" ({', '.join(shares)}" if shares else "")
                        + (f", seed {split['seed']}" if split.get("seed") is not None else "")
                        + (")" if shares else ""))
        st.markdown(f"**Training data:** {td.get('source', '–')}" + (f": {'; '.join(bits)}." if bits else "."))
        if td.get("citation"):
            st.caption(f"Citation: {td['citation']}")

    cv_view(card)
    acc = {k: v for k, v in (card.get("accuracy") or {}).items() if k.endswith(("/val", "/test"))}
    if acc:
        levels = [lvl for lvl in LEVEL_LABELS if any(k.startswith(f"{lvl}/") for k in acc)]
        levels += sorted({k.split("/")[0] for k in acc} - set(levels))
        rows = [f"| {LEVEL_LABELS.get(lvl, lvl)} | {_pct(acc.get(f'{lvl}/val'))} | {_pct(acc.get(f'{lvl}/test'))} |"
                for lvl in levels]
        st.markdown("**Measured accuracy** (this model, on held-out tracks of its data set)\n\n"
                    "| level | validation | test |\n| --- | ---: | ---: |\n" + "\n".join(rows))
        if card.get("selected_by"):
            st.caption(f"Selected by {card['selected_by']}; the test figures played no part in the choice.")

    rep = card.get("reproduction") or {}
    if rep.get("command") or rep.get("preset"):
        st.markdown("**Reproduce**")
        if rep.get("command"):
            st.code(rep["command"], language="bash", wrap_lines=True)
        how = [f"preset {rep['preset']}"] if rep.get("preset") else []
        if rep.get("n_seeds"):
            how.append(f"{rep['n_seeds']} seeds")
        if rep.get("commit"):
            how.append(f"commit `{str(rep['commit']).removesuffix('-dirty')[:10]}`"
                       + (" with local changes" if str(rep["commit"]).endswith("-dirty") else ""))
        if card.get("cv"):
            st.caption(", ".join(how))
        else:
            st.caption(", ".join(how) + ("; then `python -m core ship-model` picks the best seed by validation "
                                         "accuracy." if how else ""))
    with st.popover("Full model card (JSON)"):
        slim = {k: v for k, v in card.items() if k not in ("norm", "config")}
        st.json(slim, expanded=1)


def pick_input(sr: int):
    """``(name, bytes)`` of the chosen clip, or None."""
    source = st.segmented_control("Input", ["Upload a file", "Record", "Generated example"], default="Upload a file",
                                  key="demo_source", label_visibility="collapsed")
    if source == "Record":
        rate = sr if sr in RECORD_RATES else 44100
        rec = st.audio_input("Record a clip with your microphone", sample_rate=rate, key="demo_record")
        then = ", the rate this model was trained on." if rate == sr else f" and then to the model's {sr:,} Hz."
        st.caption(f"Your browser records at its own rate; the recording is resampled to {rate:,} Hz{then}")
        if rec is not None:
            return "recording.wav", rec.getvalue()
        return None
    if source == "Generated example":
        st.caption("A generated test sound (core.synth): handy with the synthetic demo model, or to see what a "
                   "music model makes of a non-musical sound.")
        c1, c2 = st.columns(2)
        from core.synth import CLASS_NAMES

        label = c1.selectbox("Sound", range(len(CLASS_NAMES)), format_func=lambda i: CLASS_NAMES[i], index=1)
        secs = c2.slider("Length (s)", 1.0, 60.0, 12.0, 1.0)
        return f"example-{CLASS_NAMES[label]}.wav", _example_clip(int(label), float(secs), sr)
    up = st.file_uploader(
        "Audio file (any length)", key="demo_upload",
        type=["audio/*"] + list(UPLOAD_AUDIO_EXTENSIONS),
        help=f"{', '.join(e.lstrip('.') for e in UPLOAD_AUDIO_EXTENSIONS)}; up to {MAX_CLIP_BYTES / 1e6:.0f} MB. "
             f"Only the first {MAX_CLIP_SECONDS / 60:g} minutes of longer files are used.")
    if up is None:
        return None
    if up.size > MAX_CLIP_BYTES:  # before reading the bytes into the app
        raise UploadError(f"“{up.name}” is {up.size / 1e6:.0f} MB; the limit is {MAX_CLIP_BYTES / 1e6:.0f} MB. "
                          "Cut the part you want to classify (a minute is plenty) and upload that")
    return up.name, up.getvalue()


def settings(card: dict, model_key: str = "") -> tuple[float | None, float, str]:
    p = card.get("params", {})
    snippet = float(p.get("snippet_s", 3.0))
    full = card.get("kind") == "full"
    hop_default = float(card.get("hop_s") or 1.0)
    agg_default = card.get("aggregation") or "sum"
    if st.session_state.get("_demo_settings_for") != model_key:  # another model: start from its own defaults
        st.session_state["_demo_settings_for"] = model_key
        st.session_state["demo_hop_s"] = min(5.0, max(0.25, round(hop_default * 4) / 4))
        st.session_state["demo_agg"] = agg_default
    with st.expander("Inference settings", icon=":material/tune:"):
        if full:
            st.caption(f"A 30 s model looks once at the first {p.get('full_clip_s', 30):g} s; "
                       "window and hop do not apply.")
        c1, c2, c3 = st.columns(3)
        window = c1.slider("Window (s)", 1.0, 10.0, snippet, 0.5, disabled=full, key="demo_window_s",
                           help=f"Length of each window. The model was trained on {snippet:g} s snippets (the "
                                "article's setting); other lengths work but are outside its training.")
        own = " (this model's default)" if card.get("hop_s") else ""
        hop = c2.slider("Hop (s)", 0.25, 5.0, step=0.25, disabled=full, key="demo_hop_s",
                        help=f"Step between window starts; {hop_default:g} s{own} starts with this model. 1 s means "
                             "3 s windows overlap by 2 s.")
        agg = c3.selectbox("Aggregation", AGGREGATIONS, format_func=AGG_LABELS.get, key="demo_agg",
                           help="How window scores become one answer: summed scores (the article), a majority "
                                "vote of the windows' top classes, or the mean log-probability; "
                                f"{AGG_LABELS[agg_default]}" + (" (this model's default)" if card.get("aggregation")
                                                                else "") + " starts with this model.")
    return (None if full or abs(window - snippet) < 1e-9 else window), hop, agg


def _chart_selection(key: str) -> int | None:
    """Window index clicked in the vote chart (class columns or running-total lines), if any."""
    state = st.session_state.get(key)
    try:
        points = state["selection"]["points"] if state else []
    except (KeyError, TypeError):
        return None
    n_classes = st.session_state.get(f"_classes:{key}", 0)
    for pt in points or []:
        idx = pt.get("point_index", pt.get("point_number"))
        curve = pt.get("curve_number")
        # traces 0..C-1: window columns, C..2C-1: running totals (both indexed by window); 2C: the totals bar
        if idx is not None and (curve is None or curve < 2 * n_classes):
            return int(idx)
    return None


def show_result(res, clip, hop_s: float, clip_hash: str) -> None:
    n = res.n_windows
    c = st.columns(4)
    c[0].metric("Predicted genre", res.predicted)
    share_label = {"sum": "Share of the votes", "vote": "Windows won", "logprob": "Confidence"}[res.aggregation]
    c[1].metric(share_label, f"{res.score:.0%}")
    c[2].metric("Windows", f"{n}", help="Windows scored by the model")
    c[3].metric("Clip length", f"{res.duration_s:.1f} s")
    for note in res.notes:
        st.info(note, icon=":material/info:")

    chart_key = f"votes:{clip_hash[:12]}:{n}"
    st.session_state[f"_classes:{chart_key}"] = len(res.classes)
    slider_key = f"window:{clip_hash[:12]}:{n}"
    if slider_key not in st.session_state:  # start on the most typical window of the predicted class
        st.session_state[slider_key] = int(np.argmax(res.window_scores[:, res.predicted_index]))
    clicked = _chart_selection(chart_key)
    changed = False
    if clicked is not None and 0 <= clicked < n and clicked != st.session_state.get(f"_last:{chart_key}"):
        st.session_state[f"_last:{chart_key}"] = clicked
        st.session_state[slider_key] = clicked
        changed = True
    sel = int(st.session_state[slider_key])
    fig = vote_figure(res.classes, res.window_scores, res.starts, res.ends, hop_s, selected=sel,
                      aggregated=res.aggregated, aggregation_label=AGG_AXIS[res.aggregation])
    # no plotly toolbar: on hover it covered the right panel's title; double-click still resets a zoom
    st.plotly_chart(fig, key=chart_key, on_select="rerun", selection_mode="points",
                    config={"displayModeBar": False})
    if n > 1:
        st.select_slider("Window to play", options=list(range(n)), key=slider_key,
                         format_func=lambda i: f"{i + 1}: {res.starts[i]:.1f}–{res.ends[i]:.1f} s")
    a, b = float(res.starts[sel]), float(res.ends[sel])
    top = res.classes[int(np.argmax(res.window_scores[sel]))]
    st.caption(f"Window {sel + 1} of {n}, {a:.1f}–{b:.1f} s: the model hears **{top}** "
               f"({res.window_scores[sel].max():.0%}). Click a column in the chart or move the slider.")
    st.audio(slice_wav(clip.y, clip.sr, a, b), format="audio/wav", autoplay=changed)

    st.caption(f"Scored in {res.seconds:.1f} s ({res.n_windows} windows).")
    with st.expander("All aggregations side by side"):
        rows = []
        for m in AGGREGATIONS:
            r = res.with_aggregation(m)
            rows.append({"aggregation": AGG_LABELS[m], "predicted": r.predicted, "confidence": f"{r.score:.0%}",
                         "runner-up": r.classes[int(np.argsort(r.aggregated)[-2])] if len(r.classes) > 1 else "–"})
        st.dataframe(rows, hide_index=True, width="stretch")
        st.download_button("Download the window scores (JSON)", json.dumps(res.to_dict(), indent=1),
                           file_name="genre-lab-prediction.json", mime="application/json")


# ---------------------------------------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------------------------------------
@guarded()
def main() -> None:
    st.title("Demo: classify a clip")
    st.write("Upload or record a clip of any length. The model cuts it into overlapping windows, scores each "
             "window, and adds the scores up into one genre.")
    models = available_models()
    usable = [m for m in models if m.get("card") and not m.get("error")]
    broken = [m for m in models if m.get("error")]
    for m in broken:
        st.warning(f"Model folder `{m['path']}` cannot be used: {m['error']}", icon=":material/warning:")
    if not usable:
        no_model()
        return

    listed = pick_models(usable)
    left, right = st.columns([3, 2], gap="large", vertical_alignment="bottom")
    with left:
        keys = [m["key"] for m in listed]
        if st.session_state.get("demo_model") not in keys:
            st.session_state.pop("demo_model", None)
        default = default_model_key(listed) or keys[0]
        key = st.selectbox("Model", keys, format_func=lambda k: next(m["label"] for m in listed if m["key"] == k),
                           index=keys.index(default), key="demo_model",
                           help="Models shipped in models/ (trained on real music) and in your data folder, or "
                                "the finished runs of your experiments (newest first; with cross-validation, "
                                "one model per fold). Its card is at the bottom of the page.")
        model = next(m for m in listed if m["key"] == key)
        card = model["card"]
    with right:  # one line here; the full card is full-width below everything, so it never pushes the clip down
        st.caption(model_summary(card))
    for t in list_tagger_folders():
        where = Path(t["path"])
        where = where.relative_to(REPO_ROOT) if where.is_relative_to(REPO_ROOT) else where
        st.caption(f"Not listed: `{t['name']}`, musicnn's {t.get('model') or ''} tagger (50 tags such as rock, "
                   "jazz, 80s, not genre classes): the musicnn models here are built on it. "
                   f"`python -m core predict --model {where} FILE` prints its tags.")

    classify_section(model, card)
    with st.expander("Model card", icon=":material/badge:"):
        model_card_view(card)


def pick_models(usable: list[dict]) -> list[dict]:
    """The models the selector offers: one group at a time (shipped and your folders, or the experiments'
    runs), experiment models at chance level hidden unless asked for; never empty (``usable`` is not)."""
    groups = {g: [m for m in usable if m.get("group", "shipped") == g] for g in MODEL_GROUPS}
    present = [g for g in MODEL_GROUPS if groups[g]]
    group = present[0]
    if len(present) > 1:
        group = st.segmented_control(
            "Models", present, default=present[0], key="demo_group",
            format_func=lambda g: f"{MODEL_GROUPS[g]} ({len(groups[g])})") or present[0]
    models = groups[group]
    if group == "experiment":
        low = [m for m in models if m.get("at_chance")]
        if low:
            show = st.checkbox(f"Show the {len(low)} model{'s' if len(low) != 1 else ''} at chance level",
                               key="demo_show_chance",
                               help="Runs whose test accuracy is within 5 points of chance (1 / number of classes): "
                                    "they did not learn to tell the classes apart. Hidden by default.")
            if not show and len(low) < len(models):
                models = [m for m in models if not m.get("at_chance")]
            elif not show:
                st.caption("Every experiment model here is at chance level; they are listed anyway.")
    return models


def cv_view(card: dict) -> None:
    """The card's cross-validated accuracy (``cv``: written by ``train-transfer`` and ``ship-ensemble``): every
    track of the data set tested by a model that did not train on it, mean ± SD per aggregation."""
    cv = card.get("cv") or {}
    figures = cv.get("accuracy") or {}
    if not figures:
        return
    chosen = cv.get("chosen_aggregation") or card.get("aggregation")
    over = (f"{cv.get('repeats')} repeats" if cv.get("repeats") else
            f"{len(cv['seeds'])} seeds" if cv.get("seeds") else "its runs")
    rows = [f"| {AGG_LABELS.get(a, a)}{' (default)' if a == chosen else ''} | "
            f"{_pct(f.get('mean'))} ± {_pct(f.get('sd'))} |" for a, f in figures.items() if isinstance(f, dict)]
    st.markdown(f"**Cross-validated accuracy** ({cv.get('folds', '?')}-fold, over all {cv.get('n_tracks', '?')} "
                f"tracks of its data set: each tested by a model that did not train on it; mean ± SD over {over})"
                "\n\n| track-level, aggregation | accuracy |\n| --- | ---: |\n" + "\n".join(rows))
    notes = []
    together = (cv.get("seed_ensemble") or {}).get(chosen), AGG_LABELS.get(chosen, chosen)
    if not isinstance(together[0], (int, float)):  # cards written by ship-ensemble: the sum only
        together = cv.get("seed_ensemble_sum"), AGG_LABELS.get("sum", "sum")
    if isinstance(together[0], (int, float)):
        notes.append(f"The {len(cv.get('seeds') or [])} seeds of a fold together ({together[1]}): "
                     f"{_pct(together[0])}; the shipped ensemble of every fold's models has no held-out "
                     "figure of its own: expect about that.")
    if isinstance(cv.get("hop_s"), (int, float)):
        notes.append(f"Measured with windows every {cv['hop_s']:g} s, the model's default.")
    notes.append("Music unlike the training data (other recordings, other genres' borders) can score lower.")
    st.caption(" ".join(notes))


def cv_accuracy(card: dict) -> float | None:
    """The card's cross-validated track accuracy with its default aggregation, if it has one."""
    cv = card.get("cv") or {}
    agg = cv.get("chosen_aggregation") or card.get("aggregation") or "sum"
    mean = ((cv.get("accuracy") or {}).get(agg) or {}).get("mean")
    return float(mean) if isinstance(mean, (int, float)) else None


def model_summary(card: dict) -> str:
    """One line about a model: kind, classes, training data and its best measured test accuracy."""
    classes = card.get("classes", [])
    bits = [KIND_DESCRIPTIONS.get(card.get("kind"), str(card.get("kind"))).split(" (")[0].split(":")[0],
            f"{len(classes)} classes"]
    if card.get("members"):
        bits.insert(1, f"ensemble of {len(card['members'])}")
    td = card.get("training_data") or {}
    if td.get("source") or card.get("trained_on"):
        bits.append(f"trained on {td.get('source') or card.get('trained_on')}")
    acc = card.get("accuracy") or {}
    if cv_accuracy(card) is not None:
        bits.append(f"cross-validated track accuracy {cv_accuracy(card):.0%}")
    elif isinstance(acc.get("track_sum/test"), (int, float)):
        bits.append(f"track-level test accuracy {acc['track_sum/test']:.0%}")
    return " · ".join(bits) + " · card below"


def classify_section(model: dict, card: dict) -> None:
    """Input, settings and the result for the chosen model."""
    sr = int(card["params"]["sample_rate"])
    try:
        picked = pick_input(sr)
    except UploadError as exc:
        show_error(exc)
        return
    window_s, hop_s, agg = settings(card, model["key"])
    if picked is None:
        st.caption("Waiting for a clip ...")
        return
    name, data = picked
    clip_hash = sha256_bytes(data)
    try:
        with st.spinner("Listening ..."):
            res = _classify(model["path"], model_stamp(model["path"]), clip_hash, data, name, window_s, hop_s)
            clip = _decoded(clip_hash, data, name, sr)
    except GenreLabError as exc:  # unreadable audio, a clip the model cannot take, a damaged model folder
        show_error(exc)
        return
    res = res.with_aggregation(agg)
    show_result(res, clip, 1.0 if card.get("kind") == "full" else hop_s, clip_hash)


main()
