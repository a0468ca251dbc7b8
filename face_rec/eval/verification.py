"""Verification on a pair list: align the unique images once (cached), embed, score, measure."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from face_rec.align.run import CHUNK_SIZE, AlignSettings, current_pack, run_alignment
from face_rec.data.pack import open_images, read_manifest
from face_rec.data.pairs import Pairs
from face_rec.eval import metrics as M
from face_rec.eval.embed import embed_crops

log = logging.getLogger(__name__)

FARS = {"1e-1": 1e-1, "1e-2": 1e-2, "1e-3": 1e-3}


@dataclass
class PairImages:
    """Aligned crops for each of ``Pairs.images``; ``problems[k]`` is '' or why k is unusable."""

    crops: np.ndarray  #: (M, H, W, 3) uint8; zeros where unusable
    problems: list[str]
    fallback: np.ndarray  #: (M,) bool, aligned by the no-face fallback crop


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

    A pack among ``reuse`` (e.g. ``packs/lfw``) that holds every pair image, made from the same
    image root with the same settings and with no file changed since, is read instead of
    aligning again. Otherwise the cache pack is keyed by the image root and the image list; the
    alignment job's own resume key covers the settings, so a second evaluation does no detection.
    """
    if pairs.crops is not None:  # .bin: already aligned
        n = len(pairs.crops)
        return PairImages(pairs.crops, [""] * n, np.zeros(n, bool))
    root = Path(pairs.root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(
            f"image root {str(root)!r} of {pairs.source} does not exist; pass image_root=<folder "
            "the pair paths are relative to> (or set FACE_REC_DATA)"
        )
    chunk_size = options.get("chunk_size", CHUNK_SIZE)
    pack, rows = None, {}
    for candidate in reuse:
        manifest = current_pack(root, candidate, settings, detector_settings, chunk_size) or []
        rows = {r["source"]: r for r in manifest}
        if manifest and all(src in rows for src in pairs.images):
            pack = Path(candidate)
            log.info("pair images of %s read from the pack %s", pairs.source, pack)
            break
    if pack is None:
        digest = hashlib.sha256("\n".join([str(root), *sorted(pairs.images)]).encode()).hexdigest()
        pack = Path(cache_dir) / f"{Path(pairs.source).stem}-{digest[:12]}"
        run_alignment(
            root,
            pack,
            make_detector,
            settings,
            workers=workers,
            sources=pairs.images,
            detector_settings=detector_settings,
            **options,
        )
        rows = {r["source"]: r for r in read_manifest(pack / "manifest.csv")}
    images = open_images(pack)
    crops = np.zeros((len(pairs.images), *images.shape[1:]), np.uint8)
    problems, fallback = [], np.zeros(len(pairs.images), bool)
    for k, src in enumerate(pairs.images):
        row = rows[src]
        if row["status"] == "failed":
            problems.append(row["reason"])
            continue
        crops[k] = images[row["image_index"]]
        fallback[k] = row["status"] == "fallback"
        problems.append("")
    return PairImages(crops, problems, fallback)


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


def verification_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray | None,
    calibration: tuple[np.ndarray, np.ndarray] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Every number of the protocol for scored pairs (no NaN): accuracy, ROC, AUC, EER, TAR@FAR
    and bootstrap 95% intervals.

    Accuracy: with ``folds`` (>= 2 distinct), the k-fold protocol; else with ``calibration``
    (scores, labels of another list), the threshold chosen there; else 10-fold CV over
    stratified folds of these pairs. ``protocol`` in the result says which.
    """
    labels = labels.astype(bool)
    out: dict = {}
    if folds is not None and len(np.unique(folds)) >= 2:
        kf = M.kfold_accuracy(scores, labels, folds)
        correct = kf.pop("correct")
        out.update(
            kf,
            protocol=f"{len(kf['fold_accuracies'])}-fold: per fold, threshold chosen "
            "on the other folds",
        )
    elif calibration is not None:
        t, calib_acc = M.best_threshold(*calibration)
        correct = (scores > t) == labels
        out.update(
            accuracy_mean=float(correct.mean()),
            accuracy_std=None,
            fold_accuracies=[],
            thresholds=[t],
            calibration_accuracy=calib_acc,
            protocol=f"threshold chosen on the calibration list ({len(calibration[0])} "
            "pairs), applied to this list",
        )
    else:
        kf = M.kfold_accuracy(scores, labels, stratified_folds(labels))
        correct = kf.pop("correct")
        out.update(kf, protocol="10-fold CV over this list's own pairs (stratified folds)")
    best_t, best_acc = M.best_threshold(scores, labels)
    out["accuracy_best_threshold"] = {
        "accuracy": best_acc,
        "threshold": best_t,
        "note": "threshold chosen on the test pairs themselves "
        "(optimistic; not the protocol number)",
    }
    fpr, tpr, thr = M.roc(scores, labels)
    n_neg = int((~labels).sum())
    out.update(auc=M.auc(fpr, tpr), eer=M.eer(fpr, tpr), tar_at_far={}, tar_at_far_notes={})
    ci = {"accuracy": M.bootstrap_ci(lambda i: correct[i].mean(), len(scores), n_bootstrap, seed)}
    for key, far in FARS.items():
        if not M.far_supported(n_neg, far):
            out["tar_at_far"][key] = None
            out["tar_at_far_notes"][key] = (
                f"not reported: {n_neg} negative pairs; FAR {key} "
                f"needs at least {int(round(1 / far))}"
            )
            continue
        out["tar_at_far"][key] = M.tar_at_far(fpr, tpr, far)
        ci[f"tar_at_far_{key}"] = M.bootstrap_ci(
            lambda i, far=far: _tar(scores[i], labels[i], far), len(scores), n_bootstrap, seed
        )
    out["ci95"] = {k: [lo, hi] for k, (lo, hi) in ci.items()}
    out["roc"] = {"fpr": fpr, "tpr": tpr, "thresholds": thr}
    return out


def _tar(scores: np.ndarray, labels: np.ndarray, far: float) -> float:
    if labels.all() or not labels.any():
        return float("nan")
    fpr, tpr, _ = M.roc(scores, labels)
    return M.tar_at_far(fpr, tpr, far)


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
    """Embed, score and measure ``pairs``; the training loop's periodic validation calls this.

    Returns :func:`verification_metrics`' dict plus ``n_pairs``, ``n_scored``, ``skipped``
    (each unscorable pair and why), ``n_pairs_with_fallback`` and ``scores`` ((N,), NaN where
    skipped).
    """
    emb = embed_crops(model, images.crops, batch_size, device, flip)
    scores, skipped = score_pairs(emb, pairs, images.problems)
    ok = ~np.isnan(scores)
    if not ok.any():
        raise ValueError(f"no pair of {pairs.source} could be scored: {skipped[:3]} ...")
    calib = None
    if calibration is not None:
        c_pairs, c_images = calibration
        c_emb = embed_crops(model, c_images.crops, batch_size, device, flip)
        c_scores, _ = score_pairs(c_emb, c_pairs, c_images.problems)
        c_ok = ~np.isnan(c_scores)
        calib = (c_scores[c_ok], c_pairs.same[c_ok])
    folds = pairs.fold[ok] if pairs.n_folds >= 2 else None
    out = verification_metrics(scores[ok], pairs.same[ok], folds, calib, n_bootstrap, seed)
    uses_fallback = images.fallback[pairs.left] | images.fallback[pairs.right]
    out.update(
        n_pairs=len(pairs),
        n_scored=int(ok.sum()),
        skipped=skipped,
        n_pairs_with_fallback=int(uses_fallback.sum()),
        scores=scores,
    )
    return out


def leaked_identities(pairs: Pairs, training_identities: set[str]) -> list[str]:
    """Identities of the evaluation pairs that also occur in the training data, sorted."""
    if pairs.root is None:
        return []
    used = {pairs.identity(k) for k in range(len(pairs.images))}
    return sorted(used & training_identities)
