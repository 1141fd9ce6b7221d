"""Export of the two towers as SavedModels with explicit serving signatures, and loading them back.

Layout of an export directory::

    query_tower/     SavedModel, signature "serving_default": query feature dict -> {"embeddings": [batch, dim]}
    item_tower/      SavedModel, signature "serving_default": item feature dict -> {"embeddings": [batch, dim]}
    manifest.json    format version, embedding dimension, each signature's inputs, TensorFlow version

Each SavedModel holds the tower's variables and one traced inference function (no Keras metadata), so loading
needs only TensorFlow. The whole directory is written under a temporary sibling name and renamed into place, so
a reader never sees a half-written export.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import tensorflow as tf

from retrieval.model import TwoTowerModel
from retrieval.towers import _Tower

FORMAT_VERSION = 1
QUERY_TOWER_DIR = "query_tower"
ITEM_TOWER_DIR = "item_tower"
MANIFEST_FILE = "manifest.json"
SIGNATURE_KEY = "serving_default"
OUTPUT_KEY = "embeddings"


def export_towers(
    model: TwoTowerModel,
    directory: str | os.PathLike[str],
    *,
    query_spec: Mapping[str, tf.TensorSpec],
    item_spec: Mapping[str, tf.TensorSpec],
) -> Path:
    """Writes ``model.query_tower`` and ``model.item_tower`` as two SavedModels.

    Args:
        model: A trained model.
        directory: Where to write; must not exist yet (an export is immutable).
        query_spec: Key -> spec of each query feature the query tower reads, e.g.
            ``FeatureLayout.from_encoders(encoders, "query").tensor_spec(sequence_lengths={"query_tokens": 16,
            "history": 20})``. The signature takes exactly these keys as named inputs.
        item_spec: The same for the item tower.

    Returns:
        The export directory.

    Raises:
        FileExistsError: When ``directory`` exists.
        ValueError: When a spec misses a key the tower reads or holds one it does not read.
    """
    directory = Path(directory)
    if directory.exists():
        raise FileExistsError(f"{directory} already exists: export into a new directory (exports are immutable).")
    towers = {QUERY_TOWER_DIR: (model.query_tower, query_spec), ITEM_TOWER_DIR: (model.item_tower, item_spec)}
    specs = {name: _checked_spec(name, tower, spec) for name, (tower, spec) in towers.items()}
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{uuid.uuid4().hex}")
    try:
        tmp.mkdir()
        for name, (tower, _) in towers.items():
            module = _serving_module(tower, specs[name])
            tf.saved_model.save(module, str(tmp / name), signatures={SIGNATURE_KEY: module.serve})
        manifest = {
            "format_version": FORMAT_VERSION,
            "embedding_dim": int(model.query_tower.output_dim),
            "signature": SIGNATURE_KEY,
            "output": OUTPUT_KEY,
            "towers": {
                name: {
                    "inputs": {
                        key: {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}
                        for key, spec in specs[name].items()
                    }
                }
                for name in towers
            },
            "tensorflow_version": tf.__version__,
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def load_tower(directory: str | os.PathLike[str]) -> Callable[..., dict[str, tf.Tensor]]:
    """Loads one exported tower's serving signature.

    Args:
        directory: A tower directory of an export (``<export>/query_tower`` or ``<export>/item_tower``).

    Returns:
        The ``serving_default`` signature: call it with the features as keyword arguments
        (``signature(**features)``, each ``[batch]`` or ``[batch, length]``); it returns
        ``{"embeddings": [batch, dim]}``.

    Raises:
        FileNotFoundError: When the directory or its ``saved_model.pb`` is missing.
        ValueError: When the SavedModel has no ``serving_default`` signature.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory} does not exist: pass the {QUERY_TOWER_DIR}/ or {ITEM_TOWER_DIR}/ directory of an export "
            "written by export_towers()."
        )
    if not (directory / "saved_model.pb").is_file():
        raise FileNotFoundError(
            f"{directory} has no saved_model.pb: pass the {QUERY_TOWER_DIR}/ or {ITEM_TOWER_DIR}/ directory of an "
            "export written by export_towers(), not the export root."
        )
    loaded = tf.saved_model.load(str(directory))
    if SIGNATURE_KEY not in loaded.signatures:
        raise ValueError(
            f"{directory} has no {SIGNATURE_KEY!r} signature (it has {sorted(loaded.signatures)}): it was not written "
            "by export_towers()."
        )
    return loaded.signatures[SIGNATURE_KEY]


class _ServingModule(tf.Module):
    """Holds a tower's variables and its traced inference function, without Keras' SavedModel metadata."""

    def __init__(self, tower: _Tower, spec: Mapping[str, tf.TensorSpec]) -> None:
        super().__init__(name=tower.name)
        self.tower_variables = list(tower.variables)

        @tf.function(input_signature=[dict(spec)])
        def serve(features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            return {OUTPUT_KEY: tower(features, training=False)}

        self.serve = serve


def _serving_module(tower: _Tower, spec: Mapping[str, tf.TensorSpec]) -> _ServingModule:
    # Build the tower's variables before the module collects them (a first call creates them).
    tower({key: tf.zeros([1, *(d or 1 for d in s.shape[1:])], s.dtype) for key, s in spec.items()}, training=False)
    return _ServingModule(tower, spec)


def _describe(spec: Mapping[str, tf.TensorSpec]) -> dict[str, dict]:
    return {key: {"dtype": s.dtype.name, "shape": s.shape.as_list()} for key, s in spec.items()}


def _checked_spec(name: str, tower: _Tower, spec: Mapping[str, tf.TensorSpec]) -> dict[str, tf.TensorSpec]:
    argument = "query_spec" if name == QUERY_TOWER_DIR else "item_spec"
    expected = tower.layout.names()
    missing = [k for k in expected if k not in spec]
    extra = [k for k in spec if k not in expected]
    if missing or extra:
        raise ValueError(
            f"`{argument}` should have exactly the keys the {name} reads {expected}. Missing: {missing}; "
            f"not read by the tower: {extra} (use FeatureLayout.tensor_spec)."
        )
    out = {}
    for key in expected:
        s = spec[key]
        if not isinstance(s, tf.TensorSpec):
            raise ValueError(f"`{argument}[{key!r}]` should be a tf.TensorSpec. Received: {type(s).__name__}")
        if s.shape.rank is None or s.shape.rank < 1:
            raise ValueError(f"`{argument}[{key!r}]` should have a batch dimension. Received: shape={s.shape}")
        out[key] = tf.TensorSpec(s.shape, s.dtype, name=key)
    return out
