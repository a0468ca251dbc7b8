"""Atomic file output: write to a temporary file beside the target, then rename over it."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is made durable and renamed onto
    ``path``.

    The temporary file is fsync'ed before the rename and the directory after it, so a process
    crash, a power loss or a node failure leaves either the old file or the complete new one,
    never a complete name over missing data.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, path)
        fsync(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def temp_name(path: Path) -> Path:
    """A hidden name beside ``path`` that no other writer uses: the process id and 32 random
    bits, so two processes of equal id on two hosts sharing a file system (or two threads of
    one process) never write into one temporary file."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def fsync(path: str | Path) -> None:
    """Flush a file's (or a directory's entries') data to the device."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def keyed_dir(folder: str | Path, key: str) -> Path:
    """``folder`` for the partial results of a resumable job run with ``key`` (its inputs and
    settings): created when missing, emptied first when it holds another key's parts."""
    import logging
    import shutil

    folder = Path(folder)
    key_file = folder / "key.txt"
    if folder.exists() and (not key_file.exists() or key_file.read_text() != key):
        logging.getLogger(__name__).warning(
            "discarding partial results in %s made with other settings or inputs", folder
        )
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not key_file.exists():
        with atomic_path(key_file) as tmp:
            tmp.write_text(key)
    return folder


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
