"""The one error root of Genre Lab.

Every exception that ``core/`` raises on purpose derives from :class:`GenreLabError`; its message is written
for the user (what went wrong and what to do), so a page or the CLI shows ``str(exc)`` as it is. A stop that
the user asked for derives from :class:`Stopped` (itself a ``GenreLabError``), so a caller can tell "stopped
on request" from "failed" with one ``isinstance``.

This module imports nothing, so any module (and the dashboard, which must not load TensorFlow) can use it.
"""

from __future__ import annotations

__all__ = ["GenreLabError", "Stopped"]


class GenreLabError(Exception):
    """Root of every error Genre Lab raises on purpose; the message is meant for the user."""


class Stopped(GenreLabError):
    """A long job (build, download, embedding, training) stopped because the user asked it to."""
