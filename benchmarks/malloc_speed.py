"""Training and embedding images/s with glibc's default malloc and with ``keep_freed_memory``.

    python benchmarks/malloc_speed.py --models mobilefacenet --input-size 64 --repeats 5
    python benchmarks/malloc_speed.py --task embed --models iresnet50 --input-size 112 --steps 2
    python benchmarks/malloc_speed.py --quick        # tiny sizes, seconds (the smoke test)

malloc settings are process-wide, so each measurement is a fresh process, default and tuned
alternating ``--repeats`` times so that both see the same drift of this VM's speed. ``--task
train`` (``trainer.keep_freed_memory``): a ``train_speed.py`` process (face_rec's training step on
in-memory crops; its reference loop and matmul are skipped here by reading only the face_rec
figure). ``--task embed`` (``eval.keep_freed_memory``): :func:`face_rec.eval.embed.embed_crops` as
evaluation calls it (flip TTA, batch ``--batch``) over ``--steps`` batches of random crops, after
one warm-up batch. Per setting: the median images/s, and the median share of
the child's CPU time spent in the kernel (page faults of freed-and-reallocated buffers). The
ratio is tuned / default, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from face_rec.utils.io import write_json  # noqa: E402
from face_rec.utils.machine import benchmark_header  # noqa: E402

HERE = Path(__file__).resolve().parent


#: --task embed: one process timing embed_crops; prints images/s
EMBED = """
import sys, time, numpy as np, torch
sys.path.insert(0, {repo!r})
from face_rec.eval.embed import embed_crops
from face_rec.models.registry import create_model
from face_rec.utils.allocator import keep_freed_memory
if {tuned}:
    keep_freed_memory()
torch.manual_seed(0)
kw = {{}} if {width} == 1.0 else {{"width": {width}}}
model = create_model({model!r}, input_size={size}, **kw).eval()
crops = np.random.default_rng(0).integers(0, 256, ({n}, 112, 112, 3), dtype=np.uint8)
embed_crops(model, crops[:{batch}], {batch})
t = time.perf_counter()
embed_crops(model, crops, {batch})
print({n} / (time.perf_counter() - t))
"""


def one(args, tuned: bool) -> tuple[float, float]:
    """One fresh process: (images/s, kernel share of its CPU time)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        if args.task == "train":
            cmd = [sys.executable, str(HERE / "train_speed.py"), "--out", str(out)]
            cmd += ["--models", args.model, "--input-size", str(args.input_size)]
            cmd += ["--width", str(args.width), "--batch", str(args.batch)]
            cmd += ["--steps", str(args.steps), "--matmul", "64"]
            cmd += ["--keep-freed-memory"] if tuned else []
        else:
            code = EMBED.format(
                repo=str(HERE.parent), tuned=tuned, width=args.width, model=args.model,
                size=args.input_size, n=args.batch * args.steps, batch=args.batch,
            )  # fmt: skip
            cmd = [sys.executable, "-c", code]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if args.task == "train":
            ips = json.loads(out.read_text())["rows"][0]["face_rec_img_s"]
        else:
            ips = float(done.stdout.split()[-1])
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return ips, system / (user + system)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=("train", "embed"), default="train")
    p.add_argument("--models", dest="model", default="mobilefacenet", help="one backbone")
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed steps (embed: batches)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path)
    p.add_argument("--quick", action="store_true", help="tiny sizes for the smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.input_size, args.width, args.batch, args.steps = 32, 0.25, 4, 1
    header = benchmark_header("cpu")
    runs: dict[str, list[tuple[float, float]]] = {"default": [], "keep_freed_memory": []}
    for _ in range(args.repeats):
        runs["default"].append(one(args, tuned=False))
        runs["keep_freed_memory"].append(one(args, tuned=True))
    rows = {
        k: {
            "img_s": [round(i, 1) for i, _ in v],
            "median_img_s": statistics.median(i for i, _ in v),
            "median_kernel_share": statistics.median(s for _, s in v),
        }
        for k, v in runs.items()
    }
    ratio = rows["keep_freed_memory"]["median_img_s"] / rows["default"]["median_img_s"]
    record = {**header, "settings": {**vars(args), "out": str(args.out)}, "rows": rows}
    record["ratio"] = ratio
    print(json.dumps(record))
    print("| malloc | median img/s | kernel share of CPU time |\n| --- | ---: | ---: |")
    for k, r in rows.items():
        print(f"| {k} | {r['median_img_s']:.1f} | {r['median_kernel_share']:.0%} |")
    print(f"keep_freed_memory / default: {ratio:.2f}x")
    if args.out:
        write_json(args.out, record)
    return record


if __name__ == "__main__":
    main()
