"""The FAISS build-index job, the artifact bundle and its manifest, and the query-time `Searcher`."""

import features  # noqa: F401  (selects Keras 2 before anything can touch tf.keras)

__all__: list[str] = []
