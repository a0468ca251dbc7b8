"""Classification heads: they own the class centres and map the raw (unnormalised) embeddings
(B, D) to scores (B, C). The trainer passes the raw embeddings' norms to the loss besides, so
that a loss may adapt its margin to them (AdaFace, MagFace)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class LinearHead(nn.Module):
    """Plain softmax classifier: logits = W x + b. (B, D) -> (B, C)."""

    def __init__(self, embedding_dim: int, num_classes: int, bias: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(embedding_dim, num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def class_cosines(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Cosines of unit rows ``x`` (B, D) to class centres ``weight`` (C, D), or to sub-centres
    (C, K, D) of which each class keeps its largest: max_k <x, w_jk / |w_jk|>. -> (B, C)."""
    w = F.normalize(weight, dim=-1)
    if w.dim() == 2:
        return F.linear(x, w)
    return F.linear(x, w.flatten(0, 1)).unflatten(1, w.shape[:2]).amax(2)


class CosineHead(nn.Module):
    """Cosine classifier for margin losses: cos(theta_j) = <x / |x|, w_j / |w_j|>. (B, D) -> (B, C)
    in [-1, 1]; the loss adds the margin and the scale."""

    def __init__(self, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return class_cosines(F.normalize(x, dim=1), self.weight)


class SubCenterHead(nn.Module):
    """Sub-center cosine head (sub-center ArcFace, Deng et al., ECCV 2020): K centres per class,
    cos(theta_j) = max_k <x / |x|, w_jk / |w_jk|>. (B, D) -> (B, C) in [-1, 1]; the loss (ArcFace's
    margin) sees one cosine per class. On noisy data a class's clean faces gather at a dominant
    sub-centre and its noise at the others.

    ``weight`` is (C, K, D): a class's K sub-centres are one row of the first dimension, so Partial
    FC (``sub_centers=K``) shards and samples them by identity, together.
    """

    def __init__(self, embedding_dim: int, num_classes: int, sub_centers: int = 3) -> None:
        super().__init__()
        if sub_centers < 1:
            raise ValueError(f"sub_centers={sub_centers}: need at least 1 centre per class")
        self.weight = nn.Parameter(torch.empty(num_classes, sub_centers, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return class_cosines(F.normalize(x, dim=1), self.weight)
