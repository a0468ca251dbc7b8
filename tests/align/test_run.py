"""The alignment job on synthetic input: bad files, statuses, ordering, resume, atomicity."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from face_rec.align.detect import Face
from face_rec.align.run import ALIGN_VERSION, AlignSettings, run_alignment
from face_rec.align.warp import ARCFACE_TEMPLATE_112
from face_rec.data.pack import IncompletePackError, PackedFaces, read_manifest, read_summary

from ..conftest import checks_later


class FakeDetector:
    """Finds a 'face' (template x 1.5 + 20 px) in images of 32+ px brighter than 100 on average."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls = 0
        self.fail_after = fail_after

    def detect(self, images):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        lm = ARCFACE_TEMPLATE_112 * 1.5 + 20
        return [
            Face(np.array([20, 20, 200, 200.0]), 0.99, lm)
            if img.mean() > 100 and min(img.shape[:2]) >= 32
            else None
            for img in images
        ]


def _write(path, array, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)


def _tree(root, n_ids=5, per_id=4, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n_ids):
        for j in range(per_id):
            base = 150 if (i + j) % 3 else 40  # some bright ('face'), some dark ('no face')
            img = np.clip(rng.normal(base, 30, (240, 240, 3)), 0, 255).astype(np.uint8)
            _write(root / f"id{i:02d}" / f"img{j}.png", img)
    return root


