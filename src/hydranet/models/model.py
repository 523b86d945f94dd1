"""MultiTaskModel: input encoders → trunk (the MTL architecture) → one tower per task.

The input side is one encoder per feature group and a fusion step
(:class:`~hydranet.models.encoders.InputEncoder`); the model takes the batch format's
features, ``{group name: tensor}``.

The trunk is looked up by ``ModelSpec.architecture`` in ``TRUNKS`` (a built-in
name or a ``"package.module:Class"`` import path) and built with the Spec's
``[model] params``. Towers are ``MLP(spec.tower)`` followed by a ``Linear`` to
the task's output width; when every trunk output has the same width (all
built-in trunks) the towers run batched, one matmul per layer for all tasks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from hydranet.errors import UserError
from hydranet.models.blocks import MLP, BatchedLinear, BatchedMLP
from hydranet.models.encoders import InputEncoder
from hydranet.models.trunks import TRUNKS
from hydranet.models.trunks.base import Trunk
from hydranet.spec import ModelSpec


class Towers(nn.Module):
    """Per-task ``MLP(hidden) → Linear(out_dim)``, batched across tasks where shapes allow.

    Same maths as one ``nn.Sequential(MLP, nn.Linear)`` per task in every case;
    only the execution differs:

    * equal trunk widths: hidden layers are one :class:`BatchedMLP`; the final
      layer is one :class:`BatchedLinear` when all heads have the same width, else
      one ``nn.Linear`` per task (ragged widths cannot share a matmul without
      padding, and this is a single small layer);
    * unequal trunk widths (some user trunks): one ``nn.Sequential`` per task.
    """

    def __init__(
        self,
        in_dims: dict[str, int],
        heads: dict[str, int],
        hidden: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.tasks = list(heads)
        widths = {in_dims[t] for t in self.tasks}
        self.batched = len(widths) == 1
        self.hidden: BatchedMLP | None = None
        self.final: BatchedLinear | None = None
        self.finals: nn.ModuleDict | None = None
        self.per_task: nn.ModuleDict | None = None
        if self.batched:
            self.hidden = BatchedMLP(len(self.tasks), widths.pop(), hidden, activation, dropout)
            outs = {heads[t] for t in self.tasks}
            if len(outs) == 1:
                self.final = BatchedLinear(len(self.tasks), self.hidden.out_dim, outs.pop())
            else:
                self.finals = nn.ModuleDict(
                    {t: nn.Linear(self.hidden.out_dim, heads[t]) for t in self.tasks}
                )
        else:
            self.per_task = nn.ModuleDict()
            for t in self.tasks:
                mlp = MLP(in_dims[t], hidden, activation, dropout)
                self.per_task[t] = nn.Sequential(mlp, nn.Linear(mlp.out_dim, heads[t]))

    def output_layers(self) -> list[nn.Module]:
        """The last linear layer of every task's tower (one batched layer where batched)."""
        if self.per_task is not None:
            return [seq[-1] for seq in self.per_task.values()]
        if self.final is not None:
            return [self.final]
        return list(self.finals.values())

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.per_task is not None:
            return {t: self.per_task[t](features[t]) for t in self.tasks}
        first = features[self.tasks[0]]
        if all(features[t] is first for t in self.tasks):
            h = first  # one tensor for all tasks (shared-bottom): one GEMM, no stacking
        else:
            h = torch.stack([features[t] for t in self.tasks])  # [T, B, H]
        return self.forward_stacked(h)

    def forward_stacked(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """The towers on every task's input at once: ``h`` is ``[T, B, H]`` in task order
        (or ``[B, H]``, the same input for every task); needs ``batched``."""
        h = self.hidden(h)  # [T, B, H']
        if self.final is not None:
            y = self.final(h)  # [T, B, out]
            return dict(zip(self.tasks, y.unbind(0), strict=True))
        return {t: self.finals[t](hi) for t, hi in zip(self.tasks, h.unbind(0), strict=True)}


class MultiTaskModel(nn.Module):
    """Encoders → trunk → towers; ``forward({group: tensor}) -> {task: [B, out_dim]}``.

    ``groups`` describes each fitted feature group (``Preprocessor.info()``: its kind and
    what its encoder needs), ``heads`` maps each task to its output width (1 for binary
    and regression, the number of classes or labels otherwise), in the order tasks are
    reported, and ``encoder_states`` holds what data-fitted encoders learned (bins).
    """

    def __init__(
        self,
        groups: dict[str, dict[str, Any]],
        heads: dict[str, int],
        spec: ModelSpec,
        encoder_states: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.tasks = list(heads)
        self.heads = dict(heads)
        self.encoder = InputEncoder(groups, spec, encoder_states, self.tasks)
        trunk_cls = TRUNKS.get(spec.architecture)
        self.trunk = trunk_cls(
            self.encoder.out_dim,
            self.tasks,
            activation=spec.activation,
            dropout=spec.dropout,
            **spec.params,
        )
        self.towers = Towers(
            self.trunk.out_dims, self.heads, spec.tower, spec.activation, spec.dropout
        )
        self._initialise(spec)

    @torch.no_grad()
    def _initialise(self, spec: ModelSpec) -> None:
        """Small embeddings, small output layers: start where the gates cannot collapse yet.

        With nn.Embedding's N(0, 1) rows and full-size output layers, MMoE's
        softmax gates see large inputs and strong gradients from the first step
        and settle on one or two experts within the first epoch, before the
        experts have learned anything to choose between; on some seeds a task
        stays on a poor mixture (census, 5 epochs, seeds 0-4: marital test AUC
        0.9827 on seed 2 against 0.9938-0.9940 on the others). Embeddings drawn
        from N(0, 0.05) and output layers scaled by 0.1 (as ViT and BiT start
        their classifier heads at or near zero) keep every prediction near its
        bias at first, so towers, experts and gates grow together. Same
        protocol (``benchmarks/peers_census.py`` sizes, Adam 1e-3), seeds 0-4:
        income test AUC 0.9376 +- 0.0007 -> 0.9393 +- 0.0006, marital 0.9916 +-
        0.0044 -> 0.9941 +- 0.0000. Output scale 0.01 and 0 did as well on
        income but left one seed's marital at 0.9919. Scaling rather than
        zeroing keeps the first step's gradients non-zero everywhere, which
        gradient balancers divide by.

        The 0.1 is the default of the gated trunks only (``Trunk.head_init_scale``;
        ``ModelSpec.head_init_scale`` overrides it). Trunks without gates have
        nothing to collapse and only learn later from a small head: on the MMoE
        paper's synthetic regression (``benchmarks/synthetic_correlation.py``
        sizes, p = 0.9, seeds 0-3, 40 epochs) shared-bottom's final training
        loss was 0.127 with 0.1 against 0.028 with 1.0, while MMoE's was 0.031
        against 0.026 (test MSE 0.073 against 0.080). Over that study's 8 seeds and
        three correlations MMoE's test MSE is 3-9 % higher with 0.1 than with 1.0
        (0.0651/0.0642/0.0628 against 0.0631/0.0613/0.0575 at p = 0.5/0.9/1.0): a
        small cost on that regression problem, taken for the census gates. With 10-way
        softmax heads it is a large cost: MMoE on MultiFashion (benchmarks/multifashion.py,
        3 seeds) reached 56.8 / 55.2% left / right accuracy with 0.1 against 66.3 / 63.9%
        with ``head_init_scale = 1.0`` (shared-bottom: 65.8 / 65.9%).
        """
        self.encoder.reset_parameters()  # embeddings from N(0, embedding_init_std)
        scale = spec.head_init_scale
        if scale is None:
            scale = self.trunk.head_init_scale
        for layer in self.towers.output_layers():
            layer.weight.mul_(scale)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.forward_with_rep(features)[0]

    def forward_with_rep(
        self, features: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Outputs plus the trunk's shared representation ``rep = trunk.shared(x)``.

        ``rep`` is a live node of the graph: every output is computed from it, so
        ``torch.autograd.grad(loss_t, rep, retain_graph=True)`` gives task ``t``'s
        gradient w.r.t. it, and ``rep.backward(g)`` sends a combined gradient on
        to everything computed before it. The shared parameters
        (:meth:`shared_parameters`) are all computed before ``rep``, so a
        representation-gradient balancer does::

            outputs, rep = model.forward_with_rep(features)
            losses = [loss_t(outputs[t], y_t) for t in tasks]
            grads = [torch.autograd.grad(l, rep, retain_graph=True)[0] for l in losses]
            torch.autograd.backward(sum(losses), inputs=list(model.task_parameters()),
                                    retain_graph=True)
            rep.backward(combine(grads), inputs=list(model.shared_parameters()))

        (``inputs=`` keeps each parameter to one of the two passes.) This is exact
        except where a task-specific part reads the trunk input ``x`` directly: the
        MMoE/CGC gates (and single-level PLE's) read the encoder output, and that
        path's share of the encoder gradient is left out under rep gradients, as in
        LibMTL. Everything downstream of ``rep`` gets the ordinary sum.

        With a per-task fusion (gated) the encoder gives ``[T, B, D]``, one trunk input per
        task: the trunk runs once on the ``T*B`` rows (``rep`` covers them all) and each
        task keeps its output on its own ``B`` rows.
        """
        x = self.encoder(features)
        per_task = self.encoder.per_task
        if per_task:  # [T, B, D]: task t's inputs become rows [t*B, (t+1)*B)
            n_tasks, b = x.shape[0], x.shape[1]
            x = x.reshape(n_tasks * b, x.shape[2])
        rep = self.trunk.shared(x)
        if not rep.requires_grad and torch.is_grad_enabled():
            # Nothing shared before rep (e.g. numeric-only input into single_task):
            # make it a leaf so rep gradients are still defined (they flow nowhere).
            rep = rep.detach().requires_grad_()
        # a subclass that overrides task_outputs keeps its own (stacked_task_outputs is then
        # only what it inherited)
        own = type(self.trunk).task_outputs is not Trunk.task_outputs
        stacked = None if own else self.trunk.stacked_task_outputs(x, rep)
        if stacked is None:
            outs = self.trunk.task_outputs(x, rep)
            if per_task:
                outs = {t: outs[t][i * b : (i + 1) * b] for i, t in enumerate(self.tasks)}
            return self.towers(outs), rep
        if per_task:
            # [T, T*B, H] → each task's output on its own rows: the diagonal blocks, one gather
            blocks = stacked.reshape(n_tasks, n_tasks, b, stacked.shape[-1])
            diagonal = torch.arange(n_tasks, device=stacked.device)
            stacked = blocks[diagonal, diagonal]
        return self._towers_stacked(stacked), rep

    def _towers_stacked(self, stacked: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.towers.batched:
            return self.towers.forward_stacked(stacked)
        return self.towers(dict(zip(self.tasks, stacked.unbind(0), strict=True)))

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Encoder parameters and the trunk's shared ones: all computed before ``rep``."""
        yield from self.encoder.shared_parameters()
        seen = {id(p) for p in self.encoder.parameters()}
        for p in self.trunk.shared_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                yield p

    def task_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter not in :meth:`shared_parameters` (gates, task columns, towers)."""
        shared = {id(p) for p in self.shared_parameters()}
        return (p for p in self.parameters() if id(p) not in shared)

    @torch.no_grad()
    def modality_weights(self, features: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
        """``{task: {group: mean gate weight over the rows}}`` of a gated fusion, in eval mode."""
        fusion = self.encoder.fusion
        if not hasattr(fusion, "gate_weights"):
            raise UserError(
                f"model.fusion: {type(fusion).__name__} has no per-task gates; modality weights need fusion = 'gated'"
            )
        was_training = self.training
        self.eval()
        try:
            mean = fusion.gate_weights(self.encoder.parts(features)).mean(dim=1)  # [T, G]
        finally:
            self.train(was_training)
        return {
            t: dict(zip(self.encoder.names, map(float, row), strict=True))
            for t, row in zip(self.tasks, mean, strict=True)
        }

    def parameter_summary(self) -> dict[str, int]:
        """Number of parameters per part: ``encoder``, ``trunk``, ``towers``."""
        return {
            name: sum(p.numel() for p in part.parameters())
            for name, part in (
                ("encoder", self.encoder),
                ("trunk", self.trunk),
                ("towers", self.towers),
            )
        }
