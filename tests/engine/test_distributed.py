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
    ema = "trainer.ema_decay=0.9"  # a weight average too: equal on the ranks, saved unwrapped
    _train(tiny, tmp_path, "head=arcface", "partial_fc=0.5", "trainer.max_steps=3", ema)
    m = _metrics(tmp_path)
    assert len(set(m["distributed"]["backbone_sha256"])) == 1
    averages = m["distributed"]["average_sha256"]
    assert len(averages) == 2 and len(set(averages)) == 1
    assert averages[0] != m["distributed"]["backbone_sha256"][0]
    run = tmp_path / "train" / "runs" / "ddp"
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert state["ema_updates"] == 3 and state["model"].keys() == state["train_model"].keys()
    assert not any(k.startswith("module.") for k in state["model"])
    centres = state["loss"]["weight"]
    assert centres.shape == (6, 16)  # both shards, gathered: 6 identities x 16-d
    assert any(v["momentum_buffer"].shape == (6, 16) for v in state["optimizer"]["state"].values())
    _train(tiny, tmp_path, "head=arcface", "partial_fc=0.5", "trainer.max_steps=5",
           "resume=true", ema, nproc=1)  # fmt: skip
    assert _metrics(tmp_path)["train"]["steps"] == 5
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert state["ema_updates"] == 5


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


# ------------------------------------------- sub-centres and norm-aware margins with Partial FC

HB, HIN, HDIM, HC, HK = 5, 10, 8, 11, 3  # 11 identities: shards of 6 and 5


def _heads_problem():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2 * HB, HIN, generator=g) * torch.linspace(0.3, 3.0, 2 * HB)[:, None]
    labels = torch.randint(0, HC, (2 * HB,), generator=g)
    labels[:3] = torch.tensor([0, 10, 6])  # both shards' edges
    backbone = torch.randn(HDIM, HIN, generator=g)
    centres = torch.randn(HC, HK, HDIM, generator=g)
    return x, labels, backbone, centres


def _heads_setup(name: str):
    """(margin loss, sub-centres per identity) of each case."""
    from face_rec.losses import AdaFaceLoss, ArcFaceLoss, CurricularFaceLoss, MagFaceLoss

    return {
        "subcenter_arcface": (ArcFaceLoss(s=16.0, m=0.5), HK),
        "adaface": (AdaFaceLoss(s=16.0, t_alpha=0.5), 1),
        "curricularface": (CurricularFaceLoss(s=16.0, m=0.5, momentum=0.5), 1),
        "magface": (MagFaceLoss(s=16.0, l_a=5.0, u_a=20.0, lambda_g=20.0), 1),
    }[name]


def _heads_centres(name: str) -> torch.Tensor:
    centres = _heads_problem()[3]
    return centres if _heads_setup(name)[1] > 1 else centres[:, 0]


def _heads_reference(name: str) -> dict:
    """One process, the whole batch of 2B: the head, the loss, their gradients."""
    from face_rec.models.heads import CosineHead, SubCenterHead

    x, labels, backbone, _ = _heads_problem()
    loss_fn, k = _heads_setup(name)
    model = torch.nn.Linear(HIN, HDIM, bias=False)
    head = SubCenterHead(HDIM, HC, k) if k > 1 else CosineHead(HDIM, HC)
    with torch.no_grad():
        model.weight.copy_(backbone)
        head.weight.copy_(_heads_centres(name))
    emb = model(x)
    per_sample = loss_fn(head(emb), labels, emb.norm(dim=1))
    per_sample.mean().backward()
    return {
        "loss": per_sample.detach(),
        "backbone_grad": model.weight.grad,
        "centre_grad": head.weight.grad,
        "buffers": loss_fn.state_dict(),
        "norms": emb.detach().norm(dim=1),
    }


