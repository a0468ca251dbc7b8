"""eval_lfw end to end on real LFW View 1 pairs (a slice of DevTest; skipped without data)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from face_rec.eval.cli import evaluate_from_config

from ..conftest import REPO

pytestmark = pytest.mark.realdata


def _slice_view1(src, dst, n, extra_matched=()):
    """The first n matched and n mismatched pairs of a View 1 list, in View 1 format."""
    lines = src.read_text().splitlines()
    total = int(lines[0])
    matched = lines[1 : 1 + n] + list(extra_matched)
    mismatched = lines[1 + total : 1 + total + len(matched)]
    dst.write_text("\n".join([str(len(matched)), *matched, *mismatched]) + "\n")
    return dst


def _cfg(tmp_path, lfw_root, pairs, calib, *extra):
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return compose(
            "eval_lfw",
            overrides=[
                f"paths.data_dir={lfw_root.parent}",
                f"pairs={pairs}",
                f"calibration_pairs={calib}",
                f"eval.cache_dir={tmp_path}/cache",
                f"paths.pack_dir={tmp_path}/packs",  # no dataset pack of the developer's is read
                "model=mobilefacenet",
                "model.input_size=64",
                "eval.n_bootstrap=50",
                "eval.device=cpu",
                "align.workers=0",
                *extra,
            ],
        )


def test_devtest_slice_end_to_end(lfw_root, tmp_path):
    pairs = _slice_view1(
        lfw_root / "pairsDevTest.txt",
        tmp_path / "test.txt",
        30,
        extra_matched=["Aaron_Eckhart\t1\t99"],
    )  # image 99 does not exist
    calib = _slice_view1(lfw_root / "pairsDevTrain.txt", tmp_path / "calib.txt", 30)
    (tmp_path / "trained" / "Abdullah_Gul").mkdir(parents=True)
    cfg = _cfg(tmp_path, lfw_root, pairs, calib, f"trained_on={tmp_path}/trained")
    m = evaluate_from_config(cfg, tmp_path / "out")

    assert m["n_pairs"] == 62 and m["n_scored"] == 61
    assert len(m["skipped"]) == 1 and "Aaron_Eckhart_0099.jpg" in m["skipped"][0]["reason"]
    assert "not found" in m["skipped"][0]["reason"]
    assert m["leaked_identities"] == ["Abdullah_Gul"]
    assert m["accuracy_mean"] < m["accuracy_scored_only"]  # the unscorable pair is an error
    assert m["tar_at_far"]["1e-1"] is not None and m["tar_at_far"]["1e-2"] is None
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for key in (
        "accuracy_mean",
        "accuracy_std",
        "accuracy_sem",
        "accuracy_scored_only",
        "ci95_method",
        "leakage_note",
        "fold_accuracies",
        "thresholds",
        "auc",
        "eer",
        "tar_at_far",
        "ci95",
        "n_pairs",
        "n_scored",
        "skipped",
        "protocol",
    ):
        assert key in saved
    with open(tmp_path / "out" / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 62 and rows[-32]["score"] == ""  # the missing image's pair
    scores = np.array([float(r["score"]) for r in rows if r["score"]])
    same = np.array([r["same"] == "1" for r in rows if r["score"]])
    t = saved["thresholds"][0]
    assert saved["accuracy_scored_only"] == pytest.approx(np.mean((scores > t) == same))
    assert saved["accuracy_mean"] == pytest.approx(np.sum((scores > t) == same) / 62)
    assert (tmp_path / "out" / "roc.png").stat().st_size > 10_000

    # quality: each image's feature norm; error versus reject keeps the protocol's decisions
    with open(tmp_path / "out" / "images.csv", newline="") as fh:
        images = {r["image"]: r for r in csv.DictReader(fh)}
    assert images["Aaron_Eckhart/Aaron_Eckhart_0099.jpg"]["status"] == "failed"
    assert images["Aaron_Eckhart/Aaron_Eckhart_0099.jpg"]["quality"] == ""
    quality = {k: float(r["quality"]) for k, r in images.items() if r["quality"]}
    assert len(quality) == len(images) - 1 and min(quality.values()) > 0
    evr = saved["error_vs_reject"]
    assert evr["reject_fraction"][0] == 0 and evr["error"][0] == pytest.approx(
        1 - saved["accuracy_mean"]
    )
    pair_q = [  # the unscored pair (unknown quality) is rejected first
        min(quality.get(r["a"], -np.inf), quality.get(r["b"], -np.inf)) for r in rows
    ]
    decided = [r["score"] != "" and (float(r["score"]) > t) == (r["same"] == "1") for r in rows]
    order = np.lexsort((np.arange(62), pair_q))
    for r, err in zip(evr["reject_fraction"], evr["error"], strict=True):
        kept = order[int(round(r * 62)) :]
        assert err == pytest.approx(1 - np.mean([decided[i] for i in kept]))
    assert (tmp_path / "out" / "error_vs_reject.png").is_file()
    assert saved["quality"]["percentiles"]["50"] > 0

    # a second evaluation finds every pair image aligned: no detection runs
    packs = sorted((tmp_path / "cache").iterdir())
    before = [(p / "images.npy").stat().st_mtime_ns for p in packs]
    again = evaluate_from_config(cfg, tmp_path / "out2")
    assert [(p / "images.npy").stat().st_mtime_ns for p in packs] == before
    assert again["accuracy_mean"] == m["accuracy_mean"]


def test_missing_pair_list_is_a_clear_error(lfw_root, tmp_path):
    cfg = _cfg(tmp_path, lfw_root, tmp_path / "nope.txt", tmp_path / "nope2.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        evaluate_from_config(cfg, tmp_path / "out")


def test_a_missing_calibration_list_is_said_and_the_protocol_named(lfw_root, tmp_path, caplog):
    """A fold-less list whose calibration_pairs file is missing (e.g. FACE_REC_DATA unset) is
    scored by 10-fold CV over its own pairs, and the run says so instead of switching quietly."""
    pairs = _slice_view1(lfw_root / "pairsDevTest.txt", tmp_path / "test.txt", 20)
    cfg = _cfg(tmp_path, lfw_root, pairs, tmp_path / "no_calib.txt")
    with caplog.at_level("WARNING"):
        m = evaluate_from_config(cfg, tmp_path / "out")
    assert "no_calib.txt does not exist" in caplog.text and "10-fold CV" in caplog.text
    assert m["protocol"].startswith("10-fold CV") and "accuracy_kfold_cv" not in m


def test_view2_format_runs_the_fold_protocol(lfw_root, tmp_path):
    """A pairs.txt in View 2's format (here 2 folds x 6 + 6 pairs built from DevTest's lists)
    is scored fold by fold, each with the threshold chosen on the other fold."""
    lines = (lfw_root / "pairsDevTest.txt").read_text().splitlines()
    matched, mismatched = lines[1:13], lines[501:513]
    body = matched[:6] + mismatched[:6] + matched[6:] + mismatched[6:]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("2\t6\n" + "\n".join(body) + "\n")
    m = evaluate_from_config(_cfg(tmp_path, lfw_root, pairs, "null"), tmp_path / "out")
    assert m["pair_format"] == "lfw-view2" and m["calibration_pairs"] is None
    assert len(m["fold_accuracies"]) == 2 and len(m["thresholds"]) == 2
    assert m["accuracy_mean"] == pytest.approx(np.mean(m["fold_accuracies"]))
    with open(tmp_path / "out" / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["fold"] for r in rows] == ["0"] * 12 + ["1"] * 12
    scores = np.array([float(r["score"]) for r in rows])
    same = np.array([r["same"] == "1" for r in rows])
    # fold 0 is scored with the threshold chosen on fold 1 only
    from face_rec.eval.metrics import best_threshold

    t0, _ = best_threshold(scores[12:], same[12:])
    assert m["thresholds"][0] == pytest.approx(t0)
    assert m["fold_accuracies"][0] == pytest.approx(np.mean((scores[:12] > t0) == same[:12]))


def test_a_bin_list_reports_leakage_as_not_checked(lfw_root, tmp_path):
    """A .bin carries aligned crops, no identities: leakage is null with a note, never []."""
    from face_rec.data.pairs import write_bin

    crops = np.random.default_rng(0).integers(0, 256, (40, 112, 112, 3), dtype=np.uint8)
    write_bin(tmp_path / "x.bin", crops[:20], crops[20:], np.arange(20) % 2 == 0)
    (tmp_path / "trained" / "Abdullah_Gul").mkdir(parents=True)
    cfg = _cfg(tmp_path, lfw_root, tmp_path / "x.bin", "null", f"trained_on={tmp_path}/trained")
    evaluate_from_config(cfg, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["leaked_identities"] is None
    assert saved["leakage_note"] == "not checked: this pair list carries no identities"
    assert saved["accuracy_std"] is not None and saved["accuracy_sem"] is not None


def test_an_onnx_export_scores_view1_pairs_as_its_torch_model(lfw_root, tmp_path):
    """The same checkpoint evaluated as torch and as its ONNX export on real View 1 pairs."""
    import torch

    from face_rec.export import export_onnx
    from face_rec.models.registry import create_model
    from face_rec.utils.checkpoint import save_checkpoint

    torch.manual_seed(0)
    spec = {"name": "mobilefacenet", "embedding_dim": 32, "input_size": 64}
    model = create_model(**spec).eval()
    save_checkpoint(tmp_path / "m.pt", {"model": model.state_dict(), "config": {"model": spec}})
    export_onnx(model, tmp_path / "m.onnx")
    pairs = _slice_view1(lfw_root / "pairsDevTest.txt", tmp_path / "test.txt", 30)
    calib = _slice_view1(lfw_root / "pairsDevTrain.txt", tmp_path / "calib.txt", 30)
    as_torch = evaluate_from_config(
        _cfg(tmp_path, lfw_root, pairs, calib, f"checkpoint={tmp_path}/m.pt"), tmp_path / "t"
    )
    onnx_cfg = _cfg(tmp_path, lfw_root, pairs, calib)
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        onnx_model = compose("eval_lfw", overrides=["model=onnx", f"model.path={tmp_path}/m.onnx"])
    onnx_cfg.model = onnx_model.model
    as_onnx = evaluate_from_config(onnx_cfg, tmp_path / "o")
    np.testing.assert_allclose(as_onnx["scores"], as_torch["scores"], atol=1e-5)
    assert as_onnx["accuracy_mean"] == as_torch["accuracy_mean"]
    assert as_onnx["auc"] == pytest.approx(as_torch["auc"], abs=1e-3)


@pytest.mark.parametrize(("device", "keep"), [("cpu", True), ("cpu", False), ("cuda", True)])
def test_evaluation_keeps_freed_memory_on_the_cpu_as_configured(monkeypatch, device, keep):
    """eval.keep_freed_memory: eval_lfw, eval_ijb and identify set glibc's malloc through
    eval_device, on the CPU only."""
    import face_rec.eval.cli as cli
    import face_rec.utils.allocator as allocator

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose(
            "eval_lfw", overrides=[f"eval.device={device}", f"eval.keep_freed_memory={keep}"]
        )
    assert cli.eval_device(cfg) == device
    assert len(calls) == (device == "cpu" and keep)
