"""What a measurement ran on: recorded in every metrics.json, pack summary.json and benchmark
record, because a time or a throughput means nothing without the machine (an AVX2 CPU runs fp32
at about half an AVX-512 CPU's rate)."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from functools import cache
from pathlib import Path

import torch


@cache
def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what platform reports."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str | torch.device | None = None) -> dict:
    """torch version, CPU capability (``torch.backends.cpu.get_cpu_capability()``: AVX512,
    AVX2, ...), CPU model, logical CPUs usable, torch's intra-op threads, instruction-set limits
    set in the environment (:func:`isa_limits`), and, when ``device``
    is a CUDA device, the GPU model, its memory (GiB) and the CUDA and cuDNN versions torch
    runs with (else null)."""
    gpu = None
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": cpu_model(),
        "cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "threads": torch.get_num_threads(),
        "isa_limits": isa_limits(),
        "gpu": gpu,
        **_gpu_details(torch.device(device) if gpu else None),
    }


#: environment variables that make a library use fewer instructions than the CPU has -> the library
ISA_VARIABLES = {
    "ATEN_CPU_CAPABILITY": "torch",
    "ONEDNN_MAX_CPU_ISA": "onednn",
    "DNNL_MAX_CPU_ISA": "onednn",
    "MKL_ENABLE_INSTRUCTIONS": "mkl",
}


def isa_limits() -> dict[str, str] | None:
    """The :data:`ISA_VARIABLES` set in this process (e.g. AVX2 kernels emulated on an AVX-512
    CPU: ``cpu_capability`` then names the limit, not the CPU), or None."""
    limits = {k: os.environ[k] for k in ISA_VARIABLES if os.environ.get(k)}
    return limits or None


def _gpu_details(device: torch.device | None) -> dict:
    """CUDA / cuDNN versions and the GPU's memory; all null without a CUDA device."""
    if device is None:
        return {"gpu_memory_gib": None, "cuda": None, "cudnn": None}
    memory = torch.cuda.get_device_properties(device).total_memory / 2**30
    return {
        "gpu_memory_gib": round(memory, 1),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


def code_commit(repo: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of ``repo`` (default: the checkout face_rec is imported from),
    with ``+dirty`` when tracked files have uncommitted changes; None outside a git checkout
    or without git."""
    repo = Path(repo) if repo is not None else Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def benchmark_header(device: str | torch.device | None = None) -> dict:
    """What every benchmark record starts with: ``machine`` (:func:`machine_info`), ``date``
    (UTC, ISO 8601) and ``commit`` (:func:`code_commit`)."""
    return {
        "machine": machine_info(device),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": code_commit(),
    }
