"""The MMoE paper's synthetic task pair with a controllable correlation.

Ma et al., "Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts", KDD 2018, section 3.2:

    u1, u2 orthogonal unit vectors;  w1 = c·u1,  w2 = c·(p·u1 + sqrt(1-p²)·u2)
    x ~ N(0, I_d);  y_i = w_iᵀx + Σ_k sin(α_k·w_iᵀx + β_k) + ε_i

with α_k, β_k ~ N(0, 1) shared by both tasks and ε_i ~ N(0, 0.01). The Pearson
correlation of the linear parts w1ᵀx and w2ᵀx is exactly p, which is what makes
this the standard probe of how an architecture copes with task relatedness.

The problem (w1, w2, α, β) depends only on the seed; each split draws its own
rows from an independent stream of the same seed, so train, validation and
test share one problem and never share rows.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from hydranet.errors import UserError
from hydranet.params import Finite, NonNegativeFloat, NonNegativeInt, PositiveInt

# bump when the generator changes, so cached files from an older one are not reused
_VERSION = 1

DEFAULTS: dict[str, Any] = {
    "n_rows": 10_000,
    "n_validation": 1_000,
    "n_test": 1_000,
    "dim": 100,
    "correlation": 0.5,
    "scale": 1.0,
    "n_sines": 10,
    "noise_std": 0.1,
    "seed": 0,
}
# the values each parameter accepts, checked when a Spec is loaded (hydranet.params)
CONSTRAINTS: dict[str, Any] = {
    "n_rows": PositiveInt,
    "n_validation": PositiveInt,
    "n_test": PositiveInt,
    "dim": Annotated[int, Field(ge=2)],  # two orthogonal directions
    "correlation": Annotated[float, Field(ge=-1.0, le=1.0)],
    "scale": Finite,
    "n_sines": NonNegativeInt,
    "noise_std": NonNegativeFloat,
    "seed": NonNegativeInt,  # numpy's SeedSequence takes no negative entropy
}
_SPLITS = {"train": "n_rows", "validation": "n_validation", "test": "n_test"}


@dataclass(frozen=True)
class Problem:
    """The task weights and the shared sine terms of one synthetic problem."""

    w1: np.ndarray  # [dim]
    w2: np.ndarray  # [dim]
    alpha: np.ndarray  # [n_sines]
    beta: np.ndarray  # [n_sines]


def feature_names(dim: int) -> list[str]:
    return [f"x{j}" for j in range(dim)]


def make_problem(
    dim: int = 100,
    correlation: float = 0.5,
    seed: int = 0,
    *,
    scale: float = 1.0,
    n_sines: int = 10,
) -> Problem:
    """Weights with cos(w1, w2) = correlation, from Gram-Schmidt on two Gaussian draws."""
    if dim < 2:
        raise ValueError(f"dim must be at least 2 (two orthogonal directions); got {dim}")
    if not -1.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must be in [-1, 1]; got {correlation}")
    rng = np.random.default_rng([seed, 0])
    a, b = rng.standard_normal((2, dim))
    u1 = a / np.linalg.norm(a)
    b = b - (b @ u1) * u1
    u2 = b / np.linalg.norm(b)
    w1 = scale * u1
    w2 = scale * (correlation * u1 + np.sqrt(1.0 - correlation**2) * u2)
    alpha, beta = rng.standard_normal((2, n_sines))
    return Problem(w1=w1, w2=w2, alpha=alpha, beta=beta)


def generate(
    n_rows: int,
    dim: int = 100,
    correlation: float = 0.5,
    seed: int = 0,
    *,
    scale: float = 1.0,
    n_sines: int = 10,
    noise_std: float = 0.1,
    split: int = 0,
) -> pa.Table:
    """``n_rows`` rows with columns x0..x{dim-1} (float32), y1 and y2 (float64).

    ``split`` picks an independent stream of rows for the same problem (0 = train,
    1 = validation, 2 = test). ``noise_std`` 0.1 is the paper's ε variance of 0.01.
    """
    problem = make_problem(dim, correlation, seed, scale=scale, n_sines=n_sines)
    rng = np.random.default_rng([seed, 1 + split])
    # feature-major [dim, n] so that each column handed to Arrow is contiguous (zero copy)
    x = rng.standard_normal((dim, n_rows), dtype=np.float32)
    w = np.stack([problem.w1, problem.w2]).astype(np.float32)  # [2, dim]
    linear = (w @ x).astype(np.float64)  # [2, n]
    y = linear.copy()
    for a, b in zip(problem.alpha, problem.beta, strict=True):  # n_sines terms, not rows
        y += np.sin(a * linear + b)
    y += noise_std * rng.standard_normal(y.shape)
    cols = dict(zip(feature_names(dim), x, strict=True))
    cols["y1"], cols["y2"] = y[0], y[1]
    return pa.table(cols)


def prepare(data_dir: Path, params: dict[str, Any]) -> dict[str, Path]:
    """Generate (once) the three splits under ``<data_dir>/synthetic/<hash of params>/``."""
    try:
        # typed like the defaults, so dim=4 and dim=4.0 name the same cache entry
        p = {k: type(DEFAULTS[k])(v) for k, v in {**DEFAULTS, **params}.items()}
        make_problem(p["dim"], p["correlation"])
        if min(p[k] for k in _SPLITS.values()) < 1:
            raise ValueError("n_rows, n_validation and n_test must be at least 1")
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"data.params of dataset 'synthetic': {e}") from None
    key = json.dumps({"version": _VERSION, **p}, sort_keys=True)
    out_dir = Path(data_dir) / "synthetic" / hashlib.sha256(key.encode()).hexdigest()[:16]
    paths = {s: out_dir / f"{s}.parquet" for s in _SPLITS}
    if all(path.is_file() for path in paths.values()):
        return paths
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "params.json").write_text(key + "\n")
    for i, (split, n_key) in enumerate(_SPLITS.items()):
        table = generate(
            p[n_key], p["dim"], p["correlation"], p["seed"],
            scale=p["scale"], n_sines=p["n_sines"], noise_std=p["noise_std"], split=i,
        )  # fmt: skip
        tmp = paths[split].with_name(f".{split}.parquet.{os.getpid()}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, paths[split])  # an interrupted run never leaves a half file
    return paths
