"""FaceEmbedder (the Python API), the embed.py job (alignment + resumable embedding) and the
deployment threshold (threshold_at_far, eval's calibrate_far), on synthetic data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from face_rec import FaceEmbedder
from face_rec.align.run import run_alignment
from face_rec.data.images import ImageReadError
from face_rec.data.pack import open_images, read_manifest
from face_rec.embed_job import PARTS_DIR, embed_folder
from face_rec.eval.cli import write_threshold
from face_rec.eval.embed import embed_crops
from face_rec.eval.metrics import threshold_at_far
from face_rec.models import load_model
from face_rec.models.registry import create_model
from face_rec.utils.checkpoint import save_checkpoint

from .align.test_run import FakeDetector, _tree
from .conftest import REPO

SPEC = {"name": "mobilefacenet", "embedding_dim": 16, "input_size": 32}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    m = create_model("mobilefacenet", embedding_dim=16, input_size=32)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, {"model": m.state_dict(), "config": {"model": dict(SPEC)}})
    return path


@pytest.fixture
def model(checkpoint):
    return load_model(checkpoint)


def _crops(n, size=112, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- FaceEmbedder


@pytest.mark.parametrize("flip", [True, False])
def test_aligned_crops_embed_as_embed_crops_does(checkpoint, model, flip):
    crops = _crops(5)
    embedder = FaceEmbedder.from_checkpoint(checkpoint, align=False, batch_size=2, flip=flip)
    emb, quality, status = embedder.embed_with_quality(list(crops))
    ref = embed_crops(model, crops, batch_size=2, flip=flip)
    raw = embed_crops(model, crops, batch_size=2, flip=flip, normalize=False)
    assert emb.dtype == np.float32 and emb.shape == (5, 16)
    np.testing.assert_allclose(emb, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(quality, np.linalg.norm(raw, axis=1), rtol=1e-5)
    assert status == ["ok"] * 5
    np.testing.assert_array_equal(embedder.embed(crops), emb)  # an (N, H, W, 3) array: N inputs


def test_raw_photos_get_the_alignment_stages_crops_and_statuses(tmp_path, model):
    root = _tree(tmp_path / "in", n_ids=2, per_id=3)
    run_alignment(root, tmp_path / "pack", FakeDetector, workers=0)
    rows = read_manifest(tmp_path / "pack" / "manifest.csv")
    paths = [root / r["source"] for r in rows]
    embedder = FaceEmbedder(model, detector=FakeDetector(), batch_size=4)

    crops, status = embedder.prepare(paths)
    assert status == [r["status"] for r in rows]
    assert {"ok", "fallback"} <= set(status)
    pack = open_images(tmp_path / "pack")
    for crop, r in zip(crops, rows, strict=True):
        np.testing.assert_array_equal(crop, pack[r["image_index"]])  # the very same pixels
    emb, _, status2 = embedder.embed_with_quality(paths)
    assert status2 == status
    np.testing.assert_allclose(emb, embed_crops(model, np.asarray(pack)), rtol=1e-5, atol=1e-6)


def test_paths_arrays_and_pil_images_embed_the_same(tmp_path, model):
    root = _tree(tmp_path / "in", n_ids=1, per_id=4)
    paths = sorted((root / "id00").iterdir())
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    embedder = FaceEmbedder(model, detector=FakeDetector(), batch_size=3)
    by_path = embedder.embed(paths)
    np.testing.assert_array_equal(embedder.embed([str(p) for p in paths]), by_path)
    np.testing.assert_array_equal(embedder.embed(arrays), by_path)
    np.testing.assert_array_equal(embedder.embed([Image.open(p) for p in paths]), by_path)
    one = embedder.embed(paths[1])  # one input (a batch of one: float rounding differs)
    np.testing.assert_allclose(one[0], by_path[1], rtol=1e-5, atol=1e-6)


def test_an_unreadable_file_costs_only_its_row(tmp_path, model):
    good = tmp_path / "good.png"
    Image.fromarray(_crops(1)[0]).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a jpeg")
    missing = tmp_path / "missing.png"
    embedder = FaceEmbedder(model, align=False, batch_size=1)  # the last two batches fail whole
    emb, quality, status = embedder.embed_with_quality([good, bad, missing])
    assert status[0] == "ok"
    assert status[1].startswith("failed: ") and "bad.jpg" in status[1]
    assert "cannot decode" in status[1]
    assert status[2].startswith("failed: ") and "not found" in status[2]
    assert emb.shape == (3, 16) and np.isnan(emb[1:]).all() and np.isnan(quality[1:]).all()
    np.testing.assert_array_equal(emb[0], embedder.embed([good])[0])
    assert np.isfinite(quality[0]) and quality[0] > 0
    with pytest.raises(ImageReadError, match=r"2 of 3 inputs.*bad\.jpg.*missing\.png"):
        embedder.embed([good, bad, missing])
    _, _, status = embedder.embed_with_quality([np.zeros((50, 40, 3), np.uint8)])
    assert "not a square aligned crop" in status[0]  # align=False takes aligned crops only
    _, _, status = embedder.embed_with_quality([good, good, np.zeros((8, 8, 3), np.float32)])
    assert status[2].startswith("failed: input 2: expected an (H, W, 3) uint8")


# ----------------------------------------------------------------------------- embed.py's job


class Counting(nn.Module):
    """Wraps a model: counts the rows it embeds; raises KeyboardInterrupt after ``fail_after``
    forward calls (a killed job)."""

    def __init__(self, inner: nn.Module, fail_after: int | None = None) -> None:
        super().__init__()
        self.inner, self.fail_after = inner, fail_after
        self.input_size = inner.input_size
        self.calls = self.rows = 0

    def forward(self, x):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.rows += len(x)
        return self.inner(x)


def _job(root, out, model, detector=FakeDetector, chunk_size=5):
    embedder = FaceEmbedder(model, align=False, batch_size=4)
    align = {"make_detector": detector, "workers": 0, "chunk_size": 4}
    return embed_folder(root, out, embedder, "model-id", align_kwargs=align, chunk_size=chunk_size)


def _tree_with_a_broken_file(root):
    _tree(root, n_ids=3, per_id=4)
    (root / "id01" / "broken.jpg").write_text("not a jpeg")
    return root


def _index(out):
    with open(out / "index.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_embed_folder_writes_embeddings_consistent_with_the_pack(tmp_path, model):
    root = _tree_with_a_broken_file(tmp_path / "in")
    out = tmp_path / "out"
    summary = _job(root, out, model)

    manifest = read_manifest(out / "pack" / "manifest.csv")
    index = _index(out)
    emb = np.load(out / "embeddings.npy")
    assert [(r["source"], r["identity"]) for r in index] == [
        (r["source"], r["identity"]) for r in manifest
    ]
    assert [r["status"] for r in index] == [r["status"] for r in manifest]
    assert [int(r["row"]) for r in index] == [r["image_index"] for r in manifest]
    broken = next(r for r in index if r["source"] == "id01/broken.jpg")
    assert broken["row"] == "-1" and broken["quality"] == "" and "cannot decode" in broken["reason"]
    pack = np.asarray(open_images(out / "pack"))
    assert emb.dtype == np.float32 and emb.shape == (len(pack), 16)
    np.testing.assert_allclose(emb, embed_crops(model, pack), rtol=1e-5, atol=1e-6)
    raw = embed_crops(model, pack, normalize=False)
    quality = [float(r["quality"]) for r in index if r["row"] != "-1"]
    np.testing.assert_allclose(quality, np.linalg.norm(raw, axis=1), rtol=1e-5)
    assert summary["counts"] == json.loads((out / "pack" / "summary.json").read_text())["counts"]
    assert summary["n_embedded"] == len(pack) and summary["embedding_dim"] == 16
    assert json.loads((out / "summary.json").read_text())["complete"] is True
    assert not (out / PARTS_DIR).exists()


def test_an_interrupted_embedding_resumes_without_recomputing(tmp_path, model):
    root = _tree_with_a_broken_file(tmp_path / "in")
    _job(root, tmp_path / "whole", model)

    # chunks of 5 rows: 4 crops + the broken file (1 batch of 4 x 2 calls: image, flip), 5 (2
    # batches: 4 calls), 3 (2 calls); killed at the 4th call, in the second chunk
    with pytest.raises(KeyboardInterrupt):
        _job(root, tmp_path / "resumed", Counting(model, fail_after=3))
    done = len(list((tmp_path / "resumed" / PARTS_DIR).glob("*.npz")))
    n_chunks = -(-13 // 5)
    assert 0 < done < n_chunks
    assert not (tmp_path / "resumed" / "summary.json").exists()

    counting = Counting(model)
    summary = _job(root, tmp_path / "resumed", counting)
    remaining = [r for r in _index(tmp_path / "whole")[done * 5 :] if r["row"] != "-1"]
    assert counting.rows == 2 * len(remaining)  # each image and its flip; nothing done twice
    assert summary["this_run"]["resumed_images"] == done * 5
    for name in ("embeddings.npy", "index.csv"):
        assert (tmp_path / "whole" / name).read_bytes() == (
            tmp_path / "resumed" / name
        ).read_bytes()
    assert not (tmp_path / "resumed" / PARTS_DIR).exists()
    again = _job(root, tmp_path / "resumed", Counting(model, fail_after=0))  # would raise
    assert again["key"] == summary["key"]


def test_an_interrupted_alignment_resumes_inside_the_job(tmp_path, model):
    root = _tree(tmp_path / "in", n_ids=3, per_id=4)
    _job(root, tmp_path / "whole", model)

    def interrupting():
        return FakeDetector(fail_after=1)

    with pytest.raises(KeyboardInterrupt):
        _job(root, tmp_path / "resumed", model, detector=interrupting)
    summary = _job(root, tmp_path / "resumed", model)
    assert summary["alignment"]["this_run"]["resumed_images"] > 0
    for name in ("embeddings.npy", "index.csv"):
        assert (tmp_path / "whole" / name).read_bytes() == (
            tmp_path / "resumed" / name
        ).read_bytes()


def test_aligned_crop_folders_are_embedded_without_detection(tmp_path, model):
    crops = _crops(3)
    for k, c in enumerate(crops):
        (tmp_path / "in" / f"id{k % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(c).save(tmp_path / "in" / f"id{k % 2}" / f"c{k}.png")

    def embedder():  # built when needed (after any alignment)
        return FaceEmbedder(model, align=False, batch_size=2)

    summary = embed_folder(tmp_path / "in", tmp_path / "out", embedder, "m", aligned=True)
    index = _index(tmp_path / "out")
    assert [r["source"] for r in index] == ["id0/c0.png", "id0/c2.png", "id1/c1.png"]
    assert summary["counts"] == {"ok": 3, "fallback": 0, "failed": 0}
    emb = np.load(tmp_path / "out" / "embeddings.npy")
    np.testing.assert_allclose(emb, embed_crops(model, crops[[0, 2, 1]]), rtol=1e-5, atol=1e-6)

    for path in (tmp_path / "in").rglob("*.png"):  # copied again: new times, the same bytes
        path.write_bytes(path.read_bytes())
    copied = embed_folder(tmp_path / "in", tmp_path / "out", embedder, "m", aligned=True)
    assert copied["key"] == summary["key"]
    changed = tmp_path / "in" / "id1" / "c1.png"
    changed.write_bytes(changed.read_bytes() + b"\0")  # other bytes: embedded again
    assert (
        embed_folder(tmp_path / "in", tmp_path / "out", embedder, "m", aligned=True)["key"]
        != summary["key"]
    )


def test_embed_config_composes_and_passes_the_checker():
    from hydra import compose, initialize_config_dir

    from face_rec.config_check import check_config

    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose(
            "embed", overrides=["checkpoint=/m.pt", "input_dir=/photos", "output_dir=/out"]
        )
    assert cfg.aligned is False and cfg.align.detector.min_face_size == 20
    check_config(cfg)
    from face_rec.embed_job import default_output_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose("embed", overrides=["checkpoint=/runs/a/best.pt", "input_dir=/data/photos"])
    check_config(cfg)  # output_dir null: one folder per command, so the same command resumes
    out = default_output_dir(cfg)
    assert out.parent == Path(cfg.paths.log_dir) / "embed" and out.name.startswith("photos-best-")
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        other = compose("embed", overrides=["checkpoint=/runs/b/best.pt", "input_dir=/data/photos"])
    assert default_output_dir(other) != out  # another run's best.pt: another folder


# ----------------------------------------------------------------------------- threshold at FAR


def test_threshold_at_far_by_hand():
    neg = [0.95, 0.8, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05, 0.0, -0.1]
    pos = [0.99, 0.9, 0.85, 0.7, 0.5]
    scores = np.array(neg + pos + [np.nan])  # the unscored pair is left out
    labels = np.array([False] * 10 + [True] * 5 + [False])
    # one false accept allowed (0.95): accept down to 0.85 (3 of 5), midway to the next score 0.8
    assert threshold_at_far(scores, labels, 0.1) == pytest.approx((0.825, 0.1, 0.6))
    # two allowed (0.95, 0.8): down to 0.7, midway to the third negative (0.6)
    assert threshold_at_far(scores, labels, 0.2) == pytest.approx((0.65, 0.2, 0.8))
    assert threshold_at_far(scores, labels, 0.15) == pytest.approx((0.825, 0.1, 0.6))
    with pytest.raises(ValueError, match=r"10 scored negative pairs.*at least 20"):
        threshold_at_far(scores, labels, 0.05)


def test_threshold_at_far_matches_sklearn():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(200, 2000))
        labels = rng.random(n) < 0.4
        scores = rng.normal(labels * 1.2, 1.0)
        if trial % 2:
            scores = np.round(scores, 1)  # many ties
        for far in (1e-2, 0.03, 0.1, 0.5):
            fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
            k = np.flatnonzero(fpr <= far)[-1]
            t, f, tar = threshold_at_far(scores, labels, far)
            assert (f, tar) == pytest.approx((fpr[k], tpr[k]))
            assert thr[k + 1] < t < thr[k]  # midway: > and >= select the same pairs
            for accepted in (scores > t, scores >= t):
                assert accepted[~labels].mean() == pytest.approx(f) and f <= far
                assert accepted[labels].mean() == pytest.approx(tar)
            assert (scores >= thr[k + 1])[~labels].mean() > far  # one score lower breaks it


def test_calibrate_far_writes_threshold_json(tmp_path):
    rng = np.random.default_rng(1)
    same = np.r_[np.ones(300, bool), np.zeros(3000, bool)]
    scores = np.where(same, rng.normal(0.6, 0.15, same.size), rng.normal(0.1, 0.1, same.size))
    scores[[0, 400]] = np.nan  # one positive and one negative pair unscored
    path = tmp_path / "threshold.json"
    record = write_threshold(
        path, scores, same, 1e-3, pairs="p.txt", checkpoint="best.pt", model=None, flip=True
    )
    written = json.loads(path.read_text())
    assert written == record
    t, f, tar = threshold_at_far(scores, same, 1e-3)
    assert written["threshold"] == t and written["far_achieved"] == f
    assert written["tar_at_threshold"] == tar
    assert written["n_negative_pairs"] == 2999 and written["n_positive_pairs"] == 299
    assert written["far_target"] == 1e-3 and written["far_achieved"] <= 1e-3
    assert written["pairs"] == "p.txt" and written["checkpoint"] == "best.pt"
    assert written["flip"] is True and written["accept"] == "score > threshold"
    neg = scores[~same & ~np.isnan(scores)]
    assert (neg > t).sum() == round(f * 2999) <= 2
    with pytest.raises(ValueError, match=r"calibrate_far=0.0001 .*2999 mismatched"):
        write_threshold(path, scores, same, 1e-4, "p.txt", "best.pt", None, True)


@pytest.mark.parametrize("keep", [True, False])
def test_embed_py_runs_from_its_config_on_aligned_crops(checkpoint, tmp_path, monkeypatch, keep):
    """The entry point's library function: the config's model options reach FaceEmbedder and the
    default folder is used (a second run finds the work done); on the CPU, glibc's malloc keeps
    freed memory as ``keep_freed_memory`` says."""
    from hydra import compose, initialize_config_dir
    from PIL import Image

    import face_rec.utils.allocator as allocator
    from face_rec.embed_job import default_output_dir, embed_from_config

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)

    rng = np.random.default_rng(0)
    for who in ("a", "b"):
        (tmp_path / "crops" / who).mkdir(parents=True)
        for k in range(2):
            crop = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
            Image.fromarray(crop).save(tmp_path / "crops" / who / f"{k}.png")
    overrides = [
        f"checkpoint={checkpoint}",
        f"input_dir={tmp_path}/crops",
        "aligned=true",
        "device=cpu",
        "batch_size=3",
        f"paths.log_dir={tmp_path}/logs",
        f"keep_freed_memory={keep}",
    ]
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose("embed", overrides=overrides)
    summary = embed_from_config(cfg)
    assert len(calls) == keep
    emb = np.load(default_output_dir(cfg) / "embeddings.npy")
    assert emb.shape == (4, 16) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert summary["counts"]["ok"] == 4
    before = (default_output_dir(cfg) / "embeddings.npy").stat().st_mtime_ns
    embed_from_config(cfg)  # the same command again: complete, nothing redone
    assert (default_output_dir(cfg) / "embeddings.npy").stat().st_mtime_ns == before
