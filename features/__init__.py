"""The data contract: schemas, loaders, the synthetic shop, splits, queries and encoders.

Every package of Cascade imports this package first; its first import selects Keras 2 for TensorFlow
(`features._tf_env`), so nothing of ours can reach ``tf.keras`` before the switch.
"""

from features import _tf_env  # noqa: F401  (must stay first: sets TF_USE_LEGACY_KERAS before TF loads)
from features.loaders import load_amazon_5core, load_dataset, load_movielens_100k, load_tables, read_table
from features.queries import QueryBatch, build_queries
from features.schema import (
    ITEM_ID,
    LABEL,
    QUERY,
    REQUEST_ID,
    TIMESTAMP,
    USER_ID,
    Dataset,
    LabelSpec,
    Schema,
)
from features.spec import DatasetSpec, SpecError
from features.splits import Split, SplitReport, temporal_leave_last_out
from features.validation import DataValidationError, Problem, ValidationReport, validate_dataset

__all__ = [
    "ITEM_ID",
    "LABEL",
    "QUERY",
    "REQUEST_ID",
    "TIMESTAMP",
    "USER_ID",
    "DataValidationError",
    "Dataset",
    "DatasetSpec",
    "LabelSpec",
    "Problem",
    "QueryBatch",
    "Schema",
    "SpecError",
    "Split",
    "SplitReport",
    "ValidationReport",
    "build_queries",
    "load_amazon_5core",
    "load_dataset",
    "load_movielens_100k",
    "load_tables",
    "read_table",
    "temporal_leave_last_out",
    "validate_dataset",
]
