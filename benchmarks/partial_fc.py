"""Partial FC vs a full classifier: peak memory per rank and step time, world size 1 and 2.

Each configuration runs in fresh processes (gloo on CPU; the cores are split between the ranks,
so world size 2 uses 1 thread per rank and world size 1 uses 2). A step is the head alone:
forward of random embeddings (the backbone's output, batch per rank B), the margin softmax,
backward, SGD with momentum. "full" is the replicated CosineHead + ArcFace loss (under DDP when
W = 2, so its (C, D) gradient is all-reduced); "pfc r" is Partial FC with sample rate r.

    python benchmarks/partial_fc.py                       # C = 100k and 1M, D = 512, B = 64
    python benchmarks/partial_fc.py --classes 100000 --steps 3

Peak memory is the process's peak RSS (ru_maxrss) minus its RSS before the head was built.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from face_rec.losses import ArcFaceLoss  # noqa: E402
from face_rec.models.heads import CosineHead  # noqa: E402
from face_rec.models.partial_fc import PartialFC  # noqa: E402
from face_rec.utils.machine import benchmark_header  # noqa: E402


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _worker(rank: int, world: int, port: int, cfg: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, cfg["cores"] // world))
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(rank)
    before = _rss_mb()
    loss = ArcFaceLoss()
    if cfg["kind"] == "full":
        head = CosineHead(cfg["dim"], cfg["classes"])
        module = head
        if world > 1:
            module = torch.nn.parallel.DistributedDataParallel(head, gradient_as_bucket_view=True)

        def step_loss(x, y):
            return loss(module(x), y).mean()
    else:
        head = PartialFC(cfg["dim"], cfg["classes"], loss, sample_rate=cfg["rate"])

        def step_loss(x, y):
            return head(x, y).mean()

    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    times = []
    for i in range(cfg["steps"] + 1):
        x = torch.randn(cfg["batch"], cfg["dim"], requires_grad=True)
        y = torch.randint(0, cfg["classes"], (cfg["batch"],))
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        step_loss(x, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if world > 1:
            dist.barrier()
        if i:  # the first step is warm-up
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"step_s": statistics.median(times), "peak_rss_mb": peak, "head_mb": peak - before}
    Path(out, f"{rank}.json").write_text(json.dumps(result))
    if world > 1:
        dist.destroy_process_group()


def run(cfg: dict, world: int) -> dict:
    with tempfile.TemporaryDirectory() as out, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        mp.spawn(_worker, args=(world, port, cfg, out), nprocs=world)
        ranks = [json.loads(Path(out, f"{r}.json").read_text()) for r in range(world)]
    return {
        "step_s": max(r["step_s"] for r in ranks),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in ranks),
        "head_mb": max(r["head_mb"] for r in ranks),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64, help="per rank")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median), after 1 warm-up")
    ap.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--heads", nargs="+", default=["full", "pfc1", "pfc0.1"],
                    help="full, pfc<r>")  # fmt: skip
    args = ap.parse_args()
    kinds = [("full", 1.0) if h == "full" else ("pfc", float(h[3:])) for h in args.heads]
    print(json.dumps(benchmark_header("cpu")))
    print(f"torch {torch.__version__}, {args.cores} cores, D={args.dim}, B={args.batch}/rank")
    print("| C | W | head | step s (median) | peak RSS MB / rank | head MB / rank |")
    print("| ---: | ---: | --- | ---: | ---: | ---: |")
    for classes in args.classes:
        for world in args.worlds:
            for kind, rate in kinds:
                cfg = dict(vars(args), classes=classes, kind=kind, rate=rate)
                r = run(cfg, world)
                name = "full FC" if kind == "full" else f"Partial FC r={rate}"
                print(
                    f"| {classes:,} | {world} | {name} | {r['step_s']:.3f} | "
                    f"{r['peak_rss_mb']:.0f} | {r['head_mb']:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
