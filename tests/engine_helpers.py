"""Tiny generated datasets for the experiment-engine tests (models, training, prediction, store, jobs)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

#: small features so a CRNN epoch takes ~1 s on 2 cores: 1 s snippets, 16 mel bands, 6 s full clips
TINY = dict(n_mels=16, snippet_s=1.0, overlap_s=0.5, max_snippets=0, full_clip_s=6.0, n_fft=1024, hop_length=512)


def build_tiny(root: Path, n_classes: int = 3, per_class: int = 5, seconds: float = 6.0) -> Path:
    """Synthetic class folders + a built snippet dataset under ``root``; returns the dataset folder."""
    from core.dataset import SplitConfig, build_dataset
    from core.features import FeatureParams
    from core.synth import make_dataset_folder

    src = make_dataset_folder(root / "src", n_classes=n_classes, per_class=per_class, seconds=seconds)
    return build_dataset(src, root / "ds", FeatureParams(**TINY), SplitConfig(0.2, 0.2, 0), workers=1)


def run_core(*args: str, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m core ARGS`` in a subprocess (text output)."""
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=e)


def load_tiny(tmp_path_factory, name: str):
    """A module-scoped tiny dataset (:func:`build_tiny`) loaded as a ``core.dataset.Dataset``."""
    from core.dataset import load_dataset

    return load_dataset(build_tiny(tmp_path_factory.mktemp(name)))


def quick_config(**kw):
    """A one-epoch ``TrainConfig`` for tests (Adam 1e-3, short patience); ``kw`` overrides."""
    from core.train_config import TrainConfig

    return TrainConfig(**{**dict(lr=1e-3, max_epochs=1, patience=3, lr_patience=2), **kw})


#: the shipped from-scratch CRNN (an ensemble of fold models since issue 22)
SHIPPED_CRNN = ROOT / "models" / "emotify-crnn"


def shipped_crnn_member(dst: Path) -> Path:
    """A single-model folder (``model.keras`` + ``model_card.json``) made of the shipped CRNN ensemble's first
    member with its own normalisation: a real, trained CRNN folder for the tests of model folders and cards
    (skips when the shipped model is not in this checkout)."""
    import json
    import shutil

    import pytest

    if not (SHIPPED_CRNN / "model_card.json").is_file():
        pytest.skip("the shipped models/emotify-crnn is not in this checkout")
    card = json.loads((SHIPPED_CRNN / "model_card.json").read_text())
    member = (card.get("members") or [{"file": card.get("model_file", "model.keras"), "norm": card["norm"]}])[0]
    dst.mkdir(parents=True)
    shutil.copyfile(SHIPPED_CRNN / member["file"], dst / "model.keras")
    for k in ("members", "cv", "accuracy", "selected_by", "hop_s"):  # hop_s: the tests' windows every 1 s
        card.pop(k, None)
    card.update(model_file="model.keras", norm=member["norm"], name=f"{card.get('name', 'crnn')} member")
    (dst / "model_card.json").write_text(json.dumps(card))
    return dst
