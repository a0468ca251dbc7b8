"""Small and frame-filling faces are detected on upscaled / padded copies, not skipped."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from face_rec.align.detect import Face, FaceDetector
from face_rec.align.retry import (
    Retry,
    full_resolution_window,
    map_back,
    plan_retries,
    retry_image,
)
from face_rec.align.run import AlignSettings, detect_all, run_alignment
from face_rec.align.warp import ARCFACE_TEMPLATE_112
from face_rec.data.images import load_rgb
from face_rec.data.pack import read_manifest

from .test_run import _interrupting, _write

CENTRED = ARCFACE_TEMPLATE_112 - ARCFACE_TEMPLATE_112.mean(0)
PAD30 = ((30, 30), (30, 30), (0, 0))


class ContextDetector:
    """Finds the bright region (> 128) when the image's shorter side is at least
    ``min_face_size`` and the region leaves a margin of 10% of the image on every side (a real
    detector needs context around a face). Landmarks: the template, centred on the region's
    centre and scaled to its width."""

    def __init__(self, min_face_size: int = 40) -> None:
        self.min_face_size = min_face_size
        self.seen: list[tuple[int, int]] = []

    def detect(self, images):
        return [self._one(img) for img in images]

    def _one(self, img):
        self.seen.append(img.shape[:2])
        h, w = img.shape[:2]
        ys, xs = np.nonzero(img[..., 0] > 128)
        if min(h, w) < self.min_face_size or not len(xs):
            return None
        x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
        if min(x0, y0, w - 1 - x1, h - 1 - y1) < 0.1 * min(h, w):
            return None
        centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        side = x1 - x0 + 1
        box = np.array([x0 - 0.5, y0 - 0.5, x1 + 0.5, y1 + 0.5])
        return Face(box, 0.99, centre + CENTRED * side / 112)


def _expected(h: int, w: int) -> np.ndarray:
    """The landmarks ContextDetector reports for a bright (h, w) image, in its own pixels."""
    return np.array([(w - 1) / 2, (h - 1) / 2]) + CENTRED * w / 112


def test_plan_retries():
    assert [r.label for r in plan_retries((23, 28), 40, 2.0, 0.25)] == [
        "upscale x4",
        "upscale x4 + pad 0.25",
    ]
    r = plan_retries((23, 28), 40, 2.0, 0.25)[1]
    assert r.scale == 4 and r.pad == (23, 28)  # 0.25 x (92, 112)
    assert [r.label for r in plan_retries((250, 250), 40, 2.0, 0.25)] == ["pad 0.25"]
    assert plan_retries((23, 28), None, 2.0, 0.25)[0].scale == 1  # unknown min size: no upscale
    assert plan_retries((23, 28), 40, 0.0, 0.0) == []
    assert plan_retries((10, 900), 40, 2.0, 0.0) == []  # x8 would exceed max_side: no upscale


@pytest.mark.parametrize("border", ["constant", "replicate", "reflect"])
def test_retry_copy_and_exact_mapping_back(border):
    """A dot drawn at a known point of the source is found at the point the mapping predicts."""
    h, w, s, pad = 21, 17, 3, (5, 4)
    ys, xs = np.mgrid[0:h, 0:w]
    src_xy = np.array([8.3, 11.6])
    blob = np.exp(-((xs - src_xy[0]) ** 2 + (ys - src_xy[1]) ** 2) / (2 * 2.0**2))
    image = np.repeat((blob * 250).astype(np.uint8)[..., None], 3, 2)
    copy = retry_image(image, Retry(s, pad, "t"), border)
    assert copy.shape == (h * s + 2 * pad[0], w * s + 2 * pad[1], 3)
    weight = copy[..., 0].astype(float)
    weight[weight < 5] = 0
    cy, cx = np.mgrid[0 : copy.shape[0], 0 : copy.shape[1]]
    found = np.array([(cx * weight).sum(), (cy * weight).sum()]) / weight.sum()
    face = Face(np.r_[found, found], 0.99, np.tile(found, (5, 1)))
    back = map_back(face, Retry(s, pad, "t"))
    np.testing.assert_allclose(back.landmarks[0], src_xy, atol=0.05)
    assert back.retry == "t"


def test_a_small_image_is_found_upscaled_and_a_frame_filling_one_padded():
    # black padding: the synthetic 'face' is a uniform bright region (replicated, it fills the
    # padding too, as a real face's edge pixels do not)
    settings = AlignSettings(retry_border="constant")
    tiny = np.full((12, 10, 3), 200, np.uint8)  # below min_face_size, and fills its frame
    frame = np.full((90, 70, 3), 200, np.uint8)  # big enough, but no context
    wide = np.pad(frame, PAD30)  # found as given
    det = ContextDetector(40)
    faces = detect_all([tiny, frame, wide, None], det, settings)
    assert faces[3] is None
    assert faces[0].retry == "upscale x8 + pad 0.25"  # x8: 80 px = 2 x 40
    assert faces[1].retry == "upscale x2 + pad 0.25"  # 70 < 80: upscaled too
    assert faces[2].retry == ""
    np.testing.assert_allclose(faces[0].landmarks, _expected(12, 10), atol=1e-9)
    np.testing.assert_allclose(faces[1].landmarks, _expected(90, 70), atol=1e-9)
    np.testing.assert_allclose(faces[2].landmarks, _expected(90, 70) + 30, atol=1e-9)
    np.testing.assert_allclose(faces[0].box, [-0.5, -0.5, 9.5, 11.5], atol=1e-9)
    # the image found as given is detected once; the other two once per stage until found
    assert det.seen.count(wide.shape[:2]) == 1
    assert sorted(det.seen) == sorted(
        [(12, 10), (90, 70), (150, 130), (96, 80), (180, 140), (144, 120), (270, 210)]
    )
    off = AlignSettings(retry_upscale=0, retry_pad=0, retry_border="constant")
    assert detect_all([tiny, frame], ContextDetector(40), off) == [None, None]


def test_an_image_found_at_first_try_is_detected_once():
    det = ContextDetector(40)
    wide = np.pad(np.full((90, 70, 3), 200, np.uint8), PAD30)
    big = np.pad(np.full((900, 700, 3), 200, np.uint8), ((300, 300), (300, 300), (0, 0)))
    faces = detect_all([wide, big], det, AlignSettings(max_detect_side=1024))
    assert [f.retry for f in faces] == ["", ""]
    assert sorted(det.seen) == sorted([(150, 130), (750, 650)])  # big: reduced by 2, once


def test_a_detector_without_a_declared_min_face_size_is_not_retried():
    class Undeclared(ContextDetector):
        def __init__(self) -> None:
            super().__init__(40)
            del self.min_face_size

        def _one(self, img):
            self.seen.append(img.shape[:2])
            return None

    det = Undeclared()
    assert detect_all([np.full((12, 10, 3), 200, np.uint8)], det, AlignSettings()) == [None]
    assert det.seen == [(12, 10)]  # one call: the image as given


def test_the_manifest_says_which_retry_found_the_face(tmp_path):
    root = tmp_path / "in"
    _write(root / "a" / "tiny.png", np.full((12, 10, 3), 200, np.uint8))
    _write(root / "a" / "wide.png", np.pad(np.full((90, 70, 3), 200, np.uint8), PAD30))
    _write(root / "b" / "dark.png", np.zeros((60, 60, 3), np.uint8))
    settings = AlignSettings(retry_border="constant")
    make = functools.partial(ContextDetector, 40)
    summary = run_alignment(root, tmp_path / "pack", make, settings, workers=0)
    rows = {r["source"]: r for r in read_manifest(tmp_path / "pack" / "manifest.csv")}
    assert rows["a/tiny.png"]["status"] == "ok"
    assert rows["a/tiny.png"]["detect_retry"] == "upscale x8 + pad 0.25"
    assert rows["a/wide.png"]["status"] == "ok" and rows["a/wide.png"]["detect_retry"] == ""
    assert rows["b/dark.png"]["status"] == "fallback"  # retried, nothing found: falls back
    assert summary["detect_retries"] == {"upscale x8 + pad 0.25": 1}


class SizeDetector(ContextDetector):
    """ContextDetector that also needs the bright region to be ``min_face_size`` px wide (a
    face that small in a reduced image is missed), and records each batch's size."""

    def __init__(self, min_face_size: int = 40) -> None:
        super().__init__(min_face_size)
        self.batches: list[int] = []

    def detect(self, images):
        self.batches.append(len(images))
        return super().detect(images)

    def _one(self, img):
        face = super()._one(img)
        if face is not None and face.box[2] - face.box[0] < self.min_face_size:
            return None
        return face


