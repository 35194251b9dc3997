"""Small engine helpers the dashboard needs (no Streamlit here): where things live, what is there, safe
decoding of uploads, the divide-and-conquer illustration and a tiny demo model trained on synthetic audio.

Data home (``$GENRELAB_HOME``, else ``./data`` at the repository root)::

    HOME/
      sources/<name>/          audio folders: extracted zips, GTZAN (sources/gtzan/genres)
      datasets/<name>/         built datasets (core.dataset.build_dataset)
      models/<name>/           models you trained or copied here (model file + model_card.json)
      jobs/                    background job folders (core.jobs)

Shipped models live in ``models/<name>/`` at the repository root, in the layout that
:class:`core.predictor.Predictor` loads (a ``.keras`` file with ``model_card.json`` beside it).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.errors import GenreLabError
from core.utils import read_json

REPO_ROOT = Path(__file__).resolve().parents[1]
HOME_ENV = "GENRELAB_HOME"

#: Formats the demo page accepts (the file uploader lists these; anything else gets a clear message).
UPLOAD_AUDIO_EXTENSIONS = (".mp3", ".wav", ".ogg", ".flac", ".m4a", ".au", ".aiff", ".aif", ".opus")
#: Size limit checked before any decoding (a 5-minute WAV at 48 kHz, 24-bit stereo is about 86 MB).
MAX_CLIP_BYTES = 100 * 1000 * 1000
#: Formats soundfile cannot read are decoded whole by ffmpeg before cutting: a tighter limit (25 MB of AAC
#: at 128 kbit/s is 26 minutes, 140 MB of float32 at 22.05 kHz).
MAX_FFMPEG_BYTES = 25 * 1000 * 1000
#: Longer uploads are cut to their first MAX_CLIP_SECONDS. Peak memory of the demo path (bench/demo_memory.py)
#: is ~450 MB for 3 minutes, ~580 MB for 5 and ~1 GB for 10, so 5 minutes keeps it well under 1 GB.
MAX_CLIP_SECONDS = 300.0


class UploadError(GenreLabError):
    """An uploaded file that cannot be used; the message is for the user."""


# ---------------------------------------------------------------------------------------------------------
# where things live
# ---------------------------------------------------------------------------------------------------------
def data_home() -> Path:
    """``$GENRELAB_HOME`` if set, else ``<repo>/data`` (gitignored)."""
    env = os.environ.get(HOME_ENV, "").strip()
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "data"


def home_dir(kind: str, home: Path | None = None) -> Path:
    """``HOME/<kind>`` for kind in sources, datasets, models, jobs, experiments (not created)."""
    if kind not in ("sources", "datasets", "models", "jobs", "experiments", "uploads"):
        raise ValueError(f"unknown data-home folder {kind!r}")
    return (home or data_home()) / kind


def safe_name(text: str, default: str = "dataset") -> str:
    """A folder name from free text: letters, digits, ``-`` and ``_`` only."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", text.strip()).strip("-_")
    return name[:60] or default


def unique_folder(parent: Path, name: str) -> Path:
    """``parent/name``, or ``parent/name-2``, ``-3`` ... whichever does not exist yet."""
    p = parent / name
    i = 2
    while p.exists():
        p = parent / f"{name}-{i}"
        i += 1
    return p


# ---------------------------------------------------------------------------------------------------------
# what is there
# ---------------------------------------------------------------------------------------------------------
def _count_audio(folder: Path) -> dict[str, int]:
    from core.audio import AUDIO_EXTENSIONS

    out: dict[str, int] = {}
    for child in sorted(folder.iterdir()):
        if child.is_dir() and not child.name.startswith(".") and child.name != "__MACOSX":
            n = sum(1 for f in child.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS and not f.name.startswith("."))
            if n:
                out[child.name] = n
    return out


