"""A ready GPU check: training and evaluation throughput and memory on one GPU, in one script.

    python benchmarks/gpu_check.py --out logs/benchmarks/gpu_check.json   # one CUDA GPU, < 8 min
    python benchmarks/gpu_check.py --smoke --out logs/benchmarks/gpu_smoke.json   # on CPU, tiny

Sections, in the order they run (the ``--deadline-s`` clock, 420 s from the start, skips what no
longer fits, recorded as ``skipped``; ``--sections`` runs a subset; a config that fails or runs
out of memory is recorded as ``failed`` / ``oom``
and the rest go on; the JSON is rewritten after every section, so a killed run keeps its figures):

1. training, eager: IResNet-50 and IResNet-100 at batch 128 and 256, each in fp32, fp16 (grad
   scaler) and bf16, contiguous and channels_last. One config = a fresh backbone, an ArcFace head
   over ``--classes`` identities, SGD (momentum, weight decay), face_rec's default augmentation,
   and :meth:`Trainer.run_step` on a uint8 batch already on the device (so no loader time):
   forward, head, loss, backward, gradient clipping, optimizer step. images/s = batch / median
   step time over the timed steps after the warm-up steps (device synchronised around each step);
   peak memory = ``torch.cuda.max_memory_allocated`` (reset between configs).
2. DDP: ``torchrun --standalone --nproc_per_node=1`` (``--ddp-nproc``) runs this script's worker:
   a process group (NCCL on CUDA, gloo on CPU), the backbone under DistributedDataParallel, the
   same Trainer step; images/s next to the same config without DDP.
3. Partial FC (:class:`face_rec.models.partial_fc.PartialFC`, one rank) at ``--pfc-classes``
   identities (1,000,000), sample rate 0.1 and 1 (the full softmax, for reference): the head alone
   (random embeddings in) and with the IResNet-50 backbone through the Trainer.
4. evaluation: :func:`face_rec.eval.embed.embed_crops` (flip TTA, uint8 crops from host memory)
   in fp32 and under fp16 / bf16 autocast, contiguous and channels_last, batch 256 and 512; each
   low-precision path's embeddings are compared with fp32's (smallest cosine).
5. training, ``torch.compile`` through the Trainer (``Trainer(compile=True)``, as
   ``trainer.compile=true`` trains): the same grid, batch 256 and channels_last first. Compile
   time (first step minus a median step) is reported apart from images/s. A config starts only
   when the longest compile seen so far (90 s assumed before the first) fits before the deadline.
   Inductor compiles forward and backward for about a minute or more per config, so not all 24
   fit in 8 minutes with the sections before them: the rest are recorded as skipped; a second
   run with ``--sections compiled`` covers more of them. A compile error (other than out of memory)
   skips the remaining compiled configs, which would fail alike; a model the Trainer keeps eager
   (8-channel convolutions on the CPU) is recorded as skipped, not timed as compiled.

Timed steps per config: ``--warmup`` 3 + ``--steps`` 10 on the GPU (eager; an estimated 2-3
minutes for the 24 eager configs, not yet measured on the GPU); compiled configs get one extra
warm-up step.

``--smoke`` runs all of it on the CPU with tiny sizes (width 0.25, 32 px, batch 4, 100 classes,
1 + 2 steps, Partial FC at 1,000 identities, torchrun with gloo, fp16 and bf16 under CPU
autocast, one compiled config with the ``eager`` backend: dynamo's tracing without inductor's
minutes of C++ compilation, one torch thread: on a shared 2-core machine two threads spin-wait
for each other and run 10x slower) in about a minute; tests/test_benchmarks.py runs it. On the
CPU, memory is the process's peak RSS so far (not reset between configs).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from embed_speed import agreement, calibrate_bn, random_crops, short_error  # noqa: E402

from face_rec.data.augment import Augment  # noqa: E402
from face_rec.engine.schedule import make_scheduler  # noqa: E402
from face_rec.engine.trainer import Trainer  # noqa: E402
from face_rec.eval.embed import embed_crops  # noqa: E402
from face_rec.losses import ArcFaceLoss  # noqa: E402
from face_rec.models.heads import CosineHead  # noqa: E402
from face_rec.models.partial_fc import PartialFC  # noqa: E402
from face_rec.models.registry import create_model  # noqa: E402
from face_rec.utils.io import write_json  # noqa: E402
from face_rec.utils.machine import benchmark_header  # noqa: E402

PRECISIONS = ("fp32", "fp16", "bf16")
SECTIONS = ("training", "ddp", "partial_fc", "embedding", "compiled")
LAYOUTS = ("contiguous", "channels_last")


@dataclass
class Plan:
    """Every size and setting of a run (JSON-serialisable: the DDP worker reads it)."""

    device: str = "cuda"
    models: list[str] = field(default_factory=lambda: ["iresnet50", "iresnet100"])
    width: float = 1.0
    input_size: int = 112
    embedding_dim: int = 512
    classes: int = 10_000
    batches: list[int] = field(default_factory=lambda: [128, 256])
    precisions: list[str] = field(default_factory=lambda: list(PRECISIONS))
    layouts: list[str] = field(default_factory=lambda: list(LAYOUTS))
    compile_backend: str = "inductor"
    max_compiled: int | None = None  #: compiled configs to run at most (None: all that fit)
    compile_guess_s: float = 90.0  #: compile time assumed before one was measured
    warmup: int = 3
    steps: int = 10
    deadline_s: float = 420.0
    ddp_nproc: int = 1
    ref_model: str = "iresnet50"  #: the config DDP and Partial FC-with-backbone use
    ref_batch: int = 256
    ref_precision: str = "bf16"
    ref_layout: str = "channels_last"
    pfc_classes: int = 1_000_000
    pfc_rates: list[float] = field(default_factory=lambda: [0.1, 1.0])
    pfc_batch: int = 256
    embed_batches: list[int] = field(default_factory=lambda: [256, 512])
    embed_crops: int = 2048
    embed_repeats: int = 3
    cudnn_benchmark: bool = False  #: face_rec leaves cuDNN's autotuner off (torch's default)
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    threads: int | None = None  #: torch's intra-op threads (None: torch's default)


SMOKE = {
    "device": "cpu", "width": 0.25, "input_size": 32, "embedding_dim": 32, "classes": 100,
    "batches": [4], "compile_backend": "eager", "max_compiled": 1, "compile_guess_s": 0.0,
    "warmup": 1, "steps": 2, "deadline_s": 150.0, "ref_batch": 4, "pfc_classes": 1000,
    "pfc_batch": 4, "embed_batches": [4], "embed_crops": 8, "embed_repeats": 1, "threads": 1,
}  # fmt: skip


# ------------------------------------------------------------------ clock, guard, timing


class Clock:
    """The run's global deadline."""

    def __init__(self, budget_s: float) -> None:
        self.start, self.budget = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()


