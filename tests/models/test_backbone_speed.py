"""benchmarks/backbone_speed.py's measurement, in process on tiny sizes (the script itself runs
each configuration in a fresh process; the lead runs it at full size)."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

from ..conftest import REPO

OPTS = {"threads": 1, "device": "cpu", "classes": 10, "input_size": 32, "batch": 2}


@pytest.fixture(scope="module")
def bench():
    path = str(REPO / "benchmarks")
    if path not in sys.path:
        sys.path.insert(0, path)
    threads = torch.get_num_threads()
    yield importlib.import_module("backbone_speed")
    torch.set_num_threads(threads)  # measure() sets its own


@pytest.mark.parametrize("name", ["iresnet18", "vit_t"])
def test_checkpointing_keeps_fewer_activations_at_the_same_size(bench, name):
    opts = {**OPTS, "input_size": 36 if name == "vit_t" else 32, "warmup": 1, "steps": 1}
    off, on = (bench.measure(name, c, opts) for c in (False, True))
    assert off["params"] == on["params"] > 0 and off["flops"] == on["flops"] > 0
    assert off["images_per_s"] > 0 and on["images_per_s"] > 0
    assert on["activation_bytes"] < off["activation_bytes"] / 2
    record = {
        "machine": {"gpu": None, "cpu_model": "x", "cpu_capability": "AVX2", "torch": "t",
                    "threads": 1},
        "date": "d", "commit": "c", "settings": opts, "rows": [off, on],
    }  # fmt: skip
    md = bench.table(record)
    assert f"| {name} | off | {off['params'] / 1e6:.2f} |" in md and f"| {name} | on |" in md
