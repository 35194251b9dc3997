"""core.download: resumable HTTP downloads against a local Range-capable server, safe tar/zip extraction.

Only loopback addresses are used; the server is a small ThreadingHTTPServer written here (the stdlib
SimpleHTTPRequestHandler does not do Range) that can ignore Range or cut the connection mid-way.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import re
import socket
import tarfile
import threading
import unicodedata
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from core import archives
from core import download as dl
from core.archives import DatasetArchiveError, extract_zip_dataset
from core.download import DownloadError, DownloadStopped, download_file, download_gtzan


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """Loopback requests must never go through a proxy configured in the environment."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.delenv(dl.GTZAN_URL_ENV, raising=False)
    monkeypatch.delenv(dl.GTZAN_SHA256_ENV, raising=False)


def _au_bytes(seed: int, seconds: float = 0.25, sr: int = 22050) -> bytes:
    """A tiny real .au file (noise, PCM 16): incompressible enough to make the archive a few tens of KB."""
    y = np.random.default_rng(seed).uniform(-0.5, 0.5, int(sr * seconds)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, y, sr, format="AU", subtype="PCM_16")
    return buf.getvalue()


def _make_tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def gtzan_tar() -> bytes:
    """genres/<genre>/<genre>.0000N.au for 3 genres x 2 tracks, gzip tar (~70 KB)."""
    members = {}
    for g, genre in enumerate(("blues", "classical", "rock")):
        for i in range(2):
            members[f"genres/{genre}/{genre}.{i:05d}.au"] = _au_bytes(10 * g + i)
    return _make_tar(members)


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, *args):  # keep the test output quiet
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append({"path": self.path, "range": self.headers.get("Range"),
                             "if_range": self.headers.get("If-Range")})
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and srv.support_range:
            start = int(rng.split("=", 1)[1].split("-", 1)[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        payload = body[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("ETag", '"v1"')
        if srv.support_range:
            self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        cut = srv.cut_after
        if cut is not None:  # send only `cut` bytes of the body, then drop the connection (once)
            srv.cut_after = None
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.requests: list[dict] = []
        self.support_range = True
        self.cut_after: int | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ------------------------------------------------------------------------------------- download_file


def test_full_download_verifies_and_renames(server, tmp_path, gtzan_tar):
    server.files["/a.tar.gz"] = gtzan_tar
    calls = []
    dest = tmp_path / "sub" / "a.tar.gz"
    out = download_file(server.url("/a.tar.gz"), dest, sha256=_sha(gtzan_tar), expected_size=len(gtzan_tar),
                        progress=lambda d, t: calls.append((d, t)), chunk=8192)
    assert out == dest and dest.read_bytes() == gtzan_tar
    assert not dl.part_path(dest).exists() and not Path(str(dest) + ".part.json").exists()
    assert calls[0] == (0, len(gtzan_tar)) and calls[-1] == (len(gtzan_tar), len(gtzan_tar))
    assert server.requests[0]["range"] is None
    # already there with the right checksum: returns at once, no request
    n = len(server.requests)
    assert download_file(server.url("/a.tar.gz"), dest, sha256=_sha(gtzan_tar)) == dest
    assert len(server.requests) == n


def test_resume_after_cut_connection_sends_range(server, tmp_path, gtzan_tar):
    server.files["/a.tar.gz"] = gtzan_tar
    server.cut_after = cut = 20000
    dest = tmp_path / "a.tar.gz"
    with pytest.raises(DownloadError, match="run again to resume") as err:
        download_file(server.url("/a.tar.gz"), dest, chunk=4096, timeout=5)
    assert "127.0.0.1" in str(err.value)
    part = dl.part_path(dest)
    assert part.stat().st_size == cut and not dest.exists()
    download_file(server.url("/a.tar.gz"), dest, sha256=_sha(gtzan_tar), chunk=4096, timeout=5)
    assert dest.read_bytes() == gtzan_tar and not part.exists()
    assert server.requests[-1]["range"] == f"bytes={cut}-"
    assert server.requests[-1]["if_range"] == '"v1"'


def test_server_ignoring_range_restarts_from_zero(server, tmp_path, gtzan_tar):
    server.files["/a.tar.gz"] = gtzan_tar
    server.support_range = False
    server.cut_after = 10000
    dest = tmp_path / "a.tar.gz"
    with pytest.raises(DownloadError):
        download_file(server.url("/a.tar.gz"), dest, chunk=4096, timeout=5)
    assert dl.part_path(dest).stat().st_size == 10000
    download_file(server.url("/a.tar.gz"), dest, sha256=_sha(gtzan_tar), chunk=4096, timeout=5)
    assert server.requests[-1]["range"] == "bytes=10000-"  # asked, but got a 200 with the whole file
    assert dest.read_bytes() == gtzan_tar and not dl.part_path(dest).exists()


def test_complete_part_answered_416_is_finished(server, tmp_path, gtzan_tar):
    server.files["/a.tar.gz"] = gtzan_tar
    dest = tmp_path / "a.tar.gz"
    dl.part_path(dest).write_bytes(gtzan_tar)  # e.g. killed between last byte and rename
    download_file(server.url("/a.tar.gz"), dest, sha256=_sha(gtzan_tar), timeout=5)
    assert dest.read_bytes() == gtzan_tar
    assert server.requests[-1]["range"] == f"bytes={len(gtzan_tar)}-"


def test_oversized_part_416_restarts(server, tmp_path, gtzan_tar):
    server.files["/a.tar.gz"] = gtzan_tar
    dest = tmp_path / "a.tar.gz"
    dl.part_path(dest).write_bytes(b"x" * (len(gtzan_tar) + 10))
    download_file(server.url("/a.tar.gz"), dest, timeout=5)
    assert dest.read_bytes() == gtzan_tar
    assert [r["range"] for r in server.requests] == [f"bytes={len(gtzan_tar) + 10}-", None]


def test_checksum_mismatch_deletes_part(server, tmp_path, gtzan_tar):
    server.files["/a.tar.gz"] = gtzan_tar
    dest = tmp_path / "a.tar.gz"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_file(server.url("/a.tar.gz"), dest, sha256="0" * 64, timeout=5)
    assert not dest.exists() and not dl.part_path(dest).exists()


def test_size_mismatch_with_expected_size(server, tmp_path, gtzan_tar):
    server.files["/a.tar.gz"] = gtzan_tar
    with pytest.raises(DownloadError, match="expected"):
        download_file(server.url("/a.tar.gz"), tmp_path / "a", expected_size=len(gtzan_tar) + 1, timeout=5)


def test_stop_request_keeps_part_then_resumes(server, tmp_path, gtzan_tar):
    server.files["/a.tar.gz"] = gtzan_tar
    dest = tmp_path / "a.tar.gz"
    seen = []
    with pytest.raises(DownloadStopped):
        download_file(server.url("/a.tar.gz"), dest, chunk=4096, timeout=5,
                      progress=lambda d, t: seen.append(d), should_stop=lambda: bool(seen) and seen[-1] >= 12000)
    size = dl.part_path(dest).stat().st_size
    assert 12000 <= size < len(gtzan_tar) and not dest.exists()
    download_file(server.url("/a.tar.gz"), dest, sha256=_sha(gtzan_tar), chunk=4096, timeout=5)
    assert dest.read_bytes() == gtzan_tar
    assert server.requests[-1]["range"] == f"bytes={size}-"


def test_unreachable_host_is_a_plain_error(tmp_path):
    dest = tmp_path / "a.bin"
    url = f"http://127.0.0.1:{_closed_port()}/a.bin"
    with pytest.raises(DownloadError, match=r"could not reach 127\.0\.0\.1: .*(refused|network)"):
        download_file(url, dest, timeout=5)
    assert not dest.exists()


def test_unreachable_host_keeps_partial_file(tmp_path):
    dest = tmp_path / "a.bin"
    dl.part_path(dest).write_bytes(b"partial")
    with pytest.raises(DownloadError, match="could not reach"):
        download_file(f"http://127.0.0.1:{_closed_port()}/a.bin", dest, timeout=5)
    assert dl.part_path(dest).read_bytes() == b"partial"


def test_http_404_and_bad_scheme(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        download_file(server.url("/missing"), tmp_path / "m", timeout=5)
    assert err.value.status == 404
    with pytest.raises(DownloadError, match="only http"):
        download_file("file:///etc/passwd", tmp_path / "p")


# ------------------------------------------------------------------------------------------- GTZAN


def test_download_gtzan_extracts_and_skips_second_time(server, tmp_path, gtzan_tar, monkeypatch):
    server.files["/genres.tar.gz"] = gtzan_tar
    monkeypatch.setenv(dl.GTZAN_URL_ENV, server.url("/genres.tar.gz"))
    monkeypatch.setenv(dl.GTZAN_SHA256_ENV, _sha(gtzan_tar))
    folder = download_gtzan(tmp_path / "gtzan")
    assert folder == tmp_path / "gtzan" / "genres"
    assert sorted(p.name for p in folder.iterdir()) == ["blues", "classical", "rock"]
    assert (folder / "blues" / "blues.00001.au").is_file()
    data, sr = sf.read(folder / "rock" / "rock.00000.au")
    assert sr == 22050 and len(data) > 0
    assert (tmp_path / "gtzan" / dl.GTZAN_MARKER_NAME).is_file()
    assert not [p for p in (tmp_path / "gtzan").iterdir() if ".extract-" in p.name]
    n = len(server.requests)
    assert download_gtzan(tmp_path / "gtzan") == folder  # marker present: no download, no extraction
    assert len(server.requests) == n


def test_download_gtzan_wrong_sha_argument(server, tmp_path, gtzan_tar):
    server.files["/genres.tar.gz"] = gtzan_tar
    with pytest.raises(DownloadError, match="checksum"):
        download_gtzan(tmp_path, url=server.url("/genres.tar.gz"), sha256="1" * 64)
    assert not (tmp_path / "genres").exists()


def test_download_gtzan_http_error_mentions_override(server, tmp_path):
    with pytest.raises(DownloadError, match=dl.GTZAN_URL_ENV):
        download_gtzan(tmp_path, url=server.url("/nothing.tar.gz"))


def test_download_gtzan_not_a_tar_is_deleted(server, tmp_path):
    server.files["/genres.tar.gz"] = b"<html>not an archive</html>" * 50
    with pytest.raises(DownloadError, match="unusable"):
        download_gtzan(tmp_path, url=server.url("/genres.tar.gz"))
    assert not (tmp_path / "genres.tar.gz").exists() and not (tmp_path / "genres").exists()


def test_download_gtzan_rejects_malicious_tar(server, tmp_path):
    evil = _make_tar({"genres/blues/blues.00000.au": b"x" * 100, "../evil": b"pwned"})
    server.files["/genres.tar.gz"] = evil
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match=r"unsafe archive.*\.\./evil"):
        download_gtzan(dest, url=server.url("/genres.tar.gz"))
    assert not (tmp_path / "evil").exists() and not (dest.parent / "evil").exists()
    assert not (dest / "genres").exists() and not (dest / "genres.tar.gz").exists()
    assert [p.name for p in dest.iterdir()] == []  # no temp folder left


def test_download_gtzan_remove_archive_and_foreign_folder(server, tmp_path, gtzan_tar):
    server.files["/genres.tar.gz"] = gtzan_tar
    folder = download_gtzan(tmp_path / "a", url=server.url("/genres.tar.gz"), keep_archive=False)
    assert folder.is_dir() and not (tmp_path / "a" / "genres.tar.gz").exists()
    (tmp_path / "b" / "genres").mkdir(parents=True)  # not made by us: never overwritten
    with pytest.raises(DownloadError, match="already exists"):
        download_gtzan(tmp_path / "b", url=server.url("/genres.tar.gz"))


def test_silent_server_times_out(tmp_path):
    """A server that accepts the connection but never answers: a plain timeout message, quickly."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/a.bin"
        with pytest.raises(DownloadError, match=r"could not reach 127\.0\.0\.1: no answer within 0\.3 s"):
            download_file(url, tmp_path / "a.bin", timeout=0.3)
    finally:
        sock.close()


def _tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.addfile(member, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _tarinfo(name, type_=tarfile.REGTYPE, linkname="", size=0):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = type_, linkname, size
    return info


@pytest.mark.parametrize("member", [
    _tarinfo("/abs/file", size=3),
    _tarinfo("a/../../evil", size=3),
    _tarinfo("a/link", tarfile.SYMTYPE, "/etc/passwd"),
    _tarinfo("a/link", tarfile.SYMTYPE, "../../outside"),
    _tarinfo("a/hard", tarfile.LNKTYPE, "../outside"),
    _tarinfo("a/dev", tarfile.CHRTYPE),
], ids=["absolute", "dotdot", "abs-symlink", "escaping-symlink", "escaping-hardlink", "device"])
def test_extract_tar_safely_rejects(tmp_path, member):
    archive = tmp_path / "x.tar.gz"
    archive.write_bytes(_tar_with(member, b"abc" if member.size else b""))
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises(archives.ArchiveError, match="unsafe archive"):
        archives.extract_tar_safely(archive, into)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "outside").exists()


def test_cli_download_gtzan(server, tmp_path, gtzan_tar, capsys):
    server.files["/genres.tar.gz"] = gtzan_tar
    parser = argparse.ArgumentParser()
    dl.register_cli(parser.add_subparsers())
    args = parser.parse_args(["download-gtzan", str(tmp_path / "g"), "--url", server.url("/genres.tar.gz"),
                              "--quiet"])
    assert args.func(args) == 0
    assert str(tmp_path / "g" / "genres") in capsys.readouterr().out
    args = parser.parse_args(["download-gtzan", str(tmp_path / "h"), "--url",
                              f"http://127.0.0.1:{_closed_port()}/genres.tar.gz", "--quiet"])
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert "error: could not reach 127.0.0.1" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------- zip


def _make_zip(members: dict[str, bytes], **kw) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, **kw) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


DATASET = {
    "mydata/blues/a.wav": b"RIFF....",
    "mydata/blues/b.mp3": b"ID3.",
    "mydata/rock/c.au": b".snd",
    "mydata/rock/notes.txt": b"hello",
    "__MACOSX/mydata/._blues": b"junk",
    "mydata/.DS_Store": b"junk",
    "mydata/rock/.hidden.wav": b"junk",
}


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_zip_valid_single_top_folder(tmp_path):
    src = tmp_path / "up.zip"
    src.write_bytes(_make_zip(DATASET))
    root = extract_zip_dataset(src, tmp_path / "out")
    assert root == tmp_path / "out" / "mydata"
    assert sorted(p.name for p in root.iterdir()) == ["blues", "rock"]
    assert not (root / ".DS_Store").exists() and not (root / "rock" / ".hidden.wav").exists()
    assert not (tmp_path / "out" / "__MACOSX").exists()
    assert _leftovers(tmp_path) == ["out", "up.zip"]


def test_zip_valid_from_fileobj_without_top_folder(tmp_path):
    data = _make_zip({"jazz/x.flac": b"f", "pop/y.ogg": b"o", "pop/sub/z.wav": b"w"})
    root = extract_zip_dataset(io.BytesIO(data), tmp_path / "out")
    assert root == tmp_path / "out"
    assert (root / "pop" / "sub" / "z.wav").read_bytes() == b"w"


def test_zip_unicode_names(tmp_path):
    nfd = unicodedata.normalize("NFD", "Électro")
    data = _make_zip({f"Musique/{nfd}/çà va.wav": b"1", "Musique/日本の歌/曲.flac": b"2"})
    root = extract_zip_dataset(io.BytesIO(data), tmp_path / "out")
    assert sorted(p.name for p in root.iterdir()) == sorted(["Électro", "日本の歌"])
    assert (root / "Électro" / "çà va.wav").read_bytes() == b"1"


def _clear_utf8_flags(data: bytes) -> bytes:
    """Clear the UTF-8 flag (bit 11) in every local/central header, as old zip tools write names."""
    out = bytearray(data)
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        pos = out.find(sig)
        while pos >= 0:
            flags = int.from_bytes(out[pos + off:pos + off + 2], "little") & ~0x800
            out[pos + off:pos + off + 2] = flags.to_bytes(2, "little")
            pos = out.find(sig, pos + 4)
    return bytes(out)


def test_zip_utf8_names_without_flag_are_repaired(tmp_path):
    data = _clear_utf8_flags(_make_zip({"données/été/a.wav": b"x", "données/hiver/b.wav": b"y"}))
    assert zipfile.ZipFile(io.BytesIO(data)).namelist()[0] != "données/été/a.wav"  # read as cp437
    root = extract_zip_dataset(io.BytesIO(data), tmp_path / "out")
    assert root.name == "données" and (root / "été" / "a.wav").read_bytes() == b"x"


@pytest.mark.parametrize("name", ["../evil.wav", "ok/../../evil.wav", "/abs/evil.wav", "C:/evil.wav",
                                  "..\\evil.wav"])
def test_zip_path_escape_rejected(tmp_path, name):
    data = _make_zip({"a/x.wav": b"1", "b/y.wav": b"2", name: b"evil"})
    with pytest.raises(DatasetArchiveError, match="unsafe archive"):
        extract_zip_dataset(io.BytesIO(data), tmp_path / "out" / "ds")
    assert not (tmp_path / "evil.wav").exists() and not (tmp_path / "out").exists()


def test_zip_symlink_rejected(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a/x.wav", b"1")
        zf.writestr("b/y.wav", b"2")
        info = zipfile.ZipInfo("b/link.wav")
        info.create_system = 3
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DatasetArchiveError, match="symbolic link"):
        extract_zip_dataset(io.BytesIO(buf.getvalue()), tmp_path / "out")
    assert _leftovers(tmp_path) == []


def test_zip_bomb_declared_size_rejected(tmp_path):
    data = _make_zip({"a/x.wav": b"\0" * 3_000_000, "b/y.wav": b"\0" * 3_000_000})
    assert len(data) < 50_000
    with pytest.raises(DatasetArchiveError, match="more than"):
        extract_zip_dataset(io.BytesIO(data), tmp_path / "out", max_total_bytes=5_000_000)
    assert _leftovers(tmp_path) == []


def test_zip_lying_sizes_rejected(tmp_path):
    """Declared size forged smaller than the real data: never more than declared is written -> rejected."""
    real = b"\0" * 200_000
    data = bytearray(_make_zip({"a/x.wav": real, "b/y.wav": b"2"}))
    forged = (1000).to_bytes(4, "little")
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):  # local header (size at +22), central header (size at +24)
        pos = data.find(sig)
        off = 22 if sig == b"PK\x03\x04" else 24
        assert int.from_bytes(data[pos + off:pos + off + 4], "little") == len(real)
        data[pos + off:pos + off + 4] = forged
    with pytest.raises(DatasetArchiveError, match="damaged|more data"):
        extract_zip_dataset(io.BytesIO(bytes(data)), tmp_path / "out", max_total_bytes=100_000)
    assert _leftovers(tmp_path) == []


def test_zip_too_many_files(tmp_path):
    data = _make_zip({f"c{i % 2}/{i}.wav": b"1" for i in range(5)})
    with pytest.raises(DatasetArchiveError, match="more than 4 files"):
        extract_zip_dataset(io.BytesIO(data), tmp_path / "out", max_files=4)


def test_not_a_zip(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"this is not a zip at all" * 10)
    with pytest.raises(DatasetArchiveError, match="not a zip"):
        extract_zip_dataset(bad, tmp_path / "out")
    assert _leftovers(tmp_path) == ["bad.zip"]


@pytest.mark.parametrize("members, found", [
    ({"x.wav": b"1", "y.wav": b"2"}, "2 loose file"),
    ({"only/x.wav": b"1", "only/y.wav": b"2"}, "2 loose file"),  # single top folder, no class folders
    ({"top/blues/x.wav": b"1", "top/docs/readme.txt": b"2"}, "1 folder with audio files .blues: 1.*docs"),
    ({"__MACOSX/a/b.wav": b"1"}, "nothing usable"),
])
def test_zip_without_class_folders(tmp_path, members, found):
    with pytest.raises(DatasetArchiveError, match="one folder per class") as err:
        extract_zip_dataset(io.BytesIO(_make_zip(members)), tmp_path / "out")
    assert "found:" in str(err.value)
    assert re.search(found, str(err.value))
    assert _leftovers(tmp_path) == []


def test_zip_dest_must_be_empty(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        extract_zip_dataset(io.BytesIO(_make_zip({"a/x.wav": b"1", "b/y.wav": b"2"})), tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert extract_zip_dataset(io.BytesIO(_make_zip({"a/x.wav": b"1", "b/y.wav": b"2"})),
                               tmp_path / "empty") == tmp_path / "empty"
