"""IJB-C at its real sizes: template aggregation, pair scoring and the 1:1 figures, timed on
synthetic features; and IJB feature extraction speed. ``--real-path``: the command's own steps
on a synthetic IJB-C tree on disk, with their peak memory.

    python benchmarks/ijb_scoring.py [--repeats 3] [--extract-images 64]
    python benchmarks/ijb_scoring.py --real-path [--tmp-dir DIR] [--faces N --templates T
        --pairs P --dim D] [--keep] [--json FILE]

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

``--real-path`` (instead of 1 and 2): writes a synthetic IJB-C-size tree to a temp folder
(``--tmp-dir``; ~2.2 GB at the real sizes): ``meta/ijbc_name_5pts_score.txt`` and
``ijbc_face_tid_mid.txt`` (469,375 faces, 23,124 templates, the layout of 1), the
15,658,489-line ``ijbc_template_pair_label.txt``, and feature chunk files in the feature
cache's format (:func:`face_rec.eval.ijb_data.write_chunk`, 4,096 faces each, D = 512), so no
images or model are needed: the cache stands in for extraction. A child process then runs what
``eval_ijb.py`` runs after extraction, with the same functions: ``read_meta`` (its three files
timed apart), the feature store opened (``open_features``, what ``extract_features`` returns
once every chunk is there), ``templates`` (features streamed from the chunk files) and
``verify`` (pair scoring and the figures). Reported per step: wall time and the child's peak
RSS so far; and the child's peak RSS as the parent sees it
(``getrusage(RUSAGE_CHILDREN).ru_maxrss``). Smaller ``--faces/--templates/--pairs/--dim`` make
a quick check (the tests run 2,000 faces).

Prints a Markdown block for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from face_rec.eval import ijb
from face_rec.eval.ijb_data import extract_features, write_chunk
from face_rec.utils.machine import benchmark_header

N_IMAGES, N_TEMPLATES, N_PAIRS, DIM = 469_375, 23_124, 15_658_489, 512
GENUINE = 19_557 / N_PAIRS  # IJB-C's genuine share
CHUNK = 4096  #: faces per feature chunk file (eval_ijb.yaml's chunk_size)
LINES_PER_WRITE = 1 << 20  #: pair-file lines formatted at a time


def synthetic_layout(
    rng: np.random.Generator, n_images: int = N_IMAGES, n_templates: int = N_TEMPLATES
) -> tuple[np.ndarray, np.ndarray]:
    """Per face_tid_mid line (n_images,): template (0 ... n_templates - 1) and media ids."""
    w = rng.lognormal(0.0, 1.0, n_templates)
    extra = rng.multinomial(n_images - n_templates, w / w.sum())
    sizes = 1 + extra  # faces per template, >= 1
    template = np.repeat(np.arange(n_templates), sizes)
    pos = np.arange(n_images) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # index in template
    stills = np.repeat(np.minimum(sizes, 1 + rng.poisson(4, n_templates)), sizes)
    videos = np.repeat(1 + rng.integers(0, 3, n_templates), sizes)
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


# ----------------------------------------------------------------------------- --real-path


def write_real_tree(
    root: Path, n_faces: int, n_templates: int, n_pairs: int, dim: int, seed: int = 0
) -> dict:
    """A synthetic IJB-C tree under ``root`` (``meta/`` in insightface's layout, no images) and
    its feature cache ``root/features`` (chunk files of :data:`CHUNK` faces). Returns what was
    written: sizes, paths and bytes on disk."""
    if not 1 <= n_templates <= n_faces:
        raise ValueError(f"--templates {n_templates} must be in 1 ... --faces ({n_faces})")
    rng = np.random.default_rng(seed)
    template, media = synthetic_layout(rng, n_faces, n_templates)
    tids = 1 + 7 * np.arange(n_templates)  # sparse ids, as IJB's are
    names = [f"frames/{k}.png" for k in range(n_faces)]
    meta = root / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    landmarks = rng.uniform(20, 120, (n_faces, 10))
    faceness = rng.uniform(0.5, 1.0, n_faces)
    with open(meta / "ijbc_name_5pts_score.txt", "w") as fh:
        for name, lm, f in zip(names, landmarks, faceness, strict=True):
            fh.write(name + " " + " ".join(f"{v:.2f}" for v in lm) + f" {f:.5f}\n")
    with open(meta / "ijbc_face_tid_mid.txt", "w") as fh:
        for name, t, m in zip(names, tids[template], media, strict=True):
            fh.write(f"{name} {t} {m}\n")
    with open(meta / "ijbc_template_pair_label.txt", "w") as fh:
        for s in range(0, n_pairs, LINES_PER_WRITE):
            k = min(LINES_PER_WRITE, n_pairs - s)
            a, b = tids[rng.integers(0, n_templates, (2, k))]
            y = (rng.random(k) < GENUINE).astype(np.int64)
            fh.write("".join(map("{} {} {}\n".format, a.tolist(), b.tolist(), y.tolist())))
    features = root / "features"
    features.mkdir()
    for i, s in enumerate(range(0, n_faces, CHUNK)):
        k = min(CHUNK, n_faces - s)
        x = rng.standard_normal((k, dim), dtype=np.float32)
        xf = x + 0.3 * rng.standard_normal((k, dim), dtype=np.float32)
        write_chunk(features, i, x, xf, np.ones(k, bool), np.zeros(k, bool), [""] * k)
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    return {
        "n_faces": n_faces,
        "n_templates": n_templates,
        "n_pairs": n_pairs,
        "dim": dim,
        "chunk_size": CHUNK,
        "features": str(features),
        "bytes_on_disk": size,
    }


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_command_steps(root: Path, features: Path, chunk_size: int) -> dict:
    """eval_ijb.py's steps after extraction on the tree of :func:`write_real_tree` (in this
    process): per step its wall time and this process's peak RSS so far (MB), and the
    verification figures."""
    from face_rec.eval import ijb_data
    from face_rec.eval.ijb_cli import templates, verify

    after_imports = _rss_mb()  # torch's CUDA build alone maps ~650 MB at import
    steps: dict[str, dict] = {}
    reads = {"read_faces": "name_5pts_score", "read_template_media": "face_tid_mid"}
    reads["read_pairs"] = "template_pair_label (np.loadtxt)"

    def timed_read(fn_name: str):  # read_meta calls these through the module: time each
        fn = getattr(ijb_data, fn_name)

        def wrapper(*args):
            start = time.perf_counter()
            out = fn(*args)
            steps[f"  read_meta: {reads[fn_name]}"] = {
                "s": time.perf_counter() - start,
                "peak_rss_mb": _rss_mb(),
            }
            return out

        return wrapper

    for fn_name in reads:
        setattr(ijb_data, fn_name, timed_read(fn_name))

    def step(name, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        steps[name] = {"s": time.perf_counter() - start, "peak_rss_mb": _rss_mb()}
        return out

    meta = step("read_meta (3 meta files)", ijb_data.read_meta, root, "IJBC")
    faces = np.unique(meta.rows.face[meta.rows.face >= 0])
    store = step(
        "feature store opened (cache complete)",
        ijb_data.open_features, features, len(faces), chunk_size,
    )  # fmt: skip
    layout, feats, usable, n_images, norms = step(
        "templates (features streamed from chunk files)",
        templates, meta, faces, store, ijb.TemplateSwitches(),
    )  # fmt: skip
    verification, _, _ = step(
        "verify (pair scoring, ROC, AUC, EER, TAR@FAR)",
        verify, meta.pairs, layout, feats, usable, n_images, norms,
    )  # fmt: skip
    order = ["read_meta (3 meta files)", *(f"  read_meta: {v}" for v in reads.values())]
    order += [k for k in steps if k not in order]
    return {
        "steps": {k: steps[k] for k in order},
        "n_faces": store.n,
        "n_templates": len(layout.template_ids),
        "n_pairs": verification["n_pairs"],
        "n_scored": verification["n_scored"],
        "auc": verification["auc"],
        "tar_at_far": verification["tar_at_far"],
        "peak_rss_mb": _rss_mb(),
        "rss_after_imports_mb": after_imports,
    }


def real_path_benchmark(
    n_faces: int,
    n_templates: int,
    n_pairs: int,
    dim: int,
    tmp_dir: str | None = None,
    keep: bool = False,
) -> dict:
    """Write the tree (:func:`write_real_tree`), run :func:`run_command_steps` in a child
    process, and return the child's report with ``write_s``, the tree's ``tree`` record and
    ``child_peak_rss_mb`` (``RUSAGE_CHILDREN``: the largest child's peak)."""
    folder = Path(tempfile.mkdtemp(prefix="ijb_real_path_", dir=tmp_dir))
    try:
        start = time.perf_counter()
        tree = write_real_tree(folder, n_faces, n_templates, n_pairs, dim)
        write_s = time.perf_counter() - start
        cmd = [sys.executable, __file__, "--child", str(folder), str(CHUNK)]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the child process failed:\n{done.stderr[-4000:]}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        report.update(
            tree={**tree, "root": str(folder), "kept": keep},
            write_s=write_s,
            child_wall_s=time.perf_counter() - start,
            child_peak_rss_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        )
        return report
    finally:
        if not keep:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)


