"""Verification on a pair list: align the unique images once (cached), embed, score, measure."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from face_rec.align.run import (
    CHUNK_SIZE,
    AlignSettings,
    current_pack,
    pack_changes,
    pack_rows,
    run_alignment,
)
from face_rec.data.pack import (
    open_images,
    outside_fractions,
    outside_stats,
    read_manifest,
    tight_crop_warning,
)
from face_rec.data.pairs import Pairs
from face_rec.eval import metrics as M
from face_rec.eval.embed import embed_crops
from face_rec.eval.quality import error_vs_reject, pair_quality

log = logging.getLogger(__name__)

FARS = {"1e-1": 1e-1, "1e-2": 1e-2, "1e-3": 1e-3}


@dataclass
class PairImages:
    """Aligned crops for each of a list of images (``Pairs.images``, or any list given to
    :func:`align_images`); ``problems[k]`` is '' or why k is unusable."""

    crops: np.ndarray  #: (M, H, W, 3) uint8; zeros where unusable
    problems: list[str]
    fallback: np.ndarray  #: (M,) bool, aligned by the no-face fallback crop
    #: (M,) float64 share of each crop outside its source image (NaN: unknown); None: not known
    #: at all (a ``.bin`` holds crops only)
    outside_fraction: np.ndarray | None = None


def align_pair_images(
    pairs: Pairs,
    cache_dir: str | Path,
    make_detector: Callable,
    settings: AlignSettings | None = None,
    detector_settings: dict | None = None,
    workers: int | None = None,
    reuse: Sequence[str | Path] = (),
    **options,
) -> PairImages:
    """Align the unique images of ``pairs`` through the alignment stage, cached on disk
    (``options``: more :func:`~face_rec.align.run.run_alignment` arguments, e.g. chunk_size).

    A pack among ``reuse`` (e.g. ``packs/lfw``) that holds every pair image and is current for
    the pairs' image root (the same settings; the files' contents as aligned, wherever the copy
    lies, :func:`~face_rec.align.run.current_pack`) is read instead of aligning again. Otherwise
    the cache pack is keyed by the image root's path and the image list (a copy of the images
    at another path gets its own cache); the alignment job's own resume key covers the settings
    and contents, so a second evaluation does no detection.
    """
    if pairs.crops is not None:  # .bin: already aligned
        n = len(pairs.crops)
        return PairImages(pairs.crops, [""] * n, np.zeros(n, bool))
    return align_images(
        pairs.images,
        pairs.root,
        pairs.source,
        cache_dir,
        make_detector,
        settings,
        detector_settings,
        workers,
        reuse,
        **options,
    )


def align_images(
    sources: Sequence[str],
    root: str | Path,
    source: str,
    cache_dir: str | Path,
    make_detector: Callable,
    settings: AlignSettings | None = None,
    detector_settings: dict | None = None,
    workers: int | None = None,
    reuse: Sequence[str | Path] = (),
    **options,
) -> PairImages:
    """Align the images ``sources`` (unique paths relative to ``root``) through the alignment
    stage, cached on disk, in their order; ``source`` names the list they come from (messages,
    the cache pack's name). Reuse and caching as :func:`align_pair_images`."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(
            f"image root {str(root)!r} of {source} does not exist; pass image_root=<folder "
            "the image paths are relative to> (or set FACE_REC_DATA)"
        )
    chunk_size = options.get("chunk_size", CHUNK_SIZE)
    pack, rows, stale = None, {}, None
    for candidate in reuse:
        manifest, current = pack_rows(
            root, candidate, settings, detector_settings, chunk_size, required=sources
        )
        rows = {r["source"]: r for r in manifest or []}
        if manifest and all(src in rows for src in sources):
            if current:
                pack = Path(candidate)
                log.info("images of %s read from the pack %s", source, pack)
                break
            stale = stale or candidate  # holds them all, but is not this alignment's
    if pack is None:
        digest = hashlib.sha256("\n".join([str(root), *sorted(sources)]).encode()).hexdigest()
        pack = Path(cache_dir) / f"{Path(source).stem}-{digest[:12]}"
        if stale:
            cached = current_pack(root, pack, settings, detector_settings, chunk_size) is not None
            why = pack_changes(root, stale, settings, detector_settings, chunk_size)
            log.warning(
                "the pack %s holds every image of %s but is not what this alignment would make "
                "now (%s). The images are %s %s, and their crops, and so the scores, can differ "
                "slightly from the pack's. To use the pack, run align.py for that dataset again "
                "with these settings",
                stale,
                source,
                "; ".join(why),
                "read from the cache an earlier run aligned," if cached else "aligned afresh into",
                pack,
            )
        run_alignment(
            root,
            pack,
            make_detector,
            settings,
            workers=workers,
            sources=list(sources),
            detector_settings=detector_settings,
            **options,
        )
        rows = {r["source"]: r for r in read_manifest(pack / "manifest.csv")}
    images = open_images(pack)
    crops = np.zeros((len(sources), *images.shape[1:]), np.uint8)
    problems, fallback = [], np.zeros(len(sources), bool)
    for k, src in enumerate(sources):
        row = rows[src]
        if row["status"] == "failed":
            problems.append(row["reason"])
            continue
        crops[k] = images[row["image_index"]]
        fallback[k] = row["status"] == "fallback"
        problems.append("")
    outside = outside_fractions([rows[src] for src in sources])
    return PairImages(crops, problems, fallback, outside)


