"""The aligned pack on disk and ``PackedFaces``, a memory-mapped torch Dataset over it.

A pack is a folder with ``images.npy`` (N, H, W, 3) uint8 RGB, ``manifest.csv`` (one row per
input file) and ``summary.json``, written last, which marks the pack complete.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from face_rec.utils.io import atomic_path

SUMMARY_NAME = "summary.json"
MANIFEST_COLUMNS = (
    "source",
    "identity",
    "label",
    "status",
    "image_index",
    "det_prob",
    "landmarks",
    "box",
    "width",
    "height",
    "reason",
)


class IncompletePackError(FileNotFoundError):
    """The folder holds no complete pack (never aligned, or the job was interrupted)."""


def write_manifest(path: str | Path, rows: Sequence[dict]) -> None:
    """Write manifest rows (dicts with :data:`MANIFEST_COLUMNS`) as CSV, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_manifest(path: str | Path) -> list[dict]:
    """Read a manifest; ``label`` and ``image_index`` come back as ints."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["label"] = int(row["label"])
        row["image_index"] = int(row["image_index"])
    return rows


def read_summary(pack_dir: str | Path) -> dict | None:
    """The summary of a complete pack, or None when ``pack_dir`` holds no complete pack."""
    path = Path(pack_dir) / SUMMARY_NAME
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("complete") else None


def tensor_from_uint8(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 in [-1, 1]: ``(x / 255 - 0.5) / 0.5``."""
    t = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float()
    return t.div_(127.5).sub_(1.0)


class PackedFaces(Dataset):
    """Aligned faces of a pack: item ``i`` is ``(image (3, H, W) float32 in [-1, 1], label)``.

    Args:
        pack_dir: a complete pack (see :func:`face_rec.align.run.run_alignment`).
        identities: keep only rows of these identities (e.g. the names in ``peopleDevTrain.txt``).
        statuses: keep rows of these statuses (``ok`` and ``fallback`` by default).
        transform: applied to the (3, H, W) uint8 tensor before scaling to [-1, 1].

    The pixels stay memory-mapped; selecting rows copies only an index array. ``labels`` are the
    pack's labels; :attr:`rows` are the manifest rows kept, in order.
    """

    def __init__(
        self,
        pack_dir: str | Path,
        identities: Sequence[str] | None = None,
        statuses: Sequence[str] = ("ok", "fallback"),
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.pack_dir = Path(pack_dir)
        summary = read_summary(self.pack_dir)
        if summary is None:
            raise IncompletePackError(
                f"{self.pack_dir} holds no complete aligned pack (no complete {SUMMARY_NAME}); "
                "run `python align.py input_dir=... output_dir=...` (it resumes) first"
            )
        rows = [
            r
            for r in read_manifest(self.pack_dir / "manifest.csv")
            if r["image_index"] >= 0 and r["status"] in statuses
        ]
        if identities is not None:
            wanted = set(identities)
            rows = [r for r in rows if r["identity"] in wanted]
        self.rows = rows
        self.indices = np.array([r["image_index"] for r in rows], dtype=np.int64)
        self.labels = np.array([r["label"] for r in rows], dtype=np.int64)
        self.transform = transform
        self._images: np.ndarray | None = None

    @property
    def images(self) -> np.ndarray:
        """The whole pack, memory-mapped (opened lazily, so worker processes open their own)."""
        if self._images is None:
            self._images = np.load(self.pack_dir / "images.npy", mmap_mode="r")
        return self._images

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_images"] = None  # never pickle the mapped pixels into worker processes
        return state

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.images[self.indices[i]]
        if self.transform is None:
            return tensor_from_uint8(image), int(self.labels[i])
        t = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
        t = self.transform(t)
        return t.float().div_(127.5).sub_(1.0), int(self.labels[i])
