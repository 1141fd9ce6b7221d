"""Train the whole cascade on a data set and measure each model on held-out requests over the full catalog.

`evaluate_models` ranks the *whole catalog* for each held-out test request (exact scoring, no sampled
negatives) with every system — the teacher, each mode's two-tower student alone, each mode's ranking student
alone, each mode's cascade (two-tower top-``num_candidates`` re-ranked by the student) and a popularity
baseline — and reports recall@k and NDCG@k against the request's held-out positives (graded gains, linear).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cascade.metrics import mean_metric, ndcg_at_k, recall_at_k
from distill.mining import student_top_k
from distill.trainer import CascadeConfig, TrainedCascade, train_cascade
from features import ITEM_ID, Dataset, Split, temporal_leave_last_out
from ranking import flops_per_pair, full_rank, score_lists
from retrieval import embed_catalog

logger = logging.getLogger(__name__)


@dataclass
class HeldOut:
    """Held-out requests: one encoded query each, and its relevant catalog rows with graded gains.

    Attributes:
        query_features: Encoded queries, key -> ``[num_queries, ...]``.
        relevant_rows: ``[num_queries, r]`` catalog rows of the request's held-out positives, ``PAD`` padded.
        relevant_gains: ``[num_queries, r]`` their labels (the gain of each).
    """

    query_features: dict[str, np.ndarray]
    relevant_rows: np.ndarray
    relevant_gains: np.ndarray

    def __len__(self) -> int:
        return len(self.relevant_rows)


def held_out_requests(
    trained: TrainedCascade,
    dataset: Dataset,
    events: pd.DataFrame,
    *,
    max_queries: int | None = 2000,
    seed: int = 0,
) -> HeldOut:
    """Groups held-out positive rows by request and encodes one query per request (history cut at its time).

    Args:
        trained: The trained cascade (its encoders).
        dataset: The data set (histories come from its interactions, strictly before each request).
        events: Held-out positive rows, e.g. ``split.test``.
        max_queries: Sample at most this many requests (seeded); ``None`` for all.
        seed: Sampling seed.
    """
    from cascade.evaluate import sample_requests

    row_of = pd.Index(dataset.items[ITEM_ID].to_numpy())
    requests = sample_requests(
        dataset,
        events,
        row_of.get_indexer,
        max_history=trained.config.encoders.max_history,
        max_queries=max_queries,
        seed=seed,
    )
    return HeldOut(trained.encoders.encode_queries(requests.queries), requests.relevant, requests.gains)


def _student_full_rank(student, query_features, catalog, k: int, chunk: int = 64) -> np.ndarray:
    num_items = len(next(iter(catalog.values())))
    all_rows = np.arange(num_items, dtype=np.int64)
    n = len(next(iter(query_features.values())))
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        part = {key: np.asarray(v)[start:stop] for key, v in query_features.items()}
        scores = score_lists(student, part, np.broadcast_to(all_rows, (stop - start, num_items)).copy(), catalog)
        out[start:stop] = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return out


def _rerank(student, query_features, candidates: np.ndarray, catalog, k: int) -> np.ndarray:
    scores = score_lists(student, query_features, candidates, catalog)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(candidates, order, axis=1)


def evaluate_models(
    trained: TrainedCascade,
    held_out: HeldOut,
    *,
    k: int = 10,
    num_candidates: int = 100,
) -> dict[str, dict[str, float]]:
    """Recall@k and NDCG@k of every system over the full catalog (see the module docstring).

    Returns:
        ``{system: {"recall@k": ..., "ndcg@k": ..., "seconds": ...}}`` plus ``"_queries"`` counts.
    """
    catalog = trained.catalog
    num_items = len(next(iter(catalog.values())))
    num_candidates = min(num_candidates, num_items)
    queries = held_out.query_features
    rankings: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}

    def timed(name: str, fn) -> None:
        start = time.perf_counter()
        rankings[name] = np.asarray(fn())[:, :k]
        seconds[name] = time.perf_counter() - start

    # Items in an OOV bucket share the bucket's summed count: they are not popular, they are unknown.
    vocab = np.asarray(catalog[ITEM_ID])
    known = vocab > trained.encoders.item_ids.num_oov_buckets
    popularity = np.where(known, trained.encoders.item_popularity[vocab], 0)
    top_popular = np.argsort(-popularity, kind="stable")[:k]
    timed("popularity", lambda: np.broadcast_to(top_popular, (len(held_out), k)))
    timed("teacher", lambda: full_rank(trained.teacher, queries, catalog, k=k).item_rows)
    for mode, model in trained.two_towers.items():
        item_emb = embed_catalog(model.item_tower, catalog)
        query_emb = embed_catalog(model.query_tower, queries)
        candidates, _ = student_top_k(query_emb, item_emb, num_candidates)
        rankings[f"two_tower_{mode}"] = candidates[:, :k]
        student = trained.students.get(mode)
        if student is not None:
            timed(f"student_{mode}", lambda s=student: _student_full_rank(s, queries, catalog, k))
            timed(f"cascade_{mode}", lambda s=student, c=candidates: _rerank(s, queries, c, catalog, k))
    results: dict[str, dict[str, float]] = {}
    for name, ranked in rankings.items():
        recall, skipped = mean_metric(recall_at_k(ranked, held_out.relevant_rows, k))
        ndcg, _ = mean_metric(ndcg_at_k(ranked, held_out.relevant_rows, k, held_out.relevant_gains))
        results[name] = {f"recall@{k}": recall, f"ndcg@{k}": ndcg}
        if name in seconds:
            results[name]["seconds"] = seconds[name]
    results["_queries"] = {"evaluated": float(len(held_out)), "without_relevant": float(skipped)}
    return results


def model_costs(trained: TrainedCascade) -> dict[str, dict[str, float]]:
    """Parameters and per-pair FLOPs of the rankers, parameters of the two-tower students."""
    costs = {
        "teacher": {"params": trained.teacher.count_params(), "flops_per_pair": flops_per_pair(trained.teacher)},
    }
    for mode, student in trained.students.items():
        costs[f"student_{mode}"] = {"params": student.count_params(), "flops_per_pair": flops_per_pair(student)}
    for mode, model in trained.two_towers.items():
        costs[f"two_tower_{mode}"] = {
            "params": model.query_tower.count_params() + model.item_tower.count_params(),
        }
    return costs


def format_results(results: Mapping[str, Mapping[str, float]], costs: Mapping[str, Mapping[str, float]]) -> str:
    """A plain-text table of the systems' metrics and model costs."""
    metric_names = [m for m in next(iter(results.values())) if m != "seconds"]
    header = ["system", *metric_names, "params", "flops/pair"]
    lines = []
    for name, values in results.items():
        if name.startswith("_"):
            continue
        model = name.replace("cascade_", "student_")
        cost = costs.get(model, costs.get(name, {}))
        lines.append(
            [
                name,
                *[f"{values[m]:.4f}" for m in metric_names],
                f"{int(cost['params']):,}" if "params" in cost else "-",
                f"{int(cost['flops_per_pair']):,}" if "flops_per_pair" in cost else "-",
            ]
        )
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    rows = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *lines]]
    rows.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(rows)


