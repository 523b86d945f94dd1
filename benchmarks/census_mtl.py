"""Census-Income group 1, target-aware (tree) bins: multi-task configurations against one model
per task with the same settings and about the same parameter count, paired by seed (Δm%).

Every configuration is one of the tuned specs (examples/census_tuned.toml, the MMoE;
examples/census_single_task_tuned.toml, one MLP of hidden 80 per task) with the numeric
encoder's bins set to ``tree`` (fitted on the first task's labels, income) and a few spec keys
replaced, listed in ``CONFIGS`` as ``--set`` takes them; only the seed, threads and device are
replaced besides. ``single_task_tree`` (which shares the feature encoder between the tasks'
networks) is the baseline; ``separate_tree`` is two one-task models sharing nothing. Δm% (Maninis et al.; the mean relative
AUC change over tasks) compares each configuration with it seed by seed, and the gap to
LightGBM (section census-gbdt: 0.9531 / 0.9946) is given per task. Each result is appended to
``<out>/results.jsonl`` as soon as it exists and skipped when the same command runs again;
``--report-only`` writes the table from what is there. Several processes may share one
``--out``, each with its own ``--configs``.

    .venv/bin/python benchmarks/census_mtl.py --seeds 3 --threads 1
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
from census_tuned import EXAMPLES, TASKS, delta_m, sweep_main  # noqa: E402

SECTION = "census-mtl"
BASELINE = "single_task_tree"
# LightGBM, 63 leaves, 5 seeds: the reference of section census-gbdt
LIGHTGBM = {"income": 0.9531, "marital": 0.9946}
_TREE = {"model.encoders.numeric.params.bins": "tree"}
_WIDE = {"model.params.hidden": [256, 128], "model.dropout": 0.15}
CONFIGS: dict[str, tuple[Path, dict[str, Any]]] = {
    BASELINE: (EXAMPLES / "census_single_task_tuned.toml", _TREE),
    # the single-task networks (hidden 80) with a learned linear mix of the two tasks' hidden
    # layers (Misra et al., 2016): the same parameters plus a 2 x 2 matrix
    "cross_stitch_tree": (
        EXAMPLES / "census_single_task_tuned.toml",
        {**_TREE, "model.architecture": "cross_stitch"},
    ),
    # the best epoch by the mean of both tasks' validation AUC, not income's alone
    "cross_stitch_tree_mean": (
        EXAMPLES / "census_single_task_tuned.toml",
        {**_TREE, "model.architecture": "cross_stitch", "train.early_stopping.metric": "mean"},
    ),
    # the same networks, wider (two layers, 256 and 128) with more dropout: single-task
    # and cross-stitch at the larger size, for the best single model and Δm% at equal size
    "single_task_tree_wide": (EXAMPLES / "census_single_task_tuned.toml", {**_TREE, **_WIDE}),
    "cross_stitch_tree_wide": (
        EXAMPLES / "census_single_task_tuned.toml",
        {**_TREE, **_WIDE, "model.architecture": "cross_stitch"},
    ),
    "mmoe_tree": (EXAMPLES / "census_tuned.toml", _TREE),
    # income is the task behind LightGBM: half the loss weight on marital
    "mmoe_tree_income_weighted": (
        EXAMPLES / "census_tuned.toml",
        {**_TREE, "balance.method": "static", "tasks.1.weight": 0.5},
    ),
    "mmoe_tree_uw": (EXAMPLES / "census_tuned.toml", {**_TREE, "balance.method": "uw"}),
    # truly separate models, nothing shared (single_task shares the feature encoder): one spec
    # per task, each with its own tree bins; reported together as SEPARATE
    "income_only_tree": (
        EXAMPLES / "census_single_task_tuned.toml",
        {**_TREE, "tasks": [{"name": "income", "kind": "binary"}]},
    ),
    "marital_only_tree": (
        EXAMPLES / "census_single_task_tuned.toml",
        {
            **_TREE,
            "tasks": [{"name": "marital", "kind": "binary"}],
            "train.early_stopping.metric": "marital.auc",
        },
    ),
}
# Δm% is paired with the single-task model of the same size: the baseline, or the row named here
BASELINE_OF = {"cross_stitch_tree_wide": "single_task_tree_wide"}
SEPARATE = "separate_tree"
_HALVES = {"income": "income_only_tree", "marital": "marital_only_tree"}
# the rows of the table: SEPARATE stands for the pair of one-task models
ROWS = [n for n in CONFIGS if n not in _HALVES.values()] + [SEPARATE]


def _merged(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The one-task runs of a seed as one SEPARATE record: each task's AUC from its own
    model, the parameters of both."""
    halves = {(r["model"], r["seed"]): r for r in records}
    out = [r for r in records if r["model"] not in _HALVES.values()]
    for seed in sorted({r["seed"] for r in records}):
        parts = {t: halves.get((m, seed)) for t, m in _HALVES.items()}
        if all(parts.values()):
            out.append(
                {
                    "model": SEPARATE,
                    "seed": seed,
                    "test": {t: parts[t]["test"][t] for t in TASKS},
                    "parameters": sum(p["parameters"] for p in parts.values()),
                    "best_epoch": "+".join(str(parts[t]["best_epoch"]) for t in TASKS),
                    "rows_per_s": None,
                }
            )
    return out


