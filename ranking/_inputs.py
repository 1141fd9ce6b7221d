"""Input specs of the rankers' feature dicts (for `tf.function` signatures, exports and building weights)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import tensorflow as tf

from features import FeatureEncoders
from features.layers import FeatureLayout


def feature_specs(encoders: FeatureEncoders, keys: Iterable[str]) -> dict[str, tf.TensorSpec]:
    """``tf.TensorSpec`` of encoded feature keys (item or query side), with a ``None`` batch dimension.

    Args:
        encoders: The fitted encoders (they give the widths of token and history arrays).
        keys: Feature keys of ``encode_items`` / ``encode_queries``.

    Returns:
        Key -> spec, in the order of ``keys``.
    """
    layout = FeatureLayout.from_encoders(encoders, "both")
    config = encoders.config
    lengths = {"query_tokens": config.max_query_tokens, "history": config.max_history}
    lengths.update({f"item_{c}_tokens": config.max_text_tokens for c in encoders.item_text})
    specs = layout.tensor_spec(sequence_lengths=lengths)
    specs["history_length"] = tf.TensorSpec([None], tf.int32, name="history_length")
    keys = list(dict.fromkeys(keys))
    unknown = [k for k in keys if k not in specs]
    if unknown:
        raise ValueError(f"`keys` should be encoded feature keys {sorted(specs)}. Received unknown: {unknown}")
    return {k: specs[k] for k in keys}


def zeros_like_specs(specs: Mapping[str, tf.TensorSpec], batch_size: int = 1) -> dict[str, tf.Tensor]:
    """A batch of zeros (all padding / missing) matching ``specs``."""
    return {key: tf.zeros([batch_size, *spec.shape[1:]], dtype=spec.dtype) for key, spec in specs.items()}


def select(features: Mapping[str, np.ndarray | tf.Tensor], keys: Iterable[str], *, side: str) -> dict:
    """The entries of ``keys``, with an error naming what is missing."""
    keys = list(keys)
    missing = [k for k in keys if k not in features]
    if missing:
        raise ValueError(f"The {side} features should hold {missing}. Received keys: {sorted(features)}")
    return {k: features[k] for k in keys}
