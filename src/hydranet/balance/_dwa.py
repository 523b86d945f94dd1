"""Dynamic weight average (Liu, Johns & Davison, 2019, https://arxiv.org/abs/1803.10704).

w_t(e) = K exp(r_t(e-1) / T) / sum_i exp(r_i(e-1) / T), r_t(e-1) = L_t(e-1) / L_t(e-2), with
L_t(e) the mean training loss of task t over epoch e and temperature T = 2. The first two
epochs use w = 1. Weights are constant within an epoch.

The trainer must call ``end_epoch({task: mean training loss})`` once per epoch; the last two
epoch means are kept in a buffer, so they travel with state_dict. A task with no loss in an
epoch (no labels) keeps rate 1.
"""

from __future__ import annotations

import math

import torch

from hydranet.balance.base import BALANCERS, LossWeighting
from hydranet.params import PositiveFloat


@BALANCERS.register("dwa")
class DynamicWeightAverage(LossWeighting):
    """Weights from the ratio of each task's last two epoch-mean losses, softmax at temperature T."""

    param_constraints = {"temperature": PositiveFloat}

    def __init__(self, tasks: list[str], temperature: float = 2.0):
        super().__init__(tasks)
        if temperature <= 0:
            raise ValueError(f"dwa temperature must be > 0; got {temperature}")
        self.temperature = float(temperature)
        k = len(self.tasks)
        # row 0: epoch e-2, row 1: epoch e-1 (NaN = not seen)
        self.register_buffer("history", torch.full((2, k), math.nan, dtype=torch.float64))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self._w = dwa_weights(self.history, int(self.epochs_seen), self.temperature)

    def end_epoch(self, epoch_losses: dict[str, float]) -> None:
        row = torch.tensor(
            [float(epoch_losses.get(t, math.nan)) for t in self.tasks], dtype=torch.float64
        )
        self.history[0] = self.history[1]
        self.history[1] = row.to(self.history.device)
        self.epochs_seen += 1
        self._w = dwa_weights(self.history, int(self.epochs_seen), self.temperature)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._w = dwa_weights(self.history, int(self.epochs_seen), self.temperature)

    def weights(self, losses, ctx):
        return dict(zip(self.tasks, self._w, strict=True))


def dwa_weights(history: torch.Tensor, epochs_seen: int, temperature: float) -> list[float]:
    k = history.shape[1]
    if epochs_seen < 2:
        return [1.0] * k
    rate = (history[1] / history[0]).cpu()
    rate = torch.where(torch.isfinite(rate), rate, torch.ones_like(rate))
    return (k * torch.softmax(rate / temperature, 0)).tolist()
