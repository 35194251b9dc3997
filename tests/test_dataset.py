"""Dataset engine: features, splits, bad input, resume, loader, CLI."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT, gtzan_path, shared_path
from core.dataset import (DatasetError, SplitConfig, build_dataset, load_dataset, read_split_file,
                          stratified_split)
from core.features import FeatureParams, mel_spectrogram, snippet_reference, snippet_start_frames, track_snippets
from core.synth import make_dataset_folder, synth_clip


# --- features ----------------------------------------------------------------------------------------------
def test_defaults_give_130_by_100_snippets_and_1292_frame_clips():
    p = FeatureParams()
    assert (p.snippet_frames, p.n_mels) == (130, 100)
    assert p.full_frames == 1292
    X, starts = track_snippets(synth_clip(0, 30.0), p)
    assert X.shape == (14, 130, 100)
    assert np.allclose(np.diff(starts), 2.0, atol=p.hop_length / p.sample_rate)


def test_slices_of_one_track_mel_match_per_snippet_computation():
    p = FeatureParams()
    rng = np.random.default_rng(1)
    y = (rng.standard_normal(22050 * 20) * 0.1).astype(np.float32)
    X, _ = track_snippets(y, p, select=False)
    starts = snippet_start_frames(y.size, p)
    e = p.edge_frames
    assert len(starts) == X.shape[0] == 9
    for i, f in enumerate(starts):
        ref = snippet_reference(y, f, p)
        np.testing.assert_allclose(X[i, e:-e], ref[e:-e], atol=1e-3)
        # the edge frames differ (zero padding vs real neighbours): that is the documented exception
    assert not np.allclose(X[1, :e], snippet_reference(y, starts[1], p)[:e], atol=1e-3)


def test_peak_normalisation_is_exact_in_the_db_domain():
    p = FeatureParams(peak_normalize=True)
    y = synth_clip(1, 9.0) * 0.25
    X, _ = track_snippets(y, p, select=False)
    f = snippet_start_frames(y.size, p)[1]
    seg = y[f * p.hop_length: f * p.hop_length + p.snippet_samples]
    ref = mel_spectrogram(seg / np.abs(seg).max(), p)
    e = p.edge_frames
    np.testing.assert_allclose(X[1, e:-e], ref[e:-e], atol=1e-3)


def test_random_selection_is_seeded_and_first_takes_the_first():
    y = synth_clip(2, 40.0)
    first, s1 = track_snippets(y, FeatureParams(max_snippets=5))
    assert np.allclose(s1, [0, 2, 4, 6, 8], atol=0.02)
    r1, a = track_snippets(y, FeatureParams(max_snippets=5, selection="random", selection_seed=3), key="x")
    r2, b = track_snippets(y, FeatureParams(max_snippets=5, selection="random", selection_seed=3), key="x")
    _, c = track_snippets(y, FeatureParams(max_snippets=5, selection="random", selection_seed=4), key="x")
    assert np.array_equal(a, b) and np.array_equal(r1, r2)
    assert not np.array_equal(a, c)


# --- splits ----------------------------------------------------------------------------------------------
def test_stratified_split_is_seeded_and_per_class():
    keys = {c: [f"{c}/{c}.{i:05d}" for i in range(100)] for c in ("a", "b")}
    s = stratified_split(keys, 0.1, 0.1, seed=0)
    assert s == stratified_split(keys, 0.1, 0.1, seed=0)
    for c in ("a", "b"):
        vals = [s[k] for k in keys[c]]
        assert (vals.count("train"), vals.count("val"), vals.count("test")) == (80, 10, 10)
    assert s != stratified_split(keys, 0.1, 0.1, seed=1)


def test_build_defaults_track_wise_split(tmp_path):
    src = make_dataset_folder(tmp_path / "src", n_classes=3, per_class=10, seconds=7.0)
    out = build_dataset(src, tmp_path / "ds", workers=1)
    ds = load_dataset(out)
    assert ds.classes == ["bass", "pulse", "tone"]
    assert ds.card["input_shape"] == [130, 100, 1]
    counts = {s: ds.card["counts"][s]["tracks"] for s in ("train", "val", "test")}
    assert counts == {"train": 24, "val": 3, "test": 3}
    seen: dict[int, str] = {}
    for s in ("train", "val", "test"):
        X = ds.X(s)
        assert X.shape[1:] == (130, 100) and X.dtype == np.float32
        assert len(ds.y(s)) == len(ds.track(s)) == X.shape[0]
        for t in set(ds.track(s).tolist()):
            assert seen.setdefault(t, s) == s, "a track's snippets are in two splits"
        # every class in every split
        assert set(ds.y(s).tolist()) == {0, 1, 2}
    split = json.loads((out / "split.json").read_text())
    assert sum(len(v) for v in split.values()) == 30
    # snippet -> track index points at manifest rows of the right class and split
    m = ds.manifest
    for s in ("val", "test"):
        for t, lab in zip(ds.track(s), ds.y(s)):
            assert m.iloc[t]["split"] == s and ds.classes.index(m.iloc[t]["class"]) == lab


def test_norm_stats_come_from_the_training_split_only(tmp_path, genre_folder):
    ds = load_dataset(build_dataset(genre_folder, tmp_path / "ds", workers=1))
    tr = np.asarray(ds.X("train"), dtype=np.float64)
    assert ds.norm["min"] == pytest.approx(tr.min()) and ds.norm["max"] == pytest.approx(tr.max())
    np.testing.assert_allclose(ds.norm["mean"], tr.mean(axis=(0, 1)), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ds.norm["std"], tr.std(axis=(0, 1)), rtol=1e-3, atol=1e-3)
    Xn, _ = ds.load_split("train")
    assert Xn.min() == pytest.approx(0.0, abs=1e-6) and Xn.max() == pytest.approx(1.0, abs=1e-6)
    Xs = ds.normalize(np.asarray(ds.X("train")), "standard")
    assert abs(float(Xs.mean())) < 1e-3


def test_full_clip_mode(tmp_path, genre_folder):
    p = FeatureParams(mode="full", full_clip_s=10.0)
    ds = load_dataset(build_dataset(genre_folder, tmp_path / "full", p, workers=1))
    assert ds.X("train").shape[1:] == (p.full_frames, 100)
    assert ds.card["counts"]["train"]["snippets"] == ds.card["counts"]["train"]["tracks"]


# --- bad input -------------------------------------------------------------------------------------------
def test_bad_files_are_listed_as_skipped_with_reasons(tmp_path, genre_folder):
    c = genre_folder / "bass"
    (c / "corrupt.mp3").write_bytes(b"\xff\xfb" + os.urandom(3000))
    (c / "empty.wav").write_bytes(b"")
    (c / "text.wav").write_text("this is not audio")
    sf.write(c / "silent.wav", np.zeros(22050 * 5, np.float32), 22050)
    sf.write(c / "short.wav", synth_clip(0, 1.0), 22050)
    (c / ".hidden.wav").write_bytes(b"x")
    (c / "notes.txt").write_text("hello")
    stereo = np.stack([synth_clip(0, 6.0, 44100), synth_clip(0, 6.0, 44100, seed=5)], axis=1)
    sf.write(c / "stéréo 44k ♪.flac", stereo, 44100)
    ds = load_dataset(build_dataset(genre_folder, tmp_path / "ds", workers=2))
    m = ds.manifest.set_index("path")
    reasons = {p: m.loc[f"bass/{p}", "reason"] for p in
               ["corrupt.mp3", "empty.wav", "text.wav", "silent.wav", "short.wav", ".hidden.wav", "notes.txt"]}
    assert all(m.loc[f"bass/{p}", "skipped"] for p in reasons)
    assert "empty" in reasons["empty.wav"]
    assert "not a readable audio file" in reasons["corrupt.mp3"]
    assert "not a readable audio file" in reasons["text.wav"]
    assert "silent" in reasons["silent.wav"]
    assert "shorter than one snippet" in reasons["short.wav"]
    assert reasons[".hidden.wav"] == "hidden file"
    assert "extension" in reasons["notes.txt"]
    row = m.loc["bass/stéréo 44k ♪.flac"]
    assert not row["skipped"] and row["n_snippets"] == 2 and row["duration_s"] == pytest.approx(6.0, abs=0.01)


def test_pad_short_keeps_short_tracks(tmp_path, genre_folder):
    sf.write(genre_folder / "tone" / "short.wav", synth_clip(1, 1.2), 22050)
    ds = load_dataset(build_dataset(genre_folder, tmp_path / "ds", FeatureParams(pad_short=True), workers=1))
    row = ds.manifest.set_index("path").loc["tone/short.wav"]
    assert not row["skipped"] and row["n_snippets"] == 1


def test_errors_before_any_work(tmp_path):
    one = make_dataset_folder(tmp_path / "one", n_classes=1, per_class=5, seconds=4)
    with pytest.raises(DatasetError, match="at least two class"):
        build_dataset(one, tmp_path / "o1")
    few = make_dataset_folder(tmp_path / "few", n_classes=2, per_class=5, seconds=4)
    for f in list((few / "tone").iterdir())[2:]:
        f.unlink()
    with pytest.raises(DatasetError, match="too few in: tone \\(2\\)"):
        build_dataset(few, tmp_path / "o2")
    assert not (tmp_path / "o2").exists()
    with pytest.raises(DatasetError, match="not found"):
        build_dataset(tmp_path / "nope", tmp_path / "o3")
    with pytest.raises(DatasetError, match="not a Genre Lab dataset"):
        load_dataset(tmp_path)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.docx").write_text("precious")
    with pytest.raises(DatasetError, match="not empty"):
        build_dataset(make_dataset_folder(tmp_path / "s", 2, 3, 4), busy)
    assert (busy / "thesis.docx").read_text() == "precious"


# --- custom split -----------------------------------------------------------------------------------------
def test_custom_split_json_and_list_files(tmp_path, genre_folder):
    names = {c: sorted(p.name for p in (genre_folder / c).iterdir()) for c in ("bass", "tone", "pulse")}
    lists = tmp_path / "lists"
    lists.mkdir()
    # published lists name .wav files; ours may be other formats: matched by class/stem
    rows = {"train": [], "valid": [], "test": []}
    for c, files in names.items():
        stems = [f.rsplit(".", 1)[0] for f in files]
        rows["train"] += [f"{c}/{s}.au" for s in stems[:4]]
        rows["valid"] += [f"{c}/{s}.au" for s in stems[4:5]]
        rows["test"] += [f"{c}/{s}.au" for s in stems[5:]]
    for k, v in rows.items():
        (lists / f"{k}_filtered.txt").write_text("\n".join(v) + "\n")
    ds = load_dataset(build_dataset(genre_folder, tmp_path / "ds", None,
                                    SplitConfig(split_file=str(lists)), workers=1))
    assert {s: ds.card["counts"][s]["tracks"] for s in ("train", "val", "test")} == {"train": 12, "val": 3, "test": 3}
    assert read_split_file(lists)["val"][0] == "bass/bass.00004"
    js = tmp_path / "split.json"
    js.write_text(json.dumps({"train": rows["train"][:6], "validation": rows["valid"], "test": []}))
    ds2 = load_dataset(build_dataset(genre_folder, tmp_path / "ds2", None, SplitConfig(split_file=str(js)), workers=1))
    assert ds2.card["counts"]["train"]["tracks"] == 6
    unused = ds2.manifest[(ds2.manifest["split"] == "") & (~ds2.manifest["skipped"].astype(bool))]
    assert len(unused) == 18 - 6 - 3 and set(unused["reason"]) == {"not in the split file"}


# --- resume ----------------------------------------------------------------------------------------------
_BUILD_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from core.dataset import build_dataset
build_dataset({src!r}, {out!r}, workers=1)
"""


