"""The heavy batch jobs, engine-neutral: functions over Parquet shards that any `cascade.engine` runs.

Every job reads its model, index and catalog *from paths* inside its workers, so the same function runs in this
process (``engine="local"``, the default) or on a Ray cluster (``engine="ray"``) and gives the same rows:

====================  ============================================  ==========================================
job                   input shards (Parquet)                        output shards
====================  ============================================  ==========================================
`embed_items`         the catalog: ``item_id`` + attributes         ``item_id``, ``embedding`` (float32 list)
`score_lists`         queries + ``candidates`` (list of item ids)   the input + ``teacher_logits`` (per candidate)
`teacher_rank`        queries                                       the input + ``teacher_items``,
                                                                    ``teacher_logits`` (the teacher's top-depth)
`build_sharded_index` `embed_items`'s output                        a sharded IVF index (``index/shards.py``)
`evaluate_requests`   requests: queries + ``relevant``, ``gains``   one row of metrics per request, and
                      (+ `teacher_rank`'s columns, optional)        ``summary.json`` (their means)
====================  ============================================  ==========================================

A *query* row has ``query_id`` (unique, the key carried through), ``user_id`` (null: anonymous), ``text``,
``history`` (list of item ids, most recent first) and one ``context_<column>`` per context column;
`queries_to_frame` / `queries_from_frame` convert `index.Query` objects, `make_requests` builds evaluation
requests from a data set's held-out split (as `cascade.evaluate` samples them).

The teacher jobs rank against the whole catalog, which each worker holds encoded (about 100 bytes per item: ~10 GB
at 100M items); they parallelise over queries. `build_sharded_index` trains the IVF quantiser once on a seeded
sample, adds each shard in its own task, and merges on disk (``merge_ondisk``) in a last task.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cascade.engine import LocalEngine, RayEngine, WorkerSpec, list_shards, make_engine, total_rows
from cascade.metrics import PAD, mean_metric, ndcg_at_k, recall_at_k, recall_at_m_at_k, teacher_ndcg_at_k
from features import ITEM_ID, USER_ID, Dataset, FeatureEncoders
from index.bundle import atomic_directory

__all__ = [
    "EMBEDDING",
    "QUERY_ID",
    "BundleItemWorker",
    "CascadeEvaluator",
    "ItemEmbedder",
    "ShardedIndex",
    "TeacherListScorer",
    "TeacherRanker",
    "build_sharded_index",
    "embed_items",
    "engine_embedder",
    "evaluate_requests",
    "make_requests",
    "make_training_lists",
    "open_sharded_index",
    "queries_from_frame",
    "queries_to_frame",
    "read_embeddings",
    "read_shards",
    "score_lists",
    "teacher_rank",
    "write_shards",
]

logger = logging.getLogger(__name__)

QUERY_ID = "query_id"
EMBEDDING = "embedding"
STUDENT_PREFIX = "student/"
CONTEXT_PREFIX = "context_"
ITEM_IDS_FILE = "item_ids.parquet"
SUMMARY_FILE = "summary.json"
ENCODERS_DIR = "encoders"

EngineLike = str | LocalEngine | RayEngine | None


def _engine(engine: EngineLike) -> LocalEngine | RayEngine:
    if engine is None:
        return LocalEngine()
    if isinstance(engine, str):
        return make_engine(engine)
    if isinstance(engine, LocalEngine | RayEngine):
        return engine
    raise ValueError(f"`engine` should be 'local', 'ray', or an engine object. Received: {type(engine).__name__}")


# -- shards -----------------------------------------------------------------------------------------------------


def write_shards(
    frame: pd.DataFrame, out_dir: str | os.PathLike[str], num_shards: int, *, overwrite: bool = False
) -> list[Path]:
    """Splits a table into ``num_shards`` Parquet files of consecutive rows (``part-00000.parquet``...).

    Raises:
        ValueError: When ``num_shards`` is not an integer from 1 to the number of rows.
    """
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or not 1 <= num_shards <= max(len(frame), 1):
        raise ValueError(
            f"`num_shards` should be an integer from 1 to the number of rows ({len(frame)}). Received: {num_shards!r}"
        )
    bounds = np.linspace(0, len(frame), num_shards + 1).round().astype(np.int64)
    names = [f"part-{i:05d}.parquet" for i in range(num_shards)]
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        for name, start, stop in zip(names, bounds[:-1], bounds[1:], strict=True):
            pq.write_table(table.slice(start, stop - start), tmp / name)
    return [Path(out_dir) / name for name in names]


def read_shards(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """All rows of Parquet shards (a file, a directory of them, or a list), in file-name order."""
    tables = [pq.read_table(path).replace_schema_metadata(None) for path in list_shards(source)]
    return pa.concat_tables(tables, promote_options="default").to_pandas()


def _read_catalog(source: str | os.PathLike[str] | pd.DataFrame) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if path.is_dir() and any(p.suffix == ".parquet" for p in path.iterdir()) and not (path / "spec.toml").exists():
        return read_shards(path)
    from index.build import read_items

    return read_items(path)[0]


# -- queries as rows ----------------------------------------------------------------------------------------------


def queries_to_frame(queries: Sequence[Any], query_ids: Sequence[Any] | None = None) -> pd.DataFrame:
    """`index.Query` objects as query rows (``query_id``, ``user_id``, ``text``, ``history``, ``context_*``)."""
    ids = list(range(len(queries))) if query_ids is None else list(query_ids)
    if len(ids) != len(queries):
        raise ValueError(f"`query_ids` should have one id per query ({len(queries)}). Received: {len(ids)}")
    context_columns = sorted({c for q in queries for c in q.context})
    data: dict[str, Any] = {
        QUERY_ID: ids,
        USER_ID: [q.user_id for q in queries],
        "text": [q.text or "" for q in queries],
        "history": [list(q.history) for q in queries],
    }
    for column in context_columns:
        data[CONTEXT_PREFIX + column] = [q.context.get(column) for q in queries]
    return pd.DataFrame(data)


def queries_from_frame(frame: pd.DataFrame) -> list[Any]:
    """Query rows as `index.Query` objects (nulls: anonymous user, empty text, unknown context).

    Raises:
        ValueError: When a required column (``query_id``, ``user_id``, ``text``, ``history``) is missing.
    """
    from index import Query

    missing = [c for c in (QUERY_ID, USER_ID, "text", "history") if c not in frame.columns]
    if missing:
        raise ValueError(
            f"query rows should have the columns {[QUERY_ID, USER_ID, 'text', 'history']} (+ context_*). Missing: "
            f"{missing}; received {list(frame.columns)}"
        )
    context_columns = [c for c in frame.columns if c.startswith(CONTEXT_PREFIX)]
    out = []
    for row in frame[[USER_ID, "text", "history", *context_columns]].itertuples(index=False, name=None):
        user, text, history, *context = row
        out.append(
            Query(
                user_id=_scalar(user),
                text=text if isinstance(text, str) else "",
                history=[] if history is None else [_scalar(v) for v in history],
                context={c[len(CONTEXT_PREFIX) :]: _scalar(v) for c, v in zip(context_columns, context, strict=True)},
            )
        )
    return out


def _scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value


def make_requests(
    dataset: Dataset, *, split: str = "test", max_history: int = 20, max_queries: int | None = None, seed: int = 0
) -> pd.DataFrame:
    """Held-out requests of a data set as rows for `evaluate_requests` (sampled as `cascade.evaluate` does).

    Each row is a query (history cut at the request's time) plus ``relevant`` (the request's held-out positive
    item ids) and ``gains`` (their labels); ``query_id`` numbers the rows.
    """
    from cascade.evaluate import sample_requests
    from features.splits import temporal_leave_last_out
    from index import queries_from_batch

    if split not in ("test", "validation"):
        raise ValueError(f"`split` should be 'test' or 'validation'. Received: {split!r}")
    parts = temporal_leave_last_out(dataset)
    events = parts.test if split == "test" else parts.validation
    item_ids = dataset.items[ITEM_ID].to_numpy()
    id_index = pd.Index(item_ids)
    requests = sample_requests(
        dataset, events, id_index.get_indexer, max_history=max_history, max_queries=max_queries, seed=seed
    )
    frame = queries_to_frame(queries_from_batch(requests.queries))
    present = requests.relevant >= 0
    frame["relevant"] = [item_ids[row[mask]].tolist() for row, mask in zip(requests.relevant, present, strict=True)]
    frame["gains"] = [row[mask].tolist() for row, mask in zip(requests.gains, present, strict=True)]
    return frame


def make_training_lists(
    dataset: Dataset,
    *,
    num_candidates: int = 16,
    max_history: int = 20,
    max_rows: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Training rows for distillation at scale: one per positive of the training split, with a candidate list.

    Each row is a query (history from the training split, cut at the request's time), ``item_id`` (the positive)
    and ``candidates``: the positive first, then ``num_candidates - 1`` catalog items drawn uniformly (seeded,
    with replacement, never the positive). `score_lists` appends the teacher's logits; `cascade.distributed`
    trains the two-tower on the result (``teacher_lists``). ``query_id`` numbers the rows.
    """
    from features import build_queries
    from features.splits import temporal_leave_last_out
    from index import queries_from_batch

    if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 1:
        raise ValueError(f"`num_candidates` should be a positive integer. Received: {num_candidates!r}")
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
        raise ValueError(f"`max_rows` should be a positive integer or None. Received: {max_rows!r}")
    train = temporal_leave_last_out(dataset).train
    events = train.loc[dataset.positive_mask(train)]
    rng = np.random.default_rng(seed)
    if max_rows is not None and len(events) > max_rows:
        events = events.iloc[np.sort(rng.choice(len(events), max_rows, replace=False))]
    queries = build_queries(events, dataset, history_source=train, max_history=max_history)
    frame = queries_to_frame(queries_from_batch(queries))
    item_ids = dataset.items[ITEM_ID].to_numpy()
    positive = pd.Index(item_ids).get_indexer(events[ITEM_ID].to_numpy())
    if (positive < 0).any():
        raise ValueError(f"{(positive < 0).sum()} training positives are not in the catalog (`items.item_id`)")
    # Negatives: uniform over the other n - 1 items (draw from n - 1 slots, shift those at or after the positive).
    drawn = rng.integers(0, max(len(item_ids) - 1, 1), size=(len(events), num_candidates - 1))
    drawn = drawn + (drawn >= positive[:, None])
    rows = np.concatenate([positive[:, None], drawn.clip(max=len(item_ids) - 1)], axis=1)
    frame[ITEM_ID] = item_ids[positive]
    frame["candidates"] = [item_ids[r].tolist() for r in rows]
    return frame


