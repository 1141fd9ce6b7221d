"""StudentRanker: at most 10% of the teacher's parameters, 10x fewer FLOPs, trains, optional tower inputs."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from ranking import StudentConfig, StudentRanker, TeacherRanker, flops_per_pair, make_pair_dataset


def test_student_is_ten_times_cheaper_than_the_teacher(shop_data) -> None:
    teacher = TeacherRanker(shop_data.encoders, shop_data.items)
    student = StudentRanker(shop_data.encoders, shop_data.items)
    assert student.count_params() <= 0.1 * teacher.count_params()
    assert 10 * flops_per_pair(student) <= flops_per_pair(teacher)
    # MLP input: 6 embedded keys x 8 (item id, leaf, brand, price bucket, query tokens, history) + 2 contexts x 8
    # + price + 9 cross features + 1 history cosine.
    d = student.input_dim
    assert d == 8 * 8 + 1 + 9 + 1
    assert flops_per_pair(student) == 2 * (d * 64 + 64 * 32 + 32 + 8)
    assert "user_id" not in student.query_keys


def test_student_learns_the_synthetic_shop(trained_student, shop_data, held_out_auc) -> None:
    student, history = trained_student
    assert history["loss"][-1] < history["loss"][0]
    assert held_out_auc(student, shop_data) > 0.6


def test_tower_embeddings_are_optional_inputs(shop_data) -> None:
    config = StudentConfig(use_tower_embeddings=True, tower_embedding_dim=4)
    student = StudentRanker(shop_data.encoders, shop_data.items, config)
    batch, _ = next(iter(make_pair_dataset(shop_data.train, shop_data.items, batch_size=8)))
    rng = np.random.default_rng(0)
    query = dict(batch["query"], query_embedding=tf.constant(rng.normal(size=(8, 4)), tf.float32))
    item = dict(batch["item"], item_embedding=tf.constant(rng.normal(size=(8, 4)), tf.float32))
    assert student({"query": query, "item": item}).shape == (8,)
    assert student.input_dim == StudentRanker(shop_data.encoders, shop_data.items).input_dim + 2 * 4 + 1
    with pytest.raises(ValueError, match=r"The item features should hold \['item_embedding'\]"):
        student({"query": query, "item": batch["item"]})


def test_restricted_features_and_validation(shop_data) -> None:
    config = StudentConfig(features=("item_id", "history"), use_cross_features=False, deep_layers=())
    student = StudentRanker(shop_data.encoders, shop_data.items, config)
    assert student.input_dim == 2 * 8 + 1
    with pytest.raises(ValueError, match="Received unknown: \\['nope'\\]"):
        StudentRanker(shop_data.encoders, shop_data.items, StudentConfig(features=("item_id", "nope")))
    with pytest.raises(ValueError, match="`tower_embedding_dim` should be the width"):
        StudentConfig(use_tower_embeddings=True)
    with pytest.raises(ValueError, match="`deep_layers` should be a tuple of positive integers"):
        StudentConfig(deep_layers=(64, -1))
    with pytest.raises(TypeError, match="`config` should be a StudentConfig"):
        StudentRanker(shop_data.encoders, shop_data.items, {"embedding_dim": 8})


def test_train_step_is_the_override_point(shop_data) -> None:
    """A distillation trainer subclasses the student and overrides `train_step`; `call` stays the scorer."""

    class CountingStudent(StudentRanker):
        steps = 0

        def train_step(self, data):
            CountingStudent.steps += 1
            return super().train_step(data)

    from ranking import train_ranker

    student = CountingStudent(shop_data.encoders, shop_data.items, StudentConfig(deep_layers=(8,)))
    dataset = make_pair_dataset(shop_data.train.take(np.arange(512)), shop_data.items, batch_size=256)
    train_ranker(student, dataset, epochs=1)
    assert CountingStudent.steps >= 1
