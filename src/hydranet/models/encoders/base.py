"""The encoder interface, the fusion step and their registries.

An encoder turns one feature group's tensor (``Batch.features[group]``) into a
``[B, out_dim]`` vector; the fusion step turns the groups' vectors into the trunk's
input (:class:`Fusion`, registered in ``FUSIONS``). Every encoder:

* is built as ``Encoder(group, model_spec, state=..., **params)``: ``group`` is the
  fitted group's :meth:`~hydranet.features.FeatureGroup.info` plus its ``kind`` (a
  width, vocabulary sizes), ``model_spec`` the ``[model]`` table (for defaults such
  as ``embedding_dim``), ``params`` the user's ``[model.encoders.<group>] params``
  (checked against the signature, so a typo is an error with its key path);
* sets ``out_dim``;
* declares ``kinds`` (the feature kinds it accepts; empty: any);
* may learn something from the training data before it is built (quantile bins):
  then ``needs_fit = True`` and ``fit_state(group, x, params, target)`` returns a JSON-able
  state that is saved in the run (``encoders.json``) and passed back as ``state``;
* may start from pretrained weights: then ``pretrained = True``, its ``path_params`` name the
  parameters that are local files (resolved against the spec file's directory), and it takes
  ``weights``, ``freeze``, ``unfreeze_after``, ``unfreeze_blocks`` and ``lr_scale``, which
  :mod:`hydranet.train.transfer` reads; :meth:`Encoder.blocks` lists its parts, input side
  first, for partial unfreezing. Inside :func:`weights_from_checkpoint` (how
  :meth:`hydranet.Run.load` builds a model) it builds its architecture only, from its saved
  ``state`` if it needs one, and never reads its weights file: a run's checkpoint holds every
  weight, so a copied run loads where that file is not.

A new encoder is one file with one such class and ``@ENCODERS.register("name")``;
``tests/test_encoder_contract.py`` checks every registered one.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar

import torch
from torch import nn

from hydranet.params import DeclaredParams, NonNegativeInt, PositiveFloat, PositiveInt, Probability
from hydranet.registry import Registry

__all__ = [
    "ENCODERS",
    "FUSIONS",
    "Concat",
    "Encoder",
    "Fusion",
    "building_from_checkpoint",
    "weights_from_checkpoint",
]

_FROM_CHECKPOINT: ContextVar[bool] = ContextVar("hydranet_from_checkpoint", default=False)


@contextmanager
def weights_from_checkpoint() -> Iterator[None]:
    """Encoders built inside take every weight from a checkpoint loaded afterwards: a
    pretrained one builds its architecture and leaves its ``weights`` file unread."""
    token = _FROM_CHECKPOINT.set(True)
    try:
        yield
    finally:
        _FROM_CHECKPOINT.reset(token)


def building_from_checkpoint() -> bool:
    """Whether the encoder being built gets its weights from a checkpoint (see above)."""
    return _FROM_CHECKPOINT.get()


TRANSFER_CONSTRAINTS = {
    "freeze": bool,
    "unfreeze_after": NonNegativeInt | None,
    "unfreeze_blocks": PositiveInt,
    "lr_scale": PositiveFloat,
}
"""The ``param_constraints`` of the transfer-learning params every pretrained encoder takes."""


class Encoder(nn.Module, DeclaredParams):
    kinds: ClassVar[tuple[str, ...]] = ()
    needs_fit: ClassVar[bool] = False
    pretrained: ClassVar[bool] = False
    path_params: ClassVar[tuple[str, ...]] = ()
    out_dim: int

    def __init__(self, group: dict[str, Any], model_spec: Any = None, state: Any = None):
        super().__init__()
        self.group = dict(group)

    def set_transfer(
        self, freeze: bool, unfreeze_after: int | None, unfreeze_blocks: int, lr_scale: float
    ) -> None:
        """Keep a pretrained encoder's transfer-learning params, as :mod:`hydranet.train.transfer`
        reads them."""
        self.freeze = bool(freeze)
        self.unfreeze_after = None if unfreeze_after is None else int(unfreeze_after)
        self.unfreeze_blocks, self.lr_scale = int(unfreeze_blocks), float(lr_scale)

    def frozen_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The part of ``forward`` a frozen pretrained encoder never changes, which training
        computes once per split and caches (default: all of it); ``forward(x) ==
        head(frozen_forward(x))``."""
        return self(x)

    def head(self, e: torch.Tensor) -> torch.Tensor:
        """The rest of ``forward`` after :meth:`frozen_forward` (default: nothing)."""
        return e

    def head_modules(self) -> list[nn.Module]:
        """The modules of :meth:`head`: they train even while the encoder is frozen (a
        projection after a frozen backbone)."""
        return []

    def blocks(self) -> list[nn.Module]:
        """The encoder's parts, input side first: the last ``unfreeze_blocks`` of them train
        from epoch ``unfreeze_after`` (one block, the whole encoder, unless overridden)."""
        return [self]

    def train(self, mode: bool = True) -> Encoder:
        super().train(mode)
        if mode and self.pretrained:
            # frozen pretrained parts compute what they were trained to compute: dropout off,
            # BatchNorm on its stored statistics (the cached embeddings are made in eval mode)
            for block in self.blocks():
                if not any(p.requires_grad for p in block.parameters()):
                    for m in block.modules():
                        m.training = False
        return self

    @classmethod
    def with_defaults(cls, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` over the constructor's defaults: what the encoder is built with."""
        full = {
            n: p.default
            for n, p in inspect.signature(cls).parameters.items()
            if p.default is not p.empty and n not in ("model_spec", "state")
        }
        return {**full, **params}

    @classmethod
    def fit_state(
        cls,
        group: dict[str, Any],
        x: torch.Tensor,
        params: dict[str, Any],
        target: tuple[torch.Tensor, bool] | None,
    ) -> Any:
        """The state learned from the training split's tensor ``x`` (and, for target-aware
        encoders, ``target = (labels, is_regression)``) before the encoder is built;
        ``params`` are the encoder's parameters over its constructor's defaults."""
        return None

    @classmethod
    def example_group(cls) -> tuple[dict[str, Any], torch.Tensor]:
        """A group description and a tensor of rows for the contract tests."""
        raise NotImplementedError


ENCODERS: Registry[type[Encoder]] = Registry("encoder")


class Fusion(nn.Module, DeclaredParams):
    """The groups' vectors → the trunk input: one for all tasks, or one per task.

    Built as ``Fusion(dims, tasks, **params)``: ``dims`` maps each group (in group order) to
    its encoder's width, ``tasks`` are the model's tasks, ``params`` the Spec's
    ``model.fusion_params`` (checked against the signature and ``param_constraints``). Sets
    ``out_dim`` (the trunk's input width). ``forward(parts)`` returns ``[B, out_dim]``, or,
    with ``per_task = True``, ``[T, B, out_dim]``: task ``t``'s own trunk input, in task order
    (the model then runs the trunk on the ``T*B`` rows at once and gives each task the output
    of its own rows). ``task_parameters()`` are the parameters only one task's input depends
    on (per-task gates): the model counts them as task parameters, not shared ones.
    """

    out_dim: int
    per_task: ClassVar[bool] = False

    def task_parameters(self) -> Iterator[nn.Parameter]:
        return iter(())


class Concat(Fusion):
    """The groups' vectors side by side, in group order: ``[B, sum(dims)]``; no per-task vector.

    Two options for groups of very different kinds (a frozen image backbone's 1280 features
    next to a sentence embedding and a few numbers), both off by default:

    * ``norm = true``: each group's vector is layer-normalised (with its own scale and shift)
      before the concatenation, so no group's scale decides how fast the trunk learns it;
    * ``modality_dropout = p``: in training, each group of each row is zeroed with
      probability ``p`` and the kept ones scaled by ``1/(1-p)`` (ModDrop, Neverova et al.,
      2015): the trunk cannot lean on one modality alone, which matters when one group fits
      the training rows fast and the others would be ignored. Evaluation keeps every group.
    """

    param_constraints = {"norm": bool, "modality_dropout": Probability}

    def __init__(
        self,
        dims: dict[str, int],
        tasks: Sequence[str] = (),
        *,
        norm: bool = False,
        modality_dropout: float = 0.0,
    ):
        super().__init__()
        widths = [int(d) for d in dims.values()]
        self.out_dim = sum(widths)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in widths) if norm else None
        self.modality_dropout = float(modality_dropout)

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        if self.norms is not None:
            parts = [n(v) for n, v in zip(self.norms, parts, strict=True)]
        if self.training and self.modality_dropout > 0.0 and len(parts) > 1:
            keep = 1.0 - self.modality_dropout
            # one draw per row and group: [B, G], expanded over each group's width
            mask = torch.rand(parts[0].shape[0], len(parts), device=parts[0].device) < keep
            scale = mask.to(parts[0].dtype) / keep
            parts = [v * scale[:, g : g + 1] for g, v in enumerate(parts)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


FUSIONS: Registry[type[Fusion]] = Registry("fusion")
FUSIONS.add("concat", Concat)
