"""Image decoding: any file PIL opens, to (H, W, 3) uint8 RGB, with a clear error otherwise."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".pbm", ".pnm", ".bmp", ".webp", ".tif", ".tiff"}
)
#: refuse images over this many pixels instead of exhausting memory (PIL's bomb check is 2x that)
MAX_PIXELS = 100_000_000


class ImageReadError(ValueError):
    """An image file that cannot be decoded; the message names the file and the cause."""


def is_image_file(path: str | Path) -> bool:
    """True when the file name has an image extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode ``path`` to an (H, W, 3) uint8 RGB array, honouring EXIF orientation.

    Greyscale, palette, CMYK, 16-bit and alpha images are converted (alpha is dropped).

    Raises:
        ImageReadError: missing, empty, truncated, too large, or not an image.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(f"{path}: empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ImageReadError(
                        f"{path}: {img.width}x{img.height} exceeds {MAX_PIXELS} pixels; "
                        "downscale it first"
                    )
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb_array(img)
    except ImageReadError:
        raise
    except FileNotFoundError as e:
        raise ImageReadError(f"{path}: file not found") from e
    except (
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as e:
        raise ImageReadError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        grey = np.rint(arr).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()