def config_spec(name: str, data: dict, args, seed: int):
    from hydranet.spec import Spec
    from hydranet.spec_keys import assign

    path, sets = CONFIGS[name]
    raw = Spec.load(path).to_dict()
    raw["data"] = {**data}
    for key, value in sets.items():
        assign(raw, key, value, flag="")
    raw["train"].update(seed=seed, device=args.device, threads=args.threads)
    if args.smoke:
        raw["train"]["epochs"] = 1
    return Spec.from_dict(raw, source=f"{path} (benchmark overrides: {name})")


def run_one(data: dict, name: str, args, seed: int, work: Path) -> dict[str, Any]:
    out = work / "runs" / f"{name}_s{seed}"
    run, seconds = C.train_fresh(config_spec(name, data, args, seed), out)
    final = run.final_metrics
    return {
        "model": name,
        "seed": seed,
        "test": {t: final["test"][t]["auc"] for t in TASKS if t in final["test"]},
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "epochs_run": final["epochs"],
        "best_epoch": final["best_epoch"],
        "rows_per_s": C.mean_rows_per_s(run),
        "seconds": seconds,
        "git": C.git_commit(),
    }


def _describe(name: str) -> str:
    if name == SEPARATE:
        return f"`{SEPARATE}` ({', '.join(f'`{m}`' for m in _HALVES.values())}: one model per task)"
    path, sets = CONFIGS[name]
    extra = ", ".join(f"{k} = {v!r}" for k, v in sets.items() if k not in _TREE)
    return f"`{name}` ({path.name}{'; ' + extra if extra else ''})"


def _baselines(records: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, float]]]:
    """For each row, the test AUCs by seed of the single-task model it is compared with."""
    by_seed = {
        b: {r["seed"]: r["test"] for r in records if r["model"] == b}
        for b in {BASELINE, *BASELINE_OF.values()}
    }
    return {name: by_seed[BASELINE_OF.get(name, BASELINE)] for name in ROWS}


def _is_baseline(name: str) -> bool:
    return name in (BASELINE, SEPARATE, *BASELINE_OF.values())


def _verdict(records: list[dict[str, Any]], bases: dict[str, dict[int, dict[str, float]]]) -> str:
    """Issue 15's acceptance 1 (each task at LightGBM's test AUC) and 2 (a multi-task
    configuration with Δm% > 0 against the single-task baseline), from the means above."""
    means = {}
    for name in ROWS:
        rs = [r for r in records if r["model"] == name]
        if rs:
            means[name] = {t: C.mean_std([r["test"][t] for r in rs])[0] for t in TASKS}
    if not means:
        return ""
    parts = []
    for t in TASKS:
        best = max(means, key=lambda n: means[n][t])
        gap = means[best][t] - LIGHTGBM[t]
        parts.append(f"{t} {means[best][t]:.4f} (`{best}`, {gap:+.4f} to LightGBM)")
    reached = all(max(m[t] for m in means.values()) >= LIGHTGBM[t] for t in TASKS)
    lines = [
        f"Acceptance 1 ({'met' if reached else 'not met'}): the best mean test AUC per task is "
        + "; ".join(parts)
        + "."
    ]
    wins = []
    for name in means:
        base = bases[name]
        ds = [
            delta_m(r["test"], base[r["seed"]])
            for r in records
            if r["model"] == name and r["seed"] in base
        ]
        if not _is_baseline(name) and ds and C.mean_std(ds)[0] > 0:
            wins.append(f"`{name}` ({C.mean_std(ds)[0]:+.3f})")
    lines.append(
        "Acceptance 2 ("
        + (
            f"met: mean Δm% > 0 for {', '.join(wins)})."
            if wins
            else "not met): no multi-task configuration has a mean Δm% > 0 against the single-task baseline."
        )
    )
    return " ".join(lines)


