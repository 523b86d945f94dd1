"""Image encoders: ``cnn`` (a small conv net from scratch) and ``mobilenet_v2`` (pretrained).

Both take the image group's uint8 tensor ``[B, C, 3, S, S]``, scale it to [0, 1], augment it
in training (:mod:`~hydranet.models.encoders.augment`), normalise it, encode the B × C
pictures as one batch and return each row's C vectors side by side: ``[B, C * d]``.

Augmentation starts once ``train()`` is called (the trainer does so every epoch), not from
construction: a freshly built module is in PyTorch's training mode, and an encoder that is
just built and called (a notebook, the contract tests) should give the same output twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from hydranet.errors import UserError
from hydranet.models.encoders.augment import augment as _augment
from hydranet.models.encoders.base import (
    ENCODERS,
    TRANSFER_CONSTRAINTS,
    Encoder,
    building_from_checkpoint,
)
from hydranet.params import PositiveInt

# ImageNet's channel statistics, which torchvision's pretrained weights expect
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FETCH_HINT = "`hydranet fetch-weights mobilenet_v2` fetches it and prints the path"


class _ImageEncoder(Encoder):
    kinds = ("image",)

    def __init__(
        self,
        group: dict[str, Any],
        model_spec: Any,
        state: Any,
        augment: bool,
        flip: bool,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ):
        super().__init__(group, model_spec, state)
        n_columns, channels, height, width = (int(v) for v in group["shape"])
        if channels != 3:
            raise UserError(f"image encoder: expects RGB pictures (3 channels); got {channels}")
        self.n_columns, self.size = n_columns, (height, width)
        self.augment, self.flip = bool(augment), bool(flip)
        self._augmenting = False
        # derived constants, not part of the checkpoint
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> _ImageEncoder:
        super().train(mode)
        self._augmenting = mode
        return self

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised pictures ``[n, 3, H, W]`` → ``[n, d]``."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.reshape(-1, 3, *self.size).to(self.mean.dtype) / 255.0
        if self.augment and self.training and self._augmenting:
            x = _augment(x, flip=self.flip)
        x = (x - self.mean) / self.std
        return self.body(x).reshape(images.shape[0], -1)

    @classmethod
    def example_group(cls) -> tuple[dict[str, Any], torch.Tensor]:
        size = 32
        x = torch.randint(0, 256, (16, 2, 3, size, size), dtype=torch.uint8)
        return {"kind": "image", "shape": [2, 3, size, size]}, x


@ENCODERS.register("cnn")
class CNN(_ImageEncoder):
    """A small conv net from scratch: ``len(channels)`` blocks of 3×3 conv (stride 2),
    BatchNorm and ReLU, then average pooling to a ``pool`` × ``pool`` grid and a linear layer
    to ``out_dim``.

    At 64 px four blocks bring a picture to 4×4; ``channels`` sets their widths. ``pool = 1``
    (global pooling) forgets where things are; a larger grid keeps it for tasks defined by
    position (multifashion's left and right item).
    """

    param_constraints = {
        "out_dim": PositiveInt,
        "channels": list[PositiveInt],
        "pool": PositiveInt,
        "augment": bool,
        "flip": bool,
    }

    def __init__(
        self,
        group: dict[str, Any],
        model_spec: Any = None,
        state: Any = None,
        out_dim: int = 64,
        channels: list[int] | tuple[int, ...] = (32, 64, 128, 128),
        augment: bool = True,
        flip: bool = True,
        pool: int = 1,
    ):
        # the picture's own statistics are not known up front: centre [0, 1] on 0.5
        super().__init__(group, model_spec, state, augment, flip, (0.5,) * 3, (0.25,) * 3)
        if not channels:
            raise UserError("encoder cnn: params.channels needs at least one width")
        layers: list[nn.Module] = []
        prev = 3
        for c in channels:
            layers += [
                nn.Conv2d(prev, int(c), 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(int(c)),
                nn.ReLU(inplace=True),
            ]
            prev = int(c)
        self.channels = [int(c) for c in channels]
        self.pool = int(pool)
        side = self.size
        for _ in channels:  # a 3x3 conv with stride 2 and padding 1 halves, rounding up
            side = ((side[0] + 1) // 2, (side[1] + 1) // 2)
        if self.pool == 1:
            pooling: nn.Module = nn.AdaptiveAvgPool2d(1)
        elif side[0] % self.pool or side[1] % self.pool:
            raise UserError(
                f"encoder cnn: params.pool = {self.pool} must divide the last feature map, "
                f"{side[0]}x{side[1]} ({len(channels)} stride-2 blocks on "
                f"{self.size[0]}x{self.size[1]} pictures)"
            )
        else:
            # a fixed window, the same average as AdaptiveAvgPool2d here: the ONNX exporter
            # cannot export an adaptive grid other than 1x1 (the input size is not static)
            window = (side[0] // self.pool, side[1] // self.pool)
            pooling = nn.AvgPool2d(window, stride=window)
        self.features = nn.Sequential(*layers, pooling, nn.Flatten())
        self.proj = nn.Linear(prev * self.pool * self.pool, int(out_dim))
        self.d = int(out_dim)
        self.out_dim = self.n_columns * self.d

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(x))

    def extra_repr(self) -> str:
        return f"columns={self.n_columns}, channels={self.channels}, out_dim={self.out_dim}"


def load_weights(path: str, what: str) -> dict[str, torch.Tensor]:
    """A torchvision ``.pth`` state dict, read without unpickling code (``weights_only``)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{what} {path!r} is not a file; {FETCH_HINT}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle, zip or tensor error, all meaning: not a weights file
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"{what} {path!r} is not a readable weights file ({first}); {FETCH_HINT}"
        ) from None
    if not isinstance(state, dict):
        raise UserError(f"{what} {path!r} holds no state dict; {FETCH_HINT}")
    return state


