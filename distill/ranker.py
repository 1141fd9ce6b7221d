"""Training the ranking student on per-query candidate lists, label-only or distilled from the teacher.

A list holds a request's logged items (impressions and positives, with their graded targets), its sampled
negatives, and candidates the two-tower student retrieves for it (what the ranker re-ranks at serving time;
labelled 0 unless logged). The loss of one batch of lists::

    label_weight * BCE(student, graded targets)                      # both modes
  + softmax_weight * softmax CE(student, graded targets)             # both modes (`label_softmax_loss`)
  + pointwise_weight * binary KL(teacher ‖ student) at temperature T  # distilled only
  + listwise_weight * KL(softmax(teacher / T) ‖ softmax(student / T)) # distilled only

The label-only twin is the same model trained on the same lists with the same step budget and only the
first term.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from distill.losses import label_softmax_loss, listwise_kd_loss, pointwise_kd_loss
from distill.mining import PAD
from distill.stage import make_train_step


@dataclass(frozen=True)
class RankerLossWeights:
    """Weights of the ranking student's loss terms (see the module docstring)."""

    label_weight: float = 1.0
    pointwise_weight: float = 0.0
    listwise_weight: float = 0.0
    temperature: float = 1.0
    softmax_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("label_weight", "pointwise_weight", "listwise_weight", "softmax_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` should be a non-negative float. Received: {name}={getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"`temperature` should be a positive float. Received: temperature={self.temperature}")

    @property
    def uses_teacher(self) -> bool:
        return self.pointwise_weight > 0 or self.listwise_weight > 0


@dataclass
class RankingLists:
    """Per-query candidate lists for the ranking student.

    Attributes:
        query_index: ``[num_lists]`` rows of the encoded query table.
        item_rows: ``[num_lists, list_size]`` catalog rows, ``PAD`` (-1) where empty.
        labels: ``[num_lists, list_size]`` float32 graded targets (0 for negatives and unlogged candidates).
        teacher_scores: ``[num_lists, list_size]`` float32 teacher logits, or ``None`` (label-only).
    """

    query_index: np.ndarray
    item_rows: np.ndarray
    labels: np.ndarray
    teacher_scores: np.ndarray | None = None


def group_pairs_into_lists(query_index: np.ndarray, item_rows: np.ndarray, labels: np.ndarray, *, max_size: int):
    """Groups labelled pairs by query into padded lists of at most ``max_size`` pairs, best labels first.

    Within a query, pairs are ordered by label (highest first, ties in input order), so truncation drops
    negatives before positives.

    Returns:
        ``(queries [num_lists], rows [num_lists, size], labels [num_lists, size], num_truncated)`` with
        ``size = min(max_size, longest list)``; pairs beyond ``max_size`` are counted, not kept.
    """
    order = np.lexsort((-np.asarray(labels, dtype=np.float64), query_index))
    q = query_index[order]
    starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]])
    counts = np.diff(np.r_[starts, len(q)])
    position = np.arange(len(q)) - np.repeat(starts, counts)
    size = int(min(max_size, counts.max())) if len(counts) else 0
    keep = position < size
    lists = np.repeat(np.arange(len(starts)), counts)
    rows = np.full((len(starts), size), PAD, dtype=np.int64)
    values = np.zeros((len(starts), size), dtype=np.float32)
    rows[lists[keep], position[keep]] = item_rows[order][keep]
    values[lists[keep], position[keep]] = labels[order][keep]
    return q[starts], rows, values, int((~keep).sum())


