"""Building a model from a Spec, the fitted feature groups and the fitted tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hydranet.models.model import MultiTaskModel

if TYPE_CHECKING:
    from hydranet.data.preprocess import Preprocessor
    from hydranet.spec import Spec
    from hydranet.tasks import Task

__all__ = ["build_model"]


def build_model(
    spec: Spec,
    preprocessor: Preprocessor,
    tasks: list[Task],
    encoder_states: dict[str, Any] | None = None,
) -> MultiTaskModel:
    """The run's model: one encoder per feature group, the trunk, a tower per task."""
    return MultiTaskModel(
        preprocessor.info(), {t.name: t.out_dim for t in tasks}, spec.model, encoder_states
    )
