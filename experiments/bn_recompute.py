"""Recompute the BatchNorm statistics of a run's weight average (SWA's ``update_bn``) and write
its checkpoint with them, for the eleventh session's test (experiments/cpu_demo.md, "BatchNorm
statistics for the average"); not a trainer option (the test did not adopt it).

    python experiments/bn_recompute.py logs/train/runs/<run> <out dir> [--batches 100]

The run's checkpoint (``--checkpoint``, default ``best.pt``) holds the average as ``model``
(``trainer.ema_decay`` > 0; a run with frozen stages is refused). Every BatchNorm's running
mean and variance are reset and recomputed as the equal-weight average over ``--batches`` of
the run's own first training batches, drawn and augmented as its training drew them (its
config, batch plan and augmentation seed), in train mode without gradients.
``<out dir>/<checkpoint>`` is that checkpoint with those statistics in ``model``, everything
else as saved, for ``eval_lfw.py checkpoint=...``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from face_rec.train import build_trainer  # noqa: E402
from face_rec.utils.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402


def recompute(run: Path, out: Path, batches: int = 100, checkpoint: str = "best.pt") -> Path:
    """Write ``out / checkpoint``: the run's checkpoint with its average's BatchNorm statistics
    recomputed over ``batches`` of its first training batches; a ``ValueError`` naming the run
    for a checkpoint without an average or a run with frozen stages."""
    ckpt = load_checkpoint(run / "checkpoints" / checkpoint)
    if "train_model" not in ckpt:
        raise ValueError(
            f"{run}: its {checkpoint} holds no weight average (trained with "
            "trainer.ema_decay=0); use a run trained with trainer.ema_decay > 0, e.g. 0.999"
        )
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    if cfg.trainer.get("freeze_stages"):
        raise ValueError(
            f"{run}: trained with trainer.freeze_stages={cfg.trainer.freeze_stages}, whose "
            "BatchNorm statistics training kept; this script would recompute them too, so it "
            "takes only runs without frozen stages"
        )
    cfg.val.sets = {}  # no validation lists are prepared
    out.mkdir(parents=True, exist_ok=True)
    trainer, _, _ = build_trainer(cfg, out)
    model = trainer.ema.module
    model.load_state_dict(ckpt["model"])
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative (equal-weight) average over the batches
    model.train()
    stream = trainer.micro_batches()
    with torch.no_grad():
        for _ in range(batches):
            images, _, _ = next(stream)
            model(trainer.augment(images).contiguous(memory_format=trainer.memory_format))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    ckpt["model"] = {k: v.clone() for k, v in model.eval().state_dict().items()}
    save_checkpoint(out / checkpoint, ckpt)
    return out / checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a training run's folder (with .hydra/config.yaml)")
    p.add_argument("out", type=Path, help="where the checkpoint with new statistics is written")
    p.add_argument("--batches", type=int, default=100, help="training batches to average over")
    p.add_argument("--checkpoint", default="best.pt", help="which of the run's checkpoints")
    args = p.parse_args()
    try:
        written = recompute(args.run, args.out, args.batches, args.checkpoint)
    except ValueError as e:
        sys.exit(str(e))
    print(f"{written}: BatchNorm statistics recomputed over {args.batches} batches")


if __name__ == "__main__":
    main()
