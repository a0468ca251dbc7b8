"""Named validation sets during training (val.sets, val=standard) and the eval_lfw suite
(suite=standard, pairs=[...]) on tiny synthetic .bin lists."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from face_rec.data.pairs import write_bin
from face_rec.eval.cli import evaluate_from_config
from face_rec.eval.suite import (
    STANDARD_BINS,
    configured_sets,
    named_lists,
    standard_sets,
    suite_markdown,
    suite_rows,
)
from face_rec.train import train_from_config

from ..conftest import REPO
from ..engine.test_trainer import _cfg, pack  # noqa: F401 (fixture)


def _bin(path, seed, n=20):
    rng = np.random.default_rng(seed)
    crops = rng.integers(0, 256, (2 * n, 112, 112, 3), dtype=np.uint8)
    write_bin(path, crops[:n], crops[n:], np.arange(n) % 2 == 0)
    return path


@pytest.fixture
def bins(tmp_path):
    d = tmp_path / "bins"
    d.mkdir()
    _bin(d / "lfw.bin", 1)
    _bin(d / "cfp_fp.bin", 2)
    _bin(d / "agedb_30.bin", 3)
    return d


# --- which sets


def test_standard_sets_uses_those_present_and_names_the_missing(bins):
    present, missing = standard_sets(bins)
    assert [s.name for s in present] == ["lfw", "cfp_fp", "agedb_30"]  # the papers' order
    assert all(s.pairs == bins / f"{s.name}.bin" for s in present)
    assert missing == [n for n in STANDARD_BINS if n not in ("lfw", "cfp_fp", "agedb_30")]


def test_configured_sets_bins_then_named_sets_and_errors(bins, tmp_path, caplog):
    extra = _bin(tmp_path / "mine.bin", 4)
    with caplog.at_level(logging.WARNING):
        sets = configured_sets({"mine": str(extra), "dev": {"pairs": str(extra)}}, bins)
    assert [s.name for s in sets] == ["lfw", "cfp_fp", "agedb_30", "mine", "dev"]
    assert "calfw.bin" in caplog.text and "cplfw.bin" in caplog.text
    with pytest.raises(FileNotFoundError, match="none of lfw.bin"):
        configured_sets(None, tmp_path / "empty")
    with pytest.raises(ValueError, match="two validation sets are named"):
        configured_sets({"lfw": str(extra)}, bins)
    with pytest.raises(ValueError, match="val.sets.x has no pairs"):
        configured_sets({"x": {"calibration_pairs": "a.txt"}})


def test_named_lists_disambiguates_repeated_stems(tmp_path):
    names = [s.name for s in named_lists(["a/lfw.bin", "b/lfw.bin", "c/cfp_fp.bin"])]
    assert names == ["a_lfw", "b_lfw", "cfp_fp"]


def test_suite_markdown_shows_each_value_or_a_dash():
    m = {
        "n_pairs": 20,
        "n_scored": 19,
        "accuracy_mean": 0.955,
        "accuracy_std": 0.01,
        "auc": 0.9,
        "eer": 0.1,
        "tar_at_far": {"1e-1": 0.5, "1e-2": None},
        "protocol": "10-fold",
    }
    table = suite_markdown(suite_rows({"lfw": m, "x": {**m, "accuracy_std": None}}))
    lines = table.splitlines()
    assert lines[0].split("|")[1:-1] == [
        " set ",
        " pairs ",
        " scored ",
        " accuracy (%) +- std ",
        " AUC ",
        " EER ",
        " TAR@FAR=1e-1 ",
        " TAR@FAR=1e-2 ",
    ]
    assert "| lfw | 20 | 19 | 95.50 +- 1.00 | 0.9000 | 0.1000 | 0.5000 | - |" in lines
    assert "| x | 20 | 19 | 95.50 | 0.9000 | 0.1000 | 0.5000 | - |" in lines


# --- during training


def test_training_validates_every_set_and_selects_apart(pack, tmp_path):  # noqa: F811
    bins = tmp_path / "bins"
    bins.mkdir()
    _bin(bins / "lfw.bin", 1)
    _bin(bins / "cfp_fp.bin", 2)
    sel = _bin(tmp_path / "sel.bin", 5)
    cfg = _cfg(
        pack,
        tmp_path,
        "model=mobilefacenet",
        "model.input_size=32",
        "val=standard",
        f"paths.bins_dir={bins}",
        f"+val.sets.extra.pairs={_bin(tmp_path / 'extra.bin', 6)}",
        f"val.select={sel}",
        "eval.n_bootstrap=0",
        "trainer.max_steps=2",
        "trainer.eval_every=1",
    )
    out = tmp_path / "run"
    m = train_from_config(cfg, out)
    assert list(m["val_sets"]) == ["lfw", "cfp_fp", "extra"]
    assert m["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert m["val"] == m["val_sets"]["lfw"]  # the first set is the run's headline
    for name, s in m["val_sets"].items():
        assert m[f"val/{name}/accuracy"] == s["accuracy_mean"] and s["n_pairs"] == 20
        assert s["outside_fraction"]["n_known"] == 0  # a .bin holds crops only: unknown
    assert m["val/mean_accuracy"] == pytest.approx(
        np.mean([s["accuracy_mean"] for s in m["val_sets"].values()])
    )
    assert m["select/accuracy"] == m["select"]["accuracy_mean"]
    assert "sel.bin" in m["model_selection"]["selected_on"]
    assert "took no part" in m["model_selection"]["note"]
    assert set(m["model_selection"]["tested_on"]) == {"lfw", "cfp_fp", "extra"}
    hist = m["val_history"]
    assert len(hist) == 2 and set(hist[0]["seconds_per_set"]) == {"lfw", "cfp_fp", "extra"}
    assert (out / "scores.csv").is_file() and (out / "scores_cfp_fp.csv").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(out / "tensorboard")).Reload().Tags()
    for name in ("lfw", "cfp_fp", "extra"):
        assert {f"val/{name}/accuracy", f"val/{name}/auc", f"val/{name}/eer"} <= set(
            tags["scalars"]
        )
        assert f"val/{name}/roc" in tags["images"]
    assert {"select/sel/accuracy", "val/seconds"} <= set(tags["scalars"])


@pytest.mark.parametrize("select", ["mean", "cfp_fp", "null"])
def test_selecting_on_reported_sets_is_labelled_optimistic(pack, tmp_path, select):  # noqa: F811
    cfg = _cfg(
        pack,
        tmp_path,
        "model=mobilefacenet",
        "model.input_size=32",
        "val=none",
        f"+val.sets.lfw.pairs={_bin(tmp_path / 'lfw.bin', 1)}",
        f"+val.sets.cfp_fp.pairs={_bin(tmp_path / 'cfp_fp.bin', 2)}",
        f"val.select={select}",
        "eval.n_bootstrap=0",
        "trainer.max_steps=1",
    )
    m = train_from_config(cfg, tmp_path / "run")
    expected = {
        "mean": m["val/mean_accuracy"],
        "cfp_fp": m["val/cfp_fp/accuracy"],
        "null": m["val/lfw/accuracy"],
    }[select]
    assert m["select/accuracy"] == expected
    assert m["model_selection"]["note"].startswith("OPTIMISTIC")
    assert "select" not in m  # no list of its own


def test_each_list_is_read_once_per_run(pack, tmp_path, monkeypatch):  # noqa: F811
    import face_rec.train as T

    calls = []
    real = T.load_pairs
    monkeypatch.setattr(T, "load_pairs", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    cfg = _cfg(
        pack,
        tmp_path,
        "model=mobilefacenet",
        "model.input_size=32",
        "val=none",
        f"+val.sets.a.pairs={_bin(tmp_path / 'a.bin', 1)}",
        f"+val.sets.b.pairs={_bin(tmp_path / 'b.bin', 2)}",
        "eval.n_bootstrap=0",
        "trainer.max_steps=3",
        "trainer.eval_every=1",
    )
    m = train_from_config(cfg, tmp_path / "run")
    assert len(m["val_history"]) == 3 and sorted(map(str, calls)) == sorted(
        [str(tmp_path / "a.bin"), str(tmp_path / "b.bin")]
    )


# --- eval_lfw.py suite


def _eval_cfg(tmp_path, *extra):
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return compose(
            "eval_lfw",
            overrides=[
                f"eval.cache_dir={tmp_path}/cache",
                f"paths.pack_dir={tmp_path}/packs",
                "model=mobilefacenet",
                "model.input_size=32",
                "model.embedding_dim=16",
                "eval.n_bootstrap=0",
                "eval.device=cpu",
                *extra,
            ],
        )


def test_eval_suite_standard_equals_each_list_alone(bins, tmp_path):
    out = tmp_path / "suite"
    res = evaluate_from_config(_eval_cfg(tmp_path, "suite=standard", f"paths.bins_dir={bins}"), out)
    assert list(res["sets"]) == ["lfw", "cfp_fp", "agedb_30"]
    summary = json.loads((out / "suite.json").read_text())
    assert summary["machine"]["torch"] == torch.__version__
    assert res["sets"]["lfw"]["machine"]["threads"] == torch.get_num_threads()
    assert summary["missing"] == ["calfw.bin", "cplfw.bin", "cfp_ff.bin", "vgg2_fp.bin"]
    table = (out / "suite.md").read_text()
    for name in ("lfw", "cfp_fp", "agedb_30"):
        assert (out / name / "metrics.json").is_file() and f"| {name} | 20 |" in table
        alone = evaluate_from_config(
            _eval_cfg(tmp_path, f"pairs={bins}/{name}.bin"), tmp_path / name
        )
        assert summary["sets"][name]["accuracy"] == alone["accuracy_mean"]
        assert summary["sets"][name]["auc"] == alone["auc"]
    assert "calfw.bin" in table and (out / "roc.png").is_file()
    assert summary["mean_accuracy"] == pytest.approx(
        np.mean([summary["sets"][n]["accuracy"] for n in summary["sets"]])
    )


def test_eval_suite_from_a_list_and_its_errors(bins, tmp_path):
    cfg = _eval_cfg(tmp_path, f"pairs=[{bins}/lfw.bin,{bins}/agedb_30.bin]")
    res = evaluate_from_config(cfg, tmp_path / "out")
    assert list(res["sets"]) == ["lfw", "agedb_30"] and res["missing"] == []
    with pytest.raises(ValueError, match="suite='mine' is not a suite"):
        evaluate_from_config(_eval_cfg(tmp_path, "suite=mine"), tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="paths.bins_dir"):
        evaluate_from_config(
            _eval_cfg(tmp_path, "suite=standard", f"paths.bins_dir={tmp_path}/none"), tmp_path / "y"
        )


def test_a_selection_list_that_is_a_reported_set_is_labelled_optimistic(pack, tmp_path):  # noqa: F811
    lfw = _bin(tmp_path / "lfw.bin", 1)
    cfg = _cfg(
        pack,
        tmp_path,
        "model=mobilefacenet",
        "model.input_size=32",
        "val=none",
        f"+val.sets.lfw.pairs={lfw}",
        f"+val.sets.cfp_fp.pairs={_bin(tmp_path / 'cfp_fp.bin', 2)}",
        f"val.select={tmp_path}/./lfw.bin",  # the same file, named differently
        "eval.n_bootstrap=0",
        "trainer.max_steps=1",
    )
    m = train_from_config(cfg, tmp_path / "run")
    assert m["model_selection"]["note"].startswith("OPTIMISTIC for lfw")


def test_standard_bins_with_the_default_holdout_selection(tmp_path):
    from face_rec.align.run import run_alignment

    from ..align.test_run import FakeDetector, _tree

    big = tmp_path / "pack"  # enough identities to hold 10 folds of people out
    run_alignment(_tree(tmp_path / "in", n_ids=60, per_id=3), big, FakeDetector, workers=0)
    bins = tmp_path / "bins"
    bins.mkdir()
    _bin(bins / "lfw.bin", 1)
    _bin(bins / "agedb_30.bin", 3)
    cfg = _cfg(
        big,
        tmp_path,
        "model=mobilefacenet",
        "model.input_size=32",
        "val=standard",
        f"paths.bins_dir={bins}",
        "train_data.holdout_fraction=0.4",
        "eval.n_bootstrap=0",
        "trainer.max_steps=1",
    )
    assert cfg.val.select == "holdout"  # the config's default
    m = train_from_config(cfg, tmp_path / "run")
    assert list(m["val_sets"]) == ["lfw", "agedb_30"]
    assert "held out of training" in m["model_selection"]["selected_on"]
    assert "took no part" in m["model_selection"]["note"]
    assert m["select/accuracy"] == m["select"]["accuracy_mean"]


def test_select_last_keeps_the_final_model_and_chooses_nothing(pack, tmp_path):  # noqa: F811
    cfg = _cfg(
        pack,
        tmp_path,
        "model=mobilefacenet",
        "model.input_size=32",
        "val=none",
        f"+val.sets.lfw.pairs={_bin(tmp_path / 'lfw.bin', 1)}",
        "val.select=last",
        "eval.n_bootstrap=0",
        "trainer.max_steps=2",
        "trainer.eval_every=1",
    )
    out = tmp_path / "run"
    m = train_from_config(cfg, out)
    assert m["select/accuracy"] is None and "select" not in m
    assert "val.select=last" in m["model_selection"]["selected_on"]
    assert m["model_selection"]["best_checkpoint"] is None
    assert m["model_selection"]["best_selection_accuracy"] is None  # not -inf in the JSON
    assert (
        not (out / "checkpoints" / "best.pt").exists()
        and (out / "checkpoints" / "last.pt").exists()
    )


@pytest.mark.parametrize(
    "data", [["train_data=recordio", "train_data.rec=/x.rec"], ["train_data.holdout_fraction=0"]]
)
def test_holdout_selection_without_held_out_identities_stops_before_reading_data(tmp_path, data):
    from face_rec.train import check_selection

    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose("train", overrides=["val=standard", *data])
    with pytest.raises(ValueError, match="val.select=last"):
        check_selection(cfg)


def test_a_set_that_must_be_built_names_the_command(tmp_path):
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose("train", overrides=["val=lfw_tight", f"paths.pack_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="python -m face_rec.data.tight_crop data=lfw"):
        configured_sets(cfg.val.sets, None)
