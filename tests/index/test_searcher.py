"""The build-index job and the Searcher, end to end on a tiny trained cascade (real models, real FAISS indexes)."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from index_fixtures import TrainedShop, held_out_queries

import index.build
from index import (
    PAD_INT_ID,
    BuildConfig,
    IndexConfig,
    ManifestError,
    Query,
    Searcher,
    build_index,
    read_manifest,
)
from ranking import score_pairs
from retrieval import embed_catalog


@pytest.fixture(scope="module")
def searcher(flat_bundle: Path) -> Searcher:
    return Searcher.load(flat_bundle)


def _reference_search(trained_shop: TrainedShop, queries, k: int, num_candidates: int):
    """The cascade computed with the trained Keras models in memory: exact top-N by the towers, student re-rank."""
    trained = trained_shop.trained
    two_tower = trained.two_towers["distilled"]
    student = trained.students["distilled"]
    encoded = trained.encoders.encode_queries(queries)
    query_embeddings = two_tower.query_tower(encoded, training=False).numpy()
    item_embeddings = embed_catalog(two_tower.item_tower, trained.catalog)
    similarity = query_embeddings @ item_embeddings.T
    candidates = np.argsort(-similarity, axis=1, kind="stable")[:, :num_candidates]
    rows = np.repeat(np.arange(len(candidates)), num_candidates)
    logits = score_pairs(
        student,
        {key: value[rows] for key, value in encoded.items()},
        {key: np.asarray(value)[candidates.ravel()] for key, value in trained.catalog.items()},
    ).reshape(candidates.shape)
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    slots = np.take_along_axis(candidates, order, axis=1)
    return slots, np.take_along_axis(logits, order, axis=1), candidates


def test_build_load_search_equals_the_in_memory_cascade(trained_shop: TrainedShop, searcher: Searcher) -> None:
    queries = held_out_queries(trained_shop)
    expected_slots, expected_scores, candidates = _reference_search(trained_shop, queries, k=10, num_candidates=50)
    results = searcher.search(queries, k=10, num_candidates=50)
    assert results.item_ids.shape == results.scores.shape == (len(queries), 10)
    np.testing.assert_allclose(results.scores, expected_scores, rtol=1e-5, atol=1e-5)
    # Equal ids wherever the score is not tied with a neighbour (ties may come back in either order).
    gaps = np.abs(np.diff(expected_scores, axis=1)) > 1e-4
    distinct = np.ones_like(expected_scores, dtype=bool)
    distinct[:, 1:] &= gaps
    distinct[:, :-1] &= gaps
    items = trained_shop.shop.dataset.items["item_id"].to_numpy()
    np.testing.assert_array_equal(results.item_ids[distinct], items[expected_slots][distinct])
    # First stage only: the exact top-k of the towers.
    first = searcher.search(queries, k=10, num_candidates=50, rerank=False)
    np.testing.assert_array_equal(first.slots[:, :5], candidates[:, :5])


def test_ivf_probing_every_list_equals_the_exact_index(
    trained_shop: TrainedShop, searcher: Searcher, tmp_path: Path
) -> None:
    out = tmp_path / "ivf"
    manifest = build_index(
        trained_shop.model_dir,
        trained_shop.shop.dataset.items,
        out,
        BuildConfig(index=IndexConfig(factory="IVF8,Flat", nprobe=8)),
        users=trained_shop.shop.dataset.users,
    )
    assert manifest.index["factory"] == "IVF8,Flat" and manifest.index["nprobe"] == 8
    ivf = Searcher.load(out)
    queries = held_out_queries(trained_shop)
    for rerank in (True, False):
        a = searcher.search(queries, k=20, num_candidates=60, rerank=rerank)
        b = ivf.search(queries, k=20, num_candidates=60, rerank=rerank)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
        np.testing.assert_array_equal(a.item_ids[:, :3], b.item_ids[:, :3])


def test_manifest_describes_the_build(flat_bundle: Path, trained_shop: TrainedShop) -> None:
    manifest = read_manifest(flat_bundle)
    assert manifest.format_version == 1 and manifest.metric == "inner_product"
    assert manifest.embedding_dim == 16
    assert manifest.items["num_slots"] == manifest.items["num_active"] == trained_shop.shop.dataset.num_items
    assert manifest.index["factory"] == "Flat" and manifest.index["ntotal"] == manifest.items["num_active"]
    assert {"index.faiss", "items.parquet", "item_embeddings.npy", "active.npy", "users.parquet"} <= set(manifest.files)
    assert any(name.startswith("student_items/") for name in manifest.files)
    assert any(name.startswith("savedmodel/student/") for name in manifest.files)
    assert manifest.versions["faiss"] and manifest.versions["numpy"]
    assert manifest.config["build"]["mode"] == "distilled"
    assert manifest.config["cascade"]["student"]["model"]["deep_layers"] == [16]
    for name, entry in manifest.files.items():
        assert (flat_bundle / name).stat().st_size == entry.bytes


def test_exclusions_never_appear_and_k_results_still_come_back(trained_shop: TrainedShop, searcher: Searcher) -> None:
    queries = held_out_queries(trained_shop, n=8)
    plain = searcher.search(queries, k=10, num_candidates=20)
    # Exclude every query's own top 10: the next ones must fill the list.
    exclude = [list(row) for row in plain.item_ids]
    results = searcher.search(queries, k=10, num_candidates=20, exclude=exclude)
    assert results.valid.all()
    for row, excluded in zip(results.item_ids, exclude, strict=True):
        assert not set(row) & set(excluded)
        assert len(set(row)) == 10
    # One list shared by every query; unknown ids are ignored.
    shared = [*plain.item_ids[0][:5].tolist(), 10**9]
    results = searcher.search(queries, k=10, exclude=shared)
    assert results.valid.all() and not np.isin(results.item_ids, shared).any()


def test_filters_hold_and_fill_k(trained_shop: TrainedShop, searcher: Searcher) -> None:
    items = trained_shop.shop.dataset.items
    queries = held_out_queries(trained_shop, n=6)
    category = items["category_l1"].value_counts().index[0]
    brands = items["brand"].value_counts().index[:2].tolist()
    low, high = float(items["price"].quantile(0.25)), float(items["price"].quantile(0.75))
    for filters in ({"category_l1": category}, {"brand": brands}, {"price": (low, high)}, {"price": (None, low)}):
        results = searcher.search(queries, k=10, num_candidates=30, filters=filters)
        eligible = np.ones(len(items), dtype=bool)
        for field, condition in filters.items():
            column = items[field]
            if isinstance(condition, tuple):
                lo, hi = condition
                lo = -np.inf if lo is None else lo
                hi = np.inf if hi is None else hi
                eligible &= ((column >= lo) & (column <= hi)).to_numpy()
            else:
                eligible &= column.isin(condition if isinstance(condition, list) else [condition]).to_numpy()
        assert eligible.sum() >= 10, filters
        assert results.valid.all(), filters
        assert eligible[results.slots].all(), filters
    # Combined with exclusions, and a filter leaving fewer than k items pads the rest.
    rare = items["category_leaf"].value_counts()
    leaf = rare.index[-1]
    results = searcher.search(queries, k=10, filters={"category_leaf": leaf, "price": (0, None)})
    expected = int(((items["category_leaf"] == leaf) & (items["price"] >= 0)).sum())
    assert expected < 10
    assert (results.valid.sum(axis=1) == expected).all()
    assert (results.item_ids[~results.valid] == PAD_INT_ID).all()
    assert np.isneginf(results.scores[~results.valid]).all()
    none = searcher.search(queries, k=5, filters={"brand": "no such brand"})
    assert not none.valid.any()


def test_padding_when_the_catalog_is_smaller_than_k(searcher: Searcher, trained_shop: TrainedShop) -> None:
    n = trained_shop.shop.dataset.num_items
    results = searcher.search(Query(user_id=1, text="pen"), k=n + 15, num_candidates=n + 15)
    assert results.item_ids.shape == (1, n + 15)
    assert results.valid.sum() == n
    assert len(set(results.item_ids[0][:n].tolist())) == n
    assert (results.slots[0, n:] == -1).all() and np.isneginf(results.scores[0, n:]).all()
    assert (np.diff(results.scores[0, :n]) <= 0).all()


def test_cold_start_queries_get_valid_results(searcher: Searcher) -> None:
    queries = [
        Query(user_id=10**9, text="", history=()),  # unknown user, no text, no history
        Query(user_id=None, text="", history=()),  # anonymous
        Query(user_id=None, text="zzzz unseen words", history=[10**9], context={"device": "toaster"}),
        Query(user_id=5, text="chocolate", history=[1, 2, 3], context={"device": "mobile", "hour": 9}),
    ]
    results = searcher.search(queries, k=10)
    assert results.valid.all()
    assert np.isfinite(results.scores).all()
    single = searcher.search(queries[3], k=10)
    np.testing.assert_array_equal(single.item_ids[0], results.item_ids[3])
    np.testing.assert_allclose(single.scores[0], results.scores[3], atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, r"`k` should be an integer in \[1, .*Received: k=0"),
        ({"k": -3}, r"`k` should be .*Received: k=-3"),
        ({"k": 2.5}, r"`k` should be .*Received: k=2.5"),
        ({"k": 10**9}, r"`k` should be an integer in \[1, 100000\]"),
        ({"k": 10, "num_candidates": 5}, r"`num_candidates` should be >= k.*num_candidates=5, k=10"),
        ({"filters": {"colour": "red"}}, r"`filters` has unknown field 'colour'; filterable fields: \["),
        ({"filters": {"price": (10, 1)}}, r"`filters\['price'\]` should have low <= high"),
        ({"filters": {"price": "cheap"}}, r"`filters\['price'\]` should be a number or a \(low, high\) range"),
        ({"filters": ["brand"]}, r"`filters` should be a mapping"),
        ({"exclude": "abc"}, r"`exclude` should be a sequence of item ids"),
        ({"exclude": [[1], [2]]}, r"`exclude` should have one sequence per query \(1\)\. Received: 2"),
        ({"rerank": "yes"}, r"`rerank` should be a bool"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(searcher: Searcher, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        searcher.search(Query(user_id=1), **kwargs)


def test_bad_queries_raise_value_errors_naming_them(searcher: Searcher) -> None:
    with pytest.raises(ValueError, match=r"`queries\[0\]\.user_id` should be a int id"):
        searcher.search(Query(user_id="alice"))
    with pytest.raises(ValueError, match=r"`queries\[1\]\.text` should be a string"):
        searcher.search([Query(user_id=1), Query(user_id=1, text=None)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`queries\[0\]\.context` has unknown column\(s\) \['weather'\]"):
        searcher.search(Query(user_id=1, context={"weather": "rain"}))
    with pytest.raises(ValueError, match=r"`queries\[0\]\.history\[1\]` should be a int item id"):
        searcher.search(Query(user_id=1, history=[1, "x"]))
    with pytest.raises(ValueError, match=r"`queries` should hold at least one query"):
        searcher.search([])
    with pytest.raises(ValueError, match=r"`queries` should be a Query, a sequence of Query or a QueryBatch"):
        searcher.search({"user_id": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`query_embeddings` should have shape \[num_queries, 16\]"):
        searcher.search_embeddings(np.zeros((2, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"`query_embeddings` should be finite"):
        searcher.search_embeddings(np.full((1, 16), np.nan, dtype=np.float32))


def test_search_embeddings_equals_first_stage(trained_shop: TrainedShop, searcher: Searcher) -> None:
    queries = held_out_queries(trained_shop, n=10)
    embeddings = searcher.embed_queries(queries)
    a = searcher.search_embeddings(embeddings, k=10)
    b = searcher.search(queries, k=10, num_candidates=10, rerank=False)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)


def test_eight_threads_give_exactly_the_serial_results(trained_shop: TrainedShop, searcher: Searcher) -> None:
    batch = held_out_queries(trained_shop, n=40)
    items = trained_shop.shop.dataset.items
    calls = []
    for i in range(40):
        query = batch.take(np.array([i]))
        kwargs: dict = {"k": 5 + i % 7}
        if i % 3 == 0:
            kwargs["filters"] = {"category_l1": items["category_l1"].iloc[i]}
        if i % 4 == 0:
            kwargs["exclude"] = items["item_id"].iloc[:20].tolist()
        if i % 5 == 0:
            kwargs["rerank"] = False
        calls.append((query, kwargs))
    serial = [searcher.search(q, **kw) for q, kw in calls]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            parallel = list(pool.map(lambda call: searcher.search(call[0], **call[1]), calls))
            for s, p in zip(serial, parallel, strict=True):
                np.testing.assert_array_equal(s.item_ids, p.item_ids)
                np.testing.assert_array_equal(s.scores, p.scores)


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat", "HNSW16"])
def test_incremental_add_remove_replace_are_visible_to_search(
    trained_shop: TrainedShop, tmp_path: Path, factory: str
) -> None:
    items = trained_shop.shop.dataset.items
    first, later = items.iloc[:300], items.iloc[300:]
    out = tmp_path / "bundle"
    build_index(
        trained_shop.model_dir,
        first,
        out,
        BuildConfig(index=IndexConfig(factory=factory, nprobe=4)),
        users=trained_shop.shop.dataset.users,
    )
    searcher = Searcher.load(out)
    assert searcher.num_items == 300
    everything = searcher.search(Query(user_id=3), k=400, num_candidates=400)
    assert everything.valid.sum() == 300
    assert searcher.add_items(later) == len(later)
    assert searcher.num_items == len(items)
    everything = searcher.search(Query(user_id=3), k=400, num_candidates=400)
    assert set(everything.item_ids[0][everything.valid[0]]) == set(items["item_id"])
    # The added items are found by their own embeddings.
    added = later["item_id"].iloc[:5].tolist()
    removed = searcher.search(Query(user_id=3), k=10).item_ids[0][:3].tolist()
    assert searcher.remove_items(removed) == 3
    after = searcher.search(Query(user_id=3), k=400, num_candidates=400)
    assert not set(removed) & set(after.item_ids[0].tolist())
    assert after.valid.sum() == len(items) - 3
    with pytest.raises(ValueError, match=r"`item_ids` should be active items of the index. Received 1 unknown"):
        searcher.remove_items([removed[0]])
    with pytest.raises(ValueError, match=r"`items.item_id` should be new ids; 5 are already indexed"):
        searcher.add_items(later.iloc[:5])
    # Replace: a new title moves the item; the old version is gone, the id still comes back once.
    changed = later.iloc[:5].copy()
    changed["title"] = "completely different words"
    assert searcher.replace_items(changed) == 5
    after = searcher.search(Query(user_id=3), k=400, num_candidates=400)
    ids = after.item_ids[0][after.valid[0]].tolist()
    assert len(ids) == len(set(ids)) == len(items) - 3
    assert set(added) <= set(ids)
    # The updated state saves as a new bundle and loads back with identical results.
    saved = searcher.save(tmp_path / "updated")
    assert saved.parent_build_id == read_manifest(out).build_id
    reloaded = Searcher.load(tmp_path / "updated")
    again = reloaded.search(Query(user_id=3), k=400, num_candidates=400)
    np.testing.assert_array_equal(again.item_ids, after.item_ids)
    if factory.startswith("HNSW"):
        with pytest.raises(NotImplementedError, match="HNSW"):
            reloaded.ann.remove(np.array([0]))


def test_an_existing_bundle_is_not_overwritten_unless_asked(trained_shop: TrainedShop, flat_bundle: Path) -> None:
    with pytest.raises(FileExistsError, match="already exists"):
        build_index(trained_shop.model_dir, trained_shop.shop.dataset.items, flat_bundle)


def test_an_interrupted_build_leaves_no_directory(
    trained_shop: TrainedShop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args, **kwargs):
        raise KeyboardInterrupt("killed while building the index")

    monkeypatch.setattr(index.build.AnnIndex, "build", explode)
    with pytest.raises(KeyboardInterrupt):
        build_index(trained_shop.model_dir, trained_shop.shop.dataset.items, tmp_path / "bundle")
    assert list(tmp_path.iterdir()) == []


def _copy(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(bundle, target)
    return target


def _rewrite_manifest(bundle: Path, manifest: dict) -> None:
    """Writes an edited manifest with its own digest recomputed, as a tool that rewrites manifests would."""
    from index.bundle import MANIFEST_DIGEST, manifest_digest

    manifest[MANIFEST_DIGEST] = manifest_digest(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_a_corrupted_manifest_is_refused(flat_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(flat_bundle, tmp_path)
    (bundle / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match=r"manifest.json is not valid JSON"):
        Searcher.load(bundle)
    data = json.loads((flat_bundle / "manifest.json").read_text())
    data["format_version"] = 99
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"`format_version` is 99 but this version of Cascade reads up to 1"):
        Searcher.load(bundle)
    (bundle / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"manifest.json is missing: .* is not a finished index bundle"):
        Searcher.load(bundle)


def test_files_from_another_build_are_refused(flat_bundle: Path, trained_shop: TrainedShop, tmp_path: Path) -> None:
    other = tmp_path / "other"
    build_index(
        trained_shop.model_dir,
        trained_shop.shop.dataset.items.iloc[:200],
        other,
        BuildConfig(index=IndexConfig(factory="Flat")),
    )
    bundle = _copy(flat_bundle, tmp_path)
    shutil.copy(other / "index.faiss", bundle / "index.faiss")
    with pytest.raises(ManifestError, match=r"index.faiss has \d+ bytes but manifest.json records \d+"):
        Searcher.load(bundle)
    # Even with the checksums rewritten, the counts disagree and the message names the file and both numbers.
    manifest = json.loads((bundle / "manifest.json").read_text())
    from index.bundle import sha256_file

    manifest["files"]["index.faiss"] = {
        "bytes": (bundle / "index.faiss").stat().st_size,
        "sha256": sha256_file(bundle / "index.faiss"),
    }
    _rewrite_manifest(bundle, manifest)
    with pytest.raises(ManifestError, match=r"index.faiss has 200 vectors but manifest index.ntotal is 400"):
        Searcher.load(bundle)
    (bundle / "stray.npy").write_bytes(b"x")
    with pytest.raises(ManifestError, match=r"stray.npy is not listed in manifest.json"):
        Searcher.load(bundle)


def test_wrong_dimensions_are_refused(flat_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(flat_bundle, tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    np.save(bundle / "item_embeddings.npy", np.zeros((400, 8), dtype=np.float32))
    from index.bundle import sha256_file

    manifest["files"]["item_embeddings.npy"] = {
        "bytes": (bundle / "item_embeddings.npy").stat().st_size,
        "sha256": sha256_file(bundle / "item_embeddings.npy"),
    }
    _rewrite_manifest(bundle, manifest)
    with pytest.raises(ManifestError, match=r"item_embeddings.npy has 8 columns but manifest embedding_dim is 16"):
        Searcher.load(bundle)


def test_bad_catalogs_are_refused_naming_the_column(trained_shop: TrainedShop, tmp_path: Path) -> None:
    items = trained_shop.shop.dataset.items
    with pytest.raises(ValueError, match=r"`items` should have the columns .* Missing: \['brand'\]"):
        build_index(trained_shop.model_dir, items.drop(columns=["brand"]), tmp_path / "a")
    with pytest.raises(ValueError, match=r"`items.item_id` should be unique. Received: 1 duplicate"):
        build_index(trained_shop.model_dir, pd.concat([items, items.iloc[:1]]), tmp_path / "b")
    with pytest.raises(FileNotFoundError, match=r"`model_dir` should be a directory written by save_cascade"):
        build_index(tmp_path / "nothing", items, tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_build_index_and_search(trained_shop: TrainedShop, tmp_path: Path, capsys) -> None:
    from cascade.cli import main

    items = tmp_path / "items.parquet"
    trained_shop.shop.dataset.items.to_parquet(items)
    out = tmp_path / "bundle"
    code = main(["build-index", "--model", str(trained_shop.model_dir), "--items", str(items), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "FAISS Flat" in capsys.readouterr().out
    assert main(["search", "--index", str(out), "--user", "7", "--query", "chocolate", "-k", "5"]) == 0
    printed = capsys.readouterr().out
    assert "rank" in printed and "title" in printed and "score" in printed
    assert len([line for line in printed.splitlines() if line[:1].isdigit()]) == 5
    assert main(["search", "--index", str(out), "--user", "7", "--json", "--filter", "price=..20"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["results"]) == 10 and all(r["price"] <= 20 for r in payload["results"])
    assert main(["search", "--index", str(out), "--user", "7", "--filter", "colour=red"]) == 2
    assert "unknown field 'colour'" in capsys.readouterr().err
    assert main(["search", "--index", str(tmp_path / "missing")]) == 1
    assert main(["build-index", "--model", str(trained_shop.model_dir), "--items", str(items), "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_cli_update_index(trained_shop: TrainedShop, flat_bundle: Path, tmp_path: Path, capsys) -> None:
    from cascade.cli import main

    items = trained_shop.shop.dataset.items
    remove = tmp_path / "remove.csv"
    items[["item_id"]].iloc[:3].to_csv(remove, index=False)
    changed = items.iloc[10:12].copy()
    changed["title"] = "renamed item"
    replace = tmp_path / "replace.parquet"
    changed.to_parquet(replace)
    out = tmp_path / "updated"
    args = ["update-index", "--index", str(flat_bundle), "--out", str(out), "--remove", str(remove)]
    assert main([*args, "--replace", str(replace)]) == 0, capsys.readouterr().err
    assert "-3 removed, 2 replaced" in capsys.readouterr().out
    searcher = Searcher.load(out)
    assert searcher.num_items == len(items) - 3
    everything = searcher.search(Query(user_id=1), k=len(items), num_candidates=len(items))
    assert not set(items["item_id"].iloc[:3]) & set(everything.item_ids[0].tolist())
    assert searcher.items.loc[searcher.active, "title"].eq("renamed item").sum() == 2
    assert Searcher.load(flat_bundle).num_items == len(items)  # the source bundle is untouched
    assert main([*args]) == 1 and "already exists" in capsys.readouterr().err


def test_a_query_process_needs_no_tensorflow(flat_bundle: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from index import Query, Searcher\n"
        f"s = Searcher.load({str(flat_bundle)!r})\n"
        "r = s.search(Query(user_id=1, text='chocolate'), k=5)\n"
        "assert r.valid.all()\n"
        "print('tensorflow' in sys.modules, 'tf_keras' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_a_bundle_from_another_faiss_version_loads_with_a_warning(
    flat_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = _copy(flat_bundle, tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["versions"]["faiss"] = "0.9.0"
    _rewrite_manifest(bundle, manifest)
    with caplog.at_level("WARNING"):
        Searcher.load(bundle)
    assert "built with faiss 0.9.0" in caplog.text
