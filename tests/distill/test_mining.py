"""Mined candidate lists: hard negatives come from the rank window, never the positive, denoised by the teacher."""

from __future__ import annotations

import numpy as np
import pytest

from distill.mining import (
    KIND_EASY,
    KIND_HARD,
    KIND_PAD,
    KIND_POSITIVE,
    KIND_TOP,
    PAD,
    MiningConfig,
    mine_candidate_lists,
    student_top_k,
)


@pytest.fixture
def ranking():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(300, 8)).astype(np.float32)
    queries = rng.normal(size=(40, 8)).astype(np.float32)
    rows, scores = student_top_k(queries, items, 60)
    return items, queries, rows, scores


def test_student_top_k_equals_argsort(ranking) -> None:
    items, queries, rows, scores = ranking
    expected = np.argsort(-(queries @ items.T), axis=1)[:, :60]
    np.testing.assert_array_equal(rows, expected)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_hard_negatives_come_from_the_window_and_never_the_positive(ranking) -> None:
    _, _, rows, _ = ranking
    config = MiningConfig(top_k=60, window_start=5, window_end=40, num_hard=6, num_easy=4, num_student_top=2)
    # Make the positive sit inside the window for half the queries: it must still never be a negative.
    positives = np.where(np.arange(40) % 2 == 0, rows[:, 10], rows[:, 0])
    others = rows[:, 20:21]  # a second positive per query
    lists = mine_candidate_lists(
        rows, positives, num_items=300, config=config, rng=np.random.default_rng(1), exclude_rows=others
    )
    assert lists.item_rows.shape == (40, config.list_size) and lists.teacher_scores is None
    assert (lists.item_rows[:, 0] == positives).all() and (lists.kinds[:, 0] == KIND_POSITIVE).all()
    for q in range(40):
        window = set(rows[q, 5:40].tolist())
        head = set(rows[q, :5].tolist())
        got = lists.item_rows[q]
        kinds = lists.kinds[q]
        assert set(got[kinds == KIND_HARD].tolist()) <= window
        assert set(got[kinds == KIND_TOP].tolist()) <= head
        negatives = got[(kinds != KIND_POSITIVE) & (kinds != KIND_PAD)]
        assert positives[q] not in negatives and others[q, 0] not in negatives
        assert len(set(negatives.tolist())) == len(negatives)  # no duplicates
        assert (kinds == KIND_HARD).sum() == 6 and (kinds == KIND_EASY).sum() + (kinds == KIND_PAD).sum() >= 4


def test_teacher_denoises_candidates_scored_above_the_positive(ranking) -> None:
    _, _, rows, _ = ranking
    config = MiningConfig(top_k=60, window_start=5, window_end=40, num_hard=10, num_easy=3, num_student_top=2)
    positives = rows[:, 0]
    teacher_scores = np.random.default_rng(2).normal(size=300).astype(np.float32)

    def teacher(candidate_rows: np.ndarray) -> np.ndarray:
        return np.where(candidate_rows == PAD, 0.0, teacher_scores[candidate_rows.clip(0)])

    lists = mine_candidate_lists(
        rows, positives, num_items=300, config=config, rng=np.random.default_rng(3), teacher_score_fn=teacher
    )
    assert lists.num_denoised > 0
    mask = lists.mask
    kept = (lists.kinds == KIND_HARD) | (lists.kinds == KIND_TOP)
    positive_score = teacher_scores[positives][:, None]
    assert (teacher_scores[lists.item_rows.clip(0)][kept] <= np.broadcast_to(positive_score, kept.shape)[kept]).all()
    np.testing.assert_allclose(lists.teacher_scores[mask], teacher_scores[lists.item_rows[mask]])
    assert np.isneginf(lists.teacher_scores[~mask]).all()
    # Without denoising, the same draw keeps them.
    undenoised = mine_candidate_lists(
        rows,
        positives,
        num_items=300,
        config=MiningConfig(**{**config.__dict__, "denoise": False}),
        rng=np.random.default_rng(3),
        teacher_score_fn=teacher,
    )
    assert undenoised.num_denoised == 0 and undenoised.mask.sum() - mask.sum() == lists.num_denoised


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window_start": 50, "window_end": 40}, r"`window_start < window_end <= top_k` should hold"),
        ({"num_hard": -1}, r"`num_hard` should be a non-negative integer. Received: num_hard=-1"),
        ({"num_student_top": 9, "window_start": 5}, r"`num_student_top` should be at most `window_start`"),
    ],
)
def test_config_errors(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        MiningConfig(**kwargs)


def test_user_positives_and_small_catalogs() -> None:
    from distill.trainer import _fit_to_catalog, _UserPositives
    from ranking import LabelledPairs

    # Two requests of user 7 (rows 3 and 5 bought), one of user 9 (row 4 bought); row 6 only shown to user 9.
    pairs = LabelledPairs(
        queries={"user_id": np.array([7, 7, 9], dtype=np.int32)},
        query_index=np.array([0, 1, 2, 2]),
        item_rows=np.array([3, 5, 4, 6]),
        labels=np.array([1.0, 1.0, 1.0, 0.0], dtype=np.float32),
        is_sampled=np.zeros(4, dtype=bool),
    )

    class _Schema:
        label = __import__("features").LabelSpec(kind="implicit")

    class _Dataset:
        schema = _Schema()

    positives = _UserPositives(pairs, _Dataset(), num_items=10)
    candidates = np.array([[5, 4, 6, PAD], [3, 5, 4, 6], [3, 4, 6, 5]])
    # Request 0 must not take row 5 (user 7 bought it in request 1) as a negative; user 9's purchase is fine.
    np.testing.assert_array_equal(
        positives.mask(np.array([0, 1, 2]), candidates),
        [[True, False, False, False], [True, True, False, False], [False, True, False, False]],
    )
    config = MiningConfig()  # top_k 100, window [5, 100)
    small = _fit_to_catalog(config, num_items=60)
    assert (small.top_k, small.window_start, small.window_end) == (60, 5, 60)
    tiny = _fit_to_catalog(config, num_items=4)
    assert (tiny.top_k, tiny.window_start, tiny.window_end, tiny.num_student_top) == (4, 3, 4, 2)
    assert _fit_to_catalog(config, num_items=1000) is config
