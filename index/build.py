"""The build-index job: trained cascade models + a catalog -> one verified artifact bundle (`index.bundle`).

`build_index` reads a model directory written by `distill.save_cascade` (or ``cascade train``), rebuilds the
serving models of one mode (the query and item towers and the ranking student) from their SavedModels, converts
them to numpy (`index.numpy_models`) and checks the conversion against the SavedModels on random inputs, embeds
the catalog in batches, precomputes the student's item-side parts, builds the FAISS index (`index.ann`) and
writes the bundle atomically (`index.bundle.atomic_directory`).

Example:
    >>> manifest = build_index("runs/shop/models", "data/shop", "indexes/shop")
    >>> manifest.index["factory"], manifest.items["num_active"]
    ('Flat', 20000)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

import features
from features import FeatureEncoders
from features.schema import ITEM_ID, USER_ID
from index.ann import AnnIndex, IndexConfig
from index.bundle import FileEntry, Manifest, atomic_directory, write_manifest
from index.numpy_models import NumpyStudent, NumpyTower

logger = logging.getLogger(__name__)

MODES = ("distilled", "label_only")
ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"
ACTIVE_FILE = "active.npy"
EMBEDDINGS_FILE = "item_embeddings.npy"
INDEX_FILE = "index.faiss"
STUDENT_ITEMS_DIR = "student_items"
QUERY_TOWER_DIR = "query_tower"
ITEM_TOWER_DIR = "item_tower"
STUDENT_DIR = "student"
ENCODERS_DIR = "encoders"
SAVEDMODEL_DIR = "savedmodel"


@dataclass(frozen=True)
class BuildConfig:
    """How to build an index bundle.

    Attributes:
        mode: Which trained students serve: ``"distilled"`` or ``"label_only"`` (the ablation twin).
        index: The FAISS index (factory string, search parameters, training sample).
        batch_size: Catalog rows encoded and embedded per batch (bounds the job's working memory).
        verify_rows: Random inputs on which the numpy serving models are checked against the SavedModels.
        verify_tolerance: Largest absolute difference accepted in that check.
        seed: Seed of the verification inputs.
    """

    mode: str = "distilled"
    index: IndexConfig = field(default_factory=IndexConfig)
    batch_size: int = 65_536
    verify_rows: int = 256
    verify_tolerance: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"`mode` should be one of {MODES}. Received: mode={self.mode!r}")
        if not isinstance(self.index, IndexConfig):
            raise ValueError(f"`index` should be an IndexConfig. Received: {type(self.index).__name__}")
        for name in ("batch_size", "verify_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` should be a positive integer. Received: {name}={value!r}")
        if not isinstance(self.verify_tolerance, float | int) or not self.verify_tolerance > 0:
            raise ValueError(
                f"`verify_tolerance` should be a positive float. Received: verify_tolerance={self.verify_tolerance!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["index"] = self.index.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BuildConfig:
        """From nested dicts (a TOML file: top-level keys and an ``[index]`` table); unknown keys are errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"build config has unknown key(s) {unknown}; expected a subset of {sorted(known)}")
        values = dict(data)
        if "index" in values:
            if not isinstance(values["index"], Mapping):
                raise ValueError(f"`index` should be a table. Received: {values['index']!r}")
            values["index"] = IndexConfig.from_dict(values["index"])
        return cls(**values)


