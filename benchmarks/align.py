"""Alignment speed: face_rec's job end to end vs plain facenet-pytorch MTCNN one image at a time.

    FACE_REC_DATA=../shared/data python benchmarks/align.py --dataset lfw --n 2000 --repeats 3

The baseline decodes each file with PIL and calls ``MTCNN.detect(img, landmarks=True)`` one image
at a time in this one process (torch's default threads), then chooses the face and warps it, as a
plain script would. face_rec runs ``run_alignment`` (worker processes, channels_last MTCNN,
same-size batches) with the same MTCNN settings, writing a real pack, on ``--n`` files spread
evenly over the sorted set (image sizes and face counts change along it; its fixed start-up, about
0.5 s with forked workers, is included: use a realistic job size). The baseline's per-image cost
does not depend on the job size, so it runs on ``--n-baseline`` of those files, again spread
evenly, to save time. Medians of ``--repeats`` runs, baseline and face_rec interleaved (this VM's
speed drifts by 10-20% over minutes), and the ratio of each pair of runs; one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from face_rec.align.detect import FaceDetector, choose_face
from face_rec.align.run import list_inputs, run_alignment
from face_rec.align.warp import align_face
from face_rec.utils.machine import benchmark_header

MIN_FACE = {"lfw": 40, "celeba299": 16}


def baseline(root: Path, sources: list[str], min_face_size: int) -> float:
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(min_face_size=min_face_size, device="cpu")
    start = time.perf_counter()
    for src in sources:
        img = np.asarray(Image.open(root / src).convert("RGB"))
        boxes, probs, points = mtcnn.detect(Image.fromarray(img), landmarks=True)
        if boxes is not None:
            k = choose_face(boxes, probs, img.shape[:2])
            align_face(img, points[k])
    return len(sources) / (time.perf_counter() - start)


def ours(root: Path, sources: list[str], min_face_size: int) -> float:
    make = functools.partial(FaceDetector, min_face_size=min_face_size, device="cpu")
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        run_alignment(root, out, make, sources=sources)
        return len(sources) / (time.perf_counter() - start)


def spread(items: list, n: int) -> list:
    """``n`` items evenly spaced through ``items`` (all of them if there are fewer)."""
    if n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=sorted(MIN_FACE), default="lfw")
    p.add_argument("--n", type=int, default=2000, help="files for face_rec, spread over the set")
    p.add_argument("--n-baseline", type=int, default=400, help="of those, files for the baseline")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    root = Path(os.environ.get("FACE_REC_DATA", "data")) / args.dataset / "images"
    files, _, _ = list_inputs(root)
    sample = spread([f.source for f in files], args.n)
    sources = spread(sample, args.n_baseline)
    mfs = MIN_FACE[args.dataset]
    base, mine = [], []
    for _ in range(args.repeats):  # interleaved: both see the machine in the same state
        base.append(baseline(root, sources, mfs))
        mine.append(ours(root, sample, mfs))
    b, m = statistics.median(base), statistics.median(mine)
    print(
        json.dumps(
            {
                **benchmark_header("cpu"),
                "dataset": args.dataset,
                "n_face_rec": len(sample),
                "n_baseline": len(sources),
                "min_face_size": mfs,
                "baseline_img_s": round(b, 2),
                "face_rec_img_s": round(m, 2),
                "ratio": round(m / b, 2),
                "ratio_runs": [round(y / x, 2) for x, y in zip(base, mine, strict=True)],
                "baseline_runs": [round(x, 2) for x in base],
                "face_rec_runs": [round(x, 2) for x in mine],
            }
        )
    )


if __name__ == "__main__":
    main()
