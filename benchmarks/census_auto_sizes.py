"""train.batch_size / train.epochs = "auto" on small data: 30,000 census training rows.

examples/census.toml (MMoE, cosine schedule, early stopping on validation income AUC with
patience 5) trained on a random 30,000 rows of the census training split (seed 0), early-stopped
on the full validation split and scored on the full test split, with one torch thread; each
configuration replaces only train.batch_size / train.epochs (and the seed). Best epoch: the
epoch of the best validation income AUC; "ran": epochs trained before early stopping.

    .venv/bin/python benchmarks/census_auto_sizes.py --out /tmp/auto-sizes
    .venv/bin/python benchmarks/census_auto_sizes.py --configs auto,b1024_e30 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
ROWS = 30_000
CONFIGS = {
    "b1024_e30": {"batch_size": 1024, "epochs": 30},  # the census example's
    "auto": {"batch_size": "auto", "epochs": "auto"},
    "b128_auto": {"batch_size": 128, "epochs": "auto"},
    "b512_auto": {"batch_size": 512, "epochs": "auto"},
    "b1024_auto": {"batch_size": 1024, "epochs": "auto"},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/hydranet-census-auto-sizes"))
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--seeds", default="0,1,2")
    args = p.parse_args()
    import hydranet
    from hydranet.spec import Spec
    from hydranet.train.prepare import resolve_spec

    args.out.mkdir(parents=True, exist_ok=True)
    raw = Spec.load(ROOT / "examples" / "census.toml").to_dict()
    data = resolve_spec(Spec.from_dict(raw)).data
    train = args.out / f"train_{ROWS}.parquet"
    if not train.exists():
        table = pq.read_table(data.train)
        keep = np.sort(np.random.default_rng(0).choice(table.num_rows, size=ROWS, replace=False))
        pq.write_table(table.take(keep), train)
    raw["data"].pop("dataset", None)
    raw["data"].update(
        train=str(train),
        validation=data.validation,
        test=data.test,
        numeric=list(data.numeric),
        categorical=list(data.categorical),
    )
    results = args.out / "results.jsonl"
    done = {(r["config"], r["seed"]) for r in _read(results)}
    for name in args.configs.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            if (name, seed) in done:
                continue
            spec = json.loads(json.dumps(raw))
            spec["train"].update(CONFIGS[name], seed=seed, threads=1)
            out = args.out / f"{name}_s{seed}"
            t0 = time.perf_counter()
            run = hydranet.train(Spec.from_dict(spec), out, progress=False)
            seconds = time.perf_counter() - t0
            test = run.evaluate("test")
            epochs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            val = [e["val"]["income"]["auc"] for e in epochs if "val" in e]
            chosen = json.loads((out / "spec.json").read_text())["train"]
            row = {
                "config": name,
                "seed": seed,
                "batch_size": chosen["batch_size"],
                "epochs": chosen["epochs"],
                "ran": len(val),
                "best_epoch": int(np.argmax(val)) + 1,
                "income_auc": test["income"]["auc"],
                "marital_auc": test["marital"]["auc"],
                "seconds": round(seconds, 1),
            }
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
    _report(_read(results))


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _report(rows: list[dict]) -> None:
    print(
        "| config | batch | epochs (cap) | test income AUC | test marital AUC | best epoch | ran |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in CONFIGS:
        rs = sorted((r for r in rows if r["config"] == name), key=lambda r: r["seed"])
        if not rs:
            continue
        inc = [r["income_auc"] for r in rs]
        mar = statistics.mean(r["marital_auc"] for r in rs)
        each = ", ".join(f"{x:.4f}" for x in inc)
        best = ", ".join(str(r["best_epoch"]) for r in rs)
        ran = ", ".join(str(r["ran"]) for r in rs)
        print(
            f"| {name} | {rs[0]['batch_size']} | {rs[0]['epochs']} | "
            f"{statistics.mean(inc):.4f} ({each}) | {mar:.4f} | {best} | {ran} |"
        )


if __name__ == "__main__":
    sys.exit(main())