def read_items(items: pd.DataFrame | str | Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The catalog (and users, when the source has them) from a DataFrame, a table file or a data set.

    Args:
        items: A DataFrame with ``item_id`` and the attribute columns; a ``.parquet``/``.csv`` file of one; or a
            data set folder / spec (``spec.toml``, MovieLens 100K, Amazon 5-core), whose items and users are used.

    Returns:
        ``(items, users)``; ``users`` is ``None`` unless ``items`` named a data set with a users table.
    """
    if isinstance(items, pd.DataFrame):
        return items, None
    path = Path(items)
    if path.is_dir() or path.suffix.lower() == ".toml":
        dataset = features.load_dataset(path)
        return dataset.items, dataset.users
    if not path.is_file():
        raise FileNotFoundError(f"`items` {path} does not exist: pass a Parquet/CSV item table or a data set folder")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pq.read_table(path).to_pandas(), None
    if suffix in (".csv", ".tsv", ".txt"):
        # Ids are read as text: "007" stays "007"; a column of plain integers ("7", never "007") becomes int64,
        # the rule `features.load_tables` applies to CSV ids.
        table = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype={ITEM_ID: str})
        ids = table[ITEM_ID] if ITEM_ID in table.columns else None
        if ids is not None and len(ids) and ids.notna().all() and ids.str.fullmatch(r"0|[1-9][0-9]{0,17}").all():
            table[ITEM_ID] = ids.astype(np.int64)
        return table, None
    raise ValueError(f"`items` should be a .parquet or .csv file or a data set folder. Received: {path}")


def check_items(items: pd.DataFrame, encoders: FeatureEncoders) -> pd.DataFrame:
    """The catalog columns the encoders read, with unique non-missing ids; errors name the column and values."""
    if not isinstance(items, pd.DataFrame):
        raise ValueError(f"`items` should be a pandas DataFrame. Received: {type(items).__name__}")
    if len(items) == 0:
        raise ValueError("`items` should hold at least one item. Received: an empty table")
    columns = [ITEM_ID, *encoders.item_categorical, *encoders.item_normalizers, *encoders.item_text]
    missing = [c for c in columns if c not in items.columns]
    if missing:
        raise ValueError(
            f"`items` should have the columns the encoders were fitted on {columns}. Missing: {missing}; received "
            f"{list(items.columns)}"
        )
    ids = items[ITEM_ID]
    if ids.isna().any():
        rows = np.flatnonzero(ids.isna().to_numpy())[:5].tolist()
        raise ValueError(f"`items.item_id` should have no missing values. Received: missing at rows {rows}")
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise ValueError(
            f"`items.item_id` should be unique. Received: {len(duplicated)} duplicate(s), e.g. "
            f"{duplicated.unique()[:5].tolist()}"
        )
    expected = encoders.item_ids.kind
    received = "str" if ids.dtype == object or pd.api.types.is_string_dtype(ids) else "int"
    if expected != received or (received == "int" and not pd.api.types.is_integer_dtype(ids)):
        raise ValueError(
            f"`items.item_id` should hold {expected} ids like the training data. Received: dtype {ids.dtype}"
        )
    extra = [c for c in items.columns if c not in columns]
    if extra:
        logger.info(
            "items: %d column(s) not read by the models are kept for display and filters: %s", len(extra), extra
        )
    return items.reset_index(drop=True)


def check_users(users: pd.DataFrame | None, encoders: FeatureEncoders) -> pd.DataFrame | None:
    """The user attribute columns the encoders read, one row per user; ``None`` when the encoders read none."""
    attributes = [*encoders.user_categorical, *encoders.user_normalizers]
    if users is None or not attributes:
        return None
    missing = [c for c in [USER_ID, *attributes] if c not in users.columns]
    if missing:
        raise ValueError(f"`users` should have the columns {[USER_ID, *attributes]}. Missing: {missing}")
    users = users[[USER_ID, *attributes]]
    duplicated = users[USER_ID][users[USER_ID].duplicated()]
    if len(duplicated):
        raise ValueError(
            f"`users.user_id` should be unique. Received: {len(duplicated)} duplicate(s), e.g. "
            f"{duplicated.unique()[:5].tolist()}"
        )
    return users.reset_index(drop=True)


@dataclass
class ServingModels:
    """The serving models of one trained mode, in numpy."""

    query_tower: NumpyTower
    item_tower: NumpyTower
    student: NumpyStudent


def load_serving_models(
    model_dir: str | Path,
    encoders: FeatureEncoders,
    catalog: Mapping[str, np.ndarray],
    *,
    mode: str = "distilled",
    verify_rows: int = 256,
    verify_tolerance: float = 1e-4,
    seed: int = 0,
) -> ServingModels:
    """Rebuilds the towers and student of ``mode`` from their SavedModels and converts them to numpy.

    The Keras models are rebuilt from the saved training configuration and their variables restored from the
    SavedModels' checkpoints; then the numpy models are compared with the SavedModels' serving signatures on
    ``verify_rows`` random inputs, so a bundle never serves models that differ from what was trained.

    Raises:
        FileNotFoundError: When ``model_dir`` lacks a model of ``mode``.
        RuntimeError: When the numpy models disagree with the SavedModels by more than ``verify_tolerance``.
    """
    import tensorflow as tf

    from ranking import load_ranker
    from retrieval import load_tower

    model_dir = Path(model_dir)
    keras_models = restore_keras_models(model_dir, encoders, catalog, mode=mode)
    student = keras_models["student"]
    towers = {name: keras_models[name] for name in ("query_tower", "item_tower")}
    lengths = _sequence_lengths(encoders, catalog)
    paths = {
        "student": model_dir / f"student_{mode}",
        "query_tower": model_dir / f"two_tower_{mode}" / "query_tower",
        "item_tower": model_dir / f"two_tower_{mode}" / "item_tower",
    }
    models = ServingModels(
        query_tower=NumpyTower.from_keras(towers["query_tower"]),
        item_tower=NumpyTower.from_keras(towers["item_tower"]),
        student=NumpyStudent.from_keras(student),
    )

    rng = np.random.default_rng(seed)
    query_inputs = random_features(encoders, student.input_specs()["query"], verify_rows, rng, lengths)
    query_inputs.update(
        random_features(
            encoders,
            towers["query_tower"].layout.tensor_spec(sequence_lengths=lengths),
            verify_rows,
            rng,
            lengths,
            skip=query_inputs,
        )
    )
    rows = rng.integers(0, len(catalog["item_id"]), size=verify_rows)
    item_inputs = {k: np.asarray(v)[rows] for k, v in catalog.items()}
    checks = {}
    for name, inputs in (("query_tower", query_inputs), ("item_tower", item_inputs)):
        serve = load_tower(paths[name])
        keys = towers[name].layout.names()
        expected = serve(**{k: tf.constant(inputs[k]) for k in keys})["embeddings"].numpy()
        checks[name] = float(np.abs(getattr(models, name)({k: inputs[k] for k in keys}) - expected).max())
    serve = load_ranker(paths["student"])
    specs = student.input_specs()
    query_embeddings = item_embeddings = None
    if models.student.uses_tower_embeddings:
        query_embeddings = models.query_tower(query_inputs)
        item_embeddings = models.item_tower(item_inputs)
        query_inputs = {**query_inputs, "query_embedding": query_embeddings}
        item_inputs = {**item_inputs, "item_embedding": item_embeddings}
    flat = {k: tf.constant(query_inputs[k]) for k in specs["query"]} | {
        k: tf.constant(item_inputs[k]) for k in specs["item"]
    }
    expected = serve(**flat)["logits"].numpy()
    table = models.student.item_table(item_inputs, item_embeddings)
    state = models.student.query_state(query_inputs, query_embeddings)
    got = models.student.score(state, table, np.arange(verify_rows)[:, None])[:, 0]
    # Pair i = query i with item i: the diagonal of a [B, 1] candidate matrix over a B-row item table.
    checks["student"] = float(np.abs(got - expected).max())
    bad = {k: v for k, v in checks.items() if not v <= verify_tolerance}
    if bad:
        raise RuntimeError(
            f"the numpy serving models differ from the SavedModels in {model_dir} by {bad} (tolerance "
            f"{verify_tolerance}): the model directory and this version of Cascade disagree on the model structure"
        )
    logger.info("numpy serving models match the SavedModels (max abs difference %s)", checks)
    return models


def restore_keras_models(
    model_dir: str | Path,
    encoders: FeatureEncoders,
    catalog: Mapping[str, np.ndarray],
    *,
    mode: str = "distilled",
    teacher: bool = False,
) -> dict[str, Any]:
    """The trained Keras models of ``mode`` (and the teacher), rebuilt from ``config.json`` and their SavedModels.

    Args:
        model_dir: A directory written by `distill.save_cascade`.
        encoders: Its encoders.
        catalog: An encoded catalog (fills the cross features' item table before the saved values replace it).
        mode: ``"distilled"`` or ``"label_only"``.
        teacher: Whether to restore the teacher too.

    Returns:
        ``{"student", "query_tower", "item_tower"}`` (and ``"teacher"``) Keras models with the trained weights.

    Raises:
        FileNotFoundError: When ``model_dir`` lacks one of them.
        ValueError: When a SavedModel's variables do not match the rebuilt model.
    """
    import tensorflow as tf

    from distill.trainer import CascadeConfig
    from ranking import StudentRanker, TeacherRanker
    from retrieval import ItemTower, QueryTower

    model_dir = Path(model_dir)
    paths = {
        "config": model_dir / "config.json",
        "student": model_dir / f"student_{mode}",
        "query_tower": model_dir / f"two_tower_{mode}" / "query_tower",
        "item_tower": model_dir / f"two_tower_{mode}" / "item_tower",
    }
    if teacher:
        paths["teacher"] = model_dir / "teacher"
    for name, path in paths.items():
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: `model_dir` should be a directory written by save_cascade / `cascade train` "
                f"with the {mode!r} models ({name})"
            )
    config = CascadeConfig.from_dict(json.loads(paths["config"].read_text(encoding="utf-8")))
    models: dict[str, Any] = {}
    student = StudentRanker(encoders, catalog, config.student.model)
    _restore(tf.train.Checkpoint(model=student), paths["student"])
    models["student"] = student
    lengths = _sequence_lengths(encoders, catalog)
    for name, cls in (("query_tower", QueryTower), ("item_tower", ItemTower)):
        tower = cls.from_encoders(encoders, config.two_tower.tower)
        spec = tower.layout.tensor_spec(sequence_lengths=lengths)
        tower({k: tf.zeros([1, *s.shape[1:]], s.dtype) for k, s in spec.items()}, training=False)
        _restore(tf.train.Checkpoint(tower_variables=list(tower.variables)), paths[name])
        models[name] = tower
    if teacher:
        model = TeacherRanker(encoders, catalog, config.teacher.model)
        _restore(tf.train.Checkpoint(model=model), paths["teacher"])
        models["teacher"] = model
    return models


def restore_teacher(model_dir: str | Path, encoders: FeatureEncoders, catalog: Mapping[str, np.ndarray]) -> Any:
    """The trained teacher alone (`restore_keras_models` restores every model): ``<model_dir>/teacher`` rebuilt
    from ``config.json`` with its saved variables.

    Raises:
        FileNotFoundError: When ``model_dir`` has no ``teacher`` or ``config.json``.
        ValueError: When the SavedModel's variables do not match the rebuilt model.
    """
    import tensorflow as tf

    from distill.trainer import CascadeConfig
    from ranking import TeacherRanker

    model_dir = Path(model_dir)
    for path in (model_dir / "config.json", model_dir / "teacher"):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: `model_dir` should be a directory written by save_cascade / `cascade train`"
            )
    config = CascadeConfig.from_dict(json.loads((model_dir / "config.json").read_text(encoding="utf-8")))
    model = TeacherRanker(encoders, catalog, config.teacher.model)
    _restore(tf.train.Checkpoint(model=model), model_dir / "teacher")
    return model


def random_features(
    encoders: FeatureEncoders,
    specs: Mapping[str, Any],
    rows: int,
    rng: np.random.Generator,
    lengths: Mapping[str, int],
    *,
    skip: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Random valid encoded features for ``specs`` (indices within each vocabulary, some padding, numerics)."""
    sizes = encoders.vocabulary_sizes
    out: dict[str, np.ndarray] = {}
    for key, spec in specs.items():
        if skip is not None and key in skip:
            continue
        if key == "history_length":
            continue
        if spec.dtype.is_integer:
            high = sizes.get(key, 2)
            shape = (rows, lengths[key]) if key in lengths else (rows,)
            values = rng.integers(0, high, size=shape).astype(np.int32)
            if values.ndim == 2:  # trailing padding of random length, some rows all padding
                keep = rng.integers(0, values.shape[1] + 1, size=rows)
                values[np.arange(values.shape[1])[None, :] >= keep[:, None]] = 0
            out[key] = values
        else:
            out[key] = rng.normal(size=rows).astype(np.float32)
            if key.endswith("_missing"):
                out[key] = (out[key] > 1.0).astype(np.float32)
    if "history" in out and "history_length" in specs:
        out["history_length"] = (out["history"] != 0).sum(axis=1).astype(np.int32)
    return out


def _sequence_lengths(encoders: FeatureEncoders, catalog: Mapping[str, np.ndarray]) -> dict[str, int]:
    lengths = {k: int(np.asarray(v).shape[1]) for k, v in catalog.items() if np.asarray(v).ndim == 2}
    lengths.update({"query_tokens": encoders.config.max_query_tokens, "history": encoders.config.max_history})
    return lengths


def _restore(checkpoint: Any, savedmodel: Path) -> None:
    prefix = savedmodel / "variables" / "variables"
    try:
        checkpoint.read(str(prefix)).assert_existing_objects_matched()
    except (AssertionError, ValueError) as e:
        raise ValueError(
            f"{prefix} does not match the model rebuilt from config.json: {e} (was the directory written by a "
            "different version of Cascade, or edited?)"
        ) from e


def build_index(
    model_dir: str | Path,
    items: pd.DataFrame | str | Path,
    out_dir: str | Path,
    config: BuildConfig | None = None,
    *,
    users: pd.DataFrame | str | Path | None = None,
    overwrite: bool = False,
    progress: bool = False,
    embedder: Callable[[pd.DataFrame, Path], np.ndarray] | None = None,
) -> Manifest:
    """Builds an index bundle (see `index.bundle`) for a catalog.

    Args:
        model_dir: A directory written by `distill.save_cascade` (``cascade train`` writes ``<out>/models``).
        items: The catalog to index: a DataFrame or table file with ``item_id`` and the attribute columns the
            encoders were fitted on, or a data set folder/spec (its users table is then used too).
        out_dir: The bundle directory to create.
        config: Build options; ``BuildConfig()`` by default.
        users: Optional user table (``user_id`` + the user attribute columns), stored so known users' attributes
            are filled in at query time; overrides the users of a data set given as ``items``.
        overwrite: Whether to replace an existing ``out_dir`` (atomically).
        progress: Whether to show progress bars.
        embedder: What embeds the catalog: ``embedder(table, directory)`` writes ``item_embeddings.npy`` and
            ``student_items/<key>.npy`` (row = slot = row of ``table``) into ``directory`` as `embed_items` does,
            and returns the embeddings. ``None``: `embed_items` in this process. ``cascade.jobs.engine_embedder``
            runs it on Ray.

    Returns:
        The manifest written into ``out_dir``.

    Raises:
        FileExistsError: When ``out_dir`` exists and ``overwrite`` is False (checked before any work).
        FileNotFoundError / ValueError: For a missing model directory or a catalog that does not fit the
            encoders (the message names the column or value).
    """
    config = BuildConfig() if config is None else config
    if not isinstance(config, BuildConfig):
        raise ValueError(f"`config` should be a BuildConfig. Received: {type(config).__name__}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists: choose a new directory or pass overwrite=True")
    model_dir = Path(model_dir)
    if not (model_dir / ENCODERS_DIR).is_dir():
        raise FileNotFoundError(
            f"{model_dir / ENCODERS_DIR} is missing: `model_dir` should be a directory written by save_cascade / "
            "`cascade train` (<out>/models)"
        )
    timings: dict[str, float] = {}
    start = time.perf_counter()
    encoders = FeatureEncoders.load(model_dir / ENCODERS_DIR)
    table, dataset_users = read_items(items)
    table = check_items(table, encoders)
    if users is not None:
        user_table = users if isinstance(users, pd.DataFrame) else read_items(users)[0]
    else:
        user_table = dataset_users
    user_table = check_users(user_table, encoders)
    timings["read"] = time.perf_counter() - start

    tick = time.perf_counter()
    sample = table.iloc[: min(len(table), 4096)]
    models = load_serving_models(
        model_dir,
        encoders,
        encoders.encode_items(sample),
        mode=config.mode,
        verify_rows=config.verify_rows,
        verify_tolerance=config.verify_tolerance,
        seed=config.seed,
    )
    timings["load_models"] = time.perf_counter() - tick

    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        tick = time.perf_counter()
        if embedder is None:
            embeddings = embed_items(table, encoders, models, tmp, batch_size=config.batch_size, progress=progress)
        else:
            embeddings = embedder(table, tmp)
            _check_embedded(tmp, embeddings, models, num_items=len(table))
        timings["embed"] = time.perf_counter() - tick
        tick = time.perf_counter()
        slots = np.arange(len(table), dtype=np.int64)
        ann = AnnIndex.build(embeddings, slots, config.index, progress=progress)
        ann.write(tmp / INDEX_FILE)
        timings["index"] = time.perf_counter() - tick

        tick = time.perf_counter()
        np.save(tmp / ACTIVE_FILE, np.ones(len(table), dtype=bool), allow_pickle=False)
        write_parquet(table, tmp / ITEMS_FILE)
        if user_table is not None:
            write_parquet(user_table, tmp / USERS_FILE)
        encoders.save(tmp / ENCODERS_DIR)
        models.query_tower.save(tmp / QUERY_TOWER_DIR)
        models.item_tower.save(tmp / ITEM_TOWER_DIR)
        models.student.save(tmp / STUDENT_DIR)
        (tmp / SAVEDMODEL_DIR).mkdir()
        shutil.copytree(model_dir / f"two_tower_{config.mode}" / "query_tower", tmp / SAVEDMODEL_DIR / "query_tower")
        shutil.copytree(model_dir / f"student_{config.mode}", tmp / SAVEDMODEL_DIR / "student")
        timings["write"] = time.perf_counter() - tick

        cascade_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))

        def make_manifest(files: dict[str, FileEntry]) -> Manifest:
            return Manifest(
                embedding_dim=int(embeddings.shape[1]),
                index=describe_ann(ann),
                items=describe_items(table, encoders, num_active=len(table)),
                models=describe_models(models, mode=config.mode),
                files=files,
                config={
                    "build": config.to_dict(),
                    "cascade": cascade_config,
                    "source": {"model_dir": str(model_dir.resolve()), "items": _describe_source(items)},
                    "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
                },
                versions=library_versions(),
            )

        manifest = write_manifest(tmp, make_manifest)
    logger.info(
        "built %s: %d items, %s, %.1fs (%s)",
        out_dir,
        len(table),
        manifest.index["factory"],
        time.perf_counter() - start,
        ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()),
    )
    return manifest


