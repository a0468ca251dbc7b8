"""glibc malloc tuning for CPU training (face_rec/utils/allocator.py)."""

import ctypes
import sys

import pytest

from face_rec.utils.allocator import keep_freed_memory


def _glibc():
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2  # noqa: B018 (glibc >= 2.33)
    except (OSError, AttributeError):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    return libc


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks")
        + ("uordblks", "fordblks", "keepcost")
    ]


def test_buffers_below_the_threshold_come_from_the_heap_not_fresh_mmaps():
    libc = _glibc()
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    assert keep_freed_memory() is True
    before = libc.mallinfo2().hblks
    p = libc.malloc(16 << 20)  # an activation buffer's size: glibc's default would mmap it
    during = libc.mallinfo2().hblks
    libc.free(p)
    assert during == before  # served from the heap, so freeing it returns nothing to the kernel
