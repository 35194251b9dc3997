"""Background jobs: a ``python -m core ...`` subprocess with progress events, stop requests and a store lock.

* **Events**: the job appends one JSON object per line to ``JOB/events.jsonl`` (``t``, ``state``, ``seed``,
  ``model``, ``run``, ``epoch``, ``metrics``, ``message`` ...). Readers poll with :func:`read_events` and an
  offset, so the dashboard only reads what is new.
* **Stop**: :func:`request_stop` creates ``JOB/STOP``; the job checks it between batches, drops the unfinished
  epoch and exits with state ``stopped`` (running the same command again resumes).
* **Lock**: one writer per store. :class:`StoreLock` is a file ``STORE/.lock`` (pid, host, start time, command)
  created with ``O_EXCL``; a second writer gets a :class:`LockError` naming the holder; a lock whose pid is
  dead on this host is stale and is taken over.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.utils import atomic_write_json, read_json

LOCK_NAME = ".lock"
EVENTS_NAME = "events.jsonl"
STOP_NAME = "STOP"
JOB_NAME = "job.json"
LOG_NAME = "log.txt"


class LockError(Exception):
    """The store is being written by another job; the message names it."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def pid_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists on this host (zombies count as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) holds nothing
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# ---------------------------------------------------------------------------------------------------------
# lock
# ---------------------------------------------------------------------------------------------------------
class StoreLock:
    """Exclusive writer lock of a store folder (use as a context manager)."""

    def __init__(self, store_path: str | os.PathLike, command: str | None = None):
        self.path = Path(store_path) / LOCK_NAME
        self.command = command or " ".join(sys.argv)
        self.held = False

    def holder(self) -> dict | None:
        """The current lock record, or None when unlocked."""
        try:
            return read_json(self.path)
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return {"pid": -1, "host": "?", "started_at": "?", "command": "(unreadable lock file)"}

    def _stale(self, info: dict) -> bool:
        return info.get("host") == socket.gethostname() and not pid_alive(int(info.get("pid", -1)))

    def acquire(self) -> "StoreLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": _now(), "command": self.command}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self.holder()
                if info is None:
                    continue  # released meanwhile
                if info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
                    raise LockError(f"this process already holds the lock of {self.path.parent}")
                if self._stale(info) or info.get("pid") == -1:
                    # take over: rename is atomic, so only one contender removes this very file
                    tomb = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
                    try:
                        os.replace(self.path, tomb)
                        tomb.unlink()
                    except FileNotFoundError:
                        pass
                    continue
                raise LockError(
                    f"the store {self.path.parent} is in use by pid {info.get('pid')} on {info.get('host')} since "
                    f"{info.get('started_at')} (command: {info.get('command')}). Stop that job or wait for it; "
                    f"if that process is gone on another machine, delete {self.path}.")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(record, fh)
            self.held = True
            return self
        raise LockError(f"could not take the lock {self.path} (contended)")

    def release(self) -> None:
        if not self.held:
            return
        info = self.holder()
        if info and info.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ---------------------------------------------------------------------------------------------------------
