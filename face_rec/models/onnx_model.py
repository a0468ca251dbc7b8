"""An ONNX face-recognition model as a face_rec backbone: :class:`OnnxModel`.

It takes face_rec's input, (B, 3, H, W) RGB in [-1, 1] (``(x - 127.5) / 127.5`` of 8-bit
pixels), converts it to the file's own convention inside ``forward`` and returns the file's
(B, D) embedding as float32: ``python eval_lfw.py model=onnx model.path=w600k_r50.onnx``
evaluates a published model exactly as it evaluates a face_rec checkpoint.

The file's convention, each of colour order, mean and std: the constructor argument when given,
else face_rec's metadata in the file (``python export.py`` writes it), else insightface's. The
metadata keys (string values, JSON-encoded) are read and written by :func:`decode_metadata` and
:func:`encode_metadata`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from face_rec.models.preprocess import Preprocessing, adapt

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -e '.[onnx]'"
#: insightface's recognition models (w600k_r50, glintr100, ...): RGB, (x - 127.5) / 127.5
INSIGHTFACE = Preprocessing("RGB", (127.5, 127.5, 127.5), (127.5, 127.5, 127.5))
#: insightface's MXNet-converted models normalise inside the graph: raw 0..255 RGB
INSIGHTFACE_MXNET = Preprocessing("RGB", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
MARKER_KEY = "face_rec_version"  #: present in every file face_rec exported


def import_onnxruntime():
    """``onnxruntime``, or an ImportError saying how to install it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(
            f"ONNX models need onnxruntime, which is not installed: {INSTALL_HINT}"
        ) from e
    return onnxruntime


def encode_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    """ONNX ``metadata_props``: each value JSON-encoded (a str becomes ``'"RGB"'``)."""
    return {str(k): json.dumps(v, sort_keys=True) for k, v in metadata.items()}


def decode_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """The inverse of :func:`encode_metadata`; a value that is not JSON stays a str."""
    out: dict[str, Any] = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value)
        except (TypeError, ValueError):
            out[key] = value
    return out


def _triple(value: float | Sequence[float], key: str) -> tuple[float, float, float]:
    values = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != 3:
        raise ValueError(f"{key} = {list(values)}: give one number or one per channel (3)")
    return values[0], values[1], values[2]


def insightface_default(path: Path) -> Preprocessing:
    """insightface's ``ArcFaceONNX`` rule for a file without metadata: a graph whose first 8 nodes
    include a ``Sub``/``_minus`` and a ``Mul``/``_mul`` node (an MXNet conversion) takes raw
    0..255 RGB; any other takes RGB ``(x - 127.5) / 127.5``."""
    try:
        import onnx
    except ImportError:
        log.info("onnx is not installed: %s is assumed to take RGB (x - 127.5) / 127.5", path)
        return INSIGHTFACE
    names = [n.name for n in onnx.load(str(path), load_external_data=False).graph.node[:8]]
    sub = any(n.startswith(("Sub", "_minus")) for n in names)
    mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return INSIGHTFACE_MXNET if sub and mul else INSIGHTFACE


def resolve_preprocessing(
    path: Path,
    metadata: Mapping[str, Any],
    colour: str | None,
    mean: float | Sequence[float] | None,
    std: float | Sequence[float] | None,
) -> tuple[Preprocessing, dict[str, str]]:
    """The file's convention, each field from the argument, else the metadata, else insightface's;
    and where each field came from."""
    given = {"colour": colour, "mean": mean, "std": std}
    stored = {k: metadata[k] for k in given if k in metadata} if MARKER_KEY in metadata else {}
    fallback = None
    values, source = {}, {}
    for key, value in given.items():
        if value is not None:
            values[key], source[key] = value, "argument"
            if key in stored and _norm(key, stored[key]) != _norm(key, value):
                log.warning(
                    "%s: %s=%s given, the file's metadata says %s; using %s",
                    path,
                    key,
                    value,
                    stored[key],
                    value,
                )
        elif key in stored:
            values[key], source[key] = stored[key], "metadata"
        else:
            fallback = fallback or insightface_default(path)
            values[key], source[key] = getattr(fallback, key), "insightface default"
    prep = Preprocessing(
        str(values["colour"]).upper(),
        _triple(values["mean"], "mean"),
        _triple(values["std"], "std"),
    )
    return prep, source


def _norm(key: str, value: Any) -> Any:
    return str(value).upper() if key == "colour" else _triple(value, key)


