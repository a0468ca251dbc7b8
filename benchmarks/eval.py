"""Evaluation speed: embedding throughput, and a DevTest evaluation with a cold vs warm cache.

    FACE_REC_DATA=../shared/data python benchmarks/eval.py --model mobilefacenet --repeats 2

1. Embedding throughput of ``--model`` (random weights; speed does not depend on them) through
   ``embed_crops`` at batch 64 on this machine's CPU threads, with and without flip TTA
   (images/s counts input images; flip runs the network twice per image).
2. ``python eval_lfw.py model=<model>`` end to end on View 1 DevTest (calibrated on DevTrain),
   wall time with an empty alignment cache (cold: MTCNN runs on every pair image) and then with
   the cache it left (warm: no detection). Medians of ``--repeats`` runs of each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from face_rec.eval.embed import embed_crops
from face_rec.models.registry import create_model
from face_rec.utils.machine import benchmark_header

REPO = Path(__file__).resolve().parents[1]


def embedding_throughput(name: str, n: int, flip: bool, repeats: int) -> float:
    model = create_model(name)
    crops = np.random.default_rng(0).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)
    embed_crops(model, crops[:64], 64, flip=flip)  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        embed_crops(model, crops, 64, flip=flip)
        runs.append(n / (time.perf_counter() - start))
    return statistics.median(runs)


def eval_wall_time(model: str, cache: Path, out: Path) -> float:
    cmd = [
        sys.executable,
        str(REPO / "eval_lfw.py"),
        f"model={model}",
        f"eval.cache_dir={cache}",
        f"hydra.run.dir={out}",
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mobilefacenet")
    p.add_argument("--n", type=int, default=512, help="crops for the throughput measurement")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    result = {
        **benchmark_header("cpu"),
        "model": args.model,
        "embed_img_s_flip": round(embedding_throughput(args.model, args.n, True, 3), 2),
        "embed_img_s_noflip": round(embedding_throughput(args.model, args.n, False, 3), 2),
    }
    if os.environ.get("FACE_REC_DATA"):
        cold, warm = [], []
        for r in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                cold.append(eval_wall_time(args.model, Path(tmp) / "cache", Path(tmp) / f"c{r}"))
                warm.append(eval_wall_time(args.model, Path(tmp) / "cache", Path(tmp) / f"w{r}"))
        result.update(
            devtest_cold_s=round(statistics.median(cold), 1),
            devtest_warm_s=round(statistics.median(warm), 1),
            cold_runs=[round(x, 1) for x in cold],
            warm_runs=[round(x, 1) for x in warm],
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
