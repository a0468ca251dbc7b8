"""Measuring alignment quality: where MTCNN finds the landmarks again on aligned crops.

MTCNN's landmark noise on 112 px crops is several pixels, so an absolute error says little; the
useful comparison is against crops made from the same landmarks by an independent reference warp
(scikit-image's ``SimilarityTransform`` and bilinear ``warp``).
"""

from __future__ import annotations

import numpy as np

from face_rec.align.detect import FaceDetector
from face_rec.align.warp import arcface_template


def landmark_errors(crops: np.ndarray, detector: FaceDetector, batch_size: int = 32) -> np.ndarray:
    """Mean distance (px) of the 5 re-detected landmarks from the template, per crop.

    Args:
        crops: (N, S, S, 3) uint8 aligned crops.
    Returns:
        (N,) float64; NaN where MTCNN finds no face on the crop.
    """
    template = arcface_template(crops.shape[1])
    out = np.full(len(crops), np.nan)
    for s in range(0, len(crops), batch_size):
        for k, face in enumerate(detector.detect(list(crops[s : s + batch_size]))):
            if face is not None:
                out[s + k] = np.linalg.norm(face.landmarks - template, axis=1).mean()
    return out


def reference_crop(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The reference alignment: scikit-image similarity fit + bilinear warp. (size, size, 3) uint8.

    Needs scikit-image (``pip install face_rec[dev]``).
    """
    from skimage.transform import SimilarityTransform, warp

    tf = SimilarityTransform.from_estimate(np.asarray(landmarks, float), arcface_template(size))
    out = warp(image, tf.inverse, output_shape=(size, size), order=1, preserve_range=True)
    return np.rint(out).astype(np.uint8)