def is_oom(e: BaseException) -> bool:
    """A CUDA (or CPU allocator) out-of-memory error."""
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(e, oom) or "out of memory" in str(e).lower()


def guarded(
    key: dict, run: Callable[[], dict], clock: Clock, device: str, need_s: float = 0.0
) -> dict:
    """``{**key, status, ...}``: ``run()``'s figures (status ``ok``); ``skipped`` when less than
    ``need_s`` seconds are left before the deadline; ``oom`` / ``failed`` with the error when it
    raises. Device memory is released and the peak counter reset afterwards, whatever happened."""
    if clock.left() < need_s:
        return {**key, "status": "skipped", "reason": f"deadline: {clock.left():.0f} s left"}
    try:
        out = {**key, "status": "ok", **run()}
    except Exception as e:  # one config must not stop the others
        out = {**key, "status": "oom" if is_oom(e) else "failed", "error": short_error(e)}
    release(device)
    return out


def release(device: str) -> None:
    """Free what the last config left: Python garbage, CUDA's cache, the peak-memory counter."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def step_times(step: Callable[[], object], n: int, device: str) -> list[float]:
    """Wall seconds of ``n`` calls of ``step``, the device synchronised around each."""
    times = []
    for _ in range(n):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def peak_memory_mb(device: str) -> float:
    """CUDA: peak allocated since the last reset; CPU: the process's peak RSS so far."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def autocast(device: str, precision: str):
    """The autocast context of ``precision`` (nothing for fp32)."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(torch.device(device).type, dtype=dtype)


# ------------------------------------------------------------------ training step


def backbone(name: str, plan: Plan) -> torch.nn.Module:
    """A fresh backbone of ``plan``'s size, built on the device (no host-side init)."""
    kw = {} if plan.width == 1.0 else {"width": plan.width}
    with torch.device(plan.device):
        return create_model(
            name, input_size=plan.input_size, embedding_dim=plan.embedding_dim, **kw
        )


