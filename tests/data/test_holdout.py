"""Identities held out of training make a model-selection list of people never trained on."""

import numpy as np
import pytest

from face_rec.align.run import run_alignment
from face_rec.data.holdout import holdout_pairs
from face_rec.data.pack import open_images
from face_rec.data.train_set import Source, TrainSet, held_out

from ..align.test_run import FakeDetector, _tree


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("holdout")
    run_alignment(_tree(tmp / "in", n_ids=60, per_id=4), tmp / "pack", FakeDetector, workers=0)
    return tmp / "pack"


def test_held_out_is_a_stable_fraction_of_names():
    names = [f"person_{i}" for i in range(20000)]
    out = [n for n in names if held_out(n, 0.1)]
    assert len(out) / len(names) == pytest.approx(0.1, abs=0.01)
    assert out == [n for n in names[::-1] if held_out(n, 0.1)][::-1]  # order-free
    assert set(out) <= {n for n in names if held_out(n, 0.2)}  # nested as the fraction grows
    assert not any(held_out(n, 0.0) for n in names[:100])


def test_held_out_identities_leave_training_and_form_identity_disjoint_folds(pack):
    whole = TrainSet([Source(str(pack))])
    ts = TrainSet([Source(str(pack))], holdout=0.4)
    trained = set(ts.names)
    held = {ts.parts[s].rows[r]["identity"] for s, r in ts.held_rows}
    assert held and trained and not held & trained
    assert held | trained == set(whole.names)
    assert len(ts) + len(ts.held_rows) == len(whole)

    pairs, images = holdout_pairs(ts, seed=0)
    ids = np.array([pairs.identity(k) for k in range(len(pairs.images))])
    assert set(ids) <= held
    assert (ids[pairs.left][pairs.same] == ids[pairs.right][pairs.same]).all()
    assert (ids[pairs.left][~pairs.same] != ids[pairs.right][~pairs.same]).all()
    assert pairs.n_folds == 10
    for f in range(10):
        in_f = pairs.fold == f
        assert pairs.same[in_f].sum() == (~pairs.same[in_f]).sum()  # balanced per fold
        others = set(ids[pairs.left[~in_f]]) | set(ids[pairs.right[~in_f]])
        assert not (set(ids[pairs.left[in_f]]) | set(ids[pairs.right[in_f]])) & others
    raw, rows = open_images(pack), {r["source"]: r for r in ts.parts[0].rows}
    for k, key in enumerate(pairs.images):
        src = key.split("/", 2)[2]
        np.testing.assert_array_equal(images.crops[k], raw[rows[src]["image_index"]])
    again, _ = holdout_pairs(ts, seed=0)
    assert again.images == pairs.images and (again.left == pairs.left).all()


def test_too_few_held_out_identities_is_a_clear_error(pack):
    ts = TrainSet([Source(str(pack))], holdout=0.02)
    with pytest.raises(ValueError, match="raise train_data.holdout_fraction"):
        holdout_pairs(ts)


def test_training_selects_on_the_held_out_identities(pack, tmp_path):
    from face_rec.data.pairs import write_bin
    from face_rec.eval.cli import checkpoint_training_identities
    from face_rec.train import train_from_config

    from ..engine.test_trainer import _cfg

    crops = np.random.default_rng(0).integers(0, 256, (20, 112, 112, 3), dtype=np.uint8)
    write_bin(tmp_path / "test.bin", crops[:10], crops[10:], np.arange(10) % 2 == 0)
    cfg = _cfg(
        pack,
        tmp_path,
        "model=mobilefacenet",
        "val=none",
        f"+val.sets.val.pairs={tmp_path}/test.bin",
        "val.select=holdout",
        "train_data.holdout_fraction=0.4",
        "eval.n_bootstrap=5",
        "trainer.max_steps=2",
    )
    m = train_from_config(cfg, tmp_path / "run")
    ts = TrainSet([Source(str(pack))], holdout=0.4)
    held = {ts.parts[s].rows[r]["identity"] for s, r in ts.held_rows}
    assert "held out of training" in m["model_selection"]["selected_on"]
    assert "test.bin" in m["model_selection"]["tested_on"]["val"]
    assert m["select"]["n_pairs"] == len(holdout_pairs(ts, seed=0)[0])
    assert m["train"]["identities"] == len(ts.names)
    trained = checkpoint_training_identities(tmp_path / "run" / "checkpoints" / "last.pt")
    assert trained == set(ts.names) and not trained & held  # the leakage check knows too


