"""The one job panel: a background job (:mod:`core.jobs`, any long ``python -m core`` command) on a page.

While the job runs a fragment re-polls it (progress, a Stop button); when it ends the page reruns and the panel
shows the outcome, with a button that starts the same job again (it resumes). Jobs live in folders under
``HOME/jobs``, so a browser reload (or another browser) finds them again. The data page (builds, downloads),
the demo page (the demo model) and the experiment page (``run-experiment``, with its own progress drawing) all
use :func:`job_panel`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import streamlit as st

from core.jobs import Job, find_job, job_status, log_tail, restart_job
from core.utils import format_duration
from ui.common import guarded

POLL_S = 1.0
STATE_ICONS = {"done": ":material/check_circle:", "failed": ":material/error:", "stopped": ":material/pause_circle:",
               "died": ":material/error:"}
#: How a finished job reads: (state, label, message) -> sentence; a page passes its own ``describe``.
Describe = Callable[[str, str, str], str]


def _default_describe(state: str, label: str, message: str) -> str:
    if state == "done":
        return f"{label}: {message}"
    if state == "stopped":
        return f"{label} stopped: {message}. Start it again to resume."
    return f"{label} failed: {message}"


def _stop(job_dir: str) -> None:
    job = find_job(job_dir)
    if job is not None:
        job.stop()
    st.session_state[f"_stopping:{job_dir}"] = True


def _restart(job_dir: str) -> None:
    try:
        restart_job(job_dir)
    except Exception as exc:  # noqa: BLE001 - shown under the button (LockError names the other job)
        st.session_state[f"_restart_error:{job_dir}"] = str(exc)
    st.session_state.pop(f"_stopping:{job_dir}", None)


def time_words(status: dict) -> str:
    """``"elapsed 1:23 · about 0:45 left"`` from a job's status (``core.jobs.job_status``); '' before its
    first event."""
    if status.get("elapsed_s") is None:
        return ""
    el = f"elapsed {format_duration(status['elapsed_s'])}"
    eta = status.get("eta_s")
    return f"{el} · about {format_duration(eta)} left" if eta is not None else f"{el} · estimating the time left"


def _progress_bar(job: Job, status: dict, label: str, stopping: bool) -> None:
    """The default drawing of a running job: one bar from the last event's fraction and message, and the time
    elapsed and left."""
    frac = status.get("fraction")
    text = f"{label}: {'stopping after the current step ... ' if stopping else ''}{status.get('message') or ''}"
    st.progress(min(max(float(frac or 0.0), 0.0), 1.0), text=text[:200])
    words = time_words(status)
    if words:
        st.caption(words[:1].upper() + words[1:])


def _draw(job_dir: Path, label: str, key: str, finished_hint: str, resumable: bool,
          draw_running: Callable[[Job, dict], None] | None, describe: Describe, resume_labels: tuple[str, str]) -> bool:
    """Draw the job's current state; returns True while it runs."""
    job = find_job(job_dir)
    if job is None:
        return False
    status = job_status(job)
    state = status.get("state", "starting")
    stopping = bool(st.session_state.get(f"_stopping:{job_dir}"))
    if status.get("alive"):
        if draw_running is None:
            _progress_bar(job, status, label, stopping)
        else:
            draw_running(job, status)
        c1, c2 = st.columns([1, 3], vertical_alignment="center")
        c1.button("Stop", key=f"stop:{key}", icon=":material/stop_circle:", on_click=_stop, args=(str(job_dir),),
                  disabled=stopping,
                  help="Stops after the current step; starting the same job again resumes where it stopped.")
        if stopping:
            c2.caption("Stopping after the current step ...")
        return True
    st.session_state.pop(f"_stopping:{job_dir}", None)
    text = describe(state, label, status.get("message") or "")
    again = resumable and state != "done"
    box, button = st.columns([4, 1], vertical_alignment="center") if again else (st.container(), None)
    if state == "done":
        box.success(text, icon=STATE_ICONS["done"])
    elif state == "stopped":
        box.warning(text, icon=STATE_ICONS["stopped"])
    else:
        box.error(text, icon=STATE_ICONS["failed"])
    if button is not None:
        button.button(resume_labels[0] if state == "stopped" else resume_labels[1], key=f"resume:{key}",
                      icon=":material/play_circle:", on_click=_restart, args=(str(job_dir),))
    if state not in ("done", "stopped"):
        tail = log_tail(job)
        if tail.strip():
            with st.expander("Job log (last lines)"):
                st.code(tail[-1500:], language=None)
    if finished_hint and state == "done":
        st.caption(finished_hint)
    err = st.session_state.pop(f"_restart_error:{job_dir}", None)
    if err:
        st.error(f"Could not start it again: {err}", icon=":material/error:")
    return False


def job_panel(job_dir: Path, label: str, key: str, finished_hint: str = "",
              on_finish: Callable[[], None] | None = None, resumable: bool = False, *,
              draw_running: Callable[[Job, dict], None] | None = None, describe: Describe = _default_describe,
              resume_labels: tuple[str, str] = ("Start again (resumes)", "Start again (resumes)"),
              poll_s: float = POLL_S) -> str | None:
    """Show the job in ``job_dir``; while it runs, a fragment re-polls it every ``poll_s`` seconds and reruns the
    whole page once it ends (so results appear). Returns the job's state, or None when there is no job.

    ``draw_running(job, status)`` draws a running job (default: one progress bar); ``describe(state, label,
    message)`` words the outcome; with ``resumable``, a stopped / failed job gets a button (``resume_labels``)
    that starts the same command again.
    """
    job = find_job(job_dir)
    if job is None:
        return None
    args = (job_dir, label, key, finished_hint, resumable, draw_running, describe, resume_labels)
    status = job_status(job)
    if not status.get("alive"):
        _draw(*args)
        return status.get("state")

    @st.fragment(run_every=poll_s)
    @guarded(label)
    def poll() -> None:
        running = _draw(*args)
        if not running:
            if on_finish:
                on_finish()
            st.rerun(scope="app")

    poll()
    return "running"


def job_running(job_dir: Path) -> bool:
    job = find_job(job_dir)
    return bool(job is not None and job.alive())
