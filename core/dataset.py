"""Dataset engine: a folder of labelled audio -> a segmented, split, normalised log-mel dataset.

``SRC`` holds one sub-folder per class with audio files inside (GTZAN's ``genres/<genre>/<genre>.000NN.au``
is the flagship case). :func:`build_dataset` decodes every track once, computes its mel spectrogram once,
slices it into snippets (or one full clip per track), splits the tracks (never the snippets) into
train/val/test stratified by class, computes normalisation statistics on the training split only and
writes everything as plain files (see ``docs/ARCHITECTURE.md``):

* ``card.json`` (written last: its presence means the dataset is complete), ``manifest.json``,
  ``split.json``, ``norm.json``;
* ``{train,val,test}_{X,y,track,start}.npy``, memory-mappable.

Builds are resumable: each track's result is written atomically to ``OUT/.work-<hash>/`` as soon as it is
done, so a killed build (SIGKILL included) continues where it stopped and ends with the same files as an
uninterrupted build. The work folder is keyed by the feature parameters: changing one starts a new build.
"""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from core import __version__
from core.errors import DiskFullError, GenreLabError, Stopped, is_disk_full
from core.audio import AUDIO_EXTENSIONS, AudioError, is_silent, load_audio, load_audio_prefix
from core.features import FeatureParams, apply_norm, full_clip, track_snippets  # apply_norm: Dataset.normalize
from core.jobs import OSLock, add_job_args
from core.utils import (NpyWriter, atomic_save_npy, atomic_write_json, fmt_bytes, read_json, sha256_file,
                        stable_hash)

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1
FEATURE_CODE_VERSION = 1  # bump when the feature computation changes: invalidates resumable work
KNOWN_CORRUPT = {"jazz.00054": "known corrupt file in some GTZAN copies (e.g. Kaggle's jazz.00054.wav)"}

ProgressFn = Callable[[int, int, str], None]


class DatasetError(GenreLabError):
    """A problem with the source folder, the options or a dataset folder; the message is for the user."""


class BuildStopped(Stopped):
    """The build was stopped on request; running it again resumes."""


class BuildLockedError(DatasetError):
    """Another process is building into the same output folder; the message names it."""


BUILD_LOCK_NAME = ".build.lock"


class BuildLock(OSLock):
    """One build per output folder: an OS lock on ``OUT/.build.lock`` (released by the kernel if the build
    dies); the holder's pid and command are in ``OUT/.build.lock.json`` for the message."""

    error = BuildLockedError
    what = "dataset folder"

    def __init__(self, out: str | os.PathLike, command: str | None = None):
        super().__init__(out, BUILD_LOCK_NAME, command)

    def message(self, info: dict | None) -> str:
        info = info or {}
        return (f"another build is writing {self.path.parent} (pid {info.get('pid')} on {info.get('host')} since "
                f"{info.get('started_at')}, command: {info.get('command')}): wait for it to finish, or stop it, "
                "then run this build again")


def build_lock_holder(out: str | os.PathLike) -> dict | None:
    """The running build of ``out`` (pid, host, started_at, command), or None when no build holds it."""
    return BuildLock(out).holder() if Path(out).is_dir() else None