class _Session(nn.Module):
    """An onnxruntime session as a module: (B, 3, S, S) float in the file's convention ->
    (B, D) float32 on the input's device."""

    def __init__(self, session, path: Path) -> None:
        super().__init__()
        self.session, self.path = session, path
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            shapes = [(i.name, i.shape) for i in inputs]
            raise ValueError(f"{path}: expected one (B, 3, H, W) input, found {shapes}")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.input_shape, self.output_shape = list(inputs[0].shape), list(outputs[0].shape)
        self.half = inputs[0].type == "tensor(float16)"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = self.input_shape[2:]
        if (
            x.ndim != 4
            or x.shape[1] != 3
            or any(isinstance(s, int) and s != n for s, n in zip(side, x.shape[2:], strict=True))
        ):
            raise ValueError(
                f"{self.path} takes (B, 3, {side[0]}, {side[1]}) input, got {tuple(x.shape)}: "
                "resize crops to the model's input_size (face_rec.data.augment.resize)"
            )
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        if self.half:
            array = array.astype(np.float16)
        out = self.session.run([self.output_name], {self.input_name: array})[0]
        out = torch.from_numpy(np.asarray(out, np.float32).reshape(len(array), -1))
        return out.to(x.device)


class OnnxModel(nn.Module):
    """(B, 3, H, W) RGB in [-1, 1] -> (B, D) float32 embedding, computed by an ONNX file through
    onnxruntime (imported here; ``pip install -e '.[onnx]'``). The batch is run as given, in
    float32 (a float16 file gets float16 input). Not trainable.

    Args:
        path: the ``.onnx`` file: one (B, 3, H, W) input, the first output is the embedding.
        colour, mean, std: what the file expects, ``RGB``/``BGR`` and per-channel (or one) mean /
            std of 8-bit pixel values, ``(x - mean) / std``. None: face_rec's metadata in the file
            (``python export.py`` writes it), else insightface's convention. insightface's
            w600k / glint360k recognition models (``w600k_r50.onnx``, ``glintr100.onnx``) take RGB
            ``(x - 127.5) / 127.5`` at 112x112: insightface's ``ArcFaceONNX`` calls
            ``cv2.dnn.blobFromImages(imgs, 1 / 127.5, (112, 112), (127.5,) * 3, swapRB=True)`` on
            BGR images, i.e. RGB input; for an MXNet-converted graph (a Sub and a Mul node among
            its first 8) it uses mean 0, std 1, and so does this class when ``onnx`` is
            installed. An argument given wins over the metadata (with a warning when they
            differ).
        providers: onnxruntime execution providers; None: ``["CPUExecutionProvider"]``.
        name: accepted and ignored (the model config's name, ``onnx``).

    Attributes:
        input_size: the file's input side when static, else the metadata's, else 112.
        embedding_dim: D when the file states it, else None.
        preprocessing: the file's :class:`Preprocessing`; ``preprocessing_source``: where each
            field came from (argument, metadata or insightface default).
        metadata: the file's ``metadata_props``, decoded (face_rec's keys, or {} for most
            other files).
    """

    def __init__(
        self,
        path: str | Path,
        colour: Literal["RGB", "BGR"] | None = None,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        providers: list[str] | None = None,
        name: str = "onnx",
    ) -> None:
        super().__init__()
        ort = import_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"ONNX model {str(path)!r} not found: pass model.path=<file.onnx> "
                "(python export.py checkpoint=<run>/checkpoints/best.pt makes one)"
            )
        try:
            session = ort.InferenceSession(
                str(path), providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as e:  # onnxruntime raises its own types for a corrupt file
            raise ValueError(
                f"{str(path)!r} cannot be loaded by onnxruntime ({type(e).__name__}: {e})"
            ) from e
        self.path, self.name = path, name
        self.metadata = decode_metadata(session.get_modelmeta().custom_metadata_map)
        self.preprocessing, self.preprocessing_source = resolve_preprocessing(
            path, self.metadata, colour, mean, std
        )
        runner = _Session(session, path)
        side = runner.input_shape[-1]
        self.input_size = side if isinstance(side, int) else self.metadata.get("input_size", 112)
        dim = runner.output_shape[-1]
        self.embedding_dim = dim if isinstance(dim, int) else self.metadata.get("embedding_dim")
        self.net = adapt(runner, self.preprocessing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def extra_repr(self) -> str:
        p = self.preprocessing
        return f"{self.path}, {p.colour}, mean={p.mean}, std={p.std}, input_size={self.input_size}"
