"""Validation of a loaded data set: every problem is counted and shown with examples, nothing is dropped silently.

Two policies: ``"error"`` (the default) raises `DataValidationError` carrying the full report when anything is
wrong; ``"drop-and-report"`` removes the offending rows and returns the report of what was removed, so the
caller can log it. Whole-column problems that no row drop can fix (a required column missing, an id column of
mixed kinds between tables, an empty table) raise under both policies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from features.schema import ITEM_ID, LABEL, QUERY, TIMESTAMP, USER_ID, Dataset

Policy = Literal["error", "drop-and-report"]
POLICIES: tuple[str, ...] = ("error", "drop-and-report")
_MAX_EXAMPLES = 5


@dataclass(frozen=True)
class Problem:
    """One kind of problem found in one column of one table.

    Attributes:
        kind: A short code, e.g. ``"duplicate_id"``, ``"unknown_item"``, ``"missing_value"``,
            ``"label_out_of_range"``, ``"wrong_dtype"``, ``"non_finite"``, ``"empty_table"``.
        table: ``"interactions"``, ``"items"`` or ``"users"``.
        column: The column the problem is in.
        count: How many rows have it.
        examples: Up to five offending values (as strings).
        message: What was expected and what was found.
        fatal: ``True`` when dropping rows cannot fix it.
    """

    kind: str
    table: str
    column: str
    count: int
    examples: tuple[str, ...]
    message: str
    fatal: bool = False

    def __str__(self) -> str:
        examples = ", ".join(self.examples)
        return f"{self.table}.{self.column}: {self.message} ({self.count} rows; e.g. {examples})"


@dataclass
class ValidationReport:
    """What validation found, and what it dropped under ``drop-and-report``.

    Attributes:
        problems: Every problem found, in the order checked.
        dropped: Rows dropped per table (only under ``drop-and-report``).
        rows_in: Rows per table before validation.
        policy: The policy applied.
    """

    problems: list[Problem] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    rows_in: dict[str, int] = field(default_factory=dict)
    policy: str = "error"

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "policy": self.policy,
            "rows_in": dict(self.rows_in),
            "dropped": dict(self.dropped),
            "problems": [
                {
                    "kind": p.kind,
                    "table": p.table,
                    "column": p.column,
                    "count": p.count,
                    "examples": list(p.examples),
                    "message": p.message,
                }
                for p in self.problems
            ],
        }

    def __str__(self) -> str:
        if self.ok:
            return "no problems found"
        lines = [f"{len(self.problems)} problem(s) found:"]
        lines += [f"  - {p}" for p in self.problems]
        if self.dropped:
            lines.append("dropped rows: " + ", ".join(f"{t}={n}" for t, n in self.dropped.items()))
        return "\n".join(lines)


class DataValidationError(ValueError):
    """Raised when a data set fails validation; ``.report`` holds every problem with counts and examples."""

    def __init__(self, report: ValidationReport, source: str = "") -> None:
        self.report = report
        where = f" in {source}" if source else ""
        hint = (
            "Fix the data, or load with policy='drop-and-report' to drop the offending rows and get this report."
            if not any(p.fatal for p in report.problems)
            else "These problems cannot be fixed by dropping rows: fix the data or the spec."
        )
        super().__init__(f"data validation failed{where}: {report}\n{hint}")


def _examples(values: pd.Series | np.ndarray) -> tuple[str, ...]:
    unique = pd.unique(np.asarray(values, dtype=object))[:_MAX_EXAMPLES]
    return tuple(repr(v) for v in unique)


def _is_missing(column: pd.Series) -> np.ndarray:
    missing = column.isna().to_numpy().copy()
    if column.dtype == object or pd.api.types.is_string_dtype(column.dtype):
        text = column.astype("string")
        missing |= (text.str.strip() == "").fillna(False).to_numpy(dtype=bool)
    return missing


def _id_kind(column: pd.Series) -> str | None:
    """``"int"`` or ``"str"`` for a valid id column, ``None`` for anything else (floats, mixed objects)."""
    if pd.api.types.is_integer_dtype(column.dtype):
        return "int"
    if pd.api.types.is_string_dtype(column.dtype):
        values = column.dropna()
        if column.dtype == object and not values.map(lambda v: isinstance(v, str)).all():
            return None
        return "str"
    return None


class _Checker:
    def __init__(self, dataset: Dataset, policy: str) -> None:
        if policy not in POLICIES:
            raise ValueError(f"`policy` should be one of {POLICIES}. Received: policy={policy!r}")
        self.dataset = dataset
        self.policy = policy
        self.report = ValidationReport(policy=policy)
        self.drop: dict[str, np.ndarray] = {}

    def add(
        self,
        kind: str,
        table: str,
        column: str,
        mask: np.ndarray,
        values: pd.Series,
        message: str,
        *,
        fatal: bool = False,
    ) -> None:
        count = int(mask.sum())
        if count == 0:
            return
        self.report.problems.append(Problem(kind, table, column, count, _examples(values[mask]), message, fatal=fatal))
        if not fatal:
            self.drop[table] = self.drop.get(table, np.zeros(len(mask), dtype=bool)) | mask

    def fatal(self, kind: str, table: str, column: str, message: str, examples: tuple[str, ...] = ()) -> None:
        self.report.problems.append(Problem(kind, table, column, 0, examples, message, fatal=True))


def validate_dataset(dataset: Dataset, *, policy: str = "error", source: str = "") -> Dataset:
    """Checks a canonical data set and applies the policy.

    Checks, in order: empty tables; missing columns; id dtypes (integers or strings, the same kind in every
    table); NaN / empty values in required columns (ids, timestamp, label); wrong dtypes of the timestamp,
    label and numeric attributes (non-numeric values); non-finite numbers; labels outside
    ``[label.min, label.max]``; duplicate item ids and user ids; interactions that reference items missing from
    the item table or users missing from the user table.

    Args:
        dataset: The data set to check; it is not modified.
        policy: ``"error"`` raises on any problem; ``"drop-and-report"`` drops offending rows (duplicate ids
            keep their first row) and records what it dropped.
        source: Where the data came from, for messages (a file or folder).

    Returns:
        The data set (a cleaned copy under ``drop-and-report``) with ``report`` set to the `ValidationReport`.

    Raises:
        DataValidationError: On any problem under ``"error"``, and on fatal problems under either policy.
    """
    check = _Checker(dataset, policy)
    schema = dataset.schema
    tables: dict[str, tuple[pd.DataFrame, list[str]]] = {
        "interactions": (dataset.interactions, schema.interaction_columns()),
        "items": (dataset.items, schema.item_columns()),
    }
    if dataset.users is not None:
        tables["users"] = (dataset.users, schema.user_columns())
    for table, (frame, columns) in tables.items():
        check.report.rows_in[table] = len(frame)
        if len(frame) == 0:
            check.fatal("empty_table", table, "*", "the table has no rows; expected at least one")
        missing = [c for c in columns if c not in frame.columns]
        for column in missing:
            check.fatal(
                "missing_column",
                table,
                column,
                f"the column is missing; expected it from the schema, found columns {list(frame.columns)}",
            )
    if any(p.fatal for p in check.report.problems):
        raise DataValidationError(check.report, source)

    inter, items, users = dataset.interactions, dataset.items, dataset.users
    _check_ids(check, inter, items, users)
    if any(p.fatal for p in check.report.problems):
        raise DataValidationError(check.report, source)

    required = {
        "interactions": (inter, [USER_ID, ITEM_ID, TIMESTAMP, LABEL]),
        "items": (items, [ITEM_ID]),
    }
    if users is not None:
        required["users"] = (users, [USER_ID])
    for table, (frame, columns) in required.items():
        for column in columns:
            check.add(
                "missing_value",
                table,
                column,
                _is_missing(frame[column]),
                frame[column],
                "required value is NaN or empty; expected a value in every row",
            )

    numeric_columns = [
        ("interactions", inter, TIMESTAMP),
        ("interactions", inter, LABEL),
        *[("items", items, c) for c in schema.item_numeric],
        *[("users", users, c) for c in schema.user_numeric if users is not None],
    ]
    for table, frame, column in numeric_columns:
        _check_numeric(check, table, frame, column, required=column in (TIMESTAMP, LABEL))

    label = pd.to_numeric(inter[LABEL], errors="coerce")
    low, high = schema.label.min, schema.label.max
    out_of_range = ((label < low) | (label > high)).to_numpy(dtype=bool)
    check.add(
        "label_out_of_range",
        "interactions",
        LABEL,
        out_of_range,
        inter[LABEL],
        f"label outside the range of a {schema.label.kind} label; expected values in [{low:g}, {high:g}]",
    )
    if schema.has_query:
        not_text = ~inter[QUERY].map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
        check.add(
            "wrong_dtype",
            "interactions",
            QUERY,
            not_text,
            inter[QUERY],
            "query should be a string ('' when the request had no text); found other values",
        )

    dup_items = items[ITEM_ID].duplicated(keep="first").to_numpy()
    check.add("duplicate_id", "items", ITEM_ID, dup_items, items[ITEM_ID], "item id appears more than once")
    if users is not None:
        dup_users = users[USER_ID].duplicated(keep="first").to_numpy()
        check.add("duplicate_id", "users", USER_ID, dup_users, users[USER_ID], "user id appears more than once")

    unknown_items = ~inter[ITEM_ID].isin(items[ITEM_ID]).to_numpy()
    check.add(
        "unknown_item",
        "interactions",
        ITEM_ID,
        unknown_items & ~_is_missing(inter[ITEM_ID]),
        inter[ITEM_ID],
        "interaction references an item id that is not in the item table",
    )
    if users is not None:
        unknown_users = ~inter[USER_ID].isin(users[USER_ID]).to_numpy()
        check.add(
            "unknown_user",
            "interactions",
            USER_ID,
            unknown_users & ~_is_missing(inter[USER_ID]),
            inter[USER_ID],
            "interaction references a user id that is not in the user table",
        )

    report = check.report
    if report.problems and (policy == "error" or any(p.fatal for p in report.problems)):
        raise DataValidationError(report, source)
    if not report.problems:
        dataset.report = report
        return dataset
    frames = {"interactions": inter, "items": items, "users": users}
    for table, mask in check.drop.items():
        report.dropped[table] = int(mask.sum())
        frames[table] = frames[table].loc[~mask].reset_index(drop=True)
    # Dropping items or users can orphan interactions: drop those too, and count them separately.
    cleaned_inter = frames["interactions"]
    orphan = ~cleaned_inter[ITEM_ID].isin(frames["items"][ITEM_ID])
    if frames["users"] is not None:
        orphan |= ~cleaned_inter[USER_ID].isin(frames["users"][USER_ID])
    if orphan.any():
        report.dropped["interactions_orphaned"] = int(orphan.sum())
        cleaned_inter = cleaned_inter.loc[~orphan].reset_index(drop=True)
    for column in (TIMESTAMP, LABEL):
        if not pd.api.types.is_numeric_dtype(cleaned_inter[column].dtype):
            cleaned_inter[column] = pd.to_numeric(cleaned_inter[column])
    cleaned_items = frames["items"]
    for column in schema.item_numeric:
        if not pd.api.types.is_numeric_dtype(cleaned_items[column].dtype):
            cleaned_items[column] = pd.to_numeric(cleaned_items[column], errors="coerce")
    return Dataset(
        name=dataset.name,
        schema=schema,
        interactions=cleaned_inter,
        items=cleaned_items,
        users=frames["users"],
        report=report,
    )


def _check_ids(check: _Checker, inter: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame | None) -> None:
    kinds: dict[str, dict[str, str | None]] = {
        ITEM_ID: {"interactions": _id_kind(inter[ITEM_ID]), "items": _id_kind(items[ITEM_ID])},
        USER_ID: {"interactions": _id_kind(inter[USER_ID])},
    }
    if users is not None:
        kinds[USER_ID]["users"] = _id_kind(users[USER_ID])
    frames = {"interactions": inter, "items": items, "users": users}
    for column, per_table in kinds.items():
        for table, kind in per_table.items():
            if kind is None:
                frame = frames[table]
                assert frame is not None
                check.fatal(
                    "wrong_dtype",
                    table,
                    column,
                    f"ids should be integers or strings; received dtype {frame[column].dtype}",
                    _examples(frame[column].head(_MAX_EXAMPLES)),
                )
        valid = {t: k for t, k in per_table.items() if k is not None}
        if len(set(valid.values())) > 1:
            detail = ", ".join(f"{t}: {k}" for t, k in valid.items())
            check.fatal(
                "wrong_dtype",
                "interactions",
                column,
                f"ids should be of one kind in every table; received {detail} (cast them to one kind in the spec "
                "or the files)",
            )


def _check_numeric(check: _Checker, table: str, frame: pd.DataFrame, column: str, *, required: bool) -> None:
    values = frame[column]
    if pd.api.types.is_bool_dtype(values.dtype):
        return
    as_number = pd.to_numeric(values, errors="coerce")
    present = ~_is_missing(values)
    not_numeric = (as_number.isna().to_numpy() & present).astype(bool)
    check.add(
        "wrong_dtype",
        table,
        column,
        not_numeric,
        values,
        f"expected numbers; found non-numeric values (column dtype {values.dtype})",
    )
    number = as_number.to_numpy(dtype=np.float64, na_value=np.nan)
    non_finite = np.isinf(number)
    check.add("non_finite", table, column, non_finite, values, "expected finite numbers; found inf")
    del required
