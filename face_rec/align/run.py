"""The alignment batch job: an identity-folder tree in, an aligned pack out.

Work is split into fixed chunks of the sorted input list. Each finished chunk is saved atomically
under ``<output_dir>/.parts``; a killed job run again skips those chunks, and the pack itself
(``images.npy``, ``manifest.csv``, contact sheets, and ``summary.json`` last, as the completion
mark) is assembled from the parts in input order, so a resumed run is byte-identical to an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from face_rec.align.detect import Face, FaceDetector
from face_rec.align.retry import (
    better,
    full_resolution_window,
    map_back,
    map_back_window,
    needs_retry,
    plan_retries,
    retry_image,
    window_image,
)
from face_rec.align.sheets import write_contact_sheets
from face_rec.align.warp import (
    DegenerateLandmarksError,
    alignment_matrix,
    box_reduce,
    center_crop_matrix,
    check_border,
    outside_fraction,
    warp_similarity,
)
from face_rec.data.images import ImageReadError, is_image_file, load_rgb
from face_rec.data.pack import (
    MANIFEST_COLUMNS,
    SUMMARY_NAME,
    open_images,
    outside_fractions,
    outside_stats,
    read_manifest,
    read_summary,
    tight_crop_warning,
    write_images,
    write_manifest,
)
from face_rec.utils.io import atomic_path, keyed_dir, write_json
from face_rec.utils.machine import machine_info
from face_rec.utils.stamps import Stamp, content_key, recorded_file_stamps

log = logging.getLogger(__name__)

PARTS_DIR = ".parts"
LOCK_NAME = ".lock"  #: held by the job writing the pack (see _one_writer)
#: bump when a code change alters the crops: packs made by other code are then rebuilt
#: (4: outside_fraction and detect_retry columns; undetected images retried upscaled / padded)
#: (5: crops warped from the landmarks rounded to the manifest's precision; box_reduce keeps the
#: ragged edge (replicated), no invented border; images reduced for detection retried at full
#: resolution)
ALIGN_VERSION = 5
LANDMARK_DECIMALS = 3  #: decimals of the manifest's landmarks (the crop is warped from them)
THUMB = 112  # side of the source thumbnails kept for the fallback contact sheet
CHUNK_SIZE = 128  #: default files per chunk (a resumable part; detected together by size)
#: the pack's record of its source files' sizes, times and digests (face_rec.utils.stamps): a
#: cache that saves reading unchanged files; the manifest's input_sha256 is what was aligned
STAMPS_NAME = "stamps.csv"


@dataclass(frozen=True)
class AlignSettings:
    """How crops are made (everything except the detector, which is passed built)."""

    size: int = 112  #: output side; the ArcFace template scales with it
    fallback_face_fraction: float = 0.5  #: fallback crop side / shorter image side
    batch_size: int = 16  #: images of one size detected together
    max_detect_side: int = 1024  #: larger images are box-reduced for detection only
    #: what the warp reads beyond the source image: constant (black), replicate, reflect
    border: str = "constant"
    #: an image without a confident face is detected again upscaled (integer factor) until its
    #: shorter side reaches this x the detector's min_face_size; one reduced for detection
    #: (max_detect_side) is first detected again at full resolution; 0: neither
    retry_upscale: float = 2.0
    #: ... and then padded by this fraction of its height / width per side; 0: no padded retry
    retry_pad: float = 0.25
    #: how that padding is filled (detection only; the crop is warped with ``border``)
    retry_border: str = "replicate"

    def __post_init__(self) -> None:
        check_border(self.border)
        check_border(self.retry_border)
        if self.retry_upscale < 0 or self.retry_pad < 0:
            raise ValueError(
                f"retry_upscale={self.retry_upscale} and retry_pad={self.retry_pad} must be >= 0 "
                "(0 turns that retry off)"
            )


@dataclass(frozen=True, order=True)
class InputFile:
    source: str  #: path relative to the input root, POSIX separators
    identity: str


@dataclass
class ChunkResult:
    """Aligned crops (n, S, S, 3) for the rows whose status is not ``failed``, in row order."""

    rows: list[dict]
    crops: np.ndarray
    thumbs: np.ndarray  #: (n_fallback, THUMB, THUMB, 3) sources of the fallback rows


# ----------------------------------------------------------------------------- input listing


def list_inputs(root: str | Path) -> tuple[list[InputFile], list[str], list[str]]:
    """Scan ``root/<identity>/<image>``.

    Returns (image files sorted by identity then name, ignored non-image paths, empty identities).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"input_dir {str(root)!r} is not a directory; point input_dir= (or FACE_REC_DATA) at a "
            "folder of <identity>/<image> files"
        )
    files, ignored, empty = [], [], []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if not entry.is_dir():
            ignored.append(entry.name)
            continue
        found = False
        for f in sorted(entry.rglob("*"), key=lambda p: p.relative_to(entry).as_posix()):
            if f.is_dir():
                continue
            rel = f.relative_to(root).as_posix()
            if is_image_file(f):
                files.append(InputFile(rel, entry.name))
                found = True
            else:
                ignored.append(rel)
        if not found:
            empty.append(entry.name)
    return files, ignored, empty