def scored_outside_fraction(pairs: Pairs, images: PairImages, scores: np.ndarray) -> dict:
    """:func:`~face_rec.data.pack.outside_stats` over the unique images of the scored pairs
    (``scores`` (N,), NaN = unscored), plus ``warning`` (a tight-crop warning or None)."""
    scored = ~np.isnan(np.asarray(scores, dtype=np.float64))
    used = np.unique(np.r_[pairs.left[scored], pairs.right[scored]])
    if images.outside_fraction is None:
        values = np.full(len(used), np.nan)
    else:
        values = images.outside_fraction[used]
    stats = outside_stats(values)
    stats["warning"] = tight_crop_warning(stats, f"the scored pairs of {pairs.source}")
    if stats["n_known"] == 0:
        stats["note"] = "unknown: the images were aligned elsewhere (.bin) or by an older pack"
    return stats


def score_pairs(
    embeddings: np.ndarray, pairs: Pairs, problems: list[str]
) -> tuple[np.ndarray, list[dict]]:
    """Cosine score per pair from unit embeddings (M, D); NaN and a skip record where an image
    of the pair is unusable."""
    scores = np.einsum("nd,nd->n", embeddings[pairs.left], embeddings[pairs.right]).astype(
        np.float64
    )
    skipped = []
    for i, (a, b) in enumerate(zip(pairs.left, pairs.right, strict=True)):
        why = [f"{pairs.images[k]}: {problems[k]}" for k in (a, b) if problems[k]]
        if why:
            scores[i] = np.nan
            skipped.append(
                {
                    "pair": i,
                    "a": pairs.images[a],
                    "b": pairs.images[b],
                    "same": bool(pairs.same[i]),
                    "reason": "; ".join(why),
                }
            )
    return scores, skipped


def stratified_folds(labels: np.ndarray, k: int = 10) -> np.ndarray:
    """Folds for a list without any: the i-th pair of each class goes to fold i mod k."""
    folds = np.empty(len(labels), np.int64)
    for cls in (True, False):
        idx = np.flatnonzero(labels == cls)
        folds[idx] = np.arange(len(idx)) % k
    return folds


def resampling_units(pairs: Pairs) -> tuple[np.ndarray, str]:
    """The unit a bootstrap must resample for ``pairs`` ((N,) cluster id per pair) and its name.

    Pairs share images and identities, so they are not independent draws. With identities
    known (image paths under identity folders): each pair goes with the identity of its first
    image. Otherwise the list's folds (insightface ``.bin``: 10 blocks of other people); else
    single pairs, which understates the spread, and the name says so.
    """
    if pairs.has_identities:
        ids = np.array([pairs.identity(k) for k in pairs.left])
        if len(np.unique(ids)) >= 20:
            return np.unique(ids, return_inverse=True)[1], "identities (of each pair's first image)"
    if pairs.n_folds >= 2:
        return pairs.fold.copy(), "folds (the list carries no identities)"
    return np.arange(len(pairs)), (
        "pairs (the list carries no identities or folds: pairs that share images are resampled "
        "as independent, so the interval is too narrow)"
    )


