"""``identify.py``: closed-set identification on a gallery / probe / distractor CSV.

The list (:func:`read_identification_list`) is a CSV with the header ``path,identity,role``;
its images are aligned through the alignment stage exactly like a pair list's
(:func:`face_rec.eval.verification.align_images`), embedded with flip TTA and searched
(:func:`face_rec.eval.identification.closed_set_identification`).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from omegaconf import DictConfig, OmegaConf

from face_rec.align.cli import alignment_kwargs
from face_rec.config_check import check_config
from face_rec.data.pack import SUMMARY_NAME
from face_rec.eval.cli import build_model, eval_device
from face_rec.eval.embed import embed_crops
from face_rec.eval.identification import closed_set_identification
from face_rec.eval.verification import PairImages, align_images
from face_rec.utils.io import atomic_path, write_json
from face_rec.utils.machine import machine_info

log = logging.getLogger(__name__)

ROLES = ("gallery", "probe", "distractor")
COLUMNS = ("path", "identity", "role")


class IdentificationListError(ValueError):
    """A malformed identification list; the message names the file and the line."""


@dataclass
class IdentificationList:
    """M images of an identification protocol, in file order.

    Attributes:
        paths: M image paths relative to ``root`` (each listed once).
        identities: M identities ('' for a distractor without one).
        roles: M roles: gallery, probe or distractor.
        lines: M line numbers in ``source`` (the header is line 1).
        source: the CSV read; root: the folder the paths are relative to.
    """

    paths: list[str]
    identities: list[str]
    roles: list[str]
    lines: list[int]
    source: str
    root: Path

    def __len__(self) -> int:
        return len(self.paths)

    def role(self, role: str) -> np.ndarray:
        """Indices (K,) int64 of the images with this role, in file order."""
        return np.array([k for k, r in enumerate(self.roles) if r == role], np.int64)


def read_identification_list(
    path: str | Path, image_root: str | Path | None = None
) -> IdentificationList:
    """Read a ``path,identity,role`` CSV (columns in any order, more columns ignored).

    ``role`` is gallery, probe or distractor (any case); ``identity`` may be empty only for a
    distractor; ``path`` is relative to ``image_root`` (default: the CSV's folder) and each
    image is listed once. Blank lines are skipped.

    Raises:
        FileNotFoundError: no such file.
        IdentificationListError: a missing column, an unknown role, an empty or absolute path,
            an empty identity, a repeated image, or no gallery or probe row; the message names
            the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"identification list {str(path)!r} does not exist; pass list=<file.csv> with the "
            "header path,identity,role"
        )
    out = IdentificationList([], [], [], [], str(path), Path(image_root or path.parent))
    first_line: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        columns = _columns(next(reader, []), path)
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) <= max(columns.values()):
                raise IdentificationListError(
                    f"{where}: expected {max(columns.values()) + 1} columns as the header, "
                    f"got {len(row)}: {','.join(row)!r}"
                )
            image, identity, role = (row[columns[c]].strip() for c in COLUMNS)
            role = _check_row(image, identity, role.lower(), where)
            if image in first_line:
                raise IdentificationListError(
                    f"{where}: {image!r} is listed again (first on line {first_line[image]}); "
                    "list each image once, with one role"
                )
            first_line[image] = reader.line_num
            out.paths.append(image)
            out.identities.append(identity)
            out.roles.append(role)
            out.lines.append(reader.line_num)
    for role in ("gallery", "probe"):
        if role not in out.roles:
            raise IdentificationListError(f"{path}: no {role} rows; identification needs both")
    return out


def _columns(header: list[str], path: Path) -> dict[str, int]:
    names = [h.strip().lower() for h in header]
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise IdentificationListError(
            f"{path}:1: the header must name the columns path, identity, role; missing "
            f"{', '.join(missing)} in {','.join(header)!r}"
        )
    return {c: names.index(c) for c in COLUMNS}


def _check_row(image: str, identity: str, role: str, where: str) -> str:
    if role not in ROLES:
        raise IdentificationListError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
    if not image:
        raise IdentificationListError(f"{where}: empty path")
    if Path(image).is_absolute() or PurePosixPath(image).is_absolute():
        raise IdentificationListError(
            f"{where}: path {image!r} is absolute; paths are relative to image_root"
        )
    if not identity and role != "distractor":
        raise IdentificationListError(
            f"{where}: a {role} needs an identity (only a distractor may have none)"
        )
    return role


# --- measuring


