"""Distillation losses: hand-computed values, masking, weights, gradients and TFRS parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from distill import (
    in_batch_softmax_loss,
    label_softmax_loss,
    listwise_kd_loss,
    margin_mse_loss,
    pointwise_kd_loss,
    retrieval_kd_loss,
)

# KL(Bernoulli(0.5) || Bernoulli(0.75)) = 0.5 ln(0.5 / 0.75) + 0.5 ln(0.5 / 0.25) = 0.5 ln(4 / 3).
# The same number is KL([0.5, 0.5] || [0.75, 0.25]) for the two-item softmax, with logits [ln 3, 0].
HALF_LN_4_3 = 0.5 * math.log(4.0 / 3.0)  # 0.1438410...
LN3 = math.log(3.0)


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _np_binary_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    # KL(p || q) = p ln(p / q) + (1 - p) ln((1 - p) / (1 - q))
    return p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))


def _np_listwise(s, t, temperature=1.0, mask=None, weights=None) -> float:
    """Naive per-row loop: T² * KL(softmax(t/T) || softmax(s/T)) over valid entries, rows with >= 2 valid."""
    mask = np.ones_like(s, dtype=bool) if mask is None else mask
    weights = np.ones(len(s)) if weights is None else weights
    total, norm = 0.0, 0.0
    for row_s, row_t, row_m, w in zip(s, t, mask, weights, strict=True):
        if row_m.sum() < 2:
            continue
        log_p_t = _np_log_softmax(row_t[row_m] / temperature)
        log_p_s = _np_log_softmax(row_s[row_m] / temperature)
        total += w * temperature**2 * np.sum(np.exp(log_p_t) * (log_p_t - log_p_s))
        norm += w
    return total / norm if norm else 0.0


def _grad(loss_fn, student: np.ndarray) -> np.ndarray:
    variable = tf.Variable(student)
    with tf.GradientTape() as tape:
        loss = loss_fn(variable)
    return tape.gradient(loss, variable).numpy()


# --------------------------------------------------------------------------------------------------------------
# pointwise_kd_loss


def test_pointwise_hand_computed() -> None:
    # t = 0 -> p_t = 0.5; s = ln 3 -> p_s = 0.75; KL = 0.5 ln(4/3).
    loss = pointwise_kd_loss(tf.constant([LN3]), tf.constant([0.0]))
    np.testing.assert_allclose(loss.numpy(), HALF_LN_4_3, rtol=1e-6)
    # T = 2 with s = 2 ln 3: s / T = ln 3 again, so the value is T² * 0.5 ln(4/3) = 2 ln(4/3).
    loss = pointwise_kd_loss(tf.constant([2 * LN3]), tf.constant([0.0]), temperature=2.0)
    np.testing.assert_allclose(loss.numpy(), 4 * HALF_LN_4_3, rtol=1e-6)
    # MSE alone on raw logits: 0.5 * mean((1 - 0)², (3 - 1)²) = 0.5 * (1 + 4) / 2 = 1.25.
    loss = pointwise_kd_loss(tf.constant([1.0, 3.0]), tf.constant([0.0, 1.0]), mse_weight=0.5, bce_weight=0.0)
    np.testing.assert_allclose(loss.numpy(), 1.25, rtol=1e-6)


def test_pointwise_matches_numpy_formula() -> None:
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(3, 4)) * 3, rng.normal(size=(3, 4)) * 3
    temperature, mse_weight, bce_weight = 1.5, 0.3, 0.7
    # bce_weight * T² * KL(sigmoid(t/T) || sigmoid(s/T)) + mse_weight * (s - t)², averaged over all entries.
    expected = np.mean(
        bce_weight * temperature**2 * _np_binary_kl(_np_sigmoid(t / temperature), _np_sigmoid(s / temperature))
        + mse_weight * (s - t) ** 2
    )
    loss = pointwise_kd_loss(s, t, temperature=temperature, mse_weight=mse_weight, bce_weight=bce_weight)
    assert loss.dtype == tf.float64
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-10)


def test_pointwise_zero_when_student_equals_teacher_even_saturated() -> None:
    logits = tf.constant([[-80.0, -3.0, 0.0], [2.0, 40.0, 100.0]])
    loss = pointwise_kd_loss(logits, logits, temperature=0.5, mse_weight=1.0)
    assert loss.numpy() == 0.0


def test_pointwise_saturated_logits_stay_finite() -> None:
    loss = pointwise_kd_loss(tf.constant([-200.0, 200.0]), tf.constant([200.0, -200.0]))
    # KL(1 || sigmoid(-200)) = -ln sigmoid(-200) ≈ 200 for each entry: log(sigmoid) would give inf here.
    np.testing.assert_allclose(loss.numpy(), 200.0, rtol=1e-5)


def test_pointwise_mask_ignores_padding_whatever_it_holds() -> None:
    s = np.array([[LN3, np.nan], [LN3, 1e30]], dtype=np.float32)
    t = np.array([[0.0, 5.0], [0.0, -np.inf]], dtype=np.float32)
    mask = np.array([[True, False], [True, False]])
    loss = pointwise_kd_loss(s, t, mask=mask, mse_weight=1.0)
    # Two valid entries, each 0.5 ln(4/3) + (ln 3 - 0)².
    np.testing.assert_allclose(loss.numpy(), HALF_LN_4_3 + LN3**2, rtol=1e-6)
    grad = _grad(lambda v: pointwise_kd_loss(v, t, mask=mask, mse_weight=1.0), s)
    assert np.all(np.isfinite(grad))
    assert grad[0, 1] == 0.0
    assert grad[1, 1] == 0.0
    assert pointwise_kd_loss(s, t, mask=np.zeros_like(mask)).numpy() == 0.0


def test_pointwise_sample_weight_is_weighted_mean() -> None:
    s, t = np.array([LN3, 0.0, 2.0], dtype=np.float32), np.array([0.0, 0.0, -1.0], dtype=np.float32)
    per_example = _np_binary_kl(_np_sigmoid(t), _np_sigmoid(s))
    weights = np.array([2.0, 1.0, 0.0])
    loss = pointwise_kd_loss(s, t, sample_weight=weights)
    # (2 * 0.5 ln(4/3) + 1 * 0 + 0 * kl_2) / (2 + 1 + 0)
    np.testing.assert_allclose(loss.numpy(), 2 * HALF_LN_4_3 / 3, rtol=1e-6)
    np.testing.assert_allclose(loss.numpy(), np.sum(weights * per_example) / weights.sum(), rtol=1e-6)
    # A [batch] weight broadcasts over the list axis; integer weights equal repeated rows.
    s2, t2 = np.stack([s, s[::-1]]), np.stack([t, t[::-1]])
    weighted = pointwise_kd_loss(s2, t2, sample_weight=[2.0, 1.0])
    repeated = pointwise_kd_loss(np.stack([s2[0], s2[0], s2[1]]), np.stack([t2[0], t2[0], t2[1]]))
    np.testing.assert_allclose(weighted.numpy(), repeated.numpy(), rtol=1e-6)


def test_pointwise_gradients_reach_student_only() -> None:
    s = tf.Variable([0.5, -1.0])
    t = tf.constant([1.0, 2.0])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(t)
        loss = pointwise_kd_loss(s, t, temperature=2.0, mse_weight=0.1)
    grad = tape.gradient(loss, s).numpy()
    assert np.all(np.isfinite(grad))
    assert np.all(grad != 0.0)
    # d/ds of mean(T² * BCE(p_t, sigmoid(s/T)) + 0.1 (s - t)²) = (T (p_s - p_t) + 0.2 (s - t)) / 2.
    p_s, p_t = _np_sigmoid(s.numpy() / 2), _np_sigmoid(t.numpy() / 2)
    np.testing.assert_allclose(grad, (2 * (p_s - p_t) + 0.2 * (s.numpy() - t.numpy())) / 2, rtol=1e-5)
    assert tape.gradient(loss, t) is None


def test_pointwise_temperature_scaling() -> None:
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=5), rng.normal(size=5)
    # KL depends on s/T and t/T only, times T²: loss(k s, k t; T=k) = k² loss(s, t; T=1).
    scaled = pointwise_kd_loss(3 * s, 3 * t, temperature=3.0)
    np.testing.assert_allclose(scaled.numpy(), 9 * pointwise_kd_loss(s, t).numpy(), rtol=1e-10)


def test_pointwise_argument_errors() -> None:
    s = tf.zeros([4, 5])
    with pytest.raises(ValueError, match=r"^`temperature` should be a positive float\. Received: temperature=0$"):
        pointwise_kd_loss(s, s, temperature=0)
    with pytest.raises(ValueError, match=r"`temperature` should be a positive float. Received: temperature=nan"):
        pointwise_kd_loss(s, s, temperature=float("nan"))
    with pytest.raises(ValueError, match=r"`mse_weight` should be a non-negative float. Received: mse_weight=-1"):
        pointwise_kd_loss(s, s, mse_weight=-1)
    with pytest.raises(ValueError, match=r"`bce_weight` should be a non-negative float. Received: bce_weight=True"):
        pointwise_kd_loss(s, s, bce_weight=True)
    with pytest.raises(
        ValueError, match=r"^`teacher_logits` should have the shape of `student_logits` \[4, 5\]. Received: \[4, 6\]$"
    ):
        pointwise_kd_loss(s, tf.zeros([4, 6]))
    with pytest.raises(ValueError, match=r"`mask` should be a boolean tensor"):
        pointwise_kd_loss(s, s, mask=tf.ones([4, 5]))
    with pytest.raises(ValueError, match=r"`mask` should have the shape of `student_logits` \[4, 5\]. Received: \[4\]"):
        pointwise_kd_loss(s, s, mask=tf.ones([4], tf.bool))
    with pytest.raises(ValueError, match=r"`sample_weight` should have shape a prefix of \[4, 5\], e.g. \[batch\]"):
        pointwise_kd_loss(s, s, sample_weight=tf.ones([5]))


# --------------------------------------------------------------------------------------------------------------
# listwise_kd_loss


# --------------------------------------------------------------------------------------------------------------
# label_softmax_loss


def _np_label_softmax(s, y, mask, weights) -> float:
    """Naive per-row loop: -sum_j (y_j / sum y) log softmax(s)_j over valid entries, rows with sum y > 0."""
    total, norm = 0.0, 0.0
    for row_s, row_y, row_m, w in zip(s, y, mask, weights, strict=True):
        gains = row_y[row_m]
        if gains.sum() <= 0:
            continue
        total += w * -np.sum(gains / gains.sum() * _np_log_softmax(row_s[row_m]))
        norm += w
    return total / norm if norm else 0.0


def test_label_softmax_hand_computed() -> None:
    # softmax([ln 3, 0]) = [0.75, 0.25]; one positive first: -ln 0.75 = ln(4/3).
    loss = label_softmax_loss(tf.constant([[LN3, 0.0]]), tf.constant([[1.0, 0.0]]))
    np.testing.assert_allclose(loss.numpy(), 2 * HALF_LN_4_3, rtol=1e-6)
    # Grades 1 and 1: targets [0.5, 0.5]; -(0.5 ln 0.75 + 0.5 ln 0.25) = 0.5 ln(16/3).
    loss = label_softmax_loss(tf.constant([[LN3, 0.0]]), tf.constant([[0.6, 0.6]]))
    np.testing.assert_allclose(loss.numpy(), 0.5 * math.log(16.0 / 3.0), rtol=1e-6)
    # A padded entry holding NaN changes nothing; a row without a positive is left out of the mean.
    loss = label_softmax_loss(
        tf.constant([[LN3, 0.0, float("nan")], [5.0, 1.0, 2.0]]),
        tf.constant([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]),
        mask=tf.constant([[True, True, False], [True, True, True]]),
    )
    np.testing.assert_allclose(loss.numpy(), 2 * HALF_LN_4_3, rtol=1e-6)


def test_label_softmax_matches_naive_loop_and_has_gradients() -> None:
    rng = np.random.default_rng(5)
    s = rng.normal(size=(7, 6)) * 2
    y = np.where(rng.random((7, 6)) < 0.3, rng.choice([0.5, 1.0], size=(7, 6)), 0.0)
    mask = rng.random((7, 6)) < 0.8
    y[1] = 0.0  # no positive: excluded
    weights = rng.random(7) + 0.5
    loss = label_softmax_loss(s, y, mask=mask, sample_weight=weights)
    np.testing.assert_allclose(loss.numpy(), _np_label_softmax(s, y, mask, weights), rtol=1e-10)
    scores = tf.Variable(s.astype(np.float32))
    with tf.GradientTape() as tape:
        value = label_softmax_loss(scores, y.astype(np.float32), mask=mask)
    grad = tape.gradient(value, scores).numpy()
    assert np.all(np.isfinite(grad)) and np.all(grad[~mask] == 0) and np.abs(grad).sum() > 0
    with pytest.raises(ValueError, match="`labels` should have the shape of `scores`"):
        label_softmax_loss(tf.zeros([2, 3]), tf.zeros([2, 4]))


def test_listwise_hand_computed_two_item_list() -> None:
    # p_t = softmax([0, 0]) = [0.5, 0.5]; p_s = softmax([ln 3, 0]) = [0.75, 0.25]; KL = 0.5 ln(4/3).
    loss = listwise_kd_loss(tf.constant([[LN3, 0.0]]), tf.constant([[0.0, 0.0]]))
    np.testing.assert_allclose(loss.numpy(), HALF_LN_4_3, rtol=1e-6)
    # T = 2, s = [2 ln 3, 0]: same distributions, times T² = 4.
    loss = listwise_kd_loss(tf.constant([[2 * LN3, 0.0]]), tf.constant([[0.0, 0.0]]), temperature=2.0)
    np.testing.assert_allclose(loss.numpy(), 4 * HALF_LN_4_3, rtol=1e-6)


def test_listwise_matches_naive_loop() -> None:
    rng = np.random.default_rng(2)
    s, t = rng.normal(size=(6, 5)) * 2, rng.normal(size=(6, 5)) * 2
    mask = rng.random((6, 5)) < 0.7
    mask[0] = [True, False, False, False, False]  # one valid entry: excluded
    mask[1] = False  # nothing valid: excluded
    mask[2] = True
    weights = rng.random(6) + 0.5
    loss = listwise_kd_loss(s, t, temperature=1.7, mask=mask, sample_weight=weights)
    np.testing.assert_allclose(loss.numpy(), _np_listwise(s, t, 1.7, mask, weights), rtol=1e-10)


def test_listwise_zero_when_equal_and_shift_invariant() -> None:
    rng = np.random.default_rng(3)
    t = rng.normal(size=(4, 6)).astype(np.float32)
    assert listwise_kd_loss(t, t, temperature=0.7).numpy() == 0.0
    shifts = np.array([[-50.0], [0.0], [3.0], [100.0]], dtype=np.float32)
    np.testing.assert_allclose(listwise_kd_loss(t + shifts, t, temperature=0.7).numpy(), 0.0, atol=1e-5)
    # Shift invariance also holds away from zero: a per-row constant does not change the value.
    s = rng.normal(size=(4, 6)).astype(np.float32)
    np.testing.assert_allclose(
        listwise_kd_loss(s + shifts, t).numpy(), listwise_kd_loss(s, t).numpy(), rtol=1e-4, atol=1e-6
    )


def test_listwise_masked_entries_do_not_change_the_value() -> None:
    s = np.array([[LN3, 0.0, 7.0], [1.0, 2.0, 3.0]], dtype=np.float32)
    t = np.array([[0.0, 0.0, -9.0], [1.0, 2.0, 3.0]], dtype=np.float32)
    mask = np.array([[True, True, False], [True, True, True]])
    # Row 0 is the two-item example (0.5 ln(4/3)); row 1 has s = t (0). Mean over 2 rows.
    np.testing.assert_allclose(listwise_kd_loss(s, t, mask=mask).numpy(), HALF_LN_4_3 / 2, rtol=1e-6)
    garbage = s.copy()
    garbage[0, 2] = np.nan
    teacher_garbage = t.copy()
    teacher_garbage[0, 2] = np.inf
    np.testing.assert_allclose(
        listwise_kd_loss(garbage, teacher_garbage, mask=mask).numpy(), HALF_LN_4_3 / 2, rtol=1e-6
    )
    grad = _grad(lambda v: listwise_kd_loss(v, teacher_garbage, mask=mask), garbage)
    assert np.all(np.isfinite(grad))
    assert grad[0, 2] == 0.0


def test_listwise_rows_with_fewer_than_two_valid_entries_are_excluded() -> None:
    s = np.array([[LN3, 0.0], [5.0, -5.0], [5.0, -5.0]], dtype=np.float32)
    t = np.array([[0.0, 0.0], [-5.0, 5.0], [-5.0, 5.0]], dtype=np.float32)
    mask = np.array([[True, True], [True, False], [False, False]])
    # Only row 0 counts: 0.5 ln(4/3), not (0.5 ln(4/3) + 0 + 0) / 3.
    np.testing.assert_allclose(listwise_kd_loss(s, t, mask=mask).numpy(), HALF_LN_4_3, rtol=1e-6)
    nothing_valid = np.array([[True, False], [True, False], [False, False]])
    loss = listwise_kd_loss(s, t, mask=nothing_valid)
    assert loss.numpy() == 0.0
    grad = _grad(lambda v: listwise_kd_loss(v, t, mask=nothing_valid), s)
    np.testing.assert_array_equal(grad, np.zeros_like(s))


def test_listwise_sample_weight() -> None:
    s = np.array([[LN3, 0.0], [0.0, 0.0], [1.0, 2.0]], dtype=np.float32)
    t = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    # Row losses: [0.5 ln(4/3), 0, kl_2]; weights [3, 1, 0] -> 3 * 0.5 ln(4/3) / 4.
    loss = listwise_kd_loss(s, t, sample_weight=[3.0, 1.0, 0.0])
    np.testing.assert_allclose(loss.numpy(), 3 * HALF_LN_4_3 / 4, rtol=1e-6)
    with pytest.raises(ValueError, match=r"`sample_weight` should have shape \[batch\] to match"):
        listwise_kd_loss(s, t, sample_weight=[1.0, 2.0])


def test_listwise_gradients_and_temperature_scaling() -> None:
    rng = np.random.default_rng(4)
    s, t = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    grad = _grad(lambda v: listwise_kd_loss(v, t, temperature=2.0), s)
    assert np.all(np.isfinite(grad))
    assert np.all(grad != 0.0)
    # d/ds_j of T² KL(p_t || softmax(s/T)) = T (p_s - p_t)_j, averaged over 3 rows.
    p_s, p_t = np.exp(_np_log_softmax(s / 2)), np.exp(_np_log_softmax(t / 2))
    np.testing.assert_allclose(grad, 2 * (p_s - p_t) / 3, rtol=1e-8)
    # loss(k s, k t; T=k) = k² loss(s, t; T=1).
    np.testing.assert_allclose(
        listwise_kd_loss(5 * s, 5 * t, temperature=5.0).numpy(), 25 * listwise_kd_loss(s, t).numpy(), rtol=1e-10
    )


def test_listwise_in_tf_function_with_unknown_batch() -> None:
    spec = tf.TensorSpec([None, None], tf.float32)
    fn = tf.function(lambda s, t, m: listwise_kd_loss(s, t, temperature=2.0, mask=m)).get_concrete_function(
        spec, spec, tf.TensorSpec([None, None], tf.bool)
    )
    rng = np.random.default_rng(5)
    s, t = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    mask = np.array([[1, 1, 0, 1], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=bool)
    np.testing.assert_allclose(fn(s, t, mask).numpy(), _np_listwise(s, t, 2.0, mask), rtol=1e-5)


def test_listwise_argument_errors() -> None:
    with pytest.raises(
        ValueError, match=r"^`teacher_scores` should have the shape of `student_scores` \[4, 5\]. Received: \[4, 6\]$"
    ):
        listwise_kd_loss(tf.zeros([4, 5]), tf.zeros([4, 6]))
    with pytest.raises(ValueError, match=r"`student_scores` should have shape \[batch, list_size\]. Received: \[4\]"):
        listwise_kd_loss(tf.zeros([4]), tf.zeros([4]))
    with pytest.raises(ValueError, match=r"`temperature` should be a positive float. Received: temperature=-1.0"):
        listwise_kd_loss(tf.zeros([4, 5]), tf.zeros([4, 5]), temperature=-1.0)


# --------------------------------------------------------------------------------------------------------------
# margin_mse_loss


def test_margin_mse_hand_computed() -> None:
    # Pair 0: ((3 - 1) - (2 - 1))² = 1; pair 1: ((0 - 0) - (1 - (-1)))² = 4; mean = 2.5.
    loss = margin_mse_loss([3.0, 0.0], [1.0, 0.0], [2.0, 1.0], [1.0, -1.0])
    np.testing.assert_allclose(loss.numpy(), 2.5, rtol=1e-6)


def test_margin_mse_with_negatives_matches_numpy() -> None:
    rng = np.random.default_rng(6)
    sp, tp = rng.normal(size=4), rng.normal(size=4)
    sn, tn = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    expected = np.mean(((sp[:, None] - sn) - (tp[:, None] - tn)) ** 2)
    np.testing.assert_allclose(margin_mse_loss(sp, sn, tp, tn).numpy(), expected, rtol=1e-10)
    # [batch, 1] positives are accepted as well.
    np.testing.assert_allclose(margin_mse_loss(sp[:, None], sn, tp[:, None], tn).numpy(), expected, rtol=1e-10)


def test_margin_mse_zero_when_margins_equal_and_offset_invariant() -> None:
    rng = np.random.default_rng(7)
    tp, tn = rng.normal(size=3), rng.normal(size=(3, 2))
    offset = np.array([10.0, -4.0, 0.5])
    # The student equals the teacher up to a per-query offset: every margin is equal, so the loss is 0.
    np.testing.assert_allclose(margin_mse_loss(tp + offset, tn + offset[:, None], tp, tn).numpy(), 0.0, atol=1e-12)
    assert margin_mse_loss(tp, tn, tp, tn).numpy() == 0.0


def test_margin_mse_mask_and_weights() -> None:
    sp, tp = np.array([3.0, 0.0]), np.array([2.0, 1.0])
    sn = np.array([[1.0, np.nan], [0.0, 5.0]])
    tn = np.array([[1.0, 0.0], [-1.0, 5.0]])
    mask = np.array([[True, False], [True, False]])
    # Valid pairs as in the hand-computed test: errors 1 and 4.
    np.testing.assert_allclose(margin_mse_loss(sp, sn, tp, tn, mask=mask).numpy(), 2.5, rtol=1e-10)
    # Weights [1, 3]: (1 * 1 + 3 * 4) / (1 + 3) = 13 / 4.
    loss = margin_mse_loss(sp, sn, tp, tn, mask=mask, sample_weight=[1.0, 3.0])
    np.testing.assert_allclose(loss.numpy(), 13 / 4, rtol=1e-10)
    grad = _grad(lambda v: margin_mse_loss(sp, v, tp, tn, mask=mask), sn)
    assert np.all(np.isfinite(grad))
    # d/ds_neg of mean((s_pos - s_neg - m_t)²) = -2 (s_pos - s_neg - m_t) / 2 valid pairs: -(1), -(-2).
    np.testing.assert_allclose(grad, [[-1.0, 0.0], [2.0, 0.0]], rtol=1e-10)


def test_margin_mse_argument_errors() -> None:
    with pytest.raises(
        ValueError, match=r"`teacher_neg` should have the shape of `student_neg` \[4, 3\]. Received: \[4, 2\]"
    ):
        margin_mse_loss(tf.zeros([4]), tf.zeros([4, 3]), tf.zeros([4]), tf.zeros([4, 2]))
    with pytest.raises(
        ValueError,
        match=r"`student_pos` should have shape \[4\] or \[4, 1\] to match `student_neg` \[4, 3\]. Received: \[5\]",
    ):
        margin_mse_loss(tf.zeros([5]), tf.zeros([4, 3]), tf.zeros([5]), tf.zeros([4, 3]))
    with pytest.raises(ValueError, match=r"`student_neg` should have shape \[batch\] or \[batch, num_negatives\]"):
        margin_mse_loss(tf.zeros([4]), tf.zeros([4, 3, 2]), tf.zeros([4]), tf.zeros([4, 3, 2]))


# --------------------------------------------------------------------------------------------------------------
# retrieval_kd_loss


def test_retrieval_kd_loss_is_listwise_on_dot_products() -> None:
    # q = [1, 0]; candidates [ln 3, 5] and [0, -2] -> scores [ln 3, 0]; teacher [0, 0] -> 0.5 ln(4/3).
    loss = retrieval_kd_loss([[1.0, 0.0]], [[[LN3, 5.0], [0.0, -2.0]]], [[0.0, 0.0]], temperature=1.0)
    np.testing.assert_allclose(loss.numpy(), HALF_LN_4_3, rtol=1e-6)

    rng = np.random.default_rng(8)
    q, c, t = rng.normal(size=(3, 4)), rng.normal(size=(3, 5, 4)), rng.normal(size=(3, 5))
    mask = rng.random((3, 5)) < 0.8
    s = np.einsum("bd,bld->bl", q, c)
    loss = retrieval_kd_loss(q, c, t, temperature=0.5, mask=mask, sample_weight=[1.0, 2.0, 0.5])
    np.testing.assert_allclose(loss.numpy(), _np_listwise(s, t, 0.5, mask, np.array([1.0, 2.0, 0.5])), rtol=1e-10)
    grad = _grad(lambda v: retrieval_kd_loss(v, c, t, temperature=0.5), q)
    assert np.all(np.isfinite(grad))
    assert np.any(grad != 0.0)


def test_retrieval_kd_loss_argument_errors() -> None:
    with pytest.raises(ValueError, match=r"`temperature` should be a positive float. Received: temperature=0.0"):
        retrieval_kd_loss(tf.zeros([2, 3]), tf.zeros([2, 4, 3]), tf.zeros([2, 4]), temperature=0.0)
    with pytest.raises(
        ValueError, match=r"`candidate_embeddings` should have shape \[batch, list_size, dim\] .* Received: \[2, 4, 5\]"
    ):
        retrieval_kd_loss(tf.zeros([2, 3]), tf.zeros([2, 4, 5]), tf.zeros([2, 4]), temperature=1.0)
    with pytest.raises(
        ValueError, match=r"`teacher_scores` should have the shape of `student_scores` \[2, 4\]. Received: \[2, 5\]"
    ):
        retrieval_kd_loss(tf.zeros([2, 3]), tf.zeros([2, 4, 3]), tf.zeros([2, 5]), temperature=1.0)


# --------------------------------------------------------------------------------------------------------------
# in_batch_softmax_loss


def test_in_batch_softmax_hand_computed() -> None:
    # q = v = I₂ -> logits = I₂; loss_i = ln(e¹ + e⁰) - 1 = ln(1 + e) - 1 = 0.3132617.
    eye = np.eye(2, dtype=np.float32)
    np.testing.assert_allclose(in_batch_softmax_loss(eye, eye).numpy(), math.log(1 + math.e) - 1, rtol=1e-6)
    # T = 0.5 -> logits = 2 I₂; loss = ln(e² + 1) - 2.
    np.testing.assert_allclose(
        in_batch_softmax_loss(eye, eye, temperature=0.5).numpy(), math.log(math.e**2 + 1) - 2, rtol=1e-6
    )
    # logQ with P = [0.5, 0.25]: logits[i, j] = I[i, j] - ln P_j.
    # Row 0: [1 + ln 2, ln 4] -> ln(2e + 4) - (1 + ln 2); row 1: [ln 2, 1 + ln 4] -> ln(2 + 4e) - (1 + ln 4).
    expected = 0.5 * (math.log(2 * math.e + 4) - 1 - math.log(2) + math.log(2 + 4 * math.e) - 1 - math.log(4))
    loss = in_batch_softmax_loss(eye, eye, candidate_sampling_probability=[0.5, 0.25])
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-6)
    # Both items share an id: each row's only negative is an accidental hit, so the loss is -ln 1 = 0.
    assert in_batch_softmax_loss(eye, eye, candidate_ids=[7, 7]).numpy() == pytest.approx(0.0, abs=1e-7)


def _tfrs_loss(q, v, *, temperature, probability=None, ids=None, weights=None) -> float:
    # Imported here, after `distill` (which imports `features` first) has selected Keras 2: TFRS subclasses
    # tf.keras classes at import time, and ruff's import sorting would otherwise put it above our packages.
    import tensorflow_recommenders as tfrs

    task = tfrs.tasks.Retrieval(temperature=temperature, remove_accidental_hits=ids is not None)
    loss = task(
        tf.constant(q),
        tf.constant(v),
        sample_weight=None if weights is None else tf.constant(weights),
        candidate_sampling_probability=None if probability is None else tf.constant(probability),
        candidate_ids=None if ids is None else tf.constant(ids),
        compute_metrics=False,
        compute_batch_metrics=False,
    )
    return float(loss.numpy())


@pytest.mark.parametrize("use_logq", [False, True])
@pytest.mark.parametrize("use_ids", [False, True])
@pytest.mark.parametrize("use_weights", [False, True])
@pytest.mark.parametrize("num_extra_negatives", [0, 3])
def test_in_batch_softmax_matches_tfrs_retrieval(use_logq, use_ids, use_weights, num_extra_negatives) -> None:
    rng = np.random.default_rng(9)
    num_queries, dim = 8, 4
    num_candidates = num_queries + num_extra_negatives
    q = rng.normal(size=(num_queries, dim)).astype(np.float32)
    v = rng.normal(size=(num_candidates, dim)).astype(np.float32)
    probability = rng.uniform(0.01, 0.5, size=num_candidates).astype(np.float32) if use_logq else None
    # Ids from a small range so that accidental hits certainly occur.
    ids = rng.integers(0, 4, size=num_candidates).astype(np.int64) if use_ids else None
    weights = rng.uniform(0.1, 2.0, size=num_queries).astype(np.float32) if use_weights else None
    temperature = 0.3

    ours = in_batch_softmax_loss(
        q,
        v,
        candidate_sampling_probability=probability,
        candidate_ids=ids,
        temperature=temperature,
        sample_weight=weights,
    )
    theirs = _tfrs_loss(q, v, temperature=temperature, probability=probability, ids=ids, weights=weights)
    # TFRS reduces with SUM: sum_i w_i loss_i; ours is the weighted mean sum_i w_i loss_i / sum_i w_i.
    normalizer = num_queries if weights is None else float(weights.sum())
    np.testing.assert_allclose(ours.numpy() * normalizer, theirs, rtol=1e-5)


def test_in_batch_softmax_string_ids_and_gradients() -> None:
    rng = np.random.default_rng(10)
    q, v = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    ids = np.array([b"a", b"b", b"a", b"c"])
    theirs = _tfrs_loss(q, v, temperature=1.0, ids=ids)
    np.testing.assert_allclose(in_batch_softmax_loss(q, v, candidate_ids=ids).numpy() * 4, theirs, rtol=1e-5)
    grad = _grad(lambda x: in_batch_softmax_loss(x, v, candidate_ids=ids), q)
    assert np.all(np.isfinite(grad))
    assert np.all(grad != 0.0)


def test_in_batch_softmax_argument_errors() -> None:
    with pytest.raises(ValueError, match=r"`temperature` should be a positive float. Received: temperature=0"):
        in_batch_softmax_loss(tf.zeros([4, 3]), tf.zeros([4, 3]), temperature=0)
    with pytest.raises(ValueError, match=r"`item_embeddings` should have at least one row per query \(4\)"):
        in_batch_softmax_loss(tf.zeros([4, 3]), tf.zeros([3, 3]))
    with pytest.raises(
        ValueError, match=r"`item_embeddings` should have the embedding dimension .* Received: \[4, 2\]"
    ):
        in_batch_softmax_loss(tf.zeros([4, 3]), tf.zeros([4, 2]))
    with pytest.raises(
        ValueError, match=r"`candidate_ids` should have shape \[num_candidates\] = \[4\] .* Received: \[3\]"
    ):
        in_batch_softmax_loss(tf.zeros([4, 3]), tf.zeros([4, 3]), candidate_ids=[1, 2, 3])
    with pytest.raises(ValueError, match=r"`candidate_sampling_probability` should have shape \[num_candidates\]"):
        in_batch_softmax_loss(tf.zeros([4, 3]), tf.zeros([4, 3]), candidate_sampling_probability=tf.ones([4, 1]))
    with pytest.raises(ValueError, match=r"`sample_weight` should have shape \[num_queries\]"):
        in_batch_softmax_loss(tf.zeros([4, 3]), tf.zeros([4, 3]), sample_weight=tf.ones([3]))
