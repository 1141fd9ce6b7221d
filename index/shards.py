"""Build a FAISS IVF index in shards: engine-neutral functions over paths and arrays.

Each step is a pure function of its inputs and writes its result to a path, so any engine can schedule it: the
local loop `build_sharded` now, remote tasks later (each task needs only the paths and its own rows)::

    train_empty_index(sample)           once: coarse centroids (and PQ/SQ codebooks) of the trained, empty index
      -> write_empty_index(path)        the file every shard starts from
    add_shard(empty, rows, ids, path)   per shard, in parallel: the shard's vectors under their int64 ids (slots)
    merge_shards(shard_paths, out_dir)  once: the inverted lists concatenated on disk (``merged.index`` +
                                        ``merged.ivfdata``), opened with `open_merged`
    shard_index(shard_paths)            or: serve the shards side by side in a ``faiss.IndexShards``, unmerged

Why IVF only: shards are merged list by list (`faiss.contrib.ondisk.merge_ondisk`), and only an IVF index has
inverted lists. Every shard must come from the *same* trained empty index so that list ``i`` means the same centroid
in all of them; then the merged index holds exactly the lists a monolithic index would (same codes, same ids, same
order when shards are consecutive rows), and searches return the same ids and scores for every nprobe
(checked in ``tests/index/test_shards.py``). HNSW graphs and flat (``IndexIDMap2``) indexes cannot be merged this
way: build them on one machine with `AnnIndex.build`.

Conventions follow ``index/ann.py``: a FAISS factory string, inner product (embeddings are L2-normalised), int64
ids that are item slots stored natively in the inverted lists, and search parameters given per call
(``faiss.SearchParametersIVF(nprobe=...)``). A merged index can be wrapped as ``AnnIndex(open_merged(d), ...)``.

What FAISS 1.15.1 does that shapes this module:

* ``merged.index`` records the path of its ``.ivfdata`` file as it was when written, i.e. inside the temporary
  directory that is renamed into place. `open_merged` therefore reads with ``IO_FLAG_ONDISK_SAME_DIR`` (take the
  data file from the index file's directory) and ``IO_FLAG_READ_ONLY``. It never uses ``IO_FLAG_MMAP``: opening a
  merged index that way segfaulted at search (PERF-NOTES). The ``.ivfdata`` file itself is always mapped by FAISS.
* ``merge_ondisk`` reads the shards with ``IO_FLAG_MMAP`` and never frees their inverted lists (it disowns them so
  they outlive the shard objects): each merge leaves its shards mapped until the process exits. Run merges in
  short-lived processes or tasks.
* FAISS prints (C++ ``printf``) "resizing ... ivfdata" while merging and "IO_FLAG_ONDISK_SAME_DIR: updating ondisk
  filename" while opening; neither is an error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk

from index.ann import (
    _MIN_TRAIN_SIZE,
    _TRAIN_PER_LIST,
    _check_embeddings,
    _check_slots,
    _faiss_message,
    _is_native_ivf,
    _is_positive_int,
    _ivf_ids,
    _make_index,
)
from index.bundle import atomic_directory

__all__ = [
    "EMPTY_INDEX_FILE",
    "MERGED_DATA_FILE",
    "MERGED_INDEX_FILE",
    "ShardedBuild",
    "add_shard",
    "build_sharded",
    "merge_shards",
    "open_merged",
    "shard_index",
    "train_empty_index",
    "training_sample_size",
    "write_empty_index",
]

logger = logging.getLogger(__name__)

EMPTY_INDEX_FILE = "empty.index"
MERGED_INDEX_FILE = "merged.index"
MERGED_DATA_FILE = "merged.ivfdata"
_SHARDS_DIR = "shards"
_MERGED_DIR = "merged"
_NOT_MERGEABLE = (
    "shards are merged by their IVF inverted lists (faiss.contrib.ondisk.merge_ondisk), which HNSW graphs and "
    "Flat/SQ/PQ indexes without IVF do not have. Use an IVF factory such as 'IVF1024,Flat' or 'IVF1024,PQ16', or "
    "build this index on one machine with AnnIndex.build"
)


class ShardedBuild(NamedTuple):
    """Where `build_sharded` put its files (all inside its ``out_dir``).

    Attributes:
        empty_index: The trained empty index every shard started from (``out_dir/empty.index``).
        shard_paths: One FAISS index per shard, in row order (``out_dir/shards/shard-00000-of-00004.index``...).
        merged_dir: The merged index (``out_dir/merged``, holding ``merged.index`` and ``merged.ivfdata``); open
            it with `open_merged`.
    """

    empty_index: Path
    shard_paths: list[Path]
    merged_dir: Path


def train_empty_index(sample_embeddings: np.ndarray, factory: str, *, seed: int = 0) -> faiss.Index:
    """Trains an IVF index (coarse centroids, and PQ/SQ codebooks) on a sample, and returns it empty.

    Args:
        sample_embeddings: ``[num_samples, dim]`` float32, finite, L2-normalised: the training sample (the caller
            draws it; `build_sharded` draws ``max(50 * nlist, 10_000)`` rows like `AnnIndex.build`). FAISS wants
            >= 39 points per IVF list (and >= 39 x 256 for 8-bit PQ codebooks).
        factory: A FAISS factory string of an IVF index, e.g. ``"IVF1024,Flat"``, ``"IVF4096,PQ16"``,
            ``"IVF1024,SQ8"``, also behind a pre-transform (``"OPQ16,IVF1024,PQ16"``). Metric: inner product.
        seed: Seeds FAISS's k-means of the coarse quantizer.

    Returns:
        The trained index, holding no vectors; write it with `write_empty_index`.

    Raises:
        ValueError: For an invalid sample, a factory FAISS cannot build, a non-IVF factory (it could not be merged;
            refined ``"...,RFlat"`` included), or a failed training.

    Example:
        >>> x = np.random.default_rng(0).standard_normal((400, 8)).astype(np.float32)
        >>> index = train_empty_index(x, "IVF4,Flat")
        >>> index.is_trained, index.ntotal
        (True, 0)
    """
    sample = _check_embeddings("sample_embeddings", sample_embeddings)
    if sample.shape[0] == 0:
        raise ValueError(f"`sample_embeddings` should have at least one row. Received: shape={sample.shape}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"`seed` should be a non-negative integer. Received: seed={seed!r}")
    if not isinstance(factory, str) or not factory.strip():
        raise ValueError(f"`factory` should be a FAISS factory string such as 'IVF1024,Flat'. Received: {factory!r}")
    index = _make_index(sample.shape[1], factory)
    _check_mergeable(index, f"`factory` {factory!r}")
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = int(seed)
    logger.info("training %s on %d vectors", factory, sample.shape[0])
    started = time.perf_counter()
    try:
        index.train(np.ascontiguousarray(sample))
    except RuntimeError as e:
        raise ValueError(
            f"`factory` {factory!r} could not be trained by FAISS on {sample.shape[0]} vectors: {_faiss_message(e)}. "
            "Use fewer IVF lists (each needs >= 39 training points) or a larger sample"
        ) from e
    logger.info("trained %s in %.1f s", factory, time.perf_counter() - started)
    return index


def write_empty_index(index: faiss.Index, path: str | os.PathLike[str]) -> Path:
    """Writes a trained, empty IVF index (from `train_empty_index`) atomically: a temporary file, then a rename.

    Args:
        index: The trained index, with no vectors.
        path: The file to write (replaced if it exists); its directory must exist.

    Returns:
        ``path`` as a `Path`.

    Raises:
        ValueError: When ``index`` is not an IVF index, not trained, or holds vectors.
        FileNotFoundError: When the directory does not exist.
        OSError: When FAISS cannot write the file.
    """
    _check_mergeable(index, "`index`")
    if not index.is_trained or index.ntotal != 0:
        raise ValueError(
            f"`index` should be trained and empty (from train_empty_index). Received: is_trained={index.is_trained}, "
            f"ntotal={index.ntotal}"
        )
    path = Path(path)
    _write_index_atomically(index, path)
    return path


def add_shard(
    empty_index_path: str | os.PathLike[str],
    embeddings: np.ndarray,
    ids: np.ndarray,
    out_path: str | os.PathLike[str],
) -> Path:
    """Adds one shard's vectors to a copy of the trained empty index and writes it (temporary file, then rename).

    Rerunning it (a retried task) replaces ``out_path`` whole; a failed run leaves no file behind.

    Args:
        empty_index_path: The file written by `write_empty_index`.
        embeddings: ``[num_shard_items, dim]`` float32, finite, L2-normalised; at least one row.
        ids: ``[num_shard_items]`` distinct non-negative int64 ids (item slots), one per row, distinct from those
            of every other shard (`merge_shards` checks).
        out_path: The shard index file to write; its directory must exist.

    Returns:
        ``out_path`` as a `Path`.

    Raises:
        FileNotFoundError: When ``empty_index_path`` or the directory of ``out_path`` does not exist.
        ValueError: When the empty index is unreadable, not an IVF index, untrained or not empty, or the shard is
            empty or its embeddings or ids are malformed (field, expected and received are named).
    """
    empty_index_path = Path(empty_index_path)
    out_path = Path(out_path)
    index = _read_index(empty_index_path, "empty index")
    _check_mergeable(index, str(empty_index_path))
    if not index.is_trained or index.ntotal != 0:
        raise ValueError(
            f"{empty_index_path} should hold a trained, empty index (from write_empty_index). Received: "
            f"is_trained={index.is_trained}, ntotal={index.ntotal}"
        )
    embeddings = _check_embeddings("embeddings", embeddings, dim=int(index.d))
    if embeddings.shape[0] == 0:
        raise ValueError(
            f"`embeddings` should have at least one row: an empty shard adds nothing. Received: "
            f"shape={embeddings.shape} (use fewer shards)"
        )
    ids = _check_slots(np.asarray(ids), embeddings.shape[0], name="ids")
    if not out_path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {out_path}: directory {out_path.parent} does not exist")
    index.add_with_ids(np.ascontiguousarray(embeddings), ids)
    _write_index_atomically(index, out_path)
    logger.info("wrote shard %s with %d vectors", out_path, embeddings.shape[0])
    return out_path


def merge_shards(
    shard_paths: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Merges the shards' inverted lists on disk into one index: ``out_dir/merged.index`` + ``merged.ivfdata``.

    The shards are checked first: each must be readable, an IVF index holding vectors, and trained exactly like the
    first one (same factory, dimension, centroids and codebooks: the same empty index); their ids must be distinct
    across shards. Then ``faiss.contrib.ondisk.merge_ondisk`` concatenates list ``i`` of every shard, in the order
    given, into an ``OnDiskInvertedLists`` file. ``out_dir`` is written as a temporary sibling renamed into place.

    Memory: the checks read one shard at a time and keep every id (8 bytes each); the merge maps the shards.

    Args:
        shard_paths: Shard index files written by `add_shard`, at least one.
        out_dir: The directory to create.
        overwrite: Replace ``out_dir`` if it exists.

    Returns:
        ``out_dir`` as a `Path`; open it with `open_merged`.

    Raises:
        FileExistsError: When ``out_dir`` exists and ``overwrite`` is False.
        FileNotFoundError: When a shard file does not exist.
        ValueError: When there are no shards, a shard is not an IVF index or is empty, shards come from different
            empty indexes, or an id appears in two shards (the first few are named).
    """
    paths = _check_shard_paths(shard_paths)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        trained = None
        reference_digest = ""
        all_ids = []
        for position, path in enumerate(paths):
            shard = _read_shard(path)
            _check_compatible(shard, path, paths[0], first_dim=int(trained.d) if trained is not None else None)
            all_ids.append(_ivf_ids(faiss.extract_index_ivf(shard)))
            shard.reset()  # what is left is the trained state, serialized identically for every shard of one build
            digest = hashlib.sha256(faiss.serialize_index(shard).tobytes()).hexdigest()
            if position == 0:
                trained, reference_digest = shard, digest
            elif digest != reference_digest:
                raise ValueError(
                    f"{path} was trained differently from {paths[0]} (its factory, centroids or codebooks differ): "
                    "every shard must be built by add_shard from the same empty index"
                )
        _check_distinct_ids(all_ids, paths)
        del all_ids
        data_path = tmp / MERGED_DATA_FILE
        started = time.perf_counter()
        try:
            merge_ondisk(trained, [str(p) for p in paths], str(data_path))
        except RuntimeError as e:
            raise ValueError(f"FAISS could not merge the shards into {out_dir}: {_faiss_message(e)}") from e
        ntotal = int(trained.ntotal)
        try:
            faiss.write_index(trained, str(tmp / MERGED_INDEX_FILE))
        except RuntimeError as e:
            raise OSError(f"FAISS could not write {tmp / MERGED_INDEX_FILE}: {_faiss_message(e)}") from e
        del trained  # unmaps merged.ivfdata (the index owns its on-disk lists)
        for name in (MERGED_INDEX_FILE, MERGED_DATA_FILE):
            _fsync_file(tmp / name)
    logger.info(
        "merged %d shards (%d vectors) into %s in %.1f s", len(paths), ntotal, out_dir, time.perf_counter() - started
    )
    return Path(out_dir)


