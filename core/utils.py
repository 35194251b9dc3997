"""Small helpers shared by the engine: atomic writes (and their stale temporary files), streamed ``.npy``
writes, hashing, JSON."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import DiskFullError, is_disk_full


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


def host_id() -> str:
    """A short id of this host (8 hex digits of its name's hash) for names of temporary files."""
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


#: ``.NAME.<pid>@<host id>.<random>.tmp``: the temporary file of an atomic write, named after its writer so a
#: later write into the same folder can tell a killed writer's leftover from a write in progress.
_TMP_RE = re.compile(r"^\..+\.(\d+)@([0-9a-f]{8})\.[A-Za-z0-9_]+\.tmp$")
#: the temporary files of older versions (``mkstemp``'s 8 random characters, no writer in the name)
_OLD_TMP_RE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
STALE_TMP_SECONDS = 24 * 3600  # another host's (or an older version's) temporary file: stale after a day
_CLEANED: set[str] = set()


def clean_stale_temps(folder: str | os.PathLike, force: bool = False) -> list[Path]:
    """Remove the temporary files that killed atomic writes left in ``folder`` (``.model_card.json.*.tmp`` ...):
    those of a dead process on this host, and those of another host or an older version after a day. A write
    in progress (live writer) is never touched. Runs once per folder and process unless ``force``; returns
    what was removed."""
    folder = Path(folder)
    key = str(folder.resolve()) if folder.exists() else str(folder)
    if key in _CLEANED and not force:
        return []
    _CLEANED.add(key)
    removed = []
    me = host_id()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for e in entries:
        if not (e.name.startswith(".") and e.name.endswith(".tmp")):
            continue
        m = _TMP_RE.match(e.name)
        try:
            if m:
                stale = (not pid_alive(int(m.group(1)))) if m.group(2) == me else \
                    now - e.stat(follow_symlinks=False).st_mtime > STALE_TMP_SECONDS
            else:
                stale = bool(_OLD_TMP_RE.match(e.name)) and \
                    now - e.stat(follow_symlinks=False).st_mtime > STALE_TMP_SECONDS
            if stale and e.is_file(follow_symlinks=False):
                os.unlink(e.path)
                removed.append(Path(e.path))
        except OSError:
            continue
    return removed


def _disk_full(path: Path, exc: BaseException) -> DiskFullError:
    try:
        free = fmt_bytes(shutil.disk_usage(path.parent).free) + " free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(f"the disk is full: {path} could not be written ({free}); free some space and run "
                         "again")


def _current_umask() -> int:
    mask = os.umask(0o022)  # read it (os.umask sets and returns the old one), then put it back
    os.umask(mask)
    return mask


#: the process's umask, read once at import (reading it means setting it: not from several threads at a time)
_UMASK = _current_umask()


def _file_mode(path: Path) -> int:
    """The permission bits a replaced file keeps, or a new file gets (``0666`` less the umask, as ``open``)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_UMASK


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, then rename). The temp file names
    its writer (:data:`_TMP_RE`), and killed writers' leftovers in the folder are removed
    (:func:`clean_stale_temps`). A full disk raises :class:`core.errors.DiskFullError` (nothing is left)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}@{host_id()}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode(path))  # mkstemp's 0600 would make shipped cards unreadable to other users
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise _disk_full(path, exc) from exc
        raise


class NpyWriter:
    """Write a ``.npy`` file of known dtype and shape piece by piece (``write`` rows in order, then ``close``),
    with ordinary file writes into ``.NAME.tmp`` renamed over ``path`` when complete.

    Unlike a memory map (``np.lib.format.open_memmap``), a full disk fails a write with ``OSError`` (ENOSPC:
    here :class:`core.errors.DiskFullError`) instead of killing the process with SIGBUS when a page of a sparse
    file cannot be backed (tmpfs). On any error the temporary file is removed. Use as a context manager."""

    def __init__(self, path: str | os.PathLike, dtype, shape: tuple[int, ...]):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(x) for x in shape)
        self.row_items = int(np.prod(self.shape[1:], dtype=np.int64)) if len(self.shape) > 1 else 1
        self.rows = 0
        self._fh = open(self.tmp, "wb")
        try:
            np.lib.format.write_array_header_1_0(self._fh, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                            "fortran_order": False, "shape": self.shape})
        except BaseException as exc:
            self.abort()
            raise self._error(exc) from exc

    def _error(self, exc: BaseException) -> BaseException:
        return _disk_full(self.path, exc) if is_disk_full(exc) and not isinstance(exc, DiskFullError) else exc

    def write(self, rows: np.ndarray) -> None:
        a = np.ascontiguousarray(rows, dtype=self.dtype)
        if a.shape[1:] != self.shape[1:] or self.rows + a.shape[0] > self.shape[0]:
            self.abort()
            raise ValueError(f"{self.path}: rows of shape {a.shape} do not fit {self.shape} after {self.rows} rows")
        try:
            self._fh.write(memoryview(a).cast("B"))
        except BaseException as exc:
            self.abort()
            raise self._error(exc) from exc
        self.rows += a.shape[0]

    def close(self) -> Path:
        """Flush, check that every row was written, rename into place; returns the path."""
        try:
            if self.rows != self.shape[0]:
                raise ValueError(f"{self.path}: {self.rows} of {self.shape[0]} rows written")
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.replace(self.tmp, self.path)
        except BaseException as exc:
            self.abort()
            raise self._error(exc) from exc
        return self.path

    def abort(self) -> None:
        """Drop the temporary file (nothing is renamed)."""
        try:
            self._fh.close()
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "NpyWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as pretty JSON, atomically."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file. Nesting too deep for Python's parser (``[[[[...``, a hostile or damaged file) raises
    ``ValueError`` like any other bad JSON, never ``RecursionError``."""
    with open(path, encoding="utf-8") as fh:
        try:
            return json.load(fh)
        except RecursionError:
            raise ValueError("JSON nested too deeply to be read (damaged, or not a Genre Lab file)") from None


def atomic_save_npy(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Save a ``.npy`` array atomically (small arrays: labels, indices; big ones go through memmaps)."""
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def stable_hash(obj: Any, length: int = 16) -> str:
    """Short hash of a JSON-serialisable object (sorted keys), for cache keys."""
    text = json.dumps(obj, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def fmt_bytes(n: int | None) -> str:
    """Human size: ``1.23 GB`` (powers of 1000)."""
    if n is None:
        return "an unknown number of bytes"
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.2f} {unit}"
        value /= 1000
    return f"{n} bytes"  # pragma: no cover


def format_duration(seconds: float | None) -> str:
    """``75`` -> ``"1:15"``, ``4000`` -> ``"1:06:40"``; ``"?"`` for None."""
    if seconds is None:
        return "?"
    s = int(round(max(0.0, seconds)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
