"""Run a function on W gloo ranks (CPU processes) for the distributed tests."""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, out: str, fn, args) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(fn(rank, world, *args), Path(out) / f"rank{rank}.pt")
        dist.barrier()  # no rank tears gloo down while another still talks to it
        (Path(out) / f"rank{rank}.done").touch()  # every rank's result is written
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world: int, tmp_path: Path, *args) -> list:
    """``fn(rank, world, *args)`` in ``world`` processes; their return values, by rank.

    torch 2.14's gloo can abort a process as it tears down ("terminate called without an active
    exception", SIGABRT) after its work is done. Such an abort is tolerated only when every rank
    passed the barrier after writing its result; any other failure is raised."""
    try:
        mp.spawn(_entry, args=(world, free_port(), str(tmp_path), fn, args), nprocs=world)
    except mp.ProcessExitedException as e:
        finished = all((tmp_path / f"rank{r}.done").exists() for r in range(world))
        if not (finished and e.signal_name == "SIGABRT"):
            raise
        warnings.warn(f"a rank aborted in gloo's teardown after its work: {e}", stacklevel=2)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
