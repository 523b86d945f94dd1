import os
import shutil
import sys

from hydranet._process import passive_openmp

# as the CLI does, before torch loads its OpenMP runtime: spin-waiting threads on the shared
# 2-core machine made steps many times slower (importing hydranet no longer sets it)
passive_openmp()

import pytest  # noqa: E402
import torch  # noqa: E402

# keep the suite predictable on the 2-core CI machine
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _auto_device_is_cpu(request, monkeypatch):
    """``train.device = "auto"`` means the CPU in every test but the ``gpu`` ones (and in the
    CLI and torchrun processes they start): the suite's CPU tests mean the same on a machine
    with a GPU. On an H200 they had picked CUDA, and 20 of them failed there, among them the
    DDP tests, which put two ranks on its one GPU. The ``gpu`` tests name ``cuda`` themselves."""
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setenv("HYDRANET_DEVICE", "cpu")


@pytest.fixture
def scratch_results(tmp_path):
    """A temporary RESULTS.md holding one other section, for a benchmark's ``--smoke`` run;
    after the test, the real benchmarks/RESULTS.md must be byte for byte as before."""
    from tests_helpers import BENCH, OTHER_SECTION

    real = BENCH / "RESULTS.md"
    before = real.read_bytes() if real.exists() else None
    path = tmp_path / "RESULTS.md"
    path.write_text(OTHER_SECTION)
    yield path
    assert (real.read_bytes() if real.exists() else None) == before, (
        "a --smoke run changed benchmarks/RESULTS.md"
    )


@pytest.fixture
def one_torch_thread():
    """One torch intra-op thread for the test, restored after it. A module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``: on tiny tensors more
    threads only add overhead and contend on the 2-core CI machine, and beside a streaming
    reader thread two OpenMP threads wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def spark():
    """One local[2] Spark session for every Spark test of the run (a JVM start is ~10-20 s);
    the test is skipped, with the reason, where Java or pyspark is missing."""
    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        pytest.skip("Spark tests need Java 17 (no 'java' on PATH and no JAVA_HOME)")
    pytest.importorskip("pyspark", reason="Spark tests need pyspark: pip install 'hydranet[spark]'")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable  # executors run this venv's Python
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("hydranet-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.driver.memory", "1g")
        # a short-lived JVM: quick start-up beats peak JIT throughput here
        .config("spark.driver.extraJavaOptions", "-XX:+UseSerialGC -XX:TieredStopAtLevel=1")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "128")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    """Bundled datasets go to a per-session temporary cache, never the user's."""
    if "HYDRANET_TEST_REAL_CACHE" not in os.environ:
        monkeypatch.setenv(
            "HYDRANET_DATA_DIR", str(tmp_path_factory.getbasetemp() / "hydranet-cache")
        )


def make_table(n: int, seed: int = 0, missing_frac: float = 0.0):
    """A small learnable table: 3 numeric, 2 categorical features; binary, regression, multiclass labels."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    a, b, c = rng.normal(size=(3, n))
    color = rng.choice(["red", "green", "blue", "black"], size=n)
    size = rng.integers(0, 5, size=n)
    color_effect = np.select([color == "red", color == "green"], [1.0, -1.0], 0.0)
    logit = 1.5 * a - b + color_effect
    click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    value = 2.0 * a + 0.5 * size + rng.normal(scale=0.3, size=n)
    kind = np.where(b + 0.3 * c > 0.5, "x", np.where(a > 0, "y", "z"))
    click_col = pa.array(click, type=pa.int64())
    if missing_frac:
        miss = rng.random(n) < missing_frac
        click_col = pa.array(
            [None if m else int(v) for m, v in zip(miss, click, strict=True)], type=pa.int64()
        )
    return pa.table(
        {
            "a": a,
            "b": b,
            "c": c,
            "color": color,
            "size": size,
            "click": click_col,
            "value": value,
            "kind": kind,
        }
    )


SPEC_TEMPLATE = """
name = "tiny"
[data]
train = "{train}"
validation = "{validation}"
test = "{test}"
numeric = ["a", "b", "c"]
categorical = ["color", "size"]

[[tasks]]
name = "click"
kind = "binary"

[[tasks]]
name = "value"
kind = "regression"

[[tasks]]
name = "kind"
kind = "multiclass"

[model]
architecture = "{arch}"
embedding_dim = 3
tower = [8]

[train]
epochs = {epochs}
batch_size = 64
lr = 0.01
seed = 0
checkpoint_every = {checkpoint_every}
"""


@pytest.fixture
def tiny(tmp_path):
    """Writes train/validation/test Parquet files and returns a spec writer."""
    import pyarrow.parquet as pq

    paths = {}
    for i, (split, n) in enumerate([("train", 600), ("validation", 200), ("test", 200)]):
        paths[split] = tmp_path / f"{split}.parquet"
        pq.write_table(make_table(n, seed=i), paths[split])

    def write_spec(
        arch: str = "mmoe",
        epochs: int = 3,
        checkpoint_every: int = 0,
        extra: str = "",
        name: str = "spec.toml",
    ):
        text = (
            SPEC_TEMPLATE.format(
                arch=arch,
                epochs=epochs,
                checkpoint_every=checkpoint_every,
                **{k: str(v) for k, v in paths.items()},
            )
            + extra
        )
        p = tmp_path / name
        p.write_text(text)
        return p

    write_spec.paths = paths
    write_spec.dir = tmp_path
    return write_spec
