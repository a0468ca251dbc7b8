"""Writing an evaluation's outputs: metrics.json, scores.csv and the ROC plot."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from face_rec.data.pairs import Pairs
from face_rec.utils.io import atomic_path, write_json


def write_scores(path: Path, pairs: Pairs, scores: np.ndarray) -> None:
    """One row per pair: both sources, score (empty if skipped), label, fold."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["a", "b", "score", "same", "fold"])
        for i in range(len(pairs)):
            s = "" if np.isnan(scores[i]) else f"{scores[i]:.6f}"
            w.writerow(
                [
                    pairs.images[pairs.left[i]],
                    pairs.images[pairs.right[i]],
                    s,
                    int(pairs.same[i]),
                    int(pairs.fold[i]),
                ]
            )


def write_roc(path: Path, roc: dict) -> None:
    """The ROC points (fpr, tpr, threshold) as CSV, for overlays across runs."""
    with atomic_path(path) as tmp:
        np.savetxt(
            tmp,
            np.column_stack([roc["fpr"], roc["tpr"], roc["thresholds"]]),
            delimiter=",",
            header="fpr,tpr,threshold",
            comments="",
            fmt="%.6g",
        )


def write_metrics(path: Path, metrics: dict) -> None:
    """metrics.json without the bulky arrays (scores, ROC points)."""
    bulky = ("scores", "roc", "image_quality")
    write_json(path, {k: v for k, v in metrics.items() if k not in bulky})


def plot_roc(
    path: Path, curves: dict[str, dict], title: str = "ROC", groups: dict[str, str] | None = None
) -> None:
    """Save :func:`plot_roc_figure` as a PNG, atomically."""
    fig = plot_roc_figure(curves, title, groups)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


_STYLES = ("-", "--", ":", "-.")


def plot_roc_figure(
    curves: dict[str, dict], title: str = "ROC", groups: dict[str, str] | None = None
):
    """ROC curves on a log-FPR axis, with each curve's EER and TAR@FAR operating points marked.

    ``curves`` maps a label to a metrics dict holding ``roc`` (fpr, tpr), ``eer``, ``tar_at_far``.
    ``groups`` (label -> group, e.g. the setting of runs that differ only in seed) gives a group
    one colour and its members different line styles. The FAR axis starts one decade below the
    smallest non-zero FAR any curve reaches (what its negatives can resolve). Returns the
    matplotlib figure (built without pyplot: no GUI backend, nothing to close).
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    groups = groups or {label: label for label in curves}
    order = list(dict.fromkeys(groups[label] for label in curves))
    palette = colormaps["tab10" if len(order) <= 10 else "tab20"]
    fig = Figure(figsize=(6 if len(curves) <= 4 else 10, 5), dpi=120)
    ax = fig.subplots()
    seen: dict[str, int] = {}
    low = 1.0
    for label, m in curves.items():
        fpr, tpr = np.asarray(m["roc"]["fpr"]), np.asarray(m["roc"]["tpr"])
        if (fpr > 0).any():
            low = min(low, float(fpr[fpr > 0].min()))
        g = groups[label]
        color = palette(order.index(g) % palette.N)
        style = _STYLES[seen.get(g, 0) % len(_STYLES)]
        seen[g] = seen.get(g, 0) + 1
        ax.plot(
            np.maximum(fpr, 1e-6),
            tpr,
            style,
            color=color,
            lw=1.3,
            label=f"{label} (AUC {m['auc']:.4f}, EER {m['eer']:.2%})",
        )
        ax.plot([m["eer"]], [1 - m["eer"]], "o", color=color, ms=5)
        for key, tar in m["tar_at_far"].items():
            if tar is not None:
                ax.plot([float(key)], [tar], "s", color=color, ms=5)
                ax.annotate(
                    f"{tar:.3f}",
                    (float(key), tar),
                    textcoords="offset points",
                    xytext=(4, -10),
                    fontsize=7,
                )
    ax.set_xscale("log")
    ax.set_xlim(max(10 ** (np.floor(np.log10(low)) - 1), 1e-6), 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate (log scale)")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"{title}   (o EER, s TAR@FAR)")
    ax.grid(True, which="both", alpha=0.3)
    if len(curves) <= 4:
        ax.legend(loc="lower right", fontsize=8)
    else:  # many runs: the legend beside the plot, not over the curves
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)
    fig.tight_layout()
    return fig


def write_images(path: Path, pairs: Pairs, images, quality: np.ndarray) -> None:
    """One row per image of the list: source, quality (the feature norm; empty where
    unusable), status (ok | fallback | failed), outside_fraction (empty where unknown), reason."""
    outside = images.outside_fraction
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "quality", "status", "outside_fraction", "reason"])
        for k, src in enumerate(pairs.images):
            bad = bool(images.problems[k])
            status = "failed" if bad else "fallback" if images.fallback[k] else "ok"
            o = "" if outside is None or np.isnan(outside[k]) else f"{outside[k]:.4f}"
            q = "" if bad or np.isnan(quality[k]) else f"{quality[k]:.9g}"
            w.writerow([src, q, status, o, images.problems[k]])


def plot_error_vs_reject(path: Path, curves: dict[str, dict], title: str) -> None:
    """Error over the kept pairs against the fraction of lowest-quality pairs rejected (one
    line per label -> ``error_vs_reject`` dict), saved as a PNG atomically."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5), dpi=120)
    ax = fig.subplots()
    for label, c in curves.items():
        pts = [
            (r, e) for r, e in zip(c["reject_fraction"], c["error"], strict=True) if e is not None
        ]
        ax.plot(
            [100 * r for r, _ in pts], [100 * e for _, e in pts], "o-", lw=1.3, ms=4, label=label
        )
    ax.set_xlabel("pairs rejected, lowest quality first (%)")
    ax.set_ylabel("verification error over the kept pairs (%)")
    ax.set_title(f"{title}: error versus reject (quality = feature norm)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
