"""The serving query encoder gives exactly the arrays of `FeatureEncoders.encode_queries`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from index_fixtures import TrainedShop

from index import Query, Searcher
from index.query_encoder import QueryEncoder

WORDS = ["vegan", "cookbooks", "Chocolate", "PERFUME", "floral", "zzunseen", "50ml", "x_y", "a-b", "red/blue"]
TRICKY = ["Café crème", "naïve – test", "AT&amp;T pens", "A&B", "&lt;tag&gt;", "ÀB–c", "  ", "", "x\u00a0y", "ÉCOLE"]


def _random_queries(rng: np.random.Generator, trained_shop: TrainedShop, n: int) -> list[Query]:
    users = trained_shop.shop.dataset.users
    items = trained_shop.shop.dataset.items["item_id"].to_numpy()
    devices = [*trained_shop.shop.dataset.interactions["device"].unique().tolist(), "toaster"]
    queries = []
    for _ in range(n):
        kind = rng.integers(0, 4)
        user = None if kind == 0 else int(rng.choice(users["user_id"])) if kind < 3 else int(10**6 + rng.integers(99))
        words = [str(w) for w in rng.choice(WORDS, size=rng.integers(0, 8))]
        text = " ".join(words) if rng.random() < 0.7 else str(rng.choice(TRICKY))
        history = [int(i) for i in rng.choice(items, size=rng.integers(0, 30))]
        if rng.random() < 0.2:
            history.append(10**7)  # an unknown item
        context = {}
        if rng.random() < 0.8:
            context["device"] = str(rng.choice(devices))
        if rng.random() < 0.5:
            context["hour"] = int(rng.integers(0, 30))
        attributes = None
        if rng.random() < 0.2:
            attributes = {"region": "north"} if rng.random() < 0.5 else {"tenure_days": float(rng.integers(0, 900))}
        queries.append(Query(user_id=user, text=text, history=history, context=context, user_attributes=attributes))
    return queries


def test_matches_encode_queries_on_random_queries(trained_shop: TrainedShop, flat_bundle: Path) -> None:
    searcher = Searcher.load(flat_bundle)
    encoder = QueryEncoder(searcher.encoders, searcher._users)
    rng = np.random.default_rng(0)
    queries = _random_queries(rng, trained_shop, 300)
    expected = searcher.encoders.encode_queries(searcher._query_batch(queries))
    got = encoder.encode(queries)
    assert sorted(got) == sorted(expected)
    anonymous = np.array([q.user_id is None for q in queries])
    for key, values in expected.items():
        if key == "user_id":  # the two paths spell "anonymous" differently; the Searcher maps both to bucket 1
            np.testing.assert_array_equal(got[key][~anonymous], values[~anonymous], err_msg=key)
            continue
        assert got[key].dtype == values.dtype, key
        np.testing.assert_array_equal(got[key], values, err_msg=key)
    # One at a time gives the same rows (no state carried between calls).
    for i in range(0, 300, 37):
        single = encoder.encode([queries[i]])
        for key in expected:
            if key == "user_id" and anonymous[i]:
                continue
            np.testing.assert_array_equal(single[key][0], expected[key][i], err_msg=key)


def test_the_searcher_gives_the_same_results_through_both_encoders(
    trained_shop: TrainedShop, flat_bundle: Path
) -> None:
    searcher = Searcher.load(flat_bundle)
    queries = [q for q in _random_queries(np.random.default_rng(1), trained_shop, 60) if q.user_id is not None]
    fast = searcher.search(queries, k=10)
    reference = searcher.search(searcher._query_batch(queries), k=10)
    np.testing.assert_array_equal(fast.item_ids, reference.item_ids)
    np.testing.assert_allclose(fast.scores, reference.scores, atol=1e-6)


def test_a_wrong_kind_is_refused_by_the_vocabulary(trained_shop: TrainedShop, flat_bundle: Path) -> None:
    searcher = Searcher.load(flat_bundle)
    with pytest.raises(ValueError, match=r"`queries` do not fit the encoders: .*hour"):
        searcher.search(Query(user_id=1, context={"hour": "noon"}))


def test_queries_from_batch_search_like_the_batch(trained_shop: TrainedShop, flat_bundle: Path) -> None:
    from index_fixtures import held_out_queries

    from index import queries_from_batch

    searcher = Searcher.load(flat_bundle)
    batch = held_out_queries(trained_shop, n=30)
    queries = queries_from_batch(batch)
    assert len(queries) == 30 and all(isinstance(q.user_id, int) for q in queries)
    a = searcher.search(batch, k=10)
    b = searcher.search(queries, k=10)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