def open_merged(out_dir: str | os.PathLike[str]) -> faiss.Index:
    """Opens an index written by `merge_shards`, read-only; its inverted lists stay on disk (mapped by FAISS).

    Reads with ``IO_FLAG_READ_ONLY | IO_FLAG_ONDISK_SAME_DIR``: the data file is taken from ``out_dir`` whatever
    path was recorded when it was written (the directory has been renamed since), and nothing can be added.
    Not ``IO_FLAG_MMAP``: opening a merged index that way segfaulted at search in FAISS 1.15.1. Never add to or
    remove from the result: on read-only on-disk lists FAISS 1.15.1 aborts the whole process rather than raising;
    to change a merged index, add shards and merge again.

    Args:
        out_dir: The directory holding ``merged.index`` and ``merged.ivfdata``.

    Returns:
        The IVF index; search it with ``params=faiss.SearchParametersIVF(nprobe=...)``, or wrap it as
        ``AnnIndex(index, factory=..., nprobe=...)``.

    Raises:
        FileNotFoundError: When ``out_dir`` or one of its two files is missing.
        ValueError: When FAISS cannot read them.
    """
    out_dir = Path(out_dir)
    for name in (MERGED_INDEX_FILE, MERGED_DATA_FILE):
        if not (out_dir / name).is_file():
            raise FileNotFoundError(
                f"{out_dir / name} does not exist: pass a directory written by merge_shards (it holds "
                f"{MERGED_INDEX_FILE} and {MERGED_DATA_FILE})"
            )
    path = out_dir / MERGED_INDEX_FILE
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_READ_ONLY | faiss.IO_FLAG_ONDISK_SAME_DIR)
    except RuntimeError as e:
        raise ValueError(f"{path} is not a readable merged FAISS index: {_faiss_message(e)}") from e


