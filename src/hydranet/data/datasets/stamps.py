"""Stamps: Tux Paint's rubber stamps, a picture and a caption each (GPL-2).

The data comes from the Debian package ``tuxpaint-stamps-default``, fetched once
with ``apt-get download`` and read in memory. Below
``/usr/share/tuxpaint/stamps/<category>/[<subcategory>/...]`` each stamp is a PNG
(or an SVG, skipped: the image kind reads raster images) with a caption file of
the same stem (``frog.png`` → ``frog.txt``) whose first line is English and the
rest translations. ``*_mirror.png`` files are Tux Paint's pre-mirrored copies of
another stamp, not stamps of their own, and are skipped (a copy in train and
its original in test would leak).

One row per stamp (785 in the 2022.06.04 package), split about 80/10/10 at
random within each (category, subcategory) group, seeded, with every group's
first row in train. Columns:

- ``image``: the PNG file's bytes (RGBA, LA, P or RGB; the image kind composites
  alpha on white); ``width``, ``height``: its size in pixels (numeric, the
  default features until the image and text kinds read the others);
- ``caption``: the caption's first line ("A frog."); null when there is none;
- ``path``: the file's path below ``stamps/``, which names the labels: kept for
  reference, never a feature;
- tasks ``category`` (the top folder, 16 classes), ``subcategory`` (the first
  folder below it that is not ``cartoon``, a style folder; null for a stamp
  directly in its category folder, which hydranet masks) and ``photo``.

``photo`` (1 photograph, 0 drawing, null undecided) is derived from the pixels,
as the package does not say: a photograph has sensor noise, so neighbouring
pixels are almost never exactly equal, while drawings (flat fills, and even
gradient-shaded renderings) repeat colours. Over the pairs of horizontally
adjacent fully opaque pixels, the fraction with identical RGB is below 0.05 for
photos and at least 0.4 for drawings; a stamp in a ``cartoon`` folder is a
drawing whatever its pixels; a stamp with fewer than 1,000 such pairs, or in
between, gets null. The rule was checked by eye on contact sheets of 100 stamps
(all 24 sampled below 0.05 were photos, 22 of 24 sampled between 0.4 and 0.95
drawings; the 0.05..0.4 band mixed both and is therefore left null).
"""

from __future__ import annotations

import io
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image, UnidentifiedImageError

from hydranet.data.datasets._deb import deb_files, deb_splits
from hydranet.errors import DataError

PACKAGE = "tuxpaint-stamps-default"
DEB_ENV = "HYDRANET_STAMPS_DEB"
"""A local copy of the Debian package (.deb) to use instead of fetching it."""

FOLDER = "usr/share/tuxpaint/stamps"
NUMERIC = ["width", "height"]
TASKS = ["category", "subcategory", "photo"]
STYLE_FOLDER = "cartoon"
PHOTO_BELOW = 0.05
DRAWING_FROM = 0.4
MIN_PAIRS = 1000
SPLIT_SEED = 2022
_EVERY = 10  # one row in ten to validation, one to test
_MIRROR = "_mirror"


def prepare(data_dir: Path, params: dict[str, Any], *, deb: Path | None = None) -> dict[str, Path]:
    """Build (once) and return ``{"train", "validation", "test"}`` Parquet paths.

    ``deb`` (or ``$HYDRANET_STAMPS_DEB``) names a local copy of the Debian
    package; without one it is fetched with ``apt-get download``.
    """
    return deb_splits(data_dir, "stamps", PACKAGE, deb, DEB_ENV, read_package, split)


def read_package(deb: Path) -> pa.Table:
    """One row per PNG stamp, ordered by path."""
    files = dict(deb_files(deb, FOLDER, suffixes=(".png", ".txt")))
    stamps = sorted(
        p for p in files if p.endswith(".png") and not p.removesuffix(".png").endswith(_MIRROR)
    )
    if not stamps:
        raise DataError(f"Debian package {deb} has no PNG stamps under {FOLDER}; is it {PACKAGE}?")
    cols: dict[str, list] = {c: [] for c in ("image", "width", "height", "caption", "path", *TASKS)}
    for path in stamps:
        parts = PurePosixPath(path).parts
        if len(parts) < 2:
            continue  # a file beside the category folders is no stamp of any category
        data = files[path]
        image = _decode(data, f"{deb}:{FOLDER}/{path}")
        folders = parts[1:-1]
        in_style = STYLE_FOLDER in folders
        subject = [f for f in folders if f != STYLE_FOLDER]
        caption = files.get(path.removesuffix(".png") + ".txt")
        cols["image"].append(data)
        cols["width"].append(image.width)
        cols["height"].append(image.height)
        cols["caption"].append(_first_line(caption) if caption is not None else None)
        cols["path"].append(path)
        cols["category"].append(parts[0])
        cols["subcategory"].append(subject[0] if subject else None)
        cols["photo"].append(0 if in_style else photo_label(image))
    types = {"image": pa.binary(), "width": pa.int32(), "height": pa.int32(), "photo": pa.int8()}
    return pa.table({c: pa.array(v, type=types.get(c, pa.string())) for c, v in cols.items()})


def photo_label(image: Image.Image) -> int | None:
    """1 photograph, 0 drawing, None undecided: the module docstring's rule."""
    rgba = np.asarray(image.convert("RGBA"))
    opaque = rgba[..., 3] == 255
    pairs = opaque[:, 1:] & opaque[:, :-1]
    n = int(pairs.sum())
    if n < MIN_PAIRS:
        return None
    rgb = rgba[..., :3]
    same = (rgb[:, 1:] == rgb[:, :-1]).all(axis=-1) & pairs
    flat = float(same.sum()) / n
    if flat < PHOTO_BELOW:
        return 1
    return 0 if flat >= DRAWING_FROM else None


def _decode(data: bytes, where: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"cannot read {where} as an image: {e}") from None
    if image.format != "PNG":
        raise DataError(f"{where} is not a PNG image")
    return image


def _first_line(data: bytes) -> str | None:
    lines = data.decode("utf-8", errors="replace").splitlines()
    return (lines[0].strip() or None) if lines else None


def split(table: pa.Table) -> dict[str, pa.Table]:
    """Train/validation/test, about 80/10/10, stratified by (category, subcategory), seeded.

    Each group's rows are shuffled and dealt in turn: its first row to train
    (so every class of both folder tasks can be learned), the rest by one
    counter running through all groups, every tenth to validation and every
    tenth to test.
    """
    rng = np.random.default_rng(SPLIT_SEED)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (c, s) in enumerate(
        zip(
            table.column("category").to_pylist(),
            table.column("subcategory").to_pylist(),
            strict=True,
        )
    ):
        groups.setdefault((c, s or ""), []).append(i)
    parts: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    counter = 0
    for key in sorted(groups):
        idx = rng.permutation(np.asarray(groups[key], dtype=np.int64))
        parts["train"].append(int(idx[0]))
        for i in idx[1:]:
            name = {0: "validation", _EVERY // 2: "test"}.get(counter % _EVERY, "train")
            parts[name].append(int(i))
            counter += 1
    return {name: table.take(np.sort(np.asarray(p, dtype=np.int64))) for name, p in parts.items()}
