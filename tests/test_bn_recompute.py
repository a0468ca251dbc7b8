"""experiments/bn_recompute.py: the average's BatchNorm statistics recomputed as torch's
``update_bn`` computes them, everything else as saved."""

import copy
import importlib.util

import pytest
import torch
from omegaconf import OmegaConf

from face_rec.train import build_trainer, train_from_config
from face_rec.utils.checkpoint import load_checkpoint

from .conftest import REPO
from .engine.test_trainer import _cfg, pack  # noqa: F401 (pack: a fixture)

spec = importlib.util.spec_from_file_location(
    "bn_recompute", REPO / "experiments" / "bn_recompute.py"
)
bn_recompute = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bn_recompute)


def test_statistics_are_update_bns_over_the_runs_own_first_batches(pack, tmp_path, monkeypatch):  # noqa: F811
    from face_rec.data.augment import Augment

    seen, augment = [], Augment.__call__

    def recorded(self, x, train=True):  # every batch augmented, in order
        seen.append(augment(self, x, train))
        return seen[-1]

    monkeypatch.setattr(Augment, "__call__", recorded)
    cfg = _cfg(pack, tmp_path, "trainer.ema_decay=0.5", "model=iresnet18", "model.width=0.25")
    run = tmp_path / "run"
    train_from_config(cfg, run)
    trained = list(seen)
    assert len(trained) == 3  # one batch per step
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    bn_recompute.recompute(run, tmp_path / "out", batches=3, checkpoint="last.pt")
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    got = load_checkpoint(tmp_path / "out" / "last.pt")
    # the reference: torch's update_bn over the batches the training run itself drew and
    # augmented, applied to the average as saved
    ref = copy.deepcopy(build_trainer(cfg, tmp_path / "ref")[0].ema.module)
    ref.load_state_dict(saved["model"])
    torch.optim.swa_utils.update_bn(trained, ref)
    want = ref.state_dict()
    assert [k for k in want if "running" in k]
    for k, v in got["model"].items():
        torch.testing.assert_close(v, want[k], rtol=1e-5, atol=1e-6, msg=k)
        if "running" in k:
            assert not torch.equal(v, saved["model"][k]), k  # recomputed
        elif "num_batches_tracked" not in k:
            assert torch.equal(v, saved["model"][k]), k  # the weights as averaged
    for k, v in saved["train_model"].items():  # the rest of the checkpoint as saved
        assert torch.equal(got["train_model"][k], v), k
    assert got["config"] == saved["config"] and got["ema_updates"] == saved["ema_updates"]


def test_a_run_without_an_average_is_refused(pack, tmp_path):  # noqa: F811
    cfg = _cfg(pack, tmp_path, "trainer.ema_decay=0")
    train_from_config(cfg, tmp_path / "run")
    with pytest.raises(ValueError, match="holds no weight average.*ema_decay > 0"):
        bn_recompute.recompute(tmp_path / "run", tmp_path / "out", checkpoint="last.pt")


def test_a_run_with_frozen_stages_is_refused(pack, tmp_path):  # noqa: F811
    cfg = _cfg(pack, tmp_path, "trainer.ema_decay=0.5", "trainer.freeze_stages=1")
    run = tmp_path / "run"
    train_from_config(cfg, run)
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    with pytest.raises(ValueError, match="freeze_stages=1"):
        bn_recompute.recompute(run, tmp_path / "out", checkpoint="last.pt")
