"""Warp border modes and the outside fraction of a crop, against naive per-pixel references."""

from __future__ import annotations

import numpy as np
import pytest

from face_rec.align.detect import Face
from face_rec.align.run import AlignSettings, make_crop
from face_rec.align.warp import (
    ARCFACE_TEMPLATE_112,
    BORDER_MODES,
    alignment_matrix,
    border_index,
    box_reduce,
    center_crop_matrix,
    outside_fraction,
    outside_mask,
    reduction,
    warp_affine,
    warp_similarity,
)

NP_MODE = {"constant": "constant", "replicate": "edge", "reflect": "reflect"}


def _similarity(angle: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, shift[0]], [scale * s, scale * c, shift[1]]])


def _naive_warp(image: np.ndarray, matrix: np.ndarray, size: int, border: str) -> np.ndarray:
    """Per-pixel loop: map each output pixel centre back, read the four neighbours from the image
    padded by np.pad in the border's mode (wide enough for every sample), interpolate in float64."""
    h, w, _ = image.shape
    pad = 3 * max(h, w) + 2 * size
    padded = np.pad(image.astype(np.float64), ((pad, pad), (pad, pad), (0, 0)), NP_MODE[border])
    inv = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))
    out = np.zeros((size, size, image.shape[2]))
    for i in range(size):
        for j in range(size):
            x, y = (
                inv[0, 0] * j + inv[0, 1] * i + inv[0, 2],
                inv[1, 0] * j + inv[1, 1] * i + inv[1, 2],
            )
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            ax, ay = x - x0, y - y0
            p = padded[y0 + pad : y0 + pad + 2, x0 + pad : x0 + pad + 2]
            out[i, j] = (1 - ay) * ((1 - ax) * p[0, 0] + ax * p[0, 1]) + ay * (
                (1 - ax) * p[1, 0] + ax * p[1, 1]
            )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("border", BORDER_MODES)
@pytest.mark.parametrize(
    "matrix",
    [
        _similarity(0.3, 1.6, (30.5, 20.25)),  # image inside the crop: a wide border all round
        _similarity(-0.2, 0.7, (-5.0, 8.0)),  # partly outside
        _similarity(2.5, 3.0, (60.0, 90.0)),  # far beyond the edges: many reflections
    ],
)
def test_border_modes_match_a_naive_reference(border, matrix):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    ours = warp_affine(image, matrix, 40, border).astype(int)
    ref = _naive_warp(image, matrix, 40, border).astype(int)
    assert np.abs(ours - ref).max() <= 1  # float32 vs float64 rounding at .5
    assert (ours == ref).mean() > 0.99


def test_border_index_is_np_pad_semantics():
    """replicate = np.pad 'edge'; reflect = np.pad 'reflect' (OpenCV BORDER_REFLECT_101: the edge
    pixel is not repeated), not 'symmetric' (BORDER_REFLECT)."""
    for n in (1, 2, 5):
        line = np.arange(n)
        idx = np.arange(-3 * n - 4, 4 * n + 4)
        for border, mode in (("replicate", "edge"), ("reflect", "reflect")):
            padded = np.pad(line, (3 * n + 4, 3 * n + 4), mode)
            assert border_index(idx, n, border).tolist() == padded.tolist(), (border, n)
    assert border_index(np.array([-1, -2, 5]), 5, "reflect").tolist() == [1, 2, 3]  # d c b | a
    assert np.pad(np.arange(5), 2, "symmetric").tolist()[:2] == [1, 0]  # the other convention


