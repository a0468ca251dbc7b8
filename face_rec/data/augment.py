"""Batched augmentation of uint8 face crops on the training device, from one seeded generator.

Done on whole batches in the training process (not in loader workers), so it is cheap, runs on
the GPU when there is one, and its random state is one ``torch.Generator`` that checkpoints save:
resumed runs see the same augmentations. Nothing here moves the face off the template: flips are
horizontal, shifts a few pixels, crops mild.

Crop conditions (off by default): a tight-crop simulation (the part of the crop outside a random
rectangle around the face is replaced by what the warp's border mode would put there had the
source photo been cropped to that rectangle) and low resolution (down- and upscaled, as a tiny
source is by the warp). Both run first, on the crop as it comes from the pack.

Margins have one unit everywhere, the tight-crop builder's (:mod:`face_rec.data.tight_crop`,
``--margin``): the fraction of the face box's width / height added on each side (negative cuts
into the box). A side at margin ``m`` lies at the box's half-size x ``(1 + 2 m)`` from its centre.

Border: ``tight_border`` (the warp's ``align.settings.border``) fills both the tight crop's
outside and the strip a shift uncovers (``grid_sample``'s ``padding_mode``, :data:`GRID_PADDING`):
constant -> ``zeros``, replicate -> ``border`` (the same as the warp's), reflect ->
``reflection``. ``grid_sample``'s reflection (``align_corners=False``) mirrors about the image's
outer edge, so the edge pixel is repeated (``np.pad`` 'symmetric', OpenCV ``BORDER_REFLECT``),
where the warp's reflect does not repeat it (``BORDER_REFLECT_101``): the reflected strip is one
pixel further out; for a shift of a few pixels the two are nearly identical.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

#: the MTCNN face box in an aligned crop, as fractions of its side: centre (x, y) and size (w, h)
#: (medians over LFW's aligned crops: about (0.50, 0.57) and (0.70, 0.93) over 288 of them; the
#: box is taller than wide and reaches the chin)
FACE_BOX_CENTRE = (0.49, 0.58)
FACE_BOX_SIZE = (0.70, 0.94)
TIGHT_BORDERS = ("constant", "replicate", "reflect")
#: grid_sample's padding_mode for each border mode (the shift's uncovered strip)
GRID_PADDING = {"constant": "zeros", "replicate": "border", "reflect": "reflection"}


def tight_rectangles(u: torch.Tensor, h: int, w: int, margin: tuple[float, float]) -> torch.Tensor:
    """Random tight-crop rectangles from uniforms ``u`` (B, 4) in [0, 1).

    Each side is the face box's (:data:`FACE_BOX_CENTRE`, :data:`FACE_BOX_SIZE`) moved out by
    ``m`` x the box's width / height, as the tight-crop builder's margin does
    (:func:`~face_rec.data.tight_crop.crop_box`), ``m`` drawn per side from ``margin``
    (negative: inside the face box): it lies at half the box x ``(1 + 2 m)`` from the centre.
    Returns (B, 4) int64 inclusive pixel bounds x0, y0, x1, y1, clamped to the (h, w) crop,
    never empty.
    """
    lo, hi = float(margin[0]), float(margin[1])
    f = 1.0 + 2.0 * (lo + u.double() * (hi - lo))  # left, top, right, bottom: 1 + 2 m
    cx, cy = FACE_BOX_CENTRE[0] * w - 0.5, FACE_BOX_CENTRE[1] * h - 0.5
    hw, hh = FACE_BOX_SIZE[0] * w / 2, FACE_BOX_SIZE[1] * h / 2
    x0 = torch.round(cx - hw * f[:, 0]).clamp(0, w - 1)
    y0 = torch.round(cy - hh * f[:, 1]).clamp(0, h - 1)
    x1 = torch.maximum(torch.round(cx + hw * f[:, 2]).clamp(0, w - 1), x0)
    y1 = torch.maximum(torch.round(cy + hh * f[:, 3]).clamp(0, h - 1), y0)
    return torch.stack([x0, y0, x1, y1], 1).long()


def _axis_index(n: int, lo: torch.Tensor, hi: torch.Tensor, border: str) -> torch.Tensor:
    """(B, n) source index of each of n positions for rectangles [lo, hi] (B,): replicate clamps
    into it, reflect mirrors about its edge pixels without repeating them (np.pad 'reflect')."""
    j = torch.arange(n, device=lo.device)[None, :]
    lo, hi = lo[:, None], hi[:, None]
    if border == "replicate":
        return torch.maximum(torch.minimum(j, hi), lo)
    length = hi - lo + 1
    period = (2 * length - 2).clamp(min=1)
    t = torch.remainder(j - lo, period)
    return lo + torch.where(t >= length, period - t, t)


def fill_outside(x: torch.Tensor, rects: torch.Tensor, border: str) -> torch.Tensor:
    """Replace the pixels of each (C, H, W) image of ``x`` (B, C, H, W) outside its rectangle
    ``rects`` (B, 4) (inclusive x0, y0, x1, y1) as the warp's ``border`` mode fills the part of a
    crop beyond its source: constant zero, replicate the rectangle's edge pixels, reflect about
    them. A rectangle covering the whole image leaves it unchanged."""
    if border not in TIGHT_BORDERS:
        raise ValueError(f"unknown tight_border {border!r}; use one of {', '.join(TIGHT_BORDERS)}")
    b, c, h, w = x.shape
    rects = rects.to(x.device)
    x0, y0, x1, y1 = rects.unbind(1)
    if border == "constant":
        jx, jy = torch.arange(w, device=x.device), torch.arange(h, device=x.device)
        mx = (jx[None] >= x0[:, None]) & (jx[None] <= x1[:, None])  # (B, W)
        my = (jy[None] >= y0[:, None]) & (jy[None] <= y1[:, None])  # (B, H)
        return x * (my[:, None, :, None] & mx[:, None, None, :]).to(x.dtype)
    iy = _axis_index(h, y0, y1, border)[:, None, :, None].expand(b, c, h, w)
    ix = _axis_index(w, x0, x1, border)[:, None, None, :].expand(b, c, h, w)
    return x.gather(2, iy).gather(3, ix)


def shift_zoom(x: torch.Tensor, theta: torch.Tensor, border: str = "constant") -> torch.Tensor:
    """Resample (B, C, H, W) ``x`` with the affine ``theta`` (B, 2, 3) (``affine_grid``'s
    normalised output -> input map, ``align_corners=False``), bilinear; samples beyond the image
    read ``border`` (:data:`GRID_PADDING`: constant zero, replicate the edge, reflect about the
    outer edge, repeating the edge pixel)."""
    if border not in GRID_PADDING:
        raise ValueError(f"unknown tight_border {border!r}; use one of {', '.join(TIGHT_BORDERS)}")
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(
        x, grid, mode="bilinear", padding_mode=GRID_PADDING[border], align_corners=False
    )


def low_resolution(x: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Each image of ``x`` (B, C, H, W) with ``sizes[i] > 0`` downscaled (antialiased bilinear)
    so its height is ``sizes[i]`` px and upscaled back (bilinear); the others unchanged."""
    out = x.clone()
    h, w = x.shape[-2:]
    for s in sorted(set(sizes[sizes > 0].tolist())):
        idx = torch.nonzero(sizes == s).squeeze(1).to(x.device)
        small_hw = (int(s), max(1, round(s * w / h)))
        small = F.interpolate(
            x[idx], small_hw, mode="bilinear", antialias=True, align_corners=False
        )
        out[idx] = F.interpolate(small, (h, w), mode="bilinear", align_corners=False)
    return out


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
        shift: max translation in pixels (each axis); the uncovered strip is filled as
            ``tight_border`` says (:data:`GRID_PADDING`).
        scale: random resized crop: zoom factor drawn from [1, 1 + scale] about the centre.
        brightness, contrast, saturation: colour jitter strengths (factor in [1 - v, 1 + v]).
        grayscale: probability of converting to greyscale.
        size: output side (None keeps the input size); lower it to train at low resolution.
            Below the crop's side, the crop conditions and the shift run on the crop, then
            the resize, then flip and colour at ``size`` (a fifth of the pixels for the demo's
            48 px of 112): both commute with the resize, but for colour's clamp to [0, 1] and
            its contrast mean, taken at ``size``.
        tight_crop: probability of the tight-crop simulation (:func:`tight_rectangles`,
            :func:`fill_outside`); 0: off.
        tight_margin: range of each side's margin around the face box, in the tight-crop
            builder's unit: the fraction of the box's width / height added on that side
            (negative cuts into the face box).
        tight_border: what fills the part outside the tight crop and the strip a shift
            uncovers: constant, replicate or reflect (the warp's ``align.settings.border``).
        low_res: probability of the low-resolution simulation (:func:`low_resolution`); 0: off.
        low_res_size: range (inclusive, px of the input crop) of the reduced height.
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
        tight_crop: float = 0.0,
        tight_margin: tuple[float, float] = (-0.1, 0.2),
        tight_border: str = "constant",
        low_res: float = 0.0,
        low_res_size: tuple[int, int] = (16, 48),
        seed: int = 0,
    ) -> None:
        if tight_border not in TIGHT_BORDERS:
            raise ValueError(
                f"unknown tight_border {tight_border!r}; use one of {', '.join(TIGHT_BORDERS)}"
            )
        if not 1 <= int(low_res_size[0]) <= int(low_res_size[1]):
            raise ValueError(
                f"low_res_size {list(low_res_size)} must be [lo, hi] with 1 <= lo <= hi"
            )
        self.flip, self.shift, self.scale = flip, shift, scale
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation
        self.grayscale, self.size = grayscale, size
        self.tight_crop, self.tight_border = tight_crop, tight_border
        self.tight_margin = (float(tight_margin[0]), float(tight_margin[1]))
        self.low_res = low_res
        self.low_res_size = (int(low_res_size[0]), int(low_res_size[1]))
        self.generator = torch.Generator().manual_seed(seed)

    def _u(self, b: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return torch.rand(b, generator=self.generator) * (hi - lo) + lo

    def draw_tight(self, b: int, h: int, w: int) -> torch.Tensor:
        """This batch's tight-crop rectangles (B, 4) (:func:`tight_rectangles`); the whole
        (h, w) crop for the images not chosen (probability ``1 - tight_crop``)."""
        chosen = self._u(b) < self.tight_crop
        rects = tight_rectangles(
            torch.rand(b, 4, generator=self.generator), h, w, self.tight_margin
        )
        full = torch.tensor([0, 0, w - 1, h - 1])
        return torch.where(chosen[:, None], rects, full)

    def draw_low_res(self, b: int) -> torch.Tensor:
        """This batch's reduced heights (B,) int64, 0 for the images not chosen."""
        chosen = self._u(b) < self.low_res
        lo, hi = self.low_res_size
        sizes = lo + (torch.rand(b, generator=self.generator) * (hi - lo + 1)).long().clamp(
            max=hi - lo
        )
        return torch.where(chosen, sizes, torch.zeros_like(sizes))

    def __call__(self, x: torch.Tensor, train: bool = True) -> torch.Tensor:
        x = x.float().div_(255.0)
        b, dev = x.shape[0], x.device
        if train and self.tight_crop:
            x = fill_outside(x, self.draw_tight(b, *x.shape[-2:]), self.tight_border)
        if train and self.low_res:
            x = low_resolution(x, self.draw_low_res(b))
        if train and (self.shift or self.scale):
            zoom = 1.0 / self._u(b, 1.0, 1.0 + self.scale)
            tx = self._u(b, -self.shift, self.shift) * 2 / x.shape[-1]
            ty = self._u(b, -self.shift, self.shift) * 2 / x.shape[-2]
            theta = torch.zeros(b, 2, 3)
            theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = zoom, zoom, tx, ty
            x = shift_zoom(x, theta.to(dev), self.tight_border)
        if train and self.size and self.size < x.shape[-1]:
            x = resize(x, self.size)  # flip and colour commute with it: on fewer pixels
        if train and self.flip:
            flip = (self._u(b) < self.flip).to(dev)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if train and (self.brightness or self.contrast or self.saturation or self.grayscale):
            x = self._colour(x)
        return resize(x.clamp_(0, 1).sub_(0.5).div_(0.5), self.size)

    def _colour(self, x: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast, saturation, then grayscale, in that order, as one affine map.

        Each step is affine in the pixels with per-image factors, and grey = 0.299 R + 0.587 G
        + 0.114 B maps a grey value to itself (the weights sum to 1), so with brightness
        ``b``, contrast ``c`` (about the mean grey after brightness, ``b mu``), saturation
        ``s`` (about each pixel's grey) the sequence is ``s c b x + (1 - s) c b grey(x) + (1 -
        c) b mu``, and a greyscale pick leaves ``c b grey(x) + (1 - c) b mu``. Computed so, it
        takes 3 passes over the batch instead of a dozen (the steps one by one:
        tests/data/test_augment.py). Factors are drawn in the order above, each only
        when its strength is non-zero.
        """
        b, dev = x.shape[0], x.device
        one = torch.ones(b)

        def factor(v: float) -> torch.Tensor:
            return self._u(b, 1 - v, 1 + v) if v else one

        bf, cf, sf = factor(self.brightness), factor(self.contrast), factor(self.saturation)
        if self.grayscale:
            sf = torch.where(self._u(b) < self.grayscale, torch.zeros(b), sf)
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
        cb = cf * bf
        a, g, c = sf * cb, (1 - sf) * cb, (1 - cf) * bf
        a, g, c = (t.to(dev)[:, None, None, None] for t in (a, g, c))
        if self.contrast:
            c = c * grey.mean((2, 3), keepdim=True)
        return torch.addcmul(c + g * grey, x, a)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
