"""What a study leaves beside its trials: ``trials.csv`` and, with matplotlib, the plots."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydranet.tune import space

TABLE = "trials.csv"
HISTORY_PLOT = "optimization_history.png"
IMPORTANCE_PLOT = "param_importances.png"


_NOTES = ("diverged", "undefined", "surplus")


def rows(study, search: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, epochs, seconds, note, then the parameters."""
    out = []
    for t in study.get_trials(deepcopy=False):
        seconds = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        steps = sorted(t.intermediate_values)
        value = t.value
        if value is None and steps:  # a pruned trial: its last reported value
            value = t.intermediate_values[steps[-1]]
        note = next((t.user_attrs[k] for k in _NOTES if k in t.user_attrs), "")
        if "failed_trial" in t.system_attrs:
            note = f"retry of trial {t.system_attrs['failed_trial']}"
        row = {
            "number": t.number,
            "state": t.state.name.lower(),
            "value": "" if value is None else f"{value:.6g}",
            "epochs": steps[-1] if steps else "",
            "seconds": "" if seconds is None else f"{seconds:.1f}",
            "note": note,
            "worker": t.user_attrs.get("worker", ""),
        }
        params = space.decode(search, t.params)
        row.update({key: _cell(params.get(key)) for key in search})
        out.append(row)
    return out


def _cell(v: Any) -> str:
    return "" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)


def write(study, out: Path, search: dict[str, Any], echo: Callable[[str], None]) -> None:
    table = rows(study, search)
    buf = io.StringIO()
    fields = ["number", "state", "value", "epochs", "seconds", "note", "worker", *search]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    _atomic(out / TABLE, buf.getvalue().encode())
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        echo(
            f"plots skipped: matplotlib is not installed (pip install matplotlib); the table is {out / TABLE}"
        )
        return
    import optuna.visualization.matplotlib as ovm

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    plots = [(HISTORY_PLOT, ovm.plot_optimization_history, 1)]
    plots.append((IMPORTANCE_PLOT, ovm.plot_param_importances, 2))
    for name, plot, needed in plots:
        if len(complete) < needed:
            echo(f"{name} skipped: it needs {needed} complete trials")
            continue
        try:
            ax = plot(study)
        except (ValueError, RuntimeError) as e:  # e.g. importances of a parameter that never varied
            echo(f"{name} skipped: {str(e).splitlines()[0]}")
            continue
        fig = ax.figure
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        _atomic(out / name, buf.getvalue())


def _atomic(path: Path, data: bytes) -> None:
    # several workers may write the report at the end; a reader never sees half of one
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
