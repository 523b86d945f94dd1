"""Census-Income group 1 with tuned settings: the MMoE a `hydranet tune` study found against one
model per task with the same settings and about the same parameter count, over several seeds.

The specs are examples/census_tuned.toml (MMoE, the best trial of a 30-trial study of
examples/census_tune.toml) and examples/census_single_task_tuned.toml (the same encoder,
embedding size, learning rate, weight decay, dropout and towers; hidden 80 so the parameter
counts match within 1%), with only the seed (and threads, device) replaced. Each result is
appended to ``<out>/results.jsonl`` as soon as it exists and skipped when the same command runs
again; ``--report-only`` writes the table from what is there. Δm% (Maninis et al.; the mean
relative AUC change over tasks) compares the MMoE with the single-task model of the same seed.

    .venv/bin/python benchmarks/census_tuned.py --seeds 5
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

SECTION = "census-tuned"
TASKS = ("income", "marital")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODELS = {
    "mmoe": EXAMPLES / "census_tuned.toml",
    "single_task": EXAMPLES / "census_single_task_tuned.toml",
}


def run_one(data: dict, model: str, args, seed: int, work: Path) -> dict[str, Any]:
    from hydranet.spec import Spec

    raw = Spec.load(MODELS[model]).to_dict()
    raw["data"] = {**data}
    raw["train"].update(seed=seed, device=args.device, threads=args.threads)
    if args.smoke:
        raw["train"]["epochs"] = 1
    spec = Spec.from_dict(raw, source=f"{MODELS[model]} (benchmark overrides)")
    out = work / "runs" / f"{model}_s{seed}"
    run, seconds = C.train_fresh(spec, out)
    final = run.final_metrics
    return {
        "model": model,
        "seed": seed,
        "test": {t: final["test"][t]["auc"] for t in TASKS},
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "epochs_run": final["epochs"],
        "best_epoch": final["best_epoch"],
        "rows_per_s": C.mean_rows_per_s(run),
        "seconds": seconds,
        "git": C.git_commit(),
    }


def delta_m(mtl: dict[str, float], single: dict[str, float]) -> float:
    # every metric here is an AUC (higher is better): the mean relative change, in percent
    return 100.0 * sum((mtl[t] - single[t]) / single[t] for t in TASKS) / len(TASKS)


def render(records: list[dict[str, Any]], args, command: str) -> str:
    rows = []
    for model in MODELS:
        rs = sorted((r for r in records if r["model"] == model), key=lambda r: r["seed"])
        if not rs:
            continue
        row: list[Any] = [f"`{model}` ({MODELS[model].name})", len(rs), f"{rs[0]['parameters']:,}"]
        for t in TASKS:
            mean, std = C.mean_std([r["test"][t] for r in rs])
            row.append(f"{mean:.4f} ± {std:.4f}")
        speeds = [r["rows_per_s"] for r in rs if r["rows_per_s"]]
        row.append(f"{C.mean_std(speeds)[0]:,.0f}" if speeds else "")
        row.append(f"{C.mean_std([r['seconds'] for r in rs])[0]:.0f}")
        row.append(" / ".join(f"{r['best_epoch']}" for r in rs))
        rows.append(row)
    table = C.markdown_table(
        [
            "model",
            "seeds",
            "parameters",
            "test income AUC",
            "test marital AUC",
            "training rows/s",
            "s per run",
            "best epoch per seed",
        ],
        rows,
    )
    single = {r["seed"]: r["test"] for r in records if r["model"] == "single_task"}
    deltas = [
        delta_m(r["test"], single[r["seed"]])
        for r in records
        if r["model"] == "mmoe" and r["seed"] in single
    ]
    delta = ""
    if deltas:
        mean, std = C.mean_std(deltas)
        delta = (
            f"Δm% of the MMoE against the single-task models, paired by seed: {mean:+.3f} ± {std:.3f} "
            f"({', '.join(f'{d:+.3f}' for d in deltas)})."
        )
    return "\n".join(
        [
            "## Census: the tuned MMoE against one model per task with the same settings",
            "",
            C.provenance(command, device=args.device, threads=args.threads),
            "",
            "examples/census_tuned.toml is the best trial (by mean validation AUC) of `hydranet tune "
            "examples/census_tune.toml --trials 30`; examples/census_single_task_tuned.toml has its "
            "settings with one network per task. Only the seed, threads and device are replaced.",
            "",
            table,
            "",
            delta,
        ]
    )


def sweep_main(
    argv: list[str] | None,
    *,
    doc: str,
    section: str,
    option: str,
    names: list[str],
    seeds: int,
    run: Callable[..., dict[str, Any]],
    render: Callable[..., str],
) -> dict[str, Any]:
    """A census sweep's command line: every name of ``--<option>`` for each of ``--seeds``
    seeds, ``run(data, name, args, seed, work)`` for what results.jsonl lacks, then the section
    ``render(records, args, command)`` writes (census_tuned and census_mtl)."""
    p = C.base_parser(doc.splitlines()[0])
    p.add_argument("--seeds", type=int, default=seeds)
    p.add_argument(f"--{option}", nargs="+", default=list(names), choices=list(names))
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds = min(args.seeds, 1)
    C.setup_torch(args.threads, args.device)
    work = C.work_dir(args, section)
    log = work / "results.jsonl"
    data = C.census_data(args.smoke, work)
    records = C.read_jsonl(log) if log.exists() else []
    if not args.report_only:
        C.run_missing(
            records,
            log,
            [(name, seed) for seed in range(args.seeds) for name in getattr(args, option)],
            run=lambda name, seed: run(data, name, args, seed, work),
            done=lambda job, r: (r["model"], r["seed"]) == job,
            line=lambda r: (
                f"{r['model']} seed {r['seed']}: "
                + ", ".join(f"{t} {v:.4f}" for t, v in r["test"].items())
            ),
        )
        # another process may share the log (one configuration each): report all of it
        records = C.read_jsonl(log)
    command = C.report_command(argv, args.report_only, "re-rendered")
    body = render(records, args, command)
    print(C.write_section(C.results_path(args), section, body))
    return {"records": records}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return sweep_main(
        argv,
        doc=__doc__,
        section=SECTION,
        option="models",
        names=list(MODELS),
        seeds=5,
        run=run_one,
        render=render,
    )


if __name__ == "__main__":
    C.run_main(main)
