"""The reproduction command, model shipping and the predict CLI, on generated audio and on real music."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, shared_path
from core.synth import make_dataset_folder


def _run(args, **kw):
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True, **kw)


def _check_results(out, models=("snippet", "full", "linear", "musicnn")):
    res = out / "results"
    for name in ("runs.csv", "summary.csv", "results.json", "figure4.svg", "export.json"):
        assert (res / name).exists(), name
    doc = json.loads((res / "results.json").read_text())
    assert doc["commit"] and doc["versions"]["keras"] and doc["command"].startswith("python -m core reproduce")
    kinds = {k.split("/")[0] for k in doc["epochs_per_run"]}
    assert kinds == set(models)
    assert "track_vs_segment/test" in doc["paired_tests"]
    assert "<svg" in (res / "figure4.svg").read_text()
    return doc


@pytest.mark.slow
def test_reproduce_fast_on_generated_audio_then_ship_and_predict(tmp_path):
    src = make_dataset_folder(tmp_path / "src", n_classes=3, per_class=10, seconds=8.0)
    out = tmp_path / "repro"
    r = _run(["reproduce", str(src), str(out), "--preset", "fast", "--full-clip", "8"], timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "track-level (sum" in r.stdout and "p = " in r.stdout
    doc = _check_results(out)
    assert doc["n_seeds"] == 2 and doc["preset"] == "fast"
    # the same command again finds everything done and only rewrites the tables
    again = _run(["reproduce", str(src), str(out), "--preset", "fast", "--full-clip", "8"], timeout=600)
    assert again.returncode == 0 and "already done" in again.stdout + again.stderr
    # ship the best snippet model and classify with it
    dest = tmp_path / "models" / "synth-crnn"
    s = _run(["ship-model", str(out), str(dest), "--name", "synth-crnn", "--citation", "generated audio"])
    assert s.returncode == 0, s.stderr[-2000:]
    card = json.loads((dest / "model_card.json").read_text())
    assert card["training_data"]["citation"] == "generated audio" and "segment/test" in card["accuracy"]
    assert (dest / "MODEL_CARD.md").read_text().startswith("# synth-crnn")
    bad = tmp_path / "notes.mp3"
    bad.write_text("not audio")
    clip = next((src / "bass").iterdir())
    p = _run(["predict", "--model", str(dest), str(clip), str(bad)])
    lines = p.stdout.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 2
    assert lines[0].startswith(str(clip)) and "windows" in lines[0]
    assert "error:" in lines[1]


def test_reproduce_rejects_bad_input(tmp_path):
    r = _run(["reproduce", str(tmp_path / "nope"), str(tmp_path / "out"), "--preset", "fast"])
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.shared
@pytest.mark.slow
def test_reproduce_fast_on_emotify(tmp_path):
    data = shared_path("emotify")
    out = tmp_path / "x"
    r = _run(["reproduce", str(data), str(out), "--preset", "fast", "--models", "snippet,full,linear"], timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = _check_results(out, ("snippet", "full", "linear"))
    assert doc["dataset"]["classes"] == ["classical", "electronic", "pop", "rock"]