def identification_report(
    listed: IdentificationList,
    images: PairImages,
    embeddings: np.ndarray,
    ranks: list[int],
    max_rank: int,
) -> dict:
    """Closed-set figures of ``listed`` from its images' embeddings (M, D) (rows of unusable
    images are ignored), with every probe accounted for.

    A probe is *scored* when its image and at least one gallery image of its identity were
    aligned. ``rank{k}`` and ``cmc`` are over the scored probes; ``rank{k}_all`` and
    ``cmc_all`` also count as misses the probes whose own image failed alignment and those
    whose every gallery image did (a search the system could not make is a failed search).
    Probes whose identity has no gallery row are a fault of the list: not scored, not counted,
    listed. Gallery and distractor images that failed alignment are left out of the search and
    listed.
    """
    roles = np.array(listed.roles)
    usable = np.array([not p for p in images.problems], bool)
    gallery = np.flatnonzero((roles == "gallery") & usable)
    distractors = np.flatnonzero((roles == "distractor") & usable)
    if len(gallery) == 0:
        raise ValueError(f"no gallery image of {listed.source} could be aligned")
    listed_ids = {listed.identities[k] for k in listed.role("gallery")}
    enrolled = {listed.identities[k] for k in gallery}
    scored, unscored = [], []
    for k in listed.role("probe"):
        why = _unscored(listed.identities[k], images.problems[k], listed_ids, enrolled)
        if why is None:
            scored.append(k)
        else:
            unscored.append({**_row(listed, k), "reason": why[1], "counted_as_miss": why[0]})
    if not scored:
        raise ValueError(f"no probe of {listed.source} could be scored: {unscored[:3]} ...")
    ids = np.array(listed.identities, dtype=object)
    res = closed_set_identification(
        embeddings[scored],
        ids[scored],
        embeddings[gallery],
        ids[gallery],
        ranks,
        max_rank,
        embeddings[distractors] if len(distractors) else None,
    )
    per_probe = res.pop("per_probe")
    for key in ("unmated", "n_unmated", "n_scored"):  # none unmated here; counts given below
        res.pop(key)
    counted = len(scored) + sum(u["counted_as_miss"] for u in unscored)
    share = len(scored) / counted
    for r in ranks:
        res[f"rank{r}_all"] = res[f"rank{r}"] * share
    res["cmc_all"] = [c * share for c in res["cmc"]]
    searched = np.concatenate([gallery, distractors])
    res.update(
        protocol=res["protocol"] + "; rank{k}_all also counts as misses the probes whose image "
        "or whose every gallery image failed alignment",
        n_probes=len(listed.role("probe")),
        n_probes_scored=len(scored),
        n_probes_counted_all=counted,
        n_gallery_listed=len(listed.role("gallery")),
        n_distractors_listed=len(listed.role("distractor")),
        n_fallback={r: int((images.fallback & (roles == r)).sum()) for r in ROLES},
        unscored_probes=unscored,
        failed_gallery=_failed(listed, images, "gallery"),
        failed_distractors=_failed(listed, images, "distractor"),
        probes=[
            {
                **_row(listed, k),
                "rank": int(per_probe["mate_rank"][i]),
                "top1_path": listed.paths[searched[per_probe["top1_index"][i]]],
                "top1_identity": listed.identities[searched[per_probe["top1_index"][i]]],
                "top1_role": listed.roles[searched[per_probe["top1_index"][i]]],
                "top1_score": float(per_probe["top1_score"][i]),
            }
            for i, k in enumerate(scored)
        ],
    )
    return res


def _unscored(
    identity: str, problem: str, listed_ids: set[str], enrolled: set[str]
) -> tuple[bool, str] | None:
    """(counted as a miss, why) for a probe that cannot be searched; None when it can."""
    if identity not in listed_ids:
        return False, f"identity {identity!r} has no gallery row in the list"
    if problem:
        return True, f"probe image failed alignment: {problem}"
    if identity not in enrolled:
        return True, f"no gallery image of {identity!r} could be aligned"
    return None


def _row(listed: IdentificationList, k: int) -> dict:
    return {"line": listed.lines[k], "path": listed.paths[k], "identity": listed.identities[k]}


def _failed(listed: IdentificationList, images: PairImages, role: str) -> list[dict]:
    return [
        {**_row(listed, k), "reason": images.problems[k]}
        for k in listed.role(role)
        if images.problems[k]
    ]


# --- the command


