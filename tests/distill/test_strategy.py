"""The models build and train under `tf.distribute.MirroredStrategy`, with two replicas on the CPU.

Logical devices can only be configured before TensorFlow initialises its runtime, which other tests have done
in the pytest process by now, so `_check_two_replicas` runs in a fresh interpreter and prints its measurements
as JSON; the test asserts on them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _check_two_replicas() -> dict:
    """Builds and trains the teacher, the ranking student and the two-tower model under a 2-replica strategy.

    Returns:
        Per model: variable types, mean loss of each of 3 epochs, largest difference between the replicas'
        copies of a trainable variable; and ``"one_step"``: one update of the student on one global batch with
        and without the strategy, from equal weights.
    """
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    # Tracing and graph rewriting, not running, dominate these tiny steps: skip grappler's rewrites.
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    from conftest import make_tiny_shop

    from distill.ranker import RankerLossWeights, group_pairs_into_lists, make_ranker_train_step
    from distill.stage import make_train_step
    from distill.two_tower import DistilledTwoTowerModel
    from features import FeatureEncoders
    from ranking import StudentConfig, StudentRanker, TeacherConfig, TeacherRanker
    from ranking.pairs import make_labelled_pairs
    from retrieval import ItemTower, QueryTower, TowerConfig
    from retrieval.model import RetrievalConfig, item_sampling_probability

    shop = make_tiny_shop()
    encoders = FeatureEncoders.fit(shop, shop.interactions)
    catalog = encoders.encode_items(shop.items)
    num_items = len(next(iter(catalog.values())))
    pairs = make_labelled_pairs(shop, shop.interactions, encoders, negatives_per_query=4, seed=0)
    query_index, rows, labels, _ = group_pairs_into_lists(pairs.query_index, pairs.item_rows, pairs.labels, max_size=8)
    lists = {
        "query": {k: np.asarray(v)[query_index] for k, v in pairs.queries.items()},
        "rows": rows.astype(np.int32),
        "labels": labels,
    }
    # Global batches of 4 lists, 2 per replica (`drop_remainder`: every replica gets an equal share).
    list_batches = tf.data.Dataset.from_tensor_slices(lists).batch(4, drop_remainder=True).cache()
    weights = RankerLossWeights(label_weight=1.0, softmax_weight=1.0)
    report: dict = {"num_replicas": strategy.num_replicas_in_sync}

    def train(name: str, model: keras.Model, step, batches: tf.data.Dataset) -> None:
        distributed = strategy.experimental_distribute_dataset(batches)
        report[name] = {
            "variable_types": sorted({type(v).__name__ for v in model.variables}),
            "epoch_losses": [float(np.mean([float(step(b)) for b in distributed])) for _ in range(3)],
            "replica_difference": max(
                float(np.max(np.abs(v.values[0].numpy() - v.values[1].numpy()))) for v in model.trainable_variables
            ),
        }

    keras.utils.set_random_seed(0)
    with strategy.scope():
        teacher = TeacherRanker(encoders, catalog, TeacherConfig(embedding_dim=8, deep_layers=(32, 16)))
        optimizer = keras.optimizers.Adam(1e-2)
        optimizer.build(teacher.trainable_variables)  # as `run_stage` does; slots made in the step trace slowly
    train(
        "teacher",
        teacher,
        make_ranker_train_step(teacher, optimizer, catalog, weights, strategy=strategy),
        list_batches,
    )

    student_config = StudentConfig(embedding_dim=4, deep_layers=(16,))
    with strategy.scope():
        student = StudentRanker(encoders, catalog, student_config)
        optimizer = keras.optimizers.Adam(1e-2)
        optimizer.build(student.trainable_variables)
    train(
        "student",
        student,
        make_ranker_train_step(student, optimizer, catalog, weights, strategy=strategy),
        list_batches,
    )

    positive = pairs.labels > 0
    pair_queries, pair_rows = pairs.query_index[positive], pairs.item_rows[positive]
    rng = np.random.default_rng(0)
    tower_data = {
        "query": {k: np.asarray(v)[pair_queries] for k, v in pairs.queries.items()},
        "item": {k: np.asarray(v)[pair_rows] for k, v in catalog.items()},
        "item_row": pair_rows.astype(np.int32),
        "sampling_probability": item_sampling_probability(pair_rows, num_items)[pair_rows],
        # Stand-ins for mined lists and their teacher scores, so that the KD term trains too.
        "kd_rows": rng.integers(-1, num_items, size=(len(pair_rows), 6)).astype(np.int32),
        "kd_scores": rng.normal(size=(len(pair_rows), 6)).astype(np.float32),
    }
    tower_batches = tf.data.Dataset.from_tensor_slices(tower_data).batch(4, drop_remainder=True).cache()
    tower = TowerConfig(embedding_dim=8, hidden_dims=(16,), output_dim=16)  # id dropout 0.15: the generator runs
    with strategy.scope():
        two_tower = DistilledTwoTowerModel(
            QueryTower.from_encoders(encoders, tower),
            ItemTower.from_encoders(encoders, tower),
            catalog=catalog,
            config=RetrievalConfig(),
            kd_weight=1.0,
        )
        first = next(iter(tower_batches))
        two_tower.query_embeddings(first["query"])
        two_tower.item_embeddings(first["item"])
        optimizer = keras.optimizers.Adam(1e-2)
        optimizer.build(two_tower.trainable_variables)

    def loss_fn(batch: dict) -> tf.Tensor:
        return two_tower.compute_loss(batch, training=True)

    train("two_tower", two_tower, make_train_step(two_tower, optimizer, loss_fn, strategy=strategy), tower_batches)
    report["two_tower"]["id_generator_state"] = type(two_tower.query_tower._id_rng.state).__name__

    # The label BCE over lists without padding is a mean over equally many (list, item) terms on each replica,
    # so the replicas' mean gradient is the global batch's gradient.
    batch = {
        "query": {k: v[np.arange(8) % len(v)] for k, v in lists["query"].items()},
        "rows": rng.integers(0, num_items, size=(8, 5)).astype(np.int32),
        "labels": rng.integers(0, 2, size=(8, 5)).astype(np.float32),
    }
    bce = RankerLossWeights(label_weight=1.0)
    keras.utils.set_random_seed(1)
    single = StudentRanker(encoders, catalog, student_config)
    with strategy.scope():
        mirrored = StudentRanker(encoders, catalog, student_config)
        mirrored_optimizer = keras.optimizers.SGD(0.5)
    initial = single.get_weights()
    mirrored.set_weights(initial)
    single_loss = make_ranker_train_step(single, keras.optimizers.SGD(0.5), catalog, bce)(batch)
    distributed = next(iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))))
    mirrored_loss = make_ranker_train_step(mirrored, mirrored_optimizer, catalog, bce, strategy=strategy)(distributed)
    report["one_step"] = {
        "losses": [float(single_loss), float(mirrored_loss)],
        "weight_difference": max(
            float(np.max(np.abs(a.numpy() - b.numpy())))
            for a, b in zip(single.variables, mirrored.variables, strict=True)
        ),
        "weight_change": max(
            float(np.max(np.abs(a - b.numpy()))) for a, b in zip(initial, single.variables, strict=True)
        ),
    }
    return report


def test_models_train_under_a_two_replica_mirrored_strategy() -> None:
    path = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests"), str(Path(__file__).parent)])
    code = "import json, features, test_strategy; print(json.dumps(test_strategy._check_two_replicas()))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])

    assert report["num_replicas"] == 2
    for name in ("teacher", "student", "two_tower"):
        model = report[name]
        assert model["variable_types"] == ["MirroredVariable"], (name, model)
        losses = model["epoch_losses"]
        assert all(abs(loss) < float("inf") for loss in losses), (name, losses)
        assert losses[-1] < losses[0], (name, losses)
        assert model["replica_difference"] == 0.0, (name, model)
    one_step = report["one_step"]
    assert one_step["weight_change"] > 1e-3, one_step  # the step moved the weights ...
    assert one_step["weight_difference"] < 1e-5, one_step  # ... equally with and without the strategy
    single_loss, mirrored_loss = one_step["losses"]
    assert abs(single_loss - mirrored_loss) < 1e-5, one_step
