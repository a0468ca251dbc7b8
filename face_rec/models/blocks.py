"""Blocks shared by the backbones: residual units, the residual trunk, the embedding neck and
activation checkpointing (:func:`run_blocks`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint


def conv_bn(
    cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    """[conv (no bias, 'same' padding), BN] as a list, for composing into a Sequential."""
    conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(cout)]


class Residual(nn.Module):
    """``y = act(branch(x) + shortcut(x))``; the shortcut is a 1x1 conv + BN when shapes change,
    or with ``pool_shortcut`` a parameter-free 1x1 max-pool (a strided subsample) when only the
    resolution does (the IR units of AdaFace / face.evoLVe)."""

    def __init__(
        self,
        branch: nn.Module,
        cin: int,
        cout: int,
        stride: int,
        act: nn.Module | None = None,
        pool_shortcut: bool = False,
    ) -> None:
        super().__init__()
        self.branch = branch
        if stride == 1 and cin == cout:
            self.shortcut = nn.Identity()
        elif pool_shortcut and cin == cout:
            self.shortcut = nn.MaxPool2d(1, stride)
        else:
            self.shortcut = nn.Sequential(*conv_bn(cin, cout, 1, stride))
        self.act = act or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.branch(x) + self.shortcut(x))


def _ibasic_branch(cin: int, cout: int, stride: int) -> nn.Sequential:
    """BN-conv3x3-BN-PReLU-conv3x3(stride)-BN (no activation after the sum)."""
    return nn.Sequential(
        nn.BatchNorm2d(cin), *conv_bn(cin, cout), nn.PReLU(cout), *conv_bn(cout, cout, 3, stride)
    )


def ibasic(cin: int, cout: int, stride: int) -> nn.Module:
    """ArcFace IResNet unit (insightface ``IBasicBlock``): the branch above, shortcut a 1x1 conv
    + BN whenever the stride or width changes."""
    return Residual(_ibasic_branch(cin, cout, stride), cin, cout, stride)


def ir(cin: int, cout: int, stride: int) -> nn.Module:
    """IR unit (AdaFace's ``BasicBlockIR``): the same branch; the shortcut is a parameter-free
    strided max-pool where the width is kept, a 1x1 conv + BN where it changes."""
    return Residual(_ibasic_branch(cin, cout, stride), cin, cout, stride, pool_shortcut=True)


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
    """ArcFace neck: BN2d - dropout - flatten - FC - BN1d. (B, C, h, w) -> (B, D).

    ``feature_scale`` sets the final BN1d's affine part: ``learned`` (weight and bias trained),
    ``fixed`` (insightface's IResNet: weight fixed at 1, bias trained) or ``none`` (AdaFace's IR:
    no affine part).
    """

    def __init__(
        self,
        channels: int,
        spatial: int,
        embedding_dim: int,
        dropout: float,
        feature_scale: str = "learned",
    ) -> None:
        super().__init__()
        if feature_scale not in ("learned", "fixed", "none"):
            raise ValueError(f"feature_scale {feature_scale!r}: use learned, fixed or none")
        self.bn = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels * spatial * spatial, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, affine=feature_scale != "none")
        if feature_scale == "fixed":
            nn.init.ones_(self.features.weight)
            self.features.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.bn(x)).flatten(1)
        return self.features(self.fc(x))


def init_weights(model: nn.Module, scheme: str = "kaiming") -> None:
    """Initialise ``model`` in place; BN at weight 1, bias 0 in both schemes (the last BN of each
    residual branch at zero would hide it entirely, so it keeps weight 1, as ArcFace's IResNet).

    ``kaiming``: Kaiming-normal convs and linears (fan out), zero biases. ``insightface``: as
    arcface_torch's ``iresnet.py``: convs N(0, 0.1), linears left at PyTorch's default.
    """
    if scheme not in ("kaiming", "insightface"):
        raise ValueError(f"init scheme {scheme!r}: use kaiming or insightface")
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and scheme == "insightface":
            nn.init.normal_(m.weight, 0.0, 0.1)
        elif isinstance(m, nn.Conv2d | nn.Linear) and scheme == "kaiming":
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_input_size(input_size: int, stride: int) -> int:
    """Spatial side of the final feature map; the input must be a multiple of ``stride``."""
    if input_size % stride:
        raise ValueError(
            f"input_size {input_size} must be a multiple of {stride} for this backbone"
        )
    return input_size // stride


# ------------------------------------------------------------------ activation checkpointing


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, checkpointing: bool) -> torch.Tensor:
    """``x`` through ``blocks`` in order; the backbones' one way to apply activation
    checkpointing (``model.checkpointing=true``).

    With ``checkpointing``, a block in training mode, while autograd records, keeps only its
    input for backward: its inner activations are recomputed during backward
    (``torch.utils.checkpoint``, ``use_reentrant=False``), trading about one extra forward pass
    for the memory of the activations. The recomputation replays the RNG state of the first
    pass (dropout, drop path and token masks are the same) and leaves BatchNorm running
    statistics as the first pass left them (:func:`_frozen_running_stats`), so parameter gradients,
    running statistics and the RNG stream equal those without checkpointing. Blocks in eval
    mode (inference, stages frozen for fine-tuning) and no-grad passes run plainly.

    Shapes: whatever the blocks map; (B, ...) -> (B, ...).
    """
    for block in blocks:
        if checkpointing and block.training and torch.is_grad_enabled():
            x = checkpoint(
                block,
                x,
                use_reentrant=False,
                context_fn=lambda b=block: (nullcontext(), _frozen_running_stats(b)),
            )
        else:
            x = block(x)
    return x


def segments(layers: nn.Sequential) -> list[nn.Module]:
    """``layers`` grouped into checkpointing units: each composite layer (a residual block, a
    Sequential) stands alone; each run of consecutive leaf layers (conv, BN, activation) becomes
    one Sequential. Checkpointing a lone conv or BN would keep its input and save nothing.

    The groups share ``layers``' modules (no copies, state_dict keys unchanged).
    """
    out: list[nn.Module] = []
    run: list[nn.Module] = []
    for layer in [*layers, None]:
        if layer is not None and next(layer.children(), None) is None:
            run.append(layer)
            continue
        if run:
            group = nn.Sequential(*run)
            group.training = any(m.training for m in run)  # a new Sequential says True
            out.append(group)
            run = []
        if layer is not None:
            out.append(layer)
    return out


@contextmanager
def _frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """BatchNorm buffers (running statistics, batch counter) of ``module`` as they were before
    the block ran again: the recomputation of a checkpointed block must not count the batch
    twice. (It still runs with the statistics tracked, so that it saves the same tensors for
    backward as the first pass, which checkpointing checks.)"""
    buffers = [
        b
        for m in module.modules()
        if isinstance(m, _BatchNorm) and m.track_running_stats
        for b in (m.running_mean, m.running_var, m.num_batches_tracked)
        if b is not None
    ]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(buffers, saved, strict=True):
                b.copy_(s)
