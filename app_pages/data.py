"""Data: get audio (folder, zip, Emotify or GTZAN download), build a snippet dataset in the background, explore what was built."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import streamlit as st

from core.audio import slice_wav
from core.dataset import DatasetError, SplitConfig, build_dataset_args, find_identical_build, load_dataset
from core.features import FeatureParams
from core.jobs import find_job, start_job
from core.workspace import describe_source, home_dir, list_datasets, list_sources, safe_name, unique_folder
from ui.charts import counts_figure, envelope, mel_figure, waveform_figure
from ui.common import HOSTED_CAPS, guarded, hosted_mode, hosted_note, show_error
from ui.jobs_view import job_panel, job_running

GTZAN_NOTE = ("1000 30-second clips in 10 genres (blues, classical, country, disco, hiphop, jazz, metal, pop, "
              "reggae, rock), about 1.2 GB, from its Hugging Face mirror (checksum-verified). Tzanetakis & Cook, "
              "IEEE TSAP 2002. The download is resumable: stop it any time and start it again.")
EMOTIFY_NOTE = ("400 one-minute excerpts of Magnatune recordings in 4 genres (classical, electronic, pop, rock), "
                "about 363 MB, with listeners' emotion annotations (`data.csv`), from the dataset's page at Utrecht "
                "University. Aljanaki, Wiering & Veltkamp, Information Processing & Management 2015: cite it "
                "with results. Resumable too; the smaller of the two, and the data of this lab's reference results.")


# ---------------------------------------------------------------------------------------------------------
# cached work
# ---------------------------------------------------------------------------------------------------------
@st.cache_resource(show_spinner=False, max_entries=4)
def _dataset(path: str, stamp: float):
    return load_dataset(path)


def _open_dataset(path: str):
    return _dataset(path, (Path(path) / "card.json").stat().st_mtime)


@st.cache_data(show_spinner=False, max_entries=8)
def _counts(path: str, stamp: float):
    return _dataset(path, stamp).counts()


@st.cache_data(show_spinner="Decoding the track ...", max_entries=6)
def _track_audio(abs_path: str, sr: int) -> np.ndarray:
    from core.audio import load_audio

    return load_audio(abs_path, sr)


@st.cache_data(show_spinner=False, max_entries=32)
def _describe(path: str, stamp: float) -> dict:
    return describe_source(path)


# ---------------------------------------------------------------------------------------------------------
# 1. audio source
# ---------------------------------------------------------------------------------------------------------
def source_section() -> str | None:
    st.subheader("1 · Audio", divider="gray")
    st.caption("One sub-folder per class with audio files inside (wav, au, mp3, flac, ogg, m4a ...), "
               "like GTZAN's `genres/blues/blues.00000.au`.")
    how = st.segmented_control("Where is the audio?", ["Folder on this machine", "Upload a .zip",
                                                       "Download a dataset"],
                               default="Folder on this machine", key="data_how")
    if how == "Upload a .zip":
        return zip_source()
    if how == "Download a dataset":
        return download_source()
    return folder_source()


def download_source() -> str | None:
    """Emotify and GTZAN side by side, each with its download button; the chosen (downloaded) one is returned."""
    left, right = st.columns(2, border=True)
    with left:
        emotify = emotify_source()
    with right:
        gtzan = gtzan_source()
    ready = {k: v for k, v in (("Emotify", emotify), ("GTZAN", gtzan)) if v}
    if len(ready) > 1:
        pick = st.radio("Build from", list(ready), horizontal=True, key="data_download_pick")
        return ready[pick]
    return next(iter(ready.values()), None)


def emotify_source() -> str | None:
    from core.download import EMOTIFY_FOLDER_NAME, EMOTIFY_MARKER_NAME

    return _download_card("Emotify", "4 genres, 363 MB", EMOTIFY_NOTE, "emotify", EMOTIFY_FOLDER_NAME,
                          EMOTIFY_MARKER_NAME)


def gtzan_source() -> str | None:
    from core.download import GTZAN_FOLDER_NAME, GTZAN_MARKER_NAME

    return _download_card("GTZAN", "10 genres, 1.2 GB", GTZAN_NOTE, "gtzan", GTZAN_FOLDER_NAME, GTZAN_MARKER_NAME)


def _download_card(what: str, facts: str, note: str, name: str, folder_name: str, marker_name: str) -> str | None:
    """One dataset to download (``python -m core download-<name>`` as a job into ``sources/<name>``): its
    folder when the download completed, else the download button and the job's panel."""
    dest = home_dir("sources") / name
    target = dest / folder_name
    job_dir = home_dir("jobs") / f"download-{name}"
    st.markdown(f"**{what}** · {facts}")
    st.caption(note)
    if (dest / marker_name).is_file() and target.is_dir():
        st.success(f"{what} is here: `{target}`", icon=":material/check_circle:")
        return str(target)
    if st.button(f"Download {what}", type="primary", disabled=job_running(job_dir), icon=":material/download:",
                 key=f"data_download_{name}"):
        try:
            start_job([f"download-{name}", str(dest), "--remove-archive"], job_dir)  # the data home keeps no zip
            st.rerun()
        except Exception as exc:  # noqa: BLE001
            show_error(exc, "could not start the download")
    job_panel(job_dir, f"{what} download", name, resumable=True,
              finished_hint="It is also listed under “Folder on this machine”.")
    return None