def _small_face(h: int, w: int, side: int, top_left: tuple[int, int]) -> np.ndarray:
    """A dark (h, w) image with a bright ``side`` px square 'face' at ``top_left`` (y, x)."""
    img = np.full((h, w, 3), 20, np.uint8)
    y, x = top_left
    img[y : y + side, x : x + side] = 220
    return img


def test_a_small_face_in_a_reduced_image_is_found_at_full_resolution():
    """3000 x 2200 px, reduced 3x for detection (max_detect_side 1024): the 60 px face is 20 px
    there, below min_face_size 40. The full-resolution retry finds it, before any padded copy
    of the reduced image, with the landmarks in the image's pixels exactly."""
    img = _small_face(3000, 2200, 60, (1400, 1000))
    det = SizeDetector(40)
    settings = AlignSettings(max_detect_side=1024)
    (face,) = detect_all([img], det, settings)
    assert face.retry == "full resolution" and face.confident
    assert det.seen == [(1000, 734), (3000, 2200)]  # reduced (ragged: 2200 / 3), then full
    centre = np.array([1000 + 29.5, 1400 + 29.5])
    np.testing.assert_allclose(face.landmarks, centre + CENTRED * 60 / 112, atol=1e-9)
    np.testing.assert_allclose(face.box, [999.5, 1399.5, 1059.5, 1459.5], atol=1e-9)
    # retry_upscale=0 turns it off with the upscaled copies: the padded copy of the reduced
    # image is all that is left, and it misses the face
    det = SizeDetector(40)
    off = AlignSettings(max_detect_side=1024, retry_upscale=0)
    assert detect_all([img], det, off) == [None]
    assert (3000, 2200) not in det.seen


