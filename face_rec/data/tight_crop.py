"""Tight-crop and low-resolution variants of LFW pair lists: ``python -m face_rec.data.tight_crop``.

Many sources are tight crops around the face (CFP, AgeDB, ID photos, scraped sets) or tiny, where
LFW's 250 px photos are wide. This builds, from the LFW images a pair list names, two image trees
with LFW's layout (``<Name>/<Name>_NNNN.jpg``) and the pair lists beside them::

    <out>/tight/images/...    each image cropped to its detected face box + ``margin`` per side
    <out>/tight/pairsDevTest.txt, pairsDevTrain.txt      (copies: the same pairs)
    <out>/lowres/images/...   the tight crop downscaled to ``low_res`` px on its shorter side
    <out>/lowres/pairsDevTest.txt, pairsDevTrain.txt
    <out>/manifest.csv        per source image: status (ok / fallback / bad), boxes, sizes
    <out>/tight_crop.json     counts, bad images and why, settings, absolute paths; written
                              last (complete; not ``summary.json``: the folder is no pack)

``<out>`` defaults to ``data.tight_dir`` (conf/data/lfw.yaml: ``${paths.pack_dir}/lfw_tight``),
the folder ``val=lfw_tight`` reads.

The face box comes from the alignment stage's detector on the original image (the face the photo
is about, :func:`face_rec.align.run.detect_all`); where none is found (confidently), the centred
square the alignment's fallback crop uses (``fallback`` rows). An unreadable image is counted and
listed (``bad``) and has no output; its pairs are then unscorable in evaluation. Work goes in
chunks: every image is written atomically, a chunk's manifest rows are saved when all its images
are durable (fsync'ed with their folders), and a run again skips finished chunks. A run whose
key differs (the settings, the lists, the source images' contents, the detection code's
``ALIGN_VERSION``; not the images' modification times: a fresh copy of LFW keeps the build,
:mod:`face_rec.utils.stamps`) starts over, and first removes the earlier build's pair lists,
manifest and ``tight_crop.json``: until it completes, a ``val=`` run finds no pair list rather
than a tree of mixed builds.

Evaluate the same pairs wide, tight and at low resolution::

    python eval_lfw.py checkpoint=... pairs=<out>/tight/pairsDevTest.txt \\
        image_root=<out>/tight/images calibration_pairs=<out>/tight/pairsDevTrain.txt
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from face_rec.align.detect import Face
from face_rec.align.run import ALIGN_VERSION, AlignSettings, detect_all
from face_rec.data.images import ImageReadError, load_rgb
from face_rec.data.pairs import load_pairs
from face_rec.utils.io import atomic_path, fsync, keyed_dir, temp_name, write_json
from face_rec.utils.stamps import Stamp, content_key, recorded_file_stamps

log = logging.getLogger(__name__)

VARIANTS = ("tight", "lowres")
#: the AlignSettings fields that shape the detected box (:func:`~face_rec.align.run.detect_all`:
#: images detected together are padded to one size; the reduction for detection and the retries
#: decide what the detector sees); the warp's (size, border, fallback_face_fraction) play no part
DETECTION_FIELDS = ("batch_size", "max_detect_side", "retry_upscale", "retry_pad", "retry_border")
#: detector settings that decide where it runs, not what it finds
NOT_DETECTION = ("device",)
SUMMARY = "tight_crop.json"  #: written last: the build is complete
DEFAULT_LISTS = ("pairsDevTest.txt", "pairsDevTrain.txt")
COLUMNS = (
    "source",
    "status",
    "reason",
    "det_prob",
    "face_box",
    "crop_box",
    "tight_wh",
    "lowres_wh",
)
STAMPS_NAME = "stamps.csv"  #: the source images' stamps, kept for the next run's key


@dataclass(frozen=True)
class TightCropSettings:
    """How the variants are cut."""

    margin: float = 0.1  #: added on each side, as a fraction of the face box's width / height
    low_res: int = 24  #: shorter side (px) of the low-resolution variant
    quality: int = 95  #: JPEG quality of both variants
    fallback_face_fraction: float = 0.56  #: no face: centred square of this x the shorter side

    def __post_init__(self) -> None:
        if self.margin < -0.4 or self.low_res < 4 or not 1 <= self.quality <= 100:
            raise ValueError(
                f"margin={self.margin} (>= -0.4), low_res={self.low_res} (>= 4 px) or "
                f"quality={self.quality} (1..100) out of range"
            )


def crop_box(
    box: np.ndarray, image_hw: tuple[int, int], margin: float
) -> tuple[int, int, int, int]:
    """Integer pixel bounds (x0, y0, x1, y1), end exclusive, of the face ``box`` (4,) x1 y1 x2 y2
    (corner coordinates) grown by ``margin`` x its width / height on each side, clipped to the
    (H, W) image and at least one pixel wide and tall."""
    h, w = image_hw
    x1, y1, x2, y2 = (float(v) for v in box)
    mx, my = margin * (x2 - x1), margin * (y2 - y1)
    x0 = int(np.clip(np.floor(x1 - mx), 0, w - 1))
    y0 = int(np.clip(np.floor(y1 - my), 0, h - 1))
    xe = int(np.clip(np.ceil(x2 + mx), x0 + 1, w))
    ye = int(np.clip(np.ceil(y2 + my), y0 + 1, h))
    return x0, y0, xe, ye


def fallback_box(image_hw: tuple[int, int], face_fraction: float) -> np.ndarray:
    """The centred square of side ``face_fraction`` x the shorter side, as a (4,) box."""
    h, w = image_hw
    side = min(h, w) * face_fraction
    return np.array([(w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2])


def low_res_image(crop: np.ndarray, side: int) -> np.ndarray:
    """(H, W, 3) uint8 ``crop`` resized (PIL bilinear, antialiased when reducing) so its shorter
    side is ``side`` px, aspect kept."""
    h, w = crop.shape[:2]
    scale = side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(crop).resize(size, Image.BILINEAR))


def list_images(lfw_root: Path, lists: Sequence[str]) -> list[str]:
    """The unique images (relative paths, sorted) of the pair lists ``lists`` under ``lfw_root``."""
    images: set[str] = set()
    for name in lists:
        path = lfw_root / name
        if not path.is_file():
            raise FileNotFoundError(
                f"pair list {str(path)!r} not found; point --root / data= at the LFW folder "
                "(pairsDevTest.txt, pairsDevTrain.txt, images/) or pass --lists"
            )
        images.update(load_pairs(path, lfw_root / "images").images)
    return sorted(images)


def _save_jpeg(path: Path, image: np.ndarray, quality: int) -> Path:
    """Write to a temporary name and rename: a killed run never leaves a partial JPEG under the
    final name. Not fsync'ed here: :func:`_make_durable` syncs a chunk's files and folders
    together before its manifest part is saved. Returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        Image.fromarray(image).save(tmp, format="JPEG", quality=quality)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _make_durable(paths: Iterable[Path], root: Path) -> None:
    """fsync each written file, then every folder from its parent up to ``root`` (the renames and
    any folder created for it), so the files survive a crash before their part marks them done."""
    folders: set[Path] = set()
    for path in paths:
        fsync(path)
        folders.update(p for p in path.parents if p == root or root in p.parents)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        fsync(folder)