def describe_source(folder: str | os.PathLike) -> dict[str, Any]:
    """``{"path", "classes": {class: n_audio_files}, "n_files", "ok", "message"}`` for a class-folder tree."""
    p = Path(folder).expanduser()
    info: dict[str, Any] = {"path": str(p), "classes": {}, "n_files": 0, "ok": False, "message": ""}
    if not str(folder).strip():
        info["message"] = "enter the path of a folder"
    elif not p.exists():
        info["message"] = f"folder not found: {p}"
    elif not p.is_dir():
        info["message"] = f"not a folder: {p}"
    else:
        try:
            classes = _count_audio(p)
        except OSError as exc:
            info["message"] = f"cannot read {p}: {exc.strerror or exc}"
            return info
        info["classes"], info["n_files"] = classes, sum(classes.values())
        if len(classes) < 2:
            info["message"] = ("need one sub-folder per class with audio files inside (at least two classes), "
                               f"found {len(classes)} with audio")
        else:
            info["ok"] = True
            info["message"] = f"{len(classes)} classes, {info['n_files']} audio files"
    return info


def list_sources(home: Path | None = None) -> list[dict[str, Any]]:
    """Audio folders under ``HOME/sources`` usable as a build source (GTZAN's ``genres`` folder included)."""
    root = home_dir("sources", home)
    out = []
    if not root.is_dir():
        return out
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        candidates = [child] + [c for c in sorted(child.iterdir()) if c.is_dir() and not c.name.startswith(".")]
        for c in candidates:
            d = describe_source(c)
            if d["ok"]:
                d["name"] = c.relative_to(root).as_posix()
                out.append(d)
                break
    return out


def list_datasets(home: Path | None = None) -> list[dict[str, Any]]:
    """Dataset folders under ``HOME/datasets``: ``{"name", "path", "complete", "card"}`` (newest first)."""
    root = home_dir("datasets", home)
    out = []
    if not root.is_dir():
        return out
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        card_path = child / "card.json"
        card = None
        if card_path.is_file():
            try:
                card = read_json(card_path)
            except (ValueError, OSError):
                card = None
        unfinished = any(child.glob(".work-*"))
        if card is None and not unfinished:
            continue
        out.append({"name": child.name, "path": str(child), "complete": card is not None, "card": card,
                    "mtime": card_path.stat().st_mtime if card is not None else child.stat().st_mtime})
    out.sort(key=lambda d: (-d["mtime"], d["name"]))
    return out


def model_dirs(home: Path | None = None) -> list[tuple[str, Path]]:
    """Where model folders are looked for: ``("shipped", <repo>/models)`` and ``("local", HOME/models)``."""
    return [("shipped", REPO_ROOT / "models"), ("local", home_dir("models", home))]


def list_model_folders(home: Path | None = None) -> list[dict[str, Any]]:
    """Model folders (a ``.keras`` file + ``model_card.json``): ``{"name", "path", "origin", "card"}``.

    Folders whose card or model file is unusable (unreadable, against the card schema, truncated ``.keras``)
    are listed with ``"error"`` (which file and why) and ``"card": None``, so the page lists them as unusable
    and the other models keep working; nothing a folder holds can make this listing fail.
    """
    from core.predictor import CARD_NAME, PredictorError, check_model_file, read_model_card, resolve_model_path

    out = []
    seen: set[str] = set()
    for origin, root in model_dirs(home):
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if not child.is_dir() or child.name.startswith(".") or not (child / CARD_NAME).exists():
                continue
            key = str(child.resolve())
            if key in seen:
                continue
            seen.add(key)
            rec: dict[str, Any] = {"name": child.name, "path": str(child), "origin": origin, "card": None}
            try:
                card = read_model_card(child / CARD_NAME)
                model_file = resolve_model_path(child)
                check_model_file(model_file)  # a truncated .keras: "unreadable", listed as unusable
                rec["model_file"] = str(model_file)
                rec["card"] = card
            except PredictorError as exc:
                rec["error"] = str(exc)
            except Exception as exc:  # noqa: BLE001 - one odd folder must not take the page down
                rec["error"] = f"{child} cannot be read: {type(exc).__name__}: {exc}"[:300]
            out.append(rec)
    return out


