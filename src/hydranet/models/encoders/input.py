"""The model's input side: one encoder per feature group, then the fusion."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from hydranet.errors import UserError
from hydranet.features import FEATURES
from hydranet.models.encoders.base import ENCODERS, FUSIONS, Encoder

__all__ = ["InputEncoder", "encoder_choice", "fit_encoder_states", "groups_to_fit"]


def encoder_choice(model_spec: Any, group: str, kind: str) -> tuple[str, dict[str, Any]]:
    """The encoder name and params for a group: ``model.encoders.<group>`` or the kind's default."""
    chosen = getattr(model_spec, "encoders", {}).get(group)
    if chosen is not None:
        return chosen.name, dict(chosen.params)
    return FEATURES.get(kind).default_encoder, {}


def _encoder_class(model_spec: Any, group: str, kind: str) -> tuple[type[Encoder], dict[str, Any]]:
    name, params = encoder_choice(model_spec, group, kind)
    cls = ENCODERS.get(name)
    if cls.kinds and kind not in cls.kinds:
        raise UserError(
            f"model.encoders.{group}: encoder {name!r} takes {' or '.join(cls.kinds)} groups; group {group!r} is {kind}"
        )
    return cls, params


def groups_to_fit(model_spec: Any, groups: dict[str, dict[str, Any]]) -> list[str]:
    """The groups whose encoder learns from the training data (``needs_fit``)."""
    return [
        name
        for name, info in groups.items()
        if _encoder_class(model_spec, name, info["kind"])[0].needs_fit
    ]


def fit_encoder_states(
    model_spec: Any,
    groups: dict[str, dict[str, Any]],
    features: dict[str, torch.Tensor],
    target: tuple[torch.Tensor, bool] | None = None,
) -> dict[str, Any]:
    """What the encoders that learn from data (``needs_fit``) learn from the training
    split's ``features``; JSON-able, saved in the run as ``encoders.json``."""
    states: dict[str, Any] = {}
    for name in groups_to_fit(model_spec, groups):
        info = groups[name]
        cls, params = _encoder_class(model_spec, name, info["kind"])
        states[name] = cls.fit_state(info, features[name], cls.with_defaults(params), target)
    return states


class InputEncoder(nn.Module):
    """``{group: tensor} → [B, out_dim]``: each group's encoder, then the fusion, in group order.

    With a per-task fusion (``per_task``: gated) the output is ``[T, B, out_dim]``, each
    task's own trunk input in ``tasks`` order.
    """

    def __init__(
        self,
        groups: dict[str, dict[str, Any]],
        model_spec: Any,
        states: dict[str, Any] | None = None,
        tasks: Sequence[str] = (),
    ):
        super().__init__()
        if not groups:
            raise UserError("the model needs at least one feature group")
        states = states or {}
        self.names = list(groups)
        self.encoders = nn.ModuleDict()
        for name, info in groups.items():
            cls, params = _encoder_class(model_spec, name, info["kind"])
            # a pretrained encoder without its state (a run saved before it had one) reads
            # what it needs from its weights file instead
            if cls.needs_fit and not cls.pretrained and name not in states:
                raise UserError(
                    f"the encoder of feature group {name!r} learns from the training data, and the run has no state for it (encoders.json)"
                )
            self.encoders[name] = cls(info, model_spec, state=states.get(name), **params)
        fusion = FUSIONS.get(getattr(model_spec, "fusion", "concat"))
        fusion_params = getattr(model_spec, "fusion_params", {})
        dims = {n: self.encoders[n].out_dim for n in self.names}
        self.fusion = fusion(dims, list(tasks), **fusion_params)
        self.out_dim = int(self.fusion.out_dim)
        self.per_task = bool(self.fusion.per_task)
        # groups whose features arrive already encoded (frozen pretrained encoders' cached
        # embeddings, set by hydranet.train.transfer for training only): their encoder is skipped
        self.pre_encoded: set[str] = set()

    def reset_parameters(self) -> None:
        for enc in self.encoders.values():
            if hasattr(enc, "reset_parameters"):
                enc.reset_parameters()

    def parts(self, features: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Each group's encoded vector ``[B, d_g]``, in group order (the fusion's input)."""
        return [
            self.encoders[n].head(features[n])
            if n in self.pre_encoded
            else self.encoders[n](features[n])
            for n in self.names
        ]

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.fusion(self.parts(features))

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter but the fusion's per-task ones (the gates of a gated fusion)."""
        task = {id(p) for p in self.fusion.task_parameters()}
        return (p for p in self.parameters() if id(p) not in task)
