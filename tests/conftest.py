"""Shared fixtures: generated audio only (tests never need the real data in ../shared/)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data; the calling test is skipped, with the reason, when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not present: {p} (see ../shared/README.md)")
    return p


def gtzan_path() -> Path:
    """Full GTZAN when it is in ../shared/data/gtzan, else the GTZAN excerpts; skip when neither is there."""
    for name in ("gtzan", "gtzan-excerpts"):
        p = SHARED_DATA / name
        if p.exists():
            return p
    pytest.skip(f"no GTZAN audio in {SHARED_DATA} (gtzan/ or gtzan-excerpts/)")


@pytest.fixture
def genre_folder(tmp_path):
    """A GTZAN-layout folder of 3 synthetic classes x 6 tracks x 8 s (wav)."""
    from core.synth import make_dataset_folder

    return make_dataset_folder(tmp_path / "src", n_classes=3, per_class=6, seconds=8.0)
