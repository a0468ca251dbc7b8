"""An exponential moving average of the backbone's weights (Polyak averaging).

After the n-th optimizer step the average is the mean of the weights after each step so far,
weighted by ``decay ** (n - k)`` (each floating tensor of the state dict: parameters and
BatchNorm statistics alike; integer buffers are copied). That is the moving average
``ema <- d ema + (1 - d) weights`` with Adam's bias correction, done in place as
``d_n = 1 - (1 - decay) / (1 - decay ** n)``: nothing of the random initial weights remains, and
``decay`` means the same horizon (about ``1 / (1 - decay)`` steps) from the first step on, also
in a run of a few thousand steps. The average is what validation embeds and what checkpoints
hold as ``model``; the trained weights go on training. (timm's ``ModelEmaV3`` averages buffers
too; it and TensorFlow warm the decay up instead, so that a short run averages only its last
steps. insightface's recipes do not average.)
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
        """The weight the average keeps at the next update (0 at the first: it takes the step's)."""
        n = self.updates + 1
        return 1.0 - (1.0 - self.decay) / (1.0 - self.decay**n)

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
