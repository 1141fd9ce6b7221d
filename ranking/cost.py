"""Analytical compute cost of the per-pair part of a ranker.

What is counted, per (query, item) pair, as multiply-adds (one multiply-add = 2 FLOPs):

- a ``Dense(out)`` layer reading ``in`` features: ``in * out`` (bias adds and activations are not counted);
- a full-rank DCN-v2 ``Cross`` layer of width ``d``: ``d * d`` for ``W x`` plus ``d`` for ``x0 ⊙ (W x + b)``;
  a low-rank one with projection ``r``: ``d * r + r * d + d``;
- a dot product of two ``e``-wide vectors (embedding cosines, tower dot products): ``e``.

Not counted: embedding lookups and pooling (they are per query or per item, not per pair, and free of
multiply-adds), L2 normalisations of one side, and the comparisons of the explicit cross features (about
``query_tokens x title_tokens + 3 x history`` integer compares per pair, identical for teacher and student).
"""

from __future__ import annotations

import tensorflow_recommenders as tfrs
import tf_keras as keras


def flops_per_pair(model: keras.Model) -> int:
    """``2 x`` the multiply-adds of the model's per-pair part (see the module docstring).

    Args:
        model: A `TeacherRanker` or `StudentRanker` (anything with ``multiply_adds_per_pair()``).

    Returns:
        FLOPs per scored (query, item) pair.
    """
    if not hasattr(model, "multiply_adds_per_pair"):
        raise TypeError(
            f"`model` should be a TeacherRanker or StudentRanker (with multiply_adds_per_pair()). "
            f"Received: {type(model).__name__}"
        )
    return 2 * int(model.multiply_adds_per_pair())


def dense_multiply_adds(layer: keras.layers.Dense) -> int:
    """``in * out`` of a built ``Dense`` layer."""
    if not layer.built:
        raise ValueError(f"Layer {layer.name!r} is not built: call the model on a batch first.")
    rows, columns = layer.kernel.shape
    return int(rows) * int(columns)


def cross_multiply_adds(layer: tfrs.layers.dcn.Cross, input_dim: int) -> int:
    """``d^2 + d`` (full rank) or ``2 d r + d`` (rank ``r``) of a DCN-v2 ``Cross`` layer of width ``d``."""
    rank = layer.get_config()["projection_dim"]
    if rank is None:
        return input_dim * input_dim + input_dim
    return 2 * input_dim * rank + input_dim