def run_training(
    dataset: Dataset,
    *,
    config: CascadeConfig | None = None,
    out_dir: str | Path | None = None,
    max_eval_queries: int | None = 2000,
    show_progress: bool = True,
) -> dict:
    """Splits, trains every stage, evaluates every system; writes ``train_report.json`` into ``out_dir``."""
    config = CascadeConfig() if config is None else config
    start = time.perf_counter()
    split: Split = temporal_leave_last_out(dataset)
    directory = Path(out_dir) if out_dir is not None else None
    trained = train_cascade(
        dataset,
        split,
        config=config,
        directory=directory / "training" if directory else None,
        show_progress=show_progress,
    )
    held_out = held_out_requests(trained, dataset, split.test, max_queries=max_eval_queries, seed=config.seed)
    results = evaluate_models(trained, held_out)
    costs = model_costs(trained)
    report = {
        "dataset": dataset.name,
        "split": split.report.to_dict(),
        "results": results,
        "costs": costs,
        "stages": [
            {"name": s.name, "epoch_losses": s.epoch_losses, "steps": s.steps, "seconds": s.seconds}
            for s in trained.stages
        ],
        "config": config.to_dict(),
        "seconds": time.perf_counter() - start,
    }
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / "train_report.json.tmp"
        tmp.write_text(json.dumps(report, indent=2, default=float))
        tmp.replace(directory / "train_report.json")
    report["trained"] = trained
    return report
