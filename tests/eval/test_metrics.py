import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from face_rec.eval import metrics as M


def _cases():
    rng = np.random.default_rng(0)
    n = 400
    labels = rng.random(n) < 0.5
    yield "random", rng.normal(labels * 1.0, 1.0), labels
    yield "ties", np.round(rng.normal(labels * 1.0, 1.0), 1), labels
    yield "all_equal", np.full(n, 0.3), labels
    yield "perfect", labels + rng.random(n) * 0.5, labels
    yield "inverted", -(labels + rng.random(n) * 0.5), labels
    yield "few", np.array([0.9, 0.1, 0.5, 0.5]), np.array([True, False, True, False])


@pytest.mark.parametrize("name,scores,labels", list(_cases()))
def test_roc_and_auc_match_scikit_learn(name, scores, labels):
    fpr, tpr, thr = M.roc(scores, labels)
    ref_fpr, ref_tpr, ref_thr = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    np.testing.assert_allclose(thr[1:], ref_thr[1:])
    assert M.auc(fpr, tpr) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_hand_computed_roc():
    # scores 0.9(+) 0.8(-) 0.7(+) 0.6(-): points (0,0) (0,.5) (.5,.5) (.5,1) (1,1)
    fpr, tpr, thr = M.roc([0.9, 0.8, 0.7, 0.6], [True, False, True, False])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    assert M.auc(fpr, tpr) == pytest.approx(0.75)
    # FNR - FPR: 1, .5, 0 at the third point -> EER exactly 0.5
    assert M.eer(fpr, tpr) == pytest.approx(0.5)
    assert M.tar_at_far(fpr, tpr, 0.0) == 0.5
    assert M.tar_at_far(fpr, tpr, 0.5) == 1.0


def test_eer_interpolates_between_roc_points():
    fpr = np.array([0.0, 0.0, 0.4, 1.0])
    tpr = np.array([0.0, 0.5, 0.9, 1.0])
    # FNR - FPR: 1, .5, -.3: crossing at t = .5/.8 between points 1 and 2 -> fpr .25
    assert M.eer(fpr, tpr) == pytest.approx(0.25)
    assert M.eer(*M.roc([1, 0], [True, False])[:2]) == 0.0


def test_eer_matches_brute_force_on_random_scores():
    rng = np.random.default_rng(3)
    labels = rng.random(2000) < 0.5
    scores = rng.normal(labels * 1.5, 1.0)
    fpr, tpr, _ = M.roc(scores, labels)
    grid = np.linspace(-5, 6, 200001)
    far = np.array([(scores[~labels] >= t).mean() for t in grid[::100]])
    frr = np.array([(scores[labels] < t).mean() for t in grid[::100]])
    k = np.argmin(np.abs(far - frr))
    assert M.eer(fpr, tpr) == pytest.approx((far[k] + frr[k]) / 2, abs=2e-3)


def test_far_support():
    assert M.far_supported(500, 1e-2) and not M.far_supported(500, 1e-3)
    assert M.far_supported(1000, 1e-3)


def test_best_threshold_hand_case():
    scores = np.array([0.1, 0.2, 0.35, 0.4, 0.8, 0.9])
    labels = np.array([False, False, True, False, True, True])
    t, acc = M.best_threshold(scores, labels)
    # thresholds in (0.2, 0.35) and (0.4, 0.8) both give 5/6; the middle-by-rank rule picks one
    assert acc == pytest.approx(5 / 6)
    assert t in (pytest.approx(0.275), pytest.approx(0.6))
    assert M.accuracy(scores, labels, t) == pytest.approx(5 / 6)


def test_best_threshold_is_optimal_against_brute_force():
    rng = np.random.default_rng(5)
    for _ in range(20):
        labels = rng.random(60) < 0.5
        scores = np.round(rng.normal(labels * 0.8, 1.0), 1)
        _, acc = M.best_threshold(scores, labels)
        brute = max(M.accuracy(scores, labels, t) for t in np.r_[-10, scores, 10])
        assert acc == pytest.approx(brute)


def test_kfold_uses_only_the_other_folds():
    """Fold 0's scores are shifted: a threshold chosen on fold 0 itself would be perfect there,
    but the protocol picks it on folds 1-2 (threshold 0.5), so fold 0 scores 50%."""
    base = np.array([0.9, 0.8, 0.2, 0.1])
    lab = np.array([True, True, False, False])
    scores = np.r_[base - 0.45, base, base]  # fold 0: 0.45 0.35 -0.25 -0.35
    labels = np.r_[lab, lab, lab]
    folds = np.repeat([0, 1, 2], 4)
    out = M.kfold_accuracy(scores, labels, folds)
    assert out["fold_accuracies"][1:] == [1.0, 1.0]
    t0 = out["thresholds"][0]
    assert 0.2 < t0 < 0.8  # chosen on folds 1-2
    expected0 = np.mean(((base - 0.45) > t0) == lab)
    assert out["fold_accuracies"][0] == pytest.approx(expected0) and expected0 < 1.0
    assert out["accuracy_mean"] == pytest.approx(np.mean(out["fold_accuracies"]))
    assert out["accuracy_std"] == pytest.approx(np.std(out["fold_accuracies"]))


