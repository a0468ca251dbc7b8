"""Data-parallel training: train.py under torchrun with 2 gloo ranks on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from face_rec import distributed as D

from ..conftest import REPO, tiny_args
from ..ranks import run_ranks


def _train(tiny, log_dir, *args, nproc: int = 2) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [sys.executable, *(launcher if nproc > 1 else []), "train.py", *tiny_args(tiny)]
    cmd += [f"paths.log_dir={log_dir}", "run_name=ddp", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _metrics(log_dir) -> dict:
    return json.loads((log_dir / "train" / "runs" / "ddp" / "metrics.json").read_text())


def test_two_ranks_end_with_identical_backbones(tiny, tmp_path):
    _train(tiny, tmp_path, "head=cosface", "trainer.max_steps=4")
    m = _metrics(tmp_path)
    digests = m["distributed"]["backbone_sha256"]
    assert m["distributed"]["world_size"] == 2 and len(digests) == 2
    assert digests[0] == digests[1]
    assert m["train"]["steps"] == 4 and "val" in m  # rank 0 validated
    run = tmp_path / "train" / "runs" / "ddp"
    assert (run / "train.log").is_file() and (run / "train.rank1.log").is_file()
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert state["world_size"] == 2 and len(state["rank_streams"]) == 2
    assert not any(k.startswith("module.") for k in state["model"])  # saved unwrapped


def test_partial_fc_run_resumes_on_another_number_of_ranks(tiny, tmp_path):
    _train(tiny, tmp_path, "head=arcface", "partial_fc=0.5", "trainer.max_steps=3")
    m = _metrics(tmp_path)
    assert len(set(m["distributed"]["backbone_sha256"])) == 1
    run = tmp_path / "train" / "runs" / "ddp"
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    centres = state["loss"]["weight"]
    assert centres.shape == (6, 16)  # both shards, gathered: 6 identities x 16-d
    assert any(v["momentum_buffer"].shape == (6, 16) for v in state["optimizer"]["state"].values())
    _train(tiny, tmp_path, "head=arcface", "partial_fc=0.5", "trainer.max_steps=5",
           "resume=true", nproc=1)  # fmt: skip
    assert _metrics(tmp_path)["train"]["steps"] == 5


def _check(rank: int, world: int) -> str:
    try:
        D.check_same_config({"model": {"name": "iresnet50" if rank == 0 else "iresnet05"}})
    except ValueError as e:
        return str(e)
    return "no error"


def test_ranks_with_different_configs_stop_with_a_clear_error(tmp_path):
    errors = run_ranks(_check, 2, tmp_path)
    assert all("differ from rank 0's: rank 1: ['model.name']" in e for e in errors)


def test_a_single_process_is_rank_0_of_1(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = D.init_distributed()
    assert (info.rank, info.world_size, info.is_main) == (0, 1, True)
    assert D.all_gather(torch.ones(2)).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("n", [3, 4])
def test_rows_of_unequal_shards_are_gathered_in_rank_order(tmp_path, n):
    out = run_ranks(_rows, 2, tmp_path, n)
    assert out[0].tolist() == out[1].tolist() == [0.0] * n + [1.0] * (n - 1)


def _rows(rank: int, world: int, n: int) -> torch.Tensor:
    return D.all_gather_rows(torch.full((n - rank,), float(rank)))
