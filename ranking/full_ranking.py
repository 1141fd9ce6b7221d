"""Exact teacher scores of whole catalogs and of candidate lists.

`full_rank` scores every (query, catalog item) pair with the teacher and keeps the top ``k`` per query. It is
the reference the cascade is measured against, so it is exact, and it is made affordable by splitting the
teacher (`TeacherRanker.item_representation` / `query_representation` / `score_representations`):

1. the item side (embeddings of every item feature, the item half of the cross features) is computed ONCE for
   the catalog and cached;
2. per batch of queries, the query side is computed once, then the catalog is scored in chunks of
   ``item_chunk_size`` items inside one compiled `tf.function` (fixed input signature, so it is traced once):
   each chunk's ``[queries, chunk]`` scores go through ``tf.math.top_k`` and are merged with the running top-k
   (``top_k`` of the concatenation of the running top-k and the chunk's), so memory is bounded by
   ``query_batch_size x item_chunk_size`` pairs whatever the catalog size.

With ``factorize_first_cross=True`` the first cross layer's ``W x0`` is split by the blocks of ``x0 = [query
embedding ‖ item embedding ‖ pair features]``: ``W x0 = W_q q + W_i i + W_p p``, where ``W_i i`` is computed once
per catalog item and ``W_q q`` once per query, so a pair pays only for its few pair features there. The
arithmetic is the same up to float rounding (summation order), well inside the tests' 1e-4.

Ties in a top-k go to the lower catalog row. When ``k`` exceeds the catalog, rows are padded with ``-1`` and
scores with ``-inf``.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from ranking._checks import check_positive_int
from ranking._inputs import select
from ranking.teacher import TeacherRanker

PAD = -1
"""Item row of padding entries (``k`` larger than the catalog, or padding of a candidate list)."""


class FullRanking(NamedTuple):
    """Top-k of a full ranking, best first.

    Attributes:
        item_rows: ``[num_queries, k]`` int32 rows of the catalog; `PAD` (-1) where the catalog has fewer than
            ``k`` items.
        scores: ``[num_queries, k]`` float32 teacher logits, descending; ``-inf`` at padding.
    """

    item_rows: np.ndarray
    scores: np.ndarray


class FullRanker:
    """Scores whole catalogs with a teacher, the item side computed once (see the module docstring).

    Args:
        teacher: The trained teacher.
        item_features: The encoded catalog, key -> ``[num_items, ...]``.
        item_chunk_size: Catalog items scored per step against a batch of queries.
        item_batch_size: Items per batch while computing the cached item side.
        factorize_first_cross: Whether to precompute the item and query blocks of the first cross layer's
            projection (exact up to rounding; faster).

    The cached item side is a snapshot of the teacher's weights: build a new `FullRanker` after training more.

    Example:
        >>> ranker = FullRanker(teacher, item_features)
        >>> top = ranker.rank(query_features, k=100)
        >>> top.item_rows.shape, top.scores.shape  # ([num_queries, 100], [num_queries, 100])
    """

    def __init__(
        self,
        teacher: TeacherRanker,
        item_features: Mapping[str, np.ndarray],
        *,
        item_chunk_size: int = 256,
        item_batch_size: int = 8192,
        factorize_first_cross: bool = True,
    ) -> None:
        if not isinstance(teacher, TeacherRanker):
            raise TypeError(f"`teacher` should be a TeacherRanker. Received: {type(teacher).__name__}")
        check_positive_int("item_chunk_size", item_chunk_size)
        check_positive_int("item_batch_size", item_batch_size)
        if factorize_first_cross:
            config = teacher.cross_layers[0].get_config()
            plain = {"diag_scale": config["diag_scale"], "use_bias": config["use_bias"]}
            if plain != {"diag_scale": 0.0, "use_bias": True} or config["preactivation"] not in (None, "linear"):
                raise ValueError(
                    "`factorize_first_cross=True` needs a first Cross layer with diag_scale=0, a bias and no "
                    f"preactivation (as TeacherRanker builds it). Received: {config}; pass factorize_first_cross=False."
                )
        self.teacher = teacher
        self.item_chunk_size = item_chunk_size
        self.factorize_first_cross = factorize_first_cross
        items = select(item_features, teacher.item_keys, side="item")
        sizes = {len(np.asarray(v)) for v in items.values()}
        if len(sizes) != 1:
            raise ValueError(f"Every array of `item_features` should have the same number of rows. Received: {sizes}")
        self.num_items = sizes.pop()
        if self.num_items == 0:
            raise ValueError("`item_features` should hold at least one item. Received: 0 rows")

        item_specs = teacher.input_specs()["item"]
        represent = tf.function(self._item_side, input_signature=[item_specs], autograph=False)
        batches = []
        for start in range(0, self.num_items, item_batch_size):
            batch = {k: tf.constant(np.asarray(v)[start : start + item_batch_size]) for k, v in items.items()}
            batches.append(represent(batch))
        self.num_chunks = math.ceil(self.num_items / item_chunk_size)
        padding = self.num_chunks * item_chunk_size - self.num_items
        self._items = {}
        for key in batches[0]:
            values = tf.concat([b[key] for b in batches], axis=0)
            pad = [[0, padding]] + [[0, 0]] * (values.shape.rank - 1)
            self._items[key] = tf.pad(values, pad)
        self._valid = tf.range(self.num_chunks * item_chunk_size) < self.num_items
        self._rank_functions: dict[int, Callable] = {}

    # -- the two sides ---------------------------------------------------------------------------------------

    def _item_side(self, items: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = self.teacher.item_representation(items)
        if self.factorize_first_cross:
            start = self.teacher.query_embedding_dim
            kernel = self._first_kernel()[start : start + self.teacher.item_embedding_dim]
            out["first_cross/item"] = tf.matmul(out["embedding"], kernel)
        return out

    def _query_side(self, queries: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = self.teacher.query_representation(queries)
        if self.factorize_first_cross:
            kernel = self._first_kernel()[: self.teacher.query_embedding_dim]
            out["first_cross/query"] = tf.matmul(out["embedding"], kernel)
        return out

    def _first_kernel(self) -> tf.Tensor:
        """The ``[input_dim, width]`` kernel applied to ``x0`` by the first cross layer (``U`` when low rank)."""
        cross = self.teacher.cross_layers[0]
        # TFRS keeps the projection in private sublayers: `_dense` (full rank) or `_dense_u` then `_dense_v`.
        dense = cross._dense if cross.get_config()["projection_dim"] is None else cross._dense_u
        return dense.kernel

    def _score_chunk(self, queries: Mapping[str, tf.Tensor], items: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """``[num_queries, chunk]`` logits of query representations ``[Q, 1, ...]`` × items ``[1, C, ...]``."""
        teacher = self.teacher
        if not self.factorize_first_cross:
            return teacher.score_representations(queries, items)
        x0 = teacher.pair_input(queries, items)
        pair_shape = tf.shape(x0)[:-1]
        x0 = tf.reshape(x0, [-1, x0.shape[-1]])
        offset = teacher.query_embedding_dim + teacher.item_embedding_dim
        first = teacher.cross_layers[0]
        projected = queries["first_cross/query"] + items["first_cross/item"]  # [Q, C, width]
        projected = tf.reshape(projected, [-1, projected.shape[-1]]) + tf.matmul(
            x0[:, offset:], self._first_kernel()[offset:]
        )
        if first.get_config()["projection_dim"] is None:
            projected = tf.nn.bias_add(projected, first._dense.bias)
        else:
            projected = first._dense_v(projected)
        x = x0 * projected + x0  # Cross: x0 ⊙ (W x0 + b) + x0, with the default diag_scale=0, no preactivation
        for cross in teacher.cross_layers[1:]:
            x = cross(x0, x)
        return tf.reshape(teacher.score_after_cross(x0, x), pair_shape)

    # -- ranking ---------------------------------------------------------------------------------------------

    def _rank_function(self, k: int) -> Callable:
        if k in self._rank_functions:
            return self._rank_functions[k]
        chunk = self.item_chunk_size
        chunk_k = min(k, chunk)
        items, valid = self._items, self._valid
        query_specs = self.teacher.input_specs()["query"]

        @tf.function(input_signature=[query_specs])
        def rank_batch(queries: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
            query = {key: value[:, None] for key, value in self._query_side(queries).items()}
            num_queries = tf.shape(query["embedding"])[0]
            best_scores = tf.fill([num_queries, k], tf.constant(-np.inf, tf.float32))
            best_rows = tf.fill([num_queries, k], PAD)
            for c in tf.range(self.num_chunks):
                start = c * chunk
                item = {key: value[None, start : start + chunk] for key, value in items.items()}
                scores = self._score_chunk(query, item)
                scores = tf.where(valid[None, start : start + chunk], scores, -np.inf)
                top = tf.math.top_k(scores, k=chunk_k)
                merged_scores = tf.concat([best_scores, top.values], axis=1)
                merged_rows = tf.concat([best_rows, top.indices + start], axis=1)
                best = tf.math.top_k(merged_scores, k=k)
                best_scores = best.values
                best_rows = tf.gather(merged_rows, best.indices, batch_dims=1)
            best_rows = tf.where(tf.math.is_inf(best_scores), PAD, best_rows)
            return best_rows, best_scores

        self._rank_functions[k] = rank_batch
        return rank_batch

    def rank(
        self, query_features: Mapping[str, np.ndarray], *, k: int = 100, query_batch_size: int = 32
    ) -> FullRanking:
        """The teacher's top ``k`` catalog items of each query.

        Args:
            query_features: Encoded queries, key -> ``[num_queries, ...]``.
            k: How many items per query.
            query_batch_size: Queries scored together against each item chunk.

        Returns:
            `FullRanking` with ``[num_queries, k]`` rows and scores.
        """
        check_positive_int("k", k)
        check_positive_int("query_batch_size", query_batch_size)
        queries = select(query_features, self.teacher.query_keys, side="query")
        num_queries = _num_rows(queries, "query_features")
        rank_batch = self._rank_function(k)
        specs = self.teacher.input_specs()["query"]
        rows, scores = [], []
        for start in range(0, num_queries, query_batch_size):
            batch = {
                key: tf.constant(np.asarray(value)[start : start + query_batch_size], dtype=specs[key].dtype)
                for key, value in queries.items()
            }
            batch_rows, batch_scores = rank_batch(batch)
            rows.append(batch_rows.numpy())
            scores.append(batch_scores.numpy())
        if not rows:
            return FullRanking(np.empty((0, k), np.int32), np.empty((0, k), np.float32))
        return FullRanking(np.concatenate(rows).astype(np.int32), np.concatenate(scores).astype(np.float32))


def full_rank(
    teacher: TeacherRanker,
    query_features: Mapping[str, np.ndarray],
    item_features: Mapping[str, np.ndarray],
    *,
    k: int = 100,
    query_batch_size: int = 32,
    item_chunk_size: int = 256,
) -> FullRanking:
    """Exact teacher top-``k`` of every query over the whole catalog (see the module docstring).

    Args:
        teacher: The trained teacher.
        query_features: Encoded queries, key -> ``[num_queries, ...]``.
        item_features: The encoded catalog, key -> ``[num_items, ...]``.
        k: How many items per query.
        query_batch_size: Queries scored together.
        item_chunk_size: Catalog items scored per step.

    Returns:
        `FullRanking`: ``item_rows`` ``[num_queries, k]`` int32 and ``scores`` ``[num_queries, k]`` float32.

    Example:
        >>> item_rows, scores = full_rank(teacher, query_features, item_features, k=100)
    """
    ranker = FullRanker(teacher, item_features, item_chunk_size=item_chunk_size)
    return ranker.rank(query_features, k=k, query_batch_size=query_batch_size)


# ---------------------------------------------------------------------------------------------------------------
# Scoring given pairs and candidate lists (any ranker)
# ---------------------------------------------------------------------------------------------------------------

_SCORERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _scorer(model: keras.Model) -> Callable:
    """The model's call compiled once with its input signature (cached per model while it lives)."""
    if model not in _SCORERS:
        specs = model.input_specs()

        # The cached function must not hold the model itself, or the weak key would never die: it holds a
        # weak reference, so a model that is dropped frees its compiled scorer too.
        model_ref = weakref.ref(model)

        @tf.function(input_signature=[specs["query"], specs["item"]], autograph=False)
        def score(query: dict[str, tf.Tensor], item: dict[str, tf.Tensor]) -> tf.Tensor:
            return model_ref()({"query": query, "item": item}, training=False)

        _SCORERS[model] = score
    return _SCORERS[model]


