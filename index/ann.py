"""The FAISS layer: build an inner-product index addressed by slot ids, search it with per-call parameters.

Items are addressed by int64 *slots* (row numbers in the bundle's item table, ``0..capacity - 1``) and FAISS ids are
slots, so a search result never needs a second id map. How the ids are attached depends on the index type, because
of what FAISS 1.15.1 does (each point checked in ``tests/index/test_ann.py``):

* IVF indexes (``"IVF1024,Flat"``, ``"IVF4096,PQ16"``, also behind a pre-transform such as ``"OPQ16,IVF1024,PQ16"``)
  store ids natively: the slots go straight into the inverted lists. Wrapping them in ``IndexIDMap2`` is wrong as
  soon as anything is removed: ``IndexIDMap2.remove_ids`` compacts its id map while the IVF keeps its old internal
  ids, so afterwards searches return the wrong slots (measured: self-hit rate 1.0 -> 0.0 after removing 100 of 3,000
  vectors) and later adds reuse internal ids that are still present.
* Every other type (``"Flat"``, ``"HNSW32"``, ``"SQ8"``, ``"HNSW32_SQ8"``) sits inside an ``IndexIDMap2``, whose
  search translates an ID selector from slots to internal ids.

Filtering (``allowed``) goes through an ``IDSelectorBitmap`` inside a ``SearchParameters*`` object made for each call,
so nothing shared is mutated and concurrent searches from many threads are safe. FAISS honours the selector for
Flat, IVF (Flat, PQ, SQ, with or without pre-transform) and HNSW: no result outside the mask, ever. Types whose search
rejects per-call parameters (``"PQ16"`` without IVF, refined ``"...,RFlat"``) are refused at build and read time.

Filtered *recall* is another matter: FAISS filters while it searches, so a selective mask starves the search. On 50k
clustered 32-d vectors, recall@10 with a mask allowing 10% / 2% / 0.5% of the items was 0.98 / 0.56 / 0.14 for
HNSW32 (efSearch 128; it also returns fewer than k results) and 1.00 / 0.91 / 0.51 for IVF256 with nprobe 8, while
Flat stays exact. Callers that filter hard should search the allowed subset exactly (``exact_search``); the Searcher
does this for small subsets.

Threads: this module never sets FAISS's global OpenMP thread count. Builds and batched searches use whatever the
process set (``faiss.omp_set_num_threads``); the Searcher keeps single queries on one thread.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

__all__ = [
    "FLAT_MAX_ITEMS",
    "AnnIndex",
    "IndexConfig",
    "default_factory",
    "default_nlist",
    "default_nprobe",
    "exact_search",
    "recall_at_k",
]

logger = logging.getLogger(__name__)

FLAT_MAX_ITEMS = 50_000
"""Catalogs up to this size get an exact ``"Flat"`` index (one query scans 50k x 64 floats in < ~1 ms)."""

MIN_POINTS_PER_LIST = 39
"""FAISS's k-means warns below 39 training points per centroid; nlist is capped so every list gets that many."""

_NLIST_MULTIPLE = 64
_MIN_SCANNED = 8192  # default nprobe scans at least ~8k vectors (~40 x k for k=200 candidates), see `default_nprobe`
_PROBED_FRACTION = 256  # ... and at least 1/256 of the lists
_MIN_TRAIN_SIZE = 10_000  # >= 39 x 256: enough for 8-bit PQ codebooks
_TRAIN_PER_LIST = 50
_ID_BYTES = 8  # an IVF stores one int64 id beside each code
_EXACT_CHUNK_ELEMENTS = 1 << 24  # exact_search scores at most 16M (64 MiB) query x item pairs at once
_FACTORY_EXAMPLES = "Examples: 'Flat', 'HNSW32', 'IVF1024,Flat', 'IVF1024,PQ16'"
_HNSW_REMOVE_MESSAGE = (
    "HNSW indexes cannot remove vectors in FAISS: rebuild the index, or mask the items at search time "
    "(Searcher does this)"
)


