"""Property tests of `Searcher.search` on a real tiny bundle: whatever k, candidates, exclusions, filters and batch,
rows are sorted, unique, eligible, as full as the catalog allows, padded as documented, and a batch equals its
single-query calls."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from index_fixtures import TrainedShop, held_out_queries

from index import PAD_INT_ID, PAD_SLOT, BuildConfig, IndexConfig, Query, Searcher, build_index, queries_from_batch
from index.build import EMBEDDINGS_FILE

PROPERTY_SETTINGS = settings(max_examples=80, deadline=None, derandomize=True)
CATEGORICAL = ("category_l1", "category_l2", "category_leaf", "brand")
NUMERIC = "price"
SCORE_ATOL = 1e-6  # batch vs single query
INNER_PRODUCT_ATOL = 1e-4  # float32 FAISS inner products vs a float64 reference
TIE_ATOL = 1e-5  # batches of `_BLAS_THRESHOLD` (20) queries or more take FAISS's BLAS path: sums round differently
SMALL_BATCH = 8  # below the BLAS threshold: a batch runs the single-query arithmetic, so it must match exactly


@pytest.fixture(scope="module")
def ivf_bundle(trained_shop: TrainedShop, tmp_path_factory) -> Path:
    """An IVF index probing 1 of 8 lists: approximate, so short rows must be filled by the exact fallback."""
    out = tmp_path_factory.mktemp("bundles") / "ivf-nprobe1"
    build_index(
        trained_shop.model_dir,
        trained_shop.shop.dataset.items,
        out,
        BuildConfig(index=IndexConfig(factory="IVF8,Flat", nprobe=1)),
        users=trained_shop.shop.dataset.users,
    )
    return out


@pytest.fixture(scope="module", params=["flat", "ivf"])
def searcher(request: pytest.FixtureRequest) -> Searcher:
    return Searcher.load(request.getfixturevalue(f"{request.param}_bundle"))


@pytest.fixture(scope="module")
def query_pool(trained_shop: TrainedShop) -> list[Query]:
    """Held-out requests plus cold-start ones (anonymous, unknown user, unknown history and context)."""
    return [
        *queries_from_batch(held_out_queries(trained_shop, n=30)),
        Query(user_id=None),
        Query(user_id=10**9, text="zzzz unseen words", history=[10**9], context={"device": "toaster"}),
    ]


# -- a search request, drawn against the catalog -------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    rows: list[int]
    k: int
    num_candidates: int
    exclude: list | None  # ids shared by every query, or one list per query
    per_query: bool
    filters: dict | None
    rerank: bool

    def excluded(self, i: int) -> list:
        if self.exclude is None:
            return []
        return self.exclude[i] if self.per_query else self.exclude

    def kwargs(self, i: int | None = None) -> dict:
        """Arguments of the batch call, or of query ``i``'s single call (its own exclusions, as a flat list)."""
        exclude = self.exclude if i is None or self.exclude is None else self.excluded(i)
        return {
            "k": self.k,
            "num_candidates": self.num_candidates,
            "exclude": exclude,
            "filters": self.filters,
            "rerank": self.rerank,
        }


def _exclusions(data: st.DataObject, ids: np.ndarray) -> list:
    """A few real ids and unknown ones (ignored by contract), or most of the catalog (so rows come back short)."""
    unknown = st.integers(10**9, 10**9 + 50) | st.integers(-50, -1)
    few = st.lists(st.sampled_from(ids.tolist()) | unknown, max_size=30)
    many = st.tuples(st.integers(0, len(ids)), st.integers(0, 2**32 - 1)).map(
        lambda n_seed: np.random.default_rng(n_seed[1]).choice(ids, size=n_seed[0], replace=False).tolist()
    )
    return data.draw(st.one_of(few, few, many))


