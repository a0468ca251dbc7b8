"""Backbone training speed and peak memory, with and without activation checkpointing.

    python benchmarks/backbone_speed.py --out logs/benchmarks/backbone_speed.json
    python benchmarks/backbone_speed.py --quick     # a smoke run: vit_t, iresnet18, 48 px, batch 4

By default vit_t, vit_s, iresnet18 and iresnet50 at 112 px, batch 32, in one run.

Each (backbone, model.checkpointing) pair runs in a fresh process, one after another, so that its
peak memory is its own: a training step is forward + backward + SGD step (momentum 0.9) of the
backbone and a linear classifier over ``--classes`` identities with cross-entropy (the margin
heads cost the same for every backbone and are left out), on a batch of 112x112 images already
in memory. Images/s: the median over ``--steps`` timed steps after ``--warmup`` untimed ones.

Memory columns:
- peak: on CUDA ``torch.cuda.max_memory_allocated`` over the timed steps; on CPU the process's
  peak resident set (``ru_maxrss``) minus its resident set just before the first step, i.e. what
  training adds to the built model and batch (allocator caching makes it approximate);
- activations: bytes of the distinct tensors one training forward keeps for backward (what
  autograd saves, counted with saved-tensor hooks, parameters left out, plus the inputs that
  checkpointed blocks keep for their recomputation): exact, and the part checkpointing shrinks.

Prints a Markdown table headed by the date, torch version, device, CPU capability and threads
(:func:`face_rec.utils.machine.benchmark_header`); ``--out`` also writes the record as JSON.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import face_rec.models.blocks as blocks  # noqa: E402
from face_rec.models.registry import create_model  # noqa: E402
from face_rec.models.summary import count_params, forward_flops  # noqa: E402
from face_rec.utils.io import write_json  # noqa: E402
from face_rec.utils.machine import benchmark_header  # noqa: E402

MB = 2**20


def _rss_bytes() -> int:
    """Current resident set of this process (Linux /proc; 0 elsewhere)."""
    statm = Path("/proc/self/statm")
    if not statm.is_file():
        return 0
    return int(statm.read_text().split()[1]) * resource.getpagesize()


def _peak_rss_bytes() -> int:
    """Peak resident set of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024


def _activation_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of activations one training forward of ``model`` on ``x`` keeps for backward:
    the distinct storages autograd saves (parameters left out) plus, with checkpointing, the
    inputs each checkpointed block keeps for its recomputation."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def note(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    def recording(fn, *args, **kwargs):
        for a in args:
            if isinstance(a, torch.Tensor):
                note(a)
        return checkpoint(fn, *args, **kwargs)

    blocks.checkpoint = recording
    try:
        with torch.autograd.graph.saved_tensors_hooks(note, lambda t: t):
            model(x)
    finally:
        blocks.checkpoint = checkpoint
    return sum(kept.values())


def measure(name: str, checkpointing: bool, opts: dict) -> dict:
    """One configuration, in this (fresh) process: images/s, peak memory, activations kept."""
    torch.set_num_threads(opts["threads"])
    device = torch.device(opts["device"])
    torch.manual_seed(0)
    size, batch = opts["input_size"], opts["batch"]
    model = create_model(name, input_size=size, checkpointing=checkpointing)
    flops = forward_flops(model, size)
    model.to(device).train()
    classifier = torch.nn.Linear(512, opts["classes"]).to(device)
    params = [*model.parameters(), *classifier.parameters()]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    x = (torch.rand(batch, 3, size, size) * 2 - 1).to(device)
    y = (torch.arange(batch) % opts["classes"]).to(device)
    activations = _activation_bytes(model, x)
    model.zero_grad(set_to_none=True)

    def step() -> float:
        start = time.perf_counter()
        loss = F.cross_entropy(classifier(model(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    base = _rss_bytes()
    for _ in range(opts["warmup"]):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = [step() for _ in range(opts["steps"])]
    cuda = device.type == "cuda"
    peak = torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes() - base
    return {
        "model": name,
        "checkpointing": checkpointing,
        "params": count_params(model),
        "flops": flops,
        "images_per_s": batch / statistics.median(times),
        "peak_bytes": peak,
        "activation_bytes": activations,
    }


def table(record: dict) -> str:
    """The record as Markdown, headed by what it was measured on."""
    m, o = record["machine"], record["settings"]
    on = m["gpu"] or f"CPU {m['cpu_model']}, capability {m['cpu_capability']}"
    peak = "peak MiB (max allocated)" if m["gpu"] else "peak MiB (RSS added)"
    lines = [
        f"{record['date']}, commit {record['commit']}, torch {m['torch']}, {on}, "
        f"{m['threads']} threads; batch {o['batch']}, {o['input_size']} px, median of "
        f"{o['steps']} steps after {o['warmup']} warm-up",
        "",
        f"| backbone | checkpointing | params (M) | fwd GFLOPs | train img/s | {peak} "
        "| activations kept (MiB) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in record["rows"]:
        lines.append(
            f"| {r['model']} | {'on' if r['checkpointing'] else 'off'} "
            f"| {r['params'] / 1e6:.2f} | {r['flops'] / 1e9:.2f} | {r['images_per_s']:.1f} "
            f"| {r['peak_bytes'] / MB:.0f} | {r['activation_bytes'] / MB:.0f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["vit_t", "vit_s", "iresnet18", "iresnet50"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--input-size", type=int, default=112)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, help="also write the record as JSON here")
    p.add_argument("--quick", action="store_true", help="vit_t, iresnet18, 48 px, batch 4")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.input_size, args.batch = ["vit_t", "iresnet18"], 48, 4
        args.warmup, args.steps = 1, 2
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    opts = {k: v for k, v in vars(args).items() if k not in ("models", "quick", "out")}
    rows = []
    ctx = mp.get_context("spawn")
    for name in args.models:
        for checkpointing in (False, True):
            with ctx.Pool(1) as pool:  # a fresh process: its peak memory is this run's alone
                rows.append(pool.apply(measure, (name, checkpointing, opts)))
    torch.set_num_threads(args.threads)  # the header reports the threads the runs used
    record = {**benchmark_header(args.device), "settings": {**opts, "models": args.models},
              "rows": rows}  # fmt: skip
    print(table(record), flush=True)
    if args.out:
        write_json(args.out, record)
    return record


if __name__ == "__main__":
    main()
