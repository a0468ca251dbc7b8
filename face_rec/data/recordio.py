"""insightface RecordIO datasets (``train.rec`` + ``train.idx``) without MXNet.

The format, as MXNet's ``recordio`` module and dmlc-core write it:

- A record is framed as ``uint32 magic 0xCED7230A``, ``uint32 lrec`` (upper 3 bits: continuation
  flag, lower 29: payload length), the payload, zero padding to a multiple of 4. A payload that
  contains the magic word at a 4-byte-aligned offset is split there into parts (flag 1 start,
  2 middle, 3 end) and the magic word itself is dropped; the reader puts it back between parts.
- ``train.idx``: one ``key<TAB>byte offset`` line per record.
- A payload starts with the image header ``IRHeader`` (struct ``<IfQQ``: flag, label, id, id2);
  when flag > 0, flag float32 labels follow it (and the ``label`` field is unused); then the
  encoded image (JPEG for insightface's datasets).
- insightface's header record (key 0): flag > 0 and labels ``(a, b)``: images are keys 1..a-1,
  and keys a..b-1 are one record per identity whose labels ``(start, end)`` are its image keys.
  All of these are float32, exact only up to 2^24 = 16,777,216: past it (Glint360K has ~17.1M
  images) they round, and a reader that trusts them gives images the wrong identity.

:class:`RecordDataset` therefore takes each image's label from its own image header (as
insightface's dataset class does) and ignores the header and identity records: it reads the
first bytes of every record once and caches the result beside the .idx. It reads images lazily
(index in memory, one file handle per loader worker, JPEG decoded in the worker).
:func:`write_records` converts a face_rec pack or a folder of aligned crops into one.
"""

from __future__ import annotations

import io
import logging
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from face_rec.utils.io import atomic_path

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_HEADER = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1
FLOAT32_EXACT = 1 << 24  # float32 holds every integer up to this one, not all past it
_PREFIX = 40  # payload bytes read per record to get its label: IRHeader + up to 4 floats
_PROGRESS_OVER = 100_000  # records; a label scan this long shows a progress bar

log = logging.getLogger(__name__)


class RecordIOError(ValueError):
    """A .rec/.idx file that does not follow the format."""


@dataclass
class Header:
    flag: int
    label: float | np.ndarray
    id: int = 0
    id2: int = 0


# ------------------------------------------------------------------ framing


def frame(payload: bytes) -> bytes:
    """``payload`` as one framed record (split at aligned magic words, as dmlc-core does)."""
    out, start = bytearray(), 0
    for i in range(0, len(payload) - 3, 4):
        if payload[i : i + 4] == _MAGIC_BYTES:
            out += _part(1 if start == 0 else 2, payload[start:i])
            start = i + 4
    out += _part(0 if start == 0 else 3, payload[start:])
    out += b"\0" * (-len(payload) % 4)
    return bytes(out)


def _part(flag: int, data: bytes) -> bytes:
    return _MAGIC_BYTES + struct.pack("<I", (flag << 29) | len(data)) + data


def read_record(fh, offset: int | None = None) -> bytes:
    """The payload of the record at ``offset`` (or the current position) of an open .rec."""
    if offset is not None:
        fh.seek(offset)
    parts = []
    while True:
        at = fh.tell()
        flag, length = _part_head(fh.read(8), fh, at)
        data = fh.read(length)
        if len(data) < length:
            raise RecordIOError(f"{getattr(fh, 'name', 'record file')}: truncated record")
        if parts:
            parts.append(_MAGIC_BYTES)
        parts.append(data)
        if flag in (0, 3):
            fh.seek(-length % 4, 1)
            return b"".join(parts)
        # flags 1 and 2 carry a multiple of 4 bytes: no padding before the next part


def _part_head(head: bytes, fh, at: int) -> tuple[int, int]:
    """(continuation flag, payload length) of the part whose first bytes are ``head`` (read at
    byte ``at`` of ``fh``); an error naming the file and byte for anything but a part header."""
    name = getattr(fh, "name", "record file")
    if len(head) < 8:
        raise RecordIOError(f"{name}: truncated record header at byte {at}")
    magic, lrec = struct.unpack_from("<II", head)
    if magic != MAGIC:
        raise RecordIOError(
            f"{name}: no record at byte {at} (magic {magic:#x}, expected {MAGIC:#x}); "
            "is the .idx from this .rec?"
        )
    return lrec >> 29, lrec & _LENGTH_MASK


def pack_payload(header: Header, image: bytes) -> bytes:
    """IRHeader (+ label array when ``header.label`` is a sequence) + image bytes."""
    label = np.atleast_1d(np.asarray(header.label, np.float32))
    if np.ndim(header.label) == 0:
        return _HEADER.pack(0, float(label[0]), header.id, header.id2) + image
    return _HEADER.pack(len(label), 0.0, header.id, header.id2) + label.tobytes() + image


