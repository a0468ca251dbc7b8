"""Batched embedding of aligned crops, with horizontal-flip test-time augmentation."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from face_rec.data.augment import resize


@torch.inference_mode()
def embed_crops(
    model: nn.Module,
    crops: np.ndarray,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    flip: bool = True,
    progress: bool = False,
    normalize: bool = True,
) -> np.ndarray:
    """L2-normalised embeddings of aligned crops (``normalize=False``: as the model outputs
    them, e.g. to study embedding norms).

    Args:
        crops: (N, H, W, 3) uint8 RGB (a memory-mapped pack slice is fine).
        flip: ``normalize(f(x) + f(flip(x)))``; else ``normalize(f(x))``.

    Crops are resized to ``model.input_size`` when the model has one and it differs.

    Returns:
        (N, D) float32, unit rows unless ``normalize`` is False.
    """
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    out = []
    try:
        for s in tqdm(
            range(0, len(crops), batch_size), desc="embed", disable=not progress, unit="batch"
        ):
            x = torch.from_numpy(np.array(crops[s : s + batch_size], dtype=np.uint8))
            x = x.to(device).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
            x = resize(x, getattr(model, "input_size", None))
            feats = model(x)
            if flip:
                feats = feats + model(x.flip(3))
            feats = feats.float()
            out.append((F.normalize(feats, dim=1) if normalize else feats).cpu())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, 0), np.float32)
    return torch.cat(out).numpy()
