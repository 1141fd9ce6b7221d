"""A real training process killed with SIGKILL mid-epoch resumes from its last checkpoint and ends exactly where an
uninterrupted run ends.

`test_stage.py` interrupts `run_stage` in-process with an exception; here the process itself dies (no ``finally``,
no flush, no atexit) while it trains the label-only two-tower stage of `distill.trainer` — the stage whose
training draws random numbers (id dropout), so its random generator's position must come back from the
checkpoint too, not only the weights, the optimizer's moments and the place in the epoch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

STAGE = "two_tower_label_only"

# The child: the two-tower stage exactly as `train_cascade` runs it (seeded, with checkpoints under `directory`),
# on a shop small enough to train in seconds. Batches of 2 give ~350 steps per epoch, so the trainer's
# checkpoint every 200 steps falls inside an epoch with ~150 steps to spare before the epoch-end checkpoint.
CHILD = """
import json
import logging
import sys
from pathlib import Path

import numpy as np

import features
from distill.trainer import TwoTowerStage, train_two_tower
from ranking.pairs import make_labelled_pairs
from retrieval import TowerConfig

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
directory, out = Path(sys.argv[1]), Path(sys.argv[2])
shop = features.generate_shop(
    features.SyntheticConfig(num_users=150, num_items=120, num_interactions=10_000, seed=5)
)
split = features.temporal_leave_last_out(shop.dataset)
encoders = features.FeatureEncoders.fit(shop.dataset, split.train)
catalog = encoders.encode_items(shop.dataset.items)
pairs = make_labelled_pairs(shop.dataset, split.train, encoders, negatives_per_query=2, popularity_mix=0.5, seed=0)
stage = TwoTowerStage(epochs=2, batch_size=2, tower=TowerConfig(embedding_dim=4, hidden_dims=(8,), output_dim=8))
assert stage.tower.id_dropout > 0  # the randomness a resume must replay
model, result = train_two_tower(
    "label_only", pairs, shop.dataset, encoders, catalog, None, stage, directory=directory, seed=0,
    show_progress=False,
)
np.savez(out / "weights.npz", *[v.numpy() for v in model.variables])
(out / "result.json").write_text(json.dumps(
    {"resumed_from": list(result.resumed_from), "steps": result.steps, "epoch_losses": result.epoch_losses}
))
"""


def _start(script: Path, root: Path, log: str = "stderr.txt") -> subprocess.Popen:
    (root / "out").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with (root / log).open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, str(script), str(root / "checkpoints"), str(root / "out")],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
        )


def _finish(process: subprocess.Popen, root: Path, log: str = "stderr.txt") -> dict:
    assert process.wait(timeout=300) == 0, (root / log).read_text()[-3000:]
    return json.loads((root / "out" / "result.json").read_text())


def _checkpoint_position(checkpoints: Path) -> tuple[int, int, int]:
    """``(epoch, step_in_epoch, total_steps)`` saved in the latest checkpoint of ``checkpoints``."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(checkpoints)))
    return tuple(
        int(reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE"))
        for name in ("epoch", "step_in_epoch", "total_steps")
    )


def test_a_stage_killed_mid_epoch_resumes_and_ends_like_an_uninterrupted_run(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    reference_process = _start(script, tmp_path / "reference")  # runs beside the killed one: same inputs
    killed_process = _start(script, tmp_path / "killed")
    state = tmp_path / "killed" / "checkpoints" / STAGE / "checkpoints" / "checkpoint"
    deadline = time.monotonic() + 240
    while not state.exists():  # the first checkpoint, at step 200 of ~350 in epoch 1
        assert killed_process.poll() is None, (tmp_path / "killed" / "stderr.txt").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared within 240 s"
        time.sleep(0.01)
    # Let a few more steps run past the checkpoint, so the resumed run has steps to take again (seeded delay).
    time.sleep(float(np.random.default_rng(7).uniform(0.05, 0.3)))
    killed_process.send_signal(signal.SIGKILL)
    assert killed_process.wait(timeout=60) == -signal.SIGKILL
    epoch, step, total = _checkpoint_position(state.parent)
    assert step > 0, f"the kill should land mid-epoch; the latest checkpoint is at the end of epoch {epoch}"

    # The restart is the same command, on the same directory.
    resumed = _finish(
        _start(script, tmp_path / "killed", "stderr_restart.txt"), tmp_path / "killed", "stderr_restart.txt"
    )
    reference = _finish(reference_process, tmp_path / "reference")
    assert tuple(resumed["resumed_from"]) == (epoch, step) != (0, 0), resumed
    assert f"{STAGE}: resumed from" in (tmp_path / "killed" / "stderr_restart.txt").read_text()
    assert tuple(reference["resumed_from"]) == (0, 0)
    assert resumed["steps"] == reference["steps"] > total

    # Tolerance: rtol 1e-6 / atol 1e-7, i.e. float32 rounding only. Each epoch's batches are a function of the
    # epoch (seeded permutation), the resumed run skips exactly the batches the checkpoint had taken, and id
    # dropout draws from a generator restored with the weights, so the same updates happen in the same order
    # (on CPU the runs are in fact bitwise equal). Before the generator was checkpointed the resumed weights
    # differed by ~0.1: id dropout restarted its random stream at the checkpoint.
    got = np.load(tmp_path / "killed" / "out" / "weights.npz")
    want = np.load(tmp_path / "reference" / "out" / "weights.npz")
    assert got.files == want.files
    for key in want.files:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-7, err_msg=key)
    np.testing.assert_allclose(resumed["epoch_losses"], reference["epoch_losses"], rtol=1e-6)
