"""Pure-numpy 5-point similarity alignment onto the ArcFace template.

Coordinates are (x, y) in pixels with the centre of pixel (i, j) at (x=j, y=i), the convention of
OpenCV's ``warpAffine`` and scikit-image's ``warp``.

Border modes (what a sample beyond the source image reads, :data:`BORDER_MODES`):
``constant``: zero (black); ``replicate``: the nearest edge pixel (``np.pad`` ``'edge'``, OpenCV
``BORDER_REPLICATE``); ``reflect``: mirrored about the edge pixel, which is not repeated
(``np.pad`` ``'reflect'``, OpenCV ``BORDER_REFLECT_101``, OpenCV's default border; not
``'symmetric'`` / ``BORDER_REFLECT``, which repeats the edge pixel).
"""

from __future__ import annotations

import numpy as np

#: ArcFace 112x112 template: left eye, right eye, nose, left mouth corner, right mouth corner.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


#: the border modes of the warp (see the module docstring)
BORDER_MODES = ("constant", "replicate", "reflect")
#: the ``np.pad`` mode of each border mode
NP_PAD_MODES = {"constant": "constant", "replicate": "edge", "reflect": "reflect"}


def check_border(border: str) -> str:
    """Return ``border`` if it is one of :data:`BORDER_MODES`, else raise a ValueError naming it."""
    if border not in BORDER_MODES:
        raise ValueError(
            f"unknown border mode {border!r}; use one of {', '.join(BORDER_MODES)} "
            "(align.settings.border)"
        )
    return border


class DegenerateLandmarksError(ValueError):
    """The landmarks do not determine a similarity transform (coincident or collinear points)."""


def arcface_template(size: int = 112) -> np.ndarray:
    """The ArcFace template scaled to a ``size`` x ``size`` crop. Returns (5, 2) float64."""
    if size <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    return ARCFACE_TEMPLATE_112 * (size / 112.0)


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama 1991) taking ``src`` points onto ``dst``.

    Args:
        src: (K, 2) source points, K >= 2.
        dst: (K, 2) destination points.

    Returns:
        (2, 3) float64 matrix M with ``dst ~= src @ M[:, :2].T + M[:, 2]``: a rotation, a uniform
        scale and a translation (no reflection).

    Raises:
        DegenerateLandmarksError: if ``src`` or ``dst`` has non-finite values, or its points are
            (nearly) coincident or collinear, so the fit would be meaningless.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"expected two (K, 2) arrays with K >= 2, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise DegenerateLandmarksError(f"landmarks contain NaN or inf: {src.tolist()}")
    _check_spread(src)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = (s_c**2).sum() / len(src)
    cov = d_c.T @ s_c / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rot = u @ np.diag(sign) @ vt
    scale = (sig * sign).sum() / var_s
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_d - scale * rot @ mu_s
    return matrix


def _check_spread(points: np.ndarray, rel_tol: float = 1e-3) -> None:
    """Raise if the points are coincident or lie on one line (relative to their extent)."""
    centred = points - points.mean(0)
    sv = np.linalg.svd(centred, compute_uv=False)
    if sv[0] < 1e-6:
        raise DegenerateLandmarksError(f"landmarks coincide: {points.tolist()}")
    if points.shape[0] >= 3 and sv[1] < rel_tol * sv[0]:
        raise DegenerateLandmarksError(f"landmarks are collinear: {points.tolist()}")


def warp_affine(
    image: np.ndarray,
    matrix: np.ndarray,
    size: int | tuple[int, int],
    border: str = "constant",
) -> np.ndarray:
    """Warp ``image`` with the forward affine ``matrix`` into a ``size`` x ``size`` crop.

    Bilinear interpolation; pixels sampled from outside the image read the ``border`` mode's
    values (``constant``: black).

    Args:
        image: (H, W, C) uint8 (or float).
        matrix: (2, 3) forward transform from source to crop coordinates.
        size: output side length, or the output (height, width).
        border: one of :data:`BORDER_MODES`.

    Returns:
        (size, size, C) (or (height, width, C)) uint8.
    """
    check_border(border)
    out_h, out_w = (size, size) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))
    sx, sy = source_coordinates(matrix, (out_h, out_w))
    if border == "constant":
        return _bilinear(image, sx, sy)
    return _bilinear_indexed(image, sx, sy, border)


