"""A refused request and the problems collected on the way to refusing it.

The request validation (:mod:`hydranet.serve.validate`) and the row encoders
(:mod:`hydranet.serve.encode`) both report into :class:`Problems`; it lives here so that
neither module imports the other back.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_PROBLEMS", "Problems", "RequestError", "cut"]

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
    """Up to MAX_PROBLEMS ``{row, field, message}`` entries; raised as one RequestError."""

    def __init__(self):
        self.items: list[dict[str, Any]] = []

    @property
    def full(self) -> bool:
        return len(self.items) >= MAX_PROBLEMS

    @property
    def room(self) -> int:
        return MAX_PROBLEMS - len(self.items)

    def add(self, row: int | None, field: str | None, message: str) -> None:
        if not self.full:
            self.items.append(
                {"row": row, "field": None if field is None else cut(field), "message": message}
            )

    def raise_if_any(self) -> None:
        if not self.items:
            return
        # groups are checked one after the other: the message names the earliest row
        self.items.sort(key=lambda p: -1 if p["row"] is None else p["row"])
        first = self.items[0]
        where = f"rows[{first['row']}]" if first["row"] is not None else "rows"
        if first["field"] is not None:
            where += f".{first['field']}"
        more = f" (and {len(self.items) - 1} more problem(s))" if len(self.items) > 1 else ""
        raise RequestError(
            422,
            f"{where}: {first['message']}{more}",
            field=first["field"],
            row=first["row"],
            problems=self.items,
        )


def cut(text: str, n: int = _NAME_CHARS) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