def _cut(
    img: np.ndarray, face: Face | str | None, source: str, out_dir: Path, s: TightCropSettings
) -> tuple[dict, list[Path]]:
    """Write both variants of one image; return its manifest row and the files written."""
    row = {"source": source, "status": "ok", "reason": "", "det_prob": ""}
    if isinstance(face, Face) and face.confident:
        box = face.box
        row["det_prob"] = f"{face.prob:.6f}"
    else:
        box = fallback_box(img.shape[:2], s.fallback_face_fraction)
        row["status"] = "fallback"
        row["reason"] = _no_face_reason(face)
    x0, y0, x1, y1 = crop_box(box, img.shape[:2], s.margin)
    tight = np.ascontiguousarray(img[y0:y1, x0:x1])
    small = low_res_image(tight, s.low_res)
    written = [
        _save_jpeg(out_dir / "tight" / "images" / source, tight, s.quality),
        _save_jpeg(out_dir / "lowres" / "images" / source, small, s.quality),
    ]
    row["face_box"] = " ".join(f"{v:.2f}" for v in box)
    row["crop_box"] = f"{x0} {y0} {x1} {y1}"
    row["tight_wh"] = f"{tight.shape[1]} {tight.shape[0]}"
    row["lowres_wh"] = f"{small.shape[1]} {small.shape[0]}"
    return row, written


def _no_face_reason(face: Face | str | None) -> str:
    if isinstance(face, Face):
        return f"low-confidence face only (p={face.prob:.3f})"
    return face or "no face detected"


def _chunk(
    images_dir: Path,
    sources: list[str],
    detector,
    out_dir: Path,
    settings: TightCropSettings,
    align: AlignSettings,
) -> tuple[list[dict], list[Path]]:
    """Detect and cut one chunk of images; never raises for a bad image. Returns the manifest
    rows and the files written."""
    images: list[np.ndarray | None] = []
    rows: list[dict] = []
    for src in sources:
        try:
            images.append(load_rgb(images_dir / src))
            rows.append({})
        except ImageReadError as e:
            images.append(None)
            reason = str(e).replace(str(images_dir) + os.sep, "")
            rows.append({"source": src, "status": "bad", "reason": reason})
    faces = detect_all(images, detector, align)
    written: list[Path] = []
    for k, (img, face) in enumerate(zip(images, faces, strict=True)):
        if img is not None:
            rows[k], files = _cut(img, face, sources[k], out_dir, settings)
            written += files
    return rows, written


