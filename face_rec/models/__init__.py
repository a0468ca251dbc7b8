"""Embedding backbones (registry in :mod:`face_rec.models.registry`) and classification heads."""
