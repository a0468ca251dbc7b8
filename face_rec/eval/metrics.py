"""Verification metrics: pure numpy functions, arrays in, numbers out (no I/O, no printing).

Conventions: ``scores`` (N,) float, higher = more likely the same identity; ``labels`` (N,) bool,
True for a matched pair. A pair is accepted as matched when ``score > threshold``.
"""

from __future__ import annotations

import numpy as np


def roc(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve over every distinct score: (fpr, tpr, thresholds), all (K + 1,).

    ``thresholds`` is decreasing with ``thresholds[0] = inf``; point i accepts ``score >=
    thresholds[i]``. Equals ``sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False)``.
    """
    scores, labels = _check(scores, labels)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    tpr = np.r_[0.0, tp / n_pos] if n_pos else np.full(len(tp) + 1, np.nan)
    fpr = np.r_[0.0, fp / n_neg] if n_neg else np.full(len(fp) + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, s[last_of_tie]]


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under the ROC curve by the trapezoidal rule (ties count one half)."""
    return float(np.trapezoid(tpr, fpr))


def eer(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Equal error rate: where FPR = FNR (1 - TPR), linearly interpolated between ROC points."""
    fnr = 1.0 - tpr
    diff = fnr - fpr  # decreasing along the curve, from 1 to -1
    k = int(np.argmax(diff <= 0))
    if k == 0:
        return float(fpr[0])
    d0, d1 = diff[k - 1], diff[k]
    t = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(fpr[k - 1] + t * (fpr[k] - fpr[k - 1]))


def tar_at_far(fpr: np.ndarray, tpr: np.ndarray, far: float) -> float:
    """True accept rate at false accept rate ``far``: the best TPR with FPR <= far."""
    ok = fpr <= far + 1e-12
    return float(tpr[ok].max())


def far_supported(n_negative: int, far: float) -> bool:
    """A FAR is measurable when the negatives allow at least one false accept: n_neg x far >= 1."""
    return n_negative * far >= 1 - 1e-9


def threshold_at_far(
    scores: np.ndarray, labels: np.ndarray, far: float
) -> tuple[float, float, float]:
    """The operating threshold for a target false accept rate: (threshold, far_achieved, tar).

    The operating point is the lowest of :func:`roc`'s points (accept ``score >= s`` for a
    distinct score s) whose FPR over the negatives is <= ``far``; ``far_achieved`` and ``tar``
    are its FPR and TPR. ``threshold`` is the midpoint between s and the next lower distinct
    score, so that face_rec's acceptance rule everywhere else, ``score > threshold``, selects
    exactly that point on these pairs (``score >= threshold`` does too). ``inf`` (accept
    nothing) when even the highest score's ties exceed the target. NaN scores (unscored pairs)
    are left out; with no positives ``tar`` is NaN.

    Raises:
        ValueError: the negatives cannot resolve ``far``: n_negative x far < 1 (no false
            accept is allowed at all, so the threshold would only be bounded by the data).
    """
    scores, labels = _check(scores, labels, allow_nan=True)
    scored = ~np.isnan(scores)
    scores, labels = scores[scored], labels[scored]
    n_neg = int((~labels).sum())
    if not far_supported(n_neg, far):
        raise ValueError(
            f"FAR {far:g} cannot be measured on {n_neg} scored negative pairs: that needs at "
            f"least {int(np.ceil(1 / far - 1e-9))} (n_negative x FAR >= 1); use a larger FAR or "
            "a pair list with more mismatched pairs"
        )
    fpr, tpr, thresholds = roc(scores, labels)
    k = int(np.flatnonzero(fpr <= far + 1e-12)[-1])  # fpr rises as the threshold falls
    below = thresholds[k + 1] if k + 1 < len(thresholds) else thresholds[k] - 1.0
    t = thresholds[k] if np.isinf(thresholds[k]) else (thresholds[k] + below) / 2
    return float(t), float(fpr[k]), float(tpr[k])


def accuracy(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """Fraction of pairs classified right by ``score > threshold``."""
    scores, labels = _check(scores, labels)
    return float(np.mean((scores > threshold) == labels))


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy over ``score > threshold``.

    Candidates are the midpoints between consecutive distinct scores and one value below and one
    above them all, so the choice never sits on a score. Among equally accurate thresholds the
    middle one (by rank) is taken, which keeps the margin to both classes.
    """
    scores, labels = _check(scores, labels)
    u = np.unique(scores)
    candidates = np.r_[u[0] - 1.0, (u[:-1] + u[1:]) / 2, u[-1] + 1.0]
    # accuracy at each candidate: correct = positives above it + negatives at or below it
    s_pos, s_neg = np.sort(scores[labels]), np.sort(scores[~labels])
    tp = len(s_pos) - np.searchsorted(s_pos, candidates, side="right")
    tn = np.searchsorted(s_neg, candidates, side="right")
    acc = (tp + tn) / len(scores)
    best = np.flatnonzero(acc == acc.max())
    k = best[(len(best) - 1) // 2]
    return float(candidates[k]), float(acc[k])


def kfold_accuracy(
    scores: np.ndarray, labels: np.ndarray, folds: np.ndarray, source: np.ndarray | None = None
) -> dict:
    """The LFW protocol: for each fold, the threshold maximising accuracy on the other folds
    scores the held-out fold.

    ``source`` (N,): where the folds are copies drawn by a bootstrap over folds, each item's
    original fold; a fold's threshold is then fitted on items of other original folds only (a
    fold drawn twice must not train on its own copy). Default: ``folds``.

    ``scores`` may hold NaN for pairs that could not be scored: they take no part in choosing
    thresholds and count as errors (the protocol is over every pair of the list).

    Returns dict with ``fold_accuracies`` and ``thresholds`` (lists, one per fold in fold
    order), ``accuracy_mean`` (unscored pairs wrong), ``accuracy_scored_only`` (mean over folds
    of the accuracy on their scored pairs), ``accuracy_std`` (population std of the fold
    accuracies, as insightface prints), ``accuracy_sem`` (sample std / sqrt(folds): the
    standard error the LFW results page reports) and ``correct`` ((N,) bool: each pair right
    under its fold's threshold; False where unscored).
    """
    scores, labels = _check(scores, labels, allow_nan=True)
    folds = np.asarray(folds)
    ids = np.unique(folds)
    if len(ids) < 2:
        raise ValueError(f"k-fold accuracy needs at least 2 folds, got {ids.tolist()}")
    source = folds if source is None else np.asarray(source)
    scored = ~np.isnan(scores)
    accs, accs_scored, thresholds = [], [], []
    correct = np.zeros(len(scores), dtype=bool)
    for f in ids:
        test = folds == f
        train = ~np.isin(source, source[test]) & scored
        t, _ = best_threshold(scores[train], labels[train])
        correct[test] = (scores[test] > t) == labels[test]
        correct[test & ~scored] = False
        accs.append(float(correct[test].mean()))
        n_scored = int((test & scored).sum())
        accs_scored.append(float(correct[test & scored].mean()) if n_scored else float("nan"))
        thresholds.append(t)
    return {
        "fold_accuracies": accs,
        "thresholds": thresholds,
        "accuracy_mean": float(np.mean(accs)),
        "accuracy_scored_only": float(np.nanmean(accs_scored)),
        **fold_spread(accs),
        "correct": correct,
    }


def fold_spread(fold_accuracies: list[float]) -> dict:
    """``accuracy_std``: population std (insightface's "+-"); ``accuracy_sem``: sample std /
    sqrt(k), the standard error of the mean the LFW results page reports."""
    a = np.asarray(fold_accuracies, dtype=np.float64)
    return {
        "accuracy_std": float(np.std(a)),
        "accuracy_sem": float(np.std(a, ddof=1) / np.sqrt(len(a))) if len(a) > 1 else None,
    }


def cluster_bootstrap_ci(
    statistic,
    clusters: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    strata: np.ndarray | None = None,
    with_draws: bool = False,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(indices)`` resampling whole clusters.

    ``clusters`` (N,): the independent unit of each item (e.g. a pair's identity, or its fold):
    each resample draws as many clusters as there are, with replacement, and passes the indices
    of all their items (repeated as drawn). ``strata`` (N,): clusters are drawn within each
    stratum separately (e.g. a test list and the list its threshold is fitted on). NaN results
    are dropped. Items of one cluster are thus never split between "in" and "out".
    ``with_draws``: ``statistic(indices, draws)``, ``draws`` numbering the draw each item came
    from, so that a cluster drawn twice can count as two.
    """
    clusters = np.asarray(clusters)
    strata = np.zeros(len(clusters), np.int64) if strata is None else np.asarray(strata)
    groups = []  # per stratum: the member index arrays of its clusters
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        order = idx[np.argsort(clusters[idx], kind="stable")]
        _, starts = np.unique(clusters[order], return_index=True)
        groups.append(np.split(order, starts[1:]))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        picks = [g[k] for g in groups for k in rng.integers(0, len(g), len(g))]
        idx = np.concatenate(picks)
        if with_draws:
            draws = np.repeat(np.arange(len(picks)), [len(p) for p in picks])
            values.append(statistic(idx, draws))
        else:
            values.append(statistic(idx))
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _check(
    scores: np.ndarray, labels: np.ndarray, allow_nan: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(bool)
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores for {len(labels)} labels")
    if len(scores) == 0 or (allow_nan and np.isnan(scores).all()):
        raise ValueError("no scored pairs")
    finite = np.isfinite(scores) | (np.isnan(scores) if allow_nan else False)
    if not finite.all():
        raise ValueError("scores contain NaN or inf")
    return scores, labels
