"""The two-tower retrieval student: training, retrieval quality, loss wiring, cold start, embedding and export."""

from __future__ import annotations

import dataclasses
import gc

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tf_keras as keras

import features
from features import FeatureEncoders, SyntheticConfig, build_queries, generate_shop, temporal_leave_last_out
from features.layers import FeatureLayout
from retrieval import (
    ItemTower,
    QueryTower,
    RetrievalConfig,
    TowerConfig,
    TwoTowerModel,
    embed_catalog,
    export_towers,
    item_sampling_probability,
    load_tower,
    make_training_dataset,
    train_two_tower,
)

TOWER = TowerConfig(embedding_dim=16, hidden_dims=(64,), output_dim=32, id_dropout=0.15)
TRAINING = RetrievalConfig(temperature=0.05, learning_rate=3e-3, batch_size=64, epochs=10, seed=0)
K = 50


@pytest.fixture(scope="module")
def shop():
    """A tiny synthetic shop, split in time, encoded: training positives, the catalog and test queries."""
    data = generate_shop(SyntheticConfig(num_users=300, num_items=200, num_interactions=8000, seed=0)).dataset
    split = temporal_leave_last_out(data)
    encoders = FeatureEncoders.fit(data, split.train)
    positives = split.train.loc[data.positive_mask(split.train)]
    item_index = pd.Index(data.items[features.ITEM_ID])
    return {
        "dataset": data,
        "split": split,
        "encoders": encoders,
        "queries": encoders.encode_queries(build_queries(positives, data, history_source=split.train)),
        "item_rows": item_index.get_indexer(positives[features.ITEM_ID]),
        "catalog": encoders.encode_items(data.items),
        "test_batch": build_queries(split.test, data),
        "test_rows": item_index.get_indexer(split.test[features.ITEM_ID]),
    }


@pytest.fixture(scope="module")
def trained(shop):
    keras.utils.set_random_seed(0)
    encoders = shop["encoders"]
    model = TwoTowerModel(
        QueryTower.from_encoders(encoders, TOWER), ItemTower.from_encoders(encoders, TOWER), config=TRAINING
    )
    history = train_two_tower(model, shop["queries"], shop["catalog"], shop["item_rows"])
    return model, history.history["retrieval_loss"]


def _recall_at_k(query_embeddings: np.ndarray, item_embeddings: np.ndarray, target_rows: np.ndarray, k: int) -> float:
    """Exact dot-product recall@k with one relevant item per query (ties counted against the target)."""
    scores = query_embeddings @ item_embeddings.T
    target = scores[np.arange(len(scores)), target_rows]
    rank = (scores >= target[:, None]).sum(axis=1) - 1  # items scoring at least as high, the target excluded
    return float((rank < k).mean())


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_loss_decreases(trained) -> None:
    _, losses = trained
    assert len(losses) == TRAINING.epochs
    # In-batch softmax over 64 candidates starts near log(64) = 4.16 (plus the logQ offsets) and must fall.
    assert losses[-1] < 0.5 * losses[0], losses


def test_recall_beats_random(trained, shop) -> None:
    model, _ = trained
    encoders = shop["encoders"]
    items = embed_catalog(model.item_tower, shop["catalog"])
    queries = embed_catalog(model.query_tower, encoders.encode_queries(shop["test_batch"]))
    recall = _recall_at_k(queries, items, shop["test_rows"], K)
    random_recall = K / len(items)  # 50 / 200 = 0.25
    assert len(queries) >= 50
    assert recall >= random_recall + 0.25, (recall, random_recall)


