"""glibc malloc tuning for CPU training (face_rec/utils/allocator.py), checked in fresh
processes: the setting is process-wide and glibc's dynamic threshold depends on history."""

import subprocess
import sys

import pytest

from .conftest import REPO

#: allocate 64 x 1 MiB, free them all, print the heap arena's size (MiB) after the frees
PROBE = """
import ctypes, sys
sys.path.insert(0, {repo!r})
from face_rec.utils.allocator import keep_freed_memory
class M(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = M
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
ok = keep_freed_memory() if {tuned} else None
libc.free(libc.malloc(1 << 20))  # the first 1 MiB block lifts glibc's dynamic mmap threshold
blocks = [libc.malloc(1 << 20) for _ in range(64)]
for b in blocks:
    ctypes.memset(b, 1, 1 << 20)
for b in reversed(blocks):
    libc.free(b)
print(ok, libc.mallinfo2().arena >> 20)
"""


def _arena_after_frees(tuned: bool) -> tuple[str, int]:
    code = PROBE.format(repo=str(REPO), tuned=tuned)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    ok, mib = out.stdout.split()
    return ok, int(mib)


def test_freed_buffers_stay_in_the_process_instead_of_going_back_to_the_kernel():
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    try:
        default = _arena_after_frees(tuned=False)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"needs glibc >= 2.33 (mallinfo2): {e.stderr[-200:]}")
    tuned = _arena_after_frees(tuned=True)
    assert tuned[0] == "True"
    assert default[1] < 16  # glibc's default trims the freed 64 MiB off the heap's top
    assert tuned[1] >= 64  # kept for the next step's buffers
