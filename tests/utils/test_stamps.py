"""File stamps: content digests, read only where size or modification time moved."""

from __future__ import annotations

import hashlib
import os

from face_rec.utils.stamps import Stamp, content_key, file_stamps


def test_a_file_is_read_only_when_its_size_or_time_moved(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    (tmp_path / "b").write_bytes(b"x" * 3_000_000)  # more than one read block
    st = (tmp_path / "a").stat()
    got = file_stamps(tmp_path, ["a", "b", "gone"])
    assert got["a"] == Stamp(3, st.st_mtime_ns, hashlib.sha256(b"abc").hexdigest()[:16])
    assert got["b"].sha256 == hashlib.sha256(b"x" * 3_000_000).hexdigest()[:16]
    assert got["gone"] is None and content_key(got["gone"]) == "missing"

    known = {"a": Stamp(3, st.st_mtime_ns, "recorded")}  # a digest no file has: reused unread
    assert file_stamps(tmp_path, ["a"], known)["a"].sha256 == "recorded"
    os.utime(tmp_path / "a", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # copied again
    again = file_stamps(tmp_path, ["a"], known)["a"]
    assert again.sha256 == got["a"].sha256 and again.mtime_ns == st.st_mtime_ns + 10**9
    (tmp_path / "a").write_bytes(b"abd")
    assert file_stamps(tmp_path, ["a"], known)["a"].sha256 != got["a"].sha256


def test_a_record_keeps_the_stamps_for_the_next_check(tmp_path, monkeypatch):
    import face_rec.utils.stamps as stamps

    for name in ("a", "b"):
        (tmp_path / name).write_bytes(name.encode())
    real, read = stamps._sha256, []
    monkeypatch.setattr(stamps, "_sha256", lambda path: read.append(path.name) or real(path))
    record = tmp_path / "cache" / "stamps.csv"
    first = stamps.recorded_file_stamps(tmp_path, ["a", "b"], record)
    assert read == ["a", "b"] and stamps.read_stamps(record) == first
    assert stamps.recorded_file_stamps(tmp_path, ["a", "b"], record) == first
    assert read == ["a", "b"]  # nothing read the second time
    (tmp_path / "b").write_bytes(b"bb")
    assert stamps.recorded_file_stamps(tmp_path, ["a", "b"], record)["b"] != first["b"]
    assert read == ["a", "b", "b"] and stamps.read_stamps(record)["b"].size == 2
