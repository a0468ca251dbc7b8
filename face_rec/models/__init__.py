"""Embedding backbones (registry in :mod:`face_rec.models.registry`) and classification heads."""

from face_rec.models.published import load_model

__all__ = ["load_model"]