def source_coordinates(
    matrix: np.ndarray, out_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Where each output pixel centre comes from: (sx, sy), each (out_h, out_w) float64 source
    coordinates under the inverse of the forward affine ``matrix`` (2, 3)."""
    full = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)
    gy = np.arange(out_hw[0], dtype=np.float64)[:, None]
    gx = np.arange(out_hw[1], dtype=np.float64)[None, :]
    sx = inv[0, 0] * gx + inv[0, 1] * gy + inv[0, 2]
    sy = inv[1, 0] * gx + inv[1, 1] * gy + inv[1, 2]
    return sx, sy


def _bilinear(image: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    """Sample (H, W, C) ``image`` at float coordinates, zero outside; only the part of the image
    the samples touch is copied."""
    h, w, c = image.shape
    sx = np.clip(sx, -1.0, w)  # beyond one pixel outside, every neighbour is zero anyway
    sy = np.clip(sy, -1.0, h)
    x_lo, y_lo = int(np.floor(sx.min())), int(np.floor(sy.min()))
    x_hi, y_hi = int(np.floor(sx.max())) + 1, int(np.floor(sy.max())) + 1
    # region [y_lo, y_hi] x [x_lo, x_hi] of the zero-extended image, as float32
    region = np.zeros((y_hi - y_lo + 1, x_hi - x_lo + 1, c), np.float32)
    ys, xs = slice(max(y_lo, 0), min(y_hi + 1, h)), slice(max(x_lo, 0), min(x_hi + 1, w))
    region[ys.start - y_lo : ys.stop - y_lo, xs.start - x_lo : xs.stop - x_lo] = image[ys, xs]
    fx, fy = sx - x_lo, sy - y_lo
    x0 = np.minimum(fx.astype(np.intp), region.shape[1] - 2)
    y0 = np.minimum(fy.astype(np.intp), region.shape[0] - 2)
    ax = (fx - x0).astype(np.float32)[..., None]
    ay = (fy - y0).astype(np.float32)[..., None]
    rw = region.shape[1]
    flat = region.reshape(-1, c)
    i = y0 * rw + x0
    top = flat.take(i, axis=0)
    top += ax * (flat.take(i + 1, axis=0) - top)
    bottom = flat.take(i + rw, axis=0)
    bottom += ax * (flat.take(i + rw + 1, axis=0) - bottom)
    out = top + ay * (bottom - top)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def border_index(index: np.ndarray, n: int, border: str) -> np.ndarray:
    """Map integer pixel indices (any shape, any value) into ``[0, n)`` by the border mode:
    ``replicate`` clamps, ``reflect`` mirrors about the edge pixels without repeating them
    (period ``2 n - 2``, as ``np.pad(mode='reflect')``). ``constant`` has no such map."""
    if border == "replicate" or n == 1:
        return np.clip(index, 0, n - 1)
    if border == "reflect":
        period = 2 * n - 2
        t = np.mod(index, period)
        return np.where(t >= n, period - t, t)
    raise ValueError(f"border_index has no map for border mode {border!r}")


def _bilinear_indexed(image: np.ndarray, sx: np.ndarray, sy: np.ndarray, border: str) -> np.ndarray:
    """Sample (H, W, C) ``image`` at float coordinates, each of the four neighbours read through
    :func:`border_index` (the image extended without end by ``border``)."""
    h, w, c = image.shape
    x0f, y0f = np.floor(sx), np.floor(sy)
    ax = (sx - x0f).astype(np.float32)[..., None]
    ay = (sy - y0f).astype(np.float32)[..., None]
    x0, y0 = x0f.astype(np.intp), y0f.astype(np.intp)
    xa, xb = border_index(x0, w, border), border_index(x0 + 1, w, border)
    ya, yb = border_index(y0, h, border) * w, border_index(y0 + 1, h, border) * w
    flat = image.reshape(-1, c)

    def at(i: np.ndarray) -> np.ndarray:
        return flat.take(i, axis=0).astype(np.float32)

    top = at(ya + xa)
    top += ax * (at(ya + xb) - top)
    bottom = at(yb + xa)
    bottom += ax * (at(yb + xb) - bottom)
    out = top + ay * (bottom - top)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def box_reduce(image: np.ndarray, k: int) -> np.ndarray:
    """Shrink (H, W, C) ``image`` by an integer factor ``k`` with a box filter (float32 out).

    Returns (ceil(H / k), ceil(W / k), C); pixel centre q of the result sits at
    ``k * q + (k - 1) / 2`` in the input. A ragged bottom or right edge (H or W not a multiple of
    ``k``) is first extended by replicating the last row / column (``np.pad`` ``'edge'``): the
    partial last block is kept with the image's edge colour, so the result covers the whole
    image and a crop of the whole image reads no border (dropping the partial block invented a
    dark rim there).
    """
    h, w, c = image.shape
    pad_h, pad_w = -h % k, -w % k
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    hk, wk = reduced_shape((h, w), k)
    return image.reshape(hk, k, wk, k, c).mean(axis=(1, 3), dtype=np.float32)


def reduced_shape(image_hw: tuple[int, int], k: int) -> tuple[int, int]:
    """(height, width) of :func:`box_reduce` of an (H, W) image: (ceil(H / k), ceil(W / k))."""
    return -(-int(image_hw[0]) // k), -(-int(image_hw[1]) // k)


def reduction(image_hw: tuple[int, int], matrix: np.ndarray) -> tuple[int, np.ndarray]:
    """How :func:`warp_similarity` samples: the box-filter factor ``k`` (1: none) and the
    matrix (2, 3) from the ``k``-times reduced image to the crop."""
    matrix = np.asarray(matrix, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    k = int(np.floor(1.0 / scale)) if scale > 0 else 1
    if k < 2 or min(image_hw) < 2 * k:
        return 1, matrix
    reduced = np.empty_like(matrix)
    reduced[:, :2] = matrix[:, :2] * k
    reduced[:, 2] = matrix[:, :2] @ np.full(2, (k - 1) / 2.0) + matrix[:, 2]
    return k, reduced


def warp_similarity(
    image: np.ndarray, matrix: np.ndarray, size: int, border: str = "constant"
) -> np.ndarray:
    """Warp with a similarity ``matrix`` (2, 3), box-filtering first when it shrinks by over 2x.

    Plain bilinear sampling aliases when a large face is shrunk to ``size``; reducing the source by
    ``k = floor(1 / scale)`` first keeps the remaining bilinear step at a scale in (0.5, 1].
    ``border``: one of :data:`BORDER_MODES`. Returns (size, size, C) uint8.
    """
    k, reduced = reduction(image.shape[:2], matrix)
    if k == 1:
        return warp_affine(image, matrix, size, border)
    return warp_affine(box_reduce(image, k), reduced, size, border)


def outside_mask(
    image_hw: tuple[int, int], matrix: np.ndarray, size: int | tuple[int, int]
) -> np.ndarray:
    """Output pixels whose value depends on the border mode, as :func:`warp_affine` samples.

    Each output pixel centre is mapped back through ``matrix`` (2, 3); it is inside when its
    bilinear neighbours with non-zero weight all lie in the image: ``0 <= x <= W - 1`` and
    ``0 <= y <= H - 1``. Returns (size, size) (or (height, width)) bool, True outside.
    """
    out_hw = (size, size) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))
    h, w = image_hw
    sx, sy = source_coordinates(matrix, out_hw)
    return ~((sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1))


def outside_fraction(image_hw: tuple[int, int], matrix: np.ndarray, size: int) -> float:
    """Fraction of the ``size`` x ``size`` crop :func:`warp_similarity` makes from an image of
    ``image_hw`` (H, W) with the similarity ``matrix`` (2, 3) that lies outside the image
    (:func:`outside_mask`, on the box-reduced image where the warp reduces): 0 for a crop
    wholly inside, 1 for one wholly outside. The border mode decides what fills that part.
    On the reduced path a sample within the ragged edge's replicated part (less than half a
    reduced pixel beyond the image) is inside: it reads the image's edge, as the warp does."""
    k, reduced = reduction(image_hw, matrix)
    if k > 1:
        image_hw, matrix = reduced_shape(image_hw, k), reduced
    return float(outside_mask(image_hw, matrix, size).mean())


