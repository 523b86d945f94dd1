"""Spark integration on a real local[2] session: TorchDistributor training, mapInArrow
inference equal to Run.predict, Arrow batches to the driver, Estimator/Model in a Pipeline.

Skipped (with the reason) when Java or pyspark is missing; `make test` installs pyspark.
"""

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.spark

if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
    pytest.skip(
        "Spark tests need Java 17 (no 'java' on PATH and no JAVA_HOME)", allow_module_level=True
    )
pyspark = pytest.importorskip(
    "pyspark", reason="Spark tests need pyspark: pip install 'hydranet[spark]'"
)

from hydranet import Run  # noqa: E402


@pytest.fixture
def frames(spark, tiny):
    def read(split):
        return spark.read.parquet(str(tiny.paths[split]))

    return tiny, {s: read(s) for s in ("train", "validation", "test")}


def _assert_same_predictions(run: Run, result_pdf, prefix: str = "prediction_") -> None:
    """Run.predict on the very rows Spark returned equals Spark's prediction columns."""
    table = pa.Table.from_pandas(result_pdf[["a", "b", "c", "color", "size"]], preserve_index=False)
    expected = run.predict(table)
    for name in ("click", "value"):
        np.testing.assert_allclose(
            result_pdf[prefix + name].to_numpy(),
            expected.column(name).to_numpy(),
            rtol=0,
            atol=1e-6,
        )
    assert list(result_pdf[prefix + "kind"]) == expected.column("kind").to_pylist()
    np.testing.assert_allclose(
        np.stack(result_pdf[prefix + "kind_probs"].to_numpy()),
        np.stack(expected.column("kind_probs").to_numpy(zero_copy_only=False)),
        atol=1e-6,
    )


def test_torchdistributor_trains_a_run_and_spark_predict_matches_run_predict(frames, tmp_path):
    import hydranet.spark

    tiny, dfs = frames
    spec = tiny(epochs=1)
    run = hydranet.spark.train(
        spec,
        dfs["train"],
        tmp_path / "run",
        validation=dfs["validation"],
        test=dfs["test"],
        num_processes=2,
    )
    assert (run.path / "model.safetensors").is_file()
    assert run.final_metrics["test"]["click"]["auc"] > 0.6
    assert len(run.metrics_log) == 1  # rank 0 alone wrote the log

    scored = hydranet.spark.predict(run.path, dfs["test"].repartition(2))
    pdf = scored.toPandas()
    assert len(pdf) == 200
    _assert_same_predictions(run, pdf)


def test_arrow_batches_stream_the_frame_to_the_driver(frames):
    from hydranet.spark import arrow_batches

    tiny, dfs = frames
    batches = list(arrow_batches(dfs["train"].repartition(3), ["a", "color"]))
    assert len(batches) >= 3  # 600 rows in Arrow batches of at most 128
    table = pa.Table.from_batches(batches)
    expected = pq.read_table(tiny.paths["train"], columns=["a", "color"])
    assert table.num_rows == 600
    assert sorted(table.column("a").to_pylist()) == sorted(expected.column("a").to_pylist())


def test_estimator_and_model_round_trip_through_a_pipeline(frames, tmp_path):
    from pyspark.ml import Pipeline, PipelineModel

    from hydranet.spark import HydranetEstimator, HydranetModel

    tiny, dfs = frames
    est = HydranetEstimator(spec=tiny(epochs=1), runDir=str(tmp_path / "runs"))
    pipeline = Pipeline(stages=[est])
    pipeline.write().overwrite().save(str(tmp_path / "pipeline"))
    assert Pipeline.load(str(tmp_path / "pipeline")).getStages()[0].getOrDefault(
        "spec"
    ) == est.getOrDefault("spec")

    fitted = pipeline.fit(dfs["train"])
    model = fitted.stages[0]
    assert isinstance(model, HydranetModel)
    before = fitted.transform(dfs["test"]).toPandas()
    _assert_same_predictions(Run.load(model.getOrDefault("runDir")), before)

    fitted.write().overwrite().save(str(tmp_path / "fitted"))
    shutil.rmtree(
        model.getOrDefault("runDir")
    )  # the saved pipeline carries its own copy of the run
    loaded = PipelineModel.load(str(tmp_path / "fitted"))
    after = loaded.transform(dfs["test"]).toPandas()
    assert loaded.stages[0].getOrDefault("runDir").startswith(str(tmp_path / "fitted"))
    # the copy is the whole finished run: it loads with its encoders and is verified
    saved = {p.name for p in Path(loaded.stages[0].getOrDefault("runDir")).iterdir()}
    assert {"manifest.json", "encoders.json", "model.safetensors"} <= saved
    assert "checkpoint.safetensors" not in saved
    for col in ("prediction_click", "prediction_value", "prediction_kind"):
        assert before[col].tolist() == after[col].tolist()


def test_predict_refuses_a_column_clash(frames, tmp_path):
    import hydranet
    from hydranet.errors import UserError
    from hydranet.spark import predict

    tiny, dfs = frames
    run = hydranet.train(tiny(epochs=1), tmp_path / "run", progress=False)
    with pytest.raises(UserError, match="'click'"):
        predict(run.path, dfs["test"], prefix="")
