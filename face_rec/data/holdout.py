"""A model-selection pair list made of identities held out of training.

:class:`~face_rec.data.train_set.TrainSet` keeps a stable fraction of its identities out of
training (``train_data.holdout_fraction``); :func:`holdout_pairs` turns their aligned crops into
matched and mismatched pairs in identity-disjoint folds, as LFW View 2 is built. Validation
selects the model (``best.pt``, the sweep objective) on them (``val.select=holdout``): people the
model never trained on, and not the list whose number the run reports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from face_rec.data.make_pairs import identity_disjoint_pairs
from face_rec.data.pairs import Pairs
from face_rec.data.train_set import TrainSet
from face_rec.eval.verification import PairImages


def holdout_pairs(
    train_set: TrainSet, max_matched_per_identity: int = 10, n_folds: int = 10, seed: int = 0
) -> tuple[Pairs, PairImages]:
    """Pairs over the held-out identities of ``train_set`` and their crops (read from the packs),
    built by :func:`~face_rec.data.make_pairs.identity_disjoint_pairs`: up to
    ``max_matched_per_identity`` matched pairs of each identity, as many mismatched ones, in
    ``n_folds`` identity-disjoint folds.

    Raises:
        ValueError: too few held-out identities (or with two images) for 10 folds of pairs.
    """
    groups: dict[str, list[tuple[int, int]]] = {}
    for s, r in train_set.held_rows:
        groups.setdefault(f"{s}:{train_set.parts[s].rows[r]['identity']}", []).append((s, r))
    try:
        pairs = identity_disjoint_pairs(groups, max_matched_per_identity, n_folds, seed)
    except ValueError as e:
        raise ValueError(
            f"the held-out identities for the selection pairs: {e}; raise "
            "train_data.holdout_fraction or pass val.select=<pair list>"
        ) from None
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
