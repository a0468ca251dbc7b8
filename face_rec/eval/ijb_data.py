"""IJB-B / IJB-C input: the meta files of insightface's distribution, and resumable feature
extraction with the provided landmarks.

Layout (insightface's IJB release, ``recognition/_evaluation_/ijb``), ``t`` = ijbc or ijbb:

* ``<root>/loose_crop/<image_name>``: the face images (loose crops around each face).
* ``<root>/meta/<t>_name_5pts_score.txt``: ``image_name x1 y1 ... x5 y5 faceness``, one face per
  line: five points (left eye, right eye, nose, left and right mouth corner) in loose-crop pixels
  and the detector's faceness score.
* ``<root>/meta/<t>_face_tid_mid.txt``: ``image_name template_id media_id``, one face per line.
  insightface's ``ijb_11.py`` / ``ijb_1n.py`` pair the two files by line position (they list the
  same images in the same order); here they are paired by position when their name columns are
  identical, else by image name (a face_tid_mid name without a landmark line is an unusable
  image, counted and reported).
* ``<root>/meta/<t>_template_pair_label.txt``: ``tid1 tid2 label`` (1 genuine, 0 impostor).
* 1:N (:data:`ONE_N_FILES`): ``<t>_1N_gallery_G1.csv`` and ``_G2.csv`` (IJB-B: ``_S1``, ``_S2``)
  and ``<t>_1N_probe_mixed.csv``, the IJB release's protocol CSVs: a header
  (``TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID,...``), then one row per image of a template.
  insightface's ``ijb_1n.py`` reads columns 0 and 1 after skipping the header, takes each
  template's subject from its first row and builds the template from ALL of the template's lines
  in ``<t>_face_tid_mid.txt`` (FILENAME is not used: images reach a template through
  face_tid_mid only; G1 + G2 + probes are exactly the 1:1 templates). Here the two columns are
  found by their header names (case-insensitive) and a template listed with two subjects is an
  error; otherwise the same.

Malformed meta lines are fatal (:class:`MetaFormatError` names the file and line); a missing or
undecodable image is counted, reported and left out of its template.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from face_rec.align.detect import Face
from face_rec.align.run import ALIGN_VERSION, AlignSettings, crop_face
from face_rec.data.images import ImageReadError, load_rgb
from face_rec.eval.embed import embed_crops
from face_rec.utils.io import atomic_path, keyed_dir
from face_rec.utils.stamps import Stamp, content_key, file_digest, recorded_file_stamps

log = logging.getLogger(__name__)

TARGETS = ("IJBC", "IJBB")
#: per target: (gallery 1, gallery 2, mixed probes); IJB-B's S1/S2 are reported as G1/G2
ONE_N_FILES = {
    "IJBC": ("ijbc_1N_gallery_G1.csv", "ijbc_1N_gallery_G2.csv", "ijbc_1N_probe_mixed.csv"),
    "IJBB": ("ijbb_1N_gallery_S1.csv", "ijbb_1N_gallery_S2.csv", "ijbb_1N_probe_mixed.csv"),
}
FEATURES_VERSION = 1  #: bump when a code change alters the stored features


class MetaFormatError(ValueError):
    """A malformed line in an IJB meta file; the message names the file and line."""


# ----------------------------------------------------------------------------- meta files


@dataclass
class Faces:
    """``<t>_name_5pts_score.txt``: ``names`` (N,), ``landmarks`` (N, 5, 2), ``faceness`` (N,)."""

    names: list[str]
    landmarks: np.ndarray
    faceness: np.ndarray
    path: Path


@dataclass
class TemplateMedia:
    """``<t>_face_tid_mid.txt``: per line, ``names`` (R,), ``template`` and ``media`` ids (R,)
    int64 and ``face`` (R,) int64, the line's row in :class:`Faces` (-1: no landmark line)."""

    names: list[str]
    template: np.ndarray
    media: np.ndarray
    face: np.ndarray
    path: Path


@dataclass
class TemplatePairs:
    """``<t>_template_pair_label.txt``: ``t1``, ``t2`` (P,) int64 and ``label`` (P,) bool."""

    t1: np.ndarray
    t2: np.ndarray
    label: np.ndarray
    path: Path


@dataclass
class IJBMeta:
    root: Path
    target: str
    faces: Faces
    rows: TemplateMedia
    pairs: TemplatePairs


