"""First use on the data page (AppTest): download Emotify from a local server, an identical build is refused,
a capped build counts its capped files apart from the faulty ones. (The Enter-key trap needs a real browser:
tests/test_browser.py.)"""
from __future__ import annotations

import threading

import pytest
from test_app import _wait_job, assert_clean, empty_home, open_page, texts  # noqa: F401  (fixture)
from test_download import _Server
from test_download_emotify import _csv, _zip


@pytest.fixture
def emotify_server(monkeypatch):
    srv = _Server()
    srv.files["/emotifymusic.zip"] = _zip(per_genre=3)
    srv.files["/data.csv"] = _csv(per_genre=3)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("GENRELAB_EMOTIFY_URL", srv.url("/emotifymusic.zip"))  # the job process inherits these
    monkeypatch.setenv("GENRELAB_EMOTIFY_CSV_URL", srv.url("/data.csv"))
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.slow
def test_download_emotify_from_the_data_page(empty_home, emotify_server):
    at = open_page("data")
    at.segmented_control(key="data_how").set_value("Download a dataset").run()
    assert_clean(at)
    labels = [b.label for b in at.button]
    assert "Download Emotify" in labels and "Download GTZAN" in labels  # side by side
    next(b for b in at.button if b.label == "Download Emotify").click().run()
    status = _wait_job(empty_home / "jobs" / "download-emotify", timeout=120)
    assert status["state"] == "done", status
    assert "classical 3" in status["message"]
    at.run()
    assert_clean(at)
    target = empty_home / "sources" / "emotify" / "emotify"
    assert any(f"Emotify is here: `{target}`" in t for t in texts(at.success))
    assert sorted(p.name for p in target.iterdir()) == ["classical", "electronic", "pop"]
    assert any(t == f"Source: `{target}`" for t in texts(at.markdown))  # the build form is ready for it
    assert at.text_input[-1].value == "emotify" or "emotify" in [t.value for t in at.text_input]
    assert not (empty_home / "sources" / "emotify" / "emotifymusic.zip").exists()  # the page drops the archive


@pytest.fixture
def built_home(tmp_path, monkeypatch):
    """A data folder with one source and the dataset built from it with the page's default parameters."""
    import os

    from core.dataset import build_dataset
    from core.synth import make_dataset_folder
    from test_app import _without_shipped_models

    home = tmp_path / "home"
    src = make_dataset_folder(home / "sources" / "synth", n_classes=2, per_class=6, seconds=6.0)
    (src / "bass" / "aaa-broken.wav").write_bytes(b"RIFF1234WAVEnot audio")  # sorted first: inside any cap
    build_dataset(src, home / "datasets" / "synth", workers=min(2, os.cpu_count() or 1))
    monkeypatch.setenv("GENRELAB_HOME", str(home))
    _without_shipped_models(monkeypatch)
    return home


def _build_button(at):
    return next(b for b in at.button if b.label == "Build dataset")


@pytest.mark.slow
def test_an_identical_build_is_refused_and_a_capped_one_counts_apart(built_home):
    at = open_page("data")
    assert_clean(at)
    name = next(t for t in at.text_input if t.label == "Dataset name")
    assert name.value == "synth"
    _build_button(at).click().run()  # the same audio, the same parameters as datasets/synth
    assert_clean(at)
    warnings = " ".join(texts(at.warning))
    assert "Not started: “synth” was built already" in warnings
    next(t for t in at.text_input if t.label == "Dataset name").set_value("synth-again")
    _build_button(at).click().run()  # another name does not make it another dataset
    assert "Not started: “synth” was built already" in " ".join(texts(at.warning))
    assert not (built_home / "jobs" / "build-synth-again").exists()

    # a real change (a cap of 4 tracks per class) is a new dataset
    next(t for t in at.text_input if t.label == "Dataset name").set_value("capped")
    next(n for n in at.number_input if n.label == "Tracks per class").set_value(4)
    _build_button(at).click().run()
    assert not any("Not started" in t for t in texts(at.warning))
    status = _wait_job(built_home / "jobs" / "build-capped")
    assert status["state"] == "done", status
    at.run()
    _build_button(at).click().run()  # and the same again is refused while / after it ran
    assert "Not started: “capped” was built already" in " ".join(texts(at.warning))
    at.selectbox(key="data_dataset").set_value("capped").run()
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Skipped files"] == "1"  # aaa-broken.wav; the 5 files over the cap are not faults
    assert any("Capped build: 4 tracks per class; 5 further files" in t for t in texts(at.caption))
    assert any(e.label == "Skipped files (1)" for e in at.expander)