def identify_from_config(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Run ``identify.py``: metrics.json, probes.csv, cmc.png and config.yaml into ``out_dir``."""
    check_config(cfg)
    if not cfg.list:
        raise ValueError(
            "list= is required: python identify.py checkpoint=<ckpt> list=<file.csv> (header "
            "path,identity,role)"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    listed = read_identification_list(cfg.list, cfg.image_root)
    packs = sorted(p.parent for p in Path(cfg.paths.pack_dir).glob(f"*/{SUMMARY_NAME}"))
    images = align_images(
        listed.paths,
        listed.root,
        listed.source,
        cfg.eval.cache_dir,
        reuse=packs,
        **alignment_kwargs(cfg.align),
    )
    device = eval_device(cfg)
    model = build_model(cfg).to(device)
    usable = np.flatnonzero([not p for p in images.problems])
    feats = embed_crops(model, images.crops[usable], cfg.eval.batch_size, device, cfg.eval.flip)
    embeddings = np.zeros((len(listed), feats.shape[1]), np.float32)
    embeddings[usable] = feats
    ranks = [int(r) for r in cfg.ranks]
    metrics = identification_report(listed, images, embeddings, ranks, cfg.max_rank)
    probes = metrics.pop("probes")
    metrics.update(
        list=listed.source,
        image_root=str(listed.root),
        checkpoint=cfg.checkpoint,
        model=cfg.model.name if not cfg.checkpoint else None,
        flip=cfg.eval.flip,
        machine=machine_info(device),
    )
    for u in metrics["unscored_probes"]:
        log.warning(
            "probe %s:%d %s not scored: %s", listed.source, u["line"], u["path"], u["reason"]
        )
    write_json(out_dir / "metrics.json", metrics)
    write_probes(out_dir / "probes.csv", probes, metrics["unscored_probes"])
    plot_cmc(out_dir / "cmc.png", metrics, ranks, title=Path(listed.source).name)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    print(summary_line(metrics, ranks) + f" -> {out_dir}")
    return metrics


def write_probes(path: Path, probes: list[dict], unscored: list[dict]) -> None:
    """One row per probe, in list order: its mate rank and top-1 entry, or why it was not
    scored (rank empty)."""
    fields = ["line", "path", "identity", "rank", "top1_path", "top1_identity", "top1_role"]
    fields += ["top1_score", "reason"]
    rows = sorted([*probes, *unscored], key=lambda r: r["line"])
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "top1_score": f"{r['top1_score']:.6f}"} if "top1_score" in r else r)


def plot_cmc(path: Path, metrics: dict, ranks: list[int], title: str = "CMC") -> None:
    """The CMC curve (scored probes; and counting failed searches as misses when some were),
    the reported ranks marked; saved as a PNG, atomically."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 5), dpi=120)
    ax = fig.subplots()
    x = np.arange(1, len(metrics["cmc"]) + 1)
    curves = {f"scored probes ({metrics['n_probes_scored']})": metrics["cmc"]}
    if metrics["n_probes_counted_all"] > metrics["n_probes_scored"]:
        label = f"failed searches as misses ({metrics['n_probes_counted_all']})"
        curves[label] = metrics["cmc_all"]
    for (label, cmc), style in zip(curves.items(), ("-", "--"), strict=False):
        (line,) = ax.plot(x, cmc, style, lw=1.3, label=label, drawstyle="steps-mid")
        for r in ranks:
            if r <= len(cmc):
                ax.plot([r], [cmc[r - 1]], "s", color=line.get_color(), ms=5)
                ax.annotate(
                    f"{cmc[r - 1]:.3f}",
                    (r, cmc[r - 1]),
                    textcoords="offset points",
                    xytext=(4, -10),
                    fontsize=7,
                )
    if len(x) > 20:  # long curves: a log rank axis with plain numbers
        from matplotlib.ticker import ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlim(0.5, len(x) + 0.5)  # each rank's rate drawn over [r - 0.5, r + 0.5]
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("rank")
    ax.set_ylabel("identification rate")
    n = metrics["n_gallery"]
    ax.set_title(
        f"{title}: CMC, {n} gallery + {metrics['n_distractors']} distractors   (s rank-k)",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def summary_line(m: dict, ranks: list[int]) -> str:
    rates = ", ".join(f"rank-{r} {m[f'rank{r}']:.4f}" for r in ranks)
    line = f"{rates} over {m['n_probes_scored']} of {m['n_probes']} probes"
    if m["n_probes_counted_all"] > m["n_probes_scored"]:
        line += (
            f" (rank-{ranks[0]} {m[f'rank{ranks[0]}_all']:.4f} counting failed searches as misses)"
        )
    return (
        line + f"; gallery {m['n_gallery']} images of {m['n_gallery_identities']} identities + "
        f"{m['n_distractors']} distractors"
    )
