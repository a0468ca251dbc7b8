"""The demo's speed with torch, oneDNN and MKL held to AVX2 on an AVX-512 CPU, side by side.

    FACE_REC_DATA=../shared/data python benchmarks/isa_limits.py --rounds 3 \
        --out logs/benchmarks/isa_limits.json

No session has had an AVX2 CPU, the kind issue 15 judges the demo's time on. This measures the
one part of that difference an AVX-512 machine can show: its own cores restricted to AVX2
instructions through the libraries' switches (:data:`LIMITS`: torch's kernels, oneDNN's
convolutions, MKL's matrix products; not numpy's kernels or Pillow's decoding), not an AVX2
CPU's clock, caches or core count. Each round runs every task twice in fresh processes, without
and with the limits (native first in odd rounds, limited first in even ones: this VM's speed
drifts by 10-20% over minutes); the report gives each side's median and the median of the
per-round ratios (limited / native). Tasks:

- ``demo``: ``train_speed.py`` on the demo's training step (IResNet-18 x0.25 at 48 px from 112 px
  crops, CosFace m 0.25 over 1,067 identities, batch 64, trainer.keep_freed_memory as train.py),
  images/s, and its 2048^3 fp32 matmul GFLOP/s;
- ``preset``: the same for the CPU preset's step (MobileFaceNet at 64 px, 3,637 identities);
- ``align``: ``align.py``'s face_rec alignment (MTCNN, 2 worker processes, a real pack) of
  ``--align-n`` LFW files spread over the set, images/s (skipped without FACE_REC_DATA).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from face_rec.utils.io import write_json  # noqa: E402
from face_rec.utils.machine import ISA_VARIABLES, benchmark_header  # noqa: E402

#: what an AVX2 CPU's torch would run (face_rec.utils.machine.ISA_VARIABLES records them)
LIMITS = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}


def _cmd(script: str, options: str) -> list[str]:
    return [sys.executable, str(REPO / "benchmarks" / script), *options.split()]


TRAIN = "--keep-freed-memory --crop-size 112 --embedding-dim 128 --models"
TASKS = {
    "demo": _cmd(
        "train_speed.py",
        f"{TRAIN} iresnet18 --width 0.25 --input-size 48 --head cosface_demo --classes 1067",
    ),
    "preset": _cmd(
        "train_speed.py", f"{TRAIN} mobilefacenet --input-size 64 --head cosface_cpu --classes 3637"
    ),
    "align": _cmd("align.py", "--n-baseline 1"),
}


def run(task: str, limited: bool, args: argparse.Namespace) -> dict:
    """One fresh process of ``task``; its figures, and the machine it says it ran on."""
    cmd = list(TASKS[task])
    cmd += ["--steps", str(args.steps)] if task != "align" else ["--n", str(args.align_n)]
    cmd += ["--repeats", "1"] if task == "align" else []
    cmd += ["--quick"] if args.quick else []
    env = {k: v for k, v in os.environ.items() if k not in ISA_VARIABLES}  # native: none
    env.update(LIMITS if limited else {})
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    machine = next(r["machine"] for r in records if "machine" in r)
    if task == "align":
        return {"img_s": records[-1]["face_rec_img_s"], "machine": machine}
    row = records[-1]
    return {
        "img_s": row["face_rec_img_s"],
        "matmul_gflops": row["matmul_gflops"],
        "machine": machine,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="timed training steps per process")
    p.add_argument("--align-n", type=int, default=400, help="LFW files aligned per process")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--out", type=Path, help="also write the report as JSON")
    p.add_argument("--quick", action="store_true", help="train_speed.py --quick, once: the test")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.steps, args.tasks = 1, 1, ["demo"]
    if "align" in args.tasks and not os.environ.get("FACE_REC_DATA"):
        print("align skipped: set FACE_REC_DATA to the folder holding lfw/", file=sys.stderr)
        args.tasks.remove("align")
    report = {
        **benchmark_header("cpu"),
        "limits": LIMITS,
        "settings": vars(args) | {"out": str(args.out)},
    }
    runs = {t: {"native": [], "limited": []} for t in args.tasks}
    for r in range(args.rounds):
        for task in args.tasks:
            for side in ("native", "limited")[:: 1 if r % 2 == 0 else -1]:  # ABBA order
                got = run(task, side == "limited", args)
                runs[task][side].append(got)
                print(f"round {r + 1} {task} {side}: {got['img_s']:.1f} img/s", flush=True)
    for task, sides in runs.items():
        limited_machine = sides["limited"][0]["machine"]
        entry = {
            "native_capability": sides["native"][0]["machine"]["cpu_capability"],
            "limited_capability": limited_machine["cpu_capability"],
            "limited_isa_limits": limited_machine["isa_limits"],
        }
        keys = [k for k in sides["native"][0] if k != "machine"]
        for k in keys:
            native, limited = [x[k] for x in sides["native"]], [x[k] for x in sides["limited"]]
            ratios = [b / a for a, b in zip(native, limited, strict=True)]
            entry[k] = {
                "native_median": round(statistics.median(native), 2),
                "limited_median": round(statistics.median(limited), 2),
                "ratio_median": round(statistics.median(ratios), 3),
                "ratios": [round(x, 3) for x in ratios],
                "native_runs": native,
                "limited_runs": limited,
            }
        report[task] = entry
        print(json.dumps({task: entry}))
    if args.out:
        write_json(args.out, report)


if __name__ == "__main__":
    main()
