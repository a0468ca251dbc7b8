"""insightface RecordIO: bytes built by hand per the format, framing, round trips, errors."""

from __future__ import annotations

import io
import logging
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from face_rec.data import recordio
from face_rec.data.recordio import (
    RecordDataset,
    RecordIOError,
    frame,
    read_index,
    read_record,
    write_records,
)
from face_rec.data.train_set import AlignedFolder, Source, TrainSet

from ..conftest import REPO, tiny_args

MAGIC = 0xCED7230A


def _jpeg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (value, 255 - value, 128)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _record(flag: int, data: bytes) -> bytes:
    return struct.pack("<II", MAGIC, (flag << 29) | len(data)) + data


def _whole(payload: bytes) -> bytes:
    return _record(0, payload) + b"\0" * (-len(payload) % 4)


def _split_at_8(payload: bytes) -> bytes:
    """A payload whose bytes 8..12 are the magic word, framed as MXNet does: a start part, the
    magic dropped, an end part, padding by the whole length."""
    assert payload[8:12] == struct.pack("<I", MAGIC)
    return _record(1, payload[:8]) + _record(3, payload[12:]) + b"\0" * (-len(payload) % 4)


def _write(tmp_path, records: list[bytes]):
    offsets, at = [], 0
    for r in records:
        offsets.append(at)
        at += len(r)
    (tmp_path / "train.rec").write_bytes(b"".join(records))
    (tmp_path / "train.idx").write_text("".join(f"{k}\t{o}\n" for k, o in enumerate(offsets)))
    return tmp_path / "train.rec"


