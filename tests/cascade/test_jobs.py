"""The batch jobs give the same results through Ray (local mode, 2 CPUs) as through the in-process loop.

One Ray runtime serves the folder (``ray_local`` in its conftest). The models are the session's tiny trained
cascade (``tests/conftest.py``); inputs are a few Parquet shards of its catalog and held-out requests.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest

from cascade import jobs
from cascade.engine import LocalEngine, RayEngine, WorkerSpec, list_shards, make_engine
from features import ITEM_ID

K = 10
NLIST = 8


@pytest.fixture(scope="module")
def ray_engine(ray_local) -> RayEngine:
    return RayEngine()


@pytest.fixture(scope="module")
def inputs(trained_shop, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("job_inputs")
    dataset = trained_shop.shop.dataset
    requests = jobs.make_requests(dataset, max_history=trained_shop.trained.encoders.config.max_history, max_queries=60)
    rng = np.random.default_rng(0)
    ids = dataset.items[ITEM_ID].to_numpy()
    lists = requests.drop(columns=["relevant", "gains"])
    sizes = rng.integers(1, 9, len(lists))
    lists["candidates"] = [ids[rng.choice(len(ids), size=int(n), replace=False)].tolist() for n in sizes]
    jobs.write_shards(dataset.items, root / "items", 3)
    dataset.items.to_parquet(root / "catalog.parquet", index=False)
    dataset.users.to_parquet(root / "users.parquet", index=False)
    jobs.write_shards(requests, root / "requests", 3)
    jobs.write_shards(lists, root / "lists", 2)
    return {
        "items": root / "items",
        "catalog": root / "catalog.parquet",
        "users": root / "users.parquet",
        "requests": root / "requests",
        "lists": root / "lists",
        "root": root,
    }


@pytest.fixture(scope="module")
def embedded(trained_shop, inputs, ray_engine) -> dict[str, Path]:
    root = inputs["root"]
    out = {}
    for name, engine in (("local", LocalEngine()), ("ray", ray_engine)):
        out[name] = root / f"embeddings_{name}"
        jobs.embed_items(trained_shop.model_dir, inputs["items"], out[name], engine=engine, batch_size=64)
    return out


def test_embed_items_ray_equals_local_and_the_bundle(embedded, flat_bundle) -> None:
    local_ids, local = jobs.read_embeddings(embedded["local"])
    ray_ids, ray = jobs.read_embeddings(embedded["ray"])
    assert len(list_shards(embedded["local"])) == 3  # one output shard per input shard
    assert len(local_ids) == len(ray_ids) == 400 and local.dtype == np.float32 and local.shape == (400, 16)
    order = np.argsort(ray_ids)
    np.testing.assert_array_equal(ray_ids[order], np.sort(local_ids))
    np.testing.assert_allclose(ray[order], local[np.argsort(local_ids)], rtol=0, atol=1e-6)
    # The same vectors `build_index` (numpy towers) put in the bundle.
    bundle = np.load(flat_bundle / "item_embeddings.npy")
    items = pd.read_parquet(flat_bundle / "items.parquet")
    slot = pd.Index(items[ITEM_ID]).get_indexer(local_ids)
    np.testing.assert_allclose(local, bundle[slot], rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(local, axis=1), 1.0, atol=1e-5)


def test_sharded_index_ray_equals_local_and_monolithic(embedded, ray_engine, tmp_path) -> None:
    factory = f"IVF{NLIST},Flat"
    local = jobs.build_sharded_index(embedded["local"], tmp_path / "local", factory=factory, engine="local")
    # On Ray: 5 shards cut across however many files Ray wrote.
    ray = jobs.build_sharded_index(embedded["ray"], tmp_path / "ray", factory=factory, engine=ray_engine, num_shards=5)
    assert len(local.shard_paths) == 3 and len(ray.shard_paths) == 5 and local.num_items == ray.num_items == 400
    for build in (local, ray):
        sizes = [faiss.read_index(str(p)).ntotal for p in build.shard_paths]
        assert sum(sizes) == 400 and min(sizes) > 0, sizes
    ids, embeddings = jobs.read_embeddings(embedded["local"])
    queries = embeddings[::7]
    exact = faiss.IndexFlatIP(embeddings.shape[1])
    exact.add(embeddings)
    # The monolithic twin: the same trained empty index, every vector added at once.
    mono = faiss.read_index(str(tmp_path / "local" / "empty.index"))
    mono.add_with_ids(embeddings, np.arange(len(embeddings), dtype=np.int64))
    opened = {name: jobs.open_sharded_index(tmp_path / name) for name in ("local", "ray")}
    for nprobe in (1, 2, NLIST):
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        mono_scores, mono_slots = mono.search(queries, K, params=params)
        for index, item_ids in opened.values():
            scores, slots = index.search(queries, K, params=params)
            np.testing.assert_array_equal(item_ids[slots], ids[mono_slots])
            np.testing.assert_allclose(scores, mono_scores, rtol=0, atol=1e-6)
    index, item_ids = opened["ray"]
    _, slots = index.search(queries, K, params=faiss.SearchParametersIVF(nprobe=NLIST))
    _, exact_slots = exact.search(queries, K)
    np.testing.assert_array_equal(item_ids[slots], ids[exact_slots])  # all lists probed: the exact top-10


def test_teacher_jobs_ray_equal_local_and_the_teacher(trained_shop, inputs, ray_engine, tmp_path) -> None:
    from index.build import restore_teacher
    from index.query_encoder import QueryEncoder
    from ranking import full_rank

    common = {"users": inputs["users"], "batch_size": 16}
    results = {}
    for name, engine in (("local", "local"), ("ray", ray_engine)):
        jobs.score_lists(
            trained_shop.model_dir,
            inputs["lists"],
            inputs["catalog"],
            tmp_path / f"lists_{name}",
            engine=engine,
            **common,
        )
        jobs.teacher_rank(
            trained_shop.model_dir,
            inputs["requests"],
            inputs["catalog"],
            tmp_path / f"rank_{name}",
            engine=engine,
            depth=20,
            **common,
        )
        results[name] = (
            jobs.read_shards(tmp_path / f"lists_{name}").sort_values("query_id").reset_index(drop=True),
            jobs.read_shards(tmp_path / f"rank_{name}").sort_values("query_id").reset_index(drop=True),
        )
    (lists_local, rank_local), (lists_ray, rank_ray) = results["local"], results["ray"]
    n = len(jobs.read_shards(inputs["requests"]))
    assert len(lists_local) == len(lists_ray) == n and len(rank_local) == len(rank_ray) == n
    for a, b in zip(lists_local["teacher_logits"], lists_ray["teacher_logits"], strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert [len(v) for v in lists_local["teacher_logits"]] == [len(v) for v in lists_local["candidates"]]
    for a, b in zip(rank_local["teacher_items"], rank_ray["teacher_items"], strict=True):
        np.testing.assert_array_equal(a, b)
    # The jobs' full ranking is the teacher's own (`ranking.full_rank` in this process, same encoded queries).
    encoders = trained_shop.trained.encoders
    dataset = trained_shop.shop.dataset
    catalog = encoders.encode_items(dataset.items)
    teacher = restore_teacher(trained_shop.model_dir, encoders, catalog)
    encoded = QueryEncoder(encoders, dataset.users).encode(jobs.queries_from_frame(rank_local))
    expected = full_rank(teacher, encoded, catalog, k=20)
    ids = dataset.items[ITEM_ID].to_numpy()
    np.testing.assert_array_equal(np.stack(rank_local["teacher_items"]), ids[np.asarray(expected.item_rows)])
    np.testing.assert_allclose(np.stack(rank_local["teacher_logits"]), expected.scores, rtol=0, atol=1e-5)
    # A candidate list's logits are the teacher's logits of those items (the full ranking's top item).
    top = rank_local.iloc[:5].assign(candidates=[[row[0]] for row in rank_local["teacher_items"].iloc[:5]])
    scorer = jobs.TeacherListScorer(str(trained_shop.model_dir), str(inputs["catalog"]), str(inputs["users"]))
    scored = scorer(top.drop(columns=["teacher_items", "teacher_logits"]))
    np.testing.assert_allclose(
        [v[0] for v in scored["teacher_logits"]], [v[0] for v in rank_local["teacher_logits"].iloc[:5]], atol=1e-4
    )


def test_evaluate_requests_ray_equals_local_and_evaluate(trained_shop, inputs, flat_bundle, ray_engine, tmp_path):
    ranked = tmp_path / "ranked"
    jobs.teacher_rank(
        trained_shop.model_dir, inputs["requests"], inputs["catalog"], ranked, depth=100, users=inputs["users"]
    )
    summaries = {}
    for name, engine in (("local", "local"), ("ray", ray_engine)):
        summaries[name] = jobs.evaluate_requests(
            flat_bundle, ranked, tmp_path / f"eval_{name}", engine=engine, batch_size=16, num_candidates=200
        )
    assert summaries["local"] == summaries["ray"]
    assert summaries["local"]["requests"] == len(jobs.read_shards(inputs["requests"]))
    rows = {n: jobs.read_shards(tmp_path / f"eval_{n}").sort_values("query_id") for n in summaries}
    pd.testing.assert_frame_equal(rows["local"].reset_index(drop=True), rows["ray"].reset_index(drop=True))
    # The same requests through `cascade.evaluate`'s own steps in this process (no Parquet round trip).
    from cascade.evaluate import _sigmoid, sample_requests, teacher_full_ranking
    from cascade.metrics import evaluate_rankings, mean_metric, teacher_ndcg_at_k
    from features.splits import temporal_leave_last_out
    from index import Searcher, queries_from_batch
    from index.build import restore_teacher

    dataset = trained_shop.shop.dataset
    searcher = Searcher.load(flat_bundle)
    id_index = pd.Index(searcher.items[ITEM_ID].to_numpy())
    requests = sample_requests(
        dataset,
        temporal_leave_last_out(dataset).test,
        id_index.get_indexer,
        max_history=searcher.encoders.config.max_history,
        max_queries=60,
    )
    queries = queries_from_batch(requests.queries)
    ranked = searcher.search(queries, k=100, num_candidates=200).slots
    expected = evaluate_rankings(ranked, requests.relevant, ks=(10, 100), relevant_gains=requests.gains)
    catalog = searcher.encoders.encode_items(searcher.items)
    teacher = restore_teacher(trained_shop.model_dir, searcher.encoders, catalog)
    rows, scores, _ = teacher_full_ranking(
        teacher, trained_shop.model_dir, catalog, searcher._query_encoder.encode(queries), depth=100, cache_dir=None
    )
    expected["teacher/ndcg@10"] = mean_metric(teacher_ndcg_at_k(ranked, rows, _sigmoid(scores), 10))[0]
    metrics = summaries["local"]["metrics"]
    assert metrics["truth/recall@10"] == pytest.approx(expected["recall@10"], abs=1e-12)
    assert metrics["truth/ndcg@10"] == pytest.approx(expected["ndcg@10"], abs=1e-12)
    assert metrics["truth/recall@100"] == pytest.approx(expected["recall@100"], abs=1e-12)
    assert metrics["teacher/ndcg@10"] == pytest.approx(expected["teacher/ndcg@10"], abs=1e-6)
    assert 0 < metrics["truth/ndcg@10"] < 1 and 0 < metrics["teacher/ndcg@10"] <= 1


def test_engine_options_are_checked() -> None:
    with pytest.raises(ValueError, match="`engine` should be one of"):
        make_engine("spark")
    with pytest.raises(ValueError, match="takes no options"):
        make_engine("local", address="auto")
    with pytest.raises(ValueError, match=r"`cpus_per_actor` should be an integer >= 1\. Received: 0"):
        RayEngine(cpus_per_actor=0)
    with pytest.raises(ValueError, match="`batch_size` should be an integer >= 1"):
        LocalEngine().map_batches(WorkerSpec(dict), [], Path("x"), batch_size=0)


def test_job_inputs_are_checked_naming_the_field(trained_shop, inputs, embedded, tmp_path) -> None:
    lists = jobs.read_shards(inputs["lists"]).iloc[:3]
    scorer = jobs.TeacherListScorer(str(trained_shop.model_dir), str(inputs["catalog"]), str(inputs["users"]))
    bad = lists.assign(candidates=[[-5], [], [10**9]])
    with pytest.raises(ValueError, match=r"`candidates` should hold item ids of the catalog\. Received 2 unknown"):
        scorer(bad)
    with pytest.raises(ValueError, match="should have a `candidates` column"):
        scorer(lists.drop(columns=["candidates"]))
    with pytest.raises(ValueError, match=r"query rows should have the columns .* Missing: \['history'\]"):
        jobs.queries_from_frame(lists.drop(columns=["history"]))
    with pytest.raises(ValueError, match="shards are merged by their IVF inverted lists"):
        jobs.build_sharded_index(embedded["local"], tmp_path / "hnsw", factory="HNSW16")
    with pytest.raises(ValueError, match=r"`num_shards` should be an integer from 1 to .* rows \(400\)\. Received: 0"):
        jobs.build_sharded_index(embedded["local"], tmp_path / "x", factory="IVF4,Flat", num_shards=0)
    twice = tmp_path / "twice"
    twice.mkdir()
    for name in ("a", "b"):  # the same shard twice: every id duplicated
        (twice / f"{name}.parquet").write_bytes(jobs.list_shards(embedded["local"])[0].read_bytes())
    with pytest.raises(ValueError, match=r"`item_id` should be unique across the embedding shards\. Received 1\d\d "):
        jobs.build_sharded_index(twice, tmp_path / "w", factory="IVF4,Flat")
    with pytest.raises(ValueError, match=r"`num_shards` should be an integer from 1 to the number of rows \(2\)"):
        jobs.write_shards(lists.iloc[:2], tmp_path / "y", 3)
    with pytest.raises(FileNotFoundError, match=r"holds no \.parquet files"):
        jobs.embed_items(trained_shop.model_dir, tmp_path, tmp_path / "z")
    assert not (tmp_path / "hnsw").exists() and not (tmp_path / "x").exists()  # nothing half-written


def test_build_index_embedding_on_ray_gives_the_same_bundle(trained_shop, flat_bundle, ray_engine, tmp_path) -> None:
    from index import BuildConfig, IndexConfig, Searcher, build_index, queries_from_batch
    from tests.index.index_fixtures import held_out_queries

    dataset = trained_shop.shop.dataset
    out = tmp_path / "bundle_ray"
    embedder = jobs.engine_embedder(ray_engine, trained_shop.model_dir, batch_size=128)  # 4 catalog shards
    build_index(
        trained_shop.model_dir,
        dataset.items,
        out,
        BuildConfig(index=IndexConfig(factory="Flat")),
        users=dataset.users,
        embedder=embedder,
    )
    assert not (out / ".engine-work").exists()
    for name in [
        "item_embeddings.npy",
        *(f"student_items/{p.name}" for p in (flat_bundle / "student_items").iterdir()),
    ]:
        local, ray = np.load(flat_bundle / name), np.load(out / name)
        assert local.dtype == ray.dtype and local.shape == ray.shape, name
        np.testing.assert_allclose(ray, local, rtol=0, atol=1e-6, err_msg=name)
    queries = queries_from_batch(held_out_queries(trained_shop, 30))
    expected = Searcher.load(flat_bundle).search(queries, k=10)
    got = Searcher.load(out).search(queries, k=10)
    np.testing.assert_array_equal(got.item_ids, expected.item_ids)
    np.testing.assert_allclose(got.scores, expected.scores, rtol=0, atol=1e-5)
