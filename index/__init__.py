"""The FAISS build-index job, the artifact bundle and its manifest, and the query-time `Searcher`.

Importing this package does not import TensorFlow: a query process needs only numpy, pandas and FAISS
(`build_index` imports TensorFlow when it runs, to read the trained models).
"""

import features  # noqa: F401  (selects Keras 2 before anything can touch tf.keras)
from index.ann import AnnIndex, IndexConfig, default_factory, exact_search
from index.build import BuildConfig, build_index
from index.bundle import Manifest, ManifestError, read_manifest
from index.numpy_models import NumpyStudent, NumpyTower
from index.searcher import (
    MAX_K,
    PAD_INT_ID,
    PAD_SLOT,
    PAD_STR_ID,
    Query,
    Searcher,
    SearchResults,
    queries_from_batch,
    update_index,
)
from index.shards import (
    ShardedBuild,
    add_shard,
    build_sharded,
    merge_shards,
    open_merged,
    shard_index,
    train_empty_index,
    write_empty_index,
)

__all__ = [
    "MAX_K",
    "PAD_INT_ID",
    "PAD_SLOT",
    "PAD_STR_ID",
    "AnnIndex",
    "BuildConfig",
    "IndexConfig",
    "Manifest",
    "ManifestError",
    "NumpyStudent",
    "NumpyTower",
    "Query",
    "SearchResults",
    "Searcher",
    "ShardedBuild",
    "add_shard",
    "build_index",
    "build_sharded",
    "default_factory",
    "exact_search",
    "merge_shards",
    "open_merged",
    "queries_from_batch",
    "read_manifest",
    "shard_index",
    "train_empty_index",
    "update_index",
    "write_empty_index",
]
