"""Blocks shared by the backbones: residual units, the residual trunk and the embedding neck."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def conv_bn(
    cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    """[conv (no bias, 'same' padding), BN] as a list, for composing into a Sequential."""
    conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(cout)]


class Residual(nn.Module):
    """``y = act(branch(x) + shortcut(x))``; the shortcut is a 1x1 conv + BN when shapes change."""

    def __init__(
        self, branch: nn.Module, cin: int, cout: int, stride: int, act: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.branch = branch
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(*conv_bn(cin, cout, 1, stride))
        )
        self.act = act or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.branch(x) + self.shortcut(x))


def ibasic(cin: int, cout: int, stride: int) -> nn.Module:
    """ArcFace IResNet unit: BN-conv3x3-BN-PReLU-conv3x3(stride)-BN, plus the shortcut."""
    branch = nn.Sequential(
        nn.BatchNorm2d(cin), *conv_bn(cin, cout), nn.PReLU(cout), *conv_bn(cout, cout, 3, stride)
    )
    return Residual(branch, cin, cout, stride)


def basic(cin: int, cout: int, stride: int) -> nn.Module:
    """Classic ResNet basic unit: conv3x3(stride)-BN-ReLU-conv3x3-BN, plus shortcut, ReLU."""
    branch = nn.Sequential(
        *conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True), *conv_bn(cout, cout)
    )
    return Residual(branch, cin, cout, stride, nn.ReLU(inplace=True))


def bottleneck(cin: int, cout: int, stride: int) -> nn.Module:
    """Classic ResNet bottleneck (torchvision v1.5: stride on the 3x3); ``cout`` = 4 x width."""
    mid = cout // 4
    branch = nn.Sequential(
        *conv_bn(cin, mid, 1),
        nn.ReLU(inplace=True),
        *conv_bn(mid, mid, 3, stride),
        nn.ReLU(inplace=True),
        *conv_bn(mid, cout, 1),
    )
    return Residual(branch, cin, cout, stride, nn.ReLU(inplace=True))


def residual_stages(unit, cin: int, widths: Sequence[int], depths: Sequence[int]) -> nn.Sequential:
    """Stages of ``unit`` blocks; each stage halves the resolution in its first block."""
    layers = []
    for width, depth in zip(widths, depths, strict=True):
        for i in range(depth):
            layers.append(unit(cin, width, 2 if i == 0 else 1))
            cin = width
    return nn.Sequential(*layers)


class EmbeddingNeck(nn.Module):
    """ArcFace neck: BN2d - dropout - flatten - FC - BN1d. (B, C, h, w) -> (B, D)."""

    def __init__(self, channels: int, spatial: int, embedding_dim: int, dropout: float) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels * spatial * spatial, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.bn(x)).flatten(1)
        return self.features(self.fc(x))


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs and linears, unit BN; the last BN of each residual branch at zero
    would hide it entirely, so it keeps weight 1 (as in ArcFace's IResNet)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_input_size(input_size: int, stride: int) -> int:
    """Spatial side of the final feature map; the input must be a multiple of ``stride``."""
    if input_size % stride:
        raise ValueError(
            f"input_size {input_size} must be a multiple of {stride} for this backbone"
        )
    return input_size // stride
