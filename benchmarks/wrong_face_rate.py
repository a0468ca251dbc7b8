"""Estimate how often alignment chose the wrong face, using a trained model as a witness.

    python benchmarks/wrong_face_rate.py packs/celeba299 \
        logs/train/runs/cpu_preset_lfw/checkpoints/last.pt --threshold 0.243

Each ``ok`` crop is compared (cosine, flip TTA) with the mean embedding of the other crops of its
identity; crops below ``--threshold`` (use the model's verification threshold) are flagged and
written to ``<out>/flagged.png`` (each flagged crop beside three of its identity's crops) so a
person can count how many are really another person or not a face. The model must not have been
trained on this pack's identities.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from face_rec.align.sheets import tile
from face_rec.data.pack import open_images, read_manifest
from face_rec.eval.embed import embed_crops
from face_rec.utils.checkpoint import model_from_checkpoint
from face_rec.utils.machine import benchmark_header


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("pack", type=Path)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--threshold", type=float, required=True)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("logs/wrong_face_check"),
        help="folder for flagged.png (relative to where you run)",
    )
    args = p.parse_args()
    rows = [r for r in read_manifest(args.pack / "manifest.csv") if r["status"] == "ok"]
    images = open_images(args.pack)
    crops = np.stack([images[r["image_index"]] for r in rows])
    emb = embed_crops(model_from_checkpoint(args.checkpoint), crops, batch_size=128)
    by_id = defaultdict(list)
    for k, r in enumerate(rows):
        by_id[r["identity"]].append(k)
    sims = np.full(len(rows), np.nan)
    for members in by_id.values():
        if len(members) < 2:
            continue
        total = emb[members].sum(0)
        for k in members:
            centre = total - emb[k]
            sims[k] = emb[k] @ centre / np.linalg.norm(centre)
    scored = ~np.isnan(sims)
    flagged = np.flatnonzero(scored & (sims < args.threshold))
    args.out.mkdir(parents=True, exist_ok=True)
    sheet = []
    for k in flagged[np.argsort(sims[flagged])][:60]:
        others = [m for m in by_id[rows[k]["identity"]] if m != k][:3]
        sheet += (
            [crops[k]]
            + [crops[m] for m in others]
            + [np.full_like(crops[k], 255)] * (3 - len(others))
        )
    if sheet:
        Image.fromarray(tile(sheet, 8)).save(args.out / "flagged.png")
    print(
        json.dumps(
            {
                **benchmark_header("cpu"),
                "pack": str(args.pack),
                "ok_crops_scored": int(scored.sum()),
                "flagged": len(flagged),
                "flagged_fraction": round(len(flagged) / max(scored.sum(), 1), 4),
                "threshold": args.threshold,
                "sheet": str(args.out / "flagged.png"),
            }
        )
    )


if __name__ == "__main__":
    main()
