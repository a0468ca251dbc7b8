"""Batched augmentation of uint8 face crops on the training device, from one seeded generator.

Done on whole batches in the training process (not in loader workers), so it is cheap, runs on
the GPU when there is one, and its random state is one ``torch.Generator`` that checkpoints save:
resumed runs see the same augmentations. Nothing here moves the face off the template: flips are
horizontal, shifts a few pixels, crops mild.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Antialiased bilinear resize of a (B, C, H, W) float batch to ``size`` (None: unchanged).
    Training at low resolution and evaluating such a model both go through this."""
    if not size or size == x.shape[-1]:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class Augment:
    """(B, 3, H, W) uint8 -> (B, 3, H, W) float in [-1, 1], randomly augmented.

    Args:
        flip: probability of a horizontal flip.
        shift: max translation in pixels (each axis), zero-filled.
        scale: random resized crop: zoom factor drawn from [1, 1 + scale] about the centre.
        brightness, contrast, saturation: colour jitter strengths (factor in [1 - v, 1 + v]).
        grayscale: probability of converting to greyscale.
        size: output side (None keeps the input size); lower it to train at low resolution.
    """

    def __init__(
        self,
        flip: float = 0.5,
        shift: int = 0,
        scale: float = 0.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        grayscale: float = 0.0,
        size: int | None = None,
        seed: int = 0,
    ) -> None:
        self.flip, self.shift, self.scale = flip, shift, scale
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation
        self.grayscale, self.size = grayscale, size
        self.generator = torch.Generator().manual_seed(seed)

    def _u(self, b: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return torch.rand(b, generator=self.generator) * (hi - lo) + lo

    def __call__(self, x: torch.Tensor, train: bool = True) -> torch.Tensor:
        x = x.float().div_(255.0)
        b, dev = x.shape[0], x.device
        if train and (self.shift or self.scale):
            zoom = 1.0 / self._u(b, 1.0, 1.0 + self.scale)
            tx = self._u(b, -self.shift, self.shift) * 2 / x.shape[-1]
            ty = self._u(b, -self.shift, self.shift) * 2 / x.shape[-2]
            theta = torch.zeros(b, 2, 3)
            theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = zoom, zoom, tx, ty
            grid = F.affine_grid(theta.to(dev), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if train and self.flip:
            flip = (self._u(b) < self.flip).to(dev)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if train and (self.brightness or self.contrast or self.saturation or self.grayscale):
            x = self._colour(x)
        return resize(x.clamp_(0, 1).sub_(0.5).div_(0.5), self.size)

    def _colour(self, x: torch.Tensor) -> torch.Tensor:
        b, dev = x.shape[0], x.device

        def factor(v: float) -> torch.Tensor:
            return self._u(b, 1 - v, 1 + v).to(dev)[:, None, None, None]

        def grey(x: torch.Tensor) -> torch.Tensor:
            return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]

        if self.brightness:
            x = x * factor(self.brightness)
        if self.contrast:
            mean = grey(x).mean((2, 3), keepdim=True)
            x = (x - mean) * factor(self.contrast) + mean
        if self.saturation:
            g = grey(x)
            x = (x - g) * factor(self.saturation) + g
        if self.grayscale:
            pick = (self._u(b) < self.grayscale).to(dev)[:, None, None, None]
            x = torch.where(pick, grey(x).expand_as(x), x)
        return x

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
