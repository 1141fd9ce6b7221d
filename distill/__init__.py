"""Distillation: losses, negative mining and the cascade distillation trainer."""

import features  # noqa: F401  (selects Keras 2 before anything can touch tf.keras)
from distill.losses import (
    in_batch_softmax_loss,
    label_softmax_loss,
    listwise_kd_loss,
    margin_mse_loss,
    pointwise_kd_loss,
    retrieval_kd_loss,
)

__all__ = [
    "in_batch_softmax_loss",
    "label_softmax_loss",
    "listwise_kd_loss",
    "margin_mse_loss",
    "pointwise_kd_loss",
    "retrieval_kd_loss",
]
