"""The one error root of Genre Lab.

Every exception that ``core/`` raises on purpose derives from :class:`GenreLabError`; its message is written
for the user (what went wrong and what to do), so a page or the CLI shows ``str(exc)`` as it is. A stop that
the user asked for derives from :class:`Stopped` (itself a ``GenreLabError``), so a caller can tell "stopped
on request" from "failed" with one ``isinstance``.

This module imports nothing, so any module (and the dashboard, which must not load TensorFlow) can use it.
"""

from __future__ import annotations

__all__ = ["DiskFullError", "GenreLabError", "Stopped", "is_disk_full"]


class GenreLabError(Exception):
    """Root of every error Genre Lab raises on purpose; the message is meant for the user."""


class Stopped(GenreLabError):
    """A long job (build, download, embedding, training) stopped because the user asked it to."""


class DiskFullError(GenreLabError, OSError):
    """The disk is full (or would be): what was being written is removed again, and the message says how much
    space is needed where. Also an ``OSError``, so code that handles a failed write keeps handling it."""


def is_disk_full(exc: BaseException) -> bool:
    """True for a :class:`DiskFullError` and for an ``OSError`` with ``errno`` ENOSPC or EDQUOT (a full disk or a
    quota), wherever it was raised."""
    import errno

    return isinstance(exc, DiskFullError) or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT))
