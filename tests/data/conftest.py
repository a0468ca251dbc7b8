"""Helpers shared by the data tests."""

from __future__ import annotations

import torch


def shift_theta(g: torch.Generator, b: int, shift: float, side: int) -> torch.Tensor:
    """The shift's affine map (B, 2, 3) as ``Augment`` draws it from ``g``: zoom 1, then the x
    and y offsets of up to ``shift`` px of a ``side`` px crop."""
    zoom = 1.0 / (torch.rand(b, generator=g) * 0.0 + 1.0)
    tx = (torch.rand(b, generator=g) * 2 * shift - shift) * 2 / side
    ty = (torch.rand(b, generator=g) * 2 * shift - shift) * 2 / side
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = zoom, zoom, tx, ty
    return theta
