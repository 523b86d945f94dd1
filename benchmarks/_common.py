"""Shared helpers of the benchmark scripts: the provenance header, RESULTS.md sections, specs.

Every table in ``benchmarks/RESULTS.md`` sits in a section of its own between
``<!-- BEGIN name -->`` and ``<!-- END name -->`` markers, written by one script
with :func:`write_section`, which replaces that section only (or appends it) and
leaves everyone else's text alone. A section starts with :func:`provenance`: the
command that produced it, the machine, the versions and the date.

Smoke runs (``--smoke``) are for the test suite: tiny data, seconds, and they
must never touch the real RESULTS.md (the tests pass ``--results`` into a
temporary directory; :func:`results_path` refuses the default under ``--smoke``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Before torch loads libgomp: with the default (active) wait policy, two OpenMP threads
# spin at every barrier, and on a shared 2-core machine (other processes running) a
# training step measured 10-18x slower with 2 threads than with 1. Passive waiting
# removes that. setdefault: a caller's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
DEFAULT_RESULTS = BENCH_DIR / "RESULTS.md"
CENSUS_EXAMPLE = ROOT / "examples" / "census.toml"


# ------------------------------------------------------------------ command line
def base_parser(description: str, threads: int = 2) -> argparse.ArgumentParser:
    """The flags every benchmark shares: --smoke, --device, --threads, --results, --out."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="tiny sizes for the test suite (seconds)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument(
        "--threads", type=int, default=threads, help=f"torch intra-op threads (default: {threads})"
    )
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help=f"Markdown file to write the section into (default: {DEFAULT_RESULTS.relative_to(ROOT)}; "
        "--smoke needs an explicit path); '-' prints it only",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="working directory for runs and raw results"
    )
    return p


def results_path(args: argparse.Namespace) -> Path | None:
    """Where the section goes; ``None`` means print only. Smoke runs never get the real file."""
    if args.results is not None and str(args.results) == "-":
        return None
    if args.results is None:
        if args.smoke:
            return None
        return DEFAULT_RESULTS
    if args.smoke and Path(args.results).resolve() == DEFAULT_RESULTS.resolve():
        raise SystemExit(
            "--smoke must not write benchmarks/RESULTS.md; pass --results into a temporary directory"
        )
    return Path(args.results)


def work_dir(args: argparse.Namespace, name: str) -> Path:
    """``--out`` or ``runs/bench/<name>`` (``runs/`` is git-ignored); a temporary one for smoke runs."""
    if args.out is not None:
        path = Path(args.out)
    elif args.smoke:
        path = Path(tempfile.mkdtemp(prefix=f"hydranet-bench-{name}-"))
    else:
        path = ROOT / "runs" / "bench" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed from the repository root, for the section header."""
    args = sys.argv[1:] if argv is None else argv
    script = Path(sys.argv[0])
    try:
        script_s = str(script.resolve().relative_to(ROOT))
    except ValueError:
        script_s = str(script)
    if not script_s.endswith(".py"):  # called as a function (tests)
        script_s = "benchmarks/<script>.py"
    # benchmarks/gpu/run.sh runs the image's python3 with PYTHONPATH=src, not the venv
    python = os.environ.get("HYDRANET_BENCH_PYTHON", ".venv/bin/python")
    return " ".join([python, script_s, *map(shlex.quote, args)])


def report_command(argv: list[str] | None, report_only: bool, rerendered: str) -> str:
    """The section's command; a ``--report-only`` re-render says so (``rerendered``: from what)."""
    command = command_line(argv)
    if not report_only:
        return command
    # the numbers come from the same command without --report-only
    return command.replace(" --report-only", "") + f"` ({rerendered} with `--report-only"


def run_main(main: Callable[[], Any]) -> None:
    """A script's entry point: hydranet's own errors (a bad spec, a missing file) end it with
    one line and exit 2, as the CLI does, instead of a traceback."""
    from hydranet.errors import UserError

    try:
        result = main()
    except UserError as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if isinstance(result, int) and not isinstance(result, bool):
        raise SystemExit(result)


def setup_torch(threads: int, device: str) -> None:
    """Same thread count for everything timed in one process; fail early on a missing GPU.

    On the CPU, glibc's allocator is tuned up front (``hydranet.train._malloc``, as hydranet's
    CPU trainer does), so a peer timed in the same process runs with the same allocator."""
    import torch

    if not device.startswith("cuda"):
        from hydranet.train import _malloc

        _malloc.tune()
    torch.set_num_threads(threads)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: CUDA is not available on this machine")


