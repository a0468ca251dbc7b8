import json

import numpy as np
import pytest
import torch
from torch import nn

from face_rec.data.pairs import Pairs, write_bin
from face_rec.eval.cli import summary_line
from face_rec.eval.embed import embed_crops
from face_rec.eval.metrics import best_threshold
from face_rec.eval.verification import (
    PairImages,
    evaluate_pairs,
    leaked_identities,
    score_pairs,
    stratified_folds,
    verification_metrics,
)


class TinyNet(nn.Module):
    """A small random embedding network (B, 3, 112, 112) -> (B, 16)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 5, stride=4)
        self.fc = nn.Linear(8 * 4 * 4, 16)

    def forward(self, x):
        return self.fc(nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4).flatten(1))


def _pairs(n_images=6, left=(0, 2, 4), right=(1, 3, 5), same=(True, False, True), root=None):
    return Pairs(
        images=[f"id{k // 2}/{k}.jpg" for k in range(n_images)],
        left=np.array(left),
        right=np.array(right),
        same=np.array(same),
        fold=np.full(len(left), -1),
        protocol="csv",
        source="x.csv",
        root=root,
    )


def test_embeddings_use_flip_tta_and_are_unit():
    crops = np.random.default_rng(0).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    net = TinyNet()
    emb = embed_crops(net, crops, batch_size=2)
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    x = (x - 0.5) / 0.5
    with torch.no_grad():
        ref = nn.functional.normalize(net(x) + net(x.flip(3)), dim=1).numpy()
        plain = nn.functional.normalize(net(x), dim=1).numpy()
    np.testing.assert_allclose(emb, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(embed_crops(net, crops, flip=False), plain, atol=1e-5)
    assert not np.allclose(emb, plain, atol=1e-3)
    assert net.training  # mode restored


def test_scores_are_cosines_and_unusable_images_are_skipped():
    emb = np.array([[1, 0], [0, 1], [0.6, 0.8], [0.6, 0.8], [1, 0], [-1, 0]], float)
    problems = ["", "", "", "", "", "file not found"]
    scores, skipped = score_pairs(emb, _pairs(), problems)
    np.testing.assert_allclose(scores[:2], [0.0, 1.0])
    assert np.isnan(scores[2])
    assert skipped == [
        {
            "pair": 2,
            "a": "id2/4.jpg",
            "b": "id2/5.jpg",
            "same": True,
            "reason": "id2/5.jpg: file not found",
        }
    ]


def test_protocol_choice_and_far_reporting():
    rng = np.random.default_rng(0)
    labels = np.tile(np.r_[np.ones(50, bool), np.zeros(50, bool)], 10)
    scores = rng.normal(labels * 1.5, 1.0)
    folds = np.repeat(np.arange(10), 100)
    kf = verification_metrics(scores, labels, folds, n_bootstrap=50)
    assert kf["protocol"].startswith("10-fold") and len(kf["thresholds"]) == 10
    assert kf["tar_at_far"]["1e-2"] is not None and kf["tar_at_far"]["1e-3"] is None
    assert "500 negative pairs" in kf["tar_at_far_notes"]["1e-3"]
    lo, hi = kf["ci95"]["accuracy"]
    assert lo < kf["accuracy_mean"] < hi

    calib = (rng.normal(labels * 1.5, 1.0), labels, np.arange(len(labels)))
    cal = verification_metrics(scores, labels, None, calibration=calib, n_bootstrap=50)
    t = cal["thresholds"][0]
    assert cal["accuracy_mean"] == pytest.approx(np.mean((scores > t) == labels))
    assert cal["accuracy_std"] is None and "calibration" in cal["protocol"]
    assert cal["accuracy_best_threshold"]["accuracy"] >= cal["accuracy_mean"]

    cv = verification_metrics(scores, labels, None, n_bootstrap=50)
    assert "own pairs" in cv["protocol"] and len(cv["fold_accuracies"]) == 10
    # the calibrated list also carries the other option's figure: the same as scoring it alone
    for key in ("accuracy_mean", "accuracy_scored_only", "accuracy_std", "accuracy_sem"):
        assert cal["accuracy_kfold_cv"][key] == cv[key], key
    assert "accuracy_kfold_cv" not in cv and "accuracy_kfold_cv" not in kf
    # by hand: per stratified fold, the best threshold of the other folds
    f = stratified_folds(labels)
    hand = []
    for k in range(10):
        t_k = best_threshold(scores[f != k], labels[f != k])[0]
        hand.append(np.mean((scores[f == k] > t_k) == labels[f == k]))
    assert cal["accuracy_kfold_cv"]["accuracy_mean"] == pytest.approx(np.mean(hand))
    # an unscorable pair (NaN) counts as an error in the 10-fold figure too, and the summary
    # line shows both numbers
    holed = scores.copy()
    holed[0] = np.nan  # a matched pair: right at any threshold if scored
    cal2 = verification_metrics(holed, labels, None, calibration=calib, n_bootstrap=0)
    cv2 = cal2["accuracy_kfold_cv"]
    assert cv2["accuracy_mean"] < cv2["accuracy_scored_only"]
    cal2.update(n_pairs=len(labels), n_scored=len(labels) - 1)
    line = summary_line(cal2)
    assert f"accuracy {cal2['accuracy_mean']:.4f}" in line
    assert f"10-fold CV over its own pairs: {cv2['accuracy_mean']:.4f}" in line


def test_stratified_folds_balance_classes():
    labels = np.r_[np.ones(25, bool), np.zeros(35, bool)]
    folds = stratified_folds(labels)
    for f in range(10):
        assert 2 <= labels[folds == f].sum() <= 3 and 3 <= (~labels[folds == f]).sum() <= 4


def test_evaluate_pairs_end_to_end_on_a_bin(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (40, 112, 112, 3), dtype=np.uint8)
    noisy = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    same = np.arange(40) % 2 == 0
    right = np.where(same[:, None, None, None], noisy, np.roll(noisy, 1, axis=0))
    write_bin(tmp_path / "t.bin", base, right, same)
    from face_rec.data.pairs import read_bin

    pairs = read_bin(tmp_path / "t.bin")
    images = PairImages(pairs.crops, [""] * len(pairs.images), np.zeros(len(pairs.images), bool))
    out = evaluate_pairs(TinyNet(), pairs, images, batch_size=16, n_bootstrap=20)
    assert out["n_pairs"] == out["n_scored"] == 40 and out["skipped"] == []
    assert out["accuracy_mean"] > 0.9  # near-duplicates vs different noise images
    json.dumps({k: v for k, v in out.items() if k not in ("scores", "roc", "image_quality")})


def test_leakage_names_shared_identities_and_says_when_it_cannot_check():
    pairs = _pairs(root="x")
    assert leaked_identities(pairs, {"id1", "zed"}) == ["id1"]
    assert leaked_identities(pairs, {"zed"}) == []
    assert leaked_identities(_pairs(root=None), {"id1"}) is None  # .bin: no identities
    flat = _pairs(root="x")
    flat.images = [p.replace("/", "_") for p in flat.images]  # a CSV of flat file names
    assert leaked_identities(flat, {"id1_2.jpg"}) is None


def _identity_pairs(n_ids=40, per_id=10, seed=0, spread=1.0):
    """Pairs grouped by identity whose difficulty varies by identity (as real lists do)."""
    rng = np.random.default_rng(seed)
    n = n_ids * per_id
    images = [f"id{i:03d}/{k}.jpg" for i in range(n_ids) for k in range(2 * per_id)]
    same = np.tile(np.arange(per_id) % 2 == 0, n_ids)
    hard = np.repeat(rng.normal(0, spread, n_ids), per_id)  # per-identity offset
    scores = rng.normal(same * 1.5 - hard * (2 * same - 1), 0.5)
    pairs = Pairs(
        images=images,
        left=np.arange(0, 2 * n, 2),
        right=np.arange(1, 2 * n, 2),
        same=same,
        fold=np.full(n, -1),
        protocol="csv",
        source="p.csv",
        root="r",
    )
    return pairs, scores


def test_bootstrap_resamples_identities_and_refits_thresholds():
    from face_rec.eval.verification import resampling_units

    pairs, scores = _identity_pairs()
    units, name = resampling_units(pairs)
    assert "identities" in name and len(np.unique(units)) == 40
    by_id = verification_metrics(scores, pairs.same, None, n_bootstrap=300, units=(units, name))
    by_pair = verification_metrics(scores, pairs.same, None, n_bootstrap=300)
    width = np.diff(by_id["ci95"]["accuracy"])[0]
    assert width > 1.3 * np.diff(by_pair["ci95"]["accuracy"])[0]  # correlated pairs: wider
    assert "identities" in by_id["ci95_method"] and "refit" in by_id["ci95_method"]


def test_unscored_pairs_count_as_errors_in_the_protocol_accuracy():
    from face_rec.eval.verification import measure_pairs

    pairs, _ = _identity_pairs(n_ids=20, per_id=10)
    m = len(pairs.images)
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(m, 8))
    emb[pairs.right] = np.where(pairs.same[:, None], emb[pairs.left], emb[pairs.right])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)  # matched pairs identical: all right
    problems = [""] * m
    problems[int(pairs.right[3])] = "file not found"  # one missing image
    images = PairImages(np.zeros((m, 2, 2, 3), np.uint8), problems, np.zeros(m, bool))
    out = measure_pairs(pairs, images, emb, n_bootstrap=20)
    assert out["n_scored"] == out["n_pairs"] - 1
    assert out["accuracy_scored_only"] == 1.0
    assert out["accuracy_mean"] == pytest.approx(1 - 1 / 200)  # 200 pairs, 10-fold: one wrong
    assert out["accuracy_mean"] < out["accuracy_scored_only"]
    assert "count as errors" in out["unscored_note"]


def test_pair_images_are_read_from_a_current_dataset_pack(tmp_path, caplog):
    import os

    from face_rec.align.run import AlignSettings, run_alignment
    from face_rec.data.pack import open_images, read_manifest
    from face_rec.eval.verification import align_pair_images

    from ..align.test_run import FakeDetector, _interrupting, _tree

    root = _tree(tmp_path / "in", n_ids=3, per_id=2)
    dataset = tmp_path / "packs" / "ds"
    run_alignment(root, dataset, FakeDetector, workers=0)
    images = ["id00/img0.png", "id00/img1.png", "id02/img1.png"]
    pairs = Pairs(
        images=images,
        left=np.array([0, 0]),
        right=np.array([1, 2]),
        same=np.array([True, False]),
        fold=np.full(2, -1),
        protocol="csv",
        source="p.csv",
        root=str(root),
    )
    never = _interrupting(0)  # a detector that stops the test if anything is detected
    reuse = [tmp_path / "packs" / "absent", dataset]
    got = align_pair_images(pairs, tmp_path / "cache", never, workers=0, reuse=reuse)
    rows = {r["source"]: r for r in read_manifest(dataset / "manifest.csv")}
    ref = open_images(dataset)
    for k, src in enumerate(images):
        np.testing.assert_array_equal(got.crops[k], ref[rows[src]["image_index"]])
        assert got.fallback[k] == (rows[src]["status"] == "fallback")
    assert got.fallback.any() and not got.fallback.all()  # both kinds of row were read
    assert not (tmp_path / "cache").exists()
    assert "not used" not in caplog.text  # a current pack: no warning

    with pytest.raises(KeyboardInterrupt):  # other settings: the pack is not this alignment
        align_pair_images(
            pairs, tmp_path / "cache", never, AlignSettings(size=96), workers=0, reuse=reuse
        )
    assert f"the pack {dataset} holds every image of p.csv" in caplog.text
    assert "settings.size: pack 112, now 96" in caplog.text  # the warning names the difference
    caplog.clear()
    changed = root / "id02" / "img1.png"
    os.utime(changed, ns=(10**9, 10**9))  # copied again: a new time, the same bytes
    copied = align_pair_images(pairs, tmp_path / "cache", never, workers=0, reuse=reuse)
    np.testing.assert_array_equal(copied.crops, got.crops)
    assert "not what this alignment" not in caplog.text  # still the dataset's pack, no warning
    changed.write_bytes(changed.read_bytes() + b"\0")  # other bytes (PNG ignores the tail)
    with pytest.raises(KeyboardInterrupt):
        align_pair_images(pairs, tmp_path / "cache", never, workers=0, reuse=reuse)
    assert "not what this alignment would make now" in caplog.text
    assert "1 of its 6 source files have other contents" in caplog.text
    assert "aligned afresh into" in caplog.text
    run = align_pair_images(pairs, tmp_path / "cache", FakeDetector, workers=0, reuse=reuse)
    np.testing.assert_array_equal(run.crops, got.crops)  # aligned afresh: the same pixels
    caplog.clear()
    again = align_pair_images(pairs, tmp_path / "cache", never, workers=0, reuse=reuse)
    np.testing.assert_array_equal(again.crops, got.crops)
    assert "read from the cache an earlier run aligned" in caplog.text  # not "aligned afresh"


def test_error_analysis_applies_each_pairs_own_cv_threshold():
    """A list without folds scored by 10-fold CV: each pair's threshold is its CV fold's, as the
    protocol applied it (not the median over folds)."""
    from face_rec.analysis import _thresholds

    pairs, scores = _identity_pairs(n_ids=20, per_id=10, spread=2.0)
    m = verification_metrics(scores, pairs.same, None, n_bootstrap=5)
    t = _thresholds(m, pairs)
    folds = stratified_folds(pairs.same)
    correct = (scores > t) == pairs.same
    for f in range(10):
        assert correct[folds == f].mean() == pytest.approx(m["fold_accuracies"][f])
    assert len(np.unique(t)) > 1