@ENCODERS.register("mobilenet_v2")
class MobileNetV2(_ImageEncoder):
    """torchvision's MobileNetV2 with local ImageNet weights, its classifier dropped: the
    1280 channels of its last block, averaged over the picture (or a linear layer to
    ``out_dim``).

    ``weights`` is the ``.pth`` file (``mobilenet_v2-b0353104.pth``, torchvision's
    IMAGENET1K_V1); nothing is downloaded. A trained run does not need it: its checkpoint
    holds the backbone (:func:`~hydranet.models.encoders.base.weights_from_checkpoint`). With ``freeze`` the backbone keeps its weights and
    its BatchNorm statistics (it stays in eval mode); ``unfreeze_after``, ``unfreeze_blocks``
    and ``lr_scale`` are read by the transfer-learning machinery, ``blocks()`` being the
    backbone's 19 stages, input side first.
    """

    pretrained = True
    path_params = ("weights",)
    param_constraints = {
        "weights": str | None,
        **TRANSFER_CONSTRAINTS,
        "out_dim": PositiveInt | None,
        "augment": bool,
        "flip": bool,
    }

    def __init__(
        self,
        group: dict[str, Any],
        model_spec: Any = None,
        state: Any = None,
        weights: str | None = None,
        freeze: bool = True,
        unfreeze_after: int | None = None,
        unfreeze_blocks: int = 1,
        lr_scale: float = 0.1,
        out_dim: int | None = None,
        augment: bool = True,
        flip: bool = True,
    ):
        super().__init__(group, model_spec, state, augment, flip, IMAGENET_MEAN, IMAGENET_STD)
        if weights is None:
            raise UserError(
                f"encoder mobilenet_v2: params.weights must name the .pth file ({_FILE}); {FETCH_HINT}"
            )
        from torchvision.models import mobilenet_v2

        self.weights = str(weights)
        self.set_transfer(freeze, unfreeze_after, unfreeze_blocks, lr_scale)
        net = mobilenet_v2(weights=None)
        if not building_from_checkpoint():  # a run's checkpoint holds these weights
            self._load(net)
        self.backbone = net.features  # the classifier (dropout + 1000 ImageNet classes) is dropped
        width = int(net.last_channel)
        self.proj = None if out_dim is None else nn.Linear(width, int(out_dim))
        self.d = width if out_dim is None else int(out_dim)
        self.out_dim = self.n_columns * self.d
        if self.freeze:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def _load(self, net: nn.Module) -> None:
        state_dict = load_weights(self.weights, "encoder mobilenet_v2: params.weights")
        try:
            net.load_state_dict(state_dict)
        except RuntimeError as e:
            first = str(e).splitlines()[0]
            raise UserError(
                f"encoder mobilenet_v2: params.weights {self.weights!r} does not fit torchvision's "
                f"mobilenet_v2 ({first}); {FETCH_HINT}"
            ) from None

    def blocks(self) -> list[nn.Module]:
        return list(self.backbone.children())

    def train(self, mode: bool = True) -> MobileNetV2:
        super().train(mode)
        if self.freeze:
            # a frozen backbone computes what it was trained to: BatchNorm on its stored
            # statistics, which must not move with our batches
            blocks = self.blocks()
            frozen = [b for b in blocks if not any(p.requires_grad for p in b.parameters())]
            for block in frozen:
                block.eval()
            self.backbone.training = mode and len(frozen) < len(blocks)
        return self

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).mean(dim=(2, 3))

    def frozen_forward(self, images: torch.Tensor) -> torch.Tensor:
        return super().forward(images)  # [B, C * 1280]: the backbone's pooled features

    def head(self, e: torch.Tensor) -> torch.Tensor:
        if self.proj is None:
            return e
        return self.proj(e.reshape(e.shape[0], self.n_columns, -1)).reshape(e.shape[0], -1)

    def head_modules(self) -> list[nn.Module]:
        return [] if self.proj is None else [self.proj]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.frozen_forward(images))

    def extra_repr(self) -> str:
        return f"columns={self.n_columns}, weights={self.weights}, freeze={self.freeze}, out_dim={self.out_dim}"

    @classmethod
    def example_group(cls) -> tuple[dict[str, Any], torch.Tensor]:
        # 96 px, not less: a fresh network's BatchNorm over a deep stage's few positions per
        # channel amplifies float32 rounding past the float64 check's 1e-5 at 32 px
        size = 96
        x = torch.randint(0, 256, (8, 1, 3, size, size), dtype=torch.uint8)
        return {"kind": "image", "shape": [1, 3, size, size]}, x

    @classmethod
    def example_params(cls) -> dict[str, Any]:
        """Params for the contract tests: a weights file of a freshly initialised network
        (written once per process, to a temporary directory), unfrozen so every parameter
        gets a gradient, and a small projection."""
        return {"weights": str(_example_weights()), "freeze": False, "out_dim": 8}


_FILE = "mobilenet_v2-b0353104.pth"
_example_file: Path | None = None


def _example_weights() -> Path:
    import tempfile

    from torchvision.models import mobilenet_v2

    global _example_file
    if _example_file is None or not _example_file.is_file():
        gen = torch.random.fork_rng()
        with gen:
            torch.manual_seed(0)
            state = mobilenet_v2().state_dict()
        path = Path(tempfile.mkdtemp(prefix="hydranet-mobilenet-")) / _FILE
        torch.save(state, path)
        _example_file = path
    return _example_file