def print_real_path(report: dict, command: str, started: str) -> None:
    """The Markdown block of ``--real-path`` for benchmarks/RESULTS.md."""
    t = report["tree"]
    print(f"`{command}` started {started}\n")
    print(
        f"- synthetic tree: {t['n_faces']:,} faces, {t['n_templates']:,} templates, "
        f"{t['n_pairs']:,} pairs; features D = {t['dim']} in {t['chunk_size']:,}-face chunk "
        f"files; {t['bytes_on_disk'] / 2**30:.2f} GiB on disk, written in {report['write_s']:.1f} s"
    )
    print(
        f"- child process: {report['child_wall_s']:.1f} s wall (imports included); peak RSS "
        f"{report['child_peak_rss_mb']:,.0f} MB (getrusage RUSAGE_CHILDREN: imports and "
        f"interpreter exit included); {report['rss_after_imports_mb']:,.0f} MB after its "
        "imports (torch, scipy, face_rec), before the first step\n"
    )
    print("| step (eval_ijb.py's functions) | wall s | peak RSS so far MB |")
    print("| --- | ---: | ---: |")
    for name, v in report["steps"].items():
        label = name.strip() if not name.startswith("  ") else f"- {name.strip()}"
        print(f"| {label} | {v['s']:.2f} | {v['peak_rss_mb']:,.0f} |")
    total = sum(v["s"] for k, v in report["steps"].items() if not k.startswith("  "))
    print(f"| **all steps** | **{total:.2f}** | **{report['peak_rss_mb']:,.0f}** |\n")
    n = f"{report['n_scored']:,} of {report['n_pairs']:,}"
    print(f"- {n} pairs scored; AUC {report['auc']:.4f} (random features: ~0.5)")


