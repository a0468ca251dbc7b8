"""Every record of a time names the machine: pack summary.json, train and eval metrics.json."""

from __future__ import annotations

import torch

from face_rec.align.run import run_alignment
from face_rec.utils.machine import machine_info

from .align.test_run import FakeDetector, _tree


def _expected(m: dict) -> None:
    assert m["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert m["torch"] == torch.__version__ and m["threads"] == torch.get_num_threads()
    assert m["cpu_model"] and m["gpu"] is None  # no CUDA device asked for


def test_machine_info_on_cpu():
    _expected(machine_info())
    _expected(machine_info("cpu"))


def test_pack_summary_records_the_machine(tmp_path):
    summary = run_alignment(
        _tree(tmp_path / "in", n_ids=2, per_id=2), tmp_path / "p", FakeDetector, workers=0
    )
    _expected(summary["machine"])


def test_training_metrics_record_the_machine_and_the_commit(tiny, tmp_path):
    import json

    from hydra import compose, initialize_config_dir

    from face_rec.train import train_from_config
    from face_rec.utils.machine import code_commit

    from .conftest import REPO, tiny_args

    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        train_from_config(compose("train", overrides=tiny_args(tiny)), tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    _expected(metrics["machine"])
    assert metrics["commit"] == code_commit()  # this checkout's HEAD (None outside git)


def test_instruction_set_limits_in_the_environment_are_recorded(monkeypatch):
    from face_rec.utils.machine import ISA_VARIABLES

    for k in ISA_VARIABLES:
        monkeypatch.delenv(k, raising=False)
    assert machine_info()["isa_limits"] is None
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert machine_info()["isa_limits"] == {
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    }
