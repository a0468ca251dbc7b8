import pytest
import torch

from face_rec.models.heads import CosineHead, LinearHead
from face_rec.models.registry import create_model, list_models
from face_rec.models.summary import count_params, forward_flops

ALL = [
    "ir18",
    "ir34",
    "ir50",
    "ir101",
    "iresnet18",
    "iresnet34",
    "iresnet50",
    "iresnet100",
    "iresnet200",
    "mobilefacenet",
    "resnet18",
    "resnet34",
    "resnet50",
]


VITS = ["vit_b", "vit_s", "vit_t"]  # tested in test_vit.py (sizes, tokens, masking)


def test_registry_lists_every_backbone():
    assert list_models() == sorted(ALL + VITS)


@pytest.mark.parametrize("name", ALL)
def test_backbone_maps_images_to_finite_embeddings(name):
    """In training mode (BN on batch statistics): insightface's N(0, 0.1) init makes an
    untrained deep IResNet overflow on BN's initial running statistics, as in arcface_torch."""
    torch.manual_seed(0)
    model = create_model(name, embedding_dim=64, input_size=112).train()
    with torch.no_grad():
        out = model(torch.rand(4, 3, 112, 112) * 2 - 1)
    assert out.shape == (4, 64) and torch.isfinite(out).all()


def test_input_size_width_and_dropout_are_arguments():
    small = create_model("iresnet18", embedding_dim=32, input_size=64, width=0.5, dropout=0.2)
    assert small(torch.zeros(2, 3, 64, 64)).shape == (2, 32)
    assert count_params(small) < count_params(create_model("iresnet18", input_size=64)) / 3
    with pytest.raises(ValueError, match="multiple of 16"):
        create_model("resnet18", input_size=100)


def test_unknown_backbone_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet51'.*resnet50"):
        create_model("resnet51")


def test_published_sizes():
    """ArcFace's IResNet-50: 43.6M parameters, 6.3 GMACs (12.6 GFLOPs) at 112x112."""
    model = create_model("iresnet50")
    assert count_params(model) == pytest.approx(43.6e6, rel=0.01)
    assert forward_flops(model) == pytest.approx(12.6e9, rel=0.02)


def test_ir_units_shortcut_by_max_pool_where_the_width_is_kept():
    """AdaFace's IR: stage 1's first block (64 -> 64, stride 2) has no shortcut parameters;
    IResNet's has a 1x1 conv + BN there."""
    ir, ires = create_model("ir18", input_size=32), create_model("iresnet18", input_size=32)
    assert isinstance(ir.body[0].shortcut, torch.nn.MaxPool2d)
    assert isinstance(ires.body[0].shortcut, torch.nn.Sequential)
    assert isinstance(ir.body[2].shortcut, torch.nn.Sequential)  # 64 -> 128: a conv
    assert not ir.neck.features.affine and ires.neck.features.affine


def test_iresnet_matches_insightface_defaults():
    """features.weight fixed at 1 (never trained), convs N(0, 0.1) as arcface_torch."""
    torch.manual_seed(0)
    model = create_model("iresnet18", input_size=32)
    assert not model.neck.features.weight.requires_grad
    assert torch.equal(model.neck.features.weight, torch.ones_like(model.neck.features.weight))
    std = model.body[3].branch[1].weight.std().item()
    assert std == pytest.approx(0.1, rel=0.05)


def test_heads_own_the_centres():
    x = torch.randn(4, 16)
    cos = CosineHead(16, 10)(x)
    assert cos.shape == (4, 10) and cos.abs().max() <= 1 + 1e-6
    assert LinearHead(16, 10)(x).shape == (4, 10)


def test_the_gpu_arcface_recipe_trains_arcfaces_r50():
    """ArcFace's r50 is IResNet-50 (43.6 M parameters), not the classic ResNet-50 (74.9 M)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from ..conftest import REPO

    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose("train", overrides=["experiment=gpu_iresnet50_arcface"])
    assert cfg.model.name == "iresnet50"
    assert count_params(instantiate(cfg.model)) / 1e6 == pytest.approx(43.59, abs=0.05)
    assert (cfg.head.loss.s, cfg.head.loss.m, cfg.model.embedding_dim) == (64.0, 0.5, 512)
