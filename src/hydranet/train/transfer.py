"""Transfer learning: what training does with encoders that start from pretrained weights.

For every encoder with ``pretrained = True`` (its params ``freeze``, ``unfreeze_after``,
``unfreeze_blocks``, ``lr_scale``; see :class:`~hydranet.models.encoders.Encoder`):

* **frozen** (``freeze`` and no ``unfreeze_after``): its output never changes, so the group's
  embeddings are computed once per split before training (eval mode, no grad, in chunks) and
  training runs on them: the :class:`~hydranet.models.encoders.InputEncoder` skips the encoders
  of its ``pre_encoded`` groups. They are cached under ``<data dir>/embeddings/<key>.npy``,
  keyed by the sha256 of the encoder's weights and of the group's tensor, so a second run reuses
  them. The saved model still holds the encoder: predict and serve take the raw column.
* **partial unfreezing**: from epoch ``unfreeze_after`` (0-based: after that many epochs) the
  last ``unfreeze_blocks`` of ``blocks()`` train; the state is a function of the epoch alone,
  so a resumed run sets it again from its epoch.
* **discriminative learning rates**: one optimizer group per pretrained encoder at
  ``lr_scale`` × ``train.lr``, holding its frozen parameters too (no new optimizer when they
  unfreeze, and the optimizer's state keeps one layout for resume).
* **gradient balancing**: a pretrained encoder's parameters are not among the shared
  parameters the balancers combine task gradients on; they get the plain gradient of the
  summed losses, as task parameters do. A balancer's cost then stays bounded by the trunk,
  not by an encoder's millions of weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hydranet.errors import UserError
from hydranet.models.encoders.base import Encoder

__all__ = [
    "cache_dir",
    "embed",
    "encode_frozen",
    "graph_blockers",
    "param_groups",
    "pretrained_encoders",
    "pretrained_parameter_ids",
    "set_epoch",
]

# rows per encoder call when embeddings are precomputed: at most CHUNK_ROWS, and at most
# CHUNK_ELEMENTS input values (64 emoji images of 64 px, 256 short texts). Smaller chunks of
# large inputs stay in cache: MobileNetV2 on the emoji images (2 threads, busy machine)
# embedded 93 images/s in chunks of 256, 187 in chunks of 64.
CHUNK_ROWS = 256
CHUNK_ELEMENTS = 1 << 20


def pretrained_encoders(model: nn.Module) -> dict[str, Encoder]:
    """The model's pretrained encoders by feature group, in group order."""
    encoders = model.encoder.encoders
    return {n: e for n, e in encoders.items() if getattr(e, "pretrained", False)}


def _always_frozen(enc: Encoder) -> bool:
    return bool(enc.freeze) and enc.unfreeze_after is None


def pretrained_parameter_ids(model: nn.Module) -> set[int]:
    """``id()`` of every parameter of a pretrained encoder (left out of the shared ones)."""
    return {id(p) for e in pretrained_encoders(model).values() for p in e.parameters()}


def param_groups(
    model: nn.Module, extra: list[nn.Parameter]
) -> list[nn.Parameter] | list[dict[str, Any]]:
    """The optimizer's parameters: everything else at ``train.lr``, then one group per
    pretrained encoder with its ``lr_scale`` (``build_optimizer`` turns it into a rate); a
    plain list, as before, when there is no pretrained encoder."""
    encoders = pretrained_encoders(model)
    if not encoders:
        return list(model.parameters()) + extra
    ids = pretrained_parameter_ids(model)
    groups: list[dict[str, Any]] = [
        {"params": [p for p in model.parameters() if id(p) not in ids] + extra}
    ]
    for enc in encoders.values():
        groups.append({"params": list(enc.parameters()), "lr_scale": float(enc.lr_scale)})
    return groups


def _trainable_blocks(enc: Encoder, epoch: int) -> list[nn.Module]:
    if not enc.freeze:
        return [enc]
    if enc.unfreeze_after is None or epoch < enc.unfreeze_after:
        return []
    return enc.blocks()[-int(enc.unfreeze_blocks) :]