def meta_path(root: str | Path, target: str, suffix: str) -> Path:
    """``<root>/meta/<t>_<suffix>`` for target IJBC or IJBB."""
    return Path(root) / "meta" / f"{check_target(target).lower()}_{suffix}"


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"target={target!r}: use one of {', '.join(TARGETS)}")
    return target


def read_meta(root: str | Path, target: str) -> IJBMeta:
    """Read the three 1:1 meta files of ``<root>/meta`` (see the module docstring)."""
    root = Path(root)
    if not (root / "meta").is_dir():
        raise FileNotFoundError(
            f"no meta/ folder under root={str(root)!r}: point root= at the IJB folder of "
            "insightface's distribution (loose_crop/ and meta/)"
        )
    faces = read_faces(meta_path(root, target, "name_5pts_score.txt"))
    rows = read_template_media(meta_path(root, target, "face_tid_mid.txt"), faces)
    pairs = read_pairs(meta_path(root, target, "template_pair_label.txt"))
    for path, n in ((faces.path, len(faces.names)), (rows.path, len(rows.names))):
        if n == 0:
            raise MetaFormatError(f"{path}: no lines; is it the right file?")
    return IJBMeta(root, target, faces, rows, pairs)


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, whitespace-split fields) of each non-blank line."""
    if not path.is_file():
        raise FileNotFoundError(f"IJB meta file {str(path)!r} not found")
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            fields = line.split()
            if fields:
                yield number, fields


def _bad(path: Path, number: int, fields: list[str], expected: str) -> MetaFormatError:
    line = " ".join(fields)
    return MetaFormatError(
        f"{path}:{number}: malformed line {line[:120]!r}: expected {expected}; fix or remove it"
    )


def read_faces(path: str | Path) -> Faces:
    """``image_name x1 y1 ... x5 y5 faceness`` lines; a line of other shape is an error."""
    path = Path(path)
    names, values = [], []
    expected = "'image_name x1 y1 x2 y2 x3 y3 x4 y4 x5 y5 faceness' (12 fields, numbers)"
    for number, fields in _lines(path):
        try:
            if len(fields) != 12:
                raise ValueError
            numbers = [float(v) for v in fields[1:]]
        except ValueError:
            raise _bad(path, number, fields, expected) from None
        if not np.isfinite(numbers[-1]):
            raise _bad(path, number, fields, expected + " with a finite faceness")
        names.append(fields[0])
        values.append(numbers)
    arr = np.asarray(values, np.float64).reshape(-1, 11)
    return Faces(names, arr[:, :10].reshape(-1, 5, 2), arr[:, 10].copy(), path)


def read_template_media(path: str | Path, faces: Faces) -> TemplateMedia:
    """``image_name template_id media_id`` lines, each paired with its landmark line."""
    path = Path(path)
    names, ids = [], []
    for number, fields in _lines(path):
        try:
            if len(fields) != 3:
                raise ValueError
            ids.append((int(fields[1]), int(fields[2])))
        except ValueError:
            raise _bad(
                path, number, fields, "'image_name template_id media_id' (integers)"
            ) from None
        names.append(fields[0])
    arr = np.asarray(ids, np.int64).reshape(-1, 2)
    if names == faces.names:  # insightface's pairing: line i with line i
        face = np.arange(len(names), dtype=np.int64)
    else:
        face = np.array([_face_index(faces).get(n, -1) for n in names], np.int64)
    return TemplateMedia(names, arr[:, 0].copy(), arr[:, 1].copy(), face, path)


def _face_index(faces: Faces) -> dict[str, int]:
    """Image name -> landmark row; a name listed twice with different values is an error."""
    index: dict[str, int] = {}
    for i, name in enumerate(faces.names):
        j = index.setdefault(name, i)
        if j != i and not (
            np.array_equal(faces.landmarks[i], faces.landmarks[j])
            and faces.faceness[i] == faces.faceness[j]
        ):
            raise MetaFormatError(
                f"{faces.path}: image {name!r} is listed twice with different landmarks "
                f"(lines {j + 1} and {i + 1}, counting non-blank lines); the face_tid_mid file "
                "lists other names, so faces are paired by name: keep one line per image"
            )
    return index


def read_pairs(path: str | Path) -> TemplatePairs:
    """``tid1 tid2 label`` lines (label 0 or 1), read by numpy's C parser; on any problem the
    first bad line is found and named. Linear in lines: 6M lines took 0.8 s and ~150 MB above
    the 144 MB result on the 2-core development machine, so IJB-C's 15.7M take ~2 s and ~0.4
    GB (``benchmarks/ijb_scoring.py --real-path`` measures it at full size)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IJB meta file {str(path)!r} not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # an empty file: reported below
            arr = np.loadtxt(path, dtype=np.int64, ndmin=2, comments=None)
    except ValueError:
        arr = None
    if arr is not None and len(arr) == 0:
        raise MetaFormatError(f"{path}: no lines; is it the right file?")
    if arr is None or arr.shape[1] != 3 or not np.isin(arr[:, 2], (0, 1)).all():
        _raise_first_bad_pair(path)
    return TemplatePairs(arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2] == 1, path)