def score_pairs(
    model: keras.Model,
    query_features: Mapping[str, np.ndarray],
    item_features: Mapping[str, np.ndarray],
    *,
    batch_size: int = 8192,
) -> np.ndarray:
    """Logits of aligned pairs: query row ``i`` with item row ``i``.

    Args:
        model: A `TeacherRanker` or `StudentRanker`.
        query_features: Encoded query features, key -> ``[num_pairs, ...]``.
        item_features: Encoded item features, key -> ``[num_pairs, ...]``.
        batch_size: Pairs per call.

    Returns:
        ``[num_pairs]`` float32 logits.
    """
    check_positive_int("batch_size", batch_size)
    specs = model.input_specs()
    queries = select(query_features, specs["query"], side="query")
    items = select(item_features, specs["item"], side="item")
    n = _num_rows(queries, "query_features")
    if _num_rows(items, "item_features") != n:
        raise ValueError(
            f"`query_features` and `item_features` should have one row per pair. Received: {n} query rows and "
            f"{_num_rows(items, 'item_features')} item rows"
        )
    score = _scorer(model)
    out = np.empty(n, dtype=np.float32)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        query = {k: tf.constant(np.asarray(v)[start:stop], dtype=specs["query"][k].dtype) for k, v in queries.items()}
        item = {k: tf.constant(np.asarray(v)[start:stop], dtype=specs["item"][k].dtype) for k, v in items.items()}
        out[start:stop] = score(query, item).numpy()
    return out


