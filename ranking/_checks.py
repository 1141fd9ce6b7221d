"""Validation of the rankers' config fields, with errors that say what to change."""

from __future__ import annotations

import numpy as np
import tf_keras as keras


def check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"`{name}` should be a positive integer. Received: {name}={value!r}")


def check_layer_widths(name: str, widths: object) -> None:
    if isinstance(widths, str | int) or not all(
        isinstance(w, int | np.integer) and not isinstance(w, bool) and w > 0 for w in widths
    ):
        raise ValueError(f"`{name}` should be a tuple of positive integers. Received: {name}={widths!r}")


def check_activation(activation: object) -> None:
    error = ValueError(
        f"`activation` should be a Keras activation name such as 'relu'. Received: activation={activation!r}"
    )
    if not isinstance(activation, str):
        raise error
    try:
        keras.activations.get(activation)
    except ValueError as e:
        raise error from e


def check_rate(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` should lie in [0, 1). Received: {name}={value!r}")


def check_non_negative(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0.0:
        raise ValueError(f"`{name}` should be a non-negative number. Received: {name}={value!r}")
