"""Pure-numpy 5-point similarity alignment onto the ArcFace template.

Coordinates are (x, y) in pixels with the centre of pixel (i, j) at (x=j, y=i), the convention of
OpenCV's ``warpAffine`` and scikit-image's ``warp``.
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


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Warp ``image`` with the forward affine ``matrix`` into a ``size`` x ``size`` crop.

    Bilinear interpolation; pixels sampled from outside the image are black.

    Args:
        image: (H, W, C) uint8 (or float).
        matrix: (2, 3) forward transform from source to crop coordinates.
        size: output side length.

    Returns:
        (size, size, C) uint8.
    """
    full = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)
    grid = np.arange(size, dtype=np.float64)
    sx = inv[0, 0] * grid[None, :] + inv[0, 1] * grid[:, None] + inv[0, 2]
    sy = inv[1, 0] * grid[None, :] + inv[1, 1] * grid[:, None] + inv[1, 2]
    return _bilinear(image, sx, sy)


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


def box_reduce(image: np.ndarray, k: int) -> np.ndarray:
    """Shrink (H, W, C) ``image`` by an integer factor ``k`` with a box filter (float32 out).

    Pixel centre q of the result sits at ``k * q + (k - 1) / 2`` in the input; a ragged bottom or
    right edge of fewer than ``k`` pixels is dropped.
    """
    h, w, c = image.shape
    hk, wk = h // k, w // k
    view = image[: hk * k, : wk * k].reshape(hk, k, wk, k, c)
    return view.mean(axis=(1, 3), dtype=np.float32)


def warp_similarity(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Warp with a similarity ``matrix`` (2, 3), box-filtering first when it shrinks by over 2x.

    Plain bilinear sampling aliases when a large face is shrunk to ``size``; reducing the source by
    ``k = floor(1 / scale)`` first keeps the remaining bilinear step at a scale in (0.5, 1].
    Returns (size, size, C) uint8.
    """
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    k = int(np.floor(1.0 / scale)) if scale > 0 else 1
    if k < 2 or min(image.shape[:2]) < 2 * k:
        return warp_affine(image, matrix, size)
    reduced = np.empty_like(matrix)
    reduced[:, :2] = matrix[:, :2] * k
    reduced[:, 2] = matrix[:, :2] @ np.full(2, (k - 1) / 2.0) + matrix[:, 2]
    return warp_affine(box_reduce(image, k), reduced, size)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Align one face: fit ``landmarks`` (5, 2) onto the ArcFace template and warp.

    Returns a (size, size, 3) uint8 crop. Raises :class:`DegenerateLandmarksError` on bad points.
    """
    matrix = umeyama_similarity(landmarks, arcface_template(size))
    return warp_similarity(image, matrix, size)


def center_crop(image: np.ndarray, face_fraction: float, size: int = 112) -> np.ndarray:
    """Fallback when no face is found: the centred square of side ``face_fraction`` x the shorter
    image side (the expected face of a centred benchmark photo), resized to ``size``.

    Returns (size, size, C) uint8.
    """
    if not 0 < face_fraction <= 1:
        raise ValueError(f"face_fraction must be in (0, 1], got {face_fraction}")
    h, w = image.shape[:2]
    side = min(h, w) * face_fraction
    scale = size / side
    # the square's outer edges map onto the crop's outer edges (-0.5 and size - 0.5)
    left, top = (w - side) / 2 - 0.5, (h - side) / 2 - 0.5
    matrix = np.array([[scale, 0.0, -left * scale - 0.5], [0.0, scale, -top * scale - 0.5]])
    return warp_similarity(image, matrix, size)
