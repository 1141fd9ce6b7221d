"""`QueryEncoder`: `FeatureEncoders.encode_queries` for live `Query` objects, without per-call vectorisation cost.

``encode_queries`` is built for millions of rows (Arrow tokenisation, pandas lookups): every call pays ~1 ms of
fixed cost, more than the rest of a search. Live queries come one at a time, so this encoder does the same
mapping with Python dict lookups and one regular expression, and produces *identical* arrays (tested against
``encode_queries`` on random queries):

- vocabularies become dicts (built lazily, once); an unseen value goes through the vocabulary's own
  ``encode``, so out-of-vocabulary buckets (a keyed hash) and kind errors are exactly the library's;
- query text that is ASCII without ``&`` is lowercased and split on non-``[a-z0-9]`` runs — what the Arrow
  tokenizer does byte-wise for ASCII; other text (HTML entities, non-ASCII) goes through the tokenizer itself;
- the attributes of every user in the bundle's user table are encoded once at load, so a known user's features
  are a row lookup; explicit ``Query.user_attributes`` are encoded with the library's encoders.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features import FeatureEncoders
from features.encoders import Vocabulary, _encode_attributes
from features.schema import USER_ID

if TYPE_CHECKING:
    from index.searcher import Query

_ASCII_TOKEN = re.compile(r"[a-z0-9]+")
_DICT_MAX_VALUES = 5_000_000
"""Vocabularies up to this size become dicts (about 100 bytes per entry); larger ones use pandas lookups."""


class _Lookup:
    """One vocabulary as a dict (value -> index), with the vocabulary itself for unseen values."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary
        self._map: dict[Any, int] | None = None
        self._lock = threading.Lock()

    def _mapping(self) -> dict[Any, int] | None:
        if self._map is None and len(self.vocabulary.values) <= _DICT_MAX_VALUES:
            with self._lock:
                if self._map is None:
                    offset = 1 + self.vocabulary.num_oov_buckets
                    values = self.vocabulary.values.tolist()
                    self._map = dict(zip(values, range(offset, offset + len(values)), strict=True))
        return self._map

    def index(self, value: Any) -> int:
        if value is None or (isinstance(value, str) and value == ""):
            return 0
        if isinstance(value, float) and math.isnan(value):
            return 0
        mapping = self._mapping()
        if mapping is not None and not isinstance(value, bool):
            found = mapping.get(value)
            if found is not None:
                return found
        return int(self.vocabulary.encode(np.array([value], dtype=object))[0])

    def indices(self, values: list[Any]) -> list[int]:
        mapping = self._mapping()
        if mapping is None:
            return self.vocabulary.encode(np.array(values, dtype=object)).tolist() if values else []
        return [self.index(v) for v in values]


