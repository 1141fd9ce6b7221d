"""Distillation losses: pure, differentiable functions from student and teacher scores to a scalar.

Every loss here follows the same conventions:

* Teacher scores are targets: they pass through `tf.stop_gradient`, so gradients reach the student only.
* `mask` is a boolean tensor, `True` for a valid entry. Masked entries are replaced by a harmless constant
  *before* any arithmetic, so padding may hold anything (even NaN) without changing the value or the gradients.
* `sample_weight` holds non-negative per-example weights whose shape is a prefix of the loss' element shape
  (`[batch]` weighs whole rows; the full shape weighs single entries); it is broadcast over the trailing axes.
* The reduction is a weighted mean over valid elements,
  `sum(weight * valid * loss) / sum(weight * valid)`, and it is 0 (never NaN) when nothing is valid.
  Without weights this is the plain mean over valid elements.
* Computation runs in float32 (float64 inputs stay float64), so mixed-precision logits are safe.
"""

from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

__all__ = [
    "in_batch_softmax_loss",
    "label_softmax_loss",
    "listwise_kd_loss",
    "margin_mse_loss",
    "pointwise_kd_loss",
    "retrieval_kd_loss",
]

# A finite stand-in for -inf (the value TFRS uses): exp() of it underflows to exactly 0, and unlike -inf it
# never turns `0 * -inf` into NaN in the forward or backward pass.
_MASKED_LOGIT = float(np.finfo(np.float32).min / 100.0)

# TFRS clips sampling probabilities to this range before taking the log (`SamplingProbablityCorrection`).
_MIN_SAMPLING_PROBABILITY = 1e-6


def pointwise_kd_loss(
    student_logits: tf.Tensor,
    teacher_logits: tf.Tensor,
    *,
    temperature: float = 1.0,
    mse_weight: float = 0.0,
    bce_weight: float = 1.0,
    mask: tf.Tensor | None = None,
    sample_weight: tf.Tensor | None = None,
) -> tf.Tensor:
    """Pointwise distillation of a binary (click / relevance) logit.

    With `p_t = sigmoid(t / T)` and `p_s = sigmoid(s / T)`, each element contributes

        bce_weight * T² * KL(p_t || p_s) + mse_weight * (s - t)²

    where the binary KL divergence is

        KL(p_t || p_s) = p_t log(p_t / p_s) + (1 - p_t) log((1 - p_t) / (1 - p_s))
                       = BCE(p_t, p_s) - H(p_t).

    It is the soft-target binary cross-entropy minus the teacher's entropy: the gradient with respect to the
    student is the same as the cross-entropy's, but the loss is exactly 0 when `student_logits ==
    teacher_logits`, which makes it readable as a distance. Both terms are evaluated with
    `tf.nn.sigmoid_cross_entropy_with_logits` (never `log(sigmoid(.))`), so saturated logits are stable.
    The T² factor (Hinton et al., 2015) keeps the gradient magnitude roughly independent of the
    temperature, since softening the targets scales the gradient by 1 / T². The MSE term is on raw logits
    and is not scaled.

    Args:
      student_logits: `[...]` float tensor of student logits, e.g. `[batch]` or `[batch, list_size]`.
      teacher_logits: Teacher logits with the shape of `student_logits`.
      temperature: Positive softening temperature T.
      mse_weight: Non-negative weight of the logit MSE term.
      bce_weight: Non-negative weight of the (T²-scaled) binary KL term.
      mask: Optional boolean tensor with the shape of `student_logits`; `False` entries are ignored.
      sample_weight: Optional non-negative weights whose shape is a prefix of the logits' shape
        (`[batch]` or the full shape).

    Returns:
      Scalar: the weighted mean of the per-element loss over valid elements (0 if none is valid).

    Raises:
      ValueError: If a temperature or weight is out of range, or a shape does not match.
    """
    _check_positive("temperature", temperature)
    _check_non_negative("mse_weight", mse_weight)
    _check_non_negative("bce_weight", bce_weight)
    student = _as_float(student_logits)
    teacher = tf.stop_gradient(tf.cast(teacher_logits, student.dtype))
    _check_same_shape(teacher, "teacher_logits", student, "student_logits")
    valid = _valid_mask(mask, student, "student_logits")

    # Zero the padding first so that whatever it holds cannot leak into the value or the gradients.
    zeros = tf.zeros_like(student)
    student = tf.where(valid, student, zeros)
    teacher = tf.where(valid, teacher, zeros)

    soft_targets = tf.sigmoid(teacher / temperature)
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=soft_targets, logits=student / temperature)
    teacher_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=soft_targets, logits=teacher / temperature)
    losses = bce_weight * temperature**2 * (cross_entropy - teacher_entropy)
    if mse_weight:
        losses += mse_weight * tf.square(student - teacher)

    weights = _element_weights(valid, sample_weight, student, "student_logits")
    return _weighted_mean(losses, weights)