# ----------------------------------------------------------------------------- per-chunk work


def align_chunk(
    root: Path,
    files: list[InputFile],
    labels: dict[str, int],
    detector: FaceDetector,
    settings: AlignSettings,
) -> ChunkResult:
    """Decode, detect, choose and warp every file of one chunk. Never raises for a bad file."""
    images: list[np.ndarray | None] = []
    rows: list[dict] = []
    for f in files:
        row = {
            "source": f.source,
            "identity": f.identity,
            "label": labels[f.identity],
            "status": "failed",
            "det_prob": "",
            "landmarks": "",
            "box": "",
            "width": "",
            "height": "",
            "reason": "",
            "outside_fraction": "",
            "detect_retry": "",
        }
        try:
            img = load_rgb(root / f.source)
            row["height"], row["width"] = img.shape[:2]
        except ImageReadError as e:
            img = None
            row["reason"] = str(e).replace(str(root) + os.sep, "")
        images.append(img)
        rows.append(row)
    faces = detect_all(images, detector, settings)
    crops, thumbs = [], []
    for img, face, row in zip(images, faces, rows, strict=True):
        if img is None:
            continue
        face = as_recorded(face)  # warp from the landmarks the manifest records
        crop = make_crop(img, face, settings)
        reason = crop.reason
        if isinstance(face, Face):
            row["det_prob"] = f"{face.prob:.6f}"
            row["landmarks"] = format_landmarks(face.landmarks)
            row["box"] = " ".join(f"{v:.2f}" for v in face.box)
            row["detect_retry"] = face.retry
        row["status"] = "fallback" if reason else "ok"
        row["reason"] = reason
        row["outside_fraction"] = f"{crop.outside_fraction:.6f}"
        crops.append(crop.image)
        if reason:
            thumbs.append(_thumbnail(img))
    size = settings.size
    return ChunkResult(
        rows=rows,
        crops=np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8),
        thumbs=np.stack(thumbs) if thumbs else np.zeros((0, THUMB, THUMB, 3), np.uint8),
    )


def format_landmarks(landmarks: np.ndarray) -> str:
    """The manifest's ``landmarks`` field: (5, 2) points as ``x1 y1 ... x5 y5``, 3 decimals."""
    return " ".join(f"{v:.{LANDMARK_DECIMALS}f}" for v in np.asarray(landmarks).reshape(-1))


def manifest_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """``landmarks`` (5, 2) rounded as the manifest stores them (:func:`format_landmarks`), as
    float64: exactly the values read back from the manifest. The crop is warped from these, so
    re-cropping from a pack's manifest (an IJB tree, a re-alignment) gives the pack's crop byte
    for byte."""
    return np.array(format_landmarks(landmarks).split(), np.float64).reshape(np.shape(landmarks))


def as_recorded(face: Face | str | None) -> Face | str | None:
    """A face with its landmarks rounded as the manifest records them
    (:func:`manifest_landmarks`); a message or None as it is. The alignment job and
    :func:`crop_face` warp from these."""
    if not isinstance(face, Face):
        return face
    return dataclasses.replace(face, landmarks=manifest_landmarks(face.landmarks))


