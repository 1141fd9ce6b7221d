"""Labelled (query, item) pairs for pointwise ranking: logged rows with graded targets plus sampled negatives.

Every logged interaction row becomes one pair with its graded target (`graded_target`). Implicit-feedback data
(every row a positive) needs negatives, and graded logs only hold the items a logging policy chose to show, so
each request with a positive also gets ``negatives_per_query`` sampled catalog items labelled 0, drawn from a
mix of the uniform and the popularity distribution over the catalog, never one of the request's own items.

Queries are built once per request (``features.build_queries`` with the training histories) and referenced by
``query_index``, so a request's ten impressions share one history rather than rebuilding it ten times.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

import features
from features import ITEM_ID, LABEL, REQUEST_ID, USER_ID, Dataset, FeatureEncoders, LabelSpec

if TYPE_CHECKING:
    import tensorflow as tf

logger = logging.getLogger(__name__)

# Rounds of vectorised redraws for negatives that hit one of their request's own items; the few left after
# them (only when a request's items cover most of the catalog) are drawn exactly from the complement.
_REDRAW_ROUNDS = 20


def graded_target(label: Any, spec: LabelSpec) -> np.ndarray:
    """The regression / soft-label target in ``[0, 1]`` of raw labels.

    Graded and rating labels map linearly, ``(label - spec.min) / (spec.max - spec.min)`` (clipped to
    ``[0, 1]``): impression 0 -> 0, click 1 -> 1/3, cart 2 -> 2/3, purchase 3 -> 1 on a 0..3 scale. A scale with
    ``min == max`` and implicit feedback (every logged row is a positive) give 1.0 to every row at or above the
    positive threshold and 0.0 below it.

    Args:
        label: ``[n]`` raw labels.
        spec: What the labels mean (``dataset.schema.label``).

    Returns:
        ``[n]`` float32 targets.

    Example:
        >>> graded_target([0, 1, 3], LabelSpec(kind="graded", min=0, max=3, positive_threshold=1)).tolist()
        [0.0, 0.3333333432674408, 1.0]
    """
    values = np.asarray(label, dtype=np.float64)
    if spec.kind == "implicit" or spec.max == spec.min:
        return (values >= spec.positive_threshold).astype(np.float32)
    return np.clip((values - spec.min) / (spec.max - spec.min), 0.0, 1.0).astype(np.float32)


@dataclass
class LabelledPairs:
    """Labelled (query, item) pairs, with one encoded query per request.

    Attributes:
        queries: Encoded query features, one row per request: key -> ``[num_queries, ...]``.
        query_index: ``[num_pairs]`` int64, the request (row of ``queries``) each pair belongs to; pairs of one
            request share it, which is what a listwise loss groups by.
        item_rows: ``[num_pairs]`` int64 rows of ``dataset.items`` (and of the encoded catalog).
        labels: ``[num_pairs]`` float32 graded targets in ``[0, 1]``; 0 for sampled negatives.
        is_sampled: ``[num_pairs]`` bool, True for sampled negatives, False for logged rows.
    """

    queries: dict[str, np.ndarray]
    query_index: np.ndarray
    item_rows: np.ndarray
    labels: np.ndarray
    is_sampled: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.query_index)
        for name in ("item_rows", "labels", "is_sampled"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"`{name}` should have one entry per pair ({n} from `query_index`). "
                    f"Received: {len(getattr(self, name))}"
                )
        sizes = {len(v) for v in self.queries.values()}
        if len(sizes) != 1:
            raise ValueError(f"Every array of `queries` should have the same number of rows. Received: {sizes}")
        num_queries = sizes.pop()
        if n and (self.query_index.min() < 0 or self.query_index.max() >= num_queries):
            raise ValueError(f"`query_index` should index the {num_queries} rows of `queries`.")

    def __len__(self) -> int:
        return len(self.query_index)

    @property
    def num_queries(self) -> int:
        """Rows of `queries` (requests)."""
        return len(next(iter(self.queries.values())))

    @property
    def query_features(self) -> dict[str, np.ndarray]:
        """Encoded query features repeated to pairs: key -> ``[num_pairs, ...]`` (a new array on each access)."""
        return {key: value[self.query_index] for key, value in self.queries.items()}

    def take(self, rows: np.ndarray) -> LabelledPairs:
        """The pairs at ``rows`` (the queries table is shared, not copied)."""
        return LabelledPairs(
            queries=self.queries,
            query_index=self.query_index[rows],
            item_rows=self.item_rows[rows],
            labels=self.labels[rows],
            is_sampled=self.is_sampled[rows],
        )


def make_labelled_pairs(
    dataset: Dataset,
    train_interactions: pd.DataFrame,
    encoders: FeatureEncoders,
    *,
    rows: pd.DataFrame | None = None,
    history_source: pd.DataFrame | None = None,
    negatives_per_query: int = 4,
    popularity_mix: float = 0.5,
    seed: int = 0,
    max_history: int | None = None,
) -> LabelledPairs:
    """Builds labelled pairs: logged rows with graded targets plus sampled negatives.

    A *request* is the group of rows with one ``(user_id, request_id)``; without request ids every row is its
    own request. Each request's query (user, text, history before the request, context) is built once.

    Args:
        dataset: The data set (schema, items table, users table).
        train_interactions: The training split (the default rows and history source).
        encoders: Encoders fitted on the training split.
        rows: The interaction rows to label (rows of ``dataset.interactions``); defaults to
            ``train_interactions``. Pass e.g. ``split.test_pairs`` for held-out pairs.
        history_source: Where histories come from (see `features.build_queries`); defaults to
            ``train_interactions``. For held-out rows pass ``dataset.interactions``: histories are cut at each
            request's time, so nothing later leaks in.
        negatives_per_query: Sampled negatives per request that holds a positive row (0: none).
        popularity_mix: Share of negatives drawn proportionally to training popularity
            (``encoders.item_popularity``, the positive counts of the split the encoders were fitted on); the
            rest are drawn uniformly over the catalog.
        seed: Seed of the negative sampling.
        max_history: History width; defaults to ``encoders.config.max_history``.

    Returns:
        `LabelledPairs`: first every row of ``rows`` in order, then the sampled negatives.

    Raises:
        ValueError: On an option out of range, or rows whose items are not in ``dataset.items``.

    Example:
        >>> pairs = make_labelled_pairs(dataset, split.train, encoders, negatives_per_query=4)
        >>> dataset_tf = make_pair_dataset(pairs, encoders.encode_items(dataset.items), batch_size=256)
    """
    if isinstance(negatives_per_query, bool) or not isinstance(negatives_per_query, int) or negatives_per_query < 0:
        raise ValueError(
            "`negatives_per_query` should be a non-negative integer. Received: "
            f"negatives_per_query={negatives_per_query!r}"
        )
    if not 0.0 <= popularity_mix <= 1.0:
        raise ValueError(f"`popularity_mix` should lie in [0, 1]. Received: popularity_mix={popularity_mix!r}")
    frame = train_interactions if rows is None else rows
    if len(frame) == 0:
        raise ValueError("`rows` should hold at least one interaction. Received: 0 rows")
    history_source = train_interactions if history_source is None else history_source
    max_history = encoders.config.max_history if max_history is None else max_history
    num_items = len(dataset.items)

    item_index = pd.Index(dataset.items[ITEM_ID])
    logged_rows = item_index.get_indexer(frame[ITEM_ID])
    if (logged_rows < 0).any():
        unknown = frame[ITEM_ID].to_numpy()[logged_rows < 0][:5].tolist()
        raise ValueError(f"`rows` reference items missing from `dataset.items`, e.g. {unknown}")

    # One query per request: the first row of each (user, request) group stands for it.
    if dataset.schema.has_request_id:
        user_codes = pd.factorize(frame[USER_ID].to_numpy())[0].astype(np.int64)
        request_codes = pd.factorize(frame[REQUEST_ID].to_numpy())[0].astype(np.int64)
        query_index = pd.factorize(user_codes * (int(request_codes.max()) + 1) + request_codes)[0].astype(np.int64)
    else:
        query_index = np.arange(len(frame), dtype=np.int64)
    num_queries = int(query_index.max()) + 1
    # Codes number requests in order of first appearance: the first row of each code stands for its request.
    order = np.argsort(query_index, kind="stable")
    first_row = order[np.r_[True, query_index[order][1:] != query_index[order][:-1]]]
    requests = frame.iloc[first_row]
    queries = encoders.encode_queries(
        features.build_queries(requests, dataset, history_source=history_source, max_history=max_history)
    )

    labels = graded_target(frame[LABEL].to_numpy(), dataset.schema.label)
    positive = dataset.positive_mask(frame).to_numpy()
    positive_queries = np.unique(query_index[positive])
    negative_queries = np.repeat(positive_queries, negatives_per_query)
    weights = _popularity_weights(dataset, encoders)
    rng = np.random.default_rng(seed)
    negative_rows = _sample_negatives(
        negative_queries,
        own_queries=query_index,
        own_rows=logged_rows,
        num_items=num_items,
        popularity=weights,
        popularity_mix=popularity_mix,
        rng=rng,
    )
    logger.info(
        "%d logged pairs of %d requests, %d sampled negatives for %d requests with a positive",
        len(frame),
        num_queries,
        len(negative_rows),
        len(positive_queries),
    )
    return LabelledPairs(
        queries=queries,
        query_index=np.concatenate([query_index, negative_queries]),
        item_rows=np.concatenate([logged_rows.astype(np.int64), negative_rows]),
        labels=np.concatenate([labels, np.zeros(len(negative_rows), dtype=np.float32)]),
        is_sampled=np.concatenate([np.zeros(len(frame), dtype=bool), np.ones(len(negative_rows), dtype=bool)]),
    )


def _popularity_weights(dataset: Dataset, encoders: FeatureEncoders) -> np.ndarray:
    """``[num_items]`` float64 sampling weights: training positive counts of each catalog row (0 for cold items).

    ``encoders.item_popularity`` counts the training positives per item-vocabulary row; an out-of-vocabulary
    bucket stands for many cold items, so cold items get weight 0 (they are still drawn uniformly).
    """
    vocab_rows = encoders.item_ids.encode(dataset.items[ITEM_ID])
    known = vocab_rows > encoders.item_ids.num_oov_buckets
    return np.where(known, encoders.item_popularity[vocab_rows], 0).astype(np.float64)


def _sample_negatives(
    queries: np.ndarray,
    *,
    own_queries: np.ndarray,
    own_rows: np.ndarray,
    num_items: int,
    popularity: np.ndarray,
    popularity_mix: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """One catalog row per entry of ``queries``, never an item logged in that query's request.

    Args:
        queries: ``[m]`` request index of each negative to draw.
        own_queries: ``[n]`` request index of each logged row.
        own_rows: ``[n]`` catalog row of each logged row.
        num_items: Catalog size.
        popularity: ``[num_items]`` non-negative popularity weights (all zero: uniform only).
        popularity_mix: Share of draws from the popularity distribution.
        rng: Random generator.

    Returns:
        ``[m]`` int64 catalog rows.
    """
    m = len(queries)
    if m == 0:
        return np.empty(0, dtype=np.int64)
    total = popularity.sum()
    cumulative = np.cumsum(popularity) / total if total > 0 else None
    # Sorted keys query * num_items + row of the logged pairs, for vectorised membership tests.
    forbidden = np.sort(own_queries.astype(np.int64) * num_items + own_rows.astype(np.int64))
    from_popularity = rng.random(m) < popularity_mix if cumulative is not None else np.zeros(m, dtype=bool)

    def draw(mask: np.ndarray) -> np.ndarray:
        out = rng.integers(0, num_items, size=len(mask))
        if cumulative is not None and mask.any():
            picks = np.searchsorted(cumulative, rng.random(int(mask.sum())), side="right")
            out[mask] = np.minimum(picks, num_items - 1)
        return out

    rows = draw(from_popularity)
    pending = np.arange(m)
    for _ in range(_REDRAW_ROUNDS):
        keys = queries[pending] * num_items + rows[pending]
        position = np.minimum(np.searchsorted(forbidden, keys), len(forbidden) - 1)
        pending = pending[forbidden[position] == keys]
        if pending.size == 0:
            return rows
        rows[pending] = draw(from_popularity[pending])
    # Requests whose own items fill most of the catalog: draw uniformly from each one's complement.
    for i in pending:
        own = own_rows[own_queries == queries[i]]
        allowed = np.setdiff1d(np.arange(num_items), own)
        if allowed.size == 0:
            raise ValueError(
                f"Request {queries[i]} was shown every catalog item: no negative can be sampled for it. "
                "Set negatives_per_query=0 or use a larger catalog."
            )
        rows[i] = rng.choice(allowed)
    return rows


def make_pair_dataset(
    pairs: LabelledPairs,
    item_catalog: Mapping[str, np.ndarray],
    *,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches labelled pairs into ``({"query": ..., "item": ...}, labels)`` for `keras.Model.fit`.

    Query rows (by ``pairs.query_index``) and catalog rows (by ``pairs.item_rows``) are gathered inside the
    pipeline with ``tf.gather``, so neither is repeated per pair in memory. With ``shuffle=True`` the order is a
    deterministic function of ``seed`` (a new, equally reproducible order each epoch).

    Args:
        pairs: The labelled pairs.
        item_catalog: Encoded catalog, ``encoders.encode_items(dataset.items)``: key -> ``[num_items, ...]``.
        batch_size: Pairs per batch.
        shuffle: Whether to shuffle the pairs (uniformly: the buffer holds every pair).
        seed: Shuffle seed.
        drop_remainder: Whether to drop the last, smaller batch.

    Returns:
        A dataset of ``({"query": {key: [batch, ...]}, "item": {key: [batch, ...]}}, labels [batch])``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` should be a positive integer. Received: batch_size={batch_size!r}")
    if len(pairs) == 0:
        raise ValueError("`pairs` should hold at least one pair. Received: 0 pairs")
    sizes = {len(np.asarray(v)) for v in item_catalog.values()}
    if len(sizes) != 1:
        raise ValueError(f"Every array of `item_catalog` should have the same number of rows. Received: {sizes}")
    num_items = sizes.pop()
    if pairs.item_rows.max() >= num_items:
        raise ValueError(
            f"`pairs.item_rows` reach row {pairs.item_rows.max()} but `item_catalog` has {num_items} rows: "
            "encode the same items table the pairs were built from."
        )

    import tensorflow as tf

    query_tensors = {key: tf.constant(value) for key, value in pairs.queries.items()}
    item_tensors = {key: tf.constant(np.asarray(value)) for key, value in item_catalog.items()}
    query_index = tf.constant(pairs.query_index)
    item_rows = tf.constant(pairs.item_rows)
    labels = tf.constant(pairs.labels.astype(np.float32))

    def gather(rows: tf.Tensor) -> Any:
        queries = tf.gather(query_index, rows)
        items = tf.gather(item_rows, rows)
        batch = {
            "query": {key: tf.gather(value, queries) for key, value in query_tensors.items()},
            "item": {key: tf.gather(value, items) for key, value in item_tensors.items()},
        }
        return batch, tf.gather(labels, rows)

    dataset = tf.data.Dataset.range(len(pairs))
    if shuffle:
        dataset = dataset.shuffle(len(pairs), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)
