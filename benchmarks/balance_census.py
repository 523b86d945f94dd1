"""Census-Income group 1 with every registered balancer on the example MMoE, against single-task.

The protocol is ``examples/census.toml`` (bundled census data, MMoE 8 experts x 16,
embedding 4, towers [8], Adam lr 2e-3, batch 1024, cosine decay over the epochs
given, early stopping on validation income AUC with best-epoch weights restored)
with only ``balance.method``, ``train.epochs`` and ``train.seed`` replaced; the
single-task baseline is ``examples/census_single_task.toml`` with the same epochs
and seeds. Each method keeps its default parameters and the Spec's default
``rep_grad = false`` (gradient methods use the exact per-task gradients of the
shared parameters), except ``mgda_ub``, which needs ``rep_grad = true`` in the Spec
for the trainer to hand it the shared representation at all. Δm% is :func:`hydranet.evaluate.delta.delta_m` of the mean
test AUCs against the single-task mean test AUCs.

Runs go one at a time (the cores are shared), seed-major: every method gets seed 0
before any gets seed 1, so a cut-short run still covers every method. Each
(method, seed) result is appended to ``<out>/results.jsonl`` as soon as it exists;
re-running the same command skips pairs already done; ``--report-only`` writes
the table from what is there.

    .venv/bin/python benchmarks/balance_census.py --seeds 3 --epochs 8
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

SECTION = "balance-census"
TASKS = ("income", "marital")
BASELINE = "single_task"
SINGLE_TASK_EXAMPLE = C.ROOT / "examples" / "census_single_task.toml"


def methods() -> list[str]:
    from hydranet.balance import BALANCERS

    return BALANCERS.names()


def build_spec(method: str, args, seed: int, data: dict[str, Any]):
    """The example spec (census.toml, or census_single_task.toml for the baseline) with overrides."""
    from hydranet.spec import Spec

    example = SINGLE_TASK_EXAMPLE if method == BASELINE else C.CENSUS_EXAMPLE
    raw = Spec.load(example).to_dict()
    raw["name"] = f"census_{method}_s{seed}"
    raw["data"] = dict(data)
    raw["train"].update(epochs=args.epochs, seed=seed, device=args.device, threads=args.threads)
    if args.smoke:
        raw["train"]["early_stopping"]["patience"] = 1
        raw["model"]["params"] = (
            {"hidden": [8]} if method == BASELINE else {"num_experts": 2, "expert_hidden": [4]}
        )
    if method != BASELINE:
        # mgda_ub is MGDA on the representation gradients by definition, but the trainer hands
        # a balancer the representation only when the Spec says rep_grad = true (otherwise
        # mgda_ub falls back to exact parameter gradients with a warning, i.e. becomes mgda)
        raw["balance"] = {"method": method, "params": {}, "rep_grad": method == "mgda_ub"}
    return Spec.from_dict(raw, source=f"{example} (benchmark overrides)")


def run_one(method: str, args, seed: int, data: dict[str, Any], work: Path) -> dict[str, Any]:

    spec = build_spec(method, args, seed, data)
    out = work / "runs" / f"{method}_s{seed}"
    run, seconds = C.train_fresh(spec, out)
    final = run.final_metrics
    return {
        "method": method,
        "seed": seed,
        "epochs": args.epochs,
        "rep_grad": spec.balance.rep_grad,
        "test": {t: final["test"][t]["auc"] for t in TASKS},
        "validation": {t: final["validation"][t]["auc"] for t in TASKS},
        "best_epoch": final["best_epoch"],
        "epochs_run": final["epochs"],
        "seconds": seconds,
    }


def summarize(records: list[dict[str, Any]], order: list[str]) -> dict[str, dict[str, Any]]:
    from hydranet.evaluate.delta import delta_m

    out: dict[str, dict[str, Any]] = {}
    for method in order:
        rs = [r for r in records if r["method"] == method]
        if not rs:
            continue
        row: dict[str, Any] = {"n": len(rs)}
        for t in TASKS:
            row[t] = C.mean_std([r["test"][t] for r in rs])
        row["best_epoch"] = C.mean_std([r["best_epoch"] for r in rs])[0]
        row["minutes"] = C.mean_std([r["seconds"] / 60 for r in rs])[0]
        out[method] = row
    if BASELINE in out:
        base = {t: {"auc": out[BASELINE][t][0]} for t in TASKS}
        for row in out.values():
            row["delta_m"] = delta_m({t: {"auc": row[t][0]} for t in TASKS}, base)
    return out


def per_seed(records: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, float]]:
    """Mean test AUC per seed over the MMoE runs and of the baseline: a seed where every
    method fails alike (an initialisation, not a balancer) shows here."""
    out_seeds: dict[tuple[str, int], dict[str, float]] = {}
    seeds = sorted({r["seed"] for r in records})
    for seed in seeds:
        for group, pick in (
            ("mtl", lambda m: m != BASELINE),
            ("baseline", lambda m: m == BASELINE),
        ):
            rs = [r for r in records if r["seed"] == seed and pick(r["method"])]
            if rs:
                out_seeds[(group, seed)] = {
                    t: sum(r["test"][t] for r in rs) / len(rs) for t in TASKS
                }
    return out_seeds


def _pm(mean_std: tuple[float, float], n: int) -> str:
    return f"{mean_std[0]:.4f} ± {mean_std[1]:.4f}" if n > 1 else f"{mean_std[0]:.4f} (1 seed)"


def render(
    summary: dict[str, dict[str, Any]],
    order: list[str],
    args,
    command: str,
    seeds_view: dict[tuple[str, int], dict[str, float]] | None = None,
) -> str:
    from hydranet.balance import BALANCERS

    rows = []
    for method, row in summary.items():
        family = "baseline" if method == BASELINE else BALANCERS.get(method).family
        rows.append(
            [
                f"`{method}`",
                family,
                row["n"],
                _pm(row["income"], row["n"]),
                _pm(row["marital"], row["n"]),
                "—" if "delta_m" not in row else f"{row['delta_m']:+.3f}",
                f"{row['best_epoch']:.1f}",
                f"{row['minutes']:.1f}",
            ]
        )
    table = C.markdown_table(
        [
            "method",
            "family",
            "seeds",
            "test income AUC mean ± std",
            "test marital AUC mean ± std",
            "Δm% vs single-task",
            "best epoch (mean)",
            "minutes / run",
        ],
        rows,
    )
    missing = [m for m in order if m not in summary or summary[m]["n"] < args.seeds]
    note = ""
    if missing:
        note = (
            f"\n\n**Incomplete:** fewer than {args.seeds} seeds for: "
            + ", ".join(f"`{m}`" for m in missing)
            + "."
        )
    seed_lines = []
    for group, label in (("mtl", "mean of the MMoE runs (all methods)"), ("baseline", BASELINE)):
        cells = [
            f"seed {seed}: " + ", ".join(f"{t} {v[t]:.4f}" for t in TASKS)
            for (g, seed), v in sorted((seeds_view or {}).items())
            if g == group
        ]
        if cells:
            seed_lines.append(f"- {label}: " + "; ".join(cells))
    if seed_lines:
        note += "\n\nTest AUC per seed:\n\n" + "\n".join(seed_lines)
    return (
        C.provenance(command, device=args.device, threads=args.threads)
        + f"\nProtocol: `examples/census.toml` (MMoE 8 experts x 16, embedding 4, towers [8], Adam "
        f"lr 2e-3, batch 1024) with `balance.method` replaced and **{args.epochs} epochs** (not the "
        f"example's 30; the cosine schedule spans the {args.epochs}), early stopping on validation "
        f"income AUC (patience 5, best-epoch weights restored), seeds 0..{args.seeds - 1}, one run "
        f"at a time. Each method with its default parameters and `rep_grad = false` (except `mgda_ub`, run with `rep_grad = true`: without it the trainer passes no representation and it falls back to exact MGDA). Baseline: "
        f"`examples/census_single_task.toml` with the same epochs and seeds. Test AUC: mean ± sample "
        f"std over the seeds. Δm% = `hydranet.evaluate.delta.delta_m` of the mean test AUCs against "
        f"the single-task mean test AUCs (positive = better than single-task). A best epoch equal to the "
        f"last epoch means validation income AUC was still rising when the {args.epochs} epochs ended. "
        f"Minutes per run are wall time on the shared cores (other jobs running), not a speed "
        f"comparison.\n\n" + table + note
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per method (default 3)")
    p.add_argument(
        "--epochs",
        type=int,
        default=8,
        help="epochs per run (default 8); the cosine schedule spans them",
    )
    p.add_argument(
        "--methods", nargs="+", default=None, help="balancers to run (default: all registered)"
    )
    p.add_argument("--report-only", action="store_true", help="write the table from results.jsonl")
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds, args.epochs = 1, 1
    results = C.results_path(args)  # before any work: a smoke run refuses the real file
    C.setup_torch(args.threads, args.device)
    command = C.report_command(argv, args.report_only, "table re-rendered from results.jsonl")
    order = [BASELINE, *(args.methods or methods())]
    if args.smoke and args.methods is None:
        order = [BASELINE, "ew", "pcgrad"]
    work = C.work_dir(args, "balance_census")
    jsonl = work / "results.jsonl"
    data = C.census_data(args.smoke, work)

    if not args.report_only:
        done = {(r["method"], r["seed"], r["epochs"]) for r in C.read_jsonl(jsonl)}
        for seed in range(args.seeds):
            for method in order:
                if (method, seed, args.epochs) in done:
                    continue
                rec = run_one(method, args, seed, data, work)
                C.append_jsonl(jsonl, rec)
                print(
                    f"{method:12s} seed {seed}: income {rec['test']['income']:.4f} "
                    f"marital {rec['test']['marital']:.4f}  best epoch {rec['best_epoch']}  "
                    f"{rec['seconds']:.0f}s",
                    flush=True,
                )
    records = [
        r
        for r in C.read_jsonl(jsonl)
        if r["epochs"] == args.epochs and r["seed"] < args.seeds and r["method"] in order
    ]
    summary = summarize(records, order)
    section = C.write_section(
        results, SECTION, render(summary, order, args, command, per_seed(records))
    )
    print(section)
    return summary


if __name__ == "__main__":
    C.run_main(main)