# ---------------------------------------------------------------------------------------------------------
# dataset overview and explorer
# ---------------------------------------------------------------------------------------------------------
def dataset_counts(ds):
    """Tracks and snippets per class and split of a built dataset (pandas DataFrame, long format)."""
    import pandas as pd

    m = ds.manifest
    used = m[(~m["skipped"].astype(bool)) & (m["split"] != "")]
    rows = []
    for split in ("train", "val", "test"):
        sub = used[used["split"] == split]
        for c in ds.classes:
            part = sub[sub["class"] == c]
            rows.append({"class": c, "split": split, "tracks": int(len(part)),
                         "snippets": int(part["n_snippets"].sum())})
    return pd.DataFrame(rows)


def skipped_files(ds):
    """Files the build skipped, with the reason (DataFrame: path, class, reason)."""
    m = ds.manifest
    out = m[m["skipped"].astype(bool) | ((m["split"] == "") & m["reason"].astype(bool))]
    return out[["path", "class", "reason"]].reset_index(drop=True)


def track_snippet_rows(ds, manifest_index: int) -> tuple[str, np.ndarray, np.ndarray]:
    """``(split, row indices into that split's arrays, start seconds)`` of one track's snippets."""
    rec = ds.manifest.iloc[int(manifest_index)]
    split = rec["split"]
    if not split:
        return "", np.zeros(0, int), np.zeros(0)
    rows = np.flatnonzero(np.asarray(ds.track(split)) == int(manifest_index))
    return split, rows, np.asarray(ds.start(split))[rows]


def envelope(y: np.ndarray, sr: int, points: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """A light min/max envelope of a waveform for plotting (``2 * points`` values at most)."""
    if y.size <= 2 * points:
        return np.arange(y.size) / sr, y
    k = y.size // points
    blocks = y[: k * points].reshape(points, k)
    lo, hi = blocks.min(axis=1), blocks.max(axis=1)
    t = (np.arange(points) * k + k / 2) / sr
    return np.repeat(t, 2), np.stack([lo, hi], axis=1).ravel()


# ---------------------------------------------------------------------------------------------------------
# uploads
# ---------------------------------------------------------------------------------------------------------
def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_upload(name: str, size: int, max_bytes: int = MAX_CLIP_BYTES,
                 extensions: tuple[str, ...] = UPLOAD_AUDIO_EXTENSIONS) -> str:
    """Validate an upload's name and size before anything is decoded; returns the lower-case extension."""
    ext = Path(name or "").suffix.lower()
    if ext not in extensions:
        shown = ", ".join(e.lstrip(".") for e in extensions)
        raise UploadError(f"“{name}” is not an audio file this app reads ({ext or 'no extension'}); "
                          f"use one of: {shown}")
    if size == 0:
        raise UploadError(f"“{name}” is empty (0 bytes)")
    if size > max_bytes:
        raise UploadError(f"“{name}” is {size / 1e6:.0f} MB; the limit is {max_bytes / 1e6:.0f} MB. "
                          "Cut the part you want to classify (a minute is plenty) and upload that")
    return ext


@dataclass
class DecodedClip:
    y: np.ndarray  # mono float32 at ``sr``
    sr: int
    duration_s: float
    notes: list[str] = field(default_factory=list)


def decode_clip(data: bytes, name: str, sr: int, *, max_seconds: float = MAX_CLIP_SECONDS,
                max_bytes: int = MAX_CLIP_BYTES) -> DecodedClip:
    """Decode uploaded bytes to mono float32 at ``sr`` (the model's rate), with checks and user notes.

    Size and extension are checked first; files longer than ``max_seconds`` keep only their start (read
    partially when the container reports its length, so a long WAV is never decoded whole). Raises
    :class:`UploadError` with a reason for anything unusable (corrupt, not audio, silent).
    """
    from core.audio import AudioError, load_audio, resample

    ext = check_upload(name, len(data), max_bytes)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="genrelab-upload-") as tmp:
        path = Path(tmp) / f"clip{ext}"
        path.write_bytes(data)
        y = None
        total_s = None
        try:
            import soundfile as sf

            info = sf.info(str(path))
            total_s = info.frames / info.samplerate if info.samplerate and info.frames > 0 else None
            if total_s and total_s > max_seconds:
                raw, orig_sr = sf.read(str(path), frames=int(max_seconds * info.samplerate), dtype="float32",
                                       always_2d=True)
                y = resample(np.ascontiguousarray(raw.mean(axis=1)), int(orig_sr), sr)
        except Exception:  # soundfile cannot tell: the normal decoder below decides
            y = None
        if y is None:
            if total_s is None and len(data) > MAX_FFMPEG_BYTES:
                raise UploadError(f"“{name}” is {len(data) / 1e6:.0f} MB; files in this format are limited to "
                                  f"{MAX_FFMPEG_BYTES / 1e6:.0f} MB (they are decoded whole). Cut the part you want "
                                  "to classify, or convert it to mp3, ogg, flac or wav")
            try:
                y = load_audio(path, sr, max_seconds=max_seconds)
            except AudioError as exc:
                raise UploadError(f"“{name}” could not be read: {exc}") from None
            if total_s is None and y.size >= int(max_seconds * sr) - 1:
                notes.append(f"only the first {max_seconds / 60:g} minutes of the file are used")
        if total_s and total_s > max_seconds:
            notes.append(f"only the first {max_seconds / 60:g} minutes of the {total_s / 60:.1f}-minute file "
                         "are used")
    if y.size == 0:
        raise UploadError(f"“{name}” contains no audio samples")
    if not np.any(np.abs(y) > 1e-4):
        raise UploadError(f"“{name}” is silent: nothing to classify")
    return DecodedClip(np.ascontiguousarray(y, dtype=np.float32), sr, y.size / sr, notes)


