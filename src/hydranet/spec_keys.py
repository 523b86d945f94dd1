"""Spec keys by dotted name: how ``--set KEY=VALUE`` and ``[tune.space]`` address a spec."""

from __future__ import annotations

from typing import Any

from hydranet.errors import UserError


def assign(raw: dict[str, Any], key: str, value: Any, flag: str = "--set") -> None:
    """Set ``key`` in the spec's dict: dotted names, list items by index (``tasks.0.weight``
    or ``tasks[0].weight``); missing tables on the way are created, list items are not.
    Errors name the key after ``flag``."""
    parts = key.replace("[", ".").replace("]", "").split(".")
    what = f"{flag} {key}" if flag else key
    if not all(parts):
        raise UserError(f"{what}: malformed key; e.g. train.epochs or tasks[0].weight")
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            where = ".".join(parts[:depth])
            if not part.isdigit():
                raise UserError(
                    f"{what}: {where} is a list; address an item by its index, e.g. {where}.0"
                )
            index = int(part)
            if index >= len(node):
                raise UserError(
                    f"{what}: index {index} is out of range; {where} has {len(node)} item(s)"
                )
            if last:
                node[index] = value
            else:
                if not isinstance(node[index], (dict, list)):
                    node[index] = {}
                node = node[index]
        elif last:
            node[part] = value
        else:
            if not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]
