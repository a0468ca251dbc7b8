"""File stamps: content digests, read only where size or modification time moved."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path

import pytest

import face_rec.utils.stamps as stamps
from face_rec.utils.stamps import Stamp, content_key, file_stamps


def _aged(path, seconds=60):
    """Give ``path`` a modification time ``seconds`` ago (older than any record written now)."""
    old = time.time_ns() - seconds * 10**9
    os.utime(path, ns=(old, old))


def _counting(monkeypatch) -> list[str]:
    real, read = stamps.file_digest, []
    monkeypatch.setattr(
        stamps, "file_digest", lambda path: read.append(Path(path).name) or real(path)
    )
    return read


def test_a_file_is_read_only_when_its_size_or_time_moved(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    (tmp_path / "b").write_bytes(b"x" * 3_000_000)  # more than one read block
    st = (tmp_path / "a").stat()
    got = file_stamps(tmp_path, ["a", "b", "gone", "a"])
    digest = hashlib.sha256(b"abc").hexdigest()[:16]
    assert got["a"] == Stamp(3, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, digest)
    assert got["b"].sha256 == hashlib.sha256(b"x" * 3_000_000).hexdigest()[:16]
    assert got["gone"] is None and content_key(got["gone"]) == "missing"

    known = {"a": dataclasses.replace(got["a"], sha256="recorded")}  # no file has it: unread
    assert file_stamps(tmp_path, ["a"], known)["a"].sha256 == "recorded"
    os.utime(tmp_path / "a", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # copied again
    again = file_stamps(tmp_path, ["a"], known)["a"]
    assert again.sha256 == got["a"].sha256 and again.mtime_ns == st.st_mtime_ns + 10**9
    (tmp_path / "a").write_bytes(b"abd")
    assert file_stamps(tmp_path, ["a"], known)["a"].sha256 != got["a"].sha256


def test_a_same_size_rewrite_with_its_old_time_restored_is_read(tmp_path):
    """``touch -r``-style tools restore the modification time; the status-change time still
    moves, so the recorded digest is not trusted."""
    path = tmp_path / "a"
    path.write_bytes(b"abc")
    before = file_stamps(tmp_path, ["a"])["a"]
    time.sleep(0.05)  # a later status-change time than the stamp's
    path.write_bytes(b"abd")
    os.utime(path, ns=(before.mtime_ns, before.mtime_ns))
    now = file_stamps(tmp_path, ["a"], {"a": before})["a"]
    assert (now.size, now.mtime_ns) == (before.size, before.mtime_ns)
    assert now.sha256 == hashlib.sha256(b"abd").hexdigest()[:16] != before.sha256


def test_an_unreadable_record_is_ignored_with_a_warning(tmp_path, caplog):
    (tmp_path / "a").write_bytes(b"abc")
    record = tmp_path / "stamps.csv"
    record.write_text("source,size\na,not-a-number\n")
    got = stamps.recorded_file_stamps(tmp_path, ["a"], record)
    assert got["a"].sha256 == hashlib.sha256(b"abc").hexdigest()[:16]
    assert f"ignoring the unreadable stamp record {record}" in caplog.text
    header = record.read_text().splitlines()[0]  # written again in the record's format
    assert header == "source,size,mtime_ns,ctime_ns,ino,sha256"


def test_a_record_keeps_the_stamps_for_the_next_check(tmp_path, monkeypatch):
    for name in ("a", "b"):
        (tmp_path / name).write_bytes(name.encode())
        _aged(tmp_path / name)
    read = _counting(monkeypatch)
    record = tmp_path / "cache" / "stamps.csv"
    first = stamps.recorded_file_stamps(tmp_path, ["a", "b"], record)
    assert read == ["a", "b"] and stamps.read_stamps(record) == first
    assert stamps.recorded_file_stamps(tmp_path, ["a", "b"], record) == first
    assert read == ["a", "b"]  # nothing read the second time
    (tmp_path / "b").write_bytes(b"bb")
    _aged(tmp_path / "b", 30)
    assert stamps.recorded_file_stamps(tmp_path, ["b"], record)["b"] != first["b"]
    assert read == ["a", "b", "b"]
    kept = stamps.read_stamps(record)
    assert kept["b"].size == 2 and kept["a"] == first["a"]  # a check of b alone keeps a's


def test_a_stamp_as_new_as_its_record_is_read_again(tmp_path, monkeypatch):
    """git's racy-clean case: a file rewritten with the same size within the time resolution
    of the record could keep its old time; stamps that close to the record are not trusted."""
    (tmp_path / "a").write_bytes(b"abc")  # modified now, as the record will be
    read = _counting(monkeypatch)
    record = tmp_path / "stamps.csv"
    stamps.recorded_file_stamps(tmp_path, ["a"], record)
    stamps.recorded_file_stamps(tmp_path, ["a"], record)
    assert read == ["a", "a"]
    _aged(record, -10)  # the record written well after the file: trusted
    stamps.recorded_file_stamps(tmp_path, ["a"], record)
    assert read == ["a", "a"]


@pytest.mark.parametrize("field", ["size", "mtime_ns", "ctime_ns", "ino"])
def test_a_recorded_stamp_is_reused_only_while_every_field_matches(tmp_path, field):
    (tmp_path / "a").write_bytes(b"abc")
    stamp = file_stamps(tmp_path, ["a"])["a"]
    assert (
        file_stamps(tmp_path, ["a"], {"a": dataclasses.replace(stamp, sha256="x")})["a"].sha256
        == "x"
    )
    moved = dataclasses.replace(stamp, sha256="x", **{field: getattr(stamp, field) + 1})
    assert file_stamps(tmp_path, ["a"], {"a": moved})["a"].sha256 == stamp.sha256  # read


def test_a_record_of_another_format_is_ignored(tmp_path, caplog):
    (tmp_path / "a").write_bytes(b"abc")
    record = tmp_path / "stamps.csv"
    record.write_text("source,size,mtime_ns,sha256\na,3,1,0123456789abcdef\n")  # no ctime, inode
    assert stamps.read_stamps(record) == {}
    assert "ignoring the unreadable stamp record" in caplog.text
