"""Evaluation embedding throughput: grad mode, layout, batch size and ONNX Runtime, side by side.

    python benchmarks/embed_speed.py                # mobilefacenet at 64 px, iresnet50 at 112
    python benchmarks/embed_speed.py --models iresnet50:112 --n 512 --out logs/embed.json
    python benchmarks/embed_speed.py --quick        # tiny sizes, seconds (the smoke test)

For each backbone (``name:input_size``; random weights whose BatchNorm statistics are measured on
the crops, so activations are as tame as a trained model's), ``--n`` random 112x112 uint8 crops
(the pack's side; resized to the model's input as evaluation does) are embedded with flip TTA
(``normalize(f(x) + f(flip x))``; ``--no-flip`` for one pass) by:

- ``embed_crops``: :func:`face_rec.eval.embed.embed_crops` itself, as evaluation calls it (at
  ``--baseline-batch``, evaluation's ``eval.batch_size``; the reference embeddings every other
  path is checked against);
- torch paths: the same steps (uint8 -> [-1, 1] -> resize -> model -> flip -> normalise) under
  ``torch.no_grad`` or ``torch.inference_mode``, the model and the batch contiguous (NCHW) or
  channels_last, or only the batch channels_last (``channels_last_input``: the convolutions
  then run channels_last with the model's weights as they are), at each ``--batches`` size;
- onnxruntime (when importable): the model exported by :func:`face_rec.export.export_onnx`
  (parity-checked there) and run by :class:`face_rec.models.onnx_model.OnnxModel` on the CPU
  provider (its default threads), at each batch size.

Stage 1 times grad mode x layout at ``--baseline-batch`` (and ``embed_crops``); stage 2 the other
batch sizes with stage 1's fastest grad mode and layout; stage 3 onnxruntime at every batch size
(``--full``: every torch combination in stage 1 instead). Within a stage the ``--repeats`` passes
run round-robin over the paths (this VM's speed drifts over minutes: each round sees the same
state); images/s is the median. Ratios are against the baseline path (no_grad, contiguous,
``--baseline-batch``) measured in the same process. A path is correct when its embeddings are
within ``--atol`` (max |difference| of the unit vectors) of ``embed_crops``'s.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from face_rec.data.augment import resize  # noqa: E402
from face_rec.eval.embed import embed_crops  # noqa: E402
from face_rec.models.registry import create_model  # noqa: E402
from face_rec.utils.allocator import keep_freed_memory  # noqa: E402
from face_rec.utils.io import write_json  # noqa: E402
from face_rec.utils.machine import benchmark_header  # noqa: E402

CROP = 112  #: the side of the packed crops evaluation reads
#: the batch's memory format per layout; "channels_last" also converts the model (a copy),
#: "channels_last_input" leaves the model's weights as they are (what embed_crops can do to the
#: training model it is given during validation without touching it)
LAYOUTS = {
    "contiguous": torch.contiguous_format,
    "channels_last": torch.channels_last,
    "channels_last_input": torch.channels_last,
}
GRAD_MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


@dataclass(frozen=True)
class Variant:
    """One embedding path: engine ``torch`` (grad mode, layout) or ``onnxruntime``, batch size."""

    engine: str
    grad: str
    layout: str
    batch: int

    @property
    def label(self) -> str:
        if self.engine == "embed_crops":
            return f"embed_crops (evaluation's path), batch {self.batch}"
        if self.engine == "onnxruntime":
            return f"onnxruntime CPU, batch {self.batch}"
        return f"torch {self.grad}, {self.layout}, batch {self.batch}"


# ------------------------------------------------------------------ models and inputs


def random_crops(n: int, seed: int = 0) -> np.ndarray:
    """(n, 112, 112, 3) uint8 RGB noise crops, seeded."""
    return np.random.default_rng(seed).integers(0, 256, (n, CROP, CROP, 3), dtype=np.uint8)


def crops_to_batch(
    crops: np.ndarray, size: int | None, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, size, size) float in [-1, 1] on ``device``, as
    :func:`face_rec.eval.embed.embed_crops` prepares a batch."""
    x = torch.from_numpy(np.array(crops, dtype=np.uint8)).to(device)
    return resize(x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0), size)


