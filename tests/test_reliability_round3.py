"""Reliability, round three (issue 20): poisoned audio, archive bombs, full disks, damaged stores, model cards
and smaller attacks. Each test here failed on the code before the fix (see the issue for the exact repros)."""
from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT, make_test_store

SHIPPED = ROOT / "models" / "emotify-crnn"
PY = [sys.executable, "-c"]


def _poisoned_wav(path: Path, seconds: float = 4.0, sr: int = 22050, value: float = np.inf) -> Path:
    """A float WAV of noise with NaN, +Inf and -Inf samples (or ``value`` everywhere from 1 s on)."""
    y = (np.random.default_rng(7).standard_normal(int(sr * seconds)) * 0.1).astype(np.float32)
    if np.isfinite(value):
        y[sr:] = value
    else:
        y[sr:sr + 1000] = np.inf
        y[sr + 2000] = np.nan
        y[sr + 3000] = -np.inf
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, y, sr, subtype="FLOAT")
    return path


def _shipped_model() -> Path:
    if not (SHIPPED / "model_card.json").exists():
        pytest.skip("the shipped models/emotify-crnn is not in this checkout")
    return SHIPPED


# --- 1. non-finite samples ------------------------------------------------------------------------------------
def test_a_float_wav_with_nan_and_inf_is_skipped_and_the_dataset_stays_finite(tmp_path):
    from core.dataset import build_dataset, load_dataset
    from core.synth import make_dataset_folder

    src = make_dataset_folder(tmp_path / "src", n_classes=2, per_class=4, seconds=4.0)
    _poisoned_wav(src / "bass" / "poison.wav")
    _poisoned_wav(src / "tone" / "huge.wav", value=1e30)  # finite, but its power spectrum overflows
    ds = load_dataset(build_dataset(src, tmp_path / "ds", workers=1))
    m = ds.manifest.set_index("path")
    assert m.loc["bass/poison.wav", "skipped"] and "non-finite samples" in m.loc["bass/poison.wav", "reason"]
    assert m.loc["tone/huge.wav", "skipped"] and "non-finite features" in m.loc["tone/huge.wav", "reason"]
    assert int((~m["skipped"].astype(bool)).sum()) == 8  # every other file is built
    norm = json.loads((ds.path / "norm.json").read_text())
    assert np.isfinite([norm["min"], norm["max"]]).all() and norm["max"] > norm["min"]
    assert np.isfinite(norm["mean"]).all() and np.isfinite(norm["std"]).all()
    for s in ("train", "val", "test"):
        assert np.isfinite(np.asarray(ds.X(s))).all()


@pytest.mark.parametrize("name", ["poison.wav", "poison.mp4"], ids=["soundfile", "ffmpeg"])
def test_every_decoder_refuses_non_finite_samples(tmp_path, name):
    from core.audio import AudioError, UploadError, decode_clip, load_audio, load_audio_prefix, stream_audio

    p = _poisoned_wav(tmp_path / "poison.wav")
    if name != p.name:
        p = Path(shutil.copy(p, tmp_path / name))  # ffmpeg reads it (not a soundfile extension)
    for decode in (lambda: load_audio(p, 22050), lambda: load_audio(p, 16000),
                   lambda: load_audio_prefix(p, 22050, 3 * 22050), lambda: list(stream_audio(p, 22050, 1.0)),
                   lambda: list(stream_audio(p, 16000, 1.0))):
        with pytest.raises(AudioError, match=r"non-finite samples \(NaN or infinity\) from 1\.00 s"):
            decode()
    with pytest.raises(UploadError, match="could not be read: non-finite samples"):
        decode_clip(p.read_bytes(), "poison.wav", 22050)
    with pytest.raises(UploadError, match="non-finite samples"):  # a long upload is read partially: checked too
        decode_clip(p.read_bytes(), "poison.wav", 22050, max_seconds=2.0)


