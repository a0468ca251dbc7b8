"""glibc's allocator settings for CPU training, evaluation and embedding.

By default glibc serves allocations above a (dynamic) threshold with fresh ``mmap`` pages and gives
freed memory back to the kernel at once; a training step frees and re-allocates the same activation
buffers every step, so each step page-faults them all in again (kernel time was a fifth of the
preset's CPU time on the issue-15 AVX2 machine, 9% here), and so does every batch an evaluation
embeds. :func:`keep_freed_memory` stops glibc from using ``mmap`` for allocations and from trimming
the heap (up to 2 GiB free at its top), so freed buffers stay in the process and are reused, large
ones too (a raised mmap threshold would not do: glibc caps it at 32 MiB, below one activation of
IResNet-50 at 112 px, batch 64): 1.06-1.11x training images/s for the demo's backbone, 1.16-1.17x
for the preset's, the kernel's share of CPU time halved; IResNet-50 embedding at 112 px 1.25x,
the kernel's share 17% -> 2% (benchmarks/RESULTS.md; single runs vary by more than that). The
same as starting Python with
``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=...``, done in process so
every way of starting a run gets it (forked DataLoader workers inherit it). The price: the process
keeps its peak heap. No effect under another allocator (jemalloc, tcmalloc preloaded): glibc's
settings then govern nothing.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

# mallopt parameters (glibc <malloc.h>)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4


def keep_freed_memory(
    mmap_max: int = 0,
    trim_threshold: int = 2**31 - 1,
    top_pad: int = 256 << 20,
) -> bool:
    """Set glibc's malloc to keep and reuse freed memory (see the module docstring). Returns
    True when glibc accepted every setting; False (with a warning naming the setting glibc
    refused) otherwise, and False without a word where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl has no such symbol)
    except (OSError, AttributeError):
        return False
    settings = {
        "mmap_max": (M_MMAP_MAX, mmap_max),  # 0: every allocation from the heap
        "trim_threshold": (M_TRIM_THRESHOLD, trim_threshold),
        "top_pad": (M_TOP_PAD, top_pad),
    }
    refused = [
        f"{name}={value}"
        for name, (param, value) in settings.items()
        if not 0 <= value < 2**31 or libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) != 1
    ]
    if refused:
        log.warning(
            "glibc refused malloc settings %s (each must be in [0, 2**31)); this process runs "
            "with glibc's defaults for them",
            ", ".join(refused),
        )
    return not refused


def keep_freed_memory_on(device, enabled: bool = True) -> bool:
    """:func:`keep_freed_memory` where it pays: for a job on the CPU (GPU activations live in
    torch's caching allocator, so the process-wide setting would only keep host memory). The
    one gate training (``trainer.keep_freed_memory``), evaluation (``eval.keep_freed_memory``) and
    ``embed.py`` (``keep_freed_memory``) share. ``device``: a ``torch.device`` or its name
    (``cpu``, ``cuda:1``); True when the setting was applied."""
    return enabled and str(device).split(":")[0] == "cpu" and keep_freed_memory()