def score_lists(
    model: keras.Model,
    query_features: Mapping[str, np.ndarray],
    item_rows: np.ndarray,
    item_catalog: Mapping[str, np.ndarray],
    *,
    batch_size: int = 8192,
) -> np.ndarray:
    """Logits of candidate lists: query ``q`` with each catalog row ``item_rows[q, j]``.

    Args:
        model: A `TeacherRanker` or `StudentRanker`.
        query_features: Encoded queries, key -> ``[num_queries, ...]``.
        item_rows: ``[num_queries, list_size]`` catalog rows; `PAD` (-1) marks padding.
        item_catalog: The encoded catalog, key -> ``[num_items, ...]``.
        batch_size: Pairs per call.

    Returns:
        ``[num_queries, list_size]`` float32 logits; ``-inf`` at padding.
    """
    item_rows = np.asarray(item_rows)
    if item_rows.ndim != 2 or item_rows.dtype.kind not in "iu":
        raise ValueError(
            f"`item_rows` should be a 2-D integer array [num_queries, list_size]. Received: shape={item_rows.shape}, "
            f"dtype={item_rows.dtype}"
        )
    specs = model.input_specs()
    queries = select(query_features, specs["query"], side="query")
    catalog = select(item_catalog, specs["item"], side="item")
    num_queries = _num_rows(queries, "query_features")
    num_items = _num_rows(catalog, "item_catalog")
    if item_rows.shape[0] != num_queries:
        raise ValueError(
            f"`item_rows` should have one row per query ({num_queries}). Received: {item_rows.shape[0]} rows"
        )
    if (item_rows < PAD).any() or (item_rows >= num_items).any():
        raise ValueError(
            f"`item_rows` should hold catalog rows in [0, {num_items}) or {PAD} for padding. Received values in "
            f"[{item_rows.min()}, {item_rows.max()}]"
        )
    out = np.full(item_rows.shape, -np.inf, dtype=np.float32)
    query_index, position = np.nonzero(item_rows != PAD)
    if query_index.size == 0:
        return out
    rows = item_rows[query_index, position]
    pair_queries = {k: np.asarray(v)[query_index] for k, v in queries.items()}
    pair_items = {k: np.asarray(v)[rows] for k, v in catalog.items()}
    out[query_index, position] = score_pairs(model, pair_queries, pair_items, batch_size=batch_size)
    return out


def _num_rows(features: Mapping[str, np.ndarray], name: str) -> int:
    sizes = {len(np.asarray(v)) for v in features.values()}
    if len(sizes) != 1:
        raise ValueError(f"Every array of `{name}` should have the same number of rows. Received: {sizes}")
    return sizes.pop()
