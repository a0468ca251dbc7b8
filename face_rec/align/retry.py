"""Second chances for images the detector cannot read as given.

MTCNN finds nothing in an image whose shorter side is below its ``min_face_size`` (its image
pyramid is empty), and often misses a face that fills the whole frame (its boxes need some
context). An image without a confident face is therefore detected again on copies: first
upscaled by an integer factor when it is small (so its shorter side reaches ``upscale`` x the
detector's minimum face size), then also padded on every side by ``pad`` x its height / width,
the padding filled by its own border mode (``AlignSettings.retry_border``, detection only; the
crop is still warped with ``AlignSettings.border``). Landmarks and boxes found on a copy are
mapped back to the source image's pixels exactly: the copy's pixel centre ``v`` sits at
``(v - offset) / s`` in the source, ``offset = (s - 1) / 2 + pad_pixels`` (pixel centres at
integers, as everywhere in :mod:`face_rec.align.warp`).

A large image is detected on a box-reduced copy (``max_detect_side``), where a face that is
small in it falls below ``min_face_size`` (a 100 px face in a 4000 px photo reduced 4x is 25 px).
Before the copies above, such an image is detected again at full resolution
(:func:`full_resolution_window`): the whole image when its longer side is at most
:data:`FULL_RES_MAX_FACTOR` x ``max_detect_side``, else its central window of that side (the
face a photo is about is central; the memory of one detection stays bounded). A face found
there is shifted back by the window's corner, exactly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from face_rec.align.detect import Face
from face_rec.align.warp import NP_PAD_MODES, check_border, warp_affine

#: the full-resolution retry reads at most this x ``max_detect_side`` pixels along each side
FULL_RES_MAX_FACTOR = 4


@dataclass(frozen=True)
class Retry:
    """One copy to detect on: upscaled by ``scale``, then padded by ``pad`` (y, x) px per side."""

    scale: int
    pad: tuple[int, int]
    label: str  #: recorded in ``Face.retry`` and the manifest's ``detect_retry``


def plan_retries(
    image_hw: tuple[int, int],
    min_face_size: int | None,
    upscale: float,
    pad: float,
    max_side: int = 1024,
) -> list[Retry]:
    """The copies to try, in order, for an (H, W) image without a confident face.

    Args:
        min_face_size: the detector's smallest face (px); None: unknown, so never upscale.
        upscale: upscale when the shorter side is below ``upscale`` x ``min_face_size``, by the
            smallest integer factor that reaches it (capped so the longer side stays within
            ``max_side``); 0: never.
        pad: pad fraction per side; 0: no padded copy.
    """
    h, w = image_hw
    scale = 1
    if min_face_size and upscale > 0 and min(h, w) < upscale * min_face_size:
        scale = min(math.ceil(upscale * min_face_size / min(h, w)), max(max_side // max(h, w), 1))
    plans = []
    if scale > 1:
        plans.append(Retry(scale, (0, 0), f"upscale x{scale}"))
    if pad > 0:
        py, px = round(pad * h * scale), round(pad * w * scale)
        prefix = f"upscale x{scale} + " if scale > 1 else ""
        plans.append(Retry(scale, (py, px), f"{prefix}pad {pad:g}"))
    return plans


def retry_image(image: np.ndarray, retry: Retry, border: str = "constant") -> np.ndarray:
    """The copy of (H, W, 3) uint8 ``image`` that ``retry`` describes: bilinear upscale (edge
    pixels replicated, so the image itself gains no dark rim), then padding by ``border``.
    Returns (H * s + 2 pad_y, W * s + 2 pad_x, 3) uint8."""
    check_border(border)
    h, w = image.shape[:2]
    s = retry.scale
    if s > 1:
        c = (s - 1) / 2.0
        image = warp_affine(
            image, np.array([[s, 0, c], [0, s, c]], float), (h * s, w * s), "replicate"
        )
    py, px = retry.pad
    if py or px:
        image = np.pad(image, ((py, py), (px, px), (0, 0)), mode=NP_PAD_MODES[border])
    return image


def map_back(face: Face | str | None, retry: Retry) -> Face | str | None:
    """A face found on the ``retry`` copy, in the source image's pixels, labelled with it."""
    if not isinstance(face, Face):
        return face
    s = retry.scale
    offset = np.array([retry.pad[1], retry.pad[0]], float) + (s - 1) / 2.0
    landmarks = (np.asarray(face.landmarks, float) - offset) / s
    box = (np.asarray(face.box, float) - np.tile(offset, 2)) / s
    return dataclasses.replace(face, box=box, landmarks=landmarks, retry=retry.label)


def needs_retry(face: Face | str | None) -> bool:
    """No face, or only a low-confidence one (a detector error is not retried)."""
    return face is None or (isinstance(face, Face) and not face.confident)


def better(new: Face | str | None, old: Face | str | None) -> bool:
    """Whether a retry's ``new`` result replaces ``old``: a confident face always; a
    low-confidence one only where there was none."""
    if not isinstance(new, Face):
        return False
    return new.confident or old is None


@dataclass(frozen=True)
class Window:
    """The part of a source image detected at full resolution: rows ``y0:y1``, columns
    ``x0:x1``."""

    y0: int
    x0: int
    y1: int
    x1: int
    label: str  #: recorded in ``Face.retry`` and the manifest's ``detect_retry``


def full_resolution_window(
    image_hw: tuple[int, int], max_detect_side: int, max_factor: int = FULL_RES_MAX_FACTOR
) -> Window:
    """The full-resolution retry of an (H, W) image reduced for detection: the whole image
    (label ``full resolution``) when both sides are within ``max_factor`` x
    ``max_detect_side``, else its central window of at most that side each way (label
    ``full resolution, centre``)."""
    h, w = (int(v) for v in image_hw)
    cap = int(max_factor * max_detect_side)
    wh, ww = min(h, cap), min(w, cap)
    y0, x0 = (h - wh) // 2, (w - ww) // 2
    label = "full resolution" if (wh, ww) == (h, w) else "full resolution, centre"
    return Window(y0, x0, y0 + wh, x0 + ww, label)


def window_image(image: np.ndarray, window: Window) -> np.ndarray:
    """The (y1 - y0, x1 - x0, C) part of (H, W, C) ``image`` that ``window`` names (a view)."""
    return image[window.y0 : window.y1, window.x0 : window.x1]


def map_back_window(face: Face | str | None, window: Window) -> Face | str | None:
    """A face found on ``window``'s part of an image, in the image's pixels, labelled with it."""
    if not isinstance(face, Face):
        return face
    corner = np.array([window.x0, window.y0], float)
    landmarks = np.asarray(face.landmarks, float) + corner
    box = np.asarray(face.box, float) + np.tile(corner, 2)
    return dataclasses.replace(face, box=box, landmarks=landmarks, retry=window.label)
