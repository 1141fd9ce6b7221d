"""Sharded IVF builds: the merged index and IndexShards equal a monolithic index of the same empty index."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import faiss
import numpy as np
import pytest
from faiss.contrib.evaluation import check_ref_knn_with_draws

from index.ann import AnnIndex, exact_search
from index.shards import (
    MERGED_DATA_FILE,
    MERGED_INDEX_FILE,
    add_shard,
    build_sharded,
    merge_shards,
    open_merged,
    shard_index,
    train_empty_index,
    write_empty_index,
)

DIM = 32
NUM_ITEMS = 5000
NLIST = 64
K = 10
SHARD_BOUNDS = (0, 700, 2100, 3300, 5000)  # four shards of unequal sizes


def _clustered(num: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((100, DIM))
    x = centres[rng.integers(0, 100, num)] + 0.3 * rng.standard_normal((num, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    embeddings = _clustered(NUM_ITEMS, seed=0)
    rng = np.random.default_rng(1)
    ids = rng.permutation(np.unique(rng.integers(0, 2**40, 2 * NUM_ITEMS)))[:NUM_ITEMS].astype(np.int64)
    queries = _clustered(200, seed=2)
    return embeddings, ids, queries


def _build(tmp: Path, data, factory: str, sample_size: int) -> dict:
    """The empty index, four shards, the merged index and the monolithic twin (all vectors added at once)."""
    embeddings, ids, _ = data
    empty = write_empty_index(train_empty_index(embeddings[:sample_size], factory, seed=0), tmp / "empty.index")
    shards = [
        add_shard(empty, embeddings[a:b], ids[a:b], tmp / f"shard{i}.index")
        for i, (a, b) in enumerate(itertools.pairwise(SHARD_BOUNDS))
    ]
    monolithic = faiss.read_index(str(empty))
    monolithic.add_with_ids(embeddings, ids)
    return {"empty": empty, "shards": shards, "merged": merge_shards(shards, tmp / "merged"), "mono": monolithic}


@pytest.fixture(scope="module")
def ivf_flat(tmp_path_factory, data) -> dict:
    return _build(tmp_path_factory.mktemp("ivf_flat"), data, f"IVF{NLIST},Flat", sample_size=NUM_ITEMS)


@pytest.fixture(scope="module")
def ivf_pq(tmp_path_factory, data) -> dict:
    # 4-bit codebooks (16 centroids per sub-quantizer) train in well under a second on 5k points.
    return _build(tmp_path_factory.mktemp("ivf_pq"), data, "IVF16,PQ8x4", sample_size=NUM_ITEMS)


def _search(index: faiss.Index, queries: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    return index.search(queries, K, params=faiss.SearchParametersIVF(nprobe=nprobe))


def _assert_same(expected, actual) -> None:
    np.testing.assert_array_equal(actual[1], expected[1])
    np.testing.assert_allclose(actual[0], expected[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("nprobe", [1, 4, 16, NLIST])
def test_merged_equals_monolithic(ivf_flat, data, nprobe):
    merged = open_merged(ivf_flat["merged"])
    assert merged.ntotal == NUM_ITEMS
    _assert_same(_search(ivf_flat["mono"], data[2], nprobe), _search(merged, data[2], nprobe))


@pytest.mark.parametrize("nprobe", [1, 4, 16, NLIST])
def test_index_shards_equals_monolithic(ivf_flat, data, nprobe):
    shards = shard_index(ivf_flat["shards"])
    assert shards.ntotal == NUM_ITEMS
    _assert_same(_search(ivf_flat["mono"], data[2], nprobe), _search(shards, data[2], nprobe))


def test_probing_every_list_is_exact(ivf_flat, data):
    embeddings, ids, queries = data
    exact_scores, exact_ids = exact_search(embeddings, queries, K, slots=ids)
    for index in (open_merged(ivf_flat["merged"]), shard_index(ivf_flat["shards"], threaded=True)):
        scores, labels = _search(index, queries, NLIST)
        check_ref_knn_with_draws(exact_scores, exact_ids, scores, labels, rtol=1e-5)


@pytest.mark.parametrize("nprobe", [1, 4, 16])
def test_ivf_pq_merged_and_shards_equal_monolithic(ivf_pq, data, nprobe):
    expected = _search(ivf_pq["mono"], data[2], nprobe)
    _assert_same(expected, _search(open_merged(ivf_pq["merged"]), data[2], nprobe))
    # 4-bit PQ codes give exactly equal scores often; IndexShards merges the shards' heaps and may order such ties
    # differently (measured: ~70% of queries), so its ids are compared per group of equal scores.
    scores, labels = _search(shard_index(ivf_pq["shards"]), data[2], nprobe)
    check_ref_knn_with_draws(expected[0], expected[1], scores, labels, rtol=0, atol=1e-6)


def test_merged_layout_and_ann_index_wrapper(ivf_flat, data):
    merged_dir = ivf_flat["merged"]
    assert sorted(p.name for p in merged_dir.iterdir()) == [MERGED_INDEX_FILE, MERGED_DATA_FILE]
    assert not [p for p in merged_dir.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    # The inverted lists live in merged.ivfdata: 5000 x (32 floats + one int64 id), so the index file stays small.
    assert (merged_dir / MERGED_DATA_FILE).stat().st_size >= NUM_ITEMS * (DIM * 4 + 8)
    assert (merged_dir / MERGED_INDEX_FILE).stat().st_size < NUM_ITEMS * DIM * 4 / 10
    index = AnnIndex(open_merged(merged_dir), factory=f"IVF{NLIST},Flat", nprobe=4, ef_search=None)
    assert index.contains(data[1]).all()
    scores, slots = index.search(data[2], K)
    _assert_same(_search(ivf_flat["mono"], data[2], 4), (scores, slots))


def test_open_merged_survives_a_moved_directory(ivf_flat, data, tmp_path):
    # merged.index records the path of merged.ivfdata as written; open_merged takes it from the directory instead.
    moved = tmp_path / "elsewhere"
    os.rename(ivf_flat["merged"], moved)
    try:
        _assert_same(_search(ivf_flat["mono"], data[2], 8), _search(open_merged(moved), data[2], 8))
    finally:
        os.rename(moved, ivf_flat["merged"])


def test_open_merged_is_read_only(ivf_flat):
    # Only inspected: adding to a read-only on-disk index aborts the process in FAISS 1.15.1 (no exception).
    merged = open_merged(ivf_flat["merged"])  # held: the lists below belong to it
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(merged).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists)
    assert lists.read_only
    assert Path(lists.filename) == ivf_flat["merged"] / MERGED_DATA_FILE


def test_build_sharded_equals_monolithic_and_is_seeded(data, tmp_path):
    embeddings, ids, queries = data
    build = build_sharded(embeddings, ids, "IVF32,Flat", 3, tmp_path / "a", sample_size=2000, seed=5)
    assert [p.name for p in build.shard_paths] == [f"shard-{i:05d}-of-00003.index" for i in range(3)]
    assert [faiss.read_index(str(p)).ntotal for p in build.shard_paths] == [1667, 1666, 1667]
    monolithic = faiss.read_index(str(build.empty_index))
    monolithic.add_with_ids(embeddings, ids)
    for nprobe in (2, 32):
        expected = _search(monolithic, queries, nprobe)
        _assert_same(expected, _search(open_merged(build.merged_dir), queries, nprobe))
        _assert_same(expected, _search(shard_index(build.shard_paths), queries, nprobe))
    again = build_sharded(embeddings, ids, "IVF32,Flat", 3, tmp_path / "b", sample_size=2000, seed=5)
    assert again.empty_index.read_bytes() == build.empty_index.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        build_sharded(embeddings, ids, "IVF32,Flat", 3, tmp_path / "a", sample_size=2000)


def test_add_shard_replaces_atomically(ivf_flat, data, tmp_path):
    embeddings, ids, _ = data
    out = tmp_path / "shard.index"
    add_shard(ivf_flat["empty"], embeddings[:10], ids[:10], out)
    add_shard(ivf_flat["empty"], embeddings[:20], ids[:20], out)  # a retried task replaces the file whole
    assert faiss.read_index(str(out)).ntotal == 20
    with pytest.raises(ValueError, match="embeddings"):
        add_shard(ivf_flat["empty"], embeddings[:5, :16], ids[:5], tmp_path / "bad.index")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard.index"]


# Errors: field, expected, received.


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "PQ8", "IVF16,PQ8,RFlat"])
def test_non_mergeable_factories_are_refused(data, factory):
    with pytest.raises(
        ValueError, match=r"`factory` .* is a Index\w+, not an IVF index: .*merge_ondisk.*AnnIndex.build"
    ):
        train_empty_index(data[0][:1000], factory)


def test_add_shard_errors(ivf_flat, data, tmp_path):
    embeddings, ids, _ = data
    out = tmp_path / "s.index"
    with pytest.raises(
        ValueError, match=r"`embeddings` should be a 2-D array \[num_items, 32\]. Received: shape=\(5, 16\)"
    ):
        add_shard(ivf_flat["empty"], embeddings[:5, :16], ids[:5], out)
    with pytest.raises(ValueError, match="at least one row: an empty shard"):
        add_shard(ivf_flat["empty"], embeddings[:0], ids[:0], out)
    with pytest.raises(ValueError, match="`ids` should be distinct"):
        add_shard(ivf_flat["empty"], embeddings[:3], np.array([1, 2, 1]), out)
    with pytest.raises(ValueError, match=r"`ids` should have shape \[3\]"):
        add_shard(ivf_flat["empty"], embeddings[:3], ids[:2], out)
    with pytest.raises(ValueError, match="non-negative"):
        add_shard(ivf_flat["empty"], embeddings[:2], np.array([-1, 4]), out)
    with pytest.raises(ValueError, match=r"trained, empty index.*ntotal=700"):
        add_shard(ivf_flat["shards"][0], embeddings[:2], ids[:2], out)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        add_shard(tmp_path / "missing.index", embeddings[:2], ids[:2], out)


def test_merge_errors(ivf_flat, ivf_pq, data, tmp_path):
    embeddings, ids, _ = data
    duplicate = add_shard(ivf_flat["empty"], embeddings[:3], ids[[5, 6, 4000]], tmp_path / "dup.index")
    for combine in (merge_shards, shard_index):
        args = ([ivf_flat["shards"][0], ivf_flat["shards"][3], duplicate],) + (
            (tmp_path / "m",) if combine is merge_shards else ()
        )
        with pytest.raises(
            ValueError, match=r"3 id\(s\) appear in more than one shard, e.g. id \d+ in .*shard\d.index and .*dup.index"
        ):
            combine(*args)
    assert not (tmp_path / "m").exists()
    with pytest.raises(ValueError, match="trained differently"):
        merge_shards([ivf_flat["shards"][0], ivf_pq["shards"][1]], tmp_path / "m")
    with pytest.raises(ValueError, match="at least one shard file"):
        merge_shards([], tmp_path / "m")
    with pytest.raises(ValueError, match="holds no vectors"):
        merge_shards([ivf_flat["empty"]], tmp_path / "m")
    with pytest.raises(FileExistsError, match="already exists"):
        merge_shards(ivf_flat["shards"], ivf_flat["merged"])
    with pytest.raises(FileNotFoundError, match=MERGED_INDEX_FILE):
        open_merged(tmp_path)
    with pytest.raises(ValueError, match="`num_shards` should be an integer from 1 to the number of rows \\(5\\)"):
        build_sharded(embeddings[:5], ids[:5], "IVF1,Flat", 6, tmp_path / "b")
    flat = tmp_path / "flat.index"
    faiss.write_index(faiss.IndexIDMap2(faiss.IndexFlatIP(DIM)), str(flat))
    with pytest.raises(ValueError, match="IndexIDMap2, not an IVF index"):
        add_shard(flat, embeddings[:2], ids[:2], tmp_path / "x.index")


def test_merge_refuses_shards_of_another_dimension(ivf_flat, data, tmp_path):
    narrow = data[0][:500, :16] / np.linalg.norm(data[0][:500, :16], axis=1, keepdims=True)
    empty = write_empty_index(train_empty_index(narrow, "IVF4,Flat"), tmp_path / "empty16.index")
    other = add_shard(empty, narrow[:10], np.arange(10), tmp_path / "narrow.index")
    for combine, args in ((merge_shards, (tmp_path / "m",)), (shard_index, ())):
        with pytest.raises(ValueError, match=r"narrow.index has dimension 16 but .*shard0.index has 32"):
            combine([ivf_flat["shards"][0], other], *args)
