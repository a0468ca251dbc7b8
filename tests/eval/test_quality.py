"""Pair quality and the error-versus-reject curve against hand-computed cases and a naive loop."""

from __future__ import annotations

import numpy as np
import pytest

from face_rec.eval.quality import error_vs_reject, pair_quality


def test_pair_quality_is_the_lower_image_quality_and_keeps_unknowns():
    q = np.array([3.0, 1.0, np.nan, 5.0])
    got = pair_quality(q, np.array([0, 0, 2]), np.array([1, 3, 3]))
    assert got[0] == 1.0 and got[1] == 3.0 and np.isnan(got[2])


def test_error_vs_reject_hand_case():
    # qualities 1..10; the two lowest-quality pairs are the wrong ones, plus one at quality 8
    quality = np.arange(1.0, 11.0)
    correct = np.array([0, 0, 1, 1, 1, 1, 1, 0, 1, 1], bool)
    out = error_vs_reject(correct, quality, (0.0, 0.1, 0.2, 0.5, 1.0))
    assert out["n_kept"] == [10, 9, 8, 5, 0]
    assert out["error"][:4] == pytest.approx([0.3, 2 / 9, 1 / 8, 1 / 5])
    assert out["error"][4] is None


def test_error_vs_reject_unknown_quality_is_rejected_first_and_ties_by_order():
    quality = np.array([np.nan, 2.0, 2.0, 2.0])
    correct = np.array([False, False, True, True])
    out = error_vs_reject(correct, quality, (0.25, 0.5))
    assert out["error"] == pytest.approx([1 / 3, 0.0])  # NaN first, then pair 1 (tie, first)


def test_error_vs_reject_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    n = 257
    quality = rng.normal(size=n).round(1)  # many ties
    correct = rng.random(n) < 0.8
    fractions = np.linspace(0, 0.9, 10)
    out = error_vs_reject(correct, quality, fractions)
    ranked = sorted(range(n), key=lambda i: (quality[i], i))
    for r, err in zip(fractions, out["error"], strict=True):
        kept = ranked[int(round(r * n)) :]
        assert err == pytest.approx(np.mean([not correct[i] for i in kept]))


def test_error_vs_reject_rejects_bad_input():
    with pytest.raises(ValueError, match="differ in shape"):
        error_vs_reject(np.ones(3, bool), np.ones(4))
    with pytest.raises(ValueError, match=r"reject fraction 1.5"):
        error_vs_reject(np.ones(3, bool), np.ones(3), (1.5,))
