"""The two-tower retrieval student: `QueryTower`, `ItemTower` and `TwoTowerModel` (TensorFlow Recommenders)."""

import features  # noqa: F401  (selects Keras 2 before anything can touch tf.keras)
from retrieval.export import export_towers, load_tower
from retrieval.model import (
    RetrievalConfig,
    TwoTowerModel,
    item_sampling_probability,
    make_training_dataset,
    train_two_tower,
)
from retrieval.towers import ItemTower, QueryTower, TowerConfig, embed_catalog

__all__ = [
    "ItemTower",
    "QueryTower",
    "RetrievalConfig",
    "TowerConfig",
    "TwoTowerModel",
    "embed_catalog",
    "export_towers",
    "item_sampling_probability",
    "load_tower",
    "make_training_dataset",
    "train_two_tower",
]
