"""Labelled pairs: graded targets, one query per request, sampled negatives that never hit the request's items."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import features
from features import Dataset, FeatureEncoders, LabelSpec, temporal_leave_last_out
from ranking import graded_target, make_labelled_pairs, make_pair_dataset


def test_graded_target_values() -> None:
    graded = LabelSpec(kind="graded", min=0, max=3, positive_threshold=1)
    # (label - min) / (max - min): 0 -> 0, 1 -> 1/3, 2 -> 2/3, 3 -> 1; out-of-range values clip.
    np.testing.assert_allclose(graded_target([0, 1, 2, 3, 5], graded), [0.0, 1 / 3, 2 / 3, 1.0, 1.0], rtol=1e-6)
    rating = LabelSpec(kind="rating", min=1, max=5, positive_threshold=4)
    np.testing.assert_allclose(graded_target([1, 3, 4, 5], rating), [0.0, 0.5, 0.75, 1.0])
    implicit = LabelSpec(kind="implicit")
    np.testing.assert_array_equal(graded_target([1, 1], implicit), [1.0, 1.0])
    assert graded_target([0, 3], graded).dtype == np.float32


def test_pairs_of_the_synthetic_shop(shop_data) -> None:
    dataset, split, train = shop_data.dataset, shop_data.split, shop_data.train
    logged = ~train.is_sampled
    # Every training row once, in order, with its graded target.
    assert logged.sum() == len(split.train)
    item_rows = pd.Index(dataset.items["item_id"]).get_indexer(split.train["item_id"])
    np.testing.assert_array_equal(train.item_rows[logged], item_rows)
    np.testing.assert_allclose(train.labels[logged], split.train["label"].to_numpy() / 3.0, rtol=1e-6)
    # One query per request: requests are (user, request_id) groups.
    requests = split.train.groupby(["user_id", "request_id"]).ngroups
    assert train.num_queries == requests
    # negatives_per_query per request with a positive, all labelled 0.
    positive_requests = split.train.loc[split.train["label"] >= 1].groupby(["user_id", "request_id"]).ngroups
    assert train.is_sampled.sum() == 4 * positive_requests
    assert (train.labels[train.is_sampled] == 0).all()


def test_queries_built_once_equal_queries_built_per_row(shop_data) -> None:
    dataset, split, encoders, train = shop_data.dataset, shop_data.split, shop_data.encoders, shop_data.train
    per_row = encoders.encode_queries(features.build_queries(split.train, dataset, history_source=split.train))
    repeated = train.take(np.flatnonzero(~train.is_sampled)).query_features
    assert set(repeated) == set(per_row)
    for key, value in per_row.items():
        np.testing.assert_array_equal(repeated[key], value, err_msg=key)


def test_sampled_negatives_never_hit_the_requests_own_items(shop_data) -> None:
    train = shop_data.train
    own = set(zip(train.query_index[~train.is_sampled], train.item_rows[~train.is_sampled], strict=True))
    sampled = zip(train.query_index[train.is_sampled], train.item_rows[train.is_sampled], strict=True)
    assert not own & set(sampled)


def test_popularity_mix_draws_only_popular_items(shop_data) -> None:
    dataset, split, encoders = shop_data.dataset, shop_data.split, shop_data.encoders
    pairs = make_labelled_pairs(dataset, split.train, encoders, popularity_mix=1.0, negatives_per_query=8)
    vocab_rows = encoders.item_ids.encode(dataset.items["item_id"])
    popularity = encoders.item_popularity[vocab_rows[pairs.item_rows[pairs.is_sampled]]]
    assert (popularity > 0).all()
    uniform = make_labelled_pairs(dataset, split.train, encoders, popularity_mix=0.0, negatives_per_query=8)
    popular_share = (encoders.item_popularity[vocab_rows[uniform.item_rows[uniform.is_sampled]]] > 0).mean()
    assert popular_share < 1.0  # the uniform draws reach items never bought in training
    none = make_labelled_pairs(dataset, split.train, encoders, negatives_per_query=0)
    assert not none.is_sampled.any()


def test_implicit_amazon_pairs_need_sampled_negatives(amazon_data) -> None:
    split, train = amazon_data.split, amazon_data.train
    logged = ~train.is_sampled
    assert (train.labels[logged] == 1.0).all()  # implicit: every logged row is a positive
    # No request ids: each row is its own request and gets 4 negatives.
    assert train.num_queries == len(split.train)
    assert train.is_sampled.sum() == 4 * len(split.train)
    positive_item = train.item_rows[logged][train.query_index[train.is_sampled]]
    assert (train.item_rows[train.is_sampled] != positive_item).all()


def test_pair_dataset_gathers_query_and_item_rows(shop_data) -> None:
    train, items = shop_data.train, shop_data.items
    dataset = make_pair_dataset(train, items, batch_size=64, shuffle=False)
    batch, labels = next(iter(dataset))
    queries = train.query_features
    for key in train.queries:
        np.testing.assert_array_equal(batch["query"][key].numpy(), queries[key][:64])
    for key, value in items.items():
        np.testing.assert_array_equal(batch["item"][key].numpy(), value[train.item_rows[:64]])
    np.testing.assert_array_equal(labels.numpy(), train.labels[:64])
    shuffled = [y.numpy() for _, y in make_pair_dataset(train, items, batch_size=4096, shuffle=True, seed=3)]
    assert np.concatenate(shuffled).shape == train.labels.shape


def test_a_request_that_saw_the_whole_catalog_cannot_get_negatives() -> None:
    items = pd.DataFrame({"item_id": np.array([1, 2], dtype=np.int64)})
    interactions = pd.DataFrame(
        {
            "user_id": np.array([7, 7, 7, 7, 7, 7], dtype=np.int64),
            "item_id": np.array([1, 2, 1, 2, 1, 2], dtype=np.int64),
            "timestamp": np.array([1, 1, 2, 2, 3, 3], dtype=np.int64),
            "label": np.array([1, 0, 1, 0, 1, 0], dtype=np.int64),
            "request_id": np.array([1, 1, 2, 2, 3, 3], dtype=np.int64),
        }
    )
    schema = features.Schema(label=LabelSpec(kind="graded", min=0, max=1, positive_threshold=1), has_request_id=True)
    dataset = Dataset(name="two-items", schema=schema, interactions=interactions, items=items)
    split = temporal_leave_last_out(dataset, min_positive_requests=2)
    encoders = FeatureEncoders.fit(dataset, split.train)
    with pytest.raises(ValueError, match="was shown every catalog item"):
        make_labelled_pairs(dataset, split.train, encoders, negatives_per_query=1)


def test_option_errors(shop_data) -> None:
    dataset, split, encoders = shop_data.dataset, shop_data.split, shop_data.encoders
    with pytest.raises(ValueError, match="`negatives_per_query` should be a non-negative integer"):
        make_labelled_pairs(dataset, split.train, encoders, negatives_per_query=-1)
    with pytest.raises(ValueError, match=r"`popularity_mix` should lie in \[0, 1\]"):
        make_labelled_pairs(dataset, split.train, encoders, popularity_mix=1.5)
    with pytest.raises(ValueError, match="`batch_size` should be a positive integer"):
        make_pair_dataset(shop_data.train, shop_data.items, batch_size=0)
    with pytest.raises(ValueError, match="encode the same items table"):
        make_pair_dataset(shop_data.train, {k: v[:10] for k, v in shop_data.items.items()}, batch_size=8)