def listwise_kd_loss(
    student_scores: tf.Tensor,
    teacher_scores: tf.Tensor,
    *,
    temperature: float = 1.0,
    mask: tf.Tensor | None = None,
    sample_weight: tf.Tensor | None = None,
) -> tf.Tensor:
    """Listwise distillation: KL divergence between the teacher's and the student's softmax over each list.

    For each row, over its valid entries only,

        p_t = softmax(t / T),   log p_s = log_softmax(s / T),
        loss_row = T² * sum_j p_t[j] * (log p_t[j] - log p_s[j]) = T² * KL(p_t || p_s).

    Masked entries get the logit `float32.min / 100`, so they have exactly zero probability for both
    models and contribute nothing. The loss is 0 when the student equals the teacher, and also when it
    differs by a per-row constant (softmax is shift invariant): only the ranking distribution is matched.

    Rows with fewer than 2 valid entries carry no ranking information (their KL is 0 whatever the scores)
    and are left out of the mean rather than diluting it.

    Args:
      student_scores: `[batch, list_size]` float tensor of student scores.
      teacher_scores: `[batch, list_size]` teacher scores.
      temperature: Positive softening temperature T; the loss is multiplied by T².
      mask: Optional `[batch, list_size]` boolean tensor; `False` marks padding.
      sample_weight: Optional `[batch]` non-negative row weights.

    Returns:
      Scalar: `sum_r(w_r * loss_r) / sum_r(w_r)` over rows with at least 2 valid entries; 0 if there are none.

    Raises:
      ValueError: If `temperature` is not positive, or a shape does not match.
    """
    _check_positive("temperature", temperature)
    student = _as_float(student_scores)
    teacher = tf.stop_gradient(tf.cast(teacher_scores, student.dtype))
    _check_rank(student, "student_scores", 2, "[batch, list_size]")
    _check_same_shape(teacher, "teacher_scores", student, "student_scores")
    valid = _valid_mask(mask, student, "student_scores")

    masked_logit = tf.fill(tf.shape(student), tf.constant(_MASKED_LOGIT, student.dtype))
    student_log_probs = tf.nn.log_softmax(tf.where(valid, student / temperature, masked_logit), axis=-1)
    teacher_log_probs = tf.nn.log_softmax(tf.where(valid, teacher / temperature, masked_logit), axis=-1)
    pointwise = tf.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs)
    row_losses = temperature**2 * tf.reduce_sum(tf.where(valid, pointwise, tf.zeros_like(pointwise)), axis=-1)

    num_valid = tf.reduce_sum(tf.cast(valid, tf.int32), axis=-1)
    row_valid = num_valid >= 2
    weights = _element_weights(row_valid, sample_weight, row_losses, "student_scores rows", shape_note="[batch]")
    return _weighted_mean(row_losses, weights)