def unpack_payload(payload: bytes) -> tuple[Header, bytes]:
    flag, label, id_, id2 = _HEADER.unpack_from(payload)
    rest = payload[_HEADER.size :]
    if flag > 0:
        labels = np.frombuffer(rest, np.float32, flag).copy()
        return Header(flag, labels, id_, id2), rest[4 * flag :]
    return Header(flag, label, id_, id2), rest


def read_index(path: str | Path) -> dict[int, int]:
    """``train.idx``: key -> byte offset."""
    index = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0].isdigit() or not fields[1].isdigit():
            raise RecordIOError(f"{path}:{n}: expected 'key<TAB>offset', got {line!r}")
        index[int(fields[0])] = int(fields[1])
    return index


# ------------------------------------------------------------------ labels


def read_prefix(fh, offset: int, n: int) -> bytes:
    """The first ``n`` payload bytes (all of it if shorter) of the record at ``offset`` of an
    open .rec. Reads only those bytes, not the whole record (a split record: its parts up to
    them, with the magic words put back between parts)."""
    name = getattr(fh, "name", "record file")
    out, at = b"", offset
    while True:
        need = n - len(out)
        fh.seek(at)
        head = fh.read(8 + need)  # header and payload in one read: 17M records
        flag, length = _part_head(head, fh, at)
        if len(head) - 8 < min(length, need):
            raise RecordIOError(f"{name}: truncated record at byte {at}")
        out += head[8 : 8 + length]
        if flag in (0, 3):  # a whole record or the last part
            return out
        out += _MAGIC_BYTES  # a start or middle part: the payload goes on
        if len(out) >= n:
            return out[:n]
        at += 8 + length  # parts 1 and 2 carry a multiple of 4 bytes: no padding


def record_label(fh, key: int, offset: int) -> float | None:
    """The label in the image header of record ``key`` at ``offset`` of an open .rec: the
    IRHeader ``label``, or the first of its flag float32 labels when flag > 0. None for a record
    that is no image: its payload ends with the IRHeader and labels (the header record, an
    identity record). Reads the first few dozen bytes of the record only."""
    prefix = read_prefix(fh, offset, _PREFIX)
    if len(prefix) < _HEADER.size:
        raise RecordIOError(
            f"{getattr(fh, 'name', 'record file')}: record {key} (byte {offset}) has "
            f"{len(prefix)} payload bytes, fewer than the {_HEADER.size}-byte image header"
        )
    flag, label, _, _ = _HEADER.unpack_from(prefix)
    end = _HEADER.size + 4 * flag  # the image starts here
    if end >= _PREFIX:  # more labels than the prefix holds: read up to the image's first byte
        prefix = read_prefix(fh, offset, end + 1)
    if len(prefix) <= end:
        return None
    return float(np.frombuffer(prefix, np.float32, 1, _HEADER.size)[0]) if flag > 0 else label


def scan_labels(rec_path: Path, index: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Image keys (K,) int64, sorted, and their labels (K,) int64, from the image headers of
    every record in ``index``; the header and identity records are left out."""
    from tqdm import tqdm

    order = sorted(index)
    keys = np.empty(len(order), np.int64)  # arrays, not lists: 17M records stay ~270 MB
    labels = np.empty(len(order), np.int64)
    n, quiet = 0, len(order) <= _PROGRESS_OVER
    with open(rec_path, "rb", buffering=0) as fh:  # unbuffered: read a few bytes, not 8 KiB
        for key in tqdm(order, desc=f"labels of {rec_path.name}", unit="rec", disable=quiet):
            label = record_label(fh, key, index[key])
            if label is not None:
                keys[n], labels[n] = key, int(label)
                n += 1
    return keys[:n].copy(), labels[:n].copy()


def _idx_stamp(idx_path: Path) -> np.ndarray:
    st = idx_path.stat()
    return np.array([st.st_size, st.st_mtime_ns], np.int64)


def cached_labels(
    rec_path: Path, idx_path: Path, index: dict[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`scan_labels`, cached in ``<idx name>.labels.npz`` beside the .idx and reused while
    the .idx keeps its size and mtime. A folder that cannot be written to: no cache, a warning."""
    cache = idx_path.with_name(idx_path.name + ".labels.npz")
    stamp = _idx_stamp(idx_path)
    try:
        with np.load(cache) as z:
            if np.array_equal(z["idx_stamp"], stamp):
                return z["keys"], z["labels"]
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        log.warning("%s: unreadable label cache (%s); reading the image headers again", cache, e)
    keys, labels = scan_labels(rec_path, index)
    try:
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, keys=keys, labels=labels, idx_stamp=stamp)
    except OSError as e:
        log.warning("%s: cannot cache the labels (%s); they will be read again next time", cache, e)
    return keys, labels


# ------------------------------------------------------------------ dataset


