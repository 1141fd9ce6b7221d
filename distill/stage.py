"""One resumable training stage: a seeded epoch loop with checkpoints, TensorBoard logs and a progress bar.

Each stage (teacher, two-tower, ranking student; each mode) runs through `run_stage`. The stage's state — the
model's variables and the `tf.random.Generator`s it owns (the towers' id dropout), the optimizer's slots, the
epoch and the step within the epoch — is saved with `tf.train.CheckpointManager` every ``checkpoint_every`` steps
and at every epoch end. Epoch ``e``'s batches come from ``make_dataset(e)``, which must be deterministic in ``e``
(shuffle seeded by it), so a stage killed mid-epoch restarts from its last checkpoint, skips the batches it had
already taken and ends where an uninterrupted run would have. Random draws from TensorFlow's op-level state
(``tf.random.uniform``, Keras ``Dropout`` with a rate above 0) are in no checkpoint: after a resume they differ.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


@dataclass
class StageResult:
    """What a stage did.

    Attributes:
        name: The stage's name (also its checkpoint and log folder).
        epoch_losses: Mean training loss of each epoch, resumed epochs included (read back from the log).
        steps: Optimizer steps taken in total.
        seconds: Wall time of this run (not of earlier, interrupted runs).
        resumed_from: ``(epoch, step)`` the run started from; ``(0, 0)`` for a fresh start.
    """

    name: str
    epoch_losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    resumed_from: tuple[int, int] = (0, 0)


def make_train_step(
    model: tf.keras.Model,
    optimizer: tf.keras.optimizers.Optimizer,
    loss_fn: Callable[[dict], tf.Tensor],
    *,
    strategy: tf.distribute.Strategy | None = None,
) -> Callable[[dict], tf.Tensor]:
    """A compiled step: ``loss_fn(batch)`` plus the model's regularization losses, one optimizer update.

    Args:
        model: Whose trainable variables are updated (and whose ``losses`` are added).
        optimizer: The optimizer.
        loss_fn: ``batch -> scalar loss``, computed in training mode; it is traced under the gradient tape.
        strategy: A `tf.distribute.Strategy` whose scope created ``model`` and ``optimizer``, or ``None`` (one
            device). With a strategy the step takes a distributed batch (an element of
            ``strategy.experimental_distribute_dataset(...)``); each replica computes ``loss_fn`` on its share,
            the gradients of ``loss / num_replicas`` are summed across replicas by ``apply_gradients``, and the
            step returns the replicas' mean loss. For a loss that is a mean over equally many examples on every
            replica (batch the global dataset with ``drop_remainder=True``) that is the gradient and the loss of
            the global batch. It is not for a loss that couples the examples of a batch: the two-tower's
            in-batch softmax then draws its negatives from the replica's share only.
    """
    if strategy is not None:
        return _make_distributed_train_step(model, optimizer, loss_fn, strategy)

    @tf.function
    def step(batch: dict) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(batch)
            if model.losses:
                loss += tf.add_n(model.losses)
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    return step


def _make_distributed_train_step(
    model: tf.keras.Model,
    optimizer: tf.keras.optimizers.Optimizer,
    loss_fn: Callable[[dict], tf.Tensor],
    strategy: tf.distribute.Strategy,
) -> Callable[[dict], tf.Tensor]:
    """`make_train_step` under ``strategy``: one update from the replicas' summed, ``1 / num_replicas`` gradients."""

    def replica_step(batch: dict) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(batch)
            if model.losses:
                loss += tf.add_n(model.losses)
            # `apply_gradients` sums the replicas' gradients: scale so that the sum is their mean.
            scaled = loss / strategy.num_replicas_in_sync
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables, strict=True))
        return loss

    @tf.function
    def step(batch: dict) -> tf.Tensor:
        losses = strategy.run(replica_step, args=(batch,))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, losses, axis=None)

    return step