# -- workers ------------------------------------------------------------------------------------------------------


class ItemEmbedder:
    """Worker of `embed_items`: catalog rows -> ``item_id``, ``embedding`` with the exported item tower."""

    def __init__(self, model_dir: str, mode: str = "distilled") -> None:
        import tensorflow as tf

        from retrieval import load_tower

        self._tf = tf
        self.encoders = FeatureEncoders.load(Path(model_dir) / ENCODERS_DIR)
        self.tower = load_tower(Path(model_dir) / f"two_tower_{mode}" / "item_tower")
        self.keys = list(self.tower.structured_input_signature[1])

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        from index.build import check_items

        encoded = self.encoders.encode_items(check_items(batch, self.encoders))
        embeddings = self.tower(**{k: self._tf.constant(encoded[k]) for k in self.keys})["embeddings"].numpy()
        return _embedding_table(batch[ITEM_ID], np.asarray(embeddings, dtype=np.float32))


def _embedding_table(ids: pd.Series, embeddings: np.ndarray) -> pa.Table:
    flat = pa.array(np.ascontiguousarray(embeddings).reshape(-1), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, embeddings.shape[1])
    return pa.table({ITEM_ID: pa.array(ids.to_numpy()), EMBEDDING: column})


class BundleItemWorker:
    """Worker of `engine_embedder`: catalog rows -> ``item_id``, ``embedding`` and the ranking student's item-table
    columns (``student/<key>``), with the numpy serving models `index.build_index` puts in a bundle."""

    def __init__(self, model_dir: str, sample: str, mode: str = "distilled") -> None:
        from index.build import load_serving_models

        self.encoders = FeatureEncoders.load(Path(model_dir) / ENCODERS_DIR)
        sample_items = pq.read_table(sample).replace_schema_metadata(None).to_pandas()
        self.models = load_serving_models(model_dir, self.encoders, self.encoders.encode_items(sample_items), mode=mode)

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        from index.build import check_items

        encoded = self.encoders.encode_items(check_items(batch, self.encoders))
        embeddings = np.asarray(self.models.item_tower(encoded), dtype=np.float32)
        student = self.models.student
        parts = student.item_table(encoded, embeddings if student.uses_tower_embeddings else None)
        table = _embedding_table(batch[ITEM_ID], embeddings)
        for key, values in sorted(parts.items()):
            table = table.append_column(STUDENT_PREFIX + key, _array_column(np.asarray(values)))
        return table


