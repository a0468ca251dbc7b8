"""Alignment accuracy of a pack: MTCNN re-run on our crops vs on reference crops.

    FACE_REC_DATA=../shared/data python benchmarks/align_accuracy.py packs/lfw --n 1000

For ``--n`` random ``ok`` rows (seeded) the reference crop is made from the same recorded landmarks
by scikit-image (``SimilarityTransform`` + bilinear ``warp``). MTCNN (min_face_size 20) is run on
both crop sets; the mean distance of its 5 landmarks from the template is reported for each, with
their difference (target: within 0.5 px) and the largest pixel difference between the crops.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from face_rec.align.detect import FaceDetector
from face_rec.align.quality import landmark_errors, reference_crop
from face_rec.data.images import load_rgb
from face_rec.data.pack import open_images, read_manifest, read_summary
from face_rec.utils.machine import benchmark_header


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("pack", type=Path)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    summary = read_summary(args.pack)
    if summary is None:
        raise SystemExit(f"{args.pack} is not a complete pack")
    root = Path(summary["input_dir"])
    rows = [r for r in read_manifest(args.pack / "manifest.csv") if r["status"] == "ok"]
    rng = np.random.default_rng(args.seed)
    rows = [rows[i] for i in np.sort(rng.choice(len(rows), min(args.n, len(rows)), replace=False))]
    images = open_images(args.pack)
    ours = np.stack([images[r["image_index"]] for r in rows])
    refs = np.stack(
        [
            reference_crop(
                load_rgb(root / r["source"]),
                np.array(r["landmarks"].split(), float).reshape(5, 2),
                ours.shape[1],
            )
            for r in rows
        ]
    )
    torch.set_num_threads(2)
    det = FaceDetector(min_face_size=20, device="cpu")
    start = time.perf_counter()
    e_ours, e_ref = landmark_errors(ours, det), landmark_errors(refs, det)
    both = ~np.isnan(e_ours) & ~np.isnan(e_ref)
    print(
        json.dumps(
            {
                **benchmark_header("cpu"),
                "pack": str(args.pack),
                "n": len(rows),
                "redetected_both": int(both.sum()),
                "mean_err_ours_px": round(float(e_ours[both].mean()), 3),
                "mean_err_reference_px": round(float(e_ref[both].mean()), 3),
                "difference_px": round(float(e_ours[both].mean() - e_ref[both].mean()), 3),
                "median_err_ours_px": round(float(np.median(e_ours[both])), 3),
                "max_abs_pixel_diff": int(np.abs(ours.astype(int) - refs).max()),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
