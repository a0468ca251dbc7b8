"""Glue between ``eval_ijb.py``'s config and the IJB library (:mod:`face_rec.eval.ijb`,
:mod:`face_rec.eval.ijb_data`): :func:`evaluate_ijb_from_config`, and the steps it runs in
turn (:func:`read_meta`, :func:`face_features`, :func:`templates`, :func:`verify`,
:func:`one_n`), which ``benchmarks/ijb_scoring.py --real-path`` times at IJB-C's size.

Shapes: N faces with landmarks, F of them used by some template (the feature store's rows), R
lines of face_tid_mid, T templates, P pairs, D feature dimensions.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from face_rec.config_check import check_config
from face_rec.eval import ijb
from face_rec.eval.cli import build_model, eval_device, resolve_device
from face_rec.eval.ijb_data import (
    ONE_N_FILES,
    FaceFeatures,
    IJBMeta,
    TemplateMedia,
    TemplatePairs,
    extract_features,
    read_1n_csv,
    read_meta,
)
from face_rec.eval.report import plot_roc, write_roc
from face_rec.utils.io import atomic_path, write_json
from face_rec.utils.machine import machine_info

log = logging.getLogger(__name__)
N_EXAMPLES = 10
#: what ``eval_ijb.py`` returns to sweepers: insightface's TAR at this FAR
SWEEP_FAR = "1e-4"
_T = TypeVar("_T")


def evaluate_ijb_from_config(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Run ``eval_ijb.py``: metrics.json, roc.png, roc.csv, config.yaml (and scores.npy with
    ``save_scores``) into ``out_dir``. Returns the metrics."""
    check_config(cfg)
    if not cfg.eval.flip:
        raise ValueError(
            "eval.flip=false is eval_lfw's switch; eval_ijb keeps f(x) and f(flip x) and combines "
            "them as template.flip says: pass template.flip=off"
        )
    switches: ijb.TemplateSwitches = instantiate(cfg.template)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clock = _Clock()
    meta = clock("read_meta_s", read_meta, cfg.root, cfg.target)
    store, faces = clock("features_s", face_features, cfg, meta)
    layout, feats, usable, n_images, norms = clock(
        "templates_s", templates, meta, faces, store, switches
    )
    verification, scores, curve = clock(
        "scoring_s", verify, meta.pairs, layout, feats, usable, n_images, norms
    )
    metrics = {
        "target": cfg.target,
        "root": str(cfg.root),
        "checkpoint": cfg.checkpoint,
        "model": None if cfg.checkpoint else cfg.model.name,
        "template": {
            "flip": switches.flip,
            "norm": switches.norm,
            "weights": switches.weights,
            "formula": switches.formula(),
            "insightface_default": switches == ijb.TemplateSwitches(),
        },
        "images": image_report(store, meta.rows),
        "verification": verification,
    }
    if cfg.identification:
        metrics.update(
            clock("identification_s", one_n, cfg.root, cfg.target, feats, usable, layout)
        )
    metrics["timings"] = {k: round(v, 2) for k, v in clock.times.items()}
    metrics["machine"] = machine_info(resolve_device(cfg.eval.device))  # what the timings ran on
    write_outputs(out_dir, cfg, metrics, scores, curve)
    print(summary(metrics) + f" -> {out_dir}")
    return metrics


def sweep_value(metrics: dict) -> float:
    """What ``eval_ijb.py`` returns to a sweeper (to maximise; e.g. Hydra's Optuna sweeper): the
    1:1 TAR at FAR 1e-4 as insightface reads it (``verification.tar_at_far["1e-4"]``, the
    figure IJB papers quote). Where it is unresolvable (fewer than 10,000 scored impostor
    pairs, or no scored genuine pair) it is NaN, with a warning saying why: NaN, as
    ``train.py`` returns for a failed job, marks the trial as having no value; another
    figure (the AUC) in its place would be compared with the TARs of the other trials."""
    v = metrics["verification"]
    value = v["tar_at_far"].get(SWEEP_FAR)
    if value is None:
        why = v.get("tar_at_far_notes", {}).get(SWEEP_FAR, "not reported")
        log.warning("eval_ijb returns NaN to the sweeper: TAR@FAR %s %s", SWEEP_FAR, why)
        return math.nan
    return float(value)


