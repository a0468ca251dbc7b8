"""An exponential moving average of the backbone's weights (Polyak averaging).

After the n-th optimizer step the average is the mean of the weights after each step so far,
weighted by ``decay ** (n - k)`` (each floating tensor of the state dict: parameters and
BatchNorm statistics alike; integer buffers are copied). That is the moving average
``ema <- d ema + (1 - d) weights`` with Adam's bias correction, done in place as
``d_n = 1 - (1 - decay) / (1 - decay ** n)``: nothing of the random initial weights remains.
The weights of about the last ``1 / (1 - decay)`` steps dominate, so the horizon should be a
fraction of the run: in a run not much longer than it, early, high-LR weights count too (0.999
over 2,100 steps gives the first half a quarter of the weight). BatchNorm statistics are
averaged like the weights, as timm does, not recomputed for the averaged weights as SWA does
(tested on the demo and not adopted: experiments/cpu_demo.md, "BatchNorm statistics for the
average").
The average is what validation embeds and what checkpoints hold as ``model``; the trained
weights go on training. (timm's ``ModelEmaV2`` keeps the initial weights in the average with
weight ``decay ** n``; TensorFlow's ``ExponentialMovingAverage(num_updates=)`` and timm's
optional warm-up shorten the horizon early on instead. insightface's recipes do not average.)
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """The moving average of ``model``'s state: :attr:`module` is a frozen copy in eval mode."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        check_decay(decay)
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

    def restart(self, model: nn.Module) -> None:
        """Start averaging afresh from ``model``'s next steps."""
        self.module.load_state_dict(model.state_dict())
        self.updates = 0


def check_decay(decay: float) -> None:
    """A clear error for a decay outside (0, 1) (0 turns averaging off: no :class:`WeightEMA`)."""
    if isinstance(decay, bool) or not 0.0 < decay < 1.0:
        raise ValueError(
            f"trainer.ema_decay={decay!r}: use a decay in (0, 1), e.g. 0.999 (about the last "
            "1,000 steps weigh most; keep it a fraction of the run), or 0 to train without a "
            "weight average"
        )
