"""Training throughput: face_rec's trainer vs a plain reference loop, and GFLOP/s vs a matmul.

    python benchmarks/train_speed.py --models mobilefacenet iresnet18 iresnet50 resnet50
    python benchmarks/train_speed.py --compile --out logs/benchmarks/train_speed.json
    python benchmarks/train_speed.py --quick          # tiny sizes, seconds (the smoke test)

For each backbone at batch ``--batch`` and ``--input-size``, embedding ``--embedding-dim``, with
the class centres and loss of ``conf/head/<--head>.yaml`` (default arcface: s 64, m 0.5; the
demo's is cosface_demo) over ``--classes`` identities and SGD (the demo's own setting: ``--models
iresnet18 --width 0.25 --input-size 48 --crop-size 112 --embedding-dim 128 --head cosface_demo
--classes 1067``):
- reference: the textbook loop (fp32, contiguous NCHW, default torch settings) on a batch already
  in memory as a float tensor;
- face_rec: ``Trainer.run_step`` as configured by default (channels_last), fed from a uint8
  in-memory dataset of ``--crop-size`` crops (a pack's side; default ``--input-size``) through the
  DataLoader, with the default augmentation resized to ``--input-size``, so data wait and the
  augmentation count (the augmentation's own median time per batch is reported beside it).
- face_rec + compile (``--compile``): the same, with the backbone compiled as
  ``trainer.compile=true`` compiles it (``Trainer(compile=True)``: ``torch.compile`` of the
  training forward, ``--compile-backend``, default inductor); its compile time (first
  step minus a median step) is reported apart from its images/s, and its ratios to the eager
  face_rec run and to the reference.
Images/s are medians over ``--steps`` timed steps after one warm-up step (two when compiled), in
the same process. Achieved GFLOP/s = 3 x forward FLOPs x images/s (backward ~ 2 x forward),
against a ``--matmul``^3 fp32 matmul (2048) measured in the same run. One JSON line per backbone,
then a Markdown table; every record carries the machine (CPU capability, threads, torch), the
date and the commit, and ``--out`` writes them all as one JSON file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from face_rec.data.augment import Augment  # noqa: E402
from face_rec.data.samplers import RandomBatches  # noqa: E402
from face_rec.engine.schedule import make_scheduler  # noqa: E402
from face_rec.engine.trainer import Trainer  # noqa: E402
from face_rec.models.heads import CosineHead  # noqa: E402
from face_rec.models.registry import create_model  # noqa: E402
from face_rec.models.summary import forward_flops  # noqa: E402
from face_rec.utils.allocator import keep_freed_memory  # noqa: E402
from face_rec.utils.io import write_json  # noqa: E402
from face_rec.utils.machine import benchmark_header  # noqa: E402


class Synthetic(Dataset):
    def __init__(self, n: int, size: int, classes: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
        self.y = torch.arange(n) % classes
        self.labels = self.y.numpy()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def build(name: str, args) -> torch.nn.Module:
    """The backbone at ``--input-size``, ``--width`` and ``--embedding-dim``, seeded."""
    torch.manual_seed(0)
    kw = {} if args.width == 1.0 else {"width": args.width}
    return create_model(name, input_size=args.input_size, embedding_dim=args.embedding_dim, **kw)


def head_loss_config(name: str) -> dict:
    """``conf/head/<name>.yaml``'s loss (through its defaults chain, e.g. cosface_demo ->
    cosface_cpu -> cosface), as train.py composes it for ``head=<name>``, with no experiment."""
    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        cfg = compose("train", overrides=[f"head={name}", "~experiment"])
    return OmegaConf.to_container(cfg.head.loss, resolve=True)


def build_head(args) -> tuple[CosineHead, torch.nn.Module]:
    """The class centres (cosine) and ``--head``'s loss, instantiated as train.py does."""
    return CosineHead(args.embedding_dim, args.classes), instantiate(args.loss_config)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def reference(name: str, args) -> float:
    model = build(name, args)
    head, loss_fn = build_head(args)
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)
    x = torch.rand(args.batch, 3, args.input_size, args.input_size) * 2 - 1
    y = torch.arange(args.batch) % args.classes
    times = []
    for _ in range(args.steps + 1):
        start = time.perf_counter()
        loss = loss_fn(head(model(x)), y).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return args.batch / statistics.median(times[1:])


def ours(name: str, args, compiled: bool = False) -> dict:
    """face_rec's Trainer on ``name``: median images/s, mean data-wait fraction, and (compiled)
    the compile time, first step minus the median step."""
    torch._dynamo.reset()  # each backbone compiles anew (no recompile limit reached)
    model = build(name, args)
    head, loss_fn = build_head(args)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    warmup = 2 if compiled else 1
    data = Synthetic(args.batch * (args.steps + warmup), args.crop_size, args.classes)
    trainer = Trainer(
        model,
        head,
        loss_fn,
        opt,
        make_scheduler(opt, 100),
        data,
        RandomBatches(data.labels, args.batch),
        Augment(shift=4, brightness=0.2, contrast=0.2, saturation=0.2, size=args.input_size),
        args.steps + warmup,
        channels_last=True,
        grad_clip=5.0,
        compile=compiled,  # as train.py's trainer.compile=true
        compile_backend=args.compile_backend,
    )
    stream = trainer.micro_batches()
    ips, wait = [], []
    for _ in range(args.steps + warmup):
        trainer.run_step([next(stream)])
        ips.append(trainer.metrics["images_per_s"])
        wait.append(trainer.metrics["data_wait_fraction"])
    img_s = statistics.median(ips[warmup:])
    out = {"img_s": img_s, "wait": float(np.mean(wait[warmup:])), "crop_size": data.x.shape[-1]}
    batch = data.x[: args.batch]
    out["augment_ms"] = 1e3 * statistics.median(
        timed(lambda: trainer.augment(batch)) for _ in range(args.steps + 1)
    )
    if compiled:
        out["compile_s"] = args.batch / ips[0] - args.batch / img_s
    return out