def folder_source() -> str | None:
    known = list_sources()
    options = [s["path"] for s in known]
    if options:
        pick = st.selectbox("Audio folders in the data folder", ["(type a path below)"] + options, index=1,
                            format_func=lambda p: p if p.startswith("(") else
                            f"{Path(p).relative_to(home_dir('sources'))}  ·  "
                            f"{next(s['message'] for s in known if s['path'] == p)}", key="data_known_source")
        if not pick.startswith("("):
            return pick
    path = st.text_input("Folder path", key="data_folder_path", placeholder="/path/to/genres",
                         help="A folder on the machine running this app, with one sub-folder per class.")
    if not path.strip():
        return None
    info = _describe(path.strip(), _mtime(path.strip()))
    if not info["ok"]:
        st.error(info["message"], icon=":material/folder_off:")
        return None
    st.success(info["message"] + ": " + ", ".join(f"{c} ({n})" for c, n in list(info["classes"].items())[:12]),
               icon=":material/folder:")
    return info["path"]


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def zip_source() -> str | None:
    from core.archives import ArchiveError, extract_zip_dataset

    up = st.file_uploader("A .zip with one folder per class", type=["zip"], key="data_zip",
                          help="Unpacked into the data folder's sources/. Hidden files and __MACOSX are skipped. "
                               "Refused: files expanding more than 100x, more than 2 GB unpacked, or a data "
                               "folder past its quota (10 GB; $GENRELAB_HOME_QUOTA_GB).")
    done = st.session_state.get("data_zip_done")
    if up is None:
        return done
    name = st.text_input("Name for this audio folder", value=safe_name(Path(up.name).stem, "upload"),
                         key="data_zip_name")
    if st.button("Unpack", type="primary", icon=":material/unarchive:"):
        dest = unique_folder(home_dir("sources"), safe_name(name, "upload"))
        try:
            with st.spinner("Unpacking and checking the archive ..."):
                root = extract_zip_dataset(up, dest, quota_root=home_dir("sources").parent)  # data-home quota
        except (ArchiveError, FileExistsError, OSError) as exc:
            st.error(f"This zip cannot be used: {exc}", icon=":material/error:")
            return None
        info = describe_source(root)
        st.session_state["data_zip_done"] = str(root)
        st.success(f"Unpacked to `{root}`: {info['message']}.", icon=":material/check_circle:")
        return str(root)
    return done


# ---------------------------------------------------------------------------------------------------------
# 2. build
# ---------------------------------------------------------------------------------------------------------
def _default_name(src: str) -> str:
    p = Path(src)
    name = p.parent.name if p.name == "genres" and p.parent.name else p.name
    return safe_name(name)