def file_stat(path: str | os.PathLike) -> str:
    """``size:mtime_ns:ctime_ns:inode`` of a file: when it differs from the recorded one, the content may
    have changed (then the sha256 decides); replacing a file under the same name always changes it."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


@dataclass
class SplitConfig:
    val_share: float = 0.1
    test_share: float = 0.1
    seed: int = 0
    split_file: str | None = None  # JSON, or a folder / list of plain list files (train/valid/test)

    def __post_init__(self) -> None:
        if not (0 <= self.val_share < 1 and 0 <= self.test_share < 1 and self.val_share + self.test_share < 1):
            raise DatasetError("val and test shares must be between 0 and 1 and leave room for training")


# ---------------------------------------------------------------------------------------------------------
# scanning
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Track:
    relpath: str  # relative to SRC, forward slashes
    abs_path: str
    label: str

    @property
    def key(self) -> str:
        """Split-matching key: ``class/stem`` (published split lists name files with another extension)."""
        return track_key(self.relpath)


def track_key(path: str) -> str:
    """``'blues/blues.00012.wav'`` -> ``'blues/blues.00012'`` (extension-free, forward slashes)."""
    p = path.replace("\\", "/").strip().lstrip("./")
    head, _, tail = p.rpartition("/")
    stem = tail.rsplit(".", 1)[0] if "." in tail else tail
    return f"{head}/{stem}" if head else stem


def _skip(relpath: str, abs_path: str, label: str, reason: str) -> dict[str, Any]:
    return {"path": relpath, "abs_path": abs_path, "class": label, "split": "", "duration_s": None,
            "n_snippets": 0, "sha256": None, "skipped": True, "reason": reason}


def _link_reason(link: Path, src_real: Path) -> str:
    """Why a symbolic link in the source is not followed (it points outside the source folder, or inside it,
    where its files would be counted twice)."""
    target = Path(os.path.realpath(link))
    inside = target == src_real or src_real in target.parents
    where = "inside the source folder: its files would count twice" if inside else "outside the source folder"
    return (f"symbolic link to {target} ({where}): not followed; move or copy what it points to into the source "
            "folder instead")


def scan_source(src: str | os.PathLike) -> tuple[list[Track], list[dict[str, Any]], list[str]]:
    """List the audio tracks of a class-folder tree.

    Returns ``(tracks, skipped_records, classes)``; hidden files, files outside class folders, files without an
    audio extension and symbolic links (class folders, sub-folders or files: never followed, whether they point
    outside the source or back into it) are returned as skipped records with a reason; a linked class folder's
    record has ``link_class`` set (the build lists it among the left-out classes).
    """
    src = Path(src)
    if not src.exists():
        raise DatasetError(f"source folder not found: {src}")
    if not src.is_dir():
        raise DatasetError(f"source is not a folder: {src}")
    src_real = src.resolve()
    tracks: list[Track] = []
    skipped: list[dict[str, Any]] = []
    classes: list[str] = []
    for entry in sorted(src.iterdir(), key=lambda p: p.name):
        rel = entry.name
        if entry.is_symlink() and not rel.startswith("."):
            is_dir = entry.is_dir()
            rec = _skip(rel, str(entry), rel if is_dir else "", _link_reason(entry, src_real))
            if is_dir:
                rec["link_class"] = True
            skipped.append(rec)
            continue
        if entry.is_file():
            reason = "hidden file" if rel.startswith(".") else "file outside a class folder"
            skipped.append(_skip(rel, str(entry), "", reason))
            continue
        if not entry.is_dir() or rel.startswith(".") or rel == "__MACOSX":
            continue
        n_audio = 0
        for root, dirs, files in os.walk(entry):  # never descends into linked folders: they are listed below
            for d in sorted(dirs):
                dp = Path(root) / d
                if dp.is_symlink() and not d.startswith("."):
                    skipped.append(_skip(dp.relative_to(src).as_posix(), str(dp), entry.name,
                                         _link_reason(dp, src_real)))
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX"
                             and not (Path(root) / d).is_symlink())
            for name in sorted(files):
                ap = Path(root) / name
                rp = ap.relative_to(src).as_posix()
                if name.startswith("."):
                    skipped.append(_skip(rp, str(ap), entry.name, "hidden file"))
                elif ap.is_symlink():
                    skipped.append(_skip(rp, str(ap), entry.name, _link_reason(ap, src_real)))
                elif ap.suffix.lower() not in AUDIO_EXTENSIONS:
                    skipped.append(_skip(rp, str(ap), entry.name, f"not an audio file extension ({ap.suffix or 'none'})"))
                else:
                    tracks.append(Track(rp, str(ap), entry.name))
                    n_audio += 1
        if n_audio:
            classes.append(entry.name)
    return tracks, skipped, classes


# ---------------------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------------------
def read_split_file(path: str | os.PathLike | Iterable[str]) -> dict[str, list[str]]:
    """Read a split: a JSON file ``{"train": [...], "val": [...], "test": [...]}`` (``valid``/``validation``
    accepted), a folder of plain list files whose names contain train / val(id) / test (one path a line,
    like the published GTZAN splits), or a list of such files. Returns track keys per split."""
    if isinstance(path, (str, os.PathLike)):
        p = Path(path)
        if not p.exists():
            raise DatasetError(f"split file not found: {p}")
        if p.is_dir():
            files = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
        elif p.suffix.lower() == ".json":
            try:
                raw = read_json(p)
            except (ValueError, UnicodeDecodeError) as exc:
                raise DatasetError(f"split file is not valid JSON: {p} ({exc})") from exc
            if not isinstance(raw, dict):
                raise DatasetError("a JSON split file must be an object with train/val/test lists")
            out: dict[str, list[str]] = {s: [] for s in SPLITS}
            for k, v in raw.items():
                name = _split_name(k)
                if name and isinstance(v, list):
                    out[name] += [track_key(str(x)) for x in v]
            if not out["train"]:
                raise DatasetError("the split file has no 'train' list")
            return out
        else:
            files = [p]
    else:
        files = [Path(x) for x in path]
    out = {s: [] for s in SPLITS}
    for f in files:
        name = _split_name(f.stem)
        if name is None:
            raise DatasetError(f"cannot tell which split the list file {f.name} is (name it train/val/test)")
        lines = f.read_text(encoding="utf-8").splitlines()
        out[name] += [track_key(x) for x in lines if x.strip() and not x.lstrip().startswith("#")]
    if not out["train"]:
        raise DatasetError("the split lists have no training list (a file named like 'train*.txt')")
    return out


def _split_name(name: str) -> str | None:
    n = name.lower()
    if "train" in n:
        return "train"
    if "val" in n:
        return "val"
    if "test" in n or "eval" in n:
        return "test"
    return None


def stratified_split(keys_by_class: dict[str, list[str]], val_share: float, test_share: float,
                     seed: int) -> dict[str, str]:
    """Assign each track key to a split, per class, seeded. Each class with >= 3 tracks gets at least one
    val and one test track when the share is positive. Returns ``{key: split}``."""
    rng = np.random.default_rng(seed)
    assign: dict[str, str] = {}
    for label in sorted(keys_by_class):
        keys = sorted(keys_by_class[label])
        order = rng.permutation(len(keys))
        n = len(keys)
        n_test = int(round(n * test_share))
        n_val = int(round(n * val_share))
        if test_share > 0:
            n_test = max(1, n_test)
        if val_share > 0:
            n_val = max(1, n_val)
        while n_test + n_val >= n and (n_test > 0 or n_val > 0):  # keep at least one training track
            if n_val >= n_test and n_val > 0:
                n_val -= 1
            else:
                n_test -= 1
        for rank, idx in enumerate(order):
            assign[keys[idx]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return assign


# ---------------------------------------------------------------------------------------------------------
# per-track work (runs in worker processes)
# ---------------------------------------------------------------------------------------------------------
def _work_name(relpath: str) -> str:
    return hashlib.sha1(relpath.encode("utf-8")).hexdigest()[:20]


def process_track(abs_path: str, relpath: str, label: str, params_dict: dict[str, Any], work_dir: str) -> dict:
    """Decode one track, compute its features and write them to ``work_dir`` (atomic). Returns its record."""
    params = FeatureParams.from_dict(params_dict)
    rec = _skip(relpath, abs_path, label, "")
    rec["skipped"] = False
    name = _work_name(relpath)
    try:
        rec["stat"] = file_stat(abs_path)  # before reading: a change during the build shows on the next run
        rec["sha256"] = sha256_file(abs_path)
        keep = kept_samples(params)
        if keep is None:  # random snippet selection: any part of the track may be kept
            y = load_audio(abs_path, params.sample_rate)
            duration = y.size / params.sample_rate
        else:  # decode only the prefix the kept snippets / clip use (a 2-hour file costs its first seconds)
            y, duration = load_audio_prefix(abs_path, params.sample_rate, keep)
            if duration is None:
                duration = y.size / params.sample_rate
        rec["duration_s"] = round(duration, 3)
        if is_silent(y):
            raise AudioError("silent (peak below -80 dBFS)")
        min_len = params.snippet_samples
        if y.size < min_len and not params.pad_short:
            raise AudioError(f"shorter than one snippet ({y.size / params.sample_rate:.2f} s < {params.snippet_s:g} s)")
        if params.mode == "full":
            X = full_clip(y, params, store=True)
            starts = np.zeros(1)
        else:
            X, starts = track_snippets(y, params, key=relpath)
        if not np.isfinite(X).all():  # finite samples far outside [-1, 1] can still overflow the power spectrum
            raise AudioError("non-finite features: sample values far outside [-1, 1] overflow the spectrogram")
        rec["n_snippets"] = int(X.shape[0])
        npz_tmp = Path(work_dir) / f".{name}.npz.tmp"
        try:
            with open(npz_tmp, "wb") as fh:
                np.savez(fh, X=X.astype(np.float32), start=starts.astype(np.float64))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(npz_tmp, Path(work_dir) / f"{name}.npz")
        except BaseException:
            npz_tmp.unlink(missing_ok=True)
            raise
    except AudioError as exc:
        rec.update(skipped=True, reason=str(exc), n_snippets=0)
    except Exception as exc:  # never abort a build for one file (a full disk is not the file's fault: it stops it)
        if is_disk_full(exc):
            raise
        rec.update(skipped=True, reason=f"could not process: {type(exc).__name__}: {exc}"[:300], n_snippets=0)
    if rec["skipped"]:
        stem = track_key(relpath).rsplit("/", 1)[-1]
        if stem in KNOWN_CORRUPT:
            rec["reason"] += f" ({KNOWN_CORRUPT[stem]})"
    atomic_write_json(Path(work_dir) / f"{name}.json", rec)
    return rec


def kept_samples(params: FeatureParams) -> int | None:
    """Samples of a track's start that its features depend on (None: the whole track, for random snippet
    selection or every snippet). Snippet mode, first N: up to the last kept frame's window; full mode: the
    clip (or the stored length). Decoding just this prefix gives the same features as decoding everything."""
    if params.mode == "full":
        n = params.full_samples
        if params.stored_frames > params.full_frames:
            n = max(n, int(round(params.full_store_s * params.sample_rate)))
        return n
    if params.max_snippets == 0 or params.selection != "first" or \
            params.step_s * params.sample_rate < params.hop_length:  # (sub-frame steps: starts deduplicated)
        return None
    f_last = int(round((params.max_snippets - 1) * params.step_s * params.sample_rate / params.hop_length))
    return (f_last + params.snippet_frames - 1) * params.hop_length + params.n_fft // 2 + 1


def _process_star(args: tuple) -> dict:
    return process_track(*args)


def _worker_init() -> None:
    """Pool workers die on SIGTERM/SIGINT like any process: a handler inherited from a parent (a job's stop
    flag) would otherwise keep ``Pool.terminate()`` from ending them. The parent handles Ctrl-C."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _pool_context():
    """``fork`` after warming the feature code up in this process (workers start in milliseconds, not
    seconds), unless a threaded ML framework is loaded here, where forking is unsafe: then ``spawn``."""
    heavy = {"tensorflow", "torch", "jax", "streamlit"} & set(sys.modules)
    if heavy or "fork" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    from core.features import stft_power

    stft_power(np.zeros(4096, dtype=np.float32), 2048, 512)  # imports scipy.fft, soundfile once for all workers
    import soundfile  # noqa: F401
    import soxr  # noqa: F401

    return mp.get_context("fork")


