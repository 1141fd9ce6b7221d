"""Export a ranker as a TensorFlow SavedModel with one flat ``serving_default`` signature.

A signature takes a flat set of named tensors, so the ``{"query": {...}, "item": {...}}`` input is flattened by
key: the encoders already give every item key an ``item_`` prefix and no query key has one, so the names stay
unique (checked). The output is ``{"logits": [batch]}``. The SavedModel is written to a temporary sibling and
renamed into place, so a reader never sees a half-written directory.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import tensorflow as tf
import tf_keras as keras

logger = logging.getLogger(__name__)

SIGNATURE = "serving_default"
OUTPUT = "logits"


class _ServingModule(tf.Module):
    """Holds the model (its variables) and the flat serving function."""

    def __init__(self, model: keras.Model, query_keys: tuple[str, ...], item_keys: tuple[str, ...]) -> None:
        super().__init__(name="ranker_export")
        self.model = model
        self._query_keys = query_keys
        self._item_keys = item_keys

    def serve(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        query = {k: features[k] for k in self._query_keys}
        item = {k: features[k] for k in self._item_keys}
        return {OUTPUT: self.model({"query": query, "item": item}, training=False)}


def export_ranker(
    model: keras.Model,
    directory: str | os.PathLike[str],
    *,
    query_spec: Mapping[str, tf.TensorSpec] | None = None,
    item_spec: Mapping[str, tf.TensorSpec] | None = None,
    overwrite: bool = False,
) -> Path:
    """Saves a ranker as a SavedModel whose ``serving_default`` takes flat feature tensors.

    Args:
        model: A `TeacherRanker` or `StudentRanker` (any Keras model called with
            ``{"query": {...}, "item": {...}}`` and returning ``[batch]`` logits).
        directory: Target directory; it must not exist unless ``overwrite``.
        query_spec: Query feature key -> ``tf.TensorSpec`` (batch dimension ``None``); defaults to
            ``model.input_specs()["query"]``.
        item_spec: Item feature key -> ``tf.TensorSpec``; defaults to ``model.input_specs()["item"]``.
        overwrite: Whether to replace an existing directory.

    Returns:
        The directory.

    Raises:
        FileExistsError: When ``directory`` exists and ``overwrite`` is False.
        ValueError: When a query key and an item key are equal (the flat signature needs unique names).
    """
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} already exists: pass overwrite=True or choose a new directory.")
    if query_spec is None or item_spec is None:
        if not hasattr(model, "input_specs"):
            raise ValueError("`query_spec` and `item_spec` are required for a model without input_specs().")
        specs = model.input_specs()
        query_spec = specs["query"] if query_spec is None else query_spec
        item_spec = specs["item"] if item_spec is None else item_spec
    collisions = sorted(set(query_spec) & set(item_spec))
    if collisions:
        raise ValueError(
            f"Query and item feature keys should be distinct to flatten them into one signature. Received both "
            f"sides with {collisions}"
        )
    flat = {key: tf.TensorSpec(spec.shape, spec.dtype, name=key) for key, spec in {**query_spec, **item_spec}.items()}
    module = _ServingModule(model, tuple(query_spec), tuple(item_spec))
    serve = tf.function(module.serve, input_signature=[flat])
    module.serve_function = serve

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.{uuid.uuid4().hex}.tmp")
    try:
        tf.saved_model.save(module, str(tmp), signatures={SIGNATURE: serve.get_concrete_function()})
        if directory.exists():
            old = directory.with_name(f".{directory.name}.{uuid.uuid4().hex}.old")
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("exported %s to %s", model.name, directory)
    return directory


def load_ranker(directory: str | os.PathLike[str]) -> Callable[..., dict[str, tf.Tensor]]:
    """Loads an exported ranker's ``serving_default`` signature.

    Args:
        directory: A directory written by `export_ranker`.

    Returns:
        The signature: call it with the flat features as keyword arguments (``fn(**query, **item)``); it returns
        ``{"logits": [batch]}``. It keeps the loaded SavedModel alive.

    Raises:
        FileNotFoundError: When ``directory`` holds no SavedModel.
        ValueError: When the SavedModel has no ``serving_default`` signature.
    """
    directory = Path(directory)
    if not (directory / "saved_model.pb").is_file():
        raise FileNotFoundError(f"{directory} holds no saved_model.pb: not a directory written by export_ranker().")
    loaded = tf.saved_model.load(str(directory))
    if SIGNATURE not in loaded.signatures:
        raise ValueError(f"{directory} has no {SIGNATURE!r} signature. Found: {sorted(loaded.signatures)}")
    signature = loaded.signatures[SIGNATURE]
    # A signature does not own its variables: keep the loaded object reachable from it.
    signature.loaded_saved_model = loaded
    return signature
