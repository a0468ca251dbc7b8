"""The benchmark scripts run (their --smoke / --quick modes, on the CPU) and record what they
claim: benchmarks/gpu_check.py, train_speed.py and embed_speed.py; the benchmark header."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import itertools
import json
import os
import subprocess
import sys
from datetime import datetime

import numpy as np
import pytest
import torch

from face_rec.eval.embed import embed_crops
from face_rec.utils.machine import benchmark_header, code_commit, machine_info

from .conftest import REPO, checks_later

BENCH = REPO / "benchmarks"
#: one torch thread: on a shared 2-core machine two threads spin-wait for each other
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
BASELINE = ("no_grad", "contiguous", 4)  #: embed_speed --quick's baseline path


def _script(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(BENCH / f"{name}.py"), *args]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _module(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def _header_ok(record: dict) -> None:
    m = record["machine"]
    assert m["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert m["torch"] == torch.__version__ and m["cpus"] >= 1 and m["threads"] >= 1
    datetime.fromisoformat(record["date"])
    assert "commit" in record


# ------------------------------------------------------------------ gpu_check --smoke


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    done = _script("gpu_check", "--smoke", "--deadline-s", "900", "--out", str(out), timeout=900)
    return json.loads(out.read_text()), done.stdout


@pytest.mark.slow
def test_smoke_trains_every_config_of_the_grid(smoke):
    record, stdout = smoke
    _header_ok(record)
    assert record["smoke"] is True and record["machine"]["threads"] == 1
    plan = record["plan"]
    grid = itertools.product(plan["models"], plan["batches"], plan["precisions"], plan["layouts"])
    eager = {
        (r["model"], r["batch"], r["precision"], r["layout"]): r
        for r in record["training"]
        if not r["compiled"]
    }
    assert set(eager) == set(grid) and len(eager) == 12  # 2 models x 3 precisions x 2 layouts
    for r in eager.values():
        assert r["status"] == "ok", r
        assert r["images_per_s"] > 0 and r["peak_memory_mb"] > 0 and np.isfinite(r["loss"])
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["step_s"])
        assert r["timed_steps"] == plan["steps"]
    compiled = [r for r in record["training"] if r["compiled"]]
    assert len(compiled) == 12  # every compiled config is recorded, run or skipped
    ran = [r for r in compiled if r["status"] == "ok"]
    assert len(ran) == 1 and ran[0]["compile_s"] is not None and ran[0]["images_per_s"] > 0
    assert ran[0]["model"] == plan["models"][0] and ran[0]["layout"] == "channels_last"
    assert all(
        r["status"] == "skipped" and "max-compiled" in r["reason"]
        for r in compiled
        if r is not ran[0]
    )
    assert "| model | batch | precision | layout | compile |" in stdout


@pytest.mark.slow
def test_smoke_runs_ddp_partial_fc_and_embedding(smoke):
    record, _ = smoke
    plan = record["plan"]
    ddp = record["ddp"]
    assert ddp["status"] == "ok" and ddp["completed"] is True, ddp
    assert (ddp["world_size"], ddp["backend"], ddp["ddp"]) == (1, "gloo", True)
    assert ddp["images_per_s"] > 0 and ddp["vs_single_process"] > 0
    pfc = {(r["with"], r["sample_rate"]): r for r in record["partial_fc"]}
    assert set(pfc) == {(w, r) for w in ("head", plan["ref_model"]) for r in plan["pfc_rates"]}
    for r in pfc.values():
        assert r["status"] == "ok" and r["step_s"] > 0 and r["peak_memory_mb"] > 0, r
    classes = plan["pfc_classes"]
    assert pfc[("head", 0.1)]["sampled_centres"] == int(0.1 * classes)
    assert pfc[("head", 1.0)]["sampled_centres"] == classes
    rows = record["embedding"]
    assert len(rows) == len(plan["models"]) * len(plan["layouts"]) * len(plan["precisions"])
    for r in rows:
        assert r["status"] == "ok" and r["images_per_s"] > 0, r
        # fp32 is the reference itself; half precision stays close to it
        assert r["min_cosine"] > (0.99999 if r["precision"] == "fp32" else 0.99), r
    assert set(record["section_s"]) == {"training", "ddp", "partial_fc", "embedding", "compiled"}


def test_guard_records_oom_failure_and_deadline():
    gc = _module("gpu_check")
    clock = gc.Clock(100.0)

    def oom():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def broken():
        raise ValueError("bad shape (3, 4)")

    assert gc.guarded({"k": 1}, lambda: {"x": 2.0}, clock, "cpu") == {
        "k": 1,
        "status": "ok",
        "x": 2.0,
    }
    assert gc.guarded({"k": 1}, oom, clock, "cpu")["status"] == "oom"
    failed = gc.guarded({"k": 1}, broken, clock, "cpu")
    assert failed["status"] == "failed" and failed["error"] == "ValueError: bad shape (3, 4)"
    called = []
    skipped = gc.guarded({"k": 1}, lambda: called.append(1) or {}, gc.Clock(5.0), "cpu", 10.0)
    assert skipped["status"] == "skipped" and "deadline" in skipped["reason"] and not called


def test_a_failing_config_does_not_stop_the_others(monkeypatch):
    gc = _module("gpu_check")
    plan = gc.Plan(**gc.SMOKE)

    def fake(name, batch, precision, layout, compiled, plan):
        if precision == "fp16" and not compiled:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        if compiled and name == "iresnet50":
            raise RuntimeError("inductor: no C++ compiler")
        return {"images_per_s": 1.0, "peak_memory_mb": 1.0, "compile_s": 1.0}

    monkeypatch.setattr(gc, "train_config", fake)
    rows = gc.run_training(plan, gc.Clock(100.0), compiled=False)
    assert len(rows) == 12
    assert {r["status"] for r in rows if r["precision"] == "fp16"} == {"oom"}
    assert {r["status"] for r in rows if r["precision"] != "fp16"} == {"ok"}
    plan.max_compiled = None
    rows = gc.run_training(plan, gc.Clock(100.0), compiled=True)
    assert rows[0]["status"] == "failed" and "C++" in rows[0]["error"]
    # the rest would fail alike after minutes of compiling each: skipped, naming the cause
    assert all(r["status"] == "skipped" and "C++" in r["reason"] for r in rows[1:])


def test_a_model_the_trainer_leaves_eager_is_skipped_not_timed_as_compiled():
    """On the CPU the Trainer keeps 8-channel models eager (torch 2.14.1's backward corrupts
    memory compiled): such a config is not reported as a compiled figure, nor as a compile
    failure that would skip the configs after it."""
    gc = _module("gpu_check")
    plan = gc.Plan(**{**gc.SMOKE, "width": 0.125})  # IResNet's first stage: 8 channels
    row = gc.train_config("iresnet50", 4, "fp32", "contiguous", True, plan)
    assert row == {"status": "skipped", "reason": "the Trainer leaves this model eager"}


def test_compiled_configs_run_the_largest_batch_and_channels_last_first():
    gc = _module("gpu_check")
    plan = gc.Plan()
    keys = gc.training_grid(plan, compiled=True)
    assert len(keys) == 24
    first = [(k["model"], k["batch"], k["layout"]) for k in keys[:4]]
    r50, r100 = ("iresnet50", 256, "channels_last"), ("iresnet100", 256, "channels_last")
    assert first == [r50, r50, r50, r100]
    assert {k["batch"] for k in keys[12:]} == {128}


def test_gpu_check_without_cuda_says_what_to_do(monkeypatch):
    gc = _module("gpu_check")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--smoke"):
        gc.make_plan(gc.parse_args([]))


# ------------------------------------------------------------------ train_speed / embed_speed


def test_train_speed_quick_records_eager_and_compiled(tmp_path):
    out = tmp_path / "train_speed.json"
    done = _script(
        "train_speed",
        "--quick",
        "--crop-size",
        "40",
        "--compile",
        "--compile-backend",
        "eager",
        "--out",
        str(out),
    )
    record = json.loads(out.read_text())
    _header_ok(record)
    (row,) = record["rows"]
    assert row["model"] == "mobilefacenet" and row["batch"] == 4
    assert (row["crop_size"], row["input_size"]) == (40, 32)  # 40 px crops trained at 32
    assert row["augment_ms"] > 0 and 0 < row["augment_fraction"] < 1
    for key in ("reference_img_s", "face_rec_img_s", "compiled_img_s", "matmul_gflops"):
        assert row[key] > 0, key
    assert row["compile_s"] is not None and row["compile_backend"] == "eager"
    assert row["ratio"] == pytest.approx(row["face_rec_img_s"] / row["reference_img_s"], abs=0.01)
    assert row["compiled_vs_eager"] == pytest.approx(
        row["compiled_img_s"] / row["face_rec_img_s"], abs=0.01
    )
    assert "| mobilefacenet |" in done.stdout and json.loads(done.stdout.splitlines()[0])


def test_train_speed_times_the_head_it_is_given():
    ts = _module("train_speed")
    args = ts.parse_args(["--quick", "--embedding-dim", "16", "--head", "cosface_cpu"])
    assert ts.build("mobilefacenet", args)(torch.zeros(2, 3, 32, 32)).shape == (2, 16)
    head, loss = ts.build_head(args)
    assert head.weight.shape == (args.classes, 16)
    # conf/head/cosface_cpu.yaml: cosface.yaml's m with s 32, composed as train.py composes it
    assert type(loss).__name__ == "CosFaceLoss" and (loss.s, loss.m) == (32.0, 0.35)
    default = ts.parse_args(["--quick"])
    arcface = ts.build_head(default)[1]  # conf/head/arcface.yaml's, not the demo's m
    assert type(arcface).__name__ == "ArcFaceLoss" and default.loss_config["m"] == 0.5
    assert ts.build_head(default)[0].weight.shape[1] == 512
    with pytest.raises(Exception, match="nohead"):
        ts.parse_args(["--quick", "--head", "nohead"])


def test_embed_speed_quick_checks_every_path_against_embed_crops(tmp_path):
    out = tmp_path / "embed_speed.json"
    done = _script("embed_speed", "--quick", "--out", str(out))
    record = json.loads(out.read_text())
    _header_ok(record)
    rows = record["rows"]
    torch_rows = [r for r in rows if r["engine"] == "torch"]
    # stage 1: both grad modes x the three layouts at the baseline batch; stage 2: the other batch
    layouts = ("contiguous", "channels_last", "channels_last_input")
    assert {(r["grad"], r["layout"]) for r in torch_rows if r["batch"] == 4} == {
        (g, lay) for g in ("no_grad", "inference_mode") for lay in layouts
    }
    assert [r["batch"] for r in torch_rows if r["batch"] != 4] == [8]
    (base,) = [r for r in torch_rows if (r["grad"], r["layout"], r["batch"]) == BASELINE]
    assert base["ratio"] == 1.0
    for r in rows:
        if "error" in r:  # onnxruntime missing or its export failing is reported, not fatal
            assert r["engine"] == "onnxruntime"
            continue
        assert r["correct"] and r["max_abs_diff"] <= 1e-3 and r["min_cosine"] > 0.9999, r
        assert r["ratio"] == pytest.approx(r["img_s"] / base["img_s"])
    assert any(r["engine"] == "embed_crops" for r in rows)
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnxscript"):
        assert sorted(r["batch"] for r in rows if r["engine"] == "onnxruntime") == [4, 8]
    assert record["fastest_correct"]["mobilefacenet"] in done.stdout


def test_embedding_paths_match_embed_crops_and_a_wrong_one_is_caught():
    es = _module("embed_speed")
    crops = es.random_crops(6, seed=1)
    model = es.build_backbone("mobilefacenet", 32, 0.25, crops)
    ref = embed_crops(model, crops, 4)
    models = {
        "contiguous": model,
        "channels_last": copy.deepcopy(model).to(memory_format=torch.channels_last),
        "channels_last_input": model,
    }
    for grad, layout in itertools.product(("no_grad", "inference_mode"), models):
        v = es.Variant("torch", grad, layout, 4)  # batch 4 of 6: a partial last batch too
        agree = es.agreement(es.embed_variant(models[layout], crops, v, flip=True), ref)
        assert agree["max_abs_diff"] < 1e-4 and agree["min_cosine"] > 0.99999, (grad, layout)
    v = es.Variant("torch", "no_grad", "contiguous", 4)
    assert es.agreement(es.embed_variant(model, crops, v, flip=False), ref)["max_abs_diff"] > 1e-3


# ------------------------------------------------------------------ benchmark header


def test_isa_limits_quick_runs_each_side_in_its_own_process(tmp_path):
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("the AVX2 limits apply to x86 CPUs with AVX2 or AVX-512")
    out = tmp_path / "isa.json"
    _script("isa_limits", "--quick", "--out", str(out))
    demo = json.loads(out.read_text())["demo"]
    assert demo["limited_isa_limits"] == {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    }
    assert demo["limited_capability"] == "AVX2"  # torch did run its AVX2 kernels
    img_s = demo["img_s"]
    assert len(img_s["native_runs"]) == len(img_s["limited_runs"]) == 1
    assert img_s["native_runs"][0] > 0 and img_s["limited_runs"][0] > 0
    assert img_s["ratios"] == [round(img_s["limited_runs"][0] / img_s["native_runs"][0], 3)]


def test_every_benchmark_records_the_machine_it_ran_on():
    """Issue 15: every benchmark record names the CPU capability, torch version and threads."""
    scripts = sorted(BENCH.glob("*.py"))
    assert len(scripts) >= 10
    assert [p.name for p in scripts if "benchmark_header(" not in p.read_text()] == []


def test_benchmark_header_names_machine_date_and_commit(tmp_path):
    header = benchmark_header("cpu")
    _header_ok(header)
    assert header["machine"]["gpu"] is None and header["machine"]["cuda"] is None
    commit = code_commit()
    if commit is not None:  # a git checkout: 40 hex digits, maybe marked dirty
        assert len(commit.removesuffix("+dirty")) == 40
    assert code_commit(tmp_path) is None  # not a repository
    assert machine_info()["threads"] == torch.get_num_threads()


def test_a_failing_section_is_recorded_and_the_others_run(monkeypatch, tmp_path):
    gc = _module("gpu_check")
    plan = gc.Plan(**{**gc.SMOKE, "sections": ["partial_fc", "embedding"]})

    def broken(plan, clock):
        raise RuntimeError("no NCCL here")

    monkeypatch.setattr(gc, "run_partial_fc", broken)
    monkeypatch.setattr(gc, "run_embedding", lambda plan, clock: [{"model": "m", "status": "ok"}])
    record = gc.run_all(plan, tmp_path / "r.json", smoke=True)
    assert record["section_errors"] == {"partial_fc": "RuntimeError: no NCCL here"}
    assert record["partial_fc"] == [] and record["embedding"] == [{"model": "m", "status": "ok"}]
    assert json.loads((tmp_path / "r.json").read_text())["embedding"] == record["embedding"]
    assert "training" not in record["section_s"]  # not asked for


@pytest.mark.parametrize("task", ["train", "embed"])
def test_malloc_speed_quick_alternates_fresh_processes(tmp_path, task):
    out = tmp_path / "malloc_speed.json"
    done = _script("malloc_speed", "--quick", "--task", task, "--repeats", "2", "--out", str(out))
    record = json.loads(out.read_text())
    assert record["settings"]["task"] == task
    _header_ok(record)
    rows = record["rows"]
    assert set(rows) == {"default", "keep_freed_memory"}
    for r in rows.values():
        assert len(r["img_s"]) == 2 and all(x > 0 for x in r["img_s"])
        assert 0 <= r["median_kernel_share"] < 1
    ratio = rows["keep_freed_memory"]["median_img_s"] / rows["default"]["median_img_s"]
    assert record["ratio"] == pytest.approx(ratio)
    assert "keep_freed_memory / default" in done.stdout


# ------------------------------------------------------------------ pack_currency


def test_pack_currency_reads_no_file_on_the_stat_path_and_every_file_on_the_other(
    tmp_path, monkeypatch, capsys
):
    import face_rec.utils.stamps as stamps
    from face_rec.align.run import AlignSettings, run_alignment

    from .align.test_run import FakeDetector, _tree

    root = _tree(tmp_path / "in", n_ids=2, per_id=3)
    made = {"settings": AlignSettings(size=64), "detector_settings": {"min_face_size": 20}}
    run_alignment(root, tmp_path / "pack", FakeDetector, workers=0, **made)
    real, read = stamps.file_digest, []
    monkeypatch.setattr(stamps, "file_digest", lambda path: read.append(path) or real(path))
    checks_later(monkeypatch)  # checks a minute later: the files' stamps are settled
    run_alignment(root, tmp_path / "pack", FakeDetector, workers=0, **made)  # records them
    read.clear()
    bench = _module("pack_currency")
    argv = ["pack_currency.py", "--pack", str(tmp_path / "pack"), "--image-dir", str(root)]
    monkeypatch.setattr(sys, "argv", [*argv, "--repeats", "2"])
    bench.main()
    assert len(read) == 2 * 6  # the content path, twice; the stat path read nothing
    assert "pack_rows on 6 files, median of 2: stat path" in capsys.readouterr().out
    (root / "id00" / "img0.png").write_bytes(b"other bytes")
    with pytest.raises(SystemExit, match="is not current"):
        bench.main()