# ---------------------------------------------------------------------------------------------------------
# the build
# ---------------------------------------------------------------------------------------------------------
def library_versions() -> dict[str, str]:
    import scipy
    import soundfile
    import soxr

    # librosa is no longer used (core.features computes the same mel spectrograms in NumPy/SciPy).
    return {"genre_lab": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "soxr": soxr.__version__, "soundfile": soundfile.__version__,
            "libsndfile": soundfile.__libsndfile_version__}


def feature_hash(params: FeatureParams) -> str:
    return stable_hash({"params": params.to_dict(), "code": FEATURE_CODE_VERSION})


@dataclass
class BuildRequest:
    """What a build is asked for, known before any audio is decoded (:func:`build_request`): the source, the
    feature parameters and split, the tracks (capped, small classes left out), the files skipped so far, and
    ``key``: the hash of the request (features, split, file list, cap) that ``card.json`` keeps as ``build_key``.
    Two builds of the same source with the same key are the same dataset."""

    src: Path
    params: FeatureParams
    split: SplitConfig
    custom: dict | None  # the split file's lists, when one is given
    tracks: list[Track]
    skipped: list[dict]
    classes: list[str]
    left_out: dict[str, str]  # class -> why it is left out
    need: int  # usable tracks a class needs
    limit_per_class: int
    fhash: str  # feature_hash(params)
    key: str  # the build_key


def build_request(src: str | os.PathLike, params: FeatureParams | None = None, split: SplitConfig | None = None, *,
                  limit_per_class: int = 0, min_tracks_per_class: int | None = None) -> BuildRequest:
    """Scan ``src`` (file names only: nothing is decoded) and work out what a build with these settings would do;
    :class:`DatasetError` for a source or split that cannot give a dataset (fewer than two classes, ...)."""
    params = params or FeatureParams()
    split = split or SplitConfig()
    src = Path(src).resolve()
    tracks, skipped, classes = scan_source(src)
    if limit_per_class > 0:
        seen: dict[str, int] = {}
        kept = []
        for t in tracks:
            seen[t.label] = seen.get(t.label, 0) + 1
            if seen[t.label] <= limit_per_class:
                kept.append(t)
            else:
                reason = f"not used: build capped at {limit_per_class} tracks per class"
                skipped.append(_skip(t.relpath, t.abs_path, t.label, reason))
        tracks = kept
    custom = read_split_file(split.split_file) if split.split_file else None
    _check_classes(tracks, classes)
    need = _min_tracks(split, custom, min_tracks_per_class)
    tracks, classes, left_out = _leave_out_small_classes(tracks, classes, need, skipped)
    for r in skipped:  # a linked class folder: said in the warnings, not only in the manifest
        if r.get("link_class"):
            left_out[r["class"]] = f"class left out: its folder is a {r['reason']}"

    fhash = feature_hash(params)
    request = {"features": fhash, "split": {"val": split.val_share, "test": split.test_share,
               "seed": split.seed, "custom": custom}, "files": [t.relpath for t in tracks],
               "limit": limit_per_class}
    if min_tracks_per_class:
        request["min_tracks"] = need
    return BuildRequest(src, params, split, custom, tracks, skipped, classes, left_out, need, limit_per_class, fhash,
                        stable_hash(request))  # what was asked for; the build_id adds the files' content