def _array_column(values: np.ndarray) -> pa.Array:
    """``[n]`` -> a plain column; ``[n, w]`` -> a fixed-size list column (dtype kept)."""
    if values.ndim == 1:
        return pa.array(values)
    flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, int(np.prod(values.shape[1:])))


def _column_array(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The inverse of `_array_column` (any list column of equal-length rows becomes ``[n, w]``)."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not (pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type)):
        return column.to_numpy(zero_copy_only=False)
    width = column.type.list_size if pa.types.is_fixed_size_list(column.type) else None
    if width is None and len(column) == 0:
        width = 0
    if width is None:
        lengths = set(pa.compute.list_value_length(column).to_numpy().tolist())
        width = lengths.pop() if len(lengths) == 1 else -1
        if width < 0:
            raise ValueError(f"a list column should have rows of one length. Received lengths {sorted(lengths)}")
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), width)


def engine_embedder(
    engine: EngineLike, model_dir: str | os.PathLike[str], *, mode: str = "distilled", batch_size: int = 4096
) -> Any:
    """An ``embedder`` for `index.build_index` that embeds the catalog on an engine (Ray) instead of in-process.

    The catalog is written as Parquet shards inside the bundle's temporary directory (on a cluster: on storage
    every node sees), `BundleItemWorker` turns them into embeddings and student item tables, and the results are
    placed back at their slots (rows of the catalog) in the ``.npy`` files the bundle serves; the shards are
    removed before the manifest is written. Every slot must come back exactly once.

    Example:
        >>> build_index(model_dir, items, out, embedder=engine_embedder("ray", model_dir))
    """
    from index.build import EMBEDDINGS_FILE, STUDENT_ITEMS_DIR, _file_key

    engine_ = _engine(engine)
    model_dir = Path(model_dir).resolve()
    _check_model_dir(model_dir)

    def embed(table: pd.DataFrame, directory: Path) -> np.ndarray:
        import shutil

        work = directory / ".engine-work"
        work.mkdir()
        try:
            num_shards = int(min(len(table), max(1, math.ceil(len(table) / batch_size))))
            inputs = write_shards(table, work / "items", num_shards)
            pq.write_table(pa.Table.from_pandas(table.iloc[:4096], preserve_index=False), work / "sample.parquet")
            spec = WorkerSpec(
                BundleItemWorker, {"model_dir": str(model_dir), "sample": str(work / "sample.parquet"), "mode": mode}
            )
            outputs = engine_.map_batches(spec, inputs, work / "embedded", batch_size=batch_size)
            id_index = pd.Index(table[ITEM_ID].to_numpy())
            arrays: dict[str, np.ndarray] = {}
            seen = np.zeros(len(table), dtype=bool)
            (directory / STUDENT_ITEMS_DIR).mkdir()
            for path in outputs:
                part = pq.read_table(path).replace_schema_metadata(None)
                slots = id_index.get_indexer(part.column(ITEM_ID).to_numpy(zero_copy_only=False))
                if (slots < 0).any() or seen[slots].any():
                    raise RuntimeError(f"{path} returned item ids that are unknown or already embedded")
                seen[slots] = True
                for name in part.column_names:
                    if name == ITEM_ID:
                        continue
                    values = _column_array(part.column(name))
                    if name == EMBEDDING:
                        values = values.astype(np.float32, copy=False)
                    if name not in arrays:
                        target = (
                            directory / EMBEDDINGS_FILE
                            if name == EMBEDDING
                            else directory / STUDENT_ITEMS_DIR / f"{_file_key(name[len(STUDENT_PREFIX) :])}.npy"
                        )
                        arrays[name] = np.lib.format.open_memmap(
                            target, mode="w+", dtype=values.dtype, shape=(len(table), *values.shape[1:])
                        )
                    arrays[name][slots] = values
            if not seen.all():
                raise RuntimeError(f"the engine returned {seen.sum()} of {len(table)} items")
            for array in arrays.values():
                array.flush()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return arrays[EMBEDDING]

    return embed


