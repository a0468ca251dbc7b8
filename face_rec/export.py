"""Export a face_rec model for deployment, checked against torch at export time.

:func:`export_onnx` writes an ONNX file: input ``input`` (B, 3, S, S) float32, output
``embedding`` (B, D) float32, unnormalised, the batch axis dynamic; the file's input convention
(colour order, mean, std), the alignment template, the model and its training run are recorded
in its ``metadata_props`` (string keys, JSON-encoded values;
:func:`face_rec.models.onnx_model.decode_metadata` reads them back).
:func:`export_torchscript` writes a traced TorchScript module with the same metadata.

Before the file is renamed into place, the exported model and the torch model embed the same
crops (a whole batch and a batch of one) and must agree within ``atol + rtol * max |embedding|``
(float32 rounding alone reaches 1e-4 on a ResNet-50's embeddings of magnitude 3: a fixed
absolute bound cannot hold for every model); else :class:`ParityError` and nothing is written.
:func:`export_from_config` is ``python export.py``.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from face_rec.config_check import check_config
from face_rec.data.augment import resize
from face_rec.models.onnx_model import (
    INSTALL_HINT,
    MARKER_KEY,
    encode_metadata,
    import_onnxruntime,
)
from face_rec.models.preprocess import FACE_REC, Preprocessing, convert
from face_rec.utils.io import atomic_path, write_json

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
TORCHSCRIPT_METADATA = "face_rec_metadata.json"  #: the ``_extra_files`` entry of a TorchScript


class ParityError(RuntimeError):
    """The exported model's embeddings differ from torch's by more than the tolerance."""


# --- metadata


def face_rec_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("face_rec")
    except PackageNotFoundError:
        return "unknown"


def export_metadata(
    model: nn.Module, preprocessing: Preprocessing, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """face_rec's metadata of an exported model (values plain JSON types); ``extra`` (e.g.
    ``model_name``, ``training_config_summary``) is added and wins."""
    from face_rec.align.warp import ARCFACE_TEMPLATE_112

    return {
        MARKER_KEY: face_rec_version(),
        "input_size": _input_size(model),
        "colour": preprocessing.colour,
        "mean": list(preprocessing.mean),
        "std": list(preprocessing.std),
        "alignment_template": {"size": 112, "points": ARCFACE_TEMPLATE_112.tolist()},
        "embedding_dim": getattr(model, "embedding_dim", None),
        "embedding_normalized": False,
        "model_name": type(model).__name__,
        "training_config_summary": {},
        "torch_version": torch.__version__,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **dict(extra or {}),
    }


def training_config_summary(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """A short record of a checkpoint's resolved training config: backbone settings, head,
    training data, steps, seed, run name (keys the config lacks are left out)."""
    if not config:
        return {}
    model = config.get("model") or {}
    data = config.get("train_data") or {}
    sources = sorted((data.get("sources") or {}).keys())
    other = [data.get(k) for k in ("aligned_folder", "rec") if data.get(k)]
    summary = {
        "model": {
            k: model[k]
            for k in ("name", "embedding_dim", "input_size", "width", "dropout")
            if k in model
        },
        "head": (config.get("head") or {}).get("name"),
        "train_data": sources + [str(p) for p in other],
        "max_steps": (config.get("trainer") or {}).get("max_steps"),
        "seed": config.get("seed"),
        "run_name": config.get("run_name"),
        "partial_fc": config.get("partial_fc"),
    }
    return {k: v for k, v in summary.items() if v not in (None, [], {})}


# --- parity inputs


def _input_size(model: nn.Module) -> int:
    return int(getattr(model, "input_size", None) or 112)


def crops_to_input(
    crops: np.ndarray, size: int, preprocessing: Preprocessing = FACE_REC
) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB crops -> (N, 3, size, size) float32 in ``preprocessing``'s
    convention, resized as evaluation resizes (:func:`face_rec.eval.embed.embed_crops`)."""
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
        raise ValueError(
            f"sample crops must be (N, H, W, 3) uint8 RGB, got {crops.shape} {crops.dtype}"
        )
    x = torch.from_numpy(np.array(crops)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return convert(resize(x, size), preprocessing).contiguous()


def parity_inputs(
    sample_crops: np.ndarray | None,
    size: int,
    preprocessing: Preprocessing = FACE_REC,
    n_random: int = 8,
    seed: int = 0,
) -> tuple[torch.Tensor, str]:
    """(the parity batch (N, 3, size, size), ``"real"`` or ``"random"``): the given crops, else
    ``n_random`` seeded uniform-noise crops."""
    if sample_crops is not None and len(sample_crops):
        return crops_to_input(sample_crops, size, preprocessing), "real"
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (n_random, size, size, 3), dtype=np.uint8)
    return crops_to_input(noise, size, preprocessing), "random"


