import numpy as np
import pytest
from skimage.transform import SimilarityTransform, warp

from face_rec.align.warp import (
    ARCFACE_TEMPLATE_112,
    DegenerateLandmarksError,
    align_face,
    arcface_template,
    box_reduce,
    center_crop,
    umeyama_similarity,
    warp_affine,
    warp_similarity,
)


def _similarity(angle: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, shift[0]], [scale * s, scale * c, shift[1]]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def test_template_maps_to_itself():
    m = umeyama_similarity(ARCFACE_TEMPLATE_112, ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-12)


def test_template_scales_with_crop_size():
    np.testing.assert_allclose(arcface_template(224), 2 * ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(arcface_template(112)[0], [38.2946, 51.6963])


@pytest.mark.parametrize(
    "angle,scale,shift", [(0.3, 0.5, (10, -4)), (-1.2, 2.7, (-50, 80)), (np.pi - 0.1, 1.0, (0, 0))]
)
def test_known_similarity_is_recovered_exactly(angle, scale, shift):
    truth = _similarity(angle, scale, shift)
    src = ARCFACE_TEMPLATE_112
    m = umeyama_similarity(src, _apply(truth, src))
    np.testing.assert_allclose(m, truth, atol=1e-9)


def test_least_squares_fit_matches_scikit_image():
    rng = np.random.default_rng(0)
    src = ARCFACE_TEMPLATE_112 * 1.7 + rng.normal(0, 3, (5, 2)) + 40
    ref = SimilarityTransform.from_estimate(src, ARCFACE_TEMPLATE_112)
    assert ref
    np.testing.assert_allclose(
        umeyama_similarity(src, ARCFACE_TEMPLATE_112), ref.params[:2], atol=1e-9
    )


@pytest.mark.parametrize(
    "points",
    [
        np.full((5, 2), 100.0),  # all equal
        np.stack([np.arange(5.0) * 10, np.arange(5.0) * 5], 1),  # collinear
        np.stack([np.arange(5.0), np.zeros(5)], 1) + [[0, 0], [0, 0], [0, 1e-6], [0, 0], [0, 0]],
        np.where(np.eye(5, 2) > 0, np.nan, 50.0),  # NaN
    ],
)
def test_degenerate_landmarks_raise(points):
    with pytest.raises(DegenerateLandmarksError):
        umeyama_similarity(points, ARCFACE_TEMPLATE_112)


def test_bilinear_warp_matches_scikit_image():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    m = _similarity(0.4, 0.9, (20.5, -10.25))
    ours = warp_affine(image, m, 112).astype(int)
    inverse = SimilarityTransform(matrix=np.vstack([m, [0, 0, 1]])).inverse
    ref = warp(
        image,
        inverse,
        output_shape=(112, 112),
        order=1,
        mode="constant",
        cval=0,
        preserve_range=True,
    )
    inside = (
        warp(
            np.ones(image.shape[:2]),
            inverse,
            output_shape=(112, 112),
            order=1,
            mode="constant",
            cval=0,
        )
        > 0.999
    )
    assert inside.sum() > 3000
    assert np.abs(ours - np.rint(ref))[inside].max() <= 1


def test_identity_warp_returns_the_image():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    np.testing.assert_array_equal(warp_affine(image, _similarity(0, 1, (0, 0)), 112), image)
    np.testing.assert_array_equal(center_crop(image, 1.0, 112), image)


def _dot_image(h: int, w: int, xy: tuple[float, float], sigma: float) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w]
    blob = np.exp(-((xs - xy[0]) ** 2 + (ys - xy[1]) ** 2) / (2 * sigma**2))
    return np.repeat((blob * 255).astype(np.uint8)[..., None], 3, axis=2)


def _centroid(img: np.ndarray) -> np.ndarray:
    w = img[..., 0].astype(float)
    ys, xs = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    return np.array([(xs * w).sum(), (ys * w).sum()]) / w.sum()


def test_strong_downscale_keeps_geometry():
    """A 6x shrink goes through the box-filter path and still lands points where M says."""
    src_xy = (1500.3, 700.8)
    image = _dot_image(1200, 2000, src_xy, sigma=60)
    m = _similarity(0.2, 1 / 6.3, (-150, -100))
    crop = warp_similarity(image, m, 112)
    np.testing.assert_allclose(_centroid(crop), _apply(m, np.array([src_xy]))[0], atol=0.3)


def test_box_reduce_averages_blocks():
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    out = box_reduce(image, 2)
    assert out.shape == (2, 3, 3)
    np.testing.assert_allclose(out[0, 0], image[:2, :2].reshape(-1, 3).mean(0))


def test_align_face_puts_landmarks_on_the_template():
    """Dots drawn at five landmarks end at the template points after alignment."""
    truth = _similarity(-0.25, 1.8, (30, 45))
    landmarks = _apply(truth, ARCFACE_TEMPLATE_112)
    for k in range(5):
        image = _dot_image(400, 400, tuple(landmarks[k]), sigma=4)
        crop = align_face(image, landmarks, 112)
        np.testing.assert_allclose(_centroid(crop), ARCFACE_TEMPLATE_112[k], atol=0.05)
