"""MultiFashion: two Fashion-MNIST items overlaid, a left and a right label.

The MultiMNIST protocol of Sener & Koltun ("Multi-Task Learning as
Multi-Objective Optimization", NeurIPS 2018), which follows Sabour et al.
(2017), on Fashion-MNIST (Xiao et al. 2017). The images come from the Debian
package ``dataset-fashion-mnist`` (60,000 training and 10,000 test images,
28×28 grey, Expat), fetched once with ``apt-get download`` and read in memory.

Exact procedure, per split (train from the training images, test from the test
images), with ``numpy.random.default_rng`` seeded per split:

1. for image ``i`` (in file order) draw a partner ``j != i`` uniformly from the
   same file, and four shifts ``dy_l, dx_l, dy_r, dx_r`` uniformly in 0..4;
2. on a black 36×36 canvas put image ``i`` with its top-left corner at
   ``(dy_l, dx_l)`` and image ``j`` with its bottom-right corner at
   ``(35 - dy_r, 35 - dx_r)``; where they overlap the brighter pixel wins
   (pixel-wise max);
3. resize the canvas to 28×28 with Pillow's bilinear filter (antialiased, as
   ``Image.resize(..., Image.BILINEAR)`` does when shrinking) and round to uint8.

Labels: ``left`` = the class of image ``i``, ``right`` = the class of image ``j``
(10 classes each, by name: "T-shirt/top" ... "Ankle boot"). One row per image:
60,000 built from the training file, of which 10% (6,000, seeded) are held out
as validation, and 10,000 test rows from the test file. Column ``image`` holds
the grey PNG's bytes for the ``image`` feature kind.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from hydranet.data.datasets._deb import deb_files, deb_splits
from hydranet.errors import DataError

PACKAGE = "dataset-fashion-mnist"
DEB_ENV = "HYDRANET_FASHION_MNIST_DEB"
"""A local copy of the Debian package (.deb) to use instead of fetching it."""

FOLDER = "usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
TASKS = ["left", "right"]
SIZE = 28
CANVAS = 36
MAX_SHIFT = 4
VALIDATION_FRACTION = 0.1
SEED = 2018
_SPLIT_SEEDS = {"train": 0, "test": 1, "validation": 2}

_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned bytes, 3 or 1 dimensions


def prepare(data_dir: Path, params: dict[str, Any], *, deb: Path | None = None) -> dict[str, Path]:
    """Build (once) and return ``{"train", "validation", "test"}`` Parquet paths.

    ``deb`` (or ``$HYDRANET_FASHION_MNIST_DEB``) names a local copy of the
    Debian package; without one it is fetched with ``apt-get download``.
    """
    return deb_splits(data_dir, "multifashion", PACKAGE, deb, DEB_ENV, read_package, build_splits)


def read_package(deb: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train" | "test": (images uint8 [N, 28, 28], labels uint8 [N])}``."""
    files = dict(deb_files(deb, FOLDER))
    out = {}
    for split, (images_name, labels_name) in FILES.items():
        for name in (images_name, labels_name):
            if name not in files:
                raise DataError(
                    f"Debian package {deb} has no file {FOLDER}/{name}; is it {PACKAGE}?"
                )
        images = read_idx(files[images_name], f"{deb}:{images_name}", ndim=3)
        labels = read_idx(files[labels_name], f"{deb}:{labels_name}", ndim=1)
        if images.shape[1:] != (SIZE, SIZE):
            raise DataError(f"{deb}:{images_name} holds {images.shape[1:]} images, expected 28x28")
        if len(images) != len(labels) or len(images) < 2:
            raise DataError(
                f"{deb}:{images_name} has {len(images)} images and {labels_name} {len(labels)} labels"
            )
        if labels.max() >= len(CLASSES):
            raise DataError(f"{deb}:{labels_name} has label {labels.max()}, expected 0..9")
        out[split] = (images, labels)
    return out


def read_idx(data: bytes, where: str, ndim: int) -> np.ndarray:
    """An IDX file (LeCun's MNIST format: magic, big-endian int32 sizes, then the
    values), gzip-compressed, of unsigned bytes with ``ndim`` dimensions."""
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {where}: {e}") from None
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != _IDX_MAGIC[ndim]:
        raise DataError(f"{where} is not an IDX file of {ndim}-d unsigned bytes")
    shape = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    if len(raw) - header != int(np.prod(shape)):
        raise DataError(f"{where} is truncated: {len(raw) - header} bytes for shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def overlay(
    images: np.ndarray, labels: np.ndarray, seed: int
) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """The module docstring's procedure: PNG bytes, left labels, right labels."""
    rng = np.random.default_rng(seed)
    n = len(images)
    # j != i: draw from the other n - 1 images and skip over i
    partner = rng.integers(0, n - 1, size=n)
    partner += partner >= np.arange(n)
    shifts = rng.integers(0, MAX_SHIFT + 1, size=(n, 4))
    far = CANVAS - SIZE  # 8: the right image's top-left corner when it is not shifted
    pngs = []
    canvas = np.zeros((CANVAS, CANVAS), dtype=np.uint8)
    for i in range(n):
        dy_l, dx_l, dy_r, dx_r = (int(s) for s in shifts[i])
        canvas[:] = 0
        canvas[dy_l : dy_l + SIZE, dx_l : dx_l + SIZE] = images[i]
        right = canvas[far - dy_r : far - dy_r + SIZE, far - dx_r : far - dx_r + SIZE]
        np.maximum(right, images[partner[i]], out=right)
        small = Image.fromarray(canvas, mode="L").resize((SIZE, SIZE), Image.BILINEAR)
        buf = io.BytesIO()
        small.save(buf, format="PNG")
        pngs.append(buf.getvalue())
    return pngs, labels, labels[partner]


def build_splits(raw: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, pa.Table]:
    """Train/validation from the training images (90/10 at random, seeded), test from the test images."""
    tables = {s: _table(*overlay(*raw[s], seed=SEED + _SPLIT_SEEDS[s])) for s in ("train", "test")}
    train = tables["train"]
    order = np.random.default_rng(SEED + _SPLIT_SEEDS["validation"]).permutation(train.num_rows)
    n_val = int(round(train.num_rows * VALIDATION_FRACTION))
    return {
        "train": train.take(np.sort(order[n_val:])),
        "validation": train.take(np.sort(order[:n_val])),
        "test": tables["test"],
    }


def _table(pngs: list[bytes], left: np.ndarray, right: np.ndarray) -> pa.Table:
    names = np.asarray(CLASSES, dtype=object)
    return pa.table(
        {
            "image": pa.array(pngs, type=pa.binary()),
            "left": pa.array(names[left], type=pa.string()),
            "right": pa.array(names[right], type=pa.string()),
        }
    )
