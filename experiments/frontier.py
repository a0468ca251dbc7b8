"""Accuracy versus training minutes of finished runs, per recipe, and the frontier they trace.

    python experiments/frontier.py logs/train/runs/s5_* \
        --previous experiments/figures/demo_frontier_runs_s1-3.md \
        --out experiments/figures/demo_frontier --target 0.88

Each run directory's ``metrics.json`` (read by :func:`face_rec.report.read_run`) gives the
reported list's accuracy, the selection list's, the training wall time and the machine it ran on;
``config.yaml`` names the recipe (backbone, width, input size, head with its loss settings,
steps, batch size, learning rates, a shift done after resizing to the input size (one
commit's runs), training sources with their identity lists (but LFW's
DevTrain list) and their filter, a pair list whose images were kept out; "[k-fold CV]" where the
reported accuracy's threshold is not a calibration list's). ``--previous`` adds the runs of an
earlier output's run table (runs whose directories are gone). Runs of one recipe on one machine
(CPU capability, threads and, where recorded, CPU model and instruction-set limits set in the
environment), i.e. its seeds, make one point: the
mean, with the seeds' sample standard deviation as an error bar. A recipe is on the frontier
when no recipe on the same machine, scored the same way, was both faster and more accurate on
average. Writes ``<out>.png``
(accuracy against minutes, each machine's frontier joined, one marker per machine, so runs
timed on different machines are not read as one curve) and ``<out>.md``
(the recipes, fastest first, then every run).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import yaml

from face_rec.report import read_run
from face_rec.utils.machine import ISA_VARIABLES

CV = " [k-fold CV]"  # label suffix: the reported accuracy's threshold by k-fold CV
DEFAULT_PEOPLE = "peopleDevTrain.txt"  # lfw_devtrain's identity list: not named in a label
RUN_COLUMNS = ["run", "recipe", "machine", "train min", "DevTest accuracy", "selection"]


def load_run(run: Path) -> dict:
    """One run's point: label, minutes (training wall time), accuracy, selection accuracy,
    machine; raises naming the run when it has no final validation."""
    r = read_run(run)
    if r.values.get("accuracy") is None:
        raise ValueError(f"{run}: metrics.json has no val/accuracy (no final validation)")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    m, t, a, d = cfg["model"], cfg["trainer"], cfg["augment"], cfg["train_data"]
    lr = cfg["optimizer"]["lr"]
    loss = cfg["head"].get("loss") or {}
    margin = ", ".join(  # every numeric setting: s, m; combined's m1-m3; MagFace's bounds
        f"{k} {v:g}"
        for k, v in loss.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    )
    head = cfg["head"]["name"] + (f" ({margin})" if margin else "")
    least = d.get("min_images_per_identity", 1)
    excluded = d.get("exclude_images_of")
    label = (
        f"{m['name']} x{m.get('width', 1.0):g} {m['input_size']}px d{m['embedding_dim']} {head} "
        f"{t['max_steps']} steps of {t['batch_size']}, lr {lr * t.get('backbone_lr_scale', 1):g}"
        f"/{lr * t.get('head_lr_scale', 1):g}"  # backbone / class centres
        + (", crop aug" if a.get("tight_crop") or a.get("low_res") else "")
        + (f", weight average {t['ema_decay']:g}" if t.get("ema_decay") else "")
        + (f", greyscale {a['grayscale']:g}" if a.get("grayscale") else "")
        + (f", shifted at {a['size']} px" if _augmented_resized(cfg) else "")
        + f", {'+'.join(_source(n, s) for n, s in d['sources'].items())}"
        + (f" (identities with >= {least} images)" if least > 1 else "")
        + (f", without {Path(excluded).name}'s images" if excluded else "")
        # the reported accuracy's threshold: a calibration list's, or else k-fold CV over the
        # list's own pairs (another number for the same model: its own recipe row)
        + ("" if not r.protocol or "calibration list" in r.protocol else CV)
    )
    return {
        "run": run.name,
        "label": label,
        "minutes": r.values["train_wall_time_s"] / 60,
        "accuracy": r.values["accuracy"],
        "select": r.values["select_accuracy"],
        "machine": f"{r.machine['cpu_capability']}, {r.machine['threads']} thread(s)"
        + (f", {_cpu(r.machine['cpu_model'])}" if r.machine.get("cpu_model") else "")
        + _limits(r.machine.get("isa_limits")),
    }


def _limits(limits: dict | None) -> str:
    """Instruction sets held back by the environment (AVX2 kernels on an AVX-512 CPU), each
    library's limit named: ``, limits mkl=avx2 onednn=avx2 torch=avx2``."""
    if not limits:
        return ""
    named = sorted(f"{ISA_VARIABLES.get(k, k)}={v.lower()}" for k, v in limits.items())
    return ", limits " + " ".join(named)


