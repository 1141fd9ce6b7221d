"""`TwoTowerModel`: the retrieval student trained with an in-batch sampled softmax (`tfrs.tasks.Retrieval`).

A training batch is a dict (`make_training_dataset` builds them from encoded arrays):

- ``"query"``: the encoded query features (``encoders.encode_queries``), ``[batch]`` / ``[batch, length]`` each.
- ``"item"``: the encoded features of each query's positive item (``encoders.encode_items`` rows).
- ``"item_row"``: ``[batch]`` int32, the positive's row in the catalog. Used as the candidate id, so another
  query's copy of the same item is not treated as a negative (accidental-hit removal).
- ``"sampling_probability"``: ``[batch]`` float32, the probability of that item in the training stream
  (`item_sampling_probability`), for the logQ correction.
- optional ``"sample_weight"``: ``[batch]`` float32 per-query weights.

Query ``i``'s positive is item ``i``; the other items of the batch are its negatives, so popular items are
negatives more often than their share of the catalog. The logQ correction subtracts ``log P(item)`` from every
logit, which turns the in-batch softmax into an estimate of the full softmax over the catalog (Yi et al. 2019)
instead of a popularity-penalising one.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from retrieval.towers import ItemTower, QueryTower, _check_positive_int, _is_real, _Tower

_BATCH_KEYS = ("query", "item", "item_row", "sampling_probability")


@dataclass(frozen=True)
class RetrievalConfig:
    """Loss and training settings of the two-tower model.

    Attributes:
        temperature: Softmax temperature. Both towers output unit vectors, so raw scores are cosines in
            ``[-1, 1]``; a softmax over such narrow logits cannot get peaked. Dividing by ``0.05`` stretches
            them to ``[-20, 20]``.
        remove_accidental_hits: Drop in-batch negatives that are the query's own positive item (the same item
            bought by two queries of one batch).
        logq_correction: Subtract ``log P(item)`` from the logits (needs ``"sampling_probability"`` in batches).
        learning_rate: Adam learning rate (`train_two_tower`).
        batch_size: Queries per batch; the in-batch softmax has ``batch_size - 1`` negatives per query.
        epochs: Passes over the training positives.
        seed: Shuffle seed of the training batches.
    """

    temperature: float = 0.05
    remove_accidental_hits: bool = True
    logq_correction: bool = True
    learning_rate: float = 3e-3
    batch_size: int = 1024
    epochs: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("temperature", "learning_rate"):
            value = getattr(self, name)
            if not _is_real(value) or value <= 0:
                raise ValueError(f"`{name}` should be a positive float. Received: {name}={value!r}")
        for name in ("batch_size", "epochs"):
            _check_positive_int(name, getattr(self, name))
        for name in ("remove_accidental_hits", "logq_correction"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` should be True or False. Received: {name}={getattr(self, name)!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"`seed` should be an integer. Received: seed={self.seed!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class TwoTowerModel(tfrs.Model):
    """Two-tower retrieval student: ``score(query, item) = <query_tower(query), item_tower(item)>``.

    The loss is `tfrs.tasks.Retrieval`'s in-batch softmax with temperature, logQ correction and accidental-hit
    removal (no top-K metrics: evaluation is done elsewhere, over the whole catalog), reduced as the *mean* over
    the batch's queries, so its scale and the learning rate do not depend on the batch size. Its running mean
    over an epoch is logged as ``"retrieval_loss"``.

    Subclasses (distillation) override `compute_loss` and reuse the pieces: `query_embeddings`,
    `item_embeddings` and `retrieval_loss`.

    Args:
        query_tower: Maps encoded query features to ``[batch, dim]`` unit vectors.
        item_tower: Maps encoded item features to ``[batch, dim]`` unit vectors (same ``dim``).
        config: Loss and training settings; ``RetrievalConfig()`` by default.

    Example:
        >>> model = TwoTowerModel(QueryTower.from_encoders(encoders), ItemTower.from_encoders(encoders),
        ...                       config=RetrievalConfig(epochs=10))
        >>> history = train_two_tower(model, query_features, item_features, item_rows)
        >>> item_embeddings = embed_catalog(model.item_tower, item_features)  # [num_items, dim]
    """

    def __init__(
        self, query_tower: QueryTower | _Tower, item_tower: ItemTower | _Tower, *, config: RetrievalConfig | None = None
    ) -> None:
        super().__init__()
        config = RetrievalConfig() if config is None else config
        if not isinstance(config, RetrievalConfig):
            raise TypeError(f"`config` should be a RetrievalConfig. Received: {type(config).__name__}")
        query_dim, item_dim = getattr(query_tower, "output_dim", None), getattr(item_tower, "output_dim", None)
        if query_dim is not None and item_dim is not None and query_dim != item_dim:
            raise ValueError(
                f"The towers should output embeddings of one width. Received: query_tower.output_dim={query_dim}, "
                f"item_tower.output_dim={item_dim}"
            )
        self.query_tower = query_tower
        self.item_tower = item_tower
        self.config = config
        # Per-query losses, averaged in `retrieval_loss`: Keras 2 refuses a SUM_OVER_BATCH_SIZE loss called
        # under a `tf.distribute.Strategy` (outside `fit`), and the mean is the same number.
        self.task = tfrs.tasks.Retrieval(
            loss=keras.losses.CategoricalCrossentropy(from_logits=True, reduction=keras.losses.Reduction.NONE),
            loss_metrics=[keras.metrics.Mean(name="retrieval_loss")],
            temperature=config.temperature,
            remove_accidental_hits=config.remove_accidental_hits,
            name="retrieval",
        )

    def query_embeddings(self, query_features: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """``[batch, dim]`` unit query embeddings of encoded query features."""
        return self.query_tower(query_features, training=training)

    def item_embeddings(self, item_features: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """``[batch, dim]`` unit item embeddings of encoded item features."""
        return self.item_tower(item_features, training=training)

    def retrieval_loss(
        self,
        query_emb: tf.Tensor,
        item_emb: tf.Tensor,
        item_row: tf.Tensor | None,
        sampling_probability: tf.Tensor | None,
        *,
        sample_weight: tf.Tensor | None = None,
    ) -> tf.Tensor:
        """The in-batch softmax loss of a batch of (query, positive item) embedding pairs.

        ``logits[i, j] = <q_i, v_j> / temperature - log P(j)`` (the second term with ``logq_correction``),
        with ``logits[i, j]`` masked out where ``j != i`` and ``item_row[j] == item_row[i]`` (with
        ``remove_accidental_hits``); ``loss = mean_i -log_softmax(logits[i])[i]``.

        Args:
            query_emb: ``[batch, dim]`` query embeddings.
            item_emb: ``[batch, dim]`` embeddings of each query's positive item.
            item_row: ``[batch]`` int catalog rows of the positives (needed with ``remove_accidental_hits``).
            sampling_probability: ``[batch]`` float sampling probabilities of the positives (needed with
                ``logq_correction``).
            sample_weight: Optional ``[batch]`` per-query weights.

        Returns:
            Scalar loss.
        """
        if self.config.remove_accidental_hits and item_row is None:
            raise ValueError(
                "`item_row` should be given when remove_accidental_hits=True (it identifies duplicate positives)."
            )
        if self.config.logq_correction and sampling_probability is None:
            raise ValueError("`sampling_probability` should be given when logq_correction=True.")
        per_query = self.task(
            query_emb,
            item_emb,
            sample_weight=sample_weight,
            candidate_sampling_probability=sampling_probability if self.config.logq_correction else None,
            candidate_ids=item_row if self.config.remove_accidental_hits else None,
            compute_metrics=False,
        )
        return tf.reduce_mean(per_query)

    def compute_loss(self, features: Mapping[str, object], training: bool = False) -> tf.Tensor:
        """The loss of one training batch (see the module docstring for the batch dict)."""
        missing = [k for k in _BATCH_KEYS if k not in features]
        if missing:
            raise ValueError(
                f"A training batch should be a dict with keys {list(_BATCH_KEYS)} (see make_training_dataset). "
                f"Missing: {missing}; received {sorted(features)}"
            )
        query_emb = self.query_embeddings(features["query"], training=training)
        item_emb = self.item_embeddings(features["item"], training=training)
        return self.retrieval_loss(
            query_emb,
            item_emb,
            features["item_row"],
            features["sampling_probability"],
            sample_weight=features.get("sample_weight"),
        )


def item_sampling_probability(item_rows: np.ndarray, num_items: int, *, smoothing: float = 1.0) -> np.ndarray:
    """How often each catalog row is a training positive, with additive smoothing so that none is 0.

    ``P(i) = (count_i + smoothing) / (len(item_rows) + smoothing * num_items)``; only ratios matter to the logQ
    correction (a constant factor shifts every logit of a row equally).

    Args:
        item_rows: ``[num_positives]`` catalog rows of the training positives.
        num_items: Catalog size.
        smoothing: Pseudo-count added to every item (``> 0``).

    Returns:
        ``[num_items]`` float32 probabilities summing to 1.
    """
    _check_positive_int("num_items", num_items)
    if not _is_real(smoothing) or smoothing <= 0:
        raise ValueError(f"`smoothing` should be a positive float. Received: smoothing={smoothing!r}")
    rows = _check_rows(item_rows, num_items)
    counts = np.bincount(rows, minlength=num_items).astype(np.float64)
    return ((counts + smoothing) / (len(rows) + smoothing * num_items)).astype(np.float32)


def make_training_dataset(
    query_features: Mapping[str, np.ndarray],
    item_features_catalog: Mapping[str, np.ndarray],
    item_rows: np.ndarray,
    sampling_probability_per_row: np.ndarray,
    *,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    drop_remainder: bool = False,
    extra: Mapping[str, np.ndarray] | None = None,
) -> tf.data.Dataset:
    """Batches (query, positive item) pairs into the dicts `TwoTowerModel.compute_loss` reads.

    The catalog is held once in memory; each batch gathers its positives' item features, rows and sampling
    probabilities with ``tf.gather`` inside the pipeline, which ends with ``prefetch``. With ``shuffle`` the
    order is a deterministic function of ``seed`` (a new, reproducible order every epoch).

    Args:
        query_features: Encoded queries, ``[num_pairs, ...]`` each (``encoders.encode_queries``).
        item_features_catalog: Encoded catalog, ``[num_items, ...]`` each (``encoders.encode_items``).
        item_rows: ``[num_pairs]`` int, the catalog row of each query's positive.
        sampling_probability_per_row: ``[num_items]`` float, each catalog row's sampling probability
            (`item_sampling_probability`).
        batch_size: Pairs per batch.
        shuffle: Whether to shuffle the pairs.
        seed: Shuffle seed.
        drop_remainder: Whether to drop the last, smaller batch.
        extra: More per-pair arrays, ``[num_pairs, ...]`` each, batched under their own keys (e.g. the
            ``"kd_rows"`` and ``"kd_scores"`` of `distill.two_tower.DistilledTwoTowerModel`).

    Returns:
        A dataset of ``{"query": {...}, "item": {...}, "item_row": [batch] int32,
        "sampling_probability": [batch] float32}`` (plus the ``extra`` keys).
    """
    _check_positive_int("batch_size", batch_size)
    queries = _as_arrays(query_features, "query_features")
    catalog = _as_arrays(item_features_catalog, "item_features_catalog")
    num_pairs = _num_rows(queries, "query_features")
    num_items = _num_rows(catalog, "item_features_catalog")
    rows = _check_rows(item_rows, num_items)
    if len(rows) != num_pairs:
        raise ValueError(
            f"`item_rows` should have one row per query ({num_pairs} in `query_features`). Received: {len(rows)}"
        )
    probability = np.asarray(sampling_probability_per_row, dtype=np.float32)
    if probability.shape != (num_items,):
        raise ValueError(
            f"`sampling_probability_per_row` should have shape [num_items={num_items}]. Received: {probability.shape}"
        )
    if not np.all(probability > 0):
        raise ValueError("`sampling_probability_per_row` should be positive everywhere (smooth the frequencies).")

    extra_arrays = {k: np.asarray(v) for k, v in (extra or {}).items()}
    bad = {k: len(v) for k, v in extra_arrays.items() if len(v) != num_pairs}
    if bad:
        raise ValueError(f"`extra` arrays should have one row per pair ({num_pairs}). Received lengths {bad}")
    extra_tensors = {k: tf.constant(v) for k, v in extra_arrays.items()}
    query_tensors = {k: tf.constant(v) for k, v in queries.items()}
    catalog_tensors = {k: tf.constant(v) for k, v in catalog.items()}
    rows_tensor = tf.constant(rows.astype(np.int32))
    probability_tensor = tf.constant(probability)

    def gather(pairs: tf.Tensor) -> dict:
        positive = tf.gather(rows_tensor, pairs)
        return {
            "query": {k: tf.gather(v, pairs) for k, v in query_tensors.items()},
            "item": {k: tf.gather(v, positive) for k, v in catalog_tensors.items()},
            "item_row": positive,
            "sampling_probability": tf.gather(probability_tensor, positive),
            **{k: tf.gather(v, pairs) for k, v in extra_tensors.items()},
        }

    dataset = tf.data.Dataset.range(num_pairs)
    if shuffle:
        dataset = dataset.shuffle(num_pairs, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def train_two_tower(
    model: TwoTowerModel,
    query_features: Mapping[str, np.ndarray],
    item_features_catalog: Mapping[str, np.ndarray],
    item_rows: np.ndarray,
    *,
    verbose: int = 0,
) -> keras.callbacks.History:
    """Fits a model on (query, positive) pairs with the settings of ``model.config``.

    Sampling probabilities are the smoothed frequencies of ``item_rows`` (`item_sampling_probability`). An
    uncompiled model is compiled with Adam at ``config.learning_rate``; a compiled one keeps its optimizer.

    Args:
        model: The model.
        query_features: Encoded training queries, ``[num_pairs, ...]`` each.
        item_features_catalog: Encoded catalog, ``[num_items, ...]`` each.
        item_rows: ``[num_pairs]`` catalog rows of the positives.
        verbose: Keras verbosity.

    Returns:
        The Keras history; ``history.history["retrieval_loss"]`` is the mean loss of each epoch.
    """
    config = model.config
    num_items = _num_rows(_as_arrays(item_features_catalog, "item_features_catalog"), "item_features_catalog")
    probability = item_sampling_probability(item_rows, num_items)
    dataset = make_training_dataset(
        query_features,
        item_features_catalog,
        item_rows,
        probability,
        batch_size=config.batch_size,
        seed=config.seed,
    )
    if model.optimizer is None:
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate))
    return model.fit(dataset, epochs=config.epochs, verbose=verbose)


def _as_arrays(features: Mapping[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    if not features:
        raise ValueError(f"`{name}` should hold at least one feature array. Received: an empty mapping")
    arrays = {k: np.asarray(v) for k, v in features.items()}
    bad = {k: str(a.dtype) for k, a in arrays.items() if a.dtype.kind not in "biuf" or a.ndim == 0}
    if bad:
        raise ValueError(f"`{name}` should hold encoded (numeric, at least 1-D) arrays. Received: {bad}")
    return arrays


def _num_rows(arrays: Mapping[str, np.ndarray], name: str) -> int:
    rows = {k: len(a) for k, a in arrays.items()}
    if len(set(rows.values())) != 1:
        raise ValueError(f"Every array of `{name}` should have the same number of rows. Received: {rows}")
    n = next(iter(rows.values()))
    if n == 0:
        raise ValueError(f"`{name}` should have at least one row. Received: 0 rows")
    return n


def _check_rows(item_rows: np.ndarray, num_items: int) -> np.ndarray:
    rows = np.asarray(item_rows)
    if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
        raise ValueError(f"`item_rows` should be a 1-D integer array. Received: shape={rows.shape}, dtype={rows.dtype}")
    bad = (rows < 0) | (rows >= num_items)
    if bad.any():
        raise ValueError(
            f"`item_rows` should be catalog rows in [0, {num_items}). Received out-of-range values: "
            f"{rows[bad][:5].tolist()}"
        )
    return rows.astype(np.int64)
