"""Losses for face recognition. They own no parameters; each states its formula.

Margin losses take the cosine head's output ``cos`` (B, C), cos(theta_j) between the normalised
embedding and class centre j, labels y (B,) and ``norms`` (B,), the norms |x| of the raw
(unnormalised) embeddings. They replace the target logit cos(theta_y) by psi(theta_y), scale all
logits by s and apply cross-entropy; margins are in radians where they are angles. Every loss
accepts ``norms`` (the trainer always passes them); only the quality-adaptive ones (AdaFace,
MagFace) use them, and they need them. Every loss returns per-sample losses (B,): the trainer
averages them (optionally with class weights).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn
from torch.nn import functional as F

from face_rec import distributed as D

log = logging.getLogger(__name__)


class SoftmaxLoss(nn.Module):
    """Cross-entropy on plain linear logits: ``L = -log softmax(W x + b)_y``."""

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None
    ) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, reduction="none")


class MarginSoftmax(nn.Module):
    """``L = -log( e^{s psi(theta_y)} / (e^{s psi(theta_y)} + sum_{j != y} e^{s cos theta_j}) )``.

    The base class is NormFace: psi(theta) = cos(theta). Subclasses define :meth:`psi`, or
    :meth:`target` when the margin depends on the embedding norm, and :meth:`penalty` for a
    per-sample term added to the cross-entropy (MagFace's regulariser).
    """

    cos_eps: float = 0.0  #: all cosines are clamped to [-1 + cos_eps, 1 - cos_eps]

    def __init__(self, s: float = 64.0) -> None:
        super().__init__()
        self.s = s

    def psi(self, cos_y: torch.Tensor) -> torch.Tensor:
        return cos_y

    def target(self, cos_y: torch.Tensor, norms: torch.Tensor | None) -> torch.Tensor:
        """The target logit before scaling for target cosines (B, 1) of embeddings with norms
        (B, 1) (None when not given): psi(cos_y); the plain margins ignore the norms."""
        return self.psi(cos_y)

    def penalty(self, norms: torch.Tensor | None) -> torch.Tensor | None:
        """A per-sample term (B,) added to the cross-entropy, from the norms (B,); None: none."""
        return None

    def logits(
        self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The scaled logits with the target replaced: (B, C). A label < 0 marks a row whose
        class is not among these C columns (another rank's shard in Partial FC): no margin.
        ``norms`` (B,): the raw embeddings' norms, for the margins that depend on them."""
        cos = cos.float().clamp(-1.0 + self.cos_eps, 1.0 - self.cos_eps)
        has = (labels >= 0)[:, None]
        index = labels.clamp_min(0)[:, None]
        cos_y = cos.gather(1, index)
        a = None if norms is None else norms.float()[:, None]
        target = torch.where(has, self.target(cos_y, a), cos_y)
        return self.s * cos.scatter(1, index, target)

    def forward(
        self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None
    ) -> torch.Tensor:
        loss = F.cross_entropy(self.logits(cos, labels, norms), labels, reduction="none")
        extra = self.penalty(norms)
        return loss if extra is None else loss + extra


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

    t is a buffer (state), not a learned parameter; it is saved in checkpoints. It moves at every
    training call (each micro-batch when the trainer accumulates gradients); under DDP with the
    mean over every rank's rows, so all ranks hold the same t and a multi-rank run equals one
    process on the global batch (as AdaFace's statistics below).
    """

    def __init__(self, s: float = 64.0, m: float = 0.5, momentum: float = 0.01) -> None:
        super().__init__()
        self.arc = ArcFaceLoss(s=1.0, m=m)
        self.s, self.momentum = s, momentum
        self.register_buffer("t", torch.zeros(()))

    def forward(
        self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None
    ) -> torch.Tensor:
        cos = cos.float().clamp(-1.0, 1.0)
        cos_y = cos.gather(1, labels[:, None])
        target = self.arc.psi(cos_y)
        if self.training:
            with torch.no_grad():
                every = D.all_gather(cos_y.detach().contiguous())
                self.t.mul_(1 - self.momentum).add_(self.momentum * every.mean())
        theta_y = torch.acos(cos_y.clamp(-1 + 1e-7, 1 - 1e-7))
        hard = cos > torch.cos(theta_y + self.arc.m2)
        cos = torch.where(hard, cos * (self.t + cos), cos)
        logits = self.s * cos.scatter(1, labels[:, None], target)
        return F.cross_entropy(logits, labels, reduction="none")


def _require_norms(norms: torch.Tensor | None, loss: nn.Module) -> torch.Tensor:
    if norms is None:
        raise ValueError(
            f"{type(loss).__name__} needs the norms of the raw embeddings: call "
            "loss(cos, labels, norms) with norms = embeddings.norm(dim=1), shape (B,), taken "
            "before normalisation (the trainer and Partial FC pass them)"
        )
    return norms


class AdaFaceLoss(MarginSoftmax):
    """AdaFace (Kim et al., CVPR 2022): the margin adapts to image quality, read from the raw
    embedding's norm relative to the batch's.

    With a = clip(|x|, 0.001, 100), detached (no gradient flows through the norm), and the
    running mean mu and standard deviation sigma of a (buffers ``batch_mean``, ``batch_std``):

        z = clip(h (a - mu) / (sigma + eps), -1, 1)           the margin scaler
        g_angle = -m z (radians),  g_add = m + m z (cosine units)
        psi(theta_y) = cos(clip(theta_y + g_angle, eps, pi - eps)) - g_add

    z = -1 (a low norm: a poor image) is ArcFace's cos(theta + m), which weighs easy samples
    more, z = 0 CosFace's cos(theta) - m, z = 1 (a high norm) cos(theta - m) - 2m, which weighs
    hard samples more. As in the official code (mk-minchul/AdaFace ``head.py``), eps = 1e-3 and
    every cosine, not only the target, is first clamped to [-1 + eps, 1 - eps].

    The statistics: at every training call (each micro-batch when the trainer accumulates
    gradients), before the margins are computed (so the batch counts towards its own margins)
    and without gradient, mu <- t_alpha mean(a) + (1 - t_alpha) mu and
    sigma <- t_alpha std(a) + (1 - t_alpha) sigma, std the unbiased (N - 1) estimate
    (``Tensor.std``, as the official code); they start at mu = 20, sigma = 100. A batch of one
    row leaves sigma unchanged (its std is undefined). They are taken over the whole global
    batch: under DDP the loss gathers every rank's norms and Partial FC passes the gathered rows,
    so every rank holds the same statistics and a multi-rank run equals one process on the
    global batch (the official code takes each rank's own rows). They are buffers: saved in
    checkpoints, restored on resume. Published defaults: m = 0.4, h = 0.333, s = 64,
    t_alpha = 0.01 (the official code's training default).
    """

    cos_eps = 1e-3  #: the official eps: the cosine clamp, the angle clip, sigma's offset

    def __init__(
        self, s: float = 64.0, m: float = 0.4, h: float = 0.333, t_alpha: float = 0.01
    ) -> None:
        super().__init__(s)
        if not 0.0 < t_alpha <= 1.0:
            raise ValueError(f"adaface t_alpha={t_alpha}: the EMA weight must be in (0, 1]")
        self.m, self.h, self.t_alpha = m, h, t_alpha
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))

    @staticmethod
    def safe_norms(norms: torch.Tensor) -> torch.Tensor:
        """clip(|x|, 0.001, 100), detached: any shape."""
        return norms.detach().float().clamp(0.001, 100.0)

    @torch.no_grad()
    def update_statistics(self, norms: torch.Tensor) -> None:
        """One EMA step of ``batch_mean`` / ``batch_std`` with the batch's norms (N,)."""
        a = self.safe_norms(norms)
        self.batch_mean.mul_(1.0 - self.t_alpha).add_(self.t_alpha * a.mean())
        if len(a) > 1:
            self.batch_std.mul_(1.0 - self.t_alpha).add_(self.t_alpha * a.std())

    def margin_scaler(self, a: torch.Tensor) -> torch.Tensor:
        """z = clip(h (a - mu) / (sigma + eps), -1, 1) for safe norms ``a`` (any shape)."""
        z = (a - self.batch_mean) / (self.batch_std + self.cos_eps)
        return (z * self.h).clamp(-1.0, 1.0)

    def target(self, cos_y: torch.Tensor, norms: torch.Tensor | None) -> torch.Tensor:
        z = self.margin_scaler(self.safe_norms(_require_norms(norms, self)))
        angle = torch.acos(cos_y) - self.m * z
        angle = angle.clamp(self.cos_eps, math.pi - self.cos_eps)
        return torch.cos(angle) - (self.m + self.m * z)

    def logits(
        self,
        cos: torch.Tensor,
        labels: torch.Tensor,
        norms: torch.Tensor | None = None,
        batch_norms: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """As :meth:`MarginSoftmax.logits`; in training mode the statistics are first updated
        with ``batch_norms`` (the whole batch's norms; default ``norms``: these rows are it)."""
        norms = _require_norms(norms, self)
        if self.training:
            self.update_statistics(norms if batch_norms is None else batch_norms)
        return super().logits(cos, labels, norms)

    def forward(
        self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None
    ) -> torch.Tensor:
        norms = _require_norms(norms, self)
        every = None  # the statistics move in training only, over all ranks' rows (DDP)
        if self.training:
            every = D.all_gather(norms.detach().float().contiguous())
        logits = self.logits(cos, labels, norms, every)
        return F.cross_entropy(logits, labels, reduction="none")


class MagFaceLoss(MarginSoftmax):
    """MagFace (Meng et al., CVPR 2021): a margin that grows with the feature magnitude and a
    regulariser that rewards magnitude, so that |x| becomes a quality score.

        a = clamp(|x|, l_a, u_a)          (the gradient flows through a, as in the official code)
        m(a) = (u_m - l_m) / (u_a - l_a) (a - l_a) + l_m            radians, linear in a
        psi(theta_y) = cos(theta_y + m(a))
        L = CE(s psi(theta_y), s cos theta_j) + lambda_g g(a),   g(a) = 1 / a + a / u_a^2

    Past the margin's range, as the official ``MagLinear``: ``easy_margin=True`` (its default,
    which its training scripts keep) uses no margin where cos theta_y <= 0,
    psi = cos theta_y; ``easy_margin=False`` continues past theta_y = pi - m(a) with
    cos theta_y - m(a) sin m(a) (insightface's ArcFace fallback). The per-sample regulariser
    averaged by the trainer is the official ``lambda_g * mean(g)``.

    Defaults: the official iResNet100 / MS1MV2 setting (``run/run.sh``, the paper): l_a = 10,
    u_a = 110, l_m = 0.45, u_m = 0.8, lambda_g = 35, s = 64. The paper's guarantee (a unique
    optimal magnitude, growing with cos theta_y) needs lambda_g >= s k u_a^2 l_a^2 /
    (u_a^2 - l_a^2), k = (u_m - l_m) / (u_a - l_a) (22.6 for the defaults); a smaller one is
    allowed with a warning, as the official code does.
    """

    def __init__(
        self,
        s: float = 64.0,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_m: float = 0.45,
        u_m: float = 0.8,
        lambda_g: float = 35.0,
        easy_margin: bool = True,
    ) -> None:
        super().__init__(s)
        if not 0 < l_a < u_a or not 0 <= l_m <= u_m < math.pi / 2:
            raise ValueError(
                f"magface (l_a={l_a}, u_a={u_a}, l_m={l_m}, u_m={u_m}): need 0 < l_a < u_a "
                "(magnitudes) and 0 <= l_m <= u_m < pi/2 (margins in radians)"
            )
        self.l_a, self.u_a, self.l_m, self.u_m = l_a, u_a, l_m, u_m
        self.lambda_g, self.easy_margin = lambda_g, easy_margin
        k = (u_m - l_m) / (u_a - l_a)
        least = s * k * u_a**2 * l_a**2 / (u_a**2 - l_a**2)
        if lambda_g < least:
            log.warning(
                "magface lambda_g=%g is below %.3g = s k u_a^2 l_a^2 / (u_a^2 - l_a^2): the "
                "paper's guarantee (one optimal magnitude, growing with cos theta_y) needs it",
                lambda_g,
                least,
            )

    def magnitude(self, norms: torch.Tensor) -> torch.Tensor:
        """a = clamp(|x|, l_a, u_a) (any shape), with its gradient."""
        return _require_norms(norms, self).float().clamp(self.l_a, self.u_a)

    def margin(self, a: torch.Tensor) -> torch.Tensor:
        """m(a) in radians, linear from l_m at l_a to u_m at u_a."""
        return (self.u_m - self.l_m) / (self.u_a - self.l_a) * (a - self.l_a) + self.l_m

    def target(self, cos_y: torch.Tensor, norms: torch.Tensor | None) -> torch.Tensor:
        m = self.margin(self.magnitude(norms))
        theta = torch.acos(cos_y.clamp(-1 + 1e-7, 1 - 1e-7))
        arc = torch.cos(theta + m)
        if self.easy_margin:
            return torch.where(cos_y > 0, arc, cos_y)
        return torch.where(cos_y > torch.cos(math.pi - m), arc, cos_y - m * torch.sin(m))

    def penalty(self, norms: torch.Tensor | None) -> torch.Tensor:
        a = self.magnitude(norms)
        return self.lambda_g * (1.0 / a + a / self.u_a**2)


class TripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans et al. 2017) on L2-normalised embeddings (B, D):
    for each anchor a, L_a = max(0, max_p d(a, p) - min_n d(a, n) + margin), d the Euclidean
    distance, p over the anchor's identity, n over the others. Needs P identities x K >= 2 images
    per batch; anchors without a positive or a negative get 0."""

    def __init__(self, margin: float = 0.3) -> None:
        super().__init__()
        self.margin = margin

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None
    ) -> torch.Tensor:
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