def test_predict_refuses_non_finite_audio_clearly(tmp_path):
    from core.audio import AudioError
    from core.predictor import Predictor

    model = _shipped_model()
    p = _poisoned_wav(tmp_path / "poison.wav")
    huge = _poisoned_wav(tmp_path / "huge.wav", value=1e30)
    pred = Predictor(model)
    with pytest.raises(AudioError, match="non-finite samples"):
        pred.predict_file(p)
    with pytest.raises(AudioError, match="non-finite features"):
        pred.predict_file(huge)
    with pytest.raises(AudioError, match="non-finite features"):
        pred.predict_array(sf.read(huge, dtype="float32")[0])
    r = subprocess.run([sys.executable, "-m", "core", "predict", "--model", str(model), str(p)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.strip() == f"{p}\terror: " + r.stdout.strip().split("error: ", 1)[1]
    assert "non-finite samples" in r.stdout and "0.250" not in r.stdout


# --- 2. archive bombs -------------------------------------------------------------------------------------------
class _Zeros(io.RawIOBase):
    def __init__(self, n: int):
        self.n = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        k = min(len(b), self.n)
        b[:k] = bytes(k)
        self.n -= k
        return k


def _tar_gz(path: Path, members: dict[str, int | bytes]) -> Path:
    """A tar.gz of members given as bytes or as a number of zero bytes (streamed: nothing big in memory)."""
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = data if isinstance(data, int) else len(data)
            tf.addfile(info, io.BufferedReader(_Zeros(data)) if isinstance(data, int) else io.BytesIO(data))
    return path


def _noise_au(seed: int, seconds: float = 0.5) -> bytes:
    buf = io.BytesIO()
    y = np.random.default_rng(seed).uniform(-0.5, 0.5, int(22050 * seconds)).astype(np.float32)
    sf.write(buf, y, 22050, format="AU", subtype="PCM_16")
    return buf.getvalue()


def test_tar_bomb_is_refused_before_it_is_written_and_nothing_is_left(tmp_path):
    from core.archives import ArchiveError, extract_tar_safely

    bomb = _tar_gz(tmp_path / "bomb.tar.gz", {"genres/blues/blues.00000.wav": 30_000_000,
                                               "genres/rock/rock.00000.wav": 30_000_000})
    assert bomb.stat().st_size < 200_000
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises(ArchiveError, match=r"would expand more than 100 times .*blues\.00000\.wav"):
        extract_tar_safely(bomb, into)
    assert list(into.iterdir()) == []
    # a real (incompressible) archive passes; the limits are parameters
    ok = _tar_gz(tmp_path / "ok.tar.gz", {f"genres/{g}/{g}.{i:05d}.au": _noise_au(10 * k + i)
                                          for k, g in enumerate(("blues", "rock")) for i in range(2)})
    assert extract_tar_safely(ok, into) == 4
    for kwargs, message in (({"max_member_bytes": 10_000}, r"more than the limit of 10.00 KB per file"),
                            ({"max_total_bytes": 50_000}, r"unpack to more than 50.00 KB"),
                            ({"max_files": 3}, r"more than 3 files")):
        again = tmp_path / f"again-{len(message)}"
        again.mkdir()
        with pytest.raises(ArchiveError, match=message):
            extract_tar_safely(ok, again, **kwargs)
        assert list(again.iterdir()) == []  # what was extracted before the refusal is removed


def test_download_gtzan_refuses_a_tar_bomb_served_over_http(tmp_path):
    """The issue's repro, scaled down: a tar.gz of zero-filled WAVs served by ``python3 -m http.server``."""
    serve = tmp_path / "www"
    serve.mkdir()
    _tar_gz(serve / "bomb.tar.gz", {"genres/blues/blues.00000.wav": 20_000_000,
                                    "genres/rock/rock.00000.wav": 20_000_000})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=serve,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        dest = tmp_path / "D"
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        r = subprocess.run([sys.executable, "-m", "core", "download-gtzan", str(dest), "--url",
                            f"http://127.0.0.1:{port}/bomb.tar.gz", "--quiet"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120, env=env)
    finally:
        server.kill()
        server.wait()
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "GTZAN is ready" not in r.stdout
    assert "would expand more than 100 times" in r.stderr, r.stderr
    assert sorted(p.name for p in dest.iterdir()) == []  # no genres/, no temporary folder, no archive


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_zip_of_many_small_zero_members_is_refused_as_a_whole(tmp_path):
    from core.archives import DatasetArchiveError, extract_zip_dataset

    # each member under the 1 MB per-member exemption; together 12 MB from ~30 KB
    data = _zip({f"d/{'ab'[i % 2]}/{i}.wav": bytes(200_000) for i in range(60)})
    assert len(data) < 60_000
    (tmp_path / "sources").mkdir()
    with pytest.raises(DatasetArchiveError, match=r"60 files would expand \d+ times together .*limit of 100"):
        extract_zip_dataset(io.BytesIO(data), tmp_path / "sources" / "up")
    assert list((tmp_path / "sources").iterdir()) == []
    # a little silence in a small zip stays allowed (1 MB floor), and so does real audio
    ok = _zip({"d/a/1.au": _noise_au(1), "d/b/1.au": _noise_au(2), "d/b/quiet.wav": bytes(500_000)})
    assert extract_zip_dataset(io.BytesIO(ok), tmp_path / "sources" / "ok").is_dir()


# --- 3. full disk ---------------------------------------------------------------------------------------------------
def _arrays(path: Path) -> dict:
    return {f: (path / f).read_bytes() for f in sorted(os.listdir(path)) if f.endswith(".npy") or f == "norm.json"}


def _leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith(".tmp"))


def test_build_checks_free_space_before_the_arrays_and_resumes(tmp_path, monkeypatch):
    import core.dataset as d
    from core.errors import DiskFullError
    from core.synth import make_dataset_folder

    src = make_dataset_folder(tmp_path / "src", n_classes=2, per_class=4, seconds=6.0)
    ref = d.build_dataset(src, tmp_path / "ref", workers=1)
    out = tmp_path / "ds"
    real = shutil.disk_usage
    monkeypatch.setattr(d.shutil, "disk_usage", lambda p: real(p)._replace(free=1_000_000))
    with pytest.raises(DiskFullError, match=r"not enough disk space in .* for the dataset's arrays: .* needed, "
                                            r"1\.00 MB free.*run the same command again"):
        d.build_dataset(src, out, workers=1)
    assert not (out / "card.json").exists() and not list(out.glob("*.npy")) and _leftovers(out) == []
    assert len(list(next(out.glob(".work-*")).glob("*.npz"))) == 8  # the finished tracks are kept
    monkeypatch.setattr(d.shutil, "disk_usage", real)
    calls = []
    d.build_dataset(src, out, workers=1, progress=lambda done, total, m: calls.append(m))
    assert calls[0] == "8 of 8 tracks already done"
    assert _arrays(out) == _arrays(ref)


def test_enospc_while_writing_tracks_stops_the_build_clearly_and_it_resumes(tmp_path, monkeypatch):
    import core.dataset as d
    from core.errors import DiskFullError
    from core.synth import make_dataset_folder

    src = make_dataset_folder(tmp_path / "src", n_classes=2, per_class=4, seconds=6.0)
    ref = d.build_dataset(src, tmp_path / "ref", workers=1)
    out = tmp_path / "ds"
    real_savez, calls = np.savez, []

    def savez(fh, **arrays):
        calls.append(1)
        if len(calls) == 4:
            fh.write(b"x" * 1000)  # a partial file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_savez(fh, **arrays)

    monkeypatch.setattr(np, "savez", savez)
    with pytest.raises(DiskFullError, match=r"the disk holding .* is full .*tracks finished so far .* are kept.*"
                                            r"run the same command again: it resumes"):
        d.build_dataset(src, out, workers=1)
    assert _leftovers(out) == []
    work = next(out.glob(".work-*"))
    assert len(list(work.glob("*.npz"))) == 3 and len(list(work.glob("*.json"))) == 4  # params.json + 3 tracks
    monkeypatch.setattr(np, "savez", real_savez)
    d.build_dataset(src, out, workers=1)
    assert _arrays(out) == _arrays(ref)
    assert all(not r["skipped"] for r in json.loads((out / "manifest.json").read_text()))


def test_enospc_in_array_and_atomic_writes_becomes_one_clear_error(tmp_path, monkeypatch):
    import core.utils as u
    from core.errors import DiskFullError

    class Full(io.FileIO):
        limit = 3000

        def write(self, b):
            if self.tell() + len(b) > self.limit:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(b)

    monkeypatch.setattr(u, "open", lambda p, mode: Full(p, mode), raising=False)
    with pytest.raises(DiskFullError, match=r"the disk is full: .*X\.npy could not be written"):
        with u.NpyWriter(tmp_path / "X.npy", np.float32, (10, 100)) as w:
            for _ in range(10):
                w.write(np.ones((1, 100)))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(u.os, "fsync", fsync)
    with pytest.raises(DiskFullError, match=r"the disk is full: .*card\.json could not be written"):
        u.atomic_write_json(tmp_path / "card.json", {"a": 1})
    assert os.listdir(tmp_path) == []


@pytest.fixture
def tmpfs(tmp_path):
    """A 6 MB tmpfs (needs root and mount; skipped, saying why, otherwise); unmounted afterwards."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs (the unit tests above cover the same paths)")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_build_on_a_really_full_tmpfs_fails_clearly_then_resumes(tmp_path, tmpfs):
    """The issue's repro, scaled: a tmpfs too small for the build gave SIGBUS (exit 135, no message) in the
    memory-mapped array write, then an OSError traceback on the next run."""
    from core.errors import DiskFullError
    from core.synth import make_dataset_folder
    from core.utils import NpyWriter

    with pytest.raises(DiskFullError):  # ordinary writes: a full tmpfs is an error, not SIGBUS
        with NpyWriter(tmpfs / "big.npy", np.float32, (2000, 1000)) as w:
            for _ in range(2000):
                w.write(np.ones((1, 1000)))
    assert os.listdir(tmpfs) == []
    src = make_dataset_folder(tmp_path / "src", n_classes=2, per_class=5, seconds=30.0)
    out = tmpfs / "ds"
    cmd = [sys.executable, "-m", "core", "build-dataset", str(src), str(out), "--workers", "2"]
    for _ in range(2):  # the first run and a rerun on the still too small disk: the same clear message
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (r.returncode, r.stderr[-2000:])
        assert "error: the disk holding" in r.stderr or "error: not enough disk space" in r.stderr, r.stderr[-800:]
        assert _leftovers(out) == [] and not (out / "card.json").exists()
    subprocess.run(["mount", "-o", "remount,size=40m", str(tmpfs)], check=True)
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ref = subprocess.run(cmd[:5] + [str(tmp_path / "ref")] + cmd[6:], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert ref.returncode == 0
    assert _arrays(out) == _arrays(tmp_path / "ref")


# --- 4. damaged experiment stores ---------------------------------------------------------------------------------
def _checkpointed_store(path: Path) -> Path:
    import sqlite3

    make_test_store(path, ["a", "b", "c", "d"], seeds=(0, 1))
    con = sqlite3.connect(path / "experiments.sqlite")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return path


def test_garbage_over_any_page_of_the_index_gives_a_clear_error(tmp_path):
    from core.store import DamagedStoreError, Store, results_frame

    base = _checkpointed_store(tmp_path / "base")
    n_pages = (base / "experiments.sqlite").stat().st_size // 4096
    rng = np.random.default_rng(3)
    for page in range(1, n_pages + 1):
        s = tmp_path / f"p{page}"
        shutil.copytree(base, s)
        with open(s / "experiments.sqlite", "r+b") as fh:
            fh.seek((page - 1) * 4096)
            fh.write(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        with pytest.raises(DamagedStoreError, match=rf"index {s / 'experiments.sqlite'} is damaged .*"
                                                    rf"python -m core repair-store {s}"):
            results_frame(Store(s, create=False))
    r = subprocess.run([sys.executable, "-m", "core", "results", "--store", str(tmp_path / "p3")], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "repair-store" in r.stderr, r.stderr


@pytest.fixture(scope="module")
def real_store(tmp_path_factory):
    """A store with two real evaluated runs (the linear baseline, seeds 0 and 1) on a tiny dataset."""
    from core.dataset import build_dataset
    from core.experiment import preset_config, run_experiment
    from core.synth import make_dataset_folder

    root = tmp_path_factory.mktemp("real-store")
    src = make_dataset_folder(root / "src", n_classes=2, per_class=5, seconds=6.0)
    ds = build_dataset(src, root / "ds", workers=1)
    run_experiment(ds, root / "store", seeds=[0, 1], models=["linear"], config=preset_config("fast"))
    return root


def _copy_store(real_store: Path, dst: Path) -> Path:
    shutil.copytree(real_store / "store", dst, ignore=shutil.ignore_patterns(".lock*"))
    return dst


def _everything(store) -> dict:
    from core.store import Store

    s = Store(store, create=False)
    keep = lambda rows: sorted(tuple(sorted((k, str(v)) for k, v in r.items() if k not in ("updated_at",)))
                               for r in rows)
    return {t: keep(s.query(f"SELECT * FROM {t}")) for t in ("runs", "epochs", "metrics", "predictions")}


def test_an_empty_index_beside_run_folders_is_refused_and_repair_store_rebuilds_it(real_store, tmp_path):
    from core.experiment import preset_config, run_experiment
    from core.store import DamagedStoreError, Store, repair_store

    store = _copy_store(real_store, tmp_path / "store")
    before = _everything(store)
    assert all((f / "results.json").is_file() for f in (store / "runs").iterdir())
    history = {f.name: (f / "history.json").stat().st_mtime_ns for f in (store / "runs").iterdir()}
    (store / "experiments.sqlite").write_bytes(b"")
    for p in store.glob("experiments.sqlite-*"):
        p.unlink()
    with pytest.raises(DamagedStoreError, match=r"experiments\.sqlite is empty \(0 bytes\) although 2 run folder"):
        Store(store, create=False)
    with pytest.raises(DamagedStoreError, match="repair-store"):  # never a silent new store that retrains
        run_experiment(real_store / "ds", store, seeds=[0, 1], models=["linear"], config=preset_config("fast"))
    assert {f.name: (f / "history.json").stat().st_mtime_ns for f in (store / "runs").iterdir()} == history
    r = subprocess.run([sys.executable, "-m", "core", "results", "--store", str(store)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no results yet" not in r.stdout and "repair-store" in r.stderr, r.stderr
    # an empty but valid index (what the old code created over the 0-byte file) is refused too
    sqlite_empty = tmp_path / "empty"
    Store(sqlite_empty)
    shutil.copy(sqlite_empty / "experiments.sqlite", store / "experiments.sqlite")
    with pytest.raises(DamagedStoreError, match=r"lists 0 run\(s\), but 2 run folder\(s\) with results"):
        Store(store, create=False)
    r = subprocess.run([sys.executable, "-m", "core", "repair-store", str(store)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "2 run(s) complete from their results.json" in r.stdout
    assert _everything(store) == before
    assert list(store.glob("experiments.sqlite.before-repair-*"))  # the old file is kept
    assert repair_store(store)["healthy"]


def test_repair_store_rebuilds_older_runs_and_the_experiment_evaluates_them_again(real_store, tmp_path):
    from core.experiment import preset_config, run_experiment
    from core.store import EVALUATE_AGAIN, Store, repair_store

    store = _copy_store(real_store, tmp_path / "store")
    before = _everything(store)
    for f in (store / "runs").iterdir():
        (f / "results.json").unlink()  # a run folder written before results.json existed
    with open(store / "experiments.sqlite", "r+b") as fh:  # and a damaged index
        fh.seek(0)
        fh.write(b"garbage" * 100)
    rep = repair_store(store)
    assert sorted(rep["evaluate_again"]) == sorted(f.name for f in (store / "runs").iterdir())
    runs = Store(store, create=False).runs()
    assert {r["status"] for r in runs} == {"stopped"} and {r["message"] for r in runs} == {EVALUATE_AGAIN}
    assert {r["kind"] for r in runs} == {"linear"} and sorted(r["seed"] for r in runs) == [0, 1]
    assert all(Store(store).epochs(r["id"]) for r in runs)  # the training history came back
    run_experiment(real_store / "ds", store, seeds=[0, 1], models=["linear"], config=preset_config("fast"))
    after = _everything(store)
    for t in ("metrics", "predictions"):
        assert after[t] == before[t], t
    no_time = lambda rows: [tuple(kv for kv in r if kv[0] != "seconds") for r in rows]  # the baseline refits
    assert no_time(after["epochs"]) == no_time(before["epochs"])
    assert {r["status"] for r in Store(store).runs()} == {"done"}


def test_repair_store_takes_metrics_from_a_readable_old_index(real_store, tmp_path):
    from core.store import repair_store

    store = _copy_store(real_store, tmp_path / "store")
    before = _everything(store)
    for f in (store / "runs").iterdir():
        (f / "results.json").unlink()
    rep = repair_store(store, force=True)
    assert sorted(rep["from_old_index"]) == sorted(f.name for f in (store / "runs").iterdir())
    after = _everything(store)
    for t in ("metrics", "predictions", "epochs"):
        assert after[t] == before[t], t


def test_experiment_page_names_the_damaged_store_and_the_repair(tmp_path, monkeypatch):
    from test_app import _bare_home, assert_clean, open_page, texts

    home = _bare_home(tmp_path, monkeypatch, "home")
    _checkpointed_store(home / "experiments")
    (home / "experiments" / "runs" / "snippet-s0-x").mkdir(parents=True)
    (home / "experiments" / "runs" / "snippet-s0-x" / "history.json").write_text("[]")
    with open(home / "experiments" / "experiments.sqlite", "r+b") as fh:
        fh.seek(3 * 4096)
        fh.write(bytes(range(256)) * 16)
    at = open_page("experiment")
    assert_clean(at)
    assert any("is damaged" in t and "repair-store" in t for t in texts(at.error)), texts(at.error)
    # a lost index beside the run folders is reported, not taken for "no experiment yet"
    (home / "experiments" / "experiments.sqlite").unlink()
    at = open_page("experiment")
    assert_clean(at)
    assert any("no index" in t and "repair-store" in t for t in texts(at.error)), texts(at.error)


# --- 5. model cards: one schema -------------------------------------------------------------------------------------
def _card_copy(dst: Path, tamper=None, text: str | None = None) -> Path:
    from engine_helpers import shipped_crnn_member

    shipped_crnn_member(dst)  # a single-model card: the fields below are its own, not an ensemble member's
    if text is not None:
        (dst / "model_card.json").write_text(text)
    elif tamper is not None:
        card = json.loads((dst / "model_card.json").read_text())
        tamper(card)
        (dst / "model_card.json").write_text(json.dumps(card))
    return dst


def test_a_deeply_nested_card_is_a_clear_error_not_a_recursion_error(tmp_path):
    from core.predictor import Predictor, PredictorError
    from core.synth import synth_clip

    folder = _card_copy(tmp_path / "m", text="[" * 100_000 + "]" * 100_000)
    with pytest.raises(PredictorError, match="model_card.json is not a readable model card: JSON nested too deeply"):
        Predictor(folder)
    clip = tmp_path / "clip.wav"
    sf.write(clip, synth_clip(0, 4.0), 22050)
    r = subprocess.run([sys.executable, "-m", "core", "predict", "--model", str(folder), str(clip)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "RecursionError" not in r.stderr, r.stderr
    assert "nested too deeply" in r.stderr


CARD_ATTACKS = [
    ("bogus_kind", lambda c: c.update(kind="bogus"), r"kind is 'bogus' \(one of snippet, full, linear, musicnn"),
    ("kind_list", lambda c: c.update(kind=["snippet"]), r"kind is \['snippet'\]"),
    ("linear_on_crnn", lambda c: c.update(kind="linear"), r"kind 'linear', but the model is a snippet CRNN"),
    ("musicnn_on_crnn", lambda c: c.update(kind="musicnn"), r"kind 'musicnn', but the model is a snippet CRNN"),
    ("min_equals_max", lambda c: c["norm"].update(max=c["norm"]["min"]), r"norm\.max .* is not above norm\.min"),
    ("max_below_min", lambda c: c["norm"].update(max=-200.0), r"norm\.max .* is not above norm\.min"),
    ("inf_max", lambda c: c["norm"].update(max=float("inf")), r"norm\.max is inf"),
    ("nan_mean", lambda c: c["norm"]["mean"].__setitem__(3, float("nan")), r"norm\.mean must be a list of 100 finite"),
    ("zero_std", lambda c: c["norm"]["std"].__setitem__(5, 0.0), r"norm\.std holds a value <= 0"),
    ("short_std", lambda c: c["norm"].update(std=[1.0] * 3), r"norm\.std must be a list of 100 finite"),
]


@pytest.mark.parametrize("name,tamper,message", CARD_ATTACKS, ids=[a[0] for a in CARD_ATTACKS])
def test_cards_are_checked_against_the_registry_and_the_model(tmp_path, name, tamper, message):
    from core.predictor import Predictor
    from core.model_card import ModelCardError

    folder = _card_copy(tmp_path / "m", tamper)
    with pytest.raises(ModelCardError, match=message) as err:
        Predictor(folder)
    assert "model_card.json" in str(err.value)


def test_the_card_kinds_are_the_model_registry(real_store, tmp_path):
    """The Keras-free list of kinds (``core.train_config.KINDS``) is the registry (``core.models.BUILDERS``) plus
    the musicnn head, with the names their models carry; a card naming the wrong kind for a real linear
    baseline is refused, and each shipped card passes."""
    from core.models import BUILDERS, build_model
    from core.predictor import Predictor
    from core.model_card import ModelCardError, read_model_card
    from core.train_config import KIND_MODEL_NAMES, KINDS

    assert set(KINDS) == set(BUILDERS) | {"musicnn"}
    for kind in BUILDERS:
        assert build_model(kind, 3, 32, 130 if kind == "full" else None).name == KIND_MODEL_NAMES[kind]
    for card in sorted((ROOT / "models").glob("*/model_card.json")):
        assert read_model_card(card)["kind"] in KINDS
    run = next((real_store / "store" / "runs").iterdir())
    folder = shutil.copytree(run, tmp_path / "linear")
    Predictor(folder)  # its own card fits
    card = json.loads((folder / "model_card.json").read_text())
    (folder / "model_card.json").write_text(json.dumps(dict(card, kind="snippet")))
    with pytest.raises(ModelCardError, match=r"kind 'snippet', but the model is the linear baseline"):
        Predictor(folder)


# --- 6. smaller: links, control characters, temp files, locks ----------------------------------------------------
def test_symbolic_links_in_the_source_are_not_followed_and_say_why(tmp_path):
    from core.dataset import build_dataset, load_dataset
    from core.synth import make_dataset_folder

    src = make_dataset_folder(tmp_path / "src", n_classes=2, per_class=4, seconds=4.0)
    other = make_dataset_folder(tmp_path / "elsewhere", n_classes=3, per_class=4, seconds=4.0)
    (src / "pulse").symlink_to(other / "pulse", target_is_directory=True)  # a class folder outside the source
    (src / "bass2").symlink_to(src / "bass", target_is_directory=True)  # the same files twice
    (src / "tone" / "extra.wav").symlink_to(other / "pulse" / "pulse.00000.wav")
    (src / "tone" / "sub").symlink_to(other / "bass", target_is_directory=True)
    ds = load_dataset(build_dataset(src, tmp_path / "ds", workers=1))
    assert ds.classes == ["bass", "tone"]
    m = ds.manifest.set_index("path")
    assert "outside the source folder): not followed" in m.loc["pulse", "reason"]
    assert str((other / "pulse").resolve()) in m.loc["pulse", "reason"]
    assert "inside the source folder: its files would count twice" in m.loc["bass2", "reason"]
    assert "not followed" in m.loc["tone/extra.wav", "reason"] and "not followed" in m.loc["tone/sub", "reason"]
    assert not any(str(p).startswith(("pulse/", "bass2/", "tone/sub/")) for p in m.index)
    assert set(ds.card["left_out_classes"]) == {"pulse", "bass2"}
    used = ds.manifest[~ds.manifest["skipped"].astype(bool)]
    assert all(str(tmp_path / "src") in p and "elsewhere" not in p for p in used["abs_path"])
    r = subprocess.run([sys.executable, "-m", "core", "build-dataset", str(src), str(tmp_path / "ds2"),
                        "--workers", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "warning: pulse: class left out: its folder is a symbolic link" in r.stderr


def test_control_characters_in_class_and_file_names_keep_one_line_per_file(tmp_path):
    from core.synth import synth_clip

    model = shutil.copytree(_shipped_model(), tmp_path / "m")
    card = json.loads((model / "model_card.json").read_text())
    card["classes"] = ["classical\nfake.wav\trock\t1.000", "electronic\r", "pop\x1b[2J", "rock\u2028x"]
    (model / "model_card.json").write_text(json.dumps(card))
    files = [tmp_path / "a.wav", tmp_path / "b\nc.wav"]
    for i, f in enumerate(files):
        sf.write(f, synth_clip(i, 4.0), 22050)
    r = subprocess.run([sys.executable, "-m", "core", "predict", "--model", str(model)] + [str(f) for f in files],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[-1] == "" and len(lines) == 3, r.stdout  # one line per file, nothing else
    from core.predictor import one_line

    for line, f in zip(lines, files):
        cols = line.split("\t")
        assert len(cols) == 4 and cols[0] == one_line(str(f)) and cols[1] in [one_line(c) for c in card["classes"]]
        assert "\r" not in line and "\x1b" not in line and "\u2028" not in line
    assert "classical\\nfake.wav\\trock" in r.stderr  # the header too
    assert one_line("pop\x1b[2J") == "pop\\x1b[2J" and one_line("rock é") == "rock é"


_KILLED_WRITER = """
import os, signal, sys
sys.path.insert(0, {root!r})
real = os.replace
def replace(a, b):
    if str(b).endswith("model_card.json"):
        os.kill(os.getpid(), signal.SIGKILL)  # killed between writing the temp file and renaming it
    return real(a, b)
os.replace = replace
from core.model_card import write_model_card
write_model_card({folder!r}, {{"kind": "snippet"}})
"""


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(tmp_path):
    from core.model_card import write_model_card

    folder = tmp_path / "run"
    folder.mkdir()
    r = subprocess.run(PY + [_KILLED_WRITER.format(root=str(ROOT), folder=str(folder))], timeout=60)
    assert r.returncode == -signal.SIGKILL
    assert [p.name for p in folder.glob(".model_card.json.*.tmp")], "the kill should leave a temp file"
    write_model_card(folder, {"kind": "snippet", "classes": ["a"]})
    assert sorted(p.name for p in folder.iterdir()) == ["model_card.json"]
    from core.utils import clean_stale_temps, host_id

    # only dead writers' files go: a live writer's (this process), another host's recent one stay
    live = folder / f".x.json.{os.getpid()}@{host_id()}.abcdefgh.tmp"
    dead = folder / f".x.json.999999999@{host_id()}.abcdefgh.tmp"
    other_new = folder / ".x.json.123@0badf00d.abcdefgh.tmp"
    other_old = folder / ".x.json.124@0badf00d.abcdefgh.tmp"
    legacy_old = folder / ".x.json.k2j4h5g6.tmp"
    for p in (live, dead, other_new, other_old, legacy_old):
        p.write_text("partial")
    for p in (other_old, legacy_old):
        os.utime(p, (time.time() - 2 * 86400,) * 2)
    removed = clean_stale_temps(folder, force=True)
    assert sorted(p.name for p in removed) == sorted(p.name for p in (dead, other_old, legacy_old))
    assert live.exists() and other_new.exists()


_HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from core.jobs import StoreLock
StoreLock({store!r}, command="python -m core run-experiment HOLDER").acquire()
print("held", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("delete", [(".lock",), (".lock", ".lock.json")], ids=["lock", "lock-and-record"])
def test_deleting_a_held_lock_file_never_gives_two_holders(tmp_path, delete):
    from core.jobs import LockError, StoreLock

    store = tmp_path / "store"
    holder = subprocess.Popen(PY + [_HOLDER.format(root=str(ROOT), store=str(store))], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockError) as err:
            StoreLock(store).acquire(timeout=0.2)
        msg = str(err.value)
        assert f"pid {holder.pid}" in msg and "run-experiment HOLDER" in msg and "since 20" in msg
        assert "delete" not in msg.lower()
        for name in delete:
            (store / name).unlink()
        with pytest.raises(LockError, match=rf"pid {holder.pid} .*was deleted while it ran; it still holds"):
            StoreLock(store).acquire(timeout=0.2)
        assert StoreLock(store).holder()["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    with StoreLock(store, command="next") as lock:  # the holder is gone: the lock is free again
        assert lock.held and StoreLock(store).holder()["command"] == "next"


def test_atomic_writes_give_new_files_the_umask_mode_and_keep_an_existing_files_mode(tmp_path):
    """mkstemp makes 0600 temp files: a card written atomically must not become unreadable to other users."""
    import stat as st

    from core.utils import _UMASK, atomic_write_json

    new = tmp_path / "card.json"
    atomic_write_json(new, {"a": 1})
    assert st.S_IMODE(new.stat().st_mode) == 0o666 & ~_UMASK
    os.chmod(new, 0o640)
    atomic_write_json(new, {"a": 2})
    assert st.S_IMODE(new.stat().st_mode) == 0o640 and json.loads(new.read_text()) == {"a": 2}
