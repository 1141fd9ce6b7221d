"""The one place that selects Keras 2 (``tf_keras``) for TensorFlow.

TensorFlow Recommenders is written against Keras 2, while TensorFlow 2.16+ resolves ``tf.keras`` to Keras 3
unless ``TF_USE_LEGACY_KERAS=1`` is set before ``tf.keras`` is first touched. Every package of this project
imports :mod:`features` first, and :mod:`features` imports this module first, so the switch happens exactly
once, here, before any of our code can reach TensorFlow.
"""

from __future__ import annotations

import os
import sys

_ENV_VAR = "TF_USE_LEGACY_KERAS"


def _select_legacy_keras() -> None:
    previous = os.environ.get(_ENV_VAR)
    os.environ[_ENV_VAR] = "1"
    tf = sys.modules.get("tensorflow")
    if tf is None or previous == "1":
        return
    # TensorFlow was imported before us without the switch. tf.keras is resolved lazily, so this is only
    # fatal when something already bound it to Keras 3.
    keras_module = getattr(tf, "__dict__", {}).get("keras")
    name = getattr(keras_module, "__name__", "")
    if name and not name.startswith("tf_keras"):
        raise ImportError(
            f"tf.keras is already bound to {name!r} (Keras 3), but Cascade needs Keras 2 (tf_keras) for "
            f"TensorFlow Recommenders. Import Cascade's packages before TensorFlow, or set {_ENV_VAR}=1 in "
            "the environment."
        )


_select_legacy_keras()
