"""Label-only training of a ranker: binary cross-entropy with logits on graded targets in ``[0, 1]``."""

from __future__ import annotations

import logging

import tensorflow as tf
import tf_keras as keras

logger = logging.getLogger(__name__)


def graded_bce(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-pair binary cross-entropy of soft targets, ``-y log σ(s) - (1 - y) log(1 - σ(s))``.

    Args:
        labels: ``[batch]`` graded targets in ``[0, 1]`` (`ranking.pairs.graded_target`).
        logits: ``[batch]`` model logits.

    Returns:
        ``[batch]`` losses (Keras averages them over the batch).
    """
    labels = tf.cast(tf.reshape(labels, tf.shape(logits)), logits.dtype)
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)


def compile_ranker(model: keras.Model, *, learning_rate: float = 1e-3) -> None:
    """Compiles a ranker for label-only training: Adam, `graded_bce`, and AUC on the logits as a metric."""
    if not learning_rate > 0:
        raise ValueError(f"`learning_rate` should be a positive number. Received: learning_rate={learning_rate!r}")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=graded_bce,
        metrics=[keras.metrics.AUC(from_logits=True, name="auc")],
    )


def train_ranker(
    model: keras.Model,
    dataset: tf.data.Dataset,
    *,
    epochs: int = 1,
    learning_rate: float = 1e-3,
    validation_data: tf.data.Dataset | None = None,
    verbose: int = 0,
) -> dict[str, list[float]]:
    """Trains a `TeacherRanker` or `StudentRanker` on labelled pairs with BCE on the graded targets.

    The model is compiled with `compile_ranker` and fitted with ``keras.Model.fit``; its ``train_step`` is
    Keras' own, so a subclass (e.g. a distillation trainer) changes training by overriding ``train_step`` or
    ``compute_loss`` and nothing else.

    Args:
        model: The ranker.
        dataset: ``({"query": ..., "item": ...}, labels)`` batches, e.g. `ranking.pairs.make_pair_dataset`.
        epochs: Passes over ``dataset``.
        learning_rate: Adam's learning rate.
        validation_data: Optional dataset of the same form, evaluated after every epoch.
        verbose: Keras' verbosity (0: silent).

    Returns:
        The Keras history: ``{"loss": [...], "auc": [...], "val_loss": [...], "val_auc": [...]}``, one value per
        epoch.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"`epochs` should be a positive integer. Received: epochs={epochs!r}")
    compile_ranker(model, learning_rate=learning_rate)
    history = model.fit(dataset, epochs=epochs, validation_data=validation_data, verbose=verbose)
    logger.info("trained %s for %d epochs: %s", model.name, epochs, {k: v[-1] for k, v in history.history.items()})
    return {key: [float(v) for v in values] for key, values in history.history.items()}
