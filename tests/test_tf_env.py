"""The Keras-2 switch: set in exactly one place, and every package goes through it before TensorFlow."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ["features", "ranking", "retrieval", "distill", "index", "cascade"]

_CHECK = """
import os
os.environ.pop("TF_USE_LEGACY_KERAS", None)
import {package}
import tensorflow as tf
import tf_keras
import tensorflow_recommenders as tfrs
assert tf.keras.__name__.startswith("tf_keras"), tf.keras.__name__
assert isinstance(tf.keras.layers.Dense(1), tf_keras.layers.Layer)
assert issubclass(tfrs.Model, tf_keras.Model)
print("ok", tf.__version__)
"""


@pytest.fixture(scope="module")
def package_results() -> dict[str, subprocess.CompletedProcess]:
    # One fresh interpreter per package (the switch is process-wide), all started at once to share the TF
    # import time.
    procs = {
        package: subprocess.Popen(
            [sys.executable, "-c", _CHECK.format(package=package)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for package in PACKAGES
    }
    results = {}
    for package, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        results[package] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


@pytest.mark.parametrize("package", PACKAGES)
def test_importing_our_package_first_gives_tf_keras(package: str, package_results) -> None:
    result = package_results[package]
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok 2.21"), result.stdout


def test_switch_is_set_in_exactly_one_place() -> None:
    setters = []
    for path in REPO_ROOT.glob("*/**/*.py"):
        if ".venv" in path.parts or "tests" in path.parts:
            continue
        if re.search(r"[\"']TF_USE_LEGACY_KERAS[\"']", path.read_text(encoding="utf-8")):
            setters.append(path.relative_to(REPO_ROOT).as_posix())
    assert setters == ["features/_tf_env.py"]


def test_every_package_imports_features_first() -> None:
    for package in PACKAGES[1:]:
        source = (REPO_ROOT / package / "__init__.py").read_text(encoding="utf-8")
        imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
        assert imports and imports[0].startswith("import features"), (package, imports[:1])
    source = (REPO_ROOT / "features" / "__init__.py").read_text(encoding="utf-8")
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert imports[0].startswith("from features import _tf_env")
