"""A description of a loaded data set: table sizes, column roles and types, coverage, and problems found."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.schema import ITEM_ID, LABEL, QUERY, REQUEST_ID, TIMESTAMP, USER_ID, Dataset


def _roles(dataset: Dataset) -> dict[str, dict[str, str]]:
    s = dataset.schema
    inter = {USER_ID: "user id", ITEM_ID: "item id", TIMESTAMP: "order", LABEL: f"label ({s.label.kind})"}
    if s.has_query:
        inter[QUERY] = "query text"
    if s.has_request_id:
        inter[REQUEST_ID] = "request id"
    inter.update({c: "context" for c in s.context})
    items = {ITEM_ID: "item id"}
    items.update({c: "categorical" for c in s.item_categorical})
    items.update({c: "numeric" for c in s.item_numeric})
    items.update({c: "text" for c in s.item_text})
    users = {USER_ID: "user id"}
    users.update({c: "categorical" for c in s.user_categorical})
    users.update({c: "numeric" for c in s.user_numeric})
    return {"interactions": inter, "items": items, "users": users}


def _coverage(column: pd.Series) -> float:
    """Share of rows with a value: not NaN/None and, for text, not empty."""
    if len(column) == 0:
        return 0.0
    present = column.notna().to_numpy().copy()
    if column.dtype == object or pd.api.types.is_string_dtype(column.dtype):
        present &= (column.astype("string").str.strip() != "").fillna(False).to_numpy(dtype=bool)
    return float(present.mean())


def describe_dataset(dataset: Dataset) -> dict:
    """Everything ``cascade data inspect`` shows, as plain data (JSON-serialisable).

    Returns:
        ``{"summary": ..., "tables": {table: {"rows": n, "columns": [{"name", "role", "dtype", "coverage",
        "distinct"}]}}, "interactions_per_user": {...}, "interactions_per_item": {...}, "validation": ...}``.
    """
    roles = _roles(dataset)
    tables: dict[str, dict] = {}
    frames = {"interactions": dataset.interactions, "items": dataset.items, "users": dataset.users}
    for table, frame in frames.items():
        if frame is None:
            continue
        columns = []
        for name in frame.columns:
            column = frame[name]
            columns.append(
                {
                    "name": str(name),
                    "role": roles[table].get(str(name), "unused"),
                    "dtype": str(column.dtype),
                    "coverage": _coverage(column),
                    "distinct": int(column.nunique(dropna=True)),
                }
            )
        tables[table] = {"rows": len(frame), "columns": columns}
    per_user = dataset.interactions.groupby(USER_ID, sort=False).size().to_numpy()
    per_item = dataset.interactions.groupby(ITEM_ID, sort=False).size().to_numpy()

    def stats(counts: np.ndarray) -> dict[str, float]:
        if len(counts) == 0:
            return {"min": 0, "median": 0, "max": 0}
        return {"min": int(counts.min()), "median": float(np.median(counts)), "max": int(counts.max())}

    report = dataset.report
    return {
        "summary": dataset.summary(),
        "tables": tables,
        "interactions_per_user": stats(per_user),
        "interactions_per_item": stats(per_item),
        "items_never_interacted": int(dataset.num_items - dataset.interactions[ITEM_ID].nunique()),
        "validation": report.to_dict() if report is not None and hasattr(report, "to_dict") else None,
    }
