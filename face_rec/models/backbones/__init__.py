"""Backbone definitions; importing this package registers them all."""

from face_rec.models.backbones import mobilefacenet, resnet, vit  # noqa: F401
