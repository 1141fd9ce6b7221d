"""`Searcher`: the query-time library. Query tower -> FAISS top-``num_candidates`` -> student re-rank -> top-k.

Everything on the query path runs in numpy and FAISS (no TensorFlow call, no per-query Keras overhead): the
towers and the ranking student were converted to numpy at build time and checked against their SavedModels,
and the student's item-side work was precomputed per catalog item (`index.numpy_models`).

Guarantees:

- *Batch-first*: one call takes a batch; a single `Query` is a batch of one. `SearchResults` arrays are always
  ``[num_queries, k]``; rows with fewer than ``k`` eligible items are padded (slot ``-1``, score ``-inf``,
  item id `PAD_INT_ID` or `PAD_STR_ID`).
- *Nothing lost to exclusions and filters*: excluded items are over-fetched past, filters are applied inside
  FAISS with an ID selector, and a query whose approximate search still comes back short falls back to exact
  search over the eligible items, so ``k`` results come back whenever ``k`` eligible items exist.
- *Thread-safe*: searches share no mutable state (FAISS search parameters are passed per call), so many
  threads may search one `Searcher` at once; updates (`add_items`, `remove_items`, `replace_items`) take an
  exclusive lock. A single query or a small batch (fewer than `SMALL_BATCH` queries) runs FAISS on one OpenMP
  thread (an IVF/HNSW query is not split across threads, and competing thread pools slow it down); larger
  batches use ``threads``.
"""

from __future__ import annotations

import logging
import numbers
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from features import FeatureEncoders, QueryBatch
from features.schema import ITEM_ID, USER_ID
from index.ann import AnnIndex, exact_search
from index.build import (
    ACTIVE_FILE,
    EMBEDDINGS_FILE,
    ENCODERS_DIR,
    INDEX_FILE,
    ITEM_TOWER_DIR,
    ITEMS_FILE,
    QUERY_TOWER_DIR,
    STUDENT_DIR,
    STUDENT_ITEMS_DIR,
    USERS_FILE,
    check_items,
    describe_ann,
    describe_items,
    library_versions,
    write_parquet,
)
from index.bundle import (
    FileEntry,
    Manifest,
    ManifestError,
    atomic_directory,
    read_manifest,
    verify_files,
    write_manifest,
)
from index.numpy_models import NumpyStudent, NumpyTower
from index.query_encoder import QueryEncoder

logger = logging.getLogger(__name__)

PAD_SLOT = -1
PAD_INT_ID = -1
PAD_STR_ID = ""
MAX_K = 100_000
"""Largest ``k`` / ``num_candidates`` accepted (a result row of this size is 0.8 MB per query)."""

_BLAS_THRESHOLD = 20

SMALL_BATCH = 8
"""Batches of fewer queries run FAISS on one OpenMP thread: on a busy 2-core machine a 4-query search over 400
items took 10-13 ms on 2 threads (OpenMP start-up and spin-waits) and 0.06 ms on one. FAISS splits a batch by
query, so the results do not depend on the thread count."""

EXACT_SUBSET_SIZE = 20_000
"""When filters leave at most this many eligible items, candidates come from exact search over them (cheaper and
exact) instead of the ANN index."""


class SearchResults(NamedTuple):
    """Results of a batch of queries, best first.

    Attributes:
        item_ids: ``[num_queries, k]`` item ids; `PAD_INT_ID` (int ids) or `PAD_STR_ID` (string ids) where a row
            has fewer than ``k`` results.
        scores: ``[num_queries, k]`` float32, descending per row: the student's logits after re-ranking, the
            query-item inner products without; ``-inf`` at padding.
        slots: ``[num_queries, k]`` int64 item slots (rows of the bundle's item table); ``-1`` at padding.
    """

    item_ids: np.ndarray
    scores: np.ndarray
    slots: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """``[num_queries, k]`` bool: True where a result exists."""
        return self.slots >= 0


@dataclass(frozen=True)
class Query:
    """One search request.

    Attributes:
        user_id: The user's id (same kind as the training data's ids), or ``None`` for an anonymous user. Users
            unseen in training get the cold-start (out-of-vocabulary) user embedding.
        text: The query text; ``""`` for browsing / recommendations without text.
        history: The user's recent purchases (item ids), most recent first; may be empty.
        context: Request context by column (e.g. ``{"device": "mobile"}``); missing columns count as unknown.
        user_attributes: The user's attributes by column; ``None`` looks them up in the bundle's user table.
    """

    user_id: Any = None
    text: str = ""
    history: Sequence[Any] = ()
    context: Mapping[str, Any] = field(default_factory=dict)
    user_attributes: Mapping[str, Any] | None = None


