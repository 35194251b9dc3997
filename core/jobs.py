"""Background jobs: a ``python -m core ...`` subprocess with progress events, stop requests and a store lock.

* **Launch**: :func:`start_job` is the one launcher of every long command (``build-dataset``,
  ``download-gtzan``, ``download-emotify``, ``demo-model``, ``run-experiment``): it appends ``--events`` and
  ``--stop-file`` (:func:`add_job_args` on the command's side, :class:`JobReport` to report), records the
  command in ``JOB/job.json`` and logs to ``JOB/log.txt``; :func:`restart_job` runs it again (it resumes).

* **Events**: the job appends one JSON object per line to ``JOB/events.jsonl`` (``t``, ``state``, ``seed``,
  ``model``, ``run``, ``epoch``, ``metrics``, ``message`` ...). Readers poll with :func:`read_events` and an
  offset, so the dashboard only reads what is new.
* **Stop**: :func:`request_stop` creates ``JOB/STOP``; the job checks it between batches, drops the unfinished
  epoch and exits with state ``stopped`` (running the same command again resumes).
* **Lock**: one writer per store. :class:`StoreLock` is an OS lock (``fcntl.flock``) on ``STORE/.lock`` that the
  kernel releases when the holder dies (SIGKILL included); the holder's pid, host, start time and command are
  in ``STORE/.lock.json`` for the message a second writer gets (:class:`LockError`).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from core.errors import GenreLabError, Stopped
from core.utils import atomic_write_json, pid_alive, read_json  # pid_alive: also for callers of core.jobs

LOCK_NAME = ".lock"
EVENTS_NAME = "events.jsonl"
STOP_NAME = "STOP"
JOB_NAME = "job.json"
LOG_NAME = "log.txt"


class LockError(GenreLabError):
    """The store is being written by another job; the message names it."""


class JobError(GenreLabError):
    """A job that cannot be started (already running, not a job folder); the message is for the user."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---------------------------------------------------------------------------------------------------------
# lock
# ---------------------------------------------------------------------------------------------------------
_HELD: "weakref.WeakSet[OSLock]" = weakref.WeakSet()  # locks this process holds: dropped in forked children


