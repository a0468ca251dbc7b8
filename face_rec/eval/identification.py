"""Identification (1:N search) metrics: pure numpy, arrays in, numbers out.

Scores are the dot products of the given feature rows (cosine similarity for unit rows),
computed in float32 in memory-bounded blocks of probes. A gallery is ranked by descending score;
equal scores are ordered by the lower gallery index (deterministic; with real features exact ties
are rare). A probe's *mates* are the gallery entries with its identity; its *mate rank* is the
1-based position of its first mate in that order (the best-scoring mate entry), i.e. ranks are
over gallery entries, not identities.

Three protocols:

* :func:`open_set_identification`: NIST's (Grother et al., NIST IR 8238; the IJB-B/C papers):
  mated and non-mated searches, TPIR at FPIR with the threshold from the non-mated searches'
  top-1 scores, mate required at rank 1; rank-k / CMC over mated searches.
* :func:`insightface_merged_identification`: the figures insightface's
  ``recognition/_evaluation_/ijb/ijb_1n.py`` prints for the merged G1+G2 gallery (labelled).
* :func:`closed_set_identification`: rank-k accuracy and CMC, every scored probe has a mate;
  distractors enlarge the gallery (TinyFace, MegaFace).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from face_rec.eval.metrics import far_supported

#: score-matrix elements computed at once (float32 scores plus boolean masks: ~ 100 MB)
BLOCK_ELEMENTS = 1 << 22
#: a search "alarms" at threshold t when its top-1 score is > t (face_rec's accept rule)
ACCEPT_RULE = "score > threshold"
CMC_MAX_RANK = 100


def rate_key(rate: float) -> str:
    """face_rec's key of a rate: 0.01 -> "1e-2", 0.1 -> "1e-1", 0.05 -> "5e-2"."""
    mantissa, exponent = f"{rate:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


# --- searching


