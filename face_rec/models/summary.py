"""Parameter counts and forward FLOPs of backbones: ``python -m face_rec.models.summary``."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from face_rec.models.registry import create_model, list_models


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def forward_flops(model: nn.Module, input_size: int = 112) -> int:
    """FLOPs (2 x multiply-adds) of one forward pass on one (1, 3, S, S) image."""
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, input_size, input_size))
    return int(counter.get_total_flops())


def model_table(input_size: int = 112) -> list[tuple[str, int, int]]:
    """(name, parameters, forward FLOPs) for every registered backbone."""
    rows = []
    for name in list_models():
        model = create_model(name, input_size=input_size)
        rows.append((name, count_params(model), forward_flops(model, input_size)))
    return rows


def main() -> None:
    print("| backbone | params (M) | forward GFLOPs @112 |\n| --- | ---: | ---: |")
    for name, params, flops in model_table():
        print(f"| {name} | {params / 1e6:.2f} | {flops / 1e9:.2f} |")


if __name__ == "__main__":
    main()
