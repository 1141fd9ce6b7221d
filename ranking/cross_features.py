"""Explicit query × item cross features, computed inside the model from the raw index tensors.

A dot product of embeddings (or an MLP over their concatenation) learns "does the query's text appear in this
title?" or "does this user buy this brand?" only slowly and approximately; computing them exactly and handing
them to the scorer is cheap. Both rankers use the same `CrossFeatures` layer (the teacher adds embedding cosines,
see `cosine_similarity`). Every feature, for one (query, candidate item) pair:

**Query text ↔ item text** (when the catalog has a text attribute; the title by default). Token ids come from
the one token vocabulary shared by queries and item texts. Out-of-vocabulary buckets (ids ``1 ..
num_oov_buckets``) stand for many unseen words, so an OOV token never matches anything; padding (0) is ignored.

- ``token_overlap_count``: how many non-padding query-token positions hold a known token that occurs in the
  title (a repeated query word counts each time).
- ``token_overlap_fraction``: ``token_overlap_count / max(#non-padding query tokens, 1)`` (OOV query tokens
  count in the denominator: a typo is a query word the title does not demonstrably contain).
- ``token_jaccard``: ``|Q ∩ T| / |Q ∪ T|`` over the *distinct known* tokens ``Q`` of the query and ``T`` of the
  title; 0 when both are empty.

**User history ↔ candidate** (for each of ``category_leaf``, ``category_l2``, ``brand`` the catalog has). The
history holds item-vocabulary indices, so a non-trainable `ItemAttributeTable` (built from the catalog when the
model is constructed) maps each history item to its attributes.

- ``history_<attribute>_match``: the fraction of the non-padding history entries whose attribute equals the
  candidate's, ``#{h : attr(h) = attr(candidate) != missing} / max(#history, 1)``. A missing attribute (index
  0, e.g. no brand) and history items outside the item vocabulary never match, but count in the denominator.

**Price** (when the catalog has a numeric ``price``; prices are the encoders' normalised values, i.e. z-scores
of ``log1p(price)``).

- ``price_minus_history_price``: the candidate's normalised price minus the mean normalised price of the
  history items whose price is known; 0 when the candidate's price is missing or no history item has a known
  price.
- ``abs_price_minus_history_price``: its absolute value.

**Always.**

- ``history_empty``: 1.0 when the history has no non-padding entry, else 0.0.

The layer is split the way full-catalog scoring needs it: `query_side` and `item_side` compute everything that
depends on one side only (once per query, once per catalog item), `pair` combines them for pairs whose leading
dimensions broadcast (``[batch]`` with ``[batch]``, or ``[num_queries, 1]`` with ``[1, num_items]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tf_keras as keras

from features import FeatureEncoders

HISTORY_ATTRIBUTES = ("category_leaf", "category_l2", "brand")
"""Item attributes compared between the history and the candidate, when the catalog has them."""

PRICE_ATTRIBUTE = "price"
"""The numeric item attribute the relative-price features use, when the catalog has it."""


@dataclass(frozen=True)
class ItemAttributeTable:
    """Attributes of every item-vocabulary row, so history entries (item-vocabulary indices) can be looked up.

    Rows that are padding, out-of-vocabulary buckets or items absent from the catalog hold 0 (missing) and
    an unknown price.

    Attributes:
        categorical: Item feature key (e.g. ``"item_brand"``) -> ``[item_vocabulary_size]`` int32 index in that
            attribute's vocabulary.
        price_key: The item feature key of the normalised price (``"item_price"``), or ``None``.
        price: ``[item_vocabulary_size]`` float32 normalised price (0 where unknown), or ``None``.
        price_known: ``[item_vocabulary_size]`` float32, 1.0 where the price is known, or ``None``.
    """

    categorical: dict[str, np.ndarray]
    price_key: str | None = None
    price: np.ndarray | None = None
    price_known: np.ndarray | None = None

    @property
    def size(self) -> int:
        arrays = [*self.categorical.values(), *([self.price] if self.price is not None else [])]
        return len(arrays[0]) if arrays else 0


def item_attribute_table(
    encoders: FeatureEncoders,
    item_features: Mapping[str, np.ndarray],
    *,
    attributes: tuple[str, ...] = HISTORY_ATTRIBUTES,
    price: str | None = PRICE_ATTRIBUTE,
) -> ItemAttributeTable:
    """Builds the item-vocabulary-row -> attributes table from the encoded catalog.

    Args:
        encoders: The fitted encoders.
        item_features: The encoded catalog, ``encoders.encode_items(dataset.items)``.
        attributes: Categorical item attributes to include; those the catalog lacks are skipped.
        price: The numeric attribute for relative price, or ``None``; skipped when the catalog lacks it.

    Returns:
        The table; a catalog row whose ``item_id`` is out of vocabulary (a cold item) is not addressable by a
        history index and is left out.
    """
    if "item_id" not in item_features:
        raise ValueError(f"`item_features` should hold 'item_id'. Received keys: {sorted(item_features)}")
    size = encoders.item_ids.size
    rows = np.asarray(item_features["item_id"]).astype(np.int64)
    known = rows > encoders.item_ids.num_oov_buckets
    if (rows >= size).any():
        raise ValueError(
            f"`item_features['item_id']` holds indices up to {rows.max()} but the item vocabulary has {size} rows: "
            "encode the catalog with these encoders."
        )
    categorical = {}
    for attribute in attributes:
        key = f"item_{attribute}"
        if attribute not in encoders.item_categorical:
            continue
        table = np.zeros(size, dtype=np.int32)
        table[rows[known]] = np.asarray(item_features[key])[known]
        categorical[key] = table
    if price is None or price not in encoders.item_normalizers:
        return ItemAttributeTable(categorical=categorical)
    key = f"item_{price}"
    price_table = np.zeros(size, dtype=np.float32)
    known_table = np.zeros(size, dtype=np.float32)
    price_known = np.asarray(item_features[f"{key}_missing"]) == 0
    price_table[rows[known]] = np.where(price_known, np.asarray(item_features[key]), 0.0)[known]
    known_table[rows[known]] = price_known[known]
    return ItemAttributeTable(categorical=categorical, price_key=key, price=price_table, price_known=known_table)


def item_text_key(encoders: FeatureEncoders) -> str | None:
    """The item text feature compared with the query: the title, else the first text attribute, else ``None``."""
    if not encoders.item_text:
        return None
    return "item_title_tokens" if "title" in encoders.item_text else f"item_{encoders.item_text[0]}_tokens"


def cosine_similarity(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Cosine of the last axes of ``a`` and ``b`` (leading dimensions broadcast); 0 when either is all zeros.

    Args:
        a: ``[..., dim]``.
        b: ``[..., dim]``.

    Returns:
        ``[...]``.
    """
    return tf.reduce_sum(tf.math.l2_normalize(a, axis=-1) * tf.math.l2_normalize(b, axis=-1), axis=-1)