# ------------------------------------------------------------------ provenance
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """Short HEAD commit, marked when src/ has uncommitted changes."""
    return _git_commit()


def _git_commit() -> str:
    # a copy of the tree without .git (the GPU machine: benchmarks/gpu/run.sh) names the commit
    # prepare.sh recorded where the checkout is
    if os.environ.get("HYDRANET_BENCH_COMMIT"):
        return os.environ["HYDRANET_BENCH_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "src"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        commit = out.stdout.strip() or "unknown"
        return commit + ("+local changes in src/" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        pass
    try:  # importable but not installed (PYTHONPATH=src on the GPU machine)
        return str(__import__(module).__version__)
    except Exception:
        return None


def machine(device: str = "cpu", threads: int | None = None) -> str:
    import torch

    cores = os.cpu_count()
    where = f"{platform.system()} {platform.machine()}, {_cpu_model()}, {cores} cores"
    if device.startswith("cuda") and torch.cuda.is_available():
        where += f", GPU {torch.cuda.get_device_name(torch.device(device))}"
    else:
        where += ", no GPU used"
    if threads is not None:
        where += f", torch threads {threads}"
    where += f", OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    from hydranet.train import _malloc

    if _malloc.tuned():
        where += ", glibc malloc tuned (mmap threshold 32 MiB, trim threshold 1 GiB)"
    try:
        load = os.getloadavg()[0]
        where += (
            f", 1-min load average {load:.1f} when written (the cores are shared with other work)"
        )
    except OSError:
        pass
    return where


def versions(extra: tuple[str, ...] = ()) -> str:
    import numpy
    import torch

    parts = [
        f"python {platform.python_version()}",
        f"torch {torch.__version__}",
        f"numpy {numpy.__version__}",
        f"hydranet {_version('hydranet') or '?'} (git {_git_commit()})",
    ]
    for name in extra:
        v = _version(name)
        parts.append(f"{name} {v if v else 'not installed'}")
    return ", ".join(parts)


def provenance(
    command: str, *, device: str = "cpu", threads: int | None = None, extra: tuple[str, ...] = ()
) -> str:
    """The lines that head every section: command, machine, versions, date."""
    today = _dt.date.today().isoformat()
    # a report_command of a --report-only run opens a parenthesis after the command
    close = ")" if "` (" in command else ""
    return (
        f"Command: `{command}`{close}\n\n"
        f"- Machine: {machine(device, threads)}\n"
        f"- Versions: {versions(extra)}\n"
        f"- Date: {today}\n"
    )


# ------------------------------------------------------------------ RESULTS.md
def _markers(name: str) -> tuple[str, str]:
    if not re.fullmatch(r"[a-z0-9_.-]+", name):
        raise ValueError(
            f"section name must be lower-case letters, digits, '_', '-', '.'; got {name!r}"
        )
    return f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"


def write_section(path: Path | None, name: str, body: str, *, at_top: bool = False) -> str:
    """Replace section ``name`` of ``path`` (or append it); everything else stays byte for byte.

    A new section goes at the end, or with ``at_top`` right under the file's first line
    (its title).

    Returns the section text. ``path=None`` only returns it (print-only runs).
    The file is rewritten through a temporary name and an atomic rename, and
    re-read just before, so a concurrent append by another script is kept.
    """
    begin, end = _markers(name)
    section = f"{begin}\n{body.strip()}\n{end}"
    if path is None:
        return section
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    matches = pattern.findall(text)
    if len(matches) > 1:
        raise RuntimeError(f"{path}: section {name!r} appears {len(matches)} times; fix by hand")
    if matches:
        new = pattern.sub(lambda _m: section, text, count=1)
    elif at_top:
        title, _, rest = text.partition("\n")
        new = title + "\n\n" + section + "\n\n" + rest.lstrip("\n")
    else:
        new = text.rstrip("\n") + "\n\n" + section + "\n"
    if not new.endswith("\n"):
        new += "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(new)
    os.replace(tmp, path)
    return section


ABOUT = """\
Every section below is written by one script in `benchmarks/` and starts with the command that
produced it, the machine, the versions and the date; re-run the command to refresh the section
(a script replaces only its own section, between its `BEGIN`/`END` markers). `make bench-smoke`
runs every script at tiny size into temporary files and never touches this file.

How to read the timings: unless a section says otherwise they come from a 2-core CPU container
**shared with other jobs running at the same time** (each section records the 1-minute load
average when it was written), so absolute rows/s are noisy; ratios measured in one process
(the peer comparison) are the figures to compare. The scripts set `OMP_WAIT_POLICY=PASSIVE`:
with the default active waiting, two OpenMP threads on shared cores made a training step
10-18x slower than one thread.

**GPU figures are pending:** no session so far had a GPU. Every script accepts `--device cuda`;
the H100 rows (census throughput, peer comparison) are still to be measured, in one call on a
machine without network: `benchmarks/gpu/prepare.sh` here, then `benchmarks/gpu/run.sh` there
(15 epochs: 5 leave the income AUC under the 0.940 target, 0.9393 on CPU)."""


def ensure_about(path: Path | None) -> None:
    """The file's opening note (how the sections are made and read), right under the title."""
    if path is not None:
        write_section(path, "about", ABOUT, at_top=True)


# ------------------------------------------------------------------ statistics, tables
def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def run_missing(
    records: list[dict[str, Any]],
    log: Path,
    jobs: list[tuple[Any, ...]],
    run: Callable[..., dict[str, Any]],
    done: Callable[[tuple[Any, ...], dict[str, Any]], bool],
    line: Callable[[dict[str, Any]], str],
) -> None:
    """``run(*job)`` for every job no record is ``done`` for, in order; each new record goes
    into ``log`` as soon as it exists (so a killed sweep resumes where it stopped) and into
    ``records``, and ``line(record)`` is printed."""
    for job in jobs:
        if any(done(job, r) for r in records):
            continue
        rec = run(*job)
        print(line(rec), flush=True)
        append_jsonl(log, rec)
        records.append(rec)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------ census data
def census_data(smoke: bool, scratch: Path) -> dict[str, Any]:
    """The ``[data]`` table of a census spec: the bundled dataset, or for smoke runs a tiny
    random table with the census columns written under ``scratch`` (offline, seconds)."""
    from hydranet.data.datasets import census

    log1p = ["wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks"]
    if not smoke:
        return {"dataset": "census", "log1p": log1p}
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    paths = {}
    for split, n in (("train", 1500), ("validation", 400), ("test", 400)):
        cols: dict[str, Any] = {}
        for c in census.NUMERIC:
            cols[c] = rng.integers(0, 60, size=n)
        for c in census.CATEGORICAL:
            cols[c] = rng.choice(["a", "b", "c", "d"], size=n)
        signal = cols["age"] / 30.0 + (cols[census.CATEGORICAL[0]] == "a")
        cols["income"] = (rng.random(n) < 1 / (1 + np.exp(-(signal - 2.0)))).astype(np.int8)
        cols["marital"] = (rng.random(n) < 1 / (1 + np.exp(-(signal - 1.0)))).astype(np.int8)
        paths[split] = scratch / f"census_smoke_{split}.parquet"
        pq.write_table(pa.table(cols), paths[split])
    return {
        **{k: str(v) for k, v in paths.items()},
        "numeric": list(census.NUMERIC),
        "categorical": list(census.CATEGORICAL),
        "log1p": log1p,
    }


def census_spec(
    data: dict[str, Any],
    architecture: str,
    params: dict[str, Any],
    *,
    epochs: int,
    seed: int,
    device: str,
    threads: int,
    patience: int | None = 5,
):
    """examples/census.toml (the MMoE paper's group 1 protocol) with the trunk, epochs and seed replaced."""
    from hydranet.spec import Spec

    raw = Spec.load(CENSUS_EXAMPLE).to_dict()
    raw["name"] = f"census_{architecture}_s{seed}"
    raw["data"] = {**data}
    raw["model"]["architecture"] = architecture
    raw["model"]["params"] = dict(params)
    raw["train"].update(epochs=epochs, seed=seed, device=device, threads=threads)
    if patience is None:
        raw["train"]["early_stopping"] = None
    else:
        raw["train"]["early_stopping"]["patience"] = patience
    return Spec.from_dict(raw, source=f"{CENSUS_EXAMPLE} (benchmark overrides)")


def train_fresh(spec: Any, out: Path) -> tuple[Any, float]:
    """``hydranet.train(spec, out)`` and its seconds; a directory left at ``out`` is an
    interrupted attempt (finished ones are in results.jsonl and skipped), so it goes first."""
    import hydranet

    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    run = hydranet.train(spec, out, progress=False)
    return run, time.perf_counter() - t0


def mean_rows_per_s(run: Any) -> float | None:
    """The mean training rows/s over a run's epochs (metrics.jsonl), None if none recorded."""
    speeds = [r["rows_per_s"] for r in run.metrics_log if r.get("rows_per_s")]
    return sum(speeds) / len(speeds) if speeds else None