class RecordDataset(Dataset):
    """An insightface ``.rec``/``.idx`` pair as a training set: item i is (uint8 (3, H, W), label).

    Each image's label is the one in its own image header (the IRHeader ``label``, or the first
    float of its label array): the header record's ``(a, b)`` and the identity records'
    ``(start, end)`` ranges are float32 and round past 2^24 records, which would mislabel images
    silently, so they are not used. The headers are read once (the first bytes of each record)
    and cached beside the .idx (:func:`cached_labels`). ``keys`` (N,): the image keys, sorted;
    ``labels`` (N,): remapped to 0..C-1 in order of the original ids; ``names`` (C,): those ids
    as text.
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        idx_path = Path(idx_path) if idx_path else self.rec_path.with_suffix(".idx")
        for p in (self.rec_path, idx_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p} not found: a RecordIO dataset needs .rec and .idx")
        self.index = read_index(idx_path)
        self._fh = None
        self.keys, raw = cached_labels(self.rec_path, idx_path, self.index)
        if not len(self.keys):
            raise RecordIOError(f"{self.rec_path}: no image records (only header/identity ones)")
        if len(self.index) > len(self.keys):
            level = logging.INFO if len(self.index) > FLOAT32_EXACT else logging.DEBUG
            msg = (
                "%s: labels from %d image headers, not the identity ranges (float32, inexact >2^24)"
            )
            log.log(level, msg, self.rec_path, len(self.keys))
        ids, self.labels = np.unique(raw, return_inverse=True)
        self.names = [str(i) for i in ids]

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def read(self, key: int) -> bytes:
        if self._fh is None:  # opened lazily: each loader worker gets its own handle
            self._fh = open(self.rec_path, "rb")  # noqa: SIM115 (kept open for random access)
        if key not in self.index:
            raise KeyError(f"{self.rec_path}: no record {key} in the index")
        return read_record(self._fh, self.index[key])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fh": None}

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        key = int(self.keys[i])
        _, data = unpack_payload(self.read(key))
        try:
            img = np.array(Image.open(io.BytesIO(data)).convert("RGB"))  # one writable copy
        except Exception as e:
            raise RecordIOError(
                f"{self.rec_path}: record {key} is not a readable image: {e}"
            ) from e
        return torch.from_numpy(img).permute(2, 0, 1), int(self.labels[i])


# ------------------------------------------------------------------ writer


def write_records(dataset: Dataset, out_rec: str | Path, quality: int = 95) -> dict:
    """Write a training set (item i: uint8 (3, H, W), label; ``labels`` (N,)), e.g. a
    :class:`~face_rec.data.train_set.TrainSet` over a pack or an
    :class:`~face_rec.data.train_set.AlignedFolder`, as insightface ``.rec``/``.idx``: JPEG at
    ``quality``, images grouped by label, with the header and identity records. Both files are
    written atomically (an interrupted conversion leaves nothing half-written). Returns counts."""
    from tqdm import tqdm

    out_rec = Path(out_rec)
    labels = np.asarray(dataset.labels, np.int64)
    order = np.argsort(labels, kind="stable")
    ids, starts = np.unique(labels[order], return_index=True)
    n, first_id = len(order), len(order) + 1
    if first_id + len(ids) > FLOAT32_EXACT:
        log.warning(
            "%s: %d records: past 2^24 the float32 header and identity ranges round, so readers "
            "that use them (insightface's own) will mislabel images; face_rec reads the image "
            "headers, which are right",
            out_rec,
            first_id + len(ids),
        )
    with (
        atomic_path(out_rec) as rec_tmp,
        atomic_path(out_rec.with_suffix(".idx")) as idx_tmp,
        open(rec_tmp, "wb") as rec,
        open(idx_tmp, "w") as idx,
    ):

        def put(key: int, payload: bytes) -> None:
            idx.write(f"{key}\t{rec.tell()}\n")
            rec.write(frame(payload))

        put(0, pack_payload(Header(2, np.array([first_id, first_id + len(ids)])), b""))
        for key, i in enumerate(tqdm(order, desc="write .rec", unit="img"), 1):
            image, label = dataset[int(i)]
            buf = io.BytesIO()
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=quality)
            put(key, pack_payload(Header(0, float(label), key), buf.getvalue()))
        bounds = [*starts, n]
        for j in range(len(ids)):
            span = np.array([bounds[j] + 1, bounds[j + 1] + 1], np.float32)
            put(first_id + j, pack_payload(Header(2, span), b""))
    return {"images": n, "identities": len(ids), "rec": str(out_rec)}


def main(argv: list[str] | None = None) -> None:
    """``python -m face_rec.data.recordio <pack dir or aligned folder> <out.rec>``"""
    import argparse

    from face_rec.data.pack import read_summary
    from face_rec.data.train_set import AlignedFolder, Source, TrainSet

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("source", type=Path, help="a face_rec pack, or <identity>/<image> crops")
    ap.add_argument("out_rec", type=Path)
    ap.add_argument("--quality", type=int, default=95)
    args = ap.parse_args(argv)
    if read_summary(args.source) is not None:
        dataset = TrainSet([Source(str(args.source))])
    elif args.source.is_dir():
        dataset = AlignedFolder(args.source)
    else:
        raise SystemExit(f"{args.source}: neither a complete face_rec pack nor a folder of crops")
    print(write_records(dataset, args.out_rec, args.quality))


if __name__ == "__main__":
    main()
