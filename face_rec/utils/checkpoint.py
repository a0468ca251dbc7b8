"""Checkpoint files: one ``torch.save`` dict, written atomically.

A checkpoint holds at least ``model`` (backbone state dict) and ``config`` (the resolved run
config as a plain dict, whose ``model`` entry rebuilds the backbone); training adds head,
optimizer, scheduler, scaler, RNG states and step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from face_rec.models.registry import create_model
from face_rec.utils.io import atomic_path


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save(state)`` to a temporary file, then rename: never a half-written checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """Load a checkpoint dict; a clear error for a missing or unreadable file.

    ``mmap=True`` maps the tensors instead of reading them: a caller that wants only ``config``
    then reads a few pages, not a Partial FC head of millions of centres.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    except Exception as e:
        raise ValueError(
            f"checkpoint {str(path)!r} cannot be read ({type(e).__name__}: {e})"
        ) from e


def model_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the backbone recorded in a checkpoint's config and load its weights; a model
    trained on another input convention (fine-tuned from AdaFace: BGR) comes wrapped as it was
    trained (the checkpoint's ``preprocessing``)."""
    from face_rec.models.preprocess import FACE_REC, Preprocessing, adapt

    ckpt = load_checkpoint(path, map_location)
    try:
        spec = dict(ckpt["config"]["model"])
        state = ckpt["model"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"checkpoint {str(path)!r} lacks 'model' weights or 'config.model'") from e
    spec.pop("_target_", None)
    spec.pop("weights", None)  # the initial weights: the checkpoint's own replace them
    saved = ckpt.get("preprocessing")
    pre = Preprocessing.from_dict(saved) if saved else FACE_REC
    model = adapt(create_model(spec.pop("name"), **spec), pre)
    model.load_state_dict(state)
    return model