class _Clock:
    """Calls a function and records its wall time under a name."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable[..., _T], *args: Any) -> _T:
        start = time.perf_counter()
        out = fn(*args)
        self.times[name] = time.perf_counter() - start
        return out


def face_features(cfg: DictConfig, meta: IJBMeta) -> tuple[FaceFeatures, np.ndarray]:
    """(the feature store of the F faces some template uses, ``faces`` (F,) int64: their
    landmark rows in ``meta.faces``, sorted), extracted (or read from the cache) from
    ``<root>/loose_crop``."""
    faces = np.unique(meta.rows.face[meta.rows.face >= 0])
    device = eval_device(cfg)
    store = extract_features(
        build_model(cfg).to(device),
        Path(cfg.root) / "loose_crop",
        [meta.faces.names[i] for i in faces],
        meta.faces.landmarks[faces],
        cfg.feature_cache,
        instantiate(cfg.align.settings),
        cfg.chunk_size,
        cfg.eval.batch_size,
        device,
        cfg.align.workers,
    )
    return store, faces


def templates(
    meta: IJBMeta, faces: np.ndarray, store: FaceFeatures, switches: ijb.TemplateSwitches
) -> tuple[ijb.TemplateLayout, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Template features from the F stored face features (``faces`` (F,): their landmark rows,
    as :func:`face_features` returns them), streamed a chunk at a time.

    Returns (layout of the R face_tid_mid lines, unit template features (T, D) float64,
    usable (T,) bool: has a usable image and a non-zero sum, usable images per template (T,)
    int64, norms of the sums before normalising (T,) float64)."""
    rows = meta.rows
    image = np.where(rows.face >= 0, np.searchsorted(faces, rows.face), -1)
    layout = ijb.template_layout(rows.template, rows.media, image)
    matrix, n_images = ijb.aggregation_matrix(layout, store.ok)
    weights = ijb.image_weights(meta.faces.faceness[faces], switches)
    feats, norms = ijb.template_features(store.blocks(), matrix, weights, switches)
    return layout, feats, (n_images > 0) & (norms > 0), n_images, norms


def verify(
    pairs: TemplatePairs,
    layout: ijb.TemplateLayout,
    feats: np.ndarray,
    usable: np.ndarray,
    n_images: np.ndarray,
    norms: np.ndarray,
) -> tuple[dict, np.ndarray, dict[str, np.ndarray]]:
    """Score the P pairs with :func:`templates`' outputs (``feats`` (T, D), ``usable``,
    ``n_images``, ``norms`` (T,)). Returns (``verification`` of metrics.json, scores (P,)
    float64 with NaN where unscored, the full ROC {fpr, tpr} (K + 1,) each)."""
    i1, i2 = layout.index_of(pairs.t1), layout.index_of(pairs.t2)
    scores = ijb.score_pairs(feats, usable, i1, i2)
    figures, curve = ijb.verification_figures(scores, pairs.label)
    verification = {
        **figures,
        "n_templates": int(len(np.unique(np.r_[pairs.t1, pairs.t2]))),
        "n_pairs": len(scores),
        "skipped": skipped_pairs(pairs, i1, i2, n_images, norms),
        "readings": {
            "tar_at_far": "insightface's (ijb_11.py): on sklearn roc_curve's default points, "
            "the TPR of the point whose FPR is nearest each FAR",
            "tar_at_far_interpolated": "TPR interpolated linearly along the full ROC at each FAR",
        },
    }
    return verification, scores, curve


def skipped_pairs(
    pairs: TemplatePairs,
    i1: np.ndarray,
    i2: np.ndarray,
    n_images: np.ndarray,
    norms: np.ndarray,
) -> dict:
    """Count, reasons and the first :data:`N_EXAMPLES` examples (pair-file line, ids, reason)
    of the pairs that could not be scored. ``i1``, ``i2`` (P,): the pairs' template rows (-1:
    not in face_tid_mid); ``n_images``, ``norms`` (T,) as :func:`templates` returns them."""
    why = np.zeros(len(i1), np.int8)  # 0 scored, 1 template unknown, 2 no image, 3 zero
    for i in (i2, i1):  # the first template's reason wins
        known = i >= 0
        bad = np.full(len(i), 1, np.int8)
        bad[known] = np.where(n_images[i[known]] == 0, 2, np.where(norms[i[known]] > 0, 0, 3))
        why = np.where(bad > 0, bad, why)
    names = {
        1: "template not in face_tid_mid",
        2: "template has no usable image",
        3: "template feature is zero (all weights 0)",
    }
    out = {"count": int((why > 0).sum()), "reasons": {}, "examples": []}
    for code, name in names.items():
        if (why == code).any():
            out["reasons"][name] = int((why == code).sum())
    for k in np.flatnonzero(why)[:N_EXAMPLES]:
        out["examples"].append(
            {
                "line": int(k) + 1,
                "t1": int(pairs.t1[k]),
                "t2": int(pairs.t2[k]),
                "reason": names[int(why[k])],
            }
        )
    return out


