"""Census-Income group 1 with each numeric encoder: the plain (identity) numeric input
against the numeric embeddings of Gorishniy et al. (NeurIPS 2022), same protocol otherwise.

The protocol is examples/census.toml (MMoE, 8 experts x 16, embedding 4, towers [8], Adam
2e-3, cosine decay, early stopping on validation income AUC, up to 30 epochs) with only the
numeric group's encoder (``[model.encoders.numeric]``) and the seed changed. Each
(encoder, seed) result is appended to ``<out>/results.jsonl`` as soon as it exists and is
skipped when the same command runs again; ``--report-only`` writes the table from what is
there. The table gives mean ± std and best test AUC per task and, per seed, the difference
from the identity encoder of the same seed.

    .venv/bin/python benchmarks/census_encoders.py --seeds 3
    .venv/bin/python benchmarks/census_encoders.py --seeds 1 --trunks single_task shared_bottom cgc ple cross_stitch

``--trunks`` measures the encoders under other trunks (census_paper.py's parameters for
each); the MMoE rows are the example's own trunk.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
from census_paper import SMOKE_PARAMS, TRUNK_PARAMS  # noqa: E402

SECTION = "census-encoders"
TASKS = ("income", "marital")
ENCODERS: dict[str, dict[str, Any]] = {
    "identity": {},
    "piecewise_linear": {},  # the library's defaults: 48 quantile bins, d_embedding 8
    "periodic": {},
}


def _trunk(record: dict[str, Any]) -> str:
    return record.get("trunk", "mmoe")  # records written before --trunks existed are MMoE's


def run_one(
    data: dict, encoder: str, args, seed: int, work: Path, trunk: str = "mmoe"
) -> dict[str, Any]:
    from hydranet.spec import Spec

    spec = C.census_spec(
        data,
        trunk,
        (SMOKE_PARAMS if args.smoke else TRUNK_PARAMS)[trunk],
        epochs=args.epochs,
        seed=seed,
        device=args.device,
        threads=args.threads,
    )
    raw = spec.to_dict()
    raw["name"] = f"census_{trunk}_{encoder}_s{seed}"
    raw["model"]["encoders"] = {"numeric": {"name": encoder, "params": ENCODERS[encoder]}}
    spec = Spec.from_dict(raw, source="census_encoders")
    out = (
        work / "runs" / (f"{encoder}_s{seed}" if trunk == "mmoe" else f"{trunk}_{encoder}_s{seed}")
    )
    run, seconds = C.train_fresh(spec, out)
    final = run.final_metrics
    summary = run.model.parameter_summary()
    return {
        "trunk": trunk,
        "rows_per_s": C.mean_rows_per_s(run),
        "encoder": encoder,
        "seed": seed,
        "test": {t: final["test"][t]["auc"] for t in TASKS},
        "parameters": {**summary, "total": sum(summary.values())},
        "epochs_run": final["epochs"],
        "seconds": seconds,
        "git": C.git_commit(),
    }


def render(records: list[dict[str, Any]], encoders: list[str], args, command: str) -> str:
    trunks = list(dict.fromkeys(["mmoe", *sorted({_trunk(r) for r in records})]))
    rows = []
    for trunk, enc in ((t, e) for t in trunks for e in encoders):
        base = {r["seed"]: r for r in records if r["encoder"] == "identity" and _trunk(r) == trunk}
        rs = sorted(
            (r for r in records if r["encoder"] == enc and _trunk(r) == trunk),
            key=lambda r: r["seed"],
        )
        if not rs:
            continue
        row: list[Any] = [f"`{trunk}`", f"`{enc}`", len(rs), f"{rs[0]['parameters']['encoder']:,}"]
        for t in TASKS:
            vals = [r["test"][t] for r in rs]
            mean, std = C.mean_std(vals)
            row.append(f"{mean:.4f} ± {std:.4f} (best {max(vals):.4f})")
        diffs = [
            r["test"]["income"] - base[r["seed"]]["test"]["income"] for r in rs if r["seed"] in base
        ]
        row.append("—" if enc == "identity" or not diffs else f"{C.mean_std(diffs)[0]:+.4f}")
        speeds = [r["rows_per_s"] for r in rs if r.get("rows_per_s")]
        row.append(f"{C.mean_std(speeds)[0]:,.0f}" if speeds else "")
        row.append(f"{C.mean_std([r['seconds'] / 60 for r in rs])[0]:.1f}")
        rows.append(row)
    table = C.markdown_table(
        [
            "trunk",
            "numeric encoder",
            "seeds",
            "encoder params",
            "test income AUC",
            "test marital AUC",
            "income AUC − identity (paired by seed)",
            "training rows/s",
            "minutes per run",
        ],
        rows,
    )
    per_seed = C.markdown_table(
        ["trunk", "encoder", "seed", "test income AUC", "test marital AUC", "epochs"],
        [
            [
                _trunk(r),
                r["encoder"],
                r["seed"],
                f"{r['test']['income']:.4f}",
                f"{r['test']['marital']:.4f}",
                r["epochs_run"],
            ]
            for r in sorted(
                records,
                key=lambda r: (
                    trunks.index(_trunk(r)),
                    encoders.index(r["encoder"]) if r["encoder"] in encoders else 99,
                    r["seed"],
                ),
            )
        ],
    )
    return "\n".join(
        [
            "## Census: numeric encoders (identity vs piecewise-linear vs periodic)",
            "",
            C.provenance(command, device=args.device, threads=args.threads),
            "",
            "examples/census.toml (MMoE 8 x 16, early stopping on validation income AUC, up to "
            f"{args.epochs} epochs) with only `[model.encoders.numeric]` and the seed changed "
            "(other trunks: census_paper.py's parameters for them); "
            "`piecewise_linear` and `periodic` are `rtdl_num_embeddings` with its defaults "
            "(48 quantile bins, d = 8; 48 frequencies, d = 24, PLR).",
            "",
            table,
            "",
            "<details><summary>per seed</summary>",
            "",
            per_seed,
            "",
            "</details>",
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    p.add_argument(
        "--trunks",
        nargs="+",
        default=["mmoe"],
        choices=list(TRUNK_PARAMS),
        help="trunks to measure (census_paper.py's parameters; default mmoe)",
    )
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds, args.epochs = min(args.seeds, 1), min(args.epochs, 1)
    C.setup_torch(args.threads, args.device)
    work = C.work_dir(args, SECTION)
    log = work / "results.jsonl"
    data = C.census_data(args.smoke, work)
    records = C.read_jsonl(log) if log.exists() else []
    if not args.report_only:
        for seed, trunk, enc in (
            (s, t, e) for s in range(args.seeds) for t in args.trunks for e in args.encoders
        ):
            if any(
                r["encoder"] == enc and r["seed"] == seed and _trunk(r) == trunk for r in records
            ):
                continue
            rec = run_one(data, enc, args, seed, work, trunk)
            print(
                f"{trunk} {enc} seed {seed}: "
                + ", ".join(f"{t} {rec['test'][t]:.4f}" for t in TASKS),
                flush=True,
            )
            C.append_jsonl(log, rec)
            records.append(rec)
    command = C.report_command(argv, args.report_only, "re-rendered")
    body = render(records, args.encoders, args, command)
    print(C.write_section(C.results_path(args), SECTION, body))
    return {"records": records}


if __name__ == "__main__":
    C.run_main(main)