def classify_clip(predictor, clip: DecodedClip, window_s: float | None = None, hop_s: float = 1.0,
                  aggregation: str = "sum"):
    """Classify a decoded clip with a :class:`core.predictor.Predictor`; the clip's notes come first."""
    res = predictor.predict_array(clip.y, clip.sr, window_s, hop_s, aggregation)
    res.notes = list(clip.notes) + list(res.notes)
    return res


def slice_wav(y: np.ndarray, sr: int, start_s: float, end_s: float) -> bytes:
    """WAV bytes of ``y[start_s:end_s]`` (for playing one window)."""
    from core.audio import encode_wav_bytes

    a = max(0, int(round(start_s * sr)))
    b = min(y.size, max(a + 1, int(round(end_s * sr))))
    return encode_wav_bytes(y[a:b], sr)


# ---------------------------------------------------------------------------------------------------------
# the divide-and-conquer illustration (home page)
# ---------------------------------------------------------------------------------------------------------
def divide_and_conquer_example(seconds: float = 15.1, true_class: int = 2, intruder_class: int = 4,
                               n_classes: int = 5, sr: int = 22050, seed: int = 3) -> dict[str, Any]:
    """A synthetic track cut into the article's snippets (3 s, 1 s overlap), each snippet scored, the scores
    summed into the track's class.

    The track is a ``core.synth`` texture of ``true_class`` with a passage of ``intruder_class`` in the
    middle, so one or two snippets vote wrongly while the sum stays right. The snippet scores come from a
    real (if simple) classifier: cosine similarity of the snippet's mean log-mel spectrum to each class's
    template (computed from other synthetic clips), turned into a softmax. Not the CRNN: an illustration.
    """
    from core.features import FeatureParams, mel_spectrogram, track_snippets
    from core.synth import CLASS_NAMES, synth_clip

    params = FeatureParams(sample_rate=sr)
    y = synth_clip(true_class, seconds, sr, seed=seed)
    a, b = int(0.42 * y.size), int(0.62 * y.size)
    y[a:b] = synth_clip(intruder_class, (b - a) / sr, sr, seed=seed + 1)[: b - a]
    X, starts = track_snippets(y, params, select=False)
    classes = CLASS_NAMES[:n_classes]

    def profile(m: np.ndarray) -> np.ndarray:
        v = m.mean(axis=0)
        v = v - v.mean()
        return v / (np.linalg.norm(v) + 1e-9)

    templates = np.stack([profile(mel_spectrogram(synth_clip(k, 6.0, sr, seed=100 + k), params))
                          for k in range(n_classes)])
    sims = np.stack([templates @ profile(x) for x in X])  # (n_snippets, n_classes) in [-1, 1]
    z = sims * 12.0
    z -= z.max(axis=1, keepdims=True)
    scores = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    step = max(1, y.size // 6000)  # a light waveform for plotting
    return {
        "sr": sr, "duration_s": y.size / sr, "classes": list(classes), "true_class": classes[true_class],
        "intruder_class": classes[intruder_class], "intruder_span": (a / sr, b / sr),
        "wave_t": np.arange(0, y.size, step) / sr, "wave_y": y[::step],
        "starts": starts, "ends": starts + params.snippet_s, "snippet_s": params.snippet_s,
        "overlap_s": params.overlap_s, "scores": scores, "total": scores.sum(axis=0),
    }


# ---------------------------------------------------------------------------------------------------------
# a tiny demo model (synthetic audio; seconds to train)
# ---------------------------------------------------------------------------------------------------------
DEMO_MODEL_NAME = "synthetic-demo"


def train_demo_model(out_dir: str | os.PathLike, *, n_classes: int = 4, per_class: int = 5, seconds: float = 9.0,
                     epochs: int = 4, seed: int = 0,
                     progress: Callable[[str, float], None] | None = None,
                     should_stop: Callable[[], bool] | None = None) -> Path:
    """Train a small snippet CRNN on ``core.synth`` textures and save it in the layout ``Predictor`` loads:
    ``out_dir/model.keras`` + ``out_dir/model_card.json``. Takes tens of seconds on two cores.

    It recognises synthetic textures, not music: it exists so that the demo page and its tests work with no
    real model. ``progress(message, fraction)`` reports the steps.
    """
    from core.dataset import SplitConfig, build_dataset, load_dataset
    from core.features import FeatureParams
    from core.predictor import make_model_card, write_model_card
    from core.synth import make_dataset_folder
    from core.train import TrainConfig, load_model, train_run
    from core.utils import atomic_write_bytes

    def say(msg: str, frac: float) -> None:
        if progress:
            progress(msg, frac)

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="genrelab-demo-") as tmp:
        tmp = Path(tmp)
        say("generating synthetic audio", 0.05)
        src = make_dataset_folder(tmp / "src", n_classes=n_classes, per_class=per_class, seconds=seconds,
                                  seed=seed)
        say("building the snippet dataset", 0.15)
        params = FeatureParams()
        build_dataset(src, tmp / "ds", params, SplitConfig(0.2, 0.0, seed), workers=1)
        ds = load_dataset(tmp / "ds")
        config = TrainConfig(lr=1e-3, batch_size=8, max_epochs=epochs, patience=epochs)

        def on_epoch(rec: dict) -> None:
            say(f"epoch {rec['epoch']}/{epochs}: val accuracy {rec['val_accuracy']:.0%}",
                0.25 + 0.7 * rec["epoch"] / epochs)

        say("training", 0.25)
        res = train_run(ds, "snippet", seed, config, tmp / "run", on_epoch=on_epoch, should_stop=should_stop)
        if res.status == "stopped":
            raise InterruptedError("training stopped on request")
        say("calibrating", 0.96)
        model = load_model(tmp / "run" / "last.keras")  # best-by-val-loss is meaningless before calibration
        X, _ = ds.load_split("train", config.norm_method)
        recalibrate_batchnorm(model, X[..., None])
        val_acc = _accuracy(model, ds, config.norm_method)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save(tmp / "model.keras")
        atomic_write_bytes(out_dir / "model.keras", (tmp / "model.keras").read_bytes())
        card = make_model_card(
            "snippet", ds.classes, params, ds.norm, config.norm_method,
            name=DEMO_MODEL_NAME,
            description="Tiny demo model trained in seconds on synthetic textures (core.synth), not on music. "
                        "It only tells the generated test sounds apart.",
            trained_on=f"synthetic: {n_classes} classes x {per_class} clips x {seconds:g} s",
            metrics={"val_snippet_accuracy": val_acc, "epochs": res.epochs_run},
            synthetic=True)
        write_model_card(out_dir, card)
    say("done", 1.0)
    return out_dir


