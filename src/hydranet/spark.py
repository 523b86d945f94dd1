"""``hydranet.spark``: the Spark integration under a short name (needs ``pip install 'hydranet[spark]'``).

``hydranet.spark.predict(run_dir, df)``, ``hydranet.spark.train(spec, df, out, num_processes=2)``,
``HydranetEstimator`` / ``HydranetModel`` for ``pyspark.ml`` pipelines; see
:mod:`hydranet.integrations.spark`.
"""

from hydranet.integrations.spark import (
    HydranetEstimator,
    HydranetModel,
    arrow_batches,
    predict,
    stage_parquet,
    train,
)

__all__ = [
    "HydranetEstimator",
    "HydranetModel",
    "arrow_batches",
    "predict",
    "stage_parquet",
    "train",
]
