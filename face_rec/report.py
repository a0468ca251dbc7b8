"""Aggregate runs into one table and one picture: ``python report.py <sweep dir> [more dirs]``.

Reads every run directory found (a Hydra multirun's job folders, or plain run folders): its
``.hydra/overrides.yaml``, ``metrics.json`` (or ``error.txt`` for a failed run) and ``roc.csv``.
Writes into the first directory (or ``--out``): ``results.csv`` (one row per run),
``results.md`` (runs, then settings aggregated over seeds as mean +- sample std, with a note where
two settings' intervals overlap, then the failed runs with their errors) and ``roc_overlay.png``
(every run, and any published ROC files, on one log-FPR plot).
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hydra.experimental.callback import Callback

from face_rec.eval import metrics as M
from face_rec.eval.report import plot_roc
from face_rec.utils.io import atomic_path

COLUMNS = (
    "run",
    "overrides",
    "common_overrides",
    "status",
    "select_accuracy",
    "accuracy",
    "accuracy_std",
    "eer",
    "auc",
    "tar_at_far_1e-1",
    "tar_at_far_1e-2",
    "tar_at_far_1e-3",
    "train_wall_time_s",
    "train_images_per_s",
    "error",
)
log = logging.getLogger(__name__)
HEADLINE = ("accuracy", "eer", "auc", "tar_at_far_1e-1", "tar_at_far_1e-2", "tar_at_far_1e-3")


@dataclass
class Run:
    path: Path
    overrides: list[str]
    status: str  #: ok | failed | incomplete
    values: dict = field(default_factory=dict)
    error: str = ""
    roc: tuple[np.ndarray, np.ndarray] | None = None
    machine: dict | None = None  #: what the run's times were measured on (metrics.json)
    protocol: str | None = None  #: how the headline accuracy was scored (its threshold)
    common: frozenset = frozenset()  #: overrides shared by every run of the report

    @property
    def varying(self) -> list[str]:
        """The overrides that set this run apart from the others of the report."""
        return [o for o in self.overrides if o not in self.common]

    @property
    def label(self) -> str:
        return " ".join(self.varying) or self.path.name

    @property
    def setting(self) -> str:
        """The overrides without the seed: runs differing only in seed share a setting."""
        return " ".join(o for o in self.varying if not o.startswith("seed=")) or "(defaults)"


def find_runs(root: Path) -> list[Path]:
    """Run directories under ``root`` (itself included): those with metrics, an error, or a
    Hydra job record."""
    found = []
    for p in sorted([root, *root.rglob("*")], key=_natural):
        if p.is_dir() and any((p / n).exists() for n in ("metrics.json", "error.txt", ".hydra")):
            found.append(p)
    return found


def _natural(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]


def read_run(path: Path) -> Run:
    overrides = []
    if (path / ".hydra" / "overrides.yaml").is_file():
        overrides = [
            ln[2:].strip()
            for ln in (path / ".hydra" / "overrides.yaml").read_text().splitlines()
            if ln.startswith("- ")
        ]
    if (path / "error.txt").is_file():
        error = (path / "error.txt").read_text().strip().splitlines()  # the message comes first
        return Run(path, overrides, "failed", error=error[0] if error else "unknown error")
    if not (path / "metrics.json").is_file():
        return Run(path, overrides, "incomplete", error="no metrics.json (still running or killed)")
    m = json.loads((path / "metrics.json").read_text())
    val = m.get("val", m)  # train.py nests validation under "val"; eval_lfw.py does not
    tar = val.get("tar_at_far", {})
    values = {
        "select_accuracy": m.get("select/accuracy"),  # train.py: the model-selection list's
        "accuracy": val.get("accuracy_mean"),
        "accuracy_std": val.get("accuracy_std"),
        "eer": val.get("eer"),
        "auc": val.get("auc"),
        **{f"tar_at_far_{k}": tar.get(k) for k in ("1e-1", "1e-2", "1e-3")},
        "train_wall_time_s": m.get("train", {}).get("wall_time_s"),
        "train_images_per_s": m.get("train", {}).get("images_per_s"),
    }
    roc = read_roc_csv(path / "roc.csv")
    return Run(
        path,
        overrides,
        "ok",
        values,
        roc=roc,
        machine=m.get("machine"),
        protocol=val.get("protocol"),
    )


def read_roc_csv(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(fpr, tpr) from a run's ``roc.csv`` (columns fpr, tpr[, threshold])."""
    if not path.is_file():
        return None
    data = np.genfromtxt(path, delimiter=",", names=True)
    return np.atleast_1d(data["fpr"]), np.atleast_1d(data["tpr"])


