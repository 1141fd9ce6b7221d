"""Numpy inference for the query/item towers and the ranking student, for the query-time process.

A call of a Keras model costs milliseconds of framework overhead (eager Keras ~5 ms, a `tf.function` ~1-2 ms),
while the models themselves are a few embedding lookups and two or three small matrix products. The classes here
hold the trained weights as plain numpy arrays plus a JSON-serialisable ``spec`` and reproduce the Keras outputs
(to ~1e-6) without importing TensorFlow:

- `NumpyTower`: a `retrieval.QueryTower` or `retrieval.ItemTower` (feature embedding -> ReLU MLP -> linear
  projection -> L2 normalisation).
- `NumpyStudent`: a `ranking.StudentRanker`, split the way a live re-ranker needs it: `NumpyStudent.item_table`
  computes everything that depends on the item only once per catalog item (at index build time),
  `NumpyStudent.query_state` everything that depends on the query only once per query, and `NumpyStudent.score`
  combines them for ``[num_queries, num_candidates]`` candidate rows with a handful of vectorized numpy calls.

Both convert from live Keras objects with ``from_keras`` (which only reads their attributes and calls ``.numpy()``
on their variables, so this module never imports TensorFlow) and save to a directory as ``model.json`` (the spec)
plus ``arrays.npz`` (the weights, loaded with ``allow_pickle=False``).

The first Dense layer of the student is linear in its input, so its pre-activation splits into three sums: the
query-only columns (the query's embeddings, ``history_empty``, the tower query embedding) times their kernel rows
plus the bias, the item-only columns (the item's embeddings, the tower item embedding) times theirs, and the pair
columns (the other cross features, the history cosine, the tower dot product) times theirs. The first two are
precomputed per query and per item, so a candidate costs one gathered row plus the pair columns.
"""

from __future__ import annotations

import json
import math
import os
import uuid
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

FORMAT_VERSION = 1
"""Version of the ``model.json`` + ``arrays.npz`` layout written by ``save``."""

SPEC_FILE = "model.json"
ARRAYS_FILE = "arrays.npz"

_ITEM_BATCH = 65_536  # catalog rows per matrix product in `NumpyStudent.item_table` (bounds peak memory)

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


# ---------------------------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # The tanh form never overflows (1 / (1 + exp(-x)) warns for x < -88 in float32).
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7); numpy has no vectorized erf."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0, out=x)


_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": _relu,
    "linear": lambda x: x,
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    "selu": lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0.0))),
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x * np.float32(1.0 / math.sqrt(2.0)))),  # Keras 2: approximate=False
    "swish": lambda x: x * _sigmoid(x),
    "silu": lambda x: x * _sigmoid(x),
    "softplus": lambda x: np.logaddexp(np.float32(0.0), x),
    "softsign": lambda x: x / (1.0 + np.abs(x)),
}
SUPPORTED_ACTIVATIONS = tuple(_ACTIVATIONS)
"""Keras activation names the numpy path implements."""


def _activation(name: object) -> Callable[[np.ndarray], np.ndarray]:
    if not isinstance(name, str) or name not in _ACTIVATIONS:
        raise ValueError(
            f"`activation` should be one of {list(SUPPORTED_ACTIVATIONS)}: other activations are not supported by "
            f"the numpy path. Received: activation={name!r}"
        )
    return _ACTIVATIONS[name]


def _activation_name(layers: list[Any], *, what: str) -> str:
    """The one activation name shared by Keras Dense ``layers`` (``"relu"`` when there are none)."""
    names = {getattr(layer.activation, "__name__", repr(layer.activation)) for layer in layers}
    if len(names) > 1:
        raise ValueError(f"The {what} layers should share one activation. Received: {sorted(names)}")
    name = names.pop() if names else "relu"
    _activation(name)
    return name


# ---------------------------------------------------------------------------------------------------------------
# Shared pieces: layout, arrays, feature checks, embedding lookups, persistence
# ---------------------------------------------------------------------------------------------------------------


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    """``tf.math.l2_normalize(x, axis=-1)``: ``x / sqrt(max(sum(x ** 2), 1e-12))``."""
    return x / np.sqrt(np.maximum(np.einsum("...d,...d->...", x, x)[..., None], np.float32(1e-12)))


def _check_index_dtype(array: np.ndarray, key: str) -> np.ndarray:
    if array.dtype.kind not in "iu":
        raise ValueError(f"`{key}` should hold integer indices. Received: dtype={array.dtype}")
    return array


def _take(table: np.ndarray, indices: np.ndarray, key: str) -> np.ndarray:
    """``table[indices]`` along axis 0, with a ValueError (not a silent wrap-around) for a bad index."""
    if indices.dtype == np.int32:
        # A negative int32 viewed as uint32 is >= 2**31, so np.take's bounds check catches it for free.
        lookup = indices.view(np.uint32)
    else:
        if indices.size and indices.dtype.kind == "i" and indices.min() < 0:
            raise ValueError(f"`{key}` should hold non-negative indices. Received: min={indices.min()}")
        lookup = indices
    try:
        return table.take(lookup, axis=0)
    except IndexError as e:
        raise ValueError(
            f"`{key}` should hold indices in [0, {len(table)}) (encode the features with the encoders the model "
            f"was trained with). Received: {e}"
        ) from e


def _masked_mean(table: np.ndarray, indices: np.ndarray, key: str) -> np.ndarray:
    """`features.layers.masked_mean` of ``table[indices]``: ``[batch, length]`` -> ``[batch, dim]``."""
    embedded = _take(table, indices, key)  # [batch, length, dim]
    mask = (indices != 0).astype(np.float32)  # [batch, length]
    total = np.matmul(mask[:, None, :], embedded)[:, 0]  # [batch, dim]
    return total / np.maximum(mask.sum(axis=1, keepdims=True), np.float32(1.0))


