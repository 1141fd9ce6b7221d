"""Ranking metrics: pure numpy, vectorized, per query.

The core representation is the gain of each ranked item, ``[num_queries, k]`` in rank order, plus the ideal
gains of each query; recall, DCG and NDCG are a few lines on top. Every function returns per-query arrays; the
caller averages them and reports how many queries had nothing relevant (those are ``NaN`` here, never 0).
"""

from __future__ import annotations

import numpy as np

PAD = -1


def _check_ranked(ranked: np.ndarray, k: int) -> np.ndarray:
    ranked = np.asarray(ranked)
    if ranked.ndim != 2:
        raise ValueError(f"`ranked_items` should have shape [num_queries, n]. Received: shape={ranked.shape}")
    if k <= 0 or k > ranked.shape[1]:
        raise ValueError(f"`k` should be an integer in [1, {ranked.shape[1]}]. Received: k={k}")
    return ranked[:, :k]


def relevance_gains(ranked_items: np.ndarray, relevant_items: np.ndarray, relevant_gains: np.ndarray | None = None):
    """Gains of the ranked items: the gain of each ranked item in its query's relevant set, else 0.

    Args:
        ranked_items: ``[num_queries, k]`` item ids in rank order, ``PAD`` (-1) where the list is short.
        relevant_items: ``[num_queries, r]`` relevant item ids per query, ``PAD`` padded.
        relevant_gains: ``[num_queries, r]`` gain of each relevant item (default 1: binary relevance).

    Returns:
        ``[num_queries, k]`` float64 gains.
    """
    ranked = np.asarray(ranked_items)
    relevant = np.asarray(relevant_items)
    gains = np.ones(relevant.shape, dtype=np.float64) if relevant_gains is None else np.asarray(relevant_gains, float)
    if relevant.shape != gains.shape or relevant.shape[0] != ranked.shape[0]:
        raise ValueError(
            "`relevant_items` and `relevant_gains` should have shape [num_queries, r] with num_queries="
            f"{ranked.shape[0]}. Received: {relevant.shape} and {gains.shape}"
        )
    # [Q, k, r] comparison: relevant lists are short (the held-out positives of a request).
    match = (ranked[:, :, None] == relevant[:, None, :]) & (relevant[:, None, :] != PAD) & (ranked[:, :, None] != PAD)
    return (match * gains[:, None, :]).max(axis=2)


def recall_at_k(ranked_items: np.ndarray, relevant_items: np.ndarray, k: int) -> np.ndarray:
    """Share of each query's relevant items found in its top ``k``: ``|top_k ∩ relevant| / |relevant|``.

    Returns:
        ``[num_queries]``; ``NaN`` for queries with nothing relevant.
    """
    top = _check_ranked(ranked_items, k)
    hits = relevance_gains(top, relevant_items).sum(axis=1)
    num_relevant = (np.asarray(relevant_items) != PAD).sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(num_relevant > 0, hits / num_relevant, np.nan)


def ndcg_at_k(
    ranked_items: np.ndarray,
    relevant_items: np.ndarray,
    k: int,
    relevant_gains: np.ndarray | None = None,
    *,
    exponential: bool = False,
) -> np.ndarray:
    """NDCG@k: ``DCG = sum_i gain_i / log2(i + 2)`` over ranks ``i = 0..k-1``, divided by the ideal DCG.

    Gains are linear (the grade itself, 1 for binary relevance) or, with ``exponential=True``, ``2^grade - 1``.

    Returns:
        ``[num_queries]``; ``NaN`` for queries with nothing relevant.
    """
    top = _check_ranked(ranked_items, k)
    relevant = np.asarray(relevant_items)
    gains_in = np.ones(relevant.shape) if relevant_gains is None else np.asarray(relevant_gains, dtype=np.float64)
    if exponential:
        gains_in = np.power(2.0, gains_in) - 1.0
    gains = relevance_gains(top, relevant, gains_in)
    discounts = 1.0 / np.log2(np.arange(k) + 2.0)
    dcg = (gains * discounts).sum(axis=1)
    ideal = -np.sort(-np.where(relevant != PAD, gains_in, 0.0), axis=1)[:, :k]
    idcg = (ideal * discounts[: ideal.shape[1]]).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(idcg > 0, dcg / idcg, np.nan)


def mean_metric(values: np.ndarray) -> tuple[float, int]:
    """Mean over queries with something relevant, and how many queries were excluded (``NaN``)."""
    values = np.asarray(values, dtype=np.float64)
    valid = ~np.isnan(values)
    return (float(values[valid].mean()) if valid.any() else float("nan")), int((~valid).sum())