class QueryEncoder:
    """Encodes `Query` objects exactly like ``encoders.encode_queries`` (see the module docstring).

    Args:
        encoders: The bundle's fitted encoders.
        users: The bundle's user table (``user_id`` + user attribute columns), or ``None``.
    """

    def __init__(self, encoders: FeatureEncoders, users: pd.DataFrame | None) -> None:
        self.encoders = encoders
        config = encoders.config
        self.max_query_tokens = config.max_query_tokens
        self.max_history = config.max_history
        self._user_ids = _Lookup(encoders.user_ids)
        self._item_ids = _Lookup(encoders.item_ids)
        self._tokens = _Lookup(encoders.tokenizer.vocabulary)
        self._context = {c: _Lookup(v) for c, v in encoders.context.items()}
        self._attribute_columns = [*encoders.user_categorical, *encoders.user_normalizers]
        # Encoded attributes of every known user (row r of the user table) plus a last row for unknown users.
        table: dict[str, np.ndarray] = {}
        self._user_rows: dict[Any, int] = {}
        if self._attribute_columns:
            frame = pd.DataFrame({c: pd.Series([None], dtype=object) for c in self._attribute_columns})
            if users is not None and len(users):
                frame = pd.concat([users[self._attribute_columns], frame], ignore_index=True)
                self._user_rows = {u: i for i, u in enumerate(users[USER_ID].tolist())}
            table = self._encode_attributes(frame)
        self._attributes = table
        self._unknown_row = len(next(iter(table.values()))) - 1 if table else 0

    def _encode_attributes(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        encoders = self.encoders
        columns = {}
        for c in self._attribute_columns:
            values = frame[c]
            if c in encoders.user_normalizers:
                values = pd.to_numeric(values.astype(object).where(values.notna(), np.nan), errors="raise")
            columns[c] = values
        return _encode_attributes(
            columns,
            prefix="user",
            categorical=encoders.user_categorical,
            normalizers=encoders.user_normalizers,
            bucketizers=encoders.user_bucketizers,
        )

    def encode(self, queries: Sequence[Query]) -> dict[str, np.ndarray]:
        """``[num_queries, ...]`` arrays with the keys and values of ``encoders.encode_queries``.

        Anonymous queries (``user_id=None``) get user index 0 here; the Searcher maps them to an OOV bucket.
        """
        n = len(queries)
        user_index = [self._user_ids.index(q.user_id) for q in queries]
        tokens = np.zeros((n, self.max_query_tokens), dtype=np.int32)
        history = np.zeros((n, self.max_history), dtype=np.int32)
        history_length = np.zeros(n, dtype=np.int32)
        context = {c: np.zeros(n, dtype=np.int32) for c in self._context}
        rows = np.full(n, self._unknown_row, dtype=np.int64)
        overrides = []
        for i, q in enumerate(queries):
            row = self._tokenize(q.text)
            if row:
                tokens[i, : len(row)] = row
            items = list(q.history)[: self.max_history]
            if items:
                history[i, : len(items)] = self._item_ids.indices(items)
                history_length[i] = len(items)
            for c, lookup in self._context.items():
                value = q.context.get(c)
                if value is not None:
                    context[c][i] = lookup.index(value)
            if self._attribute_columns:
                if q.user_id is not None:
                    rows[i] = self._user_rows.get(q.user_id, self._unknown_row)
                if q.user_attributes is not None:
                    overrides.append(i)
        out: dict[str, np.ndarray] = {"user_id": np.asarray(user_index, dtype=np.int32)}
        for key, values in self._attributes.items():
            out[key] = values[rows]
        for i in overrides:
            self._override_attributes(out, i, queries[i])
        out["query_tokens"] = tokens
        out["history"] = history
        out["history_length"] = history_length
        for c, values in context.items():
            out[f"context_{c}"] = values
        return out

    def _tokenize(self, text: str) -> list[int]:
        if not text:
            return []
        if text.isascii() and "&" not in text:
            words = _ASCII_TOKEN.findall(text.lower())[: self.max_query_tokens]
            return self._tokens.indices(words)
        encoded = self.encoders.tokenizer.encode(np.array([text], dtype=object), max_tokens=self.max_query_tokens)
        return encoded[0][encoded[0] != 0].tolist()

    def _override_attributes(self, out: dict[str, np.ndarray], i: int, query: Query) -> None:
        """Explicit attributes replace the looked-up ones for the columns they name."""
        given = dict(query.user_attributes or {})
        frame = {}
        for c in self._attribute_columns:
            if c in given:
                frame[c] = pd.Series([given[c]], dtype=object)
            else:
                frame[c] = pd.Series([None], dtype=object)
        encoded = self._encode_attributes(pd.DataFrame(frame))
        for c in given:
            for key in _attribute_keys(c, self.encoders):
                out[key][i] = encoded[key][0]


def _attribute_keys(column: str, encoders: FeatureEncoders) -> list[str]:
    if column in encoders.user_normalizers:
        return [f"user_{column}", f"user_{column}_missing", f"user_{column}_bucket"]
    return [f"user_{column}"]
