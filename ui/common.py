"""Shared by the pages: environment set-up, friendly errors (``guarded``, ``show_error``) and the caps of a small
shared host (Streamlit Community Cloud)."""
from __future__ import annotations

import functools
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, TypeVar

import streamlit as st

from core.errors import GenreLabError

log = logging.getLogger("genrelab.app")
F = TypeVar("F", bound=Callable[..., Any])


def setup_environment() -> None:
    """Writable caches for numba (librosa) on read-only hosts such as Community Cloud; quiet TensorFlow."""
    if not os.environ.get("NUMBA_CACHE_DIR"):
        path = Path(tempfile.gettempdir()) / "genrelab-numba"
        path.mkdir(parents=True, exist_ok=True)
        os.environ["NUMBA_CACHE_DIR"] = str(path)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def show_error(exc: BaseException, what: str = "") -> None:
    """``st.error`` with a short message: the engine's own message for its errors (every
    :class:`core.errors.GenreLabError`), a generic one (and the traceback in the server log) for anything
    unexpected. Never a stack trace in the page."""
    prefix = f"{what}: " if what else ""
    if isinstance(exc, GenreLabError):  # the engine's own errors: the message is written for the user
        st.error(f"{prefix}{exc}", icon="⚠️")
        return
    log.exception("unexpected error%s", f" ({what})" if what else "")
    st.error(f"{prefix}something went wrong ({type(exc).__name__}). The details are in the server log; "
             "try again, or reload the page.", icon="⚠️")


def guarded(what: str = "") -> Callable[[F], F]:
    """Decorator for page bodies and fragments: unexpected exceptions become a friendly ``st.error``.

    Streamlit's own control flow (``st.rerun``, ``st.stop``) derives from BaseException and passes through.
    """
    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - this is the last line of defence
                show_error(exc, what)
                return None
        return wrapper  # type: ignore[return-value]
    return deco


# ---------------------------------------------------------------------------------------------------------
# hosted (Streamlit Community Cloud) caps
# ---------------------------------------------------------------------------------------------------------
#: On a small shared host (690 MB-2.7 GB of memory, files lost on reboot) training is capped.
HOSTED_CAPS = {"tracks_per_class": 20, "seeds": 2, "epochs": 5}


def hosted_mode() -> bool:
    """True on Streamlit Community Cloud (apps run from ``/mount/src``) or when ``GENRELAB_HOSTED=1``;
    ``GENRELAB_HOSTED=0`` turns the caps off."""
    env = os.environ.get("GENRELAB_HOSTED")
    if env is not None:
        return env.strip() not in ("", "0", "false", "no")
    from core.workspace import REPO_ROOT

    return str(REPO_ROOT).startswith("/mount/src")


def hosted_note() -> str:
    c = HOSTED_CAPS
    return (f"Running on a small shared host (Streamlit Community Cloud): builds use at most {c['tracks_per_class']} "
            f"tracks per class and experiments at most {c['seeds']} seeds of at most {c['epochs']} epochs, so they "
            "finish in minutes and fit in memory; files written here are lost when the app restarts. Run "
            "`python -m core` on your own machine for full-size experiments (set GENRELAB_HOSTED=0 to lift the caps).")
