"""An exponential moving average of the backbone's weights (Polyak averaging).

After every optimizer step ``ema <- d ema + (1 - d) weights`` for each floating tensor of the
state dict (parameters and BatchNorm statistics alike; integer buffers are copied), with timm's
the warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=n)``,
``d_n = min(decay, (1 + n) / (10 + n))`` at the n-th update, so that the random initial weights
do not linger in a short run. The average is what validation embeds and what checkpoints hold as
``model``; the trained weights go on training (timm's ``ModelEmaV3`` averages the same way,
buffers included; insightface's recipes do not average).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """The moving average of ``model``'s state: :attr:`module` is a frozen copy in eval mode."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(
                f"trainer.ema_decay={decay!r}: use a decay in (0, 1), e.g. 0.999 (an average over "
                "about 1,000 steps), or 0 to train without a weight average"
            )
        self.decay, self.updates = decay, 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay of the next update (warm-up: the first updates follow the weights closely)."""
        n = self.updates + 1
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        averaged, copied = [], []
        for mine, theirs in zip(
            self.module.state_dict().values(), model.state_dict().values(), strict=True
        ):
            (averaged if mine.is_floating_point() else copied).append((mine, theirs))
        if averaged:
            ours, new = zip(*averaged, strict=True)
            torch._foreach_lerp_(list(ours), list(new), 1.0 - d)
        for mine, theirs in copied:
            mine.copy_(theirs)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"model": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])