def _augmented_resized(cfg: dict) -> bool:
    """Whether the run shifted its crops after resizing them to ``augment.size``:
    ``augment.resize_first: true``, a setting of commit 3e64ffb only (2026-12-03; its runs
    interpolated the sub-pixel shift at the training size, a blurrier image, and it was
    replaced by shifting the crop before the resize). The crop's side is taken as
    ``align.settings.size``, a pack's; a RecordIO file or a folder of crops may differ."""
    a = cfg["augment"]
    crop = cfg.get("align", {}).get("settings", {}).get("size")
    return bool(a.get("resize_first") and a.get("size") and crop and a["size"] < crop)


def _source(name: str, source: dict | None) -> str:
    """A training source's name, with its identity list's file name unless it is LFW's
    DevTrain list (every lfw recipe's default)."""
    people = (source or {}).get("identities")
    return (
        name
        if not people or Path(people).name == DEFAULT_PEOPLE
        else f"{name} ({Path(people).name})"
    )


def _cpu(model: str) -> str:
    """'Intel(R) Xeon(R) Processor' -> 'Intel Xeon Processor'."""
    return " ".join(model.replace("(R)", "").replace("(TM)", "").split())


def read_run_table(path: Path) -> list[dict]:
    """The runs of an earlier output's run table (``<out>.md``, the table headed ``| run |``)."""
    points, header = [], None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "run":
            header = cells
        elif header and line.startswith("|") and not cells[0].lstrip(":").startswith("---"):
            try:
                row = dict(zip(header, cells, strict=True))
                points.append(_table_point(row))
            except (ValueError, KeyError) as e:
                raise ValueError(
                    f"{path}:{n}: not a run row of frontier.py's table ({e})"
                ) from None
        elif not line.startswith("|"):
            header = None
    if not points:
        raise ValueError(f"{path}: no run table (a row headed '| run |') in it")
    return points


def _table_point(row: dict) -> dict:
    """A run table row (cells by header) as a point."""
    return {
        "run": row["run"],
        "label": row["recipe"],
        "minutes": float(row["train min"]),
        "accuracy": float(row["DevTest accuracy"]),
        "select": float(row["selection"]) if row["selection"] else None,
        "machine": row["machine"],
    }


def recipes(points: list[dict]) -> list[dict]:
    """One point per recipe and machine: mean minutes, accuracy and selection accuracy over its
    runs (seeds), the accuracies' sample std (0 for one run), the runs; fastest first (a
    recipe's number in the table and the figure is its place here, from 1)."""
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        groups.setdefault((p["label"], p["machine"]), []).append(p)
    out = []
    for (label, machine), runs in groups.items():
        acc = [p["accuracy"] for p in runs]
        sel = [p["select"] for p in runs if p["select"] is not None]
        out.append(
            {
                "label": label,
                "machine": machine,
                "runs": [p["run"] for p in runs],
                "minutes": statistics.mean(p["minutes"] for p in runs),
                "accuracy": statistics.mean(acc),
                "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "select": statistics.mean(sel) if sel else None,
            }
        )
    return sorted(out, key=lambda r: r["minutes"])


