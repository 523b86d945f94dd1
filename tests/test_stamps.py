"""The ``stamps`` bundled dataset, from a tiny generated Debian package (never the network)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import hydranet
from hydranet.data.datasets import DATASETS, data_dir, stamps
from hydranet.data.sources import load_splits, resolve_dataset
from hydranet.errors import DataError
from hydranet.spec import DataSpec
from test_multifashion import fake_deb


def _png(kind: str, size: int = 40, seed: int = 0) -> bytes:
    """``photo``: per-pixel noise (no two neighbours equal); ``drawing``: flat fills."""
    rng = np.random.default_rng(seed)
    if kind == "photo":
        rgb = rng.integers(0, 256, size=(size, size, 3))
        rgb[:, 1::2, 0] = (rgb[:, :-1:2, 0] + 1) % 256  # make every neighbour differ
    else:
        rgb = np.zeros((size, size, 3), dtype=np.int64)
        rgb[:, size // 2 :] = rng.integers(0, 256, size=3)
    alpha = np.full((size, size, 1), 255)
    buf = io.BytesIO()
    Image.fromarray(np.concatenate([rgb, alpha], -1).astype(np.uint8), "RGBA").save(buf, "PNG")
    return buf.getvalue()


# (path below stamps/, image kind); a caption for each
LAYOUT = [
    *[(f"animals/birds/bird{i}.png", "photo") for i in range(10)],
    *[(f"animals/birds/cartoon/toon{i}.png", "photo") for i in range(3)],  # cartoon wins
    *[(f"animals/mammals/cat{i}.png", "drawing") for i in range(5)],
    ("animals/lone.png", "drawing"),  # no subcategory
    ("town/cartoon/house.png", "photo"),  # a style folder: no subcategory, a drawing
    *[(f"town/roadsigns/sign{i}.png", "drawing") for i in range(4)],
    ("town/roadsigns/tiny.png", "tiny"),  # too few pixels to tell
]


def _stamp_files(layout=LAYOUT) -> dict[str, bytes]:
    files = {}
    for i, (path, kind) in enumerate(layout):
        files[path] = _png("photo", size=8) if kind == "tiny" else _png(kind, seed=i)
        files[path.replace(".png", ".txt")] = f"A stamp {i}.\nfr.utf8=Un tampon {i}.\n".encode()
    files["animals/birds/bird0_mirror.png"] = files["animals/birds/bird0.png"]  # a copy, skipped
    files["animals/birds/vector.svg"] = b"<svg/>"  # skipped
    files["animals/birds/vector.txt"] = b"A vector.\n"
    files["town/roadsigns/sign0.dat"] = b"noflip\n"
    return {f"{stamps.FOLDER}/{k}": v for k, v in files.items()}


@pytest.fixture
def fake_stamps(tmp_path, monkeypatch):
    deb = fake_deb(tmp_path / "tuxpaint-stamps-default_2022_all.deb", _stamp_files())
    monkeypatch.setenv(stamps.DEB_ENV, str(deb))
    monkeypatch.setenv("HYDRANET_DATA_DIR", str(tmp_path / "cache"))
    return deb


def test_stamps_from_fake_package(fake_stamps, capsys):
    spec = resolve_dataset(DataSpec(dataset="stamps"))
    assert spec.numeric == ["width", "height"] and spec.categorical == []
    assert capsys.readouterr().err.startswith(
        f"hydranet: preparing the stamps data set from {fake_stamps}"
    )
    columns = ["image", "width", "height", "caption", "path", *stamps.TASKS]
    tables = load_splits(spec, columns)
    rows = {s: t.num_rows for s, t in tables.items()}
    assert sum(rows.values()) == len(LAYOUT)  # no mirror copy, no SVG
    assert rows == {"train": 21, "validation": 2, "test": 2}
    assert [str(tables["train"].schema.field(c).type) for c in columns] == [
        "binary", "int32", "int32", "string", "string", "string", "string", "int8",
    ]  # fmt: skip
    by_path = {r["path"]: r for t in tables.values() for r in t.to_pylist()}
    assert set(by_path) == {p for p, _ in LAYOUT}
    bird = by_path["animals/birds/bird3.png"]
    assert (bird["category"], bird["subcategory"], bird["photo"]) == ("animals", "birds", 1)
    assert bird["caption"] == "A stamp 3." and (bird["width"], bird["height"]) == (40, 40)
    assert Image.open(io.BytesIO(bird["image"])).format == "PNG"
    toon = by_path["animals/birds/cartoon/toon0.png"]
    assert (toon["subcategory"], toon["photo"]) == ("birds", 0)
    assert by_path["animals/mammals/cat0.png"]["photo"] == 0
    assert by_path["animals/lone.png"]["subcategory"] is None
    house = by_path["town/cartoon/house.png"]
    assert (house["category"], house["subcategory"], house["photo"]) == ("town", None, 0)
    assert by_path["town/roadsigns/tiny.png"]["photo"] is None
    # every (category, subcategory) group has its first row in train
    train_groups = {(r["category"], r["subcategory"]) for r in tables["train"].to_pylist()}
    assert train_groups == {(r["category"], r["subcategory"]) for r in by_path.values()}

    stamp = (data_dir() / "stamps" / "train.parquet").stat().st_mtime_ns
    paths = DATASETS.get("stamps").prepare(data_dir(), {})
    assert paths["train"].stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert capsys.readouterr().err == ""


def test_photo_rule_on_pixels():
    def label(data):
        return stamps.photo_label(Image.open(io.BytesIO(data)))

    assert label(_png("photo")) == 1 and label(_png("drawing")) == 0
    assert label(_png("photo", size=8)) is None  # under 1,000 opaque neighbour pairs
    # a photo with one in five neighbours equal is in the undecided band
    rgb = np.asarray(Image.open(io.BytesIO(_png("photo")))).copy()
    rgb[:, 1::5] = rgb[:, 0:-1:5]
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGBA").save(buf, "PNG")
    assert label(buf.getvalue()) is None


def test_stamps_split_is_a_seeded_partition(fake_stamps):
    table = stamps.read_package(fake_stamps)
    a, b = stamps.split(table), stamps.split(table)
    assert all(a[s].equals(b[s]) for s in a)
    assert sorted(p for t in a.values() for p in t.column("path").to_pylist()) == sorted(
        table.column("path").to_pylist()
    )


def test_stamps_errors(tmp_path):
    files = _stamp_files()
    deb = fake_deb(tmp_path / "bad.deb", {"usr/share/doc/x/copyright": b""})
    with pytest.raises(DataError, match=r"bad\.deb has no PNG stamps under usr/share/tuxpaint"):
        stamps.read_package(deb)
    broken = {**files, f"{stamps.FOLDER}/animals/lone.png": b"GIF89a..."}
    with pytest.raises(DataError, match=r"stamps/animals/lone\.png as an image"):
        stamps.read_package(fake_deb(tmp_path / "bad.deb", broken))


def test_stamps_trains_with_a_masked_subcategory(fake_stamps, tmp_path):
    # from the default (size) features: the stamps without a subcategory are masked
    spec = tmp_path / "stamps.toml"
    spec.write_text(
        """
name = "stamps"
[data]
dataset = "stamps"
[[tasks]]
name = "category"
kind = "multiclass"
[[tasks]]
name = "subcategory"
kind = "multiclass"
[[tasks]]
name = "photo"
kind = "binary"
[model]
architecture = "shared_bottom"
tower = [4]
[train]
epochs = 1
batch_size = 8
"""
    )
    run = hydranet.train(spec, tmp_path / "run")
    assert [t.out_dim for t in run.tasks] == [2, 3, 1]
    assert set(run.evaluate("test")) == set(stamps.TASKS)
