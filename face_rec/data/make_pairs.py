"""A 10-fold verification pair list from an identity folder tree (``python -m
face_rec.data.make_pairs``).

For data with no published pair list (celeba299, your own photos), or a second list to choose
a recipe on without touching the one a paper reports. The pairs are built as LFW View 2 is:
identities are dealt to identity-disjoint folds, each fold holds up to
``--matched-per-identity`` matched pairs of each of its identities and as many mismatched
distinct pairs (two of its identities, one image each). The list depends only on the file
names, the options and the seed (numpy's PCG64 stream), so the same command over the same files
gives the same list::

    python -m face_rec.data.make_pairs ../shared/data/celeba299/images \\
        --out packs/pairs/celeba299_pairs.csv
    python eval_lfw.py data=celeba299 checkpoint=<run>/checkpoints/best.pt \\
        pairs=packs/pairs/celeba299_pairs.csv calibration_pairs=null

The output is the CSV ``eval_lfw.py`` reads (``path_a,path_b,same,fold``, paths relative to
the image root, so evaluate with ``image_root`` (or ``data=``) pointing there), written
atomically. :func:`identity_disjoint_pairs` is also how training picks its held-out
identities' selection list (:mod:`face_rec.data.holdout`).
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from face_rec.align.run import list_inputs
from face_rec.data.pairs import write_csv_pairs
from face_rec.data.train_set import read_people

T = TypeVar("T")


def identity_disjoint_pairs(
    groups: dict[str, Sequence[T]],
    max_matched_per_identity: int = 10,
    n_folds: int = 10,
    seed: int = 0,
    unique_mismatched: bool = False,
) -> list[tuple[T, T, bool, int]]:
    """(a, b, same, fold) pairs over ``groups`` (identity key -> its images).

    Identities are dealt to folds in the order of their keys' SHA-256 (stable, and unrelated
    to the names' order). Fold f holds up to ``max_matched_per_identity`` random matched pairs
    of each of its identities and as many mismatched pairs (two different identities of the
    fold, one random image each): every pair's two identities lie in the same fold.
    ``unique_mismatched``: no mismatched pair twice (either order), as in LFW's lists; off, a
    pair may repeat (training's held-out list, kept as earlier runs were selected on it).

    Raises:
        ValueError: a fold would hold fewer than two identities or none with two images, or
            (``unique_mismatched``) too few distinct mismatched pairs.
    """
    keys = sorted(groups, key=lambda k: hashlib.sha256(k.encode("utf-8")).digest())
    # dealt in turn: fold f holds the keys i with i % n_folds == f
    folds = [keys[f::n_folds] for f in range(n_folds)]
    n_matched = sum(len(groups[k]) >= 2 for k in keys)
    if len(keys) < 2 * n_folds or not all(any(len(groups[k]) >= 2 for k in ids) for ids in folds):
        raise ValueError(
            f"{len(keys)} identities, {n_matched} with two or more images: too few for "
            f"{n_folds} identity-disjoint folds (each needs two identities, one of them with two "
            "or more images)"
        )
    rng = np.random.default_rng(seed)
    pairs: list[tuple[T, T, bool, int]] = []
    for f, ids in enumerate(folds):
        matched = []
        for k in ids:
            g = groups[k]
            combos = [(g[i], g[j]) for i in range(len(g)) for j in range(i + 1, len(g))]
            picks = rng.permutation(len(combos))[:max_matched_per_identity]
            matched += [(*combos[p], True, f) for p in picks]
        mismatched: list[tuple[T, T, bool, int]] = []
        seen: set[frozenset] = set()
        for _ in range(100 * len(matched)):  # draws; without unique_mismatched, exactly as many
            if len(mismatched) == len(matched):
                break
            a, b = rng.choice(len(ids), 2, replace=False)
            ga, gb = groups[ids[a]], groups[ids[b]]
            pair = (ga[rng.integers(len(ga))], gb[rng.integers(len(gb))])
            if unique_mismatched and frozenset(pair) in seen:
                continue
            seen.add(frozenset(pair))
            mismatched.append((*pair, False, f))
        if len(mismatched) < len(matched):
            raise ValueError(
                f"fold {f}: fewer than {len(matched)} distinct mismatched pairs among its "
                f"{len(ids)} identities"
            )
        pairs += mismatched + matched
    return pairs


def scan_identities(
    root: str | Path, identities: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """Image paths relative to ``root`` per identity folder, as the alignment stage lists them
    (:func:`face_rec.align.run.list_inputs`: sub-folders included, sorted); only the folders
    named in ``identities`` when given.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or a named identity has no images there.
        ValueError: no identity folder holds an image.
    """
    files, _, _ = list_inputs(root)
    groups: dict[str, list[str]] = {}
    for f in files:
        groups.setdefault(f.identity, []).append(f.source)
    if identities is not None:
        names = list(dict.fromkeys(identities))
        missing = [n for n in names if n not in groups]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(names)} listed identities have no images under {root} "
                f"(first: {missing[0]!r}); check the identity list and the image root"
            )
        groups = {n: groups[n] for n in names}
    if not groups:
        raise ValueError(
            f"image root {root}: no images found; expected one folder of images per identity"
        )
    return groups


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m face_rec.data.make_pairs",
        description="Write a 10-fold, identity-disjoint verification pair list (CSV) over the "
        "identity folders of an image root.",
    )
    p.add_argument("root", help="folder with one folder of images per identity")
    p.add_argument("--out", required=True, help="the CSV to write (path_a,path_b,same,fold)")
    p.add_argument(
        "--identities",
        help="only the identities of this LFW people list (a count, then name<TAB>n lines)",
    )
    p.add_argument("--folds", type=int, default=10, help="identity-disjoint folds (default 10)")
    p.add_argument(
        "--matched-per-identity",
        type=int,
        default=10,
        help="at most this many matched pairs per identity (default 10)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.folds < 2 or args.matched_per_identity < 1:
        p.error(
            f"--folds {args.folds}, --matched-per-identity {args.matched_per_identity}: "
            "need at least 2 folds and 1 matched pair per identity"
        )
    try:
        names = read_people(args.identities) if args.identities else None
        groups = scan_identities(args.root, names)
    except (OSError, ValueError) as e:
        raise SystemExit(f"make_pairs: {e}") from None
    try:
        pairs = identity_disjoint_pairs(
            groups, args.matched_per_identity, args.folds, args.seed, unique_mismatched=True
        )
    except ValueError as e:
        raise SystemExit(f"make_pairs: {e}; pass a smaller --folds") from None
    write_csv_pairs(args.out, pairs)
    n_same = sum(p[2] for p in pairs)
    print(
        f"{args.out}: {len(pairs)} pairs ({n_same} matched, {len(pairs) - n_same} mismatched) over "
        f"{len(groups)} identities ({sum(len(g) >= 2 for g in groups.values())} with two or more "
        f"images), {args.folds} identity-disjoint folds, seed {args.seed}"
    )


if __name__ == "__main__":
    main()