def label_softmax_loss(
    scores: tf.Tensor,
    labels: tf.Tensor,
    *,
    mask: tf.Tensor | None = None,
    sample_weight: tf.Tensor | None = None,
) -> tf.Tensor:
    """Listwise softmax cross-entropy of graded labels (a label loss, no teacher): ListNet's top-1 form.

    For each row, over its valid entries only,

        q[j] = y[j] / sum_i y[i],   loss_row = -sum_j q[j] * log_softmax(s)[j].

    It asks the model to put the list's probability mass on its positives, in proportion to their grades, so
    what it learns is the *order within a request*, where a pointwise loss learns each pair's label on its own.
    Rows without a positive label (``sum y = 0``) say nothing about order and are left out of the mean.

    Args:
      scores: `[batch, list_size]` float tensor of model logits.
      labels: `[batch, list_size]` non-negative graded labels (e.g. targets in `[0, 1]`).
      mask: Optional `[batch, list_size]` boolean tensor; `False` marks padding.
      sample_weight: Optional `[batch]` non-negative row weights.

    Returns:
      Scalar: `sum_r(w_r * loss_r) / sum_r(w_r)` over rows with a positive label; 0 if there are none.

    Raises:
      ValueError: If a shape does not match.
    """
    scores = _as_float(scores)
    _check_rank(scores, "scores", 2, "[batch, list_size]")
    labels = tf.cast(labels, scores.dtype)
    _check_same_shape(labels, "labels", scores, "scores")
    valid = _valid_mask(mask, scores, "scores")
    masked_logit = tf.fill(tf.shape(scores), tf.constant(_MASKED_LOGIT, scores.dtype))
    log_probs = tf.nn.log_softmax(tf.where(valid, scores, masked_logit), axis=-1)
    gains = tf.where(valid, tf.maximum(labels, 0.0), tf.zeros_like(labels))
    total = tf.reduce_sum(gains, axis=-1, keepdims=True)
    targets = tf.math.divide_no_nan(gains, total)
    row_losses = -tf.reduce_sum(tf.where(valid, targets * log_probs, tf.zeros_like(log_probs)), axis=-1)
    weights = _element_weights(total[:, 0] > 0, sample_weight, row_losses, "scores rows", shape_note="[batch]")
    return _weighted_mean(row_losses, weights)


def margin_mse_loss(
    student_pos: tf.Tensor,
    student_neg: tf.Tensor,
    teacher_pos: tf.Tensor,
    teacher_neg: tf.Tensor,
    *,
    mask: tf.Tensor | None = None,
    sample_weight: tf.Tensor | None = None,
) -> tf.Tensor:
    """Margin-MSE (Hofstätter et al., 2020): match the teacher's positive-minus-negative score margins.

    Each (positive, negative) pair contributes

        ((s_pos - s_neg) - (t_pos - t_neg))²

    so only score differences are distilled, not the teacher's scale offset. With `[batch, num_negatives]`
    negatives, the `[batch]` positives are broadcast as `[batch, 1]`.

    Args:
      student_pos: `[batch]` (or `[batch, 1]`) student scores of the positives.
      student_neg: `[batch]` or `[batch, num_negatives]` student scores of the negatives.
      teacher_pos: Teacher scores with the shape of `student_pos`.
      teacher_neg: Teacher scores with the shape of `student_neg`.
      mask: Optional boolean tensor with the shape of `student_neg`; `False` marks padded negatives.
      sample_weight: Optional non-negative weights, `[batch]` or the shape of `student_neg`.

    Returns:
      Scalar: the weighted mean of the squared margin error over valid pairs (0 if none is valid).

    Raises:
      ValueError: If a shape does not match.
    """
    s_neg = _as_float(student_neg)
    s_pos = tf.cast(student_pos, s_neg.dtype)
    t_pos = tf.stop_gradient(tf.cast(teacher_pos, s_neg.dtype))
    t_neg = tf.stop_gradient(tf.cast(teacher_neg, s_neg.dtype))
    neg_rank = s_neg.shape.rank
    if neg_rank not in (1, 2):
        raise ValueError(
            f"`student_neg` should have shape [batch] or [batch, num_negatives]. Received: {_shape_str(s_neg)}"
        )
    _check_same_shape(t_neg, "teacher_neg", s_neg, "student_neg")
    _check_same_shape(t_pos, "teacher_pos", s_pos, "student_pos")
    pos_rank = s_pos.shape.rank
    batch = s_neg.shape[:1]
    allowed = [batch] if neg_rank == 1 else [batch, batch.concatenate([1])]
    if pos_rank is None or not any(
        pos_rank == shape.rank and s_pos.shape.is_compatible_with(shape) for shape in allowed
    ):
        expected = " or ".join(_shape_str(shape) for shape in allowed)
        raise ValueError(
            f"`student_pos` should have shape {expected} to match `student_neg` {_shape_str(s_neg)}. "
            f"Received: {_shape_str(s_pos)}"
        )
    if neg_rank == 2 and pos_rank == 1:
        s_pos = s_pos[:, tf.newaxis]
        t_pos = t_pos[:, tf.newaxis]

    valid = _valid_mask(mask, s_neg, "student_neg")
    zeros = tf.zeros_like(s_neg)
    s_margin = tf.where(valid, s_pos - s_neg, zeros)
    t_margin = tf.where(valid, t_pos - t_neg, zeros)
    losses = tf.square(s_margin - t_margin)

    weights = _element_weights(valid, sample_weight, s_neg, "student_neg")
    return _weighted_mean(losses, weights)


