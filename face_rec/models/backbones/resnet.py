"""ResNet family for 112x112 faces: ArcFace's IResNet, AdaFace's IR and the classic ResNet, one
trunk class.

All keep full resolution in the stem (a 3x3 stride-1 conv, no max-pool: an early 4x downsampling
destroys a small face), then four stages that each halve the resolution, then the ArcFace neck.

``iresnet*`` match insightface arcface_torch's ``iresnet.py`` by default (their weights load
through :mod:`face_rec.models.published`): the embedding BN's weight fixed at 1 (not trained),
convs initialised N(0, 0.1). ``ir*`` are AdaFace's IR networks: the same units but with a
parameter-free strided max-pool shortcut where a block keeps its width, and an embedding BN
without affine part. ``resnet*`` are the classic ResNet, Kaiming-initialised.
"""

from __future__ import annotations

import torch
from torch import nn

from face_rec.models.blocks import (
    EmbeddingNeck,
    basic,
    bottleneck,
    check_input_size,
    conv_bn,
    ibasic,
    init_weights,
    ir,
    residual_stages,
    run_blocks,
)
from face_rec.models.registry import register_model

UNITS = {"ibasic": ibasic, "ir": ir, "basic": basic, "bottleneck": bottleneck}


class ResNetFace(nn.Module):
    """(B, 3, S, S) in [-1, 1] -> (B, embedding_dim) embedding.

    Args:
        unit: ``ibasic`` (IResNet: BN-conv-BN-PReLU-conv-BN), ``ir`` (the same, max-pool
            shortcut), ``basic`` or ``bottleneck``.
        depths: blocks per stage. widths: output channels per stage (x ``width`` multiplier).
        stem_act: PReLU (IResNet, IR) or ReLU (classic).
        feature_scale: the embedding BN's affine part (:class:`EmbeddingNeck`).
        init: ``kaiming`` or ``insightface`` (:func:`init_weights`).
        checkpointing: in training, recompute the stem's and each residual block's activations
            during backward instead of keeping them (:func:`run_blocks`).
    """

    def __init__(
        self,
        unit: str,
        depths: tuple[int, ...],
        widths: tuple[int, ...],
        embedding_dim: int = 512,
        input_size: int = 112,
        dropout: float = 0.0,
        width: float = 1.0,
        stem_act: str = "prelu",
        feature_scale: str = "learned",
        init: str = "kaiming",
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.checkpointing = checkpointing
        widths = tuple(max(8, int(round(w * width))) for w in widths)
        stem = max(8, int(round(64 * width)))
        act = nn.PReLU(stem) if stem_act == "prelu" else nn.ReLU(inplace=True)
        self.stem = nn.Sequential(*conv_bn(3, stem), act)
        self.body = residual_stages(UNITS[unit], stem, widths, depths)
        spatial = check_input_size(input_size, 2 ** len(depths))
        self.neck = EmbeddingNeck(widths[-1], spatial, embedding_dim, dropout, feature_scale)
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(run_blocks([self.stem, *self.body], x, self.checkpointing))


def block_stages(model: ResNetFace) -> list[tuple[int, int]]:
    """(stage from 1, index in the stage) of each residual block of ``model.body``: every stage
    opens with its one strided block."""
    out, stage, i = [], 0, 0
    for block in model.body:
        first = any(isinstance(m, nn.Conv2d) and m.stride != (1, 1) for m in block.branch.modules())
        stage, i = (stage + 1, 0) if first else (stage, i + 1)
        out.append((stage, i))
    return out


def freeze_stages(model: nn.Module, stages: int) -> list[nn.Module]:
    """Freeze the stem and the first ``stages`` stages of a ResNet-family ``model`` (or of the
    backbone an input adapter wraps) for fine-tuning: no gradients; the returned modules are
    kept in eval mode by the trainer, so their BatchNorm statistics stay as loaded too."""
    if stages <= 0:
        return []
    core = getattr(model, "backbone", model)
    if not isinstance(core, ResNetFace):
        raise ValueError(
            f"trainer.freeze_stages={stages}: only the ResNet family (iresnet*, ir*, resnet*) "
            f"has stages to freeze, not {type(core).__name__}"
        )
    stage_of = block_stages(core)
    if stages >= stage_of[-1][0]:
        raise ValueError(
            f"trainer.freeze_stages={stages}: {type(core).__name__} has {stage_of[-1][0]} stages; "
            "freezing them all would leave only the embedding neck to train"
        )
    blocks = [b for b, (s, _) in zip(core.body, stage_of, strict=True) if s <= stages]
    frozen = [core.stem, *blocks]
    for m in frozen:
        m.requires_grad_(False)
    return frozen


_IRES = (64, 128, 256, 512)


def _iresnet(depths: tuple[int, ...], **kw) -> ResNetFace:
    kw = {"feature_scale": "fixed", "init": "insightface", **kw}
    return ResNetFace("ibasic", depths, _IRES, stem_act="prelu", **kw)


def _ir(depths: tuple[int, ...], **kw) -> ResNetFace:
    return ResNetFace("ir", depths, _IRES, stem_act="prelu", **{"feature_scale": "none", **kw})


@register_model
def iresnet18(**kw) -> ResNetFace:
    return _iresnet((2, 2, 2, 2), **kw)


@register_model
def iresnet34(**kw) -> ResNetFace:
    return _iresnet((3, 4, 6, 3), **kw)


@register_model
def iresnet50(**kw) -> ResNetFace:
    return _iresnet((3, 4, 14, 3), **kw)


@register_model
def iresnet100(**kw) -> ResNetFace:
    return _iresnet((3, 13, 30, 3), **kw)


@register_model
def iresnet200(**kw) -> ResNetFace:
    return _iresnet((6, 26, 60, 6), **kw)


@register_model
def ir18(**kw) -> ResNetFace:
    return _ir((2, 2, 2, 2), **kw)


@register_model
def ir34(**kw) -> ResNetFace:
    return _ir((3, 4, 6, 3), **kw)


@register_model
def ir50(**kw) -> ResNetFace:
    return _ir((3, 4, 14, 3), **kw)


@register_model
def ir101(**kw) -> ResNetFace:
    return _ir((3, 13, 30, 3), **kw)


@register_model
def resnet18(**kw) -> ResNetFace:
    return ResNetFace("basic", (2, 2, 2, 2), _IRES, stem_act="relu", **kw)


@register_model
def resnet34(**kw) -> ResNetFace:
    return ResNetFace("basic", (3, 4, 6, 3), _IRES, stem_act="relu", **kw)


@register_model
def resnet50(**kw) -> ResNetFace:
    return ResNetFace(
        "bottleneck", (3, 4, 6, 3), tuple(4 * w for w in _IRES), stem_act="relu", **kw
    )
