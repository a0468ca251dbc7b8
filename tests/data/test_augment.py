"""Augmentation: colour jitter as one affine map against the steps one by one."""

from __future__ import annotations

import pytest
import torch

from face_rec.data.augment import Augment


def _grey(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]


def _naive(x: torch.Tensor, seed: int, brightness, contrast, saturation, grayscale):
    """Brightness, contrast about the mean grey, saturation about each pixel's grey, grayscale:
    one step at a time, factors drawn from the same generator in the same order."""
    g = torch.Generator().manual_seed(seed)
    b = x.shape[0]
    flip = torch.rand(b, generator=g) < 0.5  # Augment draws the flip first
    x = torch.where(flip[:, None, None, None], x.flip(3), x)

    def factor(v):
        return (torch.rand(b, generator=g) * 2 * v + 1 - v)[:, None, None, None]

    if brightness:
        x = x * factor(brightness)
    if contrast:
        mean = _grey(x).mean((2, 3), keepdim=True)
        x = (x - mean) * factor(contrast) + mean
    if saturation:
        grey = _grey(x)
        x = (x - grey) * factor(saturation) + grey
    if grayscale:
        pick = (torch.rand(b, generator=g) < grayscale)[:, None, None, None]
        x = torch.where(pick, _grey(x).expand_as(x), x)
    return (x.clamp(0, 1) - 0.5) / 0.5


@pytest.mark.parametrize(
    "strengths",
    [(0.2, 0.2, 0.2, 0.0), (0.4, 0.0, 0.3, 0.5), (0.0, 0.5, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)],
)
def test_colour_matches_the_steps_one_by_one(strengths):
    brightness, contrast, saturation, grayscale = strengths
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (32, 3, 20, 24), generator=g, dtype=torch.uint8)
    aug = Augment(
        seed=5,
        brightness=brightness,
        contrast=contrast,
        saturation=saturation,
        grayscale=grayscale,
    )
    out = aug(x.clone())
    ref = _naive(x.float() / 255, 5, brightness, contrast, saturation, grayscale)
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-6)
    changed = (out - (x.float() / 255 - 0.5) / 0.5).abs().amax((1, 2, 3)) > 1e-3
    assert changed.float().mean() > 0.5  # the jitter did something to most images
    if grayscale == 1.0:  # every image grey: its three channels equal
        torch.testing.assert_close(out[:, 0], out[:, 2], rtol=0, atol=1e-6)

