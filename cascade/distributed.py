"""Data-parallel training of the two-tower retrieval student on several machines, launched by Ray Train.

`train_multiworker` starts ``num_workers`` Ray Train workers through ``ray.train.tensorflow.TensorflowTrainer``,
which writes each worker's ``TF_CONFIG`` (the addresses of all workers and the worker's own index). Every
worker runs `train_loop_per_worker`: it creates a `tf.distribute.MultiWorkerMirroredStrategy` from that
``TF_CONFIG`` before any other TensorFlow op, loads the same data, fits the encoders (a deterministic function
of the data, so every worker holds identical vocabularies; checked with a collective before training), builds
the towers and the optimizer under ``strategy.scope()`` (one mirrored copy of every variable per worker, equal
initial values broadcast from worker 0), and trains with ``distill.stage.make_train_step(..., strategy=...)``:
each step every worker computes the gradients of its share of the global batch, the gradients are all-reduced
(summed, each scaled by ``1 / num_workers``) and every worker applies the same update, so the copies never
drift apart. After each epoch every worker calls ``ray.train.report`` with the epoch's mean loss and a checksum
of its own copy of the weights (and every worker's checksum, gathered with a collective: Ray Train keeps only
worker 0's metrics). Worker 0 writes the towers (`retrieval.export_towers`) and the encoders into a local
temporary folder and attaches it to its last report as a `ray.train.Checkpoint`; Ray Train copies it into the
run's storage, from where `train_multiworker` copies it into ``out_dir``.

Distillation: with ``teacher_lists`` the training pairs are the rows of `cascade.jobs.score_lists` output over
`cascade.jobs.make_training_lists` rows (a positive and a candidate list with the teacher's logits, computed
offline by any engine), and the model is `distill.two_tower.DistilledTwoTowerModel`: the in-batch softmax plus
``kd_weight`` x the listwise KD over each pair's list. Without it, the label-only `TwoTowerModel` trains on the
positives of every interaction of ``data``.

Layout of ``out_dir``::

    two_tower/          the model, written atomically (temporary sibling renamed into place) after training
        encoders/       `FeatureEncoders.save`
        towers/         `export_towers`: query_tower/ and item_tower/ SavedModels and manifest.json
        training.json   the config and the per-epoch metrics
    ray/two_tower/      Ray Train's run folder (``RunConfig.storage_path``), holding the checkpoint

On a cluster of several machines ``out_dir`` must be on storage every node can write (NFS, ...), since
``ray/`` is Ray Train's ``storage_path``; each worker reads ``data`` itself.

What data parallelism changes, and its limits:

* The in-batch softmax draws each query's negatives from its worker's share of the global batch only
  (``global_batch_size / num_workers`` pairs, as `make_train_step`'s docstring says), not from the global batch.
  Scale ``global_batch_size`` with the number of workers to keep the negatives per query constant.
* ``global_batch_size`` must divide by ``num_workers``; batches are made with ``drop_remainder=True`` and
  sharded with ``AutoShardPolicy.DATA`` (every worker reads every pair in the same seeded order and keeps its
  own slice of each global batch), so all workers take the same number of steps. A worker with one step more
  than another would wait forever in the all-reduce.
* Every variable is replicated on every worker: the embedding tables must fit one worker's memory.

Embedding tables larger than one machine need parameter servers, which this module does not launch:
`tf.distribute.experimental.ParameterServerStrategy` with a ``variable_partitioner``, e.g.
``tf.distribute.experimental.partitioners.MinSizePartitioner(min_shard_bytes=256 << 10, max_shards=num_ps)``
or ``FixedShardsPartitioner(num_shards=num_ps)``. Its cluster has three roles, each a separate process with
its own ``TF_CONFIG``, started by the cluster's own launcher (Kubernetes, Slurm, ...), not by Ray Train:

* ``chief`` (one): runs the training program, creates the strategy and the
  ``tf.distribute.coordinator.ClusterCoordinator(strategy)``, and dispatches each step with
  ``coordinator.schedule(step_fn, args=(iter(per_worker_dataset),))`` (asynchronous; ``coordinator.join()``
  waits for all of them; the per-worker datasets come from ``coordinator.create_per_worker_dataset``);
* ``worker`` (many): run ``tf.distribute.Server(cluster_resolver.cluster_spec(), job_name="worker",
  task_index=i, protocol="grpc").join()`` and execute the scheduled steps, each on its own batches;
* ``ps`` (one or more): the same server with ``job_name="ps"``; they hold the variables.

For example the chief's ``TF_CONFIG`` would be::

    {"cluster": {"chief": ["host0:2222"], "worker": ["host1:2222", "host2:2222"],
                 "ps": ["host3:2222", "host4:2222"]},
     "task": {"type": "chief", "index": 0}}

and ``host3``'s the same with ``"task": {"type": "ps", "index": 0}``. Under such a strategy's scope each Keras 2
``Embedding`` table is created as a ``tf.distribute.experimental.partitioners``-split ``ShardedVariable``: its
rows lie in shards across the parameter servers and a lookup gathers only the rows a batch needs. Training is
then asynchronous (each worker's update is applied on the parameter servers when it arrives), unlike the
synchronous all-reduce here.

Ray is an optional dependency: this module imports it only inside `train_multiworker` and
`train_loop_per_worker`, so importing the module works without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import numbers
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import features  # first: selects Keras 2 before anything can touch tf.keras

logger = logging.getLogger(__name__)

MODEL_DIR = "two_tower"
RAY_DIR = "ray"
ENCODERS_DIR = "encoders"
TOWERS_DIR = "towers"
TRAINING_FILE = "training.json"
_MIN_SYNTHETIC_ITEMS = 10  # `SyntheticConfig`: at least 8 departments and one list of 10
_RAY_HINT = 'Ray Train is needed for multi-worker training: pip install -e ".[ray]"'


@dataclass(frozen=True)
class MultiWorkerConfig:
    """What `train_multiworker` trains, on how many workers.

    Attributes:
        data: A data set folder or spec file that `features.load_dataset` reads (every interaction is training
            data: pass a training split), or ``None`` for a synthetic shop (`features.generate_shop`) of the
            ``synthetic_*`` sizes. Each worker loads it itself, so on a cluster it must be a path every worker
            can read.
        synthetic_seed: Seed of the synthetic shop (with ``data=None``).
        synthetic_items: Items of the synthetic shop.
        synthetic_users: Users of the synthetic shop.
        synthetic_interactions: Interaction rows (impressions) of the synthetic shop.
        embedding_dim: Width of every feature embedding of both towers (`TowerConfig.embedding_dim`).
        hidden_dims: Hidden layer widths of both towers.
        output_dim: Width of the towers' L2-normalised output.
        global_batch_size: Pairs per step across all workers; must divide by ``num_workers``. Each worker's
            in-batch softmax sees ``global_batch_size / num_workers`` of them.
        epochs: Passes over the training positives.
        learning_rate: Adam learning rate.
        seed: Seed of the initial weights, the id dropout and the shuffling (equal on every worker).
        num_workers: Ray Train workers, one TensorFlow replica each.
        cpus_per_worker: CPUs Ray reserves per worker; also each worker's TensorFlow intra- and inter-op threads.
        teacher_lists: Distil from the teacher: Parquet shards of training rows with the teacher's scores
            (`cascade.jobs.make_training_lists` -> `cascade.jobs.score_lists`: query columns, ``item_id`` the
            positive, ``candidates`` and ``teacher_logits``). Each row is a training pair, and the loss adds
            ``kd_weight`` x the listwise KD over its candidates (`distill.two_tower.DistilledTwoTowerModel`).
            Needs ``data`` (the data set the lists were made from: it gives the encoders and the catalog).
            ``None``: label-only, on the positives of every interaction of ``data``.
        kd_weight: Weight of the KD term with ``teacher_lists``.

    Example:
        >>> MultiWorkerConfig(data="data/shop", global_batch_size=2048, num_workers=4, cpus_per_worker=8)
    """

    data: str | None = None
    synthetic_seed: int = 0
    synthetic_items: int = 200
    synthetic_users: int = 100
    synthetic_interactions: int = 4000
    embedding_dim: int = 16
    hidden_dims: tuple[int, ...] = (32,)
    output_dim: int = 16
    global_batch_size: int = 64
    epochs: int = 2
    learning_rate: float = 1e-2
    seed: int = 0
    num_workers: int = 2
    cpus_per_worker: int = 1
    teacher_lists: str | None = None
    kd_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.data is not None:
            if not isinstance(self.data, str | os.PathLike):
                raise ValueError(
                    f"`data` should be a path (str) or None. Received: data={self.data!r} ({type(self.data).__name__})"
                )
            object.__setattr__(self, "data", os.fspath(self.data))
        for name in ("synthetic_seed", "seed"):
            _check_int(name, getattr(self, name), 0)
        for name in (
            "synthetic_items",
            "synthetic_users",
            "synthetic_interactions",
            "embedding_dim",
            "output_dim",
            "global_batch_size",
            "epochs",
            "num_workers",
            "cpus_per_worker",
        ):
            _check_int(name, getattr(self, name), 1)
        if self.synthetic_items < _MIN_SYNTHETIC_ITEMS:
            raise ValueError(
                f"`synthetic_items` should be at least {_MIN_SYNTHETIC_ITEMS} (one list of the synthetic shop). "
                f"Received: synthetic_items={self.synthetic_items}"
            )
        hidden = self.hidden_dims
        if (
            isinstance(hidden, str | bytes)
            or not isinstance(hidden, tuple | list)
            or not all(isinstance(w, numbers.Integral) and not isinstance(w, bool) and w >= 1 for w in hidden)
        ):
            raise ValueError(f"`hidden_dims` should be a tuple of positive integers. Received: hidden_dims={hidden!r}")
        object.__setattr__(self, "hidden_dims", tuple(int(w) for w in hidden))
        rate = self.learning_rate
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 < rate < float("inf"):
            raise ValueError(f"`learning_rate` should be a positive float. Received: learning_rate={rate!r}")
        if self.teacher_lists is not None:
            if not isinstance(self.teacher_lists, str | os.PathLike):
                raise ValueError(f"`teacher_lists` should be a path or None. Received: {self.teacher_lists!r}")
            object.__setattr__(self, "teacher_lists", os.fspath(self.teacher_lists))
            if self.data is None:
                raise ValueError(
                    "`data` should be the data set the teacher lists were made from (it gives the encoders and the "
                    "catalog). Received: data=None with teacher_lists set"
                )
        weight = self.kd_weight
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not 0 <= weight < float("inf"):
            raise ValueError(f"`kd_weight` should be a non-negative float. Received: kd_weight={weight!r}")
        if self.global_batch_size % self.num_workers:
            raise ValueError(
                f"`global_batch_size` should be a multiple of num_workers={self.num_workers} (every worker takes an "
                f"equal share of each batch). Received: global_batch_size={self.global_batch_size}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-friendly values (``hidden_dims`` as a list)."""
        data = dataclasses.asdict(self)
        data["hidden_dims"] = list(self.hidden_dims)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MultiWorkerConfig:
        """The inverse of `to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"Unknown MultiWorkerConfig fields {unknown}; expected some of {sorted(names)}")
        values = dict(data)
        if "hidden_dims" in values and isinstance(values["hidden_dims"], list):
            values["hidden_dims"] = tuple(values["hidden_dims"])
        return cls(**values)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        expected = "a non-negative integer" if minimum == 0 else "a positive integer"
        raise ValueError(f"`{name}` should be {expected}. Received: {name}={value!r}")


def _require_ray() -> None:
    try:
        import ray
        import ray.train  # noqa: F401
    except ImportError as error:
        raise ImportError(f"{_RAY_HINT} ({error})") from error


def train_multiworker(
    config: MultiWorkerConfig, out_dir: str | os.PathLike[str], *, address: str | None = None
) -> dict[str, Any]:
    """Trains the two-tower student on ``config.num_workers`` Ray Train workers and saves it under ``out_dir``.

    Args:
        config: What to train, on how many workers.
        out_dir: Output folder (created); ``out_dir/two_tower`` must not exist yet (see the module docstring).
        address: A Ray cluster to join (``"auto"``: the one running on this machine; ``"ray://host:10001"``: a
            remote one). ``None``: the Ray of this process if it is initialised, else a new local one with
            ``num_workers * cpus_per_worker`` CPUs, shut down again before returning.

    Returns:
        ``{"out_dir", "model_dir", "num_workers", "epochs"}``, ``epochs`` holding per epoch ``{"epoch", "loss",
        "worker_checksums"}``: the mean training loss (all workers') and each worker's checksum of its own copy of
        the weights (sum of ``|w|`` over the trainable variables), in worker rank order.

    Raises:
        ImportError: When Ray (``ray[train]``) is not installed.
        FileExistsError: When ``out_dir/two_tower`` exists.
        RuntimeError: When training failed on a worker (the worker's error is chained).
    """
    if not isinstance(config, MultiWorkerConfig):
        raise TypeError(f"`config` should be a MultiWorkerConfig. Received: {type(config).__name__}")
    _require_ray()
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from index.bundle import atomic_directory

    out_dir = Path(out_dir).resolve()
    model_dir = out_dir / MODEL_DIR
    if model_dir.exists():
        raise FileExistsError(f"{model_dir} already exists: train into a new `out_dir`")
    out_dir.mkdir(parents=True, exist_ok=True)
    started_ray = False
    if address is not None:
        ray.init(address=address, ignore_reinit_error=True)
    elif not ray.is_initialized():
        ray.init(
            num_cpus=config.num_workers * config.cpus_per_worker,
            include_dashboard=False,
            log_to_driver=False,
        )
        started_ray = True
    try:
        trainer = TensorflowTrainer(
            train_loop_per_worker,
            train_loop_config={"config": config.to_dict()},
            scaling_config=ScalingConfig(
                num_workers=config.num_workers,
                use_gpu=False,
                resources_per_worker={"CPU": config.cpus_per_worker},
            ),
            run_config=RunConfig(storage_path=str(out_dir / RAY_DIR), name=MODEL_DIR),
        )
        try:
            result = trainer.fit()  # Ray Train v2 raises `TrainingFailedError`; v1 returns it as `result.error`
        except Exception as error:
            raise RuntimeError(f"multi-worker training failed: {error}") from error
        if result.error is not None:
            raise RuntimeError(f"multi-worker training failed: {result.error}") from result.error
        metrics = result.metrics or {}
        history = metrics.get("history")
        if not history or len(history) != config.epochs or result.checkpoint is None:
            raise RuntimeError(
                f"the workers reported {len(history or [])} of {config.epochs} epochs "
                f"(checkpoint: {result.checkpoint}): {metrics}"
            )
        with atomic_directory(model_dir) as tmp:
            result.checkpoint.to_directory(str(tmp))
    finally:
        if started_ray:
            ray.shutdown()
    return {"out_dir": out_dir, "model_dir": model_dir, "num_workers": config.num_workers, "epochs": history}


def train_loop_per_worker(config: dict) -> None:
    """The training function of one Ray Train worker (``TensorflowTrainer``'s ``train_loop_per_worker``).

    Args:
        config: ``{"config": MultiWorkerConfig.to_dict()}``.

    Reports per epoch, on every worker, ``{"epoch", "loss", "weights_checksum", "worker_checksums", "world_rank",
    "history"}``: ``loss`` is the mean over the epoch's steps of the global batch loss (equal on every worker),
    ``weights_checksum`` the sum of ``|w|`` over this worker's copy of the trainable variables,
    ``worker_checksums`` every worker's checksum gathered with a collective (Ray keeps only worker 0's reports),
    ``history`` the epochs so far as ``{"epoch", "loss", "worker_checksums"}``. Worker 0 attaches the trained
    model (the ``two_tower/`` layout of the module docstring) to its last report as a `ray.train.Checkpoint`.
    """
    _require_ray()
    import ray.train

    settings = MultiWorkerConfig.from_dict(config["config"])

    import tensorflow as tf

    # Threads and the strategy first: both must exist before TensorFlow initialises its runtime.
    threads = settings.cpus_per_worker
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError as error:  # the runtime was initialised already (e.g. by a previous run in this process)
        logger.warning("could not set TensorFlow's threads to %d: %s", threads, error)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()

    import numpy as np
    import tf_keras as keras

    from distill.stage import make_train_step
    from distill.two_tower import DistilledTwoTowerModel
    from retrieval import ItemTower, QueryTower, TowerConfig, TwoTowerModel
    from retrieval.model import RetrievalConfig, item_sampling_probability, make_training_dataset

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    if strategy.num_replicas_in_sync != world_size:
        raise RuntimeError(
            f"MultiWorkerMirroredStrategy has {strategy.num_replicas_in_sync} replicas but Ray Train started "
            f"{world_size} workers: is TF_CONFIG set ({os.environ.get('TF_CONFIG')!r})?"
        )

    encoders, catalog, queries, rows, kd = _training_data(settings)
    num_items = len(next(iter(catalog.values())))
    probability = item_sampling_probability(rows, num_items)
    if len(rows) < settings.global_batch_size:
        raise ValueError(
            f"the data has {len(rows)} positive pairs, fewer than global_batch_size={settings.global_batch_size}: "
            "not one full batch to train on"
        )
    # Every worker must hold the same encoded data (same vocabularies, same rows): compare digests across workers.
    digest = _digest({**catalog, **{f"query/{k}": v for k, v in queries.items()}, "rows": rows, **kd})
    digests = _all_gather(strategy, tf.constant([digest], tf.int64))
    if len(set(digests.tolist())) != 1:
        raise RuntimeError(f"the workers encoded different training data (digests {digests.tolist()})")

    def make_dataset(epoch: int) -> tf.data.Dataset:
        dataset = make_training_dataset(
            queries,
            catalog,
            rows,
            probability,
            batch_size=settings.global_batch_size,
            seed=settings.seed + epoch,
            drop_remainder=True,
            extra=kd,
        )
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return dataset.with_options(options)

    tower_config = TowerConfig(
        embedding_dim=settings.embedding_dim, hidden_dims=settings.hidden_dims, output_dim=settings.output_dim
    )
    keras.utils.set_random_seed(settings.seed)
    first = next(iter(make_dataset(0)))
    with strategy.scope():
        towers = (QueryTower.from_encoders(encoders, tower_config), ItemTower.from_encoders(encoders, tower_config))
        retrieval = RetrievalConfig(learning_rate=settings.learning_rate, batch_size=settings.global_batch_size)
        if kd:
            model = DistilledTwoTowerModel(*towers, catalog=catalog, config=retrieval, kd_weight=settings.kd_weight)
        else:
            model = TwoTowerModel(*towers, config=retrieval)
        model.query_embeddings(first["query"])
        model.item_embeddings(first["item"])
        optimizer = keras.optimizers.Adam(settings.learning_rate)
        optimizer.build(model.trainable_variables)  # slots made inside the step's trace would trace slowly

    def loss_fn(batch: dict) -> tf.Tensor:
        return model.compute_loss(batch, training=True)

    step = make_train_step(model, optimizer, loss_fn, strategy=strategy)
    history: list[dict[str, Any]] = []
    for epoch in range(settings.epochs):
        losses = [float(step(batch)) for batch in strategy.experimental_distribute_dataset(make_dataset(epoch))]
        mean_loss = float(np.mean(losses))
        if not np.isfinite(mean_loss):
            raise FloatingPointError(f"worker {rank}: the mean training loss of epoch {epoch + 1} is {mean_loss}")
        checksum = _weights_checksum(model)
        checksums = _all_gather(strategy, tf.constant([checksum], tf.float64)).tolist()
        history.append({"epoch": epoch + 1, "loss": mean_loss, "worker_checksums": checksums})
        metrics = {
            "epoch": epoch + 1,
            "loss": mean_loss,
            "weights_checksum": checksum,
            "worker_checksums": checksums,
            "world_rank": rank,
            "history": list(history),
        }
        logger.info("worker %d epoch %d: loss %.5f, checksum %.6f", rank, epoch + 1, mean_loss, checksum)
        if rank == 0 and epoch == settings.epochs - 1:
            # Worker 0 attaches the model to its last report; Ray copies it into the run's storage.
            with tempfile.TemporaryDirectory(prefix="two_tower-") as tmp:
                _save(model, encoders, catalog, queries, tower_config, first, Path(tmp), settings, history)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)  # a barrier: every worker reports every epoch


def _training_data(
    settings: MultiWorkerConfig,
) -> tuple[Any, dict[str, Any], dict[str, Any], Any, dict[str, Any]]:
    """Loads the data, fits the encoders and returns ``(encoders, catalog, query features per pair, item rows,
    kd)``; ``kd`` is ``{"kd_rows", "kd_scores"}`` per pair with ``teacher_lists``, else empty.

    The encoders are fitted on every interaction, a deterministic function of the data, so every worker gets the
    same vocabularies. Label-only pairs are the positive (query, item) rows of every interaction; with
    ``teacher_lists`` the pairs are the lists' rows (sorted by ``query_id``, so every worker has one order).
    """
    import numpy as np

    from ranking.pairs import make_labelled_pairs

    if settings.data is None:
        dataset = features.generate_shop(
            features.SyntheticConfig(
                num_users=settings.synthetic_users,
                num_items=settings.synthetic_items,
                num_interactions=settings.synthetic_interactions,
                seed=settings.synthetic_seed,
            )
        ).dataset
    else:
        dataset = features.load_dataset(settings.data)
    encoders = features.FeatureEncoders.fit(dataset, dataset.interactions)
    catalog = encoders.encode_items(dataset.items)
    if settings.teacher_lists is not None:
        queries, rows, kd = teacher_list_pairs(settings.teacher_lists, dataset, encoders)
        return encoders, catalog, queries, rows, kd
    pairs = make_labelled_pairs(dataset, dataset.interactions, encoders, negatives_per_query=0, seed=settings.seed)
    positive = pairs.labels > 0
    query_index, rows = pairs.query_index[positive], pairs.item_rows[positive]
    queries = {k: np.asarray(v)[query_index] for k, v in pairs.queries.items()}
    return encoders, catalog, queries, rows.astype(np.int32), {}


def teacher_list_pairs(
    source: str | os.PathLike[str], dataset: Any, encoders: Any
) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """Training pairs from teacher-scored lists (`cascade.jobs.score_lists` output over
    `cascade.jobs.make_training_lists` rows): ``(query features, positive catalog rows, {"kd_rows", "kd_scores"})``.

    ``kd_rows`` are ``[pairs, max list length]`` int32 catalog rows, -1 past a list's end; ``kd_scores`` the teacher's
    logits there (0 past the end, masked by the loss).

    Raises:
        ValueError: When a column is missing, an item id is not in ``dataset``'s catalog, or a row has other
            than one logit per candidate (the message names the column and the values).
    """
    import numpy as np
    import pandas as pd

    from cascade.jobs import QUERY_ID, queries_from_frame, read_shards
    from index.build import check_users
    from index.query_encoder import QueryEncoder

    frame = read_shards(source)
    missing = [c for c in (QUERY_ID, features.ITEM_ID, "candidates", "teacher_logits") if c not in frame.columns]
    if missing:
        raise ValueError(
            f"teacher lists {source} should have the columns of score_lists over make_training_lists rows. Missing: "
            f"{missing}; received {list(frame.columns)}"
        )
    frame = frame.sort_values(QUERY_ID, kind="stable").reset_index(drop=True)
    id_index = pd.Index(dataset.items[features.ITEM_ID].to_numpy())
    rows = id_index.get_indexer(frame[features.ITEM_ID].to_numpy())
    lengths = np.array([len(c) for c in frame["candidates"]], dtype=np.int64)
    logit_lengths = np.array([len(c) for c in frame["teacher_logits"]], dtype=np.int64)
    if (lengths != logit_lengths).any():
        bad = int(np.flatnonzero(lengths != logit_lengths)[0])
        raise ValueError(
            f"`teacher_logits` should hold one logit per candidate. Received: query_id "
            f"{frame[QUERY_ID].tolist()[bad]!r} has {lengths[bad]} candidates and {logit_lengths[bad]} logits"
        )
    flat = np.concatenate([np.asarray(c) for c in frame["candidates"]]) if len(frame) else np.empty(0)
    flat_rows = id_index.get_indexer(flat)
    for name, found, values in (
        (features.ITEM_ID, rows, frame[features.ITEM_ID].to_numpy()),
        ("candidates", flat_rows, flat),
    ):
        if (found < 0).any():
            raise ValueError(
                f"`{name}` should hold item ids of the data set's catalog. Received {(found < 0).sum()} unknown, "
                f"e.g. {pd.unique(values[found < 0])[:5].tolist()}"
            )
    width = int(lengths.max()) if len(lengths) else 1
    kd_rows = np.full((len(frame), width), -1, dtype=np.int32)
    kd_scores = np.zeros((len(frame), width), dtype=np.float32)
    owner = np.repeat(np.arange(len(frame)), lengths)
    position = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    kd_rows[owner, position] = flat_rows
    kd_scores[owner, position] = np.concatenate([np.asarray(v, dtype=np.float32) for v in frame["teacher_logits"]])
    users = check_users(dataset.users, encoders) if dataset.users is not None else None
    queries = QueryEncoder(encoders, users).encode(queries_from_frame(frame))
    return queries, rows.astype(np.int32), {"kd_rows": kd_rows, "kd_scores": kd_scores}


def _digest(arrays: Mapping[str, Any]) -> int:
    """A 63-bit digest of named arrays (their names, dtypes, shapes and bytes)."""
    import numpy as np

    hasher = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        hasher.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        if array.dtype == object:
            hasher.update(repr(array.tolist()).encode())
        else:
            hasher.update(array.tobytes())
    return int.from_bytes(hasher.digest()[:8], "big") >> 1


def _all_gather(strategy: Any, value: Any) -> Any:
    """Concatenates every replica's ``value`` (``[1]``) in replica order: a collective all workers must enter."""
    import tensorflow as tf

    @tf.function
    def gather() -> tf.Tensor:
        def replica_fn() -> tf.Tensor:
            return tf.distribute.get_replica_context().all_gather(value, axis=0)

        return strategy.experimental_local_results(strategy.run(replica_fn))[0]

    return gather().numpy()


def _weights_checksum(model: Any) -> float:
    """Sum of ``|w|`` over this worker's copy of the model's trainable variables, in float64."""
    import numpy as np

    return float(sum(np.abs(v.numpy().astype(np.float64)).sum() for v in model.trainable_variables))


def _save(
    model: Any,
    encoders: Any,
    catalog: Mapping[str, Any],
    queries: Mapping[str, Any],
    tower_config: Any,
    first: Mapping[str, Any],
    out_dir: Path,
    settings: MultiWorkerConfig,
    history: list[dict[str, Any]],
) -> None:
    """Writes the encoders, the towers and ``training.json`` into the empty folder ``out_dir``.

    The towers are copied into towers made outside the strategy, so the export holds plain variables.
    """
    import numpy as np

    from retrieval import ItemTower, QueryTower, TwoTowerModel, export_towers

    plain = TwoTowerModel(
        QueryTower.from_encoders(encoders, tower_config), ItemTower.from_encoders(encoders, tower_config)
    )
    plain.query_embeddings(first["query"])
    plain.item_embeddings(first["item"])
    plain.query_tower.set_weights(model.query_tower.get_weights())
    plain.item_tower.set_weights(model.item_tower.get_weights())
    lengths = {k: int(np.asarray(v).shape[1]) for k, v in {**catalog, **queries}.items() if np.asarray(v).ndim == 2}
    lengths.update({"query_tokens": encoders.config.max_query_tokens, "history": encoders.config.max_history})
    encoders.save(out_dir / ENCODERS_DIR)
    export_towers(
        plain,
        out_dir / TOWERS_DIR,
        query_spec=plain.query_tower.layout.tensor_spec(sequence_lengths=lengths),
        item_spec=plain.item_tower.layout.tensor_spec(sequence_lengths=lengths),
    )
    summary = {"config": settings.to_dict(), "model": type(model).__name__, "epochs": history}
    (out_dir / TRAINING_FILE).write_text(json.dumps(summary, indent=2))


__all__ = ["MultiWorkerConfig", "teacher_list_pairs", "train_loop_per_worker", "train_multiworker"]
