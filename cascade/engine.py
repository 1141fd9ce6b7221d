"""Engines that run Cascade's batch jobs: an in-process loop (the default) or Ray.

A job (`cascade.jobs`) is written once, against two operations every engine provides:

``map_batches(worker, inputs, out_dir)``
    Reads Parquet shards, hands them batch by batch to a *worker* — an instance of a class built once per
    process from `WorkerSpec` (it loads models and indexes from paths, which is what lets it run anywhere) —
    and writes what the worker returns as Parquet shards into ``out_dir`` (a new directory, renamed into place
    when complete: a failed job leaves nothing behind). Rows keep no particular order across files; every job
    carries a key column (``item_id``, ``query_id``) through.
``run_tasks(fn, calls)``
    Runs independent function calls (FAISS shards) and returns their results in call order.

`LocalEngine` does both with a plain loop in this process: nothing to start, no serialisation, no copies. On one
machine it is the fastest choice (engines only add overhead there; ``bench/bench_jobs.py`` measures by how much).

`RayEngine` maps the same calls onto Ray (``pip install -e ".[ray]"``): Ray Data ``read_parquet`` ->
``map_batches`` with a pool of actors -> ``write_parquet``, and Ray tasks for ``run_tasks``. It joins a running
cluster when given an address (``"auto"`` or ``"ray://host:10001"``), else starts a local Ray. Paths must be
visible to every node (a shared file system) since workers read models and write shards by path. The sharp edges
it handles:

* an actor pool that takes every CPU starves Ray Data's read and write tasks (the job stalls): the pool leaves
  ``reserved_cpus`` (default 1) of the cluster's CPUs free;
* Ray starts workers with ``OMP_NUM_THREADS=1`` (their ``num_cpus``); a worker's TensorFlow and FAISS thread pools
  are set to the CPUs its actor reserves, before TensorFlow starts (through ``TF_NUM_INTRAOP_THREADS``, so workers
  that serve numpy models never import TensorFlow);
* small Parquet files are read as few blocks, which would leave actors idle: the data set is repartitioned into
  about ``blocks_per_actor`` blocks per actor (never fewer blocks than rows / ``batch_size``).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from index.bundle import atomic_directory

__all__ = [
    "ENGINES",
    "Engine",
    "LocalEngine",
    "RayEngine",
    "WorkerSpec",
    "list_shards",
    "make_engine",
    "set_worker_threads",
]

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")
SHARD_SUFFIX = ".parquet"


@dataclass(frozen=True)
class WorkerSpec:
    """How to build a worker: ``cls(**kwargs)``, once per process; then ``worker(batch) -> table`` per batch.

    Attributes:
        cls: A class importable by name on every node (defined at module level), whose instances take a
            ``pandas.DataFrame`` batch and return a ``pyarrow.Table`` or ``pandas.DataFrame``.
        kwargs: Its constructor arguments: paths and plain values (they are pickled to remote workers).
    """

    cls: type
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> Callable[[Any], Any]:
        return self.cls(**self.kwargs)


class Engine(Protocol):
    """What a job needs from an engine (see the module docstring)."""

    name: str

    def map_batches(
        self, worker: WorkerSpec, inputs: Sequence[Path], out_dir: Path, *, batch_size: int, overwrite: bool = False
    ) -> list[Path]: ...

    def run_tasks(self, fn: Callable[..., Any], calls: Sequence[tuple]) -> list[Any]: ...


def list_shards(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The Parquet files of a job input: a file, a directory (its ``*.parquet`` files, sorted by name), or a list.

    Raises:
        FileNotFoundError: When a path does not exist or a directory holds no ``.parquet`` file.
    """
    paths = [Path(source)] if isinstance(source, str | os.PathLike) else [Path(p) for p in source]
    if not paths:
        raise FileNotFoundError("no input shards given: pass a Parquet file, a directory of them, or a list")
    shards: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix == SHARD_SUFFIX and not p.name.startswith("."))
            if not found:
                raise FileNotFoundError(f"{path} holds no {SHARD_SUFFIX} files (expected Parquet shards)")
            shards.extend(found)
        elif path.is_file():
            shards.append(path)
        else:
            raise FileNotFoundError(f"input shard {path} does not exist")
    return shards


