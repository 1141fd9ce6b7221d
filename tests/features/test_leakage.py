"""Nothing from validation or test reaches training features: histories, vocabularies, popularity, statistics.

The strongest form: rewrite every held-out row (new items, users' queries, labels) and show that everything
fitted on the training split is byte-for-byte the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import features
from features import FeatureEncoders, SyntheticConfig, generate_shop, temporal_leave_last_out


@pytest.fixture(scope="module")
def shop() -> features.SyntheticShop:
    return generate_shop(SyntheticConfig(num_users=400, num_items=300, num_interactions=20_000, seed=3))


def _fitted_files(dataset: features.Dataset, directory: Path) -> dict[str, bytes]:
    split = temporal_leave_last_out(dataset)
    FeatureEncoders.fit(dataset, split.train).save(directory)
    queries = features.build_queries(split.train, dataset, history_source=split.train)
    files = {p.name: p.read_bytes() for p in sorted(directory.iterdir())}
    files["train_histories"] = queries.history.tobytes() + queries.history_length.tobytes()
    return files


def test_rewriting_held_out_rows_changes_no_training_feature(shop, tmp_path: Path) -> None:
    dataset = shop.dataset
    split = temporal_leave_last_out(dataset)
    held_out = split.validation_pairs.index.union(split.test_pairs.index)
    after = dataset.interactions.index.difference(split.train.index).difference(held_out)
    future = held_out.union(after)
    assert len(held_out) > 500

    tampered = dataset.interactions.copy()
    rng = np.random.default_rng(0)
    # Other items, never-seen words and devices, and other grades, only in rows that come after training.
    tampered.loc[future, "item_id"] = rng.integers(0, dataset.num_items, len(future))
    # Grades change but positives stay positives (1 <-> 3), or the split itself would move.
    labels = tampered.loc[future, "label"]
    tampered.loc[future, "label"] = labels.where(labels == 0, 4 - labels)
    tampered.loc[future, "query"] = "leakedword " + tampered.loc[future, "query"].astype(str)
    tampered.loc[future, "device"] = "smartwatch"
    changed = dataset.with_interactions(tampered)
    # The rewrite must not move the split itself: check it stayed put before comparing features.
    assert temporal_leave_last_out(changed).train.index.equals(split.train.index)

    original = _fitted_files(dataset, tmp_path / "a")
    rewritten = _fitted_files(changed, tmp_path / "b")
    assert original.keys() == rewritten.keys()
    for name in original:
        assert original[name] == rewritten[name], f"{name} depends on held-out rows"


def test_held_out_only_values_are_out_of_vocabulary(shop) -> None:
    dataset = shop.dataset
    split = temporal_leave_last_out(dataset)
    encoders = FeatureEncoders.fit(dataset, split.train)
    train_items = set(split.train["item_id"].tolist())
    held_items = set(split.test["item_id"].tolist()) - train_items
    for item in held_items:
        assert encoders.item_ids.encode(np.array([item]))[0] <= encoders.config.num_oov_buckets
    known = encoders.item_ids.values
    assert set(np.asarray(known).tolist()) <= train_items
    # Popularity counts exactly the training positives of each known item.
    positives = split.train[split.train["label"] >= 1]
    counts = positives["item_id"].value_counts()
    indices = encoders.item_ids.encode(counts.index.to_numpy())
    assert np.array_equal(encoders.item_popularity[indices], counts.to_numpy())
    assert encoders.item_popularity.sum() == len(positives)
    # User statistics come from training users only.
    train_users = dataset.users[dataset.users["user_id"].isin(split.train["user_id"])]
    normalizer = encoders.user_normalizers["tenure_days"]
    assert normalizer.mean == pytest.approx(float(train_users["tenure_days"].astype(np.float64).mean()), rel=1e-6)
