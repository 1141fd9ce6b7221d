"""Distillation: losses, negative mining and the cascade distillation trainer."""

import features  # noqa: F401  (selects Keras 2 before anything can touch tf.keras)

__all__: list[str] = []