class _TeacherWorker:
    """Loads the encoders, the catalog (encoded) and the teacher; encodes query rows as the Searcher does."""

    def __init__(self, model_dir: str, items: str, users: str | None = None) -> None:
        from index.build import check_items, check_users, restore_teacher
        from index.query_encoder import QueryEncoder

        model_dir_path = Path(model_dir)
        self.encoders = FeatureEncoders.load(model_dir_path / ENCODERS_DIR)
        self.items = check_items(_read_catalog(items), self.encoders)
        self.catalog = self.encoders.encode_items(self.items)
        self.id_index = pd.Index(self.items[ITEM_ID].to_numpy())
        self.teacher = restore_teacher(model_dir_path, self.encoders, self.catalog)
        user_table = check_users(_read_catalog(users), self.encoders) if users is not None else None
        self.query_encoder = QueryEncoder(self.encoders, user_table)

    def encode(self, batch: pd.DataFrame) -> dict[str, np.ndarray]:
        return self.query_encoder.encode(queries_from_frame(batch))


class TeacherListScorer(_TeacherWorker):
    """Worker of `score_lists`: appends ``teacher_logits``, the teacher's logit of each of ``candidates``."""

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from ranking.full_ranking import score_pairs

        if "candidates" not in batch.columns:
            raise ValueError(f"list rows should have a `candidates` column. Received: {list(batch.columns)}")
        lengths = np.array([0 if c is None else len(c) for c in batch["candidates"]], dtype=np.int64)
        flat = np.concatenate([np.asarray(c) for c in batch["candidates"] if c is not None and len(c)] or [[]])
        rows = self.id_index.get_indexer(flat) if len(flat) else np.empty(0, np.int64)
        if (rows < 0).any():
            unknown = pd.unique(flat[rows < 0])[:5].tolist()
            raise ValueError(
                f"`candidates` should hold item ids of the catalog. Received {(rows < 0).sum()} unknown, e.g. {unknown}"
            )
        query_features = self.encode(batch)
        owner = np.repeat(np.arange(len(batch)), lengths)
        logits = score_pairs(
            self.teacher,
            {k: v[owner] for k, v in query_features.items()},
            {k: np.asarray(v)[rows] for k, v in self.catalog.items()},
        )
        out = batch.copy()
        out["teacher_logits"] = [part.tolist() for part in np.split(logits, np.cumsum(lengths)[:-1])]
        return out


