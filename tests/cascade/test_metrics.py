"""Metrics against hand-computed values (formula inline) and against a naive loop on seeded random data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cascade import metrics
from cascade.metrics import (
    PAD,
    auc,
    calibration,
    evaluate_rankings,
    f1_at_k,
    gauc,
    hit_rate_at_k,
    log_loss,
    mean_metric,
    mrr,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    recall_at_m_at_k,
    relevance_gains,
    teacher_gains_from_scores,
    teacher_ndcg_at_k,
)


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


# ---------------------------------------------------------------------------------------------------------------
# Precision, F1, hit rate, MRR, evaluate_rankings

# Q0 relevant {3, 1} at ranks 2 and 4; Q1 relevant {7}, never retrieved; Q2 relevant {7, 8}, a one-item list padded
# to 4 that holds 7 at rank 1; Q3 has nothing relevant.
RANKED = np.array([[5, 3, 9, 1], [2, 4, 6, 8], [7, PAD, PAD, PAD], [1, 2, 3, 4]])
RELEVANT = np.array([[3, 1, PAD], [7, PAD, PAD], [7, 8, PAD], [PAD, PAD, PAD]])


def test_precision_f1_hit_rate_mrr_hand_computed() -> None:
    nan = np.nan
    # k=2: Q0 holds one hit in two -> P = 1/2, R = 1/2, F1 = 2 (1/2)(1/2) / (1/2 + 1/2) = 1/2.
    np.testing.assert_allclose(precision_at_k(RANKED, RELEVANT, 2), [1 / 2, 0, 1 / 2, nan])
    np.testing.assert_allclose(f1_at_k(RANKED, RELEVANT, 2), [1 / 2, 0, 2 * (1 / 2) * (1 / 2) / (1 / 2 + 1 / 2), nan])
    # k=4: Q0 P = 2/4, R = 2/2, F1 = 2 (1/2)(1) / (3/2) = 2/3; Q2 padding counts as misses: P = 1/4, R = 1/2,
    # F1 = 2 (1/4)(1/2) / (3/4) = 1/3; Q1 has P = R = 0 -> F1 = 0, not NaN.
    np.testing.assert_allclose(precision_at_k(RANKED, RELEVANT, 4), [2 / 4, 0, 1 / 4, nan])
    np.testing.assert_allclose(f1_at_k(RANKED, RELEVANT, 4), [2 * 0.5 * 1 / 1.5, 0, 2 * 0.25 * 0.5 / 0.75, nan])
    np.testing.assert_allclose(hit_rate_at_k(RANKED, RELEVANT, 1), [0, 0, 1, nan])
    np.testing.assert_allclose(hit_rate_at_k(RANKED, RELEVANT, 2), [1, 0, 1, nan])
    # MRR: first relevant item of Q0 at rank 2 -> 1/2; Q2 at rank 1 -> 1/1; none within k=1 for Q0 -> 0.
    np.testing.assert_allclose(mrr(RANKED, RELEVANT), [1 / 2, 0, 1 / 1, nan])
    np.testing.assert_allclose(mrr(RANKED, RELEVANT, k=1), [0, 0, 1, nan])


def test_ndcg_without_gains_is_binary_for_both_gain_options() -> None:
    # With no gains every relevant item has gain 1 = 2^1 - 1, so linear and exponential agree.
    np.testing.assert_allclose(
        ndcg_at_k(RANKED, RELEVANT, 4), ndcg_at_k(RANKED, RELEVANT, 4, exponential=True), equal_nan=True
    )


def test_evaluate_rankings_means_every_metric_and_counts_queries() -> None:
    grades = np.array([[3.0, 1.0, 0.0], [1.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    results = evaluate_rankings(RANKED, RELEVANT, ks=(2, 4), relevant_gains=grades)
    names = ["recall", "precision", "f1", "ndcg", "ndcg_exp", "hit_rate", "mrr"]
    expected_keys = [f"{name}@{k}" for k in (2, 4) for name in names]
    assert list(results) == [*expected_keys, "queries_evaluated", "queries_without_relevant"]
    assert results["queries_evaluated"] == 3 and results["queries_without_relevant"] == 1
    # Q3 is excluded from every mean: mean of the three other queries.
    assert results["precision@4"] == pytest.approx((2 / 4 + 0 + 1 / 4) / 3)
    assert results["mrr@4"] == pytest.approx((1 / 2 + 0 + 1) / 3)
    for k in (2, 4):
        single = {
            "recall": recall_at_k(RANKED, RELEVANT, k),
            "precision": precision_at_k(RANKED, RELEVANT, k),
            "f1": f1_at_k(RANKED, RELEVANT, k),
            "ndcg": ndcg_at_k(RANKED, RELEVANT, k, grades),
            "ndcg_exp": ndcg_at_k(RANKED, RELEVANT, k, grades, exponential=True),
            "hit_rate": hit_rate_at_k(RANKED, RELEVANT, k),
            "mrr": mrr(RANKED, RELEVANT, k),
        }
        for name, values in single.items():
            assert results[f"{name}@{k}"] == pytest.approx(mean_metric(values)[0]), (name, k)
            assert mean_metric(values)[1] == 1, name


# ---------------------------------------------------------------------------------------------------------------
# Against the teacher


def test_recall_at_m_at_k_hand_computed() -> None:
    ranked = np.array([[5, 3, 9, 1], [2, 4, 6, 8], [2, 4, 6, 8]])
    teacher = np.array([[1, 9, 4, 2], [PAD, 4, 6, 0], [PAD, PAD, 1, 2]])
    # Q0 teacher top-2 {1, 9}: top-2 {5, 3} -> 0/2; top-3 adds 9 -> 1/2; top-4 -> 2/2.
    # Q1 teacher top-2 {4} (PAD ignored): 4 at rank 2 -> 1/1. Q2 teacher top-2 is all padding -> NaN.
    np.testing.assert_allclose(recall_at_m_at_k(ranked, teacher, 2, 2), [0 / 2, 1 / 1, np.nan])
    np.testing.assert_allclose(recall_at_m_at_k(ranked, teacher, 2, 3), [1 / 2, 1 / 1, np.nan])
    np.testing.assert_allclose(recall_at_m_at_k(ranked, teacher, 2, 4), [2 / 2, 1 / 1, np.nan])
    # m=4: Q0 {1, 9, 4, 2} -> top-4 {5, 3, 9, 1} holds 2 of 4.
    assert recall_at_m_at_k(ranked, teacher, 4, 4)[0] == pytest.approx(2 / 4)


def test_teacher_gains_from_scores_hand_computed() -> None:
    scores = np.array([[3.0, 2.0, 1.0, np.nan], [1.0, 2.0, 2.0, -np.inf]])
    # rank: gain = top_m - rank (0-based), padding 0; ties broken by column order (column 1 before column 2).
    np.testing.assert_allclose(teacher_gains_from_scores(scores), [[4 - 0, 4 - 1, 4 - 2, 0], [4 - 2, 4 - 0, 4 - 1, 0]])
    np.testing.assert_allclose(teacher_gains_from_scores(scores, top_m=2), [[2, 1, 0, 0], [0, 2, 1, 0]])
    # softmax over the real items, with temperature 2: exp(s / 2) / sum exp(s / 2).
    e = np.exp(np.array([3.0, 2.0, 1.0]) / 2)
    np.testing.assert_allclose(
        teacher_gains_from_scores(scores, kind="softmax", temperature=2.0)[0], [*(e / e.sum()), 0]
    )
    # linear: (s - min) / (max - min) per query.
    np.testing.assert_allclose(teacher_gains_from_scores(scores, kind="linear"), [[1, 1 / 2, 0, 0], [0, 1, 1, 0]])


def test_teacher_ndcg_hand_computed() -> None:
    ranked = np.array([[5, 3, 9, 1], [4, 1, 9, 5]])
    teacher_items = np.array([[1, 9, 4, PAD], [1, 9, 4, PAD]])
    gains = np.array([[4.0, 3.0, 2.0, 7.0], [4.0, 3.0, 2.0, 7.0]])  # the gain under PAD is ignored
    # Q0: 9 (gain 3) at rank 3, 1 (gain 4) at rank 4; ideal = the teacher's order 1, 9, 4.
    dcg = 3 / math.log2(4) + 4 / math.log2(5)
    idcg = 4 / math.log2(2) + 3 / math.log2(3) + 2 / math.log2(4)
    # Q1: 4, 1, 9 at ranks 1-3; item 5 is not a teacher item (gain 0).
    dcg1 = 2 / math.log2(2) + 4 / math.log2(3) + 3 / math.log2(4)
    np.testing.assert_allclose(teacher_ndcg_at_k(ranked, teacher_items, gains, 4), [dcg / idcg, dcg1 / idcg])
    # The teacher's own ranking scores 1; no positive teacher gain -> NaN.
    assert teacher_ndcg_at_k(teacher_items, teacher_items, gains, 3)[0] == pytest.approx(1.0)
    assert np.isnan(teacher_ndcg_at_k(ranked, teacher_items, np.zeros((2, 4)), 4)).all()


# ---------------------------------------------------------------------------------------------------------------
# Rankers on held-out labelled pairs


def test_auc_with_ties_hand_computed() -> None:
    labels = np.array([2, 0, 1, 0, 0])  # graded: positive means label > 0
    scores = np.array([0.9, 0.9, 0.5, 0.1, 0.3])
    # Positives {0.9, 0.5} vs negatives {0.9, 0.1, 0.3}: 0.9 wins 1/2 + 1 + 1, 0.5 wins 0 + 1 + 1 -> 4.5 / (2 * 3).
    # Rank formula: ranks 0.1 -> 1, 0.3 -> 2, 0.5 -> 3, 0.9 -> (4 + 5) / 2; (4.5 + 3 - 2 * 3 / 2) / (2 * 3).
    assert auc(labels, scores) == pytest.approx(4.5 / (2 * 3))
    assert auc(labels, scores) == pytest.approx((4.5 + 3 - 2 * 3 / 2) / (2 * 3))
    assert auc(labels, -scores) == pytest.approx(1 - 4.5 / 6)
    assert auc(np.array([0.5, 0.0]), np.array([1.0, 1.0])) == pytest.approx(0.5)  # one tied pair -> 1/2
    assert np.isnan(auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_gauc_hand_computed() -> None:
    groups = np.array(["a", "a", "a", "b", "b", "b", "b", "c", "c"])
    labels = np.array([1, 0, 0, 0, 1, 1, 0, 1, 1])
    scores = np.array([0.8, 0.9, 0.1, 0.1, 0.4, 0.3, 0.35, 0.2, 0.7])
    # a: positive 0.8 beats 0.1, loses to 0.9 -> AUC 1/2 over 3 rows; b: 0.4 beats both, 0.3 beats 0.1 -> 3/4 over
    # 4 rows; c has no negative -> skipped. GAUC = (3 * 1/2 + 4 * 3/4) / (3 + 4).
    result = gauc(labels, scores, groups)
    assert result.value == pytest.approx((3 * 0.5 + 4 * 0.75) / 7)
    value, used, skipped = result
    assert (used, skipped) == (2, 1)
    # Shuffling rows changes nothing.
    order = np.random.default_rng(1).permutation(9)
    assert gauc(labels[order], scores[order], groups[order]).value == pytest.approx(value)
    assert np.isnan(gauc(np.ones(2), np.zeros(2), np.array([1, 2])).value)


def test_log_loss_hand_computed() -> None:
    labels = np.array([1, 0, 1])
    probabilities = np.array([0.8, 0.3, 1.0])
    # -(log 0.8 + log(1 - 0.3) + log(1 - 1e-7)) / 3: p = 1 is clipped to 1 - 1e-7.
    expected = -(math.log(0.8) + math.log(0.7) + math.log(1 - 1e-7)) / 3
    assert log_loss(labels, probabilities) == pytest.approx(expected)
    assert log_loss(np.array([1]), np.array([0.0])) == pytest.approx(-math.log(1e-7))  # clipped, not infinite


def test_calibration_hand_computed() -> None:
    labels = np.array([0, 1, 1, 1, 0])
    probabilities = np.array([0.1, 0.3, 0.6, 0.9, 1.0])
    result = calibration(labels, probabilities, num_bins=2)
    # Bin [0, 0.5): p 0.1, 0.3 -> mean 0.2, positives 1/2; bin [0.5, 1]: mean (0.6 + 0.9 + 1) / 3, positives 2/3.
    np.testing.assert_allclose(result["bin_edges"], [0, 0.5, 1])
    np.testing.assert_array_equal(result["count"], [2, 3])
    np.testing.assert_allclose(result["mean_predicted"], [0.2, 2.5 / 3])
    np.testing.assert_allclose(result["fraction_positive"], [1 / 2, 2 / 3])
    # ECE = 2/5 |0.2 - 1/2| + 3/5 |2.5/3 - 2/3| = 0.12 + 0.1.
    assert result["expected_calibration_error"] == pytest.approx(2 / 5 * 0.3 + 3 / 5 * (2.5 / 3 - 2 / 3))
    assert result["calibration_ratio"] == pytest.approx((2.9 / 5) / (3 / 5))
    empty = calibration(labels, probabilities, num_bins=4)  # bin [0.25, 0.5) holds 0.3; [0.5, 0.75) holds 0.6
    np.testing.assert_array_equal(empty["count"], [1, 1, 1, 2])
    sparse = calibration(np.array([1, 0]), np.array([0.05, 0.95]), num_bins=4)
    np.testing.assert_array_equal(sparse["count"], [1, 0, 0, 1])
    assert np.isnan(sparse["mean_predicted"][1]) and np.isnan(sparse["fraction_positive"][2])


# ---------------------------------------------------------------------------------------------------------------
# Vectorized equals a naive loop on seeded random data


def _random_rankings(rng, num_queries=60, num_items=30, width=12, r=5):
    """Distinct ids per row with PAD holes in the rankings and the relevant lists (some lists all PAD)."""
    ids = np.argsort(rng.random((num_queries, num_items)), axis=1)
    ranked = np.where(rng.random((num_queries, width)) < 0.15, PAD, ids[:, :width])
    relevant = np.argsort(rng.random((num_queries, num_items)), axis=1)[:, :r]
    relevant = np.where(rng.random((num_queries, r)) < 0.4, PAD, relevant)
    relevant[:3] = PAD  # queries with nothing relevant
    return ranked, relevant


def _naive_ranking_metrics(ranked_row, relevant_row, k):
    rel = {int(x) for x in relevant_row if x != PAD}
    if not rel:
        return dict.fromkeys(("recall", "precision", "f1", "hit", "rr"), math.nan)
    top = [int(x) for x in ranked_row[:k]]
    hits = sum(1 for x in top if x != PAD and x in rel)
    p, r = hits / k, hits / len(rel)
    rr = next((1 / (i + 1) for i, x in enumerate(top) if x in rel), 0.0)
    return {"recall": r, "precision": p, "f1": 2 * p * r / (p + r) if p + r else 0.0, "hit": float(hits > 0), "rr": rr}


def test_ranking_metrics_equal_naive_loop() -> None:
    rng = np.random.default_rng(2)
    ranked, relevant = _random_rankings(rng)
    for k in (1, 5, 12):
        vectorized = {
            "recall": recall_at_k(ranked, relevant, k),
            "precision": precision_at_k(ranked, relevant, k),
            "f1": f1_at_k(ranked, relevant, k),
            "hit": hit_rate_at_k(ranked, relevant, k),
            "rr": mrr(ranked, relevant, k),
        }
        for q in range(len(ranked)):
            for name, value in _naive_ranking_metrics(ranked[q], relevant[q], k).items():
                np.testing.assert_allclose(vectorized[name][q], value, err_msg=f"{name}@{k} query {q}")


def test_teacher_metrics_equal_naive_loop() -> None:
    rng = np.random.default_rng(3)
    ranked, teacher = _random_rankings(rng, r=10)
    scores = np.where(teacher != PAD, rng.normal(size=teacher.shape), np.nan)
    for kind in ("rank", "softmax", "linear"):
        gains = teacher_gains_from_scores(scores, kind=kind, temperature=0.5, top_m=8)
        for q in range(len(ranked)):  # the gains of a query, by a loop over the teacher's sorted items
            real = [j for j in range(10) if not np.isnan(scores[q, j])]
            by_rank = sorted(real, key=lambda j, q=q: -scores[q, j])
            expected = np.zeros(10)
            for rank, j in enumerate(by_rank[:8]):
                if kind == "rank":
                    expected[j] = 8 - rank
                elif kind == "softmax":
                    expected[j] = math.exp(scores[q, j] / 0.5) / sum(math.exp(scores[q, i] / 0.5) for i in real)
                else:
                    low, high = min(scores[q, real]), max(scores[q, real])
                    expected[j] = (scores[q, j] - low) / (high - low) if high > low else 1.0
            np.testing.assert_allclose(gains[q], expected, atol=1e-12, err_msg=f"{kind} query {q}")
    gains = teacher_gains_from_scores(scores)
    for m, k in ((3, 5), (10, 12)):
        recall = recall_at_m_at_k(ranked, teacher, m, k)
        ndcg = teacher_ndcg_at_k(ranked, teacher, gains, k)
        for q in range(len(ranked)):
            target = {int(x) for x in teacher[q, :m] if x != PAD}
            found = sum(1 for x in ranked[q, :k] if int(x) in target)
            np.testing.assert_allclose(recall[q], found / len(target) if target else math.nan)
            gain_of = {int(x): g for x, g in zip(teacher[q], gains[q], strict=True) if x != PAD}
            dcg = sum(gain_of.get(int(x), 0.0) / math.log2(i + 2) for i, x in enumerate(ranked[q, :k]))
            ideal = sorted(gain_of.values(), reverse=True)[:k]
            idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
            np.testing.assert_allclose(ndcg[q], dcg / idcg if idcg > 0 else math.nan)


def test_chunked_matching_equals_one_shot(monkeypatch) -> None:
    rng = np.random.default_rng(4)
    ranked, relevant = _random_rankings(rng)
    grades = rng.integers(1, 4, relevant.shape).astype(float)
    one_shot = evaluate_rankings(ranked, relevant, ks=(5, 12), relevant_gains=grades)
    monkeypatch.setattr(metrics, "_MAX_COMPARE_ELEMENTS", 7 * 12 * 5)  # chunks of 7 queries, the last one short
    chunked = evaluate_rankings(ranked, relevant, ks=(5, 12), relevant_gains=grades)
    assert chunked == pytest.approx(one_shot)


def _naive_auc(positive, scores):
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auc_and_gauc_equal_naive_loop() -> None:
    rng = np.random.default_rng(5)
    n = 300
    labels = rng.integers(0, 3, n) * (rng.random(n) < 0.4)  # graded, mostly 0
    scores = rng.integers(0, 6, n) / 5.0  # few distinct values: many ties
    groups = rng.integers(0, 40, n)
    assert auc(labels, scores) == pytest.approx(_naive_auc(labels > 0, scores))
    weighted, total, used = 0.0, 0, 0
    for g in np.unique(groups):
        rows = groups == g
        value = _naive_auc(labels[rows] > 0, scores[rows])
        if not math.isnan(value):
            weighted, total, used = weighted + rows.sum() * value, total + rows.sum(), used + 1
    result = gauc(labels, scores, groups)
    assert result.value == pytest.approx(weighted / total)
    assert (result.groups_used, result.groups_skipped) == (used, len(np.unique(groups)) - used)


def test_log_loss_and_calibration_equal_naive_loop() -> None:
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 2, 200)
    probabilities = rng.random(200)
    probabilities[:3] = [0.0, 1.0, 0.5]
    expected = 0.0
    for y, p in zip(labels, probabilities, strict=True):
        clipped = min(max(p, 1e-7), 1 - 1e-7)
        expected -= math.log(clipped) if y else math.log(1 - clipped)
    assert log_loss(labels, probabilities) == pytest.approx(expected / 200)
    result = calibration(labels, probabilities, num_bins=7)
    ece = 0.0
    for b in range(7):
        low, high = result["bin_edges"][b], result["bin_edges"][b + 1]
        rows = [i for i, p in enumerate(probabilities) if low <= p < high or (b == 6 and p == high)]
        assert result["count"][b] == len(rows)
        if rows:
            mean_p = sum(probabilities[i] for i in rows) / len(rows)
            frac = sum(labels[i] for i in rows) / len(rows)
            assert result["mean_predicted"][b] == pytest.approx(mean_p)
            assert result["fraction_positive"][b] == pytest.approx(frac)
            ece += len(rows) / 200 * abs(mean_p - frac)
    assert result["count"].sum() == 200
    assert result["expected_calibration_error"] == pytest.approx(ece)


# ---------------------------------------------------------------------------------------------------------------
# Inputs, shapes and arguments


def test_inputs_are_not_mutated() -> None:
    rng = np.random.default_rng(7)
    ranked, relevant = _random_rankings(rng, num_queries=10)
    grades = rng.integers(1, 4, relevant.shape).astype(float)
    scores = np.where(relevant != PAD, rng.normal(size=relevant.shape), np.nan)
    labels, pair_scores, groups = rng.integers(0, 2, 50), rng.random(50), rng.integers(0, 5, 50)
    arrays = [ranked, relevant, grades, scores, labels, pair_scores, groups]
    copies = [a.copy() for a in arrays]
    for a in arrays:
        a.flags.writeable = False  # an in-place write would raise
    teacher_gains = teacher_gains_from_scores(scores, kind="softmax")
    teacher_gains.flags.writeable = False
    recall_at_k(ranked, relevant, 5)
    precision_at_k(ranked, relevant, 5)
    f1_at_k(ranked, relevant, 5)
    hit_rate_at_k(ranked, relevant, 5)
    mrr(ranked, relevant)
    ndcg_at_k(ranked, relevant, 5, grades, exponential=True)
    relevance_gains(ranked, relevant, grades)
    evaluate_rankings(ranked, relevant, ks=(3, 12), relevant_gains=grades)
    recall_at_m_at_k(ranked, relevant, 3, 5)
    teacher_ndcg_at_k(ranked, relevant, teacher_gains, 5)
    auc(labels, pair_scores)
    gauc(labels, pair_scores, groups)
    log_loss(labels, pair_scores)
    calibration(labels, pair_scores)
    for a, copy in zip(arrays, copies, strict=True):
        np.testing.assert_array_equal(a, copy)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: precision_at_k(np.zeros(3, int), np.zeros((1, 1), int), 1), r"`ranked_items` should have shape"),
        (lambda: f1_at_k(np.zeros((2, 3), int), np.zeros((3, 1), int), 1), r"`relevant_items`.*\(3, 1\).*\(2, 3\)"),
        (
            lambda: hit_rate_at_k(np.zeros((1, 3), int), np.zeros((1, 1), int), 0),
            r"`k` should be an integer in \[1, 3\]",
        ),
        (lambda: mrr(np.zeros((1, 3), int), np.zeros((1, 1), int), 2.0), r"Received: k=2.0"),
        (lambda: ndcg_at_k(np.zeros((1, 3), int), np.zeros((1, 1), int), True), r"Received: k=True"),
        (lambda: ndcg_at_k(np.zeros((1, 3), int), np.zeros((1, 2), int), 2, np.ones((1, 3))), r"`relevant_gains`"),
        (lambda: recall_at_m_at_k(np.zeros((1, 3), int), np.zeros((1, 2), int), 3, 2), r"`m` should be an integer"),
        (lambda: recall_at_m_at_k(np.zeros((1, 3), int), np.zeros((2, 2), int), 1, 2), r"`teacher_ranked`.*\(2, 2\)"),
        (
            lambda: teacher_ndcg_at_k(np.zeros((1, 3), int), np.zeros((1, 2), int), np.ones((1, 3)), 2),
            "`teacher_gains`",
        ),
        (lambda: teacher_ndcg_at_k(np.zeros((1, 3), int), np.zeros((1, 2), int), -np.ones((1, 2)), 2), "non-negative"),
        (lambda: teacher_gains_from_scores(np.ones((1, 2)), kind="top"), r"`kind` should be"),
        (lambda: teacher_gains_from_scores(np.ones((1, 2)), kind="softmax", temperature=0), r"`temperature`"),
        (lambda: teacher_gains_from_scores(np.ones((1, 2)), top_m=3), r"`top_m` should be an integer in \[1, 2\]"),
        (lambda: evaluate_rankings(np.zeros((1, 3), int), np.zeros((1, 1), int)), r"Received: k=10"),
        (lambda: auc(np.zeros(3), np.zeros(4)), r"`labels` and `scores`.*\(3,\).*\(4,\)"),
        (lambda: auc(np.zeros(2), np.array([0.1, np.nan])), r"`scores` should not contain NaN"),
        (lambda: gauc(np.zeros(3), np.zeros(3), np.zeros(2)), r"`groups`.*\(2,\).*\(3,\)"),
        (lambda: log_loss(np.zeros(2), np.array([0.5, 2.0])), r"`probabilities` should lie in \[0, 1\]"),
        (lambda: calibration(np.zeros(2), np.zeros(2), num_bins=0), r"`num_bins` should be a positive integer"),
    ],
)
def test_bad_arguments_are_named(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call()