@torch.no_grad()
def calibrate_bn(model: nn.Module, crops: np.ndarray, device: str | torch.device = "cpu"):
    """Set every BatchNorm's running statistics to those of ``crops`` (one train-mode pass,
    cumulative average), then eval mode: a fresh model's unit running variances let deep
    activations grow to 1e9 (fp16 overflows, embeddings compare badly); a trained model's do
    not. Returns ``model``."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    model(crops_to_batch(crops, getattr(model, "input_size", None), device))
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    return model.eval()


def build_backbone(name: str, input_size: int, width: float, crops: np.ndarray) -> nn.Module:
    """``name`` at ``input_size`` and ``width``, random weights, BatchNorm calibrated on
    ``crops``, eval mode, on the CPU."""
    torch.manual_seed(0)
    kw = {} if width == 1.0 else {"width": width}
    return calibrate_bn(create_model(name, input_size=input_size, **kw), crops[:64])


# ------------------------------------------------------------------ the paths


def embed_variant(model: nn.Module, crops: np.ndarray, v: Variant, flip: bool) -> np.ndarray:
    """(N, D) unit embeddings of (N, 112, 112, 3) uint8 ``crops`` along path ``v``: the steps of
    ``embed_crops`` under ``v``'s grad mode and memory layout, ``v.batch`` crops at a time."""
    if v.engine == "embed_crops":
        return embed_crops(model, crops, v.batch, flip=flip)
    fmt = LAYOUTS[v.layout]
    size = getattr(model, "input_size", None)
    out = []
    with GRAD_MODES[v.grad]():
        for s in range(0, len(crops), v.batch):
            x = crops_to_batch(crops[s : s + v.batch], size).contiguous(memory_format=fmt)
            feats = model(x)
            if flip:
                feats = feats + model(x.flip(3).contiguous(memory_format=fmt))
            out.append(F.normalize(feats.float(), dim=1))
    return torch.cat(out).numpy()


def agreement(out: np.ndarray, ref: np.ndarray) -> dict:
    """max |out - ref| and the smallest row cosine of two (N, D) sets of unit embeddings."""
    cos = np.sum(out * ref, axis=1) / np.maximum(
        np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1), 1e-12
    )
    return {"max_abs_diff": float(np.abs(out - ref).max()), "min_cosine": float(cos.min())}


def onnx_model(model: nn.Module, crops: np.ndarray, folder: Path) -> nn.Module:
    """``model`` exported to ONNX (parity-checked on ``crops``) and loaded for onnxruntime's CPU
    provider. Raises ImportError without onnx/onnxruntime."""
    from face_rec.export import export_onnx
    from face_rec.models.onnx_model import OnnxModel

    path = folder / "model.onnx"
    export_onnx(model, path, sample_crops=crops[:8])
    return OnnxModel(path)


# ------------------------------------------------------------------ timing


def time_stage(
    paths: list[tuple[Variant, Callable[[], np.ndarray]]], repeats: int
) -> dict[Variant, tuple[list[float], np.ndarray]]:
    """Each path's pass times over ``repeats`` round-robin rounds (after one warm-up pass each)
    and its last output."""
    for _, run in paths:  # warm-up: allocator, oneDNN primitives, onnxruntime's arena
        run()
    times: dict[Variant, list[float]] = {v: [] for v, _ in paths}
    outs: dict[Variant, np.ndarray] = {}
    for _ in range(repeats):
        for v, run in paths:
            start = time.perf_counter()
            outs[v] = run()
            times[v].append(time.perf_counter() - start)
    return {v: (times[v], outs[v]) for v, _ in paths}


def row(v: Variant, runs: list[float], out: np.ndarray, ref: np.ndarray, n: int, atol: float):
    """One result: images/s (median and each run), agreement with the reference."""
    agree = agreement(out, ref)
    return {
        **asdict(v),
        "path": v.label,
        "img_s": n / statistics.median(runs),
        "runs_img_s": [round(n / t, 2) for t in runs],
        **agree,
        "correct": agree["max_abs_diff"] <= atol,
    }


def benchmark_backbone(name: str, size: int, crops: np.ndarray, args) -> list[dict]:
    """All stages for one backbone; rows with ``ratio`` against the baseline path."""
    model = build_backbone(name, size, args.width, crops)
    models = {"contiguous": model}
    models["channels_last"] = copy.deepcopy(model).to(memory_format=torch.channels_last)
    models["channels_last_input"] = model
    ref = embed_crops(model, crops, flip=args.flip)
    rows: list[dict] = []

    def stage(variants: list[Variant]) -> None:
        paths = [(v, _bind(models[v.layout], crops, v, args.flip)) for v in variants]
        timed = time_stage(paths, args.repeats)
        rows.extend(row(v, t, o, ref, len(crops), args.atol) for v, (t, o) in timed.items())

    batches = [args.baseline_batch] if not args.full else args.batches
    first = [Variant("torch", g, lay, b) for b in batches for g in GRAD_MODES for lay in LAYOUTS]
    first.append(Variant("embed_crops", "inference_mode", "contiguous", args.baseline_batch))
    stage(first)
    if not args.full:
        ok = [r for r in rows if r["engine"] == "torch" and r["correct"]] or rows
        best = max(ok, key=lambda r: r["img_s"])
        rest = [b for b in args.batches if b != args.baseline_batch]
        stage([Variant("torch", best["grad"], best["layout"], b) for b in rest])
    rows.extend(onnx_rows(model, crops, ref, args))
    base = next(r for r in rows if r["engine"] == "torch" and _is_baseline(r, args))
    for r in rows:
        r.update(backbone=name, input_size=size)
        if "img_s" in r:
            r["ratio"] = r["img_s"] / base["img_s"]
    return rows


