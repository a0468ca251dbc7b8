"""Alignment on real LFW and celeba299 photos (skipped without FACE_REC_DATA)."""

from __future__ import annotations

import functools
import shutil

import numpy as np
import pytest
from PIL import Image

from face_rec.align.detect import FaceDetector
from face_rec.align.quality import landmark_errors, reference_crop
from face_rec.align.run import run_alignment
from face_rec.data.images import load_rgb
from face_rec.data.pack import read_manifest

pytestmark = pytest.mark.realdata
make_detector = functools.partial(FaceDetector, min_face_size=20, device="cpu")


def _sample(images_root, n_ids, per_id, dst):
    """Copy the first ``per_id`` files of the first ``n_ids`` identities (sorted) under ``dst``."""
    for ident in sorted(p for p in images_root.iterdir() if p.is_dir())[:n_ids]:
        for f in sorted(ident.iterdir())[:per_id]:
            (dst / ident.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dst / ident.name / f.name)
    return dst


@pytest.mark.parametrize("dataset,n_ids,min_face", [("lfw", 6, 40), ("celeba299", 4, 16)])
def test_real_faces_align_onto_the_template(
    dataset, n_ids, min_face, data_root, tmp_path, detector
):
    src = _sample(data_root / dataset / "images", n_ids, 2, tmp_path / "in")
    make = functools.partial(FaceDetector, min_face_size=min_face, device="cpu")
    summary = run_alignment(src, tmp_path / "pack", make, workers=0)
    assert summary["counts"]["failed"] == 0
    assert summary["counts"]["ok"] >= summary["n_inputs"] - 1
    rows = [r for r in read_manifest(tmp_path / "pack" / "manifest.csv") if r["status"] == "ok"]
    ours = np.load(tmp_path / "pack" / "images.npy")[[r["image_index"] for r in rows]]
    refs = np.stack(
        [
            reference_crop(
                load_rgb(src / r["source"]), np.array(r["landmarks"].split(), float).reshape(5, 2)
            )
            for r in rows
        ]
    )
    assert np.abs(ours.astype(int) - refs).max() <= 1
    # MTCNN's own landmark noise on 112 px crops is several px: compare with the reference warp
    err_ours, err_ref = landmark_errors(ours, detector), landmark_errors(refs, detector)
    assert not np.isnan(err_ours).any() and not np.isnan(err_ref).any()
    assert abs(err_ours.mean() - err_ref.mean()) < 0.5, (err_ours, err_ref)
    assert err_ours.mean() < 12.0, err_ours  # blurry upscaled small faces are noisier


def test_formats_and_sizes_of_a_real_face(lfw_root, tmp_path, detector):
    """The same LFW face as greyscale, RGBA, CMYK, palette, WebP, PPM and 6000x6000 aligns."""
    face = Image.open(sorted((lfw_root / "images" / "Aaron_Eckhart").iterdir())[0]).convert("RGB")
    d = tmp_path / "in" / "Aaron Eckhart é"
    d.mkdir(parents=True)
    face.save(d / "orig.jpg", quality=95)
    face.convert("L").save(d / "grey.pgm")
    face.convert("RGBA").save(d / "alpha.png")
    face.convert("CMYK").save(d / "cmyk.jpg", quality=95)
    face.convert("P").save(d / "palette.bmp")
    face.save(d / "web.webp", quality=95)
    face.save(d / "raw.ppm")
    face.resize((6000, 6000), Image.BILINEAR).save(d / "huge.jpg", quality=90)
    summary = run_alignment(tmp_path / "in", tmp_path / "pack", make_detector, workers=0)
    rows = {
        r["source"].split("/")[-1]: r for r in read_manifest(tmp_path / "pack" / "manifest.csv")
    }
    assert summary["counts"]["ok"] == 8, {k: r["reason"] for k, r in rows.items()}

    def landmarks(name, scale=1.0):
        return (np.array(rows[name]["landmarks"].split(), float).reshape(5, 2) + 0.5) * scale - 0.5

    ref = landmarks("orig.jpg")
    for name in ("grey.pgm", "alpha.png", "cmyk.jpg", "palette.bmp", "web.webp", "raw.ppm"):
        assert np.abs(landmarks(name) - ref).max() < 3.0, name
    assert np.abs(landmarks("huge.jpg", 250 / 6000) - ref).max() < 3.0
    images = np.load(tmp_path / "pack" / "images.npy")
    grey = images.astype(float).mean(-1)
    orig, huge = rows["orig.jpg"]["image_index"], rows["huge.jpg"]["image_index"]
    assert np.abs(grey[orig] - grey[huge]).mean() < 12


def test_worker_processes_give_byte_identical_packs(lfw_root, tmp_path):
    src = _sample(lfw_root / "images", 12, 2, tmp_path / "in")
    make = functools.partial(FaceDetector, min_face_size=40, device="cpu")
    run_alignment(src, tmp_path / "one", make, workers=0, chunk_size=8)
    run_alignment(src, tmp_path / "two", make, workers=2, chunk_size=8)
    assert (tmp_path / "one" / "images.npy").read_bytes() == (
        tmp_path / "two" / "images.npy"
    ).read_bytes()


def test_low_confidence_faces_are_recorded_as_fallback(lfw_root, tmp_path):
    """With min_prob above every probability the detection is kept in the manifest, status
    fallback, and the crop is the centred fallback crop."""
    src = _sample(lfw_root / "images", 1, 1, tmp_path / "in")
    make = functools.partial(FaceDetector, min_face_size=40, min_prob=1.01, device="cpu")
    summary = run_alignment(src, tmp_path / "pack", make, workers=0)
    row = read_manifest(tmp_path / "pack" / "manifest.csv")[0]
    assert summary["counts"]["fallback"] == 1
    assert row["reason"].startswith("low-confidence face") and float(row["det_prob"]) > 0.9
    assert len(row["landmarks"].split()) == 10