def set_epoch(model: nn.Module, epoch: int) -> list[str]:
    """Which pretrained parameters train in (0-based) ``epoch``: ``requires_grad`` and the
    frozen parts' eval mode. Returns a line for each encoder that starts unfreezing now."""
    lines = []
    for name, enc in pretrained_encoders(model).items():
        before = any(p.requires_grad for p in enc.parameters())
        enc.requires_grad_(False)
        blocks = _trainable_blocks(enc, epoch)
        for block in [*blocks, *enc.head_modules()]:  # a head trains even on a frozen encoder
            block.requires_grad_(True)
        enc.train(enc.training)  # frozen parts back to eval mode
        if enc.freeze and blocks and not before:
            n = len(enc.blocks())
            lines.append(
                f"epoch {epoch + 1}: the encoder of feature group {name!r} trains its last "
                f"{len(blocks)} of {n} blocks from now on, at {enc.lr_scale:g} x train.lr"
            )
    return lines


def graph_blockers(model: nn.Module) -> list[str]:
    """Why a pretrained encoder keeps the step from being one CUDA graph."""
    return [
        f"the encoder of feature group {n!r} unfreezes at epoch {e.unfreeze_after + 1} (the trained parameters change)"
        for n, e in pretrained_encoders(model).items()
        if e.freeze and e.unfreeze_after is not None
    ]


def cache_dir() -> Path:
    from hydranet.data.datasets import data_dir

    return data_dir() / "embeddings"


def _digest(h: Any, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)};".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().data)


def cache_key(enc: Encoder, x: torch.Tensor, device: torch.device) -> str:
    """sha256 of what the embeddings are a function of: the encoder's class, group and
    weights, the group's tensor and the device type (GPU kernels round differently)."""
    h = hashlib.sha256()
    cls = type(enc)
    h.update(f"{cls.__module__}.{cls.__qualname__};{device.type};".encode())
    h.update(json.dumps(enc.group, sort_keys=True, default=str).encode())
    # the head trains, and what is cached comes before it
    head = {id(p) for m in enc.head_modules() for p in m.parameters()}
    for name, t in sorted(enc.state_dict(keep_vars=True).items()):
        if id(t) in head:
            continue
        h.update(name.encode())
        _digest(h, t)
    _digest(h, x)
    return h.hexdigest()


@torch.no_grad()
def embed(enc: Encoder, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``enc`` on every row of ``x`` in eval mode, a chunk of rows at a time (see
    ``CHUNK_ELEMENTS``): ``[N, out_dim]`` float32 on the CPU."""
    per_row = max(1, x[0].numel()) if x.shape[0] else 1
    rows = max(1, min(CHUNK_ROWS, CHUNK_ELEMENTS // per_row))
    was_training = enc.training
    enc.eval()
    try:
        parts = [
            enc.frozen_forward(x[i : i + rows].to(device)).float().cpu()
            for i in range(0, x.shape[0], rows)
        ]
    finally:
        enc.train(was_training)
    return torch.cat(parts) if parts else torch.zeros(0, enc.out_dim)


def _cached_embed(enc: Encoder, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    path = cache_dir() / f"{cache_key(enc, x, device)}.npy"
    if path.is_file():
        try:
            got = np.load(path, allow_pickle=False)
            # the frozen part's width (a head after it may change the encoder's out_dim)
            if got.ndim == 2 and got.shape[0] == x.shape[0] and got.dtype == np.float32:
                return torch.from_numpy(got)
        except (OSError, ValueError):
            pass  # a truncated or foreign file: computed again and replaced
    out = embed(enc, x, device)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # written whole, then renamed: a run killed while writing leaves no half file behind
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, out.numpy(), allow_pickle=False)
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot cache embeddings in {path.parent}: {e}") from None
    return out


def encode_frozen(model: nn.Module, splits: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """``splits`` with the groups of always-frozen pretrained encoders replaced by their
    embeddings, and those groups marked ``pre_encoded`` on the model's input encoder. Splits
    that are streamed are left alone (the frozen encoder then runs in the forward)."""
    from hydranet.train.prepare import Split

    frozen = {n: e for n, e in pretrained_encoders(model).items() if _always_frozen(e)}
    if not frozen or not all(isinstance(s, Split) for s in splits.values()):
        return splits
    out = {}
    for split_name, split in splits.items():
        features = dict(split.data.features)
        for group, enc in frozen.items():
            features[group] = _cached_embed(enc, features[group], device).to(features[group].device)
        out[split_name] = replace(split, data=replace(split.data, features=features))
    model.encoder.pre_encoded = set(frozen)
    return out
