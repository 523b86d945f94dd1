"""Census-Income (KDD) with Apache Spark: a DataFrame in, TorchDistributor training, predictions out.

    python examples/spark_census.py --epochs 2 --out runs/spark-census

Needs ``pip install 'hydranet[spark]'`` and Java 17. The census Parquet files are built once
into ~/.cache/hydranet/census (``hydranet.data.datasets``; set HYDRANET_DATA_DIR to move
them) and read here as Spark DataFrames on ``local[2]``. The spec is examples/census.toml
with ``data.streaming = true``, so the training processes read the staged Parquet in
bounded chunks. Two processes train with TorchDistributor (DDP over gloo; the global batch
is ``train.batch_size``), and ``hydranet.spark.predict`` scores the test DataFrame on the
executors; the predictions are written as Parquet.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--processes", type=int, default=2, help="TorchDistributor processes")
    p.add_argument("--out", default="runs/spark-census", help="run directory (new)")
    p.add_argument(
        "--predictions",
        default=None,
        help="Parquet directory for the test predictions (default: <out>.predictions)",
    )
    args = p.parse_args()

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # executors use this Python
    from pyspark.sql import SparkSession

    import hydranet
    import hydranet.spark
    from hydranet.data.datasets import DATASETS, data_dir

    paths = DATASETS.get("census").prepare(
        data_dir(), {}
    )  # cached Parquet: train, validation, test
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("hydranet-census")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    frames = {split: spark.read.parquet(str(path)) for split, path in paths.items()}

    spec = hydranet.Spec.load(HERE / "census.toml")
    spec.train.epochs = args.epochs
    spec.data.streaming = True
    run = hydranet.spark.train(
        spec,
        frames["train"],
        args.out,
        validation=frames["validation"],
        test=frames["test"],
        num_processes=args.processes,
    )
    for task, metrics in run.final_metrics["test"].items():
        print(f"test {task}: " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

    out = args.predictions or f"{args.out}.predictions"
    scored = hydranet.spark.predict(run.path, frames["test"])
    scored.select("income", "marital", "prediction_income", "prediction_marital").write.mode(
        "overwrite"
    ).parquet(out)
    print(f"wrote {spark.read.parquet(out).count():,} rows of predictions to {out}")
    spark.stop()


if __name__ == "__main__":
    main()
