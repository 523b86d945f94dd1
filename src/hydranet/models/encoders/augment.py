"""Batched image augmentation for the image encoders: random resized crop, flip, colour jitter.

Each sample of the batch gets its own crop, flip and jitter factors, drawn on the batch's
device. torchvision's v2 transforms draw ONE set of parameters per call (the whole batch
would get the same crop), and a Python loop over the samples is slow, so the crop and flip
are one ``affine_grid`` + ``grid_sample`` over the batch (a per-sample scale, translation and
sign of the x axis), and the jitter factors broadcast over each sample. The grey levels come
from ``torchvision.transforms.v2.functional.rgb_to_grayscale``, which takes a batch.

Random numbers come from ``generator`` when one is given, else from torch's global generator
of the batch's device, whose state the trainer saves in every checkpoint (``torch`` and
``torch.cuda`` RNG states), so a resumed run draws the same augmentations.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as nnf

__all__ = ["augment"]


def _uniform(
    n: int, low: float, high: float, like: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    u = torch.rand(n, device=like.device, generator=generator, dtype=like.dtype)
    return low + (high - low) * u


def augment(
    x: torch.Tensor,
    *,
    scale: tuple[float, float] = (0.6, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
    jitter: float = 0.2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``x [B, 3, H, W]`` floats in [0, 1] → the same shape, each sample augmented on its own.

    * random resized crop: a box of ``scale`` × the picture's area and aspect ``ratio``
      (log-uniform), anywhere inside the picture, resized back to H × W (bilinear);
    * horizontal flip with probability 1/2 when ``flip``;
    * brightness, contrast and saturation each multiplied by a factor in [1 - jitter,
      1 + jitter], in that order (torchvision shuffles the order; a fixed one is simpler and
      draws less).
    """
    b = x.shape[0]
    if b == 0:
        return x
    area = _uniform(b, scale[0], scale[1], x, generator)
    log_ratio = _uniform(b, math.log(ratio[0]), math.log(ratio[1]), x, generator)
    aspect = torch.exp(log_ratio)
    # box width and height as fractions of the picture's (the grid's units are [-1, 1])
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (1 - w) * _uniform(b, -1.0, 1.0, x, generator)
    cy = (1 - h) * _uniform(b, -1.0, 1.0, x, generator)
    sign = torch.ones_like(w)
    if flip:
        sign = torch.where(_uniform(b, 0.0, 1.0, x, generator) < 0.5, -1.0, 1.0).to(x.dtype)
    zero = torch.zeros_like(w)
    theta = torch.stack(
        [torch.stack([w * sign, zero, cx], dim=1), torch.stack([zero, h, cy], dim=1)], dim=1
    )
    grid = nnf.affine_grid(theta, list(x.shape), align_corners=False)
    x = nnf.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if jitter > 0:
        x = _jitter(x, jitter, generator)
    return x


def _jitter(x: torch.Tensor, amount: float, generator: torch.Generator | None) -> torch.Tensor:
    from torchvision.transforms.v2.functional import rgb_to_grayscale

    b = x.shape[0]

    def factor() -> torch.Tensor:
        return _uniform(b, 1 - amount, 1 + amount, x, generator).view(b, 1, 1, 1)

    x = (x * factor()).clamp(0, 1)  # brightness
    mean = rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (mean + factor() * (x - mean)).clamp(0, 1)  # contrast: towards the mean grey
    grey = rgb_to_grayscale(x)
    return (grey + factor() * (x - grey)).clamp(0, 1)  # saturation: towards each pixel's grey
