"""Test AUC of trained runs and of their ensemble (the mean of their predicted probabilities).

    .venv/bin/python benchmarks/ensemble_auc.py RUN_DIR [RUN_DIR ...] [--split test]

Every run must have the same binary tasks; the split's path is the first run's (its
``spec.json``). Prints each member's AUC per task and the ensemble's. Used for the census
section "TabM, and ensembles" of RESULTS.md: whether averaging models that disagree closes the
gap to gradient boosting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import numpy as np  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, dict[str, object]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--split", default="test", choices=["validation", "test"])
    args = p.parse_args(argv)
    import pyarrow.parquet as pq

    from hydranet.run import Run
    from hydranet.tasks.metrics import auc

    spec = json.loads((args.runs[0] / "spec.json").read_text())
    table = pq.read_table(spec["data"][args.split])
    runs = [Run.load(d) for d in args.runs]
    tasks = [t.name for t in runs[0].tasks if t.kind == "binary"]
    predictions = [r.predict(table) for r in runs]  # once per run, every task's column
    out: dict[str, dict[str, object]] = {}
    for t in tasks:
        labels = table.column(t).to_numpy(zero_copy_only=False).astype(float)
        keep = ~np.isnan(labels)
        members = [
            p.column(t).to_numpy(zero_copy_only=False).astype(float)[keep] for p in predictions
        ]
        out[t] = {
            "members": [float(auc(m, labels[keep])) for m in members],
            "ensemble": float(auc(np.mean(members, axis=0), labels[keep])),
        }
        print(
            f"{t}: members "
            + ", ".join(f"{a:.4f}" for a in out[t]["members"])
            + f"; ensemble {out[t]['ensemble']:.4f}"
        )
    return out


if __name__ == "__main__":
    C.run_main(main)
