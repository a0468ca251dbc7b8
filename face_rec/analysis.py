"""Error analysis of a trained run's validation, for ``notebooks/compare_runs.ipynb``: the pairs
it gets most wrong (as images) and the score and embedding-norm distributions per class of pair.

A training run directory holds ``config.yaml``, ``metrics.json``, ``scores.csv`` (the final
validation, one row per pair) and ``checkpoints/last.pt``; the pair images come from the
dataset pack or alignment cache the run used (no detection runs again). Paths in the config are
relative to the directory ``train.py`` ran in (the repository root).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from face_rec.data.pairs import Pairs, load_pairs
from face_rec.eval.suite import configured_sets
from face_rec.eval.verification import PairImages, stratified_folds
from face_rec.report import find_runs, read_run

log = logging.getLogger(__name__)


@dataclass
class RunPairs:
    """One run's validation pairs with their images, scores and decision thresholds."""

    run_dir: Path
    config: DictConfig
    pairs: Pairs
    images: PairImages
    scores: np.ndarray  #: (N,) cosine scores, NaN for pairs that could not be scored
    threshold: np.ndarray  #: (N,) the threshold the protocol applied to each pair

    @property
    def accepted(self) -> np.ndarray:
        return self.scores > self.threshold

    def crops(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The two aligned crops of pair ``i``."""
        return self.images.crops[self.pairs.left[i]], self.images.crops[self.pairs.right[i]]


def best_run(sweep_dir: str | Path, metric: str = "select_accuracy") -> Path:
    """The run directory of a sweep (or any folder of runs) with the highest ``metric``: by
    default the model-selection list's accuracy, not the reported test list's. Runs made before
    selection lists existed have none: then the test accuracy, with a warning."""
    runs = [r for r in map(read_run, find_runs(Path(sweep_dir))) if r.status == "ok"]
    if not runs:
        raise FileNotFoundError(f"no finished runs under {sweep_dir}")
    if metric == "select_accuracy" and all(r.values.get(metric) is None for r in runs):
        log.warning(
            "%s: no run has a selection-list accuracy (made before val.select existed, or "
            "eval_lfw runs): picking by the test accuracy, which is optimistic",
            sweep_dir,
        )
        metric = "accuracy"
    runs = [r for r in runs if r.values.get(metric) is not None]
    return max(runs, key=lambda r: r.values[metric]).path


def load_run_pairs(run_dir: str | Path) -> RunPairs:
    """Read a training run's final validation back: pairs, aligned crops, scores, thresholds."""
    from face_rec.eval.cli import prepare_pair_images

    run_dir = Path(run_dir)
    missing = [
        n for n in ("config.yaml", "metrics.json", "scores.csv") if not (run_dir / n).exists()
    ]
    if missing:
        raise FileNotFoundError(
            f"{run_dir} lacks {missing}: not a finished training run with validation"
        )
    cfg = OmegaConf.load(run_dir / "config.yaml")
    if "sets" in cfg.val:  # scores.csv holds the first set's pairs
        first = configured_sets(cfg.val.sets, cfg.val.bins_dir)[0]
        pairs = load_pairs(first.pairs, first.image_root)
    else:  # a run made before validation sets were named
        pairs = load_pairs(cfg.val.pairs, cfg.val.image_root)
    with open(run_dir / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if len(rows) != len(pairs):
        raise ValueError(f"{run_dir}/scores.csv has {len(rows)} rows for {len(pairs)} pairs")
    scores = np.array([float(r["score"]) if r["score"] else np.nan for r in rows])
    val = json.loads((run_dir / "metrics.json").read_text())["val"]
    return RunPairs(
        run_dir, cfg, pairs, prepare_pair_images(pairs, cfg), scores, _thresholds(val, pairs)
    )


def _thresholds(val: dict, pairs: Pairs) -> np.ndarray:
    """The threshold the protocol applied to each pair: its fold's (the list's folds, or the
    stratified folds of 10-fold CV over a list without any), or the calibration list's."""
    t = np.asarray(val["thresholds"], float)
    if len(t) == 1:
        return np.full(len(pairs), t[0])
    folds = pairs.fold if pairs.n_folds >= 2 else stratified_folds(pairs.same)
    ids = np.unique(folds)
    if len(ids) != len(t):
        raise ValueError(f"{len(t)} thresholds in metrics.json for {len(ids)} folds of the pairs")
    return t[np.searchsorted(ids, folds)]


def hardest_errors(rp: RunPairs, k: int = 8) -> dict[str, np.ndarray]:
    """Pair indices of the ``k`` most confident mistakes: false accepts (different people, the
    highest scores above the threshold) and false rejects (same person, the lowest below it)."""
    ok = ~np.isnan(rp.scores)
    fa = np.flatnonzero(ok & ~rp.pairs.same & rp.accepted)
    fr = np.flatnonzero(ok & rp.pairs.same & ~rp.accepted)
    return {
        "false_accepts": fa[np.argsort(-rp.scores[fa], kind="stable")][:k],
        "false_rejects": fr[np.argsort(rp.scores[fr], kind="stable")][:k],
    }


def pairs_figure(rp: RunPairs, indices: np.ndarray, title: str):
    """The pairs side by side, one per row, each with its score and threshold. (Figures are
    built without pyplot, so a notebook shows each once, where it is displayed.)"""
    n = max(len(indices), 1)
    fig = Figure(figsize=(3.2, 1.7 * n))
    axes = fig.subplots(n, 2, squeeze=False)
    for row, i in zip(axes, indices, strict=False):
        for ax, crop, key in zip(
            row, rp.crops(i), (rp.pairs.left[i], rp.pairs.right[i]), strict=True
        ):
            ax.imshow(crop)
            ax.set_title(Path(rp.pairs.images[key]).name, fontsize=6)
        row[0].set_ylabel(f"{rp.scores[i]:.3f}\n(t {rp.threshold[i]:.3f})", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if not len(indices):
        axes[0, 0].set_title("none")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def embedding_norms(rp: RunPairs, checkpoint: str | Path | None = None) -> np.ndarray:
    """||f(x)|| of every pair image (no flip, before normalisation), from the run's last
    checkpoint by default. Low norms tend to mark hard or poor-quality faces."""
    from face_rec.eval.embed import embed_crops
    from face_rec.utils.checkpoint import model_from_checkpoint

    model = model_from_checkpoint(checkpoint or rp.run_dir / "checkpoints" / "last.pt")
    feats = embed_crops(model, rp.images.crops, flip=False, normalize=False)
    return np.linalg.norm(feats, axis=1)


def distributions_figure(rp: RunPairs, norms: np.ndarray):
    """Left: scores of matched and mismatched pairs with the threshold. Right: the smaller
    embedding norm of each pair, per class of pair and whether the decision was right."""
    ok = ~np.isnan(rp.scores)
    same, right = rp.pairs.same, rp.accepted == rp.pairs.same
    low = np.minimum(norms[rp.pairs.left], norms[rp.pairs.right])
    fig = Figure(figsize=(10, 3.6))
    a, b = fig.subplots(1, 2)
    bins = np.linspace(np.nanmin(rp.scores), np.nanmax(rp.scores), 40)
    a.hist(rp.scores[ok & same], bins, alpha=0.6, label="same person")
    a.hist(rp.scores[ok & ~same], bins, alpha=0.6, label="different people")
    a.axvline(np.median(rp.threshold), color="k", ls="--", lw=1, label="threshold")
    a.set_xlabel("cosine score")
    a.set_ylabel("pairs")
    a.legend(fontsize=8)
    nb = np.linspace(low.min(), low.max(), 30)
    for cls, name, color in ((True, "same", "C0"), (False, "different", "C1")):
        for good, style in ((True, "-"), (False, ":")):
            sel = ok & (same == cls) & (right == good)
            if sel.any():
                label = f"{name}, {'right' if good else 'wrong'} ({sel.sum()})"
                b.hist(low[sel], nb, histtype="step", ls=style, lw=1.5, color=color, label=label)
    b.set_xlabel("smaller embedding norm of the pair")
    b.legend(fontsize=8)
    fig.suptitle(f"{rp.run_dir}", fontsize=8)
    fig.tight_layout()
    return fig
