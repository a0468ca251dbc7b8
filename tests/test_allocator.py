"""glibc malloc tuning for CPU training and evaluation (face_rec/utils/allocator.py), checked in
fresh processes: the setting is process-wide and glibc's dynamic threshold depends on history."""

import platform
import subprocess
import sys

import pytest

from .conftest import REPO

#: one "step": allocate and touch 64 x 1 MiB and 6 x 48 MiB blocks (above the 32 MiB cap of glibc's
#: mmap threshold, as one activation of IResNet-50 at 112 px and batch 64 is, and more of them
#: than the heap's 256 MiB top pad holds), free them all; print the minor page faults of a second
#: step, after the first
PROBE = """
import ctypes, resource, sys
sys.path.insert(0, {repo!r})
from face_rec.utils.allocator import keep_freed_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: one huge page would hide 512 faults
ok = keep_freed_memory() if {tuned} else None
libc.free(libc.malloc(1 << 20))  # the first 1 MiB block lifts glibc's dynamic mmap threshold
def step():
    blocks = [(libc.malloc(1 << 20), 1 << 20) for _ in range(64)]
    blocks += [(libc.malloc(48 << 20), 48 << 20) for _ in range(6)]
    for b, n in blocks:
        ctypes.memset(b, 1, n)
    for b, _ in reversed(blocks):
        libc.free(b)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step()
print(ok, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults_of_second_step(tuned: bool) -> tuple[str, int]:
    code = PROBE.format(repo=str(REPO), tuned=tuned)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    ok, faults = out.stdout.split()
    return ok, int(faults)


def test_freed_buffers_stay_in_the_process_instead_of_going_back_to_the_kernel():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    pages = (64 + 6 * 48) << 20 >> 12  # 4 KiB pages touched per step
    default = _faults_of_second_step(tuned=False)
    tuned = _faults_of_second_step(tuned=True)
    assert tuned[0] == "True"
    assert default[1] > pages // 2  # glibc's default gave the freed memory back: faulted in again
    assert tuned[1] < pages // 100  # kept for the next step's buffers, the large blocks too


@pytest.mark.parametrize(
    ("device", "enabled", "applied"),
    [("cpu", True, True), ("cpu", False, False), ("cuda:1", True, False), ("meta", True, False)],
)
def test_the_setting_is_applied_on_the_cpu_only_and_when_enabled(
    monkeypatch, device, enabled, applied
):
    import torch

    from face_rec.utils import allocator

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    for d in (device, torch.device(device)):  # a device's name or the device itself
        assert allocator.keep_freed_memory_on(d, enabled) is applied
    assert len(calls) == 2 * applied
