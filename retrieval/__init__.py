"""The two-tower retrieval student: `QueryTower`, `ItemTower` and `TwoTowerModel` (TensorFlow Recommenders)."""

import features  # noqa: F401  (selects Keras 2 before anything can touch tf.keras)

__all__: list[str] = []