def detection_settings(align: AlignSettings, detector_settings: dict) -> dict:
    """What decides the detected box, the only thing the builder takes from the alignment stage:
    the :data:`DETECTION_FIELDS` of ``align`` and the detector's settings but its device."""
    return {
        "align": {k: getattr(align, k) for k in DETECTION_FIELDS},
        "detector": {k: v for k, v in detector_settings.items() if k not in NOT_DETECTION},
    }


def _key(  # the lists' contents, their images' contents, and what shapes the output
    lfw_root: Path,
    lists: Sequence[str],
    stamps: dict[str, Stamp | None],
    settings: TightCropSettings,
    detection: dict,
    chunk_size: int,
) -> str:
    h = hashlib.sha256()
    meta = [ALIGN_VERSION, asdict(settings), detection, chunk_size, list(lists)]
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name in lists:
        h.update((lfw_root / name).read_bytes())
    for src, stamp in stamps.items():
        h.update(f"{src}\0{content_key(stamp)}\n".encode())
    return h.hexdigest()[:16]


def _clear_outputs(out_dir: Path, lists: Iterable[str]) -> None:
    """Remove an earlier build's completion mark, pair lists and manifest (durably), before any
    image is rewritten: a ``val=`` run then finds no list instead of a tree of mixed builds."""
    paths = [out_dir / SUMMARY, out_dir / "manifest.csv"]
    paths += [out_dir / v / name for v in VARIANTS for name in lists]
    removed = [p for p in paths if p.exists()]
    for path in removed:
        path.unlink()
    for folder in {p.parent for p in removed}:
        fsync(folder)


def build_tight_variants(
    lfw_root: str | Path,
    out_dir: str | Path,
    make_detector: Callable,
    settings: TightCropSettings | None = None,
    align: AlignSettings | None = None,
    detector_settings: dict | None = None,
    lists: Sequence[str] = DEFAULT_LISTS,
    chunk_size: int = 64,
) -> dict:
    """Build the tight and low-resolution variants of the images of ``lists`` (pair lists under
    ``lfw_root``, images under ``lfw_root/images``) into ``out_dir``; return the summary.

    ``make_detector`` builds the detector (called once, only when there is work);
    ``align``: the alignment settings :func:`~face_rec.align.run.detect_all` runs with (only
    those that shape the detected box count, :func:`detection_settings`); ``detector_settings``
    is recorded and, but its device, part of the resume key.
    """
    lfw_root, out_dir = Path(lfw_root).resolve(), Path(out_dir).resolve()
    settings, align = settings or TightCropSettings(), align or AlignSettings()
    sources = list_images(lfw_root, lists)
    detection = detection_settings(align, detector_settings or {})
    summary_path = out_dir / SUMMARY
    previous = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    stamps = recorded_file_stamps(lfw_root / "images", sources, out_dir / STAMPS_NAME)
    key = _key(lfw_root, lists, stamps, settings, detection, chunk_size)
    if previous.get("complete") and previous.get("key") == key:
        log.info("%s is already complete; nothing to do", out_dir)
        return previous
    _clear_outputs(out_dir, {*lists, *previous.get("lists", [])})
    parts = keyed_dir(out_dir / ".parts", key)
    chunks = [sources[i : i + chunk_size] for i in range(0, len(sources), chunk_size)]
    detector = None
    for index, chunk in enumerate(chunks):
        part = parts / f"{index:06d}.json"
        if part.exists():
            continue
        detector = detector or make_detector()
        rows, written = _chunk(lfw_root / "images", chunk, detector, out_dir, settings, align)
        _make_durable(written, out_dir)  # the images are on disk before the part marks them done
        with atomic_path(part) as tmp:
            tmp.write_text(json.dumps(rows))
        log.info(
            "tight crops: %d / %d images", min((index + 1) * chunk_size, len(sources)), len(sources)
        )
    rows = [
        r for i in range(len(chunks)) for r in json.loads((parts / f"{i:06d}.json").read_text())
    ]
    summary = _finish(out_dir, lfw_root, lists, rows, key)
    summary.update(
        settings=asdict(settings),
        detection=detection["align"],
        detector=detector_settings or {},
        align_version=ALIGN_VERSION,
    )
    write_json(summary_path, summary)
    shutil.rmtree(parts)
    return summary


