"""MTCNN face detection (facenet-pytorch weights) and the choice of the face a photo is about."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from facenet_pytorch import MTCNN

from face_rec.align.mtcnn import detect_faces, widen_first_layer

SELECTION_METHODS = ("center_weighted_size", "largest", "probability")


@dataclass(frozen=True)
class Face:
    """One detected face in source-image pixels: box (4,) x1 y1 x2 y2, prob, landmarks (5, 2).

    ``confident`` is False when no face in the image reached the detector's ``min_prob``.
    ``retry`` is '' when the face was found on the image as given, else the retry that found it
    (an upscaled and/or padded copy, :mod:`face_rec.align.retry`); the coordinates are always
    the source image's.
    """

    box: np.ndarray
    prob: float
    landmarks: np.ndarray
    confident: bool = True
    retry: str = ""


def choose_face(
    boxes: np.ndarray,
    probs: np.ndarray,
    image_hw: tuple[int, int],
    method: str = "center_weighted_size",
    center_weight: float = 2.0,
    min_prob: float = 0.0,
) -> int:
    """Index of the face the photo is about among ``boxes`` (N, 4), ``probs`` (N,).

    Only faces with ``probs >= min_prob`` compete, unless there are none.

    Methods:
        ``center_weighted_size``: box area minus ``center_weight`` x squared distance (px^2) of
        the box centre from the image centre (facenet-pytorch's rule): large and central wins.
        ``largest``: largest box area. ``probability``: highest detector probability.
    """
    if len(boxes) == 0:
        raise ValueError("choose_face needs at least one box")
    boxes = np.asarray(boxes, dtype=np.float64)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    if method == "largest":
        score = area
    elif method == "probability":
        score = np.asarray(probs, dtype=np.float64)
    elif method == "center_weighted_size":
        h, w = image_hw
        cx = (boxes[:, 0] + boxes[:, 2]) / 2 - w / 2
        cy = (boxes[:, 1] + boxes[:, 3]) / 2 - h / 2
        score = area - center_weight * (cx**2 + cy**2)
    else:
        raise ValueError(
            f"unknown face selection method {method!r}; use one of {SELECTION_METHODS}"
        )
    probs = np.asarray(probs, dtype=np.float64)
    if (probs >= min_prob).any():
        score = np.where(probs >= min_prob, score, -np.inf)
    return int(np.argmax(score))


class FaceDetector:
    """facenet-pytorch MTCNN with its bundled weights, returning the chosen face per image.

    ``thresholds`` are MTCNN's three stage thresholds; a face below ``min_prob`` is still
    returned (marked not ``confident``) so the caller can record it.
    The three MTCNN networks run in channels_last memory format (max-pooling on this layout is
    several times faster on CPU) through :func:`face_rec.align.mtcnn.detect_faces`,
    facenet-pytorch's cascade with batched crop resampling: the same boxes and landmarks, faster.
    """

    def __init__(
        self,
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        selection: str = "center_weighted_size",
        center_weight: float = 2.0,
        min_prob: float = 0.9,
        device: str = "cpu",
    ) -> None:
        if selection not in SELECTION_METHODS:
            raise ValueError(
                f"unknown face selection method {selection!r}; use one of {SELECTION_METHODS}"
            )
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.min_face_size = int(min_face_size)
        self.selection = selection
        self.center_weight = float(center_weight)
        self.min_prob = float(min_prob)
        self.mtcnn = MTCNN(
            min_face_size=min_face_size,
            thresholds=list(thresholds),
            factor=factor,
            device=torch.device(device),
        ).eval()
        nets = (widen_first_layer(self.mtcnn.pnet), self.mtcnn.rnet, self.mtcnn.onet)
        self.nets = [net.to(memory_format=torch.channels_last).eval() for net in nets]

    @torch.inference_mode()
    def detect(self, images: list[np.ndarray]) -> list[Face | None]:
        """Detect and choose one face in each of ``images``: (H, W, 3) uint8.

        Images of different sizes are zero-padded at the bottom and right to a common size, so
        one batch runs through MTCNN (keep their sizes close: padding costs compute). Returns one
        :class:`Face` or ``None`` (no face found) per image.
        """
        if not images:
            return []
        sizes = [img.shape[:2] for img in images]
        h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
        if min(h, w) < self.min_face_size:
            return [None] * len(images)  # MTCNN's pyramid is empty below its minimum face size
        m = self.mtcnn
        batch = torch.zeros((len(images), h, w, 3), dtype=torch.uint8)
        for k, img in enumerate(images):
            batch[k, : img.shape[0], : img.shape[1]] = torch.from_numpy(img)
        batch = batch.to(m.device)
        boxes, points = detect_faces(batch, m.min_face_size, *self.nets, m.thresholds, m.factor)
        faces: list[Face | None] = []
        for b, pts, hw in zip(boxes, points, sizes, strict=True):
            if len(b) == 0:
                faces.append(None)
                continue
            p = b[:, 4]
            k = choose_face(b[:, :4], p, hw, self.selection, self.center_weight, self.min_prob)
            box, landmarks = np.asarray(b[k, :4], np.float64), np.asarray(pts[k], np.float64)
            faces.append(Face(box, float(p[k]), landmarks, float(p[k]) >= self.min_prob))
        return faces
