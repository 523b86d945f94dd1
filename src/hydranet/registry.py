"""Name → class registries for every extension point.

An entry is registered once under the name a Spec uses (``architecture = "mmoe"``).
A name of the form ``"package.module:Attr"`` is resolved by import and registered
under that name on first use, so a user's own class goes through the same path.
An unknown name lists the valid ones; registering a name twice raises.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from hydranet.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = obj

    def get(self, name: str) -> T:
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            obj = _import_path(name, self.kind)
            self._entries[name] = obj
            return obj
        valid = ", ".join(sorted(self._entries))
        raise UserError(
            f"unknown {self.kind} {name!r}; valid: {valid} (or a 'package.module:Name' import path)"
        )

    def names(self) -> list[str]:
        """Built-in names (import-path entries excluded)."""
        return sorted(n for n in self._entries if ":" not in n)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def _import_path(path: str, kind: str):
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"cannot import {kind} {path!r}: {e}") from None
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise UserError(
            f"cannot import {kind} {path!r}: module {module_name!r} has no {attr!r}"
        ) from None
    return obj
