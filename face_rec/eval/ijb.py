"""IJB-B / IJB-C template features, pair scores and the 1:1 and 1:N figures.

Template features (:class:`TemplateSwitches`; the default is insightface's published setting,
``recognition/_evaluation_/ijb/ijb_11.py``, ``use_flip_test = use_norm_score =
use_detector_score = True``), per image i of a template, then per media m, then per template::

    g_i = f(x_i) + f(flip x_i)       flip=add  (insightface "F2", arcface_torch's
                                                eval_ijbc.py); flip=off: g_i = f(x_i)
                                                (FaceX-Zoo's IJBCEvaluator)
    g_i = g_i / ||g_i||              only with norm=l2 (insightface use_norm_score=False;
                                     FaceX-Zoo, whose extractor normalises every feature);
                                     norm=keep keeps the raw norm, a quality cue (insightface
                                     "N1", arcface_torch: the published numbers)
    g_i = w_i g_i                    weights=faceness: w_i = the detector's faceness score
                                     (insightface "D1", arcface_torch, FaceX-Zoo);
                                     weights=none: w_i = 1. weights=quality: w_i = the
                                     image's feature norm ||f(x) + f(flip x)|| (AdaFace /
                                     MagFace quality; with norm=l2 it replaces the raw
                                     norm's weighting, with norm=keep it squares it)
    media_m = mean of g_i over the usable images of m   (a video's frames count as one)
    template = sum of media_m over its media, then L2-normalised; score = cosine

The media / template steps are insightface's ``image2template_feature`` (FaceX-Zoo copies it).
A template whose images are all unusable (missing, undecodable) has no feature: its pairs are
unscored and counted.

All of it is vectorised: aggregation is one sparse (templates x images) matrix product per chunk
of image features; pairs are scored by blocks of templates with dense products, memory-bounded.

TAR@FAR is read two ways, both keyed "1e-6" ... "1e-1": ``tar_at_far`` as insightface reads it
(on ``sklearn.metrics.roc_curve``'s default, thinned curve, the point whose FPR is nearest the
target; among equally near points the one with the highest TPR) and ``tar_at_far_interpolated``
(linear interpolation along the full ROC polyline at the target FPR).

A template of one image with faceness 1 (insightface's default switches) has the feature
``normalize(f(x) + f(flip x))`` of that image's crop, which is ``eval_lfw.py``'s flip-TTA
embedding: the pair scores are the same cosines. Not bit for bit: here the sums, norms and
products are float64 (of the float32 f(x), f(flip x)), in ``eval_lfw.py`` float32, so the
scores agree to ~1e-7 (tested to 1e-6); the AUC and TAR@FAR, which depend only on the scores'
order, are equal unless two scores lie within that distance. TAR@FAR itself is read the
insightface way here and as "the best TPR at FPR <= FAR" in ``eval_lfw.py``: the two agree
when the impostor count times FAR is a whole number (an ROC point then lies exactly at FAR);
otherwise the nearest point can be the one just above FAR.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from face_rec.eval import metrics as M

IJB_FARS = {f"1e-{k}": 10.0**-k for k in (6, 5, 4, 3, 2, 1)}
_CHOICES = {
    "flip": ("add", "off"),
    "norm": ("keep", "l2"),
    "weights": ("faceness", "none", "quality"),
}
#: score-matrix bytes one pair-scoring block may hold
SCORE_BLOCK_BYTES = 256 << 20


@dataclass(frozen=True)
class TemplateSwitches:
    """How image features become template features (see the module docstring).

    flip: ``add`` f(x) + f(flip x) | ``off`` f(x). norm: ``keep`` the raw norm | ``l2`` each
    image first. weights: ``faceness`` (times the detector score) | ``none``.
    """

    flip: Literal["add", "off"] = "add"
    norm: Literal["keep", "l2"] = "keep"
    weights: Literal["faceness", "none", "quality"] = "faceness"

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"template.{name}={getattr(self, name)!r}: use one of {', '.join(choices)}"
                )

    def formula(self) -> str:
        g = "f(x)+f(flip x)" if self.flip == "add" else "f(x)"
        g = f"l2({g})" if self.norm == "l2" else g
        q = "||f(x)+f(flip x)||" if self.flip == "add" else "||f(x)||"
        g = f"faceness*({g})" if self.weights == "faceness" else g
        g = f"{q}*({g})" if self.weights == "quality" else g
        return f"template = l2(sum over media(mean over images({g}))); score = cosine"


def image_weights(
    faceness: np.ndarray, switches: TemplateSwitches, quality: np.ndarray | None = None
) -> np.ndarray:
    """Per-image weights (N,) float64: faceness (N,), ones, or a given ``quality`` (N,).
    ``weights=quality`` gives ones here: :func:`image_inputs` multiplies by each image's
    feature norm, read from the features themselves."""
    if quality is not None:
        return np.asarray(quality, np.float64)
    faceness = np.asarray(faceness, np.float64)
    return faceness.copy() if switches.weights == "faceness" else np.ones_like(faceness)


# ----------------------------------------------------------------------------- aggregation


@dataclass
class TemplateLayout:
    """Which image each line of face_tid_mid gives to which template and media.

    template_ids (T,) sorted unique ids; per line (R,): row_template (index into
    template_ids), row_media (media id) and row_image (index into the image features, -1 none).
    """

    template_ids: np.ndarray
    row_template: np.ndarray
    row_media: np.ndarray
    row_image: np.ndarray

    def index_of(self, ids: np.ndarray) -> np.ndarray:
        """Template ids -> rows of the template features (-1 where not in the layout)."""
        ids = np.asarray(ids, np.int64)
        pos = np.searchsorted(self.template_ids, ids)
        pos = np.minimum(pos, len(self.template_ids) - 1)
        return np.where(self.template_ids[pos] == ids, pos, -1) if len(pos) else pos


def template_layout(templates: np.ndarray, media: np.ndarray, images: np.ndarray) -> TemplateLayout:
    """From per-line template ids, media ids and image indices (R,) each."""
    ids, row_template = np.unique(np.asarray(templates, np.int64), return_inverse=True)
    return TemplateLayout(
        ids, row_template.reshape(-1), np.asarray(media, np.int64), np.asarray(images, np.int64)
    )


def aggregation_matrix(layout: TemplateLayout, image_ok: np.ndarray):
    """The (T, N) sparse matrix A with template sum-of-media-means = A @ g (g: (N, D) per-image
    inputs): A[t, i] = sum over the lines giving image i to template t of 1 / (usable images of
    that line's media in t). Also (T,) the usable images per template. Returns (A csc, counts)."""
    from scipy import sparse

    n, t = len(image_ok), len(layout.template_ids)
    img = layout.row_image
    use = img >= 0
    use[use] = np.asarray(image_ok, bool)[img[use]]
    _, media_rank = np.unique(layout.row_media, return_inverse=True)
    group_key = layout.row_template * (int(media_rank.max(initial=0)) + 1) + media_rank
    _, group = np.unique(group_key[use], return_inverse=True)
    per_group = np.bincount(group)
    data = 1.0 / per_group[group]
    a = sparse.coo_matrix((data, (layout.row_template[use], img[use])), shape=(t, n))
    return a.tocsc(), np.bincount(layout.row_template[use], minlength=t)


def image_inputs(
    x: np.ndarray, xf: np.ndarray | None, weights: np.ndarray, switches: TemplateSwitches
) -> np.ndarray:
    """Per-image inputs g (n, D) float64 from raw f(x), f(flip x) (n, D) and weights (n,);
    ``weights=quality``: each also times its feature norm (the quality score of AdaFace /
    MagFace models, where no detector score exists), after any L2 normalisation."""
    g = np.asarray(x, np.float64)
    if switches.flip == "add":
        g = g + np.asarray(xf, np.float64)
    norm = np.linalg.norm(g, axis=1, keepdims=True)
    if switches.norm == "l2":
        g = np.divide(g, norm, out=np.zeros_like(g), where=norm > 0)
    w = np.asarray(weights, np.float64)[:, None]
    return g * (w * norm if switches.weights == "quality" else w)


def array_blocks(
    x: np.ndarray, xf: np.ndarray | None, block: int = 65536
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """(start, x, xf) blocks of in-memory features, as :meth:`FaceFeatures.blocks` yields."""
    for s in range(0, len(x), block):
        yield s, x[s : s + block], None if xf is None else xf[s : s + block]


def template_features(
    blocks: Iterable[tuple[int, np.ndarray, np.ndarray | None]],
    matrix,
    weights: np.ndarray,
    switches: TemplateSwitches,
) -> tuple[np.ndarray, np.ndarray]:
    """Unit template features (T, D) float64 (zero rows where the sum is zero) and the norms
    (T,) of the sums, from image feature ``blocks`` (start, f(x), f(flip x)) and the
    :func:`aggregation_matrix`; one block in memory at a time."""
    acc = None
    for start, x, xf in blocks:
        stop = start + len(x)
        g = image_inputs(x, xf, weights[start:stop], switches)
        if acc is None:
            acc = np.zeros((matrix.shape[0], g.shape[1]))
        sub = matrix[:, start:stop].tocsr()
        rows = np.flatnonzero(np.diff(sub.indptr))  # the templates these images are in
        acc[rows] += sub[rows] @ g
    if acc is None:
        raise ValueError("no image features given")
    norm = np.linalg.norm(acc, axis=1)
    feats = np.divide(acc, norm[:, None], out=np.zeros_like(acc), where=norm[:, None] > 0)
    return feats, norm


# ----------------------------------------------------------------------------- pair scores


def score_pairs(
    feats: np.ndarray,
    usable: np.ndarray,
    i1: np.ndarray,
    i2: np.ndarray,
    dtype: type = np.float64,
    block_bytes: int = SCORE_BLOCK_BYTES,
) -> np.ndarray:
    """Cosine scores (P,) float64 of template pairs given as rows ``i1``, ``i2`` (P,) of unit
    ``feats`` (T, D); NaN where a row is -1 or not ``usable`` (T,) bool.

    Pairs are grouped by blocks of first templates; each block is one dense product of its
    first templates with the second templates its pairs use (at most ``block_bytes`` of
    scores), and the pairs' entries are picked from it. ``dtype``: of the products (float32:
    ~3x faster, scores within ~1e-7)."""
    feats = np.asarray(feats, dtype)
    i1, i2 = np.asarray(i1, np.int64), np.asarray(i2, np.int64)
    scores = np.full(len(i1), np.nan)
    ok = (i1 >= 0) & (i2 >= 0)
    ok[ok] = usable[i1[ok]] & usable[i2[ok]]
    idx = np.flatnonzero(ok)
    if not len(idx):
        return scores
    rows = max(1, block_bytes // (np.dtype(dtype).itemsize * len(feats)))
    bucket = i1[idx] // rows
    bucket = bucket.astype(np.int16 if bucket.max() < 2**15 else np.int64)
    order = np.argsort(bucket, kind="stable")  # a radix sort for int16: O(P)
    idx, bucket = idx[order], bucket[order]
    bounds = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    for lo, hi in zip(bounds, np.r_[bounds[1:], len(idx)], strict=True):
        sel = idx[lo:hi]
        r, r_loc = np.unique(i1[sel], return_inverse=True)
        c, c_loc = np.unique(i2[sel], return_inverse=True)
        block = feats[r] @ feats[c].T
        scores[sel] = block[r_loc.reshape(-1), c_loc.reshape(-1)]
    return scores


# ----------------------------------------------------------------------------- 1:1 metrics


def sklearn_roc_points(
    fpr: np.ndarray, tpr: np.ndarray, n_pos: int, n_neg: int
) -> tuple[np.ndarray, np.ndarray]:
    """``sklearn.metrics.roc_curve(labels, scores)``'s points (its default
    ``drop_intermediate=True``: points inside straight runs dropped) from the full curve of
    :func:`face_rec.eval.metrics.roc` (both (K + 1,), first point (0, 0))."""
    tps, fps = np.rint(tpr[1:] * n_pos), np.rint(fpr[1:] * n_neg)
    if len(fps) > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        tps, fps = tps[keep], fps[keep]
    return np.r_[0.0, fps] / n_neg, np.r_[0.0, tps] / n_pos


def tar_at_far_nearest(fpr: np.ndarray, tpr: np.ndarray, far: float) -> float:
    """insightface's reading (``ijb_11.py``): the TPR of the ROC point whose FPR is nearest
    ``far``; among equally near points the last (highest TPR). Pass
    :func:`sklearn_roc_points` to read it on the curve insightface reads."""
    d = np.abs(np.asarray(fpr) - far)
    return float(tpr[np.flatnonzero(d == d.min())[-1]])


def tar_at_far_interpolated(fpr: np.ndarray, tpr: np.ndarray, far: float) -> float:
    """TPR at FPR = ``far`` by linear interpolation along the ROC polyline (``fpr``, ``tpr``
    non-decreasing, e.g. :func:`face_rec.eval.metrics.roc`'s); where the curve rises
    vertically at exactly ``far``, its top."""
    j = int(np.searchsorted(fpr, far, side="right")) - 1  # the last point with fpr <= far
    if j >= len(fpr) - 1 or fpr[j] == far:
        return float(tpr[j])
    t = (far - fpr[j]) / (fpr[j + 1] - fpr[j])
    return float(tpr[j] + t * (tpr[j + 1] - tpr[j]))


def verification_figures(scores: np.ndarray, labels: np.ndarray) -> tuple[dict, dict]:
    """The 1:1 figures over the scored pairs (NaN scores are unscored pairs):
    (figures, roc) with figures auc, eer, tar_at_far (insightface's reading),
    tar_at_far_interpolated, tar_at_far_notes, n_scored, n_positive, n_negative, and roc
    {fpr, tpr} the full curve."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, bool)
    scored = ~np.isnan(scores)
    s, y = scores[scored], labels[scored]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    out: dict = {"n_scored": int(scored.sum()), "n_positive": n_pos, "n_negative": n_neg}
    if n_pos == 0 or n_neg == 0:
        none = dict.fromkeys(IJB_FARS)
        note = f"needs scored genuine and impostor pairs ({n_pos} and {n_neg})"
        out.update(auc=None, eer=None, tar_at_far=none, tar_at_far_interpolated=dict(none))
        out["tar_at_far_notes"] = dict.fromkeys(IJB_FARS, note)
        return out, {"fpr": np.zeros(1), "tpr": np.zeros(1)}
    fpr, tpr, _ = M.roc(s, y)
    sk_fpr, sk_tpr = sklearn_roc_points(fpr, tpr, n_pos, n_neg)
    out.update(auc=M.auc(fpr, tpr), eer=M.eer(fpr, tpr), tar_at_far={})
    out.update(tar_at_far_interpolated={}, tar_at_far_notes={})
    for key, far in IJB_FARS.items():
        if not M.far_supported(n_neg, far):
            out["tar_at_far"][key] = out["tar_at_far_interpolated"][key] = None
            out["tar_at_far_notes"][key] = (
                f"not reported: {n_neg} impostor pairs; FAR {key} needs at least "
                f"{int(round(1 / far))}"
            )
            continue
        out["tar_at_far"][key] = tar_at_far_nearest(sk_fpr, sk_tpr, far)
        out["tar_at_far_interpolated"][key] = tar_at_far_interpolated(fpr, tpr, far)
    return out, {"fpr": fpr, "tpr": tpr}


def thin_roc(fpr: np.ndarray, tpr: np.ndarray, n: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """At most ~2n points of a long ROC for plots and CSV: evenly spaced in log FPR and in
    index, plus both ends."""
    if len(fpr) <= 2 * n:
        return fpr, tpr
    low = fpr[fpr > 0].min() if (fpr > 0).any() else 1.0
    idx = np.searchsorted(fpr, np.geomspace(low, 1.0, n))
    idx = np.unique(np.r_[0, np.clip(idx, 0, len(fpr) - 1), np.linspace(0, len(fpr) - 1, n)])
    idx = idx.astype(np.int64)
    return fpr[idx], tpr[idx]


# ----------------------------------------------------------------------------- 1:N


def identification_figures(
    feats: np.ndarray,
    usable: np.ndarray,
    layout: TemplateLayout,
    galleries: dict[str, tuple[np.ndarray, np.ndarray]],
    probes: tuple[np.ndarray, np.ndarray],
    fpirs: tuple[float, ...] = (1e-2, 1e-1),
    ranks: tuple[int, ...] = (1, 5, 10),
) -> dict:
    """The 1:N figures: each of the two ``galleries`` (name -> (template ids, subject ids))
    searched by every probe template the NIST way (:func:`open_set_identification`), their
    ``mean``, and insightface's ``merged`` figures (both galleries as one). Templates not in
    face_tid_mid or without a usable image are left out and counted in ``skipped``."""
    from face_rec.eval.identification import (
        insightface_merged_identification,
        open_set_identification,
    )

    skipped: dict = {}
    p_rows, p_ids = _searchable(feats, usable, layout, *probes, "probe", skipped)
    out: dict = {}
    chosen = {}
    for name, (tids, sids) in galleries.items():
        chosen[name] = _searchable(feats, usable, layout, tids, sids, name, skipped)
        g_rows, g_ids = chosen[name]
        out[name] = open_set_identification(
            feats[p_rows], p_ids, feats[g_rows], g_ids, fpirs, ranks
        )
    out["mean"] = _mean([out[name] for name in galleries], fpirs, ranks)
    rows = np.concatenate([chosen[n][0] for n in galleries])
    ids = np.concatenate([chosen[n][1] for n in galleries])
    out["merged"] = insightface_merged_identification(
        feats[p_rows], p_ids, feats[rows], ids, fpirs, ranks
    )
    out["merged"]["label"] = "insightface's merged-gallery figures (ijb_1n.py), not NIST's"
    out["skipped"] = skipped
    return out


def _searchable(feats, usable, layout, tids, sids, role, skipped) -> tuple[np.ndarray, np.ndarray]:
    """Rows and subjects of the templates that can be searched; the others counted."""
    rows = layout.index_of(tids)
    present = rows >= 0
    good = present.copy()
    good[present] = usable[rows[present]]
    if not good.all():
        missing = np.asarray(tids)[~present].tolist()
        empty = np.asarray(tids)[present & ~good].tolist()
        skipped[role] = {
            "count": len(missing) + len(empty),
            "not_in_face_tid_mid": {"count": len(missing), "examples": missing[:10]},
            "no_usable_image": {"count": len(empty), "examples": empty[:10]},
        }
    return rows[good], np.asarray(sids)[good]


def _mean(results: list[dict], fpirs, ranks) -> dict:
    """The mean of the galleries' figures (None where any is None)."""
    from face_rec.eval.identification import rate_key

    def avg(values):
        return None if any(v is None for v in values) else float(np.mean(values))

    out = {
        "tpir_at_fpir": {
            rate_key(r): avg([m["tpir_at_fpir"][rate_key(r)] for m in results]) for r in fpirs
        }
    }
    out.update({f"rank{k}": avg([m[f"rank{k}"] for m in results]) for k in ranks})
    out["note"] = "mean over the two galleries of each NIST figure (as NIST reports IJB 1:N)"
    return out
