"""Verification pair lists: LFW View 1 / View 2 text files, a generic CSV, insightface ``.bin``.

Every reader returns :class:`Pairs`: the unique images, and for each pair the two image indices,
the label and the fold (-1 when the list has no folds). A malformed file raises
:class:`PairListError` naming the file and line.
"""

from __future__ import annotations

import csv
import io
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from face_rec.utils.io import atomic_path


class PairListError(ValueError):
    """A malformed pair list; the message names the file and the line."""


@dataclass
class Pairs:
    """N pairs over M unique images.

    Attributes:
        images: M image keys; paths relative to ``root`` (or ``<file>#<i>`` for ``.bin``).
        left, right: (N,) int64 indices into ``images``.
        same: (N,) bool, True for a matched (same identity) pair.
        fold: (N,) int64 fold of each pair, -1 when the list has none.
        protocol: ``lfw-view1``, ``lfw-view2``, ``csv`` or ``bin``.
        source: the file read.
        root: the folder image paths are relative to (None for ``.bin``).
        crops: for ``.bin`` (already aligned): (M, H, W, 3) uint8 crops, else None.
    """

    images: list[str]
    left: np.ndarray
    right: np.ndarray
    same: np.ndarray
    fold: np.ndarray
    protocol: str
    source: str
    root: Path | None = None
    crops: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.same)

    @property
    def n_folds(self) -> int:
        return int(self.fold.max()) + 1 if len(self) and self.fold.min() >= 0 else 0

    @property
    def has_identities(self) -> bool:
        """Whether every image sits in an identity folder (``<identity>/<file>``): a ``.bin``
        (aligned crops only) or a CSV of flat file names carries no identities."""
        return self.root is not None and all("/" in p for p in self.images)

    def identity(self, k: int) -> str:
        """Identity of image ``k``: the first path component (the identity folder)."""
        return self.images[k].split("/")[0]


def _from_paths(
    pairs: list[tuple[str, str, bool, int]], protocol: str, source: Path, root: Path | None
) -> Pairs:
    index: dict[str, int] = {}
    for a, b, _, _ in pairs:
        index.setdefault(a, len(index))
        index.setdefault(b, len(index))
    return Pairs(
        images=list(index),
        left=np.array([index[p[0]] for p in pairs], dtype=np.int64),
        right=np.array([index[p[1]] for p in pairs], dtype=np.int64),
        same=np.array([p[2] for p in pairs], dtype=bool),
        fold=np.array([p[3] for p in pairs], dtype=np.int64),
        protocol=protocol,
        source=str(source),
        root=root,
    )


def lfw_image(name: str, number: str, where: str) -> str:
    """LFW's relative path of image ``number`` (1-based) of ``name``: Name/Name_0001.jpg."""
    try:
        k = int(number)
    except ValueError:
        raise PairListError(f"{where}: image number {number!r} is not an integer") from None
    if k < 1:
        raise PairListError(f"{where}: image number {k} is out of range (numbers start at 1)")
    return f"{name}/{name}_{k:04d}.jpg"


