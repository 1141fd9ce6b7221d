"""Times the `Searcher` (query tower -> FAISS top-200 -> student re-rank -> top-10) against exact baselines.

Usage:
    python bench/bench_search.py --items 1000000
    python bench/bench_search.py --items 50000 --work-dir /root/scratch/bench_search   # a quick run

Set-up (timed and printed, not a result):

1. Trains a small cascade on a synthetic shop of ``--train-items`` items (towers of the reference width 64, the
   default `StudentConfig`, the ``"distilled"`` mode only) and saves it with `save_cascade`, or reuses
   ``--model DIR`` (a ``models`` folder this script wrote with the same ``--train-*`` options: the held-out
   queries are regenerated from them).
2. Generates a catalog of ``--items`` items with the same seed and brand count, so attribute vocabularies overlap.
   Its first ``--train-items`` rows are replaced by the training shop's items: the generator draws other items
   under the same ids when the catalog is larger, and an item must not carry a trained id embedding with another
   item's attributes. The other items are unseen in training, hence cold, embedded from their attributes.
3. Takes ``--queries`` held-out requests of the training shop (one query per request) as a `QueryBatch`; single
   queries are ``batch.take(np.array([i]))``.

Results:

- Per index type (Flat, HNSW32 with efSearch 128 / efConstruction 40, and the default IVF from
  `default_factory`, e.g. ``IVF4032,Flat`` at 1M items; below its Flat threshold, ``IVF{default_nlist},Flat``):
  `build_index` in a spawned child process (wall time, the FAISS part, the child's peak RSS,
  the bundle's and index.faiss's size on disk); then, with ``k=10`` and ``num_candidates=200``, single-query
  latency of the whole ``searcher.search`` call (p50 / p99), its breakdown (encode, query tower, first stage,
  re-rank, top-k: the calls `Searcher.search` makes, timed one by one), batched throughput, and ANN recall@100
  of ``search(batch, k=100, num_candidates=100, rerank=False)`` against the exact top-100 of the same query
  embeddings.
- Baselines over the same item and query embeddings: numpy ``X @ q`` + argpartition (top-100), FAISS
  ``IndexFlatIP``, TFRS ``BruteForce`` in a `tf.function`; single queries and batches.
- The three model paths of one query (query tower; student re-rank of 200 candidates): eager Keras, a
  `tf.function` with a fixed input signature, and numpy (`NumpyTower`, `NumpyStudent.query_state` + ``score``),
  with the largest absolute difference between their outputs (asserted <= 1e-5).

Threads: single queries run FAISS on one OpenMP thread (the Searcher does this itself), batches on
``--threads`` (default: every core); numpy's BLAS and TensorFlow keep their defaults. The Searcher runs as it
ships, at FAISS's default ``distance_compute_blas_threshold``; the exact baselines' batches and the ground truth
set it to 0 (BLAS for every batch, see PERF-NOTES). The machine may be shared,
so every timing loop runs ``--rounds`` times, the methods taking turns, and the median of the rounds is reported.

Prints a table and the targets (single p50 <= 1 ms, p99 <= 2 ms, >= 3,000 q/s batched, recall@100 >= 0.95, build
<= 60 s) with PASS / MISS, and writes every number to ``--out`` (``bench/results/search.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads (here and in the build children)

import numpy as np
import pandas as pd

import features  # first: selects Keras 2
from features import REQUEST_ID, SyntheticConfig, build_queries, generate_shop, temporal_leave_last_out
from index import queries_from_batch

K = 10
NUM_CANDIDATES = 200
RECALL_K = 100
MODE = "distilled"
TOLERANCE = 1e-5
TARGETS = {"single_p50_ms": 1.0, "single_p99_ms": 2.0, "batched_qps": 3000.0, "recall_at_100": 0.95, "build_s": 60.0}
STRETCH_QPS = 5000.0
INDEX_KINDS = ("flat", "hnsw", "ivf")


# -- set-up --------------------------------------------------------------------------------------------------------


def shop_config(args: argparse.Namespace) -> SyntheticConfig:
    return SyntheticConfig(
        num_users=args.train_users,
        num_items=args.train_items,
        num_interactions=args.train_interactions,
        num_brands=args.brands,
        seed=args.seed,
    )


def cascade_config(args: argparse.Namespace) -> Any:
    """`tests/index/conftest.py`'s TINY with realistic widths: default towers (output 64) and student."""
    from distill.mining import MiningConfig
    from distill.trainer import CascadeConfig, StudentStage, TeacherStage, TwoTowerStage
    from ranking import StudentConfig, TeacherConfig
    from retrieval import TowerConfig

    return CascadeConfig(
        teacher=TeacherStage(
            epochs=1,
            batch_size=32,
            negatives_per_query=4,
            retrieved_negatives=4,
            retrieval_depth=20,
            model=TeacherConfig(embedding_dim=8, deep_layers=(64, 32)),
        ),
        two_tower=TwoTowerStage(
            epochs=args.train_epochs,
            batch_size=256,
            tower=TowerConfig(output_dim=64),
            mining=MiningConfig(top_k=30, window_start=3, window_end=30, num_hard=4, num_easy=2, num_student_top=1),
        ),
        student=StudentStage(epochs=1, batch_size=64, num_retrieved=4, retrieval_depth=20, model=StudentConfig()),
        modes=(MODE,),
        seed=args.seed,
    )


