"""Feature layouts derived from the encoders, and the embedding layer every model uses."""

from __future__ import annotations

import numpy as np
import pytest

import features
from features import FeatureEncoders, SyntheticConfig, generate_shop, temporal_leave_last_out
from features.layers import FeatureEmbedding, FeatureLayout, masked_mean


@pytest.fixture(scope="module")
def encoded():
    shop = generate_shop(SyntheticConfig(num_users=200, num_items=120, num_interactions=3000, seed=4))
    split = temporal_leave_last_out(shop.dataset)
    encoders = FeatureEncoders.fit(shop.dataset, split.train)
    queries = encoders.encode_queries(features.build_queries(split.test, shop.dataset))
    return encoders, encoders.encode_items(shop.dataset.items), queries


def test_layout_classifies_every_key(encoded) -> None:
    encoders, items, queries = encoded
    item_layout = FeatureLayout.from_encoders(encoders, "item")
    assert set(item_layout.names()) == set(items)
    assert item_layout.sequences == {"item_title_tokens": encoders.tokenizer.size}
    assert item_layout.numeric == ("item_price", "item_price_missing")
    query_layout = FeatureLayout.from_encoders(encoders, "query")
    assert set(query_layout.names()) == set(queries) - {"history_length"}
    assert set(query_layout.sequences) == {"query_tokens", "history"}
    both = FeatureLayout.from_encoders(encoders, "both")
    assert FeatureLayout.from_dict(both.to_dict()) == both
    assert item_layout.merge(query_layout) == both


def test_embedding_shapes_and_sharing(encoded) -> None:
    encoders, items, queries = encoded
    layout = FeatureLayout.from_encoders(encoders, "both")
    layer = FeatureEmbedding(layout, embedding_dim=8, share={"history": "item_id", "query_tokens": "item_title_tokens"})
    n = 5
    batch = {k: v[:n] for k, v in items.items()} | {k: v[:n] for k, v in queries.items()}
    out = layer(batch)
    assert out.shape == (n, layer.output_dim)
    assert layer.output_dim == 8 * (len(layout.categorical) + len(layout.sequences)) + len(layout.numeric)
    assert layer.table("history") is layer.table("item_id")
    assert "history" not in layer.tables
    with pytest.raises(ValueError, match=r"Missing: \['item_price'\]"):
        layer({k: v for k, v in batch.items() if k != "item_price"})
    with pytest.raises(ValueError, match="`share` should map keys"):
        FeatureEmbedding(layout, share={"history": "nope"})


def test_masked_mean_ignores_padding() -> None:
    embeddings = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    indices = np.array([[5, 0, 7], [0, 0, 0]], dtype=np.int32)
    out = masked_mean(embeddings, indices).numpy()
    # Row 0: mean of positions 0 and 2 = ([0, 1] + [4, 5]) / 2; row 1: all padding -> zeros.
    np.testing.assert_allclose(out, [[2.0, 3.0], [0.0, 0.0]])
