"""Synthetic labelled audio: small, learnable "genres" for tests, demos and smoke runs.

Each class is a distinct texture (a tone pattern at its own pitch and tempo, plus noise), so a CRNN can
learn it in a few epochs. Nothing here pretends to be music; it exists so that every path of the engine
can run without any real dataset present. Built on the textures:

* :func:`divide_and_conquer_example`: the home page's illustration (a track cut into scored snippets);
* :func:`train_demo_model` (``python -m core demo-model OUT``): a tiny CRNN the demo page can use before any
  real model exists; :func:`demo_clip_wav`: a clip to try it on.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.errors import Stopped

CLASS_NAMES = ["bass", "tone", "pulse", "noise", "chirp", "chord", "beat", "sweep", "drone", "click"]


def synth_clip(label_index: int, seconds: float, sr: int = 22050, seed: int = 0) -> np.ndarray:
    """One clip of class ``label_index`` (0..9), float32 mono in [-1, 1]."""
    rng = np.random.default_rng(seed * 7919 + label_index)
    n = max(1, int(round(seconds * sr)))
    t = np.arange(n, dtype=np.float64) / sr
    k = label_index % len(CLASS_NAMES)
    f0 = 110.0 * 2 ** (k * 0.5) * (1 + 0.03 * rng.standard_normal())
    tempo = 1.0 + k * 0.7 + 0.2 * rng.random()
    env = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * tempo * t + rng.random() * 6.28))
    if k in (3, 9):  # noise-like classes
        y = rng.standard_normal(n) * (0.3 if k == 3 else 0.05)
        if k == 9:
            clicks = (np.arange(n) % int(sr / tempo / 2) == 0).astype(np.float64)
            y += np.convolve(clicks, np.hanning(64), mode="same")
    elif k in (4, 7):  # frequency sweeps
        f = f0 * (1 + 0.5 * np.sin(2 * np.pi * (0.25 + 0.1 * k) * t))
        y = 0.4 * np.sin(2 * np.pi * np.cumsum(f) / sr)
    elif k == 5:  # chord
        y = sum(0.15 * np.sin(2 * np.pi * f0 * r * t) for r in (1.0, 1.25, 1.5))
    else:
        y = 0.4 * np.sin(2 * np.pi * f0 * t) * env + 0.1 * np.sin(2 * np.pi * 2 * f0 * t)
    y = y + 0.02 * rng.standard_normal(n)
    return np.clip(y, -1, 1).astype(np.float32)


def make_dataset_folder(root: str | Path, n_classes: int = 3, per_class: int = 6, seconds: float = 8.0,
                        sr: int = 22050, fmt: str = "wav", seed: int = 0) -> Path:
    """Write ``root/<class>/<class>.000NN.<fmt>`` files (the GTZAN layout); returns ``root``."""
    import soundfile as sf

    root = Path(root)
    for c in range(n_classes):
        name = CLASS_NAMES[c]
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            y = synth_clip(c, seconds, sr, seed=seed * 1000 + i)
            sf.write(root / name / f"{name}.{i:05d}.{fmt}", y, sr, format=fmt.upper() if fmt != "au" else "AU")
    return root


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
# a tiny demo model (synthetic audio; seconds to train): ``python -m core demo-model OUT``
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
    from core.model_card import make_model_card, write_model_card
    from core.models import load_model
    from core.train import TrainConfig, recalibrate_batchnorm, train_run
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
            raise Stopped("training stopped on request")
        say("calibrating", 0.96)
        model = load_model(tmp / "run" / "last.keras")  # best-by-val-loss is meaningless before calibration
        X, _ = ds.load_split("train", config.norm_method)
        recalibrate_batchnorm(model, [X[..., None]])
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


def _accuracy(model, ds, norm_method: str) -> float | None:
    if len(ds.y("val")) == 0:
        return None
    X, y = ds.load_split("val", norm_method)
    pred = np.asarray(model.predict(X[..., None], verbose=0)).argmax(axis=1)
    return float((pred == y).mean())


def demo_clip_wav(label_index: int = 1, seconds: float = 7.0, sr: int = 22050, seed: int = 42) -> bytes:
    """WAV bytes of a synthetic clip (for trying the demo page without music at hand)."""
    from core.audio import encode_wav_bytes

    return encode_wav_bytes(synth_clip(label_index, seconds, sr, seed=seed), sr)


def _cli_demo_model(a) -> int:
    """Train the demo model into a temporary sibling of OUT, then move it into place (OUT is complete or absent)."""
    import shutil

    from core.jobs import JobReport

    report = JobReport(a, "demo-model")
    out = Path(a.out)
    tmp = out.with_name(f".{out.name}.training")

    def progress(message: str, fraction: float) -> None:
        report.progress(fraction, 1.0, message, force=True)  # with the time elapsed and left
        if not report.active:
            print(f"{fraction:4.0%} {message} ({report.time_words(fraction)})", flush=True)

    def work() -> tuple[str, Path]:
        report.emit(message="starting", fraction=0.0)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            train_demo_model(tmp, epochs=a.epochs, should_stop=report.should_stop, progress=progress)
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return "demo model ready", out

    return report.run(work)


def register_cli(sub) -> None:
    from core.jobs import add_job_args

    p = sub.add_parser("demo-model", help="train the tiny demo model on synthetic textures (about half a minute)",
                       description="Train a small snippet CRNN on core.synth textures (not music) into OUT "
                                   "(model.keras + model_card.json, the layout the demo page and Predictor load). "
                                   "It only tells the generated test sounds apart; stopping discards it.")
    p.add_argument("out", help="model folder to write (replaced when training succeeds)")
    p.add_argument("--epochs", type=int, default=4, help="training epochs (%(default)s)")
    add_job_args(p, stop_help="stop when this file appears (nothing is kept: start again from scratch)")
    p.set_defaults(func=_cli_demo_model)
