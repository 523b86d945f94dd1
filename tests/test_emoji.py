"""The ``emoji`` bundled dataset, from a tiny generated npm tarball (never the network)."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from collections import Counter

import pytest

import hydranet
from hydranet.data.datasets import DATASETS, data_dir, emoji
from hydranet.data.sources import load_splits, resolve_dataset
from hydranet.errors import DataError
from hydranet.spec import DataSpec

# (category, subcategory, rows); skin tones on every third People & Body row
LAYOUT = [
    ("Smileys & Emotion", "face-smiling", 10),
    ("Smileys & Emotion", "face-sad", 3),
    ("People & Body", "hand-fingers-open", 12),
    ("Flags", "flag", 6),
    ("Component", "skin-tone", 1),
]
N_ROWS = sum(n for _, _, n in LAYOUT)


def _png(width: int, height: int, seed: int) -> bytes:
    """A valid RGBA PNG, written by hand so the fixture needs no Pillow."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    pixel = bytes([seed % 256, 80, 160, 255])
    raw = b"".join(b"\x00" + pixel * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        emoji._PNG_SIGNATURE
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _rows() -> list[dict]:
    rows, order = [], 0
    for category, subcategory, n in LAYOUT:
        for j in range(n):
            order += 1
            row = {
                "name": f"{subcategory.upper()} {j}",
                "unified": f"1F{order:03X}",
                "image": f"1f{order:03x}.png",
                "short_names": [f"{subcategory}_{j}"] + (["alias"] if j == 0 else []),
                "category": category,
                "subcategory": subcategory,
                "sort_order": order,
                "added_in": "13.1" if j % 2 else "0.6",
                "has_img_twitter": True,
            }
            if category == "People & Body" and j % 3 == 0:
                row["skin_variations"] = {"1F3FB": {"image": f"1f{order:03x}-1f3fb.png"}}
            rows.append(row)
    rows.reverse()  # the file's order is not the sort order; the splits follow sort_order
    rows.append({**rows[0], "name": "NO TWITTER ART", "image": "none.png", "sort_order": 999})
    rows[-1]["has_img_twitter"] = False  # skipped: no 64px Twitter image
    return rows


def _fake_tgz(path, rows=None, images=None, version="16.0.0", drop=()):
    rows = _rows() if rows is None else rows
    if images is None:
        images = {r["image"]: _png(64, 64, i) for i, r in enumerate(rows) if r["has_img_twitter"]}
    files = {
        "package/package.json": json.dumps(
            {"name": "emoji-datasource-twitter", "version": version}
        ).encode(),
        "package/emoji.json": json.dumps(rows).encode(),
        "../escape.txt": b"never extracted",  # a hostile member must not be written anywhere
        **{f"package/img/twitter/64/{name}": data for name, data in images.items()},
        "package/img/twitter/64/1f001-1f3fb.png": _png(64, 64, 0),  # a variant, not a row
    }
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            if name in drop:
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def fake_emoji(tmp_path, monkeypatch):
    tgz = _fake_tgz(tmp_path / "emoji-datasource-twitter-16.0.0.tgz")
    monkeypatch.setenv(emoji.TGZ_ENV, str(tgz))
    monkeypatch.setenv("HYDRANET_DATA_DIR", str(tmp_path / "cache"))
    return tgz


def test_emoji_from_fake_package(fake_emoji, tmp_path, capsys):
    spec = resolve_dataset(DataSpec(dataset="emoji"))
    assert (
        spec.numeric == ["added_in"] and spec.categorical == []
    )  # sort_order gives the classes away
    assert capsys.readouterr().err.startswith(
        f"hydranet: preparing the emoji data set from {fake_emoji}"
    )
    columns = ["image", "name", "short_names", "unified", "added_in", "sort_order", *emoji.TASKS]
    tables = load_splits(spec, columns)
    rows = {s: t.num_rows for s, t in tables.items()}
    assert sum(rows.values()) == N_ROWS  # the row without Twitter art is left out
    # one in ten of the rows after each subcategory's first to validation, one to test
    assert rows == {"train": 26, "validation": 3, "test": 3}
    train = tables["train"]
    assert [str(train.schema.field(c).type) for c in columns] == [
        "binary", "string", "string", "string", "double", "int64", "string", "string", "int8",
    ]  # fmt: skip
    everything = [r for t in tables.values() for r in t.to_pylist()]
    assert Counter(r["subcategory"] for r in everything) == {s: n for _, s, n in LAYOUT}
    assert Counter(r["category"] for r in everything) == {
        "Smileys & Emotion": 13, "People & Body": 12, "Flags": 6, "Component": 1,
    }  # fmt: skip
    assert {r["subcategory"] for r in train.to_pylist()} == {s for _, s, _ in LAYOUT}
    assert sum(r["skin_tones"] for r in everything) == 4
    for t in tables.values():
        assert t.column("sort_order").to_pylist() == sorted(t.column("sort_order").to_pylist())
    by_order = {r["sort_order"]: r for r in everything}
    first = by_order[1]
    assert first["name"] == "FACE-SMILING 0" and first["short_names"] == "face-smiling_0 alias"
    assert first["added_in"] == 0.6 and by_order[2]["added_in"] == 13.1
    assert first["image"] == _png(64, 64, N_ROWS - 1)  # the PNG file's bytes, unchanged
    assert by_order[14]["skin_tones"] == 1 and by_order[15]["skin_tones"] == 0
    assert not (tmp_path.parent / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()

    stamp = (data_dir() / "emoji" / "train.parquet").stat().st_mtime_ns
    paths = DATASETS.get("emoji").prepare(data_dir(), {})
    assert paths["train"].stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert capsys.readouterr().err == ""


def test_emoji_split_is_a_seeded_partition(fake_emoji):
    table = emoji.read_package(fake_emoji)
    a, b = emoji.split(table), emoji.split(table)
    assert all(a[s].equals(b[s]) for s in a)
    orders = sorted(o for t in a.values() for o in t.column("sort_order").to_pylist())
    assert orders == list(range(1, N_ROWS + 1))


def test_emoji_errors(tmp_path):
    def err(match, **fake):
        path = _fake_tgz(tmp_path / "bad.tgz", **fake)
        with pytest.raises(DataError, match=match):
            emoji.read_package(path)

    err(
        r"bad\.tgz is emoji-datasource-twitter@15\.1\.2, expected emoji-datasource-twitter@16\.0\.0",
        version="15.1.2",
    )
    err(
        r"bad\.tgz has no file emoji\.json; is it emoji-datasource-twitter@16\.0\.0\?",
        drop={"package/emoji.json"},
    )
    err(
        r"bad\.tgz has no file img/twitter/64/1f001\.png", drop={"package/img/twitter/64/1f001.png"}
    )
    rows = _rows()
    images = {r["image"]: _png(64, 64, 0) for r in rows}
    err(
        r"bad\.tgz:img/twitter/64/1f002\.png is 72x72, expected 64x64",
        rows=rows,
        images={**images, "1f002.png": _png(72, 72, 0)},
    )
    err(
        r"bad\.tgz:img/twitter/64/1f003\.png is not a PNG image",
        rows=rows,
        images={**images, "1f003.png": b"GIF89a..."},
    )
    del rows[3]["category"]
    err(r"bad\.tgz:emoji\.json row 3 has no 'category'", rows=rows, images=images)
    err(r"emoji\.json has no emoji with a Twitter image", rows=[], images={})
    with pytest.raises(DataError, match=r"cannot read emoji package .*missing\.tgz"):
        emoji.read_package(tmp_path / "missing.tgz")
    (tmp_path / "text.tgz").write_text("not a tarball")
    with pytest.raises(DataError, match="cannot read emoji package"):
        emoji.read_package(tmp_path / "text.tgz")


def test_emoji_fetch_errors_name_the_package_and_the_offline_variable(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))  # no npm on the path
    with pytest.raises(
        DataError,
        match=r"could not fetch emoji-datasource-twitter@16\.0\.0: npm is not installed;.*HYDRANET_EMOJI_TGZ",
    ):
        emoji.fetch_package(tmp_path)
    # an npm that fails as it does offline: the last line of its error is the reason
    npm = bin_dir / "npm"
    npm.write_text(
        "#!/bin/sh\necho 'npm error code EAI_AGAIN' >&2\necho 'npm error request to https://registry.npmjs.org failed' >&2\nexit 1\n"
    )
    npm.chmod(0o755)
    with pytest.raises(
        DataError,
        match=r"could not fetch emoji-datasource-twitter@16\.0\.0 with npm: npm error request to https://registry\.npmjs\.org failed; set HYDRANET_EMOJI_TGZ",
    ):
        emoji.fetch_package(tmp_path)


def test_emoji_trains_on_its_default_image_text_and_numeric_features(fake_emoji, tmp_path):
    base = """
name = "emoji"
[data]
dataset = "emoji"
[[tasks]]
name = "category"
kind = "multiclass"
[[tasks]]
name = "subcategory"
kind = "multiclass"
[[tasks]]
name = "skin_tones"
kind = "binary"
[model]
architecture = "shared_bottom"
tower = [4]
[model.encoders.image]
name = "cnn"
params = { channels = [4, 8], out_dim = 4 }
[train]
epochs = 1
batch_size = 8
"""
    spec = tmp_path / "emoji.toml"
    spec.write_text(base)
    run = hydranet.train(spec, tmp_path / "run")
    assert [t.name for t in run.spec.tasks] == emoji.TASKS
    assert [t.out_dim for t in run.tasks] == [4, 5, 1]  # every class of the data set is in train
    groups = {g.name: (g.kind, g.columns) for g in run.spec.feature_groups()}
    assert groups == {
        "image": ("image", ["image"]),
        "text": ("text", ["name", "short_names"]),
        "numeric": ("numeric", ["added_in"]),
    }
    assert run.preprocessor.info()["image"]["shape"] == [1, 3, 64, 64]
    assert set(run.evaluate("test")) == set(emoji.TASKS)
    # a spec that names its own feature columns gets those alone
    spec.write_text(
        base.replace('dataset = "emoji"', 'dataset = "emoji"\nnumeric = ["added_in"]').replace(
            '[model.encoders.image]\nname = "cnn"\nparams = { channels = [4, 8], out_dim = 4 }\n',
            "",
        )
    )
    alone = hydranet.train(spec, tmp_path / "run-numeric")
    assert [g.name for g in alone.spec.feature_groups()] == ["numeric"]