def recalibrate_batchnorm(model, X: np.ndarray) -> None:
    """Batch-norm statistics of ``model`` set to those of ``X`` (see :func:`core.train.recalibrate_batchnorm`)."""
    from core.train import recalibrate_batchnorm as recalibrate

    recalibrate(model, [X])


def _accuracy(model, ds, norm_method: str) -> float | None:
    if len(ds.y("val")) == 0:
        return None
    X, y = ds.load_split("val", norm_method)
    pred = np.asarray(model.predict(X[..., None], verbose=0)).argmax(axis=1)
    return float((pred == y).mean())


def demo_clip_wav(label_index: int = 1, seconds: float = 7.0, sr: int = 22050, seed: int = 42) -> bytes:
    """WAV bytes of a synthetic clip (for trying the demo page without music at hand)."""
    from core.audio import encode_wav_bytes
    from core.synth import synth_clip

    return encode_wav_bytes(synth_clip(label_index, seconds, sr, seed=seed), sr)


def copy_tree_atomic(src: Path, dest: Path) -> None:
    """Copy a folder to ``dest`` via a temporary sibling and a rename."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    os.replace(tmp, dest)



# ---------------------------------------------------------------------------------------------------------
# experiment results in words, live progress
# ---------------------------------------------------------------------------------------------------------
LEVEL_WORDS = {"segment": "segment-level", "track_sum": "track-level (sum)", "track_vote": "track-level (vote)",
               "track_logprob": "track-level (log-prob)", "full": "the 30 s model"}


def _paired_words(a, b, name_a: str, name_b: str) -> dict[str, Any] | None:
    """Two accuracy series indexed by seed, compared over their common seeds (``core.evaluate.paired_test``)
    and put into one sentence: ``{"text", "n", "wins", "mean_diff", "p"}``; None when no seed has both."""
    import math

    from core.evaluate import paired_test

    seeds = sorted(set(a.index) & set(b.index))
    if not seeds:
        return None
    va, vb = a.loc[seeds].to_numpy(dtype=float), b.loc[seeds].to_numpy(dtype=float)
    d = va - vb
    if len(seeds) >= 2 and np.ptp(d) <= 1e-12:  # the same difference in every seed (e.g. two deterministic
        t = {"mean_diff": float(d.mean()), "p_ttest": math.nan, "p_wilcoxon": None}  # fits): no test
    else:
        t = paired_test(va, vb)
    wins = int(sum(a.loc[s] > b.loc[s] for s in seeds))
    ties = int(sum(a.loc[s] == b.loc[s] for s in seeds))
    diff = 100 * t["mean_diff"]
    n = len(seeds)
    if n == 1:
        text = (f"{name_a} {'beat' if diff > 0 else 'did not beat'} {name_b} on the one seed run "
                f"({diff:+.1f} points); run more seeds for a paired test.")
    else:
        p = t["p_ttest"]
        ptxt = f"p = {p:.3g} (paired t-test)" if p is not None and not math.isnan(p) else \
            "no p-value (the difference is the same in every seed)"
        if ties == n:
            text = f"{name_a} and {name_b} were equally accurate in all {n} seeds (difference 0), {ptxt}."
        else:
            tie_txt = f" (tied in {ties})" if ties else ""
            text = f"{name_a} beat {name_b} in {wins} of {n} seeds{tie_txt}, mean {diff:+.1f} points, {ptxt}."
        if t.get("p_wilcoxon") is not None:
            text = text[:-1] + f"; Wilcoxon signed-rank p = {t['p_wilcoxon']:.3g}."
    return {"text": text[0].upper() + text[1:], "n": n, "wins": wins, "mean_diff": t["mean_diff"],
            "p": t.get("p_ttest")}


def _accuracy_by_seed(results, kind: str, level: str, split: str):
    df = results[(results["split"] == split) & (results["kind"] == kind) & (results["level"] == level)]
    return df.drop_duplicates("seed").set_index("seed")["accuracy"]


def paired_sentence(results, level_a: str = "track_sum", level_b: str = "segment", split: str = "test",
                    kind: str = "snippet") -> dict[str, Any] | None:
    """The paired comparison of two levels of one model kind over seeds in plain words:
    ``{"text", "n", "wins", "mean_diff", "p"}``, or None when no seed has both levels."""
    return _paired_words(_accuracy_by_seed(results, kind, level_a, split),
                         _accuracy_by_seed(results, kind, level_b, split),
                         LEVEL_WORDS.get(level_a, level_a), LEVEL_WORDS.get(level_b, level_b))


#: How the model comparisons of the experiment page read: (kind, level) -> (subject, object) phrases.
MODEL_WORDS = {("snippet", "track_sum"): ("the snippet CRNN's track-level accuracy", "the snippet CRNN's"),
               ("snippet", "segment"): ("the snippet CRNN's segment-level accuracy", "the snippet CRNN's"),
               ("linear", "track_sum"): ("the linear baseline's track-level accuracy", "the linear baseline's"),
               ("full", "full"): ("the 30 s CRNN's accuracy", "the 30 s CRNN's")}


def paired_models_sentence(results, a: tuple[str, str] = ("snippet", "track_sum"),
                           b: tuple[str, str] = ("linear", "track_sum"), split: str = "test",
                           ) -> dict[str, Any] | None:
    """Two models compared over the seeds they share, in plain words, e.g. "The snippet CRNN's track-level
    accuracy beat the linear baseline's in 5 of 5 seeds, mean +12.3 points, p = 0.001 (paired t-test)." ``a`` and
    ``b`` are ``(kind, level)``. None when no seed has both."""
    name_a = MODEL_WORDS.get(a, (f"{a[0]} {LEVEL_WORDS.get(a[1], a[1])}",) * 2)[0]
    name_b = MODEL_WORDS.get(b, (f"{b[0]} {LEVEL_WORDS.get(b[1], b[1])}",) * 2)[1]
    return _paired_words(_accuracy_by_seed(results, *a, split), _accuracy_by_seed(results, *b, split),
                         name_a, name_b)


def experiment_plan(command: list[str]) -> dict[str, Any]:
    """Seeds and models of a ``run-experiment`` job from its command line (``job.json``)."""
    def arg(flag: str, default: str) -> str:
        return command[command.index(flag) + 1] if flag in command and command.index(flag) + 1 < len(command) \
            else default

    seeds_txt = arg("--seeds", "1")
    try:
        seeds = [int(s) for s in seeds_txt.split(",") if s.strip()] if "," in seeds_txt else list(range(int(seeds_txt)))
    except ValueError:
        seeds = []
    models = [m.strip() for m in arg("--models", "snippet,full").split(",") if m.strip()]
    dataset = command[command.index("run-experiment") + 1] if "run-experiment" in command else ""
    return {"seeds": seeds, "models": models, "n_runs": len(seeds) * len(models), "dataset": dataset}


def experiment_progress(events: list[dict], n_runs: int) -> dict[str, Any]:
    """Where a running experiment is, from its events: current run, epoch, batch, per-epoch curves of the
    current run, runs finished, the last messages."""
    cur: dict[str, Any] = {"run": None, "seed": None, "model": None, "epoch": 0, "max_epochs": None, "batch": 0,
                           "n_batches": None, "phase": None, "curves": [], "finished": [], "messages": []}
    finished: dict[str, str] = {}
    for ev in events:
        run = ev.get("run")
        if run and run != cur["run"]:
            cur.update(run=run, seed=ev.get("seed"), model=ev.get("model"), epoch=0, batch=0, n_batches=None,
                       curves=[])
        phase = ev.get("phase")
        cur["phase"] = phase or cur["phase"]
        if phase == "batch":
            cur.update(epoch=ev.get("epoch", cur["epoch"]), batch=ev.get("batch", 0), n_batches=ev.get("n_batches"))
        elif phase == "train" and ev.get("metrics"):
            cur["curves"].append({"epoch": ev.get("epoch"), **ev["metrics"]})
            cur.update(epoch=ev.get("epoch", cur["epoch"]), max_epochs=ev.get("max_epochs", cur["max_epochs"]),
                       batch=0)
        if run and ev.get("state") in ("done", "failed", "stopped") and phase in ("evaluate", "skip", "train", None):
            finished[run] = ev["state"]
        if ev.get("message") and phase != "batch":
            cur["messages"].append(ev["message"])
    cur["finished"] = finished
    cur["n_done"] = sum(1 for s in finished.values() if s == "done")
    cur["n_runs"] = n_runs
    cur["messages"] = cur["messages"][-6:]
    return cur


def experiment_groups(runs: list[dict]) -> list[dict[str, Any]]:
    """Runs of a store grouped into experiments: same (snippet) dataset and same training settings.

    A store can hold several experiments (other datasets, other presets); averaging across them would mix
    apples and oranges. Returns ``[{"key", "label", "dataset", "run_ids", "n_seeds", "updated"}]``, the most
    recently updated first. Full-clip runs belong to the snippet dataset they were derived from (``X-full``).
    """
    import json

    groups: dict[str, dict[str, Any]] = {}
    for r in runs:
        ds = str(r.get("dataset") or "")
        if r.get("kind") == "full":
            ds = re.sub(r"-full(\d+(\.\d+)?s)?$", "", ds)  # X-full or X-full60s: derived from X
        cfg = r.get("config") or {}
        if isinstance(cfg, str):
            try:
                cfg = json.loads(cfg)
            except ValueError:
                cfg = {}
        cfg = {k: v for k, v in cfg.items() if k not in ("workers",)}
        key = f"{ds}|{json.dumps(cfg, sort_keys=True)}"
        g = groups.setdefault(key, {"key": key, "dataset": ds, "config": cfg, "run_ids": [], "seeds": set(),
                                    "kinds": set(), "updated": ""})
        g["run_ids"].append(r["id"])
        g["seeds"].add(r.get("seed"))
        g["kinds"].add(r.get("kind"))
        g["updated"] = max(g["updated"], str(r.get("updated_at") or r.get("created_at") or ""))
    out = []
    for g in groups.values():
        cfg = g["config"]
        from core.experiment import preset_name

        preset = preset_name(cfg)
        bits = [f"preset {preset}"] if preset else []
        if "lr" in cfg:
            bits.append(f"lr {cfg['lr']:g}")
        if "max_epochs" in cfg:
            bits.append(f"≤ {cfg['max_epochs']} epochs")
        if cfg.get("max_train_batches"):
            bits.append(f"{cfg['max_train_batches']} batches/epoch")
        name = Path(g["dataset"]).name or "?"
        g["n_seeds"] = len(g["seeds"])
        g["label"] = f"{name} · {', '.join(bits) or 'default settings'} · {g['n_seeds']} seed" + \
            ("s" if g["n_seeds"] != 1 else "")
        out.append(g)
    out.sort(key=lambda g: g["updated"], reverse=True)
    return out


# ---------------------------------------------------------------------------------------------------------
# hosted (Streamlit Community Cloud) caps
# ---------------------------------------------------------------------------------------------------------
#: On a small shared host (690 MB-2.7 GB of memory, files lost on reboot) training is capped.
HOSTED_CAPS = {"tracks_per_class": 20, "seeds": 2, "epochs": 5}


def hosted_mode() -> bool:
    """True on Streamlit Community Cloud (apps run from ``/mount/src``) or when ``GENRELAB_HOSTED=1``;
    ``GENRELAB_HOSTED=0`` turns the caps off."""
    env = os.environ.get("GENRELAB_HOSTED")
    if env is not None:
        return env.strip() not in ("", "0", "false", "no")
    return str(REPO_ROOT).startswith("/mount/src")


def hosted_note() -> str:
    c = HOSTED_CAPS
    return (f"Running on a small shared host (Streamlit Community Cloud): builds use at most {c['tracks_per_class']} "
            f"tracks per class and experiments at most {c['seeds']} seeds of at most {c['epochs']} epochs, so they "
            "finish in minutes and fit in memory; files written here are lost when the app restarts. Run "
            "`python -m core` on your own machine for full-size experiments (set GENRELAB_HOSTED=0 to lift the caps).")
