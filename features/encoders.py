"""Feature encoders: raw item, user, query and context values -> model-ready integer and float arrays.

Every model of the cascade (teacher, ranking student, both towers, the index job and the query-time searcher)
reads its inputs through one `FeatureEncoders` bundle, fitted once on the training split and saved beside the
model artifacts as JSON + ``.npy`` files (no pickle).

What is fitted on what (leakage policy):

- **Training interactions only**: the item-id vocabulary (items never interacted with in training are *cold*:
  they encode to out-of-vocabulary buckets), the user-id vocabulary, context vocabularies, the tokens of
  query texts and the item popularity counts. Nothing in these may come from validation or test rows.
- **The whole items table**: item categorical vocabularies, item numeric statistics and item text tokens. The
  catalog (category, brand, price, title) is metadata known at serving time for every item, cold ones
  included, so fitting on it is not leakage; it is what lets a cold item's attributes reach the model.
- **User-table rows of training users**: user categorical vocabularies and user numeric statistics. Users
  that only appear after the training cut-off (in a temporal split, users who signed up later) are not
  known at training time, so their attribute values may not shape the encoders.

Index layout shared by every `Vocabulary`: ``0`` is padding / missing (``None``, ``NaN``, ``""``),
``1 .. num_oov_buckets`` are out-of-vocabulary buckets chosen by a stable hash of the value, and the known
values follow, most frequent first.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import logging
import math
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features import _tf_env  # noqa: F401  (selects Keras 2 before anything can import TensorFlow)
from features.queries import QueryBatch
from features.schema import ITEM_ID, LABEL, QUERY, REQUEST_ID, USER_ID, Dataset

if TYPE_CHECKING:
    import tensorflow as tf

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the on-disk layout written by `FeatureEncoders.save`."""

MANIFEST_FILE = "encoders.json"
_POPULARITY_FILE = "item_popularity.npy"

ValueKind = Literal["int", "str"]

# pandas' fixed default SipHash key, spelled out so a change of pandas' default cannot move OOV buckets.
_HASH_KEY = "0123456789123456"
# A token is a maximal run of Unicode letters, numbers and combining marks (RE2 syntax, run by Arrow).
_SPLIT_PATTERN = r"[^\pL\pN\pM]+"
# Byte map that turns every ASCII byte that is not [0-9a-z] into a space; bytes >= 0x80 are kept.
_ASCII_SEPARATORS = np.arange(256, dtype=np.uint8)
_ASCII_SEPARATORS[[b for b in range(128) if not (ord("0") <= b <= ord("9") or ord("a") <= b <= ord("z"))]] = ord(" ")


# ---------------------------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------------------------


