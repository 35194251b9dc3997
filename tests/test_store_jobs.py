"""Experiment store (SQLite), results frames, export/import, schema refusal; job lock and events."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys

import pytest

from conftest import ROOT


def _fill(store, seeds=(0, 1, 2)):
    from core.evaluate import classification_metrics
    from core.store import make_run_id

    for seed in seeds:
        rid = make_run_id("b1", "snippet", seed, {"lr": 1e-3})
        store.upsert_run(rid, "/data/ds", "b1", "snippet", seed, {"lr": 1e-3}, "running")
        store.add_epochs(rid, [{"epoch": 1, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.4,
                                "lr": 1e-3, "seconds": 2.0, "best": True}])
        seg = classification_metrics([0, 1, 1, 0], [0, 1, 0, seed % 2], ["a", "b"])
        trk = classification_metrics([0, 1], [0, 1], ["a", "b"])
        preds = [{"track": "a/x.wav", "start_s": 0.0, "true": "a", "pred": "a", "scores": [0.9, 0.1]}]
        store.write_evaluation(rid, {("segment", "test"): {"metrics": seg, "predictions": preds},
                                     ("track_sum", "test"): {"metrics": trk, "predictions": preds}})


def test_store_results_summary_and_export_roundtrip(tmp_path):
    from core.store import SCHEMA_VERSION, Store, export_results, import_results, results_frame, summary_frame

    s = Store(tmp_path / "store")
    assert (tmp_path / "store" / "experiments.sqlite").exists() and s.schema_version == SCHEMA_VERSION == 3
    _fill(s)
    df = results_frame(s)
    assert len(df) == 6 and set(df["level"]) == {"segment", "track_sum"}
    assert set(df["status"]) == {"done"} and set(df["epochs"]) == {1}
    summ = summary_frame(df)
    seg = summ[summ["level"] == "segment"].iloc[0]
    assert seg["n_seeds"] == 3
    assert seg["accuracy_mean"] == pytest.approx((0.75 + 0.5 + 0.75) / 3)
    assert "±" in seg["accuracy"]
    rid = df["run_id"].iloc[0]
    assert s.metrics_extra(rid, "segment", "test")["confusion"]
    assert len(s.predictions_frame(rid, "segment", "test")) == 1
    out = export_results(s, tmp_path / "res.json")
    csv = export_results(s, tmp_path / "res.csv")
    back = import_results(out)
    assert len(back) == 6 and back["accuracy"].sum() == pytest.approx(df["accuracy"].sum())
    assert len(import_results(csv)) == 6
    other = Store(tmp_path / "other")
    import_results(out, other)
    assert len(results_frame(other)) == 6 and set(results_frame(other)["source"]) == {"imported"}


def test_newer_store_is_refused_untouched(tmp_path):
    from core.store import Store, StoreError

    s = Store(tmp_path / "st")
    with sqlite3.connect(s.db_path) as con:
        con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    con.close()
    before = hashlib.sha256(s.db_path.read_bytes()).hexdigest()
    with pytest.raises(StoreError, match="newer"):
        Store(tmp_path / "st")
    assert hashlib.sha256(s.db_path.read_bytes()).hexdigest() == before
    with pytest.raises(StoreError, match="no experiment store"):
        Store(tmp_path / "nothing", create=False)


def test_lock_names_its_holder_and_is_released_with_it(tmp_path):
    from core.jobs import LockError, StoreLock

    code = ("import sys, time; sys.path.insert(0, %r); from core.jobs import StoreLock; "
            "StoreLock(%r, command='python -m core run-experiment X').acquire(); print('held', flush=True); "
            "time.sleep(60)") % (str(ROOT), str(tmp_path))
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockError, match=f"pid {holder.pid}.*run-experiment"):
            StoreLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with StoreLock(tmp_path, command="second") as lock:  # the kernel released the dead holder's lock
        assert json.loads((tmp_path / ".lock.json").read_text())["pid"] == os.getpid()
        with pytest.raises(LockError):
            StoreLock(tmp_path).acquire()
    assert not (tmp_path / ".lock.json").exists() and not lock.held


def test_events_are_read_incrementally(tmp_path):
    from core.jobs import EventLog, StopFlag, read_events, request_stop

    log = EventLog(tmp_path / "ev.jsonl")
    log.emit(state="running", epoch=1)
    evs, off = read_events(log.path)
    assert [e["epoch"] for e in evs] == [1]
    with open(log.path, "a") as fh:
        fh.write('{"state": "runn')  # a line being written
    log2, off2 = read_events(log.path, off)
    assert log2 == [] and off2 == off
    with open(log.path, "a") as fh:
        fh.write('ing", "epoch": 2}\n')
    evs, off = read_events(log.path, off)
    assert [e["epoch"] for e in evs] == [2]
    flag = StopFlag(tmp_path / "job" / "STOP")
    assert not flag()
    request_stop(tmp_path / "job")
    assert flag()