def detect_all(
    images: list[np.ndarray | None], detector: FaceDetector, settings: AlignSettings
) -> list[Face | str | None]:
    """One entry per image: a Face, None (no face), or an error message. Batches similar sizes.

    An image larger than ``settings.max_detect_side`` is detected on a box-reduced copy. An image
    without a confident face is detected again (:mod:`face_rec.align.retry`): first, when it was
    reduced, at full resolution (its central window when it is very large,
    :func:`~face_rec.align.retry.full_resolution_window`), then on upscaled and/or padded copies
    of the detection image (``settings.retry_upscale`` / ``retry_pad``); a face found there is
    mapped back to the image's pixels and says which copy found it (``Face.retry``). Only a
    detector that declares its ``min_face_size`` (:class:`FaceDetector` does) is retried: the
    retries answer that limit.
    """
    small: dict[int, tuple[np.ndarray, int]] = {}
    for i, img in enumerate(images):
        if img is None:
            continue
        k = max(int(np.ceil(max(img.shape[:2]) / settings.max_detect_side)), 1)
        det = img if k == 1 else np.rint(box_reduce(img, k)).astype(np.uint8)
        small[i] = (det, k)
    first = _detect_grouped(
        detector, {i: det for i, (det, _) in small.items()}, settings.batch_size
    )
    found = {i: _rescale(face, small[i][1]) for i, face in first.items()}
    if getattr(detector, "min_face_size", None) is not None:
        if settings.retry_upscale > 0:
            _retry_full_resolution(
                found, images, {i: k for i, (_, k) in small.items()}, detector, settings
            )
        _retry(found, small, detector, settings)
    out: list[Face | str | None] = [None] * len(images)
    for i, face in found.items():
        out[i] = face
    return out