def test_hand_computed_loss_and_wiring(trained, shop) -> None:
    model, _ = trained
    rows = shop["item_rows"].copy()
    rows[1] = rows[0]  # a duplicated positive in the first batch: an accidental hit for queries 0 and 1
    probability = item_sampling_probability(shop["item_rows"], len(shop["dataset"].items))
    batch = next(
        iter(make_training_dataset(shop["queries"], shop["catalog"], rows, probability, batch_size=16, shuffle=False))
    )
    assert batch["item_row"].dtype == tf.int32 and batch["sampling_probability"].dtype == tf.float32
    np.testing.assert_array_equal(batch["item_row"].numpy(), rows[:16])
    np.testing.assert_array_equal(batch["item"]["item_id"].numpy(), shop["catalog"]["item_id"][rows[:16]])

    def loss_with(**changes) -> float:
        variant = TwoTowerModel(
            model.query_tower, model.item_tower, config=dataclasses.replace(model.config, **changes)
        )
        return float(variant.compute_loss(batch, training=False))

    # By hand: logits = q v^T / T - log P(j); accidental hits (j != i, same row) masked; mean cross-entropy.
    q = model.query_embeddings(batch["query"]).numpy().astype(np.float64)
    v = model.item_embeddings(batch["item"]).numpy().astype(np.float64)
    ids, p = batch["item_row"].numpy(), batch["sampling_probability"].numpy().astype(np.float64)
    logits = q @ v.T / model.config.temperature - np.log(p)[None, :]
    logits[(ids[:, None] == ids[None, :]) & ~np.eye(len(ids), dtype=bool)] = -np.inf
    expected = np.mean(np.log(np.exp(logits).sum(axis=1)) - np.diag(logits))
    assert loss_with() == pytest.approx(expected, rel=1e-4)

    assert abs(loss_with(logq_correction=False) - loss_with()) > 1e-3
    assert abs(loss_with(remove_accidental_hits=False) - loss_with()) > 1e-3
    # Without a duplicate in the batch, accidental-hit removal changes nothing.
    clean = {**batch, "item_row": tf.range(16, dtype=tf.int32)}
    no_removal = TwoTowerModel(
        model.query_tower, model.item_tower, config=dataclasses.replace(model.config, remove_accidental_hits=False)
    )
    assert float(model.compute_loss(clean)) == pytest.approx(float(no_removal.compute_loss(clean)), rel=1e-6)

    with pytest.raises(ValueError, match="Missing: \\['sampling_probability'\\]"):
        model.compute_loss({k: v for k, v in batch.items() if k != "sampling_probability"})


def test_cold_items_embed_from_attributes(trained, shop) -> None:
    model, _ = trained
    items = shop["dataset"].items
    warm = embed_catalog(model.item_tower, shop["catalog"])
    unseen = items.assign(**{features.ITEM_ID: items[features.ITEM_ID] + 1_000_000})
    cold_features = shop["encoders"].encode_items(unseen)
    assert (cold_features["item_id"] <= shop["encoders"].config.num_oov_buckets).all()  # every id is now OOV
    cold = embed_catalog(model.item_tower, cold_features)

    # The synthetic leaves hold ~1 item each at this size, so "category" is category_l2 (~3.5 items each).
    category = items["category_l2"].to_numpy()
    department = items["category_l1"].to_numpy()
    wins, precision, chance = [], [], []
    for i in range(len(items)):
        peers = category == category[i]
        peers[i] = False
        if peers.sum() < 2:
            continue
        own = _cosine(cold[i], warm[peers].mean(axis=0))
        others = max(_cosine(cold[i], warm[department == d].mean(axis=0)) for d in set(department) - {department[i]})
        wins.append(own > others)
        scores = warm @ cold[i]
        scores[i] = -np.inf  # the item's own warm copy is not a neighbour
        nearest = np.argsort(-scores)[: peers.sum()]
        precision.append(peers[nearest].mean())
        chance.append(peers.sum() / (len(items) - 1))
    assert len(wins) >= 30
    assert np.mean(wins) >= 0.8, np.mean(wins)
    # Own-category items among the cold item's nearest neighbours: measured ~0.5 against a chance of ~0.016.
    assert np.mean(precision) >= 10 * np.mean(chance), (np.mean(precision), np.mean(chance))
    # The cold embedding stays close to the item's trained embedding: the id does not dominate.
    assert np.mean(np.sum(cold * warm, axis=1)) > 0.8


