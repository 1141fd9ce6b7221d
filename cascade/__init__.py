"""The app layer: configuration, the pipeline, offline evaluation and reports, and the ``cascade`` CLI."""

import features  # noqa: F401  (selects Keras 2 before anything can touch tf.keras)

__all__: list[str] = []
