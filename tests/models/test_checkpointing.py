"""Activation checkpointing (model.checkpointing=true) for every backbone family: the same
gradients, BatchNorm statistics and RNG stream as without it, far fewer saved activations, and
an unchanged eval forward."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import face_rec.models.blocks as blocks
from face_rec.models.backbones.resnet import freeze_stages
from face_rec.models.registry import create_model

from ..conftest import REPO

# one small member of each family; dropout, drop path and token masking on, so that the
# recomputation has to replay the RNG to match
FAMILIES = {
    "iresnet18": {"width": 0.25, "dropout": 0.2},
    "ir18": {"width": 0.25},
    "resnet18": {"width": 0.25},
    "resnet50": {"width": 0.25},
    "mobilefacenet": {"width": 0.25},
    "vit_t": {"dim": 32, "depth": 3, "heads": 4, "drop_path": 0.3, "mask_ratio": 0.25},
}


def _pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """The same weights without and with checkpointing, in training mode, and an input."""
    size = 36 if name.startswith("vit") else 32
    torch.manual_seed(0)
    plain = create_model(name, input_size=size, embedding_dim=16, **FAMILIES[name]).train()
    ckpt = copy.deepcopy(plain)
    ckpt.checkpointing = True
    return plain, ckpt, torch.rand(4, 3, size, size) * 2 - 1


def _units(model: torch.nn.Module) -> int:
    """How many checkpointed units one training forward should run."""
    if hasattr(model, "blocks"):  # ViT: each transformer block
        return len(model.blocks)
    if hasattr(model, "stem"):  # ResNet family: the stem and each residual block
        return 1 + len(model.body)
    return len(blocks.segments(model.body))  # MobileFaceNet


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """The backbones' torch.utils.checkpoint calls: bytes of the tensors each keeps (its
    input, for the recomputation)."""
    made: list[int] = []

    def counting(fn, *args, **kwargs):
        made.append(sum(a.numel() * a.element_size() for a in args if torch.is_tensor(a)))
        return torch.utils.checkpoint.checkpoint(fn, *args, **kwargs)

    monkeypatch.setattr(blocks, "checkpoint", counting)
    return made


def _step(model: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor) -> dict:
    """One forward and backward from seed 1: output, gradients, buffers, bytes saved for
    backward, and the next random number (the RNG stream after the step)."""
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    torch.manual_seed(1)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    (out * weight).sum().backward()  # a projection: the gradient of a plain sum through BN is 0
    return {
        "out": out.detach(),
        "grads": {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None},
        "buffers": {k: b.clone() for k, b in model.named_buffers()},
        "saved": saved[0],
        "next_random": torch.rand(3),
    }


@pytest.mark.parametrize("name", list(FAMILIES))
def test_checkpointing_gives_the_same_gradients_with_less_saved(name, calls):
    plain, ckpt, x = _pair(name)
    weight = torch.randn(4, 16)
    a = _step(plain, x, weight)
    assert not calls
    b = _step(ckpt, x, weight)
    assert len(calls) == _units(ckpt)
    torch.testing.assert_close(b["out"], a["out"], rtol=0, atol=0)
    assert (
        a["grads"].keys()
        == b["grads"].keys()
        == {k for k, p in plain.named_parameters() if p.requires_grad}
    )
    for key in a["grads"]:
        torch.testing.assert_close(b["grads"][key], a["grads"][key], rtol=1e-6, atol=1e-8)
    # BatchNorm counts the batch once (the recomputation leaves its statistics alone)
    for key in a["buffers"]:
        torch.testing.assert_close(b["buffers"][key], a["buffers"][key], rtol=0, atol=0)
    assert torch.equal(a["next_random"], b["next_random"])
    assert b["saved"] + sum(calls) < 0.5 * a["saved"]  # what backward keeps: far less


@pytest.mark.parametrize("name", list(FAMILIES))
def test_eval_forward_is_unchanged_and_not_checkpointed(name, calls):
    plain, ckpt, x = _pair(name)
    plain.eval(), ckpt.eval()
    with torch.no_grad():
        assert torch.equal(ckpt(x), plain(x))
    assert torch.equal(ckpt(x), plain(x))  # eval with autograd recording: still plain
    ckpt.train()
    with torch.no_grad():
        ckpt(x)  # training mode without autograd: nothing to save, nothing to recompute
    assert not calls


def test_stages_frozen_for_fine_tuning_are_not_recomputed(calls):
    _, model, x = _pair("iresnet18")
    for m in freeze_stages(model, 2):
        m.eval()  # as the trainer keeps them
    model(x).sum().backward()
    frozen_blocks = sum(1 for m in model.body if not m.training)
    assert frozen_blocks == 4 and len(calls) == len(model.body) - frozen_blocks


def test_segments_group_plain_layers_and_keep_blocks_whole():
    model = create_model("mobilefacenet", input_size=32, width=0.25)
    units = blocks.segments(model.body)
    assert units[1] is model.body[6]  # the first inverted residual block, whole
    assert len(units[0]) == 6  # conv-BN-PReLU, depthwise conv-BN-PReLU
    body, flat = list(model.body), []
    for unit in units:  # a block of the body stands alone; a group unfolds into its layers
        flat.extend([unit] if any(unit is m for m in body) else list(unit))
    assert flat == body
    assert [k for k, _ in model.state_dict().items()] == list(
        create_model("mobilefacenet", input_size=32, width=0.25, checkpointing=True).state_dict()
    )


def _backbone_configs() -> list[Path]:
    return [
        p
        for p in sorted((REPO / "conf" / "model").glob("*.yaml"))
        if OmegaConf.load(p).get("_target_") == "face_rec.models.registry.create_model"
    ]


@pytest.mark.parametrize("path", _backbone_configs(), ids=lambda p: p.stem)
def test_every_backbone_config_has_the_switch(path):
    cfg = OmegaConf.load(path)
    assert isinstance(cfg.checkpointing, bool)
    assert cfg.checkpointing == (cfg.name == "vit_b")  # arcface_torch checkpoints vit_b only


def test_model_checkpointing_true_from_the_command_line():
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose(
            "train", overrides=["model=iresnet18", "model.checkpointing=true", "model.width=0.25"]
        )
    assert instantiate(cfg.model).checkpointing is True