def measure(name: str, args, mm: float) -> dict:
    """One backbone's record: reference, face_rec eager and (``--compile``) compiled."""
    flops = forward_flops(build(name, args), args.input_size)
    ref = reference(name, args)
    mine = ours(name, args)
    gflops = 3 * flops * mine["img_s"] / 1e9
    rec = {
        "model": name,
        "batch": args.batch,
        "input_size": args.input_size,
        "width": args.width,
        "embedding_dim": args.embedding_dim,
        "head": args.head,
        "loss": {k: v for k, v in args.loss_config.items() if k != "_target_"},
        "classes": args.classes,
        "threads": torch.get_num_threads(),
        "reference_img_s": round(ref, 2),
        "face_rec_img_s": round(mine["img_s"], 2),
        "ratio": round(mine["img_s"] / ref, 2),
        "crop_size": mine["crop_size"],  # the side of the crops the trainer was fed
        "data_wait_fraction": round(mine["wait"], 4),
        "augment_ms": round(mine["augment_ms"], 2),
        "augment_fraction": round(mine["augment_ms"] / 1e3 * mine["img_s"] / args.batch, 3),
        "face_rec_gflops": round(gflops, 1),
        "matmul_gflops": round(mm, 1),
        "fraction_of_matmul": round(gflops / mm, 3),
    }
    if args.compile:
        comp = ours(name, args, compiled=True)
        rec.update(
            compile_backend=args.compile_backend,
            compiled_img_s=round(comp["img_s"], 2),
            compile_s=round(comp["compile_s"], 1),
            compiled_vs_eager=round(comp["img_s"] / mine["img_s"], 2),
            compiled_vs_reference=round(comp["img_s"] / ref, 2),
            compiled_fraction_of_matmul=round(3 * flops * comp["img_s"] / 1e9 / mm, 3),
        )
    return rec


def markdown(rows: list[dict]) -> str:
    """The records as a Markdown table (compiled columns when measured)."""
    compiled = any("compiled_img_s" in r for r in rows)
    head = (
        "| backbone | reference img/s | face_rec img/s | ratio | data wait | augmentation |"
        " of matmul |"
    )
    rule = "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    if compiled:
        head += " compiled img/s | vs eager | vs reference | compile s |"
        rule += " ---: | ---: | ---: | ---: |"
    lines = [head, rule]
    for r in rows:
        line = (
            f"| {r['model']} | {r['reference_img_s']:.2f} | {r['face_rec_img_s']:.2f} | "
            f"{r['ratio']:.2f}x | {100 * r['data_wait_fraction']:.2f}% | "
            f"{100 * r['augment_fraction']:.0f}% | {100 * r['fraction_of_matmul']:.0f}% |"
        )
        if "compiled_img_s" in r:
            line += (
                f" {r['compiled_img_s']:.2f} | {r['compiled_vs_eager']:.2f}x | "
                f"{r['compiled_vs_reference']:.2f}x | {r['compile_s']:.1f} |"
            )
        lines.append(line)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--models", nargs="+", default=["mobilefacenet", "iresnet18", "iresnet50", "resnet50"]
    )
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--input-size", type=int, default=112)
    p.add_argument(
        "--crop-size",
        type=int,
        help="side of the uint8 crops fed to the trainer (a pack's, e.g. 112 for the demo, which"
        " trains at 48); default: --input-size",
    )
    p.add_argument("--width", type=float, default=1.0, help="backbone width multiplier")
    p.add_argument("--embedding-dim", type=int, default=512)
    p.add_argument(
        "--head", default="arcface", help="a conf/head config: arcface, cosface_demo, ..."
    )
    p.add_argument("--classes", type=int, default=4000)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--matmul", type=int, default=2048, help="side of the reference matmul")
    p.add_argument("--compile", action="store_true", help="also time the compiled backbone")
    p.add_argument("--compile-backend", default="inductor", help="inductor | aot_eager | eager")
    p.add_argument("--out", type=Path, help="also write every record as one JSON file")
    p.add_argument("--quick", action="store_true", help="tiny sizes for the smoke test")
    p.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="glibc keeps freed buffers, as train.py's trainer.keep_freed_memory (malloc_speed.py)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.batch, args.input_size, args.width = ["mobilefacenet"], 4, 32, 0.25
        args.classes, args.steps, args.matmul = 50, 1, 256
    args.crop_size = args.crop_size or args.input_size
    args.loss_config = head_loss_config(args.head)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.keep_freed_memory:
        keep_freed_memory()
    header = benchmark_header("cpu")
    print(json.dumps(header), flush=True)
    mm = matmul_gflops(args.matmul)
    rows = []
    for name in args.models:
        rows.append(measure(name, args, mm))
        print(json.dumps(rows[-1]), flush=True)
    print(markdown(rows))
    record = {**header, "settings": {**vars(args), "out": str(args.out)}, "rows": rows}
    if args.out:
        write_json(args.out, record)
    return record


if __name__ == "__main__":
    main()
