"""Showing a background job (core.jobs / core.dashboard_jobs) on a page: progress polled by a fragment while
the job runs, a stop button, the final message when it ends. Jobs live in folders under ``HOME/jobs``, so a
browser reload (or another browser) finds them again."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import streamlit as st

from core.dashboard_jobs import find_job, job_status, log_tail, restart
from ui.common import guarded

POLL_S = 1.0
STATE_ICONS = {"done": ":material/check_circle:", "failed": ":material/error:", "stopped": ":material/pause_circle:",
               "died": ":material/error:"}


def _stop(job_dir: str) -> None:
    job = find_job(job_dir)
    if job is not None:
        job.stop()
    st.session_state[f"_stopping:{job_dir}"] = True


def _restart(job_dir: str) -> None:
    try:
        restart(job_dir)
    except Exception as exc:  # noqa: BLE001
        st.session_state[f"_restart_error:{job_dir}"] = str(exc)


def _draw(job_dir: Path, label: str, key: str, finished_hint: str = "", resumable: bool = False) -> bool:
    """Draw the job's current state; returns True while it runs."""
    job = find_job(job_dir)
    if job is None:
        return False
    status = job_status(job)
    state = status.get("state", "starting")
    alive = bool(status.get("alive"))
    message = status.get("message") or ""
    if alive:
        frac = status.get("fraction")
        stopping = st.session_state.get(f"_stopping:{job_dir}")
        text = f"{label}: {'stopping after the current step ... ' if stopping else ''}{message}"
        st.progress(min(max(float(frac or 0.0), 0.0), 1.0), text=text[:200])
        st.button("Stop", key=f"stop:{key}", icon=":material/stop_circle:", on_click=_stop, args=(str(job_dir),),
                  help="Stops after the current step; starting the same job again resumes where it stopped.")
        return True
    st.session_state.pop(f"_stopping:{job_dir}", None)
    if state == "done":
        st.success(f"{label}: {message}", icon=STATE_ICONS["done"])
    elif state == "stopped":
        st.warning(f"{label} stopped: {message}. Start it again to resume.", icon=STATE_ICONS["stopped"])
    else:
        st.error(f"{label} failed: {message}", icon=STATE_ICONS["failed"])
        tail = log_tail(job)
        if tail.strip():
            with st.expander("Job log (last lines)"):
                st.code(tail[-1500:], language=None)
    if finished_hint and state == "done":
        st.caption(finished_hint)
    if resumable and state != "done":
        st.button("Start again (resumes)", key=f"resume:{key}", icon=":material/play_circle:", on_click=_restart,
                  args=(str(job_dir),))
        err = st.session_state.pop(f"_restart_error:{job_dir}", None)
        if err:
            st.error(f"could not start it again: {err}")
    return False


def job_panel(job_dir: Path, label: str, key: str, finished_hint: str = "",
              on_finish: Callable[[], None] | None = None, resumable: bool = False) -> str | None:
    """Show the job in ``job_dir``; while it runs, a fragment re-polls it every second and reruns the whole
    page once it ends (so results appear). Returns the job's state, or None when there is no job."""
    job = find_job(job_dir)
    if job is None:
        return None
    status = job_status(job)
    if not status.get("alive"):
        _draw(job_dir, label, key, finished_hint, resumable)
        return status.get("state")

    @st.fragment(run_every=POLL_S)
    @guarded(label)
    def poll() -> None:
        running = _draw(job_dir, label, key, finished_hint, resumable)
        if not running:
            if on_finish:
                on_finish()
            st.rerun(scope="app")

    poll()
    return "running"


def job_running(job_dir: Path) -> bool:
    job = find_job(job_dir)
    return bool(job is not None and job.alive())
