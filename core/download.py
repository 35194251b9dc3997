"""Streamed, resumable, checksum-verified downloads: GTZAN and Emotify (extraction: :mod:`core.archives`).

* :func:`download_file` streams a URL into ``DEST.part`` (resuming it with an HTTP ``Range`` request),
  checks size and optional sha256, then renames it into place atomically.
* :func:`download_gtzan` fetches ``genres.tar.gz`` (Hugging Face mirror of GTZAN) and extracts it safely.
* :func:`download_emotify` fetches Emotify's ``data.csv`` and ``emotifymusic.zip`` from its official page and
  extracts the genre folders, checked against the annotations.

Every failure is raised with a short plain-language message (``str(err)``) fit for the user:
:class:`DownloadError` (network, HTTP, checksum, damaged download), :class:`DownloadStopped` (a stop request;
the partial file is kept), :class:`ArchiveError` / :class:`DatasetArchiveError` (unsafe or unusable archive).
Only the standard library is used for HTTP (``urllib``); ``tqdm`` is imported by the CLI only.
"""
from __future__ import annotations

import contextlib
import errno
import http.client
import os
import re
import shutil
import socket
import ssl
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from core.errors import GenreLabError, Stopped
from core.archives import (ArchiveError, DatasetArchiveError, check_dataset_layout, content_root, extract_tar_safely,
                           extract_zip_dataset, listing)
from core.jobs import add_job_args
from core.utils import atomic_write_json, fmt_bytes as _fmt_bytes, read_json, sha256_file

#: Where GTZAN lives now (the original marsyas.info / opihi.cs.uvic.ca URLs are dead).
GTZAN_URL = "https://huggingface.co/datasets/marsyas/gtzan/resolve/main/data/genres.tar.gz"
GTZAN_URL_ENV = "GENRELAB_GTZAN_URL"
GTZAN_SHA256_ENV = "GENRELAB_GTZAN_SHA256"
#: sha256 of :data:`GTZAN_URL`'s file as Hugging Face's Git LFS pointer lists it (``data/genres.tar.gz``, 1.23 GB,
#: added in commit 7031b10 and unchanged since). Applied only when the default URL is used.
GTZAN_SHA256 = "b28cc067ff6199bd826f5d1a6931458586d64acae7f44b2e882b7a97af057531"
GTZAN_ARCHIVE_NAME = "genres.tar.gz"
GTZAN_FOLDER_NAME = "genres"
#: Written in DEST (next to ``genres/``) once extraction is complete; its presence = nothing left to do.
GTZAN_MARKER_NAME = ".genres.extracted.json"

PART_SUFFIX = ".part"
_META_SUFFIX = ".part.json"  # validator (ETag / Last-Modified) of the partial download, for If-Range
_USER_AGENT = "genre-lab-downloader/1.0 (+python urllib)"

ProgressFn = Callable[[int, "int | None"], None]
StopFn = Callable[[], bool]


