"""Nested training state (model, optimizer, scheduler, RNG, loader, balancer) in one safetensors file.

Tensors go into the safetensors body under their key path; everything else
(ints, floats, strings, the nesting itself, int dict keys of optimizer states)
goes into a JSON skeleton stored in the file's metadata. Reading it back never
unpickles anything. Writes go to a temporary name and are renamed into place,
so a kill at any moment leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from hydranet.errors import UserError

_SKELETON_KEY = "hydranet.state"


def _flatten(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = path or "_"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__t": key}
    if isinstance(obj, dict):
        return {"__d": [[k, _flatten(v, f"{path}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple": [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {path!r} in a checkpoint")


def _unflatten(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, dict):
        if "__t" in node:
            return tensors[node["__t"]]
        if "__d" in node:
            return {k: _unflatten(v, tensors) for k, v in node["__d"]}
        if "__tuple" in node:
            return tuple(_unflatten(v, tensors) for v in node["__tuple"])
    if isinstance(node, list):
        return [_unflatten(v, tensors) for v in node]
    return node


def atomic_save_tensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata
    )
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_state(state: dict[str, Any], path: Path) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    atomic_save_tensors(tensors, path, metadata={_SKELETON_KEY: json.dumps(skeleton)})


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; anything else is refused, never unpickled."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(
            f"{path} is not a valid safetensors file ({e}); hydranet loads weights from safetensors only"
        ) from None


def load_state(path: Path) -> dict[str, Any]:
    tensors, metadata = load_tensors(path)
    if _SKELETON_KEY not in metadata:
        raise UserError(f"{path} is a safetensors file but not a hydranet checkpoint")
    return _unflatten(json.loads(metadata[_SKELETON_KEY]), tensors)