def test_sigkill_then_resume_gives_an_identical_dataset(tmp_path):
    src = make_dataset_folder(tmp_path / "src", n_classes=3, per_class=12, seconds=20.0)
    ref = build_dataset(src, tmp_path / "ref", workers=1)
    out = tmp_path / "out"
    code = _BUILD_SCRIPT.format(root=str(ROOT), src=str(src), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 120
    while time.time() < deadline:
        done = list(out.glob(".work-*/*.json"))
        if len(done) >= 8:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len([p for p in out.glob(".work-*/*.json") if p.name != "params.json"])
    assert 0 < finished < 36, "the kill should land mid-build"
    assert not (out / "card.json").exists()
    with pytest.raises(DatasetError, match="unfinished build"):
        load_dataset(out)
    calls = []
    build_dataset(src, out, workers=1, progress=lambda d, t, m: calls.append((d, t, m)))
    assert calls[0][0] >= finished - 1, "finished tracks must not be recomputed"
    a, b = load_dataset(ref), load_dataset(out)
    for s in ("train", "val", "test"):
        for what in ("X", "y", "track", "start"):
            assert np.array_equal(np.asarray(getattr(a, what)(s)), np.asarray(getattr(b, what)(s))), (s, what)
    assert a.card["build_id"] == b.card["build_id"]
    assert not list(out.glob(".work-*"))


def test_rebuild_is_instant_and_param_change_starts_a_new_build(tmp_path, genre_folder):
    out = build_dataset(genre_folder, tmp_path / "ds", workers=1)
    calls = []
    build_dataset(genre_folder, out, workers=1, progress=lambda d, t, m: calls.append(m))
    assert calls == ["already built"]
    build_dataset(genre_folder, out, FeatureParams(n_mels=40), workers=1)
    ds = load_dataset(out)
    assert ds.X("train").shape[2] == 40 and ds.card["params"]["n_mels"] == 40


def test_stop_request_then_resume(tmp_path, genre_folder):
    from core.dataset import BuildStopped

    n = [0]

    def stop():
        n[0] += 1
        return n[0] > 4

    with pytest.raises(BuildStopped):
        build_dataset(genre_folder, tmp_path / "ds", workers=1, should_stop=stop)
    calls = []
    build_dataset(genre_folder, tmp_path / "ds", workers=1, progress=lambda d, t, m: calls.append(d))
    assert calls[0] == 4
    assert load_dataset(tmp_path / "ds").card["n_tracks"] == 18


# --- CLI -------------------------------------------------------------------------------------------------
def test_cli_help_documents_every_option():
    out = subprocess.run([sys.executable, "-m", "core", "build-dataset", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    for opt in ["--sample-rate", "--snippet", "--overlap", "--max-snippets", "--selection", "--n-fft", "--hop",
                "--n-mels", "--peak-normalize", "--pad-short", "--full", "--val-share", "--test-share",
                "--split-seed", "--split", "--workers"]:
        assert opt in out


def test_cli_builds_and_reports_errors(tmp_path, genre_folder):
    r = subprocess.run([sys.executable, "-m", "core", "build-dataset", str(genre_folder), str(tmp_path / "ds"),
                        "--workers", "2"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "train:" in r.stdout and "(130, 100, 1)" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "core", "build-dataset", str(tmp_path / "missing"),
                          str(tmp_path / "x")], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "source folder not found" in bad.stderr and "Traceback" not in bad.stderr


# --- real data -------------------------------------------------------------------------------------------
@pytest.mark.gtzan
@pytest.mark.shared
def test_build_real_gtzan_with_defaults(tmp_path):
    src = gtzan_path()
    ds = load_dataset(build_dataset(src, tmp_path / "gtzan"))
    assert ds.card["input_shape"] == [130, 100, 1]
    assert len(ds.classes) == 10
    c = ds.card["counts"]
    for cls in ds.classes:
        n = sum(c[s]["per_class"][cls] for s in ("train", "val", "test"))
        want = max(1, round(n * 0.1))  # 80/10/10 per class (100 tracks -> 10/10; 8 excerpts -> 1/1)
        assert c["val"]["per_class"][cls] == c["test"]["per_class"][cls] == want
    assert ds.X("train").shape[1:] == (130, 100)


@pytest.mark.shared
def test_fault_filtered_split_file_reads():
    lists = shared_path("gtzan-splits", "fault-filtered")
    split = read_split_file(lists)
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (443, 197, 290)
    assert split["val"][0] == "blues/blues.00000"


def test_mel_power_equals_librosa_melspectrogram():
    import librosa

    from core.features import mel_power

    y = synth_clip(4, 5.0)
    p = FeatureParams()
    ref = librosa.feature.melspectrogram(y=y, sr=p.sample_rate, n_fft=p.n_fft, hop_length=p.hop_length,
                                         n_mels=p.n_mels).T
    np.testing.assert_allclose(mel_power(y, p), ref, rtol=1e-4, atol=1e-6 * ref.max())


def test_limit_per_class_caps_the_build(tmp_path, genre_folder):
    ds = load_dataset(build_dataset(genre_folder, tmp_path / "ds", workers=1, limit_per_class=4))
    assert ds.card["n_tracks"] == 12 and ds.card["limit_per_class"] == 4
    capped = ds.manifest[ds.manifest["reason"].astype(str).str.startswith("not used: build capped")]
    assert len(capped) == 6


def test_gtzan_known_corrupt_file_is_reported_not_fatal(tmp_path):
    src = make_dataset_folder(tmp_path / "src", n_classes=2, per_class=4, seconds=7.0)
    (src / "tone" / "jazz.00054.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(64))
    ds = load_dataset(build_dataset(src, tmp_path / "ds", workers=1))
    row = ds.manifest.set_index("path").loc["tone/jazz.00054.wav"]
    assert row["skipped"] and "known corrupt file" in row["reason"]
    assert ds.card["n_tracks"] == 9


def test_an_identical_build_is_found_by_its_build_key(tmp_path, genre_folder):
    """``find_identical_build``: a finished dataset or a running build job with the same source and build key
    (whatever the output folder and worker count) is a repeat; another parameter, cap, split or source is not."""
    import shutil

    from core.dataset import build_dataset_args, build_request, find_identical_build, request_from_args
    from core.utils import atomic_write_json

    home = tmp_path / "home"
    params, split = FeatureParams(max_snippets=2), SplitConfig()
    assert find_identical_build(genre_folder, params, split, home=home) is None  # nothing built, nothing running
    build_dataset(genre_folder, home / "datasets" / "first", params, split, workers=1)
    same = find_identical_build(genre_folder, params, split, home=home)
    assert same is not None and same.startswith("Not started: “first” was built already")
    key = load_dataset(home / "datasets" / "first").card["build_key"]
    assert build_request(genre_folder, params, split).key == key
    assert find_identical_build(genre_folder, FeatureParams(max_snippets=2, n_mels=40), split, home=home) is None
    assert find_identical_build(genre_folder, params, split, limit_per_class=4, home=home) is None
    assert find_identical_build(genre_folder, params, SplitConfig(seed=1), home=home) is None
    copy = shutil.copytree(genre_folder, tmp_path / "copy")  # the same files in another folder: another source
    assert find_identical_build(copy, params, split, home=home) is None
    assert find_identical_build(tmp_path / "nowhere", params, split, home=home) is None  # the build will say why

    # a running build job (this process stands in for it) of the copy, into another folder, with 3 workers
    args = build_dataset_args(copy, home / "datasets" / "second", params, split, workers=3)
    assert request_from_args(args).key == build_request(copy, params, split).key
    job = home / "jobs" / "build-second"
    job.mkdir(parents=True)
    atomic_write_json(job / "job.json", {"pid": os.getpid(), "command": [sys.executable, "-m", "core", *args,
                                                                        "--events", str(job / "events.jsonl")]})
    running = find_identical_build(copy, params, split, home=home)
    assert running is not None and "identical build is running already (“second”" in running
    assert find_identical_build(copy, params, split, limit_per_class=4, home=home) is None
    with pytest.raises(DatasetError):
        request_from_args(["demo-model", "OUT"])