def protocol_accuracy(
    scores: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray | None,
    calibration: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict:
    """The protocol's accuracy over every pair; NaN scores (unscorable pairs) count as errors.

    With ``folds`` (>= 2 distinct): the k-fold protocol. Else with ``calibration`` (scores,
    labels of another list): its best threshold applied here. Else 10-fold CV over stratified
    folds of these pairs. Returns accuracy_mean, accuracy_scored_only, accuracy_std (population,
    insightface), accuracy_sem (standard error, LFW page), fold_accuracies, thresholds,
    protocol, and ``correct`` (N,) bool.
    """
    scored = ~np.isnan(scores)
    if (folds is None or len(np.unique(folds)) < 2) and calibration is not None:
        t, calib_acc = M.best_threshold(*calibration)
        correct = scored & ((scores > t) == labels)
        return {
            "accuracy_mean": float(correct.mean()),
            "accuracy_scored_only": float(correct[scored].mean()),
            "accuracy_std": None,
            "accuracy_sem": None,
            "fold_accuracies": [],
            "thresholds": [t],
            "calibration_accuracy": calib_acc,
            "protocol": f"threshold chosen on the calibration list ({len(calibration[0])} "
            "pairs), applied to this list",
            "correct": correct,
        }
    if folds is not None and len(np.unique(folds)) >= 2:
        kf = M.kfold_accuracy(scores, labels, folds)
        protocol = (
            f"{len(kf['fold_accuracies'])}-fold: per fold, threshold chosen on the other folds"
        )
    else:
        kf = M.kfold_accuracy(scores, labels, stratified_folds(labels))
        protocol = "10-fold CV over this list's own pairs (stratified folds)"
    return {**kf, "protocol": protocol}


def verification_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray | None,
    calibration: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    units: tuple[np.ndarray, str] | None = None,
    pair_quality: np.ndarray | None = None,
) -> dict:
    """Every number of the protocol: accuracy (:func:`protocol_accuracy`; NaN scores are
    unscorable pairs and count as errors), ROC, AUC, EER and TAR@FAR (over the scored pairs)
    and bootstrap 95% intervals. A fold-less list scored at a calibration list's threshold also
    gets ``accuracy_kfold_cv``: 10-fold CV over its own pairs, the protocol's other option (a
    calibration list of people the model trained on can give too strict a threshold).

    ``calibration``: (scores, labels, resampling units) of the list the threshold is chosen on.
    ``units``: (N,) resampling unit per pair and its name (:func:`resampling_units`; default
    single pairs). The intervals resample whole units and refit the threshold(s) inside every
    resample (the calibration list resampled too); ``ci95_method`` says so.
    ``pair_quality``: (N,) quality per pair (:func:`~face_rec.eval.quality.pair_quality`): adds
    ``error_vs_reject``, the protocol's error as the lowest-quality pairs are rejected.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    scored = ~np.isnan(scores)
    if not scored.any():
        raise ValueError("no scored pairs")
    units = units or (np.arange(len(scores)), "pairs")
    out = protocol_accuracy(scores, labels, folds, calibration and calibration[:2])
    correct = out.pop("correct")
    if calibration is not None and not out["fold_accuracies"]:  # DESIGN.md's other View 1 option
        cv = protocol_accuracy(scores, labels, None)
        keep = ("accuracy_mean", "accuracy_scored_only", "accuracy_std", "accuracy_sem")
        out["accuracy_kfold_cv"] = {k: cv[k] for k in keep} | {
            "protocol": cv["protocol"] + ", not identity-disjoint; accuracy_std is the "
            "population std over folds; the same model, without the calibration list",
        }
    if pair_quality is not None:  # the protocol's decisions kept, low-quality pairs rejected
        out["error_vs_reject"] = error_vs_reject(correct, pair_quality)
    s, y = scores[scored], labels[scored]
    best_t, best_acc = M.best_threshold(s, y)
    out["accuracy_best_threshold"] = {
        "accuracy": best_acc,
        "threshold": best_t,
        "note": "threshold chosen on the test pairs themselves "
        "(optimistic; not the protocol number)",
    }
    fpr, tpr, thr = M.roc(s, y)
    n_neg = int((~y).sum())
    out.update(auc=M.auc(fpr, tpr), eer=M.eer(fpr, tpr), tar_at_far={}, tar_at_far_notes={})
    boot = n_bootstrap > 0
    ci = {}
    if boot:
        ci["accuracy"] = _accuracy_ci(
            scores, labels, folds, calibration, units[0], n_bootstrap, seed
        )
    for key, far in FARS.items():
        if not M.far_supported(n_neg, far):
            out["tar_at_far"][key] = None
            out["tar_at_far_notes"][key] = (
                f"not reported: {n_neg} negative pairs; FAR {key} "
                f"needs at least {int(round(1 / far))}"
            )
            continue
        out["tar_at_far"][key] = M.tar_at_far(fpr, tpr, far)
        if boot:
            ci[f"tar_at_far_{key}"] = M.cluster_bootstrap_ci(
                lambda i, far=far: _tar(scores[i], labels[i], far), units[0], n_bootstrap, seed
            )
    out["ci95"] = {k: [lo, hi] for k, (lo, hi) in ci.items()}
    few = len(np.unique(units[0])) < 30
    out["ci95_method"] = (
        f"percentile bootstrap, {n_bootstrap} resamples of whole {units[1]}"
        + (" (few units: a percentile interval under-covers)" if few else "")
        + ("; the calibration list resampled alike" if calibration is not None else "")
        + "; the protocol's threshold(s) refit inside every resample"
        if boot
        else "not computed (n_bootstrap=0)"
    )
    out["roc"] = {"fpr": fpr, "tpr": tpr, "thresholds": thr}
    return out


def _accuracy_ci(scores, labels, folds, calibration, units, n_bootstrap, seed):
    """Bootstrap interval of the protocol accuracy, thresholds refit per resample."""
    if calibration is not None and (folds is None or len(np.unique(folds)) < 2):
        n = len(scores)
        c_scores, c_labels, c_units = calibration
        all_scores, all_labels = np.r_[scores, c_scores], np.r_[labels, c_labels]
        clusters = np.r_[units, np.asarray(c_units) + units.max() + 1]
        strata = np.r_[np.zeros(n, int), np.ones(len(c_scores), int)]

        def stat(i):
            test, cal = i[i < n], i[i >= n]
            calib = (all_scores[cal], all_labels[cal])
            return protocol_accuracy(scores[test], labels[test], None, calib)["accuracy_mean"]

        return M.cluster_bootstrap_ci(stat, clusters, n_bootstrap, seed, strata=strata)
    split = folds if folds is not None and len(np.unique(folds)) >= 2 else stratified_folds(labels)
    n_units, n_folds = len(np.unique(units)), len(np.unique(split))
    by_fold = n_units == n_folds == len(set(zip(units.tolist(), split.tolist(), strict=True)))
    # the units are the folds themselves (a .bin): each drawn copy is a fold of its own

    def stat(i, draws):
        folds_i, source = (draws, split[i]) if by_fold else (split[i], None)
        try:  # a resample may leave a fold without scored pairs: dropped
            return M.kfold_accuracy(scores[i], labels[i], folds_i, source)["accuracy_mean"]
        except ValueError:
            return float("nan")

    return M.cluster_bootstrap_ci(stat, units, n_bootstrap, seed, with_draws=True)


def _tar(scores: np.ndarray, labels: np.ndarray, far: float) -> float:
    ok = ~np.isnan(scores)
    scores, labels = scores[ok], labels[ok]
    if labels.all() or not labels.any():
        return float("nan")
    fpr, tpr, _ = M.roc(scores, labels)
    return M.tar_at_far(fpr, tpr, far)


def embed_pairs(
    model: nn.Module, images: PairImages, batch_size: int, device: str, flip: bool
) -> np.ndarray:
    """Unit embeddings (M, D) of a list's aligned images (flip TTA when ``flip``)."""
    return embed_crops(model, images.crops, batch_size, device, flip)