def _heads_rank_step(rank: int, world: int, name: str) -> dict:
    """Rank r: rows [rB, (r+1)B), the backbone under DDP, the centres sharded by identity."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from face_rec.models.partial_fc import PartialFC

    x, labels, backbone, _ = _heads_problem()
    loss_fn, k = _heads_setup(name)
    model = torch.nn.Linear(HIN, HDIM, bias=False)
    with torch.no_grad():
        model.weight.copy_(backbone)
    pfc = PartialFC(HDIM, HC, loss_fn, sample_rate=1.0, sub_centers=k)
    state = pfc.state_dict()  # collective: every rank
    state["weight"] = _heads_centres(name)
    pfc.load_state_dict(state)
    rows = slice(rank * HB, (rank + 1) * HB)
    ddp = DDP(model)  # kept alive until backward: its hooks average the gradients
    emb = ddp(x[rows])
    per_sample = pfc(emb, labels[rows], emb.norm(dim=1))
    per_sample.mean().backward()
    return {
        "loss": per_sample.detach(),
        "backbone_grad": model.weight.grad,
        "centre_grad": pfc.weight.grad,
        "shard": tuple(pfc.weight.shape),
        "state": pfc.state_dict(),
    }


@pytest.mark.parametrize("name", ["subcenter_arcface", "adaface", "magface"])
def test_partial_fc_on_two_ranks_equals_the_head_of_one_process(tmp_path, name):
    """Sub-center ArcFace sharded by identity (each rank (C/W, K, D)), AdaFace's batch statistics
    and MagFace's norm-dependent margin and regulariser: losses and gradients as one process."""
    ref = _heads_reference(name)
    ranks = run_ranks(_heads_rank_step, 2, tmp_path, name)
    torch.testing.assert_close(torch.cat([r["loss"] for r in ranks]), ref["loss"])
    for r in ranks:
        torch.testing.assert_close(r["backbone_grad"], ref["backbone_grad"])
    torch.testing.assert_close(torch.cat([r["centre_grad"] for r in ranks]), ref["centre_grad"])
    k = _heads_setup(name)[1]
    per_class = (k, HDIM) if k > 1 else (HDIM,)  # an identity's K sub-centres on one rank
    assert [r["shard"] for r in ranks] == [(6, *per_class), (5, *per_class)]
    for r in ranks:  # the full matrix and the loss's statistics, the same on every rank
        torch.testing.assert_close(r["state"]["weight"], _heads_centres(name))
        for key, value in ref["buffers"].items():
            torch.testing.assert_close(r["state"]["margin." + key], value)
    if name == "magface":  # the norms span the clamp [l_a, u_a] on both sides
        assert ref["norms"].min() < 5.0 < 20.0 < ref["norms"].max()


def _replicated_step(rank: int, world: int, name: str) -> dict:
    """A loss with batch statistics (AdaFace's norms, CurricularFace's t) without Partial FC:
    backbone and head under DDP, each rank its own rows."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from face_rec.models.heads import CosineHead

    x, labels, backbone, _ = _heads_problem()
    loss_fn = _heads_setup(name)[0]
    model, head = torch.nn.Linear(HIN, HDIM, bias=False), CosineHead(HDIM, HC)
    with torch.no_grad():
        model.weight.copy_(backbone)
        head.weight.copy_(_heads_centres(name))
    rows = slice(rank * HB, (rank + 1) * HB)
    ddp_model, ddp_head = DDP(model), DDP(head)  # alive until backward
    emb = ddp_model(x[rows])
    per_sample = loss_fn(ddp_head(emb), labels[rows], emb.norm(dim=1))
    per_sample.mean().backward()
    return {"loss": per_sample.detach(), "centre_grad": head.weight.grad,
            "buffers": loss_fn.state_dict()}  # fmt: skip


@pytest.mark.parametrize("name", ["adaface", "curricularface"])
def test_batch_statistics_cover_the_global_batch_under_ddp(tmp_path, name):
    """Each rank's statistics (AdaFace's norm mean and std, CurricularFace's t) are those of all
    2B rows (not its own B): the same on every rank, so a checkpoint (rank 0's) resumes every
    rank exactly, and the losses are one process's."""
    ref = _heads_reference(name)
    ranks = run_ranks(_replicated_step, 2, tmp_path, name)
    torch.testing.assert_close(torch.cat([r["loss"] for r in ranks]), ref["loss"])
    for r in ranks:
        torch.testing.assert_close(r["centre_grad"], ref["centre_grad"])
        for key, value in ref["buffers"].items():
            torch.testing.assert_close(r["buffers"][key], value)
