"""ResNet family for 112x112 faces: ArcFace IResNet and the classic ResNet, one trunk class.

Both keep full resolution in the stem (a 3x3 stride-1 conv, no max-pool: an early 4x downsampling
destroys a small face), then four stages that each halve the resolution, then the ArcFace neck.
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
    residual_stages,
)
from face_rec.models.registry import register_model

UNITS = {"ibasic": ibasic, "basic": basic, "bottleneck": bottleneck}


class ResNetFace(nn.Module):
    """(B, 3, S, S) in [-1, 1] -> (B, embedding_dim) embedding.

    Args:
        unit: ``ibasic`` (IResNet: BN-conv-BN-PReLU-conv-BN), ``basic`` or ``bottleneck``.
        depths: blocks per stage. widths: output channels per stage (x ``width`` multiplier).
        stem_act: PReLU (IResNet) or ReLU (classic).
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
    ) -> None:
        super().__init__()
        self.input_size = input_size
        widths = tuple(max(8, int(round(w * width))) for w in widths)
        stem = max(8, int(round(64 * width)))
        act = nn.PReLU(stem) if stem_act == "prelu" else nn.ReLU(inplace=True)
        self.stem = nn.Sequential(*conv_bn(3, stem), act)
        self.body = residual_stages(UNITS[unit], stem, widths, depths)
        spatial = check_input_size(input_size, 2 ** len(depths))
        self.neck = EmbeddingNeck(widths[-1], spatial, embedding_dim, dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.body(self.stem(x)))


_IRES = (64, 128, 256, 512)


def _iresnet(depths: tuple[int, ...], **kw) -> ResNetFace:
    return ResNetFace("ibasic", depths, _IRES, stem_act="prelu", **kw)


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