def measure_pairs(
    pairs: Pairs,
    images: PairImages,
    embeddings: np.ndarray,
    calibration: tuple[Pairs, PairImages, np.ndarray] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    quality: np.ndarray | None = None,
) -> dict:
    """Score and measure ``pairs`` from its images' unit embeddings (M, D); ``quality``: (M,)
    per-image quality (the feature norm), for the error-versus-reject curve; ``calibration``:
    (pairs, images, embeddings) of the list a fold-less list takes its threshold from.

    Returns :func:`verification_metrics`' dict plus ``n_pairs``, ``n_scored``, ``skipped``
    (each unscorable pair and why; they count as errors in ``accuracy_mean``),
    ``n_pairs_with_fallback``, ``outside_fraction`` (:func:`scored_outside_fraction`) and
    ``scores`` ((N,), NaN where skipped).
    """
    scores, skipped = score_pairs(embeddings, pairs, images.problems)
    if np.isnan(scores).all():
        raise ValueError(f"no pair of {pairs.source} could be scored: {skipped[:3]} ...")
    calib = None
    if calibration is not None:
        c_pairs, c_images, c_emb = calibration
        c_scores, _ = score_pairs(c_emb, c_pairs, c_images.problems)
        ok = ~np.isnan(c_scores)
        calib = (c_scores[ok], c_pairs.same[ok], resampling_units(c_pairs)[0][ok])
    folds = pairs.fold if pairs.n_folds >= 2 else None
    units = resampling_units(pairs)
    pq = None if quality is None else pair_quality(quality, pairs.left, pairs.right)
    out = verification_metrics(scores, pairs.same, folds, calib, n_bootstrap, seed, units, pq)
    uses_fallback = images.fallback[pairs.left] | images.fallback[pairs.right]
    out.update(
        n_pairs=len(pairs),
        n_scored=int((~np.isnan(scores)).sum()),
        skipped=skipped,
        n_pairs_with_fallback=int(uses_fallback.sum()),
        outside_fraction=scored_outside_fraction(pairs, images, scores),
        scores=scores,
    )
    if skipped:
        out["unscored_note"] = (
            f"{len(skipped)} of {len(pairs)} pairs could not be scored (see skipped): they count "
            "as errors in accuracy_mean; accuracy_scored_only leaves them out; ROC, AUC, EER "
            "and TAR@FAR are over the scored pairs"
        )
    return out