def onnx_rows(model: nn.Module, crops: np.ndarray, ref: np.ndarray, args) -> list[dict]:
    """Stage 3: onnxruntime at every batch size; one row saying why when it cannot run."""
    if not args.onnx:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            ort_model = onnx_model(model, crops, Path(tmp))
        except Exception as e:  # ImportError, ParityError, an exporter failure
            return [{"engine": "onnxruntime", "path": "onnxruntime", "error": short_error(e)}]
        variants = [Variant("onnxruntime", "no_grad", "contiguous", b) for b in args.batches]
        timed = time_stage(
            [(v, _bind(ort_model, crops, v, args.flip)) for v in variants], args.repeats
        )
    return [row(v, t, o, ref, len(crops), args.atol) for v, (t, o) in timed.items()]


def _bind(model: nn.Module, crops: np.ndarray, v: Variant, flip: bool):
    return lambda: embed_variant(model, crops, v, flip)


def _is_baseline(r: dict, args) -> bool:
    return (r["grad"], r["layout"], r["batch"]) == ("no_grad", "contiguous", args.baseline_batch)


def short_error(e: BaseException) -> str:
    """``Type: first line`` of an exception, at most 300 characters."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


# ------------------------------------------------------------------ output


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table (one per run), fastest correct path first per backbone."""
    lines = [
        "| backbone | px | path | img/s | vs baseline | max abs diff | min cosine | correct |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['backbone']} | {r['input_size']} | {r['path']} | "
                f"not run: {r['error']} | | | | |"
            )
            continue
        lines.append(
            f"| {r['backbone']} | {r['input_size']} | {r['path']} | {r['img_s']:.1f} | "
            f"{r['ratio']:.2f}x | {r['max_abs_diff']:.1e} | {r['min_cosine']:.6f} | "
            f"{'yes' if r['correct'] else 'NO'} |"
        )
    return "\n".join(lines)


def fastest(rows: list[dict]) -> dict[str, str]:
    """Per backbone, the fastest correct path and its ratio."""
    out = {}
    for name in dict.fromkeys(r["backbone"] for r in rows):
        ok = [r for r in rows if r["backbone"] == name and r.get("correct")]
        if ok:
            best = max(ok, key=lambda r: r["img_s"])
            out[name] = f"{best['path']} ({best['img_s']:.1f} img/s, {best['ratio']:.2f}x)"
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--models", nargs="+", default=["mobilefacenet:64", "iresnet50:112"], help="name:input_size"
    )
    p.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--baseline-batch", type=int, default=64)
    p.add_argument("--n", type=int, default=256, help="crops per timed pass")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per path (median)")
    p.add_argument("--width", type=float, default=1.0, help="backbone width multiplier")
    p.add_argument("--no-flip", dest="flip", action="store_false")
    p.add_argument("--no-onnx", dest="onnx", action="store_false")
    p.add_argument("--full", action="store_true", help="every grad x layout x batch combination")
    p.add_argument("--atol", type=float, default=1e-3, help="max |diff| of unit embeddings")
    p.add_argument("--out", type=Path, help="also write the record as JSON here")
    p.add_argument("--quick", action="store_true", help="tiny sizes for the smoke test")
    p.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="glibc keeps freed buffers, as evaluation's eval.keep_freed_memory (malloc_speed.py)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.width, args.n, args.repeats = ["mobilefacenet:32"], 0.25, 16, 1
        args.batches, args.baseline_batch = [4, 8], 4
    if args.baseline_batch not in args.batches:
        p.error(f"--baseline-batch {args.baseline_batch} must be one of --batches {args.batches}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.keep_freed_memory:
        keep_freed_memory()
    crops = random_crops(args.n)
    rows = []
    for spec in args.models:
        name, _, size = spec.partition(":")
        rows += benchmark_backbone(name, int(size or CROP), crops, args)
    record = {
        **benchmark_header("cpu"),
        "settings": {**vars(args), "out": str(args.out)},
        "rows": rows,
        "fastest_correct": fastest(rows),
    }
    print(json.dumps(record["machine"]))
    print(markdown(rows))
    for name, best in record["fastest_correct"].items():
        print(f"fastest correct path, {name}: {best}")
    if args.out:
        write_json(args.out, record)
    return record


if __name__ == "__main__":
    main()
