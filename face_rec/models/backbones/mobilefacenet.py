"""MobileFaceNet (Chen et al., 2018): the standard light face backbone for CPU and edge."""

from __future__ import annotations

import torch
from torch import nn

from face_rec.models.blocks import (
    Residual,
    check_input_size,
    conv_bn,
    init_weights,
    run_blocks,
    segments,
)
from face_rec.models.registry import register_model

# (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 1
SETTINGS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


def inverted_residual(cin: int, cout: int, stride: int, expansion: int) -> nn.Module:
    """1x1 expand - depthwise 3x3 (stride) - 1x1 linear projection; identity shortcut when the
    shapes match."""
    mid = cin * expansion
    branch = nn.Sequential(
        *conv_bn(cin, mid, 1),
        nn.PReLU(mid),
        *conv_bn(mid, mid, 3, stride, groups=mid),
        nn.PReLU(mid),
        *conv_bn(mid, cout, 1),
    )
    return Residual(branch, cin, cout, 1) if stride == 1 and cin == cout else branch


class MobileFaceNet(nn.Module):
    """(B, 3, S, S) in [-1, 1] -> (B, embedding_dim); global depthwise conv (GDC) embedding.

    ``checkpointing``: in training, recompute the activations of each inverted residual block
    (and of each run of plain conv-BN-PReLU layers) during backward instead of keeping them
    (:func:`run_blocks`).
    """

    def __init__(
        self,
        embedding_dim: int = 512,
        input_size: int = 112,
        dropout: float = 0.0,
        width: float = 1.0,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.checkpointing = checkpointing

        def ch(c: int) -> int:
            return max(8, int(round(c * width)))

        c0 = ch(64)
        layers: list[nn.Module] = [
            *conv_bn(3, c0, 3, 2),
            nn.PReLU(c0),
            *conv_bn(c0, c0, 3, 1, groups=c0),
            nn.PReLU(c0),
        ]
        cin = c0
        for t, c, n, s in SETTINGS:
            for i in range(n):
                layers.append(inverted_residual(cin, ch(c), s if i == 0 else 1, t))
                cin = ch(c)
        last = ch(512)
        layers += [*conv_bn(cin, last, 1), nn.PReLU(last)]
        self.body = nn.Sequential(*layers)
        spatial = check_input_size(input_size, 16)
        self.neck = nn.Sequential(
            nn.Conv2d(last, last, spatial, groups=last, bias=False),  # GDC: one weight per pixel
            nn.BatchNorm2d(last),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(last, embedding_dim, bias=False),
            nn.BatchNorm1d(embedding_dim),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointing:
            return self.neck(run_blocks(segments(self.body), x, True))
        return self.neck(self.body(x))


@register_model
def mobilefacenet(**kw) -> MobileFaceNet:
    return MobileFaceNet(**kw)
