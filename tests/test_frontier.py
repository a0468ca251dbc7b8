"""experiments/frontier.py: the accuracy-versus-minutes frontier, per machine."""

import importlib.util
import json
from pathlib import Path

import pytest
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


def _run(
    root, name, minutes, acc, threads, head, least=1, dim=128, protocol=None, data=None, cpu=None
):
    run = root / name
    run.mkdir()
    cfg = {
        "model": {"name": "iresnet18", "width": 0.125, "input_size": 48, "embedding_dim": dim},
        "head": head,
        "trainer": {"max_steps": 100, "batch_size": 64, "head_lr_scale": 10.0},
        "train_data": data
        or {"sources": {"lfw": {}, "celeba299": {}}, "min_images_per_identity": least},
        "optimizer": {"lr": 0.1},
        "augment": {"tight_crop": 0.0, "low_res": 0.0},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    metrics = {
        "val": {
            "accuracy_mean": acc,
            "protocol": protocol
            or "threshold chosen on the calibration list (2200 pairs), applied to this list",
        },  # as train.py writes it
        "val/accuracy": acc,
        "select/accuracy": acc,
        "train": {"wall_time_s": minutes * 60},
        "machine": {"cpu_capability": "AVX512", "threads": threads, "cpu_model": cpu},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    return str(run)


COSFACE = {"name": "cosface", "loss": {"_target_": "CosFaceLoss", "s": 32.0, "m": 0.35}}


def test_the_table_marks_the_frontier_within_each_machine(tmp_path):
    softmax = {"name": "softmax", "loss": {"_target_": "SoftmaxLoss", "m": None}}  # no s, m null
    combined = {"name": "combined", "loss": {"s": 64.0, "m1": 1.0, "m2": 0.3, "m3": 0.2}}
    combined["loss"]["easy_margin"] = True  # a flag, not a number: left out
    runs = [
        _run(tmp_path, "fast", 5, 0.87, 2, COSFACE),
        _run(tmp_path, "slow1", 30, 0.86, 1, softmax, least=2),
        _run(tmp_path, "slow2", 40, 0.85, 1, combined, dim=512),
    ]
    out = tmp_path / "fig" / "frontier"
    points = frontier.main([*runs, "--out", str(out)])
    label = "iresnet18 x0.125 48px d128 cosface (s 32, m 0.35) 100 steps of 64, lr 0.1/1, "
    label += "lfw+celeba299"
    assert points[0]["label"] == label
    assert points[1]["label"].startswith("iresnet18 x0.125 48px d128 softmax 100 steps")
    assert points[1]["label"].endswith("lfw+celeba299 (identities with >= 2 images)")
    assert "d512 combined (s 64, m1 1, m2 0.3, m3 0.2) 100 steps" in points[2]["label"]
    text = out.with_suffix(".md").read_text().split("\n\n")
    recipe_rows = text[0].splitlines()[2:]
    # slow1: slower and less accurate, but the fastest on its machine: on that machine's frontier
    assert [r.endswith("| yes |") for r in recipe_rows] == [True, True, False], recipe_rows
    assert out.with_suffix(".png").stat().st_size > 0


def test_seeds_of_a_recipe_are_one_point_and_earlier_tables_are_read_back(tmp_path):
    runs = [
        _run(tmp_path, "a_seed0", 4, 0.86, 2, COSFACE),
        _run(tmp_path, "a_seed1", 6, 0.88, 2, COSFACE),
        _run(tmp_path, "b", 4.5, 0.865, 2, COSFACE, least=2),  # another recipe
    ]
    first = tmp_path / "first"
    frontier.main([runs[0], runs[2], "--out", str(first)])
    out = tmp_path / "again"
    frontier.main([runs[1], "--previous", str(first.with_suffix(".md")), "--out", str(out)])
    rec = frontier.recipes(frontier.read_run_table(out.with_suffix(".md")))
    a = next(r for r in rec if set(r["runs"]) == {"a_seed0", "a_seed1"})
    assert a["minutes"] == 5 and abs(a["accuracy"] - 0.87) < 1e-9
    assert abs(a["std"] - 0.0141421) < 1e-6  # sample std of 0.86, 0.88
    assert len(rec) == 2
    cv = _run(tmp_path, "a_cv", 5, 0.88, 2, COSFACE, protocol="10-fold CV over stratified folds")
    assert frontier.load_run(Path(cv))["label"].endswith("lfw+celeba299 [k-fold CV]")  # not a
    # seed of recipe a: the same model scored another way
    # b (4.5 min, 0.865): faster than a's mean (5 min, 0.87), less accurate: both on the frontier
    assert len(frontier.frontier(rec)) == 2


def test_a_file_without_a_run_table_is_an_error(tmp_path):
    f = tmp_path / "notes.md"
    f.write_text("# notes\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n")
    with pytest.raises(ValueError, match="no run table"):
        frontier.read_run_table(f)
    f.write_text(
        "| run | recipe | machine | train min | DevTest accuracy | selection |\n"
        "| :--- | --- | --- | ---: | ---: | ---: |\n| a | r | m | 5 | n/a | |\n"
    )
    with pytest.raises(ValueError, match=r"notes.md:3: not a run row"):  # names file and line
        frontier.read_run_table(f)


def test_identity_lists_excluded_images_and_cpu_models_keep_recipes_apart(tmp_path):
    lfw = {"identities": "/data/lfw/peopleDevTrain.txt"}
    runs = {
        name: frontier.load_run(Path(_run(tmp_path, name, 5, 0.87, 1, COSFACE, data=d, cpu=cpu)))
        for name, d, cpu in [
            ("demo", {"sources": {"lfw": lfw}}, None),
            ("intel", {"sources": {"lfw": lfw}}, "Intel(R) Xeon(R) Processor"),
            ("people", {"sources": {"lfw": {"identities": "/tmp/unpaired.txt"}}}, None),
            (
                "images",
                {"sources": {"lfw": lfw}, "exclude_images_of": "/d/pairsDevTrain.txt"},
                None,
            ),
        ]
    }
    assert runs["demo"]["label"].endswith(", lfw")  # the default list is not named
    assert runs["intel"]["label"] == runs["demo"]["label"]
    assert runs["intel"]["machine"] == "AVX512, 1 thread(s), Intel Xeon Processor"
    assert runs["demo"]["machine"] == "AVX512, 1 thread(s)"  # no model recorded
    assert runs["people"]["label"].endswith(", lfw (unpaired.txt)")
    assert runs["images"]["label"].endswith(", lfw, without pairsDevTrain.txt's images")
    assert len(frontier.recipes(list(runs.values()))) == 4  # none merges with another


def test_shifting_after_the_resize_is_a_recipe_of_its_own(tmp_path):
    runs = [Path(_run(tmp_path, n, 5, 0.87, 1, COSFACE)) for n in ("before", "after", "same")]
    for run, aug in zip(runs, ({}, {"resize_first": True}, {"resize_first": True}), strict=True):
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["augment"] |= {"size": 48 if run.name != "same" else 112, **aug}
        cfg["align"] = {"settings": {"size": 112}}
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    before, after, same = (frontier.load_run(r)["label"] for r in runs)
    assert ", shifted at 48 px, " in after
    assert after.replace(", shifted at 48 px", "") == before
    assert same == before  # at the crop's own size there is nothing to resize first


def _labels_with(tmp_path, section, key, value):
    """Labels of three runs: without ``section.key`` (runs before the key have none), with it
    at 0 (off), and with it at ``value``."""
    runs = [Path(_run(tmp_path, n, 5, 0.87, 1, COSFACE)) for n in ("plain", "off", "on")]
    for run, v in zip(runs, (None, 0.0, value), strict=True):
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        if v is not None:
            cfg[section][key] = v
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return [frontier.load_run(r)["label"] for r in runs]


def test_a_weight_average_is_a_recipe_of_its_own(tmp_path):
    plain, off, ema = _labels_with(tmp_path, "trainer", "ema_decay", 0.999)
    assert off == plain and ", weight average 0.999" in ema
    assert ema.replace(", weight average 0.999", "") == plain


def test_greyscale_augmentation_is_a_recipe_of_its_own(tmp_path):
    plain, off, grey = _labels_with(tmp_path, "augment", "grayscale", 0.2)
    assert off == plain and ", greyscale 0.2" in grey
    assert grey.replace(", greyscale 0.2", "") == plain


def test_a_run_with_instruction_sets_held_back_is_a_machine_of_its_own(tmp_path):
    intel = "Intel(R) Xeon(R) Processor"
    native = frontier.load_run(Path(_run(tmp_path, "native", 9, 0.88, 2, COSFACE, cpu=intel)))
    run = Path(_run(tmp_path, "limited", 10, 0.88, 2, COSFACE, cpu=intel))
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["machine"] |= {"cpu_capability": "AVX2", "isa_limits": {"ATEN_CPU_CAPABILITY": "avx2"}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    limited = frontier.load_run(run)
    assert native["machine"] == "AVX512, 2 thread(s), Intel Xeon Processor"
    assert limited["machine"] == "AVX2, 2 thread(s), Intel Xeon Processor, limits torch=avx2"
    assert limited["label"] == native["label"]  # the same recipe, on another machine kind
