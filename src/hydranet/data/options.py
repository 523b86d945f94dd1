"""How a source reads its rows: the options the Spec's ``[data]`` table gives a source.

Here rather than in :mod:`hydranet.spec` so that sources need not import the Spec (which
imports the sources' registry to check ``data.source``): ``DataSpec`` extends
:class:`SourceOptions`, and a source takes any ``SourceOptions``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Strings that mean "missing" in a CSV cell by default: the spellings pandas and
# spreadsheets write for a missing value. "?" (UCI's) and "-" are common too but are also
# real values often enough that a file using them says so with null_values.
CSV_NULL_VALUES = ("", "NA", "N/A", "n/a", "#N/A", "NULL", "null", "NaN", "nan", "None")


class CsvSpec(_Part):
    header: bool = Field(True, description="the first line of each file names the columns")
    column_names: list[str] | None = Field(
        None,
        description="the columns' names, in file order: for files without a header line (header = false), or in place of the header's names; header = false without them names the columns f0, f1, ...",
    )
    delimiter: str = Field(",", min_length=1, max_length=1, description="the field separator")
    strip_whitespace: bool = Field(
        True,
        description="strip surrounding whitespace from text cells (' >50K' reads as '>50K'); a cell of only spaces is then blank",
    )
    null_values: list[str] = Field(
        default_factory=lambda: list(CSV_NULL_VALUES),
        description="cells that mean missing, in any column (compared after stripping); a blank cell is always missing, never the text ''",
    )


class SourceOptions(_Part):
    source: str = Field(
        "auto",
        description="where rows come from: auto (files for a path, frame for a pandas DataFrame or Arrow table, spark for a Spark DataFrame), files, frame, spark or 'pkg.mod:Source'",
    )
    source_params: dict[str, Any] = Field(
        default_factory=dict, description="parameters of a user's source ('pkg.mod:Source')"
    )
    format: Literal["auto", "parquet", "csv"] = "auto"
    csv: CsvSpec = Field(default_factory=CsvSpec, description="how CSV files are read")