def test_unseen_users_get_normalised_embeddings(trained, shop) -> None:
    model, _ = trained
    batch = shop["test_batch"]
    strangers = dataclasses.replace(batch, user_id=batch.user_id + 1_000_000)
    encoded = shop["encoders"].encode_queries(strangers)
    assert (encoded["user_id"] <= shop["encoders"].config.num_oov_buckets).all()
    embeddings = embed_catalog(model.query_tower, encoded)
    assert np.isfinite(embeddings).all()
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    # Query text and history still carry them: retrieval stays well above random.
    items = embed_catalog(model.item_tower, shop["catalog"])
    assert _recall_at_k(embeddings, items, shop["test_rows"], K) >= K / len(items) + 0.15


def test_embeddings_are_normalised_and_batched_embedding_matches(trained, shop) -> None:
    model, _ = trained
    catalog = shop["catalog"]
    one_shot = model.item_embeddings({k: v for k, v in catalog.items()}).numpy()
    assert one_shot.shape == (len(shop["dataset"].items), TOWER.output_dim)
    np.testing.assert_allclose(np.linalg.norm(one_shot, axis=1), 1.0, atol=1e-5)
    batched = embed_catalog(model.item_tower, catalog, batch_size=7)  # 28 full batches and one of 4
    assert batched.dtype == np.float32
    np.testing.assert_allclose(batched, one_shot, atol=1e-6)
    queries = {k: v[:5] for k, v in shop["queries"].items()}
    assert model.query_embeddings(queries).shape == (5, TOWER.output_dim)
    with pytest.raises(ValueError, match="Missing: \\['item_brand'\\]"):
        embed_catalog(model.item_tower, {k: v for k, v in catalog.items() if k != "item_brand"})


def test_id_dropout_only_in_training(shop) -> None:
    keras.utils.set_random_seed(1)
    encoders = shop["encoders"]
    tower = ItemTower(FeatureLayout.from_encoders(encoders, "item"), dataclasses.replace(TOWER, id_dropout=0.5))
    catalog = {k: tf.constant(v) for k, v in shop["catalog"].items()}
    inference = tower(catalog, training=False).numpy()
    np.testing.assert_array_equal(inference, tower(catalog, training=False).numpy())
    as_oov = tower({**catalog, "item_id": tf.ones_like(catalog["item_id"])}, training=False).numpy()
    dropped = np.all(np.isclose(tower(catalog, training=True).numpy(), as_oov, atol=1e-6), axis=1)
    # Half the ids become OOV bucket 1 (the only bucket with id_oov_buckets=1): 100 of 200 expected.
    assert 70 <= dropped.sum() <= 130, dropped.sum()


