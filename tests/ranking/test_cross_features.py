"""Cross features: hand-computed values on a hand-made example, a naive loop on random data, broadcasting."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ranking import CrossFeatures, ItemAttributeTable, item_attribute_table

NUM_OOV = 2  # token and item ids 1..2 are OOV buckets, 0 is padding

# Item-vocabulary rows 0..9: 0 padding, 1-2 OOV buckets, 3.. known items.
TABLE = ItemAttributeTable(
    categorical={
        "item_category_leaf": np.array([0, 0, 0, 11, 12, 11, 0, 0, 0, 13], dtype=np.int32),
        "item_brand": np.array([0, 0, 0, 21, 21, 22, 0, 0, 0, 0], dtype=np.int32),
    },
    price_key="item_price",
    price=np.array([0, 0, 0, 1.0, 3.0, 0, 0, 0, 0, 2.0], dtype=np.float32),
    price_known=np.array([0, 0, 0, 1, 1, 0, 0, 0, 0, 1], dtype=np.float32),
)


def _layer() -> CrossFeatures:
    return CrossFeatures(TABLE, text_key="item_title_tokens", num_oov_tokens=NUM_OOV)


def _batch(query_tokens, history, title, leaf, brand, price, price_missing):
    query = {
        "query_tokens": tf.constant(query_tokens, tf.int32),
        "history": tf.constant(history, tf.int32),
    }
    item = {
        "item_id": tf.zeros([len(leaf)], tf.int32),
        "item_title_tokens": tf.constant(title, tf.int32),
        "item_category_leaf": tf.constant(leaf, tf.int32),
        "item_brand": tf.constant(brand, tf.int32),
        "item_price": tf.constant(price, tf.float32),
        "item_price_missing": tf.constant(price_missing, tf.float32),
    }
    return query, item


HAND_QUERY, HAND_ITEM = _batch(
    query_tokens=[[5, 6, 5, 1, 0, 0], [0, 0, 0, 0, 0, 0]],
    history=[[3, 4, 5, 1, 0], [0, 0, 0, 0, 0]],
    title=[[5, 7, 8, 1, 7, 0], [9, 9, 0, 0, 0, 0]],
    leaf=[11, 0],
    brand=[21, 22],
    price=[0.5, 1.0],
    price_missing=[0.0, 1.0],
)


def test_feature_names() -> None:
    assert _layer().feature_names == (
        "token_overlap_count",
        "token_overlap_fraction",
        "token_jaccard",
        "history_category_leaf_match",
        "history_brand_match",
        "price_minus_history_price",
        "abs_price_minus_history_price",
        "history_empty",
    )


def test_hand_computed_example() -> None:
    out = _layer()(HAND_QUERY, HAND_ITEM).numpy()
    # Pair 0. Query tokens 5, 6, 5, 1(OOV); title 5, 7, 8, 1(OOV), 7.
    #   count: positions 0 and 2 (token 5) occur in the title; 6 does not; OOV never matches -> 2
    #   fraction: 2 / 4 non-padding query tokens = 0.5
    #   jaccard: distinct known Q = {5, 6}, T = {5, 7, 8}: |{5}| / |{5, 6, 7, 8}| = 1 / 4
    # History rows 3, 4, 5, 1(OOV): 4 non-padding entries.
    #   leaf: leaf(3) = 11 = candidate, leaf(4) = 12, leaf(5) = 11, OOV row has none -> 2 / 4
    #   brand: brand(3) = brand(4) = 21 = candidate, brand(5) = 22 -> 2 / 4
    #   price: known history prices 1.0 (row 3) and 3.0 (row 4): mean 2.0; 0.5 - 2.0 = -1.5
    expected_0 = [2.0, 0.5, 0.25, 0.5, 0.5, -1.5, 1.5, 0.0]
    # Pair 1. No query text, empty history, candidate without leaf and price.
    #   jaccard: Q = {}, T = {9} -> 0 / 1; every history fraction 0 / max(0, 1); price 0; history_empty 1
    expected_1 = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    np.testing.assert_allclose(out, [expected_0, expected_1], rtol=1e-6)


def test_grid_of_pairs_broadcasts() -> None:
    layer = _layer()
    query = {k: v[:, None] for k, v in layer.query_side(HAND_QUERY).items()}  # [2, 1, ...]
    item = {k: v[None] for k, v in layer.item_side(HAND_ITEM).items()}  # [1, 2, ...]
    grid = layer.pair(query, item).numpy()
    assert grid.shape == (2, 2, layer.num_features)
    for q in range(2):
        for i in range(2):
            one_query = {k: v[q : q + 1] for k, v in HAND_QUERY.items()}
            one_item = {k: v[i : i + 1] for k, v in HAND_ITEM.items()}
            np.testing.assert_allclose(grid[q, i], layer(one_query, one_item).numpy()[0], rtol=1e-6)
    # Query 0 x item 1: title {9} shares nothing; the candidate has no leaf; brand 22 is history row 5's (1 / 4);
    # its price is missing, so the relative price is 0.
    np.testing.assert_allclose(grid[0, 1], [0, 0, 0, 0, 0.25, 0, 0, 0], atol=1e-7)


def _naive(query_tokens, history, title, leaf, brand, price, price_missing) -> list[float]:
    """The module docstring's definitions, one pair at a time in plain Python."""
    q = [t for t in query_tokens if t != 0]
    known_title = {t for t in title if t > NUM_OOV}
    count = sum(1 for t in q if t > NUM_OOV and t in known_title)
    distinct_query = {t for t in q if t > NUM_OOV}
    union = distinct_query | known_title
    jaccard = len(distinct_query & known_title) / len(union) if union else 0.0
    h = [r for r in history if r != 0]
    denominator = max(len(h), 1)
    leaf_match = sum(1 for r in h if leaf != 0 and TABLE.categorical["item_category_leaf"][r] == leaf)
    brand_match = sum(1 for r in h if brand != 0 and TABLE.categorical["item_brand"][r] == brand)
    priced = [TABLE.price[r] for r in h if TABLE.price_known[r] == 1]
    relative = price - np.mean(priced) if priced and price_missing == 0 else 0.0
    return [
        count,
        count / max(len(q), 1),
        jaccard,
        leaf_match / denominator,
        brand_match / denominator,
        relative,
        abs(relative),
        float(not h),
    ]


