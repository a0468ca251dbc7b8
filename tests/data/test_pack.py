import pickle

import numpy as np
import pytest
import torch

from face_rec.align.run import run_alignment
from face_rec.data.pack import (
    PackedFaces,
    ShardedImages,
    image_files,
    open_images,
    write_images,
)

from ..align.test_run import FakeDetector, _tree


def test_packed_faces_reads_the_pack(tmp_path):
    root = _tree(tmp_path / "in", n_ids=3, per_id=4)
    run_alignment(root, tmp_path / "pack", FakeDetector, workers=0)
    raw = np.load(tmp_path / "pack" / "images.npy")
    ds = PackedFaces(tmp_path / "pack")
    assert len(ds) == len(raw) == 12
    x, y = ds[5]
    assert x.shape == (3, 112, 112) and x.dtype == torch.float32
    expected = (torch.from_numpy(raw[5]).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(x, expected)
    assert y == 1 and x.min() >= -1 and x.max() <= 1

    sub = PackedFaces(tmp_path / "pack", identities=["id02"])
    assert len(sub) == 4 and set(sub.labels) == {2}
    np.testing.assert_array_equal(sub.images[sub.indices[0]], raw[8])
    assert sub.images is ds.images or np.shares_memory(sub.images, sub.images)

    flipped = PackedFaces(tmp_path / "pack", transform=lambda t: t.flip(-1))
    torch.testing.assert_close(flipped[5][0], expected.flip(-1))

    _ = ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._images is None and len(pickle.dumps(ds)) < 100_000
    torch.testing.assert_close(clone[5][0], expected)


def test_status_filter(tmp_path):
    root = _tree(tmp_path / "in", n_ids=3, per_id=4)
    run_alignment(root, tmp_path / "pack", FakeDetector, workers=0)
    ok = PackedFaces(tmp_path / "pack", statuses=("ok",))
    assert 0 < len(ok) < 12 and all(r["status"] == "ok" for r in ok.rows)


def test_train_set_merges_packs_and_remaps_labels(tmp_path):
    from face_rec.data.train_set import Source, TrainSet

    for name, seed in (("a", 0), ("b", 1)):
        root = _tree(tmp_path / f"in_{name}", n_ids=3, per_id=4, seed=seed)
        run_alignment(root, tmp_path / name, FakeDetector, workers=0)
    (tmp_path / "people.txt").write_text("2\nid00\t4\nid02\t4\n")
    sources = [
        Source(str(tmp_path / "a"), str(tmp_path / "people.txt")),
        Source(str(tmp_path / "b")),
    ]
    with_fb = TrainSet(sources, include_fallbacks=True)
    assert len(with_fb) == 8 + 12 and with_fb.num_classes == 5  # id00, id02 of a; all of b
    assert sorted(set(with_fb.labels.tolist())) == [0, 1, 2, 3, 4]
    assert with_fb.names == ["id00", "id02", "id00", "id01", "id02"]  # same names stay apart
    ok_only = TrainSet(sources)
    fallback_rows = sum(r["status"] == "fallback" for p in with_fb.parts for r in p.rows)
    assert fallback_rows > 0 and len(ok_only) == len(with_fb) - fallback_rows
    x, y = ok_only[0]
    assert x.dtype == torch.uint8 and x.shape == (3, 112, 112) and 0 <= y < ok_only.num_classes
    assert TrainSet(sources, min_images=4, include_fallbacks=True).num_classes == 5
    with pytest.raises(ValueError, match="no training images with >= 5 per identity"):
        TrainSet(sources, min_images=5)


def test_a_sharded_pack_holds_the_same_crops(tmp_path):
    root = _tree(tmp_path / "in", n_ids=3, per_id=4)
    run_alignment(root, tmp_path / "one", FakeDetector, workers=0)
    run_alignment(root, tmp_path / "sharded", FakeDetector, workers=0, shard_size=5, chunk_size=3)
    raw = np.load(tmp_path / "one" / "images.npy")
    assert [p.name for p in image_files(tmp_path / "sharded")] == [
        "images-00000.npy", "images-00001.npy", "images-00002.npy"
    ]  # fmt: skip
    assert [len(np.load(p)) for p in image_files(tmp_path / "sharded")] == [5, 5, 2]
    images = open_images(tmp_path / "sharded")
    assert isinstance(images, ShardedImages) and images.shape == raw.shape and not images._maps
    np.testing.assert_array_equal(images[[0, 4, 5, 11, -1]], raw[[0, 4, 5, 11, -1]])
    assert set(images._maps) == {0, 1, 2}  # each shard mapped when first read
    with pytest.raises(IndexError, match="row 12 out of range for a pack of 12"):
        images[12]
    ds = PackedFaces(tmp_path / "sharded")
    torch.testing.assert_close(ds[7][0], PackedFaces(tmp_path / "one")[7][0])
    assert pickle.loads(pickle.dumps(images))._maps == {}


def test_write_images_replaces_another_layout(tmp_path):
    blocks = [np.full((3, 2, 2, 3), k, np.uint8) for k in range(3)]
    write_images(tmp_path, 9, (2, 2, 3), iter(blocks), shard_size=4)
    assert len(image_files(tmp_path)) == 3
    write_images(tmp_path, 9, (2, 2, 3), iter(blocks), shard_size=0)
    assert [p.name for p in image_files(tmp_path)] == ["images.npy"]
    np.testing.assert_array_equal(open_images(tmp_path)[:, 0, 0, 0], np.repeat([0, 1, 2], 3))