class Vocabulary:
    """Maps raw categorical values (all integers or all strings) to ``int32`` embedding-row indices.

    Index ``0`` is padding and missing values (``None``, ``NaN``, ``""``); indices ``1 .. num_oov_buckets``
    are out-of-vocabulary buckets: an unseen value lands in bucket ``1 + hash(value) % num_oov_buckets``,
    where ``hash`` is pandas' SipHash (`pd.util.hash_array`) with a fixed key, so a value gets the same bucket
    in every process and run. The known values follow at ``num_oov_buckets + 1 ..``, most frequent first,
    ties broken by ascending value.

    Args:
        name: Feature name, used in error messages.
        kind: ``"int"`` or ``"str"``: the kind of values this vocabulary holds.
        values: ``[num_values]`` the known values in index order (``int64`` or strings), unique.
        num_oov_buckets: How many out-of-vocabulary buckets; at least 1, so unseen values always encode.

    Example:
        >>> vocab = Vocabulary.fit(["a", "b", "b", None], name="brand", num_oov_buckets=2)
        >>> vocab.encode(["b", "a", "", "zzz"]).tolist()  # "zzz" is unseen: an OOV bucket in [1, 2]
        [3, 4, 0, 2]
        >>> vocab.decode([3, 4]).tolist()
        ['b', 'a']
    """

    def __init__(self, *, name: str, kind: ValueKind, values: np.ndarray, num_oov_buckets: int) -> None:
        if kind not in ("int", "str"):
            raise ValueError(f"`kind` should be 'int' or 'str'. Received: kind={kind!r}")
        _check_positive_int("num_oov_buckets", num_oov_buckets)
        values = np.asarray(values)
        if values.ndim != 1:
            raise ValueError(f"`values` of vocabulary {name!r} should be 1-D. Received: shape={values.shape}")
        if kind == "int":
            if values.size and values.dtype.kind not in "iu":
                raise ValueError(
                    f"`values` of int vocabulary {name!r} should be integers. Received: dtype={values.dtype}"
                )
            values = values.astype(np.int64)
        else:
            values = values.astype(object)
            if values.size and pd.api.types.infer_dtype(values, skipna=False) != "string":
                raise ValueError(f"`values` of str vocabulary {name!r} should all be strings.")
            if (values == "").any():
                raise ValueError(f"`values` of vocabulary {name!r} should not contain '' (it is padding).")
        if len(pd.unique(values)) != len(values):
            raise ValueError(f"`values` of vocabulary {name!r} should be unique.")
        self.name = name
        self.kind: ValueKind = kind
        self.values = values
        self.num_oov_buckets = int(num_oov_buckets)
        self._lookup_table: pd.Index | pa.Array | None = None

    @classmethod
    def fit(
        cls,
        values: Any,
        *,
        name: str,
        num_oov_buckets: int = 1,
        min_count: int = 1,
        max_size: int | None = None,
        kind: ValueKind | None = None,
    ) -> Vocabulary:
        """Learns the known values from training data.

        Args:
            values: ``[n]`` raw values (numpy array, pandas Series or list); missing values are ignored.
            name: Feature name, used in error messages.
            num_oov_buckets: How many out-of-vocabulary buckets (at least 1).
            min_count: A value is known when it occurs at least this many times.
            max_size: Keep at most this many known values (the most frequent); ``None`` for no limit.
            kind: Force ``"int"`` or ``"str"``; inferred from ``values`` when ``None`` (``"str"`` when every
                value is missing).

        Returns:
            The fitted vocabulary.
        """
        _check_positive_int("num_oov_buckets", num_oov_buckets)
        _check_positive_int("min_count", min_count)
        if max_size is not None:
            _check_positive_int("max_size", max_size)
        keys, _, kind = _normalize_keys(values, name=name, kind=kind)
        if kind == "str":
            known = _top_strings(_to_arrow(keys), min_count=min_count, max_size=max_size)
        else:
            uniques, counts = np.unique(keys, return_counts=True)
            # np.unique sorts ascending, so a stable sort by count keeps ties in ascending value order.
            order = np.argsort(-counts, kind="stable")
            known = uniques[order][counts[order] >= min_count][:max_size]
        return cls(name=name, kind=kind, values=known, num_oov_buckets=num_oov_buckets)

    @property
    def num_values(self) -> int:
        """How many known values."""
        return len(self.values)

    @property
    def size(self) -> int:
        """Total embedding rows: padding + OOV buckets + known values."""
        return 1 + self.num_oov_buckets + len(self.values)

    def encode(self, values: Any) -> np.ndarray:
        """Maps raw values to indices.

        Args:
            values: ``[n]`` raw values of this vocabulary's kind; missing values (``None``, ``NaN``, ``""``)
                are allowed.

        Returns:
            ``[n]`` int32 indices: 0 for missing, an OOV bucket in ``[1, num_oov_buckets]`` for unseen values,
            ``num_oov_buckets + 1 + rank`` for known ones.

        Raises:
            ValueError: When the values are of the other kind (strings for an int vocabulary or vice versa).
        """
        keys, present, _ = _normalize_keys(values, name=self.name, kind=self.kind)
        out = np.zeros(len(present), dtype=np.int32)
        out[present] = self._encode_keys(keys if self.kind == "int" else _to_arrow(keys))
        return out

    def decode(self, indices: Any) -> np.ndarray:
        """Maps indices of known values back to the values.

        Args:
            indices: ``[n]`` indices, each in ``[num_oov_buckets + 1, size)``.

        Returns:
            ``[n]`` values: int64 for an int vocabulary, an object array of ``str`` otherwise.

        Raises:
            ValueError: When an index is padding, an OOV bucket (it stands for many values) or out of range.
        """
        indices = np.asarray(indices)
        if indices.size and indices.dtype.kind not in "iu":
            raise ValueError(f"`indices` should be integers. Received: dtype={indices.dtype}")
        offset = 1 + self.num_oov_buckets
        bad = (indices < offset) | (indices >= self.size)
        if bad.any():
            raise ValueError(
                f"`indices` should be indices of known values of vocabulary {self.name!r}, in "
                f"[{offset}, {self.size}) (0 is padding, 1..{self.num_oov_buckets} are OOV buckets). "
                f"Received: {indices[bad][:5].tolist()}"
            )
        return self.values[indices.astype(np.int64) - offset]

    def _encode_keys(self, keys: np.ndarray | pa.Array) -> np.ndarray:
        """Indices of present keys: int64 keys for an int vocabulary, an Arrow string array otherwise."""
        if self.kind == "int":
            if self._lookup_table is None:
                self._lookup_table = pd.Index(self.values, dtype=np.int64)
            positions = self._lookup_table.get_indexer(keys)
        else:
            if self._lookup_table is None:
                self._lookup_table = _to_arrow(self.values)
            positions = pc.fill_null(pc.index_in(keys, value_set=self._lookup_table), -1).to_numpy()
        out = positions.astype(np.int64) + 1 + self.num_oov_buckets
        unknown = np.flatnonzero(positions < 0)
        if unknown.size:
            unseen = keys[unknown] if self.kind == "int" else keys.take(unknown).to_numpy(zero_copy_only=False)
            hashes = pd.util.hash_array(unseen, hash_key=_HASH_KEY)
            out[unknown] = 1 + (hashes % np.uint64(self.num_oov_buckets)).astype(np.int64)
        return out.astype(np.int32)

    def to_dict(self) -> dict:
        """JSON-safe description (the values themselves go to `to_arrays`)."""
        return {
            "type": "Vocabulary",
            "name": self.name,
            "kind": self.kind,
            "num_values": self.num_values,
            "num_oov_buckets": self.num_oov_buckets,
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The known values as plain arrays: ``values`` (int64) or UTF-8 ``offsets`` + ``data`` (strings)."""
        if self.kind == "int":
            return {"values": self.values}
        strings = _to_arrow(self.values)
        _, offsets, data = strings.buffers()
        offsets_array = np.frombuffer(offsets, dtype=np.int64)[: len(strings) + 1].copy()
        data_array = np.frombuffer(data, dtype=np.uint8)[: offsets_array[-1]].copy()
        return {"offsets": offsets_array, "data": data_array}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Vocabulary:
        """Inverse of `to_dict` + `to_arrays`."""
        name = data["name"]
        if data["kind"] == "int":
            values = arrays["values"]
        else:
            offsets, blob = arrays["offsets"], arrays["data"]
            if len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(blob) or (np.diff(offsets) < 0).any():
                raise ValueError(f"The string offsets of vocabulary {name!r} are inconsistent with its data.")
            strings = pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(blob))
            try:
                strings.validate(full=True)
            except pa.ArrowInvalid as e:
                raise ValueError(f"The strings of vocabulary {name!r} are not valid UTF-8: {e}") from e
            values = strings.to_numpy(zero_copy_only=False)
        if len(values) != data["num_values"]:
            raise ValueError(
                f"Vocabulary {name!r} has {len(values)} values but its description says {data['num_values']}."
            )
        return cls(name=name, kind=data["kind"], values=values, num_oov_buckets=data["num_oov_buckets"])

    def __repr__(self) -> str:
        return (
            f"Vocabulary(name={self.name!r}, kind={self.kind!r}, num_values={self.num_values}, "
            f"num_oov_buckets={self.num_oov_buckets})"
        )


def _top_strings(keys: pa.Array, *, min_count: int, max_size: int | None) -> np.ndarray:
    """Distinct strings seen at least ``min_count`` times, most frequent first, ties by ascending value."""
    if len(keys) == 0:
        return np.empty(0, dtype=object)
    counted = pc.value_counts(keys)
    table = pa.table({"value": counted.field("values"), "count": counted.field("counts")})
    # Arrow orders strings by UTF-8 bytes, which is code point order: the same in every process.
    order = pc.sort_indices(table, sort_keys=[("count", "descending"), ("value", "ascending")])
    table = table.take(order)
    table = table.filter(pc.greater_equal(table["count"], min_count))
    if max_size is not None:
        table = table.slice(0, max_size)
    return table["value"].to_numpy()


def _normalize_keys(values: Any, *, name: str, kind: ValueKind | None) -> tuple[np.ndarray, np.ndarray, ValueKind]:
    """Splits raw categorical values into present keys and a presence mask, checking their kind.

    Returns:
        ``(keys, present, kind)``: ``keys`` holds the present values only (int64, or an object array of
        ``str``), ``present`` is the ``[n]`` bool mask of non-missing entries.
    """
    array = _to_numpy(values)
    if array.ndim != 1:
        raise ValueError(f"`{name}` should be 1-D. Received: shape={array.shape}")
    if array.dtype.kind in "US":
        array = array.astype(object)
    if array.dtype.kind in "biu":
        present = np.ones(len(array), dtype=bool)
        keys: np.ndarray = array.astype(np.int64)
        found: ValueKind | None = "int"
    elif array.dtype.kind == "f":
        present = ~np.isnan(array)
        keys = _integral_floats(array[present], name=name)
        found = "int" if present.any() else None
    elif array.dtype.kind == "O":
        present = ~pd.isna(array)
        present[present] = array[present] != ""  # compared only where not NA: pd.NA == "" has no truth value
        keys = array[present]
        inferred = pd.api.types.infer_dtype(keys, skipna=False) if len(keys) else "empty"
        if inferred == "string":
            found = "str"
        elif inferred in ("integer", "boolean"):
            found = "int"
            keys = keys.astype(np.int64)
        elif inferred in ("floating", "mixed-integer-float"):
            found = "int"
            keys = _integral_floats(keys.astype(np.float64), name=name)
        elif inferred == "empty":
            found = None
            keys = np.empty(0, dtype=np.int64 if kind == "int" else object)
        else:
            example = _first_of_other_type(keys)
            raise ValueError(
                f"`{name}` should hold values of one kind, all integers or all strings. Received: "
                f"{inferred} values, e.g. {example!r}"
            )
    else:
        raise ValueError(f"`{name}` should hold integers or strings. Received: dtype={array.dtype}")
    if kind is not None and found is not None and found != kind:
        example = _scalar(keys[0]) if len(keys) else None
        raise ValueError(
            f"`{name}` should hold {kind} values, as the vocabulary was fitted on. Received: {found} values, "
            f"e.g. {example!r}"
        )
    resolved: ValueKind = kind or found or "str"
    if resolved == "str" and keys.dtype != object:
        keys = keys.astype(object)
    return keys, present, resolved


def _integral_floats(values: np.ndarray, *, name: str) -> np.ndarray:
    """Integer-valued floats (an int column that picked up NaN) -> int64; anything else is an error."""
    bad = ~np.isfinite(values) | (values != np.round(values))
    if bad.any():
        raise ValueError(
            f"`{name}` should hold integers or strings (categorical values). Received: non-integral float "
            f"values, e.g. {_scalar(values[bad][0])!r}"
        )
    return values.astype(np.int64)


def _first_of_other_type(values: np.ndarray) -> Any:
    first_type = type(values[0])
    for value in values:
        if type(value) is not first_type:
            return _scalar(value)
    return _scalar(values[0])


def _scalar(value: Any) -> Any:
    """A numpy scalar as the Python value, so error messages print ``1`` rather than ``np.int64(1)``."""
    return value.item() if isinstance(value, np.generic) else value


def _to_numpy(values: Any) -> np.ndarray:
    """A numpy view of a Series, Index, extension array, Arrow array or list; missing values as None/NaN."""
    if isinstance(values, pa.ChunkedArray | pa.Array):
        return values.to_numpy(zero_copy_only=False)
    if isinstance(values, pd.Series | pd.Index | pd.api.extensions.ExtensionArray):
        if isinstance(values.dtype, np.dtype):
            return values.to_numpy()
        if pd.api.types.is_string_dtype(values.dtype):
            return values.to_numpy(dtype=object, na_value=None)
        if pd.api.types.is_bool_dtype(values.dtype) or pd.api.types.is_integer_dtype(values.dtype):
            return values.to_numpy(dtype=object, na_value=None)
        if pd.api.types.is_float_dtype(values.dtype):
            return values.to_numpy(dtype=np.float64, na_value=np.nan)
        return values.to_numpy(dtype=object)
    # Lists go through dtype=object: np.asarray(["a", 1]) would silently turn 1 into "1".
    array = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
    if array.dtype.kind == "T":  # numpy 2 StringDType
        array = array.astype(object)
    return array


def _to_arrow(keys: np.ndarray) -> pa.Array:
    return pa.array(keys, type=pa.large_string())


# ---------------------------------------------------------------------------------------------------------------
# Numeric features
# ---------------------------------------------------------------------------------------------------------------


class NormalizedValues(NamedTuple):
    """Output of `NumericNormalizer.transform`."""

    values: np.ndarray
    """``[n]`` float32 standardized values; missing entries hold 0 (the imputed training mean)."""
    missing: np.ndarray
    """``[n]`` float32, 1.0 where the raw value was NaN or infinite, else 0.0."""


class NumericNormalizer:
    """Standardizes a numeric feature with training statistics, optionally after a signed ``log1p``.

    ``transform`` computes ``(t(x) - mean) / std`` where ``t`` is the identity or
    ``sign(x) * log1p(|x|)`` (equal to ``log1p`` for the non-negative, heavy-tailed values it is meant for,
    such as prices, and defined for negatives too). ``mean`` and ``std`` (population standard deviation,
    ``ddof=0``) come from the finite transformed training values. NaN and infinite values are imputed with the
    training mean (so they normalize to exactly 0) and reported in a separate missing indicator.

    Args:
        name: Feature name, used in error messages.
        mean: Mean of the transformed training values.
        std: Standard deviation of the transformed training values; 1 when they were constant or absent.
        log1p: Whether to apply the signed ``log1p`` first.

    Example:
        >>> norm = NumericNormalizer.fit(np.array([1.0, 3.0, np.nan]), name="price")
        >>> norm.mean, norm.std
        (2.0, 1.0)
        >>> norm.transform(np.array([3.0, np.nan])).values.tolist()
        [1.0, 0.0]
    """

    def __init__(self, *, name: str, mean: float, std: float, log1p: bool = False) -> None:
        if not math.isfinite(mean):
            raise ValueError(f"`mean` should be finite. Received: mean={mean}")
        if not (math.isfinite(std) and std > 0):
            raise ValueError(f"`std` should be a positive finite number. Received: std={std}")
        self.name = name
        self.mean = float(mean)
        self.std = float(std)
        self.log1p = bool(log1p)

    @classmethod
    def fit(cls, values: Any, *, name: str, log1p: bool = False) -> NumericNormalizer:
        """Learns ``mean`` and ``std`` from the finite training values.

        Args:
            values: ``[n]`` raw numeric training values; NaN and infinities are ignored.
            name: Feature name, used in error messages.
            log1p: Whether to apply the signed ``log1p`` before standardizing.
        """
        transformed = _apply_log1p(_as_float(values, name=name), log1p)
        finite = transformed[np.isfinite(transformed)]
        mean = float(finite.mean()) if finite.size else 0.0
        std = float(finite.std()) if finite.size else 0.0
        return cls(name=name, mean=mean, std=std if std > 0 else 1.0, log1p=log1p)

    def transform(self, values: Any) -> NormalizedValues:
        """Standardizes raw values.

        Args:
            values: ``[n]`` raw numeric values.

        Returns:
            `NormalizedValues` with ``values`` and ``missing``, both ``[n]`` float32.
        """
        transformed = _apply_log1p(_as_float(values, name=self.name), self.log1p)
        missing = ~np.isfinite(transformed)
        normalized = (np.where(missing, self.mean, transformed) - self.mean) / self.std
        return NormalizedValues(values=normalized.astype(np.float32), missing=missing.astype(np.float32))

    def to_dict(self) -> dict:
        return {
            "type": "NumericNormalizer",
            "name": self.name,
            "mean": self.mean,
            "std": self.std,
            "log1p": self.log1p,
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> NumericNormalizer:
        return cls(name=data["name"], mean=data["mean"], std=data["std"], log1p=data["log1p"])

    def __repr__(self) -> str:
        return f"NumericNormalizer(name={self.name!r}, mean={self.mean}, std={self.std}, log1p={self.log1p})"


class Bucketizer:
    """Discretizes a numeric feature into training quantile buckets.

    ``num_buckets - 1`` boundaries are the training quantiles at ``1/num_buckets, 2/num_buckets, ...``
    (numpy's default linear interpolation). A finite value ``x`` goes to bucket
    ``1 + #{boundaries <= x}``, in ``[1, num_buckets]`` (a value equal to a boundary goes up); NaN and infinite
    values go to bucket 0. Equal quantiles (many repeated training values) are merged, so some top buckets may
    stay unused; `size` is still ``num_buckets + 1``, so embedding shapes depend only on the configuration.

    Args:
        name: Feature name, used in error messages.
        boundaries: ``[<= num_buckets - 1]`` strictly increasing finite boundaries.
        num_buckets: How many buckets real values are spread over.

    Example:
        >>> b = Bucketizer.fit(np.arange(1.0, 9.0), name="price", num_buckets=4)  # boundaries 2.75, 4.5, 6.25
        >>> b.transform(np.array([1.0, 3.0, 4.5, 8.0, np.nan])).tolist()
        [1, 2, 3, 4, 0]
    """

    def __init__(self, *, name: str, boundaries: np.ndarray | Sequence[float], num_buckets: int) -> None:
        _check_positive_int("num_buckets", num_buckets)
        boundaries = np.asarray(boundaries, dtype=np.float64)
        if boundaries.ndim != 1 or len(boundaries) > num_buckets - 1:
            raise ValueError(
                f"`boundaries` should be 1-D with at most num_buckets - 1 = {num_buckets - 1} entries. "
                f"Received: shape={boundaries.shape}"
            )
        if not np.isfinite(boundaries).all() or (np.diff(boundaries) <= 0).any():
            raise ValueError(f"`boundaries` should be finite and strictly increasing. Received: {boundaries}")
        self.name = name
        self.boundaries = boundaries
        self.num_buckets = int(num_buckets)

    @classmethod
    def fit(cls, values: Any, *, name: str, num_buckets: int) -> Bucketizer:
        """Learns quantile boundaries from the finite training values.

        Args:
            values: ``[n]`` raw numeric training values; NaN and infinities are ignored.
            name: Feature name, used in error messages.
            num_buckets: How many buckets real values are spread over.
        """
        _check_positive_int("num_buckets", num_buckets)
        array = _as_float(values, name=name)
        finite = array[np.isfinite(array)]
        if finite.size == 0 or num_buckets == 1:
            return cls(name=name, boundaries=np.empty(0), num_buckets=num_buckets)
        quantiles = np.quantile(finite, np.arange(1, num_buckets) / num_buckets)
        return cls(name=name, boundaries=np.unique(quantiles), num_buckets=num_buckets)

    @property
    def size(self) -> int:
        """Total embedding rows: the missing bucket 0 plus ``num_buckets``."""
        return self.num_buckets + 1

    def transform(self, values: Any) -> np.ndarray:
        """Maps raw values to buckets.

        Args:
            values: ``[n]`` raw numeric values.

        Returns:
            ``[n]`` int32 buckets: 0 for NaN / infinite, else ``[1, num_buckets]``.
        """
        array = _as_float(values, name=self.name)
        buckets = 1 + np.searchsorted(self.boundaries, array, side="right")
        return np.where(np.isfinite(array), buckets, 0).astype(np.int32)

    def to_dict(self) -> dict:
        return {
            "type": "Bucketizer",
            "name": self.name,
            "num_buckets": self.num_buckets,
            "boundaries": self.boundaries.tolist(),
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> Bucketizer:
        return cls(name=data["name"], boundaries=data["boundaries"], num_buckets=data["num_buckets"])

    def __repr__(self) -> str:
        return f"Bucketizer(name={self.name!r}, num_buckets={self.num_buckets}, boundaries={self.boundaries})"


def _as_float(values: Any, *, name: str) -> np.ndarray:
    """Raw numeric values -> float64, with None / pd.NA as NaN; strings are an error."""
    array = _to_numpy(values)
    if array.dtype.kind in "biuf":
        return array.astype(np.float64)
    if array.dtype.kind in "OUS":
        array = array.astype(object)
        present = ~pd.isna(array)
        inferred = pd.api.types.infer_dtype(array[present], skipna=False) if present.any() else "empty"
        if inferred in ("integer", "floating", "mixed-integer-float", "boolean", "decimal", "empty"):
            out = np.full(len(array), np.nan)
            out[present] = array[present].astype(np.float64)
            return out
        example = next((v for v in array[present] if not isinstance(v, int | float | np.number)), None)
        raise ValueError(f"`{name}` should hold numbers. Received: {inferred} values, e.g. {example!r}")
    raise ValueError(f"`{name}` should hold numbers. Received: dtype={array.dtype}")


def _apply_log1p(values: np.ndarray, log1p: bool) -> np.ndarray:
    if not log1p:
        return values
    with np.errstate(invalid="ignore"):
        return np.sign(values) * np.log1p(np.abs(values))


# ---------------------------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------------------------


class TextTokenizer:
    """Splits text into tokens and maps them to indices with a token `Vocabulary`.

    Normalization, in order: missing -> ``""``; HTML entities unescaped (``html.unescape``: ``"&amp;"`` ->
    ``"&"``); Unicode lowercase; split into tokens, a token being a maximal run of Unicode letters, numbers and
    combining marks (everything else, punctuation and whitespace included, separates tokens).

    Args:
        vocabulary: The token vocabulary (kind ``"str"``).

    Example:
        >>> tok = TextTokenizer.fit(["Red Shoes &amp; socks", "red hat"], num_oov_buckets=1)
        >>> tok.tokenize(["Red-Shoes!"])
        [['red', 'shoes']]
        >>> tok.encode(["red shoes", ""], max_tokens=3).tolist()  # red=2 (seen twice), hat=3, shoes=4, socks=5
        [[2, 4, 0], [0, 0, 0]]
    """

    def __init__(self, *, vocabulary: Vocabulary) -> None:
        if vocabulary.kind != "str":
            raise ValueError(f"`vocabulary` should hold strings. Received: kind={vocabulary.kind!r}")
        self.vocabulary = vocabulary

    @classmethod
    def fit(
        cls,
        texts: Any,
        *,
        name: str = "tokens",
        num_oov_buckets: int = 1,
        min_count: int = 1,
        max_size: int | None = None,
    ) -> TextTokenizer:
        """Learns the token vocabulary.

        Args:
            texts: ``[n]`` training texts (missing values are empty texts).
            name: Name of the token vocabulary, used in error messages.
            num_oov_buckets: Out-of-vocabulary buckets for unseen tokens.
            min_count: A token is known when it occurs at least this many times in ``texts``.
            max_size: Keep at most this many tokens (the most frequent); ``None`` for no limit.
        """
        _check_positive_int("num_oov_buckets", num_oov_buckets)
        _check_positive_int("min_count", min_count)
        if max_size is not None:
            _check_positive_int("max_size", max_size)
        _, _, tokens = _split_tokens(texts, name=name)
        known = _top_strings(tokens, min_count=min_count, max_size=max_size)
        return cls(vocabulary=Vocabulary(name=name, kind="str", values=known, num_oov_buckets=num_oov_buckets))

    @property
    def size(self) -> int:
        """Total embedding rows of the token vocabulary."""
        return self.vocabulary.size

    def tokenize(self, texts: Any) -> list[list[str]]:
        """The normalized tokens of each text (for inspection; `encode` does not build Python lists)."""
        n, rows, tokens = _split_tokens(texts, name=self.vocabulary.name)
        out: list[list[str]] = [[] for _ in range(n)]
        for row, token in zip(rows.tolist(), tokens.to_pylist(), strict=True):
            out[row].append(token)
        return out

    def encode(self, texts: Any, *, max_tokens: int) -> np.ndarray:
        """Encodes texts to padded token indices.

        Args:
            texts: ``[n]`` strings (missing values are empty texts).
            max_tokens: Width of the output; longer texts keep their first ``max_tokens`` tokens.

        Returns:
            ``[n, max_tokens]`` int32 token indices, 0-padded at the end.
        """
        _check_positive_int("max_tokens", max_tokens)
        n, rows, tokens = _split_tokens(texts, name=self.vocabulary.name)
        out = np.zeros((n, max_tokens), dtype=np.int32)
        if len(rows) == 0:
            return out
        # Rows come sorted; a token's position is its offset from the first token of its row.
        arange = np.arange(len(rows))
        starts = np.r_[True, rows[1:] != rows[:-1]]
        position = arange - np.maximum.accumulate(np.where(starts, arange, 0))
        keep = position < max_tokens
        out[rows[keep], position[keep]] = self.vocabulary._encode_keys(tokens.filter(pa.array(keep)))
        return out

    def to_dict(self) -> dict:
        return {"type": "TextTokenizer", "vocabulary": self.vocabulary.to_dict()}

    def to_arrays(self) -> dict[str, np.ndarray]:
        return self.vocabulary.to_arrays()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> TextTokenizer:
        return cls(vocabulary=Vocabulary.from_dict(data["vocabulary"], arrays))

    def __repr__(self) -> str:
        return f"TextTokenizer(vocabulary={self.vocabulary!r})"


def _split_tokens(texts: Any, *, name: str) -> tuple[int, np.ndarray, pa.Array]:
    """Normalizes and splits texts.

    Returns:
        ``(num_texts, rows, tokens)``: ``rows`` is the ``[num_tokens]`` int64 row of each token (ascending),
        ``tokens`` the tokens in text order.
    """
    strings = pc.utf8_lower(_unescape_html(_as_arrow_strings(texts, name=name)))
    # Fast path: ASCII separators become spaces byte-wise (an ASCII byte never occurs inside a multi-byte UTF-8
    # character), then a plain split on spaces. Pieces that still hold a non-ASCII separator ("’", "–", a
    # no-break space) go through the Unicode regex split, which agrees with the byte map on ASCII characters.
    _, offsets, data = strings.buffers()
    if data is not None and data.size:
        mapped = _ASCII_SEPARATORS[np.frombuffer(data, dtype=np.uint8)]
        strings = pa.LargeStringArray.from_buffers(len(strings), offsets, pa.py_buffer(mapped), offset=strings.offset)
    pieces = pc.split_pattern(strings, " ")
    tokens = pc.list_flatten(pieces)
    rows = pc.list_parent_indices(pieces).to_numpy().astype(np.int64)
    non_ascii = np.flatnonzero(~pc.string_is_ascii(tokens).to_numpy(zero_copy_only=False))
    if non_ascii.size:
        has_separator = pc.match_substring_regex(tokens.take(non_ascii), _SPLIT_PATTERN)
        split_at = non_ascii[has_separator.to_numpy(zero_copy_only=False)]
        if split_at.size:
            tokens, rows = _resplit(tokens, rows, split_at)
    keep = pc.greater(pc.binary_length(tokens), 0)
    return len(strings), rows[keep.to_numpy(zero_copy_only=False)], tokens.filter(keep)


def _resplit(tokens: pa.Array, rows: np.ndarray, split_at: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """Replaces ``tokens[split_at]`` by their Unicode-regex pieces, keeping text order.

    No sort: each output token's position is computed from the piece counts, then one ``take`` reorders.
    """
    sub_pieces = pc.split_pattern_regex(tokens.take(split_at), _SPLIT_PATTERN)
    sub_offsets = sub_pieces.offsets.to_numpy().astype(np.int64)
    counts = np.ones(len(tokens), dtype=np.int64)
    counts[split_at] = np.diff(sub_offsets)
    starts = np.cumsum(counts) - counts
    kept = np.ones(len(tokens), dtype=bool)
    kept[split_at] = False
    kept_at = np.flatnonzero(kept)
    sub_local = pc.list_parent_indices(sub_pieces).to_numpy().astype(np.int64)
    sub_rank = np.arange(len(sub_local)) - sub_offsets[sub_local]
    order = np.empty(int(counts.sum()), dtype=np.int64)
    order[starts[kept_at]] = kept_at
    order[starts[split_at[sub_local]] + sub_rank] = len(tokens) + np.arange(len(sub_local))
    combined = pa.concat_arrays([tokens, pc.list_flatten(sub_pieces)])
    return combined.take(order), np.repeat(rows, counts)


def _unescape_html(strings: pa.LargeStringArray) -> pa.LargeStringArray:
    """``html.unescape`` of every text.

    html.unescape costs a few microseconds per text, seconds per million, so it only runs on texts holding a
    reference other than "&amp;"; texts whose only references are "&amp;" (what catalogs mostly hold) get it
    replaced in Arrow, which is what html.unescape's single pass does ("&amp;lt;" -> "&lt;").
    """
    # html.unescape only acts on "&" followed by "#" (numeric references) or a letter (named ones).
    num_refs = pc.count_substring_regex(strings, "&[#A-Za-z]").to_numpy(zero_copy_only=False)
    with_refs = num_refs > 0
    if not with_refs.any():
        return strings
    mask = pa.array(with_refs)
    escaped = strings.filter(mask)
    unescaped = pc.replace_substring(escaped, "&amp;", "&")
    others = num_refs[with_refs] > pc.count_substring(escaped, "&amp;").to_numpy(zero_copy_only=False)
    if others.any():
        others_mask = pa.array(others)
        redone = [html.unescape(text) for text in escaped.filter(others_mask).to_pylist()]
        unescaped = pc.replace_with_mask(unescaped, others_mask, pa.array(redone, pa.large_string()))
    return pc.replace_with_mask(strings, mask, unescaped)


def _as_arrow_strings(texts: Any, *, name: str) -> pa.LargeStringArray:
    """Texts as an Arrow large-string array without nulls (missing texts become ``""``)."""
    if isinstance(texts, pa.Array | pa.ChunkedArray) and texts.type in (pa.string(), pa.large_string()):
        strings = texts
    elif (
        isinstance(texts, pd.Series | pd.Index) and pd.api.types.is_string_dtype(texts.dtype) and texts.dtype != object
    ):
        strings = pa.array(texts)  # already Arrow-backed: no round trip through Python objects
    else:
        array = _to_numpy(texts)
        if array.ndim != 1:
            raise ValueError(f"`{name}` texts should be 1-D. Received: shape={array.shape}")
        try:
            strings = pa.array(array, type=pa.large_string(), from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            present = array[~pd.isna(array)] if array.dtype == object else array
            example = _scalar(next((v for v in present if not isinstance(v, str)), None))
            raise ValueError(
                f"`{name}` should hold strings. Received: {type(example).__name__} values, e.g. {example!r}"
            ) from e
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    return pc.fill_null(strings.cast(pa.large_string()), "")


# ---------------------------------------------------------------------------------------------------------------
# History
# ---------------------------------------------------------------------------------------------------------------


def encode_history(
    history: np.ndarray, history_length: np.ndarray, *, vocabulary: Vocabulary, max_history: int
) -> tuple[np.ndarray, np.ndarray]:
    """Encodes item-id histories with the item vocabulary.

    Args:
        history: ``[n, width]`` raw item ids, most recent first (as in `QueryBatch.history`); entries at
            positions ``>= history_length`` are padding of any value and are never looked up.
        history_length: ``[n]`` how many entries of each row are real, in ``[0, width]``.
        vocabulary: The item-id vocabulary.
        max_history: Output width; longer histories keep their ``max_history`` most recent items.

    Returns:
        ``(indices, length)``: ``[n, max_history]`` int32 item indices with 0 at positions ``>= length``, and
        ``[n]`` int32 ``min(history_length, max_history)``.
    """
    _check_positive_int("max_history", max_history)
    history = np.asarray(history)
    length = np.asarray(history_length)
    if history.ndim != 2:
        raise ValueError(f"`history` should have shape [num_queries, width]. Received: shape={history.shape}")
    if length.shape != (history.shape[0],):
        raise ValueError(
            f"`history_length` should have shape [num_queries={history.shape[0]}]. Received: shape={length.shape}"
        )
    if length.size and (length.dtype.kind not in "iu" or length.min() < 0 or length.max() > history.shape[1]):
        raise ValueError(
            f"`history_length` should be integers in [0, {history.shape[1]}] (the history width). Received: "
            f"dtype={length.dtype}, range=[{length.min()}, {length.max()}]"
        )
    width = min(max_history, history.shape[1])
    valid = np.arange(width)[None, :] < length[:, None]
    indices = np.zeros((history.shape[0], max_history), dtype=np.int32)
    window = indices[:, :width]
    window[valid] = vocabulary.encode(history[:, :width][valid])
    return indices, np.minimum(length, max_history).astype(np.int32)


# ---------------------------------------------------------------------------------------------------------------
# The bundle
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderConfig:
    """Sizes of the fitted encoders.

    Attributes:
        num_oov_buckets: Out-of-vocabulary buckets of every vocabulary (ids, categoricals, tokens).
        min_count: Occurrences an id or categorical value needs in the fitting data to be known.
        max_vocab_size: Most known values per id / categorical vocabulary (most frequent kept); ``None``: all.
        token_min_count: Occurrences a text token needs (in training queries + item texts) to be known.
        max_token_vocab_size: Most known tokens; ``None``: all.
        max_query_tokens: Width of ``query_tokens``.
        max_text_tokens: Width of each item text's token array (e.g. ``item_title_tokens``).
        max_history: Width of ``history``.
        num_numeric_buckets: Quantile buckets per numeric attribute.
        log1p_columns: Numeric attributes (item or user) standardized after a signed ``log1p`` (heavy-tailed
            values such as prices).
    """

    num_oov_buckets: int = 8
    min_count: int = 1
    max_vocab_size: int | None = None
    token_min_count: int = 2
    max_token_vocab_size: int | None = 100_000
    max_query_tokens: int = 16
    max_text_tokens: int = 32
    max_history: int = 20
    num_numeric_buckets: int = 10
    log1p_columns: tuple[str, ...] = ("price",)

    def __post_init__(self) -> None:
        for name in (
            "num_oov_buckets",
            "min_count",
            "token_min_count",
            "max_query_tokens",
            "max_text_tokens",
            "max_history",
            "num_numeric_buckets",
        ):
            _check_positive_int(name, getattr(self, name))
        for name in ("max_vocab_size", "max_token_vocab_size"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        if isinstance(self.log1p_columns, str) or not all(isinstance(c, str) for c in self.log1p_columns):
            raise ValueError(
                f"`log1p_columns` should be a tuple of column names. Received: log1p_columns={self.log1p_columns!r}"
            )
        object.__setattr__(self, "log1p_columns", tuple(self.log1p_columns))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["log1p_columns"] = list(self.log1p_columns)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EncoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown EncoderConfig fields {unknown}. Known fields: {sorted(known)}")
        values = dict(data)
        if "log1p_columns" in values:
            values["log1p_columns"] = tuple(values["log1p_columns"])
        return cls(**values)


_Component = Vocabulary | NumericNormalizer | Bucketizer | TextTokenizer
_COMPONENT_TYPES: dict[str, type] = {
    "Vocabulary": Vocabulary,
    "NumericNormalizer": NumericNormalizer,
    "Bucketizer": Bucketizer,
    "TextTokenizer": TextTokenizer,
}


class FeatureEncoders:
    """Every encoder of a data set, fitted on its training split.

    The module docstring says what each encoder is fitted on (training interactions, the catalog, training
    users) and why.

    Feature keys of `encode_items` (``c`` ranges over the schema's item attribute columns):

    - ``"item_id"``: ``[n]`` int32 (cold items -> OOV buckets).
    - ``f"item_{c}"`` per categorical attribute: ``[n]`` int32.
    - per numeric attribute: ``f"item_{c}"`` ``[n]`` float32 standardized, ``f"item_{c}_missing"`` ``[n]``
      float32 0/1, ``f"item_{c}_bucket"`` ``[n]`` int32.
    - ``f"item_{c}_tokens"`` per text attribute: ``[n, max_text_tokens]`` int32.

    Feature keys of `encode_queries`:

    - ``"user_id"``: ``[n]`` int32 (users unseen in training -> OOV buckets).
    - ``f"user_{c}"`` per user categorical attribute (int32) and per numeric attribute (float32), with
      ``f"user_{c}_missing"`` and ``f"user_{c}_bucket"`` for numeric ones, as for items.
    - ``"query_tokens"``: ``[n, max_query_tokens]`` int32 (all 0 for requests without text).
    - ``"history"``: ``[n, max_history]`` int32 item indices, most recent first; ``"history_length"``: ``[n]``.
    - ``f"context_{c}"`` per context column: ``[n]`` int32.

    `vocabulary_sizes` gives the embedding-table size of every index feature.

    Example:
        >>> encoders = FeatureEncoders.fit(dataset, train_interactions)
        >>> item_features = encoders.encode_items(dataset.items)
        >>> query_features = encoders.encode_queries(build_queries(train_interactions, dataset,
        ...                                                        history_source=train_interactions))
        >>> encoders.save("artifacts/encoders")
        >>> FeatureEncoders.load("artifacts/encoders").encode_items(dataset.items)["item_id"].shape
        (1682,)
    """

    def __init__(
        self,
        *,
        config: EncoderConfig,
        item_ids: Vocabulary,
        user_ids: Vocabulary,
        tokenizer: TextTokenizer,
        item_categorical: Mapping[str, Vocabulary],
        item_normalizers: Mapping[str, NumericNormalizer],
        item_bucketizers: Mapping[str, Bucketizer],
        item_text: Sequence[str],
        user_categorical: Mapping[str, Vocabulary],
        user_normalizers: Mapping[str, NumericNormalizer],
        user_bucketizers: Mapping[str, Bucketizer],
        context: Mapping[str, Vocabulary],
        item_popularity: np.ndarray,
    ) -> None:
        if set(item_normalizers) != set(item_bucketizers):
            raise ValueError("`item_normalizers` and `item_bucketizers` should cover the same columns.")
        if set(user_normalizers) != set(user_bucketizers):
            raise ValueError("`user_normalizers` and `user_bucketizers` should cover the same columns.")
        item_popularity = np.asarray(item_popularity)
        if item_popularity.shape != (item_ids.size,):
            raise ValueError(
                f"`item_popularity` should have one entry per item-vocabulary row ({item_ids.size}). "
                f"Received: shape={item_popularity.shape}"
            )
        self.config = config
        self.item_ids = item_ids
        self.user_ids = user_ids
        self.tokenizer = tokenizer
        self.item_categorical = dict(item_categorical)
        self.item_normalizers = dict(item_normalizers)
        self.item_bucketizers = dict(item_bucketizers)
        self.item_text = tuple(item_text)
        self.user_categorical = dict(user_categorical)
        self.user_normalizers = dict(user_normalizers)
        self.user_bucketizers = dict(user_bucketizers)
        self.context = dict(context)
        self.item_popularity = item_popularity.astype(np.int64)
        _check_unique_keys(self.item_feature_keys(), side="item")
        _check_unique_keys(self.query_feature_keys(), side="query")

    @classmethod
    def fit(
        cls, dataset: Dataset, train_interactions: pd.DataFrame, *, config: EncoderConfig | None = None
    ) -> FeatureEncoders:
        """Fits every encoder.

        Args:
            dataset: The data set (schema, items table, users table). Its ``interactions`` are NOT read: they
                may include evaluation rows.
            train_interactions: The training split, canonical columns.
            config: Sizes; defaults to ``EncoderConfig()``.

        Returns:
            The fitted bundle.
        """
        config = EncoderConfig() if config is None else config
        schema = dataset.schema
        train = train_interactions
        query_columns = [QUERY, *([REQUEST_ID] if schema.has_request_id else [])] if schema.has_query else []
        _require_columns(train, [USER_ID, ITEM_ID, LABEL, *query_columns, *schema.context], name="train_interactions")
        _require_columns(dataset.items, schema.item_columns(), name="dataset.items")

        def fit_vocabulary(values: pd.Series, name: str) -> Vocabulary:
            return Vocabulary.fit(
                values,
                name=name,
                num_oov_buckets=config.num_oov_buckets,
                min_count=config.min_count,
                max_size=config.max_vocab_size,
            )

        item_ids = fit_vocabulary(train[ITEM_ID], ITEM_ID)
        user_ids = fit_vocabulary(train[USER_ID], USER_ID)
        context = {c: fit_vocabulary(train[c], c) for c in schema.context}

        items = dataset.items
        item_categorical = {c: fit_vocabulary(items[c], c) for c in schema.item_categorical}
        item_normalizers, item_bucketizers = _fit_numeric(items, schema.item_numeric, config)

        user_categorical: dict[str, Vocabulary] = {}
        user_normalizers: dict[str, NumericNormalizer] = {}
        user_bucketizers: dict[str, Bucketizer] = {}
        if dataset.users is not None:
            _require_columns(dataset.users, schema.user_columns(), name="dataset.users")
            users = dataset.users.loc[dataset.users[USER_ID].isin(train[USER_ID].unique())]
            user_categorical = {c: fit_vocabulary(users[c], c) for c in schema.user_categorical}
            user_normalizers, user_bucketizers = _fit_numeric(users, schema.user_numeric, config)

        texts = [_as_arrow_strings(items[c], name=c) for c in schema.item_text]
        if schema.has_query:
            # One count per request: impression rows repeat their request's query text.
            requests = train.drop_duplicates(subset=REQUEST_ID) if schema.has_request_id else train
            texts.append(_as_arrow_strings(requests[QUERY], name=QUERY))
        corpus = pa.concat_arrays(texts) if texts else pa.array([], type=pa.large_string())
        tokenizer = TextTokenizer.fit(
            corpus,
            name="tokens",
            num_oov_buckets=config.num_oov_buckets,
            min_count=config.token_min_count,
            max_size=config.max_token_vocab_size,
        )

        positives = train.loc[dataset.positive_mask(train)]
        popularity = np.bincount(item_ids.encode(positives[ITEM_ID]), minlength=item_ids.size)

        encoders = cls(
            config=config,
            item_ids=item_ids,
            user_ids=user_ids,
            tokenizer=tokenizer,
            item_categorical=item_categorical,
            item_normalizers=item_normalizers,
            item_bucketizers=item_bucketizers,
            item_text=schema.item_text,
            user_categorical=user_categorical,
            user_normalizers=user_normalizers,
            user_bucketizers=user_bucketizers,
            context=context,
            item_popularity=popularity,
        )
        logger.info("Fitted encoders: %s", encoders.vocabulary_sizes)
        return encoders

    # -- encoding --------------------------------------------------------------------------------------------

    def encode_items(self, items: pd.DataFrame) -> dict[str, np.ndarray]:
        """Encodes item rows (see the class docstring for the keys, shapes and dtypes).

        Args:
            items: Item rows with ``item_id`` and every attribute column the encoders were fitted on.

        Returns:
            Feature key -> array with ``len(items)`` rows.
        """
        _require_columns(
            items,
            [ITEM_ID, *self.item_categorical, *self.item_normalizers, *self.item_text],
            name="items",
        )
        out = {"item_id": self.item_ids.encode(items[ITEM_ID])}
        out.update(
            _encode_attributes(
                {c: items[c] for c in (*self.item_categorical, *self.item_normalizers)},
                prefix="item",
                categorical=self.item_categorical,
                normalizers=self.item_normalizers,
                bucketizers=self.item_bucketizers,
            )
        )
        for c in self.item_text:
            out[f"item_{c}_tokens"] = self.tokenizer.encode(items[c], max_tokens=self.config.max_text_tokens)
        return out

    def encode_queries(self, queries: QueryBatch) -> dict[str, np.ndarray]:
        """Encodes a batch of queries (see the class docstring for the keys, shapes and dtypes).

        Args:
            queries: Raw queries, e.g. from `features.queries.build_queries`; they must carry every user
                attribute and context column the encoders were fitted on.

        Returns:
            Feature key -> array with ``len(queries)`` rows.
        """
        attributes = (*self.user_categorical, *self.user_normalizers)
        missing = [c for c in attributes if c not in queries.user_attributes]
        if missing:
            raise ValueError(
                f"`queries.user_attributes` should hold the user attributes {missing}. Received: "
                f"{sorted(queries.user_attributes)} (was the QueryBatch built from a data set with a users table?)"
            )
        missing = [c for c in self.context if c not in queries.context]
        if missing:
            raise ValueError(
                f"`queries.context` should hold the context columns {missing}. Received: {sorted(queries.context)}"
            )
        out = {"user_id": self.user_ids.encode(queries.user_id)}
        out.update(
            _encode_attributes(
                {c: queries.user_attributes[c] for c in attributes},
                prefix="user",
                categorical=self.user_categorical,
                normalizers=self.user_normalizers,
                bucketizers=self.user_bucketizers,
            )
        )
        out["query_tokens"] = self.tokenizer.encode(queries.query, max_tokens=self.config.max_query_tokens)
        out["history"], out["history_length"] = encode_history(
            queries.history,
            queries.history_length,
            vocabulary=self.item_ids,
            max_history=self.config.max_history,
        )
        for c, vocabulary in self.context.items():
            out[f"context_{c}"] = vocabulary.encode(queries.context[c])
        return out

    # -- introspection ---------------------------------------------------------------------------------------

    def item_feature_keys(self) -> list[str]:
        """The keys `encode_items` returns, in order."""
        keys = ["item_id", *(f"item_{c}" for c in self.item_categorical)]
        for c in self.item_normalizers:
            keys += [f"item_{c}", f"item_{c}_missing", f"item_{c}_bucket"]
        return keys + [f"item_{c}_tokens" for c in self.item_text]

    def query_feature_keys(self) -> list[str]:
        """The keys `encode_queries` returns, in order."""
        keys = ["user_id", *(f"user_{c}" for c in self.user_categorical)]
        for c in self.user_normalizers:
            keys += [f"user_{c}", f"user_{c}_missing", f"user_{c}_bucket"]
        return [*keys, "query_tokens", "history", "history_length", *(f"context_{c}" for c in self.context)]

    @property
    def vocabulary_sizes(self) -> dict[str, int]:
        """Embedding-table rows of every index-valued feature key (item and query side)."""
        sizes = {"item_id": self.item_ids.size, "user_id": self.user_ids.size, "history": self.item_ids.size}
        sizes.update({f"item_{c}": v.size for c, v in self.item_categorical.items()})
        sizes.update({f"item_{c}_bucket": b.size for c, b in self.item_bucketizers.items()})
        sizes.update({f"item_{c}_tokens": self.tokenizer.size for c in self.item_text})
        sizes.update({f"user_{c}": v.size for c, v in self.user_categorical.items()})
        sizes.update({f"user_{c}_bucket": b.size for c, b in self.user_bucketizers.items()})
        sizes["query_tokens"] = self.tokenizer.size
        sizes.update({f"context_{c}": v.size for c, v in self.context.items()})
        return sizes

    # -- persistence -----------------------------------------------------------------------------------------

    def _components(self) -> dict[str, _Component]:
        components: dict[str, _Component] = {"item_id": self.item_ids, "user_id": self.user_ids}
        components["tokens"] = self.tokenizer
        for group, members in (
            ("item_categorical", self.item_categorical),
            ("item_normalizers", self.item_normalizers),
            ("item_bucketizers", self.item_bucketizers),
            ("user_categorical", self.user_categorical),
            ("user_normalizers", self.user_normalizers),
            ("user_bucketizers", self.user_bucketizers),
            ("context", self.context),
        ):
            components.update({f"{group}/{c}": component for c, component in members.items()})
        return components

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Writes the encoders as ``encoders.json`` plus one ``.npy`` file per array.

        Every file is written to a temporary name and renamed into place; ``encoders.json`` comes last and
        records each array's file, shape, dtype and SHA-256, so a reader never sees a half-written save.

        Args:
            directory: Target directory, created if needed.

        Returns:
            The directory.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {_POPULARITY_FILE: self.item_popularity}
        components = {}
        for position, (key, component) in enumerate(self._components().items()):
            files = {}
            for array_name, array in component.to_arrays().items():
                file = f"{position:03d}.{re.sub(r'[^A-Za-z0-9_.-]+', '_', key)}.{array_name}.npy"
                arrays[file] = array
                files[array_name] = file
            components[key] = {**component.to_dict(), "files": files}
        entries = {}
        for file, array in arrays.items():
            payload = _npy_bytes(array)
            _write_atomic(directory / file, payload)
            entries[file] = {
                "shape": list(array.shape),
                "dtype": array.dtype.str,
                "sha256": hashlib.sha256(payload).hexdigest(),
            }
        manifest = {
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "item_text": list(self.item_text),
            "item_popularity": _POPULARITY_FILE,
            "components": components,
            "arrays": entries,
        }
        _write_atomic(directory / MANIFEST_FILE, json.dumps(manifest, indent=2).encode())
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> FeatureEncoders:
        """Reads encoders written by `save`, checking the format version and every array against the JSON.

        Raises:
            FileNotFoundError: When ``encoders.json`` or an array file is missing.
            ValueError: When the format version differs, or an array's shape, dtype or checksum disagrees with
                ``encoders.json`` (the message names the file and both values).
        """
        directory = Path(directory)
        manifest_path = directory / MANIFEST_FILE
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path} does not exist: not a directory written by save().")
        manifest = json.loads(manifest_path.read_text())
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{manifest_path} has format_version={version!r}, but this code reads "
                f"format_version={FORMAT_VERSION}: re-fit the encoders or load them with a matching version."
            )
        arrays = {file: _load_npy(directory, file, entry) for file, entry in manifest["arrays"].items()}
        components: dict[str, Any] = {}
        for key, data in manifest["components"].items():
            kind = _COMPONENT_TYPES.get(data.get("type", ""))
            if kind is None:
                raise ValueError(f"{manifest_path}: component {key!r} has unknown type {data.get('type')!r}.")
            files = data.get("files", {})
            unlisted = sorted(set(files.values()) - set(arrays))
            if unlisted:
                raise ValueError(
                    f"{manifest_path}: component {key!r} uses files {unlisted} missing from its 'arrays' section."
                )
            component_arrays = {name: arrays[file] for name, file in files.items()}
            components[key] = kind.from_dict(data, component_arrays)

        absent = [key for key in ("item_id", "user_id", "tokens") if key not in components]
        if absent:
            raise ValueError(f"{manifest_path} lacks the components {absent}.")

        def group(name: str) -> dict[str, Any]:
            prefix = f"{name}/"
            return {k[len(prefix) :]: v for k, v in components.items() if k.startswith(prefix)}

        item_ids = components["item_id"]
        popularity = arrays.get(manifest.get("item_popularity", ""))
        if popularity is None:
            raise ValueError(f"{manifest_path} does not list the item popularity array.")
        if len(popularity) != item_ids.size:
            raise ValueError(
                f"{manifest['item_popularity']} has {len(popularity)} rows but the item vocabulary has "
                f"{item_ids.size}: the directory mixes two saves."
            )
        return cls(
            config=EncoderConfig.from_dict(manifest["config"]),
            item_ids=item_ids,
            user_ids=components["user_id"],
            tokenizer=components["tokens"],
            item_categorical=group("item_categorical"),
            item_normalizers=group("item_normalizers"),
            item_bucketizers=group("item_bucketizers"),
            item_text=manifest["item_text"],
            user_categorical=group("user_categorical"),
            user_normalizers=group("user_normalizers"),
            user_bucketizers=group("user_bucketizers"),
            context=group("context"),
            item_popularity=popularity,
        )

    def __repr__(self) -> str:
        return f"FeatureEncoders({self.vocabulary_sizes})"


def _fit_numeric(
    frame: pd.DataFrame, columns: Sequence[str], config: EncoderConfig
) -> tuple[dict[str, NumericNormalizer], dict[str, Bucketizer]]:
    normalizers = {c: NumericNormalizer.fit(frame[c], name=c, log1p=c in config.log1p_columns) for c in columns}
    bucketizers = {c: Bucketizer.fit(frame[c], name=c, num_buckets=config.num_numeric_buckets) for c in columns}
    return normalizers, bucketizers


def _encode_attributes(
    columns: Mapping[str, Any],
    *,
    prefix: str,
    categorical: Mapping[str, Vocabulary],
    normalizers: Mapping[str, NumericNormalizer],
    bucketizers: Mapping[str, Bucketizer],
) -> dict[str, np.ndarray]:
    out = {f"{prefix}_{c}": vocabulary.encode(columns[c]) for c, vocabulary in categorical.items()}
    for c, normalizer in normalizers.items():
        normalized = normalizer.transform(columns[c])
        out[f"{prefix}_{c}"] = normalized.values
        out[f"{prefix}_{c}_missing"] = normalized.missing
        out[f"{prefix}_{c}_bucket"] = bucketizers[c].transform(columns[c])
    return out


def _check_unique_keys(keys: list[str], *, side: str) -> None:
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(
            f"The {side} feature keys {duplicates} collide (an attribute column name maps onto another "
            "feature's key); rename the column in the data set."
        )


def _require_columns(table: pd.DataFrame, columns: Sequence[str], *, name: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"`{name}` should have the columns {missing}. Received columns: {list(table.columns)}")


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _write_atomic(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_npy(directory: Path, file: str, entry: Mapping[str, Any]) -> np.ndarray:
    path = directory / file
    if not path.is_file():
        raise FileNotFoundError(f"{path} is listed in {MANIFEST_FILE} but does not exist.")
    payload = path.read_bytes()
    try:
        array = np.load(io.BytesIO(payload), allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{file} could not be read as a plain .npy array: {e}") from e
    expected = tuple(entry["shape"])
    if array.shape != expected:
        what = "rows" if array.ndim == 1 and len(expected) == 1 else "shape"
        got, want = (array.shape[0], expected[0]) if what == "rows" else (array.shape, expected)
        raise ValueError(
            f"{file} has {got} {what} but {MANIFEST_FILE} says {want}: the directory mixes two saves or the "
            "file was modified."
        )
    if array.dtype.str != entry["dtype"]:
        raise ValueError(f"{file} has dtype {array.dtype.str} but {MANIFEST_FILE} says {entry['dtype']}.")
    digest = hashlib.sha256(payload).hexdigest()
    if digest != entry["sha256"]:
        raise ValueError(
            f"{file} has SHA-256 {digest} but {MANIFEST_FILE} says {entry['sha256']}: the file was modified."
        )
    return array


# ---------------------------------------------------------------------------------------------------------------
# tf.data
# ---------------------------------------------------------------------------------------------------------------


def make_tf_dataset(
    features: Mapping[str, np.ndarray],
    *,
    labels: np.ndarray | None = None,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches encoded features (and labels) into a `tf.data.Dataset`.

    The pipeline shuffles row indices (a buffer of all rows, so the shuffle is uniform), batches them and
    gathers each batch from the in-memory arrays with one vectorized ``tf.gather`` per feature; it ends with
    ``prefetch(tf.data.AUTOTUNE)``. With ``shuffle=True`` the order is a deterministic function of ``seed``
    (each pass over the data, i.e. each epoch, gets a new but equally reproducible order).

    Args:
        features: Feature key -> ``[n, ...]`` numeric array (encoded features).
        labels: Optional ``[n, ...]`` numeric labels.
        batch_size: Rows per batch.
        shuffle: Whether to shuffle the rows.
        seed: Shuffle seed.
        drop_remainder: Whether to drop the last, smaller batch (gives a static batch dimension).

    Returns:
        A dataset of ``features`` dicts (``[batch_size, ...]`` tensors), or of ``(features, labels)`` pairs
        when ``labels`` is given.
    """
    _check_positive_int("batch_size", batch_size)
    if not features:
        raise ValueError("`features` should hold at least one array. Received: an empty mapping")
    arrays = {key: np.asarray(value) for key, value in features.items()}
    arrays_to_check = arrays if labels is None else {**arrays, "labels": np.asarray(labels)}
    lengths = {key: (len(a) if a.ndim else None) for key, a in arrays_to_check.items()}
    for key, array in arrays_to_check.items():
        if array.dtype.kind not in "biuf":
            raise ValueError(
                f"`features[{key!r}]` should be a numeric array (encode raw values first). Received: "
                f"dtype={array.dtype}"
            )
    if None in lengths.values() or len(set(lengths.values())) != 1:
        raise ValueError(f"Every array should have the same number of rows. Received: {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError("`features` should have at least one row. Received: 0 rows")

    # Deferred: numpy-only users of this module should not pay TensorFlow's import.
    import tensorflow as tf

    tensors = {key: tf.constant(array) for key, array in arrays.items()}
    label_tensor = None if labels is None else tf.constant(np.asarray(labels))

    def gather(rows: tf.Tensor) -> Any:
        batch = {key: tf.gather(tensor, rows) for key, tensor in tensors.items()}
        return batch if label_tensor is None else (batch, tf.gather(label_tensor, rows))

    dataset = tf.data.Dataset.range(n)
    if shuffle:
        dataset = dataset.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"`{name}` should be a positive integer. Received: {name}={value!r}")