class DownloadError(GenreLabError):
    """A download that failed; ``str(err)`` is the reason for the user. ``status`` is the HTTP status if any."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class DownloadStopped(Stopped):
    """The download was stopped on request; the partial file is kept so that the next call resumes."""


class _Restart(Exception):
    """Internal: the partial file cannot be resumed, start again from byte 0."""


# --------------------------------------------------------------------------------------------- helpers


def part_path(dest: str | os.PathLike) -> Path:
    """Path of the partial download kept for ``dest`` (``dest + ".part"``)."""
    return Path(str(dest) + PART_SUFFIX)


def _meta_path(dest: Path) -> Path:
    return Path(str(dest) + _META_SUFFIX)


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).hostname or url


def _normalise_sha256(value: str | None) -> str | None:
    """Lower-case hex digest, or None; a malformed value is a :class:`DownloadError`."""
    if value is None or not str(value).strip():
        return None
    value = str(value).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise DownloadError(f"not a sha256 hex digest (64 hex characters): {value!r}")
    return value


def _check_url(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise DownloadError(f"cannot download {url!r}: only http:// and https:// addresses are supported")


def _remove(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _network_message(url: str, exc: BaseException, timeout: float) -> str:
    """Plain-language reason for a failure to connect (DNS, refused, timeout, TLS, ...)."""
    host = _host(url)
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, socket.gaierror):
        return (f"could not reach {host}: no network connection? (the name {host} could not be looked up; "
                "check the internet connection, proxy or firewall)")
    if isinstance(reason, ssl.SSLCertVerificationError):
        return (f"could not reach {host}: its certificate could not be verified ({reason.verify_message}); "
                "a proxy intercepting HTTPS, or a wrong system clock?")
    if isinstance(reason, ssl.SSLError):
        return f"could not reach {host}: the secure connection failed ({reason}); a proxy or firewall?"
    if isinstance(reason, ConnectionRefusedError):
        return f"could not reach {host}: the connection was refused (no network connection, or server down?)"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"could not reach {host}: no answer within {timeout:g} s (no network connection, or very slow?)"
    if isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return f"could not reach {host}: no network connection? (network unreachable)"
    text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    return f"could not reach {host}: no network connection? ({text})"


def _http_message(url: str, code: int, reason: str) -> str:
    """Plain-language reason for an HTTP error status."""
    hint = {
        401: "the file is private, gated or no longer exists",
        403: "access is forbidden",
        404: "the file is not there (moved or deleted?)",
        429: "too many requests; wait a little and try again",
    }.get(code, "the server had a problem; try again later" if code >= 500 else "")
    tail = f": {hint}" if hint else ""
    return f"could not download {url}: the server {_host(url)} answered HTTP {code} {reason}{tail}"


_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)", re.IGNORECASE)


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``Content-Range`` -> (first byte, total size); None for parts that are absent or ``*``."""
    m = _CONTENT_RANGE.match((value or "").strip())
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return start, total


