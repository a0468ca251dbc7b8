"""Crop-condition augmentation: tight-crop simulation and low resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from face_rec.data.augment import (
    Augment,
    fill_outside,
    low_resolution,
    tight_rectangles,
)

NP_MODE = {"constant": "constant", "replicate": "edge", "reflect": "reflect"}
PLAIN = {"flip": 0.0, "shift": 0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0}


def _noise(b: int, h: int = 24, w: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)


def _reference(x: np.ndarray, rect, border: str) -> np.ndarray:
    """np.pad of the rectangle's content back to the image size."""
    x0, y0, x1, y1 = (int(v) for v in rect)
    inner = x[:, y0 : y1 + 1, x0 : x1 + 1]
    h, w = x.shape[1:]
    pad = ((0, 0), (y0, h - 1 - y1), (x0, w - 1 - x1))
    return np.pad(inner, pad, NP_MODE[border])


@pytest.mark.parametrize("border", ["constant", "replicate", "reflect"])
def test_fill_outside_matches_np_pad(border):
    x = _noise(5, 20, 17).float()
    rects = torch.tensor(
        [[0, 0, 16, 19], [3, 2, 12, 15], [8, 9, 8, 9], [0, 5, 4, 19], [10, 0, 16, 3]]
    )
    out = fill_outside(x, rects, border)
    for i in range(5):
        np.testing.assert_array_equal(out[i].numpy(), _reference(x[i].numpy(), rects[i], border))
    np.testing.assert_array_equal(out[0].numpy(), x[0].numpy())  # whole image: unchanged


def test_rectangles_lie_in_the_crop_around_the_face():
    u = torch.rand(2000, 4, generator=torch.Generator().manual_seed(0))
    r = tight_rectangles(u, 112, 112, (-0.2, 0.2))
    assert (r[:, 0] <= r[:, 2]).all() and (r[:, 1] <= r[:, 3]).all()
    assert r.min() >= 0 and r.max() <= 111
    # every rectangle holds both eyes and the mouth of the ArcFace template
    assert (r[:, 0] <= 38).all() and (r[:, 2] >= 74).all()
    assert (r[:, 1] <= 51).all() and (r[:, 3] >= 93).all()
    # and the left edge is cut (the face box is 0.70 of the width, margins at most 20%)
    assert (r[:, 0] >= 5).all() and (r[:, 0] <= 23).all()
    # a margin range of one value: one rectangle
    same = tight_rectangles(u[:3], 112, 112, (0.1, 0.1))
    assert (same == same[0]).all()


def test_off_by_default_and_bit_identical_when_off():
    x = _noise(16)
    torch.manual_seed(0)
    plain = Augment(seed=3)(x.clone())
    off = Augment(seed=3, tight_crop=0.0, low_res=0.0, tight_border="reflect")(x.clone())
    torch.testing.assert_close(plain, off, rtol=0, atol=0)
    assert Augment().tight_crop == 0.0 and Augment().low_res == 0.0


@pytest.mark.parametrize("border", ["constant", "replicate", "reflect"])
def test_tight_crop_statistics_and_fill(border):
    """About p of the images change; exactly those, outside the drawn rectangle, as np.pad."""
    b, p = 3000, 0.3
    x = _noise(b, 16, 16)
    aug = Augment(seed=5, tight_crop=p, tight_border=border, **PLAIN)
    out = aug(x.clone())
    replay = Augment(seed=5, tight_crop=p, tight_border=border, **PLAIN)
    rects = replay.draw_tight(b, 16, 16)
    chosen = (rects != torch.tensor([0, 0, 15, 15])).any(1)
    changed = (out != (x.float() / 255 - 0.5) / 0.5).flatten(1).any(1)
    assert torch.equal(changed, chosen)  # noise images: any smaller rectangle changes them
    assert abs(chosen.float().mean().item() - p) < 4 * np.sqrt(p * (1 - p) / b)
    for i in torch.nonzero(chosen)[:20, 0].tolist():
        ref = _reference(x[i].float().numpy() / 255, rects[i], border)
        np.testing.assert_allclose(out[i].numpy(), (ref - 0.5) / 0.5, atol=1e-6)


def test_tight_crop_is_seeded_and_resumable():
    x = _noise(64)
    a = Augment(seed=9, tight_crop=0.5, low_res=0.5, **PLAIN)
    a(x.clone())
    state = a.state_dict()
    second = a(x.clone())
    b = Augment(seed=0, tight_crop=0.5, low_res=0.5, **PLAIN)
    b.load_state_dict(state)
    torch.testing.assert_close(b(x.clone()), second, rtol=0, atol=0)


def test_low_resolution_is_a_down_and_up_resize():
    x = _noise(6, 32, 32).float()
    sizes = torch.tensor([0, 8, 8, 16, 0, 31])
    out = low_resolution(x, sizes)
    for i, s in enumerate(sizes.tolist()):
        if s == 0:
            torch.testing.assert_close(out[i], x[i], rtol=0, atol=0)
            continue
        small = F.interpolate(x[i : i + 1], (s, s), mode="bilinear", antialias=True)
        up = F.interpolate(small, (32, 32), mode="bilinear", align_corners=False)
        torch.testing.assert_close(out[i : i + 1], up)


def test_low_resolution_statistics():
    """About p of the images lose their fine detail; drawn sizes cover the range."""
    b, p = 2000, 0.4
    x = _noise(b, 32, 32)
    aug = Augment(seed=1, low_res=p, low_res_size=(6, 10), **PLAIN)
    out = aug(x.clone())
    sizes = Augment(seed=1, low_res=p, low_res_size=(6, 10), **PLAIN).draw_low_res(b)
    chosen = sizes > 0
    assert abs(chosen.float().mean().item() - p) < 4 * np.sqrt(p * (1 - p) / b)
    assert set(sizes[chosen].tolist()) == {6, 7, 8, 9, 10}
    base = (x.float() / 255 - 0.5) / 0.5
    assert torch.equal((out != base).flatten(1).any(1), chosen)
    # neighbouring-pixel differences (high frequencies) shrink a lot where reduced
    tv = (out[:, :, :, 1:] - out[:, :, :, :-1]).abs().mean((1, 2, 3))
    tv0 = (base[:, :, :, 1:] - base[:, :, :, :-1]).abs().mean((1, 2, 3))
    assert (tv[chosen] < 0.5 * tv0[chosen]).all()


def test_bad_settings_name_the_value():
    with pytest.raises(ValueError, match="'mirror'"):
        Augment(tight_border="mirror")
    with pytest.raises(ValueError, match="low_res_size"):
        Augment(low_res_size=(20, 10))


def test_config_turns_them_on_and_follows_the_warps_border():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from face_rec.config_check import ConfigError, check_config

    from ..conftest import REPO

    overrides = ["augment.tight_crop=0.5", "augment.low_res=0.3", "align.settings.border=reflect"]
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose("train", overrides=[*overrides, "val=lfw_tight"])
        bad = compose("train", overrides=["augment.low_res_size=[16]"])
    check_config(cfg)
    aug = instantiate(cfg.augment, seed=0)
    assert (aug.tight_crop, aug.low_res, aug.tight_border) == (0.5, 0.3, "reflect")
    assert list(cfg.val.sets) == ["lfw_devtest", "lfw_tight", "lfw_lowres"]
    assert cfg.val.sets.lfw_tight.image_root.endswith("lfw_tight/tight/images")
    with pytest.raises(ConfigError, match="low_res_size"):
        check_config(bad)
