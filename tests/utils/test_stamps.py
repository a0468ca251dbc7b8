"""File stamps: content digests, read only where size, times or inode moved."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest

import face_rec.utils.stamps as stamps
from face_rec.utils.stamps import Stamp, content_key, file_stamps

from ..conftest import checks_later


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
    record.write_text("path,size\na,not-a-number\n")
    got = stamps.recorded_file_stamps(tmp_path, ["a"], record)
    assert got["a"].sha256 == hashlib.sha256(b"abc").hexdigest()[:16]
    assert f"ignoring the unreadable stamp record {record}" in caplog.text


def test_a_record_keeps_the_stamps_for_the_next_check(tmp_path, monkeypatch):
    for name in ("a", "b"):
        (tmp_path / name).write_bytes(name.encode())
    checks_later(monkeypatch)
    read = _counting(monkeypatch)
    record = tmp_path / "cache" / "stamps.csv"
    first = stamps.recorded_file_stamps(tmp_path, ["a", "b"], record)
    assert read == ["a", "b"]
    assert stamps.read_stamps(record) == {str(tmp_path / n): first[n] for n in ("a", "b")}
    assert stamps.recorded_file_stamps(tmp_path, ["a", "b"], record) == first
    assert read == ["a", "b"]  # nothing read the second time
    (tmp_path / "b").write_bytes(b"bb")
    assert stamps.recorded_file_stamps(tmp_path, ["b"], record)["b"] != first["b"]
    assert read == ["a", "b", "b"]
    kept = stamps.read_stamps(record)
    assert kept[str(tmp_path / "b")].size == 2  # a check of b alone keeps a's
    assert kept[str(tmp_path / "a")] == first["a"]


def test_a_file_changed_as_the_check_starts_is_read_again_next_time(tmp_path, monkeypatch):
    """git's racy-clean case: a same-size rewrite within the file system's time resolution of
    being read could keep every field of its stamp, so a stamp whose status-change time is
    within 2 s of the check's start is used but not recorded; its modification time does not
    matter (a file dated in the future by an archive is trusted once settled)."""
    path = tmp_path / "a"
    path.write_bytes(b"abc")  # changed now
    future = time.time_ns() + 3600 * 10**9
    os.utime(path, ns=(future, future))
    read = _counting(monkeypatch)
    record = tmp_path / "stamps.csv"
    first = stamps.recorded_file_stamps(tmp_path, ["a"], record)
    assert first["a"].sha256 == hashlib.sha256(b"abc").hexdigest()[:16]
    assert stamps.read_stamps(record) == {}  # not recorded
    stamps.recorded_file_stamps(tmp_path, ["a"], record)
    assert read == ["a", "a"]
    checks_later(monkeypatch, 3)  # a check that starts 3 s after the change: recorded, then trusted
    stamps.recorded_file_stamps(tmp_path, ["a"], record)
    stamps.recorded_file_stamps(tmp_path, ["a"], record)
    assert read == ["a", "a", "a"]
    assert stamps.read_stamps(record)[str(path)].mtime_ns == future


def test_copies_at_two_paths_checked_in_turn_keep_a_state_each(tmp_path, monkeypatch):
    one = tmp_path / "one"
    one.mkdir()
    (one / "a").write_bytes(b"abc")
    two = tmp_path / "two"
    shutil.copytree(one, two)
    checks_later(monkeypatch)
    read = _counting(monkeypatch)
    record = tmp_path / "stamps.csv"
    digest = hashlib.sha256(b"abc").hexdigest()[:16]
    for root in (one, two, one, two):
        assert stamps.recorded_file_stamps(root, ["a"], record)["a"].sha256 == digest
    assert read == ["a", "a"]  # once per copy
    assert set(stamps.read_stamps(record)) == {str(one / "a"), str(two / "a")}


def test_a_record_of_the_earlier_format_is_read_as_none(tmp_path, caplog):
    record = tmp_path / "stamps.csv"
    record.write_text("source,size,mtime_ns,ctime_ns,ino,sha256\na,3,1,1,1,0123456789abcdef\n")
    with caplog.at_level("INFO"):
        assert stamps.read_stamps(record) == {}
    assert "of an earlier format: the files are read once" in caplog.text


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
    record.write_text("path,size,mtime_ns,sha256\na,3,1,0123456789abcdef\n")  # no ctime, inode
    assert stamps.read_stamps(record) == {}
    assert "ignoring the unreadable stamp record" in caplog.text


def test_rows_of_files_that_are_gone_are_dropped_when_the_record_is_written(tmp_path, monkeypatch):
    scratch, data = tmp_path / "scratch", tmp_path / "data"
    for root in (scratch, data):
        root.mkdir()
        (root / "a").write_bytes(b"abc")
    checks_later(monkeypatch)
    record = tmp_path / "stamps.csv"
    stamps.recorded_file_stamps(scratch, ["a"], record)
    stamps.recorded_file_stamps(data, ["a"], record)
    assert set(stamps.read_stamps(record)) == {str(scratch / "a"), str(data / "a")}
    shutil.rmtree(scratch)  # a job's scratch copy, deleted
    (data / "b").write_bytes(b"b")
    stamps.recorded_file_stamps(data, ["a", "b"], record)
    assert set(stamps.read_stamps(record)) == {str(data / "a"), str(data / "b")}


def test_a_folder_name_that_is_not_utf8_is_recorded_and_read_back(tmp_path, monkeypatch):
    root = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9"))  # Latin-1 bytes in a name
    root.mkdir()
    (root / "a").write_bytes(b"abc")
    checks_later(monkeypatch)
    record = tmp_path / "stamps.csv"
    first = stamps.recorded_file_stamps(root, ["a"], record)
    assert stamps.read_stamps(record) == {str(root / "a"): first["a"]}
