"""GradDrop, gradient sign dropout (Chen et al., 2020, https://arxiv.org/abs/2010.06808).

Per coordinate j: the positive sign purity P_j = 1/2 (1 + sum_i G_ij / sum_i |G_ij|); draw
U_j ~ Uniform(0, 1); keep the positive components where P_j > U_j and the negative ones where
P_j < U_j: d_j = sum_i (l_i + (1 - l_i) M_ij) G_ij, M_ij = [P_j > U_j][G_ij > 0] +
[P_j < U_j][G_ij < 0], with leak l (0 by default). Coordinates where all tasks agree in sign are
always kept whole. This is the combination step (lines 10-15 of Algorithm 1, as in torchjd),
applied to parameter gradients, or to the representation gradient with ``rep_grad=True`` (the
paper applies it at an activation layer, with the sign of the activation folded in and the
purity summed over the batch; that refinement is not reproduced).

Own code rather than torchjd's GradDrop, which draws U from the global RNG: here the seed of each
step's draw comes from a generator kept in the balancer's state, so resume is exact. The
per-task coefficient is not defined (the mask is per coordinate); ``last_weights`` reports the
fraction of each task's gradient mass that was kept, sum_j |M_ij G_ij| / sum_j |G_ij|.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hydranet.balance._rng import SeededStream
from hydranet.balance.aggregation import GradientAggregation
from hydranet.balance.base import BALANCERS
from hydranet.params import Unit


def graddrop(G: Tensor, U: Tensor, leak: float = 0.0) -> tuple[Tensor, Tensor]:
    """Return (d, kept) for gradients ``G`` [K, P] and uniform draws ``U`` [P]: d = kept.sum(0).

    Written for few passes over the [K, P] matrix (it is K x the representation under
    rep_grad) and for float arithmetic only: on the CPU, comparisons and ``where`` over a
    [K, P] matrix cost 2-10x a float multiply. With p_j = [P_j > U_j] and n_j = [P_j < U_j]
    (at most one is 1), the kept part of G is relu(G) p + (G - relu(G)) n =
    relu(G) (p - n) + G n, entry for entry the masked G (up to the sign of a zero).
    """
    abs_sum = G.abs().sum(0)
    purity = 0.5 * (1 + G.sum(0) / abs_sum.clamp_min(torch.finfo(G.dtype).tiny))
    pos = (purity > U).to(G.dtype)  # [P]
    neg = (purity < U).to(G.dtype)
    kept = G.clamp_min(0) * (pos - neg) + G * neg
    if leak != 0.0:
        kept = leak * G + (1 - leak) * kept
    return kept.sum(0), kept


@BALANCERS.register("graddrop")
class GradDrop(GradientAggregation):
    """Keep, per coordinate, only one sign of the task gradients, chosen by sign purity."""

    param_constraints = {"leak": Unit, "seed": int}

    def __init__(self, tasks: list[str], rep_grad: bool = False, leak: float = 0.0, seed: int = 0):
        super().__init__(tasks, rep_grad=rep_grad)
        if not 0.0 <= leak <= 1.0:
            raise ValueError(f"graddrop leak must be in [0, 1]; got {leak}")
        self.leak = float(leak)
        self.rng = SeededStream(seed)

    def aggregate(self, G: Tensor) -> Tensor:
        gen = torch.Generator(device=G.device).manual_seed(self.rng.seed_for_device())
        U = torch.rand(G.shape[1], generator=gen, device=G.device, dtype=G.dtype)
        d, kept = graddrop(G, U, self.leak)
        mass = G.abs().sum(1)
        self._coef = torch.where(mass > 0, kept.abs().sum(1) / mass.clamp_min(1e-30), 1.0)
        return d
