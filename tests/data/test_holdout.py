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