class CrossFeatures(keras.layers.Layer):
    """The explicit cross features of the module docstring, from raw encoded index tensors.

    Args:
        table: Item-vocabulary row -> attributes (`item_attribute_table`); stored as non-trainable weights.
        text_key: Item text feature compared with the query tokens (``"item_title_tokens"``), or ``None``.
        num_oov_tokens: Out-of-vocabulary buckets of the token vocabulary (never matched).
        name: Layer name.

    Call with ``(query, item)`` feature dicts of ``[batch, ...]`` tensors; returns ``[batch, num_features]``
    float32, columns in `feature_names` order.

    Example:
        >>> layer = CrossFeatures.from_encoders(encoders, encoders.encode_items(dataset.items))
        >>> layer(query_batch, item_batch).shape  # [batch, len(layer.feature_names)]
    """

    def __init__(
        self,
        table: ItemAttributeTable,
        *,
        text_key: str | None,
        num_oov_tokens: int,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if isinstance(num_oov_tokens, bool) or not isinstance(num_oov_tokens, int) or num_oov_tokens < 0:
            raise ValueError(f"`num_oov_tokens` should be a non-negative integer. Received: {num_oov_tokens!r}")
        self.text_key = text_key
        self.num_oov_tokens = num_oov_tokens
        self.attribute_keys = tuple(table.categorical)
        self.price_key = table.price_key
        self._attribute_tables = {
            key: self.add_weight(
                name=f"history_{key}",
                shape=values.shape,
                dtype=tf.int32,
                initializer=keras.initializers.Constant(values),
                trainable=False,
            )
            for key, values in table.categorical.items()
        }
        if table.price_key is not None:
            self._price_table = self.add_weight(
                name="history_price",
                shape=table.price.shape,
                dtype=tf.float32,
                initializer=keras.initializers.Constant(table.price),
                trainable=False,
            )
            self._price_known_table = self.add_weight(
                name="history_price_known",
                shape=table.price_known.shape,
                dtype=tf.float32,
                initializer=keras.initializers.Constant(table.price_known),
                trainable=False,
            )
        names = []
        if text_key is not None:
            names += ["token_overlap_count", "token_overlap_fraction", "token_jaccard"]
        names += [f"history_{key.removeprefix('item_')}_match" for key in self.attribute_keys]
        if self.price_key is not None:
            names += ["price_minus_history_price", "abs_price_minus_history_price"]
        names.append("history_empty")
        self.feature_names: tuple[str, ...] = tuple(names)

    @classmethod
    def from_encoders(
        cls, encoders: FeatureEncoders, item_features: Mapping[str, np.ndarray], *, name: str | None = None
    ) -> CrossFeatures:
        """The layer for a data set: title (else first text attribute), history attributes and price it has."""
        return cls(
            item_attribute_table(encoders, item_features),
            text_key=item_text_key(encoders),
            num_oov_tokens=encoders.tokenizer.vocabulary.num_oov_buckets,
            name=name,
        )

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @property
    def query_keys(self) -> tuple[str, ...]:
        """Query feature keys the layer reads."""
        return ("query_tokens", "history") if self.text_key is not None else ("history",)

    @property
    def item_keys(self) -> tuple[str, ...]:
        """Item feature keys the layer reads."""
        keys = ["item_id", *self.attribute_keys]
        if self.text_key is not None:
            keys.append(self.text_key)
        if self.price_key is not None:
            keys += [self.price_key, f"{self.price_key}_missing"]
        return tuple(keys)

    def query_side(self, query: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Everything that depends on the query only. ``query`` tensors are ``[..., length]``."""
        history = tf.cast(query["history"], tf.int32)
        in_history = tf.cast(history != 0, tf.float32)
        count = tf.reduce_sum(in_history, axis=-1)
        out = {"zeros": tf.zeros_like(count), "history_count": count, "history_empty": tf.cast(count == 0, tf.float32)}
        for key, table in self._attribute_tables.items():
            out[f"history/{key}"] = tf.gather(table, history)
        if self.price_key is not None:
            known = tf.gather(self._price_known_table, history) * in_history
            priced = tf.reduce_sum(known, axis=-1)
            total = tf.reduce_sum(tf.gather(self._price_table, history) * known, axis=-1)
            out["history_price_mean"] = total / tf.maximum(priced, 1.0)
            out["history_has_price"] = tf.cast(priced > 0, tf.float32)
        if self.text_key is not None:
            tokens = tf.cast(query["query_tokens"], tf.int32)
            known_tokens = tokens > self.num_oov_tokens
            out["tokens"] = tf.where(known_tokens, tokens, -1)  # -1 never equals a title id
            out["num_tokens"] = tf.reduce_sum(tf.cast(tokens != 0, tf.float32), axis=-1)
            first = tf.logical_and(known_tokens, _first_occurrence(tokens))
            out["first_known_token"] = tf.cast(first, tf.float32)
            out["num_distinct_tokens"] = tf.reduce_sum(out["first_known_token"], axis=-1)
        return out

    def item_side(self, item: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Everything that depends on the candidate only. ``item`` tensors are ``[...]`` or ``[..., length]``."""
        out = {"zeros": tf.zeros_like(tf.cast(item["item_id"], tf.float32))}
        for key in self.attribute_keys:
            out[key] = tf.cast(item[key], tf.int32)
        if self.price_key is not None:
            out["price"] = tf.cast(item[self.price_key], tf.float32)
            out["price_known"] = 1.0 - tf.cast(item[f"{self.price_key}_missing"], tf.float32)
        if self.text_key is not None:
            tokens = tf.cast(item[self.text_key], tf.int32)
            known_tokens = tokens > self.num_oov_tokens
            out["tokens"] = tf.where(known_tokens, tokens, -2)  # -2 never equals a query id
            first = tf.logical_and(known_tokens, _first_occurrence(tokens))
            out["num_distinct_tokens"] = tf.reduce_sum(tf.cast(first, tf.float32), axis=-1)
        return out

    def pair(self, query: Mapping[str, tf.Tensor], item: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Combines `query_side` and `item_side` outputs whose leading dimensions broadcast.

        Returns:
            ``[..., num_features]`` float32, the broadcast leading dimensions first.
        """
        zeros = query["zeros"] + item["zeros"]  # the broadcast pair shape
        columns = []
        if self.text_key is not None:
            # [..., query_length, title_length] -> does query position j occur in the title?
            equal = tf.equal(query["tokens"][..., :, None], item["tokens"][..., None, :])
            member = tf.cast(tf.reduce_any(equal, axis=-1), tf.float32)
            count = tf.reduce_sum(member, axis=-1)
            intersection = tf.reduce_sum(member * query["first_known_token"], axis=-1)
            union = query["num_distinct_tokens"] + item["num_distinct_tokens"] - intersection
            columns += [
                count + zeros,
                count / tf.maximum(query["num_tokens"], 1.0) + zeros,
                intersection / tf.maximum(union, 1.0) + zeros,
            ]
        denominator = tf.maximum(query["history_count"], 1.0)
        for key in self.attribute_keys:
            candidate = item[key][..., None]
            match = tf.logical_and(tf.equal(query[f"history/{key}"], candidate), candidate != 0)
            columns.append(tf.reduce_sum(tf.cast(match, tf.float32), axis=-1) / denominator + zeros)
        if self.price_key is not None:
            relative = (item["price"] - query["history_price_mean"]) * item["price_known"] * query["history_has_price"]
            columns += [relative + zeros, tf.abs(relative) + zeros]
        columns.append(query["history_empty"] + zeros)
        return tf.stack(columns, axis=-1)

    def call(self, query: Mapping[str, tf.Tensor], item: Mapping[str, tf.Tensor]) -> tf.Tensor:
        return self.pair(self.query_side(query), self.item_side(item))


def _first_occurrence(tokens: tf.Tensor) -> tf.Tensor:
    """``[..., length]`` bool: True where no earlier position of the row holds the same id."""
    position = tf.range(tf.shape(tokens)[-1])
    earlier = position[None, :] < position[:, None]  # [j, k]: k comes before j
    same = tf.equal(tokens[..., :, None], tokens[..., None, :])
    return tf.logical_not(tf.reduce_any(tf.logical_and(same, earlier), axis=-1))