def retrieval_kd_loss(
    query_embeddings: tf.Tensor,
    candidate_embeddings: tf.Tensor,
    teacher_scores: tf.Tensor,
    *,
    temperature: float,
    mask: tf.Tensor | None = None,
    sample_weight: tf.Tensor | None = None,
) -> tf.Tensor:
    """Listwise distillation of a two-tower student on per-query candidate lists.

    The student scores are dot products, `s[b, l] = sum_d q[b, d] * c[b, l, d]`, which then go through
    `listwise_kd_loss` (see there for the formula, the masking and the reduction).

    Args:
      query_embeddings: `[batch, dim]` query tower outputs.
      candidate_embeddings: `[batch, list_size, dim]` item tower outputs of each query's candidates.
      teacher_scores: `[batch, list_size]` teacher scores of the same candidates.
      temperature: Positive softening temperature T.
      mask: Optional `[batch, list_size]` boolean tensor; `False` marks padding.
      sample_weight: Optional `[batch]` non-negative row weights.

    Returns:
      Scalar loss, as `listwise_kd_loss`.

    Raises:
      ValueError: If `temperature` is not positive, or a shape does not match.
    """
    _check_positive("temperature", temperature)
    queries = _as_float(query_embeddings)
    candidates = tf.cast(candidate_embeddings, queries.dtype)
    _check_rank(queries, "query_embeddings", 2, "[batch, dim]")
    _check_rank(candidates, "candidate_embeddings", 3, "[batch, list_size, dim]")
    expected = queries.shape[:1].concatenate([None]).concatenate(queries.shape[1:])
    if not candidates.shape.is_compatible_with(expected):
        raise ValueError(
            f"`candidate_embeddings` should have shape [batch, list_size, dim] with the batch and dim of "
            f"`query_embeddings` {_shape_str(queries)}. Received: {_shape_str(candidates)}"
        )
    student_scores = tf.einsum("bd,bld->bl", queries, candidates)
    return listwise_kd_loss(
        student_scores, teacher_scores, temperature=temperature, mask=mask, sample_weight=sample_weight
    )


