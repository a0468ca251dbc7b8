"""Face image quality from the embedding's norm, and the error-versus-reject curve.

AdaFace and MagFace train the feature norm ||f(x)|| to grow with recognisability, so it is a
quality score; for other models it is whatever the norm happens to carry, and the curve below
shows how much. Quality here is the norm of the raw (unnormalised) embedding of the unflipped
crop, as those papers use it.

Error versus reject (the "error-versus-discard characteristic" of ISO/IEC 29794-1, as in the
MagFace and AdaFace papers): reject the fraction r of pairs of lowest pair quality (the smaller
of its two images' qualities), keep the verification decisions (thresholds) as they were, and
report the error over the pairs kept. A useful quality score makes the curve fall.
"""

from __future__ import annotations

import numpy as np

#: rejected fractions reported by default
REJECT_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)


def pair_quality(quality: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """(N,) the lower of the two images' qualities per pair; NaN where either is unknown.

    Args:
        quality: (M,) per image; left, right: (N,) image indices of each pair.
    """
    q = np.asarray(quality, dtype=np.float64)
    return np.minimum(q[left], q[right])  # NaN propagates: unknown stays unknown


def error_vs_reject(
    correct: np.ndarray, quality: np.ndarray, fractions=REJECT_FRACTIONS
) -> dict[str, list]:
    """Error over the pairs kept when the lowest-quality fraction is rejected.

    Args:
        correct: (N,) bool, the protocol's decision on each pair was right (an unscored pair is
            not correct).
        quality: (N,) pair quality; NaN (unknown, e.g. an image that could not be aligned)
            ranks lowest. Exactly ``round(r * N)`` pairs are rejected at fraction ``r``: the
            lowest qualities, ties broken by pair order.

    Returns:
        {"reject_fraction": [...], "error": [...], "n_kept": [...]}; error is None where no
        pair is kept.
    """
    correct = np.asarray(correct, dtype=bool)
    q = np.asarray(quality, dtype=np.float64)
    if correct.shape != q.shape:
        raise ValueError(f"correct {correct.shape} and quality {q.shape} differ in shape")
    order = np.lexsort((np.arange(len(q)), np.where(np.isnan(q), -np.inf, q)))
    wrong_sorted = ~correct[order]
    out = {"reject_fraction": [], "error": [], "n_kept": []}
    for r in fractions:
        if not 0 <= r <= 1:
            raise ValueError(f"reject fraction {r} must lie in [0, 1]")
        k = int(round(r * len(q)))
        kept = wrong_sorted[k:]
        out["reject_fraction"].append(float(r))
        out["n_kept"].append(int(len(kept)))
        out["error"].append(float(kept.mean()) if len(kept) else None)
    return out
