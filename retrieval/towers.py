"""The two towers of the retrieval student: `QueryTower` and `ItemTower`, and `embed_catalog`.

Both towers read the encoded feature dicts of `features.FeatureEncoders` through `features.layers.FeatureEmbedding`
(one embedding per categorical key, masked-mean pooling of token and history sequences, numeric values as they
are), then an MLP and a linear projection, and return L2-normalised embeddings, so a dot product between a query
and an item embedding is their cosine similarity.

Cold start: an id (item or user) unseen in training encodes to an out-of-vocabulary bucket, whose embedding row
was never trained by that id. *Id dropout* replaces, during training only, a random fraction ``id_dropout`` of
the ids by one of the OOV buckets, so (a) those rows learn to mean "an id we know nothing about" and (b) the rest
of the tower learns to place an item (or user) from its attributes alone instead of memorising its id.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import random
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tf_keras as keras

from features.encoders import FeatureEncoders
from features.layers import FeatureEmbedding, FeatureLayout


@dataclass(frozen=True)
class TowerConfig:
    """Sizes and regularisation of one tower.

    Attributes:
        embedding_dim: Width of every feature embedding (`FeatureEmbedding`).
        hidden_dims: Widths of the ReLU hidden layers, in order; ``()`` for a linear tower.
        output_dim: Width of the L2-normalised output embedding.
        dropout: Dropout rate after each hidden layer, in ``[0, 1)``.
        l2: L2 penalty on embedding tables and dense kernels (``>= 0``).
        id_dropout: Probability, in ``[0, 1)``, that a training example's id (``user_id`` / ``item_id``) is
            replaced by an out-of-vocabulary bucket, so the tower learns to embed from attributes (cold start).
        id_oov_buckets: How many OOV buckets the id vocabulary has (``encoders.config.num_oov_buckets``; the
            towers' ``from_encoders`` fills it in). Id dropout picks one of buckets ``1 .. id_oov_buckets`` at
            random, so every bucket an unseen id can hash into is trained.

    Example:
        >>> TowerConfig(hidden_dims=(256, 128), output_dim=64, id_dropout=0.2)
    """

    embedding_dim: int = 32
    hidden_dims: tuple[int, ...] = (128,)
    output_dim: int = 64
    dropout: float = 0.0
    l2: float = 0.0
    id_dropout: float = 0.15
    id_oov_buckets: int = 1

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "output_dim", "id_oov_buckets"):
            _check_positive_int(name, getattr(self, name))
        hidden = self.hidden_dims
        if isinstance(hidden, str | bytes) or not isinstance(hidden, tuple | list):
            raise ValueError(f"`hidden_dims` should be a tuple of positive integers. Received: hidden_dims={hidden!r}")
        for width in hidden:
            if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
                raise ValueError(
                    f"`hidden_dims` should be a tuple of positive integers. Received: hidden_dims={hidden!r}"
                )
        object.__setattr__(self, "hidden_dims", tuple(int(w) for w in hidden))
        for name in ("dropout", "id_dropout"):
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` should be a float in [0, 1). Received: {name}={value!r}")
        if not _is_real(self.l2) or self.l2 < 0:
            raise ValueError(f"`l2` should be a non-negative float. Received: l2={self.l2!r}")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["hidden_dims"] = list(self.hidden_dims)
        return data


class _Tower(keras.Model):
    """Feature embedding -> MLP -> linear -> L2 normalisation; the shared body of both towers."""

    _side: str = ""
    _id_key: str = ""

    def __init__(self, layout: FeatureLayout, config: TowerConfig | None = None, *, name: str | None = None) -> None:
        super().__init__(name=name)
        config = TowerConfig() if config is None else config
        if not isinstance(layout, FeatureLayout):
            raise TypeError(f"`layout` should be a FeatureLayout. Received: {type(layout).__name__}")
        if not isinstance(config, TowerConfig):
            raise TypeError(f"`config` should be a TowerConfig. Received: {type(config).__name__}")
        if not layout.names():
            raise ValueError(f"`layout` should describe at least one {self._side} feature. Received: an empty layout")
        self.layout = layout
        self.config = config
        regularizer = keras.regularizers.l2(config.l2) if config.l2 > 0 else None
        self.embedding = FeatureEmbedding(layout, embedding_dim=config.embedding_dim, l2=config.l2, name="features")
        self.hidden: list[keras.layers.Layer] = []
        for i, width in enumerate(config.hidden_dims):
            self.hidden.append(
                keras.layers.Dense(width, activation="relu", kernel_regularizer=regularizer, name=f"hidden_{i}")
            )
            if config.dropout > 0:
                self.hidden.append(keras.layers.Dropout(config.dropout, name=f"dropout_{i}"))
        self.projection = keras.layers.Dense(config.output_dim, kernel_regularizer=regularizer, name="projection")
        # Id dropout draws from a generator the tower owns (tracked by checkpoints, not one of `variables`), not
        # from TensorFlow's op-level random state, which no checkpoint holds: a stage resumed from a mid-epoch
        # checkpoint then drops the same ids as an uninterrupted run (`distill.stage`). Seeded from Python's
        # `random`, which `keras.utils.set_random_seed` seeds.
        self._id_rng = tf.random.Generator.from_seed(random.getrandbits(63))

    @classmethod
    def from_encoders(cls, encoders: FeatureEncoders, config: TowerConfig | None = None) -> _Tower:
        """A tower over every feature of this side, with ``id_oov_buckets`` taken from the encoders."""
        config = TowerConfig() if config is None else config
        config = dataclasses.replace(config, id_oov_buckets=encoders.config.num_oov_buckets)
        return cls(FeatureLayout.from_encoders(encoders, cls._side), config)  # type: ignore[arg-type]

    @property
    def output_dim(self) -> int:
        return self.config.output_dim

    def call(self, features: Mapping[str, tf.Tensor], training: bool | None = None) -> tf.Tensor:
        """Embeds a batch.

        Args:
            features: Encoded features (keys of ``self.layout``; other keys are ignored), ``[batch]`` or
                ``[batch, length]`` each.
            training: Whether id dropout and dropout are active.

        Returns:
            ``[batch, output_dim]`` float32, each row of unit L2 norm.
        """
        features = dict(features)
        if training and self.config.id_dropout > 0 and self._id_key in self.layout.categorical:
            features[self._id_key] = self._drop_ids(features[self._id_key])
        x = self.embedding(features)
        for layer in self.hidden:
            x = layer(x, training=training)
        return tf.math.l2_normalize(self.projection(x), axis=-1)

    def _drop_ids(self, ids: tf.Tensor) -> tf.Tensor:
        """Replaces a random ``id_dropout`` fraction of the present ids (index > 0) by an OOV bucket."""
        ids = tf.convert_to_tensor(ids)
        drop = self._id_rng.uniform(tf.shape(ids)) < self.config.id_dropout
        bucket = self._id_rng.uniform(tf.shape(ids), minval=1, maxval=self.config.id_oov_buckets + 1, dtype=tf.int32)
        return tf.where(drop & (ids > 0), tf.cast(bucket, ids.dtype), ids)


class QueryTower(_Tower):
    """Query tower: user id and attributes, query tokens, pooled history and context -> ``[batch, output_dim]``.

    Reads the dicts of ``encoders.encode_queries`` (a ``"query"`` `FeatureLayout`). Users unseen in training
    encode to OOV buckets of ``user_id``, which id dropout trains, so they still get a meaningful embedding from
    their attributes, query and history.

    Args:
        layout: The query-side layout, ``FeatureLayout.from_encoders(encoders, "query")``.
        config: Sizes; ``TowerConfig()`` by default.

    Example:
        >>> tower = QueryTower.from_encoders(encoders, TowerConfig(output_dim=64))
        >>> tower(encoders.encode_queries(queries)).shape  # [num_queries, 64], unit rows
    """

    _side = "query"
    _id_key = "user_id"

    def __init__(self, layout: FeatureLayout, config: TowerConfig | None = None, *, name: str = "query_tower") -> None:
        super().__init__(layout, config, name=name)


class ItemTower(_Tower):
    """Item tower: item id, category levels, brand, price (bucket and normalised value), title tokens.

    Reads the dicts of ``encoders.encode_items`` (an ``"item"`` `FeatureLayout`). A cold item (OOV id) with a
    known category, brand and title gets its embedding from those attributes (see id dropout in `TowerConfig`).

    Args:
        layout: The item-side layout, ``FeatureLayout.from_encoders(encoders, "item")``.
        config: Sizes; ``TowerConfig()`` by default.

    Example:
        >>> tower = ItemTower.from_encoders(encoders, TowerConfig(output_dim=64))
        >>> embed_catalog(tower, encoders.encode_items(dataset.items)).shape  # (num_items, 64)
    """

    _side = "item"
    _id_key = "item_id"

    def __init__(self, layout: FeatureLayout, config: TowerConfig | None = None, *, name: str = "item_tower") -> None:
        super().__init__(layout, config, name=name)


def embed_catalog(
    item_tower: ItemTower | _Tower, item_features: Mapping[str, np.ndarray], *, batch_size: int = 4096
) -> np.ndarray:
    """Embeds every item of a catalog, ``batch_size`` rows at a time (inference mode).

    One `tf.function` with a fixed input signature (batch dimension ``None``) serves every batch, the last
    smaller one included, so it traces once; peak memory is one batch of activations plus the output array.

    Args:
        item_tower: A (trained) tower; `QueryTower` works the same way for a batch of queries.
        item_features: Encoded features, ``[num_items, ...]`` each (e.g. ``encoders.encode_items(items)``);
            keys the tower does not read are ignored.
        batch_size: Rows per call.

    Returns:
        ``[num_items, output_dim]`` float32 embeddings, row ``i`` for item row ``i``.
    """
    _check_positive_int("batch_size", batch_size)
    missing = [k for k in item_tower.layout.names() if k not in item_features]
    if missing:
        raise ValueError(
            f"`item_features` should hold every key the tower reads. Missing: {missing}; received "
            f"{sorted(item_features)}"
        )
    arrays = {k: np.asarray(item_features[k]) for k in item_tower.layout.names()}
    rows = {k: len(a) for k, a in arrays.items()}
    if len(set(rows.values())) != 1:
        raise ValueError(f"Every feature array should have the same number of rows. Received: {rows}")
    num_items = next(iter(rows.values()))
    spec = {k: tf.TensorSpec([None, *a.shape[1:]], tf.as_dtype(a.dtype), name=k) for k, a in arrays.items()}

    @tf.function(input_signature=[spec])
    def embed(batch: dict[str, tf.Tensor]) -> tf.Tensor:
        return item_tower(batch, training=False)

    out = np.empty((num_items, item_tower.output_dim), dtype=np.float32)
    for start in range(0, num_items, batch_size):
        stop = min(start + batch_size, num_items)
        out[start:stop] = embed({k: a[start:stop] for k, a in arrays.items()}).numpy()
    return out


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` should be a positive integer. Received: {name}={value!r}")