def _raise_first_bad_pair(path: Path) -> None:
    expected = "'tid1 tid2 label' (integers, label 0 or 1)"
    for number, fields in _lines(path):
        try:
            ints = [int(v) for v in fields]
        except ValueError:
            ints = []
        if len(ints) != 3 or ints[2] not in (0, 1):
            raise _bad(path, number, fields, expected)
    raise MetaFormatError(f"{path}: cannot be read as {expected} lines")


def read_1n_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """An IJB 1:N protocol CSV: (template ids (K,), subject ids (K,)) int64, one per template in
    order of first appearance. Columns TEMPLATE_ID and SUBJECT_ID are found by header name."""
    import csv

    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: a BOM is not a header
        reader = csv.reader(fh)
        header = [h.strip().upper() for h in next(reader, [])]
        if "TEMPLATE_ID" not in header or "SUBJECT_ID" not in header:
            raise MetaFormatError(
                f"{path}:1: header {','.join(header)[:120]!r} lacks TEMPLATE_ID and SUBJECT_ID "
                "(the IJB 1:N protocol CSV columns); give the file its header line"
            )
        ti, si = header.index("TEMPLATE_ID"), header.index("SUBJECT_ID")
        subject: dict[int, tuple[int, int]] = {}
        for number, row in enumerate(reader, 2):
            if not any(c.strip() for c in row):
                continue
            try:
                t, s = int(row[ti]), int(row[si])
            except (ValueError, IndexError):
                raise _bad(path, number, row, "TEMPLATE_ID and SUBJECT_ID integers") from None
            first = subject.setdefault(t, (s, number))
            if first[0] != s:
                raise MetaFormatError(
                    f"{path}:{number}: template {t} has subject {s} here but {first[0]} on line "
                    f"{first[1]}; a template belongs to one subject"
                )
    ids = np.array(list(subject), np.int64)
    return ids, np.array([subject[t][0] for t in subject], np.int64)


# ----------------------------------------------------------------------------- alignment


def align_ijb_face(
    image: np.ndarray, landmarks: np.ndarray, settings: AlignSettings
) -> tuple[np.ndarray, str]:
    """The crop of a face in (H, W, 3) ``image`` with its PROVIDED five points (5, 2): the
    alignment stage's own :func:`~face_rec.align.run.crop_face` (the same warp and settings as
    ``align.py``, landmarks taken to the 3 decimals its manifest records, as it does before
    its warp: points with more decimals move by at most 0.0005 px; given the same landmarks,
    the same crop byte for byte, and a pack's manifest landmarks give the pack's crop).
    Returns (crop (S, S, 3) uint8, reason): reason is '' or why the fallback centre crop was
    used (degenerate landmarks)."""
    face = Face(box=np.zeros(4), prob=1.0, landmarks=np.asarray(landmarks, np.float64))
    return crop_face(image, face, settings)


# ----------------------------------------------------------------------------- features


