"""Safe extraction of archives: tar (GTZAN's ``genres.tar.gz``) and zip (uploads, Emotify), and the check that a
folder has the dataset layout (one sub-folder per class with audio files inside).

* :func:`extract_tar_safely` extracts a (gzip) tar member by member after safety checks.
* :func:`extract_zip_dataset` unpacks a zip (one folder per class) without path escapes, zip bombs, a data
  folder past its quota or half-extracted leftovers.
* :func:`check_dataset_layout` / :func:`count_audio`: what a folder holds.

Every refusal is an :class:`ArchiveError` (a :class:`DatasetArchiveError` for an archive that cannot be used as
a dataset) whose message is for the user. Standard library only.
"""
from __future__ import annotations

import gzip
import os
import re
import shutil
import stat
import tarfile
import tempfile
import unicodedata
import zipfile
import zlib
from pathlib import Path
from typing import IO

from core.audio import AUDIO_EXTENSIONS
from core.errors import GenreLabError
from core.utils import fmt_bytes as _fmt_bytes

_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini"})


class ArchiveError(GenreLabError):
    """An archive that is unreadable or unsafe to extract (path escape, link, device, bomb ...)."""


class DatasetArchiveError(ArchiveError):
    """An uploaded archive that cannot be used as a dataset; ``str(err)`` says why, for the user."""


# ---------------------------------------------------------------------------------- safe name checking