def build_section(src: str | None) -> None:
    st.subheader("2 · Build a dataset", divider="gray")
    running = [p for p in sorted(home_dir("jobs").glob("build-*")) if job_running(p)]
    for p in running:  # when one ends, the page reruns and shows its dataset below
        job_panel(p, f"Building “{p.name[6:]}”", p.name,
                  on_finish=lambda n=p.name[6:]: st.session_state.update(data_select_next=n))
    last = st.session_state.get("data_last_build")
    if last and Path(last) not in running:
        name = Path(last).name[len("build-"):]
        job_panel(Path(last), f"Build “{name}”", Path(last).name, resumable=True,
                  finished_hint="The dataset is listed below.")
    else:
        # after a reload: offer to resume any build that was stopped or failed
        for p in sorted(home_dir("jobs").glob("build-*")):
            job = find_job(p)
            if job is not None and p not in running and job.state().get("state") in ("stopped", "failed", "died"):
                job_panel(p, f"Build “{p.name[6:]}”", p.name, resumable=True)
    if not src:
        st.caption("Choose the audio above first.")
        return
    d = FeatureParams()
    # enter_to_submit=False: Enter in a field ("Tracks per class" = 10, Enter) must not start a build; only the
    # button does. Widgets in a form do not rerun the page either, so nothing changes until the click.
    with st.form("build_form", border=True, enter_to_submit=False):
        st.markdown(f"Source: `{src}`")
        name = st.text_input("Dataset name", value=_default_name(src),
                             help="The dataset is written to the data folder's datasets/<name>.")
        mode = st.radio("What to cut", ["snippets", "full clip"], horizontal=True,
                        captions=["3 s snippets, the divide-and-conquer input", "one spectrogram of the first 30 s "
                                  "per track (for the 30 s CRNN; experiments also derive it automatically)"])
        with st.expander("Snippets and features (defaults: the article's)", icon=":material/tune:"):
            c = st.columns(4)
            snippet_s = c[0].number_input("Snippet length (s)", 0.5, 30.0, d.snippet_s, 0.5)
            overlap_s = c[1].number_input("Overlap (s)", 0.0, 29.0, d.overlap_s, 0.5,
                                          help="Overlap of consecutive snippets; 1 s gives snippets every 2 s.")
            max_snippets = c[2].number_input("Max snippets per track", 0, 1000, d.max_snippets, 1,
                                             help="0 = every snippet. 14 covers a 30 s clip at the defaults.")
            selection = c[3].selectbox("Which snippets", ["first", "random"],
                                       help="With more snippets than the maximum: the first N or N at random.")
            c = st.columns(4)
            sample_rate = c[0].number_input("Sample rate (Hz)", 8000, 48000, d.sample_rate, 50)
            n_mels = c[1].number_input("Mel bands", 8, 256, d.n_mels, 1)
            n_fft = c[2].number_input("FFT size", 256, 8192, d.n_fft, 256)
            hop = c[3].number_input("Hop (samples)", 64, 4096, d.hop_length, 64)
            c = st.columns(4)
            log = c[0].checkbox("Decibels (log-mel)", value=d.log)
            peak = c[1].checkbox("Peak-normalise snippets", value=d.peak_normalize)
            pad = c[2].checkbox("Pad short tracks", value=d.pad_short,
                                help="Zero-pad tracks shorter than one snippet instead of skipping them.")
            full_clip_s = c[3].number_input("Full-clip length (s)", 1.0, 600.0, d.full_clip_s, 1.0)
        selection_seed = 0
        with st.expander("Split and scope", icon=":material/call_split:"):
            st.caption("Tracks, not snippets, are split: the snippets of one track never straddle train and test.")
            c = st.columns(4)
            val_share = c[0].number_input("Validation share", 0.0, 0.5, 0.1, 0.05)
            test_share = c[1].number_input("Test share", 0.0, 0.5, 0.1, 0.05)
            split_seed = c[2].number_input("Split seed", 0, 10**6, 0, 1)
            limit = c[3].number_input("Tracks per class", 0, 100000, 0, 10,
                                      help="0 = all. A cap (e.g. 20) makes a quick build on a small machine.")
            n_cpu = max(1, os.cpu_count() or 1)
            c = st.columns([3, 1])
            workers = c[1].number_input("Worker processes", 1, n_cpu, n_cpu)
            split_file = c[0].text_input("Custom split file (optional)",
                                       placeholder="/path/to/split.json or a folder of train/valid/test lists",
                                       help="A JSON {train, val, test: [paths]} or a folder of plain list files "
                                            "(e.g. the fault-filtered GTZAN split). Overrides the shares.")
        submitted = st.form_submit_button("Build dataset", type="primary", icon=":material/construction:")
    if not submitted:
        return
    try:
        params = FeatureParams(sample_rate=int(sample_rate), snippet_s=float(snippet_s), overlap_s=float(overlap_s),
                               max_snippets=int(max_snippets), selection=selection, selection_seed=selection_seed,
                               n_fft=int(n_fft), hop_length=int(hop), n_mels=int(n_mels), log=log,
                               peak_normalize=peak, pad_short=pad, mode="full" if mode == "full clip" else "snippet",
                               full_clip_s=float(full_clip_s))
        split = SplitConfig(float(val_share), float(test_share), int(split_seed), split_file.strip() or None)
    except (ValueError, DatasetError) as exc:
        st.error(f"Check the parameters: {exc}", icon=":material/error:")
        return
    if split.split_file and not Path(split.split_file).exists():
        st.error(f"Split file not found: {split.split_file}", icon=":material/error:")
        return
    info = describe_source(src)
    if not info["ok"]:
        st.error(info["message"], icon=":material/error:")
        return
    ds_name = safe_name(name)
    out = home_dir("datasets") / ds_name
    job_dir = home_dir("jobs") / f"build-{ds_name}"
    if job_running(job_dir):
        st.warning(f"“{ds_name}” is being built already.", icon=":material/hourglass_top:")
        return
    from core.dataset import BuildLock, build_lock_holder

    holder = build_lock_holder(out)  # a build started elsewhere (the CLI, another browser) into the same folder
    if holder is not None:
        st.error(f"Not started: {BuildLock(out).message(holder)}.", icon=":material/lock:")
        return
    if hosted_mode():  # Community Cloud: capped (hosted_note above the form says so)
        limit = min(int(limit) or HOSTED_CAPS["tracks_per_class"], HOSTED_CAPS["tracks_per_class"])
    same = find_identical_build(src, params, split, int(limit))
    if same:
        st.warning(same, icon=":material/content_copy:")
        return
    try:
        start_job(build_dataset_args(src, str(out), params, split, int(workers), int(limit)), job_dir)
    except Exception as exc:  # noqa: BLE001
        show_error(exc, "could not start the build")
        return
    st.session_state["data_last_build"] = str(job_dir)
    st.rerun()


