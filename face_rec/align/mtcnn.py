"""MTCNN's three-stage cascade with batched crop resampling.

The same algorithm, networks and helper functions as facenet-pytorch's ``detect_face``; the one
change is how the candidate boxes of stages 2 and 3 are cut out and resized to 24 / 48 px.
facenet-pytorch does that one box at a time in a Python loop (``interpolate(mode="area")`` per
box), which costs about a third of the detector's time. Here every box is resampled at once
from a summed-area table: area interpolation is an average over integer cell ranges
(``floor(i * n / o)`` to ``ceil((i + 1) * n / o)``, as in ``adaptive_avg_pool2d``), i.e. four
table look-ups per cell, so the result equals the loop's up to float rounding.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from facenet_pytorch.models.utils.detect_face import (
    batched_nms,
    batched_nms_numpy,
    bbreg,
    generateBoundingBox,
    pad,
    rerec,
)
from torch import nn


def summed_area_table(imgs: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) uint8-valued -> (N, H + 1, W + 1, C) with ``S[:, y, x] = sum(img[:, :y,
    :x])``: exact int32 sums while they fit (H x W x 255 < 2^31), else float64.

    Channels last, like the networks' input: crops and resized levels come out in that layout
    without a copy."""
    n, h, w, c = imgs.shape
    dtype = torch.int32 if h * w * 255 < 2**31 else torch.float64
    table = torch.zeros(n, h + 1, w + 1, c, dtype=dtype, device=imgs.device)
    table[:, 1:, 1:] = imgs.to(dtype).cumsum(1, dtype=dtype).cumsum(2, dtype=dtype)
    return table