@dataclass
class KerasModels:
    """The Keras query tower and ranking student of the served mode (for the model-path comparison)."""

    query_tower: Any
    student: Any


def train_models(
    args: argparse.Namespace, shop: features.SyntheticShop, split: features.Split, out: Path
) -> KerasModels:
    from distill.trainer import save_cascade, train_cascade

    trained = train_cascade(shop.dataset, split, config=cascade_config(args), show_progress=False)
    save_cascade(trained, out)
    return KerasModels(query_tower=trained.two_towers[MODE].query_tower, student=trained.students[MODE])


def restore_models(model_dir: Path, items: pd.DataFrame) -> KerasModels:
    """Rebuilds the Keras query tower and student from a saved cascade, as `index.build.load_serving_models` does."""
    import tensorflow as tf

    from distill.trainer import CascadeConfig
    from features import FeatureEncoders
    from ranking import StudentRanker
    from retrieval import QueryTower

    config = CascadeConfig.from_dict(json.loads((model_dir / "config.json").read_text(encoding="utf-8")))
    encoders = FeatureEncoders.load(model_dir / "encoders")
    catalog = encoders.encode_items(items.iloc[:4096])
    student = StudentRanker(encoders, catalog, config.student.model)
    prefix = model_dir / f"student_{MODE}" / "variables" / "variables"
    tf.train.Checkpoint(model=student).read(str(prefix)).assert_existing_objects_matched()
    tower = QueryTower.from_encoders(encoders, config.two_tower.tower)
    lengths = {"query_tokens": encoders.config.max_query_tokens, "history": encoders.config.max_history}
    spec = tower.layout.tensor_spec(sequence_lengths=lengths)
    tower({k: tf.zeros([1, *s.shape[1:]], s.dtype) for k, s in spec.items()}, training=False)
    prefix = model_dir / f"two_tower_{MODE}" / "query_tower" / "variables" / "variables"
    tf.train.Checkpoint(tower_variables=list(tower.variables)).read(str(prefix)).assert_existing_objects_matched()
    return KerasModels(query_tower=tower, student=student)


def make_catalog(args: argparse.Namespace, train_items: pd.DataFrame) -> pd.DataFrame:
    """``--items`` generated items whose first rows are the training shop's items (see the module docstring)."""
    config = SyntheticConfig(
        num_users=200, num_items=args.items, num_interactions=2_000, num_brands=args.brands, seed=args.seed
    )
    items = generate_shop(config).dataset.items
    if len(items) <= len(train_items):
        return train_items.iloc[: len(items)].reset_index(drop=True)
    tail = items.iloc[len(train_items) :]
    if tail["item_id"].isin(train_items["item_id"]).any():
        raise ValueError("the generated catalog reuses training item ids past the training rows")
    return pd.concat([train_items[list(items.columns)], tail], ignore_index=True)


def held_out_queries(shop: features.SyntheticShop, split: features.Split, count: int) -> features.QueryBatch:
    """The first ``count`` held-out requests (one query each; a request's rows share one query)."""
    events = split.test.drop_duplicates(REQUEST_ID) if REQUEST_ID in split.test.columns else split.test
    batch = build_queries(events, shop.dataset)
    if len(batch) < count:
        print(f"note: only {len(batch)} held-out requests (asked for {count}); raise --train-users")
    return batch.take(np.arange(min(count, len(batch))))


# -- index builds (each in a spawned child, for its peak memory) ---------------------------------------------------


def index_configs(num_items: int, dim: int) -> dict[str, Any]:
    """Flat, HNSW32 and the default IVF (`default_factory`; below its Flat threshold, IVF with `default_nlist` lists,
    so that quick runs on small catalogs measure an IVF index too)."""
    from index import IndexConfig, default_factory
    from index.ann import default_nlist

    default = ivf = default_factory(num_items, dim)
    if not ivf.startswith("IVF"):
        ivf = f"IVF{default_nlist(num_items)},Flat"
        print(f"note: default_factory({num_items}, {dim}) is {default!r}; the IVF row uses {ivf!r}")
    return {
        "flat": IndexConfig(factory="Flat"),
        "hnsw": IndexConfig(factory="HNSW32", ef_search=128, ef_construction=40),
        "ivf": IndexConfig(factory=ivf),
    }


def _build_child(model_dir: str, items: str, users: str, out_dir: str, index: dict[str, Any], threads: int) -> dict:
    """Runs in a fresh process: `build_index`, then this process's own peak RSS."""
    import resource

    import faiss

    from index import BuildConfig, IndexConfig, build_index

    faiss.omp_set_num_threads(threads)
    started = time.perf_counter()
    manifest = build_index(
        model_dir, items, out_dir, BuildConfig(mode=MODE, index=IndexConfig.from_dict(index)), users=users
    )
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "timings": dict(manifest.config["timings_seconds"]),
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "index": dict(manifest.index),
    }


