"""Learning-rate schedules as multipliers of the base LR, per optimizer step."""

from __future__ import annotations

import math
from functools import partial

import torch


def lr_factor(
    step: int,
    total: int,
    warmup: int,
    kind: str,
    power: float = 2.0,
    milestones: tuple[float, ...] = (0.5, 0.75),
    gamma: float = 0.1,
    final: float = 0.0,
) -> float:
    """Linear warm-up over ``warmup`` steps, then ``cosine`` / ``poly`` / ``step`` / ``constant``
    decay to ``final`` (a fraction of the base LR) at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "cosine":
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * t))
    if kind == "poly":
        return final + (1 - final) * (1 - t) ** power
    if kind == "step":
        return gamma ** sum(t >= m for m in milestones)
    if kind == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {kind!r}; use cosine, poly, step or constant")


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    kind: str = "cosine",
    **kw,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepping once per optimizer step."""
    lr_factor(warmup_steps, total_steps, warmup_steps, kind, **kw)  # validate now, not mid-run
    fn = partial(lr_factor, total=total_steps, warmup=warmup_steps, kind=kind, **kw)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