def shard_index(shard_paths: Sequence[str | os.PathLike[str]], *, threaded: bool = False) -> faiss.IndexShards:
    """Serves shards side by side without merging them: a ``faiss.IndexShards`` over the shard files.

    Every shard is read into memory and searched; results are merged by score. Ids are kept as stored
    (``successive_ids=False``), so they are the slots given to `add_shard`. Search parameters given per call
    (``faiss.SearchParametersIVF(nprobe=...)``) reach every shard; with shards of one empty index the results equal
    the merged index's.

    Args:
        shard_paths: Shard index files written by `add_shard`, at least one.
        threaded: Search the shards on one thread each (FAISS's ``threaded``) instead of one after another.

    Returns:
        The ``IndexShards``; it keeps the shard indexes alive.

    Raises:
        FileNotFoundError: When a shard file does not exist.
        ValueError: When there are no shards, a shard is not an IVF index or is empty, dimensions differ, or an id
            appears in two shards.
    """
    paths = _check_shard_paths(shard_paths)
    shards = [_read_shard(path) for path in paths]
    for shard, path in zip(shards, paths, strict=True):
        _check_compatible(shard, path, paths[0], first_dim=int(shards[0].d))
    _check_distinct_ids([_ivf_ids(faiss.extract_index_ivf(shard)) for shard in shards], paths)
    combined = faiss.IndexShards(int(shards[0].d), bool(threaded), False)
    for shard in shards:
        combined.add_shard(shard)  # FAISS's Python wrapper keeps a reference to each shard
    return combined


