"""Fixtures of the ranking tests: a tiny synthetic shop, a slice of Amazon Office, and rankers trained once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import tf_keras as keras

import features
from features import FeatureEncoders, SyntheticConfig, generate_shop, temporal_leave_last_out
from ranking import (
    LabelledPairs,
    StudentRanker,
    TeacherRanker,
    make_labelled_pairs,
    make_pair_dataset,
    score_pairs,
    train_ranker,
)


@dataclass
class Prepared:
    """A data set ready for ranking: split, encoders, encoded catalog, train pairs and held-out pairs."""

    dataset: features.Dataset
    split: features.Split
    encoders: FeatureEncoders
    items: dict[str, np.ndarray]
    train: LabelledPairs
    test: LabelledPairs


def prepare(dataset: features.Dataset, *, test_popularity_mix: float = 0.5) -> Prepared:
    split = temporal_leave_last_out(dataset)
    encoders = FeatureEncoders.fit(dataset, split.train)
    items = encoders.encode_items(dataset.items)
    train = make_labelled_pairs(dataset, split.train, encoders, negatives_per_query=4, seed=0)
    # Held-out requests, histories cut at each request's time, plus sampled negatives.
    test = make_labelled_pairs(
        dataset,
        split.train,
        encoders,
        rows=split.test_pairs,
        history_source=dataset.interactions,
        popularity_mix=test_popularity_mix,
        seed=1,
    )
    return Prepared(dataset, split, encoders, items, train, test)


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC = P(score of a random positive > score of a random negative), ties counting 1/2 (rank formula)."""
    ranks = pd.Series(scores).rank().to_numpy()
    n_pos = positive.sum()
    n_neg = len(positive) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.fixture(scope="session")
def held_out_auc():
    """``held_out_auc(model, prepared)``: AUC of the model on the held-out pairs (positive = target > 0).

    ``warm_positives_only=True`` drops positives whose item is out of the training item vocabulary (cold).
    """

    def evaluate(model, prepared: Prepared, *, warm_positives_only: bool = False) -> float:
        test = prepared.test
        scores = score_pairs(model, test.query_features, {k: v[test.item_rows] for k, v in prepared.items.items()})
        positive = test.labels > 0
        keep = np.ones(len(test), dtype=bool)
        if warm_positives_only:
            cold = prepared.items["item_id"][test.item_rows] <= prepared.encoders.item_ids.num_oov_buckets
            keep = ~(positive & cold)
        return roc_auc(positive[keep], scores[keep])

    return evaluate


@pytest.fixture(scope="session")
def shop_data() -> Prepared:
    shop = generate_shop(SyntheticConfig(num_users=300, num_items=200, num_interactions=8000, seed=0))
    return prepare(shop.dataset)


@pytest.fixture(scope="session")
def amazon_data(amazon: features.Dataset) -> Prepared:
    users = np.sort(amazon.interactions["user_id"].unique())[:500]
    sliced = amazon.with_interactions(amazon.interactions[amazon.interactions["user_id"].isin(users)])
    # Held-out positives against uniformly drawn catalog items (the usual sampled-AUC protocol).
    return prepare(sliced, test_popularity_mix=0.0)


@pytest.fixture(scope="session")
def trained_teacher(shop_data: Prepared) -> tuple[TeacherRanker, dict[str, list[float]]]:
    keras.utils.set_random_seed(0)
    teacher = TeacherRanker(shop_data.encoders, shop_data.items)
    dataset = make_pair_dataset(shop_data.train, shop_data.items, batch_size=256, shuffle=True, seed=0)
    return teacher, train_ranker(teacher, dataset, epochs=3, learning_rate=1e-3)


@pytest.fixture(scope="session")
def trained_student(shop_data: Prepared) -> tuple[StudentRanker, dict[str, list[float]]]:
    keras.utils.set_random_seed(0)
    student = StudentRanker(shop_data.encoders, shop_data.items)
    dataset = make_pair_dataset(shop_data.train, shop_data.items, batch_size=256, shuffle=True, seed=0)
    return student, train_ranker(student, dataset, epochs=3, learning_rate=3e-3)