def set_worker_threads(threads: int) -> None:
    """Sizes this process's TensorFlow and FAISS thread pools.

    TensorFlow reads ``TF_NUM_INTRAOP_THREADS`` / ``TF_NUM_INTEROP_THREADS`` when its runtime starts, so a worker
    that never needs TensorFlow (the evaluator serves numpy models) does not pay for importing it here; when
    TensorFlow is already loaded, its threading config is set too (possible until its runtime has started).
    """
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = str(max(1, min(2, threads)))
    import faiss

    faiss.omp_set_num_threads(threads)
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
        except RuntimeError:  # TensorFlow's runtime already started in this process: keep its pools
            logger.debug("TensorFlow already initialised; thread pools unchanged")


def _to_table(result: Any) -> pa.Table:
    """A worker's result as an Arrow table without pandas metadata (Ray's batches carry ``ArrowDtype`` columns,
    whose recorded dtype names pandas cannot read back)."""
    if not isinstance(result, pa.Table):
        result = pa.Table.from_pandas(result, preserve_index=False)
    return result.replace_schema_metadata(None)


class LocalEngine:
    """Runs jobs in this process with a plain loop: one worker, one output shard per input shard."""

    name = "local"

    def map_batches(
        self, worker: WorkerSpec, inputs: Sequence[Path], out_dir: Path, *, batch_size: int, overwrite: bool = False
    ) -> list[Path]:
        _check_batch_size(batch_size)
        fn = worker.build()
        written = []
        with atomic_directory(out_dir, overwrite=overwrite) as tmp:
            for i, path in enumerate(inputs):
                name = f"part-{i:05d}{SHARD_SUFFIX}"
                writer: pq.ParquetWriter | None = None
                try:
                    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
                        table = _to_table(fn(batch.replace_schema_metadata(None).to_pandas()))
                        if writer is None:
                            writer = pq.ParquetWriter(tmp / name, table.schema)
                        writer.write_table(table)
                finally:
                    if writer is not None:
                        writer.close()
                if writer is not None:
                    written.append(name)
        return [Path(out_dir) / name for name in written]

    def run_tasks(self, fn: Callable[..., Any], calls: Sequence[tuple]) -> list[Any]:
        return [fn(*args) for args in calls]


class _RayWorker:
    """The actor class Ray Data builds: sizes the thread pools, then builds the job's worker."""

    def __init__(self, spec: WorkerSpec, threads: int) -> None:
        set_worker_threads(threads)
        self._fn = spec.build()

    def __call__(self, batch: Any) -> Any:
        return _to_table(self._fn(batch))