# events and stop requests
# ---------------------------------------------------------------------------------------------------------
class EventLog:
    """Append-only JSON-lines progress file (one ``write`` + flush per event: readers never see half lines
    except the one being written, which :func:`read_events` leaves for the next poll)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: dict[str, Any] | None = None, **fields: Any) -> dict:
        ev = {"t": _now(), **(event or {}), **fields}
        line = json.dumps(ev, default=str) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
        return ev

    __call__ = emit


def read_events(path: str | os.PathLike, offset: int = 0) -> tuple[list[dict], int]:
    """Events after byte ``offset``; returns ``(events, new_offset)`` (complete lines only)."""
    p = Path(path)
    if not p.exists():
        return [], offset
    with open(p, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    events = []
    for line in data[:end].splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events, offset + end + 1


def request_stop(job_dir: str | os.PathLike) -> None:
    Path(job_dir).mkdir(parents=True, exist_ok=True)
    (Path(job_dir) / STOP_NAME).write_text(_now(), encoding="utf-8")


class StopFlag:
    """``should_stop`` callable: true when the stop file exists or SIGTERM/SIGINT arrived (if installed)."""

    def __init__(self, stop_file: str | os.PathLike | None = None):
        self.stop_file = Path(stop_file) if stop_file else None
        self.signalled = False

    def install_signals(self) -> "StopFlag":
        def handler(signum, frame):
            if self.signalled:  # second signal: stop hard
                raise KeyboardInterrupt
            self.signalled = True

        signal.signal(signal.SIGTERM, handler)
        return self

    def __call__(self) -> bool:
        return self.signalled or bool(self.stop_file and self.stop_file.exists())


# ---------------------------------------------------------------------------------------------------------
# jobs
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Job:
    dir: Path
    pid: int
    command: list[str]
    _proc: subprocess.Popen | None = None

    @property
    def events_path(self) -> Path:
        return self.dir / EVENTS_NAME

    def events(self, offset: int = 0) -> tuple[list[dict], int]:
        return read_events(self.events_path, offset)

    def alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return pid_alive(self.pid)

    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def stop(self) -> None:
        """Ask the job to stop after the current batch (it stays resumable)."""
        request_stop(self.dir)

    def kill(self) -> None:
        """SIGKILL the job's process group (a crash; the next start resumes from the last epoch)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float | None = None) -> int | None:
        if self._proc is not None:
            return self._proc.wait(timeout)
        t0 = time.time()
        while pid_alive(self.pid):
            if timeout is not None and time.time() - t0 > timeout:
                raise TimeoutError(f"job {self.pid} still running")
            time.sleep(0.2)
        return None

    def state(self) -> dict:
        """Last event plus liveness: what the dashboard shows."""
        evs, _ = self.events()
        last = evs[-1] if evs else {"state": "starting"}
        out = dict(last)
        out["alive"] = self.alive()
        if not out["alive"] and last.get("state") in (None, "starting", "running", "queued"):
            out["state"] = "died"
            out["message"] = f"the job process ended without a final event (see {self.dir / LOG_NAME})"
        return out


def start_job(args: list[str], job_dir: str | os.PathLike, store: str | os.PathLike | None = None,
              env: dict[str, str] | None = None) -> Job:
    """Start ``python -m core ARGS --events JOB/events.jsonl --stop-file JOB/STOP`` in its own process group.

    With ``store``, refuses up front (:class:`LockError`) when another live job holds the store's lock; the
    job itself takes the lock when it starts. Output goes to ``JOB/log.txt``; ``JOB/job.json`` records it.
    """
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    if store is not None:
        lock = StoreLock(store)
        info = lock.holder()
        if info is not None and not lock._stale(info):
            raise LockError(f"the store {store} is in use by pid {info.get('pid')} on {info.get('host')} since "
                            f"{info.get('started_at')} (command: {info.get('command')})")
    (job_dir / STOP_NAME).unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "core", *args, "--events", str(job_dir / EVENTS_NAME),
           "--stop-file", str(job_dir / STOP_NAME)]
    root = Path(__file__).resolve().parents[1]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join([str(root), full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    log = open(job_dir / LOG_NAME, "ab")
    try:
        proc = subprocess.Popen(cmd, cwd=str(root), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=full_env, start_new_session=True)
    finally:
        log.close()
    atomic_write_json(job_dir / JOB_NAME, {"pid": proc.pid, "host": socket.gethostname(), "command": cmd,
                                           "started_at": _now(), "store": str(store) if store else None})
    return Job(job_dir, proc.pid, cmd, proc)


def open_job(job_dir: str | os.PathLike) -> Job:
    """Re-attach to a job started earlier (e.g. after a dashboard reload)."""
    job_dir = Path(job_dir)
    info = read_json(job_dir / JOB_NAME)
    return Job(job_dir, int(info["pid"]), list(info["command"]))
