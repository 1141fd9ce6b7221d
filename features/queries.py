"""Queries: what exists at request time, built without looking into the future.

A query is the user id, the user's attributes, the query text (``""`` when there was none), the user's recent
history (the last ``max_history`` positive item ids strictly before the request) and the request context.
Training queries are built from the training split with histories from training positives only; evaluation
queries are built from held-out events with histories cut at the request time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.schema import ITEM_ID, LABEL, QUERY, REQUEST_ID, TIMESTAMP, USER_ID, Dataset


@dataclass
class QueryBatch:
    """A batch of queries, one row per request, raw (not yet encoded) values.

    Attributes:
        user_id: ``[num_queries]`` raw user ids (ints or strings, as in the data set).
        query: ``[num_queries]`` object array of query strings, ``""`` when the request had no text.
        history: ``[num_queries, max_history]`` raw item ids, most recent first; only the first
            ``history_length[i]`` entries of row ``i`` are meaningful (the rest is padding: 0 or ``""``).
        history_length: ``[num_queries]`` int32, how many history entries each row has.
        timestamp: ``[num_queries]`` request time (same units as the data set's ``timestamp``).
        context: Context column name -> ``[num_queries]`` raw values.
        user_attributes: User attribute name -> ``[num_queries]`` raw values (NaN / None for users missing
            from the user table).
    """

    user_id: np.ndarray
    query: np.ndarray
    history: np.ndarray
    history_length: np.ndarray
    timestamp: np.ndarray
    context: dict[str, np.ndarray] = field(default_factory=dict)
    user_attributes: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.user_id)

    def __post_init__(self) -> None:
        n = len(self.user_id)
        arrays = {
            "query": self.query,
            "history_length": self.history_length,
            "timestamp": self.timestamp,
            **{f"context[{k!r}]": v for k, v in self.context.items()},
            **{f"user_attributes[{k!r}]": v for k, v in self.user_attributes.items()},
        }
        for name, values in arrays.items():
            if len(values) != n:
                raise ValueError(
                    f"`{name}` should have one entry per query ({n} from `user_id`). Received: {len(values)}"
                )
        if self.history.ndim != 2 or self.history.shape[0] != n:
            raise ValueError(
                f"`history` should have shape [num_queries={n}, max_history]. Received: {self.history.shape}"
            )

    def take(self, rows: np.ndarray | slice) -> QueryBatch:
        """The sub-batch of the given rows."""
        return QueryBatch(
            user_id=self.user_id[rows],
            query=self.query[rows],
            history=self.history[rows],
            history_length=self.history_length[rows],
            timestamp=self.timestamp[rows],
            context={k: v[rows] for k, v in self.context.items()},
            user_attributes={k: v[rows] for k, v in self.user_attributes.items()},
        )


def build_queries(
    events: pd.DataFrame,
    dataset: Dataset,
    *,
    history_source: pd.DataFrame | None = None,
    max_history: int = 20,
) -> QueryBatch:
    """Builds one query per event row, with the history that existed at the event's request time.

    Args:
        events: Interaction rows (canonical columns) to turn into queries, e.g. held-out test events or the
            training rows themselves.
        dataset: The data set (its schema says the label threshold and which context columns exist; its user
            table gives user attributes).
        history_source: The interactions histories may be drawn from; ``events`` and ``history_source`` must
            be rows of the same interactions frame (index labels identify rows). Only positive rows that come
            strictly before an event's request count: an earlier timestamp, or an equal timestamp and an
            earlier request id (without request ids: an earlier row). Rows of the event's own request never
            count. Defaults to ``dataset.interactions``; pass the training split to build training features.
        max_history: How many most recent items to keep per query.

    Returns:
        A `QueryBatch` aligned with ``events`` (row ``i`` is the query of ``events.iloc[i]``).
    """
    if max_history < 0:
        raise ValueError(f"`max_history` should be a non-negative integer. Received: max_history={max_history}")
    source = dataset.interactions if history_source is None else history_source
    schema = dataset.schema
    positives = source.loc[source[LABEL] >= schema.label.positive_threshold]
    n = len(events)
    boundary, start, pos_items = _history_bounds(events, positives, schema.has_request_id)
    length = np.minimum(boundary - start, max_history).astype(np.int32)
    pad = "" if pos_items.dtype.kind in "OUST" else 0
    history = np.full((n, max_history), pad, dtype=pos_items.dtype)
    for j in range(max_history):
        has = length > j
        history[has, j] = pos_items[boundary[has] - 1 - j]

    missing_context = [name for name in schema.context if name not in events.columns]
    if missing_context:
        raise ValueError(
            f"`events` should have the context column(s) {list(schema.context)} of the schema. Received: "
            f"columns {list(events.columns)}, missing {missing_context}"
        )
    context = {name: events[name].to_numpy() for name in schema.context}
    user_attributes: dict[str, np.ndarray] = {}
    if dataset.users is not None:
        attrs = dataset.users.set_index(USER_ID)
        rows = attrs.index.get_indexer(events[USER_ID].to_numpy())
        for name in (*schema.user_categorical, *schema.user_numeric):
            column = attrs[name].to_numpy()
            values = column[rows.clip(0)] if len(column) else np.empty(n, dtype=object)
            missing = rows < 0
            if missing.any():
                values = values.astype(object if name in schema.user_categorical else np.float64)
                values[missing] = None if name in schema.user_categorical else np.nan
            user_attributes[name] = values
    query = events[QUERY].to_numpy(dtype=object) if QUERY in events.columns else np.full(n, "", dtype=object)
    return QueryBatch(
        user_id=events[USER_ID].to_numpy(),
        query=query,
        history=history,
        history_length=length,
        timestamp=events[TIMESTAMP].to_numpy(),
        context=context,
        user_attributes=user_attributes,
    )


def _history_bounds(
    events: pd.DataFrame, positives: pd.DataFrame, has_request_id: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Locates each event's history among the positives.

    Every row gets the sort key (user, time, sequence key): the request id where the data has one (with the
    request's earliest timestamp as its time, so a request is ordered as one unit), else the row's index label
    (its position in the source, which orders equal-time rows of a sequence file). Positives sorted by that key
    form one array; an event's history is the run of its user's positives with a strictly smaller key, so rows
    of the event's own request are never part of it.

    Returns:
        ``(boundary, start, items)``: the event's history is ``items[start:boundary]`` (oldest first), with
        ``items`` the positives' item ids in key order.
    """
    seq_col = REQUEST_ID if has_request_id else None
    users = np.concatenate([positives[USER_ID].to_numpy(), events[USER_ID].to_numpy()])
    times = np.concatenate([positives[TIMESTAMP].to_numpy(), events[TIMESTAMP].to_numpy()])
    if seq_col is None:
        seq = np.concatenate([positives.index.to_numpy(), events.index.to_numpy()])
    else:
        seq = np.concatenate([positives[seq_col].to_numpy(), events[seq_col].to_numpy()])
    user_codes = pd.factorize(users, sort=True)[0]
    seq_codes = pd.factorize(seq, sort=True)[0]
    if seq_col is not None:
        times = _request_times(user_codes, seq_codes, times)
    num_pos = len(positives)
    is_event = np.zeros(len(users), dtype=np.int8)
    is_event[num_pos:] = 1
    # Events sort before positives with an equal key, so equal-key positives are never counted.
    order = np.lexsort((1 - is_event, seq_codes, times, user_codes))
    pos_sorted = order[is_event[order] == 0]
    positives_before = np.cumsum(1 - is_event[order]) - (1 - is_event[order])
    boundary = np.empty(len(events), dtype=np.int64)
    event_positions = np.flatnonzero(is_event[order] == 1)
    boundary[order[event_positions] - num_pos] = positives_before[event_positions]
    sorted_user_codes = user_codes[pos_sorted]
    start = np.searchsorted(sorted_user_codes, user_codes[num_pos:], side="left")
    items = positives[ITEM_ID].to_numpy()[pos_sorted]
    return boundary, start, items


def _request_times(user_codes: np.ndarray, seq_codes: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Every row of a request gets the request's earliest timestamp, so a request is ordered as one unit."""
    keys = pd.DataFrame({"user": user_codes, "seq": seq_codes, "time": times})
    return keys.groupby(["user", "seq"], sort=False)["time"].transform("min").to_numpy()