class _Layout:
    """A parsed ``FeatureLayout.to_dict()`` with the embedding widths and table sharing of a `FeatureEmbedding`."""

    def __init__(self, layout: Mapping[str, Any], dims: Mapping[str, Any], share: Mapping[str, Any]) -> None:
        if not isinstance(layout, Mapping):
            raise ValueError(f"`spec['layout']` should be a FeatureLayout.to_dict(). Received: {layout!r}")
        self.categorical = {str(k): int(v) for k, v in layout.get("categorical", {}).items()}
        self.sequences = {str(k): int(v) for k, v in layout.get("sequences", {}).items()}
        self.numeric = tuple(str(k) for k in layout.get("numeric", ()))
        self.share = {str(k): str(v) for k, v in share.items()}
        vocab = {**self.categorical, **self.sequences}
        missing = [k for k in vocab if k not in dims]
        if missing:
            raise ValueError(f"`spec['dims']` should give the width of every embedded key. Missing: {missing}")
        self.dims = {k: int(dims[k]) for k in vocab}
        for key, owner in self.share.items():
            if key not in vocab or owner not in vocab or self.dims[key] != self.dims[owner]:
                raise ValueError(
                    f"`spec['share']` should map embedded keys of equal widths. Received: {key!r} -> {owner!r}"
                )
        self.vocab = vocab

    def names(self) -> list[str]:
        return [*self.categorical, *self.sequences, *self.numeric]

    def width(self, key: str) -> int:
        return self.dims.get(key, 1)

    def table_name(self, key: str) -> str:
        return f"embedding/{self.share.get(key, key)}"

    def table_shapes(self) -> dict[str, tuple[int, ...]]:
        return {f"embedding/{k}": (v, self.dims[k]) for k, v in self.vocab.items() if k not in self.share}

    def to_spec(self) -> dict[str, Any]:
        return {
            "layout": {
                "categorical": dict(self.categorical),
                "sequences": dict(self.sequences),
                "numeric": list(self.numeric),
            },
            "dims": dict(self.dims),
            "share": dict(self.share),
        }

    def embed(self, arrays: Mapping[str, np.ndarray], features: Mapping[str, np.ndarray], key: str) -> np.ndarray:
        """One feature as ``[batch, width]`` float32 (`FeatureEmbedding.embed`)."""
        if key in self.categorical:
            return _take(arrays[self.table_name(key)], features[key], key)
        if key in self.sequences:
            return _masked_mean(arrays[self.table_name(key)], features[key], key)
        return np.asarray(features[key], dtype=np.float32)[:, None]


