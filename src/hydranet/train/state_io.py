"""Nested training state (model, optimizer, scheduler, RNG, loader, balancer) in one safetensors file.

Tensors go into the safetensors body under their key path; everything else
(ints, floats, strings, the nesting itself, int dict keys of optimizer states)
goes into a JSON skeleton stored in the file's metadata. Reading it back never
unpickles anything. Writes go to a temporary name and are renamed into place,
so a kill at any moment leaves the previous file intact.

Every file written here carries in its metadata a sha256 of its tensors and other
metadata (``hydranet.sha256``, see :func:`tensors_digest`), checked on load: one file,
one rename, so the digest cannot go out of step with what it covers. Files without it
(written before it existed) load unchecked.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from hydranet.errors import UserError

_SKELETON_KEY = "hydranet.state"
_DIGEST_KEY = "hydranet.sha256"


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


def tensors_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """sha256 over the metadata (but the digest itself) and every tensor's name, dtype,
    shape and bytes, in name order: independent of how safetensors lays the file out."""
    h = hashlib.sha256()
    meta = {k: v for k, v in metadata.items() if k != _DIGEST_KEY}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        if t.numel():
            # raw bytes of any dtype (numpy has no bfloat16): a flat uint8 view, no copy
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


@functools.cache
def _umask() -> int:
    # the only way to read it is to set it; set back at once (read once per process)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_save_tensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = dict(metadata or {})
    metadata[_DIGEST_KEY] = tensors_digest(tensors, metadata)
    save_file(tensors, str(tmp), metadata=metadata)
    # safetensors creates its file 0600; the run's other files get the usual umask mode, and
    # weights only their owner can read stopped a server running as another user
    os.chmod(tmp, 0o666 & ~_umask())
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_state(state: dict[str, Any], path: Path) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    atomic_save_tensors(tensors, path, metadata={_SKELETON_KEY: json.dumps(skeleton)})


def load_tensors(
    path: Path, *, advice: str = "restore the file or train again"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; anything else is refused, never unpickled.

    A file whose digest does not match its content, or that safetensors cannot parse (a
    truncated or garbled header), is a one-line UserError naming it and ending in ``advice``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(
            f"{path} is not a valid safetensors file ({str(e).splitlines()[0] if str(e) else type(e).__name__}): "
            f"it is corrupted or was not written by hydranet, which loads weights from safetensors only; {advice}"
        ) from None
    recorded = metadata.get(_DIGEST_KEY)
    if recorded is not None and recorded != tensors_digest(tensors, metadata):
        raise UserError(f"{path} is corrupted (checksum mismatch); {advice}")
    return tensors, metadata


def load_state(path: Path) -> dict[str, Any]:
    """The training state :func:`save_state` wrote; a corrupted file is a one-line UserError."""
    advice = "it cannot be resumed from: train afresh (without --resume) into another --out"
    tensors, metadata = load_tensors(path, advice=advice)
    if _SKELETON_KEY not in metadata:
        raise UserError(f"{path} is a safetensors file but not a hydranet checkpoint")
    try:
        return _unflatten(json.loads(metadata[_SKELETON_KEY]), tensors)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        # only a file without a digest (older) gets here damaged
        raise UserError(
            f"{path} is corrupted (its training state cannot be read: {type(e).__name__}); {advice}"
        ) from None
