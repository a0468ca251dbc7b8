"""Named collections of pair lists: the validation sets of a training run (``val.sets``,
``val=standard``) and the suite ``eval_lfw.py`` scores in one command (``suite=standard``,
``pairs=[a.bin,b.bin,c.txt]``).

The standard suite is the insightface validation ``.bin`` files that papers report (10-fold
accuracy): LFW, CFP-FP, AgeDB-30, CALFW, CPLFW, and CFP-FF and VGG2-FP, looked for in one folder
(``paths.bins_dir``) under the names insightface distributes them with.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: the insightface validation sets, in the order papers tabulate them (file ``<name>.bin``)
STANDARD_BINS = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw", "cfp_ff", "vgg2_fp")


@dataclass(frozen=True)
class PairSet:
    """One named pair list: LFW ``.txt``, CSV or ``.bin``; ``calibration_pairs``: the list a
    fold-less list takes its threshold from; ``image_root``: what its image paths are relative
    to (None: the list's own default)."""

    name: str
    pairs: Path
    calibration_pairs: Path | None = None
    image_root: Path | None = None


def standard_sets(bins_dir: str | Path) -> tuple[list[PairSet], list[str]]:
    """The standard ``.bin`` sets present in ``bins_dir`` and the names of those missing."""
    bins_dir = Path(bins_dir)
    present = [PairSet(n, bins_dir / f"{n}.bin") for n in STANDARD_BINS]
    missing = [s.name for s in present if not s.pairs.is_file()]
    return [s for s in present if s.pairs.is_file()], missing


def configured_sets(
    sets: Mapping[str, Mapping | str] | None, bins_dir: str | Path | None = None
) -> list[PairSet]:
    """The pair sets of a ``val`` config: every standard ``.bin`` present in ``bins_dir``
    (when given; the missing ones are logged), then ``sets`` (name -> a path, or a mapping with
    ``pairs`` and optionally ``calibration_pairs``, ``image_root`` and ``build``, the command
    that makes the list, named when it is missing) in their order.

    Raises:
        FileNotFoundError: ``bins_dir`` is given but holds none of the standard sets.
        ValueError: a set without ``pairs``, or two sets with one name.
    """
    out: list[PairSet] = []
    if bins_dir:
        out, missing = standard_sets(bins_dir)
        if not out:
            raise FileNotFoundError(
                f"val=standard: none of {', '.join(f'{n}.bin' for n in STANDARD_BINS)} is in "
                f"{str(bins_dir)!r}; put insightface's validation .bin files there (see README, "
                "'Benchmarks researchers report') or set paths.bins_dir=<folder>"
            )
        if missing:
            log.warning(
                "validation sets missing from %s (skipped): %s",
                bins_dir,
                ", ".join(f"{n}.bin" for n in missing),
            )
    for name, entry in (sets or {}).items():
        entry = {"pairs": entry} if isinstance(entry, (str, Path)) else dict(entry)
        if not entry.get("pairs"):
            raise ValueError(f"val.sets.{name} has no pairs: give val.sets.{name}.pairs=<file>")
        if entry.get("build") and not Path(entry["pairs"]).is_file():
            raise FileNotFoundError(
                f"val.sets.{name}: pair list {str(entry['pairs'])!r} not found; build it first: "
                f"{entry['build']}"
            )
        out.append(
            PairSet(
                str(name),
                Path(entry["pairs"]),
                _path(entry.get("calibration_pairs")),
                _path(entry.get("image_root")),
            )
        )
    names = [s.name for s in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"two validation sets are named {dup}; rename one in val.sets")
    return out


def named_lists(paths: Sequence[str | Path]) -> list[PairSet]:
    """``pairs=[a.bin, b.bin, c.txt]``: each list named by its file stem (``lfw.bin`` -> lfw);
    stems that repeat get their parent folder's name prepended."""
    paths = [Path(p) for p in paths]
    stems = [p.stem for p in paths]
    return [
        PairSet(f"{p.parent.name}_{p.stem}" if stems.count(p.stem) > 1 else p.stem, p)
        for p in paths
    ]


def _path(value) -> Path | None:
    return Path(value) if value else None


# --- the suite table


def suite_rows(results: Mapping[str, dict]) -> list[dict]:
    """One row per set from its :func:`~face_rec.eval.verification.measure_pairs` metrics."""
    rows = []
    for name, m in results.items():
        rows.append(
            {
                "set": name,
                "pairs": m["n_pairs"],
                "scored": m["n_scored"],
                "accuracy": m["accuracy_mean"],
                "accuracy_std": m.get("accuracy_std"),
                "auc": m["auc"],
                "eer": m["eer"],
                "tar_at_far": m["tar_at_far"],
                "protocol": m["protocol"],
            }
        )
    return rows


def suite_markdown(rows: Sequence[dict]) -> str:
    """The suite as a Markdown table: accuracy in % +- the population std over folds (as
    insightface prints it), AUC, EER, TAR@FAR; '-' where a value does not exist."""
    fars = sorted({k for r in rows for k in r["tar_at_far"]}, key=float, reverse=True)
    head = ["set", "pairs", "scored", "accuracy (%) +- std", "AUC", "EER"]
    head += [f"TAR@FAR={k}" for k in fars]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        acc = f"{100 * r['accuracy']:.2f}"
        if r["accuracy_std"] is not None:
            acc += f" +- {100 * r['accuracy_std']:.2f}"
        cells = [r["set"], str(r["pairs"]), str(r["scored"]), acc, _num(r["auc"]), _num(r["eer"])]
        cells += [_num(r["tar_at_far"].get(k)) for k in fars]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "accuracy: each list's protocol (a .bin: 10 contiguous folds, the threshold of each fold "
        "chosen on the other nine); +- is the population std of the fold accuracies (as "
        "insightface prints it). Unscored pairs count as errors."
    )
    return "\n".join(lines) + "\n"


def _num(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def mean_accuracy(results: Mapping[str, dict]) -> float:
    """The mean of the sets' protocol accuracies (``val.select=mean``)."""
    return sum(m["accuracy_mean"] for m in results.values()) / len(results)