class _ReadWriteLock:
    """Many readers or one writer. A waiting writer goes first: new readers wait behind it, else a steady stream
    of overlapping searches would hold an update off for as long as it lasts. Not re-entrant: a thread holding a
    read must not take another one (it would wait behind a waiting writer that waits for it)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._condition:
            while self._writer or self._writers_waiting:
                self._condition.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                if self._readers == 0:
                    self._condition.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._condition:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._condition.wait()
            finally:
                self._writers_waiting -= 1
                self._condition.notify_all()  # readers held back by this writer re-check (e.g. if the wait broke)
            self._writer = True
        try:
            yield
        finally:
            with self._condition:
                self._writer = False
                self._condition.notify_all()


@dataclass
class _Filter:
    kind: str  # "categorical" | "numeric"
    values: np.ndarray  # numeric: float64 [num_slots]; categorical: int codes [num_slots] (-1 missing)
    categories: pd.Index | None = None
    value_kind: str | None = None  # categorical: "str" or "int" when every value is one, else None


class Searcher:
    """Searches an index bundle written by `index.build_index`.

    Load with `Searcher.load`; call `search` with a batch of `Query` (or one). See the module docstring for the
    guarantees on padding, exclusions, filters and threads.

    Example:
        >>> searcher = Searcher.load("indexes/shop")
        >>> results = searcher.search(Query(user_id=42, text="red running shoes"), k=10,
        ...                           exclude=[[1001, 1002]], filters={"brand": ["acme", "zen"], "price": (10, 50)})
        >>> results.item_ids.shape
        (1, 10)
    """

    def __init__(
        self,
        *,
        directory: Path,
        manifest: Manifest,
        encoders: FeatureEncoders,
        query_tower: NumpyTower,
        item_tower: NumpyTower,
        student: NumpyStudent,
        ann: AnnIndex,
        items: pd.DataFrame,
        active: np.ndarray,
        item_embeddings: np.ndarray,
        student_items: dict[str, np.ndarray],
        users: pd.DataFrame | None,
        threads: int | None = None,
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.encoders = encoders
        self.query_tower = query_tower
        self.item_tower = item_tower
        self.student = student
        self.ann = ann
        self._items = items
        self._active = active
        self._embeddings = item_embeddings
        self._student_items = student_items
        self._users = users
        self._user_index = pd.Index(users[USER_ID]) if users is not None else None
        self._query_encoder = QueryEncoder(encoders, users)
        self._filters: dict[str, _Filter] = {}
        self._lock = _ReadWriteLock()
        self._id_kind = manifest.items.get("id_kind", encoders.item_ids.kind)
        self._reindex()
        import faiss

        self.threads = int(threads) if threads else max(1, faiss.omp_get_max_threads())
        # FAISS 1.15 only uses BLAS for exact search from 128,000 queries on (a process-wide knob); batches of a
        # few hundred queries over a Flat index are several times faster with it. Single queries are unaffected.
        faiss.cvar.distance_compute_blas_threshold = min(faiss.cvar.distance_compute_blas_threshold, _BLAS_THRESHOLD)

    # -- loading -------------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, directory: str | Path, *, verify_checksums: bool = True, threads: int | None = None) -> Searcher:
        """Loads a bundle after checking it.

        Checks the manifest (format version, fields), that the directory holds exactly the manifest's files with
        their sizes and SHA-256 (``verify_checksums=False`` checks sizes only: faster for multi-GB bundles),
        and that every count and dimension agrees across files.

        Args:
            directory: A bundle written by `index.build_index` or `Searcher.save`.
            verify_checksums: Whether to hash every file.
            threads: OpenMP threads FAISS may use for batches (default: all cores); single queries use one.

        Raises:
            FileNotFoundError: When the directory or its manifest is missing.
            ManifestError: (a ``ValueError``) naming the file and both values when something disagrees.
        """
        directory = Path(directory)
        manifest = read_manifest(directory)
        verify_files(directory, manifest, checksums=verify_checksums)
        _check_versions(directory, manifest)
        dim = manifest.embedding_dim
        num_slots = _manifest_int(manifest.items, "num_slots", directory)
        num_active = _manifest_int(manifest.items, "num_active", directory)

        items = pq.read_table(directory / ITEMS_FILE).to_pandas()
        _expect(directory / ITEMS_FILE, "rows", len(items), "manifest items.num_slots", num_slots)
        if ITEM_ID not in items.columns:
            raise ManifestError(f"{directory / ITEMS_FILE} has no {ITEM_ID!r} column. Columns: {list(items.columns)}")
        active = _load_npy(directory / ACTIVE_FILE)
        _expect(directory / ACTIVE_FILE, "entries", len(active), f"{ITEMS_FILE} rows", num_slots)
        if active.dtype != np.bool_:
            raise ManifestError(f"{directory / ACTIVE_FILE} should hold booleans. Received dtype {active.dtype}")
        _expect(directory / ACTIVE_FILE, "active entries", int(active.sum()), "manifest items.num_active", num_active)
        embeddings = np.asarray(_load_npy(directory / EMBEDDINGS_FILE, mmap=True))
        if embeddings.ndim != 2:
            raise ManifestError(f"{directory / EMBEDDINGS_FILE} should be 2-D. Received shape {embeddings.shape}")
        _expect(directory / EMBEDDINGS_FILE, "rows", embeddings.shape[0], f"{ITEMS_FILE} rows", num_slots)
        _expect(directory / EMBEDDINGS_FILE, "columns", embeddings.shape[1], "manifest embedding_dim", dim)

        try:
            query_tower = NumpyTower.load(directory / QUERY_TOWER_DIR)
            item_tower = NumpyTower.load(directory / ITEM_TOWER_DIR)
            student = NumpyStudent.load(directory / STUDENT_DIR)
        except (ValueError, FileNotFoundError) as e:
            raise ManifestError(f"{directory}: a serving model does not load: {e}") from e
        _expect(directory / QUERY_TOWER_DIR, "output dimension", query_tower.output_dim, "embedding_dim", dim)
        _expect(directory / ITEM_TOWER_DIR, "output dimension", item_tower.output_dim, "embedding_dim", dim)
        student_items = {}
        for path in sorted((directory / STUDENT_ITEMS_DIR).glob("*.npy")):
            array = _load_npy(path, mmap=True)
            _expect(path, "rows", array.shape[0], f"{ITEMS_FILE} rows", num_slots)
            student_items[path.stem] = np.asarray(array)  # a plain view of the mapping: no memmap per slice
        student_items = _trim_tokens(student_items)

        factory = manifest.index.get("factory")
        if not isinstance(factory, str):
            raise ManifestError(
                f"{directory / 'manifest.json'}: index.factory should be a string. Received {factory!r}"
            )
        try:
            ann = AnnIndex.read(
                directory / INDEX_FILE,
                factory=factory,
                nprobe=manifest.index.get("nprobe"),
                ef_search=manifest.index.get("ef_search"),
            )
        except ValueError as e:
            raise ManifestError(str(e)) from e
        _expect(directory / INDEX_FILE, "dimension", ann.dim, "manifest embedding_dim", dim)
        _expect(directory / INDEX_FILE, "vectors", ann.ntotal, "manifest index.ntotal", manifest.index.get("ntotal"))
        if ann.supports_removal:
            _expect(directory / INDEX_FILE, "vectors", ann.ntotal, f"active items in {ACTIVE_FILE}", num_active)

        encoders = FeatureEncoders.load(directory / ENCODERS_DIR)
        users = pq.read_table(directory / USERS_FILE).to_pandas() if (directory / USERS_FILE).is_file() else None
        searcher = cls(
            directory=directory,
            manifest=manifest,
            encoders=encoders,
            query_tower=query_tower,
            item_tower=item_tower,
            student=student,
            ann=ann,
            items=items,
            active=active,
            item_embeddings=embeddings,
            student_items=student_items,
            users=users,
            threads=threads,
        )
        # The item table must be the one the student expects: check one row end to end.
        try:
            encoded = searcher._encode([Query()])
            embedded = searcher.query_tower(encoded) if student.uses_tower_embeddings else None
            student.score(student.query_state(encoded, embedded), student_items, np.zeros((1, 1), dtype=np.int64))
        except (ValueError, KeyError, IndexError) as e:
            raise ManifestError(f"{directory / STUDENT_ITEMS_DIR} does not fit {directory / STUDENT_DIR}: {e}") from e
        return searcher

    # -- properties ----------------------------------------------------------------------------------------------

    @property
    def num_items(self) -> int:
        """Searchable (active) items."""
        return int(self._active_count)

    @property
    def items(self) -> pd.DataFrame:
        """The item table (one row per slot, removed items included; see `active`)."""
        return self._items

    @property
    def active(self) -> np.ndarray:
        return self._active

    @property
    def filter_fields(self) -> dict[str, str]:
        """Filterable item fields and their kind (``"categorical"`` or ``"numeric"``)."""
        return dict(self.manifest.items.get("filters", {}))

    # -- searching -----------------------------------------------------------------------------------------------

    def search(
        self,
        queries: Query | Sequence[Query] | QueryBatch,
        k: int = 10,
        *,
        num_candidates: int = 200,
        exclude: Sequence[Any] | None = None,
        filters: Mapping[str, Any] | None = None,
        rerank: bool = True,
    ) -> SearchResults:
        """Query tower -> ANN top-``num_candidates`` -> student re-rank -> top-``k``.

        Args:
            queries: One `Query`, a sequence of them, or a `features.QueryBatch` (e.g. held-out requests).
            k: Results per query (``1 <= k <= MAX_K``).
            num_candidates: Candidates the first stage hands to the re-ranker (``k <= num_candidates <= MAX_K``).
            exclude: Item ids never to return: one sequence for every query (e.g. ``[1, 2]``), or one sequence per
                query (``[[1, 2], [], [7]]``, as many as queries). Ids not in the catalog are ignored.
            filters: Field -> condition on the item table: a value (equality), a list/set of values (any of them)
                for categorical fields, or ``(low, high)`` (inclusive; ``None`` for an open end) for numeric
                fields. Every condition must hold. `filter_fields` lists the fields.
            rerank: False returns the first stage's top-``k`` by inner product (for recall measurement).

        Returns:
            `SearchResults`, ``[num_queries, k]`` each.

        Raises:
            ValueError: For a bad argument, naming it, what was expected and what was received.
        """
        k, num_candidates = _check_k(k, num_candidates)
        if not isinstance(rerank, bool):
            raise ValueError(f"`rerank` should be a bool. Received: rerank={rerank!r}")
        with self._lock.read():
            encoded = self._encode(queries)
            num_queries = len(encoded["query_tokens"])
            query_embeddings = self.query_tower(encoded)
            excluded = self._excluded_slots(exclude, num_queries)
            eligible = self._eligible(filters)
            with _omp_threads(1 if num_queries < SMALL_BATCH else self.threads):
                scores, slots = self._first_stage(query_embeddings, num_candidates, eligible, excluded)
            if rerank:
                state = self.student.query_state(
                    encoded, query_embeddings if self.student.uses_tower_embeddings else None
                )
                scores = self.student.score(state, self._student_items, slots)
                scores = np.where(slots >= 0, scores, -np.inf).astype(np.float32)
            return self._top_k(scores, slots, k)

    def search_embeddings(
        self,
        query_embeddings: np.ndarray,
        k: int = 10,
        *,
        exclude: Sequence[Any] | None = None,
        filters: Mapping[str, Any] | None = None,
    ) -> SearchResults:
        """First-stage search for precomputed ``[num_queries, embedding_dim]`` float32 query embeddings."""
        k, _ = _check_k(k, k)
        dim = self.manifest.embedding_dim
        array = np.asarray(query_embeddings)
        if array.ndim != 2 or array.shape[1] != dim:
            raise ValueError(
                f"`query_embeddings` should have shape [num_queries, {dim}]. Received: shape={array.shape}"
            )
        if array.dtype.kind != "f":
            raise ValueError(f"`query_embeddings` should be float32. Received: dtype={array.dtype}")
        if not np.isfinite(array).all():
            raise ValueError("`query_embeddings` should be finite. Received: NaN or inf values")
        array = np.ascontiguousarray(array, dtype=np.float32)
        with self._lock.read():
            excluded = self._excluded_slots(exclude, len(array))
            eligible = self._eligible(filters)
            with _omp_threads(1 if len(array) < SMALL_BATCH else self.threads):
                scores, slots = self._first_stage(array, k, eligible, excluded)
            return self._top_k(scores, slots, k)

    def embed_queries(self, queries: Query | Sequence[Query] | QueryBatch) -> np.ndarray:
        """``[num_queries, embedding_dim]`` query-tower embeddings."""
        return self.query_tower(self._encode(queries))

    def describe(self, results: SearchResults, row: int = 0) -> pd.DataFrame:
        """One query's results as a table: rank, item id, the item's attributes, score (padding dropped)."""
        slots = results.slots[row]
        keep = slots >= 0
        frame = self._items.iloc[slots[keep]].reset_index(drop=True)
        frame.insert(0, "rank", np.arange(1, keep.sum() + 1))
        frame["score"] = results.scores[row][keep]
        return frame

    # -- updates -------------------------------------------------------------------------------------------------

    def add_items(self, items: pd.DataFrame) -> int:
        """Embeds and indexes new items (no rebuild). Returns how many were added.

        Raises:
            ValueError: When an id is already in the index (use `replace_items`) or the rows do not fit the
                encoders (a missing column, a duplicate or missing id).
        """
        items = self._check_new_items(items)
        with self._lock.write():
            known = self._id_index.get_indexer(items[ITEM_ID])
            if (known >= 0).any():
                present = items[ITEM_ID][known >= 0].tolist()[:5]
                raise ValueError(
                    f"`items.item_id` should be new ids; {int((known >= 0).sum())} are already indexed, e.g. "
                    f"{present}: use replace_items to change them"
                )
            self._append(items)
        return len(items)

    def remove_items(self, item_ids: Sequence[Any]) -> int:
        """Removes items from search. Returns how many were removed.

        Flat and IVF indexes drop the vectors; HNSW graphs cannot remove vectors in FAISS, so removed items are
        masked at search time (an ID selector) until the next full build.

        Raises:
            ValueError: When an id is not an active item (naming the first few).
        """
        ids = _as_id_array(item_ids, "item_ids")
        with self._lock.write():
            positions = self._id_index.get_indexer(ids)
            if (positions < 0).any():
                unknown = ids[positions < 0][:5].tolist()
                raise ValueError(
                    f"`item_ids` should be active items of the index. Received {int((positions < 0).sum())} "
                    f"unknown, e.g. {unknown}"
                )
            self._deactivate(self._slot_of[positions])
        return len(ids)

    def replace_items(self, items: pd.DataFrame) -> int:
        """Re-embeds existing items from new attribute rows (e.g. a changed title or price); returns the count.

        Each replaced item moves to a new slot (its old slot is removed or masked), so a concurrent reader never
        sees a half-updated item.
        """
        items = self._check_new_items(items)
        with self._lock.write():
            positions = self._id_index.get_indexer(items[ITEM_ID])
            if (positions < 0).any():
                unknown = items[ITEM_ID][positions < 0].tolist()[:5]
                raise ValueError(
                    f"`items.item_id` should be indexed items to replace. Received {int((positions < 0).sum())} "
                    f"unknown, e.g. {unknown}: use add_items for new ones"
                )
            self._deactivate(self._slot_of[positions])
            self._append(items)
        return len(items)

    def save(self, directory: str | Path, *, overwrite: bool = False) -> Manifest:
        """Writes the current state (after updates) as a new bundle, atomically; returns its manifest."""
        import shutil

        with self._lock.read(), atomic_directory(directory, overwrite=overwrite) as tmp:
            write_parquet(self._items, tmp / ITEMS_FILE)
            np.save(tmp / ACTIVE_FILE, self._active, allow_pickle=False)
            np.save(tmp / EMBEDDINGS_FILE, np.asarray(self._embeddings), allow_pickle=False)
            (tmp / STUDENT_ITEMS_DIR).mkdir()
            for key, values in self._student_items.items():
                np.save(tmp / STUDENT_ITEMS_DIR / f"{key}.npy", np.asarray(values), allow_pickle=False)
            self.ann.write(tmp / INDEX_FILE)
            if self._users is not None:
                write_parquet(self._users, tmp / USERS_FILE)
            for name in (ENCODERS_DIR, QUERY_TOWER_DIR, ITEM_TOWER_DIR, STUDENT_DIR, "savedmodel"):
                if (self.directory / name).exists():
                    shutil.copytree(self.directory / name, tmp / name)
            previous = self.manifest

            def make_manifest(files: dict[str, FileEntry]) -> Manifest:
                return Manifest(
                    embedding_dim=previous.embedding_dim,
                    index=describe_ann(self.ann),
                    items=describe_items(self._items, self.encoders, num_active=self._active_count),
                    models=previous.models,
                    files=files,
                    config=previous.config,
                    versions=library_versions(),
                    parent_build_id=previous.build_id,
                )

            return write_manifest(tmp, make_manifest)

    # -- internals -----------------------------------------------------------------------------------------------

    def _reindex(self) -> None:
        """Rebuilds the active item id -> slot map (after loading and after updates)."""
        active_slots = np.flatnonzero(self._active)
        self._active_count = len(active_slots)
        self._active_slots = active_slots
        self._ids = self._items[ITEM_ID].to_numpy()
        if self._id_kind == "str":
            self._ids = self._ids.astype(object)
        self._id_index = pd.Index(self._ids[active_slots])
        self._slot_of = active_slots
        self._all_active = self._active_count == len(self._active)
        self._filters = {}

    def _check_new_items(self, items: pd.DataFrame) -> pd.DataFrame:
        items = check_items(items, self.encoders)
        missing = [c for c in self._items.columns if c not in items.columns]
        if missing:
            raise ValueError(
                f"`items` should have the bundle's item columns {list(self._items.columns)}. Missing: {missing}"
            )
        return items[list(self._items.columns)].reset_index(drop=True)

    def _append(self, items: pd.DataFrame) -> None:
        encoded = self.encoders.encode_items(items)
        embeddings = self.item_tower(encoded).astype(np.float32)
        parts = self.student.item_table(encoded, embeddings if self.student.uses_tower_embeddings else None)
        start = len(self._items)
        slots = np.arange(start, start + len(items), dtype=np.int64)
        self.ann.add(embeddings, slots)
        self._items = pd.concat([self._items, items], ignore_index=True)
        self._active = np.concatenate([self._active, np.ones(len(items), dtype=bool)])
        self._embeddings = np.concatenate([np.asarray(self._embeddings), embeddings])
        self._student_items = _trim_tokens(
            {key: _concatenate_rows(values, parts[key]) for key, values in self._student_items.items()}
        )
        self._reindex()

    def _deactivate(self, slots: np.ndarray) -> None:
        self._active = self._active.copy()
        self._active[slots] = False
        if self.ann.supports_removal:
            self.ann.remove(slots)
        self._reindex()

    def _encode(self, queries: Query | Sequence[Query] | QueryBatch) -> dict[str, np.ndarray]:
        if isinstance(queries, QueryBatch):
            if len(queries) == 0:
                raise ValueError("`queries` should hold at least one query. Received: an empty batch")
            try:
                return self.encoders.encode_queries(queries)
            except ValueError as e:
                raise ValueError(f"`queries` do not fit the encoders: {e}") from e
        query_list = _as_query_list(queries)
        if not query_list:
            raise ValueError("`queries` should hold at least one query. Received: an empty batch")
        self._validate(query_list)
        try:
            encoded = self._query_encoder.encode(query_list)
        except ValueError as e:
            raise ValueError(f"`queries` do not fit the encoders: {e}") from e
        anonymous = [i for i, q in enumerate(query_list) if q.user_id is None]
        if anonymous:
            # Anonymous users take the first out-of-vocabulary bucket, which id dropout trained as "unknown".
            encoded["user_id"][anonymous] = 1
        return encoded

    def _validate(self, queries: list[Query]) -> None:
        """Checks every field of every query, naming the first bad one (kinds, unknown columns)."""
        user_kind = self.encoders.user_ids.kind
        item_kind = self.encoders.item_ids.kind
        context_columns = self.encoders.context
        attribute_columns = {*self.encoders.user_categorical, *self.encoders.user_normalizers}
        for i, q in enumerate(queries):
            if q.user_id is not None and not _is_kind(q.user_id, user_kind):
                raise ValueError(
                    f"`queries[{i}].user_id` should be a {user_kind} id like the training data's. Received: "
                    f"{q.user_id!r}"
                )
            if not isinstance(q.text, str):
                raise ValueError(f'`queries[{i}].text` should be a string ("" for none). Received: {q.text!r}')
            if isinstance(q.history, str | bytes | Mapping) or not isinstance(q.history, Sequence | np.ndarray):
                raise ValueError(f"`queries[{i}].history` should be a sequence of item ids. Received: {q.history!r}")
            for j, item in enumerate(q.history):
                if not _is_kind(item, item_kind):
                    raise ValueError(f"`queries[{i}].history[{j}]` should be a {item_kind} item id. Received: {item!r}")
            if not isinstance(q.context, Mapping):
                raise ValueError(f"`queries[{i}].context` should be a mapping. Received: {q.context!r}")
            for c, value in q.context.items():
                if c not in context_columns:
                    raise ValueError(
                        f"`queries[{i}].context` has unknown column(s) {[c]}; the models read {list(context_columns)}"
                    )
                if value is not None and not isinstance(value, str | numbers.Real):
                    raise ValueError(
                        f"`queries[{i}].context[{c!r}]` should be one value (a string or a number; None when unknown). "
                        f"Received: {value!r}"
                    )
            if q.user_attributes is not None:
                if not isinstance(q.user_attributes, Mapping):
                    raise ValueError(
                        f"`queries[{i}].user_attributes` should be a mapping. Received: {q.user_attributes!r}"
                    )
                unknown = [c for c in q.user_attributes if c not in attribute_columns]
                if unknown:
                    raise ValueError(
                        f"`queries[{i}].user_attributes` has unknown column(s) {unknown}; known: "
                        f"{sorted(attribute_columns)}"
                    )
                for c, value in q.user_attributes.items():
                    numeric = c in self.encoders.user_normalizers
                    if value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool)):
                        continue
                    if numeric or not isinstance(value, str):
                        expected = "a number" if numeric else "one value (a string or a number)"
                        raise ValueError(
                            f"`queries[{i}].user_attributes[{c!r}]` should be {expected}; None or NaN when unknown. "
                            f"Received: {value!r}"
                        )

    def _query_batch(self, queries: Query | Sequence[Query]) -> QueryBatch:
        """The same queries as a `features.QueryBatch` (the reference path `QueryEncoder` is tested against)."""
        queries = _as_query_list(queries)
        self._validate(queries)
        n = len(queries)
        context_columns = list(self.encoders.context)
        attribute_columns = [*self.encoders.user_categorical, *self.encoders.user_normalizers]
        user_ids = np.empty(n, dtype=object)
        texts = np.empty(n, dtype=object)
        width = max([len(q.history) for q in queries] + [1])
        history = np.zeros((n, width), dtype=object if self.encoders.item_ids.kind == "str" else np.int64)
        lengths = np.zeros(n, dtype=np.int32)
        context = {c: np.empty(n, dtype=object) for c in context_columns}
        for i, q in enumerate(queries):
            user_ids[i] = q.user_id
            texts[i] = q.text
            history[i, : len(q.history)] = list(q.history)
            lengths[i] = len(q.history)
            for c in context_columns:
                context[c][i] = q.context.get(c)
        known_users = np.array([u is not None for u in user_ids])
        if self.encoders.user_ids.kind == "int":
            user_column = np.where(known_users, user_ids, -1).astype(np.int64)
        else:
            user_column = np.where(known_users, user_ids, "").astype(object)
        attributes = self._user_attributes(queries, user_column, known_users, attribute_columns)
        return QueryBatch(
            user_id=user_column,
            query=texts,
            history=history,
            history_length=lengths,
            timestamp=np.zeros(n, dtype=np.int64),
            context=context,
            user_attributes=attributes,
        )

    def _user_attributes(
        self, queries: list[Query], user_ids: np.ndarray, known: np.ndarray, columns: list[str]
    ) -> dict[str, np.ndarray]:
        if not columns:
            return {}
        out = {c: np.full(len(queries), None, dtype=object) for c in columns}
        if self._users is not None and self._user_index is not None:
            rows = np.where(known, self._user_index.get_indexer(user_ids), -1)
            found = rows >= 0
            for c in columns:
                values = self._users[c].to_numpy(dtype=object)
                out[c][found] = values[rows[found]]
        for i, q in enumerate(queries):
            if q.user_attributes is None:
                continue
            for c, value in q.user_attributes.items():
                out[c][i] = value
        for c in self.encoders.user_normalizers:
            out[c] = np.array([np.nan if v is None else v for v in out[c]], dtype=np.float64)
        return out

    def _excluded_slots(self, exclude: Sequence[Any] | None, num_queries: int) -> list[np.ndarray] | None:
        if exclude is None:
            return None
        if isinstance(exclude, str | bytes) or not isinstance(exclude, Sequence | np.ndarray | set | frozenset):
            raise ValueError(
                f"`exclude` should be a sequence of item ids, or one such sequence per query. Received: {exclude!r}"
            )
        entries = list(exclude)
        nested = bool(entries) and all(_is_collection(e) for e in entries)
        if nested:
            if len(entries) != num_queries:
                raise ValueError(
                    f"`exclude` should have one sequence per query ({num_queries}). Received: {len(entries)}"
                )
            per_query = [_as_id_array(e, f"exclude[{i}]") for i, e in enumerate(entries)]
        else:
            if any(_is_collection(e) for e in entries):
                raise ValueError("`exclude` should be either item ids or one sequence of item ids per query, not a mix")
            shared = _as_id_array(entries, "exclude")
            per_query = [shared] * num_queries
        out = []
        for ids in per_query:
            if len(ids) and not all(_is_kind(v, self._id_kind) for v in ids[:1]):
                raise ValueError(f"`exclude` ids should be {self._id_kind} item ids. Received: {ids[:1].tolist()}")
            slots = self._id_index.get_indexer(ids) if len(ids) else np.empty(0, dtype=np.int64)
            slots = slots[slots >= 0]
            out.append(np.unique(self._slot_of[slots]).astype(np.int64))
        return out

    def _eligible(self, filters: Mapping[str, Any] | None) -> np.ndarray | None:
        """Bool mask over slots of the items that may be returned, or None when every slot may."""
        if filters is None or (isinstance(filters, Mapping) and not filters):
            # Flat and IVF indexes drop removed vectors; HNSW keeps them, so they are masked.
            return None if self._all_active or self.ann.supports_removal else self._active
        if not isinstance(filters, Mapping):
            raise ValueError(f"`filters` should be a mapping of field -> condition. Received: {filters!r}")
        fields = self.filter_fields
        mask = self._active.copy()
        for name, condition in filters.items():
            if name not in fields:
                raise ValueError(f"`filters` has unknown field {name!r}; filterable fields: {sorted(fields)}")
            mask &= self._condition_mask(name, fields[name], condition)
        return mask

    def _condition_mask(self, name: str, kind: str, condition: Any) -> np.ndarray:
        column = self._filter_column(name, kind)
        if kind == "numeric":
            values = column.values
            if isinstance(condition, tuple | list) and len(condition) == 2:
                low, high = condition
                for label, bound in (("low", low), ("high", high)):
                    if bound is not None and not _is_number(bound):
                        raise ValueError(
                            f"`filters[{name!r}]` should be (low, high) numbers or None. Received {label}={bound!r}"
                        )
                if low is not None and high is not None and low > high:
                    raise ValueError(f"`filters[{name!r}]` should have low <= high. Received: ({low}, {high})")
                mask = ~np.isnan(values)
                if low is not None:
                    mask &= values >= low
                if high is not None:
                    mask &= values <= high
                return mask
            if _is_number(condition):
                return values == float(condition)
            raise ValueError(
                f"`filters[{name!r}]` should be a number or a (low, high) range for a numeric field. Received: "
                f"{condition!r}"
            )
        wanted = list(condition) if _is_collection(condition) else [condition]
        if not wanted:
            raise ValueError(f"`filters[{name!r}]` should list at least one value. Received: {condition!r}")
        for value in wanted:
            if not (_is_kind(value, column.value_kind) if column.value_kind else isinstance(value, str | numbers.Real)):
                expected = {"str": "strings", "int": "integer values"}.get(column.value_kind or "", "single values")
                raise ValueError(
                    f"`filters[{name!r}]` should hold {expected} like the field's values. Received: {value!r}"
                )
        assert column.categories is not None
        codes = column.categories.get_indexer(pd.Index(wanted, dtype=object))
        return np.isin(column.values, codes[codes >= 0])

    def _filter_column(self, name: str, kind: str) -> _Filter:
        cached = self._filters.get(name)
        if cached is not None:
            return cached
        series = self._items[name]
        if kind == "numeric":
            built = _Filter("numeric", pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64))
        else:
            codes, categories = pd.factorize(series.astype(object), use_na_sentinel=True)
            kinds = [k for k in ("str", "int") if all(_is_kind(v, k) for v in categories)]
            built = _Filter("categorical", codes, pd.Index(categories, dtype=object), kinds[0] if kinds else None)
        self._filters[name] = built
        return built

    def _first_stage(
        self,
        query_embeddings: np.ndarray,
        num_candidates: int,
        eligible: np.ndarray | None,
        excluded: list[np.ndarray] | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``num_candidates`` eligible, non-excluded slots per query, best first (padded with -1 / -inf)."""
        num_queries = len(query_embeddings)
        num_eligible = self._active_count if eligible is None else int(eligible.sum())
        if num_eligible == 0:
            return (
                np.full((num_queries, num_candidates), -np.inf, dtype=np.float32),
                np.full((num_queries, num_candidates), PAD_SLOT, dtype=np.int64),
            )
        max_excluded = max((len(e) for e in excluded), default=0) if excluded else 0
        fetch = min(num_candidates + max_excluded, num_eligible)
        if eligible is not None and num_eligible <= EXACT_SUBSET_SIZE:
            scores, slots = self._exact(query_embeddings, fetch, eligible)
        else:
            scores, slots = self.ann.search(query_embeddings, fetch, allowed=eligible)
        if excluded:
            drop = np.zeros(slots.shape, dtype=bool)
            for i, ex in enumerate(excluded):
                if len(ex):
                    drop[i] = np.isin(slots[i], ex)
            slots = np.where(drop, PAD_SLOT, slots)
            scores = np.where(drop, -np.inf, scores).astype(np.float32)
        scores, slots = _compact(scores, slots, num_candidates)
        # Approximate search can come back short under a selective filter: fall back to exact search there.
        found = (slots >= 0).sum(axis=1)
        base = self._active if eligible is None else eligible
        for i in np.flatnonzero(found < num_candidates):
            ex = excluded[i] if excluded else np.empty(0, dtype=np.int64)
            available = num_eligible - int(base[ex].sum())  # excluded slots are unique
            if found[i] >= min(num_candidates, available):
                continue
            allowed = base.copy()
            allowed[ex] = False
            row_scores, row_slots = self._exact(query_embeddings[i : i + 1], min(num_candidates, available), allowed)
            scores[i] = -np.inf
            slots[i] = PAD_SLOT
            scores[i, : row_slots.shape[1]] = row_scores[0]
            slots[i, : row_slots.shape[1]] = row_slots[0]
        return scores, slots

    def _exact(self, query_embeddings: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` over the allowed slots only (their embeddings gathered: cost grows with their count)."""
        subset = np.flatnonzero(allowed)
        return exact_search(np.asarray(self._embeddings[subset]), query_embeddings, k, slots=subset.astype(np.int64))

    def _top_k(self, scores: np.ndarray, slots: np.ndarray, k: int) -> SearchResults:
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top_scores = np.take_along_axis(scores, order, axis=1).astype(np.float32)
        top_slots = np.take_along_axis(slots, order, axis=1)
        top_slots = np.where(np.isfinite(top_scores), top_slots, PAD_SLOT)
        if top_slots.shape[1] < k:
            pad = k - top_slots.shape[1]
            top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            top_slots = np.pad(top_slots, ((0, 0), (0, pad)), constant_values=PAD_SLOT)
        valid = top_slots >= 0
        if self._id_kind == "str":
            item_ids = np.where(valid, self._ids[top_slots.clip(0)], PAD_STR_ID)
        else:
            item_ids = np.where(valid, self._ids[top_slots.clip(0)], PAD_INT_ID).astype(np.int64)
        return SearchResults(item_ids=item_ids, scores=top_scores, slots=top_slots.astype(np.int64))


# -- helpers -------------------------------------------------------------------------------------------------------


@contextmanager
def _omp_threads(count: int) -> Iterator[None]:
    """Sets FAISS's OpenMP threads for this calling thread (OpenMP keeps the setting per thread)."""
    import faiss

    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _trim_tokens(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops the trailing all-padding columns of the student's item text tokens (fewer compares per candidate)."""
    if "tokens" not in table or "num_distinct_tokens" not in table or not len(table["tokens"]):
        return table
    width = max(int(np.max(table["num_distinct_tokens"])), 1)
    # A contiguous copy: `take` on a strided view would copy the whole table on every call.
    return {**table, "tokens": np.ascontiguousarray(table["tokens"][:, :width])}


def _concatenate_rows(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Rows of ``new`` appended to ``old``; token tables of different widths are padded with -2 (no match)."""
    old = np.asarray(old)
    new = np.asarray(new).astype(old.dtype)
    if old.ndim == 2 and old.shape[1] != new.shape[1]:
        width = max(old.shape[1], new.shape[1])
        old = np.pad(old, ((0, 0), (0, width - old.shape[1])), constant_values=-2)
        new = np.pad(new, ((0, 0), (0, width - new.shape[1])), constant_values=-2)
    return np.concatenate([old, new])


def _compact(scores: np.ndarray, slots: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Moves padding to the end of each row (keeping order) and cuts or pads rows to ``width``."""
    if slots.shape[1] == width and (slots >= 0).all():
        return scores, slots  # the common case: nothing excluded, nothing missing
    order = np.argsort(slots < 0, axis=1, kind="stable")
    scores = np.take_along_axis(scores, order, axis=1)[:, :width]
    slots = np.take_along_axis(slots, order, axis=1)[:, :width]
    if slots.shape[1] < width:
        pad = width - slots.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        slots = np.pad(slots, ((0, 0), (0, pad)), constant_values=PAD_SLOT)
    return np.ascontiguousarray(scores, dtype=np.float32), np.ascontiguousarray(slots, dtype=np.int64)


def _check_k(k: Any, num_candidates: Any) -> tuple[int, int]:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= MAX_K:
        raise ValueError(f"`k` should be an integer in [1, {MAX_K}]. Received: k={k!r}")
    if (
        isinstance(num_candidates, bool)
        or not isinstance(num_candidates, numbers.Integral)
        or not 1 <= num_candidates <= MAX_K
    ):
        raise ValueError(
            f"`num_candidates` should be an integer in [k, {MAX_K}]. Received: num_candidates={num_candidates!r}"
        )
    if num_candidates < k:
        raise ValueError(
            f"`num_candidates` should be >= k (the re-ranker picks k of them). Received: num_candidates="
            f"{num_candidates}, k={k}"
        )
    return int(k), int(num_candidates)


def _as_query_list(queries: Query | Sequence[Query]) -> list[Query]:
    if isinstance(queries, Query):
        return [queries]
    if isinstance(queries, str | bytes | Mapping) or not isinstance(queries, Sequence):
        raise ValueError(
            f"`queries` should be a Query, a sequence of Query or a QueryBatch. Received: {type(queries).__name__}"
        )
    out = list(queries)
    for i, q in enumerate(out):
        if not isinstance(q, Query):
            raise ValueError(f"`queries[{i}]` should be a Query. Received: {type(q).__name__}")
    return out


def _is_collection(value: Any) -> bool:
    return isinstance(value, list | tuple | set | frozenset | np.ndarray | pd.Series)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(float(value))


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    return isinstance(value, str)


def _as_id_array(values: Any, name: str) -> np.ndarray:
    if isinstance(values, str | bytes) or not _is_collection(values):
        raise ValueError(f"`{name}` should be a sequence of item ids. Received: {values!r}")
    array = np.asarray(list(values), dtype=object)
    if len(array) and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in array):
        return array.astype(np.int64)
    return array


def _check_versions(directory: Path, manifest: Manifest) -> None:
    """Warns when the bundle was built with another major.minor FAISS or major numpy (files stay readable)."""
    import faiss

    current = {"faiss": (faiss.__version__, 2), "numpy": (np.__version__, 1)}
    for name, (version, parts) in current.items():
        built = manifest.versions.get(name)
        if built and built.split(".")[:parts] != version.split(".")[:parts]:
            logger.warning(
                "%s was built with %s %s and is loaded with %s %s: rebuild it if searches misbehave",
                directory,
                name,
                built,
                name,
                version,
            )


def _manifest_int(section: Mapping[str, Any], key: str, directory: Path) -> int:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ManifestError(
            f"{directory / 'manifest.json'}: items.{key} should be a non-negative integer. Received {value!r}"
        )
    return value


def _expect(path: Path, what: str, actual: Any, reference: str, expected: Any) -> None:
    if actual != expected:
        raise ManifestError(
            f"{path} has {actual} {what} but {reference} is {expected}: the bundle mixes files of different builds"
        )


def _load_npy(path: Path, *, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as e:
        raise ManifestError(f"{path} is not a readable .npy array: {e}") from e


def queries_from_batch(batch: QueryBatch) -> list[Query]:
    """The rows of a `features.QueryBatch` (e.g. held-out requests) as `Query` objects (user attributes are looked
    up in the bundle's user table, as for live queries)."""
    out = []
    for i in range(len(batch)):
        user = batch.user_id[i]
        user = None if user is None or (isinstance(user, float) and np.isnan(user)) else _python_scalar(user)
        text = batch.query[i]
        history = [_python_scalar(v) for v in batch.history[i, : int(batch.history_length[i])]]
        context = {c: _python_scalar(v[i]) for c, v in batch.context.items()}
        out.append(Query(user_id=user, text=text if isinstance(text, str) else "", history=history, context=context))
    return out


def _python_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def update_index(
    index_dir: str | Path,
    out_dir: str | Path,
    *,
    add: pd.DataFrame | None = None,
    remove: Sequence[Any] | None = None,
    replace: pd.DataFrame | None = None,
    overwrite: bool = False,
) -> Manifest:
    """The incremental-update job: applies removals, replacements and additions to a bundle, writes a new one.

    No full rebuild: new and replaced items are embedded with the bundle's own item tower and added to the
    existing FAISS index (IVF keeps its trained centroids: re-train with a full build when the catalog drifts far).

    Args:
        index_dir: The bundle to update (left untouched unless ``out_dir`` is the same path and ``overwrite``).
        out_dir: Where to write the updated bundle (its manifest records ``parent_build_id``).
        add: New item rows (same columns as the bundle's item table).
        remove: Item ids to remove.
        replace: Changed rows of existing items (re-embedded).
        overwrite: Whether to replace an existing ``out_dir`` atomically.

    Returns:
        The new bundle's manifest.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists: choose a new directory or pass overwrite=True")
    searcher = Searcher.load(index_dir)
    if remove is not None and len(remove):
        searcher.remove_items(remove)
    if replace is not None and len(replace):
        searcher.replace_items(replace)
    if add is not None and len(add):
        searcher.add_items(add)
    return searcher.save(out_dir, overwrite=overwrite)


__all__ = [
    "MAX_K",
    "PAD_INT_ID",
    "PAD_SLOT",
    "PAD_STR_ID",
    "Query",
    "SearchResults",
    "Searcher",
    "queries_from_batch",
    "update_index",
]
