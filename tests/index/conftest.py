"""Fixtures of the index tests: a tiny cascade trained once per session and saved like `cascade train` does."""

from __future__ import annotations

from pathlib import Path

import pytest
from index_fixtures import TINY, TrainedShop

import features
from distill.trainer import save_cascade
from features import SyntheticConfig, generate_shop


@pytest.fixture(scope="session")
def trained_shop(tmp_path_factory) -> TrainedShop:
    from distill.trainer import train_cascade

    shop = generate_shop(SyntheticConfig(num_users=300, num_items=400, num_interactions=6000, seed=3))
    split = features.temporal_leave_last_out(shop.dataset)
    trained = train_cascade(shop.dataset, split, config=TINY, show_progress=False)
    model_dir = save_cascade(trained, tmp_path_factory.mktemp("cascade") / "models")
    return TrainedShop(shop=shop, split=split, trained=trained, model_dir=model_dir)


@pytest.fixture(scope="session")
def flat_bundle(trained_shop: TrainedShop, tmp_path_factory) -> Path:
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