def build_sharded(
    embeddings: np.ndarray,
    ids: np.ndarray,
    factory: str,
    num_shards: int,
    out_dir: str | os.PathLike[str],
    *,
    sample_size: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> ShardedBuild:
    """Builds a sharded IVF index with a local loop: train once, add each shard, merge (the default engine).

    Layout of ``out_dir`` (written as a temporary sibling renamed into place)::

        empty.index                         the trained empty index
        shards/shard-00000-of-00004.index   one index per shard of consecutive rows (np.array_split)
        merged/merged.index, merged.ivfdata the merged index: `open_merged(build.merged_dir)`

    Args:
        embeddings: ``[num_items, dim]`` float32, finite, L2-normalised.
        ids: ``[num_items]`` distinct non-negative int64 ids (item slots), one per row.
        factory: An IVF factory string (see `train_empty_index`).
        num_shards: Shards to split the rows into, 1 to ``num_items``.
        out_dir: The directory to create.
        sample_size: Rows sampled (seeded, without replacement) to train on, or None for
            ``min(num_items, max(50 * nlist, 10_000))`` as `AnnIndex.build`.
        seed: Seeds the sample and the k-means.
        overwrite: Replace ``out_dir`` if it exists.

    Returns:
        The paths of the build's files, inside ``out_dir``.

    Raises:
        FileExistsError: When ``out_dir`` exists and ``overwrite`` is False.
        ValueError: For invalid inputs (as `train_empty_index` and `add_shard`).
    """
    embeddings = _check_embeddings("embeddings", embeddings)
    num_items = embeddings.shape[0]
    if num_items == 0:
        raise ValueError(f"`embeddings` should have at least one row. Received: shape={embeddings.shape}")
    ids = _check_slots(np.asarray(ids), num_items, name="ids")
    if not _is_positive_int(num_shards) or num_shards > num_items:
        raise ValueError(
            f"`num_shards` should be an integer from 1 to the number of rows ({num_items}): every shard needs a row. "
            f"Received: num_shards={num_shards!r}"
        )
    if sample_size is not None and not _is_positive_int(sample_size):
        raise ValueError(f"`sample_size` should be a positive integer or None. Received: sample_size={sample_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"`seed` should be a non-negative integer. Received: seed={seed!r}")
    size = training_sample_size(factory, embeddings.shape[1], num_items, sample_size)
    rows = np.sort(np.random.default_rng(seed).choice(num_items, size=size, replace=False))

    out_dir = Path(out_dir)
    bounds = np.linspace(0, num_items, num_shards + 1).round().astype(np.int64)  # as np.array_split, without copies
    names = [f"shard-{i:05d}-of-{num_shards:05d}.index" for i in range(num_shards)]
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        empty_path = write_empty_index(train_empty_index(embeddings[rows], factory, seed=seed), tmp / EMPTY_INDEX_FILE)
        (tmp / _SHARDS_DIR).mkdir()
        shard_paths = []
        for name, start, stop in zip(names, bounds[:-1], bounds[1:], strict=True):
            shard_paths.append(add_shard(empty_path, embeddings[start:stop], ids[start:stop], tmp / _SHARDS_DIR / name))
        merge_shards(shard_paths, tmp / _MERGED_DIR)
    return ShardedBuild(
        empty_index=out_dir / EMPTY_INDEX_FILE,
        shard_paths=[out_dir / _SHARDS_DIR / name for name in names],
        merged_dir=out_dir / _MERGED_DIR,
    )


def training_sample_size(factory: str, dim: int, num_items: int, sample_size: int | None = None) -> int:
    """Rows to train a sharded IVF index on: ``sample_size``, else ``max(50 * nlist, 10_000)`` as
    `AnnIndex.build`, at most ``num_items``.

    Raises:
        ValueError: When ``factory`` is not an IVF factory (shards could not be merged) or is invalid for ``dim``.
    """
    probe = _make_index(dim, factory)
    _check_mergeable(probe, f"`factory` {factory!r}")
    nlist = int(faiss.extract_index_ivf(probe).nlist)
    return min(num_items, sample_size or max(_TRAIN_PER_LIST * nlist, _MIN_TRAIN_SIZE))


def _check_mergeable(index: faiss.Index, what: str) -> None:
    if not _is_native_ivf(index):
        raise ValueError(f"{what} is a {type(index).__name__}, not an IVF index: {_NOT_MERGEABLE}")
    # IndexIVFPQR, which merge_ondisk refuses, cannot occur: FAISS builds it for L2 only.


def _check_shard_paths(shard_paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(shard_paths, str | os.PathLike):
        raise ValueError(f"`shard_paths` should be a list of shard files. Received: a single path {shard_paths!r}")
    paths = [Path(p) for p in shard_paths]
    if not paths:
        raise ValueError("`shard_paths` should name at least one shard file (from add_shard). Received: []")
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"shard file {path} does not exist")
    return paths


def _read_shard(path: Path) -> faiss.Index:
    shard = _read_index(path, "shard index")
    _check_mergeable(shard, str(path))
    if shard.ntotal == 0:
        raise ValueError(f"{path} holds no vectors: every shard should hold at least one (from add_shard)")
    return shard


def _check_compatible(shard: faiss.Index, path: Path, first_path: Path, *, first_dim: int | None) -> None:
    if first_dim is not None and int(shard.d) != first_dim:
        raise ValueError(
            f"{path} has dimension {shard.d} but {first_path} has {first_dim}: the shards come from different builds"
        )
    if shard.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ValueError(
            f"{path} should use the inner-product metric (METRIC_INNER_PRODUCT). Received: metric_type="
            f"{shard.metric_type}"
        )


def _check_distinct_ids(ids_per_shard: list[np.ndarray], paths: list[Path]) -> None:
    ids = np.concatenate(ids_per_shard)
    owners = np.repeat(np.arange(len(ids_per_shard)), [part.size for part in ids_per_shard])
    order = np.argsort(ids, kind="stable")
    ids, owners = ids[order], owners[order]
    repeated = np.flatnonzero(ids[1:] == ids[:-1])
    if repeated.size:
        first = int(repeated[0])
        raise ValueError(
            f"{repeated.size} id(s) appear in more than one shard, e.g. id {int(ids[first])} in "
            f"{paths[owners[first]]} and {paths[owners[first + 1]]} (ids: {np.unique(ids[repeated])[:5].tolist()}): "
            "give every item one shard"
        )


def _read_index(path: Path, what: str) -> faiss.Index:
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as e:
        raise ValueError(f"{path} is not a readable FAISS index: {_faiss_message(e)}") from e


def _write_index_atomically(index: faiss.Index, path: Path) -> None:
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: directory {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        try:
            faiss.write_index(index, str(tmp))
        except RuntimeError as e:
            raise OSError(f"FAISS could not write {path}: {_faiss_message(e)}") from e
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())
