"""Prepared tensors and the batch loader.

A split is held as a few contiguous tensors in the batch format (one per feature
group, a target tuple and a mask per task). A batch is one ``index_select`` per
tensor with a block of a per-epoch permutation, so an epoch costs a handful of
kernel calls per batch and no Python per row, and the whole split can live on
the GPU when it fits.

The permutation of epoch ``e`` comes from its own generator seeded with
``seed + e``, so any epoch can be reproduced alone, and ``state_dict`` (epoch,
batches already yielded) is enough to resume mid-epoch with exactly the
remaining batches. The permutation is drawn on the CPU and moved to the data's
device once per epoch (a few milliseconds per million rows), so the order is the
same wherever the data lives: a run checkpointed on a GPU resumes on a CPU with
exactly the batches it would have had, and CPU and GPU runs see the same order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch

if TYPE_CHECKING:
    from hydranet.data.preprocess import Preprocessor
    from hydranet.tasks import Task

__all__ = ["Batch", "BatchLoader", "ResumablePosition", "TensorData", "build_tensor_data"]


Targets = tuple[torch.Tensor, ...]


def _map_targets(fn, targets: dict[str, Targets]) -> dict[str, Targets]:
    return {k: tuple(fn(t) for t in v) for k, v in targets.items()}


@dataclass
class Batch:
    """One batch in the one format of the whole path: features by group name, and targets
    and a label mask by task name.

    ``features[group]`` is the group's tensor (``[B, C]`` int64 category indices, ``[B, F]``
    float32 values, ...). ``targets[task]`` is a tuple: the label tensor first; a task may
    carry more (a teacher's soft labels as a second target). ``masks[task]`` is True where
    the row is labeled.
    """

    features: dict[str, torch.Tensor]
    targets: dict[str, Targets] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    size: int = 0

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        return Batch(
            {k: move(v) for k, v in self.features.items()},
            _map_targets(move, self.targets),
            {k: move(v) for k, v in self.masks.items()},
            self.size,
        )

    @property
    def device(self) -> torch.device:
        return next(iter(self.features.values())).device


@dataclass
class TensorData:
    """A whole split in the batch format: contiguous tensors that share their first dimension."""

    features: dict[str, torch.Tensor]
    targets: dict[str, Targets] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.features:
            raise ValueError("TensorData needs at least one feature group")
        n = len(self)
        named = [
            *self.features.items(),
            *((f"{k}[{i}]", t) for k, v in self.targets.items() for i, t in enumerate(v)),
            *self.masks.items(),
        ]
        for name, t in named:
            if t.shape[0] != n:
                raise ValueError(f"TensorData: {name!r} has {t.shape[0]} rows, the features {n}")

    def __len__(self) -> int:
        return next(iter(self.features.values())).shape[0]

    @property
    def device(self) -> torch.device:
        return next(iter(self.features.values())).device

    def _tensors(self) -> Iterator[torch.Tensor]:
        yield from self.features.values()
        for v in self.targets.values():
            yield from v
        yield from self.masks.values()

    def _map(self, fn) -> tuple[dict, dict, dict]:
        return (
            {k: fn(v) for k, v in self.features.items()},
            _map_targets(fn, self.targets),
            {k: fn(v) for k, v in self.masks.items()},
        )

    def nbytes(self) -> int:
        """The bytes of every tensor of the split."""
        return sum(t.numel() * t.element_size() for t in self._tensors())

    def to(self, device: torch.device | str) -> TensorData:
        return TensorData(*self._map(lambda t: t.to(device)))

    def pin_memory(self) -> TensorData:
        """Page-locked copies, so host-to-GPU copies of batches can overlap compute."""
        return TensorData(*self._map(lambda t: t.pin_memory()))

    def take(self, idx: torch.Tensor) -> Batch:
        """The rows at ``idx`` (a LongTensor on the data's device), gathered."""
        return Batch(*self._map(lambda t: t.index_select(0, idx)), size=int(idx.shape[0]))

    def slice(self, start: int, stop: int) -> Batch:
        """Rows ``start:stop`` as views, no copy (for evaluation in file order)."""
        stop = min(stop, len(self))
        return Batch(*self._map(lambda t: t[start:stop]), size=max(0, stop - start))

    @staticmethod
    def concat(parts: Sequence[TensorData]) -> TensorData:
        """The rows of ``parts`` one after the other."""
        first = parts[0]
        if len(parts) == 1:
            return first
        return TensorData(
            {k: torch.cat([p.features[k] for p in parts]) for k in first.features},
            {
                k: tuple(torch.cat([p.targets[k][i] for p in parts]) for i in range(len(v)))
                for k, v in first.targets.items()
            },
            {k: torch.cat([p.masks[k] for p in parts]) for k in first.masks},
        )


class ResumablePosition:
    """An epoch, a position in it and a seed: the resumable state of a batch loader.

    ``len(self)`` is the batches per epoch. ``state_dict`` taken after the ``k``-th batch
    of an epoch records ``position = k``; a loader restored from it continues at batch
    ``k``. Shared by :class:`BatchLoader` and the streaming loader.
    """

    epoch: int = 0
    position: int = 0
    seed: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its first batch."""
        self.epoch = int(epoch)
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        position = int(state["position"])
        if not 0 <= position <= len(self):
            raise ValueError(
                f"loader position {position} is outside this epoch's {len(self)} batches"
            )
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), position


class BatchLoader(ResumablePosition):
    """Batches of a TensorData in a seeded per-epoch order, resumable mid-epoch.

    Iterating yields the batches of the current epoch from the current position,
    then moves to the next epoch. ``state_dict`` taken after the ``k``-th batch
    of an epoch records ``position = k``; a loader restored from it yields the
    remaining ``len(loader) - k`` batches of that epoch, in the same order.
    """

    def __init__(
        self,
        data: TensorData,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}")
        self.data = data
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def order(self, epoch: int | None = None) -> torch.Tensor:
        """The row order of an epoch (a permutation when shuffling), on the data's device."""
        epoch = self.epoch if epoch is None else epoch
        device = self.data.device
        n = len(self.data)
        if not self.shuffle:
            return torch.arange(n, device=device)
        # a CPU generator whatever the device: CUDA's randperm gives a different order
        gen = torch.Generator()
        gen.manual_seed(self.seed + epoch)
        return torch.randperm(n, generator=gen).to(device)

    def __iter__(self) -> Iterator[Batch]:
        bs = self.batch_size
        if self.shuffle:
            yield from map(self.data.take, self.indices())
            return
        for b in range(self.position, len(self)):
            self.position = b + 1  # before the yield, as in indices()
            yield self.data.slice(b * bs, (b + 1) * bs)
        self.set_epoch(self.epoch + 1)

    def indices(self) -> Iterator[torch.Tensor]:
        """The row indices of each remaining batch of the epoch (on the data's device), not gathered."""
        bs = self.batch_size
        order = self.order()
        for b in range(self.position, len(self)):
            # counted before the yield: a checkpoint taken while the consumer
            # holds batch b must resume at b + 1
            self.position = b + 1
            yield order[b * bs : (b + 1) * bs]
        self.set_epoch(self.epoch + 1)


def build_tensor_data(
    table: pa.Table,
    preprocessor: Preprocessor,
    tasks: Sequence[Task],
    encoded: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> TensorData:
    """Features through the fitted preprocessor, and each task's targets and label mask
    (from ``encoded``, ``{task: task.encode(table)}``, when the caller has it already)."""
    features = preprocessor.transform(table)
    targets: dict[str, Targets] = {}
    masks: dict[str, torch.Tensor] = {}
    for task in tasks:
        values, mask = encoded[task.name] if encoded is not None else task.encode(table)
        targets[task.name] = (task.targets(values).contiguous(),)
        masks[task.name] = torch.as_tensor(mask, dtype=torch.bool).contiguous()
    return TensorData(features, targets, masks)