def make_trainer(
    model: torch.nn.Module,
    head: torch.nn.Module | None,
    loss: torch.nn.Module,
    precision: str,
    layout: str,
    plan: Plan,
    compiled: bool = False,
) -> Trainer:
    """face_rec's Trainer with the default config's augmentation, clipping and SGD; ``compiled``:
    its forward and backward through ``torch.compile`` (``plan.compile_backend``)."""
    params = [p for m in (model, head, loss) if m is not None for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    augment = Augment(flip=0.5, shift=4, brightness=0.2, contrast=0.2, saturation=0.2)
    steps = plan.warmup + plan.steps + 1
    return Trainer(
        model,
        head,
        loss,
        opt,
        make_scheduler(opt, steps),
        None,
        None,
        augment,
        steps,
        device=plan.device,
        precision=precision,
        grad_clip=5.0,
        channels_last=layout == "channels_last",
        compile=compiled,
        compile_backend=plan.compile_backend,
    )


def synthetic_batch(batch: int, classes: int, plan: Plan) -> tuple:
    """One micro-batch as the data stream yields it: (uint8 (B, 3, S, S), labels (B,), 0 s)."""
    g = torch.Generator().manual_seed(0)
    s = plan.input_size
    x = torch.randint(0, 256, (batch, 3, s, s), dtype=torch.uint8, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    return x.to(plan.device), y.to(plan.device), 0.0


def time_trainer(trainer: Trainer, batch: tuple, warmup: int, plan: Plan) -> dict:
    """Run ``warmup`` + ``plan.steps`` steps; images/s from the median timed step, the first
    step's excess over it (compilation, cuDNN set-up), the peak memory, the last loss."""
    times = step_times(lambda: trainer.run_step([batch]), warmup + plan.steps, plan.device)
    step = statistics.median(times[warmup:])
    loss = trainer.metrics["loss"]
    if not np.isfinite(loss):
        raise FloatingPointError(f"loss {loss} after {len(times)} steps")
    return {
        "images_per_s": len(batch[1]) * trainer.world / step,
        "step_s": step,
        "first_step_extra_s": times[0] - step,
        "peak_memory_mb": peak_memory_mb(plan.device),
        "loss": loss,
        "timed_steps": plan.steps,
        "warmup_steps": warmup,
    }


def train_config(
    name: str, batch: int, precision: str, layout: str, compiled: bool, plan: Plan
) -> dict:
    """Figures of one training config (see the module docstring)."""
    torch.manual_seed(0)
    model = backbone(name, plan)
    with torch.device(plan.device):
        head = CosineHead(plan.embedding_dim, plan.classes)
    if compiled:
        torch._dynamo.reset()  # fresh caches: each config compiles anew, no recompile limit
    trainer = make_trainer(model, head, ArcFaceLoss(), precision, layout, plan, compiled)
    if compiled and not trainer.compiled:  # 8-channel convolutions on the CPU (its warning)
        return {"status": "skipped", "reason": "the Trainer leaves this model eager"}
    out = time_trainer(
        trainer, synthetic_batch(batch, plan.classes, plan), plan.warmup + int(compiled), plan
    )
    if compiled:
        out["compile_s"] = out["first_step_extra_s"]
    return out


def training_grid(plan: Plan, compiled: bool) -> list[dict]:
    """The configs of one section: eager in grid order; compiled with batch 256 (the largest)
    and channels_last first, then the models, then fp32 -> bf16."""
    keys = [
        {"model": m, "batch": b, "precision": p, "layout": lay, "compiled": compiled}
        for m in plan.models
        for b in plan.batches
        for p in plan.precisions
        for lay in plan.layouts
    ]
    if compiled:
        order = plan.models.index
        keys.sort(key=lambda k: (-k["batch"], k["layout"] != "channels_last", order(k["model"])))
    return keys


def run_training(plan: Plan, clock: Clock, compiled: bool) -> list[dict]:
    """One training section; compiled configs stop after a compile failure (the rest would
    fail alike, each after minutes) and after ``max_compiled``."""
    rows, guess, broken = [], plan.compile_guess_s, None
    for i, key in enumerate(training_grid(plan, compiled)):
        if compiled and (broken or (plan.max_compiled is not None and i >= plan.max_compiled)):
            reason = broken or f"--max-compiled {plan.max_compiled}"
            rows.append({**key, "status": "skipped", "reason": reason})
            continue
        need = guess + 5 if compiled else 5

        def run(k=key):
            return train_config(k["model"], k["batch"], k["precision"], k["layout"], compiled, plan)

        row = guarded(key, run, clock, plan.device, need)
        if compiled and row["status"] == "ok":
            guess = max(guess, row["compile_s"])
        if compiled and row["status"] == "failed" and "FloatingPointError" not in row["error"]:
            broken = f"torch.compile failed in an earlier config: {row['error']}"
        rows.append(row)
        print(_training_line(row), flush=True)
    return rows


# ------------------------------------------------------------------ DDP through torchrun


def ddp_worker(plan_path: str, result_path: str) -> None:
    """The torchrun worker: a process group, the backbone under DDP, the reference config's
    Trainer step; rank 0 writes the figures."""
    import torch.distributed as dist

    from face_rec import distributed as D

    plan = Plan(**json.loads(Path(plan_path).read_text()))
    if plan.threads:
        torch.set_num_threads(plan.threads)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.device(plan.device).type == "cuda":
        torch.cuda.set_device(local)
        plan.device = f"cuda:{local}"
    dist.init_process_group("nccl" if plan.device.startswith("cuda") else "gloo")
    world = dist.get_world_size()
    torch.manual_seed(0)
    model = backbone(plan.ref_model, plan)
    fmt = torch.channels_last if plan.ref_layout == "channels_last" else torch.contiguous_format
    model.to(memory_format=fmt)
    if world == 1:  # the Trainer wraps only when there are several ranks (D.world_size() > 1)
        ids = [local] if plan.device.startswith("cuda") else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    with torch.device(plan.device):
        head = CosineHead(plan.embedding_dim, plan.classes)
    trainer = make_trainer(model, head, ArcFaceLoss(), plan.ref_precision, plan.ref_layout, plan)
    out = time_trainer(
        trainer, synthetic_batch(plan.ref_batch, plan.classes, plan), plan.warmup, plan
    )
    ddp = torch.nn.parallel.DistributedDataParallel
    wrapped = isinstance(trainer.forward_model, ddp) or isinstance(trainer.model, ddp)
    out.update(world_size=world, backend=dist.get_backend(), ddp=wrapped)
    if dist.get_rank() == 0:
        Path(result_path).write_text(json.dumps(out))
    D.shutdown()


def run_ddp(plan: Plan, clock: Clock) -> dict:
    """torchrun this script's worker; its figures, ``completed`` and, on failure, the end of
    its output."""
    key = {
        "model": plan.ref_model,
        "batch_per_rank": plan.ref_batch,
        "precision": plan.ref_precision,
        "layout": plan.ref_layout,
        "nproc": plan.ddp_nproc,
    }
    if clock.left() < 20:
        return {**key, "status": "skipped", "completed": False, "reason": "deadline"}
    with tempfile.TemporaryDirectory() as tmp:
        plan_path, result = Path(tmp, "plan.json"), Path(tmp, "result.json")
        plan_path.write_text(json.dumps(dataclasses.asdict(plan)))
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={plan.ddp_nproc}",
            str(Path(__file__).resolve()),
            "--ddp-worker",
            str(plan_path),
            str(result),
        ]
        start = time.perf_counter()
        try:
            done = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                cwd=REPO,
                timeout=max(20.0, min(clock.left(), 300.0)),
            )
        except subprocess.TimeoutExpired as e:
            return {**key, "status": "failed", "completed": False, "error": f"timeout: {e}"}
        wall = time.perf_counter() - start
        if done.returncode != 0 or not result.exists():
            tail = (done.stderr or done.stdout)[-2000:]
            return {
                **key,
                "status": "failed",
                "completed": False,
                "error": f"exit {done.returncode}: {tail}",
            }
        figures = json.loads(result.read_text())
    return {**key, "status": "ok", "completed": True, "wall_s": wall, **figures}


