"""Tests of the synthetic shop: determinism, the data contract, and that the known ground truth shows in the data."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.schema import ITEM_ID, LABEL, QUERY, REQUEST_ID, TIMESTAMP, USER_ID
from features.synthetic import (
    AGE_GROUPS,
    DEVICES,
    KIND_BRAND,
    KIND_BRAND_NOUN,
    KIND_LEAF,
    ShopTruth,
    SyntheticConfig,
    SyntheticShop,
    generate_shop,
    write_shop,
)

SMALL = SyntheticConfig(num_users=500, num_items=1000, num_interactions=40_000, seed=7)


@pytest.fixture(scope="module")
def shop() -> SyntheticShop:
    return generate_shop(SMALL)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _assert_truth_equal(a: ShopTruth, b: ShopTruth) -> None:
    for field in dataclasses.fields(ShopTruth):
        left, right = getattr(a, field.name), getattr(b, field.name)
        if isinstance(left, np.ndarray):
            assert left.dtype == right.dtype, field.name
            np.testing.assert_array_equal(left, right, err_msg=field.name)
        else:
            assert left == right, field.name


# ---------------------------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_tables(shop: SyntheticShop) -> None:
    again = generate_shop(SMALL)
    pd.testing.assert_frame_equal(shop.dataset.interactions, again.dataset.interactions)
    pd.testing.assert_frame_equal(shop.dataset.items, again.dataset.items)
    pd.testing.assert_frame_equal(shop.dataset.users, again.dataset.users)
    _assert_truth_equal(shop.truth, again.truth)


def test_different_seed_gives_different_tables(shop: SyntheticShop) -> None:
    other = generate_shop(dataclasses.replace(SMALL, seed=8))
    assert not shop.dataset.interactions.equals(other.dataset.interactions)
    assert not shop.dataset.items.equals(other.dataset.items)
    assert not shop.dataset.users.equals(other.dataset.users)


# ------------------------------------------------------------------------------------------- data contract
def test_columns_and_dtypes_follow_the_schema(shop: SyntheticShop) -> None:
    ds = shop.dataset
    assert list(ds.interactions.columns) == ds.schema.interaction_columns()
    assert list(ds.items.columns) == ds.schema.item_columns()
    assert list(ds.users.columns) == ds.schema.user_columns()
    dtypes = {col: str(dtype) for col, dtype in ds.interactions.dtypes.items()}
    assert dtypes == {
        USER_ID: "int64",
        ITEM_ID: "int64",
        TIMESTAMP: "int64",
        LABEL: "int8",
        QUERY: "str",
        REQUEST_ID: "int64",
        "device": "str",
        "hour": "int8",
    }
    assert {col: str(dtype) for col, dtype in ds.items.dtypes.items()} == {
        ITEM_ID: "int64",
        "category_l1": "str",
        "category_l2": "str",
        "category_leaf": "str",
        "brand": "str",
        "price": "float32",
        "title": "str",
    }
    assert {col: str(dtype) for col, dtype in ds.users.dtypes.items()} == {
        USER_ID: "int64",
        "age_group": "str",
        "region": "str",
        "tenure_days": "float32",
    }
    label = ds.schema.label
    assert (label.kind, label.min, label.max, label.positive_threshold) == ("graded", 0, 3, 1)
    assert label.names == {0: "impression", 1: "click", 2: "cart", 3: "purchase"}
    assert ds.schema.has_query and ds.schema.has_request_id
    assert ds.schema.context == ("device", "hour")


def test_values_are_consistent(shop: SyntheticShop) -> None:
    ds, config = shop.dataset, shop.config
    inter, items, users = ds.interactions, ds.items, ds.users
    assert len(inter) == config.num_requests * config.list_size == 40_000
    np.testing.assert_array_equal(items[ITEM_ID], np.arange(config.num_items))
    np.testing.assert_array_equal(users[USER_ID], np.arange(config.num_users))
    assert inter[ITEM_ID].between(0, config.num_items - 1).all()
    assert inter[USER_ID].between(0, config.num_users - 1).all()
    assert inter[LABEL].between(0, 3).all()
    assert inter["hour"].between(0, 23).all()
    assert set(inter["device"].unique()) == set(DEVICES)
    assert inter[TIMESTAMP].is_monotonic_increasing
    assert inter[TIMESTAMP].min() >= config.start_time
    assert inter[TIMESTAMP].max() < config.start_time + (config.num_days + 1) * 86_400
    np.testing.assert_array_equal(inter["hour"], (inter[TIMESTAMP] // 3600) % 24)
    # Every request: list_size rows sharing user, timestamp, query and context.
    per_request = inter.groupby(REQUEST_ID).nunique()
    assert (per_request[[USER_ID, TIMESTAMP, QUERY, "device", "hour"]] == 1).all().all()
    assert (inter.groupby(REQUEST_ID).size() == config.list_size).all()
    np.testing.assert_array_equal(inter[REQUEST_ID].unique(), np.arange(config.num_requests))
    # About a quarter of the requests are browsing (no text); item prices are positive; titles hold the leaf.
    empty = (inter.groupby(REQUEST_ID)[QUERY].first() == "").mean()
    assert 0.2 < empty < 0.3
    assert (items["price"] > 0).all()
    assert all(leaf in title for leaf, title in zip(items["category_leaf"], items["title"], strict=True))
    assert all(title.startswith(brand + " ") for brand, title in zip(items["brand"], items["title"], strict=True))
    assert items.groupby("category_leaf")["category_l2"].nunique().max() == 1
    assert items.groupby("category_l2")["category_l1"].nunique().max() == 1
    assert items["category_l1"].nunique() == 8
    # Brands specialise in 1-3 departments.
    assert items.groupby("brand")["category_l1"].nunique().max() <= 3


def test_no_duplicate_item_within_a_request(shop: SyntheticShop) -> None:
    inter = shop.dataset.interactions
    assert (inter.groupby(REQUEST_ID)[ITEM_ID].nunique() == shop.config.list_size).all()


@pytest.mark.parametrize(("num_items", "list_size"), [(8, 8), (10, 10), (12, 10)])
def test_tiny_catalogs_still_show_distinct_items(num_items: int, list_size: int) -> None:
    config = SyntheticConfig(num_users=20, num_items=num_items, num_interactions=500, list_size=list_size)
    inter = generate_shop(config).dataset.interactions
    assert len(inter) == config.num_requests * list_size
    assert (inter.groupby(REQUEST_ID)[ITEM_ID].nunique() == list_size).all()


@settings(max_examples=10, deadline=None)
@given(
    num_items=st.integers(8, 120),
    list_size=st.integers(1, 8),
    num_interactions=st.integers(1, 700),
    seed=st.integers(0, 2**32),
)
def test_invariants_hold_for_any_small_config(num_items: int, list_size: int, num_interactions: int, seed: int) -> None:
    config = SyntheticConfig(
        num_users=30, num_items=num_items, num_interactions=num_interactions, list_size=list_size, seed=seed
    )
    shop = generate_shop(config)
    inter = shop.dataset.interactions
    assert len(inter) == -(-num_interactions // list_size) * list_size
    assert (inter.groupby(REQUEST_ID)[ITEM_ID].nunique() == list_size).all()
    assert inter[TIMESTAMP].is_monotonic_increasing
    assert shop.truth.num_requests == config.num_requests


# ------------------------------------------------------------------------------------- known ground truth
def test_label_distribution_is_a_funnel(shop: SyntheticShop) -> None:
    counts = shop.dataset.interactions[LABEL].value_counts().sort_index()
    assert list(counts.index) == [0, 1, 2, 3]
    assert counts[0] > counts[1] > counts[2] > counts[3] > 0
    click_rate = (shop.dataset.interactions[LABEL] >= 1).mean()
    assert 0.05 < click_rate < 0.35


def test_popularity_has_a_long_tail(shop: SyntheticShop) -> None:
    impressions = np.sort(np.bincount(shop.dataset.interactions[ITEM_ID], minlength=shop.config.num_items))[::-1]
    top_decile = impressions[: shop.config.num_items // 10].sum() / impressions.sum()
    assert top_decile > 0.4


def test_brand_queries_favour_the_named_brand(shop: SyntheticShop) -> None:
    # Public view only: rows whose query starts with the lower-cased brand of the shown item.
    inter = shop.dataset.interactions.merge(shop.dataset.items[[ITEM_ID, "brand"]], on=ITEM_ID)
    brand_names = {name.lower() for name in shop.dataset.items["brand"]}
    first_word = inter[QUERY].str.split(" ").str[0]
    branded = first_word.isin(brand_names)
    assert branded.mean() > 0.05
    same = branded & (first_word == inter["brand"].str.lower())
    other = branded & ~same
    assert inter.loc[same, LABEL].mean() > 2 * inter.loc[other, LABEL].mean()
    kinds = shop.truth.request_kind[inter[REQUEST_ID]]
    np.testing.assert_array_equal(branded, np.isin(kinds, (KIND_BRAND, KIND_BRAND_NOUN)))


def test_price_sensitive_users_buy_cheaper_items(shop: SyntheticShop) -> None:
    truth, inter = shop.truth, shop.dataset.interactions
    purchases = inter[inter[LABEL] == 3]
    sensitivity = truth.user_price_sensitivity[purchases[USER_ID]]
    low, high = np.quantile(truth.user_price_sensitivity, [0.25, 0.75])
    paid = truth.item_price_ratio[purchases[ITEM_ID]]  # log(price / leaf median price)
    assert paid[sensitivity >= high].mean() < paid[sensitivity <= low].mean() - 0.15


def test_demographics_correlate_with_hidden_taste_and_price_sensitivity() -> None:
    shop = generate_shop(SyntheticConfig(num_users=4000, num_items=100, num_interactions=100, seed=3))
    age = shop.dataset.users["age_group"].to_numpy()
    truth = shop.truth
    young, old = age == AGE_GROUPS[0], age == AGE_GROUPS[-1]
    sensitivity = truth.user_price_sensitivity
    assert sensitivity[young].mean() > 1.3 * sensitivity[old].mean()
    likes = {name: (truth.user_departments == truth.departments.index(name)).any(axis=1) for name in truth.departments}
    assert likes["electronics"][young].mean() > likes["electronics"][old].mean() + 0.15
    assert likes["books"][old].mean() > likes["books"][young].mean() + 0.15


def test_relevance_is_higher_for_items_matching_the_query(shop: SyntheticShop) -> None:
    truth = shop.truth
    requests = np.flatnonzero((truth.request_kind == KIND_LEAF) & ~truth.request_misspelled)[:200]
    queries = shop.dataset.interactions.groupby(REQUEST_ID)[QUERY].first().to_numpy()[requests]
    relevance = truth.relevance(requests)
    matches = queries[:, None] == shop.dataset.items["category_leaf"].to_numpy()[None, :]
    assert matches.any(axis=1).all()
    gap = np.nanmean(np.where(matches, relevance, np.nan), axis=1) - np.nanmean(
        np.where(matches, np.nan, relevance), axis=1
    )
    assert (gap > 0).mean() > 0.95


def test_relevance_reproduces_the_click_model(shop: SyntheticShop) -> None:
    truth, inter, size = shop.truth, shop.dataset.interactions, shop.config.list_size
    shown = inter[ITEM_ID].to_numpy().reshape(-1, size)
    relevance = np.take_along_axis(truth.relevance(np.arange(truth.num_requests)), shown, axis=1)
    # Scoring the shown lists directly (as the generator does) gives the same logits.
    np.testing.assert_allclose(truth.relevance(np.arange(truth.num_requests), shown), relevance, atol=1e-4)
    position_bias = truth.position_bias[truth.request_device]  # rows are in display order
    p_click = _sigmoid(relevance + position_bias + truth.weights["click_offset"]).ravel()
    clicked = (inter[LABEL] >= 1).to_numpy()
    # Expected number of clicks = sum(p), within 4 standard deviations sqrt(sum p (1 - p)).
    assert abs(clicked.sum() - p_click.sum()) < 4 * np.sqrt((p_click * (1 - p_click)).sum())
    # Calibrated per decile of predicted probability.
    decile = np.digitize(p_click, np.quantile(p_click, np.linspace(0.1, 0.9, 9)))
    observed = np.bincount(decile, clicked) / np.bincount(decile)
    expected = np.bincount(decile, p_click) / np.bincount(decile)
    np.testing.assert_allclose(observed, expected, atol=0.03)
    assert np.all(np.diff(observed) > -0.02)


def test_true_top_items_are_clicked_more(shop: SyntheticShop) -> None:
    truth, inter = shop.truth, shop.dataset.interactions
    top = truth.top_k(np.arange(truth.num_requests), k=10).item_ids
    in_top = (top[inter[REQUEST_ID].to_numpy()] == inter[ITEM_ID].to_numpy()[:, None]).any(axis=1)
    clicked = inter[LABEL] >= 1
    assert in_top.mean() > 0.05
    assert clicked[in_top].mean() > 2 * clicked[~in_top].mean()


def test_top_k_and_relevance_agree_across_batch_sizes(shop: SyntheticShop) -> None:
    truth = shop.truth
    requests = np.array([5, 0, 17, 3999])
    full = truth.relevance(requests)
    assert full.shape == (4, truth.num_items) and full.dtype == np.float32
    np.testing.assert_allclose(truth.relevance(requests, batch_size=64), full, rtol=1e-5, atol=1e-5)
    subset = np.array([7, 3, 250, 3])
    np.testing.assert_allclose(truth.relevance(requests, subset), full[:, subset], rtol=1e-5, atol=1e-5)
    lists = np.array([[1, 2, 3], [9, 8, 7], [0, 999, 5], [4, 4, 4]])
    np.testing.assert_allclose(
        truth.relevance(requests, lists), np.take_along_axis(full, lists, axis=1), rtol=1e-5, atol=1e-5
    )
    expected = np.argsort(-full, axis=1, kind="stable")[:, :6]
    for batch_size in (1 << 22, 100, 7):
        top = truth.top_k(requests, k=6, batch_size=batch_size)
        np.testing.assert_array_equal(top.item_ids, expected)
        np.testing.assert_allclose(top.scores, np.take_along_axis(full, expected, axis=1), rtol=1e-5, atol=1e-5)
        assert np.all(np.diff(top.scores, axis=1) <= 0)


def test_relevance_and_top_k_reject_bad_arguments(shop: SyntheticShop) -> None:
    truth = shop.truth
    with pytest.raises(ValueError, match=r"`request_ids` should lie in \[0, 4000\)"):
        truth.relevance(np.array([4000]))
    with pytest.raises(ValueError, match="`item_ids` should be a 1-D or 2-D array of integer ids"):
        truth.relevance(np.array([0]), np.zeros((1, 2, 3), np.int64))
    with pytest.raises(ValueError, match=r"`item_ids` should have one row per request \(1\) when 2-D"):
        truth.relevance(np.array([0]), np.array([[1, 2], [3, 4]]))
    with pytest.raises(ValueError, match=r"`k` should be a positive integer\. Received: k=0"):
        truth.top_k(np.array([0]), k=0)
    with pytest.raises(ValueError, match="`k` should be at most the catalog size 1000"):
        truth.top_k(np.array([0]), k=1001)


# ------------------------------------------------------------------------------------------ save and write
def test_truth_save_load_round_trip(shop: SyntheticShop, tmp_path) -> None:
    shop.truth.save(tmp_path / "truth")
    loaded = ShopTruth.load(tmp_path / "truth")
    _assert_truth_equal(shop.truth, loaded)
    requests = np.arange(50)
    np.testing.assert_array_equal(loaded.relevance(requests), shop.truth.relevance(requests))
    for path in (tmp_path / "truth").glob("*.npy"):
        np.load(path, allow_pickle=False)  # plain arrays, no pickled objects


def test_truth_load_reports_missing_and_mismatched_files(shop: SyntheticShop, tmp_path) -> None:
    directory = shop.truth.save(tmp_path / "truth")
    np.save(directory / "item_quality.npy", shop.truth.item_quality[:-1])
    with pytest.raises(ValueError, match=r"`item_quality` \(item_quality.npy\) has 999 rows but `item_leaf`"):
        ShopTruth.load(directory)
    (directory / "item_quality.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"item_quality\.npy does not exist"):
        ShopTruth.load(directory)
    with pytest.raises(FileNotFoundError, match=r"truth\.json does not exist"):
        ShopTruth.load(tmp_path / "nowhere")


def test_write_shop_writes_tables_truth_and_spec(shop: SyntheticShop, tmp_path) -> None:
    out = tmp_path / "shop"
    spec_path = write_shop(shop, out)
    assert spec_path == out / "spec.toml"
    assert sorted(os.listdir(tmp_path)) == ["shop"]  # no temporary directory left behind
    assert sorted(p.name for p in out.iterdir()) == [
        "interactions.parquet",
        "items.parquet",
        "spec.toml",
        "truth",
        "users.parquet",
    ]
    spec = tomllib.loads(spec_path.read_text())
    assert spec["name"] == "synthetic-shop" and spec["format"] == "tables" and spec["policy"] == "error"
    assert spec["label"] == {
        "kind": "graded",
        "min": 0,
        "max": 3,
        "positive_threshold": 1,
        "names": {"0": "impression", "1": "click", "2": "cart", "3": "purchase"},
    }
    assert spec["interactions"] == {
        "path": "interactions.parquet",
        "user_id": "user_id",
        "item_id": "item_id",
        "order": "timestamp",
        "label": "label",
        "query": "query",
        "request_id": "request_id",
        "context": ["device", "hour"],
    }
    assert spec["items"] == {
        "path": "items.parquet",
        "item_id": "item_id",
        "categorical": ["category_l1", "category_l2", "category_leaf", "brand"],
        "numeric": ["price"],
        "text": ["title"],
    }
    assert spec["users"] == {
        "path": "users.parquet",
        "user_id": "user_id",
        "categorical": ["age_group", "region"],
        "numeric": ["tenure_days"],
    }
    assert spec["synthetic"] == {**dataclasses.asdict(shop.config), "num_brands": shop.config.resolved_num_brands}
    assert generate_shop(SyntheticConfig(**spec["synthetic"])).dataset.items.equals(shop.dataset.items)
    for name in ("interactions", "items", "users"):
        read = pd.read_parquet(out / spec[name]["path"])
        pd.testing.assert_frame_equal(read, getattr(shop.dataset, name))
    _assert_truth_equal(ShopTruth.load(out / "truth"), shop.truth)


def test_write_shop_refuses_to_overwrite_unless_asked(shop: SyntheticShop, tmp_path) -> None:
    out = tmp_path / "shop"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match=re.escape(str(out))):
        write_shop(shop, out)
    assert sorted(os.listdir(tmp_path)) == ["shop"]
    write_shop(shop, out, overwrite=True)
    assert not (out / "old.txt").exists() and (out / "spec.toml").exists()
    assert sorted(os.listdir(tmp_path)) == ["shop"]


def test_write_shop_failure_leaves_nothing_behind(shop: SyntheticShop, tmp_path, monkeypatch) -> None:
    def fail(self, directory):
        raise OSError("disk full")

    monkeypatch.setattr(ShopTruth, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        write_shop(shop, tmp_path / "shop")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_users": 0}, "`num_users` should be a positive integer. Received: num_users=0"),
        ({"num_items": 5}, r"`num_items` should be an integer >= max\(8, list_size\)=10. Received: num_items=5"),
        ({"num_items": 15, "list_size": 20}, r"`num_items` should be an integer >= max\(8, list_size\)=20"),
        ({"num_interactions": 2.5}, "`num_interactions` should be a positive integer. Received: num_interactions=2.5"),
        ({"list_size": 0}, "`list_size` should be a positive integer"),
        ({"seed": -1}, "`seed` should be a non-negative integer. Received: seed=-1"),
        ({"num_brands": 3}, "`num_brands` should be an integer >= 8. Received: num_brands=3"),
        ({"num_brands": 10**6}, "`num_brands` should be at most"),
        ({"latent_dim": True}, "`latent_dim` should be a positive integer. Received: latent_dim=True"),
        ({"start_time": 1000}, "`start_time` should be a midnight UTC"),
        (
            {"browse_fraction": 1.5},
            r"`browse_fraction` should be a number in \[0.0, 1.0\]. Received: browse_fraction=1.5",
        ),
        (
            {"browse_fraction": 0.8, "generic_fraction": 0.3},
            "`browse_fraction \\+ generic_fraction` should be at most 1",
        ),
        ({"misspell_fraction": float("nan")}, "`misspell_fraction` should be a number"),
        ({"popularity_exponent": -1.0}, "`popularity_exponent` should be a number"),
        ({"logging_policy_strength": "high"}, "`logging_policy_strength` should be a number"),
    ],
)
def test_config_validation(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**changes)


def test_generate_shop_rejects_other_configs() -> None:
    with pytest.raises(TypeError, match="`config` should be a SyntheticConfig"):
        generate_shop({"num_items": 10})  # type: ignore[arg-type]
