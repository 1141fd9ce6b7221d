"""Memory of a query process over 100,000 mixed queries: resident set size and traced Python heap stay flat.

Usage:
    python bench/bench_memory.py                       # trains, builds, 2 x 100,000 calls
    python bench/bench_memory.py --model DIR --queries 30000 --warmup 5000 --out /tmp/memory.json   # quicker

Run time: set-up ~1-4 min (training dominates), then the calls run under tracemalloc (~2.5x slower than
untraced): on a 2-core machine shared with other jobs (and niced), 100,000 calls took 11 min for the baseline and
27 min for the Searcher (62 calls/s).

Set-up (timed and printed, not a result), with `bench_search`'s functions: trains the reference cascade (towers of
width 64, the default `StudentConfig`) on a small synthetic shop (``--train-*``; or reuses ``--model DIR``), generates
a catalog of ``--items`` items and builds one bundle (``--index``: bench_search's Flat, HNSW or IVF configuration)
in a spawned child. Takes the shop's held-out requests as live `Query` objects.

Measurement: each run below is a fresh spawned process that imports numpy, FAISS and `index`, never TensorFlow
(checked: a TensorFlow import anywhere in the process is reported, and the query path would then be suspect).
It runs ``--queries`` calls from a seeded stream of mixed requests, made on the fly and dropped after the call:
single queries (75%) and batches of 2-8 (10%), ``k`` 10/50/100 with ``num_candidates`` 100-400, re-rank on (80%)
or off, with or without text, history, exclusions (the user's history), category/brand/price filters, and
`search_embeddings` on perturbed item embeddings (15%). Every ``--sample-every`` calls (after ``gc.collect()``):
VmRSS (``/proc/self/status``), the traced Python heap (`tracemalloc`, on from the first call), the Searcher's
filter-column cache size.

- ``baseline``: the same request stream, sampling and tracemalloc, with numpy ``X @ q`` + argpartition over the
  bundle's item embeddings instead of the Searcher: the growth the harness and the allocator show by themselves.
- ``searcher``: `Searcher.load` + the same stream through `Searcher.search` / `search_embeddings`.

Growth is reported after the warm-up (the first ``--warmup`` calls: lazy lookups, filter columns, allocator
arenas): ``(value at the end - value after warm-up) / calls after warm-up`` in bytes per call, and the
least-squares slope over the samples after warm-up. A leak shows in both; allocator noise moves only the first.
Prints a table and writes every sample to ``--out`` (``bench/results/memory.json``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads (training, the build child)

import bench_search
import numpy as np
import pyarrow.parquet as pq

from features import generate_shop, temporal_leave_last_out
from index import Query, queries_from_batch

RUNS = ("baseline", "searcher")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "memory.json"


# -- the request stream --------------------------------------------------------------------------------------------


def mixed_requests(
    seed: int, queries: list[Query], catalog: dict[str, np.ndarray], dim: int
) -> Iterator[tuple[str, Any, int, dict[str, Any]]]:
    """An endless seeded stream of ``(method, payload, k, kwargs)``: ``"search"`` with one `Query` or a list of
    them, or ``"search_embeddings"`` with ``[n, dim]`` float32 embeddings (see the module docstring for the mix).

    Args:
        seed: Seeds the stream (the baseline and the Searcher get the same one).
        queries: Held-out live queries to draw from.
        catalog: ``item_embeddings`` ``[num_items, dim]``, ``item_id``, ``category_l1``, ``brand``, ``price``.
        dim: Embedding dimension.
    """
    rng = np.random.default_rng(seed)
    categories = np.unique(catalog["category_l1"])
    brands = np.unique(catalog["brand"])
    prices = np.quantile(catalog["price"], [0.1, 0.25, 0.5, 0.75, 0.9])
    embeddings = catalog["item_embeddings"]

    def one_query() -> Query:
        query = queries[int(rng.integers(len(queries)))]
        roll = rng.random()
        if roll < 0.1:
            return Query(user_id=None, text=query.text, context=query.context)  # anonymous
        if roll < 0.2:
            return Query(user_id=query.user_id, history=query.history, context=query.context)  # browsing, no text
        return query

    def filters() -> dict[str, Any] | None:
        roll = rng.random()
        if roll < 0.7:
            return None
        if roll < 0.8:
            return {"category_l1": str(rng.choice(categories))}
        if roll < 0.9:
            return {"brand": [str(b) for b in rng.choice(brands, size=3)]}
        low = float(prices[int(rng.integers(0, 2))])
        return {"price": (low, float(prices[int(rng.integers(2, 5))]))}

    while True:
        roll = rng.random()
        k = int(rng.choice([10, 10, 50, 100]))
        kwargs: dict[str, Any] = {}
        chosen = filters()
        if chosen is not None:
            kwargs["filters"] = chosen
        if roll < 0.85:
            payload: Any = one_query() if roll < 0.75 else [one_query() for _ in range(int(rng.integers(2, 9)))]
            kwargs["num_candidates"] = max(k, int(rng.choice([100, 200, 200, 400])))
            kwargs["rerank"] = bool(rng.random() < 0.8)
            first = payload if isinstance(payload, Query) else payload[0]
            if rng.random() < 0.3 and len(first.history):
                kwargs["exclude"] = list(first.history)
            yield "search", payload, k, kwargs
        else:
            rows = rng.integers(len(embeddings), size=int(rng.integers(1, 4)))
            vectors = embeddings[rows] + rng.normal(0, 0.1, size=(len(rows), dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            if rng.random() < 0.3:
                kwargs["exclude"] = catalog["item_id"][rows].tolist()
            yield "search_embeddings", vectors.astype(np.float32), k, kwargs


class _NumpyExact:
    """The baseline: exact top-``k`` by ``X @ q`` + argpartition, ignoring filters and exclusions; a `Query` is
    stood in for by a perturbed item embedding (no query tower: nothing of `index` is loaded)."""

    def __init__(self, item_embeddings: np.ndarray, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.items = item_embeddings
        pool = item_embeddings[rng.integers(len(item_embeddings), size=1000)]
        pool = pool + rng.normal(0, 0.1, size=pool.shape).astype(np.float32)
        self.queries = pool / np.linalg.norm(pool, axis=1, keepdims=True)
        self.next = 0

    def _top_k(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = vectors @ self.items.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        return np.take_along_axis(scores, top, axis=1), top

    def search(self, queries: Query | list[Query], k: int, **_: Any) -> tuple[np.ndarray, np.ndarray]:
        count = 1 if isinstance(queries, Query) else len(queries)
        rows = (self.next + np.arange(count)) % len(self.queries)
        self.next += count
        return self._top_k(self.queries[rows], k)

    def search_embeddings(self, vectors: np.ndarray, k: int, **_: Any) -> tuple[np.ndarray, np.ndarray]:
        return self._top_k(vectors, k)


# -- one measured process ------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    """This process's resident set size now (VmRSS in ``/proc/self/status``)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmRSS line: this benchmark reads RSS the Linux way")


