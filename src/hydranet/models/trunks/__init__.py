"""Trunks (multi-task architectures), registered by the name a Spec uses."""

from hydranet.models.trunks.base import TRUNKS, Trunk

__all__ = ["TRUNKS", "Trunk"]