# ------------------------------------------------------------------ Partial FC


def pfc_head(rate: float, plan: Plan) -> dict:
    """The Partial FC head alone: random (B, D) embeddings in, loss, backward, SGD step."""
    torch.manual_seed(0)
    with torch.device(plan.device):
        head = PartialFC(plan.embedding_dim, plan.pfc_classes, ArcFaceLoss(), sample_rate=rate)
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(plan.pfc_batch, plan.embedding_dim, device=plan.device, requires_grad=True)
    y = torch.randint(0, plan.pfc_classes, (plan.pfc_batch,), device=plan.device)

    def step() -> None:
        head(x, y).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = step_times(step, plan.warmup + plan.steps, plan.device)
    index, _ = head.sample(y)
    step_s = statistics.median(times[plan.warmup :])
    return {
        "step_s": step_s,
        "images_per_s": plan.pfc_batch / step_s,
        "peak_memory_mb": peak_memory_mb(plan.device),
        "sampled_centres": plan.pfc_classes if index is None else len(index),
    }


def pfc_backbone(rate: float, plan: Plan) -> dict:
    """Partial FC as the Trainer's loss behind the reference backbone (no separate head)."""
    torch.manual_seed(0)
    model = backbone(plan.ref_model, plan)
    with torch.device(plan.device):
        loss = PartialFC(plan.embedding_dim, plan.pfc_classes, ArcFaceLoss(), sample_rate=rate)
    trainer = make_trainer(model, None, loss, plan.ref_precision, plan.ref_layout, plan)
    return time_trainer(
        trainer, synthetic_batch(plan.pfc_batch, plan.pfc_classes, plan), plan.warmup, plan
    )


