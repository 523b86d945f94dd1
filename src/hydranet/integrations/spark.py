"""Apache Spark: DataFrames in, TorchDistributor training, mapInArrow inference, Spark ML stages.

Needs the ``spark`` extra (``pip install 'hydranet[spark]'``: pyspark 4.x, Java 17).

* **Source.** Training data never goes through the driver. :func:`train` has the executors
  write the needed columns as Parquet (``df.write.parquet``, a staging directory beside the
  run), and the training processes read those files like any Parquet source; with
  ``data.streaming = true`` they read them in bounded chunks, so a DataFrame larger than
  any one machine's memory trains. ``df.toArrow()`` / ``toPandas()`` were rejected: both
  collect the whole table into the driver. For code that wants Arrow record batches on the
  driver, :func:`arrow_batches` streams one partition at a time (``mapInArrow`` packs each
  Arrow batch into an IPC blob on the executors; ``toLocalIterator`` fetches partitions one
  by one), so driver memory is bounded by the largest partition.
* **Training.** ``TorchDistributor(num_processes=N, local_mode=...)`` runs N copies of the
  ordinary Trainer under torchrun (gloo on CPU, NCCL with ``use_gpu``). In local mode every
  rank runs on the driver machine and only one return value comes back, so rank 0 alone
  writes the run and returns its path; the others return None.
* **Inference.** :func:`predict` adds one column per task output (``prediction_<task>``)
  with ``mapInArrow``; each executor Python worker loads the run once (module-level cache)
  and predicts whole Arrow batches.
* **Spark ML.** :class:`HydranetEstimator` / :class:`HydranetModel` are an Estimator and a
  Model; the model is saved with a copy of its run directory, so it drops into a
  ``pyspark.ml.Pipeline`` and a Pipeline save/load round-trips. Model save/load copy files
  with the local filesystem API: on a cluster, save to a path every node mounts.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from hydranet import rundir
from hydranet.data.sources.spark import arrow_batches  # noqa: F401  (public here too)
from hydranet.errors import UserError
from hydranet.spec import Spec

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from hydranet.run import Run

try:
    from pyspark import keyword_only
    from pyspark.ml import Estimator, Model
    from pyspark.ml.param import Param, Params, TypeConverters
    from pyspark.ml.util import (
        DefaultParamsReadable,
        DefaultParamsReader,
        DefaultParamsWritable,
        DefaultParamsWriter,
        MLReadable,
        MLReader,
        MLWritable,
        MLWriter,
    )
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "hydranet's Spark integration needs pyspark 4.x and Java 17: pip install 'hydranet[spark]'"
    ) from e

__all__ = [
    "HydranetEstimator",
    "HydranetModel",
    "arrow_batches",
    "predict",
    "stage_parquet",
    "train",
]

PREFIX = "prediction_"


# ---------------------------------------------------------------- DataFrame as a source
def stage_parquet(df: DataFrame, path: str | Path, columns: list[str] | None = None) -> str:
    """Write ``df`` (only ``columns`` if given) as Parquet files under ``path``; executors write."""
    sel = df.select(*columns) if columns else df
    sel.write.mode("overwrite").parquet(str(path))
    return str(path)


# ---------------------------------------------------------------- training
def _as_spec(spec: Spec | dict | str | Path) -> Spec:
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, dict):
        return Spec.from_dict(spec)
    text = str(spec)
    if text.lstrip().startswith("{"):
        return Spec.from_dict(json.loads(text))
    return Spec.load(text)


def _train_process(spec: dict[str, Any], out: str) -> str | None:
    """What every TorchDistributor process runs: the ordinary training (DDP from torchrun's env)."""
    import os

    import hydranet

    run = hydranet.train(Spec.from_dict(spec), out, progress=False)
    return str(run.path) if int(os.environ.get("RANK", "0")) == 0 else None


def train(
    spec: Spec | dict | str | Path,
    df: DataFrame,
    out: str | Path,
    *,
    validation: DataFrame | None = None,
    test: DataFrame | None = None,
    num_processes: int = 1,
    local_mode: bool = True,
    use_gpu: bool = False,
    staging_dir: str | Path | None = None,
) -> Run:
    """Train ``spec`` on the rows of ``df`` into the run directory ``out``; the Run.

    The needed columns of ``df`` (and of ``validation`` / ``test``) are staged as Parquet in
    ``staging_dir`` (default: ``<out>.data`` beside the run; it stays, since the run's spec
    points at it), then ``num_processes`` ranks train with TorchDistributor (one process:
    in this process). ``train.batch_size`` is the global batch across ranks.
    """
    from hydranet.run import Run
    from hydranet.train.prepare import needed_columns

    spec = _as_spec(spec)
    out = Path(out).resolve()
    staging = Path(staging_dir) if staging_dir is not None else out.with_name(out.name + ".data")
    if spec.data.dataset and not spec.data.numeric and not spec.data.categorical:
        # a bundled dataset's spec (examples/census.toml) names its feature columns through it
        from hydranet.data.datasets import DATASETS

        numeric, categorical = DATASETS.get(spec.data.dataset).feature_columns(spec.data.params)
        data = spec.data.model_copy(update={"numeric": numeric, "categorical": categorical})
        spec = spec.model_copy(update={"data": data})
    columns = list(dict.fromkeys(needed_columns(spec)))
    paths: dict[str, Any] = {
        "dataset": None,
        "validation_fraction": 0.0 if validation is not None else spec.data.validation_fraction,
        "test_fraction": 0.0 if test is not None else spec.data.test_fraction,
    }
    for split, frame in (("train", df), ("validation", validation), ("test", test)):
        if frame is not None:
            missing = [c for c in columns if c not in frame.columns]
            if missing:
                raise UserError(
                    f"column {missing[0]!r} not found in the {split} DataFrame; columns: {', '.join(frame.columns[:40])}"
                )
            paths[split] = stage_parquet(frame, staging / split, columns)
    spec = spec.model_copy(
        update={"data": spec.data.model_copy(update={**paths, "format": "parquet"})}
    )
    spec = Spec.from_dict(spec.to_dict())  # validated again with the staged paths
    if num_processes <= 1 and local_mode:
        return _train_here(spec, out)
    from pyspark.ml.torch.distributor import TorchDistributor

    result = TorchDistributor(
        num_processes=num_processes, local_mode=local_mode, use_gpu=use_gpu
    ).run(_train_process, spec.to_dict(), str(out))
    return Run.load(result or out)


def _train_here(spec: Spec, out: Path) -> Run:
    import hydranet

    return hydranet.train(spec, out, progress=False)


# ---------------------------------------------------------------- inference
_LOADED: dict[str, Run] = {}  # per Python worker: a run is loaded once, then reused by every task


def _cached_run(path: str) -> Run:
    run = _LOADED.get(path)
    if run is None:
        from hydranet.run import Run

        run = _LOADED[path] = Run.load(path)
    return run


def _prediction_fields(run: Run, prefix: str) -> list:
    from pyspark.sql import types as T
    from pyspark.sql.pandas.types import from_arrow_type

    return [
        T.StructField(prefix + f.name, from_arrow_type(f.type))
        for t in run.tasks
        for f in t.output_schema()
    ]


def predict(run_dir: str | Path, df: DataFrame, *, prefix: str = PREFIX) -> DataFrame:
    """``df`` with the run's predictions appended: ``<prefix><task>`` per task (and
    ``<prefix><task>_probs`` for a multiclass task), computed on the executors."""
    from pyspark.sql import types as T

    run_dir = str(Path(str(run_dir).removeprefix("file:")).resolve())
    run = _cached_run(run_dir)
    fields = _prediction_fields(run, prefix)
    clash = [f.name for f in fields if f.name in df.columns]
    if clash:
        raise UserError(
            f"the DataFrame already has a column {clash[0]!r}; pass another prefix (now {prefix!r})"
        )
    schema = T.StructType(list(df.schema.fields) + fields)
    names = [f.name for f in fields]

    def predict_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        run = _cached_run(run_dir)
        for batch in batches:
            if batch.num_rows == 0:
                continue
            table = pa.Table.from_batches([batch])
            preds = run.predict(table)
            for name, column in zip(names, preds.columns, strict=True):
                table = table.append_column(name, column)
            yield from table.to_batches()

    return df.mapInArrow(predict_batches, schema)


# ---------------------------------------------------------------- Spark ML
class _Shared(Params):
    predictionPrefix = Param(
        Params._dummy(),
        "predictionPrefix",
        "prefix of the prediction columns",
        typeConverter=TypeConverters.toString,
    )

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(predictionPrefix=PREFIX)


class HydranetEstimator(Estimator, _Shared, DefaultParamsReadable, DefaultParamsWritable):
    """Spark ML Estimator: ``fit(df)`` trains a Spec on the DataFrame into a :class:`HydranetModel`.

    ``spec``: a Spec, a dict, a path to a spec file or its JSON (stored as JSON, so the
    estimator saves with a Pipeline). ``runDir``: the directory under which each fit makes
    its run (default: the system temporary directory). ``numProcesses`` > 1 trains with
    TorchDistributor.
    """

    spec = Param(
        Params._dummy(), "spec", "the hydranet Spec as JSON", typeConverter=TypeConverters.toString
    )
    runDir = Param(
        Params._dummy(),
        "runDir",
        "directory under which fitted runs are written",
        typeConverter=TypeConverters.toString,
    )
    numProcesses = Param(
        Params._dummy(),
        "numProcesses",
        "training processes (TorchDistributor when > 1)",
        typeConverter=TypeConverters.toInt,
    )

    @keyword_only
    def __init__(
        self,
        *,
        spec: Any = None,
        runDir: str | None = None,
        numProcesses: int = 1,
        predictionPrefix: str = PREFIX,
    ):
        super().__init__()
        import tempfile

        self._setDefault(
            runDir=str(Path(tempfile.gettempdir()) / "hydranet-spark-runs"), numProcesses=1
        )
        kwargs = dict(self._input_kwargs)
        spec = kwargs.get("spec")
        if spec is not None and not (isinstance(spec, str) and spec.lstrip().startswith("{")):
            kwargs["spec"] = json.dumps(
                _as_spec(spec).to_dict()
            )  # a Spec, dict or file, stored as JSON
        self._set(**{k: v for k, v in kwargs.items() if v is not None})

    def _fit(self, dataset: DataFrame) -> HydranetModel:
        if not self.isDefined(self.spec):
            raise UserError("HydranetEstimator needs a spec: HydranetEstimator(spec=...)")
        out = (
            Path(self.getOrDefault(self.runDir))
            / f"{self.uid}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        )
        run = train(
            self.getOrDefault(self.spec),
            dataset,
            out,
            num_processes=self.getOrDefault(self.numProcesses),
        )
        return HydranetModel(
            runDir=str(run.path), predictionPrefix=self.getOrDefault(self.predictionPrefix)
        )


class HydranetModel(Model, _Shared, MLReadable, MLWritable):
    """Spark ML Model of a trained run: ``transform(df)`` appends one prediction column per task."""

    runDir = Param(
        Params._dummy(), "runDir", "the run directory", typeConverter=TypeConverters.toString
    )

    @keyword_only
    def __init__(self, *, runDir: str | None = None, predictionPrefix: str = PREFIX):
        super().__init__()
        self._set(**{k: v for k, v in self._input_kwargs.items() if v is not None})

    def _transform(self, dataset: DataFrame) -> DataFrame:
        return predict(
            self.getOrDefault(self.runDir), dataset, prefix=self.getOrDefault(self.predictionPrefix)
        )

    def write(self) -> MLWriter:
        return _ModelWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return _ModelReader(cls)

    @classmethod
    def load(cls, path: str) -> HydranetModel:
        return cls.read().load(path)


def _local(path: str) -> Path:
    return Path(path.removeprefix("file:"))


class _ModelWriter(DefaultParamsWriter):
    """Params as Spark ML metadata, plus a copy of the run's files under ``<path>/run``."""

    def saveImpl(self, path: str) -> None:
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession)
        src = Path(self.instance.getOrDefault(self.instance.runDir))
        dst = _local(path) / "run"
        dst.mkdir(parents=True, exist_ok=True)
        # every file of the finished run, the manifest included, so that the copy loads
        # (encoders.json) and is verified like the original
        for file in rundir.finished_files(src):
            shutil.copy2(file, dst / file.name)


class _ModelReader(DefaultParamsReader):
    def load(self, path: str) -> HydranetModel:
        model = super().load(path)
        model._set(runDir=str(_local(path) / "run"))  # the saved copy, wherever the save was moved
        return model
