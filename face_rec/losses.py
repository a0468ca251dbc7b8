"""Losses for face recognition. They own no parameters; each states its formula.

Margin losses take the cosine head's output ``cos`` (B, C), cos(theta_j) between the normalised
embedding and class centre j, and labels y (B,). They replace the target logit cos(theta_y) by
psi(theta_y), scale all logits by s and apply cross-entropy; margins are in radians where they are
angles. Every loss returns per-sample losses (B,): the trainer averages them (optionally with
class weights).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class SoftmaxLoss(nn.Module):
    """Cross-entropy on plain linear logits: ``L = -log softmax(W x + b)_y``."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, reduction="none")


class MarginSoftmax(nn.Module):
    """``L = -log( e^{s psi(theta_y)} / (e^{s psi(theta_y)} + sum_{j != y} e^{s cos theta_j}) )``.

    The base class is NormFace: psi(theta) = cos(theta). Subclasses define :meth:`psi`.
    """

    def __init__(self, s: float = 64.0) -> None:
        super().__init__()
        self.s = s

    def psi(self, cos_y: torch.Tensor) -> torch.Tensor:
        return cos_y

    def logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The scaled logits with the target replaced: (B, C). A label < 0 marks a row whose
        class is not among these C columns (another rank's shard in Partial FC): no margin."""
        cos = cos.float().clamp(-1.0, 1.0)
        has = (labels >= 0)[:, None]
        index = labels.clamp_min(0)[:, None]
        cos_y = cos.gather(1, index)
        target = torch.where(has, self.psi(cos_y), cos_y)
        return self.s * cos.scatter(1, index, target)

    def forward(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(cos, labels), labels, reduction="none")


class NormFaceLoss(MarginSoftmax):
    """NormFace (Wang et al. 2017): psi(theta) = cos(theta); only the scale s."""


class CosFaceLoss(MarginSoftmax):
    """CosFace / AM-Softmax (Wang et al. 2018): psi(theta) = cos(theta) - m (m in cosine units)."""

    def __init__(self, s: float = 64.0, m: float = 0.35) -> None:
        super().__init__(s)
        self.m = m

    def psi(self, cos_y: torch.Tensor) -> torch.Tensor:
        return cos_y - self.m


class CombinedMarginLoss(MarginSoftmax):
    """Combined margin (ArcFace paper, Eq. 4): psi(theta) = cos(m1 theta + m2) - m3.

    ``m1`` is multiplicative (SphereFace's), ``m2`` an angle in radians (ArcFace's), ``m3`` a
    cosine offset (CosFace's). Past m1 theta + m2 = pi the cosine would turn back up (a larger
    angle would get a larger logit), so psi is continued to stay decreasing on [0, pi]:

    - m1 = 1 (ArcFace, CosFace and their mix): insightface's fallback,
      psi(theta) = cos(theta) - m3 - m2 sin(m2) for theta > pi - m2.
    - m1 != 1: SphereFace's continuation of the angle a = m1 theta + m2 over a in
      [k pi, (k + 1) pi]: psi = (-1)^k cos(a) - 2k - m3. (insightface's constant fallback is
      not monotone there: for (1.35, 0, 0) it jumps up by 0.4 at theta = pi / m1.)

    ArcFace is (1, m, 0); CosFace is (1, 0, m); the paper also tries (0.9, 0.4, 0.15).
    Admissible: m1 > 0 and 0 <= m2 < pi / 2; psi is then decreasing on [0, pi].
    """

    def __init__(self, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0) -> None:
        super().__init__(s)
        if m1 <= 0 or not 0 <= m2 < math.pi / 2:
            raise ValueError(
                f"combined margin (m1={m1}, m2={m2}, m3={m3}): need m1 > 0 and 0 <= m2 < pi/2 "
                "radians (m2 is an angle: 0.5 = 28.6 degrees); outside that psi(theta) cannot "
                "be kept decreasing"
            )
        self.m1, self.m2, self.m3 = m1, m2, m3

    def psi(self, cos_y: torch.Tensor) -> torch.Tensor:
        theta = torch.acos(cos_y.clamp(-1 + 1e-7, 1 - 1e-7))
        angle = self.m1 * theta + self.m2
        if self.m1 != 1.0:
            return monotone_cos(angle) - self.m3
        fallback = cos_y - self.m3 - self.m2 * math.sin(self.m2)
        return torch.where(angle <= math.pi, torch.cos(angle) - self.m3, fallback)


def monotone_cos(angle: torch.Tensor) -> torch.Tensor:
    """cos(a) continued to decrease past pi: (-1)^k cos(a) - 2k for a in [k pi, (k + 1) pi]
    (SphereFace's psi). Continuous, equal to cos(a) on [0, pi]."""
    k = torch.floor(angle / math.pi)
    sign = 1.0 - 2.0 * torch.remainder(k, 2)
    return sign * torch.cos(angle) - 2.0 * k


class ArcFaceLoss(CombinedMarginLoss):
    """ArcFace (Deng et al. 2019): psi(theta) = cos(theta + m), m in radians (0.5 = 28.6 deg);
    past theta = pi - m: cos(theta) - m sin(m)."""

    def __init__(self, s: float = 64.0, m: float = 0.5) -> None:
        super().__init__(s, 1.0, m, 0.0)


class SphereFaceLoss(MarginSoftmax):
    """SphereFace / A-Softmax (Liu et al. 2017) on normalised features, multiplicative margin:
    psi(theta) = (-1)^k cos(m theta) - 2k for theta in [k pi / m, (k + 1) pi / m], monotonic
    decreasing on [0, pi]. The target logit is blended with the plain one,
    ``(psi + lam cos) / (1 + lam)``, as the paper does to make training converge (lam = 0: pure).
    """

    def __init__(self, s: float = 30.0, m: float = 1.7, lam: float = 0.0) -> None:
        super().__init__(s)
        self.m, self.lam = m, lam

    def psi(self, cos_y: torch.Tensor) -> torch.Tensor:
        theta = torch.acos(cos_y.clamp(-1 + 1e-7, 1 - 1e-7))
        return (monotone_cos(self.m * theta) + self.lam * cos_y) / (1.0 + self.lam)


class CurricularFaceLoss(nn.Module):
    """CurricularFace (Huang et al. 2020): ArcFace target psi(theta_y) = cos(theta_y + m) (with
    insightface's fallback past pi - m), and hard negatives re-weighted to
    cos theta_j (t + cos theta_j), where t is a running mean of cos theta_y (momentum 0.01):
    easy samples first, hard ones later. A negative is hard when cos theta_j > cos(theta_y + m),
    the plain cosine without the fallback, as in the official code (``mask = cos_theta >
    cos_theta_m``).

    t is a buffer (state), not a learned parameter; it is saved in checkpoints.
    """

    def __init__(self, s: float = 64.0, m: float = 0.5, momentum: float = 0.01) -> None:
        super().__init__()
        self.arc = ArcFaceLoss(s=1.0, m=m)
        self.s, self.momentum = s, momentum
        self.register_buffer("t", torch.zeros(()))

    def forward(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = cos.float().clamp(-1.0, 1.0)
        cos_y = cos.gather(1, labels[:, None])
        target = self.arc.psi(cos_y)
        if self.training:
            with torch.no_grad():
                self.t.mul_(1 - self.momentum).add_(self.momentum * cos_y.mean())
        theta_y = torch.acos(cos_y.clamp(-1 + 1e-7, 1 - 1e-7))
        hard = cos > torch.cos(theta_y + self.arc.m2)
        cos = torch.where(hard, cos * (self.t + cos), cos)
        logits = self.s * cos.scatter(1, labels[:, None], target)
        return F.cross_entropy(logits, labels, reduction="none")


class TripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans et al. 2017) on L2-normalised embeddings (B, D):
    for each anchor a, L_a = max(0, max_p d(a, p) - min_n d(a, n) + margin), d the Euclidean
    distance, p over the anchor's identity, n over the others. Needs P identities x K >= 2 images
    per batch; anchors without a positive or a negative get 0."""

    def __init__(self, margin: float = 0.3) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = F.normalize(embeddings.float(), dim=1)
        d = torch.cdist(x, x).clamp_min(1e-12)
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        pos = same & ~eye
        hardest_pos = torch.where(pos, d, torch.zeros_like(d)).amax(1)
        hardest_neg = torch.where(same, torch.full_like(d, float("inf")), d).amin(1)
        valid = pos.any(1) & (~same).any(1)
        loss = F.relu(hardest_pos - hardest_neg + self.margin)
        return torch.where(valid, loss, torch.zeros_like(loss))
