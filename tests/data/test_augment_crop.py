"""Crop-condition augmentation: tight-crop simulation and low resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from face_rec.data.augment import (
    FACE_BOX_CENTRE,
    FACE_BOX_SIZE,
    Augment,
    fill_outside,
    low_resolution,
    shift_zoom,
    tight_rectangles,
)
from face_rec.data.tight_crop import crop_box

from .conftest import shift_theta

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
    r = tight_rectangles(u, 112, 112, Augment().tight_margin)
    assert Augment().tight_margin == (-0.1, 0.2)
    assert (r[:, 0] <= r[:, 2]).all() and (r[:, 1] <= r[:, 3]).all()
    assert r.min() >= 0 and r.max() <= 111
    # every rectangle holds both eyes and the mouth of the ArcFace template
    assert (r[:, 0] <= 38).all() and (r[:, 2] >= 74).all()
    assert (r[:, 1] <= 51).all() and (r[:, 3] >= 93).all()
    # the left edge: the face box (0.70 x 112 px wide about x = 54.4) grown by -0.1 .. 0.2 x its
    # width: 54.4 - 39.2 x (1 + 2 m) in [-0.5, 23.0]
    assert r[:, 0].min() == 0 and r[:, 0].max() == 23
    # a margin range of one value: one rectangle
    same = tight_rectangles(u[:3], 112, 112, (0.1, 0.1))
    assert (same == same[0]).all()


@pytest.mark.parametrize(
    "m,expected",
    [  # by hand: centre (54.38, 64.46) px, half-size (39.2, 52.64) px, sides at 1 + 2 m of it
        (0.0, [15, 12, 94, 111]),  # 54.38 - 39.2 = 15.18; 64.46 - 52.64 = 11.82; 93.58
        (0.1, [7, 1, 101, 111]),  # 54.38 - 47.04 = 7.34; 64.46 - 63.17 = 1.29; 101.42
        (-0.1, [23, 22, 86, 107]),  # 54.38 - 31.36 = 23.02; 64.46 - 42.11 = 22.35; 85.74; 106.57
    ],
)
def test_rectangles_by_hand(m, expected):
    r = tight_rectangles(torch.zeros(1, 4), 112, 112, (m, m))
    assert r[0].tolist() == expected


@pytest.mark.parametrize("m", [-0.1, 0.0, 0.05, 0.1, 0.2])
def test_margin_is_the_builders_unit(m):
    """tight_margin m and the builder's --margin m cut the same rectangle: crop_box of the face
    box (FACE_BOX_CENTRE / SIZE, corner coordinates) in a 112 px image, end exclusive, is the
    simulated rectangle (inclusive) to within a pixel (their roundings differ)."""
    n = 112
    cx, cy = FACE_BOX_CENTRE[0] * n, FACE_BOX_CENTRE[1] * n
    hw, hh = FACE_BOX_SIZE[0] * n / 2, FACE_BOX_SIZE[1] * n / 2
    x0, y0, xe, ye = crop_box(np.array([cx - hw, cy - hh, cx + hw, cy + hh]), (n, n), m)
    r = tight_rectangles(torch.zeros(1, 4), n, n, (m, m))[0].tolist()
    assert np.abs(np.array(r) - [x0, y0, xe - 1, ye - 1]).max() <= 1, (r, (x0, y0, xe, ye))


def _np_shift(x: np.ndarray, dy: int, dx: int, mode: str) -> np.ndarray:
    """(C, H, W) ``x`` moved so output (i, j) reads input (i + dy, j + dx), the outside read
    through ``np.pad`` in ``mode``."""
    c, h, w = x.shape
    p = max(abs(dy), abs(dx))
    padded = np.pad(x, ((0, 0), (p, p), (p, p)), mode)
    return padded[:, p + dy : p + dy + h, p + dx : p + dx + w]


@pytest.mark.parametrize(
    "border,np_mode",
    [("constant", "constant"), ("replicate", "edge"), ("reflect", "symmetric")],
)
def test_shift_fills_the_uncovered_strip_by_the_border(border, np_mode):
    """Whole-pixel shifts are exact copies; the strip they uncover is zero, the edge pixel, or
    the image mirrored about its outer edge (grid_sample's reflection repeats the edge pixel:
    np.pad 'symmetric', not the warp's 'reflect')."""
    x = _noise(4, 20, 17).float()
    shifts = [(0, 3), (-2, 0), (4, -4), (-3, 2)]  # (dy, dx) in px
    theta = torch.zeros(4, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    for i, (dy, dx) in enumerate(shifts):
        theta[i, 0, 2], theta[i, 1, 2] = dx * 2 / 17, dy * 2 / 20
    out = shift_zoom(x, theta, border)
    for i, (dy, dx) in enumerate(shifts):
        ref = _np_shift(x[i].numpy(), dy, dx, np_mode)
        np.testing.assert_allclose(out[i].numpy(), ref, atol=1e-3)


def test_shift_is_bit_identical_with_a_constant_border_and_follows_the_border():
    """tight_border constant: the shift is grid_sample with zero padding, as before the border
    was followed, drawn from the same generator; replicate leaves no dark strip."""
    x = _noise(32, 24, 24).clamp(min=40)
    kw = {**PLAIN, "shift": 4}
    out = Augment(seed=11, tight_border="constant", **kw)(x.clone())
    theta = shift_theta(torch.Generator().manual_seed(11), 32, 4, 24)
    grid = F.affine_grid(theta, [32, 3, 24, 24], align_corners=False)
    old = F.grid_sample(x.float() / 255, grid, padding_mode="zeros", align_corners=False)
    torch.testing.assert_close(out, (old.clamp(0, 1) - 0.5) / 0.5, rtol=0, atol=0)
    assert (out < (40 / 255 - 0.5) / 0.5 - 1e-4).any()  # darker than any input pixel: black
    for border in ("replicate", "reflect"):
        kept = Augment(seed=11, tight_border=border, **kw)(x.clone())
        assert kept.min() >= (40 / 255 - 0.5) / 0.5 - 1e-5, border


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


@pytest.mark.realdata
def test_the_simulation_resembles_a_real_tight_source(lfw_root):
    """LFW photos cut as the builder cuts them (detected face box + m x its size per side) and
    aligned: the part of the crop inside the tight source spans the simulated rectangle of the
    same m to within a few pixels (median over the photos), and holds what fill_outside keeps
    of the wide photo's crop."""
    from face_rec.align.detect import FaceDetector
    from face_rec.align.warp import alignment_matrix, outside_mask, warp_similarity
    from face_rec.data.images import load_rgb

    people = sorted(p for p in (lfw_root / "images").iterdir() if p.is_dir())[::40][:32]
    photos = [load_rgb(sorted(p.iterdir())[0]) for p in people]
    faces = FaceDetector(min_face_size=40, device="cpu").detect(photos)
    pairs = [(img, f) for img, f in zip(photos, faces, strict=True) if f and f.confident]
    assert len(pairs) >= 25
    for m in (0.0, 0.1):
        rect = tight_rectangles(torch.zeros(1, 4), 112, 112, (m, m))
        extents, diffs = [], []
        for img, face in pairs:
            x0, y0, x1, y1 = crop_box(face.box, img.shape[:2], m)
            tight = np.ascontiguousarray(img[y0:y1, x0:x1])
            matrix = alignment_matrix(face.landmarks - [x0, y0])
            inside = ~outside_mask(tight.shape[:2], matrix, 112)
            ys, xs = np.nonzero(inside)
            extents.append([xs.min(), ys.min(), xs.max(), ys.max()])
            real = warp_similarity(tight, matrix, 112).astype(float)
            wide = warp_similarity(img, alignment_matrix(face.landmarks), 112)
            sim = fill_outside(
                torch.from_numpy(wide).permute(2, 0, 1)[None].float(), rect, "constant"
            )
            sim = sim[0].permute(1, 2, 0).numpy()
            both = inside & (sim > 0).any(-1)
            diffs.append(np.abs(sim - real)[both].mean())
        gap = np.abs(np.median(extents, 0) - rect[0].numpy())
        # (half-size units, m = 0.1 gave [11, 7, 98, 111]: 7 px off at the top)
        assert gap.max() <= 4, (m, np.median(extents, 0), rect[0].tolist())
        assert np.median(diffs) < 1.0, diffs  # the same pixels where both keep the photo
