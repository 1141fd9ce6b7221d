"""Metrics against hand-computed values (formula inline) and against a naive loop on seeded random data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cascade.metrics import PAD, mean_metric, ndcg_at_k, recall_at_k


def test_hand_computed_values() -> None:
    ranked = np.array([[5, 3, 9, 1], [2, 4, 6, 8]])
    relevant = np.array([[3, 1, PAD], [7, PAD, PAD]])
    # Query 0: relevant {3, 1}; top-2 holds 3 -> recall@2 = 1/2; top-4 holds both -> 1.
    np.testing.assert_allclose(recall_at_k(ranked, relevant, 2), [0.5, 0.0])
    np.testing.assert_allclose(recall_at_k(ranked, relevant, 4), [1.0, 0.0])
    # NDCG@4 query 0: DCG = 1/log2(3) + 1/log2(5); IDCG = 1/log2(2) + 1/log2(3).
    expected = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    np.testing.assert_allclose(ndcg_at_k(ranked, relevant, 4), [expected, 0.0])
    # Graded: gains 3 for item 3 and 1 for item 1; exponential gains 2^3-1 = 7 and 1.
    gains = np.array([[3.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    linear = (3 / math.log2(3) + 1 / math.log2(5)) / (3 + 1 / math.log2(3))
    exponential = (7 / math.log2(3) + 1 / math.log2(5)) / (7 + 1 / math.log2(3))
    np.testing.assert_allclose(ndcg_at_k(ranked, relevant, 4, gains)[0], linear)
    np.testing.assert_allclose(ndcg_at_k(ranked, relevant, 4, gains, exponential=True)[0], exponential)


def test_queries_without_relevant_items_are_nan_and_counted() -> None:
    ranked = np.array([[1, 2], [3, 4]])
    relevant = np.array([[2], [PAD]])
    values = recall_at_k(ranked, relevant, 2)
    assert values[0] == 1.0 and np.isnan(values[1])
    assert mean_metric(values) == (1.0, 1)
    assert np.isnan(ndcg_at_k(ranked, relevant, 2)[1])


def test_padding_in_rankings_never_matches() -> None:
    ranked = np.array([[PAD, PAD, 4]])
    relevant = np.array([[PAD, 4]])
    np.testing.assert_allclose(recall_at_k(ranked, relevant, 3), [1.0])
    np.testing.assert_allclose(ndcg_at_k(ranked, relevant, 3), [0.5])  # 1/log2(4) / 1


def test_vectorized_equals_naive_loop() -> None:
    rng = np.random.default_rng(0)
    ranked = np.stack([rng.permutation(50)[:10] for _ in range(200)])
    relevant = np.where(rng.random((200, 4)) < 0.7, rng.integers(0, 50, (200, 4)), PAD)
    for q in range(200):  # distinct relevant ids per query
        seen = set()
        for j in range(4):
            if relevant[q, j] in seen:
                relevant[q, j] = PAD
            seen.add(relevant[q, j])
    grades = rng.integers(1, 4, (200, 4)).astype(float)
    rec, nd = recall_at_k(ranked, relevant, 10), ndcg_at_k(ranked, relevant, 10, grades)
    for q in range(200):
        rel = {int(r): g for r, g in zip(relevant[q], grades[q], strict=True) if r != PAD}
        if not rel:
            assert np.isnan(rec[q]) and np.isnan(nd[q])
            continue
        hits = sum(1 for item in ranked[q] if int(item) in rel)
        assert rec[q] == pytest.approx(hits / len(rel))
        dcg = sum(rel.get(int(item), 0.0) / math.log2(i + 2) for i, item in enumerate(ranked[q]))
        ideal = sorted(rel.values(), reverse=True)
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:10]))
        assert nd[q] == pytest.approx(dcg / idcg)


def test_bad_k_is_named() -> None:
    with pytest.raises(ValueError, match=r"`k` should be an integer in \[1, 2\]. Received: k=3"):
        recall_at_k(np.zeros((1, 2), dtype=int), np.zeros((1, 1), dtype=int), 3)


def test_held_out_requests_group_by_user_and_request_and_dedupe(tiny_shop) -> None:
    from types import SimpleNamespace

    import pandas as pd

    import features
    from cascade.train import held_out_requests

    split = features.temporal_leave_last_out(tiny_shop)
    encoders = features.FeatureEncoders.fit(tiny_shop, split.train)
    trained = SimpleNamespace(encoders=encoders, config=SimpleNamespace(encoders=encoders.config))
    # Two users' test rows share one request id, and one item is logged twice (the second time bought).
    test = split.test.assign(request_id=4)
    doubled = pd.concat([test, test.iloc[[0]].assign(label=3)])
    held = held_out_requests(trained, tiny_shop, doubled, max_queries=None)
    assert len(held) == 2  # one query per (user, request), not one per request id
    assert (held.relevant_rows >= 0).sum() == 2  # one relevant entry per (request, item)
    assert held.relevant_gains.max() == 3  # the better label of the duplicated item is kept
