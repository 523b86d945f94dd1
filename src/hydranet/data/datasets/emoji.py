"""Emoji: Twitter's Twemoji art with Unicode's names and groups (issue 16's multimodal set).

The data comes from the npm package ``emoji-datasource-twitter@16.0.0``, fetched
once with ``npm pack`` (the registry tarball as published; no install, no
scripts). Its ``package/emoji.json`` has one row per base emoji (1,911) and
``package/img/twitter/64/`` one 64×64 RGBA PNG per emoji and skin-tone variant.
Both are read straight out of the tarball (no extraction to disk, so a hostile
archive cannot write anywhere), split about 80/10/10 at random within each
subcategory (seeded; every class is in train) and cached as Parquet.

One row per base emoji that has a 64px Twitter image; skin-tone variants are
not rows of their own. Columns:

- ``image``: the PNG file's bytes (binary), for the ``image`` feature kind;
- ``name`` ("FATHER CHRISTMAS") and ``short_names`` ("santa", several joined by
  spaces): text; ``unified``: the code points ("1F385"), to join other emoji data;
- ``added_in`` (Emoji version, e.g. 13.1) and ``sort_order``: numeric;
- tasks ``category`` (10 classes), ``subcategory`` (99 classes) and
  ``skin_tones`` = 1 when the emoji comes in skin tones (``skin_variations`` in
  emoji.json): people and hands, which both the picture (a yellow figure) and
  the words ("hand", "person") show.

The default features (a spec that names no feature column of its own) are
the picture, group ``image`` (kind ``image``, 64 px, the ``cnn`` encoder), the
words, group ``text`` (kind ``text``: ``name`` and ``short_names``, 16 tokens
each, the ``bag`` encoder) and ``added_in`` (numeric). ``sort_order`` is
Unicode's emoji ordering, which runs through the categories and subcategories
one after the other: it gives both away, so it is kept in the files but is not
a default feature.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from hydranet.data.datasets._cache import cached_splits, local_copy
from hydranet.errors import DataError

PACKAGE = "emoji-datasource-twitter@16.0.0"
TGZ_ENV = "HYDRANET_EMOJI_TGZ"
"""A local copy of the npm tarball (``npm pack`` output) to use instead of fetching it."""

_NAME, _VERSION = PACKAGE.split("@")
_TGZ_NAME = f"{_NAME}-{_VERSION}.tgz"
IMAGE_DIR = "img/twitter/64"
IMAGE_SIZE = 64
SPLIT_SEED = 2016
_EVERY = 10  # one row in ten to validation, one to test
NUMERIC = ["added_in"]
FEATURES = [
    {"name": "image", "kind": "image", "columns": ["image"], "params": {"size": IMAGE_SIZE}},
    {
        "name": "text",
        "kind": "text",
        "columns": ["name", "short_names"],
        "params": {"max_tokens": 16},
    },
]
"""The default ``[[features]]`` groups beside the numeric ``added_in``."""
TASKS = ["category", "subcategory", "skin_tones"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def prepare(data_dir: Path, params: dict[str, Any], *, tgz: Path | None = None) -> dict[str, Path]:
    """Build (once) and return ``{"train", "validation", "test"}`` Parquet paths.

    ``tgz`` (or ``$HYDRANET_EMOJI_TGZ``) names a local copy of the npm tarball;
    without one it is fetched with ``npm pack``.
    """
    tgz = local_copy(tgz, TGZ_ENV)

    def build() -> dict[str, pa.Table]:
        with tempfile.TemporaryDirectory(prefix="hydranet-emoji-") as tmp:
            return split(read_package(tgz or fetch_package(Path(tmp))))

    def announce(out_dir: Path) -> str:
        if tgz is None:
            return f"fetching the emoji data set: npm package {PACKAGE} (with npm pack; set {TGZ_ENV} to use a local copy), cached in {out_dir} ..."
        return f"preparing the emoji data set from {tgz}, cached in {out_dir} ..."

    return cached_splits(data_dir, "emoji", build, announce)


def fetch_package(dest: Path) -> Path:
    """Fetch the package tarball from the npm registry with ``npm pack`` into ``dest``."""
    cmd = ["npm", "pack", "--ignore-scripts", PACKAGE]
    try:
        res = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=900)
    except FileNotFoundError:
        raise DataError(
            f"could not fetch {PACKAGE}: npm is not installed; install Node.js's npm or set {TGZ_ENV} to a local copy of the tarball"
        ) from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(
            f"could not fetch {PACKAGE} with npm: {e}; set {TGZ_ENV} to a local copy"
        ) from None
    found = dest / _TGZ_NAME
    if res.returncode != 0 or not found.is_file():
        lines = [ln for ln in (res.stderr or res.stdout).strip().splitlines() if ln.strip()]
        why = lines[-1].strip() if lines else f"npm exited with {res.returncode}"
        raise DataError(f"could not fetch {PACKAGE} with npm: {why}; set {TGZ_ENV} to a local copy")
    return found


def read_package(tgz: Path) -> pa.Table:
    """One row per base emoji with a 64px Twitter image, in ``sort_order``."""
    try:
        with tarfile.open(tgz, mode="r:*") as tf:
            return _read_members(tf, tgz)
    except (OSError, EOFError, tarfile.TarError) as e:
        # a missing, truncated or non-tar file
        raise DataError(f"cannot read emoji package {tgz}: {e}") from None


def _read_members(tf: tarfile.TarFile, tgz: Path) -> pa.Table:
    # keyed by the path below the top folder ("package/" in npm tarballs), whatever it is named
    members = {m.name.split("/", 1)[-1]: m for m in tf.getmembers()}

    def read(name: str) -> bytes:
        member = members.get(name)
        # only a regular file is read, from memory; links and devices are never followed
        if member is None or not member.isfile():
            raise DataError(f"emoji package {tgz} has no file {name}; is it {PACKAGE}?")
        fileobj = tf.extractfile(member)
        assert fileobj is not None  # a regular file always has content
        return fileobj.read()

    meta = _json(read("package.json"), f"{tgz}:package.json")
    if not isinstance(meta, dict) or (meta.get("name"), meta.get("version")) != (_NAME, _VERSION):
        found = f"{meta.get('name')}@{meta.get('version')}" if isinstance(meta, dict) else "?"
        raise DataError(f"emoji package {tgz} is {found}, expected {PACKAGE}")
    rows = _json(read("emoji.json"), f"{tgz}:emoji.json")
    if not isinstance(rows, list):
        raise DataError(f"{tgz}:emoji.json is not a list of emoji")
    cols: dict[str, list] = {
        c: [] for c in ("image", "name", "short_names", "unified", "added_in", "sort_order", *TASKS)
    }
    for i, row in enumerate(rows):
        where = f"{tgz}:emoji.json row {i}"
        if not isinstance(row, dict):
            raise DataError(f"{where} is not an object")
        if not row.get("has_img_twitter"):
            continue
        try:
            image_name = f"{IMAGE_DIR}/{row['image']}"
            values = {
                "name": str(row["name"]),
                "short_names": " ".join(row["short_names"]),
                "unified": str(row["unified"]),
                "added_in": float(row["added_in"]),
                "sort_order": int(row["sort_order"]),
                "category": str(row["category"]),
                "subcategory": str(row["subcategory"]),
                "skin_tones": int(bool(row.get("skin_variations"))),
            }
        except KeyError as e:
            raise DataError(f"{where} has no {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise DataError(f"{where}: {e}") from None
        values["image"] = _check_png(read(image_name), f"{tgz}:{image_name}")
        for c, v in values.items():
            cols[c].append(v)
    if not cols["name"]:
        raise DataError(f"{tgz}:emoji.json has no emoji with a Twitter image")
    order = np.argsort(cols["sort_order"], kind="stable")
    types = {
        "image": pa.binary(),
        "added_in": pa.float64(),
        "sort_order": pa.int64(),
        "skin_tones": pa.int8(),
    }
    table = pa.table({c: pa.array(v, type=types.get(c, pa.string())) for c, v in cols.items()})
    return table.take(order)


def _json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot parse {where}: {e}") from None


def _check_png(data: bytes, where: str) -> bytes:
    # the header alone (signature, then IHDR's width and height), not a decode:
    # a wrong file is caught here without needing Pillow
    if len(data) < 24 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise DataError(f"{where} is not a PNG image")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if (width, height) != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{where} is {width}x{height}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    return data


def split(table: pa.Table) -> dict[str, pa.Table]:
    """Train/validation/test, about 80/10/10, stratified by subcategory, seeded.

    Each subcategory's rows are shuffled and dealt in turn: its first row to
    train (so every class of both category tasks can be learned), the rest by
    one counter running through all subcategories, every tenth to validation
    and every tenth to test. Subcategories nest in categories, so categories
    are stratified too.
    """
    rng = np.random.default_rng(SPLIT_SEED)
    subcategory = np.asarray(table.column("subcategory").to_pylist(), dtype=object)
    parts: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    counter = 0
    for value in sorted(set(subcategory)):
        idx = rng.permutation(np.flatnonzero(subcategory == value))
        parts["train"].append(int(idx[0]))
        for i in idx[1:]:
            name = {0: "validation", _EVERY // 2: "test"}.get(counter % _EVERY, "train")
            parts[name].append(int(i))
            counter += 1
    # sorted indices keep the sort_order inside each split and make `take` sequential
    return {name: table.take(np.sort(np.asarray(p, dtype=np.int64))) for name, p in parts.items()}