def read_lfw_pairs(path: str | Path, image_root: str | Path | None = None) -> Pairs:
    """Read LFW ``pairsDevTrain.txt`` / ``pairsDevTest.txt`` (header ``N``: no folds) or
    ``pairs.txt`` (header ``folds N``: per fold N matched then N mismatched lines).

    Tab- or space-separated. ``image_root`` defaults to ``<dir of path>/images``.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent / "images"
    lines = [(i + 1, ln.split()) for i, ln in enumerate(path.read_text().splitlines())]
    lines = [(n, f) for n, f in lines if f]
    if not lines:
        raise PairListError(f"{path}: empty pair list")
    header = lines[0][1]
    try:
        counts = [int(v) for v in header]
    except ValueError:
        raise PairListError(
            f"{path}:{lines[0][0]}: header {' '.join(header)!r} must be "
            "'N' (View 1) or 'folds N' (View 2)"
        ) from None
    if len(counts) == 1:
        folds, per, protocol = 1, counts[0], "lfw-view1"
    elif len(counts) == 2:
        folds, per, protocol = counts[0], counts[1], "lfw-view2"
    else:
        raise PairListError(f"{path}:{lines[0][0]}: header must have 1 or 2 numbers, got {header}")
    body = lines[1:]
    if len(body) != folds * 2 * per:
        raise PairListError(
            f"{path}: header promises {folds} x 2 x {per} = {folds * 2 * per} "
            f"pairs, the file has {len(body)} pair lines"
        )
    pairs = []
    for k, (n, f) in enumerate(body):
        where = f"{path}:{n}"
        matched = (k % (2 * per)) < per
        if matched and len(f) == 3:
            a, b = lfw_image(f[0], f[1], where), lfw_image(f[0], f[2], where)
        elif not matched and len(f) == 4:
            a, b = lfw_image(f[0], f[1], where), lfw_image(f[2], f[3], where)
        else:
            want = "name i j" if matched else "name1 i name2 j"
            raise PairListError(
                f"{where}: expected a {'matched' if matched else 'mismatched'} "
                f"pair '{want}', got {' '.join(f)!r}"
            )
        fold = k // (2 * per) if protocol == "lfw-view2" else -1
        pairs.append((a, b, matched, fold))
    return _from_paths(pairs, protocol, path, root)


_TRUE, _FALSE = {"1", "true", "yes"}, {"0", "false", "no"}


def read_csv_pairs(path: str | Path, image_root: str | Path | None = None) -> Pairs:
    """Read ``path_a,path_b,same[,fold]`` (an optional header line is skipped); paths relative
    to ``image_root`` (default: the CSV's folder). ``same`` is 1/0 or true/false."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    pairs = []
    with open(path, newline="", encoding="utf-8") as fh:
        for n, rec in enumerate(csv.reader(fh), start=1):
            rec = [v.strip() for v in rec]
            if not rec or not any(rec):
                continue
            if n == 1 and len(rec) >= 3 and rec[2].lower() not in _TRUE | _FALSE:
                continue  # header
            if len(rec) not in (3, 4) or rec[2].lower() not in _TRUE | _FALSE:
                raise PairListError(
                    f"{path}:{n}: expected 'path_a,path_b,same[,fold]' with same "
                    f"in 1/0/true/false, got {','.join(rec)!r}"
                )
            try:
                fold = int(rec[3]) if len(rec) == 4 else -1
            except ValueError:
                raise PairListError(f"{path}:{n}: fold {rec[3]!r} is not an integer") from None
            pairs.append((rec[0], rec[1], rec[2].lower() in _TRUE, fold))
    if not pairs:
        raise PairListError(f"{path}: no pairs")
    folds = {p[3] for p in pairs}
    if -1 in folds and len(folds) > 1:
        raise PairListError(f"{path}: either every pair has a fold or none has")
    return _from_paths(pairs, "csv", path, root)


def write_csv_pairs(path: str | Path, pairs: Sequence[tuple[str, str, bool, int]]) -> None:
    """Write (path_a, path_b, same, fold) pairs as the CSV :func:`read_csv_pairs` reads, with a
    header line, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path_a", "path_b", "same", "fold"])
        w.writerows((a, b, int(same), fold) for a, b, same, fold in pairs)


class _BinUnpickler(pickle.Unpickler):
    """Unpickles only what a ``.bin`` holds: lists, tuples, bytes/str, bools and numbers (no
    global needed), numpy arrays and scalars, and ``_codecs.encode`` (how Python 3 pickles bytes
    at protocol 2). Any other global is refused: a crafted file cannot run code."""

    ALLOWED = {
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # arrays at pickle protocol 5
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: a .bin holds only image buffers "
                "and booleans (a pickle that names other globals could run code)"
            )
        return super().find_class(module, name)


def _unpickle_bin(path: Path) -> tuple:
    with open(path, "rb") as fh:
        try:
            return _BinUnpickler(fh).load()
        except UnicodeDecodeError:  # Python 2's str: insightface's own files
            fh.seek(0)
            return _BinUnpickler(fh, encoding="bytes").load()


def bin_folds(n: int, n_folds: int = 10) -> np.ndarray:
    """Fold of each of ``n`` pairs: ``n_folds`` contiguous blocks whose sizes differ by at most
    one, the larger first (sklearn's ``KFold(n_folds, shuffle=False)``, as insightface splits).
    Fewer than ``n_folds`` pairs: one fold per pair."""
    n_folds = min(n, n_folds)
    sizes = np.full(n_folds, n // n_folds)
    sizes[: n % n_folds] += 1
    return np.repeat(np.arange(n_folds, dtype=np.int64), sizes)


def read_bin(path: str | Path, n_folds: int = 10) -> Pairs:
    """Read an insightface validation ``.bin``: a pickle of (2N encoded images, N booleans).

    Pair k is images 2k and 2k+1; folds are ``n_folds`` contiguous blocks (:func:`bin_folds`,
    the protocol of ``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``). No MXNet needed. The pickle
    is read with a restricted unpickler (:class:`_BinUnpickler`): only lists, bytes, booleans
    and numpy arrays, never arbitrary code.
    """
    from PIL import Image

    path = Path(path)
    try:
        bins, issame = _unpickle_bin(path)
    except Exception as e:
        raise PairListError(f"{path}: not a (images, issame) pickle: {e}") from e
    if len(bins) != 2 * len(issame):
        raise PairListError(f"{path}: {len(bins)} images for {len(issame)} pairs (need 2 per pair)")
    crops = []
    for i, buf in enumerate(bins):
        try:
            with Image.open(io.BytesIO(bytes(buf))) as im:
                crops.append(np.asarray(im.convert("RGB")))
        except Exception as e:
            raise PairListError(f"{path}: image {i} cannot be decoded: {e}") from e
    n = len(issame)
    return Pairs(
        images=[f"{path.name}#{i}" for i in range(2 * n)],
        left=np.arange(0, 2 * n, 2, dtype=np.int64),
        right=np.arange(1, 2 * n, 2, dtype=np.int64),
        same=np.array([bool(v) for v in issame]),
        fold=bin_folds(n, n_folds),
        protocol="bin",
        source=str(path),
        crops=np.stack(crops),
    )


def write_bin(
    path: str | Path,
    crops_left: np.ndarray,
    crops_right: np.ndarray,
    same: np.ndarray,
    image_format: str = "PNG",
) -> None:
    """Write pairs of aligned crops (N, H, W, 3) uint8 as an insightface ``.bin``.

    PNG (lossless) by default; ``image_format="JPEG"`` for insightface-sized files.
    """
    from PIL import Image

    from face_rec.utils.io import atomic_path

    bins = []
    for a, b in zip(crops_left, crops_right, strict=True):
        for img in (a, b):
            buf = io.BytesIO()
            Image.fromarray(np.asarray(img, np.uint8)).save(buf, format=image_format)
            bins.append(buf.getvalue())
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        pickle.dump((bins, [bool(s) for s in same]), fh, protocol=pickle.HIGHEST_PROTOCOL)


def load_pairs(path: str | Path, image_root: str | Path | None = None) -> Pairs:
    """Read any supported pair list, chosen by extension: ``.bin``, ``.csv``, else LFW text."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pair list {str(path)!r} not found; pass pairs=<file>")
    suffix = path.suffix.lower()
    if suffix == ".bin":
        return read_bin(path)
    if suffix == ".csv":
        return read_csv_pairs(path, image_root)
    return read_lfw_pairs(path, image_root)