def _filters(data: st.DataObject, items: pd.DataFrame) -> dict | None:
    if data.draw(st.booleans()):
        return None
    fields = data.draw(st.lists(st.sampled_from([*CATEGORICAL, NUMERIC]), min_size=1, max_size=3, unique=True))
    filters: dict = {}
    for field in fields:
        if field == NUMERIC:
            prices = st.sampled_from(sorted(float(p) for p in items[NUMERIC].unique())) | st.floats(-10, 500)
            bounds = sorted(data.draw(st.lists(prices, min_size=2, max_size=2)))
            low = data.draw(st.sampled_from([bounds[0], None]))
            high = data.draw(st.sampled_from([bounds[1], None]))
            filters[field] = data.draw(st.sampled_from([(low, high), bounds[0]]))  # a range, or one exact price
        else:
            values = st.sampled_from(sorted(items[field].dropna().unique().tolist())) | st.just("no such value")
            filters[field] = data.draw(values | st.lists(values, min_size=1, max_size=4))
    return filters


def _plan(
    data: st.DataObject, searcher: Searcher, pool_size: int, *, batch: tuple[int, int] = (1, SMALL_BATCH)
) -> Plan:
    items = searcher.items
    rows = data.draw(st.lists(st.integers(0, pool_size - 1), min_size=batch[0], max_size=batch[1]), label="rows")
    k = data.draw(st.integers(1, 20) | st.integers(1, searcher.num_items + 20), label="k")
    num_candidates = k + data.draw(st.just(0) | st.integers(0, 60), label="num_candidates - k")
    kind = data.draw(st.sampled_from(["none", "shared", "per_query"]), label="exclude")
    ids = items["item_id"].to_numpy()
    if kind == "none":
        exclude = None
    elif kind == "shared":
        exclude = _exclusions(data, ids)
    else:
        exclude = [_exclusions(data, ids) for _ in rows]
    filters = _filters(data, items)
    data.draw(st.just(filters), label="filters")
    rerank = data.draw(st.booleans(), label="rerank") if batch[1] <= SMALL_BATCH else False
    return Plan(rows, k, num_candidates, exclude, kind == "per_query", filters, rerank)


def _filter_mask(items: pd.DataFrame, filters: dict | None) -> np.ndarray:
    """The reference: which catalog rows pass every condition, computed with pandas."""
    mask = np.ones(len(items), dtype=bool)
    for field, condition in (filters or {}).items():
        column = items[field]
        if field == NUMERIC:
            values = column.to_numpy(dtype=np.float64)
            if isinstance(condition, tuple):
                low, high = condition
                mask &= (values >= (-np.inf if low is None else low)) & (values <= (np.inf if high is None else high))
            else:
                mask &= values == condition
        else:
            mask &= column.isin(condition if isinstance(condition, list) else [condition]).to_numpy()
    return mask


# -- the properties ------------------------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(data=st.data())
def test_every_search_is_sorted_unique_eligible_full_and_equals_its_single_calls(
    searcher: Searcher, query_pool: list[Query], data: st.DataObject
) -> None:
    plan = _plan(data, searcher, len(query_pool))
    queries = [query_pool[r] for r in plan.rows]
    results = searcher.search(queries, **plan.kwargs())

    n, k = len(queries), plan.k
    assert results.item_ids.shape == results.scores.shape == results.slots.shape == (n, k)
    assert results.scores.dtype == np.float32 and results.slots.dtype == np.int64
    items = searcher.items
    ids = items["item_id"].to_numpy()
    eligible = searcher.active & _filter_mask(items, plan.filters)
    valid = results.valid
    for i in range(n):
        row_valid, slots, scores = valid[i], results.slots[i], results.scores[i]
        count = int(row_valid.sum())
        # Padding: only at the end of a row, and exactly as documented (slot -1, score -inf, id PAD_INT_ID).
        assert row_valid[:count].all() and not row_valid[count:].any(), slots
        assert (slots[count:] == PAD_SLOT).all() and np.isneginf(scores[count:]).all()
        assert (results.item_ids[i, count:] == PAD_INT_ID).all()
        # Real results: finite scores, descending; ids are the slots' ids, each once.
        assert np.isfinite(scores[:count]).all()
        assert (np.diff(scores[:count]) <= 0).all(), scores[:count]
        np.testing.assert_array_equal(results.item_ids[i, :count], ids[slots[:count]])
        assert len(set(slots[:count].tolist())) == count, slots[:count]
        # Never an excluded or filtered-out item; and k results whenever k eligible items remain.
        available = eligible & ~np.isin(ids, np.asarray(plan.excluded(i), dtype=np.int64))
        assert available[slots[:count]].all(), (plan.filters, plan.excluded(i))
        assert count == min(k, int(available.sum())), (count, k, int(available.sum()))

    # A batch is its single-query calls, query by query.
    for i, query in enumerate(queries):
        single = searcher.search(query, **plan.kwargs(i))
        np.testing.assert_array_equal(single.item_ids[0], results.item_ids[i], err_msg=f"query {i}")
        np.testing.assert_array_equal(single.slots[0], results.slots[i], err_msg=f"query {i}")
        np.testing.assert_allclose(single.scores[0], results.scores[i], rtol=0, atol=SCORE_ATOL, err_msg=f"query {i}")