def _parity(
    reference, exported, x: torch.Tensor, atol: float, rtol: float, what: str
) -> dict[str, Any]:
    """Run both on ``x`` and on ``x[:1]`` (the dynamic batch axis); ParityError when the largest
    difference of the raw embeddings exceeds ``atol + rtol * max |torch embedding|`` or that of
    the L2-normalised embeddings (what verification compares) exceeds ``atol``."""
    diffs, unit_diffs, scale = [], [], 0.0
    with torch.inference_mode():
        for batch in (x, x[:1]):
            ref = reference(batch).float().numpy()
            out = np.asarray(exported(batch), np.float32)
            if out.shape != ref.shape:
                raise ParityError(f"{what}: output {out.shape}, torch gives {ref.shape}")
            diffs.append(float(np.abs(out - ref).max()))
            unit_diffs.append(float(np.abs(_unit(out) - _unit(ref)).max()))
            scale = max(scale, float(np.abs(ref).max()))
    diff, tolerance, unit_diff = max(diffs), atol + rtol * scale, max(unit_diffs)
    result = {
        "max_abs_diff": diff,
        "max_abs_diff_normalized": unit_diff,
        "max_abs_embedding": scale,
        "max_rel_diff": diff / scale if scale > 0 else float("inf"),
        "n_images": len(x),
        "tolerance": tolerance,
        "passed": bool(diff <= tolerance and unit_diff <= atol),
    }
    if not result["passed"]:
        raise ParityError(
            f"{what} differs from the torch model by up to {diff:.3g} (tolerance {atol:g} + "
            f"{rtol:g} x the largest embedding value {scale:.3g} = {tolerance:.3g}), "
            f"{unit_diff:.3g} after L2 normalisation (tolerance {atol:g}) on {len(x)} "
            "crops: the file was not written. A model whose batch-norm statistics were never "
            "trained can have huge activations; else try another opset or raise the tolerance "
            "(parity_atol=, parity_rtol=)"
        )
    return result


def _unit(e: np.ndarray) -> np.ndarray:
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def _prepare(model: nn.Module) -> nn.Module:
    """A float32 CPU copy in eval mode: the caller's model is left as it was."""
    return copy.deepcopy(model).float().cpu().eval()


# --- ONNX


#: the dynamo exporter's chatty loggers -> the level shown while it runs: its optimiser passes
#: log at INFO, and it announces converting its opset-18 graph down to ``opset`` (the file's
#: opset is read back and reported instead)
EXPORTER_LOGGERS = {
    "onnx_ir": logging.WARNING,
    "onnxscript": logging.WARNING,
    "onnxscript.version_converter": logging.ERROR,
    "torch.onnx._internal.exporter._compat": logging.ERROR,
}


@contextmanager
def _quiet(levels: Mapping[str, int]) -> Iterator[None]:
    """The named loggers at (at least) the given levels inside the block."""
    loggers = {logging.getLogger(name): level for name, level in levels.items()}
    saved = {lg: lg.level for lg in loggers}
    for lg, level in loggers.items():
        lg.setLevel(max(level, lg.getEffectiveLevel()))
    try:
        yield
    finally:
        for lg, level in saved.items():
            lg.setLevel(level)


