"""Keras layers that turn encoded features (the dicts of `FeatureEncoders`) into dense tensors.

Every model of Cascade (teacher, ranking student, both towers) reads the same encoded dicts. A `FeatureLayout`
says what each key is, derived from the fitted encoders, and `FeatureEmbedding` embeds a dict laid out that way:

- *categorical* keys (``[batch]`` int32 index, 0 = missing) get an embedding each;
- *sequence* keys (``[batch, length]`` int32, 0 = padding: query tokens, title tokens, history) get a masked mean
  of their embeddings (an all-padding row gives zeros);
- *numeric* keys (``[batch]`` float32, already normalised) pass through as they are.

TensorFlow is imported here, so import this module only where a model is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import tensorflow as tf
import tf_keras as keras

from features.encoders import FeatureEncoders

Side = Literal["item", "query"]


@dataclass(frozen=True)
class FeatureLayout:
    """What each encoded feature key is.

    Attributes:
        categorical: Key -> vocabulary size, for ``[batch]`` int32 features.
        sequences: Key -> vocabulary size, for ``[batch, length]`` int32 features padded with 0.
        numeric: Keys of ``[batch]`` float32 features.
    """

    categorical: dict[str, int] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)
    numeric: tuple[str, ...] = ()

    @classmethod
    def from_encoders(cls, encoders: FeatureEncoders, side: Side | Literal["both"]) -> FeatureLayout:
        """The layout of ``encoders.encode_items`` (``"item"``), ``encode_queries`` (``"query"``) or both."""
        if side not in ("item", "query", "both"):
            raise ValueError(f"`side` should be 'item', 'query' or 'both'. Received: side={side!r}")
        sizes = encoders.vocabulary_sizes
        keys: list[str] = []
        if side in ("item", "both"):
            keys += encoders.item_feature_keys()
        if side in ("query", "both"):
            keys += encoders.query_feature_keys()
        sequence_keys = {"history", "query_tokens", *(f"item_{c}_tokens" for c in encoders.item_text)}
        categorical = {k: sizes[k] for k in keys if k in sizes and k not in sequence_keys}
        sequences = {k: sizes[k] for k in keys if k in sequence_keys}
        numeric = tuple(k for k in keys if k not in sizes and k != "history_length")
        return cls(categorical=categorical, sequences=sequences, numeric=numeric)

    def names(self) -> list[str]:
        return [*self.categorical, *self.sequences, *self.numeric]

    def restrict(self, keys: list[str] | tuple[str, ...]) -> FeatureLayout:
        """The layout of a subset of the keys (e.g. the cheap features of a student)."""
        unknown = [k for k in keys if k not in self.names()]
        if unknown:
            raise ValueError(f"`keys` should be features of this layout {self.names()}. Received unknown: {unknown}")
        return FeatureLayout(
            categorical={k: v for k, v in self.categorical.items() if k in keys},
            sequences={k: v for k, v in self.sequences.items() if k in keys},
            numeric=tuple(k for k in self.numeric if k in keys),
        )

    def merge(self, other: FeatureLayout) -> FeatureLayout:
        return FeatureLayout(
            categorical={**self.categorical, **other.categorical},
            sequences={**self.sequences, **other.sequences},
            numeric=tuple(dict.fromkeys((*self.numeric, *other.numeric))),
        )

    def to_dict(self) -> dict:
        return {
            "categorical": dict(self.categorical),
            "sequences": dict(self.sequences),
            "numeric": list(self.numeric),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> FeatureLayout:
        return cls(
            categorical={str(k): int(v) for k, v in data.get("categorical", {}).items()},
            sequences={str(k): int(v) for k, v in data.get("sequences", {}).items()},
            numeric=tuple(str(k) for k in data.get("numeric", ())),
        )

    def tensor_spec(self, *, sequence_lengths: Mapping[str, int]) -> dict[str, tf.TensorSpec]:
        """Signature specs of a batch laid out this way (for `tf.function` input signatures and exports)."""
        spec = {k: tf.TensorSpec([None], tf.int32, name=k) for k in self.categorical}
        for k in self.sequences:
            if k not in sequence_lengths:
                raise ValueError(
                    f"`sequence_lengths` should give the length of {k!r}. Received: {dict(sequence_lengths)}"
                )
            spec[k] = tf.TensorSpec([None, sequence_lengths[k]], tf.int32, name=k)
        spec.update({k: tf.TensorSpec([None], tf.float32, name=k) for k in self.numeric})
        return spec


def masked_mean(embeddings: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
    """Mean of ``embeddings[b, t]`` over positions with ``indices[b, t] != 0``; zeros for an all-padding row.

    Args:
        embeddings: ``[batch, length, dim]``.
        indices: ``[batch, length]`` int, 0 = padding.

    Returns:
        ``[batch, dim]``.
    """
    mask = tf.cast(tf.not_equal(indices, 0), embeddings.dtype)[..., None]
    total = tf.reduce_sum(embeddings * mask, axis=1)
    count = tf.reduce_sum(mask, axis=1)
    return total / tf.maximum(count, 1.0)


class FeatureEmbedding(keras.layers.Layer):
    """Embeds a feature dict laid out by a `FeatureLayout` into one vector per example.

    Args:
        layout: What each key is.
        embedding_dim: Width of every embedding (overridable per key with ``dims``).
        dims: Optional per-key widths.
        share: Optional ``{key: owner_key}``: ``key`` reads ``owner_key``'s table (e.g. ``{"history":
            "item_id", "query_tokens": "item_title_tokens"}`` so a user's history and the candidate item, or the
            query and the title, live in one space). Shared keys need equal widths.
        l2: L2 penalty on embedding tables.

    Call returns ``[batch, output_dim]``: categorical embeddings, pooled sequences and numeric values,
    concatenated in layout order. `embed` returns the parts as a dict.

    Example:
        >>> layer = FeatureEmbedding(FeatureLayout.from_encoders(encoders, "item"), embedding_dim=16)
        >>> layer(encoders.encode_items(items)).shape  # [num_items, output_dim]
    """

    def __init__(
        self,
        layout: FeatureLayout,
        *,
        embedding_dim: int = 16,
        dims: Mapping[str, int] | None = None,
        share: Mapping[str, str] | None = None,
        l2: float = 0.0,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if embedding_dim <= 0:
            raise ValueError(f"`embedding_dim` should be a positive integer. Received: embedding_dim={embedding_dim}")
        self.layout = layout
        self._dims = {k: int((dims or {}).get(k, embedding_dim)) for k in (*layout.categorical, *layout.sequences)}
        self._share = dict(share or {})
        vocab = {**layout.categorical, **layout.sequences}
        for key, owner in self._share.items():
            if key not in vocab or owner not in vocab:
                raise ValueError(
                    f"`share` should map keys of the layout {sorted(vocab)}. Received: {key!r} -> {owner!r}"
                )
            if vocab[key] != vocab[owner] or self._dims[key] != self._dims[owner]:
                raise ValueError(
                    f"`share` needs equal vocabulary sizes and widths: {key!r} has ({vocab[key]}, "
                    f"{self._dims[key]}), {owner!r} has ({vocab[owner]}, {self._dims[owner]})"
                )
        regularizer = keras.regularizers.l2(l2) if l2 > 0 else None
        self.tables: dict[str, keras.layers.Embedding] = {}
        for key, size in vocab.items():
            if key in self._share:
                continue
            self.tables[key] = keras.layers.Embedding(
                size,
                self._dims[key],
                embeddings_initializer=keras.initializers.RandomNormal(stddev=0.05),
                embeddings_regularizer=regularizer,
                name=f"embedding_{key}",
            )

    def table(self, key: str) -> keras.layers.Embedding:
        """The embedding table a key reads (its own or the one it shares)."""
        return self.tables[self._share.get(key, key)]

    @property
    def output_dim(self) -> int:
        return sum(self._dims[k] for k in (*self.layout.categorical, *self.layout.sequences)) + len(self.layout.numeric)

    def embed(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Each feature as a ``[batch, dim]`` tensor (numeric ones as ``[batch, 1]``)."""
        missing = [k for k in self.layout.names() if k not in features]
        if missing:
            raise ValueError(
                f"`features` should hold every key of the layout. Missing: {missing}; received {sorted(features)}"
            )
        parts: dict[str, tf.Tensor] = {}
        for key in self.layout.categorical:
            parts[key] = self.table(key)(features[key])
        for key in self.layout.sequences:
            indices = features[key]
            parts[key] = masked_mean(self.table(key)(indices), indices)
        for key in self.layout.numeric:
            parts[key] = tf.cast(features[key], tf.float32)[:, None]
        return parts

    def call(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        parts = self.embed(features)
        return tf.concat([parts[k] for k in self.layout.names()], axis=-1)
