"""Offline evaluation of the cascade: against the teacher's full ranking, against held-out truth, stage by stage.

`evaluate` takes an index bundle (the distilled serving models, `index.build_index`) and the data set it was
trained on, and measures, on a seeded sample of held-out requests:

- **Against held-out interactions** (the request's positives, graded gains), over the *whole catalog* with exact
  scoring for every system — never sampled negatives: the teacher's full ranking, the cascade (distilled and
  label-only twins), each two-tower student alone (ANN and exact), each ranking student alone, popularity.
- **Against the teacher** (``teacher/...``): recall@m@K — the share of the teacher's top-m found in a list's top
  K — and teacher-NDCG@K, whose gain for an item is the teacher's predicted relevance ``sigmoid(logit)`` (its
  graded-BCE output) over the teacher's top ``teacher_depth`` items (0 beyond). The teacher's full ranking is
  computed once per (teacher, catalog, queries) and cached on disk.
- **Against the synthetic shop's true relevance** (``oracle/...``, when the data set is a synthetic shop with its
  ``truth/``): the same two metrics with the hidden relevance function in the teacher's place.
- **Stage by stage**: ANN recall@K of the two-tower index against exact search with the same embeddings; the
  teacher's top-m in the retrieved candidates; the final list.
- **Cost**: single-query latency of the whole cascade call against the teacher's full ranking of one query, and
  model sizes.

Rankings are expressed as item *slots* of the bundle (rows of its item table), ``PAD`` (-1) where a list is short.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cascade.metrics import (
    PAD,
    evaluate_rankings,
    mean_metric,
    recall_at_m_at_k,
    teacher_ndcg_at_k,
)
from features import ITEM_ID, REQUEST_ID, USER_ID, Dataset, FeatureEncoders, QueryBatch, build_queries
from features.splits import temporal_leave_last_out

logger = logging.getLogger(__name__)

SYSTEMS_ORDER = (
    "teacher",
    "cascade_distilled",
    "cascade_label_only",
    "two_tower_distilled",
    "two_tower_label_only",
    "two_tower_distilled_exact",
    "two_tower_label_only_exact",
    "student_distilled",
    "student_label_only",
    "popularity",
)


@dataclass(frozen=True)
class EvalConfig:
    """What `evaluate` measures.

    Attributes:
        max_queries: Held-out requests sampled (seeded); ``None`` for all.
        split: ``"test"`` or ``"validation"`` requests.
        seed: Sampling seed.
        ks: Cut-offs of the truth metrics (recall@K curves); the largest must not exceed ``num_candidates``.
        teacher_depth: How deep the teacher's full ranking is kept (the teacher-NDCG gains and the top-m lists).
        teacher_ms: The m of recall@m@K.
        candidate_ks: The K of recall@m@K.
        num_candidates: Candidates the cascade re-ranks (and the length of every system's list).
        final_k: The size of the final list (teacher-NDCG@final_k, recall@final_k@final_k).
        latency_queries: Single-query cascade calls timed.
        teacher_latency_queries: Single-query teacher full rankings timed.
    """

    max_queries: int | None = 2000
    split: str = "test"
    seed: int = 0
    ks: tuple[int, ...] = (1, 5, 10, 20, 50, 100, 200)
    teacher_depth: int = 200
    teacher_ms: tuple[int, ...] = (1, 10, 50, 100)
    candidate_ks: tuple[int, ...] = (10, 50, 100, 200)
    num_candidates: int = 200
    final_k: int = 10
    latency_queries: int = 300
    teacher_latency_queries: int = 10

    def __post_init__(self) -> None:
        if self.split not in ("test", "validation"):
            raise ValueError(f"`split` should be 'test' or 'validation'. Received: split={self.split!r}")
        for name in ("teacher_depth", "num_candidates", "final_k", "latency_queries", "teacher_latency_queries"):
            _check_positive_int(name, getattr(self, name))
        if self.max_queries is not None:
            _check_positive_int("max_queries", self.max_queries)
        for name in ("ks", "teacher_ms", "candidate_ks"):
            if not isinstance(getattr(self, name), tuple | list):
                raise ValueError(f"`{name}` should be a list of cut-offs. Received: {name}={getattr(self, name)!r}")
            values = tuple(getattr(self, name))
            if not values:
                raise ValueError(f"`{name}` should list at least one cut-off. Received: {name}={values}")
            for v in values:
                _check_positive_int(name, v)
            object.__setattr__(self, name, tuple(sorted(set(values))))
        if max(self.ks) > self.num_candidates or max(self.candidate_ks) > self.num_candidates:
            raise ValueError(
                f"`ks` and `candidate_ks` should not exceed num_candidates={self.num_candidates}. Received: "
                f"ks={self.ks}, candidate_ks={self.candidate_ks}"
            )
        if self.final_k > self.num_candidates:
            raise ValueError(
                f"`final_k` should not exceed num_candidates={self.num_candidates}. Received: final_k={self.final_k}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"[evaluate] has unknown key(s) {unknown}; expected a subset of {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass
class Requests:
    """Held-out requests: raw queries, their positives as bundle slots and graded gains.

    Attributes:
        queries: One raw query per request (history cut at the request's time).
        relevant: ``[num_queries, r]`` slots of the request's held-out positives, ``PAD`` padded.
        gains: ``[num_queries, r]`` their labels.
        request_ids: ``[num_queries]`` the data set's request ids, or ``None`` without request ids.
        missing_items: Held-out positives whose item is not in the index (dropped, counted).
    """

    queries: QueryBatch
    relevant: np.ndarray
    gains: np.ndarray
    request_ids: np.ndarray | None
    missing_items: int = 0

    def __len__(self) -> int:
        return len(self.relevant)


def sample_requests(
    dataset: Dataset,
    events: pd.DataFrame,
    slot_of: Callable[[np.ndarray], np.ndarray],
    *,
    max_history: int,
    max_queries: int | None = 2000,
    seed: int = 0,
) -> Requests:
    """Groups held-out positive rows by request, samples requests, builds one raw query per request.

    Args:
        dataset: The data set (histories come from its interactions, strictly before each request).
        events: Held-out positive rows, e.g. ``split.test``.
        slot_of: Maps item ids to bundle slots (``-1`` when absent).
        max_history: History length of the queries.
        max_queries: Sample at most this many requests (seeded); ``None`` for all.
        seed: Sampling seed.
    """
    events = events.sort_values("label", ascending=False, kind="stable")
    if dataset.schema.has_request_id:
        events = events.drop_duplicates([USER_ID, REQUEST_ID, ITEM_ID])
        key = pd.MultiIndex.from_arrays([events[USER_ID].to_numpy(), events[REQUEST_ID].to_numpy()])
    else:
        key = events.index.to_numpy()
    codes, _ = pd.factorize(key)
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, codes[order][1:] != codes[order][:-1]]) if len(order) else np.empty(0, int)
    counts = np.diff(np.r_[starts, len(order)])
    chosen = np.arange(len(starts))
    if max_queries is not None and len(chosen) > max_queries:
        chosen = np.sort(np.random.default_rng(seed).choice(len(starts), max_queries, replace=False))
    width = int(counts[chosen].max()) if len(chosen) else 1
    slots = slot_of(events[ITEM_ID].to_numpy())
    labels = events["label"].to_numpy(dtype=np.float64)
    relevant = np.full((len(chosen), width), PAD, dtype=np.int64)
    gains = np.zeros((len(chosen), width), dtype=np.float64)
    members_all = [order[starts[g] : starts[g] + counts[g]] for g in chosen]
    missing = 0
    for i, members in enumerate(members_all):
        present = members[slots[members] >= 0]
        missing += len(members) - len(present)
        relevant[i, : len(present)] = slots[present]
        gains[i, : len(present)] = labels[present]
    first_rows = events.iloc[order[starts[chosen]]] if len(chosen) else events.iloc[:0]
    queries = build_queries(first_rows, dataset, max_history=max_history)
    request_ids = first_rows[REQUEST_ID].to_numpy() if dataset.schema.has_request_id else None
    return Requests(queries, relevant, gains, request_ids, missing_items=missing)


# -- the teacher's full ranking, cached ---------------------------------------------------------------------------


def teacher_cache_key(model_dir: Path, item_features: Mapping[str, np.ndarray], query_features, depth: int) -> str:
    """SHA-256 over the teacher's weights, the encoded catalog, the encoded queries and the depth."""
    digest = hashlib.sha256()
    variables = sorted((model_dir / "teacher" / "variables").glob("*"))
    for path in variables:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    for features in (item_features, query_features):
        for key in sorted(features):
            array = np.ascontiguousarray(features[key])
            digest.update(key.encode())
            digest.update(str(array.dtype).encode() + str(array.shape).encode())
            digest.update(array.tobytes())
    digest.update(str(depth).encode())
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """``$CASCADE_CACHE_DIR``, else ``$XDG_CACHE_HOME/cascade``, else ``~/.cache/cascade``."""
    if os.environ.get("CASCADE_CACHE_DIR"):
        return Path(os.environ["CASCADE_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cascade"


def teacher_full_ranking(
    teacher: Any,
    model_dir: Path,
    item_features: Mapping[str, np.ndarray],
    query_features: Mapping[str, np.ndarray],
    *,
    depth: int,
    cache_dir: Path | None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """The teacher's exact top-``depth`` (catalog rows, logits) of every query, from the cache when present.

    Returns:
        ``(rows [Q, depth] int64, scores [Q, depth] float32, from_cache)``.
    """
    from ranking import full_rank

    path = None
    if cache_dir is not None:
        key = teacher_cache_key(model_dir, item_features, query_features, depth)
        path = Path(cache_dir) / f"teacher-{key[:32]}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as cached:
                    rows, scores = cached["rows"], cached["scores"]
                if rows.shape == scores.shape == (len(next(iter(query_features.values()))), depth):
                    return rows.astype(np.int64), scores.astype(np.float32), True
            except (OSError, ValueError, KeyError) as e:
                logger.warning("ignoring unreadable teacher cache %s: %s", path, e)
    num_items = len(next(iter(item_features.values())))
    ranking = full_rank(teacher, query_features, item_features, k=min(depth, num_items))
    rows = np.asarray(ranking.item_rows, dtype=np.int64)
    scores = np.asarray(ranking.scores, dtype=np.float32)
    if rows.shape[1] < depth:
        pad = depth - rows.shape[1]
        rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=PAD)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as handle:
            np.savez(handle, rows=rows, scores=scores)
        tmp.replace(path)
    return rows, scores, False


# -- helpers ---------------------------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.where(np.isfinite(x), 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64))), 0.0)


def _top_slots(scores: np.ndarray, slots: np.ndarray, k: int) -> np.ndarray:
    """Top-``k`` of ``[Q, n]`` scores over the given ``[n]`` slots, best first (ties: lower position)."""
    k_eff = min(k, scores.shape[1])
    part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff] if k_eff < scores.shape[1] else None
    if part is None:
        order = np.argsort(-scores, axis=1, kind="stable")
    else:
        sub = np.take_along_axis(scores, part, axis=1)
        # Ties at the cut are broken by position for a deterministic order.
        order_in = np.lexsort((part, -sub), axis=1)
        order = np.take_along_axis(part, order_in, axis=1)
    out = slots[order[:, :k_eff]]
    if k_eff < k:
        out = np.pad(out, ((0, 0), (0, k - k_eff)), constant_values=PAD)
    return out


def _latency(fn: Callable[[int], Any], n: int) -> dict[str, float]:
    times = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    ms = np.asarray(times) * 1e3
    return {"latency_ms/p50": float(np.percentile(ms, 50)), "latency_ms/p99": float(np.percentile(ms, 99))}


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"`{name}` should be a positive integer. Received: {name}={value!r}")


# -- the evaluation ---------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """What `evaluate` returns: the report (also written as report.json) and the rankings behind it."""

    report: dict[str, Any]
    rankings: dict[str, np.ndarray] = field(default_factory=dict)


def evaluate(
    index_dir: str | Path,
    dataset: Dataset,
    *,
    config: EvalConfig | None = None,
    out_dir: str | Path | None = None,
    model_dir: str | Path | None = None,
    label_only_index_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    truth: Any | None = None,
    show_progress: bool = False,
) -> Evaluation:
    """Evaluates the cascade served by an index bundle (see the module docstring).

    Args:
        index_dir: A bundle of the distilled models (`index.build_index`).
        dataset: The data set the models were trained on (split here exactly as in training).
        config: What to measure; ``EvalConfig()`` by default.
        out_dir: Where to write ``report.json``, ``report.md`` and the plots (and the label-only bundle when it
            has to be built); nothing is written when ``None``.
        model_dir: The trained models (default: the bundle manifest's source model directory).
        label_only_index_dir: A bundle of the label-only twins; built (same index settings) when ``None``.
        cache_dir: The teacher-ranking cache (default `default_cache_dir`); pass a path to isolate runs.
        truth: The synthetic shop's `features.ShopTruth`, for the ``oracle/`` metrics.
        show_progress: Whether to log progress lines.

    Returns:
        `Evaluation` with the report (``systems.<name>.<metric>`` and more) and the rankings.
    """
    from index import BuildConfig, IndexConfig, Searcher, build_index, queries_from_batch
    from index.ann import recall_at_k as ann_recall
    from index.build import restore_keras_models
    from ranking import flops_per_pair

    config = EvalConfig() if config is None else config
    start_all = time.perf_counter()
    timings: dict[str, float] = {}

    def stage(name: str, tick: float) -> None:
        timings[name] = time.perf_counter() - tick
        if show_progress:
            logger.info("evaluate: %s in %.1fs", name, timings[name])

    tick = time.perf_counter()
    searcher = Searcher.load(index_dir)
    manifest = searcher.manifest
    if manifest.models.get("mode") != "distilled":
        raise ValueError(
            f"`index_dir` should be a bundle of the distilled models. Received: mode={manifest.models.get('mode')!r}"
        )
    model_dir = Path(model_dir or manifest.config.get("source", {}).get("model_dir", ""))
    if not (model_dir / "teacher").is_dir():
        raise FileNotFoundError(
            f"{model_dir / 'teacher'} is missing: pass `model_dir`, the directory written by `cascade train` "
            "(<out>/models) that the bundle was built from"
        )
    out = Path(out_dir) if out_dir is not None else None
    if label_only_index_dir is None:
        if out is None:
            raise ValueError("`out_dir` is needed to build the label-only bundle (or pass `label_only_index_dir`)")
        label_only_index_dir = out / "index_label_only"
        if not (Path(label_only_index_dir) / "manifest.json").is_file():
            build_config = BuildConfig(
                mode="label_only",
                index=IndexConfig.from_dict(manifest.config["build"]["index"]),
            )
            build_index(
                model_dir, searcher.items, label_only_index_dir, build_config, users=searcher._users, overwrite=True
            )
    twin = Searcher.load(label_only_index_dir)
    if not np.array_equal(twin.items[ITEM_ID].to_numpy(), searcher.items[ITEM_ID].to_numpy()):
        raise ValueError(f"{label_only_index_dir} indexes other items than {index_dir}: build both from one catalog")
    stage("load", tick)

    # Held-out requests, exactly as training split them.
    tick = time.perf_counter()
    split = temporal_leave_last_out(dataset)
    events = split.test if config.split == "test" else split.validation
    active = searcher.active
    id_index = pd.Index(searcher.items[ITEM_ID].to_numpy())

    def slot_of(item_ids: np.ndarray) -> np.ndarray:
        slots = id_index.get_indexer(item_ids)
        return np.where((slots >= 0) & active[slots.clip(0)], slots, -1)

    encoders: FeatureEncoders = searcher.encoders
    requests = sample_requests(
        dataset,
        events,
        slot_of,
        max_history=encoders.config.max_history,
        max_queries=config.max_queries,
        seed=config.seed,
    )
    if len(requests) == 0:
        raise ValueError(f"the {config.split} split of {dataset.name} has no held-out requests to evaluate")
    query_list = queries_from_batch(requests.queries)
    query_features = searcher._query_encoder.encode(query_list)
    stage("requests", tick)

    # The catalog (active slots) as the teacher and the students see it.
    catalog_slots = np.flatnonzero(active).astype(np.int64)
    catalog = encoders.encode_items(searcher.items.iloc[catalog_slots])
    depth = config.num_candidates
    rankings: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}

    tick = time.perf_counter()
    keras = restore_keras_models(model_dir, encoders, catalog, mode="distilled", teacher=True)
    keras_label_only = restore_keras_models(model_dir, encoders, catalog, mode="label_only")
    teacher = keras["teacher"]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    teacher_rows, teacher_scores, cached = teacher_full_ranking(
        teacher, model_dir, catalog, query_features, depth=max(config.teacher_depth, depth), cache_dir=cache
    )
    teacher_slots = np.where(teacher_rows >= 0, catalog_slots[teacher_rows.clip(0)], PAD)
    rankings["teacher"] = teacher_slots[:, :depth]
    stage("teacher_full_ranking" + (" (cached)" if cached else ""), tick)

    # The cascades and their stages.
    tick = time.perf_counter()
    for mode, s in (("distilled", searcher), ("label_only", twin)):
        start = time.perf_counter()
        rankings[f"cascade_{mode}"] = s.search(query_list, k=depth, num_candidates=config.num_candidates).slots
        seconds[f"cascade_{mode}"] = time.perf_counter() - start
        rankings[f"two_tower_{mode}"] = s.search(query_list, k=depth, num_candidates=depth, rerank=False).slots
        embeddings = s.query_tower(query_features)
        scores = embeddings @ np.asarray(s._embeddings[catalog_slots]).T
        rankings[f"two_tower_{mode}_exact"] = _top_slots(scores, catalog_slots, depth)
        # The ranking student alone, over the whole catalog.
        state_all = s.student.query_state(query_features, embeddings if s.student.uses_tower_embeddings else None)
        ranked = np.empty((len(requests), depth), dtype=np.int64)
        chunk = max(1, 2_000_000 // max(len(catalog_slots), 1))
        for q0 in range(0, len(requests), chunk):
            q1 = min(q0 + chunk, len(requests))
            part = {k: v[q0:q1] for k, v in state_all.items()}
            logits = s.student.score(
                part, s._student_items, np.broadcast_to(catalog_slots, (q1 - q0, len(catalog_slots)))
            )
            ranked[q0:q1] = _top_slots(logits, catalog_slots, depth)
        rankings[f"student_{mode}"] = ranked
    stage("cascade_and_students", tick)

    # Popularity: the most purchased training items (OOV buckets are unknown, not popular).
    vocab = np.asarray(catalog["item_id"])
    known = vocab > encoders.item_ids.num_oov_buckets
    popularity = np.where(known, encoders.item_popularity[vocab], -1).astype(np.float64)
    rankings["popularity"] = np.broadcast_to(
        _top_slots(popularity[None, :], catalog_slots, depth), (len(requests), depth)
    )

    # Metrics.
    tick = time.perf_counter()
    teacher_items = teacher_slots[:, : config.teacher_depth]
    teacher_gains = _sigmoid(teacher_scores[:, : config.teacher_depth])
    oracle = None
    if truth is not None and requests.request_ids is not None:
        top = truth.top_k(np.asarray(requests.request_ids, dtype=np.int64), min(config.teacher_depth, truth.num_items))
        oracle_items = slot_of(top.item_ids.ravel()).reshape(top.item_ids.shape)
        oracle = (oracle_items, np.where(oracle_items >= 0, _sigmoid(top.scores), 0.0))
    systems: dict[str, dict[str, float]] = {}
    for name in SYSTEMS_ORDER:
        ranked = rankings[name]
        metrics: dict[str, float] = {}
        truth_metrics = evaluate_rankings(ranked, requests.relevant, ks=config.ks, relevant_gains=requests.gains)
        metrics.update({f"truth/{k}": float(v) for k, v in truth_metrics.items() if "@" in k})
        for reference, (items, gains) in (
            ("teacher", (teacher_items, teacher_gains)),
            ("oracle", oracle or (None, None)),
        ):
            if items is None:
                continue
            metrics[f"{reference}/ndcg@{config.final_k}"] = mean_metric(
                teacher_ndcg_at_k(ranked, items, gains, config.final_k)
            )[0]
            for m in config.teacher_ms:
                if m > items.shape[1]:
                    continue
                for k in config.candidate_ks:
                    metrics[f"{reference}/recall@{m}@{k}"] = mean_metric(recall_at_m_at_k(ranked, items, m, k))[0]
            metrics[f"{reference}/recall@{config.final_k}@{config.final_k}"] = mean_metric(
                recall_at_m_at_k(ranked, items, config.final_k, config.final_k)
            )[0]
        systems[name] = metrics
    for mode in ("distilled", "label_only"):
        for k in (10, 100):
            if k <= depth:
                systems[f"two_tower_{mode}"][f"ann/recall@{k}"] = float(
                    np.nanmean(
                        ann_recall(rankings[f"two_tower_{mode}"][:, :k], rankings[f"two_tower_{mode}_exact"][:, :k])
                    )
                )
    stage("metrics", tick)

    # Cost: latency of single queries, model sizes.
    tick = time.perf_counter()
    n_latency = min(config.latency_queries, len(query_list))
    for mode, s in (("distilled", searcher), ("label_only", twin)):
        for i in range(min(20, n_latency)):  # warm-up
            s.search(query_list[i], k=config.final_k, num_candidates=config.num_candidates)
        systems[f"cascade_{mode}"].update(
            _latency(
                lambda i, s=s: s.search(query_list[i], k=config.final_k, num_candidates=config.num_candidates),
                n_latency,
            )
        )
    from ranking import FullRanker

    ranker = FullRanker(teacher, catalog)
    n_teacher = min(config.teacher_latency_queries, len(query_list))
    one = {k: v[:1] for k, v in query_features.items()}
    ranker.rank(one, k=config.final_k)  # warm-up (traces the graph)
    systems["teacher"].update(
        _latency(
            lambda i: ranker.rank({k: v[i : i + 1] for k, v in query_features.items()}, k=config.final_k), n_teacher
        )
    )
    systems["teacher"]["params"] = float(teacher.count_params())
    systems["teacher"]["flops_per_pair"] = float(flops_per_pair(teacher))
    for mode, models in (("distilled", keras), ("label_only", keras_label_only)):
        student_params = float(models["student"].count_params())
        tower_params = float(models["query_tower"].count_params() + models["item_tower"].count_params())
        systems[f"student_{mode}"].update(
            {"params": student_params, "flops_per_pair": float(flops_per_pair(models["student"]))}
        )
        systems[f"two_tower_{mode}"]["params"] = tower_params
        systems[f"cascade_{mode}"]["params"] = student_params + tower_params
    stage("latency", tick)

    report: dict[str, Any] = {
        "dataset": dataset.name,
        "catalog_items": len(catalog_slots),
        "queries": {
            "split": config.split,
            "evaluated": len(requests),
            "without_relevant": int(((requests.relevant >= 0).sum(axis=1) == 0).sum()),
            "held_out_positives_missing_from_index": int(requests.missing_items),
        },
        "systems": systems,
        "seconds": {**{k: round(v, 3) for k, v in timings.items()}, "total": round(time.perf_counter() - start_all, 3)},
        "systems_seconds": {k: round(v, 3) for k, v in seconds.items()},
        "index": {k: manifest.index.get(k) for k in ("factory", "nprobe", "ef_search", "ntotal")},
        "config": config.to_dict(),
        "teacher_cache": {"hit": cached, "dir": str(cache)},
        "bundles": {"distilled": str(Path(index_dir)), "label_only": str(label_only_index_dir)},
        "model_dir": str(model_dir),
    }
    report["checks"] = check_targets(report, config)
    if out is not None:
        from cascade.report import write_report

        write_report(report, out)
    return Evaluation(report=report, rankings=rankings)


def check_targets(report: Mapping[str, Any], config: EvalConfig) -> dict[str, Any]:
    """The issue's targets, evaluated on this report (each with the value and whether it holds)."""
    systems = report["systems"]
    cascade = systems["cascade_distilled"]
    twin = systems["cascade_label_only"]
    final = config.final_k
    candidates = config.num_candidates
    checks = {
        f"cascade teacher/ndcg@{final} >= 0.9": (cascade.get(f"teacher/ndcg@{final}"), 0.9),
        f"cascade teacher/recall@{final}@{candidates} >= 0.95": (
            cascade.get(f"teacher/recall@{final}@{candidates}"),
            0.95,
        ),
    }
    out: dict[str, Any] = {}
    for name, (value, threshold) in checks.items():
        out[name] = {"value": value, "holds": value is not None and value >= threshold}
    key = f"truth/ndcg@{final}"
    out[f"distilled cascade beats label-only on {key}"] = {
        "value": [cascade.get(key), twin.get(key)],
        "holds": cascade.get(key, 0.0) > twin.get(key, 0.0),
    }
    return out


def main_table(report: Mapping[str, Any], *, final_k: int = 10, num_candidates: int = 200) -> list[dict[str, Any]]:
    """The rows people read first: one per system, the headline metrics."""
    rows = []
    for name in SYSTEMS_ORDER:
        metrics = report["systems"].get(name)
        if metrics is None:
            continue
        rows.append(
            {
                "system": name,
                f"truth recall@{final_k}": metrics.get(f"truth/recall@{final_k}"),
                f"truth ndcg@{final_k}": metrics.get(f"truth/ndcg@{final_k}"),
                f"teacher ndcg@{final_k}": metrics.get(f"teacher/ndcg@{final_k}"),
                f"teacher recall@{final_k}@{num_candidates}": metrics.get(f"teacher/recall@{final_k}@{num_candidates}"),
                f"oracle ndcg@{final_k}": metrics.get(f"oracle/ndcg@{final_k}"),
                "p50 ms": metrics.get("latency_ms/p50"),
                "params": metrics.get("params"),
            }
        )
    return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width text table (for the terminal)."""
    if not rows:
        return ""
    headers = [h for h in rows[0] if any(r.get(h) is not None for r in rows)]

    def cell(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            if value >= 1000:
                return f"{value:,.0f}"
            return f"{value:.4f}" if value < 10 else f"{value:.1f}"
        return str(value)

    cells = [headers, *[[cell(r.get(h)) for h in headers] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells[0], widths, strict=True)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        lines.append(
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
    return "\n".join(lines)


__all__ = [
    "EvalConfig",
    "Evaluation",
    "Requests",
    "check_targets",
    "default_cache_dir",
    "evaluate",
    "format_table",
    "main_table",
    "sample_requests",
    "teacher_full_ranking",
]
