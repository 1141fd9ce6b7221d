"""Property tests of the table loaders: any valid tables round-trip through CSV and Parquet unchanged, and any
single corruption of them is caught, named, and never turns into a silently shorter table."""

from __future__ import annotations

import csv
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import (
    ITEM_ID,
    LABEL,
    QUERY,
    TIMESTAMP,
    USER_ID,
    DatasetSpec,
    DataValidationError,
    LabelSpec,
    SpecError,
    load_dataset,
)
from features.spec import InteractionsSpec, ItemsSpec, UsersSpec

PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
FORMATS = ("csv", "parquet")
LABEL_NAMES = {0: "impression", 1: "click", 2: "cart", 3: "purchase"}
# The source files call their columns differently from the canonical names: the loader must rename them.
SOURCE = {
    "interactions": {USER_ID: "customer", ITEM_ID: "sku", TIMESTAMP: "ts", LABEL: "event", QUERY: "q"},
    "items": {ITEM_ID: "sku", "brand": "brand", "price": "price", "title": "title"},
    "users": {USER_ID: "customer", "segment": "segment", "age": "age"},
}
INT64 = st.integers(-(2**63), 2**63 - 1)


# -- strategies ------------------------------------------------------------------------------------------------------

# The words a CSV reader takes for a missing value (pandas' defaults, which the loader keeps): written to a CSV they
# come back missing, so no table holds them as text.
CSV_NA_WORDS = {
    *("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A"),
    *("NA", "NULL", "NaN", "None", "n/a", "nan", "null"),
}
# Digit strings ("007", "-0", "12") are text too, and must not come back as numbers.
_DIGITS = st.from_regex(r"[-+]?[0-9]{1,4}(\.[0-9])?", fullmatch=True)
_TEXT = (
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8).filter(
        lambda s: s == "" or s not in CSV_NA_WORDS
    )
    | _DIGITS
)
_ID_TEXT = _TEXT.filter(lambda s: s.strip() != "")  # a blank id is a missing id


def _ids(kind: str, size: int) -> st.SearchStrategy[list]:
    element = INT64 if kind == "int" else _ID_TEXT
    return st.lists(element, min_size=size, max_size=size, unique=True)


