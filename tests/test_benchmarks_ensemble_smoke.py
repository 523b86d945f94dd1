"""benchmarks/ensemble_auc.py on two tiny runs: each member's AUC is the run's own test AUC,
and the ensemble's is the AUC of the mean of their probabilities."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))


def test_members_match_their_runs_and_the_ensemble_averages_them(tiny, tmp_path):
    import ensemble_auc

    import hydranet
    from hydranet.tasks.metrics import auc

    runs = []
    for arch in ("mmoe", "shared_bottom"):
        spec = hydranet.Spec.load(str(tiny(arch=arch, epochs=2, name=f"{arch}.toml")))
        run = hydranet.train(spec, tmp_path / arch, progress=False)
        runs.append(run)
    out = ensemble_auc.main([str(tmp_path / "mmoe"), str(tmp_path / "shared_bottom")])
    assert list(out) == ["click"]  # the binary task only
    for run, member in zip(runs, out["click"]["members"], strict=True):
        assert member == pytest.approx(run.final_metrics["test"]["click"]["auc"], abs=1e-9)
    test = pq.read_table(tiny.paths["test"])
    probs = [r.predict(test).column("click").to_numpy().astype(float) for r in runs]
    labels = test.column("click").to_numpy().astype(float)
    assert out["click"]["ensemble"] == pytest.approx(auc(np.mean(probs, axis=0), labels))
