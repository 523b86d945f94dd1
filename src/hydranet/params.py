"""Parameter constraints: the values a trunk, balancer, feature kind, encoder or bundled
dataset accepts, as data.

Each one declares ``param_constraints`` (the classes through :class:`DeclaredParams`): parameter name -> a type carrying its constraint,
written with pydantic's annotated types (``PositiveFloat``, ``Annotated[float, Field(ge=0,
le=1)]``, :data:`Widths`). The Spec checks the values a user gives against them when it is
loaded, every problem with its key path (``balance.params.temperature: must be greater than
0 (got 0)``), before anything is built. The check is strict: a string is not a number
(``num_experts = "8"`` is an error, not 8), a float is not an int; an int is a float.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import (
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    TypeAdapter,
    ValidationError,
)

__all__ = [
    "DeclaredParams",
    "NonNegativeFloat",
    "NonNegativeInt",
    "PositiveFloat",
    "PositiveInt",
    "Probability",
    "Unit",
    "Widths",
    "Finite",
    "check_values",
]

Widths = Annotated[list[PositiveInt], Field(min_length=1)]
"""Hidden-layer widths: a non-empty list of positive ints."""
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
"""A fraction or probability in [0, 1]."""
Probability = Annotated[float, Field(ge=0.0, lt=1.0)]
"""A drop probability: in [0, 1), as 1 would drop everything."""
Finite = Annotated[float, Field(allow_inf_nan=False)]
"""Any float but inf and nan."""

_STRICT = ConfigDict(strict=True)


def check_values(
    constraints: dict[str, Any], params: dict[str, Any], key: str
) -> list[tuple[str, str]]:
    """(key path, message) for every value in ``params`` that its constraint rejects.

    Names without a constraint are not checked here (unknown names are the caller's check).
    """
    problems = []
    for name, value in params.items():
        if name not in constraints:
            continue
        if isinstance(value, tuple):  # a Python caller's sequence; TOML, YAML and JSON give lists
            value = list(value)
        try:
            TypeAdapter(constraints[name], config=_STRICT).validate_python(value)
        except ValidationError as e:
            for err in e.errors():
                where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
                msg = err["msg"].replace("Input should be", "must be")
                problems.append((f"{key}.{name}{where}", f"{msg} (got {err['input']!r})"))
    return problems


class DeclaredParams:
    """A registry entry whose Spec ``params`` are declared as data: ``param_constraints``
    (parameter → a type carrying its constraint) and ``check_params`` (rules between
    parameters). The Spec checks both when it loads, every problem with its key path."""

    param_constraints: ClassVar[dict[str, Any]] = {}

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> list[tuple[str, str]]:
        """Problems that involve more than one parameter, as (parameter, message) pairs.

        ``params`` holds every constructor parameter (the Spec's values over the defaults),
        each already valid on its own.
        """
        return []
