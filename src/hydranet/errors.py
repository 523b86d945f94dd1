"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (a bad key, a missing file,
a wrong column type). The CLI prints its message on one line and exits 2; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator


class UserError(Exception):
    """An error caused by user input; the message names the culprit and what to do."""


class SpecError(UserError):
    """One or more problems in a Spec, each with its key path."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None):
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        parts = [f"{path}: {msg}" if path else msg for path, msg in problems]
        super().__init__(where + "; ".join(parts))


class DataError(UserError):
    """Bad data: a missing file or column, a wrong type, an empty table."""


def column_report(problems: list[str], names: list[str], where: str) -> str:
    """A DataError's message about columns: one problem is one line ending with the columns
    there are; several are one line each, then the columns on a line of their own (two
    missing columns are two lines, not one)."""
    shown = ", ".join(names[:40]) + (f", ... ({len(names)} in all)" if len(names) > 40 else "")
    if len(problems) == 1:
        return f"{problems[0]}; columns: {shown}"
    return "\n".join([*problems, f"columns of {where}: {shown}"])


class TrainingDiverged(UserError):
    """A loss became NaN or infinite; training stopped and the last good checkpoint is kept."""


class HydranetWarning(UserWarning):
    """Something in the user's data that is legal but likely a mistake (an id column used
    as a categorical feature); training goes on. The CLI prints it as one line."""


def warn(message: str) -> None:
    """Emit ``message`` as a :class:`HydranetWarning`, once per process group: every rank of
    a distributed run sees the same data, so only rank 0 says it."""
    if os.environ.get("RANK", "0") != "0":
        return
    warnings.warn(message, HydranetWarning, stacklevel=3)


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Within the block, a :class:`HydranetWarning` prints as one line on stderr,
    ``hydranet: warning: ...``, once per message; other warnings keep Python's format."""
    with warnings.catch_warnings():
        warnings.simplefilter("default", HydranetWarning)
        plain = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, HydranetWarning):
                print(f"hydranet: warning: {message}", file=sys.stderr, flush=True)
            else:
                plain(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield
