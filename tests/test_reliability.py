"""Reliability (issue 10): no stale data, one writer, long files in bounded memory, no single bad file
breaking a page. Each test here failed on the code before the fix."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

PY = [sys.executable, "-c"]
_HOLD_LOCK = """
import sys, time
sys.path.insert(0, {root!r})
from core.jobs import StoreLock
lock = StoreLock({store!r}, command="python -m core run-experiment HOLDER").acquire()
print("held", flush=True)
time.sleep(60)
"""


def _start_holder(store: Path, code: str = _HOLD_LOCK) -> subprocess.Popen:
    proc = subprocess.Popen(PY + [code.format(root=str(ROOT), store=str(store))], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


# --- 2. one writer per store: an OS lock ------------------------------------------------------------------
def test_store_lock_empty_lock_file_is_not_a_free_lock(tmp_path):
    """The old lock file was created empty and filled afterwards: a contender reading it in that gap took it
    over. With a kernel lock the content of the file does not decide anything."""
    from core.jobs import LockError, StoreLock

    holder = _start_holder(tmp_path)
    try:
        (tmp_path / ".lock").write_text("")  # what a contender saw in the gap
        with pytest.raises(LockError, match=f"pid {holder.pid}.*run-experiment HOLDER"):
            StoreLock(tmp_path).acquire(timeout=0.2)
        assert StoreLock(tmp_path).holder()["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_store_lock_is_released_by_the_kernel_when_the_holder_is_killed(tmp_path):
    from core.jobs import LockError, StoreLock

    holder = _start_holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert StoreLock(tmp_path).holder() is None  # nothing stale to detect
    with StoreLock(tmp_path, command="second") as lock:
        assert StoreLock(tmp_path).holder()["command"] == "second"
        with pytest.raises(LockError, match="this process already holds"):
            StoreLock(tmp_path).acquire(timeout=0)
    assert not lock.held and StoreLock(tmp_path).holder() is None


_CONTENDER = """
import sys, time
sys.path.insert(0, {root!r})
from core.jobs import LockError, StoreLock
t0 = float(sys.argv[1])
while time.time() < t0:
    pass
try:
    lock = StoreLock({store!r}).acquire(timeout=0)
except LockError:
    print("refused", flush=True)
else:
    print("held", flush=True)
    time.sleep(1.0)
    lock.release()
"""


def test_contenders_started_together_exactly_one_holds_the_store(tmp_path):
    code = _CONTENDER.format(root=str(ROOT), store=str(tmp_path))
    for trial in range(3):
        t0 = time.time() + 1.5
        procs = [subprocess.Popen(PY + [code, str(t0)], stdout=subprocess.PIPE, text=True) for _ in range(6)]
        outs = [p.communicate(timeout=60)[0].strip() for p in procs]
        assert sorted(outs) == ["held"] + ["refused"] * 5, (trial, outs)


_FORKING_HOLDER = """
import multiprocessing as mp, os, sys, time
sys.path.insert(0, {root!r})
from core.jobs import StoreLock
lock = StoreLock({store!r}).acquire()
child = mp.get_context("fork").Process(target=time.sleep, args=(60,))
child.start()
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_forked_worker_does_not_keep_its_dead_parents_lock(tmp_path):
    from core.jobs import StoreLock

    proc = subprocess.Popen(PY + [_FORKING_HOLDER.format(root=str(ROOT), store=str(tmp_path))],
                            stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    try:
        assert StoreLock(tmp_path).holder()["pid"] == proc.pid
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with StoreLock(tmp_path):  # the orphaned worker still runs, without the lock
            pass
    finally:
        os.kill(child, signal.SIGKILL)
