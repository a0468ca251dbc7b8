"""Glue between ``eval_lfw.py``'s config and the evaluation library."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from face_rec.align.cli import alignment_kwargs
from face_rec.config_check import check_config
from face_rec.data.pack import SUMMARY_NAME, read_manifest, read_summary
from face_rec.data.pairs import Pairs, load_pairs
from face_rec.eval.metrics import far_supported, threshold_at_far
from face_rec.eval.report import (
    plot_error_vs_reject,
    plot_roc,
    write_images,
    write_metrics,
    write_roc,
    write_scores,
)
from face_rec.eval.suite import (
    configured_sets,
    mean_accuracy,
    named_lists,
    standard_sets,
    suite_markdown,
    suite_rows,
)
from face_rec.eval.verification import (
    PairImages,
    align_pair_images,
    evaluate_pairs,
    leaked_identities,
)
from face_rec.utils.allocator import keep_freed_memory_on
from face_rec.utils.checkpoint import model_from_checkpoint
from face_rec.utils.io import write_json
from face_rec.utils.machine import machine_info

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def eval_device(cfg: DictConfig) -> str:
    """``eval.device`` resolved; on the CPU, with ``eval.keep_freed_memory``, glibc keeps and
    reuses freed buffers instead of page-faulting every batch's activations in again (IResNet-50
    at 112 px embeds 1.2x faster: benchmarks/RESULTS.md)."""
    device = resolve_device(cfg.eval.device)
    keep_freed_memory_on(device, cfg.eval.keep_freed_memory)
    return device


def default_pairs(lfw_root: Path) -> Path:
    """View 2 ``pairs.txt`` when present, else View 1 ``pairsDevTest.txt``."""
    for name in ("pairs.txt", "pairsDevTest.txt"):
        if (lfw_root / name).is_file():
            return lfw_root / name
    raise FileNotFoundError(
        f"neither pairs.txt nor pairsDevTest.txt under {str(lfw_root)!r}; set FACE_REC_DATA or "
        "pass pairs=<file>"
    )


def training_identities(path: str | Path) -> set[str]:
    """Identities of a pack (its manifest) or of an identity folder (its subfolder names)."""
    path = Path(path)
    if read_summary(path) is not None:
        return {r["identity"] for r in read_manifest(path / "manifest.csv")}
    if path.is_dir():
        return {p.name for p in path.iterdir() if p.is_dir()}
    raise FileNotFoundError(f"trained_on {str(path)!r} is neither a pack nor an identity folder")


def checkpoint_training_identities(path: str | Path) -> set[str] | None:
    """The identities a checkpoint was trained on, from the training data its config records
    (identity lists, packs or an aligned folder); None when it records none. An over-estimate:
    identities dropped by ``min_images_per_identity`` or ``exclude_images_of`` still count, so
    the check can over-report a leak, never hide one."""
    from face_rec.data.train_set import held_out, read_people
    from face_rec.utils.checkpoint import load_checkpoint

    data = (load_checkpoint(path, mmap=True).get("config") or {}).get("train_data") or {}
    if data.get("aligned_folder"):
        return training_identities(data["aligned_folder"])
    names: set[str] = set()
    for source in (data.get("sources") or {}).values():
        if source.get("identities") and Path(source["identities"]).is_file():
            names |= set(read_people(source["identities"]))
        elif source.get("pack_dir") and read_summary(source["pack_dir"]) is not None:
            names |= training_identities(source["pack_dir"])
    fraction = data.get("holdout_fraction") or 0.0  # held out for model selection: not trained
    return {n for n in names if not held_out(n, fraction)} or None


def build_model(cfg: DictConfig) -> torch.nn.Module:
    """The checkpoint's model; else a model config that carries its own weights (``model=onnx
    model.path=...``, ``model.weights=...``); else the config's backbone, randomly initialised
    (a chance-level floor)."""
    if cfg.checkpoint:
        return model_from_checkpoint(cfg.checkpoint)
    onnx_model = cfg.model.get("_target_") == "face_rec.models.onnx_model.OnnxModel"
    if onnx_model or cfg.model.get("weights"):
        return instantiate(cfg.model)
    log.warning(
        "no checkpoint= given: evaluating a RANDOMLY INITIALISED %s (a chance-level "
        "sanity floor, not a result)",
        cfg.model.name,
    )
    torch.manual_seed(cfg.eval.seed)
    return instantiate(cfg.model)


def prepare_pair_images(pairs: Pairs, cfg: DictConfig) -> PairImages:
    """The aligned images of ``pairs`` with the ``align`` config's settings: read from a dataset
    pack under ``paths.pack_dir`` that holds them all (``python align.py data=lfw`` made one),
    else aligned once into ``eval.cache_dir``."""
    packs = sorted(p.parent for p in Path(cfg.paths.pack_dir).glob(f"*/{SUMMARY_NAME}"))
    return align_pair_images(pairs, cfg.eval.cache_dir, reuse=packs, **alignment_kwargs(cfg.align))


def evaluate_from_config(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Run ``eval_lfw.py``: one pair list (metrics.json, scores.csv, roc.png, config.yaml into
    ``out_dir``), or with ``suite=standard`` / ``pairs=[...]`` every list of the suite
    (:func:`evaluate_suite`)."""
    check_config(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.suite or isinstance(cfg.pairs, ListConfig | list):
        return evaluate_suite(cfg, out_dir)
    pairs_path = Path(cfg.pairs) if cfg.pairs else default_pairs(Path(cfg.data.root))
    pairs = load_pairs(pairs_path, cfg.image_root)
    if cfg.calibrate_far is not None:  # before any embedding: can this list resolve the FAR?
        check_far(int((~pairs.same).sum()), cfg.calibrate_far, pairs_path)
    device = eval_device(cfg)
    metrics = evaluate_list(cfg, build_model(cfg).to(device), pairs, pairs_path, out_dir, device)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    print(summary_line(metrics) + f" -> {out_dir}")
    if cfg.calibrate_far is not None:
        t = write_threshold(
            out_dir / "threshold.json",
            metrics["scores"],
            pairs.same,
            cfg.calibrate_far,
            pairs=str(pairs_path),
            checkpoint=cfg.checkpoint,
            model=None if cfg.checkpoint else cfg.model.get("path") or cfg.model.name,
            flip=cfg.eval.flip,
        )
        print(
            f"threshold {t['threshold']:.6f} for FAR {t['far_target']:g} (achieved "
            f"{t['far_achieved']:.2e}, TAR {t['tar_at_threshold']:.4f}) -> {out_dir}/threshold.json"
        )
    return metrics


def evaluate_suite(cfg: DictConfig, out_dir: Path) -> dict:
    """Every list of ``suite=standard`` (the standard ``.bin`` sets present in
    ``paths.bins_dir``) or ``pairs=[a.bin, b.bin, c.txt]``, each into ``out_dir/<name>/`` as a
    single evaluation writes it; then one table: ``suite.json``, ``suite.md``, ``roc.png``
    (all sets) and the table printed. Returns {"sets": {name: metrics}, "missing": [...],
    "mean_accuracy": ...}."""
    if cfg.calibrate_far is not None:
        raise ValueError("calibrate_far needs one pair list: pass pairs=<file>, not a suite")
    missing: list[str] = []
    if cfg.suite:
        if cfg.suite != "standard":
            raise ValueError(
                f"suite={cfg.suite!r} is not a suite; use suite=standard (the .bin sets in "
                "paths.bins_dir) or pairs=[list1,list2,...]"
            )
        sets, missing = standard_sets(cfg.paths.bins_dir)
        if not sets:
            configured_sets(None, cfg.paths.bins_dir)  # raises: none present, what to do
    else:
        sets = named_lists(list(cfg.pairs))
    for name in missing:
        log.warning("suite: %s.bin not in %s (skipped)", name, cfg.paths.bins_dir)
    device = eval_device(cfg)
    model = build_model(cfg).to(device)
    results = {}
    for s in sets:
        pairs = load_pairs(s.pairs, cfg.image_root)
        results[s.name] = evaluate_list(cfg, model, pairs, s.pairs, out_dir / s.name, device)
        print(f"{s.name}: " + summary_line(results[s.name]))
    rows = suite_rows(results)
    table = suite_markdown(rows)
    summary = {
        "sets": {
            r["set"]: {**r, "pairs_file": str(s.pairs)} for r, s in zip(rows, sets, strict=True)
        },
        "missing": [f"{n}.bin" for n in missing],
        "mean_accuracy": mean_accuracy(results),
        "checkpoint": cfg.checkpoint,
        "model": cfg.model.name if not cfg.checkpoint else None,
        "flip": cfg.eval.flip,
        "machine": machine_info(device),
    }
    write_json(out_dir / "suite.json", summary)
    title = f"# Suite: {cfg.checkpoint or cfg.model.name}\n\n"
    note = f"\nmissing (not scored): {', '.join(summary['missing'])}\n" if missing else ""
    (out_dir / "suite.md").write_text(title + table + note)
    plot_roc(out_dir / "roc.png", results, title="suite")
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    print(table + note + f"-> {out_dir}/suite.md")
    return {
        "sets": results,
        "missing": summary["missing"],
        "mean_accuracy": summary["mean_accuracy"],
    }


def evaluate_list(
    cfg: DictConfig,
    model: torch.nn.Module,
    pairs: Pairs,
    pairs_path: Path,
    out_dir: Path,
    device: str,
) -> dict:
    """Score one pair list (``pairs``, read from ``pairs_path``) with ``model``: metrics.json,
    scores.csv, roc.csv and roc.png into ``out_dir``. A list without folds takes its threshold
    from ``calibration_pairs`` when that file exists, else 10-fold CV over its own pairs.
    Returns the metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    calibration = None
    calib_path = cfg.calibration_pairs
    if pairs.n_folds < 2 and calib_path:
        if Path(calib_path).is_file():
            c_pairs = load_pairs(calib_path, cfg.image_root)
            calibration = (c_pairs, prepare_pair_images(c_pairs, cfg))
        else:  # asked for and missing: said, not switched quietly
            log.warning(
                "calibration_pairs=%s does not exist: %s is scored by 10-fold CV over its own "
                "pairs instead (set FACE_REC_DATA or data.root, pass calibration_pairs=<file>, "
                "or calibration_pairs=null to ask for 10-fold CV)",
                calib_path,
                pairs_path,
            )
    images = prepare_pair_images(pairs, cfg)
    metrics = evaluate_pairs(
        model,
        pairs,
        images,
        cfg.eval.batch_size,
        device,
        cfg.eval.flip,
        calibration,
        cfg.eval.n_bootstrap,
        cfg.eval.seed,
    )
    if metrics["outside_fraction"]["warning"]:
        log.warning("%s", metrics["outside_fraction"]["warning"])
    metrics.update(
        pairs=str(pairs_path),
        pair_format=pairs.protocol,
        calibration_pairs=str(calib_path) if calibration else None,
        checkpoint=cfg.checkpoint,
        model=cfg.model.name if not cfg.checkpoint else None,
        model_file=None if cfg.checkpoint else cfg.model.get("path") or cfg.model.get("weights"),
        flip=cfg.eval.flip,
        machine=machine_info(device),
    )
    trained = None
    if cfg.trained_on:
        trained = training_identities(cfg.trained_on)
    elif cfg.checkpoint:
        trained = checkpoint_training_identities(cfg.checkpoint)
    metrics["leaked_identities"], metrics["leakage_note"] = leakage(pairs, trained)
    leaked = metrics["leaked_identities"]
    if leaked:
        log.warning(
            "IDENTITY LEAKAGE: %d identities of %s also occur in the training data %s "
            "(e.g. %s); these numbers overstate accuracy",
            len(leaked),
            pairs_path.name,
            cfg.trained_on or "recorded in the checkpoint",
            ", ".join(leaked[:5]),
        )
    write_metrics(out_dir / "metrics.json", metrics)
    write_scores(out_dir / "scores.csv", pairs, metrics["scores"])
    write_roc(out_dir / "roc.csv", metrics["roc"])
    plot_roc(out_dir / "roc.png", {pairs_path.name: metrics}, title=f"{pairs_path.name}")
    write_images(out_dir / "images.csv", pairs, images, metrics["image_quality"])
    plot_error_vs_reject(
        out_dir / "error_vs_reject.png",
        {pairs_path.name: metrics["error_vs_reject"]},
        pairs_path.name,
    )
    return metrics


def check_far(n_negative: int, far: float, pairs: str | Path) -> None:
    """Raise a clear error when ``n_negative`` mismatched pairs cannot resolve ``far``."""
    if not 0 < far < 1:
        raise ValueError(f"calibrate_far={far!r} must be a rate in (0, 1), e.g. 1e-3")
    if not far_supported(n_negative, far):
        raise ValueError(
            f"calibrate_far={far:g} cannot be calibrated on {pairs}: its {n_negative} mismatched "
            f"pairs allow no false accept at that rate (n_negative x FAR < 1; needs at least "
            f"{int(np.ceil(1 / far - 1e-9))}); use a pair list with more mismatched pairs or a "
            "larger calibrate_far"
        )


def write_threshold(
    path: str | Path,
    scores: np.ndarray,
    same: np.ndarray,
    far: float,
    pairs: str,
    checkpoint: str | None,
    model: str | None,
    flip: bool,
) -> dict:
    """Write ``threshold.json``: the deployment threshold at false accept rate ``far`` on these
    pairs (:func:`face_rec.eval.metrics.threshold_at_far` over the scored pairs: ``scores``
    (N,) cosine, NaN where unscored; ``same`` (N,) bool). Returns what it wrote."""
    scored = ~np.isnan(np.asarray(scores, dtype=np.float64))
    labels = np.asarray(same, dtype=bool)
    n_neg, n_pos = int((~labels & scored).sum()), int((labels & scored).sum())
    check_far(n_neg, far, pairs)
    threshold, far_achieved, tar = threshold_at_far(scores, labels, far)
    if not np.isfinite(threshold):
        raise ValueError(
            f"no score threshold reaches FAR <= {far:g} on {pairs}: the highest-scoring "
            "mismatched pairs tie above the allowed number of false accepts"
        )
    embedding = "normalize(f(x) + f(flip(x)))" if flip else "normalize(f(x))"
    record = {
        "far_target": far,
        "threshold": threshold,
        "far_achieved": far_achieved,
        "tar_at_threshold": tar,
        "n_negative_pairs": n_neg,
        "n_positive_pairs": n_pos,
        "pairs": pairs,
        "checkpoint": checkpoint,
        "model": model,
        "flip": flip,
        "accept": "score > threshold",
        "note": (
            "Accept a pair as the same person when the cosine similarity of the two L2-normalised "
            f"embeddings ({embedding}) is > threshold (face_rec's rule everywhere). threshold lies "
            "midway between two consecutive distinct scores of this list, at the lowest operating "
            f"point where at most far_target of its {n_neg} scored mismatched pairs are accepted "
            f"({round(far_achieved * n_neg)} are; face_rec.eval.metrics.roc's operating "
            "points, unscored pairs left out). It holds for this model, flip setting and "
            f"face_rec's alignment; the FAR is resolved only to 1/{n_neg}, and on other photos "
            "it can differ: calibrate on pairs like the deployment's."
        ),
    }
    write_json(path, record)
    return record


def leakage(pairs: Pairs, trained: set[str] | None) -> tuple[list[str] | None, str]:
    """(leaked identities or None when not checked, a note saying what was checked)."""
    if trained is None:
        return None, "not checked: the training identities are unknown (pass trained_on=)"
    leaked = leaked_identities(pairs, trained)
    if leaked is None:
        return None, "not checked: this pair list carries no identities"
    return leaked, f"checked {len(trained)} training identities against the pair list's"


def summary_line(m: dict) -> str:
    acc = f"accuracy {m['accuracy_mean']:.4f}"
    if m.get("accuracy_std") is not None:
        acc += f" +- {m['accuracy_std']:.4f} (population std over folds, as insightface"
        acc += f"; standard error {m['accuracy_sem']:.4f}, as the LFW page)"
    if m["n_scored"] < m["n_pairs"]:
        acc += f" [unscored pairs counted wrong; {m['accuracy_scored_only']:.4f} over scored]"
    if m.get("accuracy_kfold_cv"):
        cv = m["accuracy_kfold_cv"]["accuracy_mean"]
        acc += f" (calibration list's threshold; 10-fold CV over its own pairs: {cv:.4f})"
    tars = ", ".join(f"TAR@{k} {v:.3f}" for k, v in m["tar_at_far"].items() if v is not None)
    return (
        f"{acc}, AUC {m['auc']:.4f}, EER {m['eer']:.4f}, {tars}; "
        f"{m['n_scored']}/{m['n_pairs']} pairs scored"
    )
