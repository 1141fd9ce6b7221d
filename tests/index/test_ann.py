"""The FAISS layer: exact and approximate search by slot, masks, padding, add/remove, save/load, defaults, threads."""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from index.ann import (
    AnnIndex,
    IndexConfig,
    default_factory,
    default_nlist,
    default_nprobe,
    exact_search,
    recall_at_k,
)

NUM_ITEMS, DIM, NUM_CENTERS, CAPACITY = 3_000, 16, 30, 4_000
K = 10
IVF = "IVF32,Flat"
FACTORIES = ["Flat", IVF, "HNSW32"]


def _clustered(rng: np.random.Generator, n: int, centers: np.ndarray, sigma: float = 0.25) -> np.ndarray:
    x = centers[rng.integers(0, len(centers), n)] + sigma * rng.standard_normal((n, centers.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    """3,000 normalised 16-d items around 30 centres, stored under scattered slots in 0..3,999, and 100 queries."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((NUM_CENTERS, DIM))
    return {
        "embeddings": _clustered(rng, NUM_ITEMS, centers),
        "slots": np.sort(rng.choice(CAPACITY, NUM_ITEMS, replace=False)).astype(np.int64)[rng.permutation(NUM_ITEMS)],
        "queries": _clustered(rng, 100, centers),
    }


@pytest.fixture(scope="module")
def indexes(data) -> dict[str, AnnIndex]:
    return {
        factory: AnnIndex.build(data["embeddings"], data["slots"], IndexConfig(factory=factory, seed=0))
        for factory in FACTORIES
    }


def _exact(data, k: int = K, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    return exact_search(data["embeddings"], data["queries"], k, allowed=allowed, slots=data["slots"])


def _assert_same_neighbours(actual: tuple[np.ndarray, np.ndarray], expected: tuple[np.ndarray, np.ndarray]) -> None:
    """Equal scores (to 1e-5) and equal slots wherever a score is distinct from its neighbours in the ranking."""
    (scores, slots), (expected_scores, expected_slots) = actual, expected
    np.testing.assert_array_equal(np.isinf(scores), np.isinf(expected_scores))
    finite = np.isfinite(expected_scores)
    np.testing.assert_allclose(scores[finite], expected_scores[finite], atol=1e-5)
    padded = np.pad(
        np.where(finite, expected_scores, -1e9), ((0, 0), (1, 1)), constant_values=((0, 0), (np.inf, -np.inf))
    )
    gap = np.minimum(padded[:, :-2] - padded[:, 1:-1], padded[:, 1:-1] - padded[:, 2:])
    distinct = gap > 1e-5
    np.testing.assert_array_equal(slots[distinct], expected_slots[distinct])


def _check_result_invariants(scores: np.ndarray, slots: np.ndarray, allowed: np.ndarray | None = None) -> None:
    assert scores.dtype == np.float32 and slots.dtype == np.int64
    np.testing.assert_array_equal(slots == -1, np.isneginf(scores))  # padding in both arrays at once
    finite = np.isfinite(scores)
    assert (finite[:, :-1] | ~finite[:, 1:]).all()  # padding last
    assert (scores[:, 1:][finite[:, 1:]] <= scores[:, :-1][finite[:, 1:]] + 1e-6).all()  # descending
    if allowed is not None:
        assert allowed[slots[slots >= 0]].all()


# --- exact search and recall ---------------------------------------------------------------------------------------


def test_exact_search_equals_argsort_with_ties_by_lower_slot():
    rng = np.random.default_rng(1)
    # Scores on a coarse grid so many tie, also across the k-th place.
    items = rng.integers(-2, 3, size=(200, 4)).astype(np.float32)
    queries = rng.integers(-2, 3, size=(20, 4)).astype(np.float32)
    slots = rng.permutation(500)[:200].astype(np.int64)
    scores, got = exact_search(items, queries, 15, slots=slots)
    full = queries @ items.T
    for row in range(len(queries)):
        order = np.lexsort((slots, -full[row]))[:15]  # descending score, then ascending slot
        np.testing.assert_array_equal(got[row], slots[order])
        np.testing.assert_array_equal(scores[row], full[row, order])


def test_exact_search_mask_and_padding():
    items = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0]], dtype=np.float32)
    allowed = np.array([True, False, True, True])
    scores, slots = exact_search(items, np.array([[1.0, 0.0]]), 5, allowed=allowed)
    # q . x = 1, 0.8, 0, -1; slot 1 is masked out; 3 allowed items for k = 5 -> two padded places.
    np.testing.assert_array_equal(slots, [[0, 2, 3, -1, -1]])
    np.testing.assert_array_equal(scores, np.array([[1, 0, -1, -np.inf, -np.inf]], dtype=np.float32))


def test_recall_at_k_by_hand():
    approx = np.array([[5, 1, 2, 9], [3, -1, -1, -1], [1, 2, 3, 4]])
    exact = np.array([[1, 2, 3, 4], [3, 4, -1, -1], [-1, -1, -1, -1]])
    recall = recall_at_k(approx, exact)
    # row 0: {1, 2} of 4 = 2/4; row 1: {3} of {3, 4} = 1/2; row 2: nothing relevant -> NaN.
    np.testing.assert_allclose(recall[:2], [2 / 4, 1 / 2])
    assert math.isnan(recall[2])


def test_recall_at_k_equals_naive_loop():
    rng = np.random.default_rng(2)

    def distinct_slots(shape: tuple[int, int]) -> np.ndarray:  # like search results: no slot twice in a row
        rows = rng.integers(-1, 30, size=shape)
        return np.array([[v if v not in r[:i] else -1 for i, v in enumerate(r)] for r in rows])

    approx, exact = distinct_slots((50, 10)), distinct_slots((50, 12))
    exact[7] = -1  # a query with nothing relevant
    naive = [
        len(set(a[a >= 0]) & set(e[e >= 0])) / len(set(e[e >= 0])) if (e >= 0).any() else np.nan
        for a, e in zip(approx, exact, strict=True)
    ]
    np.testing.assert_allclose(recall_at_k(approx, exact), naive)


# --- approximate search ---------------------------------------------------------------------------------------------


def test_flat_equals_exact_search(data, indexes):
    result = indexes["Flat"].search(data["queries"], K)
    _check_result_invariants(*result)
    _assert_same_neighbours(result, _exact(data))


def test_ivf_probing_every_list_equals_exact(data, indexes):
    index = indexes[IVF]
    assert index.nlist == 32
    result = index.search(data["queries"], K, nprobe=index.nlist)
    _check_result_invariants(*result)
    _assert_same_neighbours(result, _exact(data))


def test_ivf_small_nprobe_recall(data, indexes):
    _, slots = indexes[IVF].search(data["queries"], K, nprobe=2)
    assert np.mean(recall_at_k(slots, _exact(data)[1])) > 0.8


def test_hnsw_recall(data, indexes):
    index = indexes["HNSW32"]
    assert index.ef_search == 128 and index.nprobe is None and index.nlist is None
    scores, slots = index.search(data["queries"], K)
    _check_result_invariants(scores, slots)
    assert np.mean(recall_at_k(slots, _exact(data)[1])) >= 0.9


def test_float64_queries_are_cast(data, indexes):
    as_float32 = indexes["Flat"].search(data["queries"], K)
    as_float64 = indexes["Flat"].search(data["queries"].astype(np.float64), K)
    np.testing.assert_array_equal(as_float32[1], as_float64[1])
    assert as_float64[0].dtype == np.float32


@pytest.mark.parametrize("factory", FACTORIES)
def test_allowed_mask_is_honoured(data, indexes, factory):
    index = indexes[factory]
    allowed = np.random.default_rng(3).random(CAPACITY) < 0.5
    scores, slots = index.search(data["queries"], K, allowed=allowed, nprobe=32)
    _check_result_invariants(scores, slots, allowed)
    if factory == "HNSW32":
        assert np.mean(recall_at_k(slots, _exact(data, allowed=allowed)[1])) >= 0.9
    else:
        _assert_same_neighbours((scores, slots), _exact(data, allowed=allowed))


@pytest.mark.parametrize("factory", FACTORIES)
def test_allowed_mask_with_fewer_than_k_items_pads(data, indexes, factory):
    allowed = np.zeros(CAPACITY, dtype=bool)
    allowed[data["slots"][[5, 50, 500]]] = True
    scores, slots = indexes[factory].search(data["queries"], K, allowed=allowed, nprobe=32)
    _check_result_invariants(scores, slots, allowed)
    assert (slots[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    if factory != "HNSW32":  # HNSW filters inside its beam and may find fewer (see index/ann.py)
        _assert_same_neighbours((scores, slots), _exact(data, allowed=allowed))
        assert (slots[:, :3] >= 0).all()


def test_allowed_mask_shorter_than_capacity_raises(data, indexes):
    short = np.ones(int(data["slots"].max()), dtype=bool)  # misses the largest slot
    with pytest.raises(ValueError, match=r"`allowed` should be a 1-D bool mask over slots with at least"):
        indexes["Flat"].search(data["queries"], K, allowed=short)
    with pytest.raises(ValueError, match=r"`allowed`.*dtype=int64"):
        indexes["Flat"].search(data["queries"], K, allowed=np.ones(CAPACITY, dtype=np.int64))


@pytest.mark.parametrize("factory", ["Flat", "IVF1,Flat", "HNSW32"])
def test_padding_when_catalog_smaller_than_k(factory):
    x = _clustered(np.random.default_rng(4), 5, np.eye(DIM))
    index = AnnIndex.build(x, np.array([9, 2, 7, 4, 0]), IndexConfig(factory=factory))
    scores, slots = index.search(x, 8)
    _check_result_invariants(scores, slots)
    np.testing.assert_array_equal(np.sort(slots[:, :5], axis=1), np.tile([0, 2, 4, 7, 9], (5, 1)))
    assert (slots[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()


def test_empty_query_batch(indexes):
    scores, slots = indexes["Flat"].search(np.zeros((0, DIM), dtype=np.float32), K)
    assert scores.shape == slots.shape == (0, K)


# --- add and remove ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", ["Flat", IVF])
def test_add_then_remove(data, factory):
    x, slots = data["embeddings"], data["slots"]
    index = AnnIndex.build(x[:2500], slots[:2500], IndexConfig(factory=factory))
    new = x[2500:]
    assert not index.contains(slots[2500:]).any()
    index.add(new, slots[2500:])
    assert index.ntotal == 3000 and index.contains(slots).all()
    _, found = index.search(new, 1, nprobe=32)
    np.testing.assert_array_equal(found[:, 0], slots[2500:])  # each new item is its own nearest neighbour

    assert index.remove(np.concatenate([slots[2500:], [CAPACITY + 1]])) == 500  # absent slots are ignored
    assert index.ntotal == 2500 and not index.contains(slots[2500:]).any() and index.contains(slots[:2500]).all()
    _, found = index.search(new, K, nprobe=32)
    assert not np.isin(found, slots[2500:]).any()
    # The remaining items still come back under their own slots (IndexIDMap2 over IVF loses this after a removal).
    _, found = index.search(x[:200], 1, nprobe=32)
    np.testing.assert_array_equal(found[:, 0], slots[:200])
    index.add(new, slots[2500:])  # removed slots can be reused
    _, found = index.search(x, 1, nprobe=32)
    np.testing.assert_array_equal(found[:, 0], slots)


def test_add_existing_slot_raises(data, indexes):
    index = indexes["Flat"]
    with pytest.raises(ValueError, match=re.escape(f"e.g. [{data['slots'][0]}]")):
        index.add(data["embeddings"][:1], data["slots"][:1])
    assert index.ntotal == NUM_ITEMS


def test_hnsw_remove_raises(indexes):
    index = indexes["HNSW32"]
    assert not index.supports_removal and indexes["Flat"].supports_removal and indexes[IVF].supports_removal
    message = (
        "HNSW indexes cannot remove vectors in FAISS: rebuild the index, or mask the items at search time "
        "(Searcher does this)"
    )
    with pytest.raises(NotImplementedError, match=re.escape(message)):
        index.remove(np.array([0]))


# --- save and load -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", FACTORIES)
def test_write_read_round_trip(data, indexes, factory, tmp_path):
    index = indexes[factory]
    index.write(tmp_path / "index.faiss")
    loaded = AnnIndex.read(tmp_path / "index.faiss", factory=factory, nprobe=index.nprobe, ef_search=index.ef_search)
    assert (loaded.factory, loaded.dim, loaded.ntotal, loaded.nprobe, loaded.ef_search, loaded.nlist) == (
        index.factory,
        index.dim,
        index.ntotal,
        index.nprobe,
        index.ef_search,
        index.nlist,
    )
    assert loaded.contains(data["slots"]).all() and loaded.supports_removal == index.supports_removal
    allowed = np.random.default_rng(5).random(CAPACITY) < 0.7
    for kwargs in ({}, {"allowed": allowed}):
        expected, actual = index.search(data["queries"], K, **kwargs), loaded.search(data["queries"], K, **kwargs)
        np.testing.assert_array_equal(actual[0], expected[0])
        np.testing.assert_array_equal(actual[1], expected[1])


def test_read_garbage_raises_naming_the_file(tmp_path):
    path = tmp_path / "index.faiss"
    path.write_bytes(b"this is not a FAISS index")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        AnnIndex.read(path, factory="Flat")
    with pytest.raises(FileNotFoundError, match=r"missing\.faiss"):
        AnnIndex.read(tmp_path / "missing.faiss", factory="Flat")


def test_read_index_without_slot_ids_raises(tmp_path):
    import faiss

    path = tmp_path / "plain.faiss"
    faiss.write_index(faiss.IndexFlatIP(DIM), str(path))
    with pytest.raises(ValueError, match=r"plain\.faiss was not written by AnnIndex\.write"):
        AnnIndex.read(path, factory="Flat")


# --- defaults and configuration ------------------------------------------------------------------------------------


def test_default_factory_thresholds():
    assert default_factory(1_000, 64) == "Flat"
    assert default_factory(50_000, 64) == "Flat"
    # nlist = 2 sqrt(n) rounded to a multiple of 64: 2 sqrt(50_001) = 447.2 -> 448; 2 sqrt(1e6) = 2000 -> 1984.
    assert default_factory(50_001, 64) == "IVF448,Flat"
    assert default_factory(1_000_000, 64) == "IVF1984,Flat"
    assert default_factory(1_000_000, 64, memory_budget_bytes=256_000_000) == "IVF1984,Flat"  # raw bytes fit
    # 1M x 64 x 4 = 256 MB > 100 MB: PQ with m = 64 // 4 = 16 bytes a code, 1M x (16 + 8) = 24 MB fits.
    assert default_factory(1_000_000, 64, memory_budget_bytes=100_000_000) == "IVF1984,PQ16"
    # 20 MB: m = 8 (1M x (8 + 8) = 16 MB) is the largest divisor of 64 that fits.
    assert default_factory(1_000_000, 64, memory_budget_bytes=20_000_000) == "IVF1984,PQ8"
    # Small catalogs over budget: 4-bit codebooks train on fewer points; nlist capped at 5_000 // 39 = 128.
    assert default_factory(5_000, 64, memory_budget_bytes=100_000) == "IVF128,PQ16x4"
    with pytest.raises(ValueError, match="too small"):
        default_factory(1_000_000, 64, memory_budget_bytes=1_000_000)
    with pytest.raises(ValueError, match="too few to train"):
        default_factory(100, 64, memory_budget_bytes=1_000)


def test_default_nlist_and_nprobe():
    assert default_nlist(1_000_000) == 1984
    assert default_nlist(3_000) == 3_000 // 39  # 2 sqrt(3000) = 110 -> 128, capped at 76 lists of >= 39 points
    # max(ceil(nlist / 256), ceil(8192 nlist / n)), at most nlist:
    assert default_nprobe(1984, 1_000_000) == max(math.ceil(1984 / 256), math.ceil(8192 * 1984 / 1_000_000)) == 17
    assert default_nprobe(448, 50_001) == math.ceil(8192 * 448 / 50_001) == 74
    assert default_nprobe(16_384, 16_000_000) == 16_384 // 256 == 64
    assert default_nprobe(32, 3_000) == 32


def test_default_config_builds_flat_for_small_catalog(data):
    index = AnnIndex.build(data["embeddings"], progress=True)
    assert index.factory == "Flat" and index.nprobe is None and index.ef_search is None
    np.testing.assert_array_equal(index.contains(np.arange(NUM_ITEMS)), True)


def test_ivf_default_nprobe_resolved_at_build(data):
    index = AnnIndex.build(data["embeddings"], config=IndexConfig(factory="IVF64,Flat", add_batch_size=700))
    assert index.nlist == 64 and index.nprobe == default_nprobe(64, NUM_ITEMS) == 64
    assert AnnIndex.build(data["embeddings"], config=IndexConfig(factory="IVF64,Flat", nprobe=3)).nprobe == 3


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("nprobe", 0, "`nprobe` should be a positive integer or None. Received: nprobe=0"),
        ("train_size", -5, "`train_size` should be a positive integer or None. Received: train_size=-5"),
        ("memory_budget_bytes", 1.5, "`memory_budget_bytes` should be a positive integer or None."),
        ("ef_search", 0, "`ef_search` should be a positive integer. Received: ef_search=0"),
        ("ef_construction", None, "`ef_construction` should be a positive integer. Received: ef_construction=None"),
        ("add_batch_size", True, "`add_batch_size` should be a positive integer. Received: add_batch_size=True"),
        ("seed", -1, "`seed` should be a non-negative integer. Received: seed=-1"),
        ("factory", "", "`factory` should be a FAISS factory string or None"),
    ],
)
def test_index_config_validation(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        IndexConfig(**{field: value})


def test_index_config_dict_round_trip():
    config = IndexConfig(factory="IVF1024,PQ16", nprobe=8, train_size=20_000, memory_budget_bytes=10**9, seed=3)
    assert IndexConfig.from_dict(config.to_dict()) == config
    assert IndexConfig.from_dict({"nprobe": 4}) == IndexConfig(nprobe=4)
    with pytest.raises(ValueError, match=r"Unknown IndexConfig keys: \['bogus', 'n_probe'\]"):
        IndexConfig.from_dict({"n_probe": 4, "bogus": 1})


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("IVF,Bogus", "`factory` 'IVF,Bogus' could not be built by FAISS: "),
        ("IDMap2,Flat", "drop the IDMap prefix"),
        ("PQ4x4", "'PQ4x4' cannot be searched with per-call parameters"),  # IndexPQ rejects SearchParameters
    ],
)
def test_bad_factory_raises(data, factory, message):
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        AnnIndex.build(data["embeddings"], config=IndexConfig(factory=factory))
    if factory == "IVF,Bogus":
        assert str(error.value).endswith("Examples: 'Flat', 'HNSW32', 'IVF1024,Flat', 'IVF1024,PQ16'")


def test_untrainable_factory_raises(data):
    with pytest.raises(ValueError, match=r"`factory` 'IVF1024,Flat' could not be trained by FAISS on 100 vectors"):
        AnnIndex.build(data["embeddings"][:100], config=IndexConfig(factory="IVF1024,Flat"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"embeddings": np.zeros((4, 3))}, "`embeddings` should be float32. Received: dtype=float64"),
        ({"embeddings": np.zeros(4, dtype=np.float32)}, r"`embeddings` should be a 2-D array [num_items, dim]"),
        ({"embeddings": np.zeros((0, 3), dtype=np.float32)}, "`embeddings` should have at least one row"),
        ({"embeddings": np.array([[0, np.nan]], dtype=np.float32)}, "`embeddings` should be finite"),
        ({"slots": np.array([1, 1, 2, 3])}, "`slots` should be distinct. Received duplicates, e.g. [1]"),
        ({"slots": np.array([1, 2, 3])}, "`slots` should have shape [4] (one per row). Received: shape=(3,)"),
        ({"slots": np.array([-1, 0, 1, 2])}, "`slots` should be non-negative"),
    ],
)
def test_build_validation(kwargs, message):
    arguments = {"embeddings": np.eye(4, dtype=np.float32), "slots": None, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        AnnIndex.build(arguments["embeddings"], arguments["slots"])


def test_search_validation(data, indexes):
    index = indexes["Flat"]
    with pytest.raises(ValueError, match=re.escape("`k` should be a positive integer. Received: k=0")):
        index.search(data["queries"], 0)
    with pytest.raises(
        ValueError, match=re.escape("`query_embeddings` should have shape [num_queries, 16]. Received: shape=(16,)")
    ):
        index.search(data["queries"][0], K)
    with pytest.raises(ValueError, match=re.escape("Received: shape=(100, 8)")):
        index.search(data["queries"][:, :8], K)
    with pytest.raises(ValueError, match=re.escape("`nprobe` should be a positive integer or None")):
        indexes[IVF].search(data["queries"], K, nprobe=0)


# --- threads -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", FACTORIES)
def test_concurrent_searches_equal_serial(data, indexes, factory):
    index = indexes[factory]
    rng = np.random.default_rng(6)
    masks = [rng.random(CAPACITY) < fraction for fraction in np.linspace(0.2, 1.0, 16)]

    def run(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return index.search(data["queries"], K, allowed=mask, nprobe=4)

    serial = [run(mask) for mask in masks]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(run, masks * 4))
    for position, (scores, slots) in enumerate(concurrent):
        np.testing.assert_array_equal(slots, serial[position % len(masks)][1])
        np.testing.assert_array_equal(scores, serial[position % len(masks)][0])


def test_read_items_keeps_text_ids_and_makes_plain_integers_int64(tmp_path) -> None:
    from index.build import read_items

    (tmp_path / "text.csv").write_text("item_id,title\n007,bond\nA5,paper\n")
    (tmp_path / "ints.csv").write_text("item_id,title\n7,bond\n15,paper\n")
    text, _ = read_items(tmp_path / "text.csv")
    assert text["item_id"].tolist() == ["007", "A5"]
    ints, _ = read_items(tmp_path / "ints.csv")
    assert ints["item_id"].dtype == np.int64 and ints["item_id"].tolist() == [7, 15]