def _retry_full_resolution(
    found: dict[int, Face | str | None],
    images: list[np.ndarray | None],
    factors: dict[int, int],
    detector: FaceDetector,
    settings: AlignSettings,
) -> None:
    """Detect the images that were reduced for detection (``factors`` k > 1) and have no
    confident face in ``found`` again at full resolution (a very large one: its central window,
    :func:`~face_rec.align.retry.full_resolution_window`); update ``found`` in place. Each holds
    about k^2 times the pixels of its detection image, so they go in batches of
    ``batch_size // k^2`` (at least 1): a batch holds about as many pixels as a first-pass one."""
    todo = {i: k for i, k in factors.items() if k > 1 and needs_retry(found[i])}
    for k in sorted(set(todo.values())):
        windows = {
            i: full_resolution_window(images[i].shape[:2], settings.max_detect_side)
            for i, ki in todo.items()
            if ki == k
        }
        copies = {i: window_image(images[i], w) for i, w in windows.items()}
        batch = max(settings.batch_size // k**2, 1)
        for i, face in _detect_grouped(detector, copies, batch).items():
            face = map_back_window(face, windows[i])
            if better(face, found[i]):
                found[i] = face


def _retry(
    found: dict[int, Face | str | None],
    images: dict[int, tuple[np.ndarray, int]],
    detector: FaceDetector,
    settings: AlignSettings,
) -> None:
    """Detect the ``images`` (index -> (detection image, its reduction factor k)) without a
    confident face in ``found`` again, stage by stage on the copies of the detection image
    :func:`~face_rec.align.retry.plan_retries` lists; update ``found`` (source-image pixels) in
    place."""
    plans = {
        i: plan_retries(
            img.shape[:2],
            detector.min_face_size,
            settings.retry_upscale,
            settings.retry_pad,
            settings.max_detect_side,
        )
        for i, (img, _) in images.items()
    }
    for stage in range(max((len(p) for p in plans.values()), default=0)):
        todo = {i: p[stage] for i, p in plans.items() if len(p) > stage and needs_retry(found[i])}
        copies = {i: retry_image(images[i][0], r, settings.retry_border) for i, r in todo.items()}
        for i, face in _detect_grouped(detector, copies, settings.batch_size).items():
            face = _rescale(map_back(face, todo[i]), images[i][1])
            if better(face, found[i]):
                found[i] = face


def _detect_grouped(
    detector: FaceDetector, images: dict[int, np.ndarray], batch_size: int
) -> dict[int, Face | str | None]:
    """Detect ``images`` (index -> (H, W, 3) uint8) in batches of similar sizes, at most
    ``batch_size`` each."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in images.items():
        groups.setdefault(_bucket(img.shape), []).append(i)
    out: dict[int, Face | str | None] = {}
    for _, idx in sorted(groups.items()):
        for s in range(0, len(idx), batch_size):
            batch = idx[s : s + batch_size]
            faces = _detect_batch(detector, [images[i] for i in batch])
            out.update(zip(batch, faces, strict=True))
    return out


def _bucket(shape: tuple[int, ...], step: int = 32) -> tuple[int, int]:
    """Images whose sizes round up to the same multiple of ``step`` are detected together
    (padded to a common size): little padding, far fewer batches of one."""
    return -(-shape[0] // step) * step, -(-shape[1] // step) * step


def _detect_batch(detector: FaceDetector, images: list[np.ndarray]) -> list[Face | str | None]:
    try:
        return list(detector.detect(images))
    except Exception:  # noqa: BLE001 - isolate the bad image by retrying one at a time
        if len(images) > 1:
            return [_detect_batch(detector, [img])[0] for img in images]
        import traceback

        return [f"detector error: {traceback.format_exc(limit=1).splitlines()[-1]}"]


def _rescale(face: Face | str | None, k: int) -> Face | str | None:
    """Map a face found on a k-times box-reduced image back to full-resolution pixels."""
    if k == 1 or not isinstance(face, Face):
        return face
    off = (k - 1) / 2.0
    return dataclasses.replace(face, box=face.box * k + off, landmarks=face.landmarks * k + off)


@dataclass(frozen=True)
class Crop:
    """One crop of :func:`make_crop`."""

    image: np.ndarray  #: (S, S, 3) uint8
    reason: str  #: '' when aligned on the face, else why it is the fallback centre crop
    outside_fraction: float  #: share of its pixels beyond the source image (border-filled)


def make_crop(img: np.ndarray, face: Face | str | None, settings: AlignSettings) -> Crop:
    """The aligned crop of (H, W, 3) ``img`` (or the fallback centre crop and why), warped with
    ``settings.border``, and the fraction of it that lies outside ``img``."""
    size = settings.size
    if isinstance(face, Face) and not face.confident:
        reason = f"low-confidence face only (p={face.prob:.3f})"
    elif isinstance(face, Face):
        try:
            matrix = alignment_matrix(face.landmarks, size)
            image = warp_similarity(img, matrix, size, settings.border)
            return Crop(image, "", outside_fraction(img.shape[:2], matrix, size))
        except DegenerateLandmarksError as e:
            reason = f"degenerate landmarks: {e}"
    else:
        reason = face or "no face detected"
    matrix = center_crop_matrix(img.shape[:2], settings.fallback_face_fraction, size)
    image = warp_similarity(img, matrix, size, settings.border)
    return Crop(image, reason, outside_fraction(img.shape[:2], matrix, size))


def crop_face(
    img: np.ndarray, face: Face | str | None, settings: AlignSettings
) -> tuple[np.ndarray, str]:
    """The alignment stage's crop of ``face`` in (H, W, 3) ``img``: the aligned crop (S, S, 3)
    and '', or the fallback centre crop and why. As the alignment job does, the landmarks are
    first rounded as its manifest records them (:func:`as_recorded`, 3 decimals), so this is
    the pack's crop byte for byte, and a crop made from a manifest's landmarks is too
    (:func:`make_crop` warps the points exactly as given)."""
    crop = make_crop(img, as_recorded(face), settings)
    return crop.image, crop.reason


def _thumbnail(img: np.ndarray) -> np.ndarray:
    from PIL import Image

    pil = Image.fromarray(img)
    pil.thumbnail((THUMB, THUMB))
    canvas = np.zeros((THUMB, THUMB, 3), np.uint8)
    t = np.asarray(pil.convert("RGB"))
    y, x = (THUMB - t.shape[0]) // 2, (THUMB - t.shape[1]) // 2
    canvas[y : y + t.shape[0], x : x + t.shape[1]] = t
    return canvas


# ----------------------------------------------------------------------------- worker processes

_worker: dict = {}


def _init_worker(make_detector: Callable[[], FaceDetector], threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _worker["detector"] = make_detector()


def _work(task: tuple) -> tuple[int, ChunkResult]:
    index, root, files, labels, settings = task
    return index, align_chunk(root, files, labels, _worker["detector"], settings)


# ----------------------------------------------------------------------------- parts on disk


def _part_path(parts: Path, index: int) -> Path:
    return parts / f"{index:06d}.npz"


def _save_part(parts: Path, index: int, result: ChunkResult) -> None:
    with atomic_path(_part_path(parts, index)) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh, crops=result.crops, thumbs=result.thumbs, rows=np.array(json.dumps(result.rows))
        )


def _load_part(parts: Path, index: int) -> ChunkResult:
    with np.load(_part_path(parts, index)) as z:
        return ChunkResult(json.loads(str(z["rows"])), z["crops"], z["thumbs"])


@contextlib.contextmanager
def _one_writer(output_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``output_dir/.lock`` (POSIX ``flock``) while a job writes the
    pack: two runs of a sweep that need the same missing pack would otherwise write and delete
    each other's parts. Where ``fcntl`` is missing (Windows) no lock is taken."""
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(output_dir / LOCK_NAME, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another job is aligning into %s: waiting for it to finish", output_dir)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _prepare_parts(output_dir: Path, key: str) -> Path:
    """The parts folder for ``key``; parts of other settings or inputs are discarded."""
    return keyed_dir(output_dir / PARTS_DIR, key)


# ----------------------------------------------------------------------------- the job


def run_alignment(
    input_dir: str | Path,
    output_dir: str | Path,
    make_detector: Callable[[], FaceDetector],
    settings: AlignSettings | None = None,
    workers: int | None = None,
    threads_per_worker: int = 1,
    chunk_size: int = CHUNK_SIZE,
    limit: int | None = None,
    detector_settings: dict | None = None,
    seed: int = 0,
    sources: list[str] | None = None,
    shard_size: int = 0,
) -> dict:
    """Align every image under ``input_dir`` into a pack in ``output_dir``; return the summary.

    Args:
        make_detector: builds the detector; called once in each worker process (must pickle).
        workers: processes (default: one per available core); 0 runs in this process.
        limit: align only the first ``limit`` files of the sorted list (a quick sample).
        sources: align exactly these paths (relative to ``input_dir``, identity = first
            component) instead of scanning; a missing one is a ``failed`` row.
        detector_settings: recorded in the summary and in the resume key.
        shard_size: write the crops as ``images-NNNNN.npy`` shards of this many rows when there
            are more (0: one ``images.npy``); see :func:`face_rec.data.pack.open_images`.
    """
    settings = settings or AlignSettings()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if sources is None:
        files, ignored, empty = list_inputs(input_dir)
    else:
        files, ignored, empty = sorted(InputFile(s, s.split("/")[0]) for s in set(sources)), [], []
    if limit is not None:
        files = files[:limit]
    if not files:
        raise FileNotFoundError(f"no image files under {str(input_dir)!r} (<identity>/<image>)")
    labels = {name: i for i, name in enumerate(sorted({f.identity for f in files}))}
    stamps = recorded_file_stamps(input_dir, [f.source for f in files], output_dir / STAMPS_NAME)
    meta = _key_meta(settings, detector_settings or {}, chunk_size)
    key = _resume_key(meta, files, stamps)
    with _one_writer(output_dir):  # a second job on this pack waits, then finds it complete
        previous = read_summary(output_dir)
        if previous is not None and previous.get("key") == key:
            log.info("pack %s is already complete; nothing to do", output_dir)
            return previous
        (output_dir / SUMMARY_NAME).unlink(missing_ok=True)  # the pack is incomplete from here on
        parts = _prepare_parts(output_dir, key)
        chunks = [files[i : i + chunk_size] for i in range(0, len(files), chunk_size)]
        todo = [i for i in range(len(chunks)) if not _part_path(parts, i).exists()]
        n_todo = sum(len(chunks[i]) for i in todo)
        start = time.perf_counter()
        tasks = ((i, input_dir, chunks[i], labels, settings) for i in todo)
        with tqdm(total=len(files), initial=len(files) - n_todo, unit="img", desc="align") as bar:
            for index, result in _execute(tasks, make_detector, workers, threads_per_worker):
                _save_part(parts, index, result)
                bar.update(len(result.rows))
        aligned_s = time.perf_counter() - start
        summary = _assemble(output_dir, parts, len(chunks), settings, stamps, seed, shard_size)
        summary.update(
            key=key,
            **meta,
            input_dir=str(input_dir),
            listed=sources is not None,
            limit=limit,
            n_inputs=len(files),
            n_identities=len(labels),
            ignored_files=ignored,
            empty_identities=empty,
            workers=_n_workers(workers),
            machine=machine_info(),  # what this_run's time was measured on
            this_run={
                "images_processed": n_todo,
                "resumed_images": len(files) - n_todo,
                "wall_time_s": round(time.perf_counter() - start, 2),
                "images_per_s": round(n_todo / aligned_s, 2) if aligned_s > 0 else None,
            },
        )
        write_json(output_dir / SUMMARY_NAME, summary)
        shutil.rmtree(parts)
        return summary


def current_pack(
    input_dir: str | Path,
    output_dir: str | Path,
    settings: AlignSettings | None = None,
    detector_settings: dict | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> list[dict] | None:
    """The manifest rows of the complete pack in ``output_dir`` when :func:`run_alignment` with
    these arguments would leave it as it is: made with the same settings and code, and none of
    its source files under ``input_dir`` changed contents since (a copy of the same files, with
    new modification times or at another path, is current); else None."""
    rows, current = pack_rows(input_dir, output_dir, settings, detector_settings, chunk_size)
    return rows if current else None


def pack_rows(
    input_dir: str | Path,
    output_dir: str | Path,
    settings: AlignSettings | None = None,
    detector_settings: dict | None = None,
    chunk_size: int = CHUNK_SIZE,
    required: Collection[str] | None = None,
) -> tuple[list[dict] | None, bool]:
    """The manifest rows of the complete pack in ``output_dir`` (None when there is none), and
    whether it is current for ``input_dir`` as :func:`current_pack` says. With ``required``
    (sources), a pack that lacks one of them is not current, and no file is read to say so."""
    state = _pack_state(input_dir, output_dir, settings, detector_settings, chunk_size, required)
    return (state[1], state[3]) if state else (None, False)


def pack_changes(
    input_dir: str | Path,
    output_dir: str | Path,
    settings: AlignSettings | None = None,
    detector_settings: dict | None = None,
    chunk_size: int = CHUNK_SIZE,
    scan: bool = False,
) -> list[str]:
    """What differs between the complete pack in ``output_dir`` and what :func:`run_alignment`
    with these arguments would make of ``input_dir``, in words: [] when it is current (or when
    there is no complete pack). The source files it holds are checked; with ``scan``, files
    under ``input_dir`` it does not hold too (a pack of a whole folder, within its ``limit``)."""
    summary = read_summary(output_dir)
    if summary is None:
        return []
    if not Path(input_dir).is_dir():
        meta = _meta_changes(summary, settings, detector_settings, chunk_size)
        return [*meta, unchecked_note(input_dir)]
    state = _pack_state(input_dir, output_dir, settings, detector_settings, chunk_size)
    if state is None:
        return []
    summary, rows, stamps, current = state
    changes = [] if current else _meta_changes(summary, settings, detector_settings, chunk_size)
    if stamps is None:
        changes.append("it records no digests of its source files (made before face_rec did)")
    elif not current:
        was = {r["source"]: r["input_sha256"] for r in rows}
        counts = Counter(_file_change(was[src], stamp) for src, stamp in stamps.items())
        changes += [
            f"{counts[w]} of its {len(rows)} source files {w}" for w in FILE_CHANGES if counts[w]
        ]
    if scan and summary.get("listed") is False:
        files = list_inputs(input_dir)[0][: summary.get("limit")]
        new = {f.source for f in files} - {r["source"] for r in rows}
        if new:
            changes.append(f"{len(new)} image files under {input_dir} are not in it")
    if not current and not changes:
        changes.append("its key differs from these arguments' for a reason not recorded in it")
    return changes


def unchecked_note(input_dir: str | Path) -> str:
    """:func:`pack_changes`'s last entry when ``input_dir`` is absent (not a difference found)."""
    return f"its source folder {input_dir} is absent, so its files were not checked"


def _meta_changes(
    summary: dict, settings: AlignSettings | None, detector: dict | None, chunk_size: int
) -> list[str]:
    """The key's settings (:func:`_key_meta`) that differ between a pack's summary and now,
    compared as the key compares them (as JSON: 2 and 2.0 differ)."""

    def same(a, b) -> bool:
        return json.dumps(a, sort_keys=True, default=str) == json.dumps(
            b, sort_keys=True, default=str
        )

    changes = []
    for name, now in _key_meta(settings or AlignSettings(), detector or {}, chunk_size).items():
        made = summary.get(name, "not recorded")
        if isinstance(now, dict) and isinstance(made, dict):
            changes += [
                f"{name}.{k}: pack {made.get(k)!r}, now {now.get(k)!r}"
                for k in sorted({*made, *now})
                if not same(made.get(k), now.get(k))
            ]
        elif not same(made, now):
            changes.append(f"{name}: pack {made!r}, now {now!r}")
    return changes


#: how a pack's source files can differ from what it recorded (:func:`pack_changes`)
FILE_CHANGES = (
    "have other contents than when they were aligned",
    "are gone",
    "exist now but were missing then",
)


def _file_change(recorded: str, now: Stamp | None) -> str | None:
    """How a source file differs from the digest its pack recorded ('' = missing then)."""
    if now is None:
        return FILE_CHANGES[1] if recorded else None
    if not recorded:
        return FILE_CHANGES[2]
    return FILE_CHANGES[0] if now.sha256 != recorded else None


def _pack_state(
    input_dir: str | Path,
    output_dir: str | Path,
    settings: AlignSettings | None,
    detector_settings: dict | None,
    chunk_size: int,
    required: Collection[str] | None = None,
) -> tuple[dict, list[dict], dict[str, Stamp | None] | None, bool] | None:
    """The complete pack in ``output_dir``: its summary, manifest rows, its source files'
    stamps now under ``input_dir`` (None, unread, for a pack that recorded no digests: never
    current), and whether it is current; None when there is no complete pack. The folder it
    was made from does not count, only the files' paths below it and their contents. A pack
    that lacks a ``required`` source is not current, unread."""
    summary = read_summary(output_dir)
    if summary is None:
        return None
    rows = read_manifest(Path(output_dir) / "manifest.csv")
    held = {r["source"] for r in rows}
    if not any(r["input_sha256"] for r in rows) or not held.issuperset(required or ()):
        return summary, rows, None, False
    files = [InputFile(r["source"], r["identity"]) for r in rows]
    sources = [f.source for f in files]
    stamps = recorded_file_stamps(Path(input_dir), sources, Path(output_dir) / STAMPS_NAME)
    meta = _key_meta(settings or AlignSettings(), detector_settings or {}, chunk_size)
    return summary, rows, stamps, summary["key"] == _resume_key(meta, files, stamps)


def _execute(
    tasks: Iterator[tuple],
    make_detector: Callable[[], FaceDetector],
    workers: int | None,
    threads: int,
) -> Iterator[tuple[int, ChunkResult]]:
    n = _n_workers(workers)
    if n == 0:
        _init_worker(make_detector, threads)
        yield from map(_work, tasks)
        return
    ctx = mp.get_context(_start_method(threads))
    with ctx.Pool(n, initializer=_init_worker, initargs=(make_detector, threads)) as pool:
        yield from pool.imap_unordered(_work, tasks)


def _start_method(threads: int) -> str:
    """``fork`` where it is safe, else ``spawn``.

    Forked workers start at once, where spawned ones import torch, torchvision and
    facenet-pytorch again (~3 s, a sixth of aligning 2,000 images on two cores). Not safe: off
    Linux, after this process has initialised CUDA (a forked child cannot use it), and with more
    than one thread per worker (OpenMP's thread pool does not survive fork; with one thread torch
    never enters it, as in PyTorch's own DataLoader workers).
    """
    import torch

    if sys.platform == "linux" and threads == 1 and not torch.cuda.is_initialized():
        return "fork"
    return "spawn"


def _n_workers(workers: int | None) -> int:
    return len(os.sched_getaffinity(0)) if workers is None else int(workers)


def _assemble(
    output_dir: Path,
    parts: Path,
    n_chunks: int,
    settings: AlignSettings,
    stamps: dict[str, Stamp | None],
    seed: int,
    shard_size: int = 0,
) -> dict:
    """Concatenate the parts in input order into the crop file(s), manifest.csv (with each
    source file's digest from ``stamps``) and contact sheets."""
    n_rows = 0
    for i in range(n_chunks):  # count from the small rows record, not by reading the crops
        with np.load(_part_path(parts, i)) as z:
            n_rows += sum(r["status"] != "failed" for r in json.loads(str(z["rows"])))
    size = settings.size
    rows: list[dict] = []
    thumbs = []

    def blocks():
        at = 0
        for i in range(n_chunks):
            part = _load_part(parts, i)
            thumbs.extend(part.thumbs)
            for row in part.rows:
                row["image_index"] = at if row["status"] != "failed" else -1
                at += row["status"] != "failed"
                stamp = stamps[row["source"]]
                row["input_sha256"] = stamp.sha256 if stamp else ""
            rows.extend(part.rows)
            yield part.crops

    crops = blocks()
    write_images(output_dir, n_rows, (size, size, 3), crops, shard_size)
    for _ in crops:  # parts after the last crop (all failed) still have manifest rows
        pass
    write_manifest(output_dir / "manifest.csv", rows)
    write_contact_sheets(output_dir, open_images(output_dir), rows, thumbs, seed)
    counts = Counter(r["status"] for r in rows)
    reasons = Counter(r["reason"].split(":")[0] for r in rows if r["reason"])
    retries = Counter(r["detect_retry"] for r in rows if r.get("detect_retry"))
    outside = outside_stats(outside_fractions([r for r in rows if r["status"] != "failed"]))
    warning = tight_crop_warning(outside, f"the pack {output_dir}")
    if warning:
        log.warning("%s", warning)
    return {
        "complete": True,
        "n_images": n_rows,
        "image_shape": [size, size, 3],
        "counts": {s: counts.get(s, 0) for s in ("ok", "fallback", "failed")},
        "ok_fraction": round(counts.get("ok", 0) / max(len(rows), 1), 6),
        "reasons": dict(reasons.most_common()),
        "detect_retries": dict(retries.most_common()),
        "outside_fraction": outside,
        "warnings": [warning] if warning else [],
        "columns": list(MANIFEST_COLUMNS),
    }


def _key_meta(settings: AlignSettings, detector: dict, chunk_size: int) -> dict:
    """Everything but the inputs that shapes a pack (recorded in its summary). The chunk size
    is in it: chunks are the parts on disk, and they decide which images are detected together
    (padded to one size)."""
    return {
        "align_version": ALIGN_VERSION,
        "settings": asdict(settings),
        "detector": detector,
        "chunk_size": chunk_size,
        "versions": _versions(),
    }


def _resume_key(meta: dict, files: list[InputFile], stamps: dict[str, Stamp | None]) -> str:
    """:func:`_key_meta`'s ``meta`` and the inputs: their paths (relative to the input folder)
    and contents (:mod:`face_rec.utils.stamps`)."""
    h = hashlib.sha256()
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for f in files:
        h.update(f"{f.source}\0{content_key(stamps[f.source])}\n".encode())
    return h.hexdigest()[:16]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("face_rec", "torch", "torchvision", "facenet-pytorch", "numpy", "pillow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