def _layout_from_embedding(embedding: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Spec fields and tables of a live `features.layers.FeatureEmbedding`."""
    layout = embedding.layout.to_dict()
    dims = {str(k): int(v) for k, v in embedding._dims.items()}
    share = {str(k): str(v) for k, v in embedding._share.items()}
    tables = {f"embedding/{key}": layer.embeddings.numpy() for key, layer in embedding.tables.items()}
    return {"layout": layout, "dims": dims, "share": share}, tables


def _dense_weights(layer: Any, name: str) -> dict[str, np.ndarray]:
    if not getattr(layer, "built", False):
        raise ValueError(
            f"Layer {layer.name!r} has no weights yet: call the model on a batch (or train it) before converting."
        )
    return {f"{name}/kernel": layer.kernel.numpy(), f"{name}/bias": layer.bias.numpy()}


def _check_arrays(
    arrays: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]], *, integer: Iterable[str] = ()
) -> dict[str, np.ndarray]:
    """The arrays as float32 (int32 for ``integer`` names), checked against the expected ``shapes``."""
    integer = set(integer)
    missing = [name for name in shapes if name not in arrays]
    if missing:
        raise ValueError(
            f"`arrays` should hold {missing} (expected shapes {[shapes[m] for m in missing]}). "
            f"Received: {sorted(arrays)}"
        )
    unexpected = sorted(set(arrays) - set(shapes))
    if unexpected:
        raise ValueError(f"`arrays` holds {unexpected}, which the spec does not describe: it mixes two models.")
    out = {}
    for name, expected in shapes.items():
        array = np.asarray(arrays[name])
        if array.shape != tuple(expected):
            raise ValueError(
                f"Array {name!r} should have shape {tuple(expected)} (from the spec). Received: shape={array.shape}"
            )
        if name in integer:
            if array.dtype.kind not in "iu":
                raise ValueError(f"Array {name!r} should hold integers. Received: dtype={array.dtype}")
            out[name] = np.asarray(array, dtype=np.int32)
        else:
            if array.dtype.kind != "f":
                raise ValueError(f"Array {name!r} should hold floats. Received: dtype={array.dtype}")
            out[name] = np.asarray(array, dtype=np.float32)
    return out


def _check_features(
    features: Mapping[str, Any], keys: Iterable[str], *, name: str
) -> tuple[dict[str, np.ndarray], int]:
    """The arrays of ``keys`` (a ValueError names missing keys and unequal row counts) and their row count."""
    keys = list(keys)
    missing = [k for k in keys if k not in features]
    if missing:
        raise ValueError(
            f"`{name}` should hold every key the model reads. Missing: {missing}; received {sorted(features)}"
        )
    out = {k: np.asarray(features[k]) for k in keys}
    rows = {k: (a.shape[0] if a.ndim else None) for k, a in out.items()}
    counts = set(rows.values())
    if len(counts) > 1 or None in counts:
        raise ValueError(f"Every array of `{name}` should have the same number of rows. Received: {rows}")
    return out, (counts.pop() if counts else 0)


def _check_feature_shapes(
    features: Mapping[str, np.ndarray], layout: _Layout, keys: Iterable[str], *, name: str
) -> None:
    for key in keys:
        array = features[key]
        if key in layout.sequences:
            if array.ndim != 2:
                raise ValueError(f"`{name}[{key!r}]` should be [batch, length]. Received: shape={array.shape}")
            _check_index_dtype(array, key)
        elif array.ndim != 1:
            raise ValueError(f"`{name}[{key!r}]` should be [batch]. Received: shape={array.shape}")
        elif key in layout.categorical:
            _check_index_dtype(array, key)


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save(
    directory: str | os.PathLike[str], kind: str, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays_path, spec_path = directory / ARRAYS_FILE, directory / SPEC_FILE
    _write_atomic(arrays_path, lambda f: np.savez(f, **{k: np.ascontiguousarray(v) for k, v in arrays.items()}))
    document = {"format_version": FORMAT_VERSION, "type": kind, "spec": spec}
    # Written last, so a reader never pairs a new spec with half-written arrays.
    _write_atomic(spec_path, lambda f: f.write(json.dumps(document, indent=2).encode()))
    return [spec_path, arrays_path]


def _load(directory: str | os.PathLike[str], kind: str) -> tuple[dict[str, Any], dict[str, np.ndarray], Path]:
    directory = Path(directory)
    spec_path, arrays_path = directory / SPEC_FILE, directory / ARRAYS_FILE
    for path in (spec_path, arrays_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: not a directory written by {kind}.save().")
    try:
        document = json.loads(spec_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{spec_path} is not valid JSON: {e}") from e
    if not isinstance(document, dict) or document.get("type") != kind:
        found = document.get("type") if isinstance(document, dict) else None
        raise ValueError(f"{spec_path} describes a {found!r}, not a {kind}: load it with the matching class.")
    if document.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{spec_path} has format_version={document.get('format_version')!r}, but this code reads "
            f"format_version={FORMAT_VERSION}: convert the Keras model again."
        )
    spec = document.get("spec")
    if not isinstance(spec, dict):
        raise ValueError(f"{spec_path} should hold the model's 'spec' object. Received: {type(spec).__name__}")
    try:
        with np.load(arrays_path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{arrays_path} could not be read as an .npz of plain arrays: {e}") from e
    return spec, arrays, arrays_path


def _spec_field(spec: Mapping[str, Any], key: str) -> Any:
    if key not in spec:
        raise ValueError(f"`spec` should hold {key!r}. Received keys: {sorted(spec)}")
    return spec[key]


# ---------------------------------------------------------------------------------------------------------------
# Towers
# ---------------------------------------------------------------------------------------------------------------


class NumpyTower:
    """A `retrieval.QueryTower` or `retrieval.ItemTower` in numpy.

    ``embed(features) -> MLP (ReLU hidden layers) -> projection -> L2 normalisation``, as
    ``tower(features, training=False)`` computes it (dropout and id dropout are inactive at inference).

    Args:
        spec: JSON-serialisable description: ``side`` (``"query"`` / ``"item"``), ``layout``
            (``FeatureLayout.to_dict()``), ``dims`` (embedding width per embedded key), ``share`` (key -> the key
            whose table it reads), ``hidden_dims``, ``activation`` and ``output_dim``.
        arrays: ``"embedding/<key>"`` ``[vocabulary_size, dim]`` per table, ``"hidden_<i>/kernel"`` ``[in, out]``
            and ``"hidden_<i>/bias"`` ``[out]`` per hidden layer, ``"projection/kernel"`` and ``"projection/bias"``.

    Raises:
        ValueError: When an array is missing, unexpected, or of another shape than the spec implies (the message
            names the array and both shapes).

    Example:
        >>> tower = NumpyTower.from_keras(query_tower)
        >>> tower(encoders.encode_queries(queries)).shape  # [num_queries, output_dim], unit rows
    """

    def __init__(self, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        side = _spec_field(spec, "side")
        if side not in ("query", "item"):
            raise ValueError(f"`spec['side']` should be 'query' or 'item'. Received: side={side!r}")
        self._layout = _Layout(_spec_field(spec, "layout"), _spec_field(spec, "dims"), spec.get("share", {}))
        if not self._layout.names():
            raise ValueError("`spec['layout']` should describe at least one feature. Received: an empty layout")
        hidden_dims = [int(w) for w in _spec_field(spec, "hidden_dims")]
        output_dim = int(_spec_field(spec, "output_dim"))
        activation = spec.get("activation", "relu")
        self._activation = _activation(activation)
        self.spec: dict[str, Any] = {
            "side": side,
            **self._layout.to_spec(),
            "hidden_dims": hidden_dims,
            "activation": activation,
            "output_dim": output_dim,
        }
        shapes = self._layout.table_shapes()
        width = sum(self._layout.width(k) for k in self._layout.names())
        self._dense_names = [*(f"hidden_{i}" for i in range(len(hidden_dims))), "projection"]
        for name, out in zip(self._dense_names, [*hidden_dims, output_dim], strict=True):
            shapes[f"{name}/kernel"] = (width, out)
            shapes[f"{name}/bias"] = (out,)
            width = out
        self.arrays: dict[str, np.ndarray] = _check_arrays(arrays, shapes)
        self._dense = [(self.arrays[f"{n}/kernel"], self.arrays[f"{n}/bias"]) for n in self._dense_names]

    @classmethod
    def from_keras(cls, tower: Any) -> NumpyTower:
        """Converts a (called or trained) `retrieval.QueryTower` / `retrieval.ItemTower`."""
        if not all(hasattr(tower, a) for a in ("embedding", "hidden", "projection", "layout", "_side")):
            raise TypeError(f"`tower` should be a QueryTower or ItemTower. Received: {type(tower).__name__}")
        if not tower.projection.built:
            raise ValueError("`tower` has no weights yet: call it on a batch (or train it) before converting.")
        spec, arrays = _layout_from_embedding(tower.embedding)
        hidden = [layer for layer in tower.hidden if hasattr(layer, "units")]  # Dropout is inactive at inference
        for i, layer in enumerate(hidden):
            arrays.update(_dense_weights(layer, f"hidden_{i}"))
        arrays.update(_dense_weights(tower.projection, "projection"))
        if getattr(tower.projection.activation, "__name__", None) != "linear":
            raise ValueError("The tower's projection should be linear.")
        spec.update(
            side=tower._side,
            hidden_dims=[int(layer.units) for layer in hidden],
            activation=_activation_name(hidden, what="hidden"),
            output_dim=int(tower.projection.units),
        )
        return cls(spec, arrays)

    @property
    def output_dim(self) -> int:
        return self.spec["output_dim"]

    @property
    def input_keys(self) -> tuple[str, ...]:
        """The encoded feature keys the tower reads (the layout's names, in order)."""
        return tuple(self._layout.names())

    def __call__(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """Embeds a batch.

        Args:
            features: Encoded features (``encoders.encode_queries`` / ``encode_items``): ``[batch]`` int32 or
                float32 per key, ``[batch, length]`` int32 for token and history sequences. Keys the tower does not
                read are ignored.

        Returns:
            ``[batch, output_dim]`` float32, each row of unit L2 norm.

        Raises:
            ValueError: When a key is missing, row counts differ, or an index is out of its vocabulary.
        """
        layout = self._layout
        arrays, _ = _check_features(features, layout.names(), name="features")
        _check_feature_shapes(arrays, layout, layout.names(), name="features")
        x = np.concatenate([layout.embed(self.arrays, arrays, k) for k in layout.names()], axis=-1)
        for kernel, bias in self._dense[:-1]:
            x = self._activation(np.matmul(x, kernel) + bias)
        kernel, bias = self._dense[-1]
        return _l2_normalize(np.matmul(x, kernel) + bias)

    def save(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Writes ``directory/model.json`` (the spec) and ``directory/arrays.npz``; returns the two paths."""
        return _save(directory, type(self).__name__, self.spec, self.arrays)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> NumpyTower:
        """Reads a directory written by `save`.

        Raises:
            FileNotFoundError: When ``model.json`` or ``arrays.npz`` is missing.
            ValueError: When a file cannot be read, describes another model type or format version, or an array
                is missing or of the wrong shape (the message names the file, the array and both shapes).
        """
        spec, arrays, path = _load(directory, cls.__name__)
        try:
            return cls(spec, arrays)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e


# ---------------------------------------------------------------------------------------------------------------
# Ranking student
# ---------------------------------------------------------------------------------------------------------------

_QUERY_EMBEDDING = "query_embedding"
_ITEM_EMBEDDING = "item_embedding"
_HISTORY_EMPTY = "cross/history_empty"


def _cross_feature_names(cross: Mapping[str, Any]) -> list[str]:
    """`ranking.cross_features.CrossFeatures.feature_names` from its configuration."""
    names = []
    if cross["text_key"] is not None:
        names += ["token_overlap_count", "token_overlap_fraction", "token_jaccard"]
    names += [f"history_{key.removeprefix('item_')}_match" for key in cross["attribute_keys"]]
    if cross["price_key"] is not None:
        names += ["price_minus_history_price", "abs_price_minus_history_price"]
    names.append("history_empty")
    return names


def _count_last(equal: np.ndarray) -> np.ndarray:
    """``[..., n]`` bool -> ``[...]`` float32: how many entries of the last axis are True."""
    if equal.shape[-1] < 256:
        # einsum over a uint8 view is several times faster than a bool sum; exact below 256 entries.
        return np.einsum("...h->...", equal.view(np.uint8)).astype(np.float32)
    return equal.sum(axis=-1, dtype=np.float32)


def _first_occurrence(tokens: np.ndarray) -> np.ndarray:
    """``[batch, length]`` bool: True where no earlier position of the row holds the same id."""
    length = tokens.shape[-1]
    earlier = np.tri(length, length, -1, dtype=bool)  # [j, k]: k comes before j
    same = tokens[..., :, None] == tokens[..., None, :]
    return ~(same & earlier).any(axis=-1)


def _distinct_known(tokens: np.ndarray, keep: np.ndarray, fill: int, *, width: int | None = None) -> np.ndarray:
    """Each row's ``keep`` tokens moved to the front (stable), ``fill`` after them, as narrow as the widest row
    (or exactly ``width`` wide, so tables built batch by batch share one shape).

    With ``keep`` = known first occurrences, a candidate's text holds each of its tokens once, so summing a
    query-token == text-token compare over the text axis gives membership (0 or 1), and the compare is small.
    """
    order = np.argsort(~keep, axis=1, kind="stable")
    if width is None:
        width = int(keep.sum(axis=1).max()) if len(keep) else 0
    return np.ascontiguousarray(np.take_along_axis(np.where(keep, tokens, fill), order, axis=1)[:, :width])


class NumpyStudent:
    """A `ranking.StudentRanker` in numpy, split so the per-candidate work is tiny.

    - `item_table` (once per catalog item, at index build time): the item-only part of the first Dense layer and
      what the pair features need per item.
    - `query_state` (once per query): the query-only part of the first Dense layer plus its bias, and what the pair
      features need per query.
    - `score`: for ``[num_queries, num_candidates]`` rows into the item table, the pair features (token overlap,
      history attribute matches, relative price, history cosine, tower dot product), the rest of the MLP and the
      logit, as ``student({"query": ..., "item": ...}, training=False)`` computes them.

    Args:
        spec: JSON-serialisable description: the embedding ``layout``, ``dims`` and ``share``; which embedded keys
            are on the query and the item side; the cross features' configuration (``cross``, or ``None``);
            ``history_cosine``; ``tower_embedding_dim`` (or ``None``); ``deep_layers``; ``activation``; and the
            encoded keys read on each side (``query_keys``, ``item_keys``).
        arrays: ``"embedding/<key>"`` per table; ``"cross/<attribute key>"`` ``[item_vocabulary_size]`` int32 (the
            attribute of every item-vocabulary row, for the history), ``"cross/price"`` and
            ``"cross/price_known"`` ``[item_vocabulary_size]``; ``"deep_<i>/kernel"``, ``"deep_<i>/bias"``,
            ``"logit/kernel"`` ``[width, 1]`` and ``"logit/bias"`` ``[1]``.

    Raises:
        ValueError: When an array is missing, unexpected, or of another shape than the spec implies.

    Example:
        >>> student = NumpyStudent.from_keras(keras_student)
        >>> table = student.item_table(encoders.encode_items(dataset.items))  # at index build time
        >>> state = student.query_state(encoders.encode_queries(queries))
        >>> student.score(state, table, candidate_rows).shape  # [num_queries, num_candidates], -inf at -1
    """

    _CROSS_FIELDS: ClassVar[tuple[str, ...]] = (
        "text_key",
        "num_oov_tokens",
        "attribute_keys",
        "price_key",
        "item_vocabulary_size",
    )

    def __init__(self, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        layout = _Layout(_spec_field(spec, "layout"), _spec_field(spec, "dims"), spec.get("share", {}))
        self._layout = layout
        query_embedding_keys = [str(k) for k in _spec_field(spec, "query_embedding_keys")]
        item_embedding_keys = [str(k) for k in _spec_field(spec, "item_embedding_keys")]
        if sorted(query_embedding_keys + item_embedding_keys) != sorted(layout.names()):
            raise ValueError(
                "`spec['query_embedding_keys']` and `spec['item_embedding_keys']` should split the layout's keys "
                f"{layout.names()}. Received: {query_embedding_keys} and {item_embedding_keys}"
            )
        cross = spec.get("cross")
        if cross is not None:
            missing = [f for f in self._CROSS_FIELDS if f not in cross]
            if missing:
                raise ValueError(f"`spec['cross']` should hold {missing}. Received: {sorted(cross)}")
            cross = {
                "text_key": None if cross["text_key"] is None else str(cross["text_key"]),
                "num_oov_tokens": int(cross["num_oov_tokens"]),
                "attribute_keys": [str(k) for k in cross["attribute_keys"]],
                "price_key": None if cross["price_key"] is None else str(cross["price_key"]),
                "item_vocabulary_size": int(cross["item_vocabulary_size"]),
            }
        history_cosine = bool(spec.get("history_cosine", False))
        if history_cosine and not {"history", "item_id"} <= set(layout.names()):
            raise ValueError("`spec['history_cosine']` needs 'history' and 'item_id' among the embedded keys.")
        tower_dim = spec.get("tower_embedding_dim")
        tower_dim = None if tower_dim is None else int(tower_dim)
        deep_layers = [int(w) for w in _spec_field(spec, "deep_layers")]
        activation = spec.get("activation", "relu")
        self._activation = _activation(activation)
        self.spec: dict[str, Any] = {
            **layout.to_spec(),
            "query_embedding_keys": query_embedding_keys,
            "item_embedding_keys": item_embedding_keys,
            "query_keys": [str(k) for k in _spec_field(spec, "query_keys")],
            "item_keys": [str(k) for k in _spec_field(spec, "item_keys")],
            "cross": cross,
            "history_cosine": history_cosine,
            "tower_embedding_dim": tower_dim,
            "deep_layers": deep_layers,
            "activation": activation,
        }

        # The columns of `StudentRanker.pair_input`, in order, with the side each depends on.
        columns: list[tuple[str, int, str]] = []
        for key in layout.names():
            columns.append((key, layout.width(key), "query" if key in query_embedding_keys else "item"))
        if cross is not None:
            columns += [
                (f"cross/{n}", 1, "query" if n == "history_empty" else "pair") for n in _cross_feature_names(cross)
            ]
        if history_cosine:
            columns.append(("history_cosine", 1, "pair"))
        if tower_dim is not None:
            columns += [
                (_QUERY_EMBEDDING, tower_dim, "query"),
                (_ITEM_EMBEDDING, tower_dim, "item"),
                ("tower_dot", 1, "pair"),
            ]
        self._columns = columns
        input_dim = sum(width for _, width, _ in columns)

        shapes = layout.table_shapes()
        integer = []
        if cross is not None:
            size = cross["item_vocabulary_size"]
            for key in cross["attribute_keys"]:
                shapes[f"cross/{key}"] = (size,)
                integer.append(f"cross/{key}")
            if cross["price_key"] is not None:
                shapes["cross/price"] = (size,)
                shapes["cross/price_known"] = (size,)
        width = input_dim
        self._dense_names = [*(f"deep_{i}" for i in range(len(deep_layers))), "logit"]
        for name, out in zip(self._dense_names, [*deep_layers, 1], strict=True):
            shapes[f"{name}/kernel"] = (width, out)
            shapes[f"{name}/bias"] = (out,)
            width = out
        self.arrays: dict[str, np.ndarray] = _check_arrays(arrays, shapes, integer=integer)

        # Rows of the first kernel per side; the pair rows in the order `score` builds its pair columns.
        kernel = self.arrays[f"{self._dense_names[0]}/kernel"]
        offsets, start = {}, 0
        for name, width, _ in columns:
            offsets[name] = np.arange(start, start + width)
            start += width
        self._query_columns = [name for name, _, side in columns if side == "query"]
        self._item_columns = [name for name, _, side in columns if side == "item"]
        self._pair_columns = [name for name, _, side in columns if side == "pair"]

        def rows(names: list[str]) -> np.ndarray:
            return np.concatenate([offsets[n] for n in names]) if names else np.zeros(0, dtype=np.int64)

        self._query_kernel = np.ascontiguousarray(kernel[rows(self._query_columns)])
        self._item_kernel = np.ascontiguousarray(kernel[rows(self._item_columns)])
        self._pair_kernel = np.ascontiguousarray(kernel[rows(self._pair_columns)])
        self._first_bias = self.arrays[f"{self._dense_names[0]}/bias"]
        self._rest = [(self.arrays[f"{n}/kernel"], self.arrays[f"{n}/bias"]) for n in self._dense_names[1:]]
        if cross is not None and cross["attribute_keys"]:
            # [item_vocabulary_size, num_attributes]: one gather gives every attribute of every history entry.
            self._history_attributes = np.stack([self.arrays[f"cross/{k}"] for k in cross["attribute_keys"]], axis=1)

    @classmethod
    def from_keras(cls, student: Any) -> NumpyStudent:
        """Converts a `ranking.StudentRanker` (built at construction, trained or not)."""
        if not all(hasattr(student, a) for a in ("embedding", "deep_layers", "logit_layer", "query_embedding_keys")):
            raise TypeError(f"`student` should be a StudentRanker. Received: {type(student).__name__}")
        spec, arrays = _layout_from_embedding(student.embedding)
        cross_layer = student.cross_features
        cross = None
        if cross_layer is not None:
            keys = tuple(cross_layer.attribute_keys)
            tables = {key: cross_layer._attribute_tables[key].numpy() for key in keys}
            if cross_layer.price_key is not None:
                tables["price"] = cross_layer._price_table.numpy()
                tables["price_known"] = cross_layer._price_known_table.numpy()
            sizes = {len(t) for t in tables.values()}
            if len(sizes) > 1:
                raise ValueError(f"The cross features' item tables should have one size. Received: {sorted(sizes)}")
            cross = {
                "text_key": cross_layer.text_key,
                "num_oov_tokens": int(cross_layer.num_oov_tokens),
                "attribute_keys": list(keys),
                "price_key": cross_layer.price_key,
                # Without item tables the size is never used (no array to check); 0 keeps the spec explicit.
                "item_vocabulary_size": int(sizes.pop()) if sizes else 0,
            }
            if tuple(_cross_feature_names(cross)) != tuple(cross_layer.feature_names):
                raise ValueError(
                    f"The cross features {list(cross_layer.feature_names)} are not those the numpy path computes "
                    f"({_cross_feature_names(cross)}): update index.numpy_models with ranking.cross_features."
                )
            arrays.update({f"cross/{key}": table for key, table in tables.items()})
        for i, layer in enumerate(student.deep_layers):
            arrays.update(_dense_weights(layer, f"deep_{i}"))
        arrays.update(_dense_weights(student.logit_layer, "logit"))
        config = student.config
        spec.update(
            query_embedding_keys=list(student.query_embedding_keys),
            item_embedding_keys=list(student.item_embedding_keys),
            query_keys=list(student.query_keys),
            item_keys=list(student.item_keys),
            cross=cross,
            history_cosine=bool(student.use_history_cosine),
            tower_embedding_dim=int(config.tower_embedding_dim) if config.use_tower_embeddings else None,
            deep_layers=[int(layer.units) for layer in student.deep_layers],
            activation=_activation_name(list(student.deep_layers), what="deep"),
        )
        return cls(spec, arrays)

    @property
    def uses_tower_embeddings(self) -> bool:
        """Whether `item_table` and `query_state` need the two-tower embeddings."""
        return self.spec["tower_embedding_dim"] is not None

    @property
    def query_keys(self) -> tuple[str, ...]:
        """The encoded query feature keys the student reads (``StudentRanker.query_keys``)."""
        return tuple(self.spec["query_keys"])

    @property
    def item_keys(self) -> tuple[str, ...]:
        """The encoded item feature keys the student reads (``StudentRanker.item_keys``)."""
        return tuple(self.spec["item_keys"])

    @property
    def first_width(self) -> int:
        """Width of the first Dense layer (the logit's 1 when there are no deep layers)."""
        return len(self._first_bias)

    def _tower_embeddings(self, embeddings: np.ndarray | None, rows: int, *, name: str) -> np.ndarray | None:
        if not self.uses_tower_embeddings:
            if embeddings is not None:
                raise ValueError(f"`{name}` should be None: the student was trained without tower embeddings.")
            return None
        if embeddings is None:
            raise ValueError(
                f"`{name}` should be given: the student was trained with tower embeddings (use_tower_embeddings=True)."
            )
        embeddings = np.asarray(embeddings, dtype=np.float32)
        expected = (rows, self.spec["tower_embedding_dim"])
        if embeddings.shape != expected:
            raise ValueError(f"`{name}` should have shape {expected}. Received: shape={embeddings.shape}")
        return embeddings

    def _side_input(
        self, features: Mapping[str, np.ndarray], columns: list[str], extra: Mapping[str, np.ndarray], rows: int
    ) -> np.ndarray:
        """``[rows, width]`` float32 of one side's first-layer input columns, in ``columns`` order."""
        parts = [extra[c] if c in extra else self._layout.embed(self.arrays, features, c) for c in columns]
        if not parts:
            return np.zeros((rows, 0), dtype=np.float32)
        return np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]

    def item_table(
        self, item_features: Mapping[str, np.ndarray], item_embeddings: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Everything that depends on the item only, once per catalog item (at index build time).

        Args:
            item_features: The encoded catalog (``encoders.encode_items``), ``[num_items, ...]`` per key of
                `item_keys`; other keys are ignored.
            item_embeddings: ``[num_items, tower_embedding_dim]`` two-tower item embeddings; required iff
                `uses_tower_embeddings`.

        Returns:
            A plain dict of arrays with ``num_items`` rows each (save each as ``.npy`` and memory-map it):

            - ``"dense"``: ``[num_items, first_width]`` float32, the item-only input columns times their rows of
              the first kernel (of the logit layer when there are no deep layers).
            - ``"vectors"`` (history cosine and/or tower embeddings): ``[num_items, dim]`` float32, the
              L2-normalised item-id embedding followed by the tower item embedding.
            - ``"attributes"`` (cross features with history attributes): ``[num_items, num_attributes]`` int32,
              the candidate's attribute indices with missing (0) replaced by -1 (never matches the history).
            - ``"price"`` (cross features with a price): ``[num_items, 2]`` float32, normalised price and
              price-known flag.
            - ``"tokens"`` (cross features with text): ``[num_items, width]`` int32, each item's distinct known
              text tokens first, -2 after them (never matches a query token), ``width`` = the encoded text width;
              ``"num_distinct_tokens"`` ``[num_items]`` float32.

        Raises:
            ValueError: When a key is missing, row counts differ, an index is out of its vocabulary, or
                ``item_embeddings`` is given without tower embeddings or missing with them.
        """
        arrays, num_items = _check_features(item_features, self.item_keys, name="item_features")
        _check_feature_shapes(arrays, self._layout, self._item_columns_embedded(), name="item_features")
        embeddings = self._tower_embeddings(item_embeddings, num_items, name="item_embeddings")
        extra = {} if embeddings is None else {_ITEM_EMBEDDING: embeddings}
        dense = np.empty((num_items, self.first_width), dtype=np.float32)
        for start in range(0, num_items, _ITEM_BATCH):
            batch = {k: a[start : start + _ITEM_BATCH] for k, a in arrays.items()}
            part_extra = {k: v[start : start + _ITEM_BATCH] for k, v in extra.items()}
            x = self._side_input(batch, self._item_columns, part_extra, min(_ITEM_BATCH, num_items - start))
            dense[start : start + _ITEM_BATCH] = np.matmul(x, self._item_kernel)
        table = {"dense": dense}
        vectors = []
        if self.spec["history_cosine"]:
            ids = _check_index_dtype(arrays["item_id"], "item_id")
            vectors.append(_l2_normalize(_take(self.arrays[self._layout.table_name("item_id")], ids, "item_id")))
        if embeddings is not None:
            vectors.append(embeddings)
        if vectors:
            table["vectors"] = np.concatenate(vectors, axis=1) if len(vectors) > 1 else vectors[0]
        cross = self.spec["cross"]
        if cross is None:
            return table
        if cross["attribute_keys"]:
            attributes = np.stack([arrays[k].astype(np.int32) for k in cross["attribute_keys"]], axis=1)
            table["attributes"] = np.where(attributes == 0, np.int32(-1), attributes)
        if cross["price_key"] is not None:
            price = np.asarray(arrays[cross["price_key"]], dtype=np.float32)
            known = 1.0 - np.asarray(arrays[f"{cross['price_key']}_missing"], dtype=np.float32)
            table["price"] = np.stack([price, known], axis=1)
        if cross["text_key"] is not None:
            tokens = _check_index_dtype(arrays[cross["text_key"]], cross["text_key"]).astype(np.int32)
            known = tokens > cross["num_oov_tokens"]
            first = known & _first_occurrence(tokens)
            table["num_distinct_tokens"] = first.sum(axis=1, dtype=np.float32)
            # Full width, so catalogs embedded batch by batch (and items added later) share one shape; the
            # Searcher trims the all-padding tail columns when it loads the table.
            table["tokens"] = _distinct_known(tokens, first, -2, width=tokens.shape[1])
        return table

    def _item_columns_embedded(self) -> list[str]:
        return [c for c in self._item_columns if c != _ITEM_EMBEDDING]

    def query_state(
        self, query_features: Mapping[str, np.ndarray], query_embeddings: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Everything that depends on the query only, for a batch of queries.

        Args:
            query_features: Encoded queries (``encoders.encode_queries``), ``[num_queries, ...]`` per key of
                `query_keys`; other keys are ignored.
            query_embeddings: ``[num_queries, tower_embedding_dim]`` two-tower query embeddings; required iff
                `uses_tower_embeddings`.

        Returns:
            A dict of arrays with ``num_queries`` rows each:

            - ``"dense"``: ``[num_queries, first_width]`` float32, the query-only input columns (the query's
              embeddings, ``history_empty``, the tower query embedding) times their kernel rows, plus the bias.
            - ``"vectors"`` (history cosine and/or tower embeddings): ``[num_queries, dim, num_dots]`` float32,
              block-diagonal: column 0 holds the L2-normalised pooled history, the last column the tower query
              embedding, so ``item vectors @ vectors`` gives the history cosine and the tower dot product.
            - ``"history_attributes"`` ``[num_queries, num_attributes, width]`` int32 (the attributes of the
              history entries, 0 for padding; ``width`` drops the columns that are padding in every query) and
              ``"history_denominator"`` ``[num_queries]`` float32 (``max(#history, 1)``), for the attribute
              matches.
            - ``"history_price"`` ``[num_queries, 2]`` float32: mean normalised price of the priced history items
              and whether there is one.
            - ``"tokens"`` ``[num_queries, width]`` int32 (the query tokens at the positions where some query of
              the batch has a known token, -1 for unknown tokens and padding),
              ``"token_weights"`` ``[num_queries, width, 3]`` float32 (1, ``1 / max(#query tokens, 1)``,
              first-occurrence flag) and ``"num_distinct_tokens"`` ``[num_queries]`` float32.

        Raises:
            ValueError: As `item_table`, for the query side.
        """
        layout, cross = self._layout, self.spec["cross"]
        arrays, num_queries = _check_features(query_features, self.query_keys, name="query_features")
        embedded = [c for c in self._query_columns if c in layout.vocab or c in layout.numeric]
        _check_feature_shapes(arrays, layout, embedded, name="query_features")
        embeddings = self._tower_embeddings(query_embeddings, num_queries, name="query_embeddings")
        parts = {c: layout.embed(self.arrays, arrays, c) for c in embedded}
        state: dict[str, np.ndarray] = {}
        history = None
        if cross is not None:
            history = _check_index_dtype(arrays["history"], "history")
            if history.ndim != 2:
                raise ValueError(f"`query_features['history']` should be [batch, length]. Received: {history.shape}")
            in_history = history != 0
            count = in_history.sum(axis=1, dtype=np.float32)
            parts[_HISTORY_EMPTY] = (count == 0).astype(np.float32)[:, None]
            state["history_denominator"] = np.maximum(count, np.float32(1.0))
        if embeddings is not None:
            parts[_QUERY_EMBEDDING] = embeddings
        x = self._side_input(arrays, self._query_columns, parts, num_queries)
        state["dense"] = np.matmul(x, self._query_kernel) + self._first_bias

        vectors = []
        if self.spec["history_cosine"]:
            pooled = parts["history"] if "history" in parts else layout.embed(self.arrays, arrays, "history")
            vectors.append(_l2_normalize(pooled))
        if embeddings is not None:
            vectors.append(embeddings)
        if vectors:
            widths = [v.shape[1] for v in vectors]
            block = np.zeros((num_queries, sum(widths), len(vectors)), dtype=np.float32)
            start = 0
            for j, (v, w) in enumerate(zip(vectors, widths, strict=True)):
                block[:, start : start + w, j] = v
                start += w
            state["vectors"] = block
        if cross is None:
            return state

        if cross["attribute_keys"]:
            # [B, A, H]: attributes of the history entries; padding columns (no query has an entry) never match.
            columns = np.flatnonzero(in_history.any(axis=0))
            attributes = _take(self._history_attributes, history[:, columns], "history")  # [B, H, A]
            state["history_attributes"] = np.ascontiguousarray(attributes.transpose(0, 2, 1))
        if cross["price_key"] is not None:
            known = _take(self.arrays["cross/price_known"], history, "history") * in_history
            priced = known.sum(axis=1)
            total = (_take(self.arrays["cross/price"], history, "history") * known).sum(axis=1)
            mean = total / np.maximum(priced, np.float32(1.0))
            state["history_price"] = np.stack([mean, (priced > 0).astype(np.float32)], axis=1)
        if cross["text_key"] is not None:
            tokens = _check_index_dtype(arrays["query_tokens"], "query_tokens").astype(np.int32)
            if tokens.ndim != 2:
                raise ValueError(
                    f"`query_features['query_tokens']` should be [batch, length]. Received: {tokens.shape}"
                )
            inverse_length = 1.0 / np.maximum((tokens != 0).sum(axis=1, dtype=np.float32), np.float32(1.0))
            known = tokens > cross["num_oov_tokens"]
            # Positions where no query of the batch has a known token never match: drop them. A dropped position
            # holds no known token, so first occurrences among the kept ones do not change.
            columns = np.flatnonzero(known.any(axis=0))
            tokens, known = tokens[:, columns], known[:, columns]
            first = (known & _first_occurrence(tokens)).astype(np.float32)
            weights = np.stack([np.ones_like(first), np.broadcast_to(inverse_length[:, None], first.shape), first], -1)
            state["tokens"] = np.where(known, tokens, np.int32(-1))  # -1 never equals a text token (-2 or known)
            state["token_weights"] = weights
            state["num_distinct_tokens"] = first.sum(axis=1)
        return state

    def score(
        self, query_state: Mapping[str, np.ndarray], item_table: Mapping[str, np.ndarray], candidates: np.ndarray
    ) -> np.ndarray:
        """Logits of candidate items for a batch of queries.

        Args:
            query_state: `query_state` of ``num_queries`` queries.
            item_table: `item_table` of the catalog (possibly memory-mapped arrays).
            candidates: ``[num_queries, num_candidates]`` integer rows into ``item_table``; -1 is padding.

        Returns:
            ``[num_queries, num_candidates]`` float32 logits, ``-inf`` at padding.

        Raises:
            ValueError: When ``candidates`` is not 2-D, its row count differs from the queries', or it holds a row
                outside ``[-1, num_items)``.
        """
        candidates = np.asarray(candidates)
        query_dense, item_dense = query_state["dense"], item_table["dense"]
        if candidates.ndim != 2 or candidates.dtype.kind not in "iu" or candidates.shape[0] != query_dense.shape[0]:
            raise ValueError(
                "`candidates` should be [num_queries, num_candidates] integers with "
                f"num_queries={query_dense.shape[0]}. Received: shape={candidates.shape}, dtype={candidates.dtype}"
            )
        num_queries, num_candidates = candidates.shape
        if candidates.size == 0:
            return np.zeros(candidates.shape, dtype=np.float32)
        low, high = candidates.min(), candidates.max()
        if low < -1 or high >= len(item_dense):
            raise ValueError(
                f"`candidates` should hold rows in [0, {len(item_dense)}) or -1 (padding). Received: "
                f"min={low}, max={high}"
            )
        padding = candidates < 0
        if high < 0:
            return np.full(candidates.shape, -np.inf, dtype=np.float32)
        rows = np.maximum(candidates, 0)

        hidden = item_dense.take(rows, axis=0)  # [B, C, first_width]
        hidden += query_dense[:, None, :]
        blocks = []  # the pair columns, [B, C, k] each, in `self._pair_columns` order
        cross = self.spec["cross"]
        if cross is not None and cross["text_key"] is not None:
            # [B, C, query width, title width] -> does query position j occur in the candidate's text?
            item_tokens = item_table["tokens"].take(rows, axis=0)  # [B, C, Lt], distinct known tokens
            query_tokens = query_state["tokens"]  # [B, Lq]
            equal = query_tokens[:, None, :, None] == item_tokens[:, :, None, :]  # [B, C, Lq, Lt]
            flat = equal.reshape(num_queries, num_candidates, query_tokens.shape[1] * item_tokens.shape[2])
            # Summing over the (distinct) text tokens gives membership, weighted per query position.
            weights = np.repeat(query_state["token_weights"], item_tokens.shape[2], axis=1)  # [B, Lq * Lt, 3]
            text = np.matmul(flat.astype(np.float32), weights)  # [B, C, 3]: count, fraction, intersection
            intersection = text[..., 2]
            union = query_state["num_distinct_tokens"][:, None] + item_table["num_distinct_tokens"].take(rows)
            text[..., 2] = intersection / np.maximum(union - intersection, np.float32(1.0))
            blocks.append(text)
        if cross is not None and cross["attribute_keys"]:
            candidate = item_table["attributes"].take(rows, axis=0)[..., None]  # [B, C, A, 1]
            equal = query_state["history_attributes"][:, None] == candidate  # [B, C, A, H]
            blocks.append(_count_last(equal) / query_state["history_denominator"][:, None, None])
        if cross is not None and cross["price_key"] is not None:
            price = item_table["price"].take(rows, axis=0)  # [B, C, 2]
            history_price = query_state["history_price"]
            relative = (price[..., 0] - history_price[:, :1]) * price[..., 1] * history_price[:, 1:]
            blocks.append(np.stack([relative, np.abs(relative)], axis=-1))
        if "vectors" in query_state:
            blocks.append(np.matmul(item_table["vectors"].take(rows, axis=0), query_state["vectors"]))
        if blocks:
            pair = np.concatenate(blocks, axis=-1) if len(blocks) > 1 else blocks[0]
            hidden += np.matmul(pair, self._pair_kernel)

        hidden = hidden.reshape(num_queries * num_candidates, -1)
        if self._rest:
            hidden = self._activation(hidden)
            for kernel, bias in self._rest[:-1]:
                hidden = self._activation(np.matmul(hidden, kernel) + bias)
            kernel, bias = self._rest[-1]
            hidden = np.matmul(hidden, kernel) + bias
        logits = hidden.reshape(num_queries, num_candidates)
        return np.where(padding, np.float32(-np.inf), logits).astype(np.float32, copy=False)

    def save(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Writes ``directory/model.json`` (the spec) and ``directory/arrays.npz``; returns the two paths."""
        return _save(directory, type(self).__name__, self.spec, self.arrays)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> NumpyStudent:
        """Reads a directory written by `save` (errors as `NumpyTower.load`)."""
        spec, arrays, path = _load(directory, cls.__name__)
        try:
            return cls(spec, arrays)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e


def score_candidates(
    student: NumpyStudent,
    query_features: Mapping[str, np.ndarray],
    item_table: Mapping[str, np.ndarray],
    candidates: np.ndarray,
    query_embeddings: np.ndarray | None = None,
) -> np.ndarray:
    """``student.score(student.query_state(query_features, query_embeddings), item_table, candidates)``."""
    return student.score(student.query_state(query_features, query_embeddings), item_table, candidates)