def search_topk(
    probe: np.ndarray, gallery: np.ndarray, k: int, block: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best-scoring gallery entries of each probe.

    Args:
        probe: (P, D) features; gallery: (G, D) features (scores are their dot products,
            float32; unit rows give cosine similarity).
        k: entries per probe; clipped to G.
        block: probes scored at once (fewer when G is large: at most ``BLOCK_ELEMENTS``
            scores are held at a time).

    Returns:
        scores (P, k) float32, descending, and indices (P, k) int64 into the gallery; equal
        scores are ordered by the lower gallery index.
    """
    probe, gallery = _features(probe, gallery)
    if k < 1:
        raise ValueError(f"k={k!r} must be >= 1")
    k = min(k, len(gallery))
    scores = np.empty((len(probe), k), np.float32)
    index = np.empty((len(probe), k), np.int64)
    for rows, s in _score_blocks(probe, gallery, block):
        scores[rows], index[rows] = _topk_rows(s, k)
    return scores, index


def _features(probe: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probe = np.ascontiguousarray(probe, dtype=np.float32)
    gallery = np.ascontiguousarray(gallery, dtype=np.float32)
    if probe.ndim != 2 or gallery.ndim != 2 or probe.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"features must be (P, D) and (G, D) with the same D; got {probe.shape} and "
            f"{gallery.shape}"
        )
    if len(gallery) == 0:
        raise ValueError("the gallery is empty: nothing to search")
    for name, x in (("probe", probe), ("gallery", gallery)):
        if not np.isfinite(x).all():
            raise ValueError(f"{name} features hold NaN or inf values; embed again")
    return probe, gallery


def _score_blocks(
    probe: np.ndarray, gallery: np.ndarray, block: int
) -> Iterator[tuple[slice, np.ndarray]]:
    """(rows, scores (b, G) float32) for consecutive blocks of probes."""
    if block < 1:
        raise ValueError(f"block={block!r} must be >= 1")
    step = max(1, min(block, BLOCK_ELEMENTS // len(gallery)))
    for start in range(0, len(probe), step):
        rows = slice(start, min(start + step, len(probe)))
        yield rows, probe[rows] @ gallery.T


def _topk_rows(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of each row of ``s`` (b, G): descending, ties by the lower column; exact at the
    k-th score (entries tied there are taken lowest column first)."""
    b, g = s.shape
    if k >= g:
        cols = np.argsort(-s, axis=1, kind="stable")
    else:
        kth = np.partition(s, g - k, axis=1)[:, g - k : g - k + 1]  # k-th largest per row
        above = s > kth
        tied = s == kth
        room = k - above.sum(axis=1, keepdims=True)  # >= 1 tied entries still to take
        take = above | (tied & (np.cumsum(tied, axis=1) <= room))
        cols = np.nonzero(take)[1].reshape(b, k)  # ascending column within each row
        order = np.argsort(-np.take_along_axis(s, cols, axis=1), axis=1, kind="stable")
        cols = np.take_along_axis(cols, order, axis=1)
    return np.take_along_axis(s, cols, axis=1), cols.astype(np.int64)


@dataclass
class _Search:
    """Per probe: top-1 score and index, mate rank (0: no mate) and best mate score (NaN)."""

    top1_score: np.ndarray  #: (P,) float32
    top1_index: np.ndarray  #: (P,) int64
    mate_rank: np.ndarray  #: (P,) int64
    mate_score: np.ndarray  #: (P,) float32
    nonmate_top: np.ndarray  #: (<= K,) the K highest non-mate scores over all probes, descending


def _search(
    probe: np.ndarray,
    gallery: np.ndarray,
    probe_codes: np.ndarray,
    gallery_codes: np.ndarray,
    block: int,
    nonmate_top: int = 0,
) -> _Search:
    """Score every probe against the gallery once; ``*_codes``: integer identities (a probe
    and a gallery entry are mates when their codes are equal)."""
    p = len(probe)
    out = _Search(
        np.empty(p, np.float32),
        np.empty(p, np.int64),
        np.zeros(p, np.int64),
        np.full(p, np.nan, np.float32),
        np.empty(0, np.float32),
    )
    columns = np.arange(len(gallery))
    for rows, s in _score_blocks(probe, gallery, block):
        out.top1_index[rows] = np.argmax(s, axis=1)  # the first maximum: the lowest index
        out.top1_score[rows] = s[np.arange(len(s)), out.top1_index[rows]]
        mate = probe_codes[rows, None] == gallery_codes[None, :]
        has = mate.any(axis=1)
        best = np.where(mate, s, -np.inf).max(axis=1, initial=-np.inf)[:, None]
        first = np.argmax(mate & (s == best), axis=1)[:, None]  # the first mate at that score
        ahead = (s > best) | ((s == best) & (columns[None, :] < first))
        out.mate_rank[rows] = np.where(has, 1 + ahead.sum(axis=1), 0)
        out.mate_score[rows] = np.where(has, best[:, 0], np.nan)
        if nonmate_top:
            pool = np.concatenate([out.nonmate_top, s[~mate]])
            if len(pool) > nonmate_top:
                pool = np.partition(pool, len(pool) - nonmate_top)[-nonmate_top:]
            out.nonmate_top = pool
    out.nonmate_top = np.sort(out.nonmate_top)[::-1]
    return out


def _codes(
    probe_ids: Sequence, gallery_ids: Sequence, n_probe: int, n_gallery: int
) -> tuple[np.ndarray, np.ndarray]:
    """Integer identity codes: gallery identities 0.., probe identities absent from it -1."""
    probe_ids = np.asarray(probe_ids).tolist()  # numpy scalars -> Python values (hashable)
    gallery_ids = np.asarray(gallery_ids).tolist()
    if len(probe_ids) != n_probe or len(gallery_ids) != n_gallery:
        raise ValueError(
            f"{len(probe_ids)} probe ids for {n_probe} probe features and {len(gallery_ids)} "
            f"gallery ids for {n_gallery} gallery features: give one id per row"
        )
    index: dict = {}
    gallery_codes = np.array([index.setdefault(i, len(index)) for i in gallery_ids], np.int64)
    probe_codes = np.array([index.get(i, -1) for i in probe_ids], np.int64)
    return probe_codes, gallery_codes


def _cmc(mate_rank: np.ndarray, max_rank: int) -> list[float]:
    """Hit rate at ranks 1..max_rank over the given (mated) searches' mate ranks."""
    counts = np.bincount(np.minimum(mate_rank, max_rank + 1), minlength=max_rank + 2)
    return (np.cumsum(counts[1 : max_rank + 1]) / max(len(mate_rank), 1)).tolist()


def _rank_rates(mate_rank: np.ndarray, ranks: Sequence[int]) -> dict[str, float | None]:
    """``rank{k}``: fraction of the given (mated) searches whose mate rank is <= k."""
    for r in ranks:
        if int(r) < 1:
            raise ValueError(f"rank {r!r} must be >= 1")
    if len(mate_rank) == 0:
        return {f"rank{int(r)}": None for r in ranks}
    return {f"rank{int(r)}": float(np.mean(mate_rank <= int(r))) for r in ranks}


def _check_rates(rates: Sequence[float], name: str) -> None:
    for r in rates:
        if not 0 < r < 1:
            raise ValueError(f"{name} {r!r} must be a rate in (0, 1), e.g. 1e-2")


# --- NIST open-set identification


def nist_threshold(nonmated_top1: np.ndarray, fpir: float) -> float | None:
    """The lowest threshold t with FPIR(t) <= ``fpir``, FPIR(t) = fraction of the non-mated
    searches' top-1 scores ``nonmated_top1`` (N,) that are > t.

    With m = floor(N x fpir) false alarms allowed, t is the (m+1)-th highest non-mated top-1
    score: at most m scores lie above it, and any lower t lets m+1 through. None when the
    searches cannot resolve the rate (N x fpir < 1: no false alarm allowed at all).
    """
    _check_rates([fpir], "fpir")
    n = len(nonmated_top1)
    if not far_supported(n, fpir):
        return None
    allowed = math.floor(n * fpir + 1e-9)  # < n for fpir < 1
    return float(np.sort(np.asarray(nonmated_top1, np.float32))[::-1][allowed])


def open_set_identification(
    probe_feats: np.ndarray,
    probe_ids: Sequence,
    gallery_feats: np.ndarray,
    gallery_ids: Sequence,
    fpirs: Sequence[float] = (1e-2, 1e-1),
    ranks: Sequence[int] = (1, 5, 10),
    block: int = 4096,
) -> dict:
    """Open-set 1:N identification the NIST way (NIST IR 8238; IJB-B/C 1:N protocol).

    Args:
        probe_feats: (P, D) probe (template) features; probe_ids: (P,) their subjects.
        gallery_feats: (G, D) gallery features; gallery_ids: (G,) their subjects.
        fpirs: target false positive identification rates, each in (0, 1).
        ranks: the k of the ``rank{k}`` figures.

    A search is *mated* when the probe's subject is in the gallery, else *non-mated*. At a
    threshold t a search alarms when its top-1 score is > t (face_rec's rule, ``score >
    threshold``, everywhere):

    * FPIR(t) = fraction of non-mated searches whose top-1 score is > t;
    * FNIR(t) = fraction of mated searches whose mate is not at rank 1 with a score > t;
      TPIR(t) = 1 - FNIR(t) (a mate tied at the top with a non-mate of lower gallery index
      is at rank 2).

    The threshold for each target is :func:`nist_threshold` of the non-mated top-1 scores: the
    lowest (most permissive) t with FPIR(t) <= target, a non-mated top-1 score itself; None
    (with a note) when n_nonmated x fpir < 1. ``rank{k}`` and ``cmc`` (hit rates at ranks
    1..min(G, 100)) are over the mated searches, with no threshold.

    Returns:
        dict: protocol, accept_rule, tpir_at_fpir, thresholds, fpir_at_threshold (the FPIR the
        threshold achieves), rank{k}, cmc, n_mated, n_nonmated, n_gallery, notes.
    """
    probe, gallery = _features(probe_feats, gallery_feats)
    _check_rates(fpirs, "fpir")
    probe_codes, gallery_codes = _codes(probe_ids, gallery_ids, len(probe), len(gallery))
    found = _search(probe, gallery, probe_codes, gallery_codes, block)
    mated = found.mate_rank > 0
    nonmated_top1 = found.top1_score[~mated]
    hit1 = found.mate_rank[mated] == 1
    mate1_score = found.top1_score[mated]  # the mate's score where hit1
    n_mated, n_nonmated = int(mated.sum()), int((~mated).sum())
    out = {
        "protocol": "NIST open-set 1:N (NIST IR 8238): TPIR = 1 - FNIR at FPIR, threshold from "
        "the top-1 scores of the non-mated searches, mate required at rank 1",
        "accept_rule": f"a search alarms when its top-1 {ACCEPT_RULE}",
        "tpir_at_fpir": {},
        "thresholds": {},
        "fpir_at_threshold": {},
    }
    notes = []
    for rate in fpirs:
        key = rate_key(rate)
        t = nist_threshold(nonmated_top1, rate)
        if t is None:
            out["tpir_at_fpir"][key] = out["thresholds"][key] = None
            out["fpir_at_threshold"][key] = None
            notes.append(
                f"TPIR at FPIR {key} not reported: {n_nonmated} non-mated searches cannot "
                f"resolve it (n_nonmated x FPIR < 1; needs at least {math.ceil(1 / rate - 1e-9)})"
            )
            continue
        out["thresholds"][key] = t
        out["fpir_at_threshold"][key] = float(np.mean(nonmated_top1 > t))
        out["tpir_at_fpir"][key] = float(np.mean(hit1 & (mate1_score > t))) if n_mated else None
    if not n_mated:
        notes.append("no mated searches: TPIR, rank-k and CMC are not defined")
    out.update(_rank_rates(found.mate_rank[mated], ranks))
    out["cmc"] = _cmc(found.mate_rank[mated], min(len(gallery), CMC_MAX_RANK)) if n_mated else []
    out.update(
        n_mated=n_mated,
        n_nonmated=n_nonmated,
        n_gallery=len(gallery),
        notes=notes,
    )
    return out


# --- insightface's merged-gallery figures


def insightface_merged_identification(
    probe_feats: np.ndarray,
    probe_ids: Sequence,
    gallery_feats: np.ndarray,
    gallery_ids: Sequence,
    fpirs: Sequence[float] = (1e-2, 1e-1),
    ranks: Sequence[int] = (1, 5, 10),
    block: int = 4096,
) -> dict:
    """The figures insightface's IJB 1:N script (``recognition/_evaluation_/ijb/ijb_1n.py``,
    its ``evaluation()``) prints, for a gallery of G1 and G2 merged (pass both, concatenated).

    What it computes, over the n probes with a mate (with G1+G2 merged every IJB probe has one;
    insightface stops with an error otherwise, here probes without one are left out and
    counted):

    * ``rank{k}`` ("top1/top5/top10"): fraction of probes whose mate entry is among the k
      best-scoring gallery entries (insightface orders ties arbitrarily, here lower index
      first; it requires exactly one entry per subject, here the best-scoring one counts);
    * ``tpir_at_fpir`` (printed as "far = ... pr = ..."): the threshold th is the k-th highest
      of ALL non-mate similarities (every probe against every gallery entry of another
      subject), k = ceil(n x rate); the figure is the fraction of probes whose mate score is
      > th.

    How it differs from NIST (:func:`open_set_identification`): (1) no non-mated searches:
    G1 and G2 together enrol every probe subject, so the "false alarms" are the non-mate
    scores of mated searches; (2) the rate counts non-mate scores above th per search (a search
    can contribute several; ``false_alarms_per_search`` gives the achieved value, < rate), not
    the fraction of non-mated searches whose top-1 score alarms; (3) the mate need not be at
    rank 1, only above th; (4) one merged gallery instead of G1 and G2 separately, averaged.
    (Scores here are float32; insightface's are float64 products of the same features.)
    Its numbers are therefore not TPIR@FPIR in NIST's sense; they are what insightface-based
    papers quote as IJB 1:N.

    Returns:
        dict: protocol, tpir_at_fpir, thresholds, false_alarms_per_search, rank{k}, cmc
        (ranks 1..min(G, 100)), n_probes, n_without_mate, n_gallery, n_nonmate_scores, notes.
    """
    probe, gallery = _features(probe_feats, gallery_feats)
    _check_rates(fpirs, "fpir")
    probe_codes, gallery_codes = _codes(probe_ids, gallery_ids, len(probe), len(gallery))
    has = probe_codes >= 0
    n = int(has.sum())
    needed = {rate: math.ceil(n * rate) for rate in fpirs}  # insightface's required_topk
    found = _search(
        probe[has], gallery, probe_codes[has], gallery_codes, block, max(needed.values(), default=0)
    )
    mates_per_probe = np.bincount(gallery_codes, minlength=len(set(gallery_codes.tolist())))
    n_nonmate = int(n * len(gallery) - mates_per_probe[probe_codes[has]].sum())
    out = {
        "protocol": "insightface merged G1+G2 (ijb_1n.py evaluation()): threshold = the "
        "ceil(n x rate)-th highest non-mate score of all probe-gallery comparisons, figure = "
        "fraction of probes whose mate score > threshold (rank not required); not NIST's "
        "TPIR@FPIR",
        "tpir_at_fpir": {},
        "thresholds": {},
        "false_alarms_per_search": {},
    }
    notes = []
    if n < len(probe):
        notes.append(
            f"{len(probe) - n} probes have no mate in the merged gallery and are left out "
            "(insightface's script stops with an error on them)"
        )
    for rate in fpirs:
        key, k = rate_key(rate), needed[rate]
        if n == 0 or k > len(found.nonmate_top):
            out["tpir_at_fpir"][key] = out["thresholds"][key] = None
            out["false_alarms_per_search"][key] = None
            notes.append(
                f"{key} not reported: it needs the {k}-th highest of {n_nonmate} non-mate scores"
            )
            continue
        th = float(found.nonmate_top[k - 1])
        out["thresholds"][key] = th
        out["tpir_at_fpir"][key] = float(np.mean(found.mate_score > th))
        out["false_alarms_per_search"][key] = float(np.sum(found.nonmate_top > th) / n)
    out.update(_rank_rates(found.mate_rank, ranks))
    out["cmc"] = _cmc(found.mate_rank, min(len(gallery), CMC_MAX_RANK)) if n else []
    out.update(
        n_probes=n,
        n_without_mate=len(probe) - n,
        n_gallery=len(gallery),
        n_nonmate_scores=n_nonmate,
        notes=notes,
    )
    return out


# --- closed-set identification


def closed_set_identification(
    probe_feats: np.ndarray,
    probe_ids: Sequence,
    gallery_feats: np.ndarray,
    gallery_ids: Sequence,
    ranks: Sequence[int] = (1, 5, 10),
    max_rank: int = CMC_MAX_RANK,
    distractor_feats: np.ndarray | None = None,
    block: int = 4096,
) -> dict:
    """Closed-set identification: rank-k accuracy and the CMC curve.

    Args:
        probe_feats: (P, D); probe_ids: (P,) identities.
        gallery_feats: (G, D); gallery_ids: (G,) identities (several entries per identity
            allowed).
        ranks: the k of the ``rank{k}`` figures; max_rank: the CMC's last rank (clipped to the
            searched gallery's size).
        distractor_feats: (Q, D) or None: entries appended after the gallery that match no
            probe (TinyFace's Gallery_Distractor, MegaFace's distractors).

    A probe's rank is the position of its first mate entry among all G + Q entries ranked by
    score (ties: lower index first; distractors come after the gallery). Ranking over entries
    is what TinyFace's evaluation (the PFE/AdaFace ``DIR_FAR`` code: a hit when any entry of
    the probe's identity is among the top k) and MegaFace (one mate per search) use; the
    alternative, ranking identities by their best entry, gives the same rank-1 but higher
    rank-k when identities have several entries, and is not used here.

    Probes whose identity has no gallery entry are not scored: counted in ``n_unmated`` and
    listed (indices) in ``unmated``. Rates are over the scored probes.

    Returns:
        dict: protocol, rank{k}, cmc (ranks 1..min(max_rank, G + Q)), n_probes, n_scored,
        n_unmated, unmated, n_gallery, n_gallery_identities, n_distractors, and ``per_probe``:
        mate_rank (P,) int64 (0: unmated), top1_index (P,) int64 into gallery + distractors,
        top1_score (P,) float32.
    """
    if max_rank < 1:
        raise ValueError(f"max_rank={max_rank!r} must be >= 1")
    probe, gallery = _features(probe_feats, gallery_feats)
    probe_codes, gallery_codes = _codes(probe_ids, gallery_ids, len(probe), len(gallery))
    n_distractors = 0
    if distractor_feats is not None and len(distractor_feats):
        _, distractors = _features(probe, distractor_feats)
        n_distractors = len(distractors)
        gallery = np.concatenate([gallery, distractors])
        gallery_codes = np.concatenate([gallery_codes, np.full(n_distractors, -2, np.int64)])
    found = _search(probe, gallery, probe_codes, gallery_codes, block)
    scored = found.mate_rank > 0
    if not scored.any():
        raise ValueError(
            f"none of the {len(probe)} probes has an identity in the gallery: closed-set "
            "identification needs probes of enrolled identities"
        )
    out = {
        "protocol": "closed-set: rank of each probe's first mate entry among all gallery and "
        "distractor entries (ties: lower index first); probes without a mate are not scored",
    }
    out.update(_rank_rates(found.mate_rank[scored], ranks))
    out["cmc"] = _cmc(found.mate_rank[scored], min(max_rank, len(gallery)))
    out.update(
        n_probes=len(probe),
        n_scored=int(scored.sum()),
        n_unmated=int((~scored).sum()),
        unmated=np.flatnonzero(~scored).tolist(),
        n_gallery=len(gallery) - n_distractors,
        n_gallery_identities=len(set(gallery_codes[gallery_codes >= 0].tolist())),
        n_distractors=n_distractors,
        per_probe={
            "mate_rank": found.mate_rank,
            "top1_index": found.top1_index,
            "top1_score": found.top1_score,
        },
    )
    return out