def alignment_matrix(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The similarity (2, 3) taking ``landmarks`` (5, 2) onto the ArcFace template of a
    ``size`` crop. Raises :class:`DegenerateLandmarksError` on bad points."""
    return umeyama_similarity(landmarks, arcface_template(size))


def align_face(
    image: np.ndarray, landmarks: np.ndarray, size: int = 112, border: str = "constant"
) -> np.ndarray:
    """Align one face: fit ``landmarks`` (5, 2) onto the ArcFace template and warp.

    Returns a (size, size, 3) uint8 crop. Raises :class:`DegenerateLandmarksError` on bad points.
    """
    return warp_similarity(image, alignment_matrix(landmarks, size), size, border)


def center_crop_matrix(
    image_hw: tuple[int, int], face_fraction: float, size: int = 112
) -> np.ndarray:
    """The (2, 3) matrix of :func:`center_crop`: the centred square of side ``face_fraction`` x
    the shorter side of an ``image_hw`` (H, W) image onto the ``size`` crop."""
    if not 0 < face_fraction <= 1:
        raise ValueError(f"face_fraction must be in (0, 1], got {face_fraction}")
    h, w = image_hw
    side = min(h, w) * face_fraction
    scale = size / side
    # the square's outer edges map onto the crop's outer edges (-0.5 and size - 0.5)
    left, top = (w - side) / 2 - 0.5, (h - side) / 2 - 0.5
    return np.array([[scale, 0.0, -left * scale - 0.5], [0.0, scale, -top * scale - 0.5]])


def center_crop(
    image: np.ndarray, face_fraction: float, size: int = 112, border: str = "constant"
) -> np.ndarray:
    """Fallback when no face is found: the centred square of side ``face_fraction`` x the shorter
    image side (the expected face of a centred benchmark photo), resized to ``size``.

    Returns (size, size, C) uint8.
    """
    matrix = center_crop_matrix(image.shape[:2], face_fraction, size)
    return warp_similarity(image, matrix, size, border)
