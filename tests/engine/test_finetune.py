"""Fine-tuning from published weights: init_from, a lower backbone LR, frozen stages."""

from __future__ import annotations

import pytest
import torch

from face_rec.models.published import load_model
from face_rec.train import build_trainer, train_from_config
from face_rec.utils.checkpoint import load_checkpoint, model_from_checkpoint

from ..models.test_published import adaface_state
from .test_trainer import _cfg, pack  # noqa: F401  (the tiny pack fixture)


def test_fine_tune_from_an_adaface_ckpt_with_frozen_stages(pack, tmp_path):  # noqa: F811
    sd = adaface_state()
    ckpt = {"state_dict": {f"model.{k}": v for k, v in sd.items()}}
    torch.save(ckpt, tmp_path / "ada.ckpt")
    over = [
        "model=ir18",
        "model.input_size=32",
        "model.embedding_dim=512",
        f"init_from={tmp_path}/ada.ckpt",
        "trainer.freeze_stages=1",
        "trainer.backbone_lr_scale=0.1",
        "trainer.max_steps=3",
        "trainer.ema_decay=0.999",  # the saved model is the average: frozen stages stay in it too
    ]
    trainer, _, _ = build_trainer(_cfg(pack, tmp_path, *over), tmp_path / "probe")
    groups = trainer.optimizer.param_groups
    assert groups[0]["lr"] == groups[1]["lr"] * 0.1  # backbone at a tenth (same schedule)
    start = load_model(tmp_path / "ada.ckpt")
    m = train_from_config(_cfg(pack, tmp_path, *over), tmp_path / "run")
    assert m["train"]["steps"] == 3
    tuned = model_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt").eval()
    assert tuned.preprocessing.colour == "BGR"  # AdaFace's convention travels with the model
    core, before = tuned.backbone, start.backbone
    frozen = [core.stem, core.body[0], core.body[1]]  # stem + stage 1 of ir18
    for a, b in zip(frozen, [before.stem, before.body[0], before.body[1]], strict=True):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(x, y), name  # weights and BatchNorm statistics untouched
    assert not torch.equal(core.body[2].branch[1].weight, before.body[2].branch[1].weight)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    again = load_model(tmp_path / "run" / "checkpoints" / "last.pt")
    with torch.no_grad():
        torch.testing.assert_close(again(x), tuned(x))
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["preprocessing"]["colour"] == "BGR"
    assert saved["ema_updates"] == 3  # `tuned` above is this average: its frozen stages held


def test_init_from_a_face_rec_checkpoint_fine_tuned_from_adaface(pack, tmp_path):  # noqa: F811
    """A face_rec checkpoint saved behind an input adapter (BGR) starts a new run as BGR."""
    from face_rec.models.preprocess import InputAdapter
    from face_rec.models.registry import create_model

    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in adaface_state().items()}}, tmp_path / "a.ckpt"
    )
    over = ["model=ir18", "model.input_size=32", "model.embedding_dim=512", "trainer.max_steps=2"]
    train_from_config(_cfg(pack, tmp_path, *over, f"init_from={tmp_path}/a.ckpt"), tmp_path / "r1")
    first = tmp_path / "r1" / "checkpoints" / "last.pt"
    model = create_model("ir18", input_size=32, weights=str(first)).eval()
    assert isinstance(model, InputAdapter) and model.preprocessing.colour == "BGR"
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(x), model_from_checkpoint(first).eval()(x))


def test_freeze_stages_freezes_only_those_stages_in_every_family():
    from face_rec.models.backbones.resnet import block_stages, freeze_stages
    from face_rec.models.registry import create_model

    for name, depths in (
        ("resnet18", (2, 2, 2, 2)),
        ("resnet50", (3, 4, 6, 3)),
        ("ir18", (2, 2, 2, 2)),
    ):
        model = create_model(name, input_size=32)
        stages = [s for s, _ in block_stages(model)]
        assert stages == [s + 1 for s, d in enumerate(depths) for _ in range(d)], name
        frozen = freeze_stages(model, 1)
        trainable = [b for b in model.body if any(p.requires_grad for p in b.parameters())]
        assert len(frozen) == 1 + depths[0] and len(trainable) == sum(depths) - depths[0]
    with pytest.raises(ValueError, match="has 4 stages"):
        freeze_stages(create_model("iresnet18", input_size=32), 4)  # only the neck would train


def test_head_lr_scale_sets_the_class_centres_rate_apart_from_the_backbone(pack, tmp_path):  # noqa: F811
    over = ["trainer.head_lr_scale=10", "trainer.backbone_lr_scale=0.5", "trainer.max_steps=2"]
    trainer, _, _ = build_trainer(_cfg(pack, tmp_path, *over), tmp_path / "probe")
    backbone, head = trainer.optimizer.param_groups
    assert head["initial_lr"] == pytest.approx(backbone["initial_lr"] * 20)
    assert {id(p) for p in head["params"]} == {id(p) for p in trainer.head.parameters()}


def test_a_non_positive_head_lr_scale_is_refused_naming_the_key(pack, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="trainer.head_lr_scale=0"):
        build_trainer(_cfg(pack, tmp_path, "trainer.head_lr_scale=0"), tmp_path / "probe")
