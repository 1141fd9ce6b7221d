"""The data contract: schemas, loaders, the synthetic shop, splits, queries and encoders.

Every package of Cascade imports this package first; its first import selects Keras 2 for TensorFlow
(`features._tf_env`), so nothing of ours can reach ``tf.keras`` before the switch.
"""

from features import _tf_env  # noqa: F401  (must stay first: sets TF_USE_LEGACY_KERAS before TF loads)
from features.encoders import (
    Bucketizer,
    EncoderConfig,
    FeatureEncoders,
    NumericNormalizer,
    TextTokenizer,
    Vocabulary,
    encode_history,
    make_tf_dataset,
)
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
from features.synthetic import ShopTruth, SyntheticConfig, SyntheticShop, generate_shop, write_shop
from features.validation import DataValidationError, Problem, ValidationReport, validate_dataset

__all__ = [
    "ITEM_ID",
    "LABEL",
    "QUERY",
    "REQUEST_ID",
    "TIMESTAMP",
    "USER_ID",
    "Bucketizer",
    "DataValidationError",
    "Dataset",
    "DatasetSpec",
    "EncoderConfig",
    "FeatureEncoders",
    "LabelSpec",
    "NumericNormalizer",
    "Problem",
    "QueryBatch",
    "Schema",
    "ShopTruth",
    "SpecError",
    "Split",
    "SplitReport",
    "SyntheticConfig",
    "SyntheticShop",
    "TextTokenizer",
    "ValidationReport",
    "Vocabulary",
    "build_queries",
    "encode_history",
    "generate_shop",
    "load_amazon_5core",
    "load_dataset",
    "load_movielens_100k",
    "load_tables",
    "make_tf_dataset",
    "read_table",
    "temporal_leave_last_out",
    "validate_dataset",
    "write_shop",
]