def in_batch_softmax_loss(
    query_embeddings: tf.Tensor,
    item_embeddings: tf.Tensor,
    *,
    candidate_sampling_probability: tf.Tensor | None = None,
    candidate_ids: tf.Tensor | None = None,
    temperature: float = 1.0,
    sample_weight: tf.Tensor | None = None,
) -> tf.Tensor:
    """In-batch sampled softmax: the loss of `tfrs.tasks.Retrieval`, written out as a function.

    Query `i`'s positive is item `i`; every other item in the batch is a negative. With
    `num_candidates >= num_queries`, items past `num_queries` are extra negatives for every query.

        logits[i, j] = <q_i, v_j> / T - log(clip(P(j), 1e-6, 1))     (logQ correction, if given)
        logits[i, j] = float32.min / 100   for j != i with id(j) == id(i)   (accidental hits, if ids given)
        loss_i = -log_softmax(logits[i])[i]

    This follows TFRS step for step: temperature first, then the sampling-probability correction (with
    TFRS's clipping), then accidental-hit removal. The one difference is the reduction: TFRS's default
    `CategoricalCrossentropy(reduction=SUM)` returns `sum_i w_i * loss_i`, while this returns the weighted
    mean `sum_i w_i * loss_i / sum_i w_i`, so the loss scale does not depend on the batch size.

    Args:
      query_embeddings: `[num_queries, dim]` query tower outputs.
      item_embeddings: `[num_candidates, dim]` item tower outputs; row `i < num_queries` is query `i`'s
        positive.
      candidate_sampling_probability: Optional `[num_candidates]` probability with which each item was
        sampled into the batch (e.g. its frequency), used for the logQ correction.
      candidate_ids: Optional `[num_candidates]` item ids (int or string); when given, other columns with the
        positive's id are removed from each row's softmax.
      temperature: Positive softmax temperature T.
      sample_weight: Optional `[num_queries]` non-negative weights.

    Returns:
      Scalar: the weighted mean of the per-query cross-entropy (0 if all weights are 0).

    Raises:
      ValueError: If `temperature` is not positive, or a shape does not match.
    """
    _check_positive("temperature", temperature)
    queries = _as_float(query_embeddings)
    items = tf.cast(item_embeddings, queries.dtype)
    _check_rank(queries, "query_embeddings", 2, "[num_queries, dim]")
    _check_rank(items, "item_embeddings", 2, "[num_candidates, dim]")
    if not items.shape[1:].is_compatible_with(queries.shape[1:]):
        raise ValueError(
            f"`item_embeddings` should have the embedding dimension of `query_embeddings` {_shape_str(queries)}. "
            f"Received: {_shape_str(items)}"
        )
    num_queries, num_candidates = queries.shape[0], items.shape[0]
    if num_queries is not None and num_candidates is not None and num_candidates < num_queries:
        raise ValueError(
            f"`item_embeddings` should have at least one row per query ({num_queries}): row i is query i's "
            f"positive. Received: {_shape_str(items)}"
        )

    logits = tf.linalg.matmul(queries, items, transpose_b=True) / temperature
    labels = tf.eye(tf.shape(logits)[0], tf.shape(logits)[1], dtype=logits.dtype)

    if candidate_sampling_probability is not None:
        probability = tf.cast(candidate_sampling_probability, logits.dtype)
        _check_candidate_vector(probability, "candidate_sampling_probability", items)
        probability = tf.clip_by_value(probability, _MIN_SAMPLING_PROBABILITY, 1.0)
        logits -= tf.math.log(probability)[tf.newaxis, :]

    if candidate_ids is not None:
        ids = tf.convert_to_tensor(candidate_ids)
        _check_candidate_vector(ids, "candidate_ids", items)
        positive_ids = ids[: tf.shape(logits)[0]]
        accidental_hit = tf.logical_and(
            tf.equal(positive_ids[:, tf.newaxis], ids[tf.newaxis, :]), tf.logical_not(tf.cast(labels, tf.bool))
        )
        logits = tf.where(accidental_hit, tf.constant(_MASKED_LOGIT, logits.dtype), logits)

    losses = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    weights = _element_weights(
        tf.ones_like(losses, dtype=tf.bool), sample_weight, losses, "query_embeddings rows", shape_note="[num_queries]"
    )
    return _weighted_mean(losses, weights)


# --------------------------------------------------------------------------------------------------------------
# Private helpers.


