"""Training images from one or more aligned packs (or a folder of pre-aligned crops), with the
labels remapped to one contiguous range."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from face_rec.data.images import is_image_file, load_rgb
from face_rec.data.pack import PackedFaces


def read_people(path: str | Path) -> list[str]:
    """Names from an LFW people list (``peopleDevTrain.txt``: a count, then ``name<TAB>n``) or
    one name per line. A first line is taken as the count only when it is the number of lines
    that follow, so a list of numeric identities (CelebA's) keeps its first name."""
    lines = [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip()]
    if lines and len(lines[0]) == 1 and lines[0][0] == str(len(lines) - 1):
        lines = lines[1:]
    return [f[0] for f in lines]


def held_out(name: str, fraction: float) -> bool:
    """Whether identity ``name`` falls in the held-out ``fraction``: a stable hash of the name
    alone, so the split is the same whatever else a source holds, on every machine and run."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")
    return h / 2**64 < fraction


@dataclass
class Source:
    """One training source: a pack, optionally restricted to the identities listed in a file."""

    pack_dir: str
    identities: str | None = None


class TrainSet(Dataset):
    """Item i: (uint8 image (3, H, W), label). ``labels`` (N,), ``names`` per label.

    Identities are keyed by (source index, identity) so equal names in two sources stay apart;
    those with fewer than ``min_images`` images are left out. Labels follow sorted keys. Crops
    of status ``fallback`` (no face found: a centred guess) are left out unless
    ``include_fallbacks``. A ``holdout`` fraction of the identities (:func:`held_out`) is kept
    out of training for model selection: ``held_rows`` lists their (source, row) pairs.
    ``exclude_images``: image paths (as a pack's ``source`` column has them, relative to its
    image root) kept out of training, e.g. a calibration list's (``train_data.exclude_images_of``);
    paths are matched in every source; ``min_images`` counts what is left, held-out rows are
    untouched, ``n_excluded`` counts the listed rows that would otherwise have been trained (an
    identity that drops below ``min_images`` loses its other rows too; those are not counted).
    """

    def __init__(
        self,
        sources: Sequence[Source | dict],
        min_images: int = 1,
        include_fallbacks: bool = False,
        holdout: float = 0.0,
        exclude_images: frozenset[str] = frozenset(),
    ) -> None:
        self.parts: list[PackedFaces] = []
        keys = []
        statuses = ("ok", "fallback") if include_fallbacks else ("ok",)
        for s, src in enumerate(sources):
            src = Source(**src) if isinstance(src, dict) else src
            names = read_people(src.identities) if src.identities else None
            part = PackedFaces(src.pack_dir, identities=names, statuses=statuses)
            self.parts.append(part)
            keys += [(s, r["identity"]) for r in part.rows]
        uniq, inverse, counts = np.unique(
            np.array([f"{s}\0{n}" for s, n in keys]), return_inverse=True, return_counts=True
        )
        out = np.array([held_out(n, holdout) for _, n in keys], dtype=bool)
        paths = (r["source"] for p in self.parts for r in p.rows)
        listed = np.array([path in exclude_images for path in paths], dtype=bool)
        trained = (counts[inverse] >= min_images) & ~out  # without the exclusion
        self.n_excluded = int((listed & trained).sum())
        if listed.any():  # identities must keep min_images after the exclusion
            counts = np.bincount(inverse[~listed], minlength=len(uniq))
        keep = (counts[inverse] >= min_images) & ~out & ~listed
        kept_ids = np.unique(inverse[keep])
        remap = np.full(len(uniq), -1)
        remap[kept_ids] = np.arange(len(kept_ids))
        self.labels = remap[inverse[keep]]
        self.names = [uniq[i].split("\0", 1)[1] for i in kept_ids]
        offsets = np.cumsum([0] + [len(p) for p in self.parts])
        flat = np.arange(offsets[-1])[keep]
        self.part_of = np.searchsorted(offsets, flat, side="right") - 1
        self.row_of = flat - offsets[self.part_of]
        held = np.flatnonzero(out)
        part = np.searchsorted(offsets, held, side="right") - 1
        self.held_rows = list(zip(part.tolist(), (held - offsets[part]).tolist(), strict=True))
        if len(self.labels) == 0:
            left_out = f" after leaving out {self.n_excluded} listed images" if listed.any() else ""
            raise ValueError(
                f"no training images with >= {min_images} per identity in {sources}{left_out}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        part = self.parts[self.part_of[i]]
        img = part.images[part.indices[self.row_of[i]]]
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1), int(self.labels[i])


class AlignedFolder(Dataset):
    """Pre-aligned crops in ``root/<identity>/<image>``: item i is (uint8 (3, H, W), label)."""

    def __init__(self, root: str | Path, size: int = 112) -> None:
        root = Path(root)
        ids = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.files, labels = [], []
        for k, name in enumerate(ids):
            for f in sorted((root / name).iterdir()):
                if is_image_file(f):
                    self.files.append(f)
                    labels.append(k)
        self.labels, self.names, self.size = np.array(labels), ids, size

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = load_rgb(self.files[i])
        if img.shape[:2] != (self.size, self.size):
            raise ValueError(
                f"{self.files[i]} is {img.shape[1]}x{img.shape[0]}, expected an "
                f"aligned {self.size}x{self.size} crop (run align.py on raw photos)"
            )
        return torch.from_numpy(img).permute(2, 0, 1), int(self.labels[i])
