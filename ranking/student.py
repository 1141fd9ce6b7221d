"""`StudentRanker`: a light MLP ranker over cheap features, small enough to re-rank candidates per live query.

Its input for one (query, item) pair is

    [cheap embeddings ‖ cross features ‖ cos(history, item) ‖ (optional) tower embeddings and their dot]

- *cheap embeddings*: small (8-wide) embeddings of the item id, category leaf, brand and price bucket, the
  normalised price, and on the query side the pooled query tokens, the pooled history (reading the item-id
  table) and the context; no user id (a per-user table is the largest thing a ranker can hold);
- *cross features*: the same `ranking.cross_features.CrossFeatures` the teacher uses;
- *cos(history, item)*: cosine of the pooled history and the candidate's item-id embedding;
- *tower embeddings* (``use_tower_embeddings``): the two-tower model's ``"query_embedding"`` (in the query dict)
  and ``"item_embedding"`` (in the item dict) and their dot product, when the retrieval stage provides them.

The MLP is ``deep_layers`` wide (default ``(64, 32)``) with a ``Dense(1)`` logit. Training is plain Keras:
`ranking.training.train_ranker` for the label-only mode; a distillation trainer subclasses the model and
overrides ``train_step`` (or ``compute_loss``), `call` stays the scorer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tf_keras as keras

from features import FeatureEncoders
from features.layers import FeatureEmbedding, FeatureLayout
from ranking._checks import (
    check_activation,
    check_layer_widths,
    check_non_negative,
    check_positive_int,
    check_rate,
)
from ranking._inputs import feature_specs, select, zeros_like_specs
from ranking.cost import dense_multiply_adds
from ranking.cross_features import CrossFeatures, cosine_similarity

DEFAULT_STUDENT_FEATURES = (
    "item_id",
    "item_category_leaf",
    "item_brand",
    "item_price",
    "item_price_bucket",
    "query_tokens",
    "history",
)
"""The cheap features a student embeds by default (those the data set has), plus every ``context_*`` key."""

QUERY_EMBEDDING = "query_embedding"
ITEM_EMBEDDING = "item_embedding"


@dataclass(frozen=True)
class StudentConfig:
    """Sizes of the `StudentRanker`.

    Attributes:
        embedding_dim: Width of every embedding.
        features: Encoded feature keys to embed (item and query side), or ``None`` for
            `DEFAULT_STUDENT_FEATURES` (those the data set has) plus every context column.
        deep_layers: Widths of the MLP's hidden layers (may be empty: a linear model).
        activation: Activation of the hidden layers (a Keras activation name).
        dropout: Dropout rate after every hidden layer, in ``[0, 1)``.
        l2: L2 penalty on the embedding tables.
        use_cross_features: Whether the input includes the explicit cross features.
        use_history_cosine: Whether the input includes cos(pooled history, item-id embedding) (needs
            ``history`` and ``item_id`` among the features).
        use_tower_embeddings: Whether batches carry the two-tower embeddings (``"query_embedding"`` in the query
            dict, ``"item_embedding"`` in the item dict, both ``[batch, tower_embedding_dim]``).
        tower_embedding_dim: Width of the tower embeddings; required with ``use_tower_embeddings``.
    """

    embedding_dim: int = 8
    features: tuple[str, ...] | None = None
    deep_layers: tuple[int, ...] = (64, 32)
    activation: str = "relu"
    dropout: float = 0.0
    l2: float = 0.0
    use_cross_features: bool = True
    use_history_cosine: bool = True
    use_tower_embeddings: bool = False
    tower_embedding_dim: int | None = None

    def __post_init__(self) -> None:
        check_positive_int("embedding_dim", self.embedding_dim)
        if self.features is not None:
            if isinstance(self.features, str) or not all(isinstance(k, str) for k in self.features):
                raise ValueError(
                    "`features` should be a tuple of encoded feature keys or None. Received: "
                    f"features={self.features!r}"
                )
            object.__setattr__(self, "features", tuple(self.features))
        check_layer_widths("deep_layers", self.deep_layers)
        object.__setattr__(self, "deep_layers", tuple(self.deep_layers))
        check_activation(self.activation)
        check_rate("dropout", self.dropout)
        check_non_negative("l2", self.l2)
        if self.use_tower_embeddings:
            if self.tower_embedding_dim is None:
                raise ValueError(
                    "`tower_embedding_dim` should be the width of the two-tower embeddings when "
                    "use_tower_embeddings=True. Received: tower_embedding_dim=None"
                )
            check_positive_int("tower_embedding_dim", self.tower_embedding_dim)


class StudentRanker(keras.Model):
    """Light MLP ranker over cheap features (see the module docstring).

    Args:
        encoders: The fitted encoders.
        item_features: The encoded catalog (fills the cross features' item attribute table).
        config: Sizes; ``StudentConfig()`` when ``None``.
        name: Model name.

    Call with ``{"query": {...}, "item": {...}}`` of ``[batch, ...]`` encoded features; returns ``[batch]``
    float32 logits. The weights are built at construction.

    Example:
        >>> student = StudentRanker(encoders, item_features)
        >>> train_ranker(student, make_pair_dataset(pairs, item_features, batch_size=256, shuffle=True), epochs=3)
    """

    def __init__(
        self,
        encoders: FeatureEncoders,
        item_features: Mapping[str, np.ndarray],
        config: StudentConfig | None = None,
        *,
        name: str = "student_ranker",
    ) -> None:
        super().__init__(name=name)
        config = StudentConfig() if config is None else config
        if not isinstance(config, StudentConfig):
            raise TypeError(f"`config` should be a StudentConfig. Received: {type(config).__name__}")
        self.config = config
        both = FeatureLayout.from_encoders(encoders, "both")
        if config.features is None:
            keys = [k for k in DEFAULT_STUDENT_FEATURES if k in both.names()]
            keys += [k for k in both.names() if k.startswith("context_")]
        else:
            keys = list(config.features)
        layout = both.restrict(keys)
        query_side = set(FeatureLayout.from_encoders(encoders, "query").names())
        self.query_embedding_keys = tuple(k for k in layout.names() if k in query_side)
        self.item_embedding_keys = tuple(k for k in layout.names() if k not in query_side)
        has_history_and_item = {"history", "item_id"} <= set(layout.names())
        self.embedding = FeatureEmbedding(
            layout,
            embedding_dim=config.embedding_dim,
            share={"history": "item_id"} if has_history_and_item else None,
            l2=config.l2,
            name="embedding",
        )
        self.use_history_cosine = config.use_history_cosine and has_history_and_item
        self.cross_features = (
            CrossFeatures.from_encoders(encoders, item_features, name="cross_features")
            if config.use_cross_features
            else None
        )
        self.deep_layers = [
            keras.layers.Dense(units, activation=config.activation, name=f"deep_{i}")
            for i, units in enumerate(config.deep_layers)
        ]
        self.dropout_layers = [keras.layers.Dropout(config.dropout) for _ in config.deep_layers]
        self.logit_layer = keras.layers.Dense(1, name="logit")

        cross_query = self.cross_features.query_keys if self.cross_features is not None else ()
        cross_item = self.cross_features.item_keys if self.cross_features is not None else ()
        self.query_keys = tuple(dict.fromkeys((*self.query_embedding_keys, *cross_query)))
        self.item_keys = tuple(dict.fromkeys((*self.item_embedding_keys, *cross_item)))
        self._query_specs = feature_specs(encoders, self.query_keys)
        self._item_specs = feature_specs(encoders, self.item_keys)
        if config.use_tower_embeddings:
            width = config.tower_embedding_dim
            self._query_specs[QUERY_EMBEDDING] = tf.TensorSpec([None, width], tf.float32, name=QUERY_EMBEDDING)
            self._item_specs[ITEM_EMBEDDING] = tf.TensorSpec([None, width], tf.float32, name=ITEM_EMBEDDING)
        self({"query": zeros_like_specs(self._query_specs), "item": zeros_like_specs(self._item_specs)})

    def input_specs(self) -> dict[str, dict[str, tf.TensorSpec]]:
        """``{"query": {key: spec}, "item": {key: spec}}`` of the features the model reads."""
        return {"query": dict(self._query_specs), "item": dict(self._item_specs)}

    @property
    def input_dim(self) -> int:
        """Width of the MLP's input."""
        width = self.embedding.output_dim + int(self.use_history_cosine)
        if self.cross_features is not None:
            width += self.cross_features.num_features
        if self.config.use_tower_embeddings:
            width += 2 * self.config.tower_embedding_dim + 1
        return width

    def pair_input(self, inputs: Mapping[str, Mapping[str, tf.Tensor]]) -> tf.Tensor:
        """The MLP's ``[batch, input_dim]`` input of a batch of pairs."""
        query, item = inputs["query"], inputs["item"]
        merged = {
            **select(query, self.query_embedding_keys, side="query"),
            **select(item, self.item_embedding_keys, side="item"),
        }
        parts = self.embedding.embed(merged)
        columns = [parts[k] for k in self.embedding.layout.names()]
        if self.cross_features is not None:
            columns.append(self.cross_features(query, item))
        if self.use_history_cosine:
            columns.append(cosine_similarity(parts["history"], parts["item_id"])[:, None])
        if self.config.use_tower_embeddings:
            query_embedding = tf.cast(select(query, [QUERY_EMBEDDING], side="query")[QUERY_EMBEDDING], tf.float32)
            item_embedding = tf.cast(select(item, [ITEM_EMBEDDING], side="item")[ITEM_EMBEDDING], tf.float32)
            dot = tf.reduce_sum(query_embedding * item_embedding, axis=-1, keepdims=True)
            columns += [query_embedding, item_embedding, dot]
        return tf.concat(columns, axis=-1)

    def call(self, inputs: Mapping[str, Mapping[str, tf.Tensor]], training: bool = False) -> tf.Tensor:
        """``{"query": {...}, "item": {...}}`` of ``[batch, ...]`` tensors -> ``[batch]`` logits."""
        hidden = self.pair_input(inputs)
        for dense, dropout in zip(self.deep_layers, self.dropout_layers, strict=True):
            hidden = dropout(dense(hidden), training=training)
        return tf.squeeze(self.logit_layer(hidden), axis=-1)

    def multiply_adds_per_pair(self) -> int:
        """Multiply-adds of the per-pair part (see `ranking.cost.flops_per_pair` for what is counted)."""
        total = sum(dense_multiply_adds(layer) for layer in (*self.deep_layers, self.logit_layer))
        if self.use_history_cosine:
            total += self.config.embedding_dim
        if self.config.use_tower_embeddings:
            total += self.config.tower_embedding_dim
        return total
