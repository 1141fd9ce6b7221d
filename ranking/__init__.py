"""Rankers: the cross-feature `TeacherRanker` (DCN-v2) and the light `StudentRanker`."""

import features  # noqa: F401  (selects Keras 2 before anything can touch tf.keras)

__all__: list[str] = []