def _machine_lines(load_before: tuple[float, ...], load_after: tuple[float, ...]) -> None:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if "Model name" in ln), "")
    print(
        f"- machine: {platform.machine()} {model}, {len(os.sched_getaffinity(0))} cores; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}; numpy {np.__version__}"
    )
    print(
        f"- load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        "(above ~0.5 other work shared the cores)\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extract-images", type=int, default=64)
    parser.add_argument("--real-path", action="store_true", help="the command's own steps")
    parser.add_argument("--faces", type=int, default=N_IMAGES)
    parser.add_argument("--templates", type=int, default=N_TEMPLATES)
    parser.add_argument("--pairs", type=int, default=N_PAIRS)
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--tmp-dir", default=None, help="where the tree goes (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the tree (its path printed)")
    parser.add_argument("--json", default=None, help="also write the --real-path report here")
    parser.add_argument("--child", nargs=2, metavar=("ROOT", "CHUNK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        root = Path(args.child[0])
        report = run_command_steps(root, root / "features", int(args.child[1]))
        print(json.dumps(report))
        return
    print(json.dumps(benchmark_header("cpu")))
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    if args.real_path:
        report = real_path_benchmark(
            args.faces, args.templates, args.pairs, args.dim, args.tmp_dir, args.keep
        )
        command = " ".join(["python benchmarks/ijb_scoring.py", *sys.argv[1:]])
        print_real_path(report, command, started)
        _machine_lines(load_before, os.getloadavg())
        if args.keep:
            print(f"- tree kept in {report['tree']['root']}")
        if args.json:
            Path(args.json).write_text(json.dumps({**benchmark_header("cpu"), **report}, indent=1))
        return
    rows = scoring_benchmark(args.repeats)
    speed = extraction_benchmark(args.extract_images)
    load_after = os.getloadavg()
    print(f"`python benchmarks/ijb_scoring.py --repeats {args.repeats}` started {started}\n")
    _machine_lines(load_before, load_after)
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
