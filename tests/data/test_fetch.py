"""Fetching LFW from a local HTTP server (no internet): verified, resumed, extracted atomically."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from face_rec.data.fetch import FetchError, Remote, download, fetch_lfw


class RangeHandler(SimpleHTTPRequestHandler):
    """Serves files, honours 'Range: bytes=N-' (as the real servers do), records requests."""

    requests: list[tuple[str, str | None]] = []

    def do_GET(self):  # noqa: N802
        RangeHandler.requests.append((self.path, self.headers.get("Range")))
        path = self.translate_path(self.path)
        try:
            data = open(path, "rb").read()  # noqa: SIM115
        except OSError:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            self.send_response(206)
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.requests = []
    yield site, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def _publish(site, name, data):
    (site / name).write_bytes(data)
    return Remote(name, hashlib.md5(data).hexdigest())


def _archive():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("Ann/Ann_0001.jpg", "Ann/Ann_0002.jpg", "Bob/Bob_0001.jpg"):
            info = tarfile.TarInfo(f"lfw-deepfunneled/{name}")
            payload = name.encode() * 100
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def test_fetch_lays_out_lfw_verified(server, tmp_path, monkeypatch):
    site, url = server
    files = (
        _publish(site, "lfw-deepfunneled.tgz", _archive()),
        _publish(site, "pairsDevTest.txt", b"1\nAnn\t1\t2\nAnn\t1\tBob\t1\n"),
    )
    monkeypatch.setattr("face_rec.data.fetch.OFFICIAL_LFW", "http://127.0.0.1:9/")  # unreachable
    lfw = fetch_lfw(tmp_path / "data", mirrors=(url,), files=files)  # falls back to the mirror
    assert sorted(p.name for p in (lfw / "images").iterdir()) == ["Ann", "Bob"]
    assert (lfw / "images" / "Ann" / "Ann_0002.jpg").read_bytes().startswith(b"Ann/Ann_0002")
    assert (lfw / "pairsDevTest.txt").read_text().startswith("1\n")
    assert not (lfw / "lfw-deepfunneled.tgz").exists()  # the archive goes once extracted
    n = len(RangeHandler.requests)
    fetch_lfw(tmp_path / "data", mirrors=(url,), files=files)
    assert len(RangeHandler.requests) == n  # all there and verified: nothing fetched again


def test_an_interrupted_download_resumes_from_where_it_stopped(server, tmp_path):
    site, url = server
    data = bytes(range(256)) * 400
    remote = _publish(site, "big.tgz", data)
    dest = tmp_path / "out" / "big.tgz"
    dest.parent.mkdir()
    dest.with_name("big.tgz.part").write_bytes(data[:30000])  # a killed earlier download
    download([url + "big.tgz"], dest, remote.md5)
    assert dest.read_bytes() == data
    assert RangeHandler.requests == [("/big.tgz", "bytes=30000-")]


def test_a_wrong_checksum_or_no_network_is_a_clear_error(server, tmp_path):
    site, url = server
    _publish(site, "pairs.txt", b"tampered")
    with pytest.raises(FetchError, match=r"MD5 .* expected 0{32} \(discarded\)"):
        download([url + "pairs.txt"], tmp_path / "pairs.txt", "0" * 32)
    assert not (tmp_path / "pairs.txt").exists() and not (tmp_path / "pairs.txt.part").exists()
    with pytest.raises(FetchError, match="Offline or blocked.*by hand into"):
        download(["http://127.0.0.1:9/pairs.txt"], tmp_path / "pairs.txt", "0" * 32, timeout=5)


def test_fetch_help_runs():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "face_rec.data.fetch", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--mirror" in out.stdout
