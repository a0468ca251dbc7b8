"""Each loss against a naive per-sample loop reference, and the limiting cases."""

import math

import pytest
import torch

from face_rec import losses as L


def _cos(b=6, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    cos = torch.rand(b, c, generator=g) * 1.9 - 0.95
    labels = torch.randint(0, c, (b,), generator=g)
    return cos, labels


def _ce_loop(logit_rows, labels):
    """-log softmax, one sample at a time, with plain Python math."""
    out = []
    for row, y in zip(logit_rows, labels, strict=True):
        mx = max(row)
        lse = mx + math.log(sum(math.exp(v - mx) for v in row))
        out.append(lse - row[y])
    return torch.tensor(out)


def _reference(cos, labels, s, psi):
    rows = []
    for i in range(len(labels)):
        y = int(labels[i])
        row = [s * float(v) for v in cos[i]]
        row[y] = s * psi(float(cos[i, y]))
        rows.append(row)
    return _ce_loop(rows, [int(v) for v in labels])


def _arc_psi(m):
    def psi(c):
        t = math.acos(c)
        return math.cos(t + m) if t + m <= math.pi else c - m * math.sin(m)

    return psi


def _sphere_psi(m):
    def psi(c):
        t = math.acos(c)
        k = math.floor(m * t / math.pi)
        return (-1) ** k * math.cos(m * t) - 2 * k

    return psi


CASES = [
    (L.NormFaceLoss(s=30.0), 30.0, lambda c: c),
    (L.CosFaceLoss(s=64.0, m=0.35), 64.0, lambda c: c - 0.35),
    (L.ArcFaceLoss(s=64.0, m=0.5), 64.0, _arc_psi(0.5)),
    (
        L.CombinedMarginLoss(s=32.0, m1=1.0, m2=0.3, m3=0.2),
        32.0,
        lambda c: (
            (math.cos(math.acos(c) + 0.3) - 0.2)
            if math.acos(c) + 0.3 <= math.pi
            else c - 0.2 - 0.3 * math.sin(0.3)
        ),
    ),
    (L.SphereFaceLoss(s=30.0, m=1.7), 30.0, _sphere_psi(1.7)),
]


@pytest.mark.parametrize("loss,s,psi", CASES, ids=lambda v: type(v).__name__)
def test_margin_losses_match_a_loop_reference(loss, s, psi):
    cos, labels = _cos()
    torch.testing.assert_close(
        loss(cos, labels), _reference(cos, labels, s, psi).float(), atol=2e-4, rtol=1e-4
    )


def test_softmax_is_cross_entropy_of_the_logits():
    logits, labels = _cos(seed=1)
    logits = logits * 7
    ref = _ce_loop(logits.tolist(), labels.tolist()).float()
    torch.testing.assert_close(L.SoftmaxLoss()(logits, labels), ref, atol=1e-5, rtol=1e-5)


def test_arcface_with_zero_margin_is_normface():
    cos, labels = _cos(seed=2)
    torch.testing.assert_close(
        L.ArcFaceLoss(s=64, m=0.0)(cos, labels),
        L.NormFaceLoss(s=64)(cos, labels),
        atol=1e-4,
        rtol=1e-5,
    )


def test_cosface_shifts_exactly_the_target_logit():
    cos, labels = _cos(seed=3)
    plain = L.NormFaceLoss(s=64).logits(cos, labels)
    shifted = L.CosFaceLoss(s=64, m=0.35).logits(cos, labels)
    diff = plain - shifted
    target = torch.zeros_like(diff, dtype=torch.bool)
    target[torch.arange(len(labels)), labels] = True
    torch.testing.assert_close(diff[target], torch.full((len(labels),), 64 * 0.35))
    assert (diff[~target] == 0).all()


def test_arcface_target_logit_decreases_past_pi_minus_m():
    """theta + m > pi: the logit must keep falling as theta grows (cos(theta + m) would rise)."""
    m = 0.5
    theta = torch.linspace(0, math.pi, 2001)
    psi = L.ArcFaceLoss(s=1, m=m).psi(torch.cos(theta))
    assert (psi[1:] <= psi[:-1] + 1e-6).all()
    beyond = theta > math.pi - m + 0.01
    torch.testing.assert_close(psi[beyond], torch.cos(theta[beyond]) - m * math.sin(m))


def test_sphereface_psi_is_monotonic():
    theta = torch.linspace(0, math.pi, 2001)
    psi = L.SphereFaceLoss(s=1, m=4.0).psi(torch.cos(theta))
    assert (psi[1:] <= psi[:-1] + 1e-5).all()


def test_curricularface_reference_and_running_t():
    cos, labels = _cos(seed=4)
    loss = L.CurricularFaceLoss(s=64, m=0.5, momentum=0.1)
    t_before = float(loss.t)
    got = loss(cos, labels)
    t = 0.9 * t_before + 0.1 * float(cos[torch.arange(len(labels)), labels].mean())
    assert float(loss.t) == pytest.approx(t, abs=1e-6)
    rows = []
    for i in range(len(labels)):
        y = int(labels[i])
        target = _arc_psi(0.5)(float(cos[i, y]))
        row = []
        for j, c in enumerate(cos[i].tolist()):
            hard = c > math.cos(math.acos(float(cos[i, y])) + 0.5)  # official: no fallback
            row.append(64 * (target if j == y else (c * (t + c) if hard else c)))
        rows.append(row)
    torch.testing.assert_close(got, _ce_loop(rows, labels.tolist()).float(), atol=2e-4, rtol=1e-4)
    assert not any(p.requires_grad for p in loss.parameters())


def test_curricularface_hard_negatives_use_the_plain_cos_theta_plus_m():
    """theta_y + m > pi: the target takes the fallback, the hard-negative rule does not."""
    m = 0.5
    cos = torch.tensor([[-0.95, -0.99, -1.0]])
    labels = torch.tensor([0])
    loss = L.CurricularFaceLoss(s=1, m=m, momentum=0.0)
    loss.t.fill_(0.5)
    plain = math.cos(math.acos(-0.95) + m)  # -0.983: cos(theta + m) turned back up
    fallback = -0.95 - m * math.sin(m)  # -1.19: the target logit
    c1, c2 = float(cos[0, 1]), float(cos[0, 2])
    assert fallback < c1 < plain and fallback < c2 < plain
    rows = [[fallback, c1, c2]]  # neither negative is hard under the official rule
    torch.testing.assert_close(loss(cos, labels), _ce_loop(rows, [0]).float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "m1,m2,m3",
    [
        (1.35, 0, 0),
        (1.2, 0.3, 0.1),
        (0.9, 0.4, 0.15),
        (1, 0.5, 0),
        (1, 0, 0.35),
        (1, 0.3, 0.2),
        (2.0, 0.2, 0.1),
        (4.0, 0, 0),
        (1.5, 1.5, 0),
    ],
)
def test_combined_margin_psi_decreases_on_0_pi(m1, m2, m3):
    theta = torch.linspace(0, math.pi, 20001, dtype=torch.float64)
    psi = L.CombinedMarginLoss(s=1, m1=m1, m2=m2, m3=m3).psi(torch.cos(theta))
    assert (psi[1:] <= psi[:-1] + 1e-6).all()
    near = theta < (math.pi - m2) / m1 - 1e-3  # before the continuation: the formula itself
    want = torch.cos(m1 * theta[near] + m2) - m3
    torch.testing.assert_close(psi[near], want, atol=1e-3, rtol=0)  # acos clamped at 1 - 1e-7


@pytest.mark.parametrize("m1,m2", [(0.0, 0.5), (1.0, -0.1), (1.0, 1.6)])
def test_combined_margin_rejects_settings_it_cannot_keep_monotone(m1, m2):
    with pytest.raises(ValueError, match="m1 > 0 and 0 <= m2 < pi/2"):
        L.CombinedMarginLoss(m1=m1, m2=m2)


def test_batch_hard_triplet_matches_a_loop():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 4, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])  # identity 3 has no positive
    got = L.TripletLoss(margin=0.3)(x, labels)
    xn = torch.nn.functional.normalize(x, dim=1)
    for a in range(8):
        pos = [float((xn[a] - xn[p]).norm()) for p in range(8) if p != a and labels[p] == labels[a]]
        neg = [float((xn[a] - xn[n]).norm()) for n in range(8) if labels[n] != labels[a]]
        want = max(0.0, max(pos) - min(neg) + 0.3) if pos else 0.0
        assert float(got[a]) == pytest.approx(want, abs=1e-5)


def test_losses_own_no_parameters():
    for loss, _, _ in CASES:
        assert list(loss.parameters()) == []