@dataclass(frozen=True)
class Shop:
    """Valid tables under their source column names (see `SOURCE`)."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame | None
    label_names: bool
    item_kind: str
    user_kind: str


@st.composite
def shops(draw: st.DrawFn, item_kind: str | None = None) -> Shop:
    item_kind = item_kind or draw(st.sampled_from(["int", "str"]))
    user_kind = draw(st.sampled_from(["int", "str"]))
    num_items = draw(st.integers(1, 8))
    num_inter = draw(st.integers(1, 12))
    item_ids = draw(_ids(item_kind, num_items))
    with_users = draw(st.booleans())
    num_users = draw(st.integers(1, 6))
    user_ids = draw(_ids(user_kind, num_users))

    def column(strategy: st.SearchStrategy, size: int) -> list:
        return draw(st.lists(strategy, min_size=size, max_size=size))

    item_dtype = np.int64 if item_kind == "int" else object
    user_dtype = np.int64 if user_kind == "int" else object
    items = pd.DataFrame(
        {
            "sku": pd.Series(item_ids, dtype=item_dtype),
            "brand": pd.Series(column(st.none() | _ID_TEXT, num_items), dtype=object),
            "price": np.array(column(st.floats(allow_infinity=False), num_items), dtype=np.float64),
            "title": pd.Series(column(st.none() | _TEXT, num_items), dtype=object),
        }
    )
    users = None
    if with_users:
        users = pd.DataFrame(
            {
                "customer": pd.Series(user_ids, dtype=user_dtype),
                "segment": pd.Series(column(st.none() | _ID_TEXT, num_users), dtype=object),
                "age": np.array(column(st.floats(0, 120) | st.just(np.nan), num_users), dtype=np.float64),
            }
        )
    label_names = draw(st.booleans())
    grades = column(st.integers(0, 3), num_inter)
    interactions = pd.DataFrame(
        {
            "customer": pd.Series(column(st.sampled_from(user_ids), num_inter), dtype=user_dtype),
            "sku": pd.Series(column(st.sampled_from(item_ids), num_inter), dtype=item_dtype),
            "ts": np.array(column(INT64, num_inter), dtype=np.int64),
            "event": pd.Series([LABEL_NAMES[g] for g in grades], dtype=object)
            if label_names
            else np.array(grades, dtype=np.int64),
            "q": pd.Series(column(st.none() | _TEXT, num_inter), dtype=object),
        }
    )
    return Shop(interactions, items, users, label_names, item_kind, user_kind)


def _write(shop: Shop, folder: Path, fmt: str) -> DatasetSpec:
    """Writes the tables as ``fmt`` files and returns the spec naming them."""
    suffix = ".csv" if fmt == "csv" else ".parquet"
    paths = {}
    for table, frame in (("interactions", shop.interactions), ("items", shop.items), ("users", shop.users)):
        if frame is None:
            continue
        paths[table] = folder / f"{table}{suffix}"
        if fmt == "csv":
            # Quoted text: Python 3.11's csv writer leaves a bare "\r" unquoted, which a reader takes for a row end.
            frame.to_csv(paths[table], index=False, quoting=csv.QUOTE_NONNUMERIC)
        else:
            frame.to_parquet(paths[table], index=False)
    return DatasetSpec(
        name="property-shop",
        policy="error",
        label=LabelSpec(
            kind="graded", min=0, max=3, positive_threshold=1, names=LABEL_NAMES if shop.label_names else {}
        ),
        interactions=InteractionsSpec(
            path=paths["interactions"], user_id="customer", item_id="sku", order="ts", label="event", query="q"
        ),
        items=ItemsSpec(
            path=paths["items"], item_id="sku", categorical=("brand",), numeric=("price",), text=("title",)
        ),
        users=UsersSpec(path=paths["users"], user_id="customer", categorical=("segment",), numeric=("age",))
        if "users" in paths
        else None,
    )


# -- round trip ------------------------------------------------------------------------------------------------------


def _integers_in_csv(values: pd.Series, fmt: str) -> bool:
    """Whether a CSV makes a text column integers: it has no types, and "7" (not "007", "-0", "7.0") is an int."""
    present = values.dropna()
    return fmt == "csv" and all(isinstance(v, str) and re.fullmatch(r"0|-?[1-9][0-9]*", v) for v in present)


def _loaded_kind(shop: Shop, role: str, fmt: str) -> str:
    kind = shop.item_kind if role == ITEM_ID else shop.user_kind
    table = "items" if role == ITEM_ID else ("users" if shop.users is not None else "interactions")
    return "int" if kind == "str" and _integers_in_csv(getattr(shop, table)[SOURCE[table][role]], fmt) else kind


def _assert_ids(loaded: pd.Series, written: pd.Series, kind: str, where: str) -> None:
    if kind == "int":
        written = written.astype(np.int64)
        assert loaded.dtype == np.int64, f"{where}: int ids should load as int64, got {loaded.dtype}"
    else:
        assert pd.api.types.is_string_dtype(loaded.dtype), (
            f"{where}: str ids should load as strings, got {loaded.dtype}"
        )
        assert all(isinstance(v, str) for v in loaded), f"{where}: non-str values {loaded.tolist()!r}"
    assert loaded.tolist() == written.tolist(), where


def _assert_categories(loaded: pd.Series, written: pd.Series, fmt: str, where: str) -> None:
    """Categorical attributes: missing stays missing, the rest is unchanged (ints where a CSV makes them ints)."""
    missing = written.isna().to_numpy()
    assert loaded.isna().tolist() == missing.tolist(), f"{where}: missing {loaded.tolist()!r} vs {written.tolist()!r}"
    expected = written[~missing].tolist()
    if _integers_in_csv(written, fmt):
        expected = [int(v) for v in expected]
    assert loaded[~missing].tolist() == expected, where


def _text(written: pd.Series) -> list[str]:
    return ["" if v is None else v for v in written]


@PROPERTY_SETTINGS
@given(shop=shops(), fmt=st.sampled_from(FORMATS))
def test_valid_tables_round_trip_unchanged(shop: Shop, fmt: str) -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        dataset = load_dataset(_write(shop, Path(folder), fmt))
    assert dataset.report is not None and dataset.report.ok, str(dataset.report)
    assert dataset.report.dropped == {}

    inter, written = dataset.interactions, shop.interactions
    assert list(inter.columns) == [USER_ID, ITEM_ID, TIMESTAMP, LABEL, QUERY]
    assert len(inter) == len(written) == dataset.report.rows_in["interactions"]
    user_kind, item_kind = _loaded_kind(shop, USER_ID, fmt), _loaded_kind(shop, ITEM_ID, fmt)
    _assert_ids(inter[USER_ID], written["customer"], user_kind, "interactions.user_id")
    _assert_ids(inter[ITEM_ID], written["sku"], item_kind, "interactions.item_id")
    assert inter[TIMESTAMP].dtype == np.int64 and inter[TIMESTAMP].tolist() == written["ts"].tolist()
    grades = (
        [{v: k for k, v in LABEL_NAMES.items()}[e] for e in written["event"]] if shop.label_names else written["event"]
    )
    assert pd.api.types.is_integer_dtype(inter[LABEL].dtype) and inter[LABEL].tolist() == list(grades)
    assert inter[QUERY].tolist() == _text(written["q"])  # a missing query is ""

    items, written = dataset.items, shop.items
    assert list(items.columns) == [ITEM_ID, "brand", "price", "title"]
    assert len(items) == len(written)
    _assert_ids(items[ITEM_ID], written["sku"], item_kind, "items.item_id")
    _assert_categories(items["brand"], written["brand"], fmt, "items.brand")
    assert items["price"].dtype == np.float64
    np.testing.assert_array_equal(items["price"].to_numpy(), written["price"].to_numpy())  # NaN where written NaN
    assert items["title"].tolist() == _text(written["title"])

    if shop.users is None:
        assert dataset.users is None
    else:
        users, written = dataset.users, shop.users
        assert users is not None and list(users.columns) == [USER_ID, "segment", "age"]
        assert len(users) == len(written)
        _assert_ids(users[USER_ID], written["customer"], user_kind, "users.user_id")
        _assert_categories(users["segment"], written["segment"], fmt, "users.segment")
        assert users["age"].dtype == np.float64
        np.testing.assert_array_equal(users["age"].to_numpy(), written["age"].to_numpy())


# -- corruptions -----------------------------------------------------------------------------------------------------

# Words a CSV reader turns into a missing value, a number or a bool, so they are no longer "text" in the column.
_NUMBER_WORDS = {"na", "nan", "null", "none", "n/a", "inf", "infinity", "true", "false"}
_NOT_A_NUMBER = st.text(st.characters(categories=("L",)), min_size=1, max_size=6).filter(
    lambda s: _unparsable(s) and s.strip().lower() not in _NUMBER_WORDS
)


def _unparsable(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return True
    return False


@dataclass(frozen=True)
class Corruption:
    """What a corruption did and what the loader must say about it.

    Attributes:
        shop: The corrupted tables.
        table: The table the problem is reported in.
        column: The canonical column named by the report (for `SpecError`: the source column).
        kinds: Acceptable `Problem.kind` values.
        fatal: Whether no row drop can fix it (raises under ``drop-and-report`` too); ``None`` when that depends
            on the draw.
        spec_error: Whether the loader refuses before validation (a column missing from a file).
        rows: Rows of ``table`` that ``drop-and-report`` must drop (excluding orphaned interactions).
        also_in: Other tables the problem may be reported in (id kinds that disagree are reported in interactions).
    """

    shop: Shop
    table: str
    column: str
    kinds: tuple[str, ...]
    fatal: bool | None = False
    spec_error: bool = False
    rows: int = 1
    also_in: tuple[str, ...] = ()

    def names(self, table: str, column: str) -> bool:
        return column == self.column and table in (self.table, *self.also_in)


def _frame(shop: Shop, table: str) -> pd.DataFrame:
    frame = getattr(shop, table)
    assert frame is not None
    return frame.copy()


def _with(shop: Shop, table: str, frame: pd.DataFrame) -> Shop:
    return replace(shop, **{table: frame})


def _set(frame: pd.DataFrame, row: int, column: str, value: object) -> pd.DataFrame:
    """``frame`` with one cell replaced, the column widened to object so any value fits."""
    values = frame[column].astype(object).to_numpy().copy()
    values[row] = value
    frame[column] = pd.Series(values, dtype=object)
    return frame


def _as_text_column(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """A numeric column as text (a Parquet column holds one type: text must be all-text to be written)."""
    frame[column] = pd.Series([None if pd.isna(v) else repr(v) for v in frame[column].tolist()], dtype=object)
    return frame


def _tables(shop: Shop) -> list[str]:
    return ["interactions", "items"] + (["users"] if shop.users is not None else [])


def _new_id(existing: list, kind: str, draw: st.DrawFn) -> object:
    return draw((INT64 if kind == "int" else _ID_TEXT).filter(lambda v: v not in set(existing)))


def _drop_column(shop: Shop, draw: st.DrawFn, fmt: str) -> Corruption:
    del fmt  # the same corruption in both formats
    table = draw(st.sampled_from(_tables(shop)))
    column = draw(st.sampled_from(list(SOURCE[table].values())))
    return Corruption(
        _with(shop, table, _frame(shop, table).drop(columns=[column])), table, column, (), spec_error=True
    )


def _nan_required(shop: Shop, draw: st.DrawFn, fmt: str) -> Corruption:
    del fmt  # the same corruption in both formats
    frame = _frame(shop, "interactions")
    column = draw(st.sampled_from(["ts", "event"]))
    frame = _set(frame, draw(st.integers(0, len(frame) - 1)), column, None)
    canonical = TIMESTAMP if column == "ts" else LABEL
    return Corruption(_with(shop, "interactions", frame), "interactions", canonical, ("missing_value",))


def _inf_numeric(shop: Shop, draw: st.DrawFn, fmt: str) -> Corruption:
    del fmt  # the same corruption in both formats
    choices = [("interactions", "ts", TIMESTAMP), ("items", "price", "price")]
    if not shop.label_names:
        choices.append(("interactions", "event", LABEL))
    if shop.users is not None:
        choices.append(("users", "age", "age"))
    table, column, canonical = draw(st.sampled_from(choices))
    frame = _frame(shop, table)
    frame[column] = frame[column].astype(np.float64)
    frame.loc[draw(st.integers(0, len(frame) - 1)), column] = draw(st.sampled_from([np.inf, -np.inf]))
    return Corruption(_with(shop, table, frame), table, canonical, ("non_finite", "label_out_of_range"))


def _duplicate_id(shop: Shop, draw: st.DrawFn, fmt: str) -> Corruption:
    del fmt  # the same corruption in both formats
    table = draw(st.sampled_from(_tables(shop)[1:]))
    frame = _frame(shop, table)
    row = frame.iloc[[draw(st.integers(0, len(frame) - 1))]]
    frame = pd.concat([frame, row], ignore_index=True)
    canonical = ITEM_ID if table == "items" else USER_ID
    return Corruption(_with(shop, table, frame), table, canonical, ("duplicate_id",))


def _unknown_reference(shop: Shop, draw: st.DrawFn, fmt: str) -> Corruption:
    del fmt  # the same corruption in both formats
    frame = _frame(shop, "interactions")
    row = draw(st.integers(0, len(frame) - 1))
    if shop.users is not None and draw(st.booleans()):
        new = _new_id(shop.users["customer"].tolist(), shop.user_kind, draw)
        frame["customer"] = frame["customer"].astype(object)
        frame.loc[row, "customer"] = new
        frame["customer"] = frame["customer"].astype(shop.users["customer"].dtype)
        return Corruption(_with(shop, "interactions", frame), "interactions", USER_ID, ("unknown_user",))
    new = _new_id(shop.items["sku"].tolist(), shop.item_kind, draw)
    frame["sku"] = frame["sku"].astype(object)
    frame.loc[row, "sku"] = new
    frame["sku"] = frame["sku"].astype(shop.items["sku"].dtype)
    return Corruption(_with(shop, "interactions", frame), "interactions", ITEM_ID, ("unknown_item",))


def _label_out_of_range(shop: Shop, draw: st.DrawFn, fmt: str) -> Corruption:
    del fmt  # the same corruption in both formats
    frame = _frame(shop, "interactions")
    row = draw(st.integers(0, len(frame) - 1))
    value = draw(st.sampled_from([-1, 4, 7, 1000]))
    if shop.label_names:
        frame = _set(frame, row, "event", str(value))  # a number among event names still gets checked
    else:
        frame.loc[row, "event"] = value
    return Corruption(_with(shop, "interactions", frame), "interactions", LABEL, ("label_out_of_range",))


def _unknown_label_name(shop: Shop, draw: st.DrawFn, fmt: str) -> Corruption:
    del fmt  # the same corruption in both formats
    frame = _frame(shop, "interactions")
    name = draw(_NOT_A_NUMBER.filter(lambda s: s not in LABEL_NAMES.values()))
    if not shop.label_names:
        frame = _as_text_column(frame, "event")
    frame = _set(frame, draw(st.integers(0, len(frame) - 1)), "event", name)
    return Corruption(_with(shop, "interactions", frame), "interactions", LABEL, ("wrong_dtype",))


def _empty_id(shop: Shop, draw: st.DrawFn, fmt: str) -> Corruption:
    del fmt  # the same corruption in both formats
    table = draw(st.sampled_from(_tables(shop)))
    column = (
        draw(st.sampled_from(["customer", "sku"]))
        if table == "interactions"
        else SOURCE[table][ITEM_ID if table == "items" else USER_ID]
    )
    kind = shop.item_kind if column == "sku" else shop.user_kind
    canonical = ITEM_ID if column == "sku" else USER_ID
    frame = _frame(shop, table)
    row = draw(st.integers(0, len(frame) - 1))
    if kind == "str":
        frame = _set(frame, row, column, draw(st.sampled_from(["", " ", "\t", " \u3000 "])))
        return Corruption(_with(shop, table, frame), table, canonical, ("missing_value",))
    # A missing int id makes the column float in both formats: no row drop can make it an id column again. (Unless
    # it was the only id: an all-missing column has no kind, and its rows are dropped as missing.)
    frame = _set(frame, row, column, None)
    kinds = ("wrong_dtype", "missing_value")
    return Corruption(_with(shop, table, frame), table, canonical, kinds, fatal=None, also_in=("interactions",))


def _text_in_numeric(shop: Shop, draw: st.DrawFn, fmt: str) -> Corruption:
    del fmt  # the same corruption in both formats
    choices = [("interactions", "ts", TIMESTAMP), ("items", "price", "price")]
    if shop.users is not None:
        choices.append(("users", "age", "age"))
    table, column, canonical = draw(st.sampled_from(choices))
    frame = _as_text_column(_frame(shop, table), column)
    frame = _set(frame, draw(st.integers(0, len(frame) - 1)), column, draw(_NOT_A_NUMBER))
    return Corruption(_with(shop, table, frame), table, canonical, ("wrong_dtype",))


def _text_in_int_ids(shop: Shop, draw: st.DrawFn, fmt: str) -> Corruption:
    """Text among int ids: in Parquet the tables' id kinds disagree (fatal); a CSV has no types, so there the
    text id of an interaction is an item missing from the catalog (and a text id in the catalog a valid item)."""
    assert shop.item_kind == "int"
    table = "interactions" if fmt == "csv" else draw(st.sampled_from(["interactions", "items"]))
    frame = _as_text_column(_frame(shop, table), "sku")
    frame = _set(frame, draw(st.integers(0, len(frame) - 1)), "sku", draw(_NOT_A_NUMBER))
    if fmt == "csv":
        return Corruption(_with(shop, table, frame), "interactions", ITEM_ID, ("unknown_item",))
    return Corruption(_with(shop, table, frame), "interactions", ITEM_ID, ("wrong_dtype",), fatal=True)


CORRUPTIONS: dict[str, Callable[[Shop, st.DrawFn, str], Corruption]] = {
    "drop_column": _drop_column,
    "nan_required": _nan_required,
    "inf_numeric": _inf_numeric,
    "duplicate_id": _duplicate_id,
    "unknown_reference": _unknown_reference,
    "label_out_of_range": _label_out_of_range,
    "unknown_label_name": _unknown_label_name,
    "empty_id": _empty_id,
    "text_in_numeric": _text_in_numeric,
    "text_in_int_ids": _text_in_int_ids,
}


@st.composite
def corruptions(draw: st.DrawFn, name: str, fmt: str) -> Corruption:
    shop = draw(shops(item_kind="int" if name == "text_in_int_ids" else None))
    return CORRUPTIONS[name](shop, draw, fmt)


def _check_refused(error: Exception, corruption: Corruption, folder: Path) -> None:
    message = str(error)
    if corruption.spec_error:
        assert isinstance(error, SpecError), repr(error)
        assert f"has no column(s) [{corruption.column!r}]" in message, message
        assert corruption.table in message and str(folder) in message, message
        return
    assert isinstance(error, DataValidationError), repr(error)
    problems = [p for p in error.report.problems if corruption.names(p.table, p.column)]
    assert any(p.kind in corruption.kinds for p in problems), str(error.report)
    assert any(f"{p.table}.{p.column}:" in message for p in problems), message


@pytest.mark.parametrize("name", list(CORRUPTIONS))
@settings(PROPERTY_SETTINGS, max_examples=20)
@given(data=st.data(), fmt=st.sampled_from(FORMATS))
def test_corruptions_are_caught_and_named(name: str, data: st.DataObject, fmt: str) -> None:
    corruption = data.draw(corruptions(name, fmt), label="corruption")
    shop = corruption.shop
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        folder = Path(tmp)
        spec = _write(shop, folder, fmt)
        with pytest.raises((SpecError, DataValidationError)) as refused:
            load_dataset(spec)
        _check_refused(refused.value, corruption, folder)

        lenient = replace(spec, policy="drop-and-report")
        try:
            dataset = load_dataset(lenient)
        except (SpecError, DataValidationError) as e:
            assert corruption.spec_error or corruption.fatal is not False, f"drop-and-report should load: {e}"
            _check_refused(e, corruption, folder)
            return
        assert not corruption.spec_error and not corruption.fatal, "drop-and-report should refuse"

    # Whatever was dropped is counted: rows in = rows out + rows reported dropped, table by table.
    report = dataset.report
    assert report is not None and not report.ok
    assert any(corruption.names(p.table, p.column) and p.kind in corruption.kinds for p in report.problems), report
    assert report.dropped.get(corruption.table, 0) == corruption.rows, str(report)
    loaded = {"interactions": dataset.interactions, "items": dataset.items, "users": dataset.users}
    for table in _tables(shop):
        written = getattr(shop, table)
        assert report.rows_in[table] == len(written), table
        dropped = report.dropped.get(table, 0)
        if table == "interactions":
            dropped += report.dropped.get("interactions_orphaned", 0)
        assert len(loaded[table]) == len(written) - dropped, (table, str(report))
