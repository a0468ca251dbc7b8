"""Contact sheets: a person sees at a glance whether alignment worked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from face_rec.utils.io import atomic_path


def tile(images: Sequence[np.ndarray], columns: int) -> np.ndarray:
    """Tile equal-size (H, W, 3) uint8 images into a grid, row-major, with 2 px gaps."""
    h, w = images[0].shape[:2]
    rows = -(-len(images) // columns)
    sheet = np.full((rows * (h + 2), columns * (w + 2), 3), 255, np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, columns)
        sheet[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = img
    return sheet


def _save_png(path: Path, sheet: np.ndarray) -> None:
    """zlib level 1: 5x faster than the default 6 (0.06 vs 0.30 s a sheet), files 7% larger."""
    with atomic_path(path) as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG", compress_level=1)


def write_contact_sheets(
    out_dir: Path,
    images: np.ndarray,
    rows: Sequence[dict],
    fallback_thumbs: Sequence[np.ndarray],
    seed: int = 0,
    n_random: int = 64,
    n_fallback: int = 48,
) -> None:
    """Write ``sheet_random.png`` (random aligned ``ok`` crops) and ``sheet_fallbacks.png``
    (each fallback's source thumbnail beside its crop; the first ``n_fallback``)."""
    ok = [r["image_index"] for r in rows if r["status"] == "ok"]
    if ok:
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(ok, size=min(n_random, len(ok)), replace=False))
        _save_png(out_dir / "sheet_random.png", tile([images[i] for i in pick], 8))
    fallbacks = [r["image_index"] for r in rows if r["status"] == "fallback"]
    if fallbacks:
        size = images.shape[1]
        pairs = []
        for idx, thumb in list(zip(fallbacks, fallback_thumbs, strict=True))[:n_fallback]:
            src = np.asarray(Image.fromarray(thumb).resize((size, size)))
            pairs += [src, images[idx]]
        _save_png(out_dir / "sheet_fallbacks.png", tile(pairs, 8))
