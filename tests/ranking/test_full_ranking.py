"""Full ranking equals brute force; candidate lists and pairs score like the plain model call."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from ranking import FullRanker, TeacherConfig, TeacherRanker, full_rank, score_lists, score_pairs

NUM_QUERIES = 13  # not a multiple of the query batch size: the last batch is short


def _brute_force(teacher, queries: dict, items: dict) -> np.ndarray:
    """``[num_queries, num_items]`` scores of every pair through the plain model call."""
    num_queries, num_items = len(queries["history"]), len(items["item_id"])
    pair_queries = {k: np.repeat(v, num_items, axis=0) for k, v in queries.items()}
    pair_items = {k: np.tile(v, (num_queries,) + (1,) * (v.ndim - 1)) for k, v in items.items()}
    return score_pairs(teacher, pair_queries, pair_items).reshape(num_queries, num_items)


def _assert_top_k_equal(ranking, brute: np.ndarray, k: int) -> None:
    expected = -np.sort(-brute, axis=1)[:, :k]
    np.testing.assert_allclose(ranking.scores, expected, atol=1e-4)
    # Same sets up to ties: every returned row's brute-force score equals the returned score, and every item
    # strictly above the k-th score is returned.
    np.testing.assert_allclose(np.take_along_axis(brute, ranking.item_rows, axis=1), ranking.scores, atol=1e-4)
    for q in range(len(brute)):
        above = set(np.flatnonzero(brute[q] > expected[q, -1] + 1e-4))
        assert above <= set(ranking.item_rows[q].tolist())
        assert len(set(ranking.item_rows[q].tolist())) == k


@pytest.fixture(scope="module")
def queries(shop_data) -> dict:
    return {k: v[:NUM_QUERIES] for k, v in shop_data.test.queries.items()}


@pytest.mark.parametrize("factorize_first_cross", [True, False])
def test_full_rank_equals_brute_force(trained_teacher, shop_data, queries, factorize_first_cross) -> None:
    teacher, _ = trained_teacher
    # 200 items in chunks of 64: the last chunk is padded, and padding must never be returned.
    ranker = FullRanker(teacher, shop_data.items, item_chunk_size=64, factorize_first_cross=factorize_first_cross)
    ranking = ranker.rank(queries, k=20, query_batch_size=4)
    assert ranking.item_rows.shape == (NUM_QUERIES, 20) and ranking.item_rows.dtype == np.int32
    assert ranking.scores.dtype == np.float32
    assert (np.diff(ranking.scores, axis=1) <= 0).all()
    _assert_top_k_equal(ranking, _brute_force(teacher, queries, shop_data.items), k=20)


def test_full_rank_of_low_rank_and_parallel_teachers(shop_data, queries) -> None:
    config = TeacherConfig(embedding_dim=8, projection_dim=8, structure="parallel", deep_layers=(16,))
    teacher = TeacherRanker(shop_data.encoders, shop_data.items, config)
    ranking = full_rank(teacher, queries, shop_data.items, k=5, query_batch_size=8, item_chunk_size=48)
    _assert_top_k_equal(ranking, _brute_force(teacher, queries, shop_data.items), k=5)


def test_k_larger_than_the_catalog_is_padded(trained_teacher, shop_data, queries) -> None:
    teacher, _ = trained_teacher
    few_items = {k: v[:7] for k, v in shop_data.items.items()}
    ranking = full_rank(teacher, queries, few_items, k=10, item_chunk_size=4)
    assert (ranking.item_rows[:, 7:] == -1).all() and np.isneginf(ranking.scores[:, 7:]).all()
    assert (np.sort(ranking.item_rows[:, :7], axis=1) == np.arange(7)).all()


def test_score_lists_pads_with_minus_infinity(trained_teacher, shop_data, queries) -> None:
    teacher, _ = trained_teacher
    item_rows = np.array([[3, 10, -1, 5]] * NUM_QUERIES)
    item_rows[0] = [-1, -1, -1, -1]
    scores = score_lists(teacher, queries, item_rows, shop_data.items)
    assert scores.shape == item_rows.shape
    assert np.isneginf(scores[item_rows == -1]).all()
    brute = _brute_force(teacher, queries, shop_data.items)
    valid = item_rows >= 0
    np.testing.assert_allclose(scores[valid], np.take_along_axis(brute, np.maximum(item_rows, 0), 1)[valid], atol=1e-5)
    with pytest.raises(ValueError, match=r"`item_rows` should hold catalog rows in \[0, 200\)"):
        score_lists(teacher, queries, item_rows + 1000, shop_data.items)
    with pytest.raises(ValueError, match="one row per query"):
        score_lists(teacher, queries, item_rows[:3], shop_data.items)


def test_errors(trained_teacher, trained_student, shop_data, queries) -> None:
    teacher, _ = trained_teacher
    student, _ = trained_student
    with pytest.raises(TypeError, match="`teacher` should be a TeacherRanker"):
        full_rank(student, queries, shop_data.items)
    with pytest.raises(ValueError, match=r"`k` should be a positive integer\. Received: k=0"):
        full_rank(teacher, queries, shop_data.items, k=0)
    with pytest.raises(ValueError, match=r"The query features should hold \['history'\]"):
        full_rank(teacher, {k: v for k, v in queries.items() if k != "history"}, shop_data.items)


def test_scorer_cache_does_not_keep_models_alive() -> None:
    import gc
    import weakref

    from ranking import full_ranking

    class _Tiny(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.dense = keras.layers.Dense(1)

        def input_specs(self):
            spec = tf.TensorSpec([None], tf.float32)
            return {"query": {"q": spec}, "item": {"i": spec}}

        def call(self, inputs, training=False):
            x = tf.stack([inputs["query"]["q"], inputs["item"]["i"]], axis=1)
            return self.dense(x)[:, 0]

    model = _Tiny()
    scores = full_ranking.score_pairs(model, {"q": np.ones(3, np.float32)}, {"i": np.zeros(3, np.float32)})
    assert scores.shape == (3,)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
