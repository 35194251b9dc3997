"""Experiments end to end: fast preset, skip/resume, bad input, a SIGKILLed job resumed, the CLI."""
from __future__ import annotations

import json
import time

import pytest

from engine_helpers import build_tiny, run_core


@pytest.fixture(scope="module")
def tiny_ds(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("exp"))


def _fast(**kw):
    from core.experiment import preset_config

    return preset_config("fast", **kw)


def test_fast_experiment_end_to_end_then_skips_finished_runs(tiny_ds, tmp_path):
    from core.evaluate import compare_levels
    from core.experiment import run_experiment
    from core.predictor import Predictor
    from core.store import Store, results_frame, summary_frame

    events = []
    out = run_experiment(tiny_ds, tmp_path / "store", seeds=[0, 1], models=["snippet", "full"], config=_fast(),
                         progress=events.append)
    assert not out["stopped"] and [r["status"] for r in out["runs"]] == ["done"] * 4
    df = results_frame(tmp_path / "store")
    levels = set(zip(df["level"], df["split"]))
    for level in ("segment", "track_sum", "track_vote", "track_logprob", "full"):
        assert (level, "test") in levels and (level, "val") in levels
    assert df["accuracy"].between(0, 1).all()
    summ = summary_frame(df)
    assert set(summ["n_seeds"]) == {2}
    t = compare_levels(df, "track_sum", "segment", "test")
    assert t["n"] == 2 and t["seeds"] == [0, 1]
    assert any(e.get("phase") == "train" and e.get("epoch") == 2 for e in events)
    # artefacts: the run folder is a loadable model
    store = Store(tmp_path / "store")
    run = store.runs()[0]
    rd = store.run_dir(run["id"])
    for f in ("best.keras", "last.keras", "model_card.json", "history.json", "state.json"):
        assert (rd / f).exists(), f
    assert Predictor(rd).classes == ["bass", "pulse", "tone"]
    assert len(store.epochs(run["id"])) == 2
    full_ds = tiny_ds.with_name(tiny_ds.name + "-full")
    assert json.loads((full_ds / "split.json").read_text())["test"] == \
        json.loads((tiny_ds / "split.json").read_text())["test"]
    # again: everything is skipped, nothing retrained
    events.clear()
    t0 = time.time()
    again = run_experiment(tiny_ds, tmp_path / "store", seeds=[0, 1], models=["snippet", "full"], config=_fast(),
                           progress=events.append)
    assert all(r.get("skipped") for r in again["runs"]) and time.time() - t0 < 20
    assert not any(e.get("phase") == "train" for e in events)
    # CLI view of the same store
    p = run_core("results", "--store", str(tmp_path / "store"), "--csv", str(tmp_path / "r.csv"))
    assert p.returncode == 0, p.stderr
    assert "track_sum" in p.stdout and "paired t" in p.stdout and (tmp_path / "r.csv").exists()


def test_bad_input_gives_clear_errors_and_overwrites_nothing(tiny_ds, tmp_path):
    from core.experiment import ExperimentError, run_experiment
    from core.store import Store, StoreError
    from core.train import TrainError

    with pytest.raises(ExperimentError, match="not found"):
        run_experiment(tmp_path / "nope", tmp_path / "s1", models=["snippet"], config=_fast())
    with pytest.raises(ExperimentError, match="models"):
        run_experiment(tiny_ds, tmp_path / "s1", models=["cnn"], config=_fast())
    # newer store: refused before any write
    s = Store(tmp_path / "newer")
    import sqlite3

    con = sqlite3.connect(s.db_path)
    con.execute("UPDATE meta SET value='7' WHERE key='schema_version'")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="newer"):
        run_experiment(tiny_ds, tmp_path / "newer", models=["snippet"], config=_fast())
    assert list((tmp_path / "newer" / "runs").iterdir()) == []  # nothing written
    # an unfinished run whose checkpoint does not load: clear error, files left as they were
    cfg = _fast(max_epochs=3)
    rx = run_experiment

    calls = {"n": 0}

    def stop_after_epoch_one():
        calls["n"] += 1
        return calls["n"] > 8

    out = rx(tiny_ds, tmp_path / "s2", seeds=[0], models=["snippet"], config=cfg, should_stop=stop_after_epoch_one)
    assert out["stopped"]
    store = Store(tmp_path / "s2")
    run = store.runs()[0]
    assert run["status"] == "stopped"
    rd = store.run_dir(run["id"])
    (rd / "last.keras").write_bytes(b"garbage")
    with pytest.raises(TrainError, match="does not load"):
        rx(tiny_ds, tmp_path / "s2", seeds=[0], models=["snippet"], config=cfg)
    assert (rd / "last.keras").read_bytes() == b"garbage"
    assert store.get_run(run["id"])["status"] == "failed"
    from core.jobs import StoreLock

    assert StoreLock(tmp_path / "s2").holder() is None  # the lock is released on errors
    assert not (tmp_path / "s2" / ".lock.json").exists()
    # the dataset's feature parameters changed under a resumed run
    state = json.loads((rd / "state.json").read_text())
    state["dataset"]["params"]["n_mels"] = 64
    (rd / "state.json").write_text(json.dumps(state))
    with pytest.raises(TrainError, match="feature parameters"):
        rx(tiny_ds, tmp_path / "s2", seeds=[0], models=["snippet"], config=cfg)