def evaluate_pairs(
    model: nn.Module,
    pairs: Pairs,
    images: PairImages,
    batch_size: int = 128,
    device: str = "cpu",
    flip: bool = True,
    calibration: tuple[Pairs, PairImages] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Embed, score and measure ``pairs`` (:func:`measure_pairs`, with each image's feature
    norm as its quality: ``image_quality`` (M,), NaN where unusable, and ``error_vs_reject``),
    the calibration list's images embedded too."""
    emb, quality = embed_with_quality(model, images, batch_size, device, flip)
    calib = None
    if calibration is not None:
        c_pairs, c_images = calibration
        calib = (c_pairs, c_images, embed_pairs(model, c_images, batch_size, device, flip))
    out = measure_pairs(pairs, images, emb, calib, n_bootstrap, seed, quality)
    out["image_quality"] = quality
    known = quality[~np.isnan(quality)]
    out["quality"] = {
        "definition": "L2 norm of the unnormalised feature "
        + ("f(x) + f(flip(x))" if flip else "f(x)")
        + " per image (images.csv); a pair's quality is the lower of its two",
        "percentiles": {
            str(p): float(np.percentile(known, p)) if len(known) else None for p in (5, 50, 95)
        },
    }
    return out


def embed_with_quality(
    model: nn.Module, images: PairImages, batch_size: int, device: str, flip: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings (M, D) and qualities (M,): the L2 norm of the unnormalised feature
    ``f(x) + f(flip(x))`` (``f(x)`` without flip; as :class:`~face_rec.embedder.FaceEmbedder`
    reports it), NaN for unusable images."""
    raw = torch.from_numpy(embed_crops(model, images.crops, batch_size, device, flip, False))
    norms = raw.norm(dim=1).double().numpy()
    norms[np.array([bool(p) for p in images.problems], bool)] = np.nan
    return F.normalize(raw, dim=1).numpy(), norms  # as embed_crops normalises


def leaked_identities(pairs: Pairs, training_identities: set[str]) -> list[str] | None:
    """Identities of the evaluation pairs that also occur in the training data, sorted; None
    when the list carries no identities (``.bin``: aligned crops only; a CSV of flat file
    names), so none can be checked."""
    if not pairs.has_identities:
        return None
    used = {pairs.identity(k) for k in range(len(pairs.images))}
    return sorted(used & training_identities)
