"""torch.distributed for training: process-group set-up from torchrun's environment, and the few
collectives the trainer and Partial FC need. Every helper is a no-op in a single process, so the
same code runs with and without ``torchrun``. Nothing happens at import time.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT`` from its rendezvous: no address or port is chosen here).

    Without torchrun (no ``WORLD_SIZE``, or 1) it returns rank 0 of 1 and starts nothing.
    ``backend`` auto: NCCL when CUDA is available, else gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def shutdown() -> None:
    """Leave the process group (end of a torchrun job); nothing in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In place across ranks (``sum`` or ``max``); returns ``t``."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t


def all_gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``t`` (same shape on all ranks) along dim 0; no gradient."""
    if not active():
        return t
    out = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out)


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Like :func:`all_gather` for tensors whose first dimension differs across ranks (shards)."""
    if not active():
        return t
    n = torch.tensor([len(t)], device=t.device)
    sizes = all_gather(n).tolist()
    padded = t.new_zeros((max(sizes), *t.shape[1:]))
    padded[: len(t)] = t
    parts = all_gather(padded).split(max(sizes))
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient for our rows (a reduce-scatter
    written as all_reduce + slice, which gloo supports)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.n, ctx.rank = len(x), rank()
        return all_gather(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = all_reduce(grad.contiguous().clone())
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated (rank order); gradients flow back to each rank's own rows."""
    return _GatherWithGrad.apply(x) if active() else x


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable), by rank."""
    if not active():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_same_config(config: dict) -> None:
    """Raise on every rank when the ranks were started with different configs (a typo in one
    node's command line), naming the keys that differ."""
    if not active():
        return
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    digests = all_gather_objects(digest)
    if len(set(digests)) == 1:
        return
    configs = all_gather_objects(config)
    diff = {r: sorted(_differing_keys(configs[0], c)) for r, c in enumerate(configs) if r}
    raise ValueError(
        "the ranks were started with different configs; keys that differ from rank 0's: "
        + "; ".join(f"rank {r}: {keys}" for r, keys in diff.items() if keys)
        + ". Start every rank with the same command line and overrides"
    )


def _differing_keys(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in set(a) | set(b):
            out += _differing_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def clip_grad_norm(
    replicated: list[torch.Tensor], sharded: list[torch.Tensor], max_norm: float | None
) -> float:
    """Clip by the global gradient norm when some parameters are sharded across ranks (Partial
    FC's class centres): their squared norms are summed over ranks, so every rank computes the
    same norm and the replicated (DDP-averaged) parameters stay identical. Returns the norm."""
    grads = [p.grad for p in replicated if p.grad is not None]
    shard = [p.grad for p in sharded if p.grad is not None]
    device = (grads or shard)[0].device

    def sq(gs: list[torch.Tensor]) -> torch.Tensor:
        return sum((g.float().pow(2).sum() for g in gs), torch.zeros((), device=device))

    total = (sq(grads) + all_reduce(sq(shard))).sqrt()
    if max_norm is not None and max_norm > 0:
        scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for g in grads + shard:
            g.mul_(scale)
    return float(total)
