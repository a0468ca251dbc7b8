"""Classification heads: they own the class centres and map embeddings (B, D) to (B, C)."""

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


class CosineHead(nn.Module):
    """Cosine classifier for margin losses: cos(theta_j) = <x / |x|, w_j / |w_j|>. (B, D) -> (B, C)
    in [-1, 1]; the loss adds the margin and the scale."""

    def __init__(self, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))
