"""Shared fixtures: paths to the real data sets beside the repository, and tiny hand-made data sets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import features
from features import Dataset, LabelSpec, Schema

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CASCADE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _data_dir(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        message = f"real data set {path} is missing: tests read ../shared/data beside the repository"
        if os.environ.get("CASCADE_ALLOW_MISSING_DATA") == "1":
            pytest.skip(message)
        pytest.fail(message + " (set CASCADE_ALLOW_MISSING_DATA=1 to skip these tests instead)")
    return path


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    return _data_dir("movielens-100k")


@pytest.fixture(scope="session")
def amazon_dir() -> Path:
    return _data_dir("amazon-office-2014")


@pytest.fixture(scope="session")
def movielens(movielens_dir: Path) -> Dataset:
    return features.load_movielens_100k(movielens_dir)


@pytest.fixture(scope="session")
def amazon(amazon_dir: Path) -> Dataset:
    return features.load_amazon_5core(amazon_dir)


def make_tiny_shop() -> Dataset:
    """Four items, three users, graded events in requests: small enough to check every number by hand."""
    items = pd.DataFrame(
        {
            "item_id": np.array([10, 11, 12, 13], dtype=np.int64),
            "brand": ["acme", "acme", "zen", None],
            "price": np.array([9.5, 20.0, np.nan, 5.0]),
            "title": ["Acme red pen", "Acme blue pen", "Zen &amp; ink", ""],
        }
    )
    users = pd.DataFrame({"user_id": np.array([1, 2, 3], dtype=np.int64), "segment": ["a", "b", "a"]})
    rows = [
        # user, item, time, label, query, request, device
        (1, 10, 100, 1, "pen", 1, "app"),
        (1, 11, 100, 0, "pen", 1, "app"),
        (1, 12, 200, 3, "", 2, "web"),
        (1, 13, 300, 0, "ink", 3, "web"),
        (1, 11, 300, 2, "ink", 3, "web"),
        (1, 10, 400, 1, "red pen", 4, "app"),
        (1, 13, 500, 0, "", 5, "app"),
        (2, 12, 150, 1, "zen", 6, "web"),
        (2, 10, 250, 1, "", 7, "web"),
        (3, 13, 120, 1, "", 8, "app"),
        (3, 12, 130, 1, "", 9, "app"),
        (3, 11, 140, 1, "", 10, "app"),
    ]
    interactions = pd.DataFrame(
        rows, columns=["user_id", "item_id", "timestamp", "label", "query", "request_id", "device"]
    ).astype({"user_id": np.int64, "item_id": np.int64, "timestamp": np.int64, "label": np.int64})
    interactions["query"] = interactions["query"].astype(object)
    schema = Schema(
        label=LabelSpec(kind="graded", min=0, max=3, positive_threshold=1),
        has_query=True,
        has_request_id=True,
        context=("device",),
        item_categorical=("brand",),
        item_numeric=("price",),
        item_text=("title",),
        user_categorical=("segment",),
    )
    return Dataset(name="tiny", schema=schema, interactions=interactions, items=items, users=users)


@pytest.fixture
def tiny_shop() -> Dataset:
    return make_tiny_shop()


# -- a tiny cascade trained once per session (index, jobs and CLI tests share it) -------------------------------


@pytest.fixture(scope="session")
def trained_shop(tmp_path_factory):
    from distill.trainer import save_cascade, train_cascade
    from features import SyntheticConfig, generate_shop
    from tests.index.index_fixtures import TINY, TrainedShop

    shop = generate_shop(SyntheticConfig(num_users=300, num_items=400, num_interactions=6000, seed=3))
    split = features.temporal_leave_last_out(shop.dataset)
    trained = train_cascade(shop.dataset, split, config=TINY, show_progress=False)
    model_dir = save_cascade(trained, tmp_path_factory.mktemp("cascade") / "models")
    return TrainedShop(shop=shop, split=split, trained=trained, model_dir=model_dir)


@pytest.fixture(scope="session")
def flat_bundle(trained_shop, tmp_path_factory) -> Path:
    from index import BuildConfig, IndexConfig, build_index

    out = tmp_path_factory.mktemp("bundles") / "flat"
    build_index(
        trained_shop.model_dir,
        trained_shop.shop.dataset.items,
        out,
        BuildConfig(index=IndexConfig(factory="Flat")),
        users=trained_shop.shop.dataset.users,
    )
    return out