def render(records: list[dict[str, Any]], args, command: str) -> str:
    records = _merged(records)
    bases = _baselines(records)
    rows = []
    for name in ROWS:
        rs = sorted((r for r in records if r["model"] == name), key=lambda r: r["seed"])
        if not rs:
            continue
        row: list[Any] = [_describe(name), len(rs), f"{rs[0]['parameters']:,}"]
        for t in TASKS:
            values = [r["test"][t] for r in rs]
            mean, std = C.mean_std(values)
            row.append(f"{mean:.4f} ± {std:.4f} ({', '.join(f'{v:.4f}' for v in values)})")
            row.append(f"{mean - LIGHTGBM[t]:+.4f}")
        base = bases[name]
        deltas = [delta_m(r["test"], base[r["seed"]]) for r in rs if r["seed"] in base]
        if name == BASELINE or name in BASELINE_OF.values():
            row.append("baseline")
        elif deltas:
            mean, std = C.mean_std(deltas)
            paired = f" vs `{BASELINE_OF[name]}`" if name in BASELINE_OF else ""
            row.append(
                f"{mean:+.3f} ± {std:.3f} ({', '.join(f'{d:+.3f}' for d in deltas)}){paired}"
            )
        else:
            row.append("")
        speeds = [r["rows_per_s"] for r in rs if r["rows_per_s"]]
        row.append(f"{C.mean_std(speeds)[0]:,.0f}" if speeds else "")
        row.append(" / ".join(f"{r['best_epoch']}" for r in rs))
        rows.append(row)
    table = C.markdown_table(
        [
            "configuration",
            "seeds",
            "parameters",
            "test income AUC (per seed)",
            "income − LightGBM",
            "test marital AUC (per seed)",
            "marital − LightGBM",
            f"Δm% vs `{BASELINE}` (or the row named), paired by seed",
            "training rows/s",
            "best epoch per seed",
        ],
        rows,
    )
    verdict = _verdict(records, bases)
    # rows trained elsewhere with the same spec, each recorded with where it came from
    adopted: dict[tuple[str, str], list[int]] = {}
    for r in records:
        if r.get("source"):
            adopted.setdefault((r["model"], r["source"]), []).append(r["seed"])
    notes = [
        f"`{m}` seed(s) {', '.join(map(str, sorted(seeds)))} were not trained by this script: {src}."
        for (m, src), seeds in adopted.items()
    ]
    notes = ["", " ".join(notes)] if notes else []
    return "\n".join(
        [
            "## Census: multi-task against one model per task, both with tree bins",
            "",
            C.provenance(command, device=args.device, threads=args.threads),
            "",
            "Every configuration is examples/census_tuned.toml (MMoE) or "
            "examples/census_single_task_tuned.toml (one MLP of hidden 80 per task) with "
            "`model.encoders.numeric.params.bins = 'tree'` (bins fitted on the income labels) and "
            "the keys named in the table replaced; 15 epochs, cosine schedule, the best epoch by "
            "validation income AUC (marital AUC for `marital_only_tree`, the mean of both tasks' AUC "
            "for `*_mean`). `single_task_tree` shares "
            "the feature encoder (categorical embeddings, numeric bins and their linear layers) "
            "between the two task networks; `separate_tree` is two one-task models, nothing "
            "shared. LightGBM: 63 leaves, 5 seeds, section census-gbdt. The runs went one "
            "configuration per process (`--configs NAME`), two to four processes at a time, "
            "with other work on the same 2 cores: rows/s compare only roughly.",
            "",
            table,
            *notes,
            "",
            verdict,
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return sweep_main(
        argv,
        doc=__doc__,
        section=SECTION,
        option="configs",
        names=list(CONFIGS),
        seeds=3,
        run=run_one,
        render=render,
    )


if __name__ == "__main__":
    C.run_main(main)
