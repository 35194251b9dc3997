"""Environment set-up, friendly error handling and cached loaders shared by the pages."""
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


def data_home() -> Path:
    """The data folder (``$GENRELAB_HOME`` or ``./data``); read per call so tests can point it elsewhere."""
    from core.dashboard_support import data_home as _home

    return _home()