def _content_length(headers) -> int | None:
    try:
        value = int(headers.get("Content-Length", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def _validator(headers) -> str | None:
    """A strong ETag, else Last-Modified: what ``If-Range`` may carry to resume only an unchanged file."""
    etag = (headers.get("ETag") or "").strip()
    if etag and not etag.startswith("W/"):
        return etag
    return (headers.get("Last-Modified") or "").strip() or None


def _load_validator(dest: Path, url: str) -> str | None:
    try:
        meta = read_json(_meta_path(dest))
    except (OSError, ValueError):
        return None
    return meta.get("validator") if isinstance(meta, dict) and meta.get("url") == url else None


def _existing_ok(dest: Path, sha256: str | None, expected_size: int | None) -> bool:
    """True when ``dest`` is already complete (only ever renamed into place after verification)."""
    if not dest.is_file():
        return False
    if expected_size is not None and dest.stat().st_size != expected_size:
        return False
    return sha256 is None or sha256_file(dest) == sha256


# ------------------------------------------------------------------------------------------- download


def _open(url: str, offset: int, validator: str | None, timeout: float):
    """Send the GET (with ``Range`` from ``offset``); returns the response, or the HTTPError for 416."""
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator
    req = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset > 0:
            return e
        e.close()
        raise DownloadError(_http_message(url, e.code, e.reason), status=e.code) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise DownloadError(_network_message(url, e, timeout)) from None


def _check_disk_space(folder: Path, needed: int) -> None:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if needed > free:
        raise DownloadError(f"not enough disk space in {folder}: {_fmt_bytes(needed)} needed, "
                            f"{_fmt_bytes(free)} free")


def _stream(resp, url: str, part: Path, offset: int, total: int | None, *, progress: ProgressFn | None,
            should_stop: StopFn | None, timeout: float, chunk: int) -> int:
    """Append the response body to ``part`` (truncated first when ``offset`` is 0); returns bytes on disk."""
    done = offset
    if progress:
        progress(done, total)
    try:
        fh = open(part, "ab" if offset else "wb")
    except OSError as e:
        raise DownloadError(f"cannot write {part}: {e.strerror or e}") from None
    read = getattr(resp, "read1", resp.read)  # read1: whatever has arrived (<= chunk), so stops react fast
    with fh:
        while True:
            if should_stop is not None and should_stop():
                raise DownloadStopped(f"download stopped after {_fmt_bytes(done)} of {_fmt_bytes(total)}; "
                                      f"the partial file {part.name} is kept: run again to resume")
            try:
                block = read(chunk)
            except (OSError, http.client.HTTPException, ValueError) as e:
                reason = ("no data for {:g} s".format(timeout) if isinstance(e, (TimeoutError, socket.timeout))
                          else "the connection was cut" if isinstance(e, http.client.IncompleteRead)
                          else str(e) or type(e).__name__)
                raise DownloadError(
                    f"the download from {_host(url)} was interrupted after {_fmt_bytes(done)} of "
                    f"{_fmt_bytes(total)} ({reason}); the partial file is kept: run again to resume") from None
            if not block:
                break
            try:
                fh.write(block)
            except OSError as e:
                raise DownloadError(f"cannot write {part}: {e.strerror or e} (disk full?); "
                                    "the partial file is kept: free some space and run again") from None
            done += len(block)
            if progress:
                progress(done, total)
    if total is not None and done != total:
        raise DownloadError(
            f"the download from {_host(url)} ended early: {_fmt_bytes(done)} of {_fmt_bytes(total)}; "
            "the partial file is kept: run again to resume")
    return done


def _fetch(url: str, dest: Path, part: Path, offset: int, *, expected_size: int | None,
           progress: ProgressFn | None, should_stop: StopFn | None, timeout: float, chunk: int) -> int:
    """One request: resume ``part`` from ``offset`` (or restart); returns its final size. May raise _Restart."""
    resp = _open(url, offset, _load_validator(dest, url) if offset else None, timeout)
    with resp:
        if isinstance(resp, urllib.error.HTTPError):  # 416: nothing left after `offset`
            _, total = _parse_content_range(resp.headers.get("Content-Range"))
            if total == offset and (expected_size is None or expected_size == offset):
                if progress:
                    progress(offset, total)
                return offset
            raise _Restart()
        status = resp.status
        if status == 206 and offset > 0:
            start, total = _parse_content_range(resp.headers.get("Content-Range"))
            if start != offset:
                raise _Restart()
            if total is None:
                length = _content_length(resp.headers)
                total = offset + length if length is not None else None
        elif status == 200:  # fresh download, or a server that ignores Range: start from byte 0
            offset = 0
            total = _content_length(resp.headers)
        else:
            raise DownloadError(f"could not download {url}: unexpected answer HTTP {status} from "
                                f"{_host(url)}", status=status)
        if expected_size is not None and total is not None and total != expected_size:
            raise DownloadError(f"the server {_host(url)} offers {_fmt_bytes(total)} but "
                                f"{_fmt_bytes(expected_size)} were expected: wrong URL or changed file?")
        total = total if total is not None else expected_size
        if total is not None:
            _check_disk_space(part.parent, total - offset)
        atomic_write_json(_meta_path(dest), {"url": url, "validator": _validator(resp.headers), "total": total})
        return _stream(resp, url, part, offset, total, progress=progress, should_stop=should_stop,
                       timeout=timeout, chunk=chunk)


def download_file(url: str, dest: str | os.PathLike, *, sha256: str | None = None,
                  expected_size: int | None = None, progress: ProgressFn | None = None,
                  should_stop: StopFn | None = None, timeout: float = 30, chunk: int = 1 << 20) -> Path:
    """Download ``url`` to ``dest``: streamed into ``dest.part``, resumable, verified, renamed atomically.

    * ``dest`` already there (and matching ``sha256`` / ``expected_size`` when given): returned at once.
    * An existing ``dest.part`` is resumed with ``Range: bytes=N-`` (``If-Range`` with the ETag seen before);
      a server that ignores Range (200) or a part that cannot be resumed (416, other start) restarts at 0.
    * The size must equal ``Content-Length`` (and ``expected_size``); ``sha256`` is checked at the end:
      on mismatch the part file is deleted and :class:`DownloadError` raised.
    * ``progress(done_bytes, total_bytes_or_None)`` is called after each chunk; ``should_stop()`` is polled
      between chunks and a True stops with :class:`DownloadStopped`, keeping the part for a later resume.
    * Network / HTTP failures raise :class:`DownloadError` with a plain message; the part file is kept.
    """
    dest = Path(dest)
    part = part_path(dest)
    _check_url(url)
    sha256 = _normalise_sha256(sha256)
    if _existing_ok(dest, sha256, expected_size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if should_stop is not None and should_stop():
        raise DownloadStopped("download stopped before it started")
    for attempt in range(2):
        offset = part.stat().st_size if part.is_file() else 0
        if expected_size is not None and offset > expected_size:
            _remove(part)
            offset = 0
        try:
            if expected_size is not None and offset == expected_size and offset > 0:
                size = offset  # complete part left by an earlier run (stopped before verification)
                if progress:
                    progress(size, expected_size)
            else:
                size = _fetch(url, dest, part, offset, expected_size=expected_size, progress=progress,
                              should_stop=should_stop, timeout=timeout, chunk=chunk)
            break
        except _Restart:
            _remove(part, _meta_path(dest))
            if attempt:
                raise DownloadError(f"could not download {url}: the server does not answer consistently to "
                                    "resumed downloads; try again later") from None
    if expected_size is not None and size != expected_size:  # pragma: no cover - guarded in _fetch
        raise DownloadError(f"downloaded {_fmt_bytes(size)} but {_fmt_bytes(expected_size)} were expected")
    if sha256 is not None:
        got = sha256_file(part)
        if got != sha256:
            _remove(part, _meta_path(dest))
            raise DownloadError(
                f"the file downloaded from {_host(url)} is corrupt or not the expected one: sha256 checksum "
                f"mismatch (expected {sha256}, got {got}); the partial file was deleted, run again to retry")
    os.replace(part, dest)
    _remove(_meta_path(dest))
    return dest


# --------------------------------------------------------------------------------------------- GTZAN


@contextlib.contextmanager
def _unusable_archive(archive: Path, dest_dir: Path, what: str):
    """Extraction errors as :class:`DownloadError`: an unusable archive (:class:`ArchiveError`) is deleted so
    that the next run downloads it afresh; an ``OSError`` (disk full ...) keeps it."""
    try:
        yield
    except ArchiveError as e:
        _remove(archive)
        raise DownloadError(f"the downloaded {what} archive is unusable: {e}. It was deleted: run again to "
                            "download it afresh") from None
    except OSError as e:
        raise DownloadError(f"could not extract {archive} into {dest_dir}: {e.strerror or e} "
                            "(disk full?); run again once fixed") from None


def _completed(target: Path, marker: Path, what: str) -> bool:
    """True when an earlier download completed (its marker is written last); :class:`DownloadError` when
    ``target`` exists without one (not ours to overwrite)."""
    if marker.is_file() and target.is_dir():
        return True
    if target.exists():
        raise DownloadError(f"{target} already exists but was not made by a completed {what} download: "
                            "delete it, or choose another folder")
    return False


def _gtzan_extract(archive: Path, dest_dir: Path) -> tuple[Path, dict[str, int]]:
    """Extract ``archive`` into a temp folder in ``dest_dir``, check it, rename its content root to
    ``dest_dir/genres`` (atomic). Nothing is left behind on error."""
    target = dest_dir / GTZAN_FOLDER_NAME
    tmp = Path(tempfile.mkdtemp(prefix=f".{GTZAN_FOLDER_NAME}.extract-", dir=dest_dir))
    try:
        extract_tar_safely(archive, tmp)
        root = content_root(tmp)
        classes = check_dataset_layout(root, what="the GTZAN archive")
        os.rename(root, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, classes


def download_gtzan(dest_dir: str | os.PathLike, url: str | None = None, sha256: str | None = None,
                   progress: ProgressFn | None = None, should_stop: StopFn | None = None, *,
                   keep_archive: bool = True, timeout: float = 30) -> Path:
    """Download GTZAN (``genres.tar.gz``, ~1.2 GB) into ``dest_dir`` and extract it to ``dest_dir/genres``.

    Returns the folder holding the genre sub-folders (``dest_dir/genres``), the one to give to
    ``build-dataset``. ``url`` defaults to ``$GENRELAB_GTZAN_URL`` then :data:`GTZAN_URL`; ``sha256`` to
    ``$GENRELAB_GTZAN_SHA256``, then :data:`GTZAN_SHA256` for the default URL, else None (another copy: the
    size must still match Content-Length and the archive must be a readable gzip tar). Re-running resumes a
    partial download and
    returns at once when a previous extraction completed (marker file written last). A damaged or unsafe
    archive is deleted and reported as :class:`DownloadError`; a stop request raises :class:`DownloadStopped`.
    """
    dest_dir = Path(dest_dir)
    target, marker = dest_dir / GTZAN_FOLDER_NAME, dest_dir / GTZAN_MARKER_NAME
    if _completed(target, marker, "GTZAN"):
        return target
    url = url or os.environ.get(GTZAN_URL_ENV) or GTZAN_URL
    sha256 = sha256 or os.environ.get(GTZAN_SHA256_ENV) or (GTZAN_SHA256 if url == GTZAN_URL else None)
    try:
        sha256 = _normalise_sha256(sha256)
    except DownloadError as e:
        raise DownloadError(f"bad GTZAN checksum: {e}") from None
    dest_dir.mkdir(parents=True, exist_ok=True)
    archive = dest_dir / GTZAN_ARCHIVE_NAME
    try:
        download_file(url, archive, sha256=sha256, progress=progress, should_stop=should_stop, timeout=timeout)
    except DownloadError as e:
        if e.status is not None:
            raise DownloadError(f"{e} (set {GTZAN_URL_ENV} or pass --url to use another copy of GTZAN)",
                                status=e.status) from None
        raise
    with _unusable_archive(archive, dest_dir, "GTZAN"):
        target, classes = _gtzan_extract(archive, dest_dir)
    atomic_write_json(marker, {"url": url, "archive": archive.name, "archive_bytes": archive.stat().st_size,
                               "sha256": sha256, "classes": classes, "folder": target.name,
                               "extracted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    if not keep_archive:
        _remove(archive)
    return target


# ------------------------------------------------------------------------------------------- Emotify

#: The Emotify dataset's official page (Aljanaki, Wiering & Veltkamp 2015, Utrecht University). It serves the
#: music as ``emotifymusic.zip`` (400 one-minute MP3 excerpts of Magnatune recordings, ~363 MB, one folder per
#: genre: ``classical/``, ``electronic/``, ``pop/``, ``rock/``, files ``1.mp3`` ... ``100.mp3``) and the
#: annotations as ``data.csv`` (one row per game response: ``track id`` 1-400, ``genre``, the nine GEMS emotions,
#: ``mood``, ...; the header has spaces after its commas). These addresses are the ones published on that page
#: and used by other projects; they could not be fetched from this project's machines (no internet), and the
#: page publishes no checksum: ``--url`` / ``--csv-url`` (or ``$GENRELAB_EMOTIFY_URL`` /
#: ``$GENRELAB_EMOTIFY_CSV_URL``) point at another copy, ``--sha256`` / ``--csv-sha256`` (or the ``..._SHA256``
#: variables) pin the files. The sizes are always checked against Content-Length, the zip is extracted safely
#: and its genre folders are checked against ``data.csv``; the marker file records both files' sha256.
EMOTIFY_PAGE = "https://www2.projects.science.uu.nl/memotion/emotifydata/"
EMOTIFY_URL = EMOTIFY_PAGE + "emotifymusic.zip"
EMOTIFY_CSV_URL = EMOTIFY_PAGE + "data.csv"
EMOTIFY_URL_ENV = "GENRELAB_EMOTIFY_URL"
EMOTIFY_CSV_URL_ENV = "GENRELAB_EMOTIFY_CSV_URL"
EMOTIFY_SHA256_ENV = "GENRELAB_EMOTIFY_SHA256"
EMOTIFY_CSV_SHA256_ENV = "GENRELAB_EMOTIFY_CSV_SHA256"
EMOTIFY_ARCHIVE_NAME = "emotifymusic.zip"
EMOTIFY_CSV_NAME = "data.csv"
#: The genre folders end up in ``DEST/emotify`` (the folder to give to ``build-dataset``).
EMOTIFY_FOLDER_NAME = "emotify"
EMOTIFY_MARKER_NAME = ".emotify.extracted.json"
EMOTIFY_CITATION = ("Aljanaki, Wiering & Veltkamp, \"Studying emotion induced by music through a crowdsourcing "
                    "game\", Information Processing & Management 52(1), 2016")


def read_emotify_csv(path: str | os.PathLike) -> dict[int, str]:
    """``{track id: genre}`` from Emotify's ``data.csv`` (several rows per track; names and values are
    stripped, genres lower-cased). :class:`DownloadError` when the file is not that table."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
            rows = csv.reader(fh)
            header = [h.strip().lower().replace("_", " ") for h in next(rows, [])]
            if "track id" not in header or "genre" not in header:
                raise DownloadError(f"{Path(path).name} is not Emotify's annotation table: no 'track id' and "
                                    f"'genre' columns (found: {', '.join(header[:6]) or 'nothing'})")
            i_id, i_genre = header.index("track id"), header.index("genre")
            genres: dict[int, str] = {}
            for n, row in enumerate(rows, start=2):
                if not row or not "".join(row).strip():
                    continue
                try:
                    tid, genre = int(row[i_id].strip()), row[i_genre].strip().lower()
                except (IndexError, ValueError):
                    raise DownloadError(f"{Path(path).name}, line {n}: no track id / genre") from None
                if genres.setdefault(tid, genre) != genre:
                    raise DownloadError(f"{Path(path).name}: track {tid} is listed as both "
                                        f"{genres[tid]!r} and {genre!r}")
    except OSError as e:
        raise DownloadError(f"cannot read {path}: {e.strerror or e}") from None
    if not genres:
        raise DownloadError(f"{Path(path).name} lists no tracks")
    return genres


def _emotify_check(root: Path, genres_of: dict[int, str]) -> dict:
    """Compare the extracted genre folders with ``data.csv``: tracks per genre expected and found.
    A genre folder the table does not know is an error (wrong archive)."""
    expected: dict[str, int] = {}
    for g in genres_of.values():
        expected[g] = expected.get(g, 0) + 1
    found = check_dataset_layout(root, what="the Emotify archive")
    unknown = [g for g in found if g.lower() not in expected]
    if unknown:
        raise DatasetArchiveError(f"the Emotify archive has genre folders that data.csv does not list: "
                                  f"{listing(unknown)} (data.csv lists {listing(sorted(expected))})")
    found_l = {g.lower(): n for g, n in found.items()}
    missing = {g: n - found_l.get(g, 0) for g, n in sorted(expected.items()) if found_l.get(g, 0) < n}
    return {"expected": dict(sorted(expected.items())), "found": dict(sorted(found_l.items())),
            "missing": missing}


def download_emotify(dest_dir: str | os.PathLike, url: str | None = None, csv_url: str | None = None,
                     sha256: str | None = None, csv_sha256: str | None = None,
                     progress: ProgressFn | None = None, should_stop: StopFn | None = None, *,
                     keep_archive: bool = True, timeout: float = 30) -> Path:
    """Download Emotify (``data.csv``, then ``emotifymusic.zip``, ~363 MB) into ``dest_dir`` and extract the
    music to ``dest_dir/emotify/<genre>/N.mp3``; ``data.csv`` stays in ``dest_dir``.

    Returns ``dest_dir/emotify``, the folder to give to ``build-dataset``. URLs and checksums default to the
    ``$GENRELAB_EMOTIFY_*`` variables, then :data:`EMOTIFY_URL` / :data:`EMOTIFY_CSV_URL` and no checksum
    (none is published; sizes are checked against Content-Length). ``progress(done, total)`` reports the
    zip's bytes. Re-running resumes a partial download and returns at once when a previous run completed
    (marker file written last). An unusable archive is deleted and reported as :class:`DownloadError`; a stop
    request raises :class:`DownloadStopped` (partial files kept).
    """
    dest_dir = Path(dest_dir)
    target, marker = dest_dir / EMOTIFY_FOLDER_NAME, dest_dir / EMOTIFY_MARKER_NAME
    if _completed(target, marker, "Emotify"):
        return target
    url = url or os.environ.get(EMOTIFY_URL_ENV) or EMOTIFY_URL
    csv_url = csv_url or os.environ.get(EMOTIFY_CSV_URL_ENV) or EMOTIFY_CSV_URL
    try:
        sha256 = _normalise_sha256(sha256 or os.environ.get(EMOTIFY_SHA256_ENV))
        csv_sha256 = _normalise_sha256(csv_sha256 or os.environ.get(EMOTIFY_CSV_SHA256_ENV))
    except DownloadError as e:
        raise DownloadError(f"bad Emotify checksum: {e}") from None
    dest_dir.mkdir(parents=True, exist_ok=True)
    csv_path, archive = dest_dir / EMOTIFY_CSV_NAME, dest_dir / EMOTIFY_ARCHIVE_NAME
    for what, u, dest, digest, prog in (("data.csv", csv_url, csv_path, csv_sha256, None),
                                        ("emotifymusic.zip", url, archive, sha256, progress)):
        try:
            download_file(u, dest, sha256=digest, progress=prog, should_stop=should_stop, timeout=timeout)
        except DownloadError as e:
            if e.status is not None:
                flag = "--url" if what.endswith(".zip") else "--csv-url"
                env = EMOTIFY_URL_ENV if what.endswith(".zip") else EMOTIFY_CSV_URL_ENV
                raise DownloadError(f"{e} (Emotify's {what}; pass {flag} or set {env} to use another copy)",
                                    status=e.status) from None
            raise
    try:
        genres_of = read_emotify_csv(csv_path)
    except DownloadError as e:
        _remove(csv_path)
        raise DownloadError(f"{e}. The downloaded data.csv was deleted: run again to download it afresh") from None
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMOTIFY_FOLDER_NAME}.extract-", dir=dest_dir))
    try:
        with _unusable_archive(archive, dest_dir, "Emotify"):
            root = extract_zip_dataset(archive, tmp / "x")
            check = _emotify_check(root, genres_of)
            os.rename(root, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_json(marker, {"url": url, "csv_url": csv_url, "archive": archive.name,
                               "archive_bytes": archive.stat().st_size, "sha256": sha256_file(archive),
                               "csv_sha256": sha256_file(csv_path), "folder": target.name, **check,
                               "citation": EMOTIFY_CITATION,
                               "extracted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    if not keep_archive:
        _remove(archive)
    return target


def emotify_info(dest_dir: str | os.PathLike) -> dict | None:
    """The marker of a completed :func:`download_emotify` in ``dest_dir`` (tracks per genre, checksums), or None."""
    try:
        info = read_json(Path(dest_dir) / EMOTIFY_MARKER_NAME)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


# ----------------------------------------------------------------------------------------------- CLI


def _run_download(args, what: str, fetch: Callable[..., Path], done_message: Callable[[Path], str]) -> int:
    """A download command: a progress bar on the terminal, or progress events with ``--events`` (a job);
    ``--stop-file`` / SIGTERM / Ctrl-C keep the partial download for the next run."""
    import sys

    from core.jobs import JobReport

    report = JobReport(args, "download")
    bars: list = []  # created on the first progress report: nothing is drawn when there is nothing to fetch

    def progress(done: int, total: int | None) -> None:
        if report.active:
            report.progress(done, total, f"{done / 1e6:.0f} MB" + (f" of {total / 1e6:.0f} MB" if total else ""))
            return
        if args.quiet:
            return
        if not bars:
            from tqdm import tqdm

            bars.append(tqdm(total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024,
                             desc=what, file=sys.stderr, dynamic_ncols=True))
        bar = bars[0]
        if total is not None and bar.total != total:
            bar.total = total
            bar.refresh()
        bar.update(done - bar.n)

    def work() -> tuple[str, Path]:
        report.emit(message="connecting", fraction=0.0, done=0, total=None)
        try:
            folder = fetch(progress=progress, should_stop=report.should_stop, keep_archive=not args.remove_archive)
        finally:  # Ctrl-C included: close the bar, the partial download stays for the next run
            if bars:
                bars[0].close()
        return done_message(folder), folder

    return report.run(work)  # stops: errors.Stopped; failures: every GenreLabError


def _cmd_download_gtzan(args) -> int:
    def done(folder: Path) -> str:
        print(f"GTZAN is ready in {folder}")
        print(f"next: python -m core build-dataset {folder} OUT_FOLDER")
        return f"GTZAN is ready in {folder}"

    return _run_download(args, "GTZAN", lambda **kw: download_gtzan(args.dest, url=args.url, sha256=args.sha256, **kw),
                         done)


def _cmd_download_emotify(args) -> int:
    import sys

    def done(folder: Path) -> str:
        info = emotify_info(args.dest) or {}
        found = info.get("found") or {}
        print(f"Emotify is ready in {folder}: " + ", ".join(f"{g} ({n})" for g, n in found.items()))
        if info.get("missing"):
            print("note: fewer tracks than data.csv lists: "
                  + ", ".join(f"{g} {n} missing" for g, n in info["missing"].items()), file=sys.stderr)
        print(f"annotations: {Path(args.dest) / EMOTIFY_CSV_NAME}; sha256 of {EMOTIFY_ARCHIVE_NAME}: "
              f"{info.get('sha256', '?')} (pin it with --sha256)")
        print(f"cite: {EMOTIFY_CITATION}")
        print(f"next: python -m core build-dataset {folder} OUT_FOLDER")
        counts = ", ".join(f"{g} {n}" for g, n in found.items())
        return f"Emotify is ready in {folder}" + (f" ({counts})" if counts else "")

    return _run_download(args, "Emotify", lambda **kw: download_emotify(
        args.dest, url=args.url, csv_url=args.csv_url, sha256=args.sha256, csv_sha256=args.csv_sha256, **kw), done)


def register_cli(sub) -> None:
    """Add ``download-gtzan DEST [--url URL] [--sha256 HEX]`` and ``download-emotify DEST [...]`` to the
    ``python -m core`` sub-parsers."""
    p = sub.add_parser(
        "download-gtzan",
        help="download and extract GTZAN (~1.2 GB, resumable)",
        description=("Download GTZAN (genres.tar.gz) with a progress bar and extract it to DEST/genres. "
                     "Ctrl-C (or --stop-file) keeps the partial download; running the same command again resumes "
                     "it. "
                     f"The URL can also be set with ${GTZAN_URL_ENV}, the checksum with ${GTZAN_SHA256_ENV}."),
    )
    p.add_argument("dest", metavar="DEST", help="folder to download into (created if needed)")
    p.add_argument("--url", default=None, help=f"archive URL (default: ${GTZAN_URL_ENV} or {GTZAN_URL})")
    p.add_argument("--sha256", default=None, metavar="HEX", help="expected sha256 of the archive (optional)")
    p.add_argument("--remove-archive", action="store_true", help="delete genres.tar.gz after extraction")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_job_args(p)
    p.set_defaults(func=_cmd_download_gtzan)

    p = sub.add_parser(
        "download-emotify",
        help="download Emotify (400 one-minute MP3s in 4 genres, ~363 MB, resumable) into genre folders",
        description=("Download Emotify from its page at Utrecht University (emotifymusic.zip and the annotations "
                     "data.csv) and extract the music to DEST/emotify/<genre>/ (classical, electronic, pop, rock), "
                     "checked against data.csv. Ctrl-C (or --stop-file) keeps the partial download; running the same "
                     "command again resumes it. No checksum is published: sizes are checked, --sha256 pins the zip. "
                     f"The URLs can also be set with ${EMOTIFY_URL_ENV} and ${EMOTIFY_CSV_URL_ENV}."),
    )
    p.add_argument("dest", metavar="DEST", help="folder to download into (created if needed)")
    p.add_argument("--url", default=None, help=f"zip URL (default: ${EMOTIFY_URL_ENV} or {EMOTIFY_URL})")
    p.add_argument("--csv-url", default=None,
                   help=f"annotations URL (default: ${EMOTIFY_CSV_URL_ENV} or {EMOTIFY_CSV_URL})")
    p.add_argument("--sha256", default=None, metavar="HEX", help="expected sha256 of the zip (optional)")
    p.add_argument("--csv-sha256", default=None, metavar="HEX", help="expected sha256 of data.csv (optional)")
    p.add_argument("--remove-archive", action="store_true", help=f"delete {EMOTIFY_ARCHIVE_NAME} after extraction")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_job_args(p)
    p.set_defaults(func=_cmd_download_emotify)
