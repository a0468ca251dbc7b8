"""What a cache key says about an input file: its content, not its modification time.

A file's stamp carries the SHA-256 of its bytes, so a copy of the same data (a dataset copied or
unpacked again: new modification times) keeps every pack and cache made from it, and a file whose
bytes changed does not. Reading every file at each check would be slow for large sets, so a
caller passes the stamps it recorded before: a file whose size and modification time are those
recorded keeps its recorded digest unread, as git's index does; only the others are read.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

DIGEST_CHARS = 16  #: hex digits of the SHA-256 kept (64 bits)
#: the manifest columns that record a source file's stamp ('' where it was missing)
COLUMNS = ("input_size", "input_mtime_ns", "input_sha256")
_BLOCK = 1 << 20


@dataclass(frozen=True)
class Stamp:
    size: int
    mtime_ns: int
    sha256: str  #: the first DIGEST_CHARS hex digits of the SHA-256 of the file's bytes


def file_stamps(
    root: Path, sources: Iterable[str], known: Mapping[str, Stamp] | None = None
) -> dict[str, Stamp | None]:
    """The stamp of each file ``root / source`` (None where it is missing or unreadable);
    ``known`` stamps are reused where the file's size and modification time still match."""
    known = known or {}
    out: dict[str, Stamp | None] = {}
    for src in sources:
        path = root / src
        try:
            st = path.stat()
            before = known.get(src)
            if before and (before.size, before.mtime_ns) == (st.st_size, st.st_mtime_ns):
                out[src] = before
                continue
            out[src] = Stamp(st.st_size, st.st_mtime_ns, _sha256(path))
        except OSError:
            out[src] = None
    return out


def recorded_file_stamps(
    root: Path, sources: Iterable[str], record: Path
) -> dict[str, Stamp | None]:
    """:func:`file_stamps` reusing the stamps a :func:`write_stamps` file ``record`` holds, and
    recording them there when any was read anew (for a cache that keeps no manifest)."""
    known = read_stamps(record)
    stamps = file_stamps(root, sources, known)
    if any(stamp and stamp != known.get(src) for src, stamp in stamps.items()):
        write_stamps(record, stamps)
    return stamps


def content_key(stamp: Stamp | None) -> str:
    """A stamp's part in a cache key: the digest, or ``missing``."""
    return stamp.sha256 if stamp else "missing"


def stamp_columns(stamp: Stamp | None) -> dict[str, int | str]:
    """A stamp as a manifest row's :data:`COLUMNS`."""
    values = (stamp.size, stamp.mtime_ns, stamp.sha256) if stamp else ("", "", "")
    return dict(zip(COLUMNS, values, strict=True))


def recorded_stamps(rows: Iterable[Mapping[str, str]]) -> dict[str, Stamp]:
    """The stamps manifest rows (``source`` and :data:`COLUMNS`) recorded, by source; rows
    without one (a file missing then, or a manifest made before the columns) give none."""
    return {
        r["source"]: Stamp(int(r["input_size"]), int(r["input_mtime_ns"]), r["input_sha256"])
        for r in rows
        if r.get("input_sha256")
    }


def read_stamps(path: Path) -> dict[str, Stamp]:
    """The stamps a :func:`write_stamps` file holds (none when there is no such file)."""
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        return recorded_stamps(csv.DictReader(fh))


def write_stamps(path: Path, stamps: Mapping[str, Stamp | None]) -> None:
    """Record ``stamps`` (source -> stamp) as CSV, atomically, for later checks to reuse."""
    from face_rec.utils.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=("source", *COLUMNS))
        writer.writeheader()
        writer.writerows({"source": src, **stamp_columns(st)} for src, st in stamps.items() if st)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            h.update(block)
    return h.hexdigest()[:DIGEST_CHARS]