# ---------------------------------------------------------------------------------------------------------
# 3. datasets
# ---------------------------------------------------------------------------------------------------------
def datasets_section() -> None:
    st.subheader("3 · Datasets", divider="gray")
    all_ds = list_datasets()
    complete = [d for d in all_ds if d["complete"]]
    for d in all_ds:
        if not d["complete"] and not job_running(home_dir("jobs") / f"build-{d['name']}"):
            st.caption(f"`{d['name']}`: unfinished build. Build it again with the same parameters to resume.")
    if not complete:
        st.info("No dataset yet. Choose some audio above and build one; it appears here.", icon=":material/info:")
        return
    names = [d["name"] for d in complete]
    pending = st.session_state.pop("data_select_next", None)
    if pending in names:  # a build just finished: show its dataset
        st.session_state["data_dataset"] = pending
    name = st.selectbox("Dataset", names, key="data_dataset",
                        format_func=lambda n: f"{n}  ·  {_summary(next(d for d in complete if d['name'] == n))}")
    rec = next(d for d in complete if d["name"] == name)
    ds = _open_dataset(rec["path"])
    card = ds.card
    c = card["counts"]
    m = st.columns(5)
    m[0].metric("Classes", len(ds.classes))
    m[1].metric("Tracks used", sum(c[s]["tracks"] for s in c))
    m[2].metric("Snippets" if ds.params.mode == "snippet" else "Clips", f"{sum(c[s]['snippets'] for s in c):,}")
    skipped = ds.skipped()
    capped = skipped[skipped["reason"].astype(str).str.startswith("not used: build capped")]
    faulty = skipped.drop(capped.index)
    m[3].metric("Skipped files", len(faulty),
                help="Files that could not be used (unreadable, too short, not audio ...); the list is below."
                + (f" Not counted: {len(capped)} files left out by the cap of {card.get('limit_per_class')} "
                   "tracks per class." if len(capped) else ""))
    m[4].metric("Input", "×".join(str(x) for x in card["input_shape"][:2]), help="frames × mel bands per example")
    st.caption(f"Built {card.get('built_at', '?')} from `{card.get('source')}` · `{ds.path}`")
    for cls, why in (card.get("left_out_classes") or {}).items():
        st.warning(f"Class “{cls}” is not in this dataset: {why}.", icon=":material/warning:")

    counts = _counts(rec["path"], (Path(rec["path"]) / "card.json").stat().st_mtime)
    what = st.segmented_control("Count", ["tracks", "snippets"], default="tracks", key="data_count_what")
    st.plotly_chart(counts_figure(counts, ds.classes, what or "tracks"), config={"displayModeBar": False},
                    key="data_counts")
    if len(capped):  # deliberate, not a fault: said apart from the skipped files
        st.caption(f"Capped build: {card.get('limit_per_class')} tracks per class; {len(capped)} further files "
                   "of the source were not used.")
    with st.expander(f"Skipped files ({len(faulty)})", expanded=0 < len(faulty) <= 10):
        if len(faulty):
            st.dataframe(faulty.reset_index(drop=True), hide_index=True, width="stretch")
        else:
            st.write("None: every file was used" + (" (apart from the cap above)." if len(capped) else "."))
    with st.expander("Build parameters"):
        st.json({"features": card["params"], "split": card.get("split"), "versions": card.get("versions")},
                expanded=1)
    explorer(ds)