def append_candidates(lists: RankingLists, candidates: np.ndarray, *, limit: int) -> RankingLists:
    """Adds up to ``limit`` candidate rows per list (label 0), skipping items already in the list.

    Args:
        lists: The lists to extend.
        candidates: ``[num_lists, c]`` candidate rows in preference order, ``PAD`` padded.
        limit: How many to add at most.
    """
    existing = lists.item_rows
    fresh = candidates[:, :, None] != existing[:, None, :]
    new = np.where(fresh.all(axis=2) & (candidates != PAD), candidates, PAD)
    # Keep the first `limit` valid ones in order.
    rank = np.cumsum(new != PAD, axis=1)
    new = np.where((rank <= limit) & (new != PAD), new, PAD)
    packed = np.full((len(new), limit), PAD, dtype=np.int64)
    r, c = np.nonzero(new != PAD)
    packed[r, rank[r, c] - 1] = new[r, c]
    return RankingLists(
        query_index=lists.query_index,
        item_rows=np.concatenate([existing, packed], axis=1),
        labels=np.concatenate([lists.labels, np.zeros(packed.shape, np.float32)], axis=1),
        teacher_scores=None,
    )


def list_scores(
    model: Callable, queries: Mapping[str, tf.Tensor], rows: tf.Tensor, catalog: Mapping[str, tf.Tensor], training: bool
) -> tf.Tensor:
    """A pairwise ranker's logits of ``[batch, list_size]`` candidate rows for ``[batch]`` queries."""
    size = tf.shape(rows)[1]
    flat = tf.reshape(tf.maximum(rows, 0), [-1])
    query = {k: tf.repeat(v, size, axis=0) for k, v in queries.items()}
    item = {k: tf.gather(v, flat) for k, v in catalog.items()}
    logits = model({"query": query, "item": item}, training=training)
    return tf.reshape(logits, [-1, size])


def make_ranker_train_step(
    model: tf.keras.Model,
    optimizer: tf.keras.optimizers.Optimizer,
    catalog: Mapping[str, np.ndarray],
    weights: RankerLossWeights,
    *,
    strategy: tf.distribute.Strategy | None = None,
) -> Callable[[dict], tf.Tensor]:
    """A compiled step over batches ``{"query", "rows", "labels"[, "teacher"]}`` (see `make_list_dataset`).

    With a ``strategy`` the step takes distributed batches (see `distill.stage.make_train_step`).
    """
    catalog_tensors = {k: tf.constant(np.asarray(v)) for k, v in catalog.items()}

    def loss_fn(batch: dict) -> tf.Tensor:
        rows = batch["rows"]
        mask = tf.greater_equal(rows, 0)
        scores = list_scores(model, batch["query"], rows, catalog_tensors, training=True)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=batch["labels"], logits=scores)
        valid = tf.cast(mask, scores.dtype)
        loss = weights.label_weight * tf.math.divide_no_nan(tf.reduce_sum(bce * valid), tf.reduce_sum(valid))
        if weights.softmax_weight > 0:
            loss += weights.softmax_weight * label_softmax_loss(scores, batch["labels"], mask=mask)
        if weights.pointwise_weight > 0:
            loss += weights.pointwise_weight * pointwise_kd_loss(
                scores, batch["teacher"], temperature=weights.temperature, mask=mask
            )
        if weights.listwise_weight > 0:
            loss += weights.listwise_weight * listwise_kd_loss(
                scores, batch["teacher"], temperature=weights.temperature, mask=mask
            )
        return loss

    return make_train_step(model, optimizer, loss_fn, strategy=strategy)


def make_list_dataset(
    lists: RankingLists, queries: Mapping[str, np.ndarray], *, batch_size: int, epoch: int, seed: int
) -> tf.data.Dataset:
    """Batches of lists in an order that depends only on ``(seed, epoch)`` (so a resumed stage repeats it)."""
    order = np.random.default_rng([seed, epoch]).permutation(len(lists.query_index))
    data = {
        "query": {k: np.asarray(v)[lists.query_index[order]] for k, v in queries.items()},
        "rows": lists.item_rows[order].astype(np.int32),
        "labels": lists.labels[order],
    }
    if lists.teacher_scores is not None:
        data["teacher"] = lists.teacher_scores[order]
    return tf.data.Dataset.from_tensor_slices(data).batch(batch_size).prefetch(tf.data.AUTOTUNE)