def test_a_very_large_image_is_retried_on_its_central_window():
    """5000 x 4400 px with max_detect_side 1000: at most 4 x 1000 px each way is detected at
    full resolution, the central 4000 x 4000 window; the face is shifted back by its corner."""
    img = _small_face(5000, 4400, 80, (2300, 2500))
    det = SizeDetector(40)
    (face,) = detect_all([img], det, AlignSettings(max_detect_side=1000))
    assert face.retry == "full resolution, centre"
    assert det.seen == [(1000, 880), (4000, 4000)]  # reduced 5x, then the window
    centre = np.array([2500 + 39.5, 2300 + 39.5])
    np.testing.assert_allclose(face.landmarks, centre + CENTRED * 80 / 112, atol=1e-9)
    plan = full_resolution_window((5000, 4400), 1000)
    assert (plan.y0, plan.x0, plan.y1, plan.x1) == (500, 200, 4500, 4200)
    assert full_resolution_window((3000, 2200), 1024).label == "full resolution"


def test_full_resolution_batches_hold_about_a_first_pass_batch_of_pixels():
    """Reduced k = 2: the full-resolution images go batch_size // 4 at a time."""
    imgs = [_small_face(1500, 1500, 60, (700, 700 + i)) for i in range(5)]
    det = SizeDetector(40)
    faces = detect_all(imgs, det, AlignSettings(max_detect_side=1024, batch_size=8))
    assert all(f.retry == "full resolution" for f in faces)
    assert det.batches == [5, 2, 2, 1]  # the reduced images together, then 8 // 2^2 = 2 a time


def test_retry_settings_are_in_the_resume_key(tmp_path):
    root = tmp_path / "in"
    _write(root / "a" / "tiny.png", np.full((12, 10, 3), 200, np.uint8))
    make = functools.partial(ContextDetector, 40)
    keys = set()
    for settings in (
        AlignSettings(),
        AlignSettings(retry_upscale=3.0),
        AlignSettings(retry_pad=0.3),
        AlignSettings(retry_border="constant"),
        AlignSettings(max_detect_side=512),
    ):
        keys.add(run_alignment(root, tmp_path / "pack", make, settings, workers=0)["key"])
    assert len(keys) == 5  # each retry setting changed the key: the pack was rebuilt each time
    same = run_alignment(root, tmp_path / "pack", _interrupting(0), settings, workers=0)
    assert same["key"] in keys  # the same settings: complete, nothing detected


# ----------------------------------------------------------------------------- real faces


def _real_faces(lfw_root: Path, n: int) -> list[tuple[str, np.ndarray, Face]]:
    """The first image of the first ``n`` identities with MTCNN's face on the 250 px photo."""
    det = FaceDetector(min_face_size=40, device="cpu")
    out = []
    for ident in sorted(p for p in (lfw_root / "images").iterdir() if p.is_dir())[:n]:
        path = sorted(ident.iterdir())[0]
        img = load_rgb(path)
        out.append((path.name, img, det.detect([img])[0]))
    return out


