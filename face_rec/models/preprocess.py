"""A model's input convention, carried with it: colour order and per-channel mean / std.

face_rec feeds every backbone (B, 3, H, W) RGB in [-1, 1], i.e. ``(x - 127.5) / 127.5`` of
8-bit pixels. Published models expect their own convention (AdaFace: BGR); :class:`InputAdapter`
converts inside the model, so that no user has to remember it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Preprocessing:
    """What a backbone expects: ``colour`` order of the channels, and 8-bit pixel values x
    mapped to ``(x - mean) / std`` per channel (in the model's own channel order)."""

    colour: str = "RGB"
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)

    def __post_init__(self) -> None:
        if self.colour not in ("RGB", "BGR"):
            raise ValueError(f"colour order {self.colour!r}: use RGB or BGR")

    @property
    def is_face_rec(self) -> bool:
        """Whether this is face_rec's own convention (no conversion needed)."""
        return self == FACE_REC

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(d["colour"], tuple(d["mean"]), tuple(d["std"]))


FACE_REC = Preprocessing()  #: RGB, (x - 127.5) / 127.5: face_rec's and insightface's


def convert(
    x: torch.Tensor,
    preprocessing: Preprocessing,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
) -> torch.Tensor:
    """face_rec's input (B, 3, H, W), RGB in [-1, 1], in ``preprocessing``'s convention
    (``mean``, ``std``: its values as (1, 3, 1, 1) tensors on ``x``'s device, when at hand)."""
    if preprocessing.is_face_rec:
        return x
    x = (x + 1.0) * 127.5  # 8-bit pixel values, RGB
    if preprocessing.colour == "BGR":
        x = x.flip(1)
    mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1) if mean is None else mean
    std = torch.tensor(preprocessing.std).view(1, 3, 1, 1) if std is None else std
    return (x - mean) / std


class InputAdapter(nn.Module):
    """``backbone`` behind a conversion from face_rec's input (RGB in [-1, 1]) to
    ``preprocessing``. (B, 3, H, W) -> the backbone's output. ``input_size`` is passed through."""

    def __init__(self, backbone: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.backbone, self.preprocessing = backbone, preprocessing
        self.input_size = getattr(backbone, "input_size", None)
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(convert(x, self.preprocessing, self.mean, self.std))


def adapt(backbone: nn.Module, preprocessing: Preprocessing) -> nn.Module:
    """``backbone`` itself when it already takes face_rec's input, else an :class:`InputAdapter`."""
    if preprocessing.is_face_rec:
        return backbone
    return InputAdapter(backbone, preprocessing)
