"""One registry and one factory for every backbone: ``create_model("iresnet50", ...)``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a backbone constructor under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"backbone {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered backbones, sorted."""
    _import_backbones()
    return sorted(_MODELS)


def create_model(name: str, weights: str | None = None, **kwargs) -> nn.Module:
    """Build the backbone ``name``: a module mapping (B, 3, H, W) in [-1, 1] to (B, D) embeddings.

    ``weights``: a face_rec checkpoint, insightface ``backbone.pth`` or AdaFace ``.ckpt`` loaded
    into it (:mod:`face_rec.models.published`); a model trained on another input convention
    (AdaFace: BGR) comes wrapped so that it still takes face_rec's RGB input.

    Raises:
        ValueError: unknown name (the message lists the registered ones).
    """
    _import_backbones()
    if name not in _MODELS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(sorted(_MODELS))}")
    model = _MODELS[name](**kwargs)
    if weights:
        from face_rec.models.published import adapt_loaded

        model = adapt_loaded(model, weights)
    return model


def _import_backbones() -> None:
    from face_rec.models import backbones  # noqa: F401  (registers on import)
