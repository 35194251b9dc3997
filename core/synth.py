"""Synthetic labelled audio: small, learnable "genres" for tests, demos and smoke runs.

Each class is a distinct texture (a tone pattern at its own pitch and tempo, plus noise), so a CRNN can
learn it in a few epochs. Nothing here pretends to be music; it exists so that every path of the engine
can run without any real dataset present.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

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