def build_dataset(
    src: str | os.PathLike,
    out: str | os.PathLike,
    params: FeatureParams | None = None,
    split: SplitConfig | None = None,
    *,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    min_tracks_per_class: int | None = None,
    limit_per_class: int = 0,
    lock_timeout: float = 1.0,
) -> Path:
    """Build (or resume, or reuse) a dataset from ``src`` into ``out``; returns ``out``.

    ``progress(done, total, message)`` is called after each track and during assembly; ``should_stop()``
    returning True stops the build between tracks (raising :class:`BuildStopped`; run again to resume).
    Errors in the source or options raise :class:`DatasetError` before any audio is decoded.
    ``limit_per_class > 0`` keeps only the first N tracks (sorted by path) of each class: a capped build for
    small machines (Community Cloud) and smoke runs.

    Reliability: one build per output folder (:class:`BuildLock`; a second one waits ``lock_timeout`` seconds,
    then raises :class:`BuildLockedError` naming the first). A rerun compares every file's size / mtime (then
    its sha256) with the manifest and recomputes exactly the changed tracks, then the split and the
    normalisation. Classes with fewer than ``min_tracks_per_class`` usable tracks (default: one per split)
    are left out with the reason in the manifest and ``card["left_out_classes"]``; two classes must remain.
    """
    src, out = Path(src).resolve(), Path(out).resolve()
    if out == src or src in out.parents:
        raise DatasetError("the output folder must not be inside the source folder")
    req = build_request(src, params, split, limit_per_class=limit_per_class,
                        min_tracks_per_class=min_tracks_per_class)
    card_path = out / "card.json"
    if out.is_dir() and any(p for p in out.iterdir() if BUILD_LOCK_NAME not in p.name) and not (
            card_path.exists() or any(out.glob(".work-*")) or (out / "manifest.json").exists()):
        raise DatasetError(f"output folder {out} is not empty and is not a Genre Lab dataset: "
                           "choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    lock = BuildLock(out).acquire(timeout=lock_timeout)
    try:
        return _build_locked(req, out, workers, progress, should_stop)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise _disk_full_error(out, exc) from None
    finally:
        lock.release()


def _remove_partial_files(out: Path) -> None:
    """Half-written files of a failed build: array temps in ``out``, temps in its work folders. The finished
    per-track results stay (the next run resumes from them)."""
    for p in out.glob(".*.npy.tmp"):
        p.unlink(missing_ok=True)
    for w in out.glob(".work-*"):
        for p in w.glob(".*.tmp"):
            p.unlink(missing_ok=True)
    from core.utils import clean_stale_temps

    clean_stale_temps(out, force=True)


def _disk_full_error(out: Path, exc: BaseException) -> DiskFullError:
    """One clear error for a full disk anywhere in a build (per-track results, arrays, JSON files): the
    partial files are removed, the finished tracks kept."""
    _remove_partial_files(out)
    if isinstance(exc, DiskFullError) and str(exc).startswith("not enough disk space"):
        return exc  # the check before the arrays: already says how much is needed
    work = sum(p.stat().st_size for w in out.glob(".work-*") for p in w.iterdir() if p.is_file())
    free = shutil.disk_usage(out).free
    return DiskFullError(f"the disk holding {out} is full ({fmt_bytes(free)} free): the build stopped and removed "
                         f"its half-written files; the tracks finished so far ({fmt_bytes(work)}) are kept. Free "
                         "some space (a build needs about twice its arrays' size while it runs) and run the same "
                         "command again: it resumes")


def _read_card(card_path: Path) -> dict | None:
    try:
        card = read_json(card_path)
    except (ValueError, OSError):
        return None
    return card if isinstance(card, dict) else None


def _remove_work_folders(out: Path) -> None:
    """Leftovers of finished or abandoned builds: work folders and half-written arrays."""
    for p in out.glob(".work-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in out.glob(".*.npy.tmp"):
        p.unlink(missing_ok=True)


def _unchanged(rec: dict | None, t: Track) -> tuple[bool, str | None]:
    """``(same content, current stat)`` of a track against its recorded manifest/work record: the same stat
    means unchanged; another stat is checked with the sha256 (a copy or ``touch`` keeps the features)."""
    try:
        cur = file_stat(t.abs_path)
    except OSError:
        return False, None
    if rec is None:
        return False, cur
    if rec.get("stat") == cur:
        return True, cur
    if rec.get("sha256"):
        try:
            return sha256_file(t.abs_path) == rec["sha256"], cur
        except OSError:
            return False, cur
    return False, cur


def _seed_work_from_dataset(out: Path, work: Path, tracks: list[Track], old_manifest: list[dict],
                            params: FeatureParams) -> int:
    """Write the per-track results of the previous complete build (same features) into ``work`` for every
    track whose file did not change, so a rebuild recomputes only changed or new tracks. Returns how many."""
    by_path = {r.get("path"): (i, r) for i, r in enumerate(old_manifest)}
    rows: dict[int, tuple[str, int, int]] = {}  # manifest index -> (split, first row, n rows)
    for s in SPLITS:
        try:
            tr = np.load(out / f"{s}_track.npy")
        except (OSError, ValueError):
            return 0
        if tr.size:
            cut = np.flatnonzero(np.diff(tr)) + 1
            for a, b in zip(np.r_[0, cut], np.r_[cut, tr.size]):
                rows[int(tr[a])] = (s, int(a), int(b - a))
    arrays = {s: (np.load(out / f"{s}_X.npy", mmap_mode="r"), np.load(out / f"{s}_start.npy")) for s in SPLITS}
    n = 0
    for t in tracks:
        i, rec = by_path.get(t.relpath, (None, None))
        if rec is None or rec.get("left_out") or rec.get("class") != t.label:
            continue
        has_features = i in rows and not rec.get("skipped")
        if not (has_features or (rec.get("skipped") and rec.get("sha256"))):
            continue  # not decoded, or decoded but not stored (outside a custom split): computed again
        same, cur = _unchanged(rec, t)
        if not same:
            continue
        name = _work_name(t.relpath)
        new = dict(rec, abs_path=t.abs_path, split="", stat=cur)
        if has_features:
            s, a, k = rows[i]
            X, st = arrays[s]
            new["reason"] = ""
            tmp = work / f".{name}.npz.tmp"
            with open(tmp, "wb") as fh:
                np.savez(fh, X=np.asarray(X[a:a + k], dtype=np.float32), start=np.asarray(st[a:a + k], np.float64))
            os.replace(tmp, work / f"{name}.npz")
        atomic_write_json(work / f"{name}.json", new)
        n += 1
    return n


def _build_locked(req: BuildRequest, out: Path, workers: int | None, progress: ProgressFn | None,
                  should_stop: Callable[[], bool] | None) -> Path:
    src, params, split, custom, tracks, skipped = req.src, req.params, req.split, req.custom, req.tracks, req.skipped
    classes, left_out, need, fhash, build_key = req.classes, dict(req.left_out), req.need, req.fhash, req.key
    card_path = out / "card.json"
    card = _read_card(card_path) if card_path.exists() else None
    old_manifest = None
    if card is not None and card.get("feature_hash") == fhash:
        try:
            old_manifest = read_json(out / "manifest.json")
        except (ValueError, OSError):
            old_manifest = None
    if card is not None and old_manifest is not None and card.get("build_key", card.get("build_id")) == build_key:
        by_path = {r.get("path"): r for r in old_manifest}
        changed, touched = [], False
        for t in tracks:
            rec = by_path.get(t.relpath)
            same, cur = _unchanged(rec, t)
            if not same:
                changed.append(t.relpath)
            elif rec.get("stat") != cur:
                rec["stat"], touched = cur, True
        if not changed:
            if touched:  # same content, new stat: remember it so the next run does not hash again
                atomic_write_json(out / "manifest.json", old_manifest)
            _remove_work_folders(out)
            if progress:
                progress(len(tracks), len(tracks), "already built")
            return out
    work = out / f".work-{fhash}"
    work.mkdir(exist_ok=True)
    atomic_write_json(work / "params.json", params.to_dict())
    if old_manifest is not None:  # a previous complete build with the same features: reuse unchanged tracks
        _seed_work_from_dataset(out, work, tracks, old_manifest, params)

    # 1. per-track features (resumable; a file changed since its work record is computed again)
    records: dict[str, dict] = {}
    todo = []
    for t in tracks:
        jp = work / f"{_work_name(t.relpath)}.json"
        if jp.exists():
            try:
                rec = read_json(jp)
                if (rec["skipped"] or (work / f"{_work_name(t.relpath)}.npz").exists()) \
                        and rec.get("stat") and rec.get("stat") == file_stat(t.abs_path):
                    records[t.relpath] = rec
                    continue
            except (ValueError, KeyError, OSError):
                pass
        todo.append((t.abs_path, t.relpath, t.label, params.to_dict(), str(work)))
    total = len(tracks)
    done = len(records)
    if progress:
        progress(done, total, f"{done} of {total} tracks already done" if done else "starting")
    n_workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    if todo:
        if n_workers == 1:
            for args in todo:
                if should_stop and should_stop():
                    raise BuildStopped(f"stopped after {done} of {total} tracks; run again to resume")
                rec = process_track(*args)
                records[rec["path"]] = rec
                done += 1
                if progress:
                    progress(done, total, rec["path"])
        else:
            ctx = _pool_context()
            pool = ctx.Pool(n_workers, initializer=_worker_init, maxtasksperchild=200)
            try:
                for rec in pool.imap_unordered(_process_star, todo, chunksize=1):
                    records[rec["path"]] = rec
                    done += 1
                    if progress:
                        progress(done, total, rec["path"])
                    if should_stop and should_stop():
                        pool.terminate()
                        raise BuildStopped(f"stopped after {done} of {total} tracks; run again to resume")
                pool.close()
            finally:
                pool.terminate()
                pool.join()

    # 2. classes without enough usable tracks, split, assemble, normalise
    if progress:
        progress(done, total, "assembling arrays")
    manifest = [records[t.relpath] for t in tracks]
    classes = _leave_out_unusable_classes(manifest, classes, need, left_out)
    _assign_splits(manifest, tracks, split, custom)
    manifest_all = manifest + skipped
    counts = _check_after_processing(manifest, classes, custom is not None)
    card_path.unlink(missing_ok=True)
    _assemble(out, work, manifest_all, classes, params)
    norm = _norm_stats(out, params)
    atomic_write_json(out / "norm.json", norm)
    atomic_write_json(out / "split.json", {s: [r["path"] for r in manifest if r["split"] == s] for s in SPLITS})
    atomic_write_json(out / "manifest.json", manifest_all)
    card = {
        "format_version": FORMAT_VERSION,
        # build_key: the request (features, split, file list); build_id adds every track's content, so a
        # replaced file gives a new id (experiments keyed on it are not reused)
        "build_id": stable_hash({"request": build_key, "content": [r.get("sha256") for r in manifest]}),
        "build_key": build_key,
        "feature_hash": fhash,
        "source": str(src),
        "params": params.to_dict(),
        "split": {"val_share": split.val_share, "test_share": split.test_share, "seed": split.seed,
                  "split_file": str(split.split_file) if split.split_file else None,
                  "custom_missing": _custom_missing(custom, tracks) if custom else []},
        "classes": classes,
        "left_out_classes": left_out,
        "min_tracks_per_class": need,
        "input_shape": [params.input_frames, params.n_mels, 1],
        "counts": counts,
        "n_tracks": len(tracks),
        "limit_per_class": req.limit_per_class,
        "n_skipped": sum(1 for r in manifest_all if r["skipped"]),
        "versions": library_versions(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(card_path, card)
    _remove_work_folders(out)
    if progress:
        progress(total, total, "done")
    return out


def _check_classes(tracks: list[Track], classes: list[str]) -> None:
    if len(classes) < 2:
        found = ", ".join(classes) or "none"
        raise DatasetError(
            f"need at least two class folders with audio files in them (found: {found}). "
            "The source must hold one sub-folder per class, e.g. genres/blues/*.wav, genres/rock/*.wav")


def _min_tracks(split: SplitConfig, custom: dict | None, min_tracks: int | None) -> int:
    """Usable tracks a class needs: ``--min-tracks-per-class``, else one per split with a positive share
    (a published split file: one)."""
    if min_tracks:
        return max(1, int(min_tracks))
    if custom is not None:
        return 1
    return 1 + (split.val_share > 0) + (split.test_share > 0)


def _leave_out_small_classes(tracks: list[Track], classes: list[str], need: int, skipped: list[dict]
                             ) -> tuple[list[Track], list[str], dict[str, str]]:
    """Before decoding: classes with fewer than ``need`` audio files are left out (their files become skipped
    records with the reason); at least two classes must remain."""
    per = {c: sum(1 for t in tracks if t.label == c) for c in classes}
    few = {c: n for c, n in per.items() if n < need}
    if len(classes) - len(few) < 2:
        detail = ", ".join(f"{c} ({n})" for c, n in sorted(few.items()))
        raise DatasetError(
            f"at least two classes need at least {need} tracks each for a train/val/test split; too few in: "
            f"{detail} (--min-tracks-per-class sets the minimum)")
    left_out = {c: f"class left out: {n} track(s), fewer than the {need} a class needs "
                   "(--min-tracks-per-class)" for c, n in sorted(few.items())}
    for t in tracks:
        if t.label in left_out:
            rec = _skip(t.relpath, t.abs_path, t.label, left_out[t.label])
            rec["left_out"] = True
            skipped.append(rec)
    return [t for t in tracks if t.label not in left_out], [c for c in classes if c not in left_out], left_out


def _leave_out_unusable_classes(manifest: list[dict], classes: list[str], need: int,
                                left_out: dict[str, str]) -> list[str]:
    """After decoding: classes with fewer than ``need`` usable tracks are left out (their usable tracks are
    marked skipped with the reason, ``left_out`` gains the class); at least two classes must remain."""
    usable = {c: sum(1 for r in manifest if r["class"] == c and not r["skipped"]) for c in classes}
    total = {c: sum(1 for r in manifest if r["class"] == c) for c in classes}
    few = {c: n for c, n in usable.items() if n < need}
    if len(classes) - len(few) < 2:
        detail = ", ".join(f"{c} ({n} of {total[c]})" for c, n in sorted(few.items()))
        raise DatasetError(f"fewer than two classes have at least {need} usable tracks after decoding; usable "
                           f"tracks in: {detail} (see the skipped files in manifest.json)")
    for c, n in sorted(few.items()):
        left_out[c] = (f"class left out: only {n} of its {total[c]} tracks could be used, fewer than the {need} "
                       "a class needs (--min-tracks-per-class); see the skipped files")
        for r in manifest:
            if r["class"] == c and not r["skipped"]:
                r.update(skipped=True, left_out=True, reason=left_out[c], n_snippets=0)
    return [c for c in classes if c not in few]


def _assign_splits(manifest: list[dict], tracks: list[Track], split: SplitConfig, custom: dict | None) -> None:
    ok = [(r, t) for r, t in zip(manifest, tracks) if not r["skipped"]]
    if custom is not None:
        where = {k: s for s in SPLITS for k in custom[s]}
        for r, t in ok:
            s = where.get(t.key) or where.get(t.key.rsplit("/", 1)[-1])
            r["split"] = s or ""
            if not s:
                r["reason"] = "not in the split file"
        return
    by_class: dict[str, list[str]] = {}
    for r, t in ok:
        by_class.setdefault(t.label, []).append(t.key)
    assign = stratified_split(by_class, split.val_share, split.test_share, split.seed)
    for r, t in ok:
        r["split"] = assign[t.key]


def _custom_missing(custom: dict, tracks: list[Track]) -> list[str]:
    have = {t.key for t in tracks} | {t.key.rsplit("/", 1)[-1] for t in tracks}
    return sorted(k for s in SPLITS for k in custom[s] if k not in have and k.rsplit("/", 1)[-1] not in have)


def _check_after_processing(manifest: list[dict], classes: list[str], custom: bool) -> dict:
    counts: dict[str, dict] = {}
    for s in SPLITS:
        rows = [r for r in manifest if r["split"] == s]
        counts[s] = {"tracks": len(rows), "snippets": int(sum(r["n_snippets"] for r in rows)),
                     "per_class": {c: sum(1 for r in rows if r["class"] == c) for c in classes}}
    if counts["train"]["tracks"] == 0:
        why = "the split file matches no usable track" if custom else "every track was skipped"
        raise DatasetError(f"the training split is empty: {why} (see the skipped files in manifest.json)")
    used = sum(1 for r in manifest if not r["skipped"])
    if used and len({r["class"] for r in manifest if not r["skipped"]}) < 2:
        raise DatasetError("fewer than two classes have usable tracks after decoding")
    return counts


#: room kept free beside the arrays for the JSON files (manifest, split, norm, card) and the file system
_JSON_MARGIN_BYTES = 4 << 20


def _assemble(out: Path, work: Path, manifest: list[dict], classes: list[str], params: FeatureParams) -> None:
    """Write the per-split arrays (memory-bounded: one track at a time, ordinary file writes), atomically per
    file. Their size is known, so the free space is checked first: :class:`DiskFullError` before anything is
    written when they would not fit (a memory map on a full tmpfs would die of SIGBUS instead)."""
    cidx = {c: i for i, c in enumerate(classes)}
    T, M = params.stored_frames, params.n_mels
    plan = {}
    for s in SPLITS:
        rows = [(i, r) for i, r in enumerate(manifest) if r["split"] == s and not r["skipped"]]
        plan[s] = (rows, int(sum(r["n_snippets"] for _, r in rows)))
    n_all = sum(n for _, n in plan.values())
    need = n_all * (T * M * 4 + 3 * 8) + 4 * 128 * len(SPLITS) + _JSON_MARGIN_BYTES + 1024 * len(manifest)
    free = shutil.disk_usage(out).free
    if need > free:
        raise DiskFullError(f"not enough disk space in {out} for the dataset's arrays: {fmt_bytes(need)} needed, "
                            f"{fmt_bytes(free)} free. The tracks are computed and kept in {work.name}: free at least "
                            f"{fmt_bytes(need - free)} and run the same command again (it resumes)")
    for s in SPLITS:
        rows, n = plan[s]
        y = np.empty(n, dtype=np.int64)
        tr = np.empty(n, dtype=np.int64)
        st = np.empty(n, dtype=np.float64)
        pos = 0
        with NpyWriter(out / f"{s}_X.npy", np.float32, (n, T, M)) as X:
            for i, r in rows:
                with np.load(work / f"{_work_name(r['path'])}.npz") as z:
                    x, starts = z["X"], z["start"]
                k = x.shape[0]
                X.write(x)
                y[pos:pos + k] = cidx[r["class"]]
                tr[pos:pos + k] = i
                st[pos:pos + k] = starts
                pos += k
        atomic_save_npy(out / f"{s}_y.npy", y)
        atomic_save_npy(out / f"{s}_track.npy", tr)
        atomic_save_npy(out / f"{s}_start.npy", st)


def _norm_stats(out: Path, params: FeatureParams, chunk: int = 512) -> dict[str, Any]:
    """Min/max (the article's min-max scaling) and per-mel mean/std over the training split only."""
    X = np.load(out / "train_X.npy", mmap_mode="r")
    M = params.n_mels
    lo, hi = math.inf, -math.inf
    s1 = np.zeros(M, dtype=np.float64)
    s2 = np.zeros(M, dtype=np.float64)
    count = 0
    for a in range(0, X.shape[0], chunk):
        # full mode with longer stored rows: statistics of the first full_clip_s only (what models are fed)
        b = np.asarray(X[a:a + chunk, :params.input_frames], dtype=np.float64)
        lo, hi = min(lo, float(b.min())), max(hi, float(b.max()))
        s1 += b.sum(axis=(0, 1))
        s2 += (b * b).sum(axis=(0, 1))
        count += b.shape[0] * b.shape[1]
    mean = s1 / max(count, 1)
    std = np.sqrt(np.maximum(s2 / max(count, 1) - mean**2, 0.0))
    std = np.where(std < 1e-6, 1.0, std)
    if not (math.isfinite(lo) and math.isfinite(hi) and np.isfinite(mean).all() and np.isfinite(std).all()):
        raise DatasetError("the training features hold non-finite values (NaN or infinity), so no normalisation "
                           "can be computed; this should not happen (bad tracks are skipped): please report it")
    return {"min": lo, "max": hi, "mean": mean.tolist(), "std": std.tolist(), "source_split": "train",
            "n_frames": count}


# ---------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """A built dataset folder; arrays are memory-mapped read-only views."""

    path: Path
    card: dict[str, Any]
    norm: dict[str, Any]
    _manifest: Any = field(default=None, repr=False)

    @property
    def params(self) -> FeatureParams:
        return FeatureParams.from_dict(self.card["params"])

    @property
    def classes(self) -> list[str]:
        return list(self.card["classes"])

    @property
    def manifest(self):
        """All files seen (pandas DataFrame), skipped ones included with their reason."""
        if self._manifest is None:
            import pandas as pd

            self._manifest = pd.DataFrame(read_json(self.path / "manifest.json"))
        return self._manifest

    def _arr(self, split: str, what: str) -> np.ndarray:
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r} (train, val or test)")
        return np.load(self.path / f"{split}_{what}.npy", mmap_mode="r")

    def X(self, split: str) -> np.ndarray:
        return self._arr(split, "X")

    def y(self, split: str) -> np.ndarray:
        return self._arr(split, "y")

    def track(self, split: str) -> np.ndarray:
        return self._arr(split, "track")

    def start(self, split: str) -> np.ndarray:
        return self._arr(split, "start")

    def tracks(self, split: str):
        m = self.manifest
        return m[(m["split"] == split) & (~m["skipped"].astype(bool))]

    def normalize(self, X: np.ndarray, method: str = "minmax") -> np.ndarray:
        return apply_norm(X, self.norm, method)

    def load_split(self, split: str, method: str = "minmax") -> tuple[np.ndarray, np.ndarray]:
        """Normalised features and labels of a split, in memory."""
        return self.normalize(np.asarray(self.X(split)), method), np.asarray(self.y(split))

    def counts(self):
        """Tracks and snippets per class and split (pandas DataFrame, long format: class, split, tracks,
        snippets)."""
        import pandas as pd

        m = self.manifest
        used = m[(~m["skipped"].astype(bool)) & (m["split"] != "")]
        rows = []
        for split in SPLITS:
            sub = used[used["split"] == split]
            for c in self.classes:
                part = sub[sub["class"] == c]
                rows.append({"class": c, "split": split, "tracks": int(len(part)),
                             "snippets": int(part["n_snippets"].sum())})
        return pd.DataFrame(rows)

    def skipped(self):
        """Files the build did not use, with the reason (DataFrame: path, class, reason)."""
        m = self.manifest
        out = m[m["skipped"].astype(bool) | ((m["split"] == "") & m["reason"].astype(bool))]
        return out[["path", "class", "reason"]].reset_index(drop=True)

    def snippet_rows(self, manifest_index: int) -> tuple[str, np.ndarray, np.ndarray]:
        """``(split, row indices into that split's arrays, start seconds)`` of one track's snippets
        (``manifest_index``: its row in the manifest); ``("", [], [])`` for a track in no split."""
        rec = self.manifest.iloc[int(manifest_index)]
        split = rec["split"]
        if not split:
            return "", np.zeros(0, int), np.zeros(0)
        rows = np.flatnonzero(np.asarray(self.track(split)) == int(manifest_index))
        return split, rows, np.asarray(self.start(split))[rows]


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Open a built dataset folder (raises :class:`DatasetError` with a reason if it is not one)."""
    p = Path(path)
    if not p.is_dir():
        raise DatasetError(f"dataset folder not found: {p}")
    card_path = p / "card.json"
    if not card_path.exists():
        if any(p.glob(".work-*")):
            raise DatasetError(f"{p} is an unfinished build: run the same build command again to finish it")
        raise DatasetError(f"{p} is not a Genre Lab dataset (no card.json)")
    card = read_json(card_path)
    if card.get("format_version", 0) > FORMAT_VERSION:
        raise DatasetError(f"{p} was written by a newer Genre Lab (format {card.get('format_version')}); update")
    return Dataset(p, card, read_json(p / "norm.json"))


def is_dataset(path: str | os.PathLike) -> bool:
    return (Path(path) / "card.json").is_file()


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------
#: FeatureParams <-> ``build-dataset`` options, the one place they are spelled: (field, option, type, help) for
#: the valued options; (field, switch, value when given, help) for the switches (default: the field's default).
FEATURE_OPTIONS = (
    ("sample_rate", "--sample-rate", int, "target sample rate in Hz (%(default)s)"),
    ("snippet_s", "--snippet", float, "snippet length in seconds (%(default)s)"),
    ("overlap_s", "--overlap", float, "overlap of snippets in seconds (%(default)s)"),
    ("max_snippets", "--max-snippets", int, "at most this many snippets per track, 0 = all (%(default)s)"),
    ("selection", "--selection", str, "which snippets to keep when a track has more: first N or N at random "
                                      "(%(default)s)"),
    ("selection_seed", "--selection-seed", int, "seed of random selection"),
    ("n_fft", "--n-fft", int, "FFT size (%(default)s)"),
    ("hop_length", "--hop", int, "STFT hop in samples (%(default)s)"),
    ("n_mels", "--n-mels", int, "mel bands (%(default)s)"),
    ("full_clip_s", "--full-clip", float, "full-clip length in seconds (%(default)s)"),
)
FEATURE_SWITCHES = (
    ("log", "--linear", False, "keep mel power instead of decibels"),
    ("peak_normalize", "--peak-normalize", True, "normalise each snippet to peak 0 dBFS"),
    ("pad_short", "--pad-short", True, "zero-pad tracks shorter than one snippet instead of skipping them"),
    ("mode", "--full", "full", "full-clip mode: one spectrogram of the first --full-clip seconds per track "
                               "(30 s model)"),
)


def add_feature_args(p) -> None:
    """The feature options of ``build-dataset`` (:data:`FEATURE_OPTIONS`, :data:`FEATURE_SWITCHES`)."""
    d = FeatureParams()
    g = p.add_argument_group("features (defaults: the article's)")
    for name, flag, typ, help_ in FEATURE_OPTIONS:
        extra = {"choices": ["first", "random"]} if name == "selection" else {}
        g.add_argument(flag, dest=name, type=typ, default=getattr(d, name), help=help_, **extra)
    for name, flag, value, help_ in FEATURE_SWITCHES:
        g.add_argument(flag, dest=name, action="store_const", const=value, default=getattr(d, name), help=help_)


def params_from_args(a) -> FeatureParams:
    """The :class:`FeatureParams` of parsed ``build-dataset`` options."""
    try:
        return FeatureParams(**{name: getattr(a, name) for name, *_ in FEATURE_OPTIONS + FEATURE_SWITCHES})
    except ValueError as exc:
        raise DatasetError(str(exc)) from exc


def build_dataset_args(src: str | os.PathLike, out: str | os.PathLike, params: FeatureParams, split: SplitConfig,
                       workers: int | None = None, limit_per_class: int = 0) -> list[str]:
    """``build-dataset SRC OUT ...``: the command-line arguments of a build with these parameters (what a
    background job runs; :func:`params_from_args` reads them back)."""
    args = ["build-dataset", str(src), str(out)]
    for name, flag, _typ, _help in FEATURE_OPTIONS:
        args += [flag, str(getattr(params, name))]
    args += [flag for name, flag, value, _help in FEATURE_SWITCHES if getattr(params, name) == value]
    args += ["--val-share", str(split.val_share), "--test-share", str(split.test_share),
             "--split-seed", str(split.seed)]
    if split.split_file:
        args += ["--split", str(split.split_file)]
    if workers:
        args += ["--workers", str(workers)]
    if limit_per_class:
        args += ["--limit-per-class", str(int(limit_per_class))]
    return args


def request_from_args(args: list[str]) -> BuildRequest:
    """The :class:`BuildRequest` of a ``build-dataset`` command line (a background job's, :func:`core.jobs.job_args`),
    read with the command's own parser; :class:`DatasetError` when it is not a build this version can read."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m core", add_help=False, exit_on_error=False)
    register_cli(parser.add_subparsers(dest="command"))
    try:
        a = parser.parse_args(args)
    except (argparse.ArgumentError, SystemExit) as exc:
        raise DatasetError(f"not a build-dataset command line: {' '.join(args)[:200]}") from exc
    if a.command != "build-dataset":
        raise DatasetError(f"not a build-dataset command line: {' '.join(args)[:200]}")
    split = SplitConfig(a.val_share, a.test_share, a.split_seed, a.split_file)
    return build_request(a.src, params_from_args(a), split, limit_per_class=a.limit_per_class,
                         min_tracks_per_class=a.min_tracks_per_class)


def find_identical_build(src: str | os.PathLike, params: FeatureParams, split: SplitConfig,
                         limit_per_class: int = 0, home: Path | None = None) -> str | None:
    """Why a build of ``src`` with these settings would repeat one that is running (a ``build-*`` job in the data
    home's ``jobs/``) or finished (a complete dataset in ``datasets/``), as a message for the user; None when it
    would not. The same source folder and the same ``build_key`` (:class:`BuildRequest`: features, split, file
    list, cap) are the same dataset, whatever the output folder and the worker count. A request that cannot be
    worked out is no repeat (the build itself then says what is wrong)."""
    from core.jobs import find_job, job_args
    from core.workspace import home_dir, list_datasets

    try:
        mine = build_request(src, params, split, limit_per_class=limit_per_class)
    except DatasetError:
        return None
    for job_dir in sorted(home_dir("jobs", home).glob("build-*")):
        job = find_job(job_dir)
        if job is None or not job.alive():
            continue
        args = job_args(job.command)
        try:
            other = request_from_args(args)
        except (DatasetError, OSError):
            continue
        if (other.src, other.key) == (mine.src, mine.key):
            return (f"Not started: an identical build is running already (“{Path(args[2]).name}”, the same "
                    "audio with the same parameters). Its progress is shown above.")
    for d in list_datasets(home):
        card = d.get("card") or {}
        if d["complete"] and card.get("source") == str(mine.src) \
                and card.get("build_key", card.get("build_id")) == mine.key:
            return (f"Not started: “{d['name']}” was built already from this audio with the same parameters "
                    "(listed below). Change a parameter for a different dataset, or delete that folder to "
                    "build it again.")
    return None


def register_cli(sub) -> None:
    p = sub.add_parser(
        "build-dataset", help="segment a folder of class sub-folders of audio into a mel-spectrogram dataset",
        description="Build a segmented, track-wise split, normalised log-mel dataset from SRC (one sub-folder "
                    "per class, audio files inside: wav, au, mp3, flac, ogg, m4a ...). Resumable: run the same "
                    "command again after a stop (Ctrl-C, --stop-file) or crash and it continues. With --events, "
                    "progress goes to that file (JSON lines) instead of a progress bar.")
    p.add_argument("src", help="source folder: one sub-folder per class")
    p.add_argument("out", help="output dataset folder")
    add_feature_args(p)
    g = p.add_argument_group("split")
    g.add_argument("--val-share", type=float, default=0.1, help="share of tracks for validation (%(default)s)")
    g.add_argument("--test-share", type=float, default=0.1, help="share of tracks for testing (%(default)s)")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the track-wise split (%(default)s)")
    g.add_argument("--split", dest="split_file", default=None,
                   help="custom split: a JSON file {train,val,test: [paths]} or a folder of list files "
                        "(e.g. GTZAN's fault-filtered train/valid/test lists); matched by class/stem")
    p.add_argument("--limit-per-class", type=int, default=0,
                   help="use only the first N tracks of each class, 0 = all (capped builds, smoke runs)")
    p.add_argument("--min-tracks-per-class", type=int, default=None,
                   help="usable tracks a class needs, else it is left out with a warning (default: one per split)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    add_job_args(p)
    p.set_defaults(func=_cli_build)


def _cli_build(a) -> int:
    from core.jobs import JobReport

    # No SIGTERM handler: the build forks worker processes that would inherit it, and Pool.terminate() stops
    # workers with SIGTERM, so they would ignore it and the pool would hang. The stop file is enough; a SIGTERM
    # simply kills the build, which resumes from its finished tracks next time.
    report = JobReport(a, "build", signals=False)
    bar = None

    def progress(done: int, total: int, msg: str) -> None:
        nonlocal bar
        if report.active:
            report.progress(done, total, msg, force=done in (0, total))
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="track", desc="building", dynamic_ncols=True, mininterval=0.5)
        bar.set_postfix_str(msg[-40:], refresh=False)
        bar.update(done - bar.n)

    def work() -> tuple[str, Path]:
        params = params_from_args(a)
        split = SplitConfig(a.val_share, a.test_share, a.split_seed, a.split_file)
        report.emit(message="scanning the source folder", fraction=0.0, done=0, total=None)
        out = build_dataset(a.src, a.out, params, split, workers=a.workers, progress=progress,
                            should_stop=report.should_stop, limit_per_class=a.limit_per_class,
                            min_tracks_per_class=getattr(a, "min_tracks_per_class", None))
        return "dataset built", out

    t0 = time.time()
    try:
        code = report.run(work, failed_code=2)  # stops: errors.Stopped; failures: every GenreLabError
    except KeyboardInterrupt:
        if bar:
            bar.close()
        print("\nstopped; run the same command again to resume.", file=sys.stderr)
        return 130
    finally:
        if bar:
            bar.close()
    if code or report.active:
        return code
    out = Path(a.out)
    ds = load_dataset(out)
    c = ds.card["counts"]
    print(f"dataset: {out} ({time.time() - t0:.1f} s)")
    print(f"classes: {', '.join(ds.classes)}")
    print(f"input shape: {tuple(ds.card['input_shape'])}")
    for s in SPLITS:
        print(f"  {s:5s}: {c[s]['tracks']:5d} tracks, {c[s]['snippets']:6d} snippets")
    if ds.card["n_skipped"]:
        print(f"skipped {ds.card['n_skipped']} files:")
        for r in ds.manifest[ds.manifest["skipped"].astype(bool)].itertuples():
            print(f"  {r.path}: {r.reason}")
    for c, why in (ds.card.get("left_out_classes") or {}).items():
        print(f"warning: {c}: {why}", file=sys.stderr)
    return 0