def test_bad_inputs_are_reported_and_never_stop_the_job(tmp_path):
    root = tmp_path / "in"
    rng = np.random.default_rng(0)
    bright = np.clip(rng.normal(160, 20, (200, 180, 3)), 0, 255).astype(np.uint8)
    _write(root / "a" / "good.jpg", bright)
    (root / "a" / "zero.jpg").write_bytes(b"")
    full = (root / "a" / "good.jpg").read_bytes()
    (root / "a" / "truncated.jpg").write_bytes(full[: len(full) // 3])
    (root / "a" / "text.jpg").write_text("this is not a jpeg\n")
    _write(root / "b" / "tiny.png", bright[:8, :8])
    _write(root / "b" / "grey.pgm", bright[..., 0])
    _write(root / "b" / "rgba.png", np.dstack([bright, np.full(bright.shape[:2], 128, np.uint8)]))
    Image.fromarray(bright).convert("CMYK").save(root / "b" / "cmyk.jpg")
    Image.fromarray(bright).convert("P").save(root / "b" / "palette.bmp")
    Image.fromarray(bright).save(root / "b" / "photo.webp")
    Image.fromarray(bright[..., 0].astype(np.uint16) * 200).save(root / "b" / "deep16.png")
    _write(root / "Zoë Saldaña" / "née 01.jpg", bright)
    (root / "b" / "notes.txt").write_text("not an image")
    (root / "empty_id").mkdir()
    (root / "stray.jpg").write_bytes(full)

    summary = run_alignment(root, tmp_path / "pack", FakeDetector, workers=0, chunk_size=4)
    rows = {r["source"]: r for r in read_manifest(tmp_path / "pack" / "manifest.csv")}
    status = {k: v["status"] for k, v in rows.items()}
    assert status["a/zero.jpg"] == "failed" and "empty" in rows["a/zero.jpg"]["reason"]
    assert (
        status["a/truncated.jpg"] == "failed" and "truncated" in rows["a/truncated.jpg"]["reason"]
    )
    assert status["a/text.jpg"] == "failed" and "cannot decode" in rows["a/text.jpg"]["reason"]
    assert status["b/tiny.png"] == "fallback"
    for name in ("grey.pgm", "rgba.png", "cmyk.jpg", "palette.bmp", "photo.webp", "deep16.png"):
        assert status[f"b/{name}"] == "ok", (name, rows[f"b/{name}"]["reason"])
    assert status["Zoë Saldaña/née 01.jpg"] == "ok"
    assert summary["counts"] == {"ok": 8, "fallback": 1, "failed": 3}
    assert summary["empty_identities"] == ["empty_id"]
    assert set(summary["ignored_files"]) == {"b/notes.txt", "stray.jpg"}
    images = np.load(tmp_path / "pack" / "images.npy", mmap_mode="r")
    assert images.shape == (9, 112, 112, 3) and images.dtype == np.uint8
    assert sorted(r["image_index"] for r in rows.values()) == [-1, -1, -1, *range(9)]


def test_manifest_order_labels_and_columns(tmp_path):
    root = _tree(tmp_path / "in", n_ids=3, per_id=3)
    run_alignment(root, tmp_path / "pack", FakeDetector, workers=0, chunk_size=2)
    with open(tmp_path / "pack" / "manifest.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        required = {
            "source",
            "identity",
            "label",
            "status",
            "image_index",
            "det_prob",
            "landmarks",
            "reason",
        }
        assert required <= set(reader.fieldnames)
        rows = list(reader)
    assert [r["source"] for r in rows] == sorted(r["source"] for r in rows)
    assert [int(r["label"]) for r in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok[0]["landmarks"].split()) == 10
    np.testing.assert_allclose(
        np.array(ok[0]["landmarks"].split(), float).reshape(5, 2),
        ARCFACE_TEMPLATE_112 * 1.5 + 20,
        atol=1e-3,
    )
    assert all(r["reason"] == "no face detected" for r in rows if r["status"] == "fallback")


def _interrupting(calls):
    def make():
        return FakeDetector(fail_after=calls)

    return make


def test_interrupted_job_resumes_to_the_identical_pack(tmp_path):
    root = _tree(tmp_path / "in", n_ids=6, per_id=5)
    run_alignment(root, tmp_path / "whole", FakeDetector, workers=0, chunk_size=4)

    with pytest.raises(KeyboardInterrupt):
        run_alignment(root, tmp_path / "resumed", _interrupting(7), workers=0, chunk_size=4)
    assert read_summary(tmp_path / "resumed") is None
    with pytest.raises(IncompletePackError, match="align.py"):
        PackedFaces(tmp_path / "resumed")
    done = len(list((tmp_path / "resumed" / ".parts").glob("*.npz")))
    assert 0 < done < 8

    summary = run_alignment(root, tmp_path / "resumed", FakeDetector, workers=0, chunk_size=4)
    assert summary["this_run"]["resumed_images"] == done * 4
    for name in ("images.npy", "manifest.csv"):
        assert (tmp_path / "whole" / name).read_bytes() == (
            tmp_path / "resumed" / name
        ).read_bytes()
    assert not (tmp_path / "resumed" / ".parts").exists()


def test_resume_with_another_chunk_size_starts_over_instead_of_misreading_parts(tmp_path):
    root = _tree(tmp_path / "in", n_ids=6, per_id=5)
    run_alignment(root, tmp_path / "whole", FakeDetector, workers=0, chunk_size=3)
    with pytest.raises(KeyboardInterrupt):
        run_alignment(root, tmp_path / "resumed", _interrupting(7), workers=0, chunk_size=4)
    assert list((tmp_path / "resumed" / ".parts").glob("*.npz"))

    summary = run_alignment(root, tmp_path / "resumed", FakeDetector, workers=0, chunk_size=3)
    assert summary["this_run"]["resumed_images"] == 0
    assert summary["counts"]["ok"] + summary["counts"]["fallback"] == 30
    for name in ("images.npy", "manifest.csv"):
        assert (tmp_path / "whole" / name).read_bytes() == (
            tmp_path / "resumed" / name
        ).read_bytes()


def test_complete_pack_is_not_redone_but_new_settings_are(tmp_path):
    root = _tree(tmp_path / "in", n_ids=2, per_id=2)
    first = run_alignment(root, tmp_path / "pack", FakeDetector, workers=0)
    again = run_alignment(root, tmp_path / "pack", _interrupting(0), workers=0)  # would raise
    assert again["key"] == first["key"]
    bigger = run_alignment(
        root, tmp_path / "pack", FakeDetector, AlignSettings(size=128), workers=0
    )
    assert bigger["key"] != first["key"]
    assert np.load(tmp_path / "pack" / "images.npy").shape[1:] == (128, 128, 3)


def test_missing_input_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_alignment(tmp_path / "nowhere", tmp_path / "pack", FakeDetector, workers=0)


def test_contact_sheets_are_written(tmp_path):
    root = _tree(tmp_path / "in", n_ids=3, per_id=4)
    run_alignment(root, tmp_path / "pack", FakeDetector, workers=0)
    for name in ("sheet_random.png", "sheet_fallbacks.png"):
        with Image.open(tmp_path / "pack" / name) as im:
            assert im.width >= 112 and im.height >= 112


class FlakyDetector(FakeDetector):
    """Crashes on any batch holding a 100 x 100 image."""

    def detect(self, images):
        if any(img.shape[:2] == (100, 100) for img in images):
            raise RuntimeError("boom")
        return super().detect(images)


def test_a_detector_crash_costs_only_that_image(tmp_path):
    root = _tree(tmp_path / "in", n_ids=2, per_id=3)
    _write(root / "id00" / "odd.png", np.full((100, 100, 3), 200, np.uint8))
    summary = run_alignment(root, tmp_path / "pack", FlakyDetector, workers=0)
    rows = {r["source"]: r for r in read_manifest(tmp_path / "pack" / "manifest.csv")}
    assert rows["id00/odd.png"]["status"] == "fallback"
    assert rows["id00/odd.png"]["reason"].startswith("detector error: RuntimeError: boom")
    assert summary["counts"]["failed"] == 0
    assert sum(r["status"] == "ok" for r in rows.values()) == 4  # the others are unaffected


class CollinearDetector(FakeDetector):
    """Finds a 'face' whose five landmarks lie on one line."""

    def detect(self, images):
        line = np.stack([np.linspace(20, 100, 5), np.linspace(30, 90, 5)], 1)
        return [Face(np.array([20, 20, 200, 200.0]), 0.99, line) for _ in images]


def test_degenerate_landmarks_fall_back_with_the_reason(tmp_path):
    root = _tree(tmp_path / "in", n_ids=1, per_id=2)
    summary = run_alignment(root, tmp_path / "pack", CollinearDetector, workers=0)
    rows = read_manifest(tmp_path / "pack" / "manifest.csv")
    assert summary["counts"]["fallback"] == 2
    assert all(
        r["reason"].startswith("degenerate landmarks: landmarks are collinear") for r in rows
    )
    images = np.load(tmp_path / "pack" / "images.npy")
    assert np.isfinite(images).all() and images.std() > 0


def test_workers_are_forked_only_where_that_is_safe(monkeypatch):
    import sys

    import torch

    from face_rec.align.run import _start_method

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert _start_method(1) == "fork"
    assert _start_method(2) == "spawn"  # OpenMP's thread pool does not survive fork
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert _start_method(1) == "spawn"  # a forked child cannot use the parent's CUDA
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert _start_method(1) == "spawn"


def test_a_second_job_on_the_same_pack_waits_for_the_first_then_finds_it_complete(tmp_path):
    import fcntl
    import threading

    root = _tree(tmp_path / "in", n_ids=2, per_id=2)
    pack = tmp_path / "pack"
    pack.mkdir()
    done = {}
    with open(pack / ".lock", "w") as held:  # another job, mid-way through writing this pack
        fcntl.flock(held, fcntl.LOCK_EX)
        job = threading.Thread(
            target=lambda: done.update(s=run_alignment(root, pack, FakeDetector, workers=0))
        )
        job.start()
        job.join(timeout=1.0)
        assert job.is_alive() and not (pack / ".parts").exists()  # waiting, wrote nothing
    job.join(timeout=60)
    assert not job.is_alive() and done["s"]["n_images"] == 4
    assert read_summary(pack)["n_images"] == 4


def test_a_copy_of_the_same_files_keeps_the_pack_and_other_contents_do_not(tmp_path, monkeypatch):
    """Currency is the source files' contents: the same bytes written again (a fresh copy of
    the data: new modification times), or copied to another folder, leave the pack current
    and are read once; other bytes, a missing file or other settings do not, and
    pack_changes says which."""
    import hashlib
    import shutil

    import face_rec.utils.stamps as stamps
    from face_rec.align.run import current_pack, pack_changes, pack_rows

    root = _tree(tmp_path / "in", n_ids=2, per_id=3)
    pack = tmp_path / "pack"
    first = run_alignment(root, pack, FakeDetector, workers=0)
    for row in read_manifest(pack / "manifest.csv"):
        digest = hashlib.sha256((root / row["source"]).read_bytes()).hexdigest()[:16]
        assert row["input_sha256"] == digest
    real, read = stamps.file_digest, []
    monkeypatch.setattr(stamps, "file_digest", lambda path: read.append(path) or real(path))
    for path in sorted(root.rglob("*.png")):  # copied again: same bytes, new times
        path.write_bytes(path.read_bytes())
    checks_later(monkeypatch)  # the checks a minute later (settled, not racy)
    assert current_pack(root, pack) is not None and pack_changes(root, pack) == []
    assert len(read) == 6  # read once, then recorded with their new times
    again = run_alignment(root, pack, _interrupting(0), workers=0)  # would raise if it aligned
    assert again["key"] == first["key"] and len(read) == 6
    elsewhere = shutil.copytree(root, tmp_path / "copy")  # another folder: the same files
    assert run_alignment(elsewhere, pack, _interrupting(0), workers=0)["key"] == first["key"]
    assert current_pack(elsewhere, pack) is not None

    assert pack_changes(root, pack, AlignSettings(size=96)) == ["settings.size: pack 112, now 96"]
    assert pack_changes(root, pack, AlignSettings(retry_upscale=2)) == [  # the key's JSON: 2 != 2.0
        "settings.retry_upscale: pack 2.0, now 2"
    ]
    assert pack_changes(root, pack, chunk_size=7) == ["chunk_size: pack 128, now 7"]
    changed = root / "id01" / "img2.png"
    changed.write_bytes(changed.read_bytes() + b"\0")  # other bytes (PNG ignores the tail)
    (root / "id00" / "img0.png").unlink()
    _write(root / "id02" / "img0.png", np.full((64, 64, 3), 200, np.uint8))  # a new file
    assert current_pack(root, pack) is None
    assert pack_changes(root, pack) == [
        "1 of its 6 source files have other contents than when they were aligned",
        "1 of its 6 source files are gone",
    ]
    assert pack_changes(root, pack, scan=True)[-1] == f"1 image files under {root} are not in it"
    assert pack_changes(tmp_path / "absent", pack) == [
        f"its source folder {tmp_path / 'absent'} is absent, so its files were not checked"
    ]
    read.clear()
    rows, current = pack_rows(root, pack, required=["id00/img1.png", "not/in_it.png"])
    assert rows is not None and not current and not read  # lacks a source: nothing read
    with pytest.raises(KeyboardInterrupt):  # not current: aligned again
        run_alignment(root, pack, _interrupting(0), workers=0)


def test_a_pack_without_digests_is_not_current_and_nothing_is_read(tmp_path, monkeypatch):
    """A pack made before the manifest recorded its source files' digests (its manifest lacks
    the column, its key is another formula's) is not current, no file is read to say so, and
    pack_changes says why rather than counting every file as changed."""
    import json

    import face_rec.utils.stamps as stamps
    from face_rec.align.run import current_pack, pack_changes
    from face_rec.data.pack import LATER_COLUMNS

    root = _tree(tmp_path / "in", n_ids=2, per_id=2)
    pack = tmp_path / "pack"
    checks_later(monkeypatch)  # the checks a minute later: the stamps are recorded
    run_alignment(root, pack, FakeDetector, workers=0)
    rows = read_manifest(pack / "manifest.csv")
    columns = [c for c in rows[0] if c not in LATER_COLUMNS]
    with open(pack / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (pack / "stamps.csv").unlink()
    summary = json.loads((pack / "summary.json").read_text())
    for key in ("align_version", "chunk_size"):
        del summary[key]
    (pack / "summary.json").write_text(json.dumps(summary | {"key": "made-by-older-code"}))
    monkeypatch.setattr(stamps, "file_digest", lambda path: pytest.fail(f"read {path}"))
    assert current_pack(root, pack) is None
    assert pack_changes(root, pack) == [
        f"align_version: pack 'not recorded', now {ALIGN_VERSION}",
        "chunk_size: pack 'not recorded', now 128",
        "it records no digests of its source files (made before face_rec did)",
    ]