def _torch_onnx_export(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> str:
    """``torch.onnx.export`` to ``path``: the torch.export-based (dynamo) exporter, else the
    legacy TorchScript-based one when dynamo is unavailable (no onnxscript) or fails.
    Returns which one wrote the file."""
    names = {"input_names": ["input"], "output_names": ["embedding"], "opset_version": opset}
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency)

        with _quiet(EXPORTER_LOGGERS):
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                external_data=False,
                verbose=False,
                **names,
            )
        return "dynamo"
    except Exception as e:  # ImportError, torch.export failures, translation errors
        log.warning(
            "dynamo ONNX export failed (%s: %s); using the legacy TorchScript-based exporter "
            "(deprecated upstream)",
            type(e).__name__,
            str(e).splitlines()[0] if str(e) else "",
        )
    with warnings.catch_warnings():
        # it is deprecated upstream: said once, in the warning above
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
            **names,
        )
    return "legacy"


def export_onnx(
    model: nn.Module,
    path: str | Path,
    preprocessing: Preprocessing = FACE_REC,
    metadata: Mapping[str, Any] | None = None,
    sample_crops: np.ndarray | None = None,
    opset: int = 17,
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> dict[str, Any]:
    """Write ``model`` as an ONNX file at ``path`` (atomically), checked against torch.

    Args:
        model: (B, 3, S, S) -> (B, D) embedding, in ``preprocessing``'s input convention (a
            face_rec model, adapted or not, takes face_rec's: :data:`FACE_REC`); exported as is,
            on the CPU in float32, S = ``model.input_size`` (112 when it has none).
        metadata: added to :func:`export_metadata`'s (``model_name``,
            ``training_config_summary``, ...).
        sample_crops: (N, H, W, 3) uint8 RGB aligned crops for the parity check, resized to S;
            None: 8 seeded random crops (the result says ``crops: random``).
        opset: the ONNX opset (the dynamo exporter builds opset 18 and converts down; the
            result's ``opset`` is the file's).
        atol, rtol: the largest embedding difference accepted is ``atol + rtol * max |e|``
            over the torch embeddings e.

    Returns:
        ``{max_abs_diff, max_abs_embedding, max_rel_diff, n_images, tolerance, passed, crops,
        path, format, exporter, opset, metadata}``; ``crops``: ``real`` (given) or ``random``.

    Raises:
        ParityError: onnxruntime's embeddings differ from torch's by more than the tolerance
            (nothing is written).
        ImportError: onnx or onnxruntime missing (``pip install -e '.[onnx]'``).
    """
    try:
        import onnx
    except ImportError as e:
        raise ImportError(f"ONNX export needs onnx and onnxruntime: {INSTALL_HINT}") from e
    ort = import_onnxruntime()
    model, path = _prepare(model), Path(path)
    x, kind = parity_inputs(sample_crops, _input_size(model), preprocessing)
    meta = export_metadata(model, preprocessing, metadata)
    with atomic_path(path) as tmp:
        exporter = _torch_onnx_export(model, x[:2], tmp, opset)
        proto = onnx.load(str(tmp))
        meta["embedding_dim"] = meta["embedding_dim"] or _static(proto.graph.output[0], -1)
        meta["exporter"], meta["opset"] = exporter, _opset(proto)
        for key, value in encode_metadata(meta).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])

        def run(batch: torch.Tensor) -> np.ndarray:
            return session.run(["embedding"], {"input": batch.numpy()})[0]

        result = _parity(model, run, x, atol, rtol, f"ONNX export of {meta['model_name']}")
    return {
        **result,
        "crops": kind,
        "path": str(path),
        "format": "onnx",
        "exporter": exporter,
        "opset": meta["opset"],
        "metadata": meta,
    }