def _close_in_child() -> None:
    """A forked child (a pool worker) must not keep a copy of its parent's lock descriptor: the kernel keeps a
    ``flock`` while any copy is open, so an orphaned worker would hold the lock after its parent died.
    Closing the child's copy does not release the parent's lock."""
    for lock in list(_HELD):
        if lock._fd is not None:
            try:
                os.close(lock._fd)
            except OSError:
                pass
        lock._fd, lock.held = None, False
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def _process_info(pid: int) -> dict:
    """pid, host, start time and command line of a live process on this host (from ``/proc``; what can be
    read)."""
    info: dict[str, Any] = {"pid": pid, "host": socket.gethostname(), "started_at": "?", "command": "?"}
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            info["command"] = " ".join(fh.read().replace(b"\0", b" ").decode("utf-8", "replace").split()) or "?"
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as fh:
            btime = next(int(ln.split()[1]) for ln in fh if ln.startswith("btime"))
        start = btime + ticks / os.sysconf("SC_CLK_TCK")
        info["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    return info


def _holds_deleted(pid: int, path: Path) -> bool | None:
    """True when process ``pid`` has ``path`` open although the file was deleted (``/proc/PID/fd`` shows
    ``PATH (deleted)``), False when it has not, None when this cannot be seen (no ``/proc``, no permission)."""
    gone = f"{path} (deleted)"
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == gone:
                return True
        except OSError:
            continue
    return False


class OSLock:
    """Exclusive lock of a folder held with the kernel (``fcntl.flock`` on ``FOLDER/NAME``).

    The kernel releases it when the holder exits, SIGKILL included, so there is no stale lock to detect and no
    window where two processes both believe they hold it. The lock file is never deleted by Genre Lab, and its
    messages never ask anyone to delete it: they name the live holder (pid, host, start time, command, from the
    side file ``NAME.json``). Should the file be deleted (or replaced) anyway while its holder lives, a newcomer
    would lock a fresh inode beside the old holder; so after taking the kernel lock, :meth:`acquire` checks that
    the path still is the file it locked (else it retries on the new file) and that no live process on this host
    still holds a deleted lock file of this folder (from the side file's inode, then ``/proc``): if one does,
    the newcomer gives the lock up and names it.
    """

    error: type[GenreLabError] = GenreLabError
    what = "folder"

    def __init__(self, folder: str | os.PathLike, name: str, command: str | None = None):
        self.path = Path(folder) / name
        self.info_path = self.path.with_name(self.path.name + ".json")
        self.command = command or " ".join(sys.argv)
        self.held = False
        self._fd: int | None = None

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)

    def _record(self) -> dict | None:
        try:
            info = read_json(self.info_path)
            return info if isinstance(info, dict) else None
        except (OSError, ValueError):
            return None

    def _real_path(self) -> Path:
        return Path(os.path.realpath(self.path.parent)) / self.path.name

    def _deleted_file_holder(self, inode: tuple[int, int] | None) -> dict | None:
        """A live process on this host (not this one) that still holds a lock on a deleted (or replaced) lock
        file of this folder, or None. ``inode``: (st_dev, st_ino) of the file at the path now, if any."""
        me, host = os.getpid(), socket.gethostname()
        real = self._real_path()
        info = self._record()
        if info and info.get("host") == host and isinstance(info.get("pid"), int) and info["pid"] != me \
                and pid_alive(info["pid"]):
            recorded = info.get("lock_inode")
            if isinstance(recorded, list) and inode is not None and tuple(recorded) != tuple(inode):
                if _holds_deleted(info["pid"], real) is not False:
                    return info
        try:  # the side file may be gone too: ask the kernel which processes hold flocks
            with open("/proc/locks", encoding="ascii") as fh:
                pids = {int(parts[4]) for parts in (ln.split() for ln in fh)
                        if len(parts) > 5 and parts[1] == "FLOCK" and parts[3] == "WRITE" and parts[4].isdigit()}
        except OSError:
            return None
        for pid in sorted(pids - {me}):
            if _holds_deleted(pid, real):
                rec = info if info and info.get("pid") == pid and info.get("host") == host else _process_info(pid)
                return rec
        return None

    def holder(self) -> dict | None:
        """The holder's record (pid, host, started_at, command), or None when nobody holds the lock."""
        if self.held:
            return self._record()
        if not self.path.exists():
            return self._deleted_file_holder(None)
        import fcntl

        fd = self._open()
        try:
            try:  # a shared probe: never blocks another prober, and an exclusive acquirer retries past it
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                info = self._record()
                if info is None or (info.get("host") == socket.gethostname()
                                    and not pid_alive(int(info.get("pid", -1)))):
                    # the holder has just taken the lock and not yet written its record
                    return {"pid": -1, "host": "?", "started_at": "?", "command": "(a process starting up)"}
                return info
            st = os.fstat(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return self._deleted_file_holder((st.st_dev, st.st_ino))
        finally:
            os.close(fd)

    def message(self, info: dict | None) -> str:
        """Who holds the lock, from its side file: the job (when a :func:`start_job` job), pid, host, start time
        and command. Never advice to delete the lock file (that would let two processes write at once)."""
        info = info or {}
        job = job_name_of(str(info.get("command") or ""))
        who = (f"job {job!r}, " if job else "") + f"pid {info.get('pid')}"
        where = "" if info.get("host") in (None, "?", socket.gethostname()) else \
            " (on another machine: stop it there)"
        return (f"the {self.what} {self.path.parent} is in use by {who} on {info.get('host')} "
                f"since {info.get('started_at')} (command: {info.get('command')}){where}. Stop that job or wait for "
                "it; the lock goes when that process ends.")

    def acquire(self, timeout: float = 1.0) -> "OSLock":
        """Take the lock; waits up to ``timeout`` seconds, then raises ``self.error`` naming the holder."""
        import fcntl

        if self.held:
            raise self.error(f"this process already holds the lock of {self.path.parent}")
        fd = self._open()
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    info = self._record()
                    if info and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
                        raise self.error(f"this process already holds the lock of {self.path.parent}") from None
                    raise self.error(self.message(self.holder())) from None
                time.sleep(0.02)
                continue
            st = os.fstat(fd)
            try:
                now = os.stat(self.path)
                same = (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)
            except FileNotFoundError:
                same = False
            if not same:  # deleted or replaced between our open and our lock: lock the file that is there now
                os.close(fd)
                fd = self._open()
                continue
            other = self._deleted_file_holder((st.st_dev, st.st_ino))
            if other is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise self.error(self.message(other) + f" (Its lock file {self.path} was deleted while it ran; it "
                                                       "still holds the folder.)")
            break
        self._fd = fd
        _HELD.add(self)
        self.held = True
        try:
            atomic_write_json(self.info_path, {"pid": os.getpid(), "host": socket.gethostname(),
                                               "started_at": _now(), "command": self.command,
                                               "lock_inode": [st.st_dev, st.st_ino]})
        except OSError:
            pass  # the record only feeds messages; the kernel lock is what counts
        return self

    def release(self) -> None:
        if not self.held or self._fd is None:
            return
        import fcntl

        info = self._record()
        if info and info.get("pid") == os.getpid():
            self.info_path.unlink(missing_ok=True)
        _HELD.discard(self)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None
            self.held = False

    def __enter__(self) -> "OSLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def job_name_of(command: str) -> str | None:
    """The job a ``python -m core ... --events JOBS/NAME/events.jsonl`` command runs as (its folder's name), or
    None for a command started by hand."""
    parts = command.split()
    if "--events" in parts and parts.index("--events") + 1 < len(parts):
        events = Path(parts[parts.index("--events") + 1])
        if events.name == EVENTS_NAME:
            return events.parent.name
    return None


class StoreLock(OSLock):
    """Exclusive writer lock of a store folder (use as a context manager): ``STORE/.lock``."""

    error = LockError
    what = "store"

    def __init__(self, store_path: str | os.PathLike, command: str | None = None):
        super().__init__(store_path, LOCK_NAME, command)


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
        ev = {"t": _now(), "ts": round(time.time(), 2), **(event or {}), **fields}
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

    Refuses (:class:`JobError`) while the job last started in ``job_dir`` still runs; with ``store``, refuses
    up front (:class:`LockError`) when another live job holds the store's lock (the job itself takes the lock
    when it starts). The events of an earlier run in the folder move to ``events.jsonl.prev``, so the job's
    state is this run's. Output goes to ``JOB/log.txt``; ``JOB/job.json`` records the command (and store).
    """
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    old = find_job(job_dir)
    if old is not None and old.alive():
        raise JobError(f"this job is already running (pid {old.pid})")
    if store is not None:
        lock = StoreLock(store)
        info = lock.holder()
        if info is not None:
            raise LockError(lock.message(info))
    (job_dir / STOP_NAME).unlink(missing_ok=True)
    if (job_dir / EVENTS_NAME).exists():
        os.replace(job_dir / EVENTS_NAME, job_dir / f"{EVENTS_NAME}.prev")
    cmd = [sys.executable, "-m", "core", *args, "--events", str(job_dir / EVENTS_NAME),
           "--stop-file", str(job_dir / STOP_NAME)]
    root = Path(__file__).resolve().parents[1]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join([str(root), full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with open(job_dir / LOG_NAME, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=str(root), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=full_env, start_new_session=True)
    atomic_write_json(job_dir / JOB_NAME, {"pid": proc.pid, "host": socket.gethostname(), "command": cmd,
                                           "started_at": _now(), "store": str(store) if store else None})
    return Job(job_dir, proc.pid, cmd, proc)


def job_args(command: list[str]) -> list[str]:
    """The ``python -m core`` arguments of a job's command line, without ``--events`` / ``--stop-file``
    (what :func:`start_job` adds). Also reads the ``python -m core.dashboard_jobs ...`` jobs of earlier
    versions (the same commands and options)."""
    cmd = list(command)
    args = cmd[cmd.index("-m") + 2:] if "-m" in cmd else cmd
    out, i = [], 0
    while i < len(args):
        if args[i] in ("--events", "--stop-file"):
            i += 2
            continue
        out.append(args[i])
        i += 1
    return out


def restart_job(job_dir: str | os.PathLike) -> Job:
    """Start the job last run in ``job_dir`` again with the same arguments (and store): it resumes."""
    job_dir = Path(job_dir)
    job = find_job(job_dir)
    if job is None:
        raise JobError(f"{job_dir} holds no job to start again")
    try:
        store = read_json(job_dir / JOB_NAME).get("store")
    except (OSError, ValueError, AttributeError):
        store = None
    return start_job(job_args(job.command), job_dir, store=store)


def open_job(job_dir: str | os.PathLike) -> Job:
    """Re-attach to a job started earlier (e.g. after a dashboard reload)."""
    job_dir = Path(job_dir)
    info = read_json(job_dir / JOB_NAME)
    return Job(job_dir, int(info["pid"]), list(info["command"]))


def find_job(job_dir: str | os.PathLike) -> Job | None:
    """The job last started in ``job_dir`` (running or finished), or None."""
    job_dir = Path(job_dir)
    if not (job_dir / JOB_NAME).is_file():
        return None
    try:
        return open_job(job_dir)
    except (ValueError, KeyError, TypeError, OSError):
        return None


def job_status(job: Job) -> dict[str, Any]:
    """``job.state()`` plus the last event that carried progress numbers (``done`` / ``total`` / ``fraction``),
    ``elapsed_s`` (since the job's first event; to its last one once it has ended) and ``eta_s`` (that event's
    estimate of the time left, less the time since; None when it has none)."""
    events, _ = read_events(job.events_path)
    st = job.state()
    now = time.time()
    for ev in reversed(events):
        if "fraction" in ev:
            st.setdefault("fraction", ev["fraction"])
            st.setdefault("done", ev.get("done"))
            st.setdefault("total", ev.get("total"))
            eta, ts = ev.get("eta_s"), ev.get("ts")
            # the estimate as of now: the time since that event is gone from it (never added: ``ts`` is rounded
            # to 10 ms, so a fresh event can look a few ms younger than now)
            st["eta_s"] = (max(0.0, float(eta) - max(0.0, now - float(ts))) if isinstance(eta, (int, float))
                           and isinstance(ts, (int, float)) else None)
            break
    first = next((ev.get("ts") for ev in events if isinstance(ev.get("ts"), (int, float))), None)
    if first is not None:
        end = st.get("ts") if not st.get("alive") and isinstance(st.get("ts"), (int, float)) else now
        st["elapsed_s"] = max(0.0, float(end) - float(first))
    return st


def log_tail(job: Job, n_chars: int = 2000) -> str:
    """The end of the job's ``log.txt`` ('' when there is none)."""
    p = job.dir / LOG_NAME
    if not p.exists():
        return ""
    with open(p, "rb") as fh:
        fh.seek(max(0, p.stat().st_size - n_chars))
        return fh.read().decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------------------
