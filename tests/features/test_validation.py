"""Every validation problem is found, counted, shown with examples, and either raised or dropped-and-reported."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from features import Dataset, DataValidationError, validate_dataset
from tests.conftest import make_tiny_shop


def _duplicate_item(ds: Dataset) -> None:
    ds.items = pd.concat([ds.items, ds.items.iloc[[0]]], ignore_index=True)


def _unknown_item(ds: Dataset) -> None:
    ds.interactions.loc[0, "item_id"] = 999


def _unknown_user(ds: Dataset) -> None:
    ds.interactions.loc[[0, 1], "user_id"] = 77


def _nan_timestamp(ds: Dataset) -> None:
    ds.interactions["timestamp"] = ds.interactions["timestamp"].astype(float)
    ds.interactions.loc[3, "timestamp"] = np.nan


def _nan_label(ds: Dataset) -> None:
    ds.interactions["label"] = ds.interactions["label"].astype(float)
    ds.interactions.loc[[4, 5], "label"] = np.nan


def _label_out_of_range(ds: Dataset) -> None:
    ds.interactions.loc[2, "label"] = 7


def _negative_label(ds: Dataset) -> None:
    ds.interactions.loc[2, "label"] = -1


def _text_in_price(ds: Dataset) -> None:
    ds.items["price"] = ds.items["price"].astype(object)
    ds.items.loc[1, "price"] = "cheap"


def _inf_price(ds: Dataset) -> None:
    ds.items.loc[0, "price"] = np.inf


def _text_in_timestamp(ds: Dataset) -> None:
    ds.interactions["timestamp"] = ds.interactions["timestamp"].astype(object)
    ds.interactions.loc[0, "timestamp"] = "yesterday"


def _duplicate_user(ds: Dataset) -> None:
    assert ds.users is not None
    ds.users = pd.concat([ds.users, ds.users.iloc[[1]]], ignore_index=True)


def _non_text_query(ds: Dataset) -> None:
    ds.interactions.loc[0, "query"] = 3.5


def _empty_string_item_id(ds: Dataset) -> None:
    for frame in (ds.items, ds.interactions):
        frame["item_id"] = frame["item_id"].astype(str).astype(object)
    ds.interactions.loc[0, "item_id"] = ""


# (mutation, kind, table, column, rows counted, rows dropped per table under drop-and-report)
CASES: list[tuple[Callable[[Dataset], None], str, str, str, int, dict[str, int]]] = [
    (_duplicate_item, "duplicate_id", "items", "item_id", 1, {"items": 1}),
    (_unknown_item, "unknown_item", "interactions", "item_id", 1, {"interactions": 1}),
    (_unknown_user, "unknown_user", "interactions", "user_id", 2, {"interactions": 2}),
    (_nan_timestamp, "missing_value", "interactions", "timestamp", 1, {"interactions": 1}),
    (_nan_label, "missing_value", "interactions", "label", 2, {"interactions": 2}),
    (_label_out_of_range, "label_out_of_range", "interactions", "label", 1, {"interactions": 1}),
    (_negative_label, "label_out_of_range", "interactions", "label", 1, {"interactions": 1}),
    (_text_in_price, "wrong_dtype", "items", "price", 1, {"items": 1, "interactions_orphaned": 3}),
    (_inf_price, "non_finite", "items", "price", 1, {"items": 1, "interactions_orphaned": 3}),
    (_text_in_timestamp, "wrong_dtype", "interactions", "timestamp", 1, {"interactions": 1}),
    (_duplicate_user, "duplicate_id", "users", "user_id", 1, {"users": 1}),
    (_non_text_query, "wrong_dtype", "interactions", "query", 1, {"interactions": 1}),
    (_empty_string_item_id, "missing_value", "interactions", "item_id", 1, {"interactions": 1}),
]


@pytest.mark.parametrize(("mutate", "kind", "table", "column", "count", "dropped"), CASES)
def test_problem_is_raised_under_error_policy(mutate, kind, table, column, count, dropped) -> None:
    ds = make_tiny_shop()
    mutate(ds)
    with pytest.raises(DataValidationError, match=rf"{table}\.{column}") as info:
        validate_dataset(ds, policy="error")
    problems = [(p.kind, p.table, p.column, p.count) for p in info.value.report.problems]
    assert (kind, table, column, count) in problems
    assert all(p.examples for p in info.value.report.problems)


@pytest.mark.parametrize(("mutate", "kind", "table", "column", "count", "dropped"), CASES)
def test_problem_is_dropped_and_reported(mutate, kind, table, column, count, dropped) -> None:
    ds = make_tiny_shop()
    mutate(ds)
    rows_before = {"interactions": len(ds.interactions), "items": len(ds.items), "users": len(ds.users)}
    cleaned = validate_dataset(ds, policy="drop-and-report")
    report = cleaned.report
    assert (kind, table, column, count) in [(p.kind, p.table, p.column, p.count) for p in report.problems]
    assert report.dropped == dropped
    # Nothing is lost silently: rows out + rows dropped = rows in.
    interactions_dropped = dropped.get("interactions", 0) + dropped.get("interactions_orphaned", 0)
    assert len(cleaned.interactions) + interactions_dropped == rows_before["interactions"]
    assert len(cleaned.items) + dropped.get("items", 0) == rows_before["items"]
    assert len(cleaned.users) + dropped.get("users", 0) == rows_before["users"]
    # The cleaned data set passes validation.
    assert validate_dataset(cleaned, policy="error").report.ok


def test_clean_data_passes_with_an_empty_report() -> None:
    ds = validate_dataset(make_tiny_shop())
    assert ds.report.ok and str(ds.report) == "no problems found"
    assert ds.report.rows_in == {"interactions": 12, "items": 4, "users": 3}


def test_missing_price_is_allowed_but_missing_ids_are_not() -> None:
    ds = make_tiny_shop()  # item 12 has no price: an optional attribute may be missing
    assert validate_dataset(ds).report.ok
    ds.items.loc[0, "item_id"] = pd.NA
    ds.items["item_id"] = ds.items["item_id"].astype("Int64")
    with pytest.raises(DataValidationError, match=r"items\.item_id.*NaN or empty"):
        validate_dataset(ds)


@pytest.mark.parametrize("policy", ["error", "drop-and-report"])
def test_fatal_problems_raise_under_both_policies(policy: str) -> None:
    empty = make_tiny_shop()
    empty.interactions = empty.interactions.iloc[:0]
    with pytest.raises(DataValidationError, match=r"interactions\.\*: the table has no rows"):
        validate_dataset(empty, policy=policy)

    no_column = make_tiny_shop()
    no_column.items = no_column.items.drop(columns=["price"])
    with pytest.raises(DataValidationError, match=r"items\.price: the column is missing.*found columns"):
        validate_dataset(no_column, policy=policy)

    mixed = make_tiny_shop()
    mixed.items["item_id"] = mixed.items["item_id"].astype(str)
    with pytest.raises(DataValidationError, match=r"ids should be of one kind in every table.*interactions: int"):
        validate_dataset(mixed, policy=policy)

    float_ids = make_tiny_shop()
    float_ids.interactions["user_id"] = float_ids.interactions["user_id"].astype(float)
    with pytest.raises(DataValidationError, match=r"ids should be integers or strings; received dtype float64"):
        validate_dataset(float_ids, policy=policy)


def test_unknown_policy_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"`policy` should be one of .* Received: policy='skip'"):
        validate_dataset(make_tiny_shop(), policy="skip")


def test_several_problems_are_all_reported_at_once() -> None:
    ds = make_tiny_shop()
    _duplicate_item(ds)
    _unknown_user(ds)
    _label_out_of_range(ds)
    with pytest.raises(DataValidationError) as info:
        validate_dataset(ds)
    kinds = sorted(p.kind for p in info.value.report.problems)
    assert kinds == ["duplicate_id", "label_out_of_range", "unknown_user"]
