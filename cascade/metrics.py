"""Offline evaluation metrics: pure numpy, vectorized, per query.

Two families live here.

**Ranking metrics** take ``ranked_items [num_queries, n]`` (item ids in rank order, ``PAD`` (-1) where a list is
short) and ``relevant_items [num_queries, r]`` (``PAD`` padded). The core representation is, for the top ``k`` of
each query, which positions hold a relevant item and the gain of that item (``[num_queries, k]`` in rank order),
plus the number and the ideal gains of each query's relevant items; recall, precision, F1, hit rate, MRR, DCG and
NDCG are a few lines each on top of it. Every function returns a ``[num_queries]`` float64 array. Policies:

- Queries with nothing relevant get ``NaN`` (never 0), for every ranking metric; :func:`mean_metric` and
  :func:`evaluate_rankings` exclude them from the mean and count them.
- ``PAD`` never matches: padding in a ranking is a miss, padding in a relevant list is no item.
- ``k`` must be an integer in ``[1, n]``: a ranking narrower than ``k`` is an error, not silently read as ``n``,
  because the metrics would then quietly measure a different cut-off. Pad a short ranking with ``PAD`` to width
  ``k`` to evaluate it at ``k`` (the padded positions count as misses).
- Relevant ids are assumed distinct within a query (a duplicate counts twice in the denominator of recall).

The teacher metrics (:func:`recall_at_m_at_k`, :func:`teacher_ndcg_at_k`) use the teacher's own ranking as the
relevant set, so they need no labels.

**Ranker metrics** take flat held-out labelled pairs: ``labels [n]`` (0/1 or graded; positive means
``label > 0``), ``scores [n]`` (logits) or ``probabilities [n]``, and ``groups [n]`` (query ids). They return
scalars (:func:`auc`, :func:`gauc`, :func:`log_loss`) or a dict of arrays (:func:`calibration`).

Example:
    >>> ranked = np.array([[5, 3, 9, 1]])
    >>> relevant = np.array([[3, 1, PAD]])
    >>> recall_at_k(ranked, relevant, 2)  # item 3 of {3, 1} is in the top 2
    array([0.5])
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np

PAD = -1

# Largest [queries, k, r] comparison built at once; bigger inputs are processed in chunks of queries.
_MAX_COMPARE_ELEMENTS = 1 << 23


# --------------------------------------------------------------------------------------------------------------
# Validation


def _check_int_range(value: object, name: str, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 1 <= value <= high:
        raise ValueError(f"`{name}` should be an integer in [1, {high}]. Received: {name}={value!r}")
    return int(value)


def _as_2d(array: np.ndarray, name: str, columns: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"`{name}` should have shape [num_queries, {columns}]. Received: shape={array.shape}")
    return array


def _check_ranked(ranked: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` columns of ``ranked_items`` after checking its shape and ``k``."""
    ranked = _as_2d(ranked, "ranked_items", "n")
    k = _check_int_range(k, "k", ranked.shape[1])
    return ranked[:, :k]


def _check_same_queries(ranked: np.ndarray, other: np.ndarray, name: str, columns: str) -> np.ndarray:
    other = _as_2d(other, name, columns)
    if other.shape[0] != ranked.shape[0]:
        raise ValueError(
            f"`{name}` should have one row per query of `ranked_items`. Received: {name} shape={other.shape}, "
            f"ranked_items shape={ranked.shape}"
        )
    return other


def _check_gains(gains: np.ndarray | None, items: np.ndarray, name: str, items_name: str) -> np.ndarray:
    if gains is None:
        return np.ones(items.shape, dtype=np.float64)
    gains = np.asarray(gains, dtype=np.float64)
    if gains.shape != items.shape:
        raise ValueError(
            f"`{name}` should have the shape of `{items_name}`. Received: {name} shape={gains.shape}, "
            f"{items_name} shape={items.shape}"
        )
    return gains


# --------------------------------------------------------------------------------------------------------------
# Ranking kernel: which of the top k are relevant, and with which gain