@dataclass
class RayEngine:
    """Runs jobs on Ray: Ray Data with an actor pool for batch maps, Ray tasks for independent calls.

    Args:
        address: A cluster to join (``"auto"``: the one this node belongs to; ``"ray://host:10001"``: a remote
            one), or ``None`` to start a local Ray (or use the one already initialised in this process).
        num_cpus: CPUs of a local Ray (default: all of this machine's); ignored when joining a cluster.
        cpus_per_actor: CPUs each worker actor reserves (and sizes its thread pools to).
        actors: Actors in the pool; default: the cluster's CPUs minus ``reserved_cpus``, divided by
            ``cpus_per_actor`` (at least 1).
        reserved_cpus: CPUs kept free of actors for Ray Data's read and write tasks.
        blocks_per_actor: Target blocks per actor after repartitioning (load balancing).
    """

    address: str | None = None
    num_cpus: int | None = None
    cpus_per_actor: int = 1
    actors: int | None = None
    reserved_cpus: int = 1
    blocks_per_actor: int = 4
    name: str = field(default="ray", init=False)

    def __post_init__(self) -> None:
        for name in ("cpus_per_actor", "blocks_per_actor"):
            _check_int(name, getattr(self, name), low=1)
        _check_int("reserved_cpus", self.reserved_cpus, low=0)
        for name in ("num_cpus", "actors"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), low=1)
        if self.address is not None and not (isinstance(self.address, str) and self.address):
            raise ValueError(
                f"`address` should be a Ray cluster address ('auto', 'ray://host:10001') or None. "
                f"Received: {self.address!r}"
            )

    def _ray(self) -> Any:
        try:
            import ray
        except ImportError as e:
            raise ImportError(
                'the Ray engine needs Ray: pip install -e ".[ray]" (or pip install "ray[data,train]")'
            ) from e
        if not ray.is_initialized():
            if self.address is not None:
                ray.init(address=self.address, log_to_driver=False)
            else:
                ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False)
            logger.info("Ray initialised: %s CPUs", ray.cluster_resources().get("CPU"))
        return ray

    def pool_size(self) -> int:
        """Actors in the pool (see ``actors``)."""
        if self.actors is not None:
            return self.actors
        cpus = int(self._ray().cluster_resources().get("CPU", 1))
        return max(1, (cpus - self.reserved_cpus) // self.cpus_per_actor)

    def map_batches(
        self, worker: WorkerSpec, inputs: Sequence[Path], out_dir: Path, *, batch_size: int, overwrite: bool = False
    ) -> list[Path]:
        _check_batch_size(batch_size)
        ray = self._ray()
        actors = self.pool_size()
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in inputs)
        blocks = max(1, min(rows, max(actors * self.blocks_per_actor, math.ceil(rows / batch_size))))
        dataset = ray.data.read_parquet([str(p) for p in inputs]).repartition(blocks)
        dataset = dataset.map_batches(
            _RayWorker,
            fn_constructor_kwargs={"spec": worker, "threads": self.cpus_per_actor},
            batch_size=batch_size,
            batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=self.cpus_per_actor,
        )
        with atomic_directory(out_dir, overwrite=overwrite) as tmp:
            dataset.write_parquet(str(tmp))
            names = sorted(p.name for p in tmp.iterdir() if p.suffix == SHARD_SUFFIX)
        return [Path(out_dir) / name for name in names]

    def run_tasks(self, fn: Callable[..., Any], calls: Sequence[tuple]) -> list[Any]:
        ray = self._ray()
        # max_calls=1: a fresh worker process per call, so what a call leaves mapped (merge_ondisk does) is freed.
        remote = ray.remote(num_cpus=1, max_calls=1)(fn)
        return ray.get([remote.remote(*args) for args in calls])


def make_engine(name: str = "local", *, address: str | None = None, **options: Any) -> LocalEngine | RayEngine:
    """``"local"`` -> `LocalEngine`; ``"ray"`` -> `RayEngine(address=..., **options)`.

    Raises:
        ValueError: For an unknown engine name, or options given to the local engine.
    """
    if name == "local":
        if address is not None or options:
            given = sorted([*options, *(["address"] if address is not None else [])])
            raise ValueError(f"the local engine takes no options (they are Ray's). Received: {given}")
        return LocalEngine()
    if name == "ray":
        return RayEngine(address=address, **options)
    raise ValueError(f"`engine` should be one of {list(ENGINES)}. Received: {name!r}")


def _check_int(name: str, value: Any, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"`{name}` should be an integer >= {low}. Received: {value!r}")


def _check_batch_size(batch_size: Any) -> None:
    _check_int("batch_size", batch_size, low=1)


def total_rows(inputs: Iterable[Path]) -> int:
    """Rows of Parquet shards, from their footers (no data read)."""
    return sum(pq.ParquetFile(p).metadata.num_rows for p in inputs)