def embed_items(
    table: pd.DataFrame,
    encoders: FeatureEncoders,
    models: ServingModels,
    directory: Path,
    *,
    batch_size: int,
    progress: bool = False,
) -> np.ndarray:
    """Encodes and embeds the catalog ``batch_size`` rows at a time into memory-mapped files of ``directory``.

    Writes ``item_embeddings.npy`` and ``student_items/<key>.npy``; returns the embeddings (memory-mapped).
    """
    num_items = len(table)
    dim = models.item_tower.output_dim
    embeddings = np.lib.format.open_memmap(
        directory / EMBEDDINGS_FILE, mode="w+", dtype=np.float32, shape=(num_items, dim)
    )
    (directory / STUDENT_ITEMS_DIR).mkdir()
    student_files: dict[str, np.memmap] = {}
    bar = tqdm(total=num_items, desc="embed catalog", unit="item", disable=not progress, leave=False)
    for start in range(0, num_items, batch_size):
        stop = min(start + batch_size, num_items)
        encoded = encoders.encode_items(table.iloc[start:stop])
        embeddings[start:stop] = models.item_tower(encoded)
        parts = models.student.item_table(
            encoded, embeddings[start:stop] if models.student.uses_tower_embeddings else None
        )
        for key, values in parts.items():
            if key not in student_files:
                student_files[key] = np.lib.format.open_memmap(
                    directory / STUDENT_ITEMS_DIR / f"{_file_key(key)}.npy",
                    mode="w+",
                    dtype=values.dtype,
                    shape=(num_items, *values.shape[1:]),
                )
            student_files[key][start:stop] = values
        bar.update(stop - start)
    bar.close()
    for array in student_files.values():
        array.flush()
    embeddings.flush()
    return embeddings


