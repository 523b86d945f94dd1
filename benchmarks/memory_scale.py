"""Out-of-core training: peak RSS and rows/s of one streamed epoch at growing row counts.

    python benchmarks/memory_scale.py                      # 1M, 5M, 20M rows; writes its section of RESULTS.md
    python benchmarks/memory_scale.py --sizes 1e6 2e6 --dir /data/tmp
    python benchmarks/memory_scale.py --smoke              # tiny sizes, seconds, prints only

Synthetic Parquet (20 numeric float32 + 5 categorical + 3 tasks: binary, regression,
4-class) is generated in chunks (the generator itself holds one chunk), written with
128K-row row groups under ``--dir`` (default /tmp/hydranet-memory-scale, never the repo)
and reused by later runs. Each size trains one epoch with ``data.streaming = true`` in a
fresh subprocess, which reports its own peak RSS (``ru_maxrss``: the fitting pass, the
epoch and the final evaluation together), its RSS right after imports, and the epoch's
rows/s. The target: peak RSS at the largest size <= 1.3 x the peak at the smallest.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_NUM, N_CAT, CARD = 20, 5, [10, 100, 1000, 10_000, 50_000]
ROW_GROUP = 131_072
GEN_CHUNK = 500_000


def generate(path: Path, rows: int, seed: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".tmp")
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(1234).normal(size=(3, N_NUM)).astype(np.float32) / np.sqrt(N_NUM)
    writer = None
    done = 0
    while done < rows:
        n = min(GEN_CHUNK, rows - done)
        x = rng.normal(size=(n, N_NUM)).astype(np.float32)
        cats = [rng.integers(0, c, size=n) for c in CARD]
        effect = (cats[0] % 3 - 1).astype(np.float32) * 0.5
        z = x @ w.T  # [n, 3]
        cols = {f"x{i}": x[:, i] for i in range(N_NUM)}
        cols.update({f"c{i}": cats[i].astype(np.int32) for i in range(N_CAT)})
        cols["click"] = (rng.random(n) < 1 / (1 + np.exp(-(2 * z[:, 0] + effect)))).astype(np.int8)
        cols["value"] = (z[:, 1] + 0.3 * rng.normal(size=n)).astype(np.float32)
        cols["kind"] = np.digitize(z[:, 2] + effect, [-0.5, 0.0, 0.5]).astype(np.int8)
        table = pa.table(cols)
        if writer is None:
            writer = pq.ParquetWriter(str(tmp), table.schema)
        writer.write_table(table, row_group_size=ROW_GROUP)
        done += n
    writer.close()
    os.replace(tmp, path)


def spec_dict(train: Path, validation: Path, out_batch: int) -> dict:
    return {
        "name": "memory_scale",
        "data": {
            "train": str(train), "validation": str(validation),
            "numeric": [f"x{i}" for i in range(N_NUM)], "categorical": [f"c{i}" for i in range(N_CAT)],
            "streaming": True, "shuffle_buffer_rows": 262_144, "chunk_rows": 65_536,
        },
        "tasks": [{"name": "click", "kind": "binary"}, {"name": "value", "kind": "regression"}, {"name": "kind", "kind": "multiclass"}],
        "model": {"architecture": "mmoe", "params": {"num_experts": 4, "expert_hidden": [32]}, "tower": [8]},
        "train": {"epochs": 1, "batch_size": out_batch, "lr": 2e-3, "seed": 0, "threads": 1},
    }  # fmt: skip


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(spec_path: str, out: str) -> None:
    import hydranet

    after_imports = rss_mb()
    spec = hydranet.Spec.from_dict(json.loads(Path(spec_path).read_text()))
    t0 = time.perf_counter()
    run = hydranet.train(spec, out, progress=False)
    wall = time.perf_counter() - t0
    epoch = run.metrics_log[-1]
    print(json.dumps({
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_imports_mb": after_imports,
        "rows_per_s": epoch["rows_per_s"], "epoch_s": epoch["seconds"], "wall_s": wall,
        "val_click_auc": epoch["val"]["click"]["auc"],
    }))  # fmt: skip


def measure(rows: int, data_dir: Path, batch: int) -> dict:
    data_dir.mkdir(parents=True, exist_ok=True)
    train = data_dir / f"train_{rows}.parquet"
    validation = data_dir / "validation_20000.parquet"
    t0 = time.perf_counter()
    if not validation.exists():
        generate(validation, 20_000, seed=1)
    if not train.exists():
        generate(train, rows, seed=0)
    gen_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps(spec_dict(train, validation, batch)))
        cmd = [sys.executable, __file__, "--child", str(spec), str(Path(tmp) / "run")]
        res = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}
        )
        if res.returncode != 0:
            raise SystemExit(f"rows={rows}: child failed\n{res.stderr[-4000:]}")
        result = json.loads(res.stdout.strip().splitlines()[-1])
    result.update(rows=rows, parquet_mb=train.stat().st_size / 2**20, generate_s=gen_s)
    return result


def table(results: list[dict]) -> str:
    base = results[0]["peak_rss_mb"]
    lines = [
        "| rows | Parquet (MB) | peak RSS (MB) | × smallest | RSS after imports (MB) | epoch rows/s | epoch (s) | fit pass + eval (s) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['rows']:,} | {r['parquet_mb']:,.0f} | {r['peak_rss_mb']:,.0f} | {r['peak_rss_mb'] / base:.2f} | "
            f"{r['rss_after_imports_mb']:,.0f} | {r['rows_per_s']:,.0f} | {r['epoch_s']:,.1f} | {r['wall_s'] - r['epoch_s']:,.1f} |"
        )
    return "\n".join(lines)


def write_results(text: str, command: str, path: Path = ROOT / "benchmarks" / "RESULTS.md") -> None:
    """This script's section of RESULTS.md (between its markers; the others stay as they are)."""
    body = (
        "## Out-of-core memory\n\n"
        + C.provenance(command, threads=1)
        + "\nOne epoch of `data.streaming = true` training (MMoE, 4 experts of 32, batch 4096, "
        "shuffle buffer 262,144 rows, 64K-row chunks) over synthetic Parquet with 20 numeric + 5 "
        "categorical features and 3 tasks, each size in a fresh process; peak RSS is the "
        "process's `ru_maxrss` over the streaming fit pass, the epoch and the final evaluation "
        "(20,000 in-memory validation rows). The children train through hydranet's CPU "
        "trainer, so with its glibc malloc settings (`hydranet.train._malloc`: freed memory "
        f"kept for reuse, not returned at once).\n\n{text}\n"
    )
    C.write_section(path, "memory-scale", body)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=float, default=[1e6, 5e6, 20e6])
    p.add_argument(
        "--dir",
        default="/tmp/hydranet-memory-scale",
        help="where the Parquet files go (reused between runs)",
    )
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes in a temporary directory; print, write nothing",
    )
    p.add_argument("--child", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            results = [measure(n, Path(tmp), 512) for n in (5_000, 15_000)]
        print(table(results))
        return
    results = []
    for size in args.sizes:
        r = measure(int(size), Path(args.dir), args.batch_size)
        print(json.dumps(r), flush=True)
        results.append(r)
    text = table(results)
    print(text)
    ratio = results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
    print(f"peak RSS ratio largest/smallest: {ratio:.2f} (target <= 1.3)")
    write_results(
        text
        + f"\n\nPeak RSS at {results[-1]['rows']:,} rows / at {results[0]['rows']:,} rows: **{ratio:.2f}×** (target ≤ 1.3×).",
        ("python benchmarks/memory_scale.py " + " ".join(sys.argv[1:])).strip(),
    )


if __name__ == "__main__":
    main()