def _opset(proto) -> int | None:
    """The default-domain opset of an ONNX model."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _static(value_info, axis: int) -> int | None:
    dim = value_info.type.tensor_type.shape.dim[axis]
    return dim.dim_value if dim.HasField("dim_value") else None


# --- TorchScript


def export_torchscript(
    model: nn.Module,
    path: str | Path,
    preprocessing: Preprocessing = FACE_REC,
    metadata: Mapping[str, Any] | None = None,
    sample_crops: np.ndarray | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> dict[str, Any]:
    """Write ``model`` traced (``torch.jit.trace``) at ``path``, with the metadata as the extra
    file ``face_rec_metadata.json`` (``torch.jit.load(path, _extra_files={...: ""})``); the
    parity check and arguments as :func:`export_onnx`'s.

    TorchScript is deprecated upstream: torch 2.14 warns that ``torch.jit.trace`` is deprecated
    in favour of ``torch.export`` / ``torch.compile``. Prefer ONNX for deployment.
    """
    model, path = _prepare(model), Path(path)
    x, kind = parity_inputs(sample_crops, _input_size(model), preprocessing)
    meta = {**export_metadata(model, preprocessing, metadata), "exporter": "torch.jit.trace"}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.jit.*")
        with torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.trace(model, x[:2], check_trace=False)  # the parity check below
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_METADATA: json.dumps(meta)})
            loaded = torch.jit.load(str(tmp))
            result = _parity(model, loaded, x, atol, rtol, f"TorchScript of {meta['model_name']}")
    return {**result, "crops": kind, "path": str(path), "format": "torchscript", "metadata": meta}


# --- python export.py


def parity_crops(pack: str | Path | None, n: int) -> np.ndarray | None:
    """The first ``n`` crops of a complete pack, or None (with a warning) when there is none."""
    from face_rec.data.pack import open_images, read_summary

    if pack and read_summary(pack) is not None:
        return np.asarray(open_images(pack)[:n])
    log.warning(
        "no complete pack at %s: the export's parity check runs on random crops "
        "(python align.py data=lfw makes one; or parity_pack=<pack dir>)",
        pack,
    )
    return None


def export_from_config(cfg: DictConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Run ``export.py``: the checkpoint's model (a face_rec checkpoint, an insightface
    ``backbone.pth`` or an AdaFace ``.ckpt``: :func:`face_rec.models.load_model`) exported as
    ``cfg.format`` to ``cfg.output`` (default: beside the checkpoint, ``<stem>.onnx`` /
    ``<stem>.torchscript.pt``), a summary line printed, and (with ``out_dir``) ``export.json``
    written there. Returns the parity dict of :func:`export_onnx`."""
    from face_rec.models.published import architecture, model_from_weights, read_weights

    check_config(cfg)
    checkpoint = Path(cfg.checkpoint)
    output = Path(cfg.output) if cfg.output else checkpoint.with_suffix(SUFFIXES[cfg.format])
    if output.resolve() == checkpoint.resolve():
        raise ValueError(f"output {str(output)!r} is the checkpoint itself: choose another path")
    fmt, state, obj = read_weights(checkpoint)
    config = (obj.get("config") or {}) if fmt == "face_rec" else {}
    name = (config.get("model") or {}).get("name") or (
        architecture(fmt, state)["name"] if fmt != "face_rec" else None
    )
    # read once; the model takes face_rec's input whatever the file's convention
    model = model_from_weights(fmt, state, obj, checkpoint)
    metadata = {
        "model_name": name or type(model).__name__,
        "source_format": fmt,
        "training_config_summary": training_config_summary(config),
        "checkpoint": checkpoint.name,
    }
    crops = parity_crops(cfg.parity_pack, cfg.parity_images)
    kwargs = {
        "metadata": metadata,
        "sample_crops": crops,
        "atol": float(cfg.parity_atol),
        "rtol": float(cfg.parity_rtol),
    }
    if cfg.format == "onnx":
        result = export_onnx(model, output, FACE_REC, opset=cfg.opset, **kwargs)
    else:
        result = export_torchscript(model, output, FACE_REC, **kwargs)
    if out_dir is not None:
        write_json(Path(out_dir) / "export.json", {"checkpoint": str(checkpoint), **result})
    print(summary_line(result))
    return result


def summary_line(r: Mapping[str, Any]) -> str:
    m = r["metadata"]
    how = f"opset {r['opset']}, {r['exporter']} exporter" if r["format"] == "onnx" else "traced"
    return (
        f"exported {m['model_name']} -> {r['path']} ({r['format']}, {how}); input (B, 3, "
        f"{m['input_size']}, {m['input_size']}) {m['colour']} (x - {_per_channel(m['mean'])}) / "
        f"{_per_channel(m['std'])}, embedding (B, {m['embedding_dim']}) unnormalised; parity "
        f"max |diff| {r['max_abs_diff']:.2g} over {r['n_images']} {r['crops']} crops (passed)"
    )


def _per_channel(values: list[float]) -> str:
    return (
        f"{values[0]:g}"
        if len(set(values)) == 1
        else "(" + ", ".join(f"{v:g}" for v in values) + ")"
    )