def run_stage(
    *,
    name: str,
    model: tf.Module,
    optimizer: tf.keras.optimizers.Optimizer,
    train_step: Callable[[dict], tf.Tensor],
    make_dataset: Callable[[int], tf.data.Dataset],
    epochs: int,
    directory: Path | None,
    on_epoch_start: Callable[[int], None] | None = None,
    checkpoint_every: int = 200,
    show_progress: bool = True,
) -> StageResult:
    """Runs (or resumes) ``epochs`` epochs of ``train_step`` over ``make_dataset(epoch)``.

    Args:
        name: Stage name, used for the checkpoint folder ``directory/name/checkpoints`` and TensorBoard logs
            ``directory/name/logs``.
        model: Everything trainable (saved in the checkpoint); built, so that its variables exist.
        optimizer: The optimizer (its slots are saved too).
        train_step: ``batch -> loss``; applies one update. Wrap it in `tf.function` for speed.
        make_dataset: ``epoch -> tf.data.Dataset``, deterministic in ``epoch``.
        epochs: Total epochs of the stage (a resumed stage runs only what is left).
        directory: Where checkpoints and logs go; ``None`` trains without either (tests, throwaway runs).
        on_epoch_start: Called with the epoch index before its first batch (e.g. to re-mine negatives); on a
            resume it is called again for the interrupted epoch, so it must be deterministic or cached.
        checkpoint_every: Save every this many steps (and always at each epoch end).
        show_progress: Show a progress bar per epoch.

    Returns:
        A `StageResult`.
    """
    if epochs <= 0:
        raise ValueError(f"`epochs` should be a positive integer. Received: epochs={epochs}")
    if checkpoint_every <= 0:
        raise ValueError(
            f"`checkpoint_every` should be a positive integer. Received: checkpoint_every={checkpoint_every}"
        )
    # Keras 2's optimizers keep their slots in a list that a checkpoint cannot restore into lazily: create them
    # now (the model must be built) so a resumed stage gets its Adam moments back, not fresh zeros.
    if hasattr(optimizer, "build") and not getattr(optimizer, "_built", False):
        if not model.trainable_variables:
            raise ValueError(f"{name}: build the model (call it once) before `run_stage`, so its variables exist")
        optimizer.build(model.trainable_variables)
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
    total_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="total_steps")
    loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="loss_sum")
    losses_so_far = tf.Variable(tf.zeros([epochs], tf.float64), trainable=False, name="epoch_losses")
    checkpoint = tf.train.Checkpoint(
        model=model,
        optimizer=optimizer,
        epoch=epoch_var,
        step_in_epoch=step_in_epoch,
        total_steps=total_steps,
        loss_sum=loss_sum,
        epoch_losses=losses_so_far,
    )
    manager = None
    writer = None
    if directory is not None:
        stage_dir = Path(directory) / name
        manager = tf.train.CheckpointManager(checkpoint, str(stage_dir / "checkpoints"), max_to_keep=2)
        if manager.latest_checkpoint:
            checkpoint.restore(manager.latest_checkpoint).expect_partial()
            logger.info("%s: resumed from %s", name, manager.latest_checkpoint)
        writer = tf.summary.create_file_writer(str(stage_dir / "logs"))
    start_epoch, start_step = int(epoch_var.numpy()), int(step_in_epoch.numpy())
    result = StageResult(name=name, resumed_from=(start_epoch, start_step))
    started = time.perf_counter()

    for epoch in range(start_epoch, epochs):
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        skip = int(step_in_epoch.numpy()) if epoch == start_epoch else 0
        batches = make_dataset(epoch)
        if skip:
            batches = batches.skip(skip)
        bar = tqdm(
            batches,
            desc=f"{name} epoch {epoch + 1}/{epochs}",
            disable=True if not show_progress else None,  # None: no bar when stderr is not a terminal
            leave=False,
            initial=skip,
        )
        for batch in bar:
            loss = float(train_step(batch))
            if not np.isfinite(loss):
                raise FloatingPointError(
                    f"{name}: the training loss became {loss} at epoch {epoch + 1}, step {int(step_in_epoch.numpy())}; "
                    "lower the learning rate or check the inputs"
                )
            loss_sum.assign_add(loss)
            step_in_epoch.assign_add(1)
            total_steps.assign_add(1)
            if writer is not None and int(total_steps.numpy()) % 20 == 0:
                with writer.as_default():
                    tf.summary.scalar("loss/step", loss, step=int(total_steps.numpy()))
            if manager is not None and int(total_steps.numpy()) % checkpoint_every == 0:
                manager.save(checkpoint_number=int(total_steps.numpy()))
            bar.set_postfix(loss=f"{loss:.4f}")
        steps = max(int(step_in_epoch.numpy()), 1)
        mean_loss = float(loss_sum.numpy()) / steps
        losses_so_far[epoch].assign(mean_loss)
        logger.info("%s epoch %d/%d: loss %.5f (%d steps)", name, epoch + 1, epochs, mean_loss, steps)
        if writer is not None:
            with writer.as_default():
                tf.summary.scalar("loss/epoch", mean_loss, step=epoch + 1)
            writer.flush()
        epoch_var.assign(epoch + 1)
        step_in_epoch.assign(0)
        loss_sum.assign(0.0)
        if manager is not None:
            manager.save(checkpoint_number=int(total_steps.numpy()))
    result.epoch_losses = [float(v) for v in losses_so_far.numpy()]
    result.steps = int(total_steps.numpy())
    result.seconds = time.perf_counter() - started
    return result
