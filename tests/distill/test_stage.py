"""A stage interrupted mid-epoch resumes from its checkpoint and ends exactly where an uninterrupted run ends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from distill.stage import run_stage


class _Interrupt(RuntimeError):
    pass


def _setup(seed: int = 0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    model.build((None, 4))
    optimizer = keras.optimizers.Adam(0.01)
    rng = np.random.default_rng(0)  # the data never change; only the initial weights follow `seed`
    x = rng.normal(size=(256, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0], dtype=np.float32))[:, None]

    def make_dataset(epoch: int) -> tf.data.Dataset:
        # The order depends on the epoch alone (numpy, not TF's global seed), as `run_stage` requires.
        order = np.random.default_rng(epoch).permutation(len(x))
        return tf.data.Dataset.from_tensor_slices((x[order], y[order])).batch(16)

    @tf.function
    def step(batch):
        features, labels = batch
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(features) - labels))
        optimizer.apply_gradients(
            zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables, strict=True)
        )
        return loss

    return model, optimizer, step, make_dataset


def test_resume_after_a_mid_epoch_crash_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    model, optimizer, step, make_dataset = _setup()
    reference = run_stage(
        name="s",
        model=model,
        optimizer=optimizer,
        train_step=step,
        make_dataset=make_dataset,
        epochs=3,
        directory=tmp_path / "ref",
        checkpoint_every=5,
        show_progress=False,
    )
    expected = [v.numpy() for v in model.variables]
    assert reference.epoch_losses[-1] < reference.epoch_losses[0]

    model, optimizer, step, make_dataset = _setup()
    calls = {"n": 0}

    def crashing_step(batch):
        calls["n"] += 1
        if calls["n"] == 23:  # epoch 2 (16 steps per epoch), after the checkpoint at step 20
            raise _Interrupt
        return step(batch)

    with pytest.raises(_Interrupt):
        run_stage(
            name="s",
            model=model,
            optimizer=optimizer,
            train_step=crashing_step,
            make_dataset=make_dataset,
            epochs=3,
            directory=tmp_path / "run",
            checkpoint_every=5,
            show_progress=False,
        )
    # A new process would rebuild everything from scratch: so do we, with another seed to prove the restore.
    model, optimizer, step, make_dataset = _setup(seed=99)
    resumed = run_stage(
        name="s",
        model=model,
        optimizer=optimizer,
        train_step=step,
        make_dataset=make_dataset,
        epochs=3,
        directory=tmp_path / "run",
        checkpoint_every=5,
        show_progress=False,
    )
    assert resumed.resumed_from == (1, 4)
    assert resumed.steps == reference.steps == 48
    for got, want in zip([v.numpy() for v in model.variables], expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(resumed.epoch_losses, reference.epoch_losses, rtol=1e-6)
    assert any((tmp_path / "run" / "s" / "logs").iterdir())


def test_bad_arguments() -> None:
    model, optimizer, step, make_dataset = _setup()
    with pytest.raises(ValueError, match=r"`epochs` should be a positive integer. Received: epochs=0"):
        run_stage(
            name="s",
            model=model,
            optimizer=optimizer,
            train_step=step,
            make_dataset=make_dataset,
            epochs=0,
            directory=None,
        )
