"""Checkpoint files: one ``torch.save`` dict, written atomically.

A checkpoint holds at least ``model`` (backbone state dict) and ``config`` (the resolved run
config as a plain dict, whose ``model`` entry rebuilds the backbone); training adds head,
optimizer, scheduler, scaler, RNG states and step. With ``trainer.ema_decay`` > 0, ``model`` is
the weight average (what is evaluated) and ``train_model`` the trained weights, with
``ema_updates`` and ``ema_decay``.
"""

from __future__ import annotations

import os
import pickle
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


def safe_load(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    mmap: bool = False,
    trust_pickle: bool = False,
) -> Any:
    """``torch.load(weights_only=True)``: tensors, plain containers and the numpy types of a
    saved RNG state, never code. A file that pickles other objects (some Lightning checkpoints
    store hyper-parameters so) is refused unless ``trust_pickle`` or ``FACE_REC_TRUST_PICKLE=1``
    says its source is trusted: unpickling it can run any code. A corrupt file is an error
    saying so."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} not found")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if not (trust_pickle or os.environ.get("FACE_REC_TRUST_PICKLE") == "1"):
            raise ValueError(
                f"{path} holds more than tensors (torch.load(weights_only=True): "
                f"{str(e).splitlines()[0]}); unpickling it can run code: if you trust its "
                "source, set FACE_REC_TRUST_PICKLE=1 (or load_model(..., trust_pickle=True))"
            ) from e
        return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    except Exception as e:
        raise ValueError(f"{path} cannot be read ({type(e).__name__}: {e})") from e


def _numpy_globals() -> list:
    """The numpy types a face_rec checkpoint's saved RNG state pickles (data, never code)."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """Load a checkpoint dict (:func:`safe_load`); a clear error for a missing or unreadable
    file.

    ``mmap=True`` maps the tensors instead of reading them: a caller that wants only ``config``
    then reads a few pages, not a Partial FC head of millions of centres.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found")
    return safe_load(path, map_location, mmap)


def model_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the backbone recorded in a checkpoint's config and load its weights; a model
    trained on another input convention (fine-tuned from AdaFace: BGR) comes wrapped as it was
    trained (the checkpoint's ``preprocessing``)."""
    return model_from_state(load_checkpoint(path, map_location), path)


def model_from_state(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> nn.Module:
    """:func:`model_from_checkpoint` on a checkpoint already loaded."""
    from face_rec.models.preprocess import FACE_REC, Preprocessing, adapt

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
