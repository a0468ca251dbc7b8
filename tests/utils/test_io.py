"""Atomic writes are durable: data synced before the rename, the directory entry after it."""

import os

from face_rec.utils import io as fio
from face_rec.utils.checkpoint import save_checkpoint


def _trace(monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(a, b):
        events.append(("replace", str(b)))
        real_replace(a, b)

    monkeypatch.setattr(fio.os, "fsync", fsync)
    monkeypatch.setattr(fio.os, "replace", replace)
    return events


def test_atomic_write_syncs_file_then_renames_then_syncs_directory(tmp_path, monkeypatch):
    events = _trace(monkeypatch)
    target = tmp_path / "sub" / "metrics.json"
    fio.write_json(target, {"a": 1})
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].startswith(f"{target.parent}/.metrics.json.{os.getpid()}-")  # the data,
    assert events[0][1].endswith(".tmp")  # before the rename
    assert events[1][1] == str(target)
    assert events[2][1] == str(target.parent)  # the directory entry, after it
    assert target.read_text().strip().startswith("{")


def test_checkpoints_are_synced_before_they_replace_the_old_one(tmp_path, monkeypatch):
    events = _trace(monkeypatch)
    save_checkpoint(tmp_path / "last.pt", {"step": 3})
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    try:
        with fio.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    except RuntimeError:
        pass
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_temporary_names_differ_between_writers_of_one_process(tmp_path):
    names = {fio.temp_name(tmp_path / "x.json") for _ in range(100)}
    assert len(names) == 100 and all(
        n.parent == tmp_path and n.name.startswith(".x.json.") for n in names
    )