def run_partial_fc(plan: Plan, clock: Clock) -> list[dict]:
    rows = []
    for what, fn in (("head", pfc_head), (plan.ref_model, pfc_backbone)):
        for rate in plan.pfc_rates:
            key = {
                "with": what,
                "sample_rate": rate,
                "classes": plan.pfc_classes,
                "batch": plan.pfc_batch,
            }
            if what != "head":
                key.update(precision=plan.ref_precision, layout=plan.ref_layout)
            rows.append(guarded(key, lambda f=fn, r=rate: f(r, plan), clock, plan.device, 10))
            print(json.dumps(rows[-1]), flush=True)
    return rows


# ------------------------------------------------------------------ evaluation embedding


def embed_config(
    model: torch.nn.Module,
    batch: int,
    precision: str,
    crops: np.ndarray,
    ref: np.ndarray,
    plan: Plan,
) -> dict:
    """embed_crops throughput (input images/s, flip TTA) of ``model`` at ``batch`` under
    ``precision``'s autocast; agreement of its embeddings with fp32's (``ref``)."""

    def run() -> np.ndarray:
        with autocast(plan.device, precision):
            return embed_crops(model, crops, batch, device=plan.device, flip=True)

    with autocast(plan.device, precision):
        embed_crops(model, crops[:batch], batch, device=plan.device)  # warm-up
    times, out = [], None
    for _ in range(plan.embed_repeats):
        start = time.perf_counter()
        out = run()  # returns host arrays: synchronised
        times.append(time.perf_counter() - start)
    return {
        "images_per_s": len(crops) / statistics.median(times),
        "peak_memory_mb": peak_memory_mb(plan.device),
        **agreement(out, ref),
    }


def run_embedding(plan: Plan, clock: Clock) -> list[dict]:
    crops = random_crops(plan.embed_crops)
    rows = []
    for name in plan.models:
        for layout in plan.layouts:
            try:
                model, ref, failure = *embed_model(name, layout, crops, plan), None
            except Exception as e:  # e.g. out of memory: this model's rows say so, the rest run
                model, ref = None, None
                failure = {"status": "oom" if is_oom(e) else "failed", "error": short_error(e)}
            for batch in plan.embed_batches:
                for precision in plan.precisions:
                    key = {
                        "model": name,
                        "layout": layout,
                        "batch": batch,
                        "precision": precision,
                        "flip": True,
                    }

                    def run(b=batch, p=precision, m=model, r=ref):
                        return embed_config(m, b, p, crops, r, plan)

                    if failure:
                        rows.append({**key, **failure})
                    else:
                        rows.append(guarded(key, run, clock, plan.device, 5))
                    print(json.dumps(rows[-1]), flush=True)
            del model, ref
            release(plan.device)
    return rows


