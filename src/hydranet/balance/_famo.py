"""FAMO, fast adaptive multitask optimization (Liu et al., 2023, https://arxiv.org/abs/2306.03792).

Task weights z = softmax(xi). The model step follows the gradient of
sum_t (z_t / c) log(L_t - b_t), c = sum_t z_t / (L_t - b_t) (c constant), i.e. the losses are
weighted by w_t = (z_t / (L_t - b_t)) / c (a convex combination of the log-loss gradients).
After the model step, the logits take one Adam step (lr 0.025, weight decay gamma = 1e-3, the
paper's Algorithm 2) on the gradient J_softmax(xi)^T delta, where
delta_t = log(L_t(theta_t) - b_t) - log(L_t(theta_{t+1}) - b_t) is how much each log-loss fell.
The lower bounds b_t are 0 (losses must be positive; a loss of exactly 0, the trainer's masked
loss over no labeled rows, is treated as an absent task).

delta needs the losses after the step. The paper's code recomputes them on the same batch with
an extra forward pass: a trainer that does so calls ``balancer.update(new_losses)`` after
``optimizer.step()`` (exact). Without that call, the logits are updated at the start of the
next ``backward`` from that step's losses (on the next batch: no extra forward, and an
approximation, since the two batches differ). The logits, Adam moments and previous losses are
buffers, so state_dict round-trips and resume is exact. Tasks absent from either step get
delta_t = 0; absent tasks get weight 0.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field

from hydranet.balance.base import BALANCERS, LossWeighting
from hydranet.params import NonNegativeFloat, PositiveFloat

_Beta = Annotated[float, Field(ge=0.0, lt=1.0)]  # Adam's decay rates


@BALANCERS.register("famo")
class FAMO(LossWeighting):
    """Logit-parametrised weights that equalise the rate at which each log-loss decreases."""

    param_constraints = {
        "lr": PositiveFloat,
        "gamma": NonNegativeFloat,
        "betas": Annotated[list[_Beta], Field(min_length=2, max_length=2)],
        "eps": PositiveFloat,
    }

    def __init__(
        self,
        tasks: list[str],
        lr: float = 0.025,
        gamma: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        super().__init__(tasks)
        self.lr, self.gamma, self.betas, self.eps = (
            float(lr),
            float(gamma),
            tuple(betas),
            float(eps),
        )
        k = len(self.tasks)
        f64 = dict(dtype=torch.float64)
        self.register_buffer("logits", torch.zeros(k, **f64))
        self.register_buffer("exp_avg", torch.zeros(k, **f64))
        self.register_buffer("exp_avg_sq", torch.zeros(k, **f64))
        self.register_buffer("adam_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("prev_losses", torch.full((k,), math.nan, **f64))  # NaN = none pending

    # ------------------------------------------------------------------ logits update
    # The arithmetic is on K Python floats (float64, as the buffers): a few dozen tensor ops on
    # K = 2 numbers cost ~0.3 ms a step, 10 % of a small model's step, where the same lines
    # on floats cost ~20 us. The buffers are read once and written once per step.
    def update(self, losses: dict[str, torch.Tensor | float]) -> None:
        """One Adam step on the logits from the losses after the model step (paper's update)."""
        prev = self.prev_losses.tolist()
        if not any(math.isfinite(v) for v in prev):
            return  # no step to compare with
        self._adam_step(prev, self._values(losses))

    def _adam_step(self, prev: list[float], after: list[float]) -> None:
        eps = self.eps
        delta = [_log_floor(p, eps) - _log_floor(a, eps) for p, a in zip(prev, after, strict=True)]
        delta = [d if math.isfinite(d) else 0.0 for d in delta]
        self.prev_losses.fill_(math.nan)
        logits = self.logits.tolist()
        z = _softmax(logits)
        zd = sum(zi * di for zi, di in zip(z, delta, strict=True))
        # J_softmax^T delta + L2 decay
        grad = [
            zi * (di - zd) + self.gamma * li for zi, di, li in zip(z, delta, logits, strict=True)
        ]
        b1, b2 = self.betas
        n = int(self.adam_steps) + 1
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(self.exp_avg.tolist(), grad, strict=True)]
        v = [
            b2 * vi + (1 - b2) * gi * gi
            for vi, gi in zip(self.exp_avg_sq.tolist(), grad, strict=True)
        ]
        c1, c2 = 1 - b1**n, 1 - b2**n
        logits = [
            li - self.lr * (mi / c1) / (math.sqrt(vi / c2) + eps)
            for li, mi, vi in zip(logits, m, v, strict=True)
        ]
        self.adam_steps += 1
        for buf, values in ((self.exp_avg, m), (self.exp_avg_sq, v), (self.logits, logits)):
            buf.copy_(torch.tensor(values, dtype=torch.float64))

    def _values(self, losses) -> list[float]:
        return [float(losses[t]) if t in losses else math.nan for t in self.tasks]

    # ------------------------------------------------------------------ weights
    def weights(self, losses, ctx):
        # a loss of exactly 0 (the trainer's masked loss with no labels) has no log: absent
        names = [t for t in self.tasks if ctx.present.get(t, True) and t in losses]
        values = torch.stack([losses[t].detach() for t in names]).tolist() if names else []
        got = dict(zip(names, values, strict=True))
        now = [got[t] if got.get(t, 0.0) > 0 else math.nan for t in self.tasks]
        prev = self.prev_losses.tolist()
        if any(math.isfinite(v) for v in prev):
            self._adam_step(prev, now)  # no update() since the last step: use this step's losses
        self.prev_losses.copy_(torch.tensor(now, dtype=torch.float64))
        z = _softmax(self.logits.tolist())
        inv = [
            zi / max(li, self.eps) if math.isfinite(li) else 0.0
            for zi, li in zip(z, now, strict=True)
        ]
        total = sum(inv)
        w = [x / total for x in inv] if total > 0 else inv
        return dict(zip(self.tasks, w, strict=True))


def _softmax(x: list[float]) -> list[float]:
    top = max(x)
    e = [math.exp(v - top) for v in x]
    total = sum(e)
    return [v / total for v in e]


def _log_floor(v: float, eps: float) -> float:
    """log(max(v, eps)) with NaN kept (an absent task)."""
    return math.nan if math.isnan(v) else math.log(max(v, eps))
