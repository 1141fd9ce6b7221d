"""The data contract: canonical column names, the roles of a loaded data set, and the in-memory `Dataset`.

A data set is three tables. Whatever the source calls its columns, a loaded `Dataset` uses the canonical
names below for the columns that play a role, and keeps attribute columns under their own names, listed by
kind in its `Schema`:

- **interactions**: ``user_id``, ``item_id``, ``timestamp`` (a timestamp or a position in the user's sequence:
  anything that orders a user's events), ``label`` (graded: impression 0 / click 1 / cart 2 / purchase 3, a
  rating, or 1 for implicit feedback), optional ``query`` (search text, ``""`` when there was none), optional
  ``request_id`` (rows shown together for one request share it) and optional categorical context columns.
- **items**: ``item_id`` plus categorical, numeric and text attributes.
- **users** (optional): ``user_id`` plus categorical and numeric attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import pandas as pd

USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
LABEL = "label"
QUERY = "query"
REQUEST_ID = "request_id"

LabelKind = Literal["graded", "rating", "implicit"]


@dataclass(frozen=True)
class LabelSpec:
    """What the ``label`` column means.

    Attributes:
        kind: ``"graded"`` (event grades such as impression 0 … purchase 3), ``"rating"`` (explicit ratings) or
            ``"implicit"`` (every row is a positive, label 1).
        min: The smallest valid label.
        max: The largest valid label.
        positive_threshold: A row with ``label >= positive_threshold`` is a positive interaction (it enters
            histories and can be held out for evaluation).
        names: Optional names of graded levels, e.g. ``{0: "impression", 1: "click"}``. Source files may
            store these names instead of numbers; loaders map them.
    """

    kind: LabelKind = "implicit"
    min: float = 1.0
    max: float = 1.0
    positive_threshold: float = 1.0
    names: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("graded", "rating", "implicit"):
            raise ValueError(
                f"`label.kind` should be one of 'graded', 'rating', 'implicit'. Received: kind={self.kind!r}"
            )
        if not self.min <= self.positive_threshold <= self.max:
            raise ValueError(
                "`label.positive_threshold` should lie in [label.min, label.max]. Received: "
                f"positive_threshold={self.positive_threshold}, min={self.min}, max={self.max}"
            )


@dataclass(frozen=True)
class Schema:
    """The roles of a loaded data set's columns.

    Attributes:
        label: What the label means (`LabelSpec`).
        has_query: Whether interactions carry a ``query`` text column.
        has_request_id: Whether interactions carry a ``request_id`` column.
        context: Categorical request-context columns of the interactions (device, hour, ...).
        item_categorical: Categorical item attributes (category levels, brand, ...).
        item_numeric: Numeric item attributes (price, ...).
        item_text: Text item attributes (title, ...).
        user_categorical: Categorical user attributes.
        user_numeric: Numeric user attributes.
    """

    label: LabelSpec = field(default_factory=LabelSpec)
    has_query: bool = False
    has_request_id: bool = False
    context: tuple[str, ...] = ()
    item_categorical: tuple[str, ...] = ()
    item_numeric: tuple[str, ...] = ()
    item_text: tuple[str, ...] = ()
    user_categorical: tuple[str, ...] = ()
    user_numeric: tuple[str, ...] = ()

    def interaction_columns(self) -> list[str]:
        """The interaction columns a `Dataset` with this schema holds, in canonical order."""
        columns = [USER_ID, ITEM_ID, TIMESTAMP, LABEL]
        if self.has_query:
            columns.append(QUERY)
        if self.has_request_id:
            columns.append(REQUEST_ID)
        return columns + list(self.context)

    def item_columns(self) -> list[str]:
        return [ITEM_ID, *self.item_categorical, *self.item_numeric, *self.item_text]

    def user_columns(self) -> list[str]:
        return [USER_ID, *self.user_categorical, *self.user_numeric]

    def to_dict(self) -> dict:
        return {
            "label": {
                "kind": self.label.kind,
                "min": self.label.min,
                "max": self.label.max,
                "positive_threshold": self.label.positive_threshold,
                "names": {str(k): v for k, v in self.label.names.items()},
            },
            "has_query": self.has_query,
            "has_request_id": self.has_request_id,
            "context": list(self.context),
            "item_categorical": list(self.item_categorical),
            "item_numeric": list(self.item_numeric),
            "item_text": list(self.item_text),
            "user_categorical": list(self.user_categorical),
            "user_numeric": list(self.user_numeric),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Schema:
        label = dict(data.get("label", {}))
        label["names"] = {int(k): v for k, v in label.get("names", {}).items()}
        tuples = {
            key: tuple(data.get(key, ()))
            for key in (
                "context",
                "item_categorical",
                "item_numeric",
                "item_text",
                "user_categorical",
                "user_numeric",
            )
        }
        return cls(
            label=LabelSpec(**label),
            has_query=bool(data.get("has_query", False)),
            has_request_id=bool(data.get("has_request_id", False)),
            **tuples,
        )


@dataclass
class Dataset:
    """A loaded data set in canonical form.

    Attributes:
        name: A short name for reports.
        schema: The roles of the columns.
        interactions: One row per event, columns ``schema.interaction_columns()``.
        items: One row per item, columns ``schema.item_columns()``; item ids are unique.
        users: One row per user, columns ``schema.user_columns()``, or ``None`` when the source has no user
            table.
        report: What validation found while loading (a `features.validation.ValidationReport`), if it ran.

    Example:
        >>> from features import load_movielens_100k
        >>> ds = load_movielens_100k("../shared/data/movielens-100k")
        >>> ds.num_users, ds.num_items, ds.num_interactions
        (943, 1682, 100000)
    """

    name: str
    schema: Schema
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame | None = None
    report: object | None = None

    @property
    def num_interactions(self) -> int:
        return len(self.interactions)

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def num_users(self) -> int:
        """Distinct users: those of the user table and those that appear in interactions."""
        seen = pd.Index(self.interactions[USER_ID].unique())
        if self.users is not None:
            seen = seen.union(pd.Index(self.users[USER_ID]))
        return len(seen)

    def positive_mask(self, interactions: pd.DataFrame | None = None) -> pd.Series:
        """Rows whose label reaches the schema's positive threshold."""
        frame = self.interactions if interactions is None else interactions
        return frame[LABEL] >= self.schema.label.positive_threshold

    def with_interactions(self, interactions: pd.DataFrame) -> Dataset:
        """The same catalog and users with other interactions (e.g. a training split)."""
        return replace(self, interactions=interactions, report=None)

    def summary(self) -> dict:
        """Counts a person checks first: users, items, interactions, positives, label histogram."""
        positives = int(self.positive_mask().sum())
        labels = self.interactions[LABEL].value_counts().sort_index()
        return {
            "name": self.name,
            "users": self.num_users,
            "items": self.num_items,
            "interactions": self.num_interactions,
            "positives": positives,
            "labels": {str(k): int(v) for k, v in labels.items()},
            "with_query": int((self.interactions[QUERY] != "").sum()) if self.schema.has_query else 0,
            "requests": int(self.interactions[REQUEST_ID].nunique()) if self.schema.has_request_id else None,
        }