def _as_float(x: tf.Tensor) -> tf.Tensor:
    """Converts to a float tensor: float64 stays float64, everything else is computed in float32."""
    x = tf.convert_to_tensor(x)
    return x if x.dtype == tf.float64 else tf.cast(x, tf.float32)


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` should be a positive float. Received: {name}={value!r}")


def _check_non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` should be a non-negative float. Received: {name}={value!r}")


def _shape_str(x: tf.Tensor | tf.TensorShape) -> str:
    shape = x if isinstance(x, tf.TensorShape) else x.shape
    if shape.rank is None:
        return "<unknown rank>"
    return "[" + ", ".join("None" if d is None else str(d) for d in shape.as_list()) + "]"


def _check_rank(x: tf.Tensor, name: str, rank: int, layout: str) -> None:
    if x.shape.rank != rank:
        raise ValueError(f"`{name}` should have shape {layout}. Received: {_shape_str(x)}")


def _check_same_shape(x: tf.Tensor, name: str, reference: tf.Tensor, reference_name: str) -> None:
    if x.shape.rank is None or reference.shape.rank is None or not x.shape.is_compatible_with(reference.shape):
        raise ValueError(
            f"`{name}` should have the shape of `{reference_name}` {_shape_str(reference)}. Received: {_shape_str(x)}"
        )


def _check_candidate_vector(x: tf.Tensor, name: str, items: tf.Tensor) -> None:
    if x.shape.rank != 1 or not x.shape.is_compatible_with(items.shape[:1]):
        raise ValueError(
            f"`{name}` should have shape [num_candidates] = {_shape_str(items.shape[:1])} (one per row of "
            f"`item_embeddings`). Received: {_shape_str(x)}"
        )


def _valid_mask(mask: tf.Tensor | None, reference: tf.Tensor, reference_name: str) -> tf.Tensor:
    """Returns a boolean tensor of `reference`'s shape, all `True` when `mask` is None."""
    if mask is None:
        return tf.ones_like(reference, dtype=tf.bool)
    mask = tf.convert_to_tensor(mask)
    if mask.dtype != tf.bool:
        raise ValueError(f"`mask` should be a boolean tensor (True = valid). Received: dtype={mask.dtype.name}")
    _check_same_shape(mask, "mask", reference, reference_name)
    return mask


def _element_weights(
    valid: tf.Tensor,
    sample_weight: tf.Tensor | None,
    reference: tf.Tensor,
    reference_name: str,
    *,
    shape_note: str | None = None,
) -> tf.Tensor:
    """Returns `valid * sample_weight` broadcast to `reference`'s shape, in its dtype.

    `sample_weight`'s shape must be a prefix of `reference`'s shape; it is broadcast over the trailing axes.
    """
    weights = tf.cast(valid, reference.dtype)
    if sample_weight is None:
        return weights
    sample_weight = tf.cast(sample_weight, reference.dtype)
    rank, reference_rank = sample_weight.shape.rank, reference.shape.rank
    if (
        rank is None
        or reference_rank is None
        or rank > reference_rank
        or not sample_weight.shape.is_compatible_with(reference.shape[:rank])
    ):
        expected = shape_note or f"a prefix of {_shape_str(reference)}, e.g. [batch]"
        raise ValueError(
            f"`sample_weight` should have shape {expected} to match `{reference_name}` {_shape_str(reference)}. "
            f"Received: {_shape_str(sample_weight)}"
        )
    sample_weight = tf.reshape(sample_weight, tf.concat([tf.shape(sample_weight), [1] * (reference_rank - rank)], 0))
    return weights * sample_weight


def _weighted_mean(losses: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """`sum(weights * losses) / sum(weights)`, 0 when the weights sum to 0; masked losses must already be finite."""
    losses = tf.where(weights > 0, losses, tf.zeros_like(losses))
    return tf.math.divide_no_nan(tf.reduce_sum(weights * losses), tf.reduce_sum(weights))
