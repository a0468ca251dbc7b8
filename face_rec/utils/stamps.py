"""What a cache key says about an input file: its content, not its modification time.

A file's stamp carries the SHA-256 of its bytes, so a copy of the same data (a dataset copied or
unpacked again, at the same path or another: new modification times) keeps every pack and cache
made from it, and a file whose bytes changed does not. Reading every file at each check would be
slow for large sets, so each cache keeps a record of the stamps it last saw
(:func:`recorded_file_stamps`): a file whose size, modification and status-change times and
inode are those recorded keeps its recorded digest unread, as git's index does (a rewrite that
restores the old modification time still moves the status-change time); only the others are
read, and the record is brought up to date, so a fresh copy is read once. The record is keyed
by each file's absolute path, so copies at two paths checked in turn keep a state each; rows of
files that no longer exist are dropped whenever it is written.

Racy stamps (git's racy-clean case): a file rewritten with the same size within the file
system's time resolution of being read could keep every field of its stamp and a stale digest.
A stamp whose status-change time is within :data:`RACY_NS` before the check's start, or during
the check, is therefore used for that check but not recorded, so the next check reads it again.
No copy or archive sets the status-change time, so files dated in the future by their
modification time are trusted like any other. It is the file system's clock, compared with this
machine's: on a network file system whose server's clock runs more than a second or so behind,
the guard is weaker by that much.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from face_rec.utils.io import atomic_path

log = logging.getLogger(__name__)

DIGEST_CHARS = 16  #: hex digits of the SHA-256 kept (64 bits)
RACY_NS = 2 * 10**9  #: a file changed this close to a check's start is read again next time
_BLOCK = 1 << 20


@dataclass(frozen=True)
class Stamp:
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    sha256: str  #: the first DIGEST_CHARS hex digits of the SHA-256 of the file's bytes

    def same_file_state(self, st: os.stat_result) -> bool:
        """Whether ``st`` shows the file as this stamp saw it (then its digest holds)."""
        return (self.size, self.mtime_ns, self.ctime_ns, self.ino) == (
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_ino,
        )


_NUMBERS = tuple(f.name for f in fields(Stamp))[:-1]  #: the record's integer columns


def file_stamps(
    root: Path, sources: Iterable[str], known: Mapping[str, Stamp] | None = None
) -> dict[str, Stamp | None]:
    """The stamp of each file ``root / source`` (None where it is missing or unreadable);
    ``known`` stamps are reused where :meth:`Stamp.same_file_state` holds."""
    known = known or {}
    out: dict[str, Stamp | None] = {}
    base = os.fspath(root)
    for src in sources:
        if src in out:
            continue
        path = os.path.join(base, src)  # not pathlib: a third of the time for 13,000 files
        try:
            st = os.stat(path)
            before = known.get(src)
            if before and before.same_file_state(st):
                out[src] = before
                continue
            digest = file_digest(path)
            out[src] = Stamp(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, digest)
        except OSError:
            out[src] = None
    return out


def recorded_file_stamps(
    root: Path, sources: Iterable[str], record: Path
) -> dict[str, Stamp | None]:
    """:func:`file_stamps` reusing the stamps kept in the CSV file ``record`` for the files
    under ``root``, which is then brought up to date (atomically; where it cannot be written, a
    warning says that later checks will read the files again). Stamps of files changed within
    :data:`RACY_NS` of the check's start are returned but not recorded."""
    start = time.time_ns()  # before any file is looked at
    recorded = read_stamps(record)
    base = os.path.abspath(root)
    paths = {src: os.path.join(base, src) for src in sources}
    known = {src: recorded[p] for src, p in paths.items() if p in recorded}
    stamps = file_stamps(root, paths, known)
    settled = {
        paths[src]: st
        for src, st in stamps.items()
        if st is not None and st.ctime_ns < start - RACY_NS
    }
    if any(recorded.get(p) != st for p, st in settled.items()):
        kept = {p: st for p, st in recorded.items() if p not in settled and os.path.exists(p)}
        try:
            write_stamps(record, {**kept, **settled})
        except (OSError, UnicodeError) as e:
            log.warning(
                "could not record the files' stamps in %s (%s): each later check reads every "
                "changed file again; make the folder writable to avoid that",
                record,
                e,
            )
    return stamps


def content_key(stamp: Stamp | None) -> str:
    """A stamp's part in a cache key: the digest, or ``missing``."""
    return stamp.sha256 if stamp else "missing"


def read_stamps(path: Path) -> dict[str, Stamp]:
    """The stamps (absolute file path -> stamp) a :func:`write_stamps` file holds; none when
    there is no such file or it cannot be read as one (it is a cache: the files are then read
    again). A record of face_rec's earlier format (keyed by relative path, filtered by its own
    time rather than the check's start) counts as none."""
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
            rows = csv.DictReader(fh)
            if rows.fieldnames and rows.fieldnames[0] == "source":
                log.info("stamp record %s is of an earlier format: the files are read once", path)
                return {}
            stamps = {r["path"]: Stamp(*(int(r[f]) for f in _NUMBERS), r["sha256"]) for r in rows}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, csv.Error) as e:
        log.warning(
            "ignoring the unreadable stamp record %s (%s): the files are read again", path, e
        )
        return {}
    return stamps


def write_stamps(path: Path, stamps: Mapping[str, Stamp]) -> None:
    """Record ``stamps`` (absolute file path -> stamp) as CSV, atomically."""
    with (
        atomic_path(path) as tmp,
        open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh,
    ):
        writer = csv.writer(fh)
        writer.writerow(["path", *(f.name for f in fields(Stamp))])
        writer.writerows((src, *astuple(s)) for src, s in stamps.items())


def file_digest(path: str | Path) -> str:
    """The first :data:`DIGEST_CHARS` hex digits of the SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            h.update(block)
    return h.hexdigest()[:DIGEST_CHARS]
