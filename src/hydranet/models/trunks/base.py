"""The trunk interface and its registry.

A trunk is the multi-task architecture between the fused input features and
the per-task towers. Every trunk:

* is built as ``Trunk(input_dim, tasks, activation=..., dropout=..., **params)``
  where ``params`` come from ``[model] params`` in the Spec (names checked against the
  constructor signature, values against ``param_constraints``, so a typo or a bad value
  is an error with its key path when the Spec is loaded);
* exposes ``out_dims: dict[str, int]`` (the width of each task's output, which
  feeds that task's tower);
* splits its forward in two so gradient balancers can use the gradient with
  respect to a shared representation (DESIGN.md principle 4):
  ``shared(x) -> rep`` and ``task_outputs(x, rep) -> dict[task, Tensor]``, with
  ``forward(x) == task_outputs(x, shared(x))``. Trunks without a natural shared
  representation return ``x`` itself from ``shared``. A trunk whose task outputs
  are one ``[T, B, H]`` tensor (all the built-in ones but OMoE) implements
  ``stacked_task_outputs(x, rep)`` instead, and ``task_outputs`` splits it; the
  towers then take the stacked tensor as it is (see ``MultiTaskModel``).
* says which of its parameters are shared between tasks
  (``shared_parameters()``); gradient aggregation combines task gradients on those.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from hydranet.params import DeclaredParams
from hydranet.registry import Registry


class Trunk(nn.Module, DeclaredParams):
    """A multi-task architecture; its ``[model] params`` are declared as data (:class:`DeclaredParams`)."""

    out_dims: dict[str, int]
    head_init_scale: float = 1.0
    """What ``ModelSpec.head_init_scale = None`` means for this trunk: the towers' output layers
    start at PyTorch's initialisation times this. Trunks that mix experts through softmax gates
    set 0.1 (see ``MultiTaskModel._initialise``); a user trunk may set its own."""

    def __init__(self, input_dim: int, tasks: list[str]):
        super().__init__()
        self.input_dim = input_dim
        self.tasks = list(tasks)

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def stacked_task_outputs(self, x: torch.Tensor, rep: torch.Tensor) -> torch.Tensor | None:
        """The task outputs as one ``[T, B, H]`` tensor in task order, or None (the default).

        With it the model hands the tensor to the batched towers as it is. Splitting it into
        T tensors and stacking them again costs a copy forward, and backward each split's
        gradient is a full-size tensor (zero but for its slice) that autograd adds up: under
        a gradient balancer's K-batched backward that was half the step (MMoE, K = 8).
        """
        return None

    def task_outputs(self, x: torch.Tensor, rep: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.stacked_task_outputs(x, rep)
        if h is None:
            raise NotImplementedError(
                f"{type(self).__name__} implements neither task_outputs nor stacked_task_outputs"
            )
        return dict(zip(self.tasks, h.unbind(0), strict=True))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.task_outputs(x, self.shared(x))

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters every task's loss depends on (default: all of them)."""
        return self.parameters()


TRUNKS: Registry[type[Trunk]] = Registry("architecture")
