"""The training device: ``train.device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) to a
``torch.device``, and what ``auto`` means on this machine."""

from __future__ import annotations

import os

import torch

from hydranet.errors import SpecError

__all__ = ["AUTO_DEVICE_ENV", "auto_device", "device_type", "select_device"]

AUTO_DEVICE_ENV = "HYDRANET_DEVICE"


def auto_device() -> str | None:
    """``$HYDRANET_DEVICE``, which ``train.device = "auto"`` follows when it is set: ``cpu``
    keeps a GPU machine's runs on the CPU without editing their specs (the test suite sets it,
    so that its CPU tests mean the same on every machine)."""
    forced = os.environ.get(AUTO_DEVICE_ENV, "").strip()
    return forced if forced and forced != "auto" else None


def select_device(name: str) -> torch.device:
    key = "train.device"
    if name == "auto":
        forced = auto_device()
        if forced is None:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        name, key = forced, f"train.device = 'auto' with ${AUTO_DEVICE_ENV}"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise SpecError(
            [(key, f"unknown device {name!r}; allowed: auto, cpu, cuda, cuda:N")]
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(
            [
                (
                    key,
                    f"{name!r} requested but CUDA is not available on this machine; use 'auto' or 'cpu'",
                )
            ]
        )
    return dev


def device_type(name: str) -> str:
    if name == "auto":
        name = auto_device() or ("cuda" if torch.cuda.is_available() else "cpu")
    return "cuda" if name.startswith("cuda") else "cpu"