def _check_embedded(directory: Path, embeddings: np.ndarray, models: ServingModels, *, num_items: int) -> None:
    """An external embedder wrote what `embed_items` writes: the embeddings and one table per student key."""
    expected = (num_items, models.item_tower.output_dim)
    if np.shape(embeddings) != expected or not (directory / EMBEDDINGS_FILE).is_file():
        raise ValueError(
            f"the embedder should write {EMBEDDINGS_FILE} of shape {expected} and return it. Received: shape "
            f"{np.shape(embeddings)}, file present: {(directory / EMBEDDINGS_FILE).is_file()}"
        )
    for path in sorted((directory / STUDENT_ITEMS_DIR).glob("*.npy")):
        rows = np.load(path, mmap_mode="r", allow_pickle=False).shape[0]
        if rows != num_items:
            raise ValueError(f"the embedder wrote {path.name} with {rows} rows for {num_items} items")


def _file_key(key: str) -> str:
    if not key.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"student item-table key {key!r} is not a safe file name")
    return key


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Writes a table as Parquet (no pandas index)."""
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


def describe_ann(ann: AnnIndex) -> dict[str, Any]:
    """The manifest's ``index`` section."""
    return {
        "factory": ann.factory,
        "dim": int(ann.dim),
        "ntotal": int(ann.ntotal),
        "nlist": ann.nlist,
        "nprobe": ann.nprobe,
        "ef_search": ann.ef_search,
        "supports_removal": bool(ann.supports_removal),
    }


