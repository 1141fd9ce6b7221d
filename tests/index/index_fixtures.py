"""Helpers of the index tests (a module with a unique name: every test folder has its own `conftest`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

import features
from distill.mining import MiningConfig
from distill.trainer import CascadeConfig, StudentStage, TeacherStage, TrainedCascade, TwoTowerStage
from ranking import StudentConfig, TeacherConfig
from retrieval import TowerConfig

TINY = CascadeConfig(
    teacher=TeacherStage(
        epochs=2,
        batch_size=16,
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


def held_out_queries(trained_shop: TrainedShop, n: int = 40) -> features.QueryBatch:
    """The first ``n`` held-out test requests as raw queries (histories cut at the request time)."""
    batch = features.build_queries(trained_shop.split.test, trained_shop.shop.dataset)
    return batch.take(np.arange(min(n, len(batch))))
