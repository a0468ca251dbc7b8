"""IJB-C at its real sizes: template aggregation, pair scoring and the 1:1 figures, timed on
synthetic features; and IJB feature extraction speed.

    python benchmarks/ijb_scoring.py [--repeats 3] [--extract-images 64]

1. Synthetic IJB-C: 469,375 image features (f(x) and f(flip x), D = 512, float32, in memory),
   23,124 templates of a realistic make-up (template sizes lognormal, mean ~20 faces; each
   template a few stills, one media each, and a few videos of several frames), one face per
   face_tid_mid line as in IJB-C, and 15,658,489 random template pairs (0.125% genuine). Timed
   (median of ``--repeats``): aggregation (layout, sparse matrix, template features from
   4,096-face blocks, insightface's default switches), pair scoring (float64 products, the
   default; float32 too), and the figures (ROC over all pairs, AUC, EER, TAR@FAR both readings).
   Memory: peak RSS of the process (it holds the 1.9 GB of features) and the tracemalloc peak of
   each step (numpy's allocations made by the step itself).
2. Extraction: ``extract_features`` with iresnet50 (random weights, 112 x 112) on CPU on
   ``--extract-images`` synthetic 250 x 250 JPEG loose crops: decode, align with the landmarks,
   f(x) and f(flip x), chunk saved. Faces per second after a warm-up run.

Prints a Markdown block for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from face_rec.eval import ijb
from face_rec.eval.ijb_data import extract_features

N_IMAGES, N_TEMPLATES, N_PAIRS, DIM = 469_375, 23_124, 15_658_489, 512
GENUINE = 19_557 / N_PAIRS  # IJB-C's genuine share


def synthetic_layout(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per face_tid_mid line (N_IMAGES,): template and media ids."""
    w = rng.lognormal(0.0, 1.0, N_TEMPLATES)
    extra = rng.multinomial(N_IMAGES - N_TEMPLATES, w / w.sum())
    sizes = 1 + extra  # faces per template, >= 1
    template = np.repeat(np.arange(N_TEMPLATES), sizes)
    pos = np.arange(N_IMAGES) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # index in template
    stills = np.repeat(np.minimum(sizes, 1 + rng.poisson(4, N_TEMPLATES)), sizes)
    videos = np.repeat(1 + rng.integers(0, 3, N_TEMPLATES), sizes)
    # the first `stills` faces are stills (own media), the rest frames of `videos` videos
    local = np.where(pos < stills, pos, stills + (pos - stills) % videos)
    media = template * 1000 + local
    return template, media


def timed(fn, repeats: int) -> tuple[float, object, float]:
    """(median seconds, last result, tracemalloc peak MB of the first run)."""
    times, out, peak = [], None, 0.0
    for k in range(repeats):
        if k == 0:
            tracemalloc.start()
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
        if k == 0:
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
    return statistics.median(times), out, peak


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scoring_benchmark(repeats: int) -> list[tuple[str, float, float, float]]:
    rng = np.random.default_rng(0)
    template, media = synthetic_layout(rng)
    x = rng.standard_normal((N_IMAGES, DIM), dtype=np.float32)
    xf = x + 0.3 * rng.standard_normal((N_IMAGES, DIM), dtype=np.float32)
    faceness = rng.uniform(0.5, 1.0, N_IMAGES)
    i1 = rng.integers(0, N_TEMPLATES, N_PAIRS)
    i2 = rng.integers(0, N_TEMPLATES, N_PAIRS)
    labels = rng.random(N_PAIRS) < GENUINE
    switches = ijb.TemplateSwitches()
    base = rss_mb()
    rows = []

    def aggregate():
        layout = ijb.template_layout(template, media, np.arange(N_IMAGES))
        matrix, n_images = ijb.aggregation_matrix(layout, np.ones(N_IMAGES, bool))
        w = ijb.image_weights(faceness, switches)
        feats, norms = ijb.template_features(ijb.array_blocks(x, xf, 4096), matrix, w, switches)
        return layout, feats, (n_images > 0) & (norms > 0)

    t, (layout, feats, usable), peak = timed(aggregate, repeats)
    rows.append(("template aggregation (469,375 faces -> 23,124 templates)", t, peak, rss_mb()))
    for dtype in (np.float64, np.float32):
        t, scores, peak = timed(lambda d=dtype: ijb.score_pairs(feats, usable, i1, i2, d), repeats)
        name = f"pair scoring, {np.dtype(dtype).name} products (15,658,489 pairs)"
        rows.append((name + (" [default]" if dtype is np.float64 else ""), t, peak, rss_mb()))
    scores = ijb.score_pairs(feats, usable, i1, i2)
    t, _, peak = timed(lambda: ijb.verification_figures(scores, labels), repeats)
    rows.append(("ROC, AUC, EER, TAR@FAR (both readings) over all pairs", t, peak, rss_mb()))
    rows.append(("(process RSS before the steps: features and pairs)", 0.0, 0.0, base))
    return rows


def extraction_benchmark(n: int) -> float:
    from PIL import Image

    from face_rec.align.warp import ARCFACE_TEMPLATE_112
    from face_rec.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("iresnet50").eval()
    rng = np.random.default_rng(0)
    landmarks = np.repeat((ARCFACE_TEMPLATE_112 * 1.6 + 35)[None], n, axis=0)
    with tempfile.TemporaryDirectory() as tmp:
        names = [f"{k}.jpg" for k in range(n)]
        for name in names:
            img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(img).resize((250, 250)).save(Path(tmp) / name, quality=90)
        kw = {"chunk_size": 32, "batch_size": 32, "progress": False}
        extract_features(model, tmp, names[:8], landmarks[:8], Path(tmp) / "warm", **kw)
        start = time.perf_counter()
        extract_features(model, tmp, names, landmarks, Path(tmp) / "cache", **kw)
        return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extract-images", type=int, default=64)
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    rows = scoring_benchmark(args.repeats)
    speed = extraction_benchmark(args.extract_images)
    load_after = os.getloadavg()
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if "Model name" in ln), "")
    print(f"`python benchmarks/ijb_scoring.py --repeats {args.repeats}` started {started}\n")
    print(
        f"- machine: {platform.machine()} {model}, {len(os.sched_getaffinity(0))} cores; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}; numpy {np.__version__}"
    )
    print(
        f"- load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        "(above ~0.5 other work shared the cores)\n"
    )
    print("| step | median s | step's own peak MB (tracemalloc) | process peak RSS MB |")
    print("| --- | ---: | ---: | ---: |")
    for name, t, peak, rss in rows:
        if t:
            print(f"| {name} | {t:.2f} | {peak:,.0f} | {rss:,.0f} |")
        else:
            print(f"| {name} | | | {rss:,.0f} |")
    total = sum(t for name, t, _, _ in rows if "float32" not in name)
    print(f"| **aggregation + scoring + figures (default)** | **{total:.2f}** | | |\n")
    print(
        f"- extraction (iresnet50, 112 x 112, CPU, flip on: 2 forward passes per face; decode, "
        f"align, save included): {speed:.1f} faces/s ({args.extract_images} faces, batch 32)"
    )


if __name__ == "__main__":
    main()
