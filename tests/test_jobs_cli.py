"""Long ``python -m core`` commands as background jobs: ``--events`` / ``--stop-file`` on build-dataset,
download-gtzan and demo-model, the one launcher (``core.jobs.start_job``), restarting a job with the same
arguments, and FeatureParams <-> build-dataset options read back."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT


def _wait(job, timeout: float = 120) -> dict:
    from core.jobs import job_status

    t0 = time.time()
    while job.alive():
        if time.time() - t0 > timeout:
            job.kill()
            raise TimeoutError(f"{job.command} still running after {timeout} s")
        time.sleep(0.3)
    return job_status(job)


def test_build_dataset_reports_events_and_stops_on_request(tmp_path):
    from core.jobs import read_events
    from core.synth import make_dataset_folder

    src = make_dataset_folder(tmp_path / "src", n_classes=2, per_class=4, seconds=4.0)
    events, stop = tmp_path / "events.jsonl", tmp_path / "STOP"
    stop.write_text("now")
    cmd = [sys.executable, "-m", "core", "build-dataset", str(src), str(tmp_path / "ds"), "--workers", "1",
           "--events", str(events), "--stop-file", str(stop)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 130, r.stderr
    evs, _ = read_events(events)
    assert evs[-1]["state"] == "stopped" and evs[-1]["job"] == "build"
    stop.unlink()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    evs, _ = read_events(events)
    assert evs[-1]["state"] == "done" and evs[-1]["result"] == str(tmp_path / "ds") and evs[-1]["fraction"] == 1.0
    assert any(e.get("total") == 8 for e in evs)  # per-track progress with the track count
    assert (tmp_path / "ds" / "card.json").is_file()


def test_failed_download_job_restarts_with_the_same_arguments(tmp_path):
    from core.jobs import job_args, restart_job, start_job

    job_dir = tmp_path / "job"
    args = ["download-gtzan", str(tmp_path / "g"), "--url", "http://127.0.0.1:9/genres.tar.gz"]  # nothing listens
    job = start_job(args, job_dir)
    status = _wait(job)
    assert status["state"] == "failed" and "127.0.0.1" in status["message"]
    assert job_args(job.command) == args
    again = restart_job(job_dir)
    assert job_args(again.command) == args and again.pid != job.pid
    assert (job_dir / "events.jsonl.prev").is_file()  # the first run's events moved aside
    assert _wait(again)["state"] == "failed"


def test_the_launcher_refuses_a_second_run_of_a_running_job(tmp_path):
    from core.jobs import JobError, start_job

    job = start_job(["demo-model", str(tmp_path / "m")], tmp_path / "job")
    try:
        with pytest.raises(JobError, match="already running"):
            start_job(["demo-model", str(tmp_path / "m")], tmp_path / "job")
    finally:
        job.kill()
        job.wait(30)


def test_job_args_reads_old_dashboard_job_commands():
    from core.jobs import job_args

    old = ["/usr/bin/python", "-m", "core.dashboard_jobs", "build-dataset", "/src", "/out", "--events", "e",
           "--stop-file", "s", "--workers", "2"]
    assert job_args(old) == ["build-dataset", "/src", "/out", "--workers", "2"]


def test_feature_params_round_trip_through_build_dataset_options():
    from core.__main__ import build_parser
    from core.dataset import SplitConfig, build_dataset_args, params_from_args
    from core.features import FeatureParams

    for p in (FeatureParams(), FeatureParams(sample_rate=16000, log=False, mode="full", full_clip_s=10.0)):
        args = build_dataset_args(Path("/s"), Path("/o"), p, SplitConfig())
        assert params_from_args(build_parser().parse_args(args)) == p


def test_job_report_gives_elapsed_time_and_time_left(tmp_path, monkeypatch):
    """Every long job's progress events carry the time so far and an estimate of the time left (at the rate
    since this process's first report: a resumed build's finished tracks do not make it look fast), and
    job_status hands both to the dashboard's job panel, counted down to now."""
    import argparse

    import core.jobs as jobs
    from core.jobs import Job, JobReport, job_status, read_events
    from ui.jobs_view import time_words

    clock = [100.0]
    monkeypatch.setattr(jobs.time, "monotonic", lambda: clock[0])
    args = argparse.Namespace(events=str(tmp_path / "events.jsonl"), stop_file=None)
    rep = JobReport(args, "build", signals=False)
    rep.progress(40, 100, "40 already done", force=True)  # a resumed build: 40 % at once
    clock[0] += 10
    rep.progress(50, 100, "10 more in 10 s", force=True)
    clock[0] += 10
    rep.progress(60, 100, "10 more in 10 s", force=True)
    evs, _ = read_events(tmp_path / "events.jsonl")
    assert evs[0]["eta_s"] is None and evs[0]["elapsed_s"] == 0.0
    assert evs[1]["eta_s"] == pytest.approx(50.0) and evs[2]["eta_s"] == pytest.approx(40.0)  # 1 % per second
    assert evs[2]["elapsed_s"] == 20.0 and all(isinstance(e["ts"], float) for e in evs)
    job = Job(tmp_path, pid=2**22 + 12345, command=["python", "-m", "core", "build-dataset"])
    status = job_status(job)
    # <= 40 s, less the time since the last event (whose ``ts`` is rounded to 10 ms: up to 5 ms in the future)
    assert status["eta_s"] is not None and status["eta_s"] <= 40.01 and status["elapsed_s"] >= 0
    assert time_words({"elapsed_s": 83, "eta_s": 45}) == "elapsed 1:23 · about 0:45 left"
    assert time_words({"elapsed_s": 5, "eta_s": None}) == "elapsed 0:05 · estimating the time left"
