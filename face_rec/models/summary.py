"""Parameter counts and forward FLOPs of backbones: ``python -m face_rec.models.summary``.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add of every
convolution, linear layer and matrix product; normalisation, activations and softmax are not
counted, as in the published GFLOPs). Attention counts its two matrix products, q k^T and
(attention) v, 4 x heads x tokens^2 x head_dim FLOPs per layer: torch counts
``scaled_dot_product_attention``'s CUDA kernels itself, and :data:`ATTENTION_FLOPS` adds its CPU
kernel, which torch leaves out.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from face_rec.models.registry import create_model, list_models


def _cpu_sdpa(q: torch.Size, k: torch.Size, v: torch.Size, *args, **kwargs) -> int:
    """FLOPs of ``_scaled_dot_product_flash_attention_for_cpu`` (called with input shapes)."""
    return sdpa_flop_count(q, k, v)


def _cpu_sdpa_backward(grad: torch.Size, q: torch.Size, k: torch.Size, v: torch.Size, *a, **kw):
    """FLOPs of its backward (called with input shapes)."""
    return sdpa_backward_flop_count(grad, q, k, v)


_aten = torch.ops.aten
#: FlopCounterMode ``custom_mapping`` for the attention kernels torch does not count
ATTENTION_FLOPS: dict[Any, Any] = {
    getattr(_aten, op): fn
    for op, fn in (
        ("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_sdpa_backward),
    )
    if hasattr(_aten, op)
}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def forward_flops(model: nn.Module, input_size: int = 112) -> int:
    """FLOPs (2 x multiply-adds) of one forward pass on one (1, 3, S, S) image, attention's
    matrix products included."""
    model.eval()
    with FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS) as counter:
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