@pytest.mark.slow
def test_sigkilled_job_resumes_from_its_last_epoch(tiny_ds, tmp_path):
    from core.jobs import StoreLock, start_job
    from core.store import Store

    store = tmp_path / "store"
    args = ["run-experiment", str(tiny_ds), "--store", str(store), "--seeds", "0,", "--models", "snippet",
            "--preset", "fast", "--epochs", "6", "--patience", "10", "--max-batches", "0", "--cv", "off"]
    job = start_job(args, tmp_path / "job1", store=store)
    deadline = time.time() + 180
    while time.time() < deadline:
        evs, _ = job.events()
        if any(e.get("phase") == "train" and e.get("epoch") == 1 and "metrics" in e for e in evs):
            break
        assert job.alive(), (tmp_path / "job1" / "log.txt").read_text()[-3000:]
        time.sleep(0.05)
    else:
        pytest.fail("no epoch finished in time")
    job.kill()
    job.wait(30)
    st = Store(store)
    run_id = st.runs()[0]["id"]
    done_before = json.loads((st.run_dir(run_id) / "state.json").read_text())["epoch"]
    assert 1 <= done_before < 6
    assert StoreLock(store).holder() is None  # the kernel released the killed job's lock
    assert job.state()["state"] == "died"
    job2 = start_job(args, tmp_path / "job2", store=store)
    assert job2.wait(180) == 0, (tmp_path / "job2" / "log.txt").read_text()[-3000:]
    evs, _ = job2.events()
    epochs = [e["epoch"] for e in evs if e.get("phase") == "train" and "metrics" in e]
    assert epochs == list(range(done_before + 1, 7))  # continued after the last finished epoch
    assert any("resuming" in e.get("message", "") for e in evs)
    assert evs[-1]["state"] == "done"
    run = st.get_run(run_id)
    assert run["status"] == "done" and run["epochs"] == 6
    assert [e["epoch"] for e in st.epochs(run_id)] == list(range(1, 7))


def test_one_seed_parser_for_every_seeds_option():
    """run-experiment and embedding-heads parse --seeds with the same function (issue 12: it existed twice)."""
    from core.experiment import ExperimentError, parse_seeds

    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("0,5,7") == [0, 5, 7] and parse_seeds("7,") == [7]
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4] and parse_seeds(2) == [0, 1]
    for bad in ("x", "1-x", "4-2", "0,0", "-1"):
        with pytest.raises(ExperimentError):
            parse_seeds(bad)


def test_cli_stop_exits_130_with_the_common_job_events_and_resumes(tiny_ds, tmp_path):
    """run-experiment takes the common job options (core.jobs.add_job_args / JobReport): a stop is exit 130
    (as every long command) with a final ``stopped`` event; the same command without the stop file finishes."""
    from core.jobs import read_events

    events, stop = tmp_path / "events.jsonl", tmp_path / "STOP"
    stop.write_text("now")
    cmd = ("run-experiment", str(tiny_ds), "--store", str(tmp_path / "store"), "--seeds", "0,", "--models", "linear",
           "--preset", "fast", "--cv", "off", "--events", str(events), "--stop-file", str(stop))
    r = run_core(*cmd)
    assert r.returncode == 130, r.stderr[-2000:]
    assert "run the same command again to resume" in r.stderr
    evs, _ = read_events(events)
    assert evs[-1]["state"] == "stopped" and evs[-1]["job"] == "experiment"
    assert not any(e.get("phase") == "train" for e in evs)  # stopped before the first run
    stop.unlink()
    r = run_core(*cmd)
    assert r.returncode == 0, r.stderr[-2000:]
    evs, _ = read_events(events)
    assert evs[-1]["state"] == "done" and any(e.get("state") == "done" and e.get("phase") == "evaluate" for e in evs)
