"""`TeacherRanker`: a large DCN-v2 cross-feature ranker over every query-side and item-side feature.

The teacher is the accuracy ceiling of the cascade: too slow to score a catalog per live query, it labels
candidates for the students offline. Its input for one (query, item) pair is

    x0 = [query embeddings ‖ item embeddings ‖ cross features ‖ embedding cosines]

- *query embeddings*: user id, user attributes, pooled query-text tokens, pooled recent history, context;
- *item embeddings*: item id, category levels, brand, price bucket, pooled title (and other text) tokens, plus
  the numeric features (normalised price, missing indicators) as they are;
- *cross features*: `ranking.cross_features.CrossFeatures` (token overlap, history attribute match, relative
  price, empty history);
- *embedding cosines*: cos(pooled history, item id embedding) — the history reads the item-id table — and
  cos(pooled query tokens, pooled title tokens) — the query reads the title's token table.

All embeddings come from ONE `features.layers.FeatureEmbedding` over the ``"both"`` layout, with
``share={"history": "item_id", "query_tokens": "item_title_tokens"}``. ``x0`` goes through
``num_cross_layers`` `tfrs.layers.dcn.Cross` layers (full rank unless ``projection_dim``) and a deep MLP,
stacked (``cross -> MLP``) or in parallel (``[cross(x0) ‖ MLP(x0)]``), and a final ``Dense(1)`` logit.

The model is split the way full-catalog ranking needs it: `item_representation` (item embeddings and the item
half of the cross features, computed once per catalog item), `query_representation` (once per query) and
`score_representations` (the per-pair part). `call` is exactly their composition, so a cached full ranking
(`ranking.full_ranking`) and the plain model call compute the same scores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from features import FeatureEncoders
from features.layers import FeatureEmbedding, FeatureLayout, masked_mean
from ranking._checks import (
    check_activation,
    check_layer_widths,
    check_non_negative,
    check_positive_int,
    check_rate,
)
from ranking._inputs import feature_specs, select, zeros_like_specs
from ranking.cost import cross_multiply_adds, dense_multiply_adds
from ranking.cross_features import CrossFeatures, item_text_key

Structure = Literal["stacked", "parallel"]


@dataclass(frozen=True)
class TeacherConfig:
    """Sizes of the `TeacherRanker`. The defaults make a genuinely large teacher.

    Attributes:
        embedding_dim: Width of every embedding (ids, attributes, pooled tokens and history, context).
        num_cross_layers: How many DCN-v2 `Cross` layers.
        projection_dim: ``None`` for full-rank cross layers (``d x d`` kernels), or the rank of a low-rank
            ``U V`` factorisation (smaller than ``d / 2`` to save compute).
        structure: ``"stacked"`` (cross layers feed the MLP) or ``"parallel"`` (both read ``x0``; their outputs
            are concatenated before the logit).
        deep_layers: Widths of the MLP's hidden layers (may be empty).
        activation: Activation of the MLP's hidden layers (a Keras activation name).
        dropout: Dropout rate after every hidden layer, in ``[0, 1)``.
        l2: L2 penalty on the embedding tables.
        use_cross_features: Whether ``x0`` includes the explicit cross features and embedding cosines.
    """

    embedding_dim: int = 32
    num_cross_layers: int = 3
    projection_dim: int | None = None
    structure: Structure = "stacked"
    deep_layers: tuple[int, ...] = (256, 128, 64)
    activation: str = "relu"
    dropout: float = 0.0
    l2: float = 0.0
    use_cross_features: bool = True

    def __post_init__(self) -> None:
        check_positive_int("embedding_dim", self.embedding_dim)
        check_positive_int("num_cross_layers", self.num_cross_layers)
        if self.projection_dim is not None:
            check_positive_int("projection_dim", self.projection_dim)
        if self.structure not in ("stacked", "parallel"):
            raise ValueError(f"`structure` should be 'stacked' or 'parallel'. Received: structure={self.structure!r}")
        check_layer_widths("deep_layers", self.deep_layers)
        object.__setattr__(self, "deep_layers", tuple(self.deep_layers))
        check_activation(self.activation)
        check_rate("dropout", self.dropout)
        check_non_negative("l2", self.l2)


class TeacherRanker(keras.Model):
    """DCN-v2 ranker over every feature plus explicit crosses (see the module docstring).

    Args:
        encoders: The fitted encoders (feature layout, vocabulary sizes, array widths).
        item_features: The encoded catalog, ``encoders.encode_items(dataset.items)``: it fills the
            non-trainable table that maps history items to their category, brand and price.
        config: Sizes; ``TeacherConfig()`` when ``None``.
        name: Model name.

    Call with ``{"query": {...}, "item": {...}}`` (dicts of ``[batch, ...]`` encoded features, as
    `ranking.pairs.make_pair_dataset` yields them); returns ``[batch]`` float32 logits. The weights are built at
    construction, so `count_params` works at once.

    Example:
        >>> teacher = TeacherRanker(encoders, item_features)
        >>> train_ranker(teacher, make_pair_dataset(pairs, item_features, batch_size=256, shuffle=True), epochs=3)
        >>> teacher({"query": query_batch, "item": item_batch}).shape  # [batch]
    """

    def __init__(
        self,
        encoders: FeatureEncoders,
        item_features: Mapping[str, np.ndarray],
        config: TeacherConfig | None = None,
        *,
        name: str = "teacher_ranker",
    ) -> None:
        super().__init__(name=name)
        config = TeacherConfig() if config is None else config
        if not isinstance(config, TeacherConfig):
            raise TypeError(f"`config` should be a TeacherConfig. Received: {type(config).__name__}")
        self.config = config
        layout = FeatureLayout.from_encoders(encoders, "both")
        self.query_embedding_keys = tuple(FeatureLayout.from_encoders(encoders, "query").names())
        self.item_embedding_keys = tuple(FeatureLayout.from_encoders(encoders, "item").names())
        self.cross_features = (
            CrossFeatures.from_encoders(encoders, item_features, name="cross_features")
            if config.use_cross_features
            else None
        )
        text_key = item_text_key(encoders)
        share = {"history": "item_id"}
        if text_key is not None:
            share["query_tokens"] = text_key
        self.embedding = FeatureEmbedding(
            layout, embedding_dim=config.embedding_dim, share=share, l2=config.l2, name="embedding"
        )
        self.cosine_pairs: tuple[tuple[str, str], ...] = ()
        if config.use_cross_features:
            self.cosine_pairs = (("history", "item_id"),) + ((("query_tokens", text_key),) if text_key else ())
        self.cross_layers = [
            tfrs.layers.dcn.Cross(
                projection_dim=config.projection_dim, kernel_initializer="glorot_uniform", name=f"cross_{i}"
            )
            for i in range(config.num_cross_layers)
        ]
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
        self({"query": zeros_like_specs(self._query_specs), "item": zeros_like_specs(self._item_specs)})

    # -- inputs ----------------------------------------------------------------------------------------------

    def input_specs(self) -> dict[str, dict[str, tf.TensorSpec]]:
        """``{"query": {key: spec}, "item": {key: spec}}`` of the features the model reads."""
        return {"query": dict(self._query_specs), "item": dict(self._item_specs)}

    @property
    def query_embedding_dim(self) -> int:
        """Width of the query embeddings block of ``x0`` (it comes first)."""
        return self._block_width(self.query_embedding_keys)

    @property
    def item_embedding_dim(self) -> int:
        """Width of the item embeddings block of ``x0`` (it follows the query block)."""
        return self._block_width(self.item_embedding_keys)

    def _block_width(self, keys: tuple[str, ...]) -> int:
        layout = self.embedding.layout
        return sum(1 if k in layout.numeric else self.embedding.table(k).output_dim for k in keys)

    @property
    def input_dim(self) -> int:
        """Width ``d`` of ``x0``, the input of the cross layers and (parallel structure) the MLP."""
        cross = self.cross_features.num_features if self.cross_features is not None else 0
        return self.embedding.output_dim + cross + len(self.cosine_pairs)

    # -- the split model -------------------------------------------------------------------------------------

    def query_representation(self, query: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Everything that depends on the query only.

        Args:
            query: Encoded query features, ``[num_queries, ...]`` tensors.

        Returns:
            ``"embedding"`` ``[num_queries, query_dim]``, normalised vectors for the cosines
            (``"cosine/<key>"``) and the query side of the cross features (``"cross/<name>"``).
        """
        query = select(query, self.query_keys, side="query")
        parts = _embed(self.embedding, query, self.query_embedding_keys)
        out = {"embedding": tf.concat([parts[k] for k in self.query_embedding_keys], axis=-1)}
        for query_key, _ in self.cosine_pairs:
            out[f"cosine/{query_key}"] = tf.math.l2_normalize(parts[query_key], axis=-1)
        if self.cross_features is not None:
            out.update({f"cross/{k}": v for k, v in self.cross_features.query_side(query).items()})
        return out

    def item_representation(self, item: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Everything that depends on the item only (computed once per catalog item in a full ranking).

        Args:
            item: Encoded item features, ``[num_items, ...]`` tensors.

        Returns:
            ``"embedding"`` ``[num_items, item_dim]``, ``"cosine/<key>"`` and ``"cross/<name>"`` entries.
        """
        item = select(item, self.item_keys, side="item")
        parts = _embed(self.embedding, item, self.item_embedding_keys)
        out = {"embedding": tf.concat([parts[k] for k in self.item_embedding_keys], axis=-1)}
        for _, item_key in self.cosine_pairs:
            out[f"cosine/{item_key}"] = tf.math.l2_normalize(parts[item_key], axis=-1)
        if self.cross_features is not None:
            out.update({f"cross/{k}": v for k, v in self.cross_features.item_side(item).items()})
        return out

    def pair_input(self, query: Mapping[str, tf.Tensor], item: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """``x0`` of pairs: query and item representations whose leading dimensions broadcast.

        Args:
            query: `query_representation` output, leading dimensions e.g. ``[batch]`` or ``[num_queries, 1]``.
            item: `item_representation` output, leading dimensions e.g. ``[batch]`` or ``[1, num_items]``.

        Returns:
            ``[..., input_dim]`` with the broadcast leading dimensions.
        """
        query_embedding, item_embedding = query["embedding"], item["embedding"]
        pair_shape = tf.broadcast_dynamic_shape(tf.shape(query_embedding)[:-1], tf.shape(item_embedding)[:-1])
        columns = [
            tf.broadcast_to(query_embedding, tf.concat([pair_shape, tf.shape(query_embedding)[-1:]], axis=0)),
            tf.broadcast_to(item_embedding, tf.concat([pair_shape, tf.shape(item_embedding)[-1:]], axis=0)),
        ]
        if self.cross_features is not None:
            columns.append(self.cross_features.pair(_strip(query, "cross/"), _strip(item, "cross/")))
        for query_key, item_key in self.cosine_pairs:
            cosine = tf.reduce_sum(query[f"cosine/{query_key}"] * item[f"cosine/{item_key}"], axis=-1)
            columns.append(cosine[..., None])
        return tf.concat(columns, axis=-1)

    def score_representations(
        self, query: Mapping[str, tf.Tensor], item: Mapping[str, tf.Tensor], *, training: bool = False
    ) -> tf.Tensor:
        """Logits of pairs from their representations (leading dimensions broadcast, see `pair_input`).

        Returns:
            ``[...]`` float32 logits, the broadcast leading dimensions.
        """
        x0 = self.pair_input(query, item)
        logits = self.score_inputs(tf.reshape(x0, [-1, x0.shape[-1]]), training=training)
        return tf.reshape(logits, tf.shape(x0)[:-1])

    def score_inputs(self, x0: tf.Tensor, *, training: bool = False) -> tf.Tensor:
        """The DCN-v2 part: ``[num_pairs, input_dim]`` -> ``[num_pairs]`` logits."""
        x = x0
        for cross in self.cross_layers:
            x = cross(x0, x)
        return self.score_after_cross(x0, x, training=training)

    def score_after_cross(self, x0: tf.Tensor, crossed: tf.Tensor, *, training: bool = False) -> tf.Tensor:
        """The MLP and logit given ``x0`` and the last cross layer's output, both ``[num_pairs, input_dim]``."""
        hidden = crossed if self.config.structure == "stacked" else x0
        for dense, dropout in zip(self.deep_layers, self.dropout_layers, strict=True):
            hidden = dropout(dense(hidden), training=training)
        if self.config.structure == "parallel":
            hidden = tf.concat([crossed, hidden], axis=-1)
        return tf.squeeze(self.logit_layer(hidden), axis=-1)

    def call(self, inputs: Mapping[str, Mapping[str, tf.Tensor]], training: bool = False) -> tf.Tensor:
        """``{"query": {...}, "item": {...}}`` of ``[batch, ...]`` tensors -> ``[batch]`` logits."""
        query = self.query_representation(inputs["query"])
        item = self.item_representation(inputs["item"])
        return self.score_representations(query, item, training=training)

    # -- cost ------------------------------------------------------------------------------------------------

    def multiply_adds_per_pair(self) -> int:
        """Multiply-adds of the per-pair part (see `ranking.cost.flops_per_pair` for what is counted)."""
        total = sum(cross_multiply_adds(layer, self.input_dim) for layer in self.cross_layers)
        total += sum(dense_multiply_adds(layer) for layer in (*self.deep_layers, self.logit_layer))
        return total + self.config.embedding_dim * len(self.cosine_pairs)


def _embed(embedding: FeatureEmbedding, features: Mapping[str, tf.Tensor], keys: tuple[str, ...]) -> dict:
    """`FeatureEmbedding.embed` for a subset of its layout's keys (one side of a pair), with its own tables.

    `FeatureEmbedding.embed` needs every key of the layout at once; the teacher embeds the query side and the
    item side separately so that a full ranking computes each side once.
    """
    layout = embedding.layout
    parts = {}
    for key in keys:
        if key in layout.categorical:
            parts[key] = embedding.table(key)(features[key])
        elif key in layout.sequences:
            parts[key] = masked_mean(embedding.table(key)(features[key]), features[key])
        else:
            parts[key] = tf.cast(features[key], tf.float32)[..., None]
    return parts


def _strip(values: Mapping[str, tf.Tensor], prefix: str) -> dict[str, tf.Tensor]:
    return {k.removeprefix(prefix): v for k, v in values.items() if k.startswith(prefix)}