def _curve(r: dict) -> tuple[str, bool]:
    """Points that may be compared: one machine kind, one way of choosing the threshold."""
    return r["machine"], r["label"].endswith(CV)


def frontier(points: list[dict]) -> list[dict]:
    """The points no other point beats on both time and accuracy, fastest first (call it on
    one machine's points: minutes on two machines are not comparable)."""
    best, out = float("-inf"), []
    for p in sorted(points, key=lambda p: (p["minutes"], -p["accuracy"])):
        if p["accuracy"] > best:
            out.append(p)
            best = p["accuracy"]
    return out


def _sel(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def table(points: list[dict], rec: list[dict], front: list[dict]) -> str:
    rows = [
        "| # | recipe | machine | runs | train min | DevTest accuracy (mean +- std) | selection "
        "| frontier |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | :---: |",
    ]
    for i, r in enumerate(rec, 1):
        acc = f"{r['accuracy']:.3f}" + (f" +- {r['std']:.3f}" if len(r["runs"]) > 1 else "")
        rows.append(
            f"| {i} | {r['label']} | {r['machine']} | {len(r['runs'])} | {r['minutes']:.1f} | "
            f"{acc} | {_sel(r['select'])} | {'yes' if r in front else ''} |"
        )
    rows += ["", "| " + " | ".join(RUN_COLUMNS) + " |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for p in sorted(points, key=lambda p: p["minutes"]):
        rows.append(
            f"| {p['run']} | {p['label']} | {p['machine']} | {p['minutes']:.1f} | "
            f"{p['accuracy']:.3f} | {_sel(p['select'])} |"
        )
    return "\n".join(rows) + "\n"


def plot(rec: list[dict], front: list[dict], path: Path, target: float | None) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    for i, machine in enumerate(sorted({r["machine"] for r in rec})):
        mine = [r for r in rec if r["machine"] == machine]
        ax.errorbar(
            [r["minutes"] for r in mine],
            [r["accuracy"] for r in mine],
            yerr=[r["std"] for r in mine],
            fmt="os^D"[i % 4],
            capsize=2,
            label=machine,
        )
    for i, r in enumerate(rec, 1):  # the recipe is in the table, by this number
        ax.annotate(f"{i} (n={len(r['runs'])})", (r["minutes"], r["accuracy"]), fontsize=7)
    for curve in sorted({_curve(r) for r in front}):
        mine = [r for r in front if _curve(r) == curve]
        ax.plot([r["minutes"] for r in mine], [r["accuracy"] for r in mine], "k--", lw=1)
    if target is not None:
        ax.axhline(target, color="grey", lw=0.8, ls=":", label=f"target {target:.0%}")
    ax.set_xlabel("training wall time (minutes)")
    ax.set_title("recipes (mean +- std over seeds): the table beside this figure", fontsize=8)
    ax.set_ylabel("LFW View 1 DevTest accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path, help="run directories (metrics.json, config.yaml)")
    p.add_argument(
        "--previous",
        type=Path,
        action="append",
        default=[],
        help="an earlier <out>.md whose run table's runs are added (repeatable)",
    )
    p.add_argument("--out", type=Path, required=True, help="writes <out>.png and <out>.md")
    p.add_argument("--target", type=float, default=None, help="a horizontal line, e.g. 0.88")
    args = p.parse_args(argv)
    points = [q for t in args.previous for q in read_run_table(t)]
    points += [load_run(r) for r in args.runs]
    if not points:
        p.error("no runs: give run directories or --previous tables")
    rec = recipes(points)
    front = [
        f for g in {_curve(r) for r in rec} for f in frontier([r for r in rec if _curve(r) == g])
    ]
    text = table(points, rec, front)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    plot(rec, front, args.out.with_suffix(".png"), args.target)
    print(text)
    return points


if __name__ == "__main__":
    main()
