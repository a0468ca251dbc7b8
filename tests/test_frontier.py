"""experiments/frontier.py: the accuracy-versus-minutes frontier, per machine."""

import importlib.util
import json

import yaml

from .conftest import REPO

spec = importlib.util.spec_from_file_location("frontier", REPO / "experiments" / "frontier.py")
frontier = importlib.util.module_from_spec(spec)
spec.loader.exec_module(frontier)


def _p(run, minutes, accuracy, machine="AVX512, 2 thread(s)"):
    return {"run": run, "minutes": minutes, "accuracy": accuracy, "machine": machine}


def test_a_run_is_on_the_frontier_only_when_nothing_faster_is_as_accurate():
    pts = [_p("a", 5, 0.80), _p("b", 6, 0.79), _p("c", 7, 0.85), _p("d", 7, 0.84), _p("e", 9, 0.85)]
    assert [p["run"] for p in frontier.frontier(pts)] == ["a", "c"]


def test_the_table_marks_the_frontier_within_each_machine(tmp_path):
    cosface = {"name": "cosface", "loss": {"_target_": "CosFaceLoss", "s": 32.0, "m": 0.35}}
    softmax = {"name": "softmax", "loss": {"_target_": "SoftmaxLoss", "m": None}}  # no s, m null
    combined = {"name": "combined", "loss": {"s": 64.0, "m1": 1.0, "m2": 0.3, "m3": 0.2}}
    combined["loss"]["easy_margin"] = True  # a flag, not a number: left out
    for name, minutes, acc, threads, head in [
        ("fast", 5, 0.87, 2, cosface),
        ("slow1", 30, 0.86, 1, softmax),
        ("slow2", 40, 0.85, 1, combined),
    ]:
        run = tmp_path / name
        run.mkdir()
        cfg = {
            "model": {"name": "iresnet18", "width": 0.125, "input_size": 48},
            "head": head,
            "trainer": {"max_steps": 100, "batch_size": 64, "head_lr_scale": 10.0},
            "train_data": {"sources": {"lfw": {}, "celeba299": {}}},
            "optimizer": {"lr": 0.1},
            "augment": {"tight_crop": 0.0, "low_res": 0.0},
        }
        (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        metrics = {
            "val": {"accuracy_mean": acc},  # as train.py writes it (also flat: val/accuracy)
            "val/accuracy": acc,
            "select/accuracy": acc,
            "train": {"wall_time_s": minutes * 60},
            "machine": {"cpu_capability": "AVX512", "threads": threads},
        }
        (run / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "fig" / "frontier"
    runs = [str(tmp_path / n) for n in ("fast", "slow1", "slow2")]
    points = frontier.main([*runs, "--out", str(out)])
    label = "iresnet18 x0.125 48px cosface (s 32, m 0.35) 100 steps of 64, lr 0.1/1, lfw+celeba299"
    assert points[0]["label"] == label
    assert points[1]["label"].startswith("iresnet18 x0.125 48px softmax 100 steps")
    assert "combined (s 64, m1 1, m2 0.3, m3 0.2) 100 steps" in points[2]["label"]
    rows = out.with_suffix(".md").read_text().splitlines()[2:]
    # slow1: slower and less accurate, but the fastest on its machine: on that machine's frontier
    assert [r.endswith("| yes |") for r in rows] == [True, True, False], rows
    assert out.with_suffix(".png").stat().st_size > 0
