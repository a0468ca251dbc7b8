import numpy as np
import pytest

from face_rec.align.detect import choose_face

# a large face in the corner and a smaller one in the centre of a 250x250 image
BOXES = np.array([[0.0, 0.0, 120.0, 120.0], [95.0, 95.0, 155.0, 155.0]])
PROBS = np.array([0.90, 0.99])


def test_center_weighted_size_prefers_the_central_face():
    # scores by hand: 14400 - 2 * (65^2 + 65^2) = -2500 ; 3600 - 0 = 3600
    assert choose_face(BOXES, PROBS, (250, 250), "center_weighted_size") == 1


def test_center_weight_zero_is_largest():
    assert choose_face(BOXES, PROBS, (250, 250), "center_weighted_size", center_weight=0) == 0
    assert choose_face(BOXES, PROBS, (250, 250), "largest") == 0


def test_probability_picks_the_most_probable():
    assert choose_face(BOXES, np.array([0.999, 0.98]), (250, 250), "probability") == 0


def test_unknown_method_names_the_value():
    with pytest.raises(ValueError, match="'biggest'"):
        choose_face(BOXES, PROBS, (250, 250), "biggest")


def test_min_prob_excludes_weak_faces_unless_all_are_weak():
    probs = np.array([0.95, 0.80])  # the central face is weak: the large one wins
    assert choose_face(BOXES, probs, (250, 250), min_prob=0.9) == 0
    assert choose_face(BOXES, probs, (250, 250), min_prob=0.0) == 1
    assert choose_face(BOXES, np.array([0.5, 0.6]), (250, 250), min_prob=0.9) == 1