def test_excluded_images_leave_training_but_not_the_held_out_list(pack):
    base = TrainSet([Source(str(pack))], min_images=2, holdout=0.4)
    src = [base.parts[0].rows[r]["source"] for r in base.row_of]  # training rows' images
    names = [base.names[label] for label in base.labels]
    a, b = sorted(set(names))[:2]
    of_a = [s for s, n in zip(src, names, strict=True) if n == a]
    of_b = [s for s, n in zip(src, names, strict=True) if n == b]
    held = base.parts[0].rows[base.held_rows[0][1]]["source"]
    # a keeps one image (below min_images: leaves), b keeps two (stays), a held-out image stays
    exclude = frozenset(of_a[:-1] + of_b[:-2] + [held, "not/in_the_pack.png"])
    ts = TrainSet([Source(str(pack))], min_images=2, holdout=0.4, exclude_images=exclude)
    kept = {ts.parts[0].rows[r]["source"] for r in ts.row_of}
    assert ts.n_excluded == len(of_a) - 1 + len(of_b) - 2
    assert a not in ts.names and b in ts.names
    assert kept == set(src) - set(of_a) - set(of_b[:-2])
    assert ts.held_rows == base.held_rows  # the selection list is the same
    held_only = TrainSet([Source(str(pack))], 2, holdout=0.4, exclude_images=frozenset([held]))
    assert held_only.n_excluded == 0 and len(held_only) == len(base)  # never trained: not counted
    # id00 has two faces (img1, img2): below min_images=3, never trained, so not counted
    below = TrainSet([Source(str(pack))], 3, exclude_images=frozenset(["id00/img1.png"]))
    assert below.n_excluded == 0
    assert ts.num_classes == base.num_classes - 1
    assert set(ts.labels.tolist()) == set(range(ts.num_classes))  # contiguous labels


def test_train_data_exclude_images_of_reads_a_pair_list(pack, tmp_path):
    from face_rec.data.pairs import write_csv_pairs
    from face_rec.train import training_data

    from ..engine.test_trainer import _cfg

    rows = [
        ("id01/img0.png", "id01/img1.png", True, -1),
        ("id01/img0.png", "id02/img3.png", False, -1),
    ]
    write_csv_pairs(tmp_path / "calib.csv", rows)
    data = training_data(_cfg(pack, tmp_path, f"train_data.exclude_images_of={tmp_path}/calib.csv"))
    whole = training_data(_cfg(pack, tmp_path))
    # the demo's min_images_per_identity=2: id01 keeps one face (its img2 has none) and drops
    assert data.n_excluded == 3 and len(data) == len(whole) - 4
    assert "id01" in whole.names and "id01" not in data.names and "id02" in data.names
    kept = {data.parts[0].rows[r]["source"] for r in data.row_of}
    assert not kept & {"id01/img0.png", "id01/img1.png", "id02/img3.png"}

    # id00/img0.png has no face (a fallback crop, not trained); x/a.png is in no pack
    write_csv_pairs(tmp_path / "other.csv", [("x/a.png", "id00/img0.png", False, -1)])
    with pytest.raises(ValueError, match="none of its 2 images would be trained on"):
        training_data(_cfg(pack, tmp_path, f"train_data.exclude_images_of={tmp_path}/other.csv"))
    (tmp_path / "calib.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="a .bin list holds aligned crops"):
        training_data(_cfg(pack, tmp_path, f"train_data.exclude_images_of={tmp_path}/calib.bin"))
    with pytest.raises(ValueError, match="only packs"):
        training_data(
            _cfg(
                pack,
                tmp_path,
                f"train_data.exclude_images_of={tmp_path}/calib.csv",
                f"+train_data.aligned_folder={tmp_path}",
            )
        )