@dataclass(frozen=True)
class IndexConfig:
    """How to build an `AnnIndex` and search it by default.

    Attributes:
        factory: A FAISS factory string (``"Flat"``, ``"HNSW32"``, ``"IVF1024,Flat"``, ``"IVF4096,PQ16"``,
            ``"IVF4000,SQ8"``, ...), or None for `default_factory` of the catalog's size and dimension.
        nprobe: IVF lists probed per query, or None for `default_nprobe`. Ignored by non-IVF indexes, so one
            config fits whatever `default_factory` picks; values above nlist probe every list.
        ef_search: HNSW candidate-list size at search time (FAISS uses ``max(ef_search, k)``).
        ef_construction: HNSW candidate-list size while building the graph.
        train_size: Vectors sampled (seeded, without replacement) to train IVF / PQ / SQ, or None for
            ``min(num_items, max(50 * nlist, 10_000))``: 50 points per list (FAISS wants >= 39) and at least
            10,000 (>= 39 x 256 for 8-bit PQ codebooks).
        memory_budget_bytes: When raw float32 vectors exceed it, `default_factory` picks an IVF-PQ index.
        add_batch_size: Vectors added to FAISS per call while building.
        seed: Seeds the training sample and FAISS's k-means.

    Example:
        >>> IndexConfig(factory="IVF1024,Flat", nprobe=8).to_dict()["nprobe"]
        8
    """

    factory: str | None = None
    nprobe: int | None = None
    ef_search: int = 128
    ef_construction: int = 40
    train_size: int | None = None
    memory_budget_bytes: int | None = None
    add_batch_size: int = 100_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.factory is not None and (not isinstance(self.factory, str) or not self.factory.strip()):
            raise ValueError(
                f"`factory` should be a FAISS factory string or None ({_FACTORY_EXAMPLES}). "
                f"Received: factory={self.factory!r}"
            )
        for name in ("nprobe", "train_size", "memory_budget_bytes"):
            value = getattr(self, name)
            if value is not None and not _is_positive_int(value):
                raise ValueError(f"`{name}` should be a positive integer or None. Received: {name}={value!r}")
        for name in ("ef_search", "ef_construction", "add_batch_size"):
            value = getattr(self, name)
            if not _is_positive_int(value):
                raise ValueError(f"`{name}` should be a positive integer. Received: {name}={value!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"`seed` should be a non-negative integer. Received: seed={self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> IndexConfig:
        """The inverse of `to_dict`; missing keys take their defaults.

        Raises:
            ValueError: When ``mapping`` has keys that are not fields, or a value is invalid.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"Unknown IndexConfig keys: {unknown}. Known keys: {sorted(known)}")
        return cls(**mapping)


def default_nlist(num_items: int) -> int:
    """IVF lists for ``num_items`` vectors: ~2 x sqrt(n), a multiple of 64, capped so each list gets 39 points.

    Fewer, longer lists than FAISS's 4-16 x sqrt(n) guideline, for build time: k-means costs grow with
    lists x training points, and both halve. Measured on the 1M-item benchmark catalog (64-d tower embeddings,
    2 cores): ``IVF4032`` trained on 201,600 vectors in 39 s and added 1M in 21 s; ``IVF1984``-``IVF2048`` on 50
    points per list in 12 s + 12 s, at the same single-query latency (~0.45 ms for k=200, probing ~8k vectors)
    and recall@100 0.997 vs 0.987 (tie-tolerant, perturbed-item queries).
    """
    nlist = max(_NLIST_MULTIPLE, int(2 * math.sqrt(num_items) / _NLIST_MULTIPLE + 0.5) * _NLIST_MULTIPLE)
    return max(1, min(nlist, num_items // MIN_POINTS_PER_LIST))


def default_nprobe(nlist: int, num_items: int) -> int:
    """IVF lists probed by default: enough to scan >= 8,192 vectors and >= 1/256 of the lists.

    ``min(nlist, max(ceil(nlist / 256), ceil(8192 * nlist / num_items)))``. The scan floor (~40 x 200 candidates)
    governs up to ~10M items; the list fraction governs above, where lists get finer and a neighbourhood spans more
    of them. At 1M items and 1,984 lists: 17 probes. The first version scanned >= 4,096 vectors; on the 1M-item
    benchmark's real query embeddings that gave recall@100 0.93 (strict), hence the larger floor. Measured on 1M
    normalised 64-d vectors around 2,000 gaussian centres (per-dimension sigma 0.12, 200 queries, 2 shared cores):
    recall@100 0.999 at nprobe 17 (0.73 at nprobe 1, 0.995 at 4), 0.33 ms p50 a single query on one thread;
    PERF-NOTES has 0.986 at nprobe 16 for its data. Recall depends on the data: with sigma 0.15 (clusters
    drowning in isotropic noise) nprobe 17 / 32 gave only 0.89 / 0.91, so measure on real embeddings and set
    ``IndexConfig.nprobe`` when needed.
    """
    if num_items <= 0:
        return max(1, min(nlist, math.ceil(nlist / _PROBED_FRACTION)))
    by_fraction = math.ceil(nlist / _PROBED_FRACTION)
    by_scan = math.ceil(_MIN_SCANNED * nlist / num_items)
    return max(1, min(nlist, max(by_fraction, by_scan)))


def default_factory(num_items: int, dim: int, *, memory_budget_bytes: int | None = None) -> str:
    """The FAISS factory string to use for a catalog of ``num_items`` vectors of dimension ``dim``.

    * ``"Flat"`` up to `FLAT_MAX_ITEMS` (50,000) items: exact, nothing to train, and one query scans 50k x 64
      floats in under ~1 ms on one core (the 1M-item numpy scan measured 17 ms).
    * ``"IVF{nlist},Flat"`` above, with nlist from `default_nlist` (~2 x sqrt(n), 1M -> 1,984): at 1M clustered
      items ~0.3 ms a query for recall@100 ~0.99 with `default_nprobe` (details there).
    * ``"IVF{nlist},PQ{m}"`` whenever the raw vectors (``num_items * dim * 4`` bytes) exceed
      ``memory_budget_bytes``, at any size. ``m`` is the largest divisor of ``dim`` up to ``dim // 4`` (one byte per
      >= 4 dimensions, 16x smaller than float32) whose codes plus int64 ids (``num_items * (m + 8)`` bytes) fit the
      budget. Below 9,984 items (39 x 256) the codebooks get 4 bits (``"PQ{m}x4"``), which trains on fewer points.
      PQ trades recall for memory (scores are approximate), so prefer ``"IVF{nlist},SQ8"`` (4x smaller, measured
      recall@100 0.973) when it fits: pass it as ``IndexConfig.factory``.

    Raises:
        ValueError: When an argument is not a positive integer, or the budget cannot be met (even one-byte codes
            do not fit, or too few items (< 624) to train PQ codebooks).

    Example:
        >>> default_factory(10_000, 64), default_factory(1_000_000, 64)
        ('Flat', 'IVF1984,Flat')
        >>> default_factory(1_000_000, 64, memory_budget_bytes=100_000_000)
        'IVF1984,PQ16'
    """
    if not _is_positive_int(num_items):
        raise ValueError(f"`num_items` should be a positive integer. Received: num_items={num_items!r}")
    if not _is_positive_int(dim):
        raise ValueError(f"`dim` should be a positive integer. Received: dim={dim!r}")
    if memory_budget_bytes is not None and not _is_positive_int(memory_budget_bytes):
        raise ValueError(
            f"`memory_budget_bytes` should be a positive integer or None. Received: "
            f"memory_budget_bytes={memory_budget_bytes!r}"
        )
    raw_bytes = num_items * dim * 4
    if memory_budget_bytes is None or raw_bytes <= memory_budget_bytes:
        return "Flat" if num_items <= FLAT_MAX_ITEMS else f"IVF{default_nlist(num_items)},Flat"
    nbits = 8 if num_items >= MIN_POINTS_PER_LIST * 256 else 4
    if num_items < MIN_POINTS_PER_LIST * (1 << nbits):
        raise ValueError(
            f"The {raw_bytes} bytes of raw vectors exceed memory_budget_bytes={memory_budget_bytes}, but "
            f"{num_items} items are too few to train PQ codebooks (>= {MIN_POINTS_PER_LIST * 16} needed): raise "
            "`memory_budget_bytes` or pass factory='Flat'"
        )
    for m in sorted((m for m in range(1, max(1, dim // 4) + 1) if dim % m == 0), reverse=True):
        if num_items * (math.ceil(m * nbits / 8) + _ID_BYTES) <= memory_budget_bytes:
            suffix = "" if nbits == 8 else f"x{nbits}"
            return f"IVF{default_nlist(num_items)},PQ{m}{suffix}"
    raise ValueError(
        f"memory_budget_bytes={memory_budget_bytes} is too small for {num_items} items: even one-byte PQ codes "
        f"plus int64 ids need {num_items * (1 + _ID_BYTES)} bytes. Raise `memory_budget_bytes` or pass an explicit "
        "`factory`"
    )


class AnnIndex:
    """A FAISS index addressed by slot ids, with its search parameters; thread-safe searches.

    Build one with `build`, load one with `read`. `search` may run from many threads at once (each call makes its
    own ``SearchParameters``); `add` and `remove` must not overlap searches or each other.

    Attributes:
        factory: The FAISS factory string it was built from.
        dim: Embedding dimension.
        nprobe: Default IVF lists probed, or None when the index is not IVF.
        ef_search: Default HNSW efSearch, or None when the index is not HNSW.

    Example:
        >>> x = np.eye(4, dtype=np.float32)
        >>> index = AnnIndex.build(x, slots=np.array([7, 3, 5, 0]), config=IndexConfig(factory="Flat"))
        >>> allowed = np.zeros(8, dtype=bool)
        >>> allowed[[3, 7]] = True
        >>> scores, slots = index.search(x[:1], k=3, allowed=allowed)
        >>> slots.tolist(), scores.tolist()
        ([[7, 3, -1]], [[1.0, 0.0, -inf]])
    """

    def __init__(self, index: faiss.Index, *, factory: str, nprobe: int | None, ef_search: int | None) -> None:
        """Wraps a FAISS index written by this class; use `build` or `read` rather than calling this directly.

        Raises:
            ValueError: When ``index`` is neither an IVF index (ids stored natively) nor an ``IndexIDMap2``.
        """
        self._index = faiss.downcast_index(index) if type(index) is faiss.Index else index
        self._ivf: faiss.IndexIVF | None = None
        self._inner: faiss.Index | None = None
        if isinstance(self._index, faiss.IndexIDMap2):
            self._inner = faiss.downcast_index(self._index.index)
            stored = faiss.vector_to_array(self._index.id_map)
        elif _is_native_ivf(self._index):
            self._ivf = faiss.extract_index_ivf(self._index)
            stored = _ivf_ids(self._ivf)
        else:
            raise ValueError(
                f"AnnIndex needs slot ids: an IVF index or an IndexIDMap2, not {type(self._index).__name__}"
            )
        self.factory = factory
        self.dim = int(self._index.d)
        if self._ivf is not None:
            self.nprobe: int | None = min(nprobe or default_nprobe(self._ivf.nlist, self.ntotal), self._ivf.nlist)
        else:
            self.nprobe = None
        self.ef_search: int | None = (ef_search or IndexConfig.ef_search) if self._is_hnsw else None
        self._slots = np.sort(stored.astype(np.int64, copy=False))

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        slots: np.ndarray | None = None,
        config: IndexConfig | None = None,
        *,
        progress: bool = False,
    ) -> AnnIndex:
        """Trains (when the type needs it) and fills an index.

        Args:
            embeddings: ``[num_items, dim]`` float32, finite, L2-normalised (similarity is inner product).
            slots: ``[num_items]`` distinct non-negative integer slots, one per row; defaults to ``arange``.
            config: Index type and parameters; defaults to ``IndexConfig()``.
            progress: Show a tqdm progress bar while adding.

        Returns:
            The index, holding every row under its slot.

        Raises:
            ValueError: For invalid inputs, or when FAISS cannot build or train ``config.factory``.
        """
        config = config or IndexConfig()
        embeddings = _check_embeddings("embeddings", embeddings)
        num_items, dim = embeddings.shape
        if num_items == 0:
            raise ValueError(f"`embeddings` should have at least one row. Received: shape={embeddings.shape}")
        slots = _check_slots(slots, num_items)
        factory = config.factory or default_factory(num_items, dim, memory_budget_bytes=config.memory_budget_bytes)
        base = _make_index(dim, factory)
        if isinstance(base, faiss.IndexHNSW):
            base.hnsw.efConstruction = config.ef_construction
        native = _is_native_ivf(base)
        ivf = faiss.extract_index_ivf(base) if native else None
        if ivf is not None:
            ivf.cp.seed = config.seed
        if not base.is_trained:
            nlist = ivf.nlist if ivf is not None else 0
            size = config.train_size or max(_TRAIN_PER_LIST * nlist, _MIN_TRAIN_SIZE)
            size = min(num_items, size)
            rows = np.sort(np.random.default_rng(config.seed).choice(num_items, size=size, replace=False))
            logger.info("training %s on %d of %d vectors", factory, size, num_items)
            started = time.perf_counter()
            try:
                base.train(np.ascontiguousarray(embeddings[rows]))
            except RuntimeError as e:
                raise ValueError(
                    f"`factory` {factory!r} could not be trained by FAISS on {size} vectors: {_faiss_message(e)}. "
                    "Use fewer IVF lists (each needs >= 39 training points), a larger `train_size`, or 'Flat'"
                ) from e
            logger.info("trained %s in %.1f s", factory, time.perf_counter() - started)
        wrapped = base if native else faiss.IndexIDMap2(base)
        # The default nprobe depends on the final size, which `cls` cannot see before the adds.
        nprobe = config.nprobe or (default_nprobe(ivf.nlist, num_items) if ivf is not None else None)
        index = cls(wrapped, factory=factory, nprobe=nprobe, ef_search=config.ef_search)
        index._check_search_parameters(f"`factory` {factory!r}")
        index._add_batches(embeddings, slots, batch_size=config.add_batch_size, progress=progress)
        logger.info("built %r", index)
        return index

    @classmethod
    def read(
        cls, path: str | Path, *, factory: str, nprobe: int | None = None, ef_search: int | None = None
    ) -> AnnIndex:
        """Loads an index written by `write`.

        Args:
            path: The index file.
            factory: The factory string it was built from (from the manifest).
            nprobe: Default IVF lists probed; None for `default_nprobe`. Ignored by non-IVF indexes.
            ef_search: Default HNSW efSearch; None for ``IndexConfig.ef_search``. Ignored by non-HNSW indexes.

        Raises:
            FileNotFoundError: When ``path`` does not exist.
            ValueError: When FAISS cannot read the file, or it holds an index without slot ids.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"FAISS index file {path} does not exist")
        for name, value in (("nprobe", nprobe), ("ef_search", ef_search)):
            if value is not None and not _is_positive_int(value):
                raise ValueError(f"`{name}` should be a positive integer or None. Received: {name}={value!r}")
        try:
            raw = faiss.read_index(str(path))
        except RuntimeError as e:
            raise ValueError(f"{path} is not a readable FAISS index: {_faiss_message(e)}") from e
        try:
            index = cls(raw, factory=factory, nprobe=nprobe, ef_search=ef_search)
        except ValueError as e:
            raise ValueError(f"{path} was not written by AnnIndex.write: {e}") from e
        index._check_search_parameters(str(path))
        return index

    def write(self, path: str | Path) -> None:
        """Writes the index to ``path`` (overwriting it); the caller makes directories atomic.

        Raises:
            FileNotFoundError: When the parent directory does not exist.
            OSError: When FAISS cannot write the file.
        """
        path = Path(path)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"cannot write {path}: directory {path.parent} does not exist")
        try:
            faiss.write_index(self._index, str(path))
        except RuntimeError as e:
            raise OSError(f"FAISS could not write {path}: {_faiss_message(e)}") from e

    @property
    def ntotal(self) -> int:
        """Vectors in the index."""
        return int(self._index.ntotal)

    @property
    def supports_removal(self) -> bool:
        """Whether `remove` works: True for IVF and flat-code indexes, False for HNSW (graphs cannot drop nodes)."""
        return self._ivf is not None or isinstance(self._inner, faiss.IndexFlatCodes)

    @property
    def nlist(self) -> int | None:
        """IVF lists, or None for non-IVF indexes."""
        return None if self._ivf is None else int(self._ivf.nlist)

    @property
    def _is_hnsw(self) -> bool:
        return isinstance(self._inner, faiss.IndexHNSW)

    def __repr__(self) -> str:
        return (
            f"AnnIndex(factory={self.factory!r}, dim={self.dim}, ntotal={self.ntotal}, nprobe={self.nprobe}, "
            f"ef_search={self.ef_search})"
        )

    def contains(self, slots: np.ndarray) -> np.ndarray:
        """Whether each slot is in the index: a bool array shaped like ``slots``."""
        slots = np.asarray(slots)
        if slots.size and not np.issubdtype(slots.dtype, np.integer):
            raise ValueError(f"`slots` should hold integers. Received: dtype={slots.dtype}")
        slots = slots.astype(np.int64, copy=False)
        if self._slots.size == 0:
            return np.zeros(slots.shape, dtype=bool)
        positions = np.searchsorted(self._slots, slots).clip(max=self._slots.size - 1)
        return self._slots[positions] == slots

    def search(
        self,
        query_embeddings: np.ndarray,
        k: int,
        *,
        allowed: np.ndarray | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` slots by inner product for each query.

        Args:
            query_embeddings: ``[num_queries, dim]`` float32 (float64 is cast).
            k: Results per query.
            allowed: Optional bool mask over slots, ``[capacity]`` with ``capacity > `` the largest slot in the
                index; only slots where it is True are returned (see the module docstring on recall).
            nprobe: IVF lists probed for this call (default: ``self.nprobe``; clipped to nlist; ignored by non-IVF).
            ef_search: HNSW efSearch for this call (default: ``self.ef_search``; ignored by non-HNSW).

        Returns:
            ``(scores, slots)``: ``[num_queries, k]`` float32 scores in descending order and int64 slots, padded with
            ``-inf`` / ``-1`` where fewer than ``k`` results exist.
        """
        k = _check_k(k)
        queries = _check_queries(query_embeddings, self.dim)
        for name, value in (("nprobe", nprobe), ("ef_search", ef_search)):
            if value is not None and not _is_positive_int(value):
                raise ValueError(f"`{name}` should be a positive integer or None. Received: {name}={value!r}")
        bits = None if allowed is None else np.packbits(self._check_allowed(allowed), bitorder="little")
        # The selector reads `bits` without owning it: `bits` stays referenced until the search returns.
        selector = None if bits is None else faiss.IDSelectorBitmap(bits.size, faiss.swig_ptr(bits))
        params = self._search_parameters(selector, nprobe=nprobe, ef_search=ef_search)
        if queries.shape[0] == 0:
            return np.zeros((0, k), dtype=np.float32), np.zeros((0, k), dtype=np.int64)
        distances, labels = self._index.search(queries, k, params=params)
        found = labels >= 0
        scores = np.where(found, distances, -np.inf).astype(np.float32, copy=False)
        return scores, np.where(found, labels, -1).astype(np.int64, copy=False)

    def add(self, embeddings: np.ndarray, slots: np.ndarray) -> None:
        """Adds rows under new slots.

        Args:
            embeddings: ``[num_new, dim]`` float32, finite.
            slots: ``[num_new]`` distinct non-negative slots, none already in the index.

        Raises:
            ValueError: For invalid inputs, or slots already present (the first few are named).
        """
        embeddings = _check_embeddings("embeddings", embeddings, dim=self.dim)
        slots = _check_slots(slots, embeddings.shape[0])
        present = slots[self.contains(slots)]
        if present.size:
            raise ValueError(
                f"{present.size} of the slots are already in the index, e.g. {present[:5].tolist()}: remove them "
                "first or use new slots"
            )
        self._add_batches(embeddings, slots, batch_size=IndexConfig.add_batch_size, progress=False)

    def remove(self, slots: np.ndarray) -> int:
        """Removes the given slots (absent ones are ignored) and returns how many were removed.

        Raises:
            NotImplementedError: For HNSW indexes (and other types FAISS cannot remove from).
        """
        if self._is_hnsw:
            raise NotImplementedError(_HNSW_REMOVE_MESSAGE)
        if not self.supports_removal:
            raise NotImplementedError(
                f"{type(self._inner).__name__} indexes ({self.factory!r}) cannot remove vectors in FAISS: rebuild "
                "the index, or mask the items at search time (Searcher does this)"
            )
        slots = np.asarray(slots)
        if slots.ndim != 1 or (slots.size and not np.issubdtype(slots.dtype, np.integer)):
            raise ValueError(f"`slots` should be a 1-D integer array. Received: shape={slots.shape}, {slots.dtype}")
        slots = np.unique(slots.astype(np.int64, copy=False))
        if slots.size == 0:
            return 0
        removed = int(self._index.remove_ids(faiss.IDSelectorBatch(slots)))
        self._slots = self._slots[~np.isin(self._slots, slots, assume_unique=True)]
        return removed

    def _add_batches(self, embeddings: np.ndarray, slots: np.ndarray, *, batch_size: int, progress: bool) -> None:
        with tqdm(total=len(slots), unit="vec", desc="faiss add", disable=not progress) as bar:
            for start in range(0, len(slots), batch_size):
                stop = start + batch_size
                self._index.add_with_ids(np.ascontiguousarray(embeddings[start:stop]), slots[start:stop])
                bar.update(len(slots[start:stop]))
        self._slots = np.sort(np.concatenate([self._slots, slots]))

    def _check_allowed(self, allowed: np.ndarray) -> np.ndarray:
        allowed = np.asarray(allowed)
        capacity = int(self._slots[-1]) + 1 if self._slots.size else 0
        if allowed.dtype != np.bool_ or allowed.ndim != 1 or allowed.shape[0] < capacity:
            raise ValueError(
                f"`allowed` should be a 1-D bool mask over slots with at least {capacity} entries (the largest slot "
                f"in the index is {capacity - 1}). Received: shape={allowed.shape}, dtype={allowed.dtype}"
            )
        return allowed

    def _search_parameters(
        self, selector: faiss.IDSelector | None, *, nprobe: int | None, ef_search: int | None
    ) -> faiss.SearchParameters:
        # A fresh object per call: IndexIDMap2 temporarily swaps its selector for a translated one during search.
        extra: dict[str, Any] = {} if selector is None else {"sel": selector}
        if self._ivf is not None:
            probes = min(nprobe or self.nprobe or 1, int(self._ivf.nlist))
            return faiss.SearchParametersIVF(nprobe=probes, **extra)
        if self._is_hnsw:
            return faiss.SearchParametersHNSW(efSearch=ef_search or self.ef_search or IndexConfig.ef_search, **extra)
        return faiss.SearchParameters(**extra)

    def _check_search_parameters(self, what: str) -> None:
        """Fails early for index types whose search rejects per-call parameters (e.g. IndexPQ, IndexRefine)."""
        bits = np.zeros(1, dtype=np.uint8)
        params = self._search_parameters(faiss.IDSelectorBitmap(1, faiss.swig_ptr(bits)), nprobe=None, ef_search=None)
        try:
            self._index.search(np.zeros((1, self.dim), dtype=np.float32), 1, params=params)
        except RuntimeError as e:
            raise ValueError(
                f"{what} cannot be searched with per-call parameters and ID selectors in FAISS "
                f"({_faiss_message(e)}). Use an IVF, HNSW, Flat or SQ index, e.g. 'IVF1,PQ16' for an exhaustive PQ "
                "scan"
            ) from e


def exact_search(
    embeddings: np.ndarray,
    query_embeddings: np.ndarray,
    k: int,
    *,
    allowed: np.ndarray | None = None,
    slots: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The exact top ``k`` by inner product: the numpy reference for ground truth and small filtered subsets.

    Scores are ``query_embeddings @ embeddings.T`` in float32; equal scores are ordered by lower slot, also at the
    k-th place (argpartition, then an exact stable sort for the rare rows whose k-th score is tied).

    Args:
        embeddings: ``[num_items, dim]`` float.
        query_embeddings: ``[num_queries, dim]`` float.
        k: Results per query.
        allowed: Optional bool mask over slots (``[capacity]``, ``capacity > max(slots)``); only those are scored,
            so the cost scales with the allowed count.
        slots: ``[num_items]`` distinct slots of the rows; defaults to ``arange(num_items)``.

    Returns:
        ``(scores, slots)`` as `AnnIndex.search`: ``[num_queries, k]`` float32 descending and int64, padded with
        ``-inf`` / ``-1``.
    """
    k = _check_k(k)
    items = _check_embeddings("embeddings", embeddings, cast=True)
    queries = _check_queries(query_embeddings, items.shape[1])
    row_slots = _check_slots(slots, items.shape[0])
    if allowed is not None:
        mask = np.asarray(allowed)
        capacity = int(row_slots.max()) + 1 if row_slots.size else 0
        if mask.dtype != np.bool_ or mask.ndim != 1 or mask.shape[0] < capacity:
            raise ValueError(
                f"`allowed` should be a 1-D bool mask over slots with at least {capacity} entries. "
                f"Received: shape={mask.shape}, dtype={mask.dtype}"
            )
        rows = np.flatnonzero(mask[row_slots])
        items, row_slots = items[rows], row_slots[rows]
    num_queries, num_items = queries.shape[0], items.shape[0]
    scores = np.full((num_queries, k), -np.inf, dtype=np.float32)
    result_slots = np.full((num_queries, k), -1, dtype=np.int64)
    kk = min(k, num_items)
    if kk == 0:
        return scores, result_slots
    chunk = max(1, _EXACT_CHUNK_ELEMENTS // num_items)
    for start in range(0, num_queries, chunk):
        block = queries[start : start + chunk] @ items.T  # [chunk, num_items]
        top = _top_k_columns(block, row_slots, kk)
        scores[start : start + chunk, :kk] = np.take_along_axis(block, top, axis=1)
        result_slots[start : start + chunk, :kk] = row_slots[top]
    return scores, result_slots


def recall_at_k(approx_slots: np.ndarray, exact_slots: np.ndarray) -> np.ndarray:
    """Per-query recall: ``|approx ∩ exact| / |exact|``, ignoring ``-1`` padding on both sides.

    Args:
        approx_slots: ``[num_queries, k_approx]`` integer slots (distinct per row), ``-1`` for padding.
        exact_slots: ``[num_queries, k_exact]`` the true top slots, ``-1`` for padding.

    Returns:
        ``[num_queries]`` float64; NaN for queries whose ``exact_slots`` row holds no slot at all (the caller
        decides how to average and reports how many there were).

    Example:
        >>> recall_at_k(np.array([[1, 2, 3], [4, -1, -1]]), np.array([[3, 1, 9], [-1, -1, -1]])).tolist()
        [0.6666666666666666, nan]
    """
    approx = np.asarray(approx_slots)
    exact = np.asarray(exact_slots)
    for name, array in (("approx_slots", approx), ("exact_slots", exact)):
        if array.ndim != 2 or (array.size and not np.issubdtype(array.dtype, np.integer)):
            raise ValueError(
                f"`{name}` should be a 2-D integer array [num_queries, k]. Received: shape={array.shape}, "
                f"dtype={array.dtype}"
            )
    if approx.shape[0] != exact.shape[0]:
        raise ValueError(
            f"`approx_slots` has {approx.shape[0]} queries but `exact_slots` has {exact.shape[0]}: they should match"
        )
    approx = approx.astype(np.int64, copy=False)
    exact = exact.astype(np.int64, copy=False)
    # Offset each row's slots by row * span so one `isin` compares rows independently.
    span = max(int(approx.max(initial=0)), int(exact.max(initial=0))) + 1
    offsets = np.arange(exact.shape[0], dtype=np.int64)[:, None] * span
    approx_found, exact_found = approx >= 0, exact >= 0
    hits = np.zeros(approx.shape, dtype=bool)
    hits[approx_found] = np.isin((approx + offsets)[approx_found], (exact + offsets)[exact_found])
    relevant = exact_found.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(relevant > 0, hits.sum(axis=1) / relevant, np.nan)


def _top_k_columns(block: np.ndarray, row_slots: np.ndarray, k: int) -> np.ndarray:
    """Columns of the top ``k`` of each row of ``block``, by descending score then ascending slot."""
    num_items = block.shape[1]
    if k < num_items:
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(block, top, axis=1).min(axis=1)
        # argpartition breaks a tie at the k-th place arbitrarily: redo those rows with an exact ordering.
        for row in np.flatnonzero((block >= kth[:, None]).sum(axis=1) > k):
            top[row] = np.lexsort((row_slots, -block[row]))[:k]
    else:
        top = np.broadcast_to(np.arange(num_items), block.shape).copy()
    order = np.lexsort((row_slots[top], -np.take_along_axis(block, top, axis=1)), axis=1)
    return np.take_along_axis(top, order, axis=1)


def _make_index(dim: int, factory: str) -> faiss.Index:
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(
            f"`factory` {factory!r} could not be built by FAISS: {_faiss_message(e)}. {_FACTORY_EXAMPLES}"
        ) from e
    if isinstance(index, faiss.IndexIDMap):
        raise ValueError(
            f"`factory` {factory!r} could not be built by FAISS: drop the IDMap prefix, AnnIndex maps ids to slots "
            f"itself. {_FACTORY_EXAMPLES}"
        )
    return index


def _is_native_ivf(index: faiss.Index) -> bool:
    """IVF indexes (optionally behind pre-transforms) take ``add_with_ids`` and ``remove_ids`` natively."""
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return isinstance(index, faiss.IndexIVF)


def _ivf_ids(ivf: faiss.IndexIVF) -> np.ndarray:
    """Every id stored in the inverted lists."""
    invlists = ivf.invlists
    parts = []
    for list_no in range(ivf.nlist):
        size = invlists.list_size(list_no)
        if size:
            pointer = invlists.get_ids(list_no)
            parts.append(faiss.rev_swig_ptr(pointer, size).copy())
            invlists.release_ids(list_no, pointer)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _faiss_message(error: Exception) -> str:
    """The useful line of a FAISS exception (they start with the C++ signature and source location)."""
    text = str(error).strip()
    marker = "Error: "
    if marker in text:
        return text[text.rindex(marker) + len(marker) :]
    return text.splitlines()[-1] if text else type(error).__name__


def _check_embeddings(name: str, embeddings: np.ndarray, *, dim: int | None = None, cast: bool = False) -> np.ndarray:
    if not isinstance(embeddings, np.ndarray):
        raise ValueError(f"`{name}` should be a numpy array. Received: {type(embeddings).__name__}")
    expected = f"[num_items, {dim}]" if dim is not None else "[num_items, dim]"
    if embeddings.ndim != 2 or embeddings.shape[1] == 0 or (dim is not None and embeddings.shape[1] != dim):
        raise ValueError(f"`{name}` should be a 2-D array {expected}. Received: shape={embeddings.shape}")
    if embeddings.dtype != np.float32:
        if not (cast and np.issubdtype(embeddings.dtype, np.floating)):
            raise ValueError(
                f"`{name}` should be float32. Received: dtype={embeddings.dtype} (cast with .astype(np.float32))"
            )
        embeddings = embeddings.astype(np.float32)
    batch = 1 << 20  # bounds the temporary of isfinite
    for start in range(0, embeddings.shape[0], batch):
        if not np.isfinite(embeddings[start : start + batch]).all():
            bad = start + int(np.flatnonzero(~np.isfinite(embeddings[start : start + batch]).all(axis=1))[0])
            raise ValueError(f"`{name}` should be finite. Received: NaN or inf in row {bad}")
    return embeddings


def _check_queries(query_embeddings: np.ndarray, dim: int) -> np.ndarray:
    queries = np.asarray(query_embeddings)
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise ValueError(f"`query_embeddings` should have shape [num_queries, {dim}]. Received: shape={queries.shape}")
    if not np.issubdtype(queries.dtype, np.floating):
        raise ValueError(f"`query_embeddings` should be float32 (or float64). Received: dtype={queries.dtype}")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if not np.isfinite(queries).all():
        raise ValueError("`query_embeddings` should be finite. Received: NaN or inf")
    return queries


def _check_slots(slots: np.ndarray | None, num_rows: int, *, name: str = "slots") -> np.ndarray:
    """Distinct non-negative int64 labels, one per row (``None``: ``0..num_rows-1``); errors say ``name``."""
    if slots is None:
        return np.arange(num_rows, dtype=np.int64)
    array = np.asarray(slots)
    if array.ndim != 1 or array.shape[0] != num_rows:
        raise ValueError(f"`{name}` should have shape [{num_rows}] (one per row). Received: shape={array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"`{name}` should hold integers (int64). Received: dtype={array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size and array.min() < 0:
        raise ValueError(f"`{name}` should be non-negative (-1 is the padding label). Received: min={array.min()}")
    unique, counts = np.unique(array, return_counts=True)
    if unique.size != array.size:
        raise ValueError(f"`{name}` should be distinct. Received duplicates, e.g. {unique[counts > 1][:5].tolist()}")
    return np.ascontiguousarray(array)


def _check_k(k: int) -> int:
    if not _is_positive_int(k):
        raise ValueError(f"`k` should be a positive integer. Received: k={k!r}")
    return int(k)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_positive_int(value: object) -> bool:
    return _is_int(value) and int(value) > 0  # type: ignore[call-overload]
