"""``hydranet.spark``: the Spark integration under a short name (needs ``pip install 'hydranet[spark]'``).

``hydranet.spark.predict(run_dir, df)``, ``hydranet.spark.train(spec, df, out, num_processes=2)``,
``HydranetEstimator`` / ``HydranetModel`` for ``pyspark.ml`` pipelines; see
:mod:`hydranet.integrations.spark`, whose ``__all__`` this module re-exports.
"""

from hydranet.integrations import spark as _impl
from hydranet.integrations.spark import *  # noqa: F403

__all__ = list(_impl.__all__)
