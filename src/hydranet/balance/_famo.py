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

import torch

from hydranet.balance.base import BALANCERS, LossWeighting


@BALANCERS.register("famo")
class FAMO(LossWeighting):
    """Logit-parametrised weights that equalise the rate at which each log-loss decreases."""

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
    def update(self, losses: dict[str, torch.Tensor | float]) -> None:
        """One Adam step on the logits from the losses after the model step (paper's update)."""
        if not bool(torch.isfinite(self.prev_losses).any()):
            return  # no step to compare with
        after = self._vector(losses)
        delta = (self.prev_losses.clamp_min(self.eps)).log() - after.clamp_min(self.eps).log()
        delta = torch.where(torch.isfinite(delta), delta, torch.zeros_like(delta))
        self.prev_losses.fill_(math.nan)
        z = torch.softmax(self.logits, 0)
        grad = z * (delta - z @ delta) + self.gamma * self.logits  # J_softmax^T delta + L2 decay
        b1, b2 = self.betas
        self.adam_steps += 1
        n = int(self.adam_steps)
        self.exp_avg.mul_(b1).add_(grad, alpha=1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        m_hat = self.exp_avg / (1 - b1**n)
        v_hat = self.exp_avg_sq / (1 - b2**n)
        self.logits.sub_(self.lr * m_hat / (v_hat.sqrt() + self.eps))

    def _vector(self, losses) -> torch.Tensor:
        return torch.tensor(
            [float(losses[t]) if t in losses else math.nan for t in self.tasks],
            dtype=torch.float64,
            device=self.logits.device,
        )

    # ------------------------------------------------------------------ weights
    def weights(self, losses, ctx):
        # a loss of exactly 0 (the trainer's masked loss with no labels) has no log: absent
        present = {
            t: losses[t].detach()
            for t in self.tasks
            if ctx.present.get(t, True) and t in losses and float(losses[t].detach()) > 0
        }
        if bool(torch.isfinite(self.prev_losses).any()):
            self.update(present)  # no update() since the last step: use this step's losses
        now = self._vector(present)
        self.prev_losses.copy_(now)
        z = torch.softmax(self.logits, 0)
        inv = torch.where(torch.isfinite(now), z / now.clamp_min(self.eps), torch.zeros_like(z))
        w = inv / inv.sum() if float(inv.sum()) > 0 else inv
        return dict(zip(self.tasks, w.tolist(), strict=True))
