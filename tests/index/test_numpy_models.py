"""The numpy inference path: towers and ranking student equal their Keras models, save -> load, bad inputs."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import features
from features import FeatureEncoders, SyntheticConfig, build_queries, generate_shop, temporal_leave_last_out
from index import numpy_models
from index.numpy_models import NumpyStudent, NumpyTower, score_candidates
from ranking import StudentConfig, StudentRanker
from retrieval import ItemTower, QueryTower, TowerConfig

ATOL = RTOL = 1e-5
TOWER_DIM = 8
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class Shop:
    encoders: FeatureEncoders
    items: dict[str, np.ndarray]  # the encoded catalog, [num_items, ...]
    queries: dict[str, np.ndarray]  # encoded queries, [num_queries, ...]
    candidates: np.ndarray  # [num_queries, num_candidates] catalog rows, -1 = padding

    @property
    def num_items(self) -> int:
        return len(self.items["item_id"])

    @property
    def num_queries(self) -> int:
        return len(self.queries["user_id"])


def _prepare(dataset: features.Dataset, *, seed: int) -> Shop:
    """Encodes a data set and plants the edge cases every comparison must cover."""
    split = temporal_leave_last_out(dataset)
    encoders = FeatureEncoders.fit(dataset, split.train)
    items = encoders.encode_items(dataset.items)
    queries = encoders.encode_queries(build_queries(split.test.iloc[:40], dataset))
    oov = encoders.config.num_oov_buckets
    queries["history"][0] = 0  # empty history
    queries["history_length"][0] = 0
    queries["query_tokens"][1] = 0  # no query text
    queries["user_id"][2] = 1  # unseen user (an OOV bucket)
    queries["history"][2, :3] = [2, oov + 1, 3]  # OOV items in the history
    items["item_id"][1] = 3  # a cold item (OOV id)
    items["item_brand"][2] = 0  # a missing attribute never matches the history's missing ones
    candidates_rows = [0, 1, 2]
    if encoders.item_text:
        text_key = f"item_{encoders.item_text[0]}_tokens"
        title = items[text_key][0]
        known = title[title > oov]
        first, second = int(known[0]), int(known[-1])
        # Duplicates and an OOV token on both sides; the query's last word is absent from every title.
        items[text_key][0, :6] = [first, first, 1, second, first, 0]
        queries["query_tokens"][3, :6] = [first, 2, first, second, oov + 1, 0]
        queries["query_tokens"][4, :3] = [first, first, first]
    rng = np.random.default_rng(seed)
    num_queries, num_items = len(queries["user_id"]), len(items["item_id"])
    candidates = rng.integers(0, num_items, size=(num_queries, 12))
    candidates[:, : len(candidates_rows)] = candidates_rows
    candidates[rng.random(candidates.shape) < 0.15] = -1
    candidates[5] = -1  # a query with no candidate at all
    return Shop(encoders=encoders, items=items, queries=queries, candidates=candidates)


@pytest.fixture(scope="module")
def shop() -> Shop:
    dataset = generate_shop(SyntheticConfig(num_users=150, num_items=80, num_interactions=2500, seed=0)).dataset
    return _prepare(dataset, seed=0)


@pytest.fixture(scope="module")
def plain_shop() -> Shop:
    """The synthetic shop without item text, price or query text: no token or price cross features."""
    dataset = generate_shop(SyntheticConfig(num_users=100, num_items=60, num_interactions=1500, seed=1)).dataset
    schema = dataclasses.replace(dataset.schema, item_text=(), item_numeric=(), has_query=False)
    dataset = dataclasses.replace(
        dataset,
        schema=schema,
        items=dataset.items.drop(columns=["title", "price"]),
        interactions=dataset.interactions.drop(columns=["query"]),
        report=None,
    )
    return _prepare(dataset, seed=1)


def _randomize(model: keras.Model, seed: int) -> None:
    """Larger random weights than the initializers give, so a wrong column or row shows at 1e-5."""
    rng = np.random.default_rng(seed)
    for variable in model.trainable_variables:
        variable.assign(rng.normal(scale=0.4, size=variable.shape).astype(np.float32))


def _tower_embeddings(shop: Shop) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    query = rng.normal(size=(shop.num_queries, TOWER_DIM)).astype(np.float32)
    item = rng.normal(size=(shop.num_items, TOWER_DIM)).astype(np.float32)
    return query, item


def _keras_scores(student: StudentRanker, shop: Shop, tower: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """``student`` on every (query, candidate) pair, as a [num_queries, num_candidates] matrix (NaN at padding)."""
    query_index, slot = np.nonzero(shop.candidates >= 0)
    rows = shop.candidates[query_index, slot]
    query = {k: shop.queries[k][query_index] for k in student.query_keys}
    item = {k: shop.items[k][rows] for k in student.item_keys}
    if tower is not None:
        query["query_embedding"] = tower[0][query_index]
        item["item_embedding"] = tower[1][rows]
    logits = student({"query": query, "item": item}, training=False).numpy()
    out = np.full(shop.candidates.shape, np.nan, dtype=np.float32)
    out[query_index, slot] = logits
    return out


# ---------------------------------------------------------------------------------------------------------------
# Towers
# ---------------------------------------------------------------------------------------------------------------

TOWER_CONFIGS = {
    "one_hidden": TowerConfig(embedding_dim=8, hidden_dims=(16,), output_dim=8),
    "linear": TowerConfig(embedding_dim=8, hidden_dims=(), output_dim=6),
    "two_hidden_dropout": TowerConfig(embedding_dim=4, hidden_dims=(16, 12), output_dim=8, dropout=0.3),
}


@pytest.fixture(scope="module")
def towers(shop: Shop) -> dict[str, tuple[QueryTower, ItemTower]]:
    out = {}
    for i, (name, config) in enumerate(TOWER_CONFIGS.items()):
        query_tower = QueryTower.from_encoders(shop.encoders, config)
        item_tower = ItemTower.from_encoders(shop.encoders, config)
        query_tower(shop.queries, training=False)  # builds the weights
        item_tower(shop.items, training=False)
        _randomize(query_tower, seed=2 * i)
        _randomize(item_tower, seed=2 * i + 1)
        out[name] = (query_tower, item_tower)
    return out


@pytest.mark.parametrize("config", list(TOWER_CONFIGS))
@pytest.mark.parametrize("side", ["query", "item"])
def test_tower_matches_keras(towers, shop: Shop, config: str, side: str) -> None:
    keras_tower = towers[config][0 if side == "query" else 1]
    features_ = shop.queries if side == "query" else shop.items
    tower = NumpyTower.from_keras(keras_tower)
    expected = keras_tower(features_, training=False).numpy()
    got = tower(features_)
    assert got.dtype == np.float32 and got.shape == expected.shape == (len(expected), tower.output_dim)
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    assert tower.input_keys == tuple(keras_tower.layout.names())
    assert tower.spec["side"] == side
    assert tower.spec["hidden_dims"] == list(TOWER_CONFIGS[config].hidden_dims)
    json.dumps(tower.spec)  # JSON-serialisable
    # A single row (the query-time case) gives the same row.
    one = tower({k: v[3:4] for k, v in features_.items()})
    np.testing.assert_allclose(one, expected[3:4], atol=ATOL, rtol=RTOL)


def test_tower_save_load_round_trip(towers, shop: Shop, tmp_path: Path) -> None:
    tower = NumpyTower.from_keras(towers["two_hidden_dropout"][0])
    (tmp_path / "tower").mkdir()  # an existing directory is fine
    paths = tower.save(tmp_path / "tower")
    assert sorted(p.name for p in paths) == ["arrays.npz", "model.json"]
    loaded = NumpyTower.load(tmp_path / "tower")
    assert loaded.spec == tower.spec
    np.testing.assert_array_equal(loaded(shop.queries), tower(shop.queries))


def test_tower_load_names_a_missing_or_misshapen_array(towers, tmp_path: Path) -> None:
    tower = NumpyTower.from_keras(towers["one_hidden"][1])
    tower.save(tmp_path)
    arrays = dict(tower.arrays)
    del arrays["hidden_0/bias"]
    np.savez(tmp_path / "arrays.npz", **arrays)
    with pytest.raises(ValueError, match=r"arrays\.npz.*'hidden_0/bias'.*\(16,\)"):
        NumpyTower.load(tmp_path)
    arrays["hidden_0/bias"] = np.zeros(3, dtype=np.float32)
    np.savez(tmp_path / "arrays.npz", **arrays)
    with pytest.raises(ValueError, match=r"'hidden_0/bias' should have shape \(16,\).*Received: shape=\(3,\)"):
        NumpyTower.load(tmp_path)
    with pytest.raises(ValueError, match=r"'projection/kernel' should have shape \(16, 8\).*shape=\(8, 8\)"):
        NumpyTower(tower.spec, {**tower.arrays, "projection/kernel": np.zeros((8, 8), np.float32)})


def test_load_uses_allow_pickle_false(towers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tower = NumpyTower.from_keras(towers["linear"][0])
    tower.save(tmp_path)
    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(numpy_models.np, "load", spy)
    NumpyTower.load(tmp_path)
    assert calls and all(kwargs.get("allow_pickle") is False for kwargs in calls)
    monkeypatch.undo()
    # An object array (which needs pickle) is refused, naming the file.
    np.savez(tmp_path / "arrays.npz", **tower.arrays, evil=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"arrays\.npz could not be read"):
        NumpyTower.load(tmp_path)


def test_load_errors_name_the_file(towers, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model\.json"):
        NumpyTower.load(tmp_path)
    NumpyTower.from_keras(towers["linear"][0]).save(tmp_path)
    (tmp_path / "arrays.npz").unlink()
    with pytest.raises(FileNotFoundError, match=r"arrays\.npz"):
        NumpyTower.load(tmp_path)
    NumpyTower.from_keras(towers["linear"][0]).save(tmp_path)
    with pytest.raises(ValueError, match=r"model\.json describes a 'NumpyTower', not a NumpyStudent"):
        NumpyStudent.load(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"model\.json is not valid JSON"):
        NumpyTower.load(tmp_path)


def test_tower_bad_inputs(towers, shop: Shop) -> None:
    tower = NumpyTower.from_keras(towers["one_hidden"][0])
    with pytest.raises(ValueError, match=r"Missing: \['query_tokens'\]"):
        tower({k: v for k, v in shop.queries.items() if k != "query_tokens"})
    with pytest.raises(ValueError, match="should have the same number of rows"):
        tower({**shop.queries, "user_id": shop.queries["user_id"][:3]})
    with pytest.raises(ValueError, match=r"`user_id` should hold indices in \[0, "):
        tower({**shop.queries, "user_id": np.full(shop.num_queries, 10**6, dtype=np.int32)})
    with pytest.raises(ValueError, match="`user_id` should hold indices"):  # -1 would silently read the last row
        tower({**shop.queries, "user_id": np.full(shop.num_queries, -1, dtype=np.int32)})
    with pytest.raises(ValueError, match="`user_id` should hold non-negative indices"):
        tower({**shop.queries, "user_id": np.full(shop.num_queries, -1, dtype=np.int64)})


def test_unbuilt_tower_is_refused(shop: Shop) -> None:
    with pytest.raises(ValueError, match="no weights yet"):
        NumpyTower.from_keras(QueryTower.from_encoders(shop.encoders, TOWER_CONFIGS["linear"]))


# ---------------------------------------------------------------------------------------------------------------
# Ranking student
# ---------------------------------------------------------------------------------------------------------------

STUDENT_CONFIGS = {
    "default": StudentConfig(),
    "tower_embeddings": StudentConfig(use_tower_embeddings=True, tower_embedding_dim=TOWER_DIM),
    "no_cross_features": StudentConfig(use_cross_features=False),
    "no_history_cosine": StudentConfig(use_history_cosine=False),
    "linear": StudentConfig(deep_layers=()),
    "gelu_three_layers": StudentConfig(deep_layers=(16, 8, 4), activation="gelu"),
    "tanh_tower_only_dot": StudentConfig(
        features=("item_id", "item_brand", "query_tokens"),
        use_history_cosine=False,
        use_tower_embeddings=True,
        tower_embedding_dim=TOWER_DIM,
        deep_layers=(8,),
        activation="tanh",
    ),
}


@pytest.fixture(scope="module")
def students(shop: Shop) -> dict[str, StudentRanker]:
    out = {}
    for i, (name, config) in enumerate(STUDENT_CONFIGS.items()):
        student = StudentRanker(shop.encoders, shop.items, config)
        _randomize(student, seed=100 + i)
        out[name] = student
    return out


def _check_student(student: StudentRanker, shop: Shop) -> NumpyStudent:
    tower = _tower_embeddings(shop) if student.config.use_tower_embeddings else None
    expected = _keras_scores(student, shop, tower)
    numpy_student = NumpyStudent.from_keras(student)
    table = numpy_student.item_table(shop.items, None if tower is None else tower[1])
    state = numpy_student.query_state(shop.queries, None if tower is None else tower[0])
    got = numpy_student.score(state, table, shop.candidates)
    assert got.dtype == np.float32 and got.shape == shop.candidates.shape
    padding = shop.candidates < 0
    assert np.isneginf(got[padding]).all()
    np.testing.assert_allclose(got[~padding], expected[~padding], atol=ATOL, rtol=RTOL)
    assert np.std(expected[~padding]) > 0.1  # the weights are large enough for a wrong column to show

    first_width = (student.config.deep_layers or (1,))[0]
    assert {a.shape[0] for a in table.values()} == {shop.num_items}
    assert table["dense"].shape == (shop.num_items, first_width) and table["dense"].dtype == np.float32
    assert {a.shape[0] for a in state.values()} == {shop.num_queries}
    assert state["dense"].shape == (shop.num_queries, first_width)
    assert numpy_student.query_keys == student.query_keys
    assert numpy_student.item_keys == student.item_keys
    assert numpy_student.uses_tower_embeddings == student.config.use_tower_embeddings
    json.dumps(numpy_student.spec)
    # One query at a time (the live case) gives the same rows.
    one = score_candidates(
        numpy_student,
        {k: v[3:4] for k, v in shop.queries.items()},
        table,
        shop.candidates[3:4],
        None if tower is None else tower[0][3:4],
    )
    np.testing.assert_allclose(one, got[3:4], atol=ATOL, rtol=RTOL)
    return numpy_student


@pytest.mark.parametrize("config", list(STUDENT_CONFIGS))
def test_student_matches_keras(students, shop: Shop, config: str) -> None:
    _check_student(students[config], shop)


def test_student_without_text_or_price_matches_keras(plain_shop: Shop) -> None:
    student = StudentRanker(plain_shop.encoders, plain_shop.items)
    _randomize(student, seed=5)
    assert student.cross_features.text_key is None and student.cross_features.price_key is None
    numpy_student = _check_student(student, plain_shop)
    assert set(numpy_student.item_table(plain_shop.items)) == {"dense", "vectors", "attributes"}


def test_student_state_and_table_keys(students, shop: Shop) -> None:
    student = NumpyStudent.from_keras(students["default"])
    table = student.item_table(shop.items)
    state = student.query_state(shop.queries)
    assert set(table) == {"dense", "vectors", "attributes", "price", "tokens", "num_distinct_tokens"}
    assert set(state) == {
        "dense",
        "vectors",
        "history_attributes",
        "history_denominator",
        "history_price",
        "tokens",
        "token_weights",
        "num_distinct_tokens",
    }
    oov = shop.encoders.config.num_oov_buckets
    # Item 0's title was planted as [a, a, OOV, b, a, 0, ...]: its distinct known tokens first, -2 after them.
    title = shop.items["item_title_tokens"][0]
    distinct = list(dict.fromkeys(title[title > oov].tolist()))
    assert table["tokens"][0, : len(distinct)].tolist() == distinct
    assert (table["tokens"][0, len(distinct) :] == -2).all()
    assert table["num_distinct_tokens"][0] == len(distinct)
    # Query tokens keep their positions (a repeated word counts each time); unknown ones are -1.
    assert ((state["tokens"] == -1) | (state["tokens"] > oov)).all()
    assert state["token_weights"].shape == (*state["tokens"].shape, 3)
    # Query 1 has no text: all its tokens are -1, so it matches nothing.
    assert (state["tokens"][1] == -1).all()


def test_student_save_load_and_memory_mapped_table(students, shop: Shop, tmp_path: Path) -> None:
    student = NumpyStudent.from_keras(students["tower_embeddings"])
    query_embeddings, item_embeddings = _tower_embeddings(shop)
    table = student.item_table(shop.items, item_embeddings)
    state = student.query_state(shop.queries, query_embeddings)
    expected = student.score(state, table, shop.candidates)

    student.save(tmp_path / "student")
    loaded = NumpyStudent.load(tmp_path / "student")
    assert loaded.spec == student.spec
    for name, array in table.items():
        np.save(tmp_path / f"{name.replace('/', '_')}.npy", array, allow_pickle=False)
    mapped = {name: np.load(tmp_path / f"{name.replace('/', '_')}.npy", mmap_mode="r") for name in table}
    got = loaded.score(loaded.query_state(shop.queries, query_embeddings), mapped, shop.candidates)
    np.testing.assert_array_equal(got, expected)

    arrays = dict(student.arrays)
    arrays["deep_0/kernel"] = arrays["deep_0/kernel"][:-1]
    np.savez(tmp_path / "student" / "arrays.npz", **arrays)
    width = student.arrays["deep_0/kernel"].shape[0]
    with pytest.raises(ValueError, match=rf"'deep_0/kernel' should have shape \({width}, 64\).*\({width - 1}, 64\)"):
        NumpyStudent.load(tmp_path / "student")
    del arrays["cross/item_brand"]
    with pytest.raises(ValueError, match=r"should hold \['cross/item_brand'\]"):
        NumpyStudent(student.spec, arrays)


def test_student_bad_inputs(students, shop: Shop) -> None:
    student = NumpyStudent.from_keras(students["default"])
    with pytest.raises(ValueError, match=r"Missing: \['history'\]"):
        student.query_state({k: v for k, v in shop.queries.items() if k != "history"})
    with pytest.raises(ValueError, match=r"Missing: \['item_brand'\]"):
        student.item_table({k: v for k, v in shop.items.items() if k != "item_brand"})
    with pytest.raises(ValueError, match="`item_embeddings` should be None"):
        student.item_table(shop.items, np.zeros((shop.num_items, TOWER_DIM), np.float32))
    table, state = student.item_table(shop.items), student.query_state(shop.queries)
    with pytest.raises(ValueError, match=r"`candidates` should hold rows in \[0, 80\) or -1"):
        student.score(state, table, np.full((shop.num_queries, 2), 80))
    with pytest.raises(ValueError, match="`candidates` should be"):
        student.score(state, table, np.zeros((shop.num_queries + 1, 2), dtype=np.int64))

    with_towers = NumpyStudent.from_keras(students["tower_embeddings"])
    with pytest.raises(ValueError, match="`item_embeddings` should be given"):
        with_towers.item_table(shop.items)
    with pytest.raises(ValueError, match="`query_embeddings` should be given"):
        with_towers.query_state(shop.queries)
    with pytest.raises(ValueError, match=rf"`query_embeddings` should have shape \({shop.num_queries}, 8\)"):
        with_towers.query_state(shop.queries, np.zeros((shop.num_queries, 3), np.float32))


# ---------------------------------------------------------------------------------------------------------------
# Activations and the import boundary
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", numpy_models.SUPPORTED_ACTIVATIONS)
def test_activation_matches_keras(name: str) -> None:
    x = np.linspace(-12, 12, 2001, dtype=np.float32)
    expected = keras.activations.get(name)(tf.constant(x)).numpy()
    np.testing.assert_allclose(numpy_models._activation(name)(x.copy()), expected, atol=1e-6, rtol=1e-6)


def test_unsupported_activation_is_refused() -> None:
    with pytest.raises(ValueError, match=r"not supported by the numpy path\. Received: activation='mish'"):
        numpy_models._activation("mish")


def test_module_does_not_import_tensorflow() -> None:
    code = (
        "import sys\nimport index.numpy_models\n"
        "assert 'tensorflow' not in sys.modules and 'tf_keras' not in sys.modules, 'TensorFlow was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