def test_reads_an_insightface_file_built_by_hand(tmp_path):
    """Key 0: header (flag 2, labels [4, 6]); keys 1-3 images; keys 4-5 identity ranges."""
    images = [_jpeg(10), _jpeg(120), _jpeg(240)]
    labels = [0.0, 0.0, 1.0]
    recs = [_whole(struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<2f", 4, 6))]
    for k, (img, lab) in enumerate(zip(images, labels, strict=True), 1):
        # image 2 has id = MAGIC: its payload holds the magic word at byte 8 and is split
        payload = struct.pack("<IfQQ", 0, lab, MAGIC if k == 2 else k, 0) + img
        recs.append(_split_at_8(payload) if k == 2 else _whole(payload))
    recs.append(_whole(struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<2f", 1, 3)))
    recs.append(_whole(struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<2f", 3, 4)))
    ds = RecordDataset(_write(tmp_path, recs))
    assert len(ds) == 3 and ds.num_classes == 2 and ds.labels.tolist() == [0, 0, 1]
    for i, value in enumerate((10, 120, 240)):
        img, label = ds[i]
        assert img.shape == (3, 16, 16) and label == ds.labels[i]
        assert abs(int(img[0].float().mean()) - value) <= 2  # the right image, decoded


def test_reads_a_file_without_header_record_from_image_labels(tmp_path):
    recs = [_whole(struct.pack("<IfQQ", 1, 0.0, k, 0) + struct.pack("<f", lab) + _jpeg(50))
            for k, lab in enumerate([7.0, 3.0, 7.0])]  # fmt: skip
    ds = RecordDataset(_write(tmp_path, recs))
    assert ds.names == ["3", "7"] and ds.labels.tolist() == [1, 0, 1]


def _header(a: float, b: float) -> bytes:
    """The header record (key 0) or an identity record: flag 2, labels (a, b), no image."""
    return _whole(struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<2f", a, b))


def _shifted_ranges(tmp_path, header_shift: int = 0):
    """Images 1-4 whose headers say identities 0, 0, 1, 1; header (5, 7); identity records 5-6
    with ranges shifted by one record, as float32 rounding past 2^24 leaves them: (1, 4) and
    (4, 5) instead of (1, 3) and (3, 5). ``header_shift`` shifts the header's (a, b) as well."""
    recs = [_header(5 + header_shift, 7 + header_shift)]
    for k, lab in enumerate([0.0, 0.0, 1.0, 1.0], 1):
        recs.append(_whole(struct.pack("<IfQQ", 0, lab, k, 0) + _jpeg(60 * k)))
    # identity record 5 has id = MAGIC: split inside its IRHeader, it is still no image
    recs.append(_split_at_8(struct.pack("<IfQQ", 2, 0.0, MAGIC, 0) + struct.pack("<2f", 1, 4)))
    recs.append(_header(4, 5))
    return _write(tmp_path, recs)


@pytest.mark.parametrize("header_shift", [0, 1])
def test_labels_follow_the_image_headers_not_the_identity_ranges(tmp_path, header_shift):
    ds = RecordDataset(_shifted_ranges(tmp_path, header_shift))
    assert ds.keys.tolist() == [1, 2, 3, 4]
    assert ds.names == ["0", "1"] and ds.labels.tolist() == [0, 0, 1, 1]  # ranges: [0, 0, 0, 1]
    assert [ds[i][1] for i in range(4)] == [0, 0, 1, 1]


def test_label_arrays_longer_than_the_first_read(tmp_path):
    """flag 7: 28 bytes of labels after the IRHeader, past the 40 bytes read first."""
    labels = struct.pack("<7f", 4.0, *range(6))
    recs = [_whole(struct.pack("<IfQQ", 7, 0.0, 0, 0) + labels)]  # no image: not an item
    recs += [_whole(struct.pack("<IfQQ", 7, 0.0, k, 0) + labels + _jpeg(9)) for k in (1, 2)]
    ds = RecordDataset(_write(tmp_path, recs))
    assert ds.keys.tolist() == [1, 2] and ds.names == ["4"]


def _count_scans(monkeypatch) -> list:
    calls, scan = [], recordio.scan_labels
    monkeypatch.setattr(recordio, "scan_labels", lambda *a: calls.append(a) or scan(*a))
    return calls


def test_labels_are_cached_beside_the_idx_until_it_changes(tmp_path, monkeypatch, caplog):
    rec, idx = _shifted_ranges(tmp_path), tmp_path / "train.idx"
    cache = tmp_path / "train.idx.labels.npz"
    scans = _count_scans(monkeypatch)
    first = RecordDataset(rec)
    assert cache.is_file() and len(scans) == 1
    again = RecordDataset(rec)
    assert len(scans) == 1  # read from the cache
    assert again.keys.tolist() == first.keys.tolist() and again.labels.tolist() == [0, 0, 1, 1]
    st = idx.stat()
    os.utime(idx, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: scanned again
    RecordDataset(rec)
    assert len(scans) == 2
    recs = [_whole(struct.pack("<IfQQ", 0, lab, 0, 0) + _jpeg(9)) for lab in (3.0, 2.0, 3.0)]
    assert RecordDataset(_write(tmp_path, recs)).names == ["2", "3"]  # rewritten: new labels
    assert len(scans) == 3
    cache.write_bytes(b"not a zip")
    with caplog.at_level(logging.WARNING, "face_rec.data.recordio"):
        assert RecordDataset(rec).labels.tolist() == [1, 0, 1]
    assert "unreadable label cache" in caplog.text and len(scans) == 4


def test_a_read_only_folder_works_without_a_cache(tmp_path, monkeypatch, caplog):
    rec = _shifted_ranges(tmp_path)
    tmp_path.chmod(0o555)
    try:
        if os.access(tmp_path, os.W_OK):  # root ignores the mode: fail the rename instead

            def refuse(*_):
                raise PermissionError("read-only folder")

            monkeypatch.setattr(os, "replace", refuse)
        with caplog.at_level(logging.WARNING, "face_rec.data.recordio"):
            ds = RecordDataset(rec)
    finally:
        tmp_path.chmod(0o755)
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert "cannot cache the labels" in caplog.text and "train.idx.labels.npz" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.idx", "train.rec"]


@pytest.mark.parametrize("n", [0, 3, 4, 13, 40])
def test_framing_round_trips_payloads_with_magic_words(tmp_path, n):
    rng = np.random.default_rng(n)
    payload = bytearray(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    for at in (0, 4, 9, 16, 36):  # aligned ones split the record, unaligned ones do not
        if at + 4 <= n:
            payload[at : at + 4] = struct.pack("<I", MAGIC)
    framed = frame(bytes(payload)) + frame(b"next")
    assert len(framed) % 4 == 0
    path = tmp_path / "r.rec"
    path.write_bytes(framed)
    with open(path, "rb") as fh:
        assert read_record(fh) == bytes(payload)
        assert read_record(fh) == b"next"  # the padding was skipped exactly


def _smooth_crops(root, n_ids=3, per_id=2):
    y, x = np.mgrid[0:112, 0:112]
    for i in range(n_ids):
        (root / f"person_{i}").mkdir(parents=True)
        for j in range(per_id):
            img = np.stack([x * 2, y * 2, np.full_like(x, 40 * i + 20 * j)], -1)
            Image.fromarray(img.astype(np.uint8)).save(root / f"person_{i}" / f"{j}.png")
    return root


def test_an_aligned_folder_round_trips(tmp_path):
    folder = AlignedFolder(_smooth_crops(tmp_path / "crops"))
    out = write_records(folder, tmp_path / "rec" / "train.rec")
    assert out == {"images": 6, "identities": 3, "rec": str(tmp_path / "rec" / "train.rec")}
    ds = RecordDataset(tmp_path / "rec" / "train.rec")
    assert ds.labels.tolist() == folder.labels.tolist()
    for i in range(len(ds)):
        diff = (ds[i][0].float() - folder[i][0].float()).abs().mean()
        assert diff < 2.0  # JPEG at quality 95 of smooth images
    assert set(read_index(tmp_path / "rec" / "train.idx")) == set(range(0, 1 + 6 + 3))


def test_writing_past_float32_exact_keys_warns(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(recordio, "FLOAT32_EXACT", 9)  # 1 header + 6 images + 3 identities = 10
    with caplog.at_level(logging.WARNING, "face_rec.data.recordio"):
        write_records(AlignedFolder(_smooth_crops(tmp_path / "crops")), tmp_path / "train.rec")
    assert "10 records" in caplog.text and "insightface's own) will mislabel" in caplog.text
    assert RecordDataset(tmp_path / "train.rec").labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_errors_name_the_file_and_what_is_wrong(tmp_path):
    rec = _write(tmp_path, [_whole(struct.pack("<IfQQ", 0, 1.0, 0, 0) + _jpeg(9))])
    (tmp_path / "train.idx").write_text("0\t4\n")
    with pytest.raises(RecordIOError, match=r"no record at byte 4 .*is the \.idx from this \.rec"):
        RecordDataset(rec)
    _write(tmp_path, [_whole(b"short")])
    with pytest.raises(RecordIOError, match=r"record 0 \(byte 0\) has 5 payload bytes, fewer "):
        RecordDataset(rec)
    (tmp_path / "train.idx").write_text("0 0\n")
    with pytest.raises(RecordIOError, match=r"train.idx:1: expected 'key<TAB>offset'"):
        RecordDataset(rec)
    with pytest.raises(FileNotFoundError, match="needs .rec and .idx"):
        RecordDataset(tmp_path / "missing.rec")


def test_train_py_trains_from_a_converted_pack(tiny, tmp_path):
    convert = [sys.executable, "-m", "face_rec.data.recordio", str(tiny / "pack"),
               str(tmp_path / "tiny.rec")]  # fmt: skip
    done = subprocess.run(convert, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    args = [a for a in tiny_args(tiny) if not a.startswith("train_data.")]
    cmd = [sys.executable, "train.py", *args, "train_data=recordio",
           f"train_data.rec={tmp_path / 'tiny.rec'}", "trainer.num_workers=1",
           f"paths.log_dir={tmp_path}/logs", "run_name=rec"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (tmp_path / "logs" / "train" / "runs" / "rec" / "train.log").read_text()
    pack = TrainSet([Source(str(tiny / "pack"))])  # the converter keeps what training would use
    assert f"training on {len(pack)} images of {pack.num_classes} identities" in log
