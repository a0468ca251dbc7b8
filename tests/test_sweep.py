"""Hydra multirun sweeps end to end on tiny synthetic data, and the report."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from face_rec.report import Run, aggregate, overlaps, read_published_roc, report

from .conftest import REPO, tiny_args


def _sweep(tiny, out, *args):
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        *tiny_args(tiny),
        f"hydra.sweep.dir={out}",
        *args,
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_heads_by_seeds_sweep_writes_the_report(tiny, tmp_path):
    out = tmp_path / "sweep"
    _sweep(tiny, out, "head=softmax,arcface,cosface", "seed=1,2")
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    assert {r["overrides"] for r in rows} == {
        f"head={h} seed={s}" for h in ("softmax", "arcface", "cosface") for s in (1, 2)
    }
    md = (out / "results.md").read_text()
    for head in ("softmax", "arcface", "cosface"):
        mine = [r for r in rows if r["overrides"].startswith(f"head={head} ")]
        sel, acc = ([float(r[k]) for r in mine] for k in ("select_accuracy", "accuracy"))
        assert (
            f"| head={head} | 2 | {np.mean(sel):.4f} +- {np.std(sel, ddof=1):.4f} | "
            f"{np.mean(acc):.4f} +- {np.std(acc, ddof=1):.4f} |"
        ) in md
    assert (out / "roc_overlay.png").stat().st_size > 10_000
    assert len(list(out.glob("*/checkpoints/last.pt"))) == 6  # each job in its own directory


def test_a_failed_job_is_listed_not_hidden(tiny, tmp_path):
    out = tmp_path / "sweep"
    _sweep(tiny, out, "model.name=mobilefacenet,nosuchnet")
    with open(out / "results.csv", newline="") as fh:
        rows = {r["overrides"]: r for r in csv.DictReader(fh)}
    assert rows["model.name=mobilefacenet"]["status"] == "ok"
    failed = rows["model.name=nosuchnet"]
    assert failed["status"] == "failed" and "unknown backbone 'nosuchnet'" in failed["error"]
    assert "model.name=nosuchnet" in (out / "results.md").read_text().split("Failed")[1]


def _run(overrides, acc, select=None):
    values = {"accuracy": acc, "eer": 1 - acc, "auc": acc, "select_accuracy": select}
    return Run(REPO, overrides, "ok", values)


def test_aggregates_over_seeds_and_overlap_notes():
    runs = [
        _run(["head=a", "seed=1"], 0.80, 0.70),
        _run(["head=a", "seed=2"], 0.84, 0.76),
        _run(["head=b", "seed=1"], 0.83),
        _run(["head=b", "seed=2"], 0.85),
        _run(["head=c", "seed=1"], 0.95),
        _run(["head=c", "seed=2"], 0.95),
        _run(["head=d", "seed=1"], 0.90),
    ]
    settings = {s["setting"]: s for s in aggregate(runs)}
    assert settings["head=a"]["n"] == 2
    # the sample std (N - 1) over seeds: |0.84 - 0.80| / sqrt(2)
    assert settings["head=a"]["accuracy"] == pytest.approx((0.82, 0.04 / 2**0.5))
    assert settings["head=a"]["select_accuracy"] == pytest.approx((0.73, 0.06 / 2**0.5))
    assert settings["head=b"]["select_accuracy"] is None  # no selection list in these runs
    assert settings["head=d"]["accuracy"] == (0.90, None)  # one seed: no spread to report
    notes = overlaps(list(settings.values()))
    assert len(notes) == 1 and "`head=a` and `head=b`" in notes[0]  # c is clearly apart


def test_published_roc_and_plain_run_dirs(tmp_path):
    (tmp_path / "pub.txt").write_text("0.5 0.0\n0.9 0.1\n1.0 1.0\n")
    fpr, tpr = read_published_roc(tmp_path / "pub.txt")
    assert fpr.tolist() == [0.0, 0.1, 1.0] and tpr.tolist() == [0.5, 0.9, 1.0]
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(
        '{"accuracy_mean": 0.9, "eer": 0.1, "auc": 0.95, "tar_at_far": {"1e-1": 0.9}}'
    )
    (run / "roc.csv").write_text("fpr,tpr,threshold\n0,0,1\n0.1,0.9,0.5\n1,1,0\n")
    summary = report([run], tmp_path / "out", {"paper": tmp_path / "pub.txt"})
    assert summary["runs"] == 1 and (tmp_path / "out" / "roc_overlay.png").is_file()
    with pytest.raises(FileNotFoundError, match="no run directories"):
        report([tmp_path / "out" / "nothing"])


def test_optuna_search_maximises_the_metric_train_py_returns(tiny, tmp_path):
    out = tmp_path / "optuna"
    _sweep(
        tiny,
        out,
        "hparams_search=optuna_margin",
        "head=cosface",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=2",
    )
    accs = [json.loads(p.read_text())["select/accuracy"] for p in out.glob("*/metrics.json")]
    assert len(accs) == 3
    best = yaml.safe_load((out / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(accs)
    assert set(best["best_params"]) == {"head.loss.m", "head.loss.s", "optimizer.lr"}