def test_border_modes_fill_a_shrunk_image_as_np_pad():
    """Identity scale with a shift: the crop is exactly the np.pad-extended image."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    m = np.array([[1.0, 0, 7], [0, 1.0, 5]])  # image at rows 5..14, cols 7..18 of a 24 px crop
    for border in BORDER_MODES:
        pad = ((5, 24 - 15), (7, 24 - 19), (0, 0))
        np.testing.assert_array_equal(
            warp_affine(image, m, 24, border), np.pad(image, pad, NP_MODE[border])
        )


def test_modes_agree_inside_the_image_and_constant_is_unchanged():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    m = _similarity(0.4, 1.2, (15.0, 2.0))
    inside = ~outside_mask(image.shape[:2], m, 56)
    crops = {b: warp_affine(image, m, 56, b) for b in BORDER_MODES}
    assert inside.sum() > 500 and (~inside).sum() > 500
    for b in ("replicate", "reflect"):
        assert np.abs(crops[b].astype(int) - crops["constant"])[inside].max() <= 1
    assert (crops["constant"][~inside] < crops["replicate"][~inside]).mean() > 0.5


def test_unknown_border_names_the_value():
    with pytest.raises(ValueError, match="'mirror'"):
        warp_affine(np.zeros((4, 4, 3), np.uint8), np.eye(2, 3), 4, "mirror")
    with pytest.raises(ValueError, match="'wrap'"):
        AlignSettings(border="wrap")


def _brute_outside(image_hw, matrix, size) -> float:
    h, w = image_hw
    inv = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))
    n = 0
    for i in range(size):
        for j in range(size):
            x, y, _ = inv @ [j, i, 1.0]
            n += not (0 <= x <= w - 1 and 0 <= y <= h - 1)
    return n / size**2


@pytest.mark.parametrize(
    "hw,matrix",
    [
        ((80, 60), _similarity(0.2, 1.1, (5.0, 3.0))),
        ((30, 40), _similarity(-0.7, 1.8, (40.0, 10.0))),
        ((200, 200), _similarity(0.0, 0.9, (-20.0, -20.0))),
    ],
)
def test_outside_fraction_matches_brute_force(hw, matrix):
    assert outside_fraction(hw, matrix, 48) == pytest.approx(
        _brute_outside(hw, matrix, 48), abs=1e-12
    )


def _excess(sx: np.ndarray, sy: np.ndarray, h: int, w: int) -> np.ndarray:
    """How far (px) each sample lies beyond the pixel centres of an (h, w) image; 0 inside."""
    return np.maximum.reduce([-sx, sx - (w - 1), -sy, sy - (h - 1), np.zeros_like(sx)])


def _samples(matrix: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel loop: the source point (x, y) each crop pixel centre comes from."""
    inv = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))
    sx, sy = np.empty((size, size)), np.empty((size, size))
    for i in range(size):
        for j in range(size):
            sx[i, j], sy[i, j], _ = inv @ [j, i, 1.0]
    return sx, sy


def _check_dark_is_outside(dark: np.ndarray, mask: np.ndarray, excess: np.ndarray) -> None:
    """A constant-border warp of a white image darkens exactly the pixels whose sample lies
    outside, except those within 1/510 px of the edge (their outside weight is below 1/510, so
    255 x (1 - weight) still rounds to 255)."""
    np.testing.assert_array_equal(mask, excess > 0)
    assert not (dark & ~mask).any()
    assert excess[mask & ~dark].max(initial=0.0) <= 1 / 510 + 1e-6
    assert (dark == (excess > 1 / 510 + 1e-6))[mask].mean() > 0.99  # and the rest darken


def test_outside_fraction_is_consistent_with_the_warp():
    rng = np.random.default_rng(3)
    for _ in range(5):
        h, w = (int(v) for v in rng.integers(20, 90, 2))
        m = _similarity(rng.uniform(-1, 1), rng.uniform(0.6, 2.5), tuple(rng.uniform(-30, 60, 2)))
        white = np.full((h, w, 3), 255, np.uint8)
        dark = warp_affine(white, m, 64)[..., 0] < 255
        mask = outside_mask((h, w), m, 64)
        assert 0 < mask.mean() < 1
        _check_dark_is_outside(dark, mask, _excess(*_samples(m, 64), h, w))


