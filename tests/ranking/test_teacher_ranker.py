"""TeacherRanker: configuration, size and FLOPs, training on the synthetic shop and on implicit Amazon data."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from ranking import TeacherConfig, TeacherRanker, flops_per_pair, make_pair_dataset, train_ranker


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"embedding_dim": 0}, "`embedding_dim` should be a positive integer. Received: embedding_dim=0"),
        ({"num_cross_layers": 0}, "`num_cross_layers` should be a positive integer"),
        ({"projection_dim": -4}, "`projection_dim` should be a positive integer"),
        ({"structure": "serial"}, "`structure` should be 'stacked' or 'parallel'"),
        ({"deep_layers": (256, 0)}, "`deep_layers` should be a tuple of positive integers"),
        ({"activation": "nope"}, "`activation` should be a Keras activation name"),
        ({"dropout": 1.0}, r"`dropout` should lie in \[0, 1\)"),
        ({"l2": -1.0}, "`l2` should be a non-negative number"),
    ],
)
def test_config_validation(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        TeacherConfig(**kwargs)


def test_default_teacher_is_large_and_its_flops_are_counted(shop_data) -> None:
    teacher = TeacherRanker(shop_data.encoders, shop_data.items)
    config = teacher.config
    assert (config.embedding_dim, config.num_cross_layers, config.projection_dim) == (32, 3, None)
    assert config.deep_layers == (256, 128, 64)
    # x0: 15 embedded keys x 32 + 4 numeric (price, price_missing, tenure, tenure_missing) + 9 cross features
    # + 2 embedding cosines.
    d = teacher.input_dim
    assert d == 15 * 32 + 4 + 9 + 2
    # 3 full-rank cross layers (d^2 + d each), the MLP (d*256 + 256*128 + 128*64), the logit (64) and two
    # 32-wide cosine dot products, in multiply-adds; FLOPs are twice that.
    multiply_adds = 3 * (d * d + d) + d * 256 + 256 * 128 + 128 * 64 + 64 + 2 * 32
    assert flops_per_pair(teacher) == 2 * multiply_adds
    assert teacher.count_params() > 900_000


def test_structures_and_low_rank_build(shop_data) -> None:
    config = TeacherConfig(embedding_dim=8, projection_dim=16, structure="parallel", deep_layers=(32,))
    teacher = TeacherRanker(shop_data.encoders, shop_data.items, config)
    d = teacher.input_dim
    # Low rank: d*r + r*d + d per cross layer; parallel: the logit reads [cross output (d) ‖ MLP output (32)].
    assert flops_per_pair(teacher) == 2 * (3 * (2 * d * 16 + d) + d * 32 + (d + 32) + 2 * 8)
    batch, _ = next(iter(make_pair_dataset(shop_data.train, shop_data.items, batch_size=16)))
    assert teacher(batch).shape == (16,)
    plain = TeacherRanker(shop_data.encoders, shop_data.items, TeacherConfig(use_cross_features=False))
    assert plain.input_dim == 15 * 32 + 4


def test_teacher_learns_the_synthetic_shop(trained_teacher, shop_data, held_out_auc) -> None:
    teacher, history = trained_teacher
    assert history["loss"][-1] < history["loss"][0]
    # Held-out test requests (impressions and positives) plus sampled negatives.
    assert held_out_auc(teacher, shop_data) > 0.6


def test_teacher_learns_implicit_amazon(amazon_data, held_out_auc) -> None:
    keras.utils.set_random_seed(0)
    teacher = TeacherRanker(amazon_data.encoders, amazon_data.items)
    dataset = make_pair_dataset(amazon_data.train, amazon_data.items, batch_size=1024, shuffle=True)
    history = train_ranker(teacher, dataset, epochs=2, learning_rate=2e-3)
    assert history["loss"][-1] < history["loss"][0]
    # Each user's last item against 4 uniformly drawn catalog items. In this 500-user slice about 30% of those
    # last items were never bought in training: their ids are out of vocabulary and only their attributes can
    # speak for them, so they are left out here (all positives together score about 0.6).
    assert held_out_auc(teacher, amazon_data, warm_positives_only=True) > 0.65


def test_call_is_the_composition_of_the_two_sides(trained_teacher, shop_data) -> None:
    teacher, _ = trained_teacher
    batch, _ = next(iter(make_pair_dataset(shop_data.train, shop_data.items, batch_size=32)))
    query = teacher.query_representation(batch["query"])
    item = teacher.item_representation(batch["item"])
    np.testing.assert_allclose(teacher(batch).numpy(), teacher.score_representations(query, item).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match=r"The item features should hold \['item_brand'\]"):
        teacher.item_representation({k: v for k, v in batch["item"].items() if k != "item_brand"})
    assert tf.reduce_all(tf.math.is_finite(teacher(batch)))