# the job side: what a long command does with --events / --stop-file
# ---------------------------------------------------------------------------------------------------------
def add_job_args(p, stop_help: str = "stop (resumably) when this file appears") -> None:
    """``--events`` and ``--stop-file``: the options :func:`start_job` adds to every long command."""
    p.add_argument("--events", metavar="FILE", help="append progress events (JSON lines) to this file")
    p.add_argument("--stop-file", metavar="FILE", help=stop_help)


class JobReport:
    """A long command's report to :mod:`core.jobs`: throttled progress events (at most ~4 a second, plus every
    forced one), the stop flag (``--stop-file``, and SIGTERM with ``signals``) and one final event.

    Without ``--events`` nothing is written (the command draws its own progress bar). Event fields:
    ``state`` (running / done / failed / stopped), ``job``, ``message``, ``done``, ``total``, ``fraction``,
    ``elapsed_s`` (since the command started) and ``eta_s`` (time left at the rate since the first progress
    report of this process, which leaves out work a resumed job had already done; None until it can tell)
    and, on success, ``result``.
    """

    def __init__(self, args, job: str, *, signals: bool = True):
        events = getattr(args, "events", None)
        self.log = EventLog(events) if events else None
        self.job = job
        self.should_stop = StopFlag(getattr(args, "stop_file", None))
        if signals:
            self.should_stop.install_signals()
        self._last = 0.0
        self._t0 = time.monotonic()
        self._first: tuple[float, float] | None = None  # (time, fraction) of the first progress report

    @property
    def active(self) -> bool:
        """True when the command runs as a job (``--events`` given)."""
        return self.log is not None

    def emit(self, state: str = "running", **fields: Any) -> None:
        if self.log is not None:
            self.log.emit(state=state, job=self.job, **fields)

    def progress(self, done: float, total: float | None, message: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.25:
            return
        self._last = now
        frac = (done / total) if total else None
        self.emit(done=done, total=total, message=message,
                  fraction=None if frac is None else round(min(max(frac, 0.0), 1.0), 4),
                  elapsed_s=round(now - self._t0, 1), eta_s=self.eta(frac, now))

    def time_words(self, frac: float | None) -> str:
        """``"elapsed 0:12, about 0:30 left"`` for command-line progress lines (the events carry the numbers)."""
        from core.utils import format_duration

        now = time.monotonic()
        eta = self.eta(frac, now)
        return f"elapsed {format_duration(now - self._t0)}" + (f", about {format_duration(eta)} left"
                                                               if eta is not None else "")

    def eta(self, frac: float | None, now: float | None = None) -> float | None:
        """Seconds left at the rate since the first report with a fraction (None before a rate is known: less
        than 2 s or 1 % of progress since then)."""
        if frac is None:
            return None
        now = time.monotonic() if now is None else now
        if self._first is None:
            self._first = (now, frac)
            return None
        t0, f0 = self._first
        if now - t0 < 2.0 or frac - f0 < 0.01:
            return None
        return round((1.0 - frac) * (now - t0) / (frac - f0), 1)

    def run(self, work: Callable[[], tuple[str, Any]], *, failed_code: int = 1) -> int:
        """Run ``work()`` (returning ``(message, result)``) and end with one final event; returns the exit code:
        0 done, 130 stopped (on request: run again to resume), ``failed_code`` for an error with a message for
        the user (printed as ``error: ...``), 1 for anything unexpected (traceback to the log when run as a job,
        raised otherwise)."""
        try:
            message, result = work()
        except Stopped as exc:
            self.emit("stopped", message=str(exc))
            print(f"stopped: {exc}; run the same command again to resume", file=sys.stderr)
            return 130
        except GenreLabError as exc:
            self.emit("failed", message=str(exc))
            print(f"error: {exc}", file=sys.stderr)
            return failed_code
        except Exception as exc:
            if not self.active:
                raise
            traceback.print_exc()
            self.emit("failed", message=f"unexpected error: {type(exc).__name__}: {exc}"[:400])
            return 1
        self.emit("done", message=message, fraction=1.0, result=str(result))
        return 0
