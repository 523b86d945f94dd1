"""The ``multifashion`` bundled dataset, from a tiny generated Debian package (never the network)."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from hydranet.data.datasets import DATASETS, _deb, data_dir, multifashion
from hydranet.data.sources import load_splits, resolve_dataset
from hydranet.errors import DataError
from hydranet.spec import DataSpec

N_TRAIN, N_TEST = 20, 10


def fake_deb(path, files: dict[str, bytes]):
    """A .deb as dpkg writes it: an ``ar`` archive of debian-binary, control.tar.xz
    and data.tar.xz holding ``files`` (paths below the root, as ``./usr/...``)."""

    def tar(members: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    members = {
        "debian-binary": b"2.0\n",
        "control.tar.xz": tar({"./control": b"Package: fake\n"}),
        "data.tar.xz": tar({f"./{k}": v for k, v in files.items()}),
    }
    out = bytearray(b"!<arch>\n")
    for name, data in members.items():
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


def _idx(values: np.ndarray) -> bytes:
    magic = 0x800 + values.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in values.shape)
    return gzip.compress(header + values.astype(np.uint8).tobytes())


def _fashion_files(n_train=N_TRAIN, n_test=N_TEST, seed=0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    files = {}
    for (images, labels), n in zip(multifashion.FILES.values(), (n_train, n_test), strict=True):
        files[images] = _idx(rng.integers(0, 256, size=(n, 28, 28)))
        files[labels] = _idx(np.arange(n) % 10)
    return {f"{multifashion.FOLDER}/{k}": v for k, v in files.items()}


@pytest.fixture
def fake_fashion(tmp_path, monkeypatch):
    files = {**_fashion_files(), "usr/share/doc/dataset-fashion-mnist/copyright": b"Expat"}
    deb = fake_deb(tmp_path / "dataset-fashion-mnist_0.0_all.deb", files)
    monkeypatch.setenv(multifashion.DEB_ENV, str(deb))
    monkeypatch.setenv("HYDRANET_DATA_DIR", str(tmp_path / "cache"))
    return deb


def _gray(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "L" and image.size == (28, 28)
    return np.asarray(image)


def test_multifashion_from_fake_package(fake_fashion, capsys):
    spec = resolve_dataset(DataSpec(dataset="multifashion"))
    assert capsys.readouterr().err.startswith(
        f"hydranet: preparing the multifashion data set from {fake_fashion}"
    )
    tables = load_splits(spec, ["image", "left", "right"])
    # 10% of the training file held out as validation; the test file is the test split
    assert {s: t.num_rows for s, t in tables.items()} == {"train": 18, "validation": 2, "test": 10}
    assert [str(f.type) for f in tables["train"].schema] == ["binary", "string", "string"]
    test = tables["test"].to_pylist()
    assert [r["left"] for r in test] == multifashion.CLASSES  # file order, labels by name
    assert all(r["right"] in multifashion.CLASSES for r in test)
    for r in test:
        _gray(r["image"])
    everything = Counter(r["left"] for t in tables.values() for r in t.to_pylist())
    assert everything == {c: 3 for c in multifashion.CLASSES}  # 2 from train + 1 from test each

    stamp = (data_dir() / "multifashion" / "train.parquet").stat().st_mtime_ns
    paths = DATASETS.get("multifashion").prepare(data_dir(), {})
    assert paths["train"].stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert capsys.readouterr().err == ""


def test_overlay_puts_left_top_left_and_right_bottom_right():
    # a white and a black image: each row's partner is the other one
    images = np.stack([np.full((28, 28), 255), np.zeros((28, 28))]).astype(np.uint8)
    pngs, left, right = multifashion.overlay(images, np.array([3, 7]), seed=0)
    assert left.tolist() == [3, 7] and right.tolist() == [7, 3]
    white_left, white_right = _gray(pngs[0]), _gray(pngs[1])
    # on the 36x36 canvas a left image covers pixels 4..27 whatever its shift (0..4),
    # a right one 8..31, and neither reaches the far corner; shrunk by 36/28
    # (bilinear, a filter 1.3 canvas pixels wide) that is at least 5..19 and 8..22
    assert white_left[5:20, 5:20].min() == 255 and white_left[-1, -1] == 0
    assert white_right[8:23, 8:23].min() == 255 and white_right[0, 0] == 0
    # overlap is a pixel-wise max: a mid grey under a white image stays white
    grey = np.stack([np.full((28, 28), 255), np.full((28, 28), 100)]).astype(np.uint8)
    both = _gray(multifashion.overlay(grey, np.array([0, 1]), seed=0)[0][0])
    assert both[12:16, 12:16].min() == 255


def test_multifashion_is_seeded(fake_fashion):
    raw = multifashion.read_package(fake_fashion)
    a, b = multifashion.build_splits(raw), multifashion.build_splits(raw)
    assert all(a[s].equals(b[s]) for s in a)
    other = multifashion.overlay(*raw["train"], seed=multifashion.SEED + 5)
    assert other[0] != a["train"].column("image").to_pylist()  # the seed changes the layout


def test_multifashion_errors(tmp_path):
    def err(match, files):
        deb = fake_deb(tmp_path / "bad.deb", files)
        with pytest.raises(DataError, match=match):
            multifashion.read_package(deb)

    files = _fashion_files()
    folder = multifashion.FOLDER
    err(
        r"bad\.deb has no file usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte\.gz; is it dataset-fashion-mnist\?",
        {k: v for k, v in files.items() if not k.endswith("t10k-labels-idx1-ubyte.gz")},
    )
    err(
        r"train-images-idx3-ubyte\.gz is not an IDX file of 3-d unsigned bytes",
        {**files, f"{folder}/train-images-idx3-ubyte.gz": _idx(np.zeros(5))},
    )
    truncated = gzip.compress(gzip.decompress(files[f"{folder}/train-images-idx3-ubyte.gz"])[:-9])
    err(r"is truncated", {**files, f"{folder}/train-images-idx3-ubyte.gz": truncated})
    err(
        r"t10k-images-idx3-ubyte\.gz has 10 images and t10k-labels-idx1-ubyte\.gz 4 labels",
        {**files, f"{folder}/t10k-labels-idx1-ubyte.gz": _idx(np.arange(4))},
    )
    err(
        r"t10k-labels-idx1-ubyte\.gz has label 12, expected 0\.\.9",
        {**files, f"{folder}/t10k-labels-idx1-ubyte.gz": _idx(np.arange(10) + 3)},
    )
    (tmp_path / "text.deb").write_text("not a package")
    with pytest.raises(DataError, match=r"text\.deb is not a Debian package"):
        multifashion.read_package(tmp_path / "text.deb")
    with pytest.raises(DataError, match=r"cannot read Debian package .*missing\.deb"):
        multifashion.read_package(tmp_path / "missing.deb")


def test_deb_fetch_errors_name_the_package_and_the_offline_variable(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))  # no apt-get on the path
    with pytest.raises(
        DataError,
        match=r"could not fetch Debian package dataset-fashion-mnist: apt-get is not installed.*HYDRANET_FASHION_MNIST_DEB",
    ):
        _deb.fetch_deb("dataset-fashion-mnist", tmp_path, multifashion.DEB_ENV)
    # an apt-get without package lists fails like this: its E: line is the reason
    apt = bin_dir / "apt-get"
    apt.write_text(
        "#!/bin/sh\necho 'W: some warning' >&2\necho 'E: Unable to locate package dataset-fashion-mnist' >&2\nexit 100\n"
    )
    apt.chmod(0o755)
    with pytest.raises(
        DataError,
        match=r"with apt-get download: E: Unable to locate package dataset-fashion-mnist \(run apt-get update first\?\); set HYDRANET_FASHION_MNIST_DEB",
    ):
        _deb.fetch_deb("dataset-fashion-mnist", tmp_path, multifashion.DEB_ENV)