def describe_items(table: pd.DataFrame, encoders: FeatureEncoders, *, num_active: int) -> dict[str, Any]:
    """The manifest's ``items`` section: counts, id kind, columns and the filterable fields."""
    filters = {}
    for column in table.columns:
        if column == ITEM_ID:
            continue
        if column in encoders.item_text:
            continue
        if pd.api.types.is_numeric_dtype(table[column]) and not pd.api.types.is_bool_dtype(table[column]):
            filters[column] = "numeric"
        else:
            filters[column] = "categorical"
    return {
        "num_slots": len(table),
        "num_active": int(num_active),
        "id_kind": encoders.item_ids.kind,
        "columns": [c for c in table.columns if c != ITEM_ID],
        "filters": filters,
    }


def describe_models(models: ServingModels, *, mode: str) -> dict[str, Any]:
    return {
        "mode": mode,
        "query_tower": {"inputs": list(models.query_tower.input_keys), "output_dim": models.query_tower.output_dim},
        "item_tower": {"inputs": list(models.item_tower.input_keys), "output_dim": models.item_tower.output_dim},
        "student": {
            "query_inputs": list(models.student.query_keys),
            "item_inputs": list(models.student.item_keys),
            "uses_tower_embeddings": models.student.uses_tower_embeddings,
        },
    }


def library_versions() -> dict[str, str]:
    import faiss

    versions = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "pyarrow": pa.__version__,
        "faiss": faiss.__version__,
    }
    try:
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    except ImportError:  # pragma: no cover - TensorFlow is a dependency
        pass
    try:
        from importlib.metadata import version

        versions["cascade"] = version("cascade-search")
    except Exception:  # pragma: no cover - not installed as a distribution
        versions["cascade"] = "unknown"
    return versions


def _describe_source(items: object) -> str:
    return f"<DataFrame {len(items)} rows>" if isinstance(items, pd.DataFrame) else str(Path(items).resolve())


__all__ = [
    "BuildConfig",
    "ServingModels",
    "build_index",
    "check_items",
    "embed_items",
    "load_serving_models",
    "read_items",
    "restore_keras_models",
    "restore_teacher",
]