def test_export_round_trip(trained, shop, tmp_path) -> None:
    model, _ = trained
    encoders = shop["encoders"]
    lengths = {
        "query_tokens": encoders.config.max_query_tokens,
        "history": encoders.config.max_history,
        "item_title_tokens": encoders.config.max_text_tokens,
    }
    query_spec = model.query_tower.layout.tensor_spec(sequence_lengths=lengths)
    item_spec = model.item_tower.layout.tensor_spec(sequence_lengths=lengths)
    directory = export_towers(model, tmp_path / "towers", query_spec=query_spec, item_spec=item_spec)
    assert sorted(p.name for p in directory.iterdir()) == ["item_tower", "manifest.json", "query_tower"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left behind

    test_queries = encoders.encode_queries(shop["test_batch"])
    for name, tower, spec, data in (
        ("query_tower", model.query_tower, query_spec, test_queries),
        ("item_tower", model.item_tower, item_spec, shop["catalog"]),
    ):
        signature = load_tower(directory / name)
        gc.collect()  # the signature must keep its variables alive on its own
        inputs = signature.structured_input_signature[1]
        assert {k: (s.dtype, s.shape.as_list()) for k, s in inputs.items()} == {
            k: (s.dtype, s.shape.as_list()) for k, s in spec.items()
        }
        assert set(signature.structured_outputs) == {"embeddings"}
        loaded = signature(**{k: tf.constant(data[k]) for k in spec})["embeddings"].numpy()
        np.testing.assert_allclose(loaded, embed_catalog(tower, data), atol=1e-6)

    with pytest.raises(FileExistsError, match="already exists"):
        export_towers(model, directory, query_spec=query_spec, item_spec=item_spec)
    with pytest.raises(ValueError, match="Missing: \\['history'\\]"):
        export_towers(
            model,
            tmp_path / "other",
            query_spec={k: s for k, s in query_spec.items() if k != "history"},
            item_spec=item_spec,
        )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tower(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"no saved_model\.pb"):
        load_tower(directory)


def test_item_sampling_probability_by_hand() -> None:
    # counts [2, 0, 1, 0] + 1 each, over 3 positives + 4 pseudo-counts: [3, 1, 2, 1] / 7.
    probability = item_sampling_probability(np.array([0, 0, 2]), 4)
    np.testing.assert_allclose(probability, np.array([3, 1, 2, 1]) / 7, rtol=1e-6)
    assert probability.dtype == np.float32
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        item_sampling_probability(np.array([0, 4]), 4)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TowerConfig(output_dim=0), r"`output_dim` should be a positive integer\. Received: output_dim=0"),
        (lambda: TowerConfig(embedding_dim=-1), "`embedding_dim` should be a positive integer"),
        (lambda: TowerConfig(hidden_dims=(64, 0)), "`hidden_dims` should be a tuple of positive integers"),
        (lambda: TowerConfig(dropout=1.0), r"`dropout` should be a float in \[0, 1\)"),
        (lambda: TowerConfig(id_dropout=-0.1), r"`id_dropout` should be a float in \[0, 1\)"),
        (lambda: TowerConfig(l2=-1.0), "`l2` should be a non-negative float"),
        (
            lambda: RetrievalConfig(temperature=0.0),
            "`temperature` should be a positive float. Received: temperature=0.0",
        ),
        (lambda: RetrievalConfig(batch_size=0), "`batch_size` should be a positive integer"),
        (lambda: RetrievalConfig(logq_correction="yes"), "`logq_correction` should be True or False"),
    ],
)
def test_config_validation(make, message) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_mismatched_towers_and_bad_pairs_are_rejected(shop) -> None:
    encoders = shop["encoders"]
    query_tower = QueryTower.from_encoders(encoders, TOWER)
    item_tower = ItemTower.from_encoders(encoders, dataclasses.replace(TOWER, output_dim=16))
    with pytest.raises(ValueError, match=r"output_dim=32, item_tower\.output_dim=16"):
        TwoTowerModel(query_tower, item_tower)
    probability = item_sampling_probability(shop["item_rows"], 200)
    with pytest.raises(ValueError, match="`item_rows` should have one row per query"):
        make_training_dataset(shop["queries"], shop["catalog"], shop["item_rows"][:-1], probability, batch_size=8)
    with pytest.raises(ValueError, match="should have shape \\[num_items=200\\]"):
        make_training_dataset(shop["queries"], shop["catalog"], shop["item_rows"], probability[:-1], batch_size=8)


def test_trains_on_a_slice_of_amazon_office(amazon) -> None:
    """Real, implicit data without query text or user features: the towers still learn (500 users)."""
    from retrieval import ItemTower, QueryTower, RetrievalConfig, TowerConfig, TwoTowerModel, train_two_tower

    users = np.sort(amazon.interactions["user_id"].unique())[:500]
    sliced = amazon.with_interactions(amazon.interactions[amazon.interactions["user_id"].isin(users)])
    split = temporal_leave_last_out(sliced)
    encoders = FeatureEncoders.fit(sliced, split.train)
    catalog = encoders.encode_items(sliced.items)
    queries = encoders.encode_queries(build_queries(split.train, sliced, history_source=split.train))
    rows = pd.Index(sliced.items["item_id"]).get_indexer(split.train["item_id"])
    keras.utils.set_random_seed(0)
    config = TowerConfig(embedding_dim=16, hidden_dims=(32,), output_dim=16)
    model = TwoTowerModel(
        QueryTower.from_encoders(encoders, config),
        ItemTower.from_encoders(encoders, config),
        config=RetrievalConfig(batch_size=256, epochs=4),
    )
    losses = train_two_tower(model, queries, catalog, rows).history["retrieval_loss"]
    assert losses[-1] < 0.8 * losses[0], losses