def _safe_parts(name: str) -> tuple[str, ...]:
    """Split an archive member name into path parts; :class:`ArchiveError` for anything escaping."""
    norm = name.replace("\\", "/")
    if "\x00" in norm:
        raise ArchiveError(f"unsafe archive: member name {name!r} contains a NUL character")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise ArchiveError(f"unsafe archive: member {name!r} has an absolute path")
    parts = tuple(p for p in norm.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ArchiveError(f"unsafe archive: member {name!r} points outside the extraction folder ('..')")
    return parts


def _inside(root: Path, target: Path) -> bool:
    """True when ``target`` (after resolving) lies inside ``root``."""
    root = root.resolve()
    try:
        target.resolve().relative_to(root)
    except ValueError:
        return False
    return True


def _is_ignored(parts: tuple[str, ...]) -> bool:
    """macOS resource forks, hidden files / folders and OS junk are skipped."""
    if not parts:
        return True
    if parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
        return True
    return parts[-1].lower() in _JUNK_NAMES


# ---------------------------------------------------------------------------------- dataset layout check


def count_audio(folder: str | os.PathLike) -> int:
    """Number of audio files (by extension) under ``folder``, hidden files and folders skipped."""
    n = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        n += sum(1 for f in filenames if not f.startswith(".") and Path(f).suffix.lower() in AUDIO_EXTENSIONS)
    return n


def listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_dataset_layout(root: str | os.PathLike, what: str = "the zip") -> dict[str, int]:
    """``{class folder: number of audio files}`` for ``root``; :class:`DatasetArchiveError` unless at least
    two visible sub-folders hold audio files (``core.audio.AUDIO_EXTENSIONS``, searched recursively)."""
    root = Path(root)
    with_audio: dict[str, int] = {}
    without: list[str] = []
    loose: list[str] = []
    for child in sorted(root.iterdir(), key=lambda p: p.name):
        if child.name.startswith(".") or child.name == "__MACOSX":
            continue
        if child.is_dir():
            n = count_audio(child)
            if n:
                with_audio[child.name] = n
            else:
                without.append(child.name)
        else:
            loose.append(child.name)
    if len(with_audio) >= 2:
        return with_audio
    found = []
    if with_audio:
        found.append(f"{len(with_audio)} folder with audio files ("
                     + listing([f"{k}: {v}" for k, v in with_audio.items()]) + ")")
    if without:
        found.append(f"{len(without)} folder(s) without audio files ({listing(without)})")
    if loose:
        found.append(f"{len(loose)} loose file(s) at the top level ({listing(loose)})")
    raise DatasetArchiveError(
        f"{what} must contain one folder per class with audio files inside (at least two classes); found: "
        + ("; ".join(found) if found else "nothing usable (empty archive?)"))


def content_root(folder: Path) -> Path:
    """The single visible top-level folder of an extraction, else the extraction folder itself."""
    children = [c for c in folder.iterdir() if not c.name.startswith(".") and c.name != "__MACOSX"]
    if len(children) == 1 and children[0].is_dir():
        return children[0]
    return folder


# --------------------------------------------------------------------------------------------- tar


def _check_tar_member(member: tarfile.TarInfo, root: Path) -> tuple[str, ...]:
    """Reject absolute / '..' names, links leaving ``root`` and devices; returns the name's parts."""
    parts = _safe_parts(member.name)
    if member.ischr() or member.isblk() or member.isfifo():
        raise ArchiveError(f"unsafe archive: member {member.name!r} is a device or FIFO")
    if member.issym() or member.islnk():
        link = member.linkname.replace("\\", "/")
        base = root.joinpath(*parts[:-1]) if member.issym() else root
        if link.startswith("/") or re.match(r"^[A-Za-z]:", link) or not _inside(root, base / link):
            raise ArchiveError(f"unsafe archive: link {member.name!r} -> {member.linkname!r} points outside "
                               "the extraction folder")
    elif not (member.isfile() or member.isdir()):
        raise ArchiveError(f"unsafe archive: member {member.name!r} has an unsupported type")
    if not _inside(root, root.joinpath(*parts)):
        raise ArchiveError(f"unsafe archive: member {member.name!r} points outside the extraction folder")
    return parts


#: A zip member may expand to at most this many times its compressed size (audio compresses 1-3x; a zero-filled
#: file 1000x): checked on the declared sizes before anything is written. Members under 1 MB are exempt, but the
#: whole zip (and a tar, as a whole) is held to the same ratio once it unpacks to more than 1 MB (many small
#: members of silence).
MAX_COMPRESSION_RATIO = 100
_RATIO_EXEMPT_BYTES = 1 << 20
#: Limits of a tar (GTZAN's ``genres.tar.gz``: 1000 clips of 1.3 MB, 1.2 GB compressed, 1.3 GB unpacked), checked
#: on each member's declared size before it is written (a tar member writes exactly its declared size).
MAX_TAR_MEMBER_BYTES = 10**9
MAX_TAR_TOTAL_BYTES = 4 * 10**9
MAX_TAR_FILES = 20000


def _ratio_cap(compressed: int, max_ratio: float) -> int:
    """Bytes an archive of ``compressed`` bytes may unpack to: ``max_ratio`` times that, at least 1 MB (a tiny
    archive may hold a little silence)."""
    return int(max(max_ratio * max(compressed, 1), _RATIO_EXEMPT_BYTES))


def _check_free_space(folder: Path, need: int, what: str) -> None:
    """:class:`core.errors.DiskFullError` (an ``OSError``) when ``folder``'s disk has less than ``need`` bytes free."""
    from core.errors import DiskFullError

    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if need > free:
        raise DiskFullError(f"not enough disk space in {folder} for {what}: {_fmt_bytes(need)} needed, "
                            f"{_fmt_bytes(free)} free")


def extract_tar_safely(archive: str | os.PathLike, into: str | os.PathLike, *,
                       max_total_bytes: int = MAX_TAR_TOTAL_BYTES, max_member_bytes: int = MAX_TAR_MEMBER_BYTES,
                       max_files: int = MAX_TAR_FILES, max_ratio: float = MAX_COMPRESSION_RATIO) -> int:
    """Extract a (gzip) tar into the existing folder ``into``, member by member after safety checks
    (plus tarfile's ``filter='data'`` when available). Returns the number of files extracted.

    Bombs are refused before the member that crosses a limit is written, from the sizes the tar declares: a
    member over ``max_member_bytes``, more than ``max_files`` files or ``max_total_bytes`` in all, or more than
    ``max_ratio`` times the archive's own size in all (at least 1 MB is always allowed). What this call
    extracted is removed again on any error, so nothing is left behind.

    :class:`ArchiveError` for an unreadable/damaged archive, an unsafe member or a bomb; ``OSError`` (disk
    full: :class:`core.errors.DiskFullError` when a member would not fit) passes through.
    """
    into = Path(into)
    use_filter = hasattr(tarfile, "data_filter")
    archive_bytes = os.path.getsize(archive)
    ratio_cap = _ratio_cap(archive_bytes, max_ratio)
    before = set(os.listdir(into))
    n_files = total = 0
    try:
        with tarfile.open(archive, mode="r|*") as tf:  # streamed: one pass over the compressed data
            for member in tf:
                parts = _check_tar_member(member, into)
                if not parts:
                    continue
                if member.isfile():
                    n_files += 1
                    total += member.size
                    if member.size > max_member_bytes:
                        raise ArchiveError(f"the archive member {member.name!r} is {_fmt_bytes(member.size)}, more "
                                           f"than the limit of {_fmt_bytes(max_member_bytes)} per file (tar bomb?)")
                    if n_files > max_files:
                        raise ArchiveError(f"the archive holds more than {max_files} files, the limit")
                    if total > max_total_bytes:
                        raise ArchiveError(f"the archive would unpack to more than {_fmt_bytes(max_total_bytes)}, "
                                           "the limit (tar bomb, or not the data set expected)")
                    if total > ratio_cap:
                        raise ArchiveError(
                            f"the archive would expand more than {max_ratio:g} times ({_fmt_bytes(archive_bytes)} -> "
                            f"{_fmt_bytes(total)} by {member.name!r}), the limit (tar bomb, or files of silence)")
                    _check_free_space(into, member.size, f"{member.name!r}")
                if use_filter:
                    tf.extract(member, into, set_attrs=False, filter="data")
                else:  # pragma: no cover - Python < 3.11.4
                    tf.extract(member, into, set_attrs=False)
    except BaseException as exc:
        for name in set(os.listdir(into)) - before:  # nothing of this extraction stays behind
            p = into / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        if isinstance(exc, tarfile.FilterError):  # pragma: no cover - our own checks come first
            raise ArchiveError(f"unsafe archive: {exc}") from None
        if isinstance(exc, (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)):
            raise ArchiveError(f"not a readable .tar.gz archive (damaged or incomplete download?): "
                               f"{exc or type(exc).__name__}") from None
        raise
    return n_files


# ----------------------------------------------------------------------------------------------- zip


def _zip_name(info: zipfile.ZipInfo) -> str:
    """Member name as unicode (NFC): names without the UTF-8 flag that are really UTF-8 are repaired."""
    name = info.filename
    if not info.flag_bits & 0x800:
        try:
            name = name.encode("cp437").decode("utf-8")
        except UnicodeError:
            pass
    return unicodedata.normalize("NFC", name)


def _is_zip_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _open_zip(src) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(src)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise DatasetArchiveError(f"this file is not a zip archive, or it is damaged ({e}); "
                                  "upload a .zip with one folder per class") from None
    except OSError as e:
        raise DatasetArchiveError(f"cannot read the zip archive: {e.strerror or e}") from None


#: Default quota of the data home for unpacked uploads (``$GENRELAB_HOME_QUOTA_GB`` overrides it).
DATA_HOME_QUOTA_BYTES = 10 * 10**9
QUOTA_ENV = "GENRELAB_HOME_QUOTA_GB"


def data_home_quota() -> int:
    """The data home's quota in bytes: ``$GENRELAB_HOME_QUOTA_GB`` (GB = 10^9 bytes), else 10 GB."""
    try:
        return int(float(os.environ[QUOTA_ENV]) * 10**9)
    except (KeyError, ValueError):
        return DATA_HOME_QUOTA_BYTES


def folder_bytes(root: str | os.PathLike) -> int:
    """Bytes of the regular files under ``root`` (links not followed); 0 when it does not exist."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def _plan_zip(zf: zipfile.ZipFile, max_total_bytes: int, max_files: int,
              max_ratio: float = MAX_COMPRESSION_RATIO) -> list[tuple[zipfile.ZipInfo, tuple]]:
    """Members to extract with their safe path parts; rejects escapes, links, encryption and bombs (more than
    ``max_total_bytes`` in all, a member over 1 MB expanding more than ``max_ratio`` times, or the members
    together expanding more than ``max_ratio`` times their compressed bytes once over 1 MB: many small
    members of silence)."""
    plan = []
    n_files = declared = compressed = 0
    for info in zf.infolist():
        try:
            parts = _safe_parts(_zip_name(info))
        except ArchiveError as e:
            raise DatasetArchiveError(str(e)) from None
        if _is_zip_symlink(info):
            raise DatasetArchiveError(f"unsafe archive: member {info.filename!r} is a symbolic link")
        if _is_ignored(parts):
            continue
        if not info.is_dir():
            if info.flag_bits & 0x1:
                raise DatasetArchiveError("password-protected zip files are not supported")
            n_files += 1
            declared += info.file_size
            compressed += info.compress_size
            if info.file_size > _RATIO_EXEMPT_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
                raise DatasetArchiveError(
                    f"the zip member {_zip_name(info)!r} would expand {info.file_size / max(info.compress_size, 1):.0f} "
                    f"times ({_fmt_bytes(info.compress_size)} -> {_fmt_bytes(info.file_size)}), more than the limit of "
                    f"{max_ratio:g} (zip bomb, or a file of silence): nothing was unpacked")
            if n_files > max_files:
                raise DatasetArchiveError(f"the zip holds more than {max_files} files, the limit")
            if declared > max_total_bytes:
                raise DatasetArchiveError(f"the zip would unpack to more than {_fmt_bytes(max_total_bytes)}, "
                                          "the limit (zip bomb, or dataset too large)")
        plan.append((info, parts))
    if declared > _ratio_cap(compressed, max_ratio):
        raise DatasetArchiveError(
            f"the zip's {n_files} files would expand {declared / max(compressed, 1):.0f} times together "
            f"({_fmt_bytes(compressed)} -> {_fmt_bytes(declared)}), more than the limit of {max_ratio:g} (zip bomb, "
            "or files of silence): nothing was unpacked")
    return plan


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int) -> int:
    """Write one member, never more than its declared size nor ``budget`` bytes; returns bytes written."""
    written = 0
    limit = min(info.file_size, budget)
    with zf.open(info) as src, open(target, "wb") as out:
        while True:
            block = src.read(1 << 20)
            if not block:
                break
            written += len(block)
            if written > limit:
                raise DatasetArchiveError(f"the zip unpacks to more data than it declares ({info.filename!r}): "
                                          "zip bomb or damaged archive")
            out.write(block)
    return written


def _extract_zip_members(zf: zipfile.ZipFile, plan, into: Path, max_total_bytes: int) -> None:
    """Extract the planned members into ``into``, counting the bytes actually written."""
    total = 0
    for info, parts in plan:
        target = into.joinpath(*parts)
        if not _inside(into, target):  # belt and braces after _safe_parts
            raise DatasetArchiveError(f"unsafe archive: member {info.filename!r} points outside the folder")
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        total += _copy_member(zf, info, target, max_total_bytes - total)


def extract_zip_dataset(zip_path_or_fileobj: str | os.PathLike | IO[bytes], dest_dir: str | os.PathLike, *,
                        max_total_bytes: int = 2_000_000_000, max_files: int = 20000,
                        max_ratio: float = MAX_COMPRESSION_RATIO, quota_root: str | os.PathLike | None = None,
                        quota_bytes: int | None = None) -> Path:
    """Safely extract an uploaded dataset zip to ``dest_dir`` and return the dataset folder.

    ``dest_dir`` must not exist (or be empty); extraction happens in a temporary folder beside it that is
    renamed into place only when everything is checked, so nothing half-extracted is left on error.
    Rejected with :class:`DatasetArchiveError`: not a zip / damaged, absolute or ``..`` names, symbolic links,
    encrypted members, more than ``max_files`` files, more than ``max_total_bytes`` declared or written.
    ``__MACOSX/``, hidden files and OS junk are skipped; names are unicode (NFC). Returns the single top-level
    folder when there is one, else ``dest_dir``; it must hold at least two class folders with audio files.
    Also refused before anything is written: a member over 1 MB that expands more than ``max_ratio`` times,
    and, with ``quota_root`` (the data home), an archive whose declared size would take the bytes under
    ``quota_root`` past ``quota_bytes`` (default :func:`data_home_quota`); writing stops at the quota too.
    """
    dest_dir = Path(dest_dir)
    if dest_dir.exists() and (not dest_dir.is_dir() or any(dest_dir.iterdir())):
        raise FileExistsError(f"{dest_dir} already exists and is not an empty folder")
    with _open_zip(zip_path_or_fileobj) as zf:
        plan = _plan_zip(zf, max_total_bytes, max_files, max_ratio)
        if quota_root is not None:
            quota = data_home_quota() if quota_bytes is None else int(quota_bytes)
            used = folder_bytes(quota_root)
            need = sum(info.file_size for info, _ in plan if not info.is_dir())
            if used + need > quota:
                raise DatasetArchiveError(
                    f"unpacking this zip ({_fmt_bytes(need)}) would take the data folder past its quota of "
                    f"{_fmt_bytes(quota)} ({_fmt_bytes(used)} used): delete sources or datasets you no longer need "
                    f"(or raise ${QUOTA_ENV})")
            max_total_bytes = min(max_total_bytes, max(0, quota - used))
        dest_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.extract-", dir=dest_dir.parent))
        try:
            try:
                _extract_zip_members(zf, plan, tmp, max_total_bytes)
            except (zipfile.BadZipFile, zlib.error, EOFError) as e:
                raise DatasetArchiveError(f"the zip archive is damaged: {e}") from None
            except NotImplementedError as e:
                raise DatasetArchiveError(f"the zip uses a compression method that cannot be read ({e}); "
                                          "re-create it with standard (deflate) compression") from None
            except RuntimeError as e:  # encrypted member not flagged as such
                raise DatasetArchiveError(f"cannot read the zip: {e}") from None
            except OSError as e:
                raise DatasetArchiveError(f"could not extract the zip: {e.strerror or e}") from None
            root = content_root(tmp)
            check_dataset_layout(root, what="the zip")
            if dest_dir.exists():
                dest_dir.rmdir()
            os.rename(tmp, dest_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest_dir if root == tmp else dest_dir / root.relative_to(tmp)
