"""Sharpness of training crops against evaluation crops, for two augmentation orders.

    python benchmarks/augment_sharpness.py --pack packs/lfw --size 48 --shift 4

Laplacian energy (mean squared response inside a 4 px border) of the first ``--n`` crops of a
pack, relative to the evaluation crops (the plain antialiased resize to ``--size``), after a
shift of up to ``--shift`` px of the crop drawn as ``Augment`` draws it (seed 0; no flip or
colour, which commute with the resize): shifting the crop and then resizing (face_rec's order)
against resizing and then shifting at ``--size`` (commit 3e64ffb's, replaced: the sub-pixel
shift interpolated at the small size blurs). One line of output.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from face_rec.data.augment import resize, shift_zoom
from face_rec.utils.machine import benchmark_header


def laplacian_energy(x: torch.Tensor) -> float:
    lap = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    return F.conv2d(x[:, :, 4:-4, 4:-4], lap, groups=3).pow(2).mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pack", type=Path, default=Path("packs/lfw"))
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--shift", type=float, default=4.0)
    args = p.parse_args()
    crops = np.load(args.pack / "images.npy", mmap_mode="r")[: args.n]
    x = torch.from_numpy(np.array(crops)).permute(0, 3, 1, 2).float() / 255
    b, side = len(x), x.shape[-1]
    g = torch.Generator().manual_seed(0)
    tx = (torch.rand(b, generator=g) * 2 * args.shift - args.shift) * 2 / side
    ty = (torch.rand(b, generator=g) * 2 * args.shift - args.shift) * 2 / side
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2], theta[:, 1, 2] = tx, ty
    ev = laplacian_energy(resize(x, args.size))
    crop_first = laplacian_energy(resize(shift_zoom(x, theta), args.size))
    small_first = laplacian_energy(shift_zoom(resize(x, args.size), theta))
    print(json.dumps(benchmark_header("cpu")))
    print(
        f"{b} crops of {side} px at {args.size} px, Laplacian energy relative to evaluation "
        f"crops: shift the crop, then resize {crop_first / ev:.2f}; resize, then shift "
        f"{small_first / ev:.2f}"
    )


if __name__ == "__main__":
    main()
