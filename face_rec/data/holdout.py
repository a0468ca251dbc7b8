"""A model-selection pair list made of identities held out of training.

:class:`~face_rec.data.train_set.TrainSet` keeps a stable fraction of its identities out of
training (``train_data.holdout_fraction``); :func:`holdout_pairs` turns their aligned crops into
matched and mismatched pairs in identity-disjoint folds, as LFW View 2 is built. Validation
selects the model (``best.pt``, the sweep objective) on them (``val.select=holdout``): people the
model never trained on, and not the list whose number the run reports.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from face_rec.data.pairs import Pairs
from face_rec.data.train_set import TrainSet
from face_rec.eval.verification import PairImages


def holdout_pairs(
    train_set: TrainSet, max_matched_per_identity: int = 10, n_folds: int = 10, seed: int = 0
) -> tuple[Pairs, PairImages]:
    """Pairs over the held-out identities of ``train_set`` and their crops (read from the packs).

    Matched: up to ``max_matched_per_identity`` random pairs of each identity's images. Fold
    f holds every pair of its identities (identities dealt to folds in hash order) and as many
    mismatched pairs (two of its identities, one image each) as matched ones.

    Raises:
        ValueError: no held-out identities, or too few with two images to form pairs.
    """
    groups: dict[tuple[int, str], list[tuple[int, int]]] = {}
    for s, r in train_set.held_rows:
        groups.setdefault((s, train_set.parts[s].rows[r]["identity"]), []).append((s, r))
    keys = sorted(groups, key=lambda k: hashlib.sha256(f"{k[0]}:{k[1]}".encode()).digest())
    n_matched = sum(len(groups[k]) >= 2 for k in keys)
    if n_matched < n_folds:
        raise ValueError(
            f"{len(keys)} held-out identities, {n_matched} with two or more images: too few for "
            f"{n_folds} folds of selection pairs; raise train_data.holdout_fraction or pass "
            "val.select=<pair list>"
        )
    rng = np.random.default_rng(seed)
    fold_of = {k: i % n_folds for i, k in enumerate(keys)}
    pairs: list[tuple[tuple[int, int], tuple[int, int], bool, int]] = []
    for f in range(n_folds):
        ids = [k for k in keys if fold_of[k] == f]
        matched = []
        for k in ids:
            g = groups[k]
            combos = [(g[i], g[j]) for i in range(len(g)) for j in range(i + 1, len(g))]
            picks = rng.permutation(len(combos))[:max_matched_per_identity]
            matched += [(*combos[p], True, f) for p in picks]
        for _ in range(len(matched) if len(ids) >= 2 else 0):
            a, b = rng.choice(len(ids), 2, replace=False)
            ga, gb = groups[ids[a]], groups[ids[b]]
            pairs.append((ga[rng.integers(len(ga))], gb[rng.integers(len(gb))], False, f))
        pairs += matched
    return _as_pairs(train_set, pairs)


def _as_pairs(train_set: TrainSet, pairs: list) -> tuple[Pairs, PairImages]:
    index: dict[tuple[int, int], int] = {}
    for a, b, _, _ in pairs:
        index.setdefault(a, len(index))
        index.setdefault(b, len(index))
    rows = [train_set.parts[s].rows[r] for s, r in index]
    part0 = train_set.parts[0]
    crops = np.stack(
        [np.asarray(train_set.parts[s].images[train_set.parts[s].indices[r]]) for s, r in index]
    )
    sources = sorted({str(train_set.parts[s].pack_dir) for s, _ in index})
    listed = Pairs(
        images=[
            f"{row['identity']}/{s}/{row['source']}"
            for (s, _), row in zip(index, rows, strict=True)
        ],
        left=np.array([index[p[0]] for p in pairs], dtype=np.int64),
        right=np.array([index[p[1]] for p in pairs], dtype=np.int64),
        same=np.array([p[2] for p in pairs], dtype=bool),
        fold=np.array([p[3] for p in pairs], dtype=np.int64),
        protocol="holdout",
        source=f"held-out identities of {', '.join(sources)}",
        root=Path(part0.pack_dir),
    )
    fallback = np.array([row["status"] == "fallback" for row in rows])
    return listed, PairImages(crops, [""] * len(rows), fallback)