def test_layer_equals_naive_loop_on_random_data() -> None:
    rng = np.random.default_rng(0)
    n = 64
    # Small id ranges so that matches, repeats, OOV ids and padding all occur.
    query_tokens = rng.integers(0, 9, size=(n, 6)) * (rng.random((n, 6)) < 0.7)
    title = rng.integers(0, 9, size=(n, 8)) * (rng.random((n, 8)) < 0.8)
    history = rng.integers(0, 10, size=(n, 5)) * (rng.random((n, 5)) < 0.6)
    leaf = rng.choice([0, 11, 12, 13], size=n)
    brand = rng.choice([0, 21, 22], size=n)
    price = rng.normal(size=n).astype(np.float32)
    price_missing = (rng.random(n) < 0.2).astype(np.float32)
    query, item = _batch(query_tokens, history, title, leaf, brand, price, price_missing)
    out = _layer()(query, item).numpy()
    expected = [
        _naive(query_tokens[i], history[i], title[i], leaf[i], brand[i], price[i], price_missing[i]) for i in range(n)
    ]
    np.testing.assert_allclose(out, np.array(expected, dtype=np.float32), rtol=1e-5, atol=1e-6)


def test_item_attribute_table_of_the_shop(shop_data) -> None:
    encoders, items = shop_data.encoders, shop_data.items
    table = item_attribute_table(encoders, items)
    assert set(table.categorical) == {"item_category_leaf", "item_category_l2", "item_brand"}
    assert table.price_key == "item_price"
    rows = items["item_id"]
    known = rows > encoders.item_ids.num_oov_buckets
    np.testing.assert_array_equal(table.categorical["item_brand"][rows[known]], items["item_brand"][known])
    np.testing.assert_allclose(table.price[rows[known]], items["item_price"][known])
    # Padding and OOV rows stand for no (or many) items: no attributes, no price.
    oov = slice(0, encoders.item_ids.num_oov_buckets + 1)
    assert (table.categorical["item_brand"][oov] == 0).all() and (table.price_known[oov] == 0).all()


def test_catalog_without_price_or_query_has_fewer_features(amazon_data) -> None:
    encoders, items = amazon_data.encoders, amazon_data.items
    # Items no sliced user bought in training are cold: out of the item vocabulary, so not in the table.
    cold = items["item_id"] <= encoders.item_ids.num_oov_buckets
    assert cold.sum() > 0
    assert item_attribute_table(encoders, items).categorical["item_brand"].shape == (encoders.item_ids.size,)
    layer = CrossFeatures.from_encoders(encoders, items)
    assert layer.text_key == "item_title_tokens"
    assert "price_minus_history_price" not in layer.feature_names
    assert "history_category_leaf_match" in layer.feature_names
    train = amazon_data.train
    query = {k: tf.constant(v[train.query_index[:32]]) for k, v in train.queries.items()}
    item = {k: tf.constant(v[train.item_rows[:32]]) for k, v in amazon_data.items.items()}
    out = layer(query, item).numpy()
    assert out.shape == (32, layer.num_features)
    assert np.isfinite(out).all()
