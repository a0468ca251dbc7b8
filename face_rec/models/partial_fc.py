"""Partial FC (An et al., "Partial FC: Training 10 Million Identities on a Single Machine", 2022):
the class-centre matrix sharded across ranks, with negative-centre sampling.

Each of W ranks holds C / W consecutive class centres. A step gathers every rank's embeddings and
labels (N = B x W rows), computes the cosines to its own centres, applies the margin of a
:class:`~face_rec.losses.MarginSoftmax` loss where a row's class is among them, and completes
the softmax with two cross-rank reductions (the row max and the sum of exponentials), so no rank
ever holds all C logits. With ``sample_rate`` r < 1 a rank keeps every centre that is positive in
the global batch plus random negatives, r x C / W in all.

Gradient convention: the loss a rank returns is the per-sample loss of its own B rows, like any
other loss in the trainer, and the backbone (under DDP, which averages over ranks) gets exactly
the full-softmax gradient of the global batch. The centres are not under DDP; their gradient is
divided by W so that, too, equals the gradient of the global mean loss. With r = 1 this is the
full (margin) softmax, which tests/models/test_partial_fc.py checks against a single process.

Sub-centres (sub-center ArcFace, ``sub_centers`` K > 1): the shard is (C / W, K, D), a class's
K sub-centres on one rank and sampled together, each class scored by its best sub-centre (as
:class:`~face_rec.models.heads.SubCenterHead`). Quality-adaptive margins (AdaFace, MagFace) get the
norms of the gathered raw embeddings, and MagFace's per-sample regulariser is added to this
rank's rows.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from face_rec import distributed as D
from face_rec.losses import MarginSoftmax
from face_rec.models.heads import class_cosines


def shard_range(num_classes: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of ``rank``'s classes: the first C % W ranks hold one more."""
    base, extra = divmod(num_classes, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def _row_max_and_target(values: torch.Tensor, labels: torch.Tensor):
    """For columns split across ranks: each row's maximum over all ranks' columns, each row's
    value at its class column (held by one rank), and the rows whose class is on this rank."""
    top = D.all_reduce(values.max(1).values.clone(), "max")
    rows = (labels >= 0).nonzero().squeeze(1)
    target = torch.zeros_like(top)
    target[rows] = values[rows, labels[rows]]
    return top, D.all_reduce(target), rows


class _ShardedCrossEntropy(torch.autograd.Function):
    """Cross-entropy over logits split by columns across ranks. ``labels``: the column of each
    row's class on this rank, -1 where it is on another. Returns the loss of rows [start, start+n).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, start: int, n: int):
        top, target, rows = _row_max_and_target(logits, labels)
        e = (logits - top[:, None]).exp_()
        total = D.all_reduce(e.sum(1))
        loss = total.log() + top - target
        ctx.save_for_backward(e.div_(total[:, None]), rows, labels)
        ctx.start, ctx.n = start, n
        return loss[start : start + n]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        prob, rows, labels = ctx.saved_tensors
        grad_all = D.all_gather(grad.contiguous())  # every rank's d(loss)/d(its rows)
        g = prob.clone()
        g[rows, labels[rows]] -= 1.0
        return g.mul_(grad_all[:, None]), None, None, None


class PartialFC(nn.Module):
    """Sharded class centres + a margin softmax: ``forward(raw embeddings (B, D), labels (B,))``
    -> per-sample losses (B,). Used as the trainer's loss (there is no separate head).

    Checkpoints hold the full (C, D) centre matrix ((C, K, D) with K ``sub_centers``), gathered
    from the shards, so a run resumes on any number of ranks: :meth:`_load_from_state_dict`
    keeps this rank's rows.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        margin: MarginSoftmax,
        sample_rate: float = 1.0,
        sub_centers: int = 1,
    ) -> None:
        super().__init__()
        if not isinstance(margin, MarginSoftmax):
            raise ValueError(
                f"Partial FC needs a margin-softmax head (normface, sphereface, cosface, arcface, "
                f"combined, adaface, magface, subcenter_arcface), not {type(margin).__name__}; "
                "set partial_fc=null for this head"
            )
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"partial_fc sample rate {sample_rate} must be in (0, 1]")
        if sub_centers < 1:
            raise ValueError(f"sub_centers={sub_centers}: need at least 1 centre per class")
        self.margin, self.sample_rate, self.num_classes = margin, sample_rate, num_classes
        self.world = D.world_size()
        self.start, stop = shard_range(num_classes, D.rank(), self.world)
        per_class = (embedding_dim,) if sub_centers == 1 else (sub_centers, embedding_dim)
        self.weight = nn.Parameter(torch.empty(stop - self.start, *per_class))
        nn.init.normal_(self.weight, std=0.01)
        if self.world > 1:
            self.weight.register_hook(lambda g: g / self.world)
        self.accuracy: float | None = None  #: training accuracy of the last global batch

    def sample(self, labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(rows of this shard to use or None for all, each label's column in them or -1)."""
        local = labels - self.start
        mine = (local >= 0) & (local < len(self.weight))
        local = torch.where(mine, local, torch.full_like(local, -1))
        if self.sample_rate >= 1.0:
            return None, local
        positive = torch.unique(local[mine])
        n = max(int(self.sample_rate * len(self.weight)), len(positive))
        score = torch.rand(len(self.weight), device=labels.device)
        score[positive] = 2.0  # every positive centre is kept
        index = score.topk(n).indices.sort().values
        local[mine] = torch.searchsorted(index, local[mine])
        return index, local

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-sample losses (B,) of this rank's raw ``embeddings`` (B, D). ``norms`` is
        accepted like every loss's and not needed: the norms of all ranks' rows are taken here."""
        raw = D.all_gather_with_grad(embeddings.float())
        index, local = self.sample(D.all_gather(labels))
        w = self.weight if index is None else self.weight[index]
        cos = class_cosines(F.normalize(raw, dim=1), w)
        with torch.no_grad():
            self.accuracy = self._accuracy(cos, local)
        logits = self.margin.logits(cos, local, raw.norm(dim=1))
        n = len(embeddings)
        loss = _ShardedCrossEntropy.apply(logits, local, D.rank() * n, n)
        extra = self.margin.penalty(embeddings.float().norm(dim=1))
        return loss if extra is None else loss + extra

    @staticmethod
    def _accuracy(cos: torch.Tensor, local: torch.Tensor) -> float:
        best, target, _ = _row_max_and_target(cos, local)
        return float((target >= best).float().mean())

    # ---------------------------------------------------------------- checkpoints (full matrix)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        destination[prefix + "weight"] = D.all_gather_rows(self.weight.detach())

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ) -> None:
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
            return
        full = state_dict[key]
        want = (self.num_classes, *self.weight.shape[1:])
        if tuple(full.shape) != want:
            errors.append(
                f"{key}: checkpoint has {tuple(full.shape)} class centres, this run needs "
                f"{want} (same training data, embedding_dim and sub_centers)"
            )
            return
        with torch.no_grad():
            self.weight.copy_(full[self.start : self.start + len(self.weight)])

    def _index_in(self, optimizer: torch.optim.Optimizer) -> int:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        return next(i for i, p in enumerate(params) if p is self.weight)

    def gather_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> dict:
        """``optimizer.state_dict()`` with this shard's per-centre buffers (momentum, Adam
        moments) replaced by the full (C, D) ones. Collective: every rank must call it."""
        i = self._index_in(optimizer)
        if i in state["state"]:  # a new dict: the one in ``state`` is the optimizer's own
            state["state"][i] = {
                k: D.all_gather_rows(v) if _per_centre(v, len(self.weight)) else v
                for k, v in state["state"][i].items()
            }
        return state

    def shard_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> dict:
        """The inverse of :meth:`gather_optimizer_state`, for any number of ranks."""
        i, rows = self._index_in(optimizer), slice(self.start, self.start + len(self.weight))
        if i in state["state"]:
            state["state"][i] = {
                k: v[rows].clone() if _per_centre(v, self.num_classes) else v
                for k, v in state["state"][i].items()
            }
        return state


def _per_centre(v, n: int) -> bool:
    return torch.is_tensor(v) and v.dim() >= 2 and len(v) == n