def _match(ranked: np.ndarray, relevant: np.ndarray, gains: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(hits, hit_gains)``, both ``[num_queries, k]``: whether each ranked item is relevant, and its gain.

    A ``[Q, k, r]`` comparison: relevant lists are short (a request's held-out positives, a teacher's top-m of a
    few hundred), so broadcasting beats sorting; queries are chunked to bound memory. When an item appears twice
    in a relevant list, its largest gain is kept.
    """
    num_queries, k = ranked.shape
    r = relevant.shape[1]
    hits = np.zeros((num_queries, k), dtype=bool)
    hit_gains = np.zeros((num_queries, k), dtype=np.float64)
    if r == 0 or k == 0:
        return hits, hit_gains
    step = max(1, _MAX_COMPARE_ELEMENTS // (k * r))
    for start in range(0, num_queries, step):  # chunks of queries, not one query at a time
        rows = slice(start, start + step)
        rel = relevant[rows, None, :]
        match = (ranked[rows, :, None] == rel) & (rel != PAD)
        hits[rows] = match.any(axis=2)
        hit_gains[rows] = np.where(match, gains[rows, None, :], 0.0).max(axis=2)
    return hits, hit_gains


class _TopK(NamedTuple):
    hits: np.ndarray  # [num_queries, k] bool
    gains: np.ndarray  # [num_queries, k] float64, gain of each ranked item (0 for misses)
    num_relevant: np.ndarray  # [num_queries] float64
    ideal_gains: np.ndarray  # [num_queries, r] float64, relevant gains in decreasing order (0 for padding)


def _top_k(
    ranked_items: np.ndarray, relevant_items: np.ndarray, k: int, relevant_gains: np.ndarray | None = None
) -> _TopK:
    ranked = _as_2d(ranked_items, "ranked_items", "n")
    relevant = _check_same_queries(ranked, relevant_items, "relevant_items", "r")
    top = _check_ranked(ranked, k)
    gains = _check_gains(relevant_gains, relevant, "relevant_gains", "relevant_items")
    valid = relevant != PAD
    hits, hit_gains = _match(top, relevant, gains)
    ideal = -np.sort(-np.where(valid, gains, 0.0), axis=1)
    return _TopK(hits, hit_gains, valid.sum(axis=1).astype(np.float64), ideal)


def _slice(top: _TopK, k: int) -> _TopK:
    return top._replace(hits=top.hits[:, :k], gains=top.gains[:, :k])


def _where_relevant(values: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
    return np.where(num_relevant > 0, values, np.nan)


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator``, ``NaN`` where the denominator is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def _recall(top: _TopK) -> np.ndarray:
    return _divide(top.hits.sum(axis=1).astype(np.float64), top.num_relevant)


def _precision(top: _TopK) -> np.ndarray:
    return _where_relevant(top.hits.sum(axis=1) / top.hits.shape[1], top.num_relevant)


def _f1(top: _TopK) -> np.ndarray:
    precision, recall = _precision(top), _recall(top)
    total = precision + recall
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(total > 0, 2.0 * precision * recall / np.where(total > 0, total, 1.0), 0.0)
    return _where_relevant(f1, top.num_relevant)


def _hit_rate(top: _TopK) -> np.ndarray:
    return _where_relevant(top.hits.any(axis=1).astype(np.float64), top.num_relevant)


def _reciprocal_rank(top: _TopK) -> np.ndarray:
    first = top.hits.argmax(axis=1)  # first True; 0 when there is none, masked below
    rr = np.where(top.hits.any(axis=1), 1.0 / (first + 1.0), 0.0)
    return _where_relevant(rr, top.num_relevant)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(k) + 2.0)


def _ndcg(gains: np.ndarray, ideal_gains: np.ndarray) -> np.ndarray:
    """``DCG(gains) / DCG(ideal_gains)`` at ``k = gains.shape[1]``; ``NaN`` where the ideal DCG is 0."""
    k = gains.shape[1]
    ideal = ideal_gains[:, :k]
    dcg = gains @ _discounts(k)
    idcg = ideal @ _discounts(ideal.shape[1])
    return _divide(dcg, idcg)


# --------------------------------------------------------------------------------------------------------------
# Ranking metrics against labels


def relevance_gains(
    ranked_items: np.ndarray, relevant_items: np.ndarray, relevant_gains: np.ndarray | None = None
) -> np.ndarray:
    """Gains of the ranked items: the gain of each ranked item in its query's relevant set, else 0.

    Args:
        ranked_items: ``[num_queries, k]`` item ids in rank order, ``PAD`` (-1) where the list is short.
        relevant_items: ``[num_queries, r]`` relevant item ids per query, ``PAD`` padded.
        relevant_gains: ``[num_queries, r]`` gain of each relevant item (default 1: binary relevance).

    Returns:
        ``[num_queries, k]`` float64 gains.
    """
    ranked = _as_2d(ranked_items, "ranked_items", "k")
    relevant = _check_same_queries(ranked, relevant_items, "relevant_items", "r")
    gains = _check_gains(relevant_gains, relevant, "relevant_gains", "relevant_items")
    return _match(ranked, relevant, gains)[1]


def recall_at_k(ranked_items: np.ndarray, relevant_items: np.ndarray, k: int) -> np.ndarray:
    """Share of each query's relevant items found in its top ``k``: ``|top_k ∩ relevant| / |relevant|``.

    Args:
        ranked_items: ``[num_queries, n]`` item ids in rank order, ``PAD`` (-1) where the list is short.
        relevant_items: ``[num_queries, r]`` relevant item ids per query, ``PAD`` padded.
        k: cut-off, an integer in ``[1, n]``.

    Returns:
        ``[num_queries]``; ``NaN`` for queries with nothing relevant.
    """
    return _recall(_top_k(ranked_items, relevant_items, k))


def precision_at_k(ranked_items: np.ndarray, relevant_items: np.ndarray, k: int) -> np.ndarray:
    """Share of the top ``k`` that is relevant: ``|top_k ∩ relevant| / k``.

    The denominator is always ``k``: ``PAD`` positions in the ranking (a list shorter than ``k``) count as misses,
    so a system that returns fewer items is not rewarded for it.

    Args:
        ranked_items: ``[num_queries, n]`` item ids in rank order, ``PAD`` (-1) where the list is short.
        relevant_items: ``[num_queries, r]`` relevant item ids per query, ``PAD`` padded.
        k: cut-off, an integer in ``[1, n]``.

    Returns:
        ``[num_queries]``; ``NaN`` for queries with nothing relevant.
    """
    return _precision(_top_k(ranked_items, relevant_items, k))


def f1_at_k(ranked_items: np.ndarray, relevant_items: np.ndarray, k: int) -> np.ndarray:
    """Harmonic mean of precision@k and recall@k: ``2 P R / (P + R)``, 0 when both are 0.

    Args:
        ranked_items: ``[num_queries, n]`` item ids in rank order, ``PAD`` (-1) where the list is short.
        relevant_items: ``[num_queries, r]`` relevant item ids per query, ``PAD`` padded.
        k: cut-off, an integer in ``[1, n]``.

    Returns:
        ``[num_queries]``; ``NaN`` for queries with nothing relevant.
    """
    return _f1(_top_k(ranked_items, relevant_items, k))


def hit_rate_at_k(ranked_items: np.ndarray, relevant_items: np.ndarray, k: int) -> np.ndarray:
    """1.0 if any relevant item is in the top ``k``, else 0.0.

    Args:
        ranked_items: ``[num_queries, n]`` item ids in rank order, ``PAD`` (-1) where the list is short.
        relevant_items: ``[num_queries, r]`` relevant item ids per query, ``PAD`` padded.
        k: cut-off, an integer in ``[1, n]``.

    Returns:
        ``[num_queries]``; ``NaN`` for queries with nothing relevant.
    """
    return _hit_rate(_top_k(ranked_items, relevant_items, k))


def mrr(ranked_items: np.ndarray, relevant_items: np.ndarray, k: int | None = None) -> np.ndarray:
    """Reciprocal rank of the first relevant item within the top ``k``: ``1 / rank`` (rank 1-based), 0 if none.

    The caller's mean of this array is the mean reciprocal rank (MRR@k).

    Args:
        ranked_items: ``[num_queries, n]`` item ids in rank order, ``PAD`` (-1) where the list is short.
        relevant_items: ``[num_queries, r]`` relevant item ids per query, ``PAD`` padded.
        k: cut-off, an integer in ``[1, n]``; ``None`` reads the whole ranking (``k = n``).

    Returns:
        ``[num_queries]``; ``NaN`` for queries with nothing relevant.
    """
    if k is None:
        k = _as_2d(ranked_items, "ranked_items", "n").shape[1]
    return _reciprocal_rank(_top_k(ranked_items, relevant_items, k))


def ndcg_at_k(
    ranked_items: np.ndarray,
    relevant_items: np.ndarray,
    k: int,
    relevant_gains: np.ndarray | None = None,
    *,
    exponential: bool = False,
) -> np.ndarray:
    """NDCG@k: ``DCG = sum_i gain_i / log2(i + 2)`` over ranks ``i = 0..k-1``, divided by the ideal DCG.

    Gains:

    - no ``relevant_gains``: binary relevance, gain 1 for every relevant item (both options then agree, since
      ``2^1 - 1 = 1``);
    - ``exponential=False`` (default): linear gains, the grade itself;
    - ``exponential=True``: ``2^grade - 1``, which stresses the top grades.

    The ideal DCG places the query's relevant items in decreasing order of gain, cut at ``k``.

    Args:
        ranked_items: ``[num_queries, n]`` item ids in rank order, ``PAD`` (-1) where the list is short.
        relevant_items: ``[num_queries, r]`` relevant item ids per query, ``PAD`` padded.
        k: cut-off, an integer in ``[1, n]``.
        relevant_gains: ``[num_queries, r]`` grade of each relevant item (default: binary relevance).
        exponential: use ``2^grade - 1`` instead of the grade.

    Returns:
        ``[num_queries]``; ``NaN`` for queries with nothing relevant.
    """
    relevant = np.asarray(relevant_items)
    gains = None if relevant_gains is None else np.asarray(relevant_gains, dtype=np.float64)
    if gains is not None and exponential:
        gains = np.power(2.0, gains) - 1.0
    top = _top_k(ranked_items, relevant, k, gains)
    return _ndcg(top.gains, top.ideal_gains)


def mean_metric(values: np.ndarray) -> tuple[float, int]:
    """Mean over queries with something relevant, and how many queries were excluded (``NaN``)."""
    values = np.asarray(values, dtype=np.float64)
    valid = ~np.isnan(values)
    return (float(values[valid].mean()) if valid.any() else float("nan")), int((~valid).sum())


def evaluate_rankings(
    ranked_items: np.ndarray,
    relevant_items: np.ndarray,
    ks: tuple[int, ...] = (10, 100),
    relevant_gains: np.ndarray | None = None,
) -> dict[str, float]:
    """Means over queries of every ranking metric at every cut-off, matching ranked and relevant items once.

    Args:
        ranked_items: ``[num_queries, n]`` item ids in rank order, ``PAD`` (-1) where the list is short.
        relevant_items: ``[num_queries, r]`` relevant item ids per query, ``PAD`` padded.
        ks: cut-offs, each an integer in ``[1, n]``.
        relevant_gains: ``[num_queries, r]`` grades for NDCG (default: binary relevance).

    Returns:
        For each ``K`` in ``ks``: ``recall@K``, ``precision@K``, ``f1@K``, ``ndcg@K`` (linear gains),
        ``ndcg_exp@K`` (``2^grade - 1``), ``hit_rate@K``, ``mrr@K``; then ``queries_evaluated`` (queries with
        something relevant, those in the means) and ``queries_without_relevant`` (excluded). Values are not
        rounded.
    """
    ranked = _as_2d(ranked_items, "ranked_items", "n")
    if len(ks) == 0:
        raise ValueError(f"`ks` should hold at least one cut-off. Received: ks={ks!r}")
    ks = tuple(_check_int_range(k, "k", ranked.shape[1]) for k in ks)
    relevant = _check_same_queries(ranked, relevant_items, "relevant_items", "r")
    gains = _check_gains(relevant_gains, relevant, "relevant_gains", "relevant_items")
    top = _top_k(ranked, relevant, max(ks), gains)
    # 2^g - 1 is increasing and maps 0 to 0, so it commutes with the matching and the ideal sort: no second match.
    exp_gains = np.power(2.0, top.gains) - 1.0
    exp_ideal = np.power(2.0, top.ideal_gains) - 1.0
    results: dict[str, float] = {}
    for k in ks:
        at_k = _slice(top, k)
        results[f"recall@{k}"] = mean_metric(_recall(at_k))[0]
        results[f"precision@{k}"] = mean_metric(_precision(at_k))[0]
        results[f"f1@{k}"] = mean_metric(_f1(at_k))[0]
        results[f"ndcg@{k}"] = mean_metric(_ndcg(at_k.gains, at_k.ideal_gains))[0]
        results[f"ndcg_exp@{k}"] = mean_metric(_ndcg(exp_gains[:, :k], exp_ideal))[0]
        results[f"hit_rate@{k}"] = mean_metric(_hit_rate(at_k))[0]
        results[f"mrr@{k}"] = mean_metric(_reciprocal_rank(at_k))[0]
    evaluated = int((top.num_relevant > 0).sum())
    results["queries_evaluated"] = evaluated
    results["queries_without_relevant"] = len(top.num_relevant) - evaluated
    return results


# --------------------------------------------------------------------------------------------------------------
# Ranking metrics against the teacher


def recall_at_m_at_k(ranked_items: np.ndarray, teacher_ranked: np.ndarray, m: int, k: int) -> np.ndarray:
    """Share of the teacher's top ``m`` found in the top ``k``: ``|top_k(ranked) ∩ top_m(teacher)| / |top_m(teacher)|``.

    ``PAD`` in the teacher's top ``m`` is ignored (a teacher list shorter than ``m`` shrinks the denominator).

    Args:
        ranked_items: ``[num_queries, n]`` the evaluated system's item ids in rank order, ``PAD`` padded.
        teacher_ranked: ``[num_queries, n_teacher]`` the teacher's item ids in rank order, ``PAD`` padded.
        m: how many of the teacher's first items form the target set, an integer in ``[1, n_teacher]``.
        k: cut-off of ``ranked_items``, an integer in ``[1, n]``.

    Returns:
        ``[num_queries]``; ``NaN`` for queries whose teacher top ``m`` is all padding.
    """
    ranked = _as_2d(ranked_items, "ranked_items", "n")
    teacher = _check_same_queries(ranked, teacher_ranked, "teacher_ranked", "n_teacher")
    m = _check_int_range(m, "m", teacher.shape[1])
    return recall_at_k(ranked, teacher[:, :m], k)


def teacher_gains_from_scores(
    scores: np.ndarray,
    *,
    kind: Literal["rank", "softmax", "linear"] = "rank",
    temperature: float = 1.0,
    top_m: int | None = None,
) -> np.ndarray:
    """Graded gains of the teacher's items, derived from the teacher's scores, for :func:`teacher_ndcg_at_k`.

    Kinds:

    - ``"rank"`` (default): ``gain = top_m - rank`` for the teacher's 0-based rank ``< top_m``, else 0; the
      teacher's best item gets ``top_m``, its ``top_m``-th gets 1. Chosen as the default because it is
      scale-free: teacher logits are not calibrated across queries or across teachers, and a gain that depends
      only on the teacher's order makes the metric comparable between queries, runs and teachers (the student is
      consumed by its order, too). Ties in scores are broken by column order.
    - ``"softmax"``: ``softmax(scores / temperature)`` over the query's items, the teacher's probability of each.
      Faithful to the teacher's confidence, but sensitive to the logit scale: a peaked teacher puts nearly all
      gain on its first item (the metric then tends to a hit rate of the teacher's top 1).
    - ``"linear"``: the scores min-max scaled per query to ``[0, 1]`` (1 everywhere when all scores are equal);
      keeps score gaps, loses the offset.

    Positions whose score is ``NaN`` or ``-inf`` are padding: they get gain 0 and rank after every real item.

    Args:
        scores: ``[num_queries, n]`` the teacher's scores (logits) of its items, aligned with ``teacher_items``.
        kind: ``"rank"``, ``"softmax"`` or ``"linear"``.
        temperature: softmax temperature (``kind="softmax"`` only), a positive number.
        top_m: only the teacher's first ``top_m`` items get a gain, whatever the kind (default ``n``: all).

    Returns:
        ``[num_queries, n]`` float64 non-negative gains, aligned with ``scores``.
    """
    scores = _as_2d(scores, "scores", "n").astype(np.float64)
    n = scores.shape[1]
    top_m = n if top_m is None else _check_int_range(top_m, "top_m", n)
    if not temperature > 0:
        raise ValueError(f"`temperature` should be a positive number. Received: temperature={temperature!r}")
    valid = ~np.isnan(scores) & (scores != -np.inf)
    # Stable sort of -score with padding last: rank = position of each column in the teacher's order.
    order = np.argsort(np.where(valid, -scores, np.inf), axis=1, kind="stable")
    rank = np.argsort(order, axis=1)  # the inverse permutation
    safe = np.where(valid, scores, 0.0)
    if kind == "rank":
        gains = (top_m - rank).astype(np.float64)
    elif kind == "softmax":
        logits = np.where(valid, safe / temperature, -np.inf)
        peak = np.max(logits, axis=1, keepdims=True)
        peak = np.where(np.isfinite(peak), peak, 0.0)
        weights = np.exp(logits - peak)
        total = weights.sum(axis=1, keepdims=True)
        gains = weights / np.where(total > 0, total, 1.0)
    elif kind == "linear":
        low = np.min(np.where(valid, safe, np.inf), axis=1, keepdims=True)
        high = np.max(np.where(valid, safe, -np.inf), axis=1, keepdims=True)
        spread = high - low
        with np.errstate(invalid="ignore"):
            gains = np.where(spread > 0, (safe - low) / np.where(spread > 0, spread, 1.0), 1.0)
    else:
        raise ValueError(f'`kind` should be "rank", "softmax" or "linear". Received: kind={kind!r}')
    return np.where(valid & (rank < top_m), gains, 0.0)


def teacher_ndcg_at_k(
    ranked_items: np.ndarray, teacher_items: np.ndarray, teacher_gains: np.ndarray, k: int
) -> np.ndarray:
    """NDCG@k where an item's gain is the teacher's gain for it, and the ideal is the teacher's own ranking.

    ``DCG = sum_i g(item_i) / log2(i + 2)`` over the top ``k`` of ``ranked_items``, with ``g`` the teacher's gain
    (0 for items outside ``teacher_items``); the ideal DCG takes the teacher's gains in decreasing order, which is
    the teacher's own ranking when the gains come from :func:`teacher_gains_from_scores`. Gains are used as given
    (linear); derive them with :func:`teacher_gains_from_scores`.

    Args:
        ranked_items: ``[num_queries, n]`` the evaluated system's item ids in rank order, ``PAD`` padded.
        teacher_items: ``[num_queries, n_teacher]`` items the teacher scored (e.g. its top N), ``PAD`` padded.
        teacher_gains: ``[num_queries, n_teacher]`` non-negative gain of each teacher item.
        k: cut-off, an integer in ``[1, n]``.

    Returns:
        ``[num_queries]``; ``NaN`` for queries where no teacher item has a positive gain.
    """
    ranked = _as_2d(ranked_items, "ranked_items", "n")
    teacher = _check_same_queries(ranked, teacher_items, "teacher_items", "n_teacher")
    top = _check_ranked(ranked, k)
    gains = _check_gains(teacher_gains, teacher, "teacher_gains", "teacher_items")
    gains = np.where(teacher != PAD, gains, 0.0)
    if not np.all(np.isfinite(gains)) or (gains < 0).any():
        raise ValueError("`teacher_gains` should be finite and non-negative (NDCG needs an ideal DCG >= DCG).")
    _, hit_gains = _match(top, teacher, gains)
    return _ndcg(hit_gains, -np.sort(-gains, axis=1))


# --------------------------------------------------------------------------------------------------------------
# Ranker metrics on held-out labelled pairs


def _check_pairs(labels: np.ndarray, values: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    values = np.asarray(values, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != values.shape:
        raise ValueError(
            f"`labels` and `{name}` should both have shape [n]. Received: labels shape={labels.shape}, "
            f"{name} shape={values.shape}"
        )
    if np.isnan(values).any():
        raise ValueError(f"`{name}` should not contain NaN. Received: {int(np.isnan(values).sum())} NaN values")
    return labels > 0, values


def _check_probabilities(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    positive, probabilities = _check_pairs(labels, probabilities, "probabilities")
    if probabilities.size and (probabilities.min() < 0 or probabilities.max() > 1):
        raise ValueError(
            "`probabilities` should lie in [0, 1] (apply a sigmoid to logits first). Received: "
            f"min={probabilities.min()!r}, max={probabilities.max()!r}"
        )
    return positive, probabilities


def _grouped_auc(positive: np.ndarray, scores: np.ndarray, codes: np.ndarray, num_groups: int):
    """Per-group AUC by the rank formula, ``(auc [G], size [G])``; ``NaN`` for groups missing a class.

    ``AUC = (R_pos - P (P + 1) / 2) / (P N)`` with ``R_pos`` the sum of the positives' 1-based ranks (ascending
    scores) inside the group, tied scores sharing their average rank, so a tied positive-negative pair counts 1/2.
    One lexsort by (group, score) ranks every group at once.
    """
    size = np.bincount(codes, minlength=num_groups).astype(np.float64)
    if positive.size == 0:
        return np.full(num_groups, np.nan), size
    order = np.lexsort((scores, codes))
    s, g, pos = scores[order], codes[order], positive[order]
    n = len(s)
    position = np.arange(n)
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = g[1:] != g[:-1]
    new_block = new_group.copy()
    new_block[1:] |= s[1:] != s[:-1]  # a block is a run of tied scores inside one group
    group_start = np.maximum.accumulate(np.where(new_group, position, 0))
    block_start = position[new_block]
    block_end = np.append(block_start[1:], n) - 1
    block_of = np.cumsum(new_block) - 1
    rank = (block_start + block_end)[block_of] / 2.0 - group_start + 1.0
    num_pos = np.bincount(g, weights=pos, minlength=num_groups)
    rank_sum = np.bincount(g, weights=rank * pos, minlength=num_groups)
    num_neg = size - num_pos
    auc = _divide(rank_sum - num_pos * (num_pos + 1) / 2.0, num_pos * num_neg)
    return auc, size


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive outscores a random negative, ties counting 1/2.

    Args:
        labels: ``[n]`` 0/1 or graded labels; positive means ``label > 0``.
        scores: ``[n]`` scores or logits (any monotone transform gives the same AUC).

    Returns:
        The AUC; ``NaN`` when ``labels`` lacks positives or negatives.
    """
    positive, scores = _check_pairs(labels, scores, "scores")
    values, _ = _grouped_auc(positive, scores, np.zeros(len(scores), dtype=np.intp), 1)
    return float(values[0])


