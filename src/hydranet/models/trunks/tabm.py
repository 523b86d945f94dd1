"""TabM: k implicit MLPs sharing most weights through BatchEnsemble layers.

Member ``i`` computes ``h_i = MLP_i(x)``, every layer ``(x * r_i) @ W.T * s_i + b_i``: the
weight ``W`` is shared, ``r_i``, ``s_i``, ``b_i`` are per member; the prediction is the
mean of the k members'. Gorishniy et al., "TabM: Advancing Tabular Deep Learning with
Parameter-Efficient Ensembling", ICLR 2025 (the ``tabm`` package, by its authors).

Multi-task: one ensemble backbone shared by every task, and per task one linear head per
member whose logits are averaged. hydranet's towers take one ``[B, H]`` input per task and
the losses one ``[B, out]`` logit, so the heads are expressed through the towers: each
task's input is the k members' representations side by side, ``[h_1 .. h_k] / sqrt(k)``
(``[B, k * d_block]``), and a tower's output ``Linear(k * d_block, out)`` on it is exactly
``mean_i(W_i h_i) + b``: k per-member heads with their logits averaged, ``W_i`` being
``sqrt(k)`` times the i-th ``[d_block, out]`` block of its weight (a ``[k, d_block, out]``
stack). ``1/sqrt(k)`` makes PyTorch's default initialisation of that layer the package's
per-member head initialisation (``W_i ~ U(+-1/sqrt(d_block))``) and keeps the tower
input's norm that of one member's representation; under Adam a head then moves
``sqrt(k)`` times as fast as in the package (which steps ``W_i`` itself).

Two departures from TabM, both from the contract above: (1) the members are trained on the
loss of their mean logit, not on the mean of the k members' losses, and (2) a binary task
predicts ``sigmoid(mean logit)``, not the mean of the members' probabilities. A hidden
tower layer (``[model] tower``, default ``[8]``) reads all k members at once, so only
``tower = []`` keeps the heads per member; examples/census_tabm.toml sets it.
"""

from __future__ import annotations

from typing import Literal

import torch

from hydranet.models.blocks import activation as activation_module
from hydranet.models.trunks.base import TRUNKS, Trunk
from hydranet.params import PositiveInt


@TRUNKS.register("tabm")
class TabM(Trunk):
    """``rep`` is the k members' backbone outputs, ``[B, k, d_block]`` (the package's layout).

    Shared parameters: the whole backbone (its per-member adapters are shared by the tasks).
    ``arch_type = "tabm-mini"`` is the package's cheaper variant: one per-member elementwise
    scaling of the input, then plain shared layers. ``scaling_init``: the package uses
    ``"normal"`` after numeric embeddings, ``"random-signs"`` otherwise. Dropout is
    ``[model] dropout`` (the package's default: 0.1), independent per member.
    """

    param_constraints = {
        "k": PositiveInt,
        "d_block": PositiveInt,
        "n_blocks": PositiveInt,
        "arch_type": Literal["tabm", "tabm-mini"],
        "scaling_init": Literal["random-signs", "normal"],
    }

    def __init__(
        self,
        input_dim: int,
        tasks: list[str],
        *,
        activation: str = "relu",
        dropout: float = 0.0,
        k: int = 32,
        d_block: int = 512,
        n_blocks: int = 3,
        arch_type: str = "tabm",
        scaling_init: str = "random-signs",
    ):
        # imported here, not with the module: tabm imports rtdl_num_embeddings and so
        # scikit-learn, which sets KMP_* environment variables at import, and importing
        # hydranet's modules changes nothing about the process (tests/test_side_effects.py)
        import tabm

        super().__init__(input_dim, tasks)
        self.k, self.d_block = k, d_block
        self.ensemble_view = tabm.EnsembleView(k=k)  # [B, in] -> [B, k, in], a view
        common = {
            "d_in": input_dim,
            "n_blocks": n_blocks,
            "d_block": d_block,
            "dropout": dropout,
            # the package looks the activation up in torch.nn by class name
            "activation": type(activation_module(activation)).__name__,
            "k": k,
        }
        # The package's TabM model and make_tabm_backbone also encode the raw features
        # (one-hot, numeric embeddings) and pass each feature's width as
        # start_scaling_init_chunks, so that one random sign covers a whole feature. Here
        # hydranet's encoders come first and the trunk sees only the fused width, so the
        # backbone classes are built directly and every input column gets its own sign.
        if arch_type == "tabm":
            self.backbone = tabm.MLPBackboneBatchEnsemble(
                **common,
                tabm_init=True,  # random r in the first layer only; every other r, s = 1
                scaling_init=scaling_init,
                start_scaling_init_chunks=None,
            )
        else:
            self.backbone = tabm.MLPBackboneMiniEnsemble(
                **common, affine_bias=False, affine_scaling_init=scaling_init
            )
        self.out_dims = {t: k * d_block for t in self.tasks}

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.ensemble_view(x))  # [B, k, d_block]

    def task_outputs(self, x: torch.Tensor, rep: torch.Tensor) -> dict[str, torch.Tensor]:
        # one tensor for every task: the towers then run as one GEMM (as for shared_bottom)
        h = rep.flatten(1) * self.k**-0.5
        return {t: h for t in self.tasks}
