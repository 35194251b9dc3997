"""core.download.download_emotify against the local Range-capable HTTP server of test_download (no network):
data.csv + emotifymusic.zip -> DEST/emotify/<genre>/, resumable, size- and checksum-checked."""
from __future__ import annotations

import argparse
import io
import zipfile

import pytest
from test_download import _au_bytes, _closed_port, _no_proxy, _sha, server  # noqa: F401  (fixtures)

from core import download as dl
from core.download import DownloadError, DownloadStopped, download_emotify, read_emotify_csv

GENRES = {"classical": 0, "electronic": 100, "pop": 200}  # track ids: classical 1.., electronic 101.., pop 201..


@pytest.fixture(autouse=True)
def _no_emotify_env(monkeypatch):
    for var in (dl.EMOTIFY_URL_ENV, dl.EMOTIFY_CSV_URL_ENV, dl.EMOTIFY_SHA256_ENV, dl.EMOTIFY_CSV_SHA256_ENV):
        monkeypatch.delenv(var, raising=False)


def _csv(per_genre: int = 2, genres=GENRES) -> bytes:
    """Emotify's data.csv layout: spaces after the commas, several responses per track."""
    lines = ["track id, genre, amazement, solemnity, tenderness, nostalgia, calmness, power, joyful_activation, "
             "tension, sadness, mood, liked, disliked, age, gender, mother tongue"]
    for g, off in genres.items():
        for n in range(1, per_genre + 1):
            for resp in range(3):
                lines.append(f"{off + n}, {g}, 0, 1, 0, 0, 1, 0, 0, {resp % 2}, 0, 3, 1, 0, 30, 1, English")
    return ("\n".join(lines) + "\n").encode()


def _zip(per_genre: int = 2, genres=GENRES, top: str = "emotifymusic/") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for k, g in enumerate(genres):
            for n in range(1, per_genre + 1):
                zf.writestr(f"{top}{g}/{n}.mp3", _au_bytes(10 * k + n))
    return buf.getvalue()


def _serve(server, zip_bytes: bytes | None = None, csv_bytes: bytes | None = None) -> tuple[str, str]:
    server.files["/emotifymusic.zip"] = _zip() if zip_bytes is None else zip_bytes
    server.files["/data.csv"] = _csv() if csv_bytes is None else csv_bytes
    return server.url("/emotifymusic.zip"), server.url("/data.csv")


def test_download_emotify_makes_genre_folders_and_skips_second_time(server, tmp_path):
    url, csv_url = _serve(server)
    folder = download_emotify(tmp_path / "d", url=url, csv_url=csv_url,
                              sha256=_sha(server.files["/emotifymusic.zip"]),
                              csv_sha256=_sha(server.files["/data.csv"]))
    assert folder == tmp_path / "d" / "emotify"
    assert sorted(p.name for p in folder.iterdir()) == ["classical", "electronic", "pop"]
    assert sorted(p.name for p in (folder / "pop").iterdir()) == ["1.mp3", "2.mp3"]
    assert (tmp_path / "d" / "data.csv").is_file() and (tmp_path / "d" / "emotifymusic.zip").is_file()
    info = dl.emotify_info(tmp_path / "d")
    assert info["found"] == info["expected"] == {"classical": 2, "electronic": 2, "pop": 2}
    assert info["missing"] == {} and info["sha256"] == _sha(server.files["/emotifymusic.zip"])
    assert not [p for p in (tmp_path / "d").iterdir() if ".extract-" in p.name or p.name.endswith(".part")]
    n = len(server.requests)
    assert download_emotify(tmp_path / "d", url=url, csv_url=csv_url) == folder  # marker: nothing to do
    assert len(server.requests) == n


def test_download_emotify_resumes_a_cut_download(server, tmp_path):
    url, csv_url = _serve(server, zip_bytes=_zip(per_genre=3))
    real = server.files.pop("/emotifymusic.zip")
    with pytest.raises(DownloadError, match="404"):  # data.csv arrives, the zip is not there
        download_emotify(tmp_path / "d", url=url, csv_url=csv_url, timeout=5)
    server.files["/emotifymusic.zip"] = real
    server.cut_after = 20000  # the zip's connection drops after 20 kB
    with pytest.raises(DownloadError, match="interrupted|ended early"):
        download_emotify(tmp_path / "d", url=url, csv_url=csv_url, timeout=5)
    part = tmp_path / "d" / "emotifymusic.zip.part"
    kept = part.stat().st_size
    assert 0 < kept < len(real)
    folder = download_emotify(tmp_path / "d", url=url, csv_url=csv_url, timeout=5)
    zip_requests = [r for r in server.requests if r["path"] == "/emotifymusic.zip"]
    assert zip_requests[-1]["range"] == f"bytes={kept}-"
    assert sum(1 for r in server.requests if r["path"] == "/data.csv") == 1  # not fetched again
    assert sum(1 for _ in folder.rglob("*.mp3")) == 9
    assert dl.emotify_info(tmp_path / "d")["sha256"] == _sha(real)


def test_download_emotify_checksum_mismatch_deletes_the_part(server, tmp_path):
    url, csv_url = _serve(server)
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_emotify(tmp_path / "d", url=url, csv_url=csv_url, sha256="0" * 64)
    assert not (tmp_path / "d" / "emotifymusic.zip.part").exists()
    assert not (tmp_path / "d" / "emotify").exists()
    with pytest.raises(DownloadError, match="bad Emotify checksum"):
        download_emotify(tmp_path / "e", url=url, csv_url=csv_url, csv_sha256="xyz")