def test_outside_fraction_on_the_box_reduced_path():
    """A 5x shrink of a 1003 x 803 image goes through box_reduce (ragged edges: 1003 and 803 are
    not multiples of 5); the fraction is measured where the warp samples: on the reduced image,
    ceil(1003 / 5) x ceil(803 / 5) pixels whose centre q sits at 5 q + 2 in the source."""
    image = np.full((1003, 803, 3), 255, np.uint8)
    m = _similarity(0.1, 1 / 5.2, (30.0, 40.0))
    dark = warp_similarity(image, m, 112)[..., 0] < 255
    sx, sy = _samples(m, 112)
    excess = _excess((sx - 2) / 5, (sy - 2) / 5, 201, 161)
    frac = outside_fraction(image.shape[:2], m, 112)
    assert 0.05 < frac < 0.95
    assert frac == (excess > 0).mean()
    _check_dark_is_outside(dark, excess > 0, excess)


@pytest.mark.parametrize("hw", [(225, 225), (1003, 803), (803, 1003), (1000, 800)])
def test_a_full_frame_crop_of_a_ragged_image_reads_no_border(hw):
    """The whole image shrunk to the crop (fallback_face_fraction 1 on a square image; the
    central square otherwise): nothing is outside and no edge is darkened, also when the
    size is not a multiple of the box filter's factor (225 = 2 x 112 + 1: 1.8% was outside,
    a faint black edge, when box_reduce dropped the ragged row and column)."""
    rng = np.random.default_rng(5)
    image = rng.integers(100, 200, (*hw, 3), dtype=np.uint8)
    m = center_crop_matrix(hw, 1.0, 112)
    assert reduction(hw, m)[0] > 1  # the box-reduced path
    assert outside_fraction(hw, m, 112) == 0.0
    crop = warp_similarity(image, m, 112, "constant")
    assert crop.min() >= 100  # every pixel is a mean of image pixels, none of the black border
    white = np.full((*hw, 3), 255, np.uint8)
    assert (warp_similarity(white, m, 112, "constant") == 255).all()


def test_box_reduce_replicates_the_ragged_edge():
    """Against a loop over blocks of the edge-extended image: a partial block averages its
    pixels with copies of the last row / column."""
    rng = np.random.default_rng(6)
    image = rng.integers(0, 256, (7, 11, 3), dtype=np.uint8)
    k = 3
    out = box_reduce(image, k)
    assert out.shape == (3, 4, 3)
    for q in range(3):
        for p in range(4):
            rows = [min(k * q + a, 6) for a in range(k)]
            cols = [min(k * p + b, 10) for b in range(k)]
            block = image[np.ix_(rows, cols)].astype(np.float64)
            np.testing.assert_allclose(out[q, p], block.mean((0, 1)), rtol=1e-6)
    corner = (
        image[6, 9].astype(float) + 2 * image[6, 10].astype(float)
    ) / 3  # row 6 thrice, column 10 twice
    np.testing.assert_allclose(out[2, 3], corner, rtol=1e-6)


def test_outside_fraction_zero_for_a_centred_wide_image_and_large_for_a_tight_one():
    wide = ARCFACE_TEMPLATE_112 * 1.2 + 60  # a face in the middle of a 250 px photo
    assert outside_fraction((250, 250), alignment_matrix(wide), 112) == 0.0
    assert outside_fraction((250, 250), center_crop_matrix((250, 250), 0.56), 112) == 0.0
    tight = ARCFACE_TEMPLATE_112 - 24  # the same face framed by a 64 px square around it
    frac = outside_fraction((64, 64), alignment_matrix(tight), 112)
    assert frac > 0.3
    assert frac == pytest.approx(1 - (63 / 112) ** 2, abs=0.02)  # the image is 64 px of 112


@pytest.mark.parametrize("border", BORDER_MODES)
def test_make_crop_uses_the_border_and_reports_outside(border):
    rng = np.random.default_rng(4)
    image = rng.integers(1, 256, (64, 64, 3), dtype=np.uint8)
    face = Face(np.array([0, 0, 64, 64.0]), 0.99, ARCFACE_TEMPLATE_112 - 24)
    crop = make_crop(image, face, AlignSettings(border=border))
    m = alignment_matrix(ARCFACE_TEMPLATE_112 - 24)
    np.testing.assert_array_equal(crop.image, warp_affine(image, m, 112, border))
    assert crop.reason == "" and crop.outside_fraction > 0.3
    assert ((crop.image == 0).all(-1).mean() > 0.3) == (border == "constant")