@dataclass
class FaceFeatures:
    """Raw features of faces stored in chunk files: per face f(x) and f(flip x), (D,) float32.

    ``ok`` (N,) bool: usable; ``fallback`` (N,) bool: centre crop (degenerate landmarks);
    ``problems``: face index -> why it is unusable or a fallback.
    """

    folder: Path
    n: int
    chunk_size: int
    ok: np.ndarray
    fallback: np.ndarray
    problems: dict[int, str] = field(default_factory=dict)

    def blocks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(start, f(x) (n, D), f(flip x) (n, D)) float32 per chunk, in face order."""
        for i, start in enumerate(range(0, self.n, self.chunk_size)):
            with np.load(_chunk_path(self.folder, i)) as z:
                yield start, z["x"], z["xf"]


def _chunk_path(folder: Path, index: int) -> Path:
    return folder / f"chunk-{index:06d}.npz"


def model_identity(model: nn.Module) -> str:
    """A digest of what makes a model's features: its architecture (repr, input size), every
    weight and buffer, each submodule's input preprocessing (an
    :class:`~face_rec.models.preprocess.InputAdapter`'s or an ONNX model's colour order, mean
    and std: the colour order is neither a buffer nor in the repr), and a model file read
    outside ``state_dict`` (ONNX: its bytes' digest)."""
    h = hashlib.sha256(repr(model).encode())
    h.update(str(getattr(model, "input_size", None)).encode())
    for name, value in model.state_dict().items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    for name, module in model.named_modules():
        preprocessing = getattr(module, "preprocessing", None)
        if preprocessing is not None:
            h.update(f"{name}\0preprocessing\0{preprocessing!r}".encode())
    path = getattr(model, "path", None)  # a model file read outside state_dict (ONNX)
    if path and Path(path).is_file():
        h.update(f"model file\0{file_digest(Path(path))}".encode())
    return h.hexdigest()


def crop_settings(settings: AlignSettings) -> dict:
    """The alignment settings that change a crop made from given landmarks: ``size``,
    ``border`` and ``fallback_face_fraction`` (the centre crop of degenerate landmarks). The
    detection settings (batch size, detection side, retries) do not: no detection here."""
    return {
        "size": settings.size,
        "border": settings.border,
        "fallback_face_fraction": settings.fallback_face_fraction,
    }


def features_key(
    model_id: str,
    image_dir: Path,
    names: Sequence[str],
    landmarks: np.ndarray,
    settings: AlignSettings,
    chunk_size: int,
    stamps: dict[str, Stamp | None],
) -> str:
    """Everything that shapes the stored features: the model (:func:`model_identity`), the
    image folder, each image's name and content (its ``stamps``, :mod:`face_rec.utils.stamps`),
    the landmarks (N, 5, 2), the crop settings (:func:`crop_settings`), and the chunking (which
    faces each chunk file holds)."""
    h = hashlib.sha256()
    meta = [FEATURES_VERSION, ALIGN_VERSION, crop_settings(settings), model_id]
    meta += [str(Path(image_dir).resolve()), chunk_size]
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name in names:
        h.update(f"{name}\0{content_key(stamps[name])}\n".encode())
    h.update(np.ascontiguousarray(landmarks, np.float64).tobytes())
    return h.hexdigest()


def extract_features(
    model: nn.Module,
    image_dir: str | Path,
    names: Sequence[str],
    landmarks: np.ndarray,
    cache_dir: str | Path,
    settings: AlignSettings | None = None,
    chunk_size: int = 4096,
    batch_size: int = 64,
    device: str = "cpu",
    workers: int | None = None,
    progress: bool = True,
) -> FaceFeatures:
    """f(x) and f(flip x) of each face ``names[i]`` (under ``image_dir``) aligned with
    ``landmarks[i]`` (N, 5, 2), computed in chunks of ``chunk_size`` faces, each saved
    atomically under ``cache_dir/<key>``; chunks already there are kept (a killed run goes on
    where it stopped). The key (:func:`features_key`) covers the model, the image folder, each
    image's name and content (not its modification time: a fresh copy of the images keeps the
    cache; the stamps are recorded in ``cache_dir/stamps-<folder digest>.csv``), the landmarks,
    the crop settings and the chunk size. ``workers``: threads decoding and warping (None: one
    per core). Returns the chunks' :class:`FaceFeatures` (features read back a chunk at a time)."""
    from tqdm import tqdm

    settings = settings or AlignSettings()
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"image folder {str(image_dir)!r} not found: root= must hold loose_crop/"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be >= 1")
    folder_digest = hashlib.sha256(str(image_dir.resolve()).encode()).hexdigest()[:12]
    record = Path(cache_dir) / f"stamps-{folder_digest}.csv"
    stamps = recorded_file_stamps(image_dir, names, record)
    key = features_key(
        model_identity(model), image_dir, names, landmarks, settings, chunk_size, stamps
    )
    folder = keyed_dir(Path(cache_dir) / key[:16], key)
    n = len(names)
    starts = range(0, n, chunk_size)
    todo = [i for i in range(len(starts)) if not _chunk_path(folder, i).exists()]
    n_todo = sum(min(chunk_size, n - starts[i]) for i in todo)
    threads = len(os.sched_getaffinity(0)) if workers is None else max(int(workers), 1)
    dim = None
    with (
        ThreadPoolExecutor(threads) as pool,
        tqdm(
            total=n, initial=n - n_todo, unit="face", desc="IJB features", disable=not progress
        ) as bar,
    ):
        for i in todo:
            s = starts[i]
            idx = range(s, min(s + chunk_size, n))
            jobs = ((image_dir / names[k], landmarks[k], settings) for k in idx)
            prepared = list(pool.map(_prepare, jobs))
            dim = dim or _feature_dim(model, settings.size, device)
            _save_chunk(folder, i, prepared, model, batch_size, device, dim)
            bar.update(len(idx))
    return open_features(folder, n, chunk_size)


def _prepare(job: tuple[Path, np.ndarray, AlignSettings]) -> tuple[np.ndarray | None, str, bool]:
    """(crop or None, reason, fallback) for one face; never raises for a bad image."""
    path, landmarks, settings = job
    try:
        image = load_rgb(path)
    except ImageReadError as e:
        return None, str(e), False
    crop, reason = align_ijb_face(image, landmarks, settings)
    return crop, (f"{path.name}: fallback centre crop ({reason})" if reason else ""), bool(reason)


def _feature_dim(model: nn.Module, size: int, device: str) -> int:
    return embed_crops(model, np.zeros((1, size, size, 3), np.uint8), 1, device, False).shape[1]


def _save_chunk(
    folder: Path,
    index: int,
    prepared: list[tuple[np.ndarray | None, str, bool]],
    model: nn.Module,
    batch_size: int,
    device: str,
    dim: int,
) -> None:
    """Embed one chunk's ``prepared`` crops (:func:`_prepare`) and save it."""
    ok = np.array([c is not None for c, _, _ in prepared], bool)
    x = np.zeros((len(prepared), dim), np.float32)
    xf = np.zeros_like(x)
    if ok.any():
        crops = np.stack([c for c, _, _ in prepared if c is not None])
        x[ok] = embed_crops(model, crops, batch_size, device, flip=False, normalize=False)
        mirrored = crops[:, :, ::-1]  # f(flip x): the crop mirrored left-right
        xf[ok] = embed_crops(model, mirrored, batch_size, device, flip=False, normalize=False)
    reasons = [r for _, r, _ in prepared]
    fallback = np.array([f for _, _, f in prepared], bool)
    write_chunk(folder, index, x, xf, ok, fallback, reasons)


def write_chunk(
    folder: Path,
    index: int,
    x: np.ndarray,
    xf: np.ndarray,
    ok: np.ndarray,
    fallback: np.ndarray,
    reasons: Sequence[str],
) -> None:
    """Save chunk ``index`` of a feature cache folder atomically: f(x) and f(flip x) (n, D)
    float32 (zero rows where not ``ok``), ``ok`` and ``fallback`` (n,) bool, ``reasons`` (n,)
    ('' or why the face is unusable or a fallback). :func:`open_features` reads it back."""
    with atomic_path(_chunk_path(folder, index)) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            x=np.asarray(x, np.float32),
            xf=np.asarray(xf, np.float32),
            ok=np.asarray(ok, bool),
            fallback=np.asarray(fallback, bool),
            reasons=np.array(json.dumps(list(reasons))),
        )


def open_features(folder: str | Path, n: int, chunk_size: int) -> FaceFeatures:
    """The :class:`FaceFeatures` of a complete cache folder of ``n`` faces in chunks of
    ``chunk_size`` (reads each chunk's status, not its features)."""
    folder = Path(folder)
    ok, fallback, problems = np.zeros(n, bool), np.zeros(n, bool), {}
    for i, s in enumerate(range(0, n, chunk_size)):
        with np.load(_chunk_path(folder, i)) as z:
            e = s + len(z["ok"])
            ok[s:e], fallback[s:e] = z["ok"], z["fallback"]
            for k, reason in enumerate(json.loads(str(z["reasons"]))):
                if reason:
                    problems[s + k] = reason
    return FaceFeatures(folder, n, chunk_size, ok, fallback, problems)
