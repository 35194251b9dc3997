"""Cold start: the CLI's predict and the dashboard's page-load path import neither TensorFlow nor librosa."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "emotify-crnn"
HEAVY = ("tensorflow", "keras", "librosa", "numba", "torch", "jax")


def _run(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _heavy_report() -> str:
    return ("import sys, json\n"
            f"print('HEAVY=' + json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})), "
            "file=sys.stderr)\n")


def _heavy(stderr: str) -> list[str]:
    line = next(x for x in stderr.splitlines() if x.startswith("HEAVY="))
    return json.loads(line[len("HEAVY="):])


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    import soundfile as sf

    from core.synth import synth_clip

    p = tmp_path_factory.mktemp("clip") / "song.wav"
    sf.write(p, synth_clip(2, 12.0, sr=44100, seed=1), 44100)
    return p


def test_predict_cli_uses_numpy_and_prints_a_header(clip):
    if not (MODEL / "model_card.json").is_file():
        pytest.skip("the shipped model models/emotify-crnn is absent")
    code = ("import sys\nfrom core.__main__ import main\n"
            f"rc = main(['predict', '--model', {str(MODEL)!r}, {str(clip)!r}])\n" + _heavy_report()
            + "sys.exit(rc)\n")
    p = _run(code)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.strip().splitlines()
    # 12 s, the model's windows every 1.5 s (its card's cross-validated default): 6 windows
    assert len(lines) == 1 and lines[0].startswith(str(clip)) and lines[0].endswith("6 windows")
    assert lines[0].split("\t")[1] in ("classical", "electronic", "pop", "rock")
    err = p.stderr
    assert "# model emotify-crnn" in err and "classical, electronic, pop, rock" in err
    assert "NumPy inference" in err and "file\tclass\tscore\twindows" in err
    assert _heavy(err) == []
    assert "tensorflow" not in err.lower().replace("no tensorflow", "")


def test_home_page_imports_neither_tensorflow_nor_librosa(tmp_path):
    """The home page rendered by AppTest in a fresh process (the path of a cold server's first page view)."""
    code = ("import os, sys\n"
            f"os.environ['GENRELAB_HOME'] = {str(tmp_path / 'home')!r}\n"
            "from streamlit.testing.v1 import AppTest\n"
            "at = AppTest.from_file('app.py', default_timeout=120).run()\n"
            "assert not at.exception, at.exception\n"
            "assert at.title[0].value == 'Genre Lab', [t.value for t in at.title]\n" + _heavy_report())
    p = _run(code)
    assert p.returncode == 0, p.stderr[-3000:]
    assert _heavy(p.stderr) == []


def test_home_figure_is_a_well_formed_svg():
    import xml.etree.ElementTree as ET

    from core.synth import divide_and_conquer_example
    from ui.svg_figures import divide_and_conquer_svg

    ex = divide_and_conquer_example()
    svg = divide_and_conquer_svg(ex)
    root = ET.fromstring(svg)  # parses: well-formed
    assert root.tag.endswith("svg") and root.get("viewBox") == "0 0 1100 470"
    text = " ".join(t.text or "" for t in root.iter() if t.tag.endswith(("text", "tspan")))
    for c in ex["classes"]:
        assert c in text
    assert "track → " in text and ex["true_class"] in text  # the sum gets the track right
    assert len(svg) < 60_000


def test_streamlit_does_not_watch_the_data_home():
    """./data (the default data home) sits inside the app folder: the watcher must not follow writes there."""
    import tomllib

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]
    assert cfg["fileWatcherType"] == "poll"  # watches the app's own files only, no recursive inotify on ./
    assert "data" in cfg["folderWatchBlacklist"] and cfg["runOnSave"] is False


@pytest.mark.slow
def test_predict_cli_keras_fallback_prints_no_tensorflow_banner(clip):
    if not (MODEL / "model_card.json").is_file():
        pytest.skip("the shipped model models/emotify-crnn is absent")
    env = dict(__import__("os").environ, GENRELAB_INFERENCE="keras")
    p = subprocess.run([sys.executable, "-m", "core", "predict", "--model", str(MODEL), str(clip)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Keras inference" in p.stderr and p.stdout.strip().endswith("6 windows")
    for noise in ("absl::InitializeLog", "oneDNN", "I0000", "tensorflow"):
        assert noise not in p.stderr, p.stderr