def test_download_emotify_rejects_a_zip_that_does_not_match_data_csv(server, tmp_path):
    url, csv_url = _serve(server, zip_bytes=_zip(genres={"classical": 0, "jazz": 100}))
    with pytest.raises(DownloadError, match="jazz") as e:
        download_emotify(tmp_path / "d", url=url, csv_url=csv_url)
    assert "deleted" in str(e.value)
    assert not (tmp_path / "d" / "emotifymusic.zip").exists() and not (tmp_path / "d" / "emotify").exists()


def test_download_emotify_unsafe_zip_is_refused(server, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("classical/1.mp3", b"x")
        zf.writestr("../../evil.mp3", b"x")
    url, csv_url = _serve(server, zip_bytes=buf.getvalue())
    with pytest.raises(DownloadError, match="unusable"):
        download_emotify(tmp_path / "d", url=url, csv_url=csv_url)
    assert not (tmp_path / "evil.mp3").exists() and not (tmp_path / "d" / "emotify").exists()


def test_download_emotify_html_instead_of_data_csv(server, tmp_path):
    url, csv_url = _serve(server, csv_bytes=b"<html><body>Moved</body></html>\n")
    with pytest.raises(DownloadError, match="not Emotify's annotation table"):
        download_emotify(tmp_path / "d", url=url, csv_url=csv_url)
    assert not (tmp_path / "d" / "data.csv").exists()


def test_download_emotify_fewer_tracks_than_the_table_are_recorded(server, tmp_path):
    url, csv_url = _serve(server, zip_bytes=_zip(per_genre=2), csv_bytes=_csv(per_genre=3))
    download_emotify(tmp_path / "d", url=url, csv_url=csv_url)
    assert dl.emotify_info(tmp_path / "d")["missing"] == {"classical": 1, "electronic": 1, "pop": 1}


def test_download_emotify_stop_then_resume(server, tmp_path):
    url, csv_url = _serve(server, zip_bytes=_zip(per_genre=4))
    calls = {"n": 0}

    def stop_after_some() -> bool:
        calls["n"] += 1
        return calls["n"] > 6

    with pytest.raises(DownloadStopped):
        dl.download_emotify(tmp_path / "d", url=url, csv_url=csv_url, should_stop=stop_after_some, timeout=5)
    folder = download_emotify(tmp_path / "d", url=url, csv_url=csv_url, timeout=5)
    assert sum(1 for _ in folder.rglob("*.mp3")) == 12


def test_download_emotify_http_error_says_how_to_override(server, tmp_path):
    server.files["/data.csv"] = _csv()
    with pytest.raises(DownloadError, match="--url") as e:
        download_emotify(tmp_path / "d", url=server.url("/gone.zip"), csv_url=server.url("/data.csv"))
    assert "404" in str(e.value) and dl.EMOTIFY_URL_ENV in str(e.value)


def test_download_emotify_refuses_a_foreign_folder(server, tmp_path):
    (tmp_path / "d" / "emotify").mkdir(parents=True)
    with pytest.raises(DownloadError, match="already exists"):
        download_emotify(tmp_path / "d", url="http://127.0.0.1:9/x.zip", csv_url="http://127.0.0.1:9/x.csv")


def test_read_emotify_csv(tmp_path):
    p = tmp_path / "data.csv"
    p.write_bytes(_csv(per_genre=2))
    assert read_emotify_csv(p) == {1: "classical", 2: "classical", 101: "electronic", 102: "electronic",
                                   201: "pop", 202: "pop"}
    p.write_text("track id, genre\n1, pop\n1, rock\n")
    with pytest.raises(DownloadError, match="both"):
        read_emotify_csv(p)


def test_default_urls_are_the_official_page():
    assert dl.EMOTIFY_URL == "https://www2.projects.science.uu.nl/memotion/emotifydata/emotifymusic.zip"
    assert dl.EMOTIFY_CSV_URL == "https://www2.projects.science.uu.nl/memotion/emotifydata/data.csv"


def test_gtzan_checksum_is_pinned_for_the_default_url_only(monkeypatch, tmp_path):
    seen = {}

    def fake(url, dest, sha256=None, **kw):
        seen[url] = sha256
        raise DownloadError("stop here")

    monkeypatch.setattr(dl, "download_file", fake)
    monkeypatch.delenv(dl.GTZAN_URL_ENV, raising=False)
    monkeypatch.delenv(dl.GTZAN_SHA256_ENV, raising=False)
    for url in (None, "http://127.0.0.1:9/genres.tar.gz"):
        with pytest.raises(DownloadError):
            dl.download_gtzan(tmp_path, url=url)
    assert seen == {dl.GTZAN_URL: dl.GTZAN_SHA256, "http://127.0.0.1:9/genres.tar.gz": None}


def test_cli_download_emotify(server, tmp_path, capsys):
    url, csv_url = _serve(server)
    parser = argparse.ArgumentParser()
    dl.register_cli(parser.add_subparsers())
    args = parser.parse_args(["download-emotify", str(tmp_path / "e"), "--url", url, "--csv-url", csv_url,
                              "--quiet", "--remove-archive"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"Emotify is ready in {tmp_path / 'e' / 'emotify'}" in out and "classical (2)" in out
    assert "next: python -m core build-dataset" in out and "Aljanaki" in out
    assert not (tmp_path / "e" / "emotifymusic.zip").exists()
    args = parser.parse_args(["download-emotify", str(tmp_path / "f"), "--url", url, "--csv-url",
                              f"http://127.0.0.1:{_closed_port()}/data.csv", "--quiet"])
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert "error: could not reach 127.0.0.1" in err and "Traceback" not in err
