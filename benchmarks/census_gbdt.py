"""Census-Income group 1: LightGBM and XGBoost, one model per task, next to hydranet.

The gradient-boosting peers and hydranet's census example (MMoE) and its single-task baseline,
in one run at one thread count.

Same data for everyone: the split hydranet caches for ``dataset = "census"`` (train,
validation, test), resolved through hydranet's own ``resolve_spec`` of examples/census.toml,
so the peers read the same Parquet files and the same feature columns hydranet trains on.
The peers get the categorical columns as native categoricals (pandas ``category`` dtype,
categories from the training split; a value unseen in training is missing) and the numeric
columns as they are in the files (trees do not need hydranet's log1p and scaling). Each task
(income > 50K, never married; both binary) gets its own booster, early-stopped on that task's
validation AUC. Every model runs with the same thread count (``--threads``, default every
core): LightGBM ``num_threads``, XGBoost ``nthread``, hydranet ``train.threads`` (torch).

Peer hyper-parameters (defaults, not tuned): learning rate 0.05, up to 2000 rounds with early
stopping after 100 rounds without a better validation AUC, row subsample 0.8 every round and
column subsample 0.8 per tree (without them a seed changes nothing and ``--seeds`` would repeat
one run); LightGBM with 31 leaves (its default) and with 63; XGBoost ``hist``, depth 6 (at
most 64 leaves). hydranet: examples/census.toml and examples/census_single_task.toml with only
the data, seed, threads and device replaced. Test AUCs for all of them come from
``hydranet.tasks.auc``. The gap column is each model's mean test AUC minus that of the LightGBM
configuration with the better mean validation AUC on the task.

Fit time is wall time per seed for both tasks: for a peer its ``Dataset``/``DMatrix`` build
and training (the Parquet read and the test prediction are not counted); for hydranet the
whole ``hydranet.train`` call (reading and preparing the data, every epoch's validation pass,
the final evaluation).

Each (model, seed) result is appended to ``<out>/results.jsonl`` as soon as it exists and is
skipped when the same command runs again; ``--report-only`` writes the table from what is there.

    .venv/bin/python benchmarks/census_gbdt.py --seeds 5
    .venv/bin/python benchmarks/census_gbdt.py --rows 20000 --seeds 1   # a quick end-to-end check
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import numpy as np  # noqa: E402

SECTION = "census-gbdt"
TASKS = ("income", "marital")
LEARNING_RATE = 0.05
SUBSAMPLE = 0.8

# name -> (library, label, parameters beyond the shared ones above)
PEERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "lightgbm-31": ("lightgbm", "LightGBM, 31 leaves", {"num_leaves": 31}),
    "lightgbm-63": ("lightgbm", "LightGBM, 63 leaves", {"num_leaves": 63}),
    "xgboost": ("xgboost", "XGBoost, hist, depth 6", {"max_depth": 6}),
}
HYDRANET: dict[str, str] = {
    "mmoe": "census.toml",
    "single_task": "census_single_task.toml",
}
SMOKE_PARAMS: dict[str, dict[str, Any]] = {
    "mmoe": {"num_experts": 2, "expert_hidden": [4]},
    "single_task": {"hidden": [8]},
}
MODELS = [*PEERS, *HYDRANET]


# ------------------------------------------------------------------ data
def resolve_data(args, work: Path) -> dict[str, Any]:
    """The ``[data]`` table every model uses: explicit split paths, feature columns and log1p.

    The bundled census split (or the smoke table) as hydranet resolves it; with ``--rows N``
    a random N training rows and at most N validation and test rows (seed 0), written once
    under ``work``."""
    from hydranet.spec import Spec
    from hydranet.train.prepare import resolve_spec

    raw = Spec.load(C.ROOT / "examples" / HYDRANET["mmoe"]).to_dict()
    raw["data"] = C.census_data(args.smoke, work)
    data = resolve_spec(Spec.from_dict(raw, source="census_gbdt")).data
    resolved = {
        "train": data.train,
        "validation": data.validation,
        "test": data.test,
        "numeric": list(data.numeric),
        "categorical": list(data.categorical),
        "log1p": list(data.log1p),
    }
    if args.rows is None:
        return resolved
    import pyarrow.parquet as pq

    folder = work / f"rows_{args.rows}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split in ("train", "validation", "test"):
        path = folder / f"{split}.parquet"
        if not path.exists():
            table = pq.read_table(resolved[split])
            n = min(args.rows, table.num_rows)
            keep = np.sort(rng.choice(table.num_rows, size=n, replace=False))
            tmp = path.with_name(f".{path.name}.tmp")
            pq.write_table(table.take(keep), tmp)
            os.replace(tmp, path)
        resolved[split] = str(path)
    return resolved


def load_frames(data: dict[str, Any]) -> dict[str, tuple[Any, dict[str, np.ndarray]]]:
    """split -> (features as a pandas DataFrame, labels per task)."""
    import pandas as pd
    import pyarrow.parquet as pq

    columns = data["numeric"] + data["categorical"]
    out = {}
    categories: dict[str, Any] = {}
    for split in ("train", "validation", "test"):  # train first: it fixes the categories
        frame = pq.read_table(data[split], columns=[*columns, *TASKS]).to_pandas()
        for c in data["categorical"]:
            if split == "train":
                categories[c] = pd.Index(sorted(frame[c].dropna().unique()))
            frame[c] = pd.Categorical(frame[c], categories=categories[c])
        labels = {t: frame.pop(t).to_numpy() for t in TASKS}
        out[split] = (frame[columns], labels)
    return out


# ------------------------------------------------------------------ peers
def fit_lightgbm(frames, task: str, extra: dict, seed: int, args) -> dict[str, Any]:
    import lightgbm as lgb

    (x_tr, y_tr), (x_va, y_va) = _xy(frames, "train", task), _xy(frames, "validation", task)
    params = {
        "objective": "binary",
        "metric": "auc",
        "learning_rate": LEARNING_RATE,
        "bagging_fraction": SUBSAMPLE,
        "bagging_freq": 1,
        "feature_fraction": SUBSAMPLE,
        "seed": seed,
        "num_threads": args.threads,
        "verbose": -1,
        **extra,
    }
    t0 = time.perf_counter()
    train = lgb.Dataset(x_tr, label=y_tr)  # pandas category columns: native categoricals
    valid = lgb.Dataset(x_va, label=y_va, reference=train)
    booster = lgb.train(
        params,
        train,
        num_boost_round=args.rounds,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(args.early_stopping, verbose=False)],
    )
    seconds = time.perf_counter() - t0
    best = booster.best_iteration or booster.current_iteration()

    def predict(split: str) -> np.ndarray:
        return booster.predict(frames[split][0], num_iteration=best)

    return _scores(frames, task, predict, best, seconds)


def fit_xgboost(frames, task: str, extra: dict, seed: int, args) -> dict[str, Any]:
    import xgboost as xgb

    (x_tr, y_tr), (x_va, y_va) = _xy(frames, "train", task), _xy(frames, "validation", task)
    params = {
        "objective": "binary:logistic",
        "eval_metric": "auc",
        "tree_method": "hist",
        "learning_rate": LEARNING_RATE,
        "subsample": SUBSAMPLE,
        "colsample_bytree": SUBSAMPLE,
        "seed": seed,
        "nthread": args.threads,
        **extra,
    }
    t0 = time.perf_counter()
    train = xgb.DMatrix(x_tr, label=y_tr, enable_categorical=True, nthread=args.threads)
    valid = xgb.DMatrix(x_va, label=y_va, enable_categorical=True, nthread=args.threads)
    booster = xgb.train(
        params,
        train,
        num_boost_round=args.rounds,
        evals=[(valid, "validation")],
        early_stopping_rounds=args.early_stopping,
        verbose_eval=False,
    )
    seconds = time.perf_counter() - t0
    best = booster.best_iteration + 1

    def predict(split: str) -> np.ndarray:
        m = xgb.DMatrix(frames[split][0], enable_categorical=True, nthread=args.threads)
        return booster.predict(m, iteration_range=(0, best))

    return _scores(frames, task, predict, best, seconds)


def _xy(frames, split: str, task: str):
    x, labels = frames[split]
    return x, labels[task]


def _scores(frames, task: str, predict, rounds: int, seconds: float) -> dict[str, Any]:
    from hydranet.tasks import auc

    return {
        "test": auc(predict("test"), frames["test"][1][task]),
        "validation": auc(predict("validation"), frames["validation"][1][task]),
        "rounds": int(rounds),
        "seconds": seconds,
    }


def run_peer(name: str, frames, seed: int, args) -> dict[str, Any]:
    library, _label, extra = PEERS[name]
    fit = fit_lightgbm if library == "lightgbm" else fit_xgboost
    per_task = {t: fit(frames, t, extra, seed, args) for t in TASKS}
    return {
        "model": name,
        "seed": seed,
        "test": {t: per_task[t]["test"] for t in TASKS},
        "validation": {t: per_task[t]["validation"] for t in TASKS},
        "rounds": {t: per_task[t]["rounds"] for t in TASKS},
        "seconds": sum(r["seconds"] for r in per_task.values()),
    }


# ------------------------------------------------------------------ hydranet
def hydranet_spec(name: str, data: dict, seed: int, args):
    from hydranet.spec import Spec

    example = C.ROOT / "examples" / HYDRANET[name]
    raw = Spec.load(example).to_dict()
    raw["name"] = f"census_gbdt_{name}_s{seed}"
    raw["data"] = dict(data)
    raw["train"].update(seed=seed, device=args.device, threads=args.threads)
    if args.epochs is not None:
        raw["train"]["epochs"] = args.epochs
    if args.smoke:
        raw["model"]["params"] = dict(SMOKE_PARAMS[name])
        raw["train"]["early_stopping"]["patience"] = 1
    return Spec.from_dict(raw, source=f"{example} (benchmark overrides)")


def run_hydranet(name: str, data: dict, seed: int, args, work: Path) -> dict[str, Any]:

    spec = hydranet_spec(name, data, seed, args)
    out = work / "runs" / f"{name}_s{seed}"
    run, seconds = C.train_fresh(spec, out)
    final = run.final_metrics
    return {
        "model": name,
        "seed": seed,
        "test": {t: final["test"][t]["auc"] for t in TASKS},
        "validation": {t: final["validation"][t]["auc"] for t in TASKS},
        "best_epoch": final["best_epoch"],
        "epochs_run": final["epochs"],
        "parameters": sum(run.model.parameter_summary().values()),
        "seconds": seconds,
        "git": C.git_commit(),
    }


# ------------------------------------------------------------------ report
def summarize(records: list[dict[str, Any]], models: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in models:
        rs = [r for r in records if r["model"] == name]
        if not rs:
            continue
        row: dict[str, Any] = {"n": len(rs), "seconds": C.mean_std([r["seconds"] for r in rs])}
        for split in ("test", "validation"):
            row[split] = {t: C.mean_std([r[split][t] for r in rs]) for t in TASKS}
        if name in PEERS:
            row["size"] = {t: C.mean_std([r["rounds"][t] for r in rs])[0] for t in TASKS}
        else:
            row["size"] = {
                "best_epoch": C.mean_std([r["best_epoch"] for r in rs])[0],
                "epochs_run": C.mean_std([r["epochs_run"] for r in rs])[0],
            }
            row["parameters"] = rs[0]["parameters"]
        out[name] = row
    # the reference per task: the LightGBM configuration chosen on validation, as a user would
    lgbm = [n for n in out if PEERS.get(n, ("",))[0] == "lightgbm"]
    ref = {t: max(lgbm, key=lambda n: out[n]["validation"][t][0]) if lgbm else None for t in TASKS}
    for row in out.values():
        row["gap"] = {
            t: None if ref[t] is None else row["test"][t][0] - out[ref[t]]["test"][t][0]
            for t in TASKS
        }
    return {"models": out, "reference": ref}


def _label(name: str) -> str:
    if name in PEERS:
        return PEERS[name][1]
    return f"hydranet `{name}` (examples/{HYDRANET[name]})"


def render(summary: dict[str, Any], args, data: dict, n_rows: dict, command: str) -> str:
    models, ref = summary["models"], summary["reference"]
    rows = []
    for name, row in models.items():
        size = row["size"]
        if name in PEERS:
            fitted = f"{size['income']:.0f} / {size['marital']:.0f} rounds"
        else:
            fitted = (
                f"{size['best_epoch']:.1f} / {size['epochs_run']:.1f} epochs "
                f"({row['parameters']:,} params)"
            )
        cells: list[Any] = [_label(name), row["n"]]
        for t in TASKS:
            mean, std = row["test"][t]
            gap = row["gap"][t]
            cells.append(f"{mean:.4f} ± {std:.4f}")
            cells.append("—" if gap is None else ("reference" if name == ref[t] else f"{gap:+.4f}"))
        cells += [f"{row['seconds'][0]:.1f}", fitted]
        rows.append(cells)
    table = C.markdown_table(
        [
            "model",
            "seeds",
            "test income AUC (mean ± std)",
            "income gap to LightGBM",
            "test marital AUC (mean ± std)",
            "marital gap to LightGBM",
            "fit s per seed (both tasks)",
            "best round income / marital, or best epoch / epochs run",
        ],
        rows,
    )
    references = ", ".join(f"{t}: {_label(ref[t])}" for t in TASKS if ref[t] is not None)
    if args.smoke:
        rows_note = "a random census-shaped table (`--smoke`), not"
    elif args.rows is None:
        rows_note = "all of"
    else:
        rows_note = f"a random subset (`--rows {args.rows}`, seed 0) of"

    return "\n".join(
        [
            "## Census: gradient-boosting peers, one model per task, next to hydranet",
            "",
            C.provenance(
                command,
                device=args.device,
                threads=args.threads,
                extra=("lightgbm", "xgboost", "pandas"),
            ),
            "",
            f"Threads: every model ran with {args.threads} thread(s) (LightGBM `num_threads`, "
            f"XGBoost `nthread`, hydranet `train.threads`). Peers on the CPU; hydranet on "
            f"`{args.device}`. Data: {rows_note} hydranet's census group-1 split, "
            f"{n_rows['train']:,} training, {n_rows['validation']:,} validation and "
            f"{n_rows['test']:,} test rows; {len(data['numeric'])} numeric columns as they are, "
            f"{len(data['categorical'])} categorical columns as native categoricals. Peers: "
            f"learning rate {LEARNING_RATE}, up to {args.rounds} rounds, early stopping after "
            f"{args.early_stopping} rounds on the task's validation AUC, row and column "
            f"subsample {SUBSAMPLE}, seeds 0..{args.seeds - 1}; hydranet: the example specs "
            f"with their own early stopping (validation income AUC). Gap = mean test AUC minus "
            f"the mean test AUC of the LightGBM configuration with the better mean validation "
            f"AUC on the task ({references}). Fit time as in the script's docstring.",
            "",
            table,
        ]
    )


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    # the cores this process may use (a container's CPU set), not the host's count
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    p = C.base_parser(__doc__.splitlines()[0], threads=cores or 1)
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per model (default 5)")
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--rounds", type=int, default=2000, help="peers' most boosting rounds")
    p.add_argument(
        "--early-stopping", type=int, default=100, help="peers' rounds without improvement"
    )
    p.add_argument(
        "--epochs", type=int, default=None, help="hydranet's epochs (default: the example's)"
    )
    p.add_argument(
        "--rows", type=int, default=None, help="a random subset of this many rows per split"
    )
    p.add_argument("--report-only", action="store_true", help="write the table from results.jsonl")
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds, args.rounds, args.early_stopping = 1, min(args.rounds, 20), 5
        args.epochs = 1
    libraries = {PEERS[m][0] for m in args.models if m in PEERS}
    for lib in sorted(libraries):
        try:
            __import__(lib)
        except ImportError as e:
            raise SystemExit(f"{lib} is not installed ({e}); pip install -e '.[bench]'") from None
    C.setup_torch(args.threads, args.device)
    command = C.report_command(argv, args.report_only, "re-rendered")
    work = C.work_dir(args, "census_gbdt")
    data = resolve_data(args, work)
    log = work / "results.jsonl"
    # a record is reused only by the same settings (the thread count changes the fit time)
    key = {
        "rows": args.rows,
        "rounds": args.rounds,
        "early_stopping": args.early_stopping,
        "epochs": args.epochs,
        "threads": args.threads,
        "device": args.device,
    }
    records = [r for r in C.read_jsonl(log) if r.get("key") == key]
    frames = None
    if not args.report_only:
        for seed in range(args.seeds):
            for name in args.models:
                if any(r["model"] == name and r["seed"] == seed for r in records):
                    continue
                if name in PEERS:
                    frames = frames if frames is not None else load_frames(data)
                    rec = run_peer(name, frames, seed, args)
                else:
                    rec = run_hydranet(name, data, seed, args, work)
                rec["key"] = key
                C.append_jsonl(log, rec)
                records.append(rec)
                print(
                    f"{name:12s} seed {seed}: "
                    + ", ".join(f"{t} {rec['test'][t]:.4f}" for t in TASKS)
                    + f"  {rec['seconds']:.1f}s",
                    flush=True,
                )
    records = [r for r in records if r["seed"] < args.seeds and r["model"] in args.models]
    summary = summarize(records, args.models)
    import pyarrow.parquet as pq

    n_rows = {s: pq.ParquetFile(data[s]).metadata.num_rows for s in ("train", "validation", "test")}
    body = render(summary, args, data, n_rows, command)
    path = C.results_path(args)
    C.ensure_about(path)
    print(C.write_section(path, SECTION, body))
    return {**summary, "records": records}


if __name__ == "__main__":
    C.run_main(main)
