"""Glue between the Hydra config of ``align.py`` and :func:`face_rec.align.run.run_alignment`."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from face_rec.align.run import run_alignment
from face_rec.config_check import check_config
from face_rec.data.pack import TIGHT_OVER

log = logging.getLogger(__name__)


def alignment_kwargs(align: DictConfig) -> dict:
    """``run_alignment`` keyword arguments from the ``align`` config group."""
    detector = OmegaConf.to_container(align.detector, resolve=True)
    return {
        "make_detector": instantiate(align.detector),
        "settings": instantiate(align.settings),
        "detector_settings": {k: v for k, v in detector.items() if not k.startswith("_")},
        "workers": align.workers,
        "threads_per_worker": align.threads_per_worker,
        "chunk_size": align.chunk_size,
        "shard_size": align.shard_size,
    }


def align_from_config(cfg: DictConfig) -> dict:
    """Run the alignment job described by ``cfg`` (see ``conf/align.yaml``); return its summary."""
    check_config(cfg)
    input_dir = Path(cfg.input_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(
            f"input_dir {str(input_dir)!r} does not exist. Set FACE_REC_DATA to the folder that "
            "holds lfw/ and celeba299/, or pass paths.data_dir=... or input_dir=... on the "
            "command line"
        )
    summary = run_alignment(
        input_dir=input_dir,
        output_dir=Path(cfg.output_dir),
        limit=cfg.limit,
        seed=cfg.seed,
        **alignment_kwargs(cfg.align),
    )
    c = summary["counts"]
    run = summary["this_run"]
    print(
        f"aligned {summary['n_inputs']} files: {c['ok']} ok, {c['fallback']} fallback, "
        f"{c['failed']} failed; {run['images_per_s']} img/s this run -> {cfg.output_dir}"
    )
    outside = summary.get("outside_fraction") or {}
    if outside.get("n_known"):
        over = outside[f"fraction_over_{TIGHT_OVER:g}"]  # the key outside_stats writes
        print(
            f"crop area outside the source images (border-filled, align.settings.border="
            f"{summary['settings']['border']}): mean {outside['mean']:.1%}, median "
            f"{outside['median']:.1%}, {over:.0%} of crops over {TIGHT_OVER:.0%}"
        )
    for warning in summary.get("warnings", []):
        print(f"WARNING: {warning}")
    return summary
