"""The whole training step as one CUDA graph.

On a GPU a small multi-task model (census MMoE: a few hundred thousand
parameters) spends most of a step launching kernels: gather, encoder, experts,
gates, towers, losses, the backward of all of them, clipping and the
optimizer, some hundreds of launches of a few microseconds each, each from
Python. A CUDA graph records them once and replays them with one launch.

What the graph holds: the gather of a full batch from the device-resident
training split (the row indices are copied into a static index buffer before
each replay), the forward pass, the masked losses, ``zero_grad`` + the
balancer's backward, gradient clipping and the optimizer step (Adam/AdamW
with ``capturable=True`` and the learning rate as a device tensor, which the
scheduler updates in place between replays). Dropout draws from the CUDA
generator, which graphs replay with fresh offsets.

Outside it, per step: the index copy, the replay, the scheduler and the
running loss sums (on device; the host reads them only for the progress bar,
checks and logs). The last, shorter batch of an epoch runs eagerly.

When: ``train.cuda_graph = "auto"`` (default) uses it when every condition in
:func:`blockers` holds; ``"on"`` makes a blocker an error; ``"off"`` never.
The first ``WARMUP`` full steps run eagerly on a side stream (as capture
requires: the autograd and optimizer state exist before it), then the step is
captured and replayed from there on. Everything here except the capture and
replay runs on CPU as well, and is tested there (``tests/test_train_graph.py``
checks the static-index path against the plain one step by step).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from hydranet.balance import Balancer
    from hydranet.data.loader import Batch, TensorData
    from hydranet.spec import Spec, TrainSpec
    from hydranet.train.distributed import Distributed


class StepOwner(Protocol):
    """What the graphed step reads of the trainer that owns it (the Trainer; a Protocol so
    that this module, which the trainer builds on, does not import it back)."""

    spec: Spec
    cfg: TrainSpec
    device: torch.device
    dist: Distributed
    train_data: TensorData | None
    all_labeled: bool
    balancer: Balancer
    diagnostics: Any

    def compute_step(self, batch: Batch) -> torch.Tensor: ...


WARMUP = 3


def blockers(trainer: StepOwner) -> list[str]:
    """Why the whole step cannot be one CUDA graph on this run; empty when it can."""
    cfg, spec = trainer.cfg, trainer.spec
    reasons = []
    if trainer.device.type != "cuda":
        reasons.append(f"the device is {trainer.device.type}, not cuda")
    if trainer.dist.enabled:
        reasons.append("distributed training (DDP) is on")
    if trainer.train_data is None:
        reasons.append("the training split is streamed, not held in device memory")
    elif trainer.train_data.device.type != trainer.device.type:
        reasons.append("the training split stays in host memory (too large for the GPU)")
    elif not trainer.all_labeled:
        reasons.append(
            "some training rows lack a label for some task (the per-batch task presence is data-dependent)"
        )
    if not trainer.balancer.graph_safe:
        reasons.append(
            f"balance.method {spec.balance.method!r} is not graph-safe (it reads values on the host or changes its weights between steps; see Balancer.graph_safe)"
        )
    if trainer.diagnostics is not None:
        reasons.append("--diagnose reads gradients on the host each step")
    if cfg.precision == "fp16":
        reasons.append("fp16 loss scaling skips steps on the host (bf16 and fp32 can be captured)")
    if cfg.compile:
        reasons.append("train.compile is on (its 'reduce-overhead' mode uses CUDA graphs itself)")
    if cfg.optimizer == "sgd":
        reasons.append(
            "SGD has no capturable implementation with a changing learning rate (adam and adamw do)"
        )
    return reasons


class GraphedStep:
    """Runs full training steps from row indices: eager warm-up, then capture, then replays."""

    def __init__(self, trainer: StepOwner, batch_size: int, capture: bool = True):
        self.trainer = trainer
        self.batch_size = batch_size
        self.capture = capture  # False: the same static-index path, eagerly (CPU, tests)
        self.index = torch.zeros(batch_size, dtype=torch.long, device=trainer.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.losses: torch.Tensor | None = None  # the graph's output: stacked task losses
        self.warmed = 0

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        """One step on the rows ``idx``; the stacked (detached) task losses."""
        t = self.trainer
        if idx.shape[0] != self.batch_size:  # the epoch's last, shorter batch
            return t.compute_step(t.train_data.take(idx))
        self.index.copy_(idx, non_blocking=True)
        if not self.capture:
            return t.compute_step(t.train_data.take(self.index))
        if self.graph is None:
            if self.warmed < WARMUP:
                self.warmed += 1
                side = torch.cuda.Stream(t.device)
                side.wait_stream(torch.cuda.current_stream(t.device))
                with torch.cuda.stream(side):
                    losses = t.compute_step(t.train_data.take(self.index))
                torch.cuda.current_stream(t.device).wait_stream(side)
                return losses
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.losses = t.compute_step(t.train_data.take(self.index))
            self.graph = graph  # capture records without running: replay this step too
        self.graph.replay()
        return self.losses
