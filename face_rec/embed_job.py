"""The embedding batch job behind ``embed.py``: a photo tree in, ``embeddings.npy`` + ``index.csv``
out.

Raw photos are first aligned into a pack (``<output_dir>/pack``) by
:func:`face_rec.align.run.run_alignment` (resumable on its own); ``aligned=True`` reads an
``<identity>/<crop>`` tree of aligned crops instead. Rows are then embedded in fixed chunks,
each saved atomically under ``<output_dir>/.embed_parts`` as it finishes; a killed job run again
recomputes none of them, and the outputs are assembled from the parts in input order, so a
resumed run is byte-identical to an uninterrupted one. ``summary.json``, written last, marks the
output complete.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from face_rec.align.run import list_inputs, run_alignment
from face_rec.data.pack import open_images, read_manifest
from face_rec.embedder import FaceEmbedder
from face_rec.utils.allocator import keep_freed_memory_on
from face_rec.utils.io import atomic_path, keyed_dir, write_json
from face_rec.utils.stamps import content_key, file_digest, recorded_file_stamps

log = logging.getLogger(__name__)

PARTS_DIR = ".embed_parts"
STAMPS_NAME = "input_stamps.csv"  #: an aligned input tree's stamps (face_rec.utils.stamps)
#: bump when a code change alters the embeddings: parts made by other code are then discarded
EMBED_VERSION = 1
INDEX_COLUMNS = ("source", "identity", "status", "quality", "row", "reason")


def embed_folder(
    input_dir: str | Path,
    output_dir: str | Path,
    embedder: FaceEmbedder | Callable[[], FaceEmbedder],
    model_id: str,
    aligned: bool = False,
    align_kwargs: dict | None = None,
    chunk_size: int = 1024,
) -> dict:
    """Embed every image of ``input_dir/<identity>/<image>`` into ``output_dir``; return the
    summary.

    Args:
        embedder: the model, device, batch size and flip setting (its ``align`` is not used:
            photos are aligned by the alignment job, crops are taken as they are); or a
            function building it, called after the alignment (whose worker processes can then
            fork before the model initialises CUDA).
        model_id: names the weights (e.g. :func:`file_id` of the checkpoint); recorded, and
            part of the resume key, as are the flip setting, batch size and device.
        aligned: ``input_dir`` holds aligned square crops: no detection.
        align_kwargs: :func:`face_rec.align.run.run_alignment` keywords (``make_detector``,
            ``settings``, ``workers``, ...; :func:`face_rec.align.cli.alignment_kwargs`).
        chunk_size: rows per resumable part.

    Writes ``embeddings.npy`` ((N, D) float32, unit rows, one per embedded input),
    ``index.csv`` (one row per input: ``source, identity, status, quality, row, reason``;
    ``quality`` the feature norm, ``row`` the embeddings.npy row or -1 when failed) and
    ``summary.json``; with ``aligned``, :data:`STAMPS_NAME` (the crops' stamps).
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    start = time.perf_counter()
    if aligned:
        rows, source_key, pack_summary = _aligned_rows(input_dir, output_dir / STAMPS_NAME)
    else:
        rows, source_key, pack_summary = _pack_rows(input_dir, output_dir / "pack", align_kwargs)
    if not isinstance(embedder, FaceEmbedder):
        embedder = embedder()
    settings = {
        "version": EMBED_VERSION,
        "model": model_id,
        "flip": embedder.flip,
        "batch_size": embedder.batch_size,
        "device": str(embedder.device),
        "chunk_size": chunk_size,
        "aligned": aligned,
        "torch": _torch_version(),
    }
    key = _key(source_key, settings)
    previous = _read_summary(output_dir)
    if previous is not None and previous.get("key") == key:
        log.info("embeddings in %s are already complete; nothing to do", output_dir)
        return previous
    (output_dir / "summary.json").unlink(missing_ok=True)
    parts = _prepare_parts(output_dir, key)
    chunks = [rows[i : i + chunk_size] for i in range(0, len(rows), chunk_size)]
    todo = [i for i in range(len(chunks)) if not _part(parts, i).exists()]
    n_todo = sum(len(chunks[i]) for i in todo)
    images = None if aligned else open_images(output_dir / "pack")
    embed_start = time.perf_counter()
    with tqdm(total=len(rows), initial=len(rows) - n_todo, unit="img", desc="embed") as bar:
        for i in todo:
            emb, quality, status = _embed_chunk(embedder, chunks[i], input_dir, images)
            _save_part(parts, i, emb, quality, status)
            bar.update(len(chunks[i]))
    embed_s = time.perf_counter() - embed_start
    summary = _assemble(output_dir, parts, chunks, embedder)
    summary.update(
        key=key,
        input_dir=str(input_dir),
        settings=settings,
        pack=str(output_dir / "pack") if not aligned else None,
        alignment=pack_summary,
        quality=(
            "L2 norm of the unnormalised feature "
            + (
                "f(x) + f(flip(x)) (about twice a single view's, as AdaFace's fused norm)"
                if embedder.flip
                else "f(x)"
            )
        ),
        this_run={
            "images_processed": n_todo,
            "resumed_images": len(rows) - n_todo,
            "wall_time_s": round(time.perf_counter() - start, 2),
            "images_per_s": round(n_todo / embed_s, 2) if embed_s > 0 and n_todo else None,
        },
    )
    write_json(output_dir / "summary.json", summary)
    shutil.rmtree(parts)
    return summary


def default_output_dir(cfg: DictConfig) -> Path:
    """``<paths.log_dir>/embed/<input dir name>-<checkpoint stem>-<hash>``, the hash of the
    resolved input and checkpoint paths: one folder per (photos, model), so the same command
    resumes and two runs' ``best.pt`` do not share one."""
    import hashlib

    inputs, ckpt = Path(cfg.input_dir).resolve(), Path(cfg.checkpoint).resolve()
    digest = hashlib.sha256(f"{inputs}\n{ckpt}".encode()).hexdigest()[:8]
    return Path(cfg.paths.log_dir) / "embed" / f"{inputs.name}-{ckpt.stem}-{digest}"


def embed_from_config(cfg: DictConfig) -> dict:
    """Run ``embed.py`` (see ``conf/embed.yaml``); return the summary."""
    from face_rec.align.cli import alignment_kwargs
    from face_rec.config_check import check_config

    check_config(cfg)
    input_dir = Path(cfg.input_dir)
    output_dir = Path(cfg.output_dir) if cfg.output_dir else default_output_dir(cfg)
    if not input_dir.is_dir():
        raise FileNotFoundError(
            f"input_dir {str(input_dir)!r} is not a directory; pass input_dir=<folder of "
            "<identity>/<image> files>"
        )
    if not Path(cfg.checkpoint).is_file():
        raise FileNotFoundError(
            f"checkpoint {str(cfg.checkpoint)!r} not found; pass checkpoint=<weights file> (a "
            "face_rec checkpoint, insightface backbone.pth, AdaFace .ckpt or .onnx)"
        )

    def embedder() -> FaceEmbedder:
        made = FaceEmbedder.from_checkpoint(
            cfg.checkpoint,
            cfg.model_name,
            cfg.device,
            batch_size=cfg.batch_size,
            flip=cfg.flip,
            align=False,
        )
        keep_freed_memory_on(made.device, cfg.keep_freed_memory)
        return made

    summary = embed_folder(
        input_dir,
        output_dir,
        embedder,
        model_id=file_id(cfg.checkpoint) + (f" name={cfg.model_name}" if cfg.model_name else ""),
        aligned=cfg.aligned,
        align_kwargs=None if cfg.aligned else alignment_kwargs(cfg.align),
        chunk_size=cfg.chunk_size,
    )
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    c = summary["counts"]
    print(
        f"embedded {summary['n_embedded']} of {summary['n_inputs']} files ({c['ok']} ok, "
        f"{c['fallback']} fallback, {c['failed']} failed), D={summary['embedding_dim']} "
        f"-> {output_dir}/embeddings.npy, index.csv"
    )
    return summary


def file_id(path: str | Path) -> str:
    """A weights file's identity for resume keys: its name and its bytes' digest (a copy of
    the same file elsewhere is the same model)."""
    path = Path(path)
    return f"{path.name} sha256={file_digest(path)}"


# ----------------------------------------------------------------------------- the rows


def _pack_rows(
    input_dir: Path, pack_dir: Path, align_kwargs: dict | None
) -> tuple[list[dict], str, dict]:
    """Align ``input_dir`` into ``pack_dir`` (resumable); its manifest rows, key and summary."""
    summary = run_alignment(input_dir, pack_dir, **(align_kwargs or {}))
    rows = read_manifest(pack_dir / "manifest.csv")
    keep = ("n_inputs", "counts", "reasons", "settings", "detector", "this_run")
    return rows, summary["key"], {k: summary.get(k) for k in keep}


def _aligned_rows(input_dir: Path, record: Path) -> tuple[list[dict], str, dict]:
    """The crops of an aligned ``<identity>/<crop>`` tree as rows (status decided when read),
    and a key over their paths and contents (stamps kept in ``record`` for the next run: a
    fresh copy of the same crops keeps the embeddings, :mod:`face_rec.utils.stamps`)."""
    files, ignored, empty = list_inputs(input_dir)
    if not files:
        raise FileNotFoundError(f"no image files under {str(input_dir)!r} (<identity>/<crop>)")
    stamps = recorded_file_stamps(input_dir, [f.source for f in files], record)
    h = hashlib.sha256()
    for src, stamp in stamps.items():
        h.update(f"{src}\0{content_key(stamp)}\n".encode())
    rows = [{"source": f.source, "identity": f.identity, "image_index": -1} for f in files]
    return rows, h.hexdigest()[:16], {"ignored_files": ignored, "empty_identities": empty}


def _embed_chunk(
    embedder: FaceEmbedder, rows: list[dict], input_dir: Path, images
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Embeddings (n, D) (NaN rows where failed), feature norms (n,) and statuses of one chunk."""
    if images is None:  # aligned crops on disk
        crops, status = embedder.prepare([input_dir / r["source"] for r in rows], align=False)
        emb, quality = embedder.embed_aligned(crops)
        return emb, quality, status
    crops = [images[r["image_index"]] if r["image_index"] >= 0 else None for r in rows]
    emb, quality = embedder.embed_aligned(crops)
    status = [r["status"] if r["image_index"] >= 0 else f"failed: {r['reason']}" for r in rows]
    return emb, quality, status


# ----------------------------------------------------------------------------- parts on disk


def _part(parts: Path, index: int) -> Path:
    return parts / f"{index:06d}.npz"


def _save_part(
    parts: Path, index: int, emb: np.ndarray, quality: np.ndarray, status: list[str]
) -> None:
    with atomic_path(_part(parts, index)) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, emb=emb, quality=quality, status=np.array(json.dumps(status)))


def _prepare_parts(output_dir: Path, key: str) -> Path:
    """The parts folder for ``key``; parts of other settings or inputs are discarded."""
    return keyed_dir(output_dir / PARTS_DIR, key)


def _assemble(
    output_dir: Path, parts: Path, chunks: list[list[dict]], embedder: FaceEmbedder
) -> dict:
    """embeddings.npy and index.csv from the parts, in input order; the summary's counts."""
    blocks, index = [], []
    at = 0
    for i, chunk in enumerate(chunks):
        with np.load(_part(parts, i)) as z:
            emb, quality, status = z["emb"], z["quality"], json.loads(str(z["status"]))
        ok = np.array([not s.startswith("failed") for s in status], bool)
        blocks.append(emb[ok])
        for r, q, s, good in zip(chunk, quality, status, ok, strict=True):
            reason = s.removeprefix("failed: ") if not good else r.get("reason", "")
            index.append(
                {
                    "source": r["source"],
                    "identity": r["identity"],
                    "status": s if good else "failed",
                    "quality": f"{q:.7g}" if good else "",
                    "row": at if good else -1,
                    "reason": reason,
                }
            )
            at += bool(good)
    dim = blocks[0].shape[1] if blocks else embedder.dim
    embeddings = np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float32)
    with atomic_path(output_dir / "embeddings.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, embeddings.astype(np.float32, copy=False))
    with atomic_path(output_dir / "index.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=INDEX_COLUMNS)
        writer.writeheader()
        writer.writerows(index)
    counts = Counter(r["status"] for r in index)
    norms = np.array([float(r["quality"]) for r in index if r["row"] >= 0])
    return {
        "complete": True,
        "n_inputs": len(index),
        "n_embedded": int(len(embeddings)),
        "embedding_dim": int(dim),
        "counts": {s: counts.get(s, 0) for s in ("ok", "fallback", "failed")},
        "quality_percentiles": _percentiles(norms),
        "columns": list(INDEX_COLUMNS),
    }


def _percentiles(values: np.ndarray) -> dict | None:
    """1st, 5th, 50th, 95th and 99th percentiles (4 decimals), or None without values."""
    if not len(values):
        return None
    q = np.percentile(values, [1, 5, 50, 95, 99]).round(4).tolist()
    return dict(zip(("p1", "p5", "p50", "p95", "p99"), q, strict=True))


def _read_summary(output_dir: Path) -> dict | None:
    path = output_dir / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("complete") else None


def _key(source_key: str, settings: dict) -> str:
    h = hashlib.sha256(json.dumps([source_key, settings], sort_keys=True).encode())
    return h.hexdigest()[:16]


def _torch_version() -> str:
    import torch

    return torch.__version__