class GAUCResult(NamedTuple):
    """Group AUC and how many groups it covers."""

    value: float  # impression-weighted mean of per-group AUC; NaN when no group has both classes
    groups_used: int  # groups with at least one positive and one negative
    groups_skipped: int  # groups with a single class, excluded from the mean


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> GAUCResult:
    """Group AUC: per-group AUC averaged with each group weighted by its number of impressions (rows).

    ``GAUC = sum_g n_g AUC_g / sum_g n_g`` over groups that have both a positive and a negative; the others have no
    AUC and are skipped and counted. Ties within a group count 1/2, as in :func:`auc`.

    Args:
        labels: ``[n]`` 0/1 or graded labels; positive means ``label > 0``.
        scores: ``[n]`` scores or logits.
        groups: ``[n]`` query (or user, request) id of each pair, any sortable ids.

    Returns:
        ``GAUCResult(value, groups_used, groups_skipped)``, unpackable as a 3-tuple.
    """
    positive, scores = _check_pairs(labels, scores, "scores")
    groups = np.asarray(groups)
    if groups.shape != scores.shape:
        raise ValueError(
            f"`groups` should have shape [n] like `scores`. Received: groups shape={groups.shape}, "
            f"scores shape={scores.shape}"
        )
    unique, codes = np.unique(groups, return_inverse=True)
    values, size = _grouped_auc(positive, scores, codes.reshape(-1), len(unique))
    used = ~np.isnan(values)
    value = float((values[used] * size[used]).sum() / size[used].sum()) if used.any() else float("nan")
    return GAUCResult(value, int(used.sum()), int((~used).sum()))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, *, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy ``-mean(y log p + (1 - y) log(1 - p))``, ``p`` clipped to ``[eps, 1 - eps]``.

    Args:
        labels: ``[n]`` labels, binarized as ``label > 0``.
        probabilities: ``[n]`` predicted probabilities of a positive, in ``[0, 1]`` (not logits).
        eps: clipping, so that a confident mistake costs ``-log(eps)`` (about 16.1) instead of infinity.

    Returns:
        The mean log loss; ``NaN`` for no pairs.
    """
    positive, probabilities = _check_probabilities(labels, probabilities)
    if positive.size == 0:
        return float("nan")
    p = np.clip(probabilities, eps, 1.0 - eps)
    return float(-np.mean(np.where(positive, np.log(p), np.log1p(-p))))


def calibration(labels: np.ndarray, probabilities: np.ndarray, num_bins: int = 10) -> dict[str, float | np.ndarray]:
    """Reliability of predicted probabilities, on ``num_bins`` equal-width bins of ``[0, 1]``.

    Bin ``b`` holds ``bin_edges[b] <= p < bin_edges[b + 1]`` (the last bin includes 1).

    Args:
        labels: ``[n]`` labels, binarized as ``label > 0``.
        probabilities: ``[n]`` predicted probabilities of a positive, in ``[0, 1]``.
        num_bins: number of bins, a positive integer.

    Returns:
        ``expected_calibration_error``: ``sum_b (count_b / n) |mean_predicted_b - fraction_positive_b|``;
        ``calibration_ratio``: ``mean(p) / mean(y)`` (1 is calibrated on average, NaN without positives);
        ``bin_edges`` ``[num_bins + 1]``; ``mean_predicted``, ``fraction_positive`` ``[num_bins]`` (NaN for empty
        bins); ``count`` ``[num_bins]`` int64.
    """
    positive, probabilities = _check_probabilities(labels, probabilities)
    if isinstance(num_bins, bool) or not isinstance(num_bins, int | np.integer) or num_bins < 1:
        raise ValueError(f"`num_bins` should be a positive integer. Received: num_bins={num_bins!r}")
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    bins = np.searchsorted(edges[1:-1], probabilities, side="right")
    count = np.bincount(bins, minlength=num_bins)
    mean_predicted = _divide(np.bincount(bins, weights=probabilities, minlength=num_bins), count)
    fraction_positive = _divide(np.bincount(bins, weights=positive, minlength=num_bins), count)
    n = positive.size
    filled = count > 0
    gap = np.abs(mean_predicted[filled] - fraction_positive[filled])
    ece = float((count[filled] * gap).sum() / n) if n else float("nan")
    ratio = float(probabilities.mean() / positive.mean()) if positive.any() else float("nan")
    return {
        "expected_calibration_error": ece,
        "calibration_ratio": ratio,
        "bin_edges": edges,
        "mean_predicted": mean_predicted,
        "fraction_positive": fraction_positive,
        "count": count.astype(np.int64),
    }