def _summary(d: dict) -> str:
    card = d["card"]
    mode = "30 s clips" if card["params"].get("mode") == "full" else f"{card['params'].get('snippet_s')} s snippets"
    return f"{len(card['classes'])} classes, {card.get('n_tracks', '?')} tracks, {mode}"


def explorer(ds) -> None:
    st.markdown("#### Explore a track")
    m = ds.manifest
    usable = m[(~m["skipped"].astype(bool)) & (m["split"] != "")]
    if usable.empty:
        st.caption("No usable track.")
        return
    c = st.columns([1, 1, 3])
    cls = c[0].selectbox("Class", ["all"] + ds.classes, key=f"data_x_class:{ds.path}")
    split = c[1].selectbox("Split", ["all", "train", "val", "test"], key=f"data_x_split:{ds.path}")
    sub = usable
    if cls != "all":
        sub = sub[sub["class"] == cls]
    if split != "all":
        sub = sub[sub["split"] == split]
    if sub.empty:
        c[2].selectbox("Track", ["(no track matches)"], disabled=True)
        return
    idx = c[2].selectbox("Track", list(sub.index), format_func=lambda i: f"{m.at[i, 'path']}  ({m.at[i, 'split']})",
                         key=f"data_x_track:{ds.path}:{cls}:{split}")
    rec = m.loc[idx]
    sp, rows, starts = ds.snippet_rows(int(idx))
    p = ds.params
    if len(rows) == 0:
        st.caption("This track has no snippets in the dataset.")
        return
    k = 0
    if len(rows) > 1:
        k = st.select_slider("Snippet", options=list(range(len(rows))), key=f"data_x_snip:{ds.path}:{idx}",
                             format_func=lambda i: f"{i + 1}: {starts[i]:.1f}–{starts[i] + _len(p):.1f} s")
    y = None
    try:
        y = _track_audio(str(rec["abs_path"]), p.sample_rate)
    except Exception as exc:  # noqa: BLE001 - the source may have moved; the features are still here
        st.warning(f"The track's audio cannot be read ({exc}); showing the stored features only.",
                   icon=":material/warning:")
    left, right = st.columns(2)
    with left:
        if y is not None:
            t, w = envelope(y, p.sample_rate)
            st.plotly_chart(waveform_figure(t, w, starts, _len(p), selected=k,
                                            title=f"{rec['class']} · {rec['duration_s']:.1f} s · "
                                                  f"{len(rows)} snippet{'s' if len(rows) != 1 else ''}"),
                            config={"displayModeBar": False}, key="data_wave")
            st.audio(slice_wav(y, p.sample_rate, starts[k], starts[k] + _len(p)), format="audio/wav")
            st.caption(f"Snippet {k + 1}: {starts[k]:.2f}–{starts[k] + _len(p):.2f} s")
    with right:
        mel = np.asarray(ds.X(sp)[rows[k]])
        st.plotly_chart(mel_figure(mel, p.sample_rate, p.hop_length, float(starts[k]),
                                   title="what the model sees: log-mel spectrogram" if p.log else "mel spectrogram"),
                        config={"displayModeBar": False}, key="data_mel")
        st.caption(f"{mel.shape[0]} frames × {mel.shape[1]} mel bands, as stored in `{sp}_X.npy` "
                   "(before min-max scaling).")


def _len(p: FeatureParams) -> float:
    return p.full_clip_s if p.mode == "full" else p.snippet_s


# ---------------------------------------------------------------------------------------------------------
@guarded()
def main() -> None:
    st.title("Data")
    st.write("Bring audio, cut it into snippets and look at what the models will see.")
    st.caption(f"Data folder: `{home_dir('sources').parent}`")
    if hosted_mode():
        st.info(hosted_note(), icon=":material/cloud:")
    src = source_section()
    build_section(src)
    datasets_section()


main()
