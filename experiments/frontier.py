"""Accuracy versus training minutes of finished runs, and the frontier they trace.

    python experiments/frontier.py logs/train/runs/demo_* --out experiments/figures/demo_frontier

Each run directory's ``metrics.json`` (read by :func:`face_rec.report.read_run`) gives the
reported list's accuracy, the selection list's, the training wall time and the machine it ran on;
``config.yaml`` names the recipe (backbone, width, input size, head with its loss settings,
steps, batch size, learning rates, training sources). A run is on the
frontier when no run on the same machine (CPU capability, threads) was both faster and more
accurate. Writes ``<out>.png`` (accuracy against minutes, each machine's frontier joined, one
marker per CPU capability and thread count, so runs timed on different machines are not read as one
curve) and ``<out>.md`` (the table, fastest first).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from face_rec.report import read_run


def load_run(run: Path) -> dict:
    """One run's point: label, minutes (training wall time), accuracy, selection accuracy,
    machine; raises naming the run when it has no final validation."""
    r = read_run(run)
    if r.values.get("accuracy") is None:
        raise ValueError(f"{run}: metrics.json has no val/accuracy (no final validation)")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    m, t, a = cfg["model"], cfg["trainer"], cfg["augment"]
    lr = cfg["optimizer"]["lr"]
    loss = cfg["head"].get("loss") or {}
    margin = ", ".join(  # every numeric setting: s, m; combined's m1-m3; MagFace's bounds
        f"{k} {v:g}"
        for k, v in loss.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    )
    head = cfg["head"]["name"] + (f" ({margin})" if margin else "")
    label = (
        f"{m['name']} x{m.get('width', 1.0):g} {m['input_size']}px {head} "
        f"{t['max_steps']} steps of {t['batch_size']}, lr {lr * t.get('backbone_lr_scale', 1):g}"
        f"/{lr * t.get('head_lr_scale', 1):g}"  # backbone / class centres
        + (", crop aug" if a.get("tight_crop") or a.get("low_res") else "")
        + f", {'+'.join(cfg['train_data']['sources'])}"
    )
    return {
        "run": run.name,
        "label": label,
        "minutes": r.values["train_wall_time_s"] / 60,
        "accuracy": r.values["accuracy"],
        "select": r.values["select_accuracy"],
        "machine": f"{r.machine['cpu_capability']}, {r.machine['threads']} thread(s)",
    }


def frontier(points: list[dict]) -> list[dict]:
    """The points no other point beats on both time and accuracy, fastest first (call it on
    one machine's points: minutes on two machines are not comparable)."""
    best, out = float("-inf"), []
    for p in sorted(points, key=lambda p: (p["minutes"], -p["accuracy"])):
        if p["accuracy"] > best:
            out.append(p)
            best = p["accuracy"]
    return out


def table(points: list[dict], front: list[dict]) -> str:
    rows = [
        "| run | recipe | machine | train min | DevTest accuracy | selection | frontier |",
        "| --- | --- | --- | ---: | ---: | ---: | :---: |",
    ]
    for p in sorted(points, key=lambda p: p["minutes"]):
        sel = "" if p["select"] is None else f"{p['select']:.3f}"
        rows.append(
            f"| {p['run']} | {p['label']} | {p['machine']} | {p['minutes']:.1f} | "
            f"{p['accuracy']:.3f} | {sel} | {'yes' if p in front else ''} |"
        )
    return "\n".join(rows) + "\n"


def plot(points: list[dict], front: list[dict], path: Path, target: float | None) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    for i, machine in enumerate(sorted({p["machine"] for p in points})):
        mine = [p for p in points if p["machine"] == machine]
        ax.scatter(
            [p["minutes"] for p in mine],
            [p["accuracy"] for p in mine],
            marker="os^D"[i % 4],
            label=machine,
        )
    for p in points:
        ax.annotate(p["run"], (p["minutes"], p["accuracy"]), fontsize=7, alpha=0.8)  # the
        # recipe is in the table
    for machine in sorted({p["machine"] for p in front}):
        mine = [p for p in front if p["machine"] == machine]
        ax.plot([p["minutes"] for p in mine], [p["accuracy"] for p in mine], "k--", lw=1)
    if target is not None:
        ax.axhline(target, color="grey", lw=0.8, ls=":", label=f"target {target:.0%}")
    ax.set_xlabel("training wall time (minutes)")
    ax.set_title("recipes: the table beside this figure", fontsize=8)
    ax.set_ylabel("LFW View 1 DevTest accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run directories (metrics.json, config.yaml)")
    p.add_argument("--out", type=Path, required=True, help="writes <out>.png and <out>.md")
    p.add_argument("--target", type=float, default=None, help="a horizontal line, e.g. 0.88")
    args = p.parse_args(argv)
    points = [load_run(r) for r in args.runs]
    front = [
        f
        for m in {p["machine"] for p in points}
        for f in frontier([p for p in points if p["machine"] == m])
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(table(points, front))
    plot(points, front, args.out.with_suffix(".png"), args.target)
    print(table(points, front))
    return points


if __name__ == "__main__":
    main()