def image_report(store: FaceFeatures, rows: TemplateMedia) -> dict:
    """``images`` of metrics.json: counts, reasons and first examples of the faces that could
    not be used (missing, undecodable) or fell back to a centre crop, and of the face_tid_mid
    lines without a landmark line."""
    failed = np.flatnonzero(~store.ok)
    fallback = np.flatnonzero(store.fallback)
    reasons = Counter(_reason_kind(store.problems[i]) for i in failed)
    out = {
        "n_faces": store.n,
        "n_failed": len(failed),
        "failed_reasons": dict(reasons.most_common()),
        "failed_examples": [store.problems[i] for i in failed[:N_EXAMPLES]],
        "n_fallback": len(fallback),
        "fallback_examples": [store.problems[i] for i in fallback[:N_EXAMPLES]],
        "n_lines_without_landmarks": int((rows.face < 0).sum()),
        "lines_without_landmarks": [
            rows.names[i] for i in np.flatnonzero(rows.face < 0)[:N_EXAMPLES]
        ],
        "note": "unusable images are left out of their media and templates",
        "feature_cache": str(store.folder),
    }
    return out


def _reason_kind(reason: str) -> str:
    """A failure message's kind, to count failures by (file not found, cannot decode, ...)."""
    for kind in ("file not found", "empty file", "cannot decode"):
        if kind in reason:
            return kind
    return reason.split(": ", 1)[-1][:60]


def one_n(
    root: str | Path,
    target: str,
    feats: np.ndarray,
    usable: np.ndarray,
    layout: ijb.TemplateLayout,
) -> dict:
    """``{"identification": ...}`` (:func:`face_rec.eval.ijb.identification_figures` over the
    unit template features (T, D) and ``usable`` (T,)) when the three 1:N files of ``target``
    are in ``<root>/meta``, else ``{"identification_note": ...}`` naming the missing ones."""
    meta = Path(root) / "meta"
    g1, g2, probe = (meta / name for name in ONE_N_FILES[target])
    absent = [p.name for p in (g1, g2, probe) if not p.is_file()]
    if absent:
        return {"identification_note": f"1:N not run: {', '.join(absent)} not in {meta}"}
    galleries = {"G1": read_1n_csv(g1), "G2": read_1n_csv(g2)}
    figures = ijb.identification_figures(feats, usable, layout, galleries, read_1n_csv(probe))
    figures["files"] = {"G1": g1.name, "G2": g2.name, "probe": probe.name}
    if target == "IJBB":
        figures["files"]["note"] = "IJB-B's galleries S1 and S2 are reported as G1 and G2"
    return {"identification": figures}


def write_outputs(
    out_dir: Path,
    cfg: DictConfig,
    metrics: dict,
    scores: np.ndarray,
    curve: dict[str, np.ndarray],
) -> None:
    """metrics.json, config.yaml, and with a resolvable ROC roc.png and roc.csv (thinned);
    scores.npy (P,) float32 with ``save_scores``."""
    fpr, tpr = ijb.thin_roc(curve["fpr"], curve["tpr"])
    v = metrics["verification"]
    if v["auc"] is not None:
        label = f"{cfg.target} 1:1 ({v['n_scored']} pairs)"
        plot_roc(out_dir / "roc.png", {label: {**v, "roc": {"fpr": fpr, "tpr": tpr}}}, label)
        write_roc(
            out_dir / "roc.csv", {"fpr": fpr, "tpr": tpr, "thresholds": np.full_like(fpr, np.nan)}
        )
    if cfg.save_scores:
        with atomic_path(out_dir / "scores.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, scores.astype(np.float32))
    write_json(out_dir / "metrics.json", _plain(metrics))
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def _plain(obj: Any) -> Any:
    """JSON-ready: numpy arrays and scalars to lists and numbers."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def summary(m: dict) -> str:
    """The one line printed at the end: TAR@FAR 1e-5 / 1e-4, pairs scored, 1:N mean figures."""
    v = m["verification"]
    tars = ", ".join(
        f"TAR@{k} {t:.4f}"
        for k, t in v["tar_at_far"].items()
        if t is not None and k in ("1e-5", "1e-4")
    )
    line = f"{m['target']} 1:1: {tars or 'TAR n/a'}; {v['n_scored']}/{v['n_pairs']} pairs scored"
    ident = m.get("identification")
    if ident:
        mean = ident["mean"]
        line += (
            f"; 1:N (NIST, mean of G1 and G2) rank-1 {_num(mean['rank1'])}, "
            f"TPIR@FPIR 1e-2 {_num(mean['tpir_at_fpir']['1e-2'])}"
        )
    return line


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
