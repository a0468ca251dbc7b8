"""Partial FC: with r = 1 on 2 gloo ranks it is the full margin softmax of one process."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from face_rec.losses import ArcFaceLoss, CosFaceLoss, SoftmaxLoss
from face_rec.models.heads import CosineHead
from face_rec.models.partial_fc import PartialFC, shard_range

from ..ranks import run_ranks

B, IN, DIM, C = 6, 10, 8, 13  # 13 classes: shards of 7 and 6


def _problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * B, IN, generator=g)
    labels = torch.randint(0, C, (2 * B,), generator=g)
    labels[:3] = torch.tensor([0, 12, 7])  # both shards' edges
    backbone = torch.randn(DIM, IN, generator=g) * 0.3
    centres = torch.randn(C, DIM, generator=g)
    return x, labels, backbone, centres


def _margin(name: str):
    return {"arcface": ArcFaceLoss(s=16.0, m=0.5), "cosface": CosFaceLoss(s=16.0, m=0.35)}[name]


def _reference(name: str) -> dict:
    """One process, the whole batch of 2B, the full head: the mean loss and its gradients."""
    x, labels, backbone, centres = _problem()
    model = nn.Linear(IN, DIM, bias=False)
    head = CosineHead(DIM, C)
    with torch.no_grad():
        model.weight.copy_(backbone)
        head.weight.copy_(centres)
    per_sample = _margin(name)(head(model(x)), labels)
    per_sample.mean().backward()
    return {
        "loss": per_sample.detach(),
        "backbone_grad": model.weight.grad,
        "centre_grad": head.weight.grad,
    }


def _rank_step(rank: int, world: int, name: str) -> dict:
    """Rank r: rows [rB, (r+1)B), the backbone under DDP, the centres sharded by Partial FC."""
    x, labels, backbone, centres = _problem()
    model = nn.Linear(IN, DIM, bias=False)
    with torch.no_grad():
        model.weight.copy_(backbone)
    ddp = DDP(model)
    pfc = PartialFC(DIM, C, _margin(name), sample_rate=1.0)
    pfc.load_state_dict({"weight": centres})
    rows = slice(rank * B, (rank + 1) * B)
    per_sample = pfc(ddp(x[rows]), labels[rows])
    per_sample.mean().backward()
    return {
        "loss": per_sample.detach(),
        "backbone_grad": model.weight.grad,
        "centre_grad": pfc.weight.grad,
        "start": pfc.start,
        "state": pfc.state_dict()["weight"],
        "accuracy": pfc.accuracy,
    }


@pytest.mark.parametrize("name", ["arcface", "cosface"])
def test_two_ranks_equal_the_full_head_of_one_process(tmp_path, name):
    ref = _reference(name)
    ranks = run_ranks(_rank_step, 2, tmp_path, name)
    torch.testing.assert_close(torch.cat([r["loss"] for r in ranks]), ref["loss"])
    for r in ranks:  # DDP averaged the backbone gradient: the full-batch one on every rank
        torch.testing.assert_close(r["backbone_grad"], ref["backbone_grad"])
    torch.testing.assert_close(torch.cat([r["centre_grad"] for r in ranks]), ref["centre_grad"])
    assert [r["start"] for r in ranks] == [0, 7]
    _, _, _, centres = _problem()
    for r in ranks:  # the checkpoint holds the full matrix, gathered from both shards
        torch.testing.assert_close(r["state"], centres)
    assert ranks[0]["accuracy"] == ranks[1]["accuracy"]


def test_shard_ranges_cover_every_class_once():
    for c, w in [(13, 2), (10, 3), (100_000, 8)]:
        ranges = [shard_range(c, r, w) for r in range(w)]
        assert ranges[0][0] == 0 and ranges[-1][1] == c
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1


def test_sampling_keeps_every_positive_and_is_the_softmax_over_the_kept_centres():
    torch.manual_seed(0)
    pfc = PartialFC(DIM, 50, CosFaceLoss(s=16.0, m=0.35), sample_rate=0.2)
    emb = torch.randn(B, DIM)
    labels = torch.tensor([3, 3, 17, 42, 49, 0])
    torch.manual_seed(1)
    index, local = pfc.sample(labels)
    assert len(index) == 10 and set(labels.tolist()) <= set(index.tolist())
    assert torch.equal(index[local], labels)
    torch.manual_seed(1)  # the same draw inside forward
    loss = pfc(emb, labels)
    cos = CosineHead(DIM, 10)
    with torch.no_grad():
        cos.weight.copy_(pfc.weight[index])
    expected = CosFaceLoss(s=16.0, m=0.35)(cos(emb), local)
    torch.testing.assert_close(loss, expected)


def test_checkpoint_reshards_onto_another_world_size():
    full = torch.randn(C, DIM)
    one = PartialFC(DIM, C, ArcFaceLoss())
    one.load_state_dict({"weight": full})
    torch.testing.assert_close(one.state_dict()["weight"], full)
    opt = torch.optim.SGD(one.parameters(), lr=0.1, momentum=0.9)
    one(torch.randn(B, DIM), torch.arange(B)).mean().backward()
    opt.step()
    state = one.gather_optimizer_state(opt, opt.state_dict())
    assert state["state"][0]["momentum_buffer"].shape == (C, DIM)
    with pytest.raises(RuntimeError, match=r"checkpoint has \(13, 8\) class centres"):
        PartialFC(DIM, C + 1, ArcFaceLoss()).load_state_dict({"weight": full})


def test_a_head_without_a_margin_softmax_is_refused():
    with pytest.raises(ValueError, match="SoftmaxLoss"):
        PartialFC(DIM, C, SoftmaxLoss())
    with pytest.raises(ValueError, match="sample rate 0"):
        PartialFC(DIM, C, ArcFaceLoss(), sample_rate=0)