def _cells(start, length, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Area-interpolation cell bounds: [start + floor(j n / o), start + ceil((j + 1) n / o))."""
    j = np.arange(size)
    start, length = np.asarray(start)[..., None], np.asarray(length)[..., None]
    return start + (j * length) // size, start - ((-(j + 1) * length) // size)


def _mean(total: torch.Tensor, count, out: torch.Tensor | None = None) -> torch.Tensor:
    """Cell sums / cell sizes in float32 (correctly rounded while the sums are below 2^24)."""
    count = torch.as_tensor(count, device=total.device).float()
    return torch.div(total.float(), count[..., None], out=out)


def area_resize(table: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Whole images resized by area interpolation, from their summed-area table.

    Equals ``interpolate(imgs, (out_h, out_w), mode="area")`` up to rounding:
    (N, C, oh, ow) float32 in channels_last memory format.
    """
    h, w = table.shape[1] - 1, table.shape[2] - 1
    (rs, re), (cs, ce) = _cells(0, h, out_h), _cells(0, w, out_w)
    dev = table.device
    rs, re, cs, ce = (torch.as_tensor(v, device=dev) for v in (rs, re, cs, ce))
    rows = table.index_select(1, re) - table.index_select(1, rs)
    total = rows.index_select(2, ce) - rows.index_select(2, cs)
    return _mean(total, (re - rs)[:, None] * (ce - cs)[None, :]).permute(0, 3, 1, 2)


def area_crops(
    table: torch.Tensor,
    image_idx: torch.Tensor,
    y0: np.ndarray,
    y1: np.ndarray,
    x0: np.ndarray,
    x1: np.ndarray,
    size: int,
    chunk: int = 512,
) -> torch.Tensor:
    """Crop rows [y0, y1) and columns [x0, x1) of image ``image_idx`` for every box and resize
    each to ``size`` x ``size`` by area interpolation.

    Returns (B, C, size, size) float32 in channels_last memory format."""
    n_img, hp, wp, c = table.shape
    flat = table.view(-1, c)  # one row of C sums per table cell
    idx_img = image_idx.cpu().numpy()
    out = torch.empty(len(y0), size, size, c, device=table.device)
    for s in range(0, len(y0), chunk):
        sl = slice(s, s + chunk)
        rs, re = _cells(y0[sl], y1[sl] - y0[sl], size)  # (B, size)
        cs, ce = _cells(x0[sl], x1[sl] - x0[sl], size)
        base = (idx_img[sl] * hp * wp)[:, None, None]
        corners = np.stack(
            [
                base + r[:, :, None] * wp + cc[:, None, :]
                for r, cc in ((re, ce), (rs, ce), (re, cs), (rs, cs))
            ]
        )
        idx = torch.as_tensor(corners.reshape(-1), device=table.device)
        v = flat.index_select(0, idx).view(*corners.shape, c)  # (4, B, size, size, C)
        _mean(v[0] - v[1] - v[2] + v[3], (re - rs)[:, :, None] * (ce - cs)[:, None, :], out[sl])
    return out.permute(0, 3, 1, 2)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """MTCNN's input scaling, (x - 127.5) / 128, in place."""
    return x.sub_(127.5).mul_(0.0078125)


def _stage_input(
    table: torch.Tensor, boxes: torch.Tensor, image_inds: torch.Tensor, w: int, h: int, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised (B, 3, size, size) crops of ``boxes``; also the mask of non-empty boxes."""
    y, ey, x, ex = pad(boxes, w, h)
    keep = (ey > y - 1) & (ex > x - 1)
    crops = area_crops(
        table, image_inds[torch.as_tensor(keep)], y[keep] - 1, ey[keep], x[keep] - 1, ex[keep], size
    )
    return _normalise(crops), torch.as_tensor(keep, device=boxes.device)


def _forward(net: nn.Module, x: torch.Tensor, pixels: int = 2**16) -> tuple[torch.Tensor, ...]:
    """``net(x)``, on CPU in slices of about ``pixels`` input pixels: a slice's activations stay
    in cache (and below the allocator's mmap threshold), so RNet and ONet run about twice as fast
    per box as in one pass over thousands of boxes, PNet's largest pyramid levels ~1.5x. A GPU
    takes the whole batch at once."""
    step = max(1, pixels // (x.shape[2] * x.shape[3]))
    if x.device.type != "cpu" or step >= len(x):
        return net(x)
    outs = [net(x[s : s + step]) for s in range(0, len(x), step)]
    return tuple(torch.cat(parts) for parts in zip(*outs, strict=True))


def widen_first_layer(net: nn.Module, multiple: int = 16) -> nn.Module:
    """A copy of an MTCNN network whose ``conv1`` has zero filters added up to a multiple of
    ``multiple`` output channels (``conv2`` gets matching zero input weights).

    Same outputs (the extra channels are 0 through PReLU and max-pooling, and weigh 0 in conv2).
    On CPU, channels_last PReLU and max-pooling over 16 channels vectorise where PNet's 10 do
    not (PReLU ~4x, max-pooling ~2x faster): PNet runs ~15% faster as a whole. (RNet's 28 -> 32
    measured no faster, with 14% more convolution work: FaceDetector widens PNet only.)
    """
    net = copy.deepcopy(net)
    extra = -net.conv1.out_channels % multiple
    if extra == 0:
        return net
    with torch.no_grad():
        conv1, prelu1, conv2 = net.conv1, net.prelu1, net.conv2
        net.conv1 = nn.Conv2d(conv1.in_channels, conv1.out_channels + extra, conv1.kernel_size)
        net.conv1.weight.copy_(_pad(conv1.weight, 0, extra))
        net.conv1.bias.copy_(_pad(conv1.bias, 0, extra))
        net.prelu1 = nn.PReLU(conv1.out_channels + extra)
        net.prelu1.weight.copy_(_pad(prelu1.weight, 0, extra))
        net.conv2 = nn.Conv2d(conv2.in_channels + extra, conv2.out_channels, conv2.kernel_size)
        net.conv2.weight.copy_(_pad(conv2.weight, 1, extra))
        net.conv2.bias.copy_(conv2.bias)
    return net.to(conv1.weight.device)


def _pad(t: torch.Tensor, dim: int, extra: int) -> torch.Tensor:
    """``t`` with ``extra`` zero slices appended along ``dim``."""
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t, t.new_zeros(shape)], dim)


def _pyramid(h: int, w: int, minsize: float, factor: float) -> list[float]:
    m = 12.0 / minsize
    minl = min(h, w) * m
    scales = []
    while minl >= 12:
        scales.append(m)
        m *= factor
        minl *= factor
    return scales


@torch.inference_mode()
def detect_faces(
    imgs: torch.Tensor,
    minsize: float,
    pnet: nn.Module,
    rnet: nn.Module,
    onet: nn.Module,
    threshold: list[float],
    factor: float,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Faces in a batch of equal-size images ``imgs`` (N, H, W, 3) uint8 tensor.

    Returns per image: boxes (K, 5) x1 y1 x2 y2 prob, and landmarks (K, 5, 2), as
    facenet-pytorch's ``detect_face``.
    """
    dev = imgs.device
    n, h, w, _ = imgs.shape
    table = summed_area_table(imgs)
    boxes, image_inds, picks, offset = [], [], [], 0
    for scale in _pyramid(h, w, minsize, factor):
        im_data = area_resize(table, int(h * scale + 1), int(w * scale + 1))
        reg, probs = _forward(pnet, _normalise(im_data))
        b, inds = generateBoundingBox(reg, probs[:, 1], scale, threshold[0])
        boxes.append(b)
        image_inds.append(inds)
        picks.append(batched_nms(b[:, :4], b[:, 4], inds, 0.5) + offset)
        offset += b.shape[0]
    if not boxes:
        return [np.zeros((0, 5))] * n, [np.zeros((0, 5, 2))] * n
    pick = torch.cat(picks)
    boxes, image_inds = torch.cat(boxes)[pick], torch.cat(image_inds)[pick]
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes, image_inds = boxes[pick], image_inds[pick]
    regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    boxes = torch.stack(
        [
            boxes[:, 0] + boxes[:, 5] * regw,
            boxes[:, 1] + boxes[:, 6] * regh,
            boxes[:, 2] + boxes[:, 7] * regw,
            boxes[:, 3] + boxes[:, 8] * regh,
            boxes[:, 4],
        ],
        dim=1,
    )
    boxes = rerec(boxes)
    points = torch.zeros(0, 5, 2, device=dev)
    if len(boxes):  # stage 2: RNet refines
        x24, keep = _stage_input(table, boxes, image_inds, w, h, 24)
        boxes, image_inds = boxes[keep], image_inds[keep]
        reg, prob = _forward(rnet, x24)
        score = prob[:, 1]
        ipass = score > threshold[1]
        boxes = torch.cat((boxes[ipass, :4], score[ipass, None]), dim=1)
        image_inds, reg = image_inds[ipass], reg[ipass]
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes = rerec(bbreg(boxes[pick], reg[pick]))
        image_inds = image_inds[pick]
    if len(boxes):  # stage 3: ONet scores, refines and finds the 5 landmarks
        x48, keep = _stage_input(table, boxes, image_inds, w, h, 48)
        boxes, image_inds = boxes[keep], image_inds[keep]
        reg, lms, prob = _forward(onet, x48)
        score = prob[:, 1]
        ipass = score > threshold[2]
        boxes = torch.cat((boxes[ipass, :4], score[ipass, None]), dim=1)
        image_inds, reg, lms = image_inds[ipass], reg[ipass], lms[ipass]
        bw = boxes[:, 2] - boxes[:, 0] + 1
        bh = boxes[:, 3] - boxes[:, 1] + 1
        px = bw[:, None] * lms[:, :5] + boxes[:, 0:1] - 1
        py = bh[:, None] * lms[:, 5:10] + boxes[:, 1:2] - 1
        points = torch.stack((px, py), dim=2)
        boxes = bbreg(boxes, reg)
        pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
        boxes, image_inds, points = boxes[pick], image_inds[pick], points[pick]
    boxes, points, image_inds = boxes.cpu().numpy(), points.cpu().numpy(), image_inds.cpu().numpy()
    return ([boxes[image_inds == i] for i in range(n)], [points[image_inds == i] for i in range(n)])