def embed_model(
    name: str, layout: str, crops: np.ndarray, plan: Plan
) -> tuple[torch.nn.Module, np.ndarray]:
    """A backbone with BatchNorm statistics measured on ``crops``, in ``layout``, and its fp32
    embeddings (N, D) of ``crops``: the reference of the autocast paths."""
    model = calibrate_bn(backbone(name, plan), crops[:64], plan.device)
    if layout == "channels_last":
        model.to(memory_format=torch.channels_last)
    return model, embed_crops(model, crops, plan.embed_batches[0], device=plan.device)


# ------------------------------------------------------------------ report


def _training_line(r: dict) -> str:
    what = f"{r['model']} b{r['batch']} {r['precision']} {r['layout']}" + (
        " compiled" if r["compiled"] else ""
    )
    if r["status"] != "ok":
        return f"{what}: {r['status']} ({r.get('reason') or r.get('error')})"
    extra = f", compile {r['compile_s']:.1f} s" if r["compiled"] else ""
    return f"{what}: {r['images_per_s']:.1f} img/s, {r['peak_memory_mb']:.0f} MB{extra}"


def markdown(record: dict) -> str:
    """The record's training, DDP, Partial FC and embedding figures as Markdown tables."""
    m = record["machine"]
    out = [
        f"GPU check: {m['gpu'] or 'no GPU (CPU ' + m['cpu_capability'] + ')'}, torch "
        f"{m['torch']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}, {m['cpu_model']}; "
        f"{record['date']}, commit {record['commit']}; smoke={record['smoke']}",
        "",
        "| model | batch | precision | layout | compile | img/s | peak MB | compile s | status |",
        "| --- | ---: | --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for r in record["training"]:
        out.append(
            f"| {r['model']} | {r['batch']} | {r['precision']} | {r['layout']} | "
            f"{'yes' if r['compiled'] else 'no'} | {_num(r, 'images_per_s')} | "
            f"{_num(r, 'peak_memory_mb', 0)} | {_num(r, 'compile_s')} | {_status(r)} |"
        )
    d = record["ddp"]
    out += [
        "",
        f"DDP (torchrun, {d.get('nproc')} process, {d.get('backend', '-')}): "
        f"{_num(d, 'images_per_s')} img/s, {d.get('vs_single_process', '-')}x the same "
        f"config without DDP; completed={d.get('completed')} {_status(d)}",
        "",
    ]
    out += [
        "| Partial FC | r | classes | batch | step s | img/s | peak MB | status |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in record["partial_fc"]:
        out.append(
            f"| {r['with']} | {r['sample_rate']} | {r['classes']:,} | {r['batch']} | "
            f"{_num(r, 'step_s', 3)} | {_num(r, 'images_per_s')} | "
            f"{_num(r, 'peak_memory_mb', 0)} | {_status(r)} |"
        )
    out += [
        "",
        "| embed model | layout | batch | precision | img/s | min cos vs fp32 | status |",
        "| --- | --- | ---: | --- | ---: | ---: | --- |",
    ]
    for r in record["embedding"]:
        out.append(
            f"| {r['model']} | {r['layout']} | {r['batch']} | {r['precision']} | "
            f"{_num(r, 'images_per_s')} | {_num(r, 'min_cosine', 5)} | {_status(r)} |"
        )
    return "\n".join(out)


def _num(r: dict, key: str, digits: int = 1) -> str:
    v = r.get(key)
    return "-" if v is None else f"{v:,.{digits}f}"


def _status(r: dict) -> str:
    s = r.get("status", "-")
    detail = r.get("reason") or r.get("error")
    return s if not detail else f"{s}: {detail[:80]}"


def compare_ddp(ddp: dict, training: list[dict], plan: Plan) -> None:
    """Add the DDP run's ratio to the same config without DDP (when both ran)."""
    same = [
        r
        for r in training
        if not r["compiled"]
        and r["status"] == "ok"
        and (r["model"], r["batch"], r["precision"], r["layout"])
        == (plan.ref_model, plan.ref_batch, plan.ref_precision, plan.ref_layout)
    ]
    if same and ddp.get("images_per_s") and plan.ddp_nproc == 1:
        ddp["vs_single_process"] = round(ddp["images_per_s"] / same[0]["images_per_s"], 3)


# ------------------------------------------------------------------ main


def make_plan(args: argparse.Namespace) -> Plan:
    plan = Plan(**SMOKE) if args.smoke else Plan()
    for name in (
        "ddp_nproc",
        "device",
        "models",
        "batches",
        "steps",
        "warmup",
        "deadline_s",
        "compile_backend",
        "max_compiled",
        "pfc_classes",
        "classes",
    ):
        if getattr(args, name) is not None:
            setattr(plan, name, getattr(args, name))
    if args.sections:
        unknown = set(args.sections) - set(SECTIONS)
        if unknown:
            raise SystemExit(f"--sections {sorted(unknown)}: choose from {', '.join(SECTIONS)}")
        plan.sections = list(args.sections)
    if args.no_compile:
        plan.sections = [s for s in plan.sections if s != "compiled"]
    plan.cudnn_benchmark = args.cudnn_benchmark
    if torch.device(plan.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "gpu_check: no CUDA device here; run it on a GPU machine, or `--smoke` for the "
            "CPU check of the script (`--device cpu` runs the full sizes on the CPU: hours)"
        )
    return plan


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, about a minute")
    p.add_argument("--out", type=Path, help="JSON record (default logs/benchmarks/...)")
    p.add_argument("--device", help="cuda (default), cuda:N or cpu")
    p.add_argument("--models", nargs="+")
    p.add_argument("--batches", type=int, nargs="+")
    p.add_argument("--classes", type=int, help="ArcFace head identities (10,000)")
    p.add_argument("--pfc-classes", type=int, help="Partial FC identities (1,000,000)")
    p.add_argument("--steps", type=int, help="timed steps per config")
    p.add_argument("--warmup", type=int, help="untimed steps first")
    p.add_argument("--deadline-s", type=float, help="global budget; later configs are skipped")
    p.add_argument("--sections", nargs="+", help=f"run only these of {', '.join(SECTIONS)}")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile section")
    p.add_argument("--compile-backend", help="inductor (default) | aot_eager | eager")
    p.add_argument("--max-compiled", type=int, help="compiled configs to run at most")
    p.add_argument("--ddp-nproc", type=int, help="torchrun processes (GPUs) for the DDP run (1)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark")
    p.add_argument("--ddp-worker", nargs=2, metavar=("PLAN", "RESULT"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_all(plan: Plan, out: Path, smoke: bool) -> dict:
    """Every section, the record rewritten to ``out`` after each; returns the record."""
    clock = Clock(plan.deadline_s)
    torch.backends.cudnn.benchmark = plan.cudnn_benchmark
    if plan.threads:
        torch.set_num_threads(plan.threads)
    record = {
        **benchmark_header(plan.device),
        "smoke": smoke,
        "plan": dataclasses.asdict(plan),
        "settings": {
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        },
        "training": [],
        "ddp": {},
        "partial_fc": [],
        "embedding": [],
        "section_s": {},
    }
    sections: dict[str, Callable[[], object]] = {
        "training": lambda: run_training(plan, clock, compiled=False),
        "ddp": lambda: run_ddp(plan, clock),
        "partial_fc": lambda: run_partial_fc(plan, clock),
        "embedding": lambda: run_embedding(plan, clock),
        "compiled": lambda: run_training(plan, clock, compiled=True),
    }
    for section in SECTIONS:
        if section not in plan.sections:
            continue
        start = time.perf_counter()
        name = "training" if section == "compiled" else section
        try:
            result = sections[section]()
        except Exception as e:  # a bug or a broken set-up in one section: the others still run
            record.setdefault("section_errors", {})[section] = short_error(e)
            result = [] if isinstance(record[name], list) else {"status": "failed"}
            release(plan.device)
        record["section_s"][section] = round(time.perf_counter() - start, 1)
        record[name] = record[name] + result if isinstance(result, list) else result
        if name == "ddp":
            compare_ddp(record["ddp"], record["training"], plan)
        record["elapsed_s"] = round(clock.elapsed(), 1)
        write_json(out, record)
    return record


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.ddp_worker:
        ddp_worker(*args.ddp_worker)
        return None
    plan = make_plan(args)
    out = args.out or REPO / "logs" / "benchmarks" / (
        "gpu_check_smoke.json" if args.smoke else "gpu_check.json"
    )
    record = run_all(plan, out, args.smoke)
    print(markdown(record))
    print(f"record: {out} ({record['elapsed_s']} s)")
    return record


if __name__ == "__main__":
    main()
