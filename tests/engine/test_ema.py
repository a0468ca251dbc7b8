"""The weight average: against a naive loop, in checkpoints and validation, across a resume."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from face_rec.engine import hooks as H
from face_rec.engine.ema import WeightEMA
from face_rec.train import build_trainer
from face_rec.utils.checkpoint import load_checkpoint, model_from_checkpoint

from .test_trainer import _cfg, _interrupted, pack  # noqa: F401 (pack: a fixture)


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_the_average_is_the_decay_weighted_mean_of_every_steps_weights():
    torch.manual_seed(0)
    net, decay = _net(), 0.9
    ema = WeightEMA(net, decay)
    history = []
    for _ in range(30):
        net(torch.randn(8, 3)).sum().backward()  # train mode: BatchNorm statistics move too
        with torch.no_grad():
            for p in net.parameters():
                p -= 0.1 * p.grad
                p.grad = None
        ema.update(net)
        history.append({k: v.clone() for k, v in net.state_dict().items()})
    n = len(history)  # naive: sum_k d^(n-k) w_k / sum_k d^(n-k), the initial weights not in it
    weights = [decay ** (n - k) for k in range(1, n + 1)]
    got = ema.module.state_dict()
    for key, last in history[-1].items():
        if not last.is_floating_point():
            assert torch.equal(got[key], last)  # an integer buffer is copied, not averaged
            continue
        naive = sum(w * h[key].double() for w, h in zip(weights, history, strict=True)) / sum(
            weights
        )
        torch.testing.assert_close(got[key].double(), naive, rtol=1e-5, atol=1e-6)
    assert got["1.num_batches_tracked"] == 30
    assert ema.updates == 30 and not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert ema.current_decay() == pytest.approx(1 - 0.1 / (1 - 0.9**31))


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5])
def test_a_decay_outside_0_1_is_refused_with_the_key(decay):
    with pytest.raises(ValueError, match=r"trainer.ema_decay=.*\(0, 1\)"):
        WeightEMA(_net(), decay)


def test_a_bad_decay_stops_training_before_any_data_is_read(tmp_path, monkeypatch):
    import face_rec.train as train

    monkeypatch.setattr(train, "training_data", lambda cfg: pytest.fail("data read"))
    with pytest.raises(ValueError, match="trainer.ema_decay=999"):
        build_trainer(_cfg(None, tmp_path, "trainer.ema_decay=999"), tmp_path)


def test_validation_and_checkpoints_use_the_average(pack, tmp_path):  # noqa: F811
    cfg = _cfg(pack, tmp_path, "trainer.ema_decay=0.5", "trainer.checkpoint_every=3")
    trainer, _, _ = build_trainer(cfg, tmp_path)
    seen = []

    def evaluate(model):  # what the validation hook embeds with
        seen.append(model)
        return {"sets": {}, "select": None}

    trainer.hooks.insert(0, H.Validation(evaluate, every=1))
    trainer.train()
    assert len(seen) == 3 and all(m is trainer.ema.module for m in seen)
    trainer, _, _ = build_trainer(cfg, tmp_path / "best")  # best.pt: chosen on the average
    scores = iter([0.5, 0.9, 0.7])  # the best at step 2

    def evaluate_and_keep(model):
        if trainer.state.step == 2:
            keep.update({k: v.clone() for k, v in model.state_dict().items()})
        return {"sets": {}, "select": {"accuracy_mean": next(scores)}}

    keep = {}
    validation = H.Validation(evaluate_and_keep, every=1)
    trainer.hooks.insert(0, validation)
    trainer.hooks.append(H.Checkpoint(tmp_path / "best" / "checkpoints", {}, 0, validation))
    trainer.train()
    best = load_checkpoint(tmp_path / "best" / "checkpoints" / "best.pt")
    assert best["trainer"]["step"] == 2 and best["ema_updates"] == 2
    assert all(torch.equal(best["model"][k], v) for k, v in keep.items())
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert saved["ema_updates"] == 3
    for k, v in trainer.ema.module.state_dict().items():
        assert torch.equal(saved["model"][k], v)
        assert torch.equal(saved["train_model"][k], trainer.model.state_dict()[k])
    differ = [k for k, v in saved["model"].items() if not torch.equal(v, saved["train_model"][k])]
    assert differ  # the average is not the trained weights
    loaded = model_from_checkpoint(tmp_path / "checkpoints" / "last.pt")  # eval_lfw, export
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, saved["model"][k])
    tuned, _, _ = build_trainer(  # fine-tuning starts from the average too
        _cfg(pack, tmp_path, f"init_from={tmp_path}/checkpoints/last.pt"), tmp_path / "tune"
    )
    for k, v in tuned.model.state_dict().items():
        assert torch.equal(v, saved["model"][k])


def test_resume_continues_the_average_exactly(pack, tmp_path):  # noqa: F811
    over = ["trainer.ema_decay=0.7", "trainer.max_steps=6", "trainer.checkpoint_every=3"]
    whole, _, _ = build_trainer(_cfg(pack, tmp_path, *over), tmp_path / "a")
    whole.train()
    _interrupted(_cfg(pack, tmp_path, *over), tmp_path / "b", at=4)
    resumed, _, _ = build_trainer(_cfg(pack, tmp_path, *over), tmp_path / "b")
    resumed.load_state_dict(load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt"))
    assert resumed.ema.updates == 3
    resumed.train()
    assert resumed.ema.updates == 6
    for name in ("model", "ema"):
        a = (whole.model if name == "model" else whole.ema.module).state_dict()
        b = (resumed.model if name == "model" else resumed.ema.module).state_dict()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


def test_a_checkpoint_without_an_average_starts_one_and_says_so(pack, tmp_path, caplog):  # noqa: F811
    plain, _, _ = build_trainer(
        _cfg(pack, tmp_path, "trainer.ema_decay=0", "trainer.checkpoint_every=3"), tmp_path
    )
    plain.train()
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert "train_model" not in state
    ema_run, _, _ = build_trainer(_cfg(pack, tmp_path, "trainer.ema_decay=0.9"), tmp_path / "e")
    with caplog.at_level(logging.WARNING):
        ema_run.load_state_dict(state)
    assert "no weight average" in caplog.text and "the steps after step 3" in caplog.text
    assert ema_run.ema.updates == 0
    for k, v in state["model"].items():
        assert torch.equal(ema_run.model.state_dict()[k], v)
    ema_run.max_steps = 4
    ema_run.train()  # one step: the average is that step's weights
    for k, v in ema_run.model.state_dict().items():
        assert torch.equal(ema_run.ema.module.state_dict()[k], v)
    # and back: an averaged checkpoint resumed without averaging trains on its trained weights
    ema_run.train()
    averaged = ema_run.state_dict()
    plain2, _, _ = build_trainer(_cfg(pack, tmp_path, "trainer.ema_decay=0"), tmp_path / "p")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        plain2.load_state_dict(averaged)
    assert "without one (trainer.ema_decay=0)" in caplog.text
    for k, v in averaged["train_model"].items():
        assert torch.equal(plain2.model.state_dict()[k], v)
    other, _, _ = build_trainer(_cfg(pack, tmp_path, "trainer.ema_decay=0.5"), tmp_path / "o")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        other.load_state_dict(averaged)
    assert "the weight average's decay (0.9 -> 0.5)" in caplog.text
    assert other.ema.updates == averaged["ema_updates"] == 1