@PROPERTY_SETTINGS
@given(data=st.data())
def test_results_come_from_the_towers_top_candidates(
    searcher: Searcher, query_pool: list[Query], data: st.DataObject
) -> None:
    """Without re-ranking the scores are the query-item inner products (on Flat: the exact top-k of the eligible
    items); with re-ranking every result is among the exact top-``num_candidates`` (on Flat)."""
    plan = _plan(data, searcher, len(query_pool))
    queries = [query_pool[r] for r in plan.rows]
    results = searcher.search(queries, **plan.kwargs())
    exact = searcher.manifest.index["factory"] == "Flat"
    item_embeddings = np.load(searcher.directory / EMBEDDINGS_FILE, allow_pickle=False).astype(np.float64)
    inner = searcher.embed_queries(queries).astype(np.float64) @ item_embeddings.T
    ids = searcher.items["item_id"].to_numpy()
    eligible = searcher.active & _filter_mask(searcher.items, plan.filters)
    for i in range(len(queries)):
        count = int(results.valid[i].sum())
        slots = results.slots[i, :count]
        available = eligible & ~np.isin(ids, np.asarray(plan.excluded(i), dtype=np.int64))
        best = np.sort(inner[i, available])[::-1]
        if not plan.rerank:
            np.testing.assert_allclose(results.scores[i, :count], inner[i, slots], atol=INNER_PRODUCT_ATOL)
            if exact:
                np.testing.assert_allclose(results.scores[i, :count], best[:count], atol=INNER_PRODUCT_ATOL)
        elif exact and len(best) > plan.num_candidates:
            cutoff = best[plan.num_candidates - 1]
            assert (inner[i, slots] >= cutoff - INNER_PRODUCT_ATOL).all(), (inner[i, slots].min(), cutoff)


@settings(PROPERTY_SETTINGS, max_examples=8)
@given(data=st.data())
def test_a_large_batch_equals_its_single_calls_up_to_ties(
    searcher: Searcher, query_pool: list[Query], data: st.DataObject
) -> None:
    """From 20 queries on, FAISS sums inner products with BLAS: equal scores to 1e-5, and ids may only swap between
    items whose scores tie. (Re-ranking is off: a tie at the candidate cutoff may hand the re-ranker another item.)"""
    plan = _plan(data, searcher, len(query_pool), batch=(20, 32))
    queries = [query_pool[r] for r in plan.rows]
    results = searcher.search(queries, **plan.kwargs())
    for i, query in enumerate(queries):
        single = searcher.search(query, **plan.kwargs(i))
        np.testing.assert_array_equal(single.valid[0], results.valid[i], err_msg=f"query {i}")
        count = int(single.valid[0].sum())
        scores = single.scores[0, :count]
        np.testing.assert_allclose(results.scores[i, :count], scores, rtol=0, atol=TIE_ATOL, err_msg=f"query {i}")
        gaps = np.abs(np.diff(scores)) <= TIE_ATOL
        tied = np.zeros(count, dtype=bool)
        tied[:-1] |= gaps
        tied[1:] |= gaps
        if count:
            tied[-1] = True  # the last result may tie with the first one left out
        swapped = single.item_ids[0, :count] != results.item_ids[i, :count]
        assert not (swapped & ~tied).any(), (np.flatnonzero(swapped & ~tied), scores)