def test_kfold_on_separable_data_is_perfect():
    rng = np.random.default_rng(1)
    labels = np.tile(np.r_[np.ones(30, bool), np.zeros(30, bool)], 10)
    scores = labels + rng.random(600) * 0.9
    out = M.kfold_accuracy(scores, labels, np.repeat(np.arange(10), 60))
    assert out["accuracy_mean"] == 1.0 and out["accuracy_std"] == 0.0
    assert len(out["fold_accuracies"]) == 10 and out["correct"].all()


def test_bootstrap_of_single_items_is_the_binomial_interval_and_seeded():
    rng = np.random.default_rng(2)
    correct = rng.random(1000) < 0.8
    units = np.arange(1000)
    lo, hi = M.cluster_bootstrap_ci(lambda idx: correct[idx].mean(), units, 500, seed=7)
    assert lo < correct.mean() < hi and hi - lo < 0.07
    assert (lo, hi) == M.cluster_bootstrap_ci(lambda idx: correct[idx].mean(), units, 500, seed=7)
    # binomial standard error: half-width should be ~1.96 * sqrt(p(1-p)/n) = 0.0248
    assert (hi - lo) / 2 == pytest.approx(1.96 * np.sqrt(0.8 * 0.2 / 1000), rel=0.2)


def test_cluster_bootstrap_widens_to_the_clusters_spread():
    """20 clusters of 50 identical outcomes: 20 independent draws, not 1,000."""
    cluster_acc = np.random.default_rng(3).random(20) < 0.8
    correct = np.repeat(cluster_acc, 50)
    units = np.repeat(np.arange(20), 50)
    lo, hi = M.cluster_bootstrap_ci(lambda idx: correct[idx].mean(), units, 2000, seed=1)
    p = cluster_acc.mean()
    assert (hi - lo) / 2 == pytest.approx(1.96 * np.sqrt(p * (1 - p) / 20), rel=0.25)
    plo, phi = M.cluster_bootstrap_ci(lambda idx: correct[idx].mean(), np.arange(1000), 500)
    assert phi - plo < (hi - lo) / 3


def test_cluster_bootstrap_draws_within_strata():
    strata = np.r_[np.zeros(10, int), np.ones(90, int)]
    sizes = []
    M.cluster_bootstrap_ci(
        lambda idx: sizes.append((idx < 10).sum()) or 0.0, np.arange(100), 50, strata=strata
    )
    assert set(sizes) == {10}  # each resample keeps 10 items of the small stratum


def test_kfold_over_drawn_copies_never_trains_on_its_own_copy():
    """A bootstrap over folds draws fold 0 twice: each copy is a test fold of its own, and its
    threshold is fitted on the other original folds only, not on its twin."""
    base = np.array([0.9, 0.8, 0.2, 0.1])
    lab = np.array([True, True, False, False])
    scores = np.r_[base - 0.45, base - 0.45, base, base]  # fold 0 twice, then folds 1, 2
    labels = np.tile(lab, 4)
    draws = np.repeat([0, 1, 2, 3], 4)
    source = np.repeat([0, 0, 1, 2], 4)
    out = M.kfold_accuracy(scores, labels, draws, source)
    t_other, _ = M.best_threshold(np.r_[base, base], np.r_[lab, lab])
    assert out["thresholds"][0] == out["thresholds"][1] == pytest.approx(t_other)
    assert out["fold_accuracies"][0] == pytest.approx(np.mean(((base - 0.45) > t_other) == lab))
    assert out["fold_accuracies"][0] < 1.0  # trained on its twin it would be perfect
    assert len(out["fold_accuracies"]) == 4  # the copy counts as a fold


def test_kfold_counts_unscored_pairs_as_errors():
    labels = np.tile([True, False], 10)
    scores = np.where(labels, 1.0, 0.0)
    scores[[0, 3]] = np.nan  # two unscorable pairs, in folds 0 and 1
    out = M.kfold_accuracy(scores, labels, np.repeat(np.arange(10), 2))
    assert out["fold_accuracies"][:2] == [0.5, 0.5] and out["fold_accuracies"][2:] == [1.0] * 8
    assert out["accuracy_mean"] == pytest.approx(0.9)
    assert out["accuracy_scored_only"] == 1.0
    assert not out["correct"][[0, 3]].any()


def test_std_is_insightfaces_and_sem_the_lfw_pages():
    accs = [0.99, 0.98, 1.0, 0.97, 0.99, 0.98, 0.99, 1.0, 0.96, 0.99]
    out = M.fold_spread(accs)
    assert out["accuracy_std"] == pytest.approx(np.std(accs))  # numpy default: population
    assert out["accuracy_sem"] == pytest.approx(np.std(accs, ddof=1) / np.sqrt(10))
    assert out["accuracy_sem"] < out["accuracy_std"]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="3 scores for 2 labels"):
        M.roc([1, 2, 3], [True, False])
    with pytest.raises(ValueError, match="NaN"):
        M.best_threshold([np.nan, 1.0], [True, False])
