"""Fixtures of the index tests: a tiny cascade trained once per session and saved like `cascade train` does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import features
from distill.mining import MiningConfig
from distill.trainer import CascadeConfig, StudentStage, TeacherStage, TrainedCascade, TwoTowerStage, save_cascade
from features import SyntheticConfig, generate_shop
from ranking import StudentConfig, TeacherConfig
from retrieval import TowerConfig

TINY = CascadeConfig(
    teacher=TeacherStage(
        epochs=2,
        batch_size=128,
        negatives_per_query=4,
        retrieved_negatives=4,
        retrieval_depth=20,
        model=TeacherConfig(embedding_dim=8, deep_layers=(32, 16)),
    ),
    two_tower=TwoTowerStage(
        epochs=2,
        batch_size=64,
        tower=TowerConfig(embedding_dim=8, hidden_dims=(16,), output_dim=16),
        mining=MiningConfig(top_k=30, window_start=3, window_end=30, num_hard=4, num_easy=2, num_student_top=1),
    ),
    student=StudentStage(
        epochs=1,
        batch_size=32,
        num_retrieved=4,
        retrieval_depth=20,
        model=StudentConfig(embedding_dim=4, deep_layers=(16,)),
    ),
    modes=("distilled",),
)


@dataclass
class TrainedShop:
    shop: features.SyntheticShop
    split: features.Split
    trained: TrainedCascade
    model_dir: Path


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


def held_out_queries(trained_shop: TrainedShop, n: int = 40) -> features.QueryBatch:
    """The first ``n`` held-out test requests as raw queries (histories cut at the request time)."""
    batch = features.build_queries(trained_shop.split.test, trained_shop.shop.dataset)
    return batch.take(np.arange(min(n, len(batch))))