def _iod_error(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean landmark distance in units of the true inter-ocular distance."""
    return float(np.linalg.norm(found - truth, axis=1).mean() / np.linalg.norm(truth[0] - truth[1]))


@pytest.mark.realdata
def test_a_23x28_grey_face_gets_landmarks(lfw_root, tmp_path):
    """Each face cropped to its box and shrunk to 23 x 28 px greyscale aligns (status ok, not
    fallback) with landmarks near the true ones at that scale, with LFW's min_face_size 40."""
    truths = {}
    for name, img, face in _real_faces(lfw_root, 6):
        x0, y0 = np.floor(face.box[:2]).astype(int).clip(0)
        x1, y1 = np.ceil(face.box[2:]).astype(int)
        tight = img[y0:y1, x0:x1]
        grey = Image.fromarray(tight).convert("L").resize((23, 28), Image.BILINEAR)
        _write(tmp_path / "in" / "x" / f"{name}.png", np.repeat(np.asarray(grey)[..., None], 3, 2))
        scale = np.array([23 / tight.shape[1], 28 / tight.shape[0]])
        truths[f"x/{name}.png"] = (face.landmarks - [x0, y0] + 0.5) * scale - 0.5
    make = functools.partial(FaceDetector, min_face_size=40, device="cpu")
    run_alignment(tmp_path / "in", tmp_path / "pack", make, workers=0)
    errors = []
    for row in read_manifest(tmp_path / "pack" / "manifest.csv"):
        assert row["status"] == "ok", row
        assert row["detect_retry"].startswith("upscale x4"), row
        found = np.array(row["landmarks"].split(), float).reshape(5, 2)
        errors.append(_iod_error(found, truths[row["source"]]))
    assert max(errors) < 0.35 and np.mean(errors) < 0.2, errors


@pytest.mark.realdata
def test_a_face_filling_its_frame_gets_landmarks(lfw_root):
    """Faces cropped to 0.75 x their box, which MTCNN misses as given, are found on the padded
    copy, with landmarks near the true ones."""
    det = FaceDetector(min_face_size=40, device="cpu")
    crops, truths = [], []
    for _, img, face in _real_faces(lfw_root, 10):
        centre, half = (face.box[:2] + face.box[2:]) / 2, (face.box[2:] - face.box[:2]) / 2
        x0, y0 = np.round(centre - 0.75 * half).astype(int).clip(0)
        x1, y1 = np.round(centre + 0.75 * half).astype(int)
        crop = np.ascontiguousarray(img[y0:y1, x0:x1])
        first = det.detect([crop])[0]
        if first is None or not first.confident:  # the case under test: missed as given
            crops.append(crop)
            truths.append(face.landmarks - [x0, y0])
    assert len(crops) >= 5
    settings = AlignSettings()
    assert settings.retry_border == "replicate"
    for crop, truth in zip(crops, truths, strict=True):
        face = detect_all([crop], det, settings)[0]  # alone: as checked above, not batch-padded
        assert face is not None and face.confident and "pad" in face.retry, face
        assert _iod_error(face.landmarks, truth) < 0.35


@pytest.mark.realdata
def test_a_small_real_face_in_a_large_photo_is_found_at_full_resolution(lfw_root, tmp_path):
    """An LFW photo shrunk to 150 px (a face about 60 px wide) inside a 4000 x 3000 px canvas:
    reduced 4x for detection (max_detect_side 1024) the face is about 15 px, far under LFW's
    min_face_size 40. The alignment finds it at full resolution (status ok), landmarks near
    MTCNN's on the 150 px photo alone."""
    ((_, photo, _),) = _real_faces(lfw_root, 1)
    img = np.array(Image.fromarray(photo).resize((150, 150), Image.BILINEAR))
    truth = FaceDetector(min_face_size=40, device="cpu").detect([img])[0]
    canvas = np.empty((3000, 4000, 3), np.uint8)
    canvas[:] = img.reshape(-1, 3).mean(0).astype(np.uint8)  # the photo's mean colour around it
    y, x = 1300, 1700
    canvas[y : y + img.shape[0], x : x + img.shape[1]] = img
    _write(tmp_path / "in" / "x" / "big.png", canvas, compress_level=1)
    make = functools.partial(FaceDetector, min_face_size=40, device="cpu")
    run_alignment(tmp_path / "in", tmp_path / "pack", make, workers=0)
    (row,) = read_manifest(tmp_path / "pack" / "manifest.csv")
    assert row["status"] == "ok" and row["detect_retry"] == "full resolution", row
    found = np.array(row["landmarks"].split(), float).reshape(5, 2)
    assert _iod_error(found, truth.landmarks + [x, y]) < 0.05