def build_bundle(model_dir: Path, items: Path, users: Path, out_dir: Path, config: Any, threads: int) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        child = pool.submit(
            _build_child, str(model_dir), str(items), str(users), str(out_dir), config.to_dict(), threads
        ).result()
    files = [p for p in out_dir.rglob("*") if p.is_file()]
    timings = child["timings"]
    return {
        "factory": child["index"]["factory"],
        "nprobe": child["index"].get("nprobe"),
        "ef_search": child["index"].get("ef_search"),
        "build_s": child["seconds"],
        "build_faiss_s": timings["index"],
        "build_phases_s": timings,
        "build_peak_rss_mib": child["peak_rss_kib"] / 1024,
        "bundle_bytes": sum(p.stat().st_size for p in files),
        "index_bytes": (out_dir / "index.faiss").stat().st_size,
    }


# -- timing helpers ------------------------------------------------------------------------------------------------


def time_calls(fn: Callable[[int], Any], indices: Sequence[int]) -> np.ndarray:
    """Seconds of ``fn(i)`` for each ``i``, one call at a time."""
    out = np.empty(len(indices))
    for j, i in enumerate(indices):
        started = time.perf_counter()
        fn(i)
        out[j] = time.perf_counter() - started
    return out


def take_turns(
    methods: dict[str, Callable[[int], Any]], calls: int, num_queries: int, rounds: int, warmup: int
) -> dict[str, np.ndarray]:
    """Per method, the seconds of ``calls`` single calls (queries ``0, 1, ...`` cycled), after ``warmup`` calls.

    The calls are split into ``rounds`` blocks and the methods take turns block by block, so that load from other
    processes on a shared machine hits them alike.
    """
    for fn in methods.values():
        for i in range(warmup):
            fn(i % num_queries)
    per_round = -(-calls // rounds)
    out: dict[str, list[np.ndarray]] = {name: [] for name in methods}
    for r in range(rounds):
        indices = [(r * per_round + j) % num_queries for j in range(per_round)]
        for name, fn in methods.items():
            out[name].append(time_calls(fn, indices))
    return {name: np.concatenate(parts) for name, parts in out.items()}


def latency_ms(seconds: np.ndarray, rounds: int) -> dict[str, Any]:
    """p50 / p99 / mean in ms over every call, and the p50 of each round (to show the spread between rounds)."""
    return {
        "p50": float(np.percentile(seconds, 50)) * 1e3,
        "p99": float(np.percentile(seconds, 99)) * 1e3,
        "mean": float(seconds.mean()) * 1e3,
        "round_p50s": [float(np.percentile(part, 50)) * 1e3 for part in np.array_split(seconds, rounds)],
        "calls": len(seconds),
    }


def throughput(fn: Callable[[], Any], num_queries: int, runs: int) -> dict[str, float]:
    """Queries/s of ``fn()`` (one warm-up call first): best and median of ``runs``."""
    fn()
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return {"best": num_queries / min(seconds), "median": num_queries / statistics.median(seconds), "runs": runs}


# -- Searcher measurements -----------------------------------------------------------------------------------------

STEPS = ("encode", "query_tower", "first_stage", "query_state", "score", "top_k")
"""The steps of `Searcher.search` without filters or exclusions, in order (the re-rank is query_state + score)."""


def searcher_pieces(searcher: Any, batch: features.QueryBatch, threads: int) -> dict[str, float]:
    """Seconds of each of `STEPS`, made with the calls `Searcher.search` makes; ``ann_search`` (not a step: part of
    ``first_stage``) is the bare `AnnIndex.search` of the same query embeddings, timed after the steps."""
    from index.searcher import _omp_threads

    ticks = [time.perf_counter()]
    encoded = searcher._encode(batch)
    ticks.append(time.perf_counter())
    query_embeddings = searcher.query_tower(encoded)
    ticks.append(time.perf_counter())
    faiss_threads = 1 if len(batch) == 1 else threads
    with _omp_threads(faiss_threads):
        scores, slots = searcher._first_stage(query_embeddings, NUM_CANDIDATES, searcher._eligible(None), None)
    ticks.append(time.perf_counter())
    student = searcher.student
    state = student.query_state(encoded, query_embeddings if student.uses_tower_embeddings else None)
    ticks.append(time.perf_counter())
    scores = student.score(state, searcher._student_items, slots)
    scores = np.where(slots >= 0, scores, -np.inf).astype(np.float32)
    ticks.append(time.perf_counter())
    searcher._top_k(scores, slots, K)
    ticks.append(time.perf_counter())
    times = dict(zip(STEPS, np.diff(ticks), strict=True))
    with _omp_threads(faiss_threads):
        started = time.perf_counter()
        searcher.ann.search(query_embeddings, NUM_CANDIDATES)
        times["ann_search"] = time.perf_counter() - started
    return times


TIE_TOLERANCE = 1e-5
ITEM_EMBEDDINGS = np.zeros((0, 0), dtype=np.float32)  # set in main(): the catalog's embeddings
EXACT_SCORES = np.zeros((0, 0), dtype=np.float32)  # set in main(): exact top-100 scores per query


def tie_tolerant_recall(slots: np.ndarray, query_embeddings: np.ndarray) -> np.ndarray:
    """Per-query share of the k returned slots whose exact score reaches the exact k-th best score (minus 1e-5).

    Cold catalog items embedded from the same attributes tie exactly; an ANN result that returns another item of the
    same score is as good as the one exact search happened to list (faiss contrib's tie-tolerant comparison).
    """
    valid = slots >= 0
    vectors = ITEM_EMBEDDINGS[np.where(valid, slots, 0)]
    scores = np.einsum("qkd,qd->qk", vectors, query_embeddings)
    kth = EXACT_SCORES[:, slots.shape[1] - 1]
    return ((scores >= kth[:, None] - TIE_TOLERANCE) & valid).sum(axis=1) / slots.shape[1]


def ann_sweep(searcher: Any, query_embeddings: np.ndarray, exact_slots: np.ndarray, calls: int) -> list[dict]:
    """Recall@100 and single-query `AnnIndex.search` latency (k=200, one thread) at a few search settings."""
    import faiss

    from index.ann import recall_at_k

    ann = searcher.ann
    if ann.nprobe is not None:
        settings = [{"nprobe": n} for n in sorted({ann.nprobe, 2 * ann.nprobe, 4 * ann.nprobe})]
    elif ann.ef_search is not None:
        settings = [{"ef_search": e} for e in (ann.ef_search, 2 * ann.ef_search, 4 * ann.ef_search, 8 * ann.ef_search)]
    else:
        return []
    out = []
    for setting in settings:
        faiss.omp_set_num_threads(1)
        seconds = time_calls(
            lambda i, s=setting: ann.search(query_embeddings[i : i + 1], NUM_CANDIDATES, **s),
            [i % len(query_embeddings) for i in range(calls)],
        )
        faiss.omp_set_num_threads(searcher.threads)
        slots = ann.search(query_embeddings, RECALL_K, **setting)[1]
        out.append(
            {
                **setting,
                "recall_at_100": float(np.nanmean(tie_tolerant_recall(slots, query_embeddings))),
                "recall_at_100_strict": float(np.nanmean(recall_at_k(slots, exact_slots))),
                "single_ann_search_k200_ms": latency_ms(seconds, 1),
            }
        )
    return out


def measure_searchers(
    searchers: dict[str, Any],
    singles: list[features.QueryBatch],
    batch: features.QueryBatch,
    query_embeddings: np.ndarray,
    exact_slots: np.ndarray,
    args: argparse.Namespace,
) -> dict[str, dict[str, Any]]:
    import faiss

    from index.ann import recall_at_k

    num_queries = len(singles)
    results: dict[str, dict[str, Any]] = {kind: {} for kind in searchers}

    def full(s: Any) -> Callable[[int], Any]:
        return lambda i: s.search(singles[i], K, num_candidates=NUM_CANDIDATES)

    def first_stage_only(s: Any) -> Callable[[int], Any]:
        return lambda i: s.search(singles[i], K, num_candidates=NUM_CANDIDATES, rerank=False)

    methods = {kind: full(s) for kind, s in searchers.items()}
    for kind, seconds in take_turns(methods, args.single_calls, num_queries, args.rounds, args.warmup).items():
        results[kind]["single_ms"] = latency_ms(seconds, args.rounds)
    methods = {kind: first_stage_only(s) for kind, s in searchers.items()}
    for kind, seconds in take_turns(methods, args.breakdown_calls, num_queries, args.rounds, 5).items():
        results[kind]["single_no_rerank_ms"] = latency_ms(seconds, args.rounds)

    # The steps one by one, alternating with whole calls in the same loop (the same machine conditions).
    for kind, searcher in searchers.items():
        pieces: dict[str, list[float]] = {}
        whole = []
        for i in range(args.breakdown_calls):
            single = singles[i % num_queries]
            for step, seconds in searcher_pieces(searcher, single, args.threads).items():
                pieces.setdefault(step, []).append(seconds)
            started = time.perf_counter()
            searcher.search(single, K, num_candidates=NUM_CANDIDATES)
            whole.append(time.perf_counter() - started)
        results[kind]["single_breakdown_us"] = {
            **{step: float(np.median(v)) * 1e6 for step, v in pieces.items()},
            "sum_of_steps": float(np.median(np.sum([pieces[s] for s in STEPS], axis=0))) * 1e6,
            "whole_call": float(np.median(whole)) * 1e6,
        }
        results[kind]["single_breakdown_p99_us"] = {
            step: float(np.percentile(v, 99)) * 1e6 for step, v in pieces.items()
        }

    faiss.omp_set_num_threads(args.threads)
    for kind, searcher in searchers.items():
        results[kind]["batched_qps"] = throughput(
            lambda s=searcher: s.search(batch, K, num_candidates=NUM_CANDIDATES), len(batch), args.batch_runs
        )
        results[kind]["batched_no_rerank_qps"] = throughput(
            lambda s=searcher: s.search(batch, K, num_candidates=NUM_CANDIDATES, rerank=False),
            len(batch),
            args.batch_runs,
        )
        runs = [searcher_pieces(searcher, batch, args.threads) for _ in range(args.batch_runs)]
        results[kind]["batched_breakdown_ms"] = {
            step: float(np.median([r[step] for r in runs])) * 1e3 for step in runs[0]
        }
        approx = searcher.search(batch, RECALL_K, num_candidates=RECALL_K, rerank=False).slots
        recall = tie_tolerant_recall(approx, query_embeddings)
        results[kind]["recall_at_100_strict"] = float(np.nanmean(recall_at_k(approx, exact_slots)))
        results[kind]["recall_at_100"] = float(np.nanmean(recall))
        results[kind]["recall_at_100_min"] = float(np.nanmin(recall))
        results[kind]["recall_queries_without_truth"] = int(np.isnan(recall).sum())
        results[kind]["ann_sweep"] = ann_sweep(searcher, query_embeddings, exact_slots, args.breakdown_calls)
    faiss.omp_set_num_threads(args.threads)
    return results


# -- baselines -----------------------------------------------------------------------------------------------------


def numpy_top_k(item_embeddings: np.ndarray, query_embeddings: np.ndarray, k: int, chunk: int) -> np.ndarray:
    """Exact top-``k`` rows by inner product, best first: ``X @ q`` + argpartition, ``chunk`` queries at a time."""
    out = np.empty((len(query_embeddings), k), dtype=np.int64)
    for start in range(0, len(query_embeddings), chunk):
        scores = query_embeddings[start : start + chunk] @ item_embeddings.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[start : start + chunk] = np.take_along_axis(top, order, axis=1)
    return out


def measure_baselines(
    item_embeddings: np.ndarray, query_embeddings: np.ndarray, exact_slots: np.ndarray, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    import faiss
    import tensorflow as tf
    import tensorflow_recommenders as tfrs

    dim = item_embeddings.shape[1]
    flat = faiss.IndexFlatIP(dim)
    flat.add(item_embeddings)
    brute_force = tfrs.layers.factorized_top_k.BruteForce(k=RECALL_K)
    brute_force.index(tf.constant(item_embeddings))
    top_k = tf.function(lambda q: brute_force(q, k=RECALL_K), input_signature=[tf.TensorSpec([None, dim], tf.float32)])
    queries = [query_embeddings[i : i + 1] for i in range(len(query_embeddings))]
    num_queries = len(queries)

    faiss.omp_set_num_threads(1)
    methods = {
        "numpy_exact": lambda i: numpy_top_k(item_embeddings, queries[i], RECALL_K, 1),
        "faiss_flat_ip": lambda i: flat.search(queries[i], RECALL_K),
        "tfrs_brute_force": lambda i: top_k(queries[i]),
    }
    timed = take_turns(methods, args.exact_single_calls, num_queries, args.rounds, warmup=3)
    results = {name: {"single_ms": latency_ms(seconds, args.rounds)} for name, seconds in timed.items()}

    faiss.omp_set_num_threads(args.threads)
    blas_threshold = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 0  # BLAS for every batch (PERF-NOTES)
    try:

        def tfrs_batched() -> np.ndarray:
            return np.concatenate(
                [
                    top_k(query_embeddings[s : s + args.exact_chunk])[1].numpy()
                    for s in range(0, num_queries, args.exact_chunk)
                ]
            )

        batched = {
            "numpy_exact": lambda: numpy_top_k(item_embeddings, query_embeddings, RECALL_K, args.exact_chunk),
            "faiss_flat_ip": lambda: flat.search(query_embeddings, RECALL_K)[1],
            "tfrs_brute_force": tfrs_batched,
        }
        for name, fn in batched.items():
            results[name]["batched_qps"] = throughput(fn, num_queries, args.exact_batch_runs)
            found = np.asarray(fn())
            results[name]["top_100_agreement"] = float(
                np.mean([len(np.intersect1d(a, b)) / RECALL_K for a, b in zip(found, exact_slots, strict=True)])
            )
    finally:
        faiss.cvar.distance_compute_blas_threshold = blas_threshold
    results["numpy_exact"]["batch_chunk"] = args.exact_chunk
    results["tfrs_brute_force"]["batch_chunk"] = args.exact_chunk
    return results


# -- model paths ---------------------------------------------------------------------------------------------------


def measure_model_paths(
    keras_models: KerasModels,
    searcher: Any,
    encoded: dict[str, np.ndarray],
    query_embeddings: np.ndarray,
    candidates: np.ndarray,
    args: argparse.Namespace,
) -> dict[str, dict[str, float]]:
    """Eager Keras, `tf.function` and numpy for one query: the query tower, and the student on 200 candidates."""
    import tensorflow as tf

    count = min(args.model_calls, len(candidates))
    tower, student = keras_models.query_tower, keras_models.student
    numpy_tower, numpy_student = searcher.query_tower, searcher.student

    # Query tower: one encoded query, the keys the tower reads.
    keys = list(tower.layout.names())
    lengths = {k: encoded[k].shape[1] for k in keys if encoded[k].ndim == 2}
    tower_inputs = [{k: encoded[k][i : i + 1] for k in keys} for i in range(count)]
    tower_function = tf.function(
        lambda f: tower(f, training=False), input_signature=[tower.layout.tensor_spec(sequence_lengths=lengths)]
    )
    tower_paths = {
        "eager_keras": lambda i: tower(tower_inputs[i], training=False).numpy(),
        "tf_function": lambda i: tower_function(tower_inputs[i]).numpy(),
        "numpy": lambda i: numpy_tower(tower_inputs[i]),
    }

    # Student: the query's features repeated per candidate and the candidates' encoded features, prepared beforehand
    # (what a Keras re-ranker would be handed); the numpy path works as the Searcher does.
    rows = np.unique(candidates[:count])
    item_features = searcher.encoders.encode_items(searcher.items.iloc[rows].reset_index(drop=True))
    specs = student.input_specs()
    student_inputs = []
    for i in range(count):
        positions = np.searchsorted(rows, candidates[i])
        query = {
            k: np.repeat(encoded[k][i : i + 1], candidates.shape[1], axis=0) for k in specs["query"] if k in encoded
        }
        item = {k: item_features[k][positions] for k in specs["item"] if k in item_features}
        if numpy_student.uses_tower_embeddings:
            query["query_embedding"] = np.repeat(query_embeddings[i : i + 1], candidates.shape[1], axis=0)
            item["item_embedding"] = np.asarray(searcher._embeddings[candidates[i]])
        student_inputs.append({"query": query, "item": item})
    student_function = tf.function(lambda x: student(x, training=False), input_signature=[specs])
    student_query = [{k: v[i : i + 1] for k, v in encoded.items()} for i in range(count)]

    def numpy_rerank(i: int) -> np.ndarray:
        embedded = query_embeddings[i : i + 1] if numpy_student.uses_tower_embeddings else None
        state = numpy_student.query_state(student_query[i], embedded)
        return numpy_student.score(state, searcher._student_items, candidates[i : i + 1])[0]

    student_paths = {
        "eager_keras": lambda i: student(student_inputs[i], training=False).numpy(),
        "tf_function": lambda i: student_function(student_inputs[i]).numpy(),
        "numpy": numpy_rerank,
    }

    results = {}
    for name, paths in (("query_tower", tower_paths), (f"student_rerank_{candidates.shape[1]}", student_paths)):
        outputs = {path: [np.asarray(fn(i)).reshape(-1) for i in range(count)] for path, fn in paths.items()}
        difference = max(
            float(np.abs(np.concatenate(outputs[a]) - np.concatenate(outputs[b])).max())
            for a, b in (("eager_keras", "numpy"), ("tf_function", "numpy"), ("eager_keras", "tf_function"))
        )
        if not difference <= TOLERANCE:
            raise AssertionError(f"{name}: the three paths differ by {difference:.2e} (> {TOLERANCE})")
        timed = take_turns(paths, count * args.rounds, count, args.rounds, warmup=5)
        results[name] = {
            **{f"{path}_us": float(np.median(seconds)) * 1e6 for path, seconds in timed.items()},
            **{f"{path}_p99_us": float(np.percentile(seconds, 99)) * 1e6 for path, seconds in timed.items()},
            "max_abs_diff": difference,
            "calls_per_path": count * args.rounds,
        }
    return results


# -- reporting -----------------------------------------------------------------------------------------------------


def check_targets(result: dict[str, Any]) -> dict[str, bool]:
    return {
        "single_p50_ms": result["single_ms"]["p50"] <= TARGETS["single_p50_ms"],
        "single_p99_ms": result["single_ms"]["p99"] <= TARGETS["single_p99_ms"],
        "batched_qps": result["batched_qps"]["median"] >= TARGETS["batched_qps"],
        "batched_qps_stretch": result["batched_qps"]["median"] >= STRETCH_QPS,
        "recall_at_100": result["recall_at_100"] >= TARGETS["recall_at_100"],
        "build_s": result["build_s"] <= TARGETS["build_s"],
    }


def print_report(results: dict[str, Any]) -> None:
    mib = 1 << 20
    print()
    print(
        f"{'method':>18} | {'p50 ms':>7} {'p99 ms':>7} | {'batch q/s':>9} | {'recall@100':>10} | {'build s':>7} "
        f"{'faiss s':>7} | {'peak MiB':>8} {'bundle MiB':>10} {'index MiB':>9}"
    )
    print("-" * 118)
    for kind in INDEX_KINDS:
        r = results[kind]
        label = f"searcher {kind}"
        print(
            f"{label:>18} | {r['single_ms']['p50']:7.3f} {r['single_ms']['p99']:7.3f} | "
            f"{r['batched_qps']['median']:9,.0f} | {r['recall_at_100']:10.4f} | {r['build_s']:7.1f} "
            f"{r['build_faiss_s']:7.1f} | {r['build_peak_rss_mib']:8,.0f} {r['bundle_bytes'] / mib:10,.0f} "
            f"{r['index_bytes'] / mib:9,.0f}"
        )
    for name, r in results["baselines"].items():
        print(
            f"{name:>18} | {r['single_ms']['p50']:7.3f} {r['single_ms']['p99']:7.3f} | "
            f"{r['batched_qps']['median']:9,.0f} | {r['top_100_agreement']:10.4f} | {'-':>7} {'-':>7} | "
            f"{'-':>8} {'-':>10} {'-':>9}"
        )
    print("(searcher rows: the whole search call, k=10 of 200 candidates re-ranked; baselines: exact top-100;")
    print(" recall@100 of the baselines is their agreement with the FAISS ground truth)")

    print()
    print("single-query steps of Searcher.search, median us (p99 us); ann_search is the bare FAISS part of first_stage")
    steps = [*STEPS, "ann_search"]
    print(f"{'':>6} " + " ".join(f"{s:>15}" for s in steps) + f" | {'sum of steps':>12} {'whole call':>10}")
    for kind in INDEX_KINDS:
        single = results[kind]["single_breakdown_us"]
        p99 = results[kind]["single_breakdown_p99_us"]
        print(
            f"{kind:>6} "
            + " ".join(f"{single[s]:6.0f} ({p99[s]:6.0f})" for s in steps)
            + f" | {single['sum_of_steps']:12.0f} {single['whole_call']:10.0f}"
        )
    print("batch of 1000 queries, ms per step (median of runs)")
    print(f"{'':>6} " + " ".join(f"{s:>15}" for s in steps) + f" | {'no re-rank q/s':>14}")
    for kind in INDEX_KINDS:
        batched = results[kind]["batched_breakdown_ms"]
        print(
            f"{kind:>6} "
            + " ".join(f"{batched[s]:15.1f}" for s in steps)
            + f" | {results[kind]['batched_no_rerank_qps']['median']:14,.0f}"
        )
    print("first stage alone at other settings (AnnIndex.search, k=200 single on one thread; recall@100 of k=100)")
    for kind in INDEX_KINDS:
        for row in results[kind]["ann_sweep"]:
            setting = ", ".join(f"{k}={v}" for k, v in row.items() if k in ("nprobe", "ef_search"))
            latency = row["single_ann_search_k200_ms"]
            print(
                f"{kind:>6} {setting:>14}: recall@100 {row['recall_at_100']:.4f}, p50 {latency['p50']:.3f} ms, "
                f"p99 {latency['p99']:.3f} ms"
            )

    print()
    print(f"{'model path, one query':>24} | {'eager Keras us':>14} {'tf.function us':>14} {'numpy us':>9} | max |diff|")
    for name, r in results["model_paths"].items():
        print(
            f"{name:>24} | {r['eager_keras_us']:14.0f} {r['tf_function_us']:14.0f} {r['numpy_us']:9.0f} | "
            f"{r['max_abs_diff']:.2e}"
        )

    print()
    limits = (
        f"p50 <= {TARGETS['single_p50_ms']} ms, p99 <= {TARGETS['single_p99_ms']} ms, "
        f">= {TARGETS['batched_qps']:,.0f} q/s (stretch {STRETCH_QPS:,.0f}), "
        f"recall@100 >= {TARGETS['recall_at_100']}, build <= {TARGETS['build_s']:.0f} s"
    )
    print(f"targets: {limits}")
    print(f"{'index':>10} | {'p50':>5} {'p99':>5} {'q/s':>5} {'q/s 5k':>6} {'recall':>6} {'build':>5}")
    for kind in INDEX_KINDS:
        passed = results[kind]["targets"]
        widths = (5, 5, 5, 6, 6, 5)
        print(
            f"{kind:>10} | "
            + " ".join(f"{'PASS' if passed[t] else 'MISS':>{w}}" for t, w in zip(passed, widths, strict=True))
        )


def library_versions() -> dict[str, str]:
    import faiss
    import tensorflow as tf
    import tensorflow_recommenders as tfrs
    import tf_keras

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "faiss": faiss.__version__,
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
        "tensorflow_recommenders": tfrs.__version__,
    }


# -- main ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000, help="catalog size")
    parser.add_argument("--queries", type=int, default=1_000, help="held-out requests (the batch size)")
    parser.add_argument("--train-items", type=int, default=20_000)
    parser.add_argument("--train-users", type=int, default=5_000)
    parser.add_argument("--train-interactions", type=int, default=150_000)
    parser.add_argument("--train-epochs", type=int, default=2, help="two-tower epochs")
    parser.add_argument("--brands", type=int, default=500, help="brands of both the training shop and the catalog")
    parser.add_argument("--model", type=Path, default=None, help="reuse a models folder written by this script")
    parser.add_argument("--work-dir", type=Path, default=None, help="models, catalog and bundles (default: a temp dir)")
    parser.add_argument("--keep-work-dir", action="store_true", help="keep the work dir (always kept when given)")
    parser.add_argument("--single-calls", type=int, default=1_500, help="single searches per index (p50/p99)")
    parser.add_argument("--breakdown-calls", type=int, default=300, help="single searches timed step by step")
    parser.add_argument("--exact-single-calls", type=int, default=300, help="single queries per exact baseline")
    parser.add_argument(
        "--model-calls", type=int, default=200, help="queries per model path (each called --rounds times)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="blocks the methods of a timing loop take turns in")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--batch-runs", type=int, default=5)
    parser.add_argument("--exact-batch-runs", type=int, default=3)
    parser.add_argument("--exact-chunk", type=int, default=100, help="queries per matrix product, numpy and TFRS")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="FAISS threads for batches")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "search.json")
    args = parser.parse_args(argv)

    import faiss

    from index import Searcher

    run_started = time.perf_counter()
    faiss.omp_set_num_threads(args.threads)
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_search_"))
    work_dir.mkdir(parents=True, exist_ok=True)
    setup: dict[str, float] = {}

    try:
        started = time.perf_counter()
        shop = generate_shop(shop_config(args))
        split = temporal_leave_last_out(shop.dataset)
        batch = held_out_queries(shop, split, args.queries)
        setup["training_shop_s"] = time.perf_counter() - started
        print(
            f"training shop: {args.train_items:,} items, {len(shop.dataset.interactions):,} interactions, "
            f"{len(batch)} held-out queries ({setup['training_shop_s']:.1f} s)"
        )

        started = time.perf_counter()
        if args.model is not None:
            model_dir = args.model
            keras_models = restore_models(model_dir, shop.dataset.items)
            print(f"models: reused {model_dir} ({time.perf_counter() - started:.1f} s)")
        else:
            model_dir = work_dir / "models"
            if model_dir.exists():
                shutil.rmtree(model_dir)
            keras_models = train_models(args, shop, split, model_dir)
            print(f"models: trained and saved to {model_dir} ({time.perf_counter() - started:.1f} s)")
        setup["models_s"] = time.perf_counter() - started

        started = time.perf_counter()
        catalog = make_catalog(args, shop.dataset.items)
        catalog_path, users_path = work_dir / "catalog.parquet", work_dir / "users.parquet"
        catalog.to_parquet(catalog_path, index=False)
        shop.dataset.users.to_parquet(users_path, index=False)
        setup["catalog_s"] = time.perf_counter() - started
        print(f"catalog: {len(catalog):,} items written to {catalog_path} ({setup['catalog_s']:.1f} s)")

        results: dict[str, Any] = {}
        bundles = {}
        for kind, config in index_configs(len(catalog), 64).items():
            bundles[kind] = work_dir / f"bundle_{kind}"
            if bundles[kind].exists():
                shutil.rmtree(bundles[kind])
            results[kind] = build_bundle(model_dir, catalog_path, users_path, bundles[kind], config, args.threads)
            r = results[kind]
            print(
                f"build {kind} ({r['factory']}): {r['build_s']:.1f} s, FAISS {r['build_faiss_s']:.1f} s "
                f"({', '.join(f'{p} {s:.1f}' for p, s in r['build_phases_s'].items())}), peak RSS "
                f"{r['build_peak_rss_mib']:,.0f} MiB, bundle {r['bundle_bytes'] / 2**20:,.0f} MiB"
            )
        del catalog

        started = time.perf_counter()
        searchers = {kind: Searcher.load(path, threads=args.threads) for kind, path in bundles.items()}
        setup["searcher_load_s"] = time.perf_counter() - started
        print(f"searchers loaded ({setup['searcher_load_s']:.1f} s for {len(searchers)})")

        reference = searchers[INDEX_KINDS[-1]]
        # Live queries, as a shop calls the library: `Query` objects (the serving query encoder), one at a time.
        raw_batch = batch
        batch = queries_from_batch(raw_batch)
        singles = [[query] for query in batch]
        query_embeddings = reference.embed_queries(batch)
        item_embeddings = np.ascontiguousarray(np.load(bundles["flat"] / "item_embeddings.npy", allow_pickle=False))
        started = time.perf_counter()
        ground_truth = faiss.IndexFlatIP(item_embeddings.shape[1])
        ground_truth.add(item_embeddings)
        blas_threshold = faiss.cvar.distance_compute_blas_threshold
        faiss.cvar.distance_compute_blas_threshold = 0
        exact_scores, exact_slots = ground_truth.search(query_embeddings, RECALL_K)
        global ITEM_EMBEDDINGS, EXACT_SCORES
        ITEM_EMBEDDINGS, EXACT_SCORES = item_embeddings, exact_scores
        faiss.cvar.distance_compute_blas_threshold = blas_threshold
        del ground_truth
        setup["ground_truth_s"] = time.perf_counter() - started
        print(f"exact top-{RECALL_K} of {len(batch)} queries ({setup['ground_truth_s']:.1f} s)")

        started = time.perf_counter()
        for kind, measured in measure_searchers(searchers, singles, batch, query_embeddings, exact_slots, args).items():
            results[kind].update(measured)
            results[kind]["targets"] = check_targets(results[kind])
        print(f"searchers measured ({time.perf_counter() - started:.1f} s)")

        started = time.perf_counter()
        results["baselines"] = measure_baselines(item_embeddings, query_embeddings, exact_slots, args)
        print(f"baselines measured ({time.perf_counter() - started:.1f} s)")

        started = time.perf_counter()
        encoded = reference.encoders.encode_queries(raw_batch)
        candidates = reference.search(batch, NUM_CANDIDATES, num_candidates=NUM_CANDIDATES, rerank=False).slots
        results["model_paths"] = measure_model_paths(
            keras_models, reference, encoded, query_embeddings, candidates, args
        )
        print(f"model paths measured ({time.perf_counter() - started:.1f} s)")

        total = time.perf_counter() - run_started
        print_report(results)
        print(f"\ntotal run time {total:.0f} s")

        document = {
            "command": shlex.join(["python", *sys.argv] if argv is None else ["bench_search.main", *argv]),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "machine": platform.machine()},
            "versions": library_versions(),
            "settings": {
                "k": K,
                "num_candidates": NUM_CANDIDATES,
                "recall_k": RECALL_K,
                "num_items": int(item_embeddings.shape[0]),
                "embedding_dim": int(item_embeddings.shape[1]),
                "num_queries": len(batch),
                "train_items": args.train_items,
                "single_query_faiss_threads": 1,
                "batch_faiss_threads": args.threads,
            },
            "targets": {**TARGETS, "batched_qps_stretch": STRETCH_QPS},
            "setup_s": setup,
            **{kind: results[kind] for kind in INDEX_KINDS},
            "baselines": results["baselines"],
            "model_paths": results["model_paths"],
            "total_run_s": total,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"results written to {args.out}")
    finally:
        if args.work_dir is None and not args.keep_work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