class TeacherRanker(_TeacherWorker):
    """Worker of `teacher_rank`: appends the teacher's exact top-``depth`` of the whole catalog per query."""

    def __init__(self, model_dir: str, items: str, users: str | None = None, depth: int = 100) -> None:
        from ranking import FullRanker

        super().__init__(model_dir, items, users)
        self.depth = min(depth, len(self.items))
        self.ranker = FullRanker(self.teacher, self.catalog)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        top = self.ranker.rank(self.encode(batch), k=self.depth)
        ids = self.items[ITEM_ID].to_numpy()
        out = batch.copy()
        out["teacher_items"] = [ids[row].tolist() for row in np.asarray(top.item_rows)]
        out["teacher_logits"] = [row.tolist() for row in np.asarray(top.scores, dtype=np.float32)]
        return out


class CascadeEvaluator:
    """Worker of `evaluate_requests`: searches a bundle and measures each request (one row of metrics)."""

    def __init__(
        self,
        index_dir: str,
        ks: Sequence[int] = (10, 100),
        final_k: int = 10,
        num_candidates: int = 200,
        teacher_ms: Sequence[int] = (10,),
        rerank: bool = True,
    ) -> None:
        from index import Searcher

        self.searcher = Searcher.load(index_dir, verify_checksums=False)  # the driver verified the checksums
        self.ks, self.final_k, self.teacher_ms = tuple(ks), final_k, tuple(teacher_ms)
        self.depth = max(*self.ks, final_k)
        self.num_candidates = max(num_candidates, self.depth)
        self.rerank = rerank
        self.id_index = pd.Index(self.searcher.items[ITEM_ID].to_numpy())

    def _slots(self, lists: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """``[n, width]`` slots of item-id lists (``PAD`` padded), and how many ids were not in the index."""
        width = max(1, max((0 if v is None else len(v) for v in lists), default=1))
        out = np.full((len(lists), width), PAD, dtype=np.int64)
        missing = np.zeros(len(lists), dtype=np.int64)
        active = self.searcher.active
        for i, values in enumerate(lists):
            if values is None or len(values) == 0:
                continue
            slots = self.id_index.get_indexer(np.asarray(values))
            slots = np.where((slots >= 0) & active[slots.clip(0)], slots, PAD)
            missing[i] = int((slots < 0).sum())
            out[i, : len(slots)] = slots
        return out, missing

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        for column in ("relevant", "gains"):
            if column not in batch.columns:
                raise ValueError(f"request rows should have a `{column}` column. Received: {list(batch.columns)}")
        ranked = self.searcher.search(
            queries_from_frame(batch), k=self.depth, num_candidates=self.num_candidates, rerank=self.rerank
        ).slots
        relevant, missing = self._slots(batch["relevant"])
        gains = np.zeros(relevant.shape, dtype=np.float64)
        for i, given in enumerate(batch["gains"]):
            values = np.asarray([] if given is None else given, dtype=np.float64)
            gains[i, : len(values)] = values
        gains = np.where(relevant >= 0, gains, 0.0)
        # Relevant items missing from the index are dropped (PAD), counted in `missing_relevant`.
        out: dict[str, Any] = {
            QUERY_ID: batch[QUERY_ID].to_numpy(),
            "num_relevant": (relevant >= 0).sum(axis=1),
            "missing_relevant": missing,
        }
        for k in self.ks:
            out[f"truth/recall@{k}"] = recall_at_k(ranked, relevant, k)
            out[f"truth/ndcg@{k}"] = ndcg_at_k(ranked, relevant, k, gains)
        if "teacher_items" in batch.columns:
            teacher, _ = self._slots(batch["teacher_items"])
            logits = np.full(teacher.shape, -np.inf)
            for i, values in enumerate(batch["teacher_logits"]):
                logits[i, : len(values)] = np.asarray(values, dtype=np.float64)
            with np.errstate(over="ignore"):
                teacher_gains = np.where(teacher >= 0, 1.0 / (1.0 + np.exp(-logits)), 0.0)
            out[f"teacher/ndcg@{self.final_k}"] = teacher_ndcg_at_k(ranked, teacher, teacher_gains, self.final_k)
            for m in self.teacher_ms:
                if m > teacher.shape[1]:
                    continue
                for k in self.ks:
                    out[f"teacher/recall@{m}@{k}"] = recall_at_m_at_k(ranked, teacher, m, k)
        return pd.DataFrame(out)


# -- jobs ---------------------------------------------------------------------------------------------------------


def embed_items(
    model_dir: str | os.PathLike[str],
    items: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    engine: EngineLike = None,
    mode: str = "distilled",
    batch_size: int = 4096,
    overwrite: bool = False,
) -> list[Path]:
    """Embeds a catalog with the item tower of ``mode``: shards of ``item_id``, ``embedding`` (float32 list).

    Args:
        model_dir: A directory written by ``cascade train`` (``<out>/models``).
        items: Parquet shards of the catalog (``item_id`` + the attribute columns the encoders read).
        out_dir: The output directory to create.
        engine: ``"local"`` (default), ``"ray"``, or an engine object.
        mode: ``"distilled"`` or ``"label_only"``.
        batch_size: Items per tower call.
        overwrite: Replace ``out_dir`` if it exists.
    """
    _check_model_dir(model_dir)
    if mode not in ("distilled", "label_only"):
        raise ValueError(f"`mode` should be 'distilled' or 'label_only'. Received: {mode!r}")
    spec = WorkerSpec(ItemEmbedder, {"model_dir": str(Path(model_dir).resolve()), "mode": mode})
    return _engine(engine).map_batches(
        spec, list_shards(items), Path(out_dir), batch_size=batch_size, overwrite=overwrite
    )


def read_embeddings(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> tuple[np.ndarray, np.ndarray]:
    """``(item_ids [n], embeddings [n, dim] float32)`` of `embed_items` shards, in file-name order."""
    ids, parts = [], []
    for path in list_shards(source):
        table = pq.read_table(path, columns=[ITEM_ID, EMBEDDING])
        ids.append(table.column(ITEM_ID).to_numpy())
        parts.append(_embedding_matrix(table))
    return np.concatenate(ids), np.concatenate(parts)


def _embedding_matrix(table: pa.Table) -> np.ndarray:
    """The ``embedding`` column as ``[n, dim]`` float32."""
    return _column_array(table.column(EMBEDDING)).astype(np.float32, copy=False)


def score_lists(
    model_dir: str | os.PathLike[str],
    lists: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    items: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    engine: EngineLike = None,
    users: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    overwrite: bool = False,
) -> list[Path]:
    """Scores candidate lists with the teacher (distillation labels): appends ``teacher_logits`` to each row.

    Args:
        model_dir: A directory written by ``cascade train``.
        lists: Parquet shards of query rows with ``candidates`` (a list of catalog item ids per row).
        items: The catalog (Parquet file or shards, or a data set folder).
        out_dir: The output directory to create.
        engine: ``"local"`` (default), ``"ray"``, or an engine object.
        users: The user table (for user attributes), when the models read any.
        batch_size: Rows per worker call.
        overwrite: Replace ``out_dir`` if it exists.
    """
    kwargs = _teacher_worker_kwargs(model_dir, items, users)
    return _engine(engine).map_batches(
        WorkerSpec(TeacherListScorer, kwargs),
        list_shards(lists),
        Path(out_dir),
        batch_size=batch_size,
        overwrite=overwrite,
    )


def teacher_rank(
    model_dir: str | os.PathLike[str],
    queries: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    items: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    engine: EngineLike = None,
    depth: int = 100,
    users: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    overwrite: bool = False,
) -> list[Path]:
    """The teacher's full ranking of the catalog for each query row: appends ``teacher_items``, ``teacher_logits``.

    Args:
        model_dir: A directory written by ``cascade train``.
        queries: Parquet shards of query rows (e.g. `make_requests` output).
        items: The catalog (Parquet file or shards, or a data set folder).
        out_dir: The output directory to create.
        engine: ``"local"`` (default), ``"ray"``, or an engine object.
        depth: Items per ranking (the teacher's top ``depth``; fewer when the catalog is smaller).
        users: The user table, when the models read user attributes.
        batch_size: Queries per worker call.
        overwrite: Replace ``out_dir`` if it exists.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"`depth` should be a positive integer. Received: {depth!r}")
    kwargs = {**_teacher_worker_kwargs(model_dir, items, users), "depth": depth}
    return _engine(engine).map_batches(
        WorkerSpec(TeacherRanker, kwargs),
        list_shards(queries),
        Path(out_dir),
        batch_size=batch_size,
        overwrite=overwrite,
    )


@dataclass(frozen=True)
class ShardedIndex:
    """What `build_sharded_index` wrote: ``out_dir/merged`` (open with `open_sharded_index`), the shard files,
    and ``item_ids.parquet`` (item id of each slot, the ids stored in the index)."""

    out_dir: Path
    shard_paths: list[Path]
    num_items: int


def _add_shard_rows(empty_path: str, pieces: list[tuple[str, int, int]], offset: int, out_path: str) -> str:
    """Task of `build_sharded_index`: one shard from row ranges ``(file, start, stop)`` of embedding files, whose
    rows get the slots ``offset, offset + 1, ...``."""
    from index.shards import add_shard

    parts = [_embedding_matrix(pq.read_table(f, columns=[EMBEDDING]).slice(a, b - a)) for f, a, b in pieces]
    embeddings = np.concatenate(parts) if len(parts) > 1 else parts[0]
    ids = np.arange(offset, offset + len(embeddings), dtype=np.int64)
    return str(add_shard(empty_path, embeddings, ids, out_path))


def _merge_task(shard_paths: list[str], out_dir: str) -> str:
    from index.shards import merge_shards

    return str(merge_shards(shard_paths, out_dir))


def build_sharded_index(
    embeddings: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    factory: str,
    engine: EngineLike = None,
    num_shards: int | None = None,
    sample_size: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> ShardedIndex:
    """Builds an IVF index from `embed_items` shards: train once on a sample, add shards as tasks, merge on disk.

    Slots (the index's ids) number the rows of the embedding shards in file-name order; ``item_ids.parquet``
    maps them back to item ids.

    Args:
        embeddings: `embed_items` output shards.
        out_dir: The directory to create: ``empty.index``, ``shards/``, ``merged/``, ``item_ids.parquet``.
        factory: An IVF factory string (``"IVF1024,Flat"``, ``"IVF4096,PQ16"``...).
        engine: ``"local"`` (default), ``"ray"``, or an engine object.
        num_shards: Index shards, each a run of consecutive rows (cut across files where needed); default one per
            embedding file.
        sample_size: Rows to train on (seeded); default ``min(n, max(50 * nlist, 10_000))`` as `AnnIndex.build`.
        seed: Seeds the sample and the k-means.
        overwrite: Replace ``out_dir`` if it exists.
    """
    from index.shards import train_empty_index, training_sample_size, write_empty_index

    engine_ = _engine(engine)
    files = list_shards(embeddings)
    counts = [pq.ParquetFile(f).metadata.num_rows for f in files]
    empty = [f for f, c in zip(files, counts, strict=True) if c == 0]
    if empty:
        logger.info("build_sharded_index: skipping %d empty embedding file(s), e.g. %s", len(empty), empty[0])
    files = [f for f, c in zip(files, counts, strict=True) if c > 0]
    counts = [c for c in counts if c > 0]
    if not files:
        raise ValueError("`embeddings` should hold at least one row. Received: only empty files")
    num_items = int(sum(counts))
    num_shards = len(files) if num_shards is None else num_shards
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or not 1 <= num_shards <= num_items:
        raise ValueError(
            f"`num_shards` should be an integer from 1 to the number of embedding rows ({num_items}). "
            f"Received: {num_shards!r}"
        )
    first = _embedding_matrix(pq.read_table(files[0], columns=[EMBEDDING]).slice(0, 1))
    if sample_size is not None and (
        isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 1
    ):
        raise ValueError(f"`sample_size` should be a positive integer or None. Received: sample_size={sample_size!r}")
    size = training_sample_size(factory, first.shape[1], num_items, sample_size)
    starts = np.concatenate([[0], np.cumsum(counts)])
    ids = pa.concat_tables([pq.read_table(f, columns=[ITEM_ID]).replace_schema_metadata(None) for f in files])
    # The training sample is drawn over the items sorted by id and trained on in that order, so it does not
    # depend on how an engine split or ordered the embedding rows: every engine trains the same quantiser.
    id_values = ids.column(ITEM_ID).to_numpy()
    duplicated = pd.Index(id_values).duplicated()
    if duplicated.any():
        raise ValueError(
            f"`{ITEM_ID}` should be unique across the embedding shards. Received {int(duplicated.sum())} duplicate(s), "
            f"e.g. {pd.unique(id_values[duplicated])[:5].tolist()}"
        )
    by_id = np.argsort(id_values, kind="stable")
    wanted = by_id[np.sort(np.random.default_rng(seed).choice(num_items, size=size, replace=False))]

    out = Path(out_dir)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        sample = np.empty((size, first.shape[1]), dtype=np.float32)
        for f, start, stop in zip(files, starts[:-1], starts[1:], strict=True):
            inside = np.flatnonzero((wanted >= start) & (wanted < stop))
            if len(inside):  # one file's embedding column in memory at a time
                sample[inside] = _embedding_matrix(pq.read_table(f, columns=[EMBEDDING]))[wanted[inside] - start]
        empty_path = write_empty_index(train_empty_index(sample, factory, seed=seed), tmp / "empty.index")
        pq.write_table(ids, tmp / ITEM_IDS_FILE)
        (tmp / "shards").mkdir()
        names = [f"shard-{i:05d}-of-{num_shards:05d}.index" for i in range(num_shards)]
        # Shards are runs of consecutive rows (one per file by default), cut across files where needed.
        bounds = starts if num_shards == len(files) else np.linspace(0, num_items, num_shards + 1).round()
        calls = []
        for name, low, high in zip(names, bounds[:-1].astype(np.int64), bounds[1:].astype(np.int64), strict=True):
            pieces = [
                (str(f), int(max(low, a) - a), int(min(high, b) - a))
                for f, a, b in zip(files, starts[:-1], starts[1:], strict=True)
                if a < high and b > low
            ]
            calls.append((str(empty_path), pieces, int(low), str(tmp / "shards" / name)))
        shard_paths = engine_.run_tasks(_add_shard_rows, calls)
        engine_.run_tasks(_merge_task, [(shard_paths, str(tmp / "merged"))])
    logger.info("build_sharded_index: %d items in %d shards (%s) -> %s", num_items, num_shards, factory, out)
    return ShardedIndex(out_dir=out, shard_paths=[out / "shards" / n for n in names], num_items=num_items)


def open_sharded_index(out_dir: str | os.PathLike[str]) -> tuple[Any, np.ndarray]:
    """``(merged FAISS index, item_ids)`` of a `build_sharded_index` directory: search it, then
    ``item_ids[slots]``."""
    from index.shards import open_merged

    out = Path(out_dir)
    index = open_merged(out / "merged")
    item_ids = pq.read_table(out / ITEM_IDS_FILE).column(ITEM_ID).to_numpy()
    if index.ntotal != len(item_ids):
        raise ValueError(
            f"{out / ITEM_IDS_FILE} should list one item per indexed vector ({index.ntotal}). Received: {len(item_ids)}"
        )
    return index, item_ids


def evaluate_requests(
    index_dir: str | os.PathLike[str],
    requests: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    engine: EngineLike = None,
    ks: Sequence[int] = (10, 100),
    final_k: int = 10,
    num_candidates: int = 200,
    teacher_ms: Sequence[int] = (10,),
    rerank: bool = True,
    batch_size: int = 256,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Offline evaluation over request shards: per-request metrics shards and their means in ``summary.json``.

    Metrics per request: ``truth/recall@k`` and ``truth/ndcg@k`` (graded gains) against ``relevant``; with the
    columns of `teacher_rank`, ``teacher/ndcg@final_k`` (teacher gains ``sigmoid(logit)``) and
    ``teacher/recall@m@k``. Means skip requests with nothing relevant (counted in ``excluded``); relevant items
    absent from the index are dropped and counted (``missing_relevant``).

    Returns:
        The summary: ``{"requests", "metrics": {name: mean}, "excluded": {name: count}, "missing_relevant"}``.
    """
    from index.bundle import read_manifest, verify_files

    index_dir = Path(index_dir)
    verify_files(index_dir, read_manifest(index_dir))  # once here; the workers check sizes only
    for name, values in (("ks", ks), ("teacher_ms", teacher_ms)):
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise ValueError(f"`{name}` should be positive integers. Received: {values!r}")
    kwargs = {
        "index_dir": str(index_dir.resolve()),
        "ks": tuple(ks),
        "final_k": final_k,
        "num_candidates": num_candidates,
        "teacher_ms": tuple(teacher_ms),
        "rerank": rerank,
    }
    out = Path(out_dir)
    inputs = list_shards(requests)
    _engine(engine).map_batches(
        WorkerSpec(CascadeEvaluator, kwargs), inputs, out, batch_size=batch_size, overwrite=overwrite
    )
    rows = read_shards(out).sort_values(QUERY_ID, kind="stable").reset_index(drop=True)
    if len(rows) != total_rows(inputs):
        raise RuntimeError(f"evaluation wrote {len(rows)} rows for {total_rows(inputs)} requests")
    summary = summarize(rows)
    tmp = out / f".{SUMMARY_FILE}.tmp"
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(out / SUMMARY_FILE)
    return summary


def summarize(rows: pd.DataFrame) -> dict[str, Any]:
    """Means of per-request metric columns (requests sorted by ``query_id`` first, so any engine sums alike)."""
    metrics, excluded = {}, {}
    for column in rows.columns:
        if "/" in column:
            metrics[column], excluded[column] = mean_metric(rows[column].to_numpy(dtype=np.float64))
    return {
        "requests": len(rows),
        "metrics": metrics,
        "excluded": excluded,
        "missing_relevant": int(rows["missing_relevant"].sum()),
    }


def _teacher_worker_kwargs(
    model_dir: str | os.PathLike[str], items: str | os.PathLike[str], users: str | os.PathLike[str] | None
) -> dict[str, Any]:
    """The constructor arguments of a teacher worker, as absolute paths (after checking the model directory)."""
    _check_model_dir(model_dir, teacher=True)
    return {
        "model_dir": str(Path(model_dir).resolve()),
        "items": str(Path(items).resolve()),
        "users": None if users is None else str(Path(users).resolve()),
    }


def _check_model_dir(model_dir: str | os.PathLike[str], *, teacher: bool = False) -> None:
    path = Path(model_dir)
    needed = [path / ENCODERS_DIR, *([path / "teacher"] if teacher else [])]
    for required in needed:
        if not required.is_dir():
            raise FileNotFoundError(
                f"{required} is missing: `model_dir` should be a directory written by `cascade train` (<out>/models)"
            )
