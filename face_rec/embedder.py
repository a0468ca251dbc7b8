"""Embed face photos in Python: ``FaceEmbedder.from_checkpoint(path).embed(["a.jpg", ...])``.

Raw photos go through the alignment stage's own code (MTCNN, the large-and-central face, the
similarity warp onto the ArcFace template, the centred-crop fallback when no face is found:
:mod:`face_rec.align.run`), so a photo embedded here gets the crop ``align.py`` would give it;
the crops are embedded with :func:`face_rec.eval.embed.embed_crops` (flip TTA), as evaluation
does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn
from torch.nn import functional as F

# the alignment stage's per-image steps (batched detection with crash isolation and box-reduced
# large images; warp or centred-crop fallback), reused so that both paths give the same crops
from face_rec.align.run import AlignSettings, crop_face, detect_all
from face_rec.data.images import ImageReadError, _to_rgb_array, load_rgb
from face_rec.eval.embed import embed_crops

#: one face photo or crop: a path, an (H, W, 3) uint8 RGB array or a PIL image
ImageInput = str | os.PathLike | np.ndarray | Image.Image


class FaceEmbedder:
    """A face-embedding model with its preprocessing: photos (or aligned crops) in, unit
    embeddings out.

    Args:
        model: maps (B, 3, H, W) RGB in [-1, 1] to unnormalised (B, D) embeddings
            (:func:`face_rec.models.load_model`); resized to ``model.input_size`` when it has one.
        device: ``cpu``, ``cuda`` (``cuda:1``, ...) or ``auto``; the model and the detector run
            there.
        batch_size: inputs decoded, aligned and embedded together.
        flip: embedding = ``normalize(f(x) + f(flip(x)))``; else ``normalize(f(x))``.
        align: detect and align raw photos (default); False: the inputs are aligned square crops
            (e.g. 112x112 on the ArcFace template) and are only resized to the model's input.
        detector: an object with ``detect(list of (H, W, 3) uint8) -> list[Face | None]``;
            default :class:`face_rec.align.detect.FaceDetector` (MTCNN, min face 20 px), built
            on first use.
        settings: crop size, fallback crop fraction, detection batch and size limit
            (:class:`face_rec.align.run.AlignSettings`; default its defaults).
    """

    def __init__(
        self,
        model: nn.Module,
        device: str = "cpu",
        batch_size: int = 64,
        flip: bool = True,
        align: bool = True,
        detector: Any | None = None,
        settings: AlignSettings | None = None,
    ) -> None:
        self.device = device = _resolve(device)
        self.model = model.to(device).eval()
        self.batch_size = int(batch_size)
        self.flip = bool(flip)
        self.align = bool(align)
        self.settings = settings or AlignSettings()
        self._detector = detector
        self._dim: int | None = None

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, name: str | None = None, device: str = "cpu", **options: Any
    ) -> FaceEmbedder:
        """Load any weights file :func:`face_rec.models.load_model` reads (face_rec checkpoint,
        insightface ``backbone.pth``, AdaFace ``.ckpt``, ``.onnx``); ``name`` names the
        architecture where the file does not record it; ``options``: the constructor's."""
        from face_rec.models import load_model

        device, kwargs = _resolve(device), {}
        if str(path).lower().endswith(".onnx") and device.startswith("cuda"):
            kwargs["providers"] = ["CUDAExecutionProvider", "CPUExecutionProvider"]  # GPU build
        return cls(load_model(path, name, **kwargs), device, **options)

    @property
    def detector(self) -> Any:
        """The face detector (built on first use)."""
        if self._detector is None:
            from face_rec.align.detect import FaceDetector

            self._detector = FaceDetector(device=self.device)
        return self._detector

    # ------------------------------------------------------------------ public API

    def embed(self, inputs: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """(N, D) float32 unit embeddings, one row per input.

        Raises:
            ImageReadError: an input could not be read (the message names each such file and
                why); :meth:`embed_with_quality` gives a NaN row and a ``failed`` status instead.
        """
        emb, _, status = self.embed_with_quality(inputs)
        bad = [s.removeprefix("failed: ") for s in status if s.startswith("failed")]
        if bad:
            raise ImageReadError(
                f"{len(bad)} of {len(status)} inputs could not be embedded: "
                + "; ".join(bad[:5])
                + (" ..." if len(bad) > 5 else "")
                + ". Fix or drop them, or call embed_with_quality(), which returns NaN rows and "
                "a 'failed' status for them"
            )
        return emb

    def embed_with_quality(
        self, inputs: ImageInput | Sequence[ImageInput]
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Embed every input; a bad one costs only its own row.

        Returns:
            embeddings: (N, D) float32, unit rows; NaN rows where the status is ``failed``.
            quality: (N,) float32, the feature norm: the L2 norm of the unnormalised feature
                ``f(x) + f(flip(x))`` (``f(x)`` when ``flip`` is False); NaN where failed.
                Low norms go with blurred, tiny, occluded or non-face crops.
            status: per input ``ok`` (face found and aligned), ``fallback`` (no confident face:
                a centred crop was embedded) or ``failed: <reason>`` (unreadable).
        """
        items = _as_list(inputs)
        embs, quals, status = [], [], []
        for s in range(0, len(items), self.batch_size):
            crops, st = self.prepare(items[s : s + self.batch_size], first_index=s)
            e, q = self.embed_aligned(crops)
            embs.append(e)
            quals.append(q)
            status += st
        if not items:
            return np.zeros((0, self.dim), np.float32), np.zeros(0, np.float32), []
        return np.concatenate(embs), np.concatenate(quals), status

    # ------------------------------------------------------------------ the two steps

    def prepare(
        self, items: Sequence[ImageInput], align: bool | None = None, first_index: int = 0
    ) -> tuple[list[np.ndarray | None], list[str]]:
        """Decode (and unless ``align`` is False, default ``self.align``, detect and align)
        ``items``. Returns the crops ((S, S, 3) uint8, None where failed) and the statuses.
        Messages call an input that is not a path ``input <first_index + its index>``."""
        align = self.align if align is None else align
        names = _names(items, first_index)
        images, status = [], []
        for i, item in enumerate(items):
            try:
                images.append(to_rgb(item, names[i]))
                status.append("ok")
            except ImageReadError as e:
                images.append(None)
                status.append(f"failed: {e}")
        if not align:
            for i, img in enumerate(images):
                if img is not None and img.shape[0] != img.shape[1]:
                    images[i] = None
                    status[i] = (
                        f"failed: {names[i]}: a {img.shape[1]}x{img.shape[0]} image is not "
                        "a square aligned crop (embed raw photos with align=True)"
                    )
            return images, status
        faces = detect_all(images, self.detector, self.settings)
        crops: list[np.ndarray | None] = [None] * len(images)
        for i, (img, face) in enumerate(zip(images, faces, strict=True)):
            if img is not None:
                crops[i], reason = crop_face(img, face, self.settings)
                status[i] = "fallback" if reason else "ok"
        return crops, status

    @torch.inference_mode()
    def embed_aligned(
        self, crops: Sequence[np.ndarray | None] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Unit embeddings (N, D) and feature norms (N,) of aligned crops ((S, S, 3) uint8 each,
        or one (N, S, S, 3) array); None entries give NaN rows. Crops of one size are embedded
        together, ``batch_size`` at a time."""
        n = len(crops)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, c in enumerate(crops):
            if c is not None:
                groups.setdefault(tuple(c.shape), []).append(i)
        emb, quality = None, np.full(n, np.nan, np.float32)
        for idx in groups.values():
            if isinstance(crops, np.ndarray):
                batch = crops[idx]
            else:
                batch = np.stack([crops[i] for i in idx])
            raw = embed_crops(
                self.model, batch, self.batch_size, self.device, self.flip, normalize=False
            )
            feats = torch.from_numpy(raw)
            if emb is None:
                self._dim = feats.shape[1]
                emb = np.full((n, self._dim), np.nan, np.float32)
            emb[idx] = F.normalize(feats, dim=1).numpy()
            quality[idx] = feats.norm(dim=1).numpy()
        if emb is None:  # nothing to embed: NaN rows of the model's width
            emb = np.full((n, self.dim), np.nan, np.float32)
        return emb, quality

    @property
    def dim(self) -> int:
        """The embedding size D (found by embedding one blank crop, once)."""
        if self._dim is None:
            side = getattr(self.model, "input_size", None) or self.settings.size
            blank = np.zeros((1, side, side, 3), np.uint8)
            self._dim = int(embed_crops(self.model, blank, 1, self.device, False).shape[1])
        return self._dim


# ---------------------------------------------------------------------------- inputs


def _resolve(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else str(device)


def to_rgb(item: ImageInput, name: str = "input") -> np.ndarray:
    """(H, W, 3) uint8 RGB from a path (any format PIL reads; EXIF orientation honoured), a PIL
    image, or an (H, W, 3) / (H, W) / (H, W, 4) uint8 array (alpha dropped).

    Raises:
        ImageReadError: unreadable file or unsupported input (the message names it).
    """
    if isinstance(item, (str, os.PathLike)):
        return load_rgb(item)
    if isinstance(item, np.ndarray):
        if (
            item.dtype != np.uint8
            or item.ndim not in (2, 3)
            or (item.ndim == 3 and item.shape[2] not in (3, 4))
        ):
            raise ImageReadError(
                f"{name}: expected an (H, W, 3) uint8 RGB array, got {item.dtype} {item.shape}"
            )
        if item.ndim == 2:
            return np.repeat(item[..., None], 3, axis=2)
        return np.ascontiguousarray(item[..., :3])
    if isinstance(item, Image.Image):
        try:
            return _to_rgb_array(ImageOps.exif_transpose(item))
        except (OSError, ValueError, SyntaxError) as e:
            raise ImageReadError(f"{name}: cannot decode the PIL image ({e})") from e
    raise ImageReadError(
        f"{name}: unsupported type {type(item).__name__}; pass a path, a PIL image or an "
        "(H, W, 3) uint8 RGB array"
    )


def _as_list(inputs: ImageInput | Sequence[ImageInput]) -> list:
    """One input or many: a path, PIL image or (H, W, 3) array is one; a (N, H, W, 3) array or a
    sequence is many."""
    if isinstance(inputs, (str, os.PathLike)):
        return [inputs]
    if isinstance(inputs, np.ndarray):
        return list(inputs) if inputs.ndim == 4 else [inputs]
    if isinstance(inputs, Sequence):
        return list(inputs)
    return [inputs]  # a PIL image


def _names(items: Sequence[ImageInput], first_index: int = 0) -> list[str]:
    """How messages name each input: its path, else ``input <index>``."""
    return [
        str(x) if isinstance(x, (str, os.PathLike)) else f"input {first_index + i}"
        for i, x in enumerate(items)
    ]