def measure_child(run: str, bundle: str, queries: list[Query], config: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh spawned process: loads ``run``'s searcher, streams the requests, returns the samples."""
    import faiss

    from index import Searcher

    faiss.omp_set_num_threads(config["threads"])
    items = pq.read_table(Path(bundle) / "items.parquet", columns=["item_id", "category_l1", "brand", "price"])
    catalog = {name: items.column(name).to_numpy() for name in items.column_names}
    catalog["price"] = catalog["price"].astype(np.float64)
    catalog["item_embeddings"] = np.load(Path(bundle) / "item_embeddings.npy", allow_pickle=False)
    dim = catalog["item_embeddings"].shape[1]
    del items
    started = time.perf_counter()
    if run == "baseline":
        target: Any = _NumpyExact(catalog["item_embeddings"], config["seed"])
    else:
        target = Searcher.load(bundle, threads=config["threads"])
    load_s = time.perf_counter() - started
    stream = mixed_requests(config["seed"], queries, catalog, dim)
    rss_loaded = rss_bytes()
    samples = []
    rows = 0
    tracemalloc.start()
    started = time.perf_counter()
    for call in range(1, config["queries"] + 1):
        method, payload, k, kwargs = next(stream)
        getattr(target, method)(payload, k, **kwargs)
        rows += 1 if isinstance(payload, Query) else len(payload)
        del payload, kwargs
        if call % config["sample_every"] == 0:
            gc.collect()
            heap, heap_peak = tracemalloc.get_traced_memory()
            samples.append(
                {
                    "calls": call,
                    "query_rows": rows,
                    "seconds": time.perf_counter() - started,
                    "rss_bytes": rss_bytes(),
                    "heap_bytes": heap,
                    "heap_peak_bytes": heap_peak,
                    "tracemalloc_overhead_bytes": tracemalloc.get_tracemalloc_memory(),
                    "allocated_blocks": sys.getallocatedblocks(),
                    "filter_cache_entries": len(getattr(target, "_filters", {})),
                }
            )
    tracemalloc.stop()
    return {
        "load_s": load_s,
        "rss_after_load_bytes": rss_loaded,
        "samples": samples,
        "tensorflow_imported": "tensorflow" in sys.modules,
        "tf_keras_imported": "tf_keras" in sys.modules,
        "faiss_threads": config["threads"],
    }


def run_child(run: str, bundle: Path, queries: list[Query], config: dict[str, Any]) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(measure_child, run, str(bundle), queries, config).result()


def growth(samples: list[dict[str, Any]], key: str, warmup: int) -> dict[str, float]:
    """Bytes per call of ``key`` after ``warmup`` calls: end minus first sample at/after warm-up, and the slope."""
    after = [s for s in samples if s["calls"] >= warmup]
    calls = np.array([s["calls"] for s in after], dtype=np.float64)
    values = np.array([s[key] for s in after], dtype=np.float64)
    if len(after) < 2:
        return {"start": float(values[0]) if len(values) else float("nan"), "end": float("nan"), "per_call": 0.0}
    return {
        "start": float(values[0]),
        "end": float(values[-1]),
        "per_call": float((values[-1] - values[0]) / (calls[-1] - calls[0])),
        "slope_per_call": float(np.polyfit(calls, values, 1)[0]),
        "max_after_warmup": float(values.max()),
    }


def summarize(result: dict[str, Any], warmup: int) -> dict[str, Any]:
    samples = result["samples"]
    last = samples[-1]
    return {
        "calls": last["calls"],
        "query_rows": last["query_rows"],
        "seconds": last["seconds"],
        "calls_per_s": last["calls"] / last["seconds"],
        "rss_after_load_bytes": result["rss_after_load_bytes"],
        "rss": growth(samples, "rss_bytes", warmup),
        "heap": growth(samples, "heap_bytes", warmup),
        "filter_cache_entries_max": max(s["filter_cache_entries"] for s in samples),
    }


def print_report(summaries: dict[str, dict[str, Any]], warmup: int) -> None:
    mib = 1 << 20
    print()
    print(
        f"{'run':>9} | {'calls':>7} {'calls/s':>7} | {'RSS load':>8} {f'RSS@{warmup / 1000:g}k':>8} {'RSS end':>8} "
        f"{'B/call':>7} {'slope':>7} | {f'heap@{warmup / 1000:g}k':>9} {'heap end':>9} {'B/call':>7} {'slope':>7}"
    )
    print("-" * 112)
    for run, s in summaries.items():
        rss, heap = s["rss"], s["heap"]
        print(
            f"{run:>9} | {s['calls']:>7,} {s['calls_per_s']:>7,.0f} | {s['rss_after_load_bytes'] / mib:>7.1f}M "
            f"{rss['start'] / mib:>7.1f}M {rss['end'] / mib:>7.1f}M {rss['per_call']:>7.2f} "
            f"{rss['slope_per_call']:>7.2f} | {heap['start'] / 1024:>8.1f}K {heap['end'] / 1024:>8.1f}K "
            f"{heap['per_call']:>7.3f} {heap['slope_per_call']:>7.3f}"
        )
    print("(RSS in MiB; heap: the traced Python heap in KiB; B/call and slope: bytes per call after warm-up)")


# -- main ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=100_000, help="calls per run (single queries or batches)")
    parser.add_argument("--sample-every", type=int, default=5_000)
    parser.add_argument("--warmup", type=int, default=10_000, help="calls before growth is counted")
    parser.add_argument("--items", type=int, default=20_000, help="catalog size")
    parser.add_argument("--index", choices=bench_search.INDEX_KINDS, default="ivf", help="bench_search's config")
    parser.add_argument("--held-out", type=int, default=2_000, help="held-out requests the stream draws from")
    parser.add_argument("--train-items", type=int, default=5_000)
    parser.add_argument("--train-users", type=int, default=2_000)
    parser.add_argument("--train-interactions", type=int, default=40_000)
    parser.add_argument("--train-epochs", type=int, default=1, help="two-tower epochs")
    parser.add_argument("--brands", type=int, default=200, help="brands of both the training shop and the catalog")
    parser.add_argument("--model", type=Path, default=None, help="reuse a models folder written with these --train-*")
    parser.add_argument("--work-dir", type=Path, default=None, help="models, catalog, bundle (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="FAISS threads for batches")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.queries - args.warmup < args.sample_every:
        parser.error("--queries should exceed --warmup by at least --sample-every (two samples after warm-up)")

    run_started = time.perf_counter()
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_memory_"))
    work_dir.mkdir(parents=True, exist_ok=True)
    setup: dict[str, float] = {}
    try:
        started = time.perf_counter()
        shop = generate_shop(bench_search.shop_config(args))
        split = temporal_leave_last_out(shop.dataset)
        queries = queries_from_batch(bench_search.held_out_queries(shop, split, args.held_out))
        setup["training_shop_s"] = time.perf_counter() - started
        print(f"training shop: {args.train_items:,} items, {len(queries)} held-out queries")

        started = time.perf_counter()
        model_dir = args.model
        if model_dir is None:
            model_dir = work_dir / "models"
            if model_dir.exists():
                shutil.rmtree(model_dir)
            bench_search.train_models(args, shop, split, model_dir)
        setup["models_s"] = time.perf_counter() - started
        print(f"models: {model_dir} ({setup['models_s']:.1f} s)")

        started = time.perf_counter()
        catalog = bench_search.make_catalog(args, shop.dataset.items)
        catalog_path, users_path = work_dir / "catalog.parquet", work_dir / "users.parquet"
        catalog.to_parquet(catalog_path, index=False)
        shop.dataset.users.to_parquet(users_path, index=False)
        config = bench_search.index_configs(len(catalog), 64)[args.index]
        bundle = work_dir / f"bundle_{args.index}"
        if bundle.exists():
            shutil.rmtree(bundle)
        build = bench_search.build_bundle(model_dir, catalog_path, users_path, bundle, config, args.threads)
        setup["build_s"] = time.perf_counter() - started
        print(f"bundle: {build['factory']} over {len(catalog):,} items ({setup['build_s']:.1f} s)")
        del catalog, shop, split

        child_config = {
            "queries": args.queries,
            "sample_every": args.sample_every,
            "seed": args.seed,
            "threads": args.threads,
        }
        results, summaries = {}, {}
        for run in RUNS:
            started = time.perf_counter()
            results[run] = run_child(run, bundle, queries, child_config)
            summaries[run] = summarize(results[run], args.warmup)
            print(f"{run}: {args.queries:,} calls ({time.perf_counter() - started:.1f} s)")
            if results[run]["tensorflow_imported"] or results[run]["tf_keras_imported"]:
                print(f"WARNING: the {run} query process imported TensorFlow")
        print_report(summaries, args.warmup)
        total = time.perf_counter() - run_started
        print(f"\ntotal run time {total:.0f} s")

        document = {
            "command": shlex.join(["python", *sys.argv] if argv is None else ["bench_memory.main", *argv]),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "machine": platform.machine()},
            "index": {"factory": build["factory"], "nprobe": build["nprobe"], "ef_search": build["ef_search"]},
            "setup_s": setup,
            "query_process": {
                run: {
                    "tensorflow_imported": results[run]["tensorflow_imported"],
                    "tf_keras_imported": results[run]["tf_keras_imported"],
                    # No TensorFlow in the process means no tf.function on the query path to retrace.
                    "tf_function_traces": 0 if not results[run]["tensorflow_imported"] else None,
                    "searcher_load_s": results[run]["load_s"],
                }
                for run in RUNS
            },
            "summary": summaries,
            "samples": {run: results[run]["samples"] for run in RUNS},
            "total_run_s": total,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"results written to {args.out}")
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
