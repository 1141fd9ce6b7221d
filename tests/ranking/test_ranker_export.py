"""SavedModel export: save -> load gives the in-memory scores, for the teacher and the student."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from ranking import export_ranker, load_ranker, score_pairs


@pytest.mark.parametrize("which", ["trained_teacher", "trained_student"])
def test_export_round_trip(which, request, shop_data, tmp_path: Path) -> None:
    model, _ = request.getfixturevalue(which)
    target = tmp_path / "ranker"
    specs = model.input_specs()
    assert export_ranker(model, target, query_spec=specs["query"], item_spec=specs["item"]) == target
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary sibling left
    serve = load_ranker(target)
    gc.collect()  # the signature must keep the loaded SavedModel alive

    test = shop_data.test
    rows = np.arange(300)
    query = {k: v[test.query_index[rows]] for k, v in test.queries.items() if k in specs["query"]}
    item = {k: v[test.item_rows[rows]] for k, v in shop_data.items.items() if k in specs["item"]}
    logits = serve(**{k: tf.constant(v) for k, v in {**query, **item}.items()})["logits"].numpy()
    np.testing.assert_allclose(logits, score_pairs(model, query, item), atol=1e-5)


def test_export_errors(trained_student, tmp_path: Path) -> None:
    student, _ = trained_student
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        export_ranker(student, tmp_path / "taken")
    specs = student.input_specs()
    with pytest.raises(ValueError, match=r"Query and item feature keys should be distinct.*\['history'\]"):
        export_ranker(student, tmp_path / "x", query_spec=specs["query"], item_spec={**specs["item"], "history": None})
    with pytest.raises(FileNotFoundError, match=r"holds no saved_model\.pb"):
        load_ranker(tmp_path / "missing")
