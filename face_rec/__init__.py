"""face_rec.

``from face_rec import FaceEmbedder``: embed face photos with any supported model
(:mod:`face_rec.embedder`; imported on first use, so ``import face_rec`` stays light).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from face_rec.embedder import FaceEmbedder

__all__ = ["FaceEmbedder"]


def __getattr__(name: str):
    if name == "FaceEmbedder":
        from face_rec.embedder import FaceEmbedder

        return FaceEmbedder
    raise AttributeError(f"module 'face_rec' has no attribute {name!r}")