def _finish(
    out_dir: Path, lfw_root: Path, lists: Sequence[str], rows: list[dict], key: str
) -> dict:
    """Copy the pair lists beside each variant, write manifest.csv; the summary (without its
    settings), its paths absolute."""
    for variant in VARIANTS:
        for name in lists:
            with atomic_path(out_dir / variant / name) as tmp:
                shutil.copyfile(lfw_root / name, tmp)
    with atomic_path(out_dir / "manifest.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    counts = Counter(r["status"] for r in rows)
    bad = [{"source": r["source"], "reason": r["reason"]} for r in rows if r["status"] == "bad"]
    if bad:
        log.warning("%d unreadable images have no tight crop (e.g. %s)", len(bad), bad[0])
    return {
        "complete": True,
        "key": key,
        "lfw_root": str(lfw_root),
        "lists": list(lists),
        "n_images": len(rows),
        "counts": {s: counts.get(s, 0) for s in ("ok", "fallback", "bad")},
        "bad": bad,
        "variants": {
            v: {
                "image_root": str(out_dir / v / "images"),
                "pairs": [str(out_dir / v / n) for n in lists],
            }
            for v in VARIANTS
        },
    }


def eval_commands(out_dir: str | Path, lists: Sequence[str] = DEFAULT_LISTS) -> list[str]:
    """The ``eval_lfw.py`` arguments that score the first list of each variant (threshold from
    the second list when there is one)."""
    out = []
    for v in VARIANTS:
        base = Path(out_dir) / v
        cmd = f"python eval_lfw.py pairs={base / lists[0]} image_root={base / 'images'}"
        if len(lists) > 1:
            cmd += f" calibration_pairs={base / lists[1]}"
        out.append(cmd)
    return out


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    """``python -m face_rec.data.tight_crop [--margin M] [--low-res PX] [--out DIR] [OVERRIDE]``"""
    ap = argparse.ArgumentParser(
        prog="python -m face_rec.data.tight_crop",
        description="Build tight-crop and low-resolution variants of LFW pair lists. OVERRIDEs "
        "are align.py's Hydra overrides (data=lfw, paths.data_dir=..., align.detector.device=cpu): "
        "the detector and its settings are the alignment stage's.",
    )
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of conf/align.yaml")
    ap.add_argument(
        "--out",
        help="output folder (default: data.tight_dir, for data=lfw ${paths.pack_dir}/lfw_tight, "
        "the folder val=lfw_tight reads)",
    )
    ap.add_argument(
        "--margin",
        type=float,
        default=TightCropSettings.margin,
        help="added per side, fraction of the face box's width / height (default 0.1)",
    )
    ap.add_argument(
        "--low-res",
        type=int,
        default=TightCropSettings.low_res,
        help="shorter side (px) of the low-resolution variant (default 24)",
    )
    ap.add_argument("--lists", nargs="+", default=list(DEFAULT_LISTS), help="pair lists to cover")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    summary = build_from_overrides(args.overrides, args.out, args.margin, args.low_res, args.lists)
    c = summary["counts"]
    print(
        f"{summary['n_images']} images: {c['ok']} ok, {c['fallback']} fallback (no face: centred "
        f"box), {c['bad']} bad -> {Path(summary['variants']['tight']['image_root']).parents[1]}"
    )
    for cmd in eval_commands(
        Path(summary["variants"]["tight"]["image_root"]).parents[1], summary["lists"]
    ):
        print(cmd)


def build_from_overrides(
    overrides: Sequence[str],
    out: str | None = None,
    margin: float = TightCropSettings.margin,
    low_res: int = TightCropSettings.low_res,
    lists: Sequence[str] = DEFAULT_LISTS,
) -> dict:
    """Compose conf/align.yaml with ``overrides`` and build the variants of ``data.root``'s
    lists into ``out`` (default ``data.tight_dir``: conf/data/lfw.yaml's
    ``${paths.pack_dir}/lfw_tight``, where ``val=lfw_tight`` reads them)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from face_rec.config_check import check_config

    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        cfg = compose("align", overrides=list(overrides))
    check_config(cfg)
    out = out or cfg.data.get("tight_dir")
    if not out:
        raise ValueError(
            f"data={cfg.data.name} names no tight_dir for the tight-crop variants; pass --out DIR "
            "(or add data.tight_dir to its conf/data yaml, as conf/data/lfw.yaml does)"
        )
    detector = OmegaConf.to_container(cfg.align.detector, resolve=True)
    return build_tight_variants(
        lfw_root=cfg.data.root,
        out_dir=out,
        make_detector=instantiate(cfg.align.detector),
        settings=TightCropSettings(
            margin=margin,
            low_res=low_res,
            fallback_face_fraction=float(cfg.data.fallback_face_fraction),
        ),
        align=instantiate(cfg.align.settings),
        detector_settings={k: v for k, v in detector.items() if not k.startswith("_")},
        lists=lists,
    )


if __name__ == "__main__":
    main()
