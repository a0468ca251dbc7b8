"""The aligned pack on disk and ``PackedFaces``, a memory-mapped torch Dataset over it.

A pack is a folder with the crops, (N, H, W, 3) uint8 RGB, ``manifest.csv`` (one row per input
file) and ``summary.json``, written last, which marks the pack complete. The crops are one
``images.npy``, or for datasets larger than one file should be, shards ``images-00000.npy``,
``images-00001.npy``, ... of ``shard_size`` rows each; :func:`open_images` maps either lazily.
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
    "outside_fraction",
    "detect_retry",
    # the SHA-256 of the source file's bytes as aligned, 16 hex digits ('' where it was
    # missing): the pack is current while its files hold them (face_rec.utils.stamps)
    "input_sha256",
)
#: manifest columns a pack made before they existed lacks; read back as '' (unknown)
LATER_COLUMNS = ("outside_fraction", "detect_retry", "input_sha256")

#: a set is dominated by tight crops (:func:`tight_crop_warning`) when the median crop has more
#: than TIGHT_MEDIAN of its pixels outside its source image, or more than TIGHT_SHARE of the crops
#: have over TIGHT_OVER outside (LFW's wide photos: about 0.1% outside on average; a tight-crop
#: celebrity set: 34% on average, 85% of its crops over 0.1)
TIGHT_MEDIAN = 0.05
TIGHT_OVER = 0.1
TIGHT_SHARE = 0.25


class ShardedImages:
    """Row-indexable view over ``images-NNNNN.npy`` shards; each shard is memory-mapped when a
    row of it is first read, so opening a 5M-image pack costs nothing."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        counts = [_npy_rows(p) for p in self.paths]
        self.offsets = np.cumsum([0, *counts])
        first = np.load(self.paths[0], mmap_mode="r")
        self.shape = (int(self.offsets[-1]), *first.shape[1:])
        self.dtype = first.dtype
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.shape[0]

    def _shard(self, k: int) -> np.ndarray:
        if k not in self._maps:
            self._maps[k] = np.load(self.paths[k], mmap_mode="r")
        return self._maps[k]

    def __getitem__(self, index):
        if not isinstance(index, slice) and np.ndim(index) == 0:
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"row {i} out of range for a pack of {len(self)} images")
            i %= len(self)
            k = int(np.searchsorted(self.offsets, i, side="right")) - 1
            return self._shard(k)[i - self.offsets[k]]
        if isinstance(index, slice):
            rows = range(*index.indices(len(self)))
        else:  # integer rows or a boolean mask, without materialising all N row numbers
            index = np.asarray(index)
            rows = np.flatnonzero(index) if index.dtype == bool else index.ravel()
        if len(rows) == 0:
            return np.empty((0, *self.shape[1:]), self.dtype)
        return np.stack([self[i] for i in rows])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}}  # worker processes map their own


def _npy_rows(path: Path) -> int:
    return len(np.load(path, mmap_mode="r"))  # reads the header; maps, does not load


def image_files(pack_dir: str | Path) -> list[Path]:
    """The crop files of a pack: ``[images.npy]`` or its shards in order."""
    pack_dir = Path(pack_dir)
    single = pack_dir / "images.npy"
    return [single] if single.exists() else sorted(pack_dir.glob("images-[0-9]*.npy"))


def open_images(pack_dir: str | Path) -> np.ndarray | ShardedImages:
    """All crops of a pack, (N, H, W, 3) uint8, memory-mapped (sharded packs: lazily per shard)."""
    files = image_files(pack_dir)
    if not files:
        raise IncompletePackError(f"{pack_dir} holds no images.npy or images-NNNNN.npy shards")
    return np.load(files[0], mmap_mode="r") if len(files) == 1 else ShardedImages(files)


def write_images(
    pack_dir: Path, n_rows: int, shape: tuple[int, ...], blocks, shard_size: int = 0
) -> list[Path]:
    """Write ``n_rows`` crops, arriving as consecutive (n, *shape) uint8 ``blocks``, into one
    ``images.npy`` (when ``shard_size`` is 0 or not exceeded) or shards of ``shard_size`` rows.
    Each file is written atomically. Returns the files."""
    if shard_size <= 0 or n_rows <= shard_size:
        bounds = [0, n_rows]
        names = ["images.npy"]
    else:
        bounds = [*range(0, n_rows, shard_size), n_rows]
        names = [f"images-{k:05d}.npy" for k in range(len(bounds) - 1)]
    for stale in image_files(pack_dir):  # another layout from an earlier run
        if stale.name not in names:
            stale.unlink()
    blocks = iter(blocks)
    pending = np.empty((0, *shape), np.uint8)
    for k, name in enumerate(names):
        rows = bounds[k + 1] - bounds[k]
        with atomic_path(pack_dir / name) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(rows, *shape))
            at = 0
            while at < rows:
                if not len(pending):
                    pending = next(blocks)
                take = min(rows - at, len(pending))
                out[at : at + take] = pending[:take]
                pending, at = pending[take:], at + take
            out.flush()
            del out
    return [pack_dir / n for n in names]


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
        for column in LATER_COLUMNS:
            row.setdefault(column, "")
    return rows


def outside_fractions(rows: Sequence[dict]) -> np.ndarray:
    """(N,) float64 ``outside_fraction`` of manifest rows; NaN where unknown (a failed row, or a
    pack made before the column existed)."""
    values = [row.get("outside_fraction", "") for row in rows]
    return np.array([float(v) if v not in ("", None) else np.nan for v in values], np.float64)


def outside_stats(fractions: np.ndarray) -> dict:
    """Distribution of the crops' outside fractions (N,), NaN = unknown (left out).

    Returns n_known, n_unknown, and over the known ones mean, median, p90 and
    ``fraction_over_0.1`` (the share of crops with more than :data:`TIGHT_OVER` outside); these
    are None when none is known.
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    known = fractions[~np.isnan(fractions)]
    out = {"n_known": int(known.size), "n_unknown": int(fractions.size - known.size)}
    if not known.size:
        return {
            **out,
            "mean": None,
            "median": None,
            "p90": None,
            f"fraction_over_{TIGHT_OVER:g}": None,
        }
    return {
        **out,
        "mean": round(float(known.mean()), 6),
        "median": round(float(np.median(known)), 6),
        "p90": round(float(np.percentile(known, 90)), 6),
        f"fraction_over_{TIGHT_OVER:g}": round(float((known > TIGHT_OVER).mean()), 6),
    }


def tight_crop_warning(stats: dict, what: str) -> str | None:
    """A warning when :func:`outside_stats` ``stats`` say ``what`` (e.g. 'pack packs/x') is
    dominated by tight crops (median over :data:`TIGHT_MEDIAN`, or over :data:`TIGHT_SHARE` of
    the crops over :data:`TIGHT_OVER` outside their source); else None."""
    if not stats["n_known"]:
        return None
    share = stats[f"fraction_over_{TIGHT_OVER:g}"]
    if stats["median"] <= TIGHT_MEDIAN and share <= TIGHT_SHARE:
        return None
    return (
        f"{what} is dominated by tight crops: the median crop has {stats['median']:.1%} of its "
        f"pixels outside its source image (mean {stats['mean']:.1%}) and {share:.0%} of the crops "
        f"have over {TIGHT_OVER:.0%} outside, filled by the warp's border mode "
        "(align.settings.border); a model trained on wide photos has rarely seen such crops, so "
        "its accuracy here measures the crop as much as the model"
    )


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
            self._images = open_images(self.pack_dir)
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
