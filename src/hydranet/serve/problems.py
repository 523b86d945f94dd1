"""A refused request and the problems collected on the way to refusing it.

The request validation (:mod:`hydranet.serve.validate`) and the row encoders
(:mod:`hydranet.serve.encode`) both report into :class:`Problems`; it lives here so that
neither module imports the other back.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MAX_PROBLEMS", "Problems", "RequestError", "cut", "plain"]

_NAME_CHARS = 80  # a field name echoed in a message is cut to this length
MAX_PROBLEMS = 10  # problems reported per request; the first one is the message


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` and a message naming the culprit.

    ``problems`` lists up to :data:`MAX_PROBLEMS` ``{"row", "field", "message"}``
    entries; the first one is also ``message``, ``field`` and ``row``.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        row: int | None = None,
        problems: list[dict[str, Any]] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.field, self.row = status, message, field, row
        self.problems = problems or [{"row": row, "field": field, "message": message}]

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "status": self.status,
                "message": self.message,
                "field": self.field,
                "row": self.row,
                "problems": self.problems,
            }
        }


class Problems:
    """Every problem counted, the :data:`MAX_PROBLEMS` of the earliest rows kept; raised as one
    RequestError whose message names the earliest and says how many more there are."""

    def __init__(self):
        self.items: list[dict[str, Any]] = []
        self.count = 0

    @property
    def full(self) -> bool:
        return len(self.items) >= MAX_PROBLEMS

    @property
    def room(self) -> int:
        return MAX_PROBLEMS - len(self.items)

    def add(self, row: int | None, field: str | None, message: str) -> None:
        self.count += 1
        item = {"row": row, "field": None if field is None else cut(field), "message": message}
        if not self.full:
            self.items.append(item)
            return
        # groups are checked one after the other: a later group can hold an earlier row
        last = max(range(len(self.items)), key=lambda i: _order(self.items[i]))
        if _order(item) < _order(self.items[last]):
            self.items[last] = item

    def raise_if_any(self) -> None:
        if self.count:
            raise self.error()

    def error(self, status: int = 422) -> RequestError:
        self.items.sort(key=_order)
        first = self.items[0]
        where = f"rows[{first['row']}]" if first["row"] is not None else "rows"
        if first["field"] is not None:
            where += f".{first['field']}"
        more = f" (and {self.count - 1:,} more problem(s))" if self.count > 1 else ""
        return RequestError(
            status,
            f"{where}: {first['message']}{more}",
            field=first["field"],
            row=first["row"],
            problems=self.items,
        )


def _order(item: dict[str, Any]) -> int:
    return -1 if item["row"] is None else item["row"]


def plain(value: Any, n: int = 40) -> str:
    """A value as a user wrote it, for a message: ``1e+300``, not ``np.float64(1e+300)``."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (int, np.integer)):
        return cut(str(int(value)), n)
    return cut(repr(value), n)


def cut(text: str, n: int = _NAME_CHARS) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
