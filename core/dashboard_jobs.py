"""Background jobs the dashboard starts besides experiments: dataset builds, the GTZAN and Emotify downloads
and the tiny demo model. Each is a ``python -m core.dashboard_jobs COMMAND ... --events E --stop-file S`` process that
reports through :mod:`core.jobs`' JSON-lines events and stops (resumably) when the stop file appears, so the
pages handle them exactly like experiment jobs (:class:`core.jobs.Job`: ``state()``, ``stop()``, re-attach
with :func:`core.jobs.open_job` after a browser reload).

``python -m core build-dataset`` / ``download-gtzan`` have no ``--events`` / ``--stop-file`` options, hence
these thin wrappers around the same functions (:func:`core.dataset.build_dataset`,
:func:`core.download.download_gtzan`) with the same arguments.

Event fields: ``state`` (running / done / failed / stopped), ``message``, ``done``, ``total``, ``fraction``
and, on success, ``result`` (the output folder).
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from core.jobs import EVENTS_NAME, JOB_NAME, LOG_NAME, STOP_NAME, EventLog, Job, StopFlag, open_job, read_events
from core.utils import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------
# starting and finding jobs (dashboard side)
# ---------------------------------------------------------------------------------------------------------
def start(args: list[str], job_dir: str | os.PathLike) -> Job:
    """Start ``python -m core.dashboard_jobs ARGS`` in its own process group, logging to ``JOB/log.txt``.

    Events of an earlier run in the same folder are moved aside, so the job's state is this run's.
    """
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    if (job_dir / JOB_NAME).exists():
        old = open_job(job_dir)
        if old.alive():
            raise RuntimeError(f"this job is already running (pid {old.pid})")
    (job_dir / STOP_NAME).unlink(missing_ok=True)
    if (job_dir / EVENTS_NAME).exists():
        os.replace(job_dir / EVENTS_NAME, job_dir / f"{EVENTS_NAME}.prev")
    cmd = [sys.executable, "-m", "core.dashboard_jobs", *args, "--events", str(job_dir / EVENTS_NAME),
           "--stop-file", str(job_dir / STOP_NAME)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with open(job_dir / LOG_NAME, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    atomic_write_json(job_dir / JOB_NAME, {"pid": proc.pid, "host": socket.gethostname(), "command": cmd,
                                           "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return Job(job_dir, proc.pid, cmd, proc)


def restart(job_dir: str | os.PathLike) -> Job:
    """Start the job last run in ``job_dir`` again with the same arguments (builds and downloads resume)."""
    job_dir = Path(job_dir)
    job = open_job(job_dir)
    cmd = list(job.command)
    try:
        args = cmd[cmd.index("core.dashboard_jobs") + 1:]
    except ValueError as exc:
        raise RuntimeError(f"{job_dir} does not hold a dashboard job") from exc
    for flag in ("--events", "--stop-file"):
        if flag in args:
            i = args.index(flag)
            del args[i:i + 2]
    return start(args, job_dir)


def find_job(job_dir: str | os.PathLike) -> Job | None:
    """The job last started in ``job_dir`` (running or finished), or None."""
    job_dir = Path(job_dir)
    if not (job_dir / JOB_NAME).is_file():
        return None
    try:
        return open_job(job_dir)
    except (ValueError, KeyError, OSError):
        return None


def job_status(job: Job) -> dict[str, Any]:
    """``job.state()`` plus the last event that carried progress numbers (``done`` / ``total`` / ``fraction``)."""
    events, _ = read_events(job.events_path)
    st = job.state()
    for ev in reversed(events):
        if "fraction" in ev:
            st.setdefault("fraction", ev["fraction"])
            st.setdefault("done", ev.get("done"))
            st.setdefault("total", ev.get("total"))
            break
    return st


def log_tail(job: Job, n_chars: int = 2000) -> str:
    p = job.dir / LOG_NAME
    if not p.exists():
        return ""
    with open(p, "rb") as fh:
        fh.seek(max(0, p.stat().st_size - n_chars))
        return fh.read().decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------------------
# building the argument lists (the same options as ``python -m core build-dataset``)
# ---------------------------------------------------------------------------------------------------------
def build_dataset_args(src: str, out: str, params, split, workers: int | None = None,
                       limit_per_class: int = 0) -> list[str]:
    """Command-line arguments for a build with these :class:`FeatureParams` and :class:`SplitConfig`."""
    p = params
    args = ["build-dataset", str(src), str(out), "--sample-rate", str(p.sample_rate), "--snippet", str(p.snippet_s),
            "--overlap", str(p.overlap_s), "--max-snippets", str(p.max_snippets), "--selection", p.selection,
            "--selection-seed", str(p.selection_seed), "--n-fft", str(p.n_fft), "--hop", str(p.hop_length),
            "--n-mels", str(p.n_mels), "--full-clip", str(p.full_clip_s),
            "--val-share", str(split.val_share), "--test-share", str(split.test_share),
            "--split-seed", str(split.seed)]
    if not p.log:
        args.append("--linear")
    if p.peak_normalize:
        args.append("--peak-normalize")
    if p.pad_short:
        args.append("--pad-short")
    if p.mode == "full":
        args.append("--full")
    if split.split_file:
        args += ["--split", str(split.split_file)]
    if workers:
        args += ["--workers", str(workers)]
    if limit_per_class:
        args += ["--limit-per-class", str(int(limit_per_class))]
    return args


# ---------------------------------------------------------------------------------------------------------
# the job side
# ---------------------------------------------------------------------------------------------------------
class _Reporter:
    """Throttled progress events (at most ~4 a second, plus every state change)."""

    def __init__(self, events: EventLog, kind: str):
        self.events, self.kind, self.last = events, kind, 0.0

    def progress(self, done: float, total: float | None, message: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 0.25:
            return
        self.last = now
        frac = (done / total) if total else None
        self.events.emit(state="running", job=self.kind, done=done, total=total,
                         fraction=None if frac is None else round(min(max(frac, 0.0), 1.0), 4), message=message)


def _cmd_build(a) -> int:
    from core.dataset import BuildStopped, DatasetError, SplitConfig, build_dataset, params_from_args

    # No SIGTERM handler here: the build forks worker processes that would inherit it, and Pool.terminate()
    # stops workers with SIGTERM, so they would ignore it and the pool would hang. The stop file is enough;
    # a SIGTERM simply kills the build, which resumes from its finished tracks next time.
    ev, stop = EventLog(a.events), StopFlag(a.stop_file)
    rep = _Reporter(ev, "build")
    ev.emit(state="running", job="build", message="scanning the source folder", fraction=0.0, done=0, total=None)
    try:
        params = params_from_args(a)
        split = SplitConfig(a.val_share, a.test_share, a.split_seed, a.split_file)
        out = build_dataset(a.src, a.out, params, split, workers=a.workers, should_stop=stop,
                            limit_per_class=a.limit_per_class,
                            progress=lambda d, t, m: rep.progress(d, t, m, force=d in (0, t)))
    except BuildStopped as exc:
        ev.emit(state="stopped", job="build", message=str(exc))
        return 130
    except DatasetError as exc:
        ev.emit(state="failed", job="build", message=str(exc))
        return 2
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        ev.emit(state="failed", job="build", message=f"unexpected error: {type(exc).__name__}: {exc}"[:400])
        return 1
    ev.emit(state="done", job="build", message="dataset built", fraction=1.0, result=str(out))
    return 0


def _cmd_gtzan(a) -> int:
    from core.download import ArchiveError, DownloadError, DownloadStopped, download_gtzan

    ev, stop = EventLog(a.events), StopFlag(a.stop_file).install_signals()
    rep = _Reporter(ev, "download")
    ev.emit(state="running", job="download", message="connecting", fraction=0.0, done=0, total=None)

    def progress(done: int, total: int | None) -> None:
        msg = f"{done / 1e6:.0f} MB" + (f" of {total / 1e6:.0f} MB" if total else "")
        rep.progress(done, total, msg)

    try:
        folder = download_gtzan(a.dest, url=a.url, progress=progress, should_stop=stop, keep_archive=False)
    except DownloadStopped as exc:
        ev.emit(state="stopped", job="download", message=f"{exc}; start again to resume")
        return 130
    except (DownloadError, ArchiveError) as exc:
        ev.emit(state="failed", job="download", message=str(exc))
        return 1
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        ev.emit(state="failed", job="download", message=f"unexpected error: {type(exc).__name__}: {exc}"[:400])
        return 1
    ev.emit(state="done", job="download", message=f"GTZAN is ready in {folder}", fraction=1.0, result=str(folder))
    return 0


def _cmd_emotify(a) -> int:
    from core.download import ArchiveError, DownloadError, DownloadStopped, download_emotify, emotify_info

    ev, stop = EventLog(a.events), StopFlag(a.stop_file).install_signals()
    rep = _Reporter(ev, "download")
    ev.emit(state="running", job="download", message="connecting", fraction=0.0, done=0, total=None)

    def progress(done: int, total: int | None) -> None:
        msg = f"{done / 1e6:.0f} MB" + (f" of {total / 1e6:.0f} MB" if total else "")
        rep.progress(done, total, msg)

    try:
        folder = download_emotify(a.dest, url=a.url, csv_url=a.csv_url, progress=progress, should_stop=stop,
                                  keep_archive=False)
    except DownloadStopped as exc:
        ev.emit(state="stopped", job="download", message=f"{exc}; start again to resume")
        return 130
    except (DownloadError, ArchiveError) as exc:
        ev.emit(state="failed", job="download", message=str(exc))
        return 1
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        ev.emit(state="failed", job="download", message=f"unexpected error: {type(exc).__name__}: {exc}"[:400])
        return 1
    found = (emotify_info(a.dest) or {}).get("found") or {}
    counts = ", ".join(f"{g} {n}" for g, n in found.items())
    ev.emit(state="done", job="download", message=f"Emotify is ready in {folder}" + (f" ({counts})" if counts else ""),
            fraction=1.0, result=str(folder))
    return 0


def _cmd_demo_model(a) -> int:
    from core.dashboard_support import train_demo_model

    ev, stop = EventLog(a.events), StopFlag(a.stop_file)
    ev.emit(state="running", job="demo-model", message="starting", fraction=0.0)
    out = Path(a.out)
    tmp = out.with_name(f".{out.name}.training")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        train_demo_model(tmp, epochs=a.epochs, should_stop=stop,
                         progress=lambda m, f: ev.emit(state="running", job="demo-model", message=m, fraction=f))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    except InterruptedError:
        shutil.rmtree(tmp, ignore_errors=True)
        ev.emit(state="stopped", job="demo-model", message="training stopped")
        return 130
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        shutil.rmtree(tmp, ignore_errors=True)
        ev.emit(state="failed", job="demo-model", message=f"training failed: {type(exc).__name__}: {exc}"[:400])
        return 1
    ev.emit(state="done", job="demo-model", message="demo model ready", fraction=1.0, result=str(out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from core.dataset import add_feature_args

    parser = argparse.ArgumentParser(prog="python -m core.dashboard_jobs",
                                     description="Dashboard background jobs with JSON-lines progress events.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--events", required=True, help="JSON-lines event file to append to")
        p.add_argument("--stop-file", required=True, help="stop (resumably) when this file appears")

    p = sub.add_parser("build-dataset", help="core.dataset.build_dataset with progress events")
    p.add_argument("src")
    p.add_argument("out")
    add_feature_args(p)
    p.add_argument("--val-share", type=float, default=0.1)
    p.add_argument("--test-share", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--split", dest="split_file", default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--limit-per-class", type=int, default=0)
    common(p)
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("download-gtzan", help="core.download.download_gtzan with progress events")
    p.add_argument("dest")
    p.add_argument("--url", default=None)
    common(p)
    p.set_defaults(func=_cmd_gtzan)

    p = sub.add_parser("download-emotify", help="core.download.download_emotify with progress events")
    p.add_argument("dest")
    p.add_argument("--url", default=None)
    p.add_argument("--csv-url", default=None)
    common(p)
    p.set_defaults(func=_cmd_emotify)

    p = sub.add_parser("demo-model", help="train the tiny synthetic demo model")
    p.add_argument("out")
    p.add_argument("--epochs", type=int, default=4)
    common(p)
    p.set_defaults(func=_cmd_demo_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
