"""Augmentation: colour jitter as one affine map against the steps one by one; augmenting at the
training size."""

from __future__ import annotations

import pytest
import torch

from face_rec.data.augment import Augment, resize, shift_zoom

from .conftest import shift_theta


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


def test_below_the_crop_size_it_shifts_the_crop_then_flips_and_jitters_the_resized_image():
    """size < crop: the shift on the crop, then the resize, then flip and colour at size, from
    the same draws; eval (train=False) resizes the plain crop."""
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (16, 3, 40, 40), generator=g, dtype=torch.uint8)
    out = Augment(seed=9, shift=4, brightness=0.2, size=20)(x.clone())
    assert out.shape == (16, 3, 20, 20)
    r = torch.Generator().manual_seed(9)
    small = resize(shift_zoom(x.float() / 255, shift_theta(r, 16, 4, 40)), 20)
    flip = (torch.rand(16, generator=r) < 0.5)[:, None, None, None]
    flipped = torch.where(flip, small.flip(3), small)
    bright = (torch.rand(16, generator=r) * 0.4 + 0.8)[:, None, None, None]
    ref = ((flipped * bright).clamp(0, 1) - 0.5) / 0.5
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-6)
    plain = Augment(seed=9, shift=4, brightness=0.2, size=20)(x.clone(), train=False)
    torch.testing.assert_close(plain, resize((x.float() / 255 - 0.5) / 0.5, 20))


@pytest.mark.parametrize("size", [20, 40, 64])
def test_flip_and_shift_give_the_images_of_augmenting_the_crop_then_resizing(size):
    """The flip commutes with the resize, so below the crop's size the order changes nothing
    but rounding, with the crop conditions on too (they run on the crop either way); at or
    above it nothing is reordered."""
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 256, (8, 3, 40, 40), generator=g, dtype=torch.uint8)
    kw = {"shift": 4, "tight_crop": 0.5, "low_res": 0.5, "low_res_size": (10, 30)}
    if size >= 40:  # nothing reordered: colour's clamp would show an early resize
        kw["brightness"] = 0.3
    out = Augment(seed=3, size=size, **kw)(x.clone())  # crop conditions on the 40 px crop
    late = resize(Augment(seed=3, **kw)(x.clone()), size)
    torch.testing.assert_close(out, late, rtol=0, atol=1e-5)
    assert out.shape[-1] == size
