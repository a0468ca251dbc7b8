"""AdaFace, MagFace and sub-center ArcFace: each against a naive per-sample loop in float64 (loss
and gradients), finite gradients at cos = +-1, AdaFace's running statistics by hand and through
an exact resume, sub-centres with Partial FC, and train.py runs of each head."""

from __future__ import annotations

import csv
import math
import statistics
import subprocess
import sys

import pytest
import torch

from face_rec.align.run import run_alignment
from face_rec.engine.hooks import Hook
from face_rec.losses import AdaFaceLoss, ArcFaceLoss, MagFaceLoss
from face_rec.models.heads import CosineHead, SubCenterHead
from face_rec.models.partial_fc import PartialFC
from face_rec.train import build_trainer
from face_rec.utils.checkpoint import load_checkpoint

from ..align.test_run import FakeDetector, _tree
from ..conftest import REPO, tiny_args
from ..engine.test_trainer import Record, _cfg

B, D, C, K = 6, 8, 5, 3


# ---------------------------------------------------------------- the naive reference (float64)


def _cos_pair(x: torch.Tensor, w: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """cos between row i and class j, one (sub-)centre at a time; the best of a class's K."""
    centres = [w[j]] if w.dim() == 2 else [w[j, k] for k in range(w.shape[1])]
    best = None
    for c in centres:
        v = torch.dot(x[i], c) / (torch.linalg.norm(x[i]) * torch.linalg.norm(c))
        if best is None or v > best:
            best = v
    return best


def _naive(x, w, labels, s, target, penalty=None, eps=0.0) -> torch.Tensor:
    """Per-sample losses (B,): -log softmax of s x [target(cos_y, |x|) at y, cos_j elsewhere]
    (+ penalty(|x|)), one sample and one class at a time."""
    losses = []
    for i, y in enumerate(labels.tolist()):
        norm = torch.linalg.norm(x[i])
        row = []
        for j in range(w.shape[0]):
            c = _cos_pair(x, w, i, j).clamp(-1 + eps, 1 - eps)
            row.append(s * (target(c, norm) if j == y else c))
        row = torch.stack(row)
        top = row.max()
        loss = top + torch.log(torch.exp(row - top).sum()) - row[y]
        losses.append(loss + penalty(norm) if penalty is not None else loss)
    return torch.stack(losses)


def _implementation(head, loss, x64, w64, labels):
    """The float32 head + loss as the trainer calls them: losses, d/d embeddings, d/d centres."""
    x = x64.detach().float().requires_grad_()
    with torch.no_grad():
        head.weight.copy_(w64)
    per_sample = loss(head(x), labels, x.norm(dim=1))
    per_sample.sum().backward()
    return per_sample.detach(), x.grad, head.weight.grad


def _reference(x64, w64, labels, **kw):
    x = x64.clone().requires_grad_()
    w = w64.clone().requires_grad_()
    per_sample = _naive(x, w, labels, **kw)
    per_sample.sum().backward()
    return per_sample.detach(), x.grad, w.grad


def _compare(got, want):
    loss, gx, gw = got
    torch.testing.assert_close(loss, want[0].float(), atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(gx, want[1].float(), atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(gw, want[2].float(), atol=1e-4, rtol=1e-3)


def _problem(norms, sub_centers: int = 1, seed: int = 0):
    """Embeddings with the given norms (float64), centres (C, D) or (C, K, D), labels."""
    g = torch.Generator().manual_seed(seed)
    shape = (C, D) if sub_centers == 1 else (C, sub_centers, D)
    w = torch.randn(*shape, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (B,), generator=g)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    first = w[:, 0] if sub_centers > 1 else w
    x[0] = first[labels[0]] + 0.1 * x[0]  # near its centre: cos_y ~ 1
    x[1] = -first[labels[1]] + 0.1 * x[1]  # opposite: cos_y ~ -1 (fallbacks)
    x[2] = first[(labels[2] + 1) % C] + 0.005 * x[2]  # a negative at cos > 0.999
    x = x / x.norm(dim=1, keepdim=True) * torch.tensor(norms, dtype=torch.float64)[:, None]
    return x, w, labels


# ---------------------------------------------------------------- AdaFace


def _ada_statistics(norms, mean0, std0, t_alpha):
    """One EMA step by hand: clip to [0.001, 100], sample (N - 1) standard deviation."""
    a = [min(max(float(n), 0.001), 100.0) for n in norms]
    mean = t_alpha * (sum(a) / len(a)) + (1 - t_alpha) * mean0
    std = t_alpha * statistics.stdev(a) + (1 - t_alpha) * std0
    return mean, std


def _ada_target(mean, std, m, h, eps=1e-3):
    def target(c, norm):
        a = min(max(float(norm.detach()), 0.001), 100.0)  # a plain number: no gradient through |x|
        z = max(-1.0, min(1.0, h * (a - mean) / (std + eps)))
        angle = (torch.acos(c) - m * z).clamp(eps, math.pi - eps)
        return torch.cos(angle) - (m + m * z)

    return target


@pytest.mark.parametrize(
    "settings",
    [
        dict(m=0.4, h=0.333, s=64.0, t_alpha=0.01, mean0=20.0, std0=100.0),  # published, fresh
        dict(m=0.4, h=1.0, s=32.0, t_alpha=0.5, mean0=12.0, std0=3.0),  # z clipped at both ends
    ],
    ids=["published", "clipped"],
)
def test_adaface_matches_a_naive_loop(settings):
    norms = [14.0, 3.0, 25.0, 150.0, 9.0, 40.0]  # 150: clipped to 100
    x, w, labels = _problem(norms)
    mean0, std0 = settings.pop("mean0"), settings.pop("std0")
    loss = AdaFaceLoss(**settings)
    loss.batch_mean.fill_(mean0)
    loss.batch_std.fill_(std0)
    got = _implementation(CosineHead(D, C), loss, x, w, labels)
    mean, std = _ada_statistics(norms, mean0, std0, settings["t_alpha"])  # this batch counts
    assert float(loss.batch_mean) == pytest.approx(mean, rel=1e-6)
    assert float(loss.batch_std) == pytest.approx(std, rel=1e-6)
    target = _ada_target(mean, std, settings["m"], settings["h"])
    _compare(got, _reference(x, w, labels, s=settings["s"], target=target, eps=1e-3))


def test_adaface_statistics_over_two_steps_by_hand():
    loss = AdaFaceLoss(t_alpha=0.01)
    cos = torch.zeros(4, 3)
    labels = torch.tensor([0, 1, 2, 0])
    first, second = [18.0, 22.5, 30.0, 7.0], [1e-5, 250.0, 12.0, 19.0]  # clipped: 0.001, 100
    loss(cos, labels, torch.tensor(first))
    loss(cos, labels, torch.tensor(second))
    mean, std = _ada_statistics(first, 20.0, 100.0, 0.01)
    mean, std = _ada_statistics(second, mean, std, 0.01)
    assert float(loss.batch_mean) == pytest.approx(mean, rel=1e-6)
    assert float(loss.batch_std) == pytest.approx(std, rel=1e-6)
    loss.eval()  # no update outside training
    loss(cos, labels, torch.tensor(second))
    assert float(loss.batch_mean) == pytest.approx(mean, rel=1e-6)
    loss.train()  # one row: the mean moves, the (undefined) std does not
    loss(cos[:1], labels[:1], torch.tensor([50.0]))
    assert float(loss.batch_mean) == pytest.approx(0.01 * 50 + 0.99 * mean, rel=1e-6)
    assert float(loss.batch_std) == pytest.approx(std, rel=1e-6)
    assert set(loss.state_dict()) == {"batch_mean", "batch_std"}
    assert list(loss.parameters()) == []


# ---------------------------------------------------------------- MagFace


def _mag_target(l_a, u_a, l_m, u_m, easy):
    def target(c, norm):
        a = norm.clamp(l_a, u_a)
        m = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m
        arc = c * torch.cos(m) - torch.sqrt(1 - c * c) * torch.sin(m)  # the official form
        if easy:
            return arc if c > 0 else c
        return arc if c > torch.cos(math.pi - m) else c - torch.sin(math.pi - m) * m

    return target


def _mag_penalty(l_a, u_a, lambda_g):
    def penalty(norm):
        a = norm.clamp(l_a, u_a)
        return lambda_g * (1 / a + a / u_a**2)

    return penalty


@pytest.mark.parametrize("easy", [True, False], ids=["easy_margin", "fallback"])
def test_magface_matches_a_naive_loop(easy):
    norms = [30.0, 60.0, 5.0, 100.0, 130.0, 11.0]  # 5 and 130: clamped to [10, 110]
    x, w, labels = _problem(norms, seed=1)
    kw = dict(l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8)
    loss = MagFaceLoss(s=64.0, lambda_g=35.0, easy_margin=easy, **kw)
    got = _implementation(CosineHead(D, C), loss, x, w, labels)
    cos_y = [float(_cos_pair(x, w, i, int(y))) for i, y in enumerate(labels)]
    assert min(cos_y) < -0.9 and max(cos_y) > 0.9  # both branches are exercised
    ref = _reference(
        x,
        w,
        labels,
        s=64.0,
        target=_mag_target(easy=easy, **kw),
        penalty=_mag_penalty(kw["l_a"], kw["u_a"], 35.0),
    )
    _compare(got, ref)


def test_magface_gradient_reaches_the_norm_through_margin_and_regulariser():
    """Inside [l_a, u_a] the loss depends on |x| (margin and g); outside, only on the angle."""
    loss = MagFaceLoss()
    cos = torch.tensor([[0.6, 0.1], [0.6, 0.1]])
    norms = torch.tensor([50.0, 150.0], requires_grad=True)
    loss(cos, torch.tensor([0, 0]), norms).sum().backward()
    assert norms.grad[0] != 0 and norms.grad[1] == 0


def test_magface_margin_alone_depends_on_the_norm():
    """With the regulariser off, only the margin can carry |x|: a detached magnitude fails."""
    loss = MagFaceLoss(lambda_g=0.0)
    norms = torch.tensor([50.0], requires_grad=True)
    loss(torch.tensor([[0.6, 0.1]]), torch.tensor([0]), norms).sum().backward()
    assert norms.grad[0] != 0


class _SpyLoss(ArcFaceLoss):
    """Records the norms the trainer hands the loss."""

    seen: list = []

    def forward(self, cos, labels, norms=None):
        _SpyLoss.seen.append(norms)
        return super().forward(cos, labels, norms)


def test_trainer_hands_the_loss_the_raw_embeddings_norms_with_their_gradient(tmp_path):
    pack = tmp_path / "pack"
    run_alignment(_tree(tmp_path / "in", n_ids=4, per_id=3), pack, FakeDetector, workers=0)
    cfg = _cfg(pack, tmp_path, "head=arcface", "trainer.max_steps=1")
    trainer, _, _ = build_trainer(cfg, tmp_path / "run")
    trainer.loss_fn = _SpyLoss()
    captured = {}
    trainer.forward_model = lambda x, f=trainer.forward_model: captured.setdefault("e", f(x))
    _SpyLoss.seen.clear()
    trainer.train()
    norms = _SpyLoss.seen[0]
    assert norms.requires_grad  # MagFace's margin and regulariser need d|x|/dx
    torch.testing.assert_close(norms, captured["e"].float().norm(dim=1))
    assert not torch.allclose(norms, torch.ones_like(norms))  # not the normalised embeddings


def test_margin_losses_that_need_norms_say_so():
    cos, labels = torch.zeros(2, 3), torch.tensor([0, 1])
    for loss in (AdaFaceLoss(), MagFaceLoss()):
        with pytest.raises(ValueError, match="needs the norms of the raw embeddings"):
            loss(cos, labels)


def test_magface_refuses_bounds_it_cannot_use():
    with pytest.raises(ValueError, match="0 < l_a < u_a"):
        MagFaceLoss(l_a=110.0, u_a=10.0)


# ---------------------------------------------------------------- sub-center ArcFace


def _arc_target(m):
    def target(c, norm):
        theta = torch.acos(c)
        return torch.cos(theta + m) if theta + m <= math.pi else c - m * math.sin(m)

    return target


def test_subcenter_head_takes_the_best_of_k_like_a_loop():
    x, w, _ = _problem([5.0] * B, sub_centers=K, seed=2)
    head = SubCenterHead(D, C, K)
    with torch.no_grad():
        head.weight.copy_(w)
    got = head(x.float())
    want = torch.tensor([[float(_cos_pair(x, w, i, j)) for j in range(C)] for i in range(B)])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert head.weight.shape == (C, K, D)


def test_subcenter_arcface_matches_a_naive_loop():
    x, w, labels = _problem([3.0, 7.0, 1.0, 20.0, 0.5, 9.0], sub_centers=K, seed=3)
    got = _implementation(SubCenterHead(D, C, K), ArcFaceLoss(s=64.0, m=0.5), x, w, labels)
    _compare(got, _reference(x, w, labels, s=64.0, target=_arc_target(0.5)))


def test_one_subcenter_is_the_plain_cosine_head():
    x = torch.randn(B, D)
    one, plain = SubCenterHead(D, C, 1), CosineHead(D, C)
    with torch.no_grad():
        plain.weight.copy_(one.weight[:, 0])
    torch.testing.assert_close(one(x), plain(x))


# ---------------------------------------------------------------- cos = +1 and -1 exactly


def _exact_problem(sub_centers: int):
    """Centres on the axes and embeddings on (or opposite) them: cosines of exactly +-1."""
    dim = 16
    if sub_centers == 1:
        w = torch.eye(dim)[:C] * 0.5
    else:
        w = torch.eye(dim)[: C * sub_centers].reshape(C, sub_centers, dim) * 0.5
        w[1], w[3] = w[1, :1], w[3, :1]  # coinciding sub-centres: a best cosine of -1
    axis = w[:, 0] if sub_centers > 1 else w
    x = torch.stack([30 * axis[0], -30 * axis[1], 30 * axis[2], -30 * axis[3]]) * 2
    labels = torch.tensor([0, 1, 4, 4])  # rows 2, 3: a negative at +1 and at -1
    return x, w, labels


@pytest.mark.parametrize("name", ["adaface", "magface", "magface_fallback", "subcenter", "arcface"])
def test_gradients_are_finite_where_cos_is_exactly_plus_or_minus_one(name):
    k = K if name == "subcenter" else 1
    head = SubCenterHead(16, C, K) if k > 1 else CosineHead(16, C)
    loss = {
        "adaface": AdaFaceLoss(),
        "magface": MagFaceLoss(),
        "magface_fallback": MagFaceLoss(easy_margin=False),
        "subcenter": ArcFaceLoss(),
        "arcface": ArcFaceLoss(),
    }[name]
    x, w, labels = _exact_problem(k)
    with torch.no_grad():
        head.weight.copy_(w)
    x.requires_grad_()
    cos = head(x)
    exact = [(0, 0, 1.0), (1, 1, -1.0), (2, 2, 1.0), (3, 3, -1.0)]
    assert all(float(cos[i, j].detach()) == v for i, j, v in exact)
    per_sample = loss(cos, labels, x.norm(dim=1))
    per_sample.sum().backward()
    assert torch.isfinite(per_sample).all()
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()
    assert x.grad.abs().sum() > 0  # the rows whose target is not at +1 still learn


# ---------------------------------------------------------------- with Partial FC (one process)


def test_partial_fc_samples_identities_with_all_their_subcentres():
    torch.manual_seed(0)
    pfc = PartialFC(D, 20, ArcFaceLoss(s=16.0), sample_rate=0.25, sub_centers=K)
    assert pfc.weight.shape == (20, K, D)
    emb, labels = torch.randn(B, D), torch.tensor([3, 3, 17, 12, 19, 0])
    torch.manual_seed(1)
    index, local = pfc.sample(labels)
    assert len(index) == 5 and set(labels.tolist()) <= set(index.tolist())
    torch.manual_seed(1)  # the same draw inside forward
    got = pfc(emb, labels)
    head = SubCenterHead(D, len(index), K)
    with torch.no_grad():
        head.weight.copy_(pfc.weight[index])  # whole identities: (n, K, D)
    torch.testing.assert_close(got, ArcFaceLoss(s=16.0)(head(emb), local))


def test_partial_fc_checkpoint_holds_every_subcentre():
    full = torch.randn(7, K, D)
    pfc = PartialFC(D, 7, ArcFaceLoss(), sub_centers=K)
    pfc.load_state_dict({"weight": full})
    torch.testing.assert_close(pfc.state_dict()["weight"], full)
    with pytest.raises(RuntimeError, match=r"checkpoint has \(7, 8\) class centres"):
        pfc.load_state_dict({"weight": full[:, 0]})  # saved without sub-centres


# ---------------------------------------------------------------- through the trainer


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("heads")
    run_alignment(_tree(tmp / "in", n_ids=6, per_id=4), tmp / "pack", FakeDetector, workers=0)
    return tmp / "pack"


class Kill(Hook):
    def after_step(self, trainer) -> None:
        if trainer.state.step == 4:
            raise KeyboardInterrupt


@pytest.mark.parametrize("head", ["adaface", "magface"])
def test_resume_restores_the_running_statistics_exactly(pack, tmp_path, head):
    over = [
        f"head={head}",
        "model=mobilefacenet",
        "trainer.max_steps=6",
        "trainer.checkpoint_every=3",
        "model.embedding_dim=16",
    ]
    whole, rec = build_trainer(_cfg(pack, tmp_path, *over), tmp_path / "a")[0], Record()
    whole.hooks.append(rec)
    whole.train()
    cut, _, _ = build_trainer(_cfg(pack, tmp_path, *over), tmp_path / "b")
    cut.hooks.append(Kill())
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    saved = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert saved["trainer"]["step"] == 3
    resumed, _, _ = build_trainer(_cfg(pack, tmp_path, *over, "resume=true"), tmp_path / "b")
    fresh = {k: v.clone() for k, v in resumed.loss_fn.state_dict().items()}
    resumed.load_state_dict(saved)
    after = Record()
    resumed.hooks.append(after)
    resumed.train()
    assert after.losses == rec.losses[3:]
    final = resumed.loss_fn.state_dict()
    assert final.keys() == whole.loss_fn.state_dict().keys()
    for key, value in whole.loss_fn.state_dict().items():
        assert torch.equal(final[key], value), key
        assert not torch.equal(saved["loss"][key], fresh[key])  # they moved in 3 steps
    assert head != "adaface" or set(final) == {"batch_mean", "batch_std"}


def test_subcenter_arcface_trains_with_partial_fc(pack, tmp_path):
    over = ["head=subcenter_arcface", "partial_fc=0.5", "model=mobilefacenet"]
    trainer, _, _ = build_trainer(_cfg(pack, tmp_path, *over, "trainer.max_steps=2"), tmp_path)
    assert trainer.head is None and isinstance(trainer.loss_fn, PartialFC)
    trainer.train()
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["loss"]["weight"].shape == (6, 3, 16)  # 6 identities x 3 sub-centres x 16-d
    assert trainer.metrics["accuracy"] is not None and math.isfinite(trainer.metrics["loss"])


def test_each_new_head_trains_from_the_command_line_in_one_sweep(tiny, tmp_path):
    """``train.py -m head=adaface,magface,subcenter_arcface`` with mobilefacenet, 2 steps each."""
    out = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", *tiny_args(tiny), f"hydra.sweep.dir={out}"]
    cmd += ["head=adaface,magface,subcenter_arcface", "trainer.max_steps=2"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "results.csv", newline="") as fh:
        rows = {r["overrides"]: r for r in csv.DictReader(fh)}
    heads = ("adaface", "magface", "subcenter_arcface")
    assert {f"head={h}" for h in heads} == set(rows)
    assert all(r["status"] == "ok" for r in rows.values()), rows
    states = {}
    for path in out.glob("*/checkpoints/last.pt"):
        state = torch.load(path, weights_only=False)
        states[state["config"]["head"]["name"]] = state
    assert set(states) == set(heads)
    assert states["adaface"]["trainer"]["step"] == 2
    assert float(states["adaface"]["loss"]["batch_mean"]) != 20.0  # updated, and saved
    assert states["subcenter_arcface"]["head"]["weight"].shape == (6, 3, 16)


@pytest.mark.parametrize("extra, warns", [([], True), (["+model.feature_scale=learned"], False)])
def test_magface_warns_when_the_backbone_pins_the_magnitude(tmp_path, caplog, extra, warns):
    pack = tmp_path / "pack"
    run_alignment(_tree(tmp_path / "in", n_ids=4, per_id=3), pack, FakeDetector, workers=0)
    cfg = _cfg(pack, tmp_path, "head=magface", "model=iresnet18", "model.input_size=32", *extra)
    with caplog.at_level("WARNING"):
        build_trainer(cfg, tmp_path / "run")
    assert ("feature_scale=learned" in caplog.text) == warns
