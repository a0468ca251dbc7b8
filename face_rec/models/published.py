"""Published face-recognition weights in face_rec's backbones, through explicit key maps.

Formats read (:func:`detect_format` tells them apart by their keys):

- ``insightface``: arcface_torch's ``backbone.pth``, a flat state dict of its ``iresnet.py``
  (``conv1``, ``bn1``, ``prelu``, ``layerK.i.{bn1,conv1,bn2,prelu,conv2,bn3}``,
  ``layerK.0.downsample.{0,1}``, ``bn2``, ``fc``, ``features``): face_rec's ``iresnet18`` ...
  ``iresnet200``. Input RGB, (x - 127.5) / 127.5: face_rec's own convention.
- ``adaface``: AdaFace's Lightning ``.ckpt`` (``state_dict`` with ``model.input_layer.*``,
  ``model.body.N.res_layer.*``, ``model.body.N.shortcut_layer.*``, ``model.output_layer.*``):
  face_rec's ``ir18`` ... ``ir101``. Input **BGR**, (x - 127.5) / 127.5; the loaded model
  converts face_rec's RGB input itself (:class:`~face_rec.models.preprocess.InputAdapter`).
- ``face_rec``: a face_rec checkpoint (``model`` + ``config``).

Every tensor is mapped by name and checked by shape; any unmatched, missing or mis-shaped key is
an error that lists the first few and names the format. The architecture is read off the
weights (blocks per stage, width, embedding size, input size) unless ``name`` is given.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from face_rec.models.backbones.resnet import block_stages
from face_rec.models.preprocess import FACE_REC, Preprocessing, adapt
from face_rec.models.registry import create_model

ADAFACE = Preprocessing(colour="BGR")
_IBASIC = ("bn1", "conv1", "bn2", "prelu", "conv2", "bn3")  # insightface names, branch order
_INSIGHTFACE_DEPTHS = {
    (2, 2, 2, 2): "iresnet18",
    (3, 4, 6, 3): "iresnet34",
    (3, 4, 14, 3): "iresnet50",
    (3, 13, 30, 3): "iresnet100",
    (6, 26, 60, 6): "iresnet200",
}
_IR_BLOCKS = {8: "ir18", 16: "ir34", 24: "ir50", 49: "ir101"}
_BLOCKS = {n: sum(d) for d, n in _INSIGHTFACE_DEPTHS.items()} | {
    n: k for k, n in _IR_BLOCKS.items()
}


class WeightsError(ValueError):
    """A weights file that does not fit the model; the message lists the keys."""


# ------------------------------------------------------------------ reading files


def read_weights(
    path: str | Path, trust_pickle: bool = False
) -> tuple[str, dict[str, torch.Tensor], dict]:
    """(format, state dict, the whole loaded object) of a weights file.

    Read with ``torch.load(weights_only=True)``: tensors and plain containers, no code. A file
    that needs more (a Lightning checkpoint pickling its hyper-parameters as objects) is refused
    unless ``trust_pickle`` or the environment's ``FACE_REC_TRUST_PICKLE=1`` says it comes from
    a source you trust: unpickling it can run any code.
    """
    from face_rec.utils.checkpoint import safe_load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights {str(path)!r} not found")
    obj = safe_load(path, trust_pickle=trust_pickle)
    fmt = detect_format(obj, path)
    if fmt == "adaface":
        sd = obj["state_dict"]
        state = {k[len("model.") :]: v for k, v in sd.items() if k.startswith("model.")}
    elif fmt == "insightface":
        state = {_bare(k): v for k, v in obj.items()}
    else:
        state = obj["model"]
    return fmt, state, obj


def _bare(key: str) -> str:
    """A key without DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes."""
    return key.removeprefix("module.").removeprefix("_orig_mod.")


def detect_format(obj: Any, path: str | Path = "file") -> str:
    """``face_rec``, ``insightface`` or ``adaface``; a clear error for anything else."""
    if isinstance(obj, dict) and "model" in obj and "config" in obj:
        return "face_rec"
    state = obj.get("state_dict") if isinstance(obj, dict) else None
    if isinstance(state, dict) and any(k.startswith("model.input_layer.") for k in state):
        return "adaface"
    if isinstance(obj, dict) and any(_bare(k).startswith("layer1.") for k in obj):
        return "insightface"
    keys = list(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
    raise WeightsError(
        f"{path}: not a face_rec checkpoint, an insightface backbone.pth or an AdaFace .ckpt "
        f"(first keys: {keys})"
    )


# ------------------------------------------------------------------ architectures


def insightface_architecture(state: dict[str, torch.Tensor]) -> dict:
    """create_model keywords for an insightface IResNet state dict."""
    depths = tuple(
        1 + max(int(k.split(".")[1]) for k in state if k.startswith(f"layer{s}."))
        for s in range(1, 5)
    )
    if depths not in _INSIGHTFACE_DEPTHS:
        raise WeightsError(f"insightface weights with blocks per stage {depths}: no such IResNet")
    return {
        "name": _INSIGHTFACE_DEPTHS[depths],
        **_neck_sizes(state["conv1.weight"], state["fc.weight"]),
    }


def adaface_architecture(state: dict[str, torch.Tensor]) -> dict:
    """create_model keywords for an AdaFace IR state dict."""
    n = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("body."))
    if n not in _IR_BLOCKS:
        raise WeightsError(f"AdaFace weights with {n} IR blocks: not ir18/ir34/ir50/ir101")
    stem, fc = state["input_layer.0.weight"], state["output_layer.3.weight"]
    return {"name": _IR_BLOCKS[n], **_neck_sizes(stem, fc)}


def _neck_sizes(stem: torch.Tensor, fc: torch.Tensor) -> dict:
    width = stem.shape[0] / 64
    last = max(8, int(round(512 * width)))
    side = math.isqrt(fc.shape[1] // last)
    return {"width": width, "embedding_dim": fc.shape[0], "input_size": side * 16, "dropout": 0.0}


# ------------------------------------------------------------------ key maps


def insightface_key_map(model: nn.Module) -> dict[str, str]:
    """face_rec module path -> insightface module path, for an ``iresnet*`` model."""
    m = {"stem.0": "conv1", "stem.1": "bn1", "stem.2": "prelu"}
    m |= {"neck.bn": "bn2", "neck.fc": "fc", "neck.features": "features"}
    for k, (stage, i) in enumerate(block_stages(model)):
        for j, name in enumerate(_IBASIC):
            m[f"body.{k}.branch.{j}"] = f"layer{stage}.{i}.{name}"
        m[f"body.{k}.shortcut.0"] = f"layer{stage}.{i}.downsample.0"
        m[f"body.{k}.shortcut.1"] = f"layer{stage}.{i}.downsample.1"
    return m


def adaface_key_map(model: nn.Module) -> dict[str, str]:
    """face_rec module path -> AdaFace (``model.`` stripped) module path, for an ``ir*`` model."""
    m = {f"stem.{j}": f"input_layer.{j}" for j in range(3)}
    m |= {"neck.bn": "output_layer.0", "neck.fc": "output_layer.3"}
    m["neck.features"] = "output_layer.4"
    for k in range(len(model.body)):
        m |= {f"body.{k}.branch.{j}": f"body.{k}.res_layer.{j}" for j in range(6)}
        m |= {f"body.{k}.shortcut.{j}": f"body.{k}.shortcut_layer.{j}" for j in range(2)}
    return m


def map_state_dict(
    model: nn.Module, foreign: dict[str, torch.Tensor], key_map: dict[str, str], fmt: str
) -> dict[str, torch.Tensor]:
    """``foreign`` renamed to ``model``'s keys by ``key_map`` (module paths), shapes checked.

    Raises:
        WeightsError: listing the first missing, unexpected and mis-shaped keys.
    """
    own = model.state_dict()
    out, missing, shapes = {}, [], []
    for key, tensor in own.items():
        module, leaf = key.rsplit(".", 1)
        src = f"{key_map.get(module, module)}.{leaf}"
        if src not in foreign and leaf == "num_batches_tracked":
            out[key] = torch.zeros_like(tensor)  # older files lack it; torch fills it in too
        elif src not in foreign:
            missing.append(src)
        elif foreign[src].shape != tensor.shape:
            shapes.append(f"{src} {tuple(foreign[src].shape)} != {tuple(tensor.shape)}")
        else:
            out[key] = foreign[src]
    used = {
        f"{key_map.get(k.rsplit('.', 1)[0], k.rsplit('.', 1)[0])}.{k.rsplit('.', 1)[1]}"
        for k in own
    }
    unexpected = [k for k in foreign if k not in used]
    if missing or unexpected or shapes:
        raise WeightsError(
            f"{fmt} weights do not fit {type(model).__name__}: "
            f"{len(missing)} missing {missing[:5]}, {len(unexpected)} unexpected "
            f"{unexpected[:5]}, {len(shapes)} mis-shaped {shapes[:5]}"
        )
    return out


# ------------------------------------------------------------------ loading


def load_weights(model: nn.Module, path: str | Path, trust_pickle: bool = False) -> Preprocessing:
    """Load a published or face_rec weights file into ``model`` (a face_rec backbone) in place;
    returns the input convention the weights were trained with (a face_rec checkpoint: the one
    it recorded, its input adapter's buffers left out)."""
    return _load_into(model, *read_weights(path, trust_pickle), path)


def _load_into(model: nn.Module, fmt: str, state: dict, obj: dict, path) -> Preprocessing:
    if fmt in ("insightface", "adaface"):
        _check_sizes(model, architecture(fmt, state), path)
    if fmt == "insightface":
        model.load_state_dict(map_state_dict(model, state, insightface_key_map(model), fmt))
        return FACE_REC
    if fmt == "adaface":
        model.load_state_dict(map_state_dict(model, state, adaface_key_map(model), fmt))
        return ADAFACE
    if any(k.startswith("backbone.") for k in state):  # saved behind an input adapter
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    model.load_state_dict(map_state_dict(model, state, {}, fmt))
    saved = obj.get("preprocessing")
    return Preprocessing.from_dict(saved) if saved else FACE_REC


def architecture(fmt: str, state: dict[str, torch.Tensor]) -> dict:
    """create_model keywords read off published weights; a clear error when keys are missing."""
    try:
        if fmt == "insightface":
            return insightface_architecture(state)
        return adaface_architecture(state)
    except (KeyError, ValueError) as e:
        raise WeightsError(f"{fmt} weights lack a key their layout needs ({e})") from e


def _check_sizes(model: nn.Module, arch: dict, path: str | Path) -> None:
    """The configured model must be the weights' architecture and sizes: say which model and
    keys to set instead of a wall of key errors."""
    from face_rec.models.backbones.resnet import ResNetFace

    if not isinstance(model, ResNetFace) or len(model.body) != _BLOCKS[arch["name"]]:
        raise WeightsError(
            f"{path} holds a {arch['name']}, not the configured {type(model).__name__} with "
            f"{len(getattr(model, 'body', []))} blocks: set model={arch['name']}"
        )
    have = {
        "embedding_dim": model.neck.fc.out_features,
        "input_size": model.input_size,
        "width": model.stem[0].out_channels / 64,
    }
    wrong = [f"model.{k}={arch[k]:g} (config: {have[k]:g})" for k in have if arch[k] != have[k]]
    if wrong:
        raise WeightsError(
            f"{path} holds a {arch['name']} of other sizes: set {', '.join(wrong)}; an "
            "experiment may have set them (the default, experiment=cpu_demo: width 0.125, 128-d, "
            "48 px; experiment=cpu_preset: 128-d, 64 px)"
        )


def load_model(
    path: str | Path, name: str | None = None, trust_pickle: bool = False, **kwargs
) -> nn.Module:
    """The backbone in a weights file, in eval mode, whatever the format (face_rec checkpoint,
    insightface ``backbone.pth``, AdaFace ``.ckpt``, ``.onnx``).

    It takes (B, 3, 112, 112) RGB in [-1, 1] (face_rec's input; a model trained on another
    colour order or normalisation converts inside) and returns the unnormalised (B, D)
    embedding. ``name`` names the architecture where the file does not record it (by default it
    is read off the weights); ``kwargs`` go to :func:`create_model` (or to the ONNX wrapper);
    ``trust_pickle``: see :func:`read_weights`.
    """
    if Path(path).suffix.lower() == ".onnx":
        from face_rec.models.onnx_model import OnnxModel

        return OnnxModel(str(path), **kwargs).eval()
    return model_from_weights(*read_weights(path, trust_pickle), path, name, **kwargs)


def model_from_weights(
    fmt: str, state: dict, obj: dict, path: str | Path, name: str | None = None, **kwargs
) -> nn.Module:
    """:func:`load_model` on a file :func:`read_weights` already read (its three results)."""
    if fmt == "face_rec":
        from face_rec.utils.checkpoint import model_from_state

        return model_from_state(obj, path).eval()
    arch = architecture(fmt, state) | kwargs
    model = create_model(name or arch.pop("name"), **{k: v for k, v in arch.items() if k != "name"})
    return adapt(model, _load_into(model, fmt, state, obj, path)).eval()


def adapt_loaded(model: nn.Module, path: str | Path) -> nn.Module:
    """Load ``path`` into ``model`` and wrap it for face_rec's input when the weights need it."""
    return adapt(model, load_weights(model, path))
