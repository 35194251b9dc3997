"""One error root (issue 12): every exception core/ raises on purpose is a GenreLabError whose message reaches the
user as it is, in the dashboard (``ui.common.show_error``) and in the CLI (``python -m core``)."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

from conftest import ROOT

_HOLD_LOCK = """
import sys, time
sys.path.insert(0, {root!r})
from core.jobs import StoreLock
StoreLock({store!r}, command={command!r}).acquire()
print("held", flush=True)
time.sleep(60)
"""


def _engine_exceptions() -> dict[str, type]:
    import core

    found = {}
    for info in pkgutil.walk_packages(core.__path__, "core."):  # sub-packages' modules too (core.musicnn.*)
        if info.name == "core.__main__":
            continue
        mod = importlib.import_module(info.name)
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == mod.__name__:
                found[f"{mod.__name__}.{name}"] = obj
    return found


def test_every_engine_exception_derives_from_the_one_root():
    from core.errors import GenreLabError, Stopped

    found = _engine_exceptions()
    assert {"core.jobs.LockError", "core.model_card.ModelError", "core.dataset.BuildStopped",
            "core.numpy_model.UnsupportedModel", "core.musicnn.config.MusicnnError"} <= set(found)
    # the one private control-flow exception (a resumed download restarting from zero) never reaches a user
    stray = [n for n, c in found.items() if not issubclass(c, GenreLabError) and n != "core.download._Restart"]
    assert stray == []
    stops = {n for n, c in found.items() if n.endswith("Stopped")}
    assert stops >= {"core.dataset.BuildStopped", "core.download.DownloadStopped", "core.embeddings.EmbedStopped"}
    assert all(issubclass(found[n], Stopped) for n in stops)


def _start_holder(store, command: str) -> subprocess.Popen:
    code = _HOLD_LOCK.format(root=str(ROOT), store=str(store), command=command)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_store_in_use_is_shown_naming_the_job_that_holds_it(tmp_path, monkeypatch):
    """It used to read 'something went wrong (LockError)': LockError was missing from a list of names."""
    import ui.common
    from core.jobs import LockError, StoreLock, start_job

    shown = []
    monkeypatch.setattr(ui.common.st, "error", lambda msg, **kw: shown.append(msg))
    events = tmp_path / "jobs" / "experiment-0426" / "events.jsonl"
    holder = _start_holder(tmp_path / "store", f"core/__main__.py run-experiment DS --events {events}")
    try:
        with pytest.raises(LockError) as err:
            StoreLock(tmp_path / "store").acquire(timeout=0.1)
        ui.common.show_error(err.value, "could not start the experiment")
        # the dashboard's own path: start_job refuses up front with the same message
        with pytest.raises(LockError) as err2:
            start_job(["run-experiment", "DS"], tmp_path / "jobs" / "second", store=tmp_path / "store")
    finally:
        holder.kill()
        holder.wait()
    assert len(shown) == 1 and "something went wrong" not in shown[0]
    assert shown[0].startswith("could not start the experiment: the store ")
    assert f"job 'experiment-0426', pid {holder.pid}" in shown[0] and "run-experiment DS" in shown[0]
    assert f"job 'experiment-0426', pid {holder.pid}" in str(err2.value)


def test_unexpected_errors_stay_generic_in_the_page(monkeypatch):
    import ui.common

    shown = []
    monkeypatch.setattr(ui.common.st, "error", lambda msg, **kw: shown.append(msg))
    monkeypatch.setattr(ui.common.log, "exception", lambda *a, **k: None)
    ui.common.show_error(KeyError("secret internals"))
    assert shown == ["something went wrong (KeyError). The details are in the server log; try again, or reload "
                     "the page."]


@pytest.mark.parametrize("raised,code,line", [
    ("LockError('the store S is in use by job x')", 2, "error: the store S is in use by job x"),
    ("BuildStopped('stop requested: run the build again to resume')", 130,
     "stopped: stop requested: run the build again to resume"),
])
def test_cli_prints_engine_errors_without_a_traceback(tmp_path, raised, code, line):
    """A GenreLabError that a command lets through: its message and a non-zero exit code, no traceback."""
    script = (
        "import argparse, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import core.__main__ as m\n"
        "from core.jobs import LockError\n"
        "from core.dataset import BuildStopped\n"
        "def fail(a):\n"
        f"    raise {raised}\n"
        "def parser():\n"
        "    p = argparse.ArgumentParser(); p.set_defaults(func=fail); return p\n"
        "m.build_parser = parser\n"
        "sys.exit(m.main([]))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == code and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == line


def test_real_data_tests_skip_saying_what_to_download(monkeypatch, tmp_path):
    """Tests on real music skip where it is absent, and the reason names the command that fetches it (a user has
    no ../shared/README.md to read)."""
    import conftest

    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path / "data")
    for call, want in ((lambda: conftest.shared_path("emotify"), "python -m core download-emotify"),
                       (lambda: conftest.gtzan_path(), "python -m core download-gtzan"),
                       (lambda: conftest.shared_path("gtzan-splits", "fault-filtered"), "train_filtered.txt")):
        with pytest.raises(pytest.skip.Exception) as info:
            call()
        assert want in str(info.value) and "README" not in str(info.value)
    (tmp_path / "data" / "genres").mkdir(parents=True)  # where download-gtzan puts GTZAN
    assert conftest.gtzan_path() == tmp_path / "data" / "genres"


def test_bad_values_a_user_gives_are_engine_errors_and_still_value_errors():
    """A setting or signal a user gives that cannot be used (a 0 s snippet, a hop of 0, an empty clip, too few mel
    bands, a malformed checksum) raises through the one root, so the CLI and the pages show its message as it is;
    it stays a ValueError for the callers that validate with one."""
    import numpy as np

    from core.errors import GenreLabError
    from core.features import FeatureParams
    from core.download import _normalise_sha256
    from core.models import build_snippet_crnn
    from core.musicnn import log_mel
    from core.predictor import aggregate

    calls = [lambda: FeatureParams(snippet_s=0), lambda: aggregate(np.ones((2, 3)), "median"),
             lambda: log_mel(np.zeros(0, np.float32)), lambda: build_snippet_crnn(4, n_mels=4)]
    for call in calls:
        with pytest.raises(GenreLabError) as err:
            call()
        assert isinstance(err.value, ValueError), err.value
    with pytest.raises(GenreLabError, match="not a sha256 hex digest"):
        _normalise_sha256("abc")