def read_published_roc(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A published ROC file as on the LFW results page: two columns, TPR then FPR, per line."""
    rows = [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip()]
    try:
        tpr, fpr = (np.array([float(r[i]) for r in rows]) for i in (0, 1))
    except (IndexError, ValueError) as e:
        raise ValueError(f"{path}: expected two numeric columns 'TPR FPR' per line") from e
    order = np.argsort(fpr, kind="stable")
    return fpr[order], tpr[order]


def aggregate(runs: list[Run]) -> list[dict]:
    """Per setting: number of seeds, and (mean, std) of the selection list's accuracy and each
    headline metric; std is the sample std (N - 1: a few seeds' population std understates the
    spread, by 1.4x at two seeds), None for a single run."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        if r.status == "ok":
            groups[r.setting].append(r)
    out = []
    for setting, members in groups.items():
        row = {"setting": setting, "n": len(members)}
        for key in ("select_accuracy", *HEADLINE, "train_wall_time_s", "train_images_per_s"):
            vals = [r.values[key] for r in members if r.values.get(key) is not None]
            std = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
            row[key] = (float(np.mean(vals)), std) if vals else None
        out.append(row)
    return out


def overlaps(settings: list[dict], key: str = "accuracy") -> list[str]:
    """Notes for pairs of settings whose mean +- std intervals of ``key`` overlap."""
    notes = []
    scored = [s for s in settings if s[key] is not None and s[key][1] is not None]
    for i, a in enumerate(scored):
        for b in scored[i + 1 :]:
            (ma, sa), (mb, sb) = a[key], b[key]
            if abs(ma - mb) <= sa + sb:
                notes.append(
                    f"`{a['setting']}` and `{b['setting']}`: {key} intervals overlap "
                    f"({ma:.4f} +- {sa:.4f} vs {mb:.4f} +- {sb:.4f}); the difference "
                    "is within seed noise"
                )
    return notes


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, tuple):
        return f"{v[0]:.4f}" if v[1] is None else f"{v[0]:.4f} +- {v[1]:.4f}"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_report(runs: list[Run], out: Path, published: dict[str, Path] | None = None) -> dict:
    """Write results.csv, results.md and roc_overlay.png into ``out``; return the aggregates."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for r in runs:
            w.writerow(
                {
                    "run": str(r.path),
                    "overrides": " ".join(r.varying),
                    "common_overrides": " ".join(sorted(r.common)),
                    "status": r.status,
                    "error": r.error,
                    **r.values,
                }
            )
    settings = aggregate(runs)
    lines = [
        "# Results",
        "",
        f"{len(runs)} runs: "
        f"{sum(r.status == 'ok' for r in runs)} ok, "
        f"{sum(r.status == 'failed' for r in runs)} failed, "
        f"{sum(r.status == 'incomplete' for r in runs)} incomplete.",
        "",
        "## Runs",
        "",
        "| run | selection acc. | accuracy | EER | AUC | TAR@1e-2 | train s | img/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        if r.status == "ok":
            v = r.values
            acc = _fmt(v["accuracy"]) + (
                f" +- {v['accuracy_std']:.4f}" if v.get("accuracy_std") is not None else ""
            )
            lines.append(
                f"| {r.label} | {_fmt(v['select_accuracy'])} | {acc} | {_fmt(v['eer'])} | "
                f"{_fmt(v['auc'])} | "
                f"{_fmt(v['tar_at_far_1e-2'])} | {_fmt(v['train_wall_time_s'])} | "
                f"{_fmt(v['train_images_per_s'])} |"
            )
    lines += [
        "",
        "Accuracy: the reported (test) list's protocol accuracy at the final step, +- the "
        "population std of its fold accuracies (insightface's convention; `accuracy_sem` in "
        "metrics.json is the LFW page's standard error). Selection acc.: the list that chose "
        "best.pt and the sweep objective (`model_selection` in each run's metrics.json); pick "
        "among runs by it, not by the test accuracy.",
        "",
        "## Settings (mean +- sample std over seeds)",
        "",
        "| setting | runs | selection acc. | accuracy | EER | AUC | TAR@1e-2 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in settings:
        lines.append(
            f"| {s['setting']} | {s['n']} | {_fmt(s['select_accuracy'])} | "
            f"{_fmt(s['accuracy'])} | {_fmt(s['eer'])} | {_fmt(s['auc'])} | "
            f"{_fmt(s['tar_at_far_1e-2'])} |"
        )
    notes = overlaps(settings)
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    bad = [r for r in runs if r.status != "ok"]
    if bad:
        lines += [
            "",
            "## Failed or incomplete runs",
            "",
            *[f"- {r.label} ({r.path}): {r.status}: {r.error}" for r in bad],
        ]
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    curves = {r.label: _curve(*r.roc) for r in runs if r.roc is not None}
    groups = {r.label: r.setting for r in runs if r.roc is not None}  # seeds share a colour
    for name, path in (published or {}).items():
        curves[f"{name} (published)"] = _curve(*read_published_roc(path))
        groups[f"{name} (published)"] = f"{name} (published)"
    if curves:
        plot_roc(out / "roc_overlay.png", curves, title="ROC overlay", groups=groups)
    return {"runs": len(runs), "settings": settings, "notes": notes}


def _curve(fpr: np.ndarray, tpr: np.ndarray) -> dict:
    return {
        "roc": {"fpr": fpr, "tpr": tpr},
        "auc": M.auc(fpr, tpr),
        "eer": M.eer(fpr, tpr),
        "tar_at_far": {},
    }


def report(
    dirs: list[Path], out: Path | None = None, published: dict[str, Path] | None = None
) -> dict:
    """Report on every run under ``dirs``; outputs go to ``out`` (default: the first dir)."""
    runs = [read_run(p) for d in dirs for p in find_runs(Path(d))]
    if not runs:
        raise FileNotFoundError(
            f"no run directories (metrics.json, error.txt or .hydra) under {[str(d) for d in dirs]}"
        )
    if len(runs) > 1:
        common = frozenset.intersection(*(frozenset(r.overrides) for r in runs))
        for r in runs:
            r.common = common
    return write_report(runs, Path(out or dirs[0]), published)


class ReportCallback(Callback):
    """Hydra callback: writes the report into the sweep directory when a multirun ends
    (registered in ``conf/hydra/train.yaml``)."""

    def on_multirun_end(self, config, **kwargs) -> None:
        try:
            summary = report([Path(config.hydra.sweep.dir)])
            log.info(
                "sweep report: %s/results.md (%d runs)", config.hydra.sweep.dir, summary["runs"]
            )
        except FileNotFoundError as e:  # every job died before writing anything
            log.warning("no sweep report: %s", e)
