"""The cascade distillation trainer: teacher → two-tower student → ranking student, each mode, resumably.

Stages, in order, each a `distill.stage.run_stage` with its own config, checkpoints, TensorBoard logs and
progress bar:

1. **two_tower_label_only**: the retrieval student trained on labels alone. It is the ablation twin, and it
   also mines hard negatives for the teacher: a ranker that must order a whole catalog has to see the items
   a retriever confuses with the positive, not only random ones.
2. **teacher**: the DCN-v2 `TeacherRanker` on per-request lists: logged rows with graded targets, sampled
   negatives (uniform and popularity-proportional) and negatives retrieved by (1); BCE plus a listwise
   softmax term.
3. **two_tower_distilled**: the retrieval student on (query, positive) pairs with the logQ-corrected in-batch
   softmax; ``distilled`` adds listwise KD over candidate lists mined from its own current top-k every
   ``mining.refresh_every`` epochs and denoised by the teacher (`distill.mining`); ``label_only`` trains the
   same model on the same batches with the KD weight at 0.
4. **student_<mode>**: the ranking student on per-request lists (logged items, sampled negatives, and the
   candidates that mode's two-tower retrieves — the lists it re-ranks at serving time); ``distilled`` adds
   pointwise and listwise KD to the teacher's scores (`distill.ranker`).

The ranking student comes after the two-tower (not before, as a teacher → student → retriever order would
have it) because its training lists include the retriever's candidates: that is the distribution it serves.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from distill.mining import PAD, CandidateLists, MiningConfig, mine_candidate_lists, sample_columns, student_top_k
from distill.ranker import (
    RankerLossWeights,
    RankingLists,
    append_candidates,
    group_pairs_into_lists,
    make_list_dataset,
    make_ranker_train_step,
)
from distill.stage import StageResult, make_train_step, run_stage
from distill.two_tower import DistilledTwoTowerModel
from features import Dataset, EncoderConfig, FeatureEncoders, Split
from ranking import StudentConfig, StudentRanker, TeacherConfig, TeacherRanker, export_ranker, score_lists
from ranking.pairs import LabelledPairs, graded_target, make_labelled_pairs
from retrieval import ItemTower, QueryTower, TowerConfig, embed_catalog, export_towers
from retrieval.model import RetrievalConfig, item_sampling_probability

logger = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("distilled", "label_only")


@dataclass(frozen=True)
class TeacherStage:
    """Teacher training: epochs, lists per batch, learning rate, negatives per request, loss, model sizes.

    The teacher trains on per-request lists (`distill.ranker`): the request's logged items with their graded
    targets, ``negatives_per_query`` sampled negatives (``popularity_mix`` of them by popularity, the rest
    uniformly) and ``retrieved_negatives`` drawn from the label-only two-tower's top ``retrieval_depth`` for the
    request, skipping the request's logged items and the user's other positives. The loss is pointwise BCE on
    the graded targets (it keeps the logits calibrated: the pointwise KD and the evaluation's teacher gains read
    ``sigmoid(logit)``) plus ``softmax_weight`` times the listwise softmax cross-entropy of the targets
    (`distill.losses.label_softmax_loss`), which teaches the order within a request.

    Measured on the synthetic shop's validation split (full catalog, truth NDCG@10): pointwise only, 2 epochs,
    0.599 (the label-only ranking student: 0.600); with the softmax term, 1 epoch, 0.613. The teacher has 40x
    the student's parameters and memorises user-item pairs: every setting tried (dropout 0.3, L2 1e-5,
    learning rate 3e-4, 32 retrieved negatives from depth 100) was best after its first epoch and fell to
    0.53-0.57 by the third, hence 1 epoch by default.
    """

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 1e-3
    negatives_per_query: int = 8
    popularity_mix: float = 0.5
    retrieved_negatives: int = 16
    retrieval_depth: int = 50
    softmax_weight: float = 1.0
    max_list_size: int = 64
    model: TeacherConfig = field(default_factory=TeacherConfig)

    def __post_init__(self) -> None:
        _check_stage(self, positive=("epochs", "batch_size", "retrieval_depth", "max_list_size"))
        _check_counts(self, ("negatives_per_query", "retrieved_negatives"), minimum=0)
        if not 0 <= self.popularity_mix <= 1:
            raise ValueError(f"`popularity_mix` should be in [0, 1]. Received: popularity_mix={self.popularity_mix!r}")
        if not self.softmax_weight >= 0:
            raise ValueError(
                f"`softmax_weight` should be a non-negative float. Received: softmax_weight={self.softmax_weight!r}"
            )


@dataclass(frozen=True)
class TwoTowerStage:
    """Two-tower training: tower sizes, softmax temperature, KD weight and temperature, mining."""

    epochs: int = 8
    batch_size: int = 512
    learning_rate: float = 3e-3
    temperature: float = 0.05
    kd_weight: float = 1.0
    kd_temperature: float = 1.0
    tower: TowerConfig = field(default_factory=TowerConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)

    def __post_init__(self) -> None:
        _check_stage(self, positive=("epochs", "batch_size"))
        for name in ("temperature", "kd_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` should be a positive float. Received: {name}={getattr(self, name)!r}")
        if not self.kd_weight >= 0:
            raise ValueError(f"`kd_weight` should be a non-negative float. Received: kd_weight={self.kd_weight!r}")


@dataclass(frozen=True)
class StudentStage:
    """Ranking-student training: list sizes, retrieved candidates per list, loss weights of the distilled mode."""

    epochs: int = 5
    batch_size: int = 64
    learning_rate: float = 2e-3
    max_logged_per_list: int = 16
    num_retrieved: int = 8
    retrieval_depth: int = 50
    distilled: RankerLossWeights = field(
        default_factory=lambda: RankerLossWeights(label_weight=1.0, pointwise_weight=1.0, listwise_weight=1.0)
    )
    model: StudentConfig = field(default_factory=StudentConfig)

    def __post_init__(self) -> None:
        _check_stage(self, positive=("epochs", "batch_size", "max_logged_per_list", "retrieval_depth"))
        _check_counts(self, ("num_retrieved",), minimum=0)


def _check_stage(stage: Any, *, positive: tuple[str, ...]) -> None:
    """A stage's counts are integers >= 1 and its learning rate a positive number (checked before any training)."""
    _check_counts(stage, positive, minimum=1)
    rate = stage.learning_rate
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0:
        raise ValueError(f"`learning_rate` should be a positive float. Received: learning_rate={rate!r}")


def _check_counts(stage: Any, names: tuple[str, ...], *, minimum: int) -> None:
    kind = "a positive integer" if minimum == 1 else "a non-negative integer"
    for name in names:
        value = getattr(stage, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"`{name}` should be {kind}. Received: {name}={value!r}")


@dataclass(frozen=True)
class CascadeConfig:
    """Everything `train_cascade` needs; loadable from nested dicts (TOML)."""

    teacher: TeacherStage = field(default_factory=TeacherStage)
    two_tower: TwoTowerStage = field(default_factory=TwoTowerStage)
    student: StudentStage = field(default_factory=StudentStage)
    encoders: EncoderConfig = field(default_factory=EncoderConfig)
    modes: tuple[str, ...] = MODES
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes:
            raise ValueError(f"`modes` should be a non-empty subset of {MODES}. Received: modes={self.modes}")

    def to_dict(self) -> dict:
        return _to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CascadeConfig:
        return _from_plain(cls, data, "config")


def _to_plain(value: Any) -> Any:
    if is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    return value


def _from_plain(cls: type, data: Mapping[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"[{where}] has unknown key(s) {unknown}; expected a subset of {sorted(known)}")
    defaults = cls()
    values = {}
    for name, value in data.items():
        current = getattr(defaults, name)
        if value is None and "None" in str(known[name].type):
            values[name] = None
        elif is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ValueError(f"`{where}.{name}` should be a table. Received: {value!r}")
            values[name] = _from_plain(type(current), value, f"{where}.{name}")
        elif isinstance(current, tuple):
            if not isinstance(value, list | tuple):
                raise ValueError(f"`{where}.{name}` should be a list. Received: {name}={value!r}")
            values[name] = tuple(value)
        else:
            values[name] = _plain_scalar(value, current, f"{where}.{name}")
    try:
        return cls(**values)
    except ValueError as e:
        raise ValueError(f"[{where}] {e}") from e


def _plain_scalar(value: Any, default: Any, where: str) -> Any:
    """``value`` if it has the kind of the field's default (an int for an int; an int or a float for a float)."""
    if isinstance(default, bool):
        ok, expected = isinstance(value, bool), "a bool"
    elif isinstance(default, int):
        ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, expected = isinstance(value, int | float) and not isinstance(value, bool), "a number"
    elif isinstance(default, str):
        ok, expected = isinstance(value, str), "a string"
    else:
        return value  # an optional field (default None): its class checks the value
    if not ok:
        name = where.rsplit(".", 1)[-1]
        raise ValueError(f"`{where}` should be {expected}. Received: {name}={value!r}")
    return float(value) if isinstance(default, float) else value


@dataclass
class TrainedCascade:
    """The trained models of every mode, and what training did.

    Attributes:
        encoders: Fitted on the training split.
        catalog: The encoded catalog (``encoders.encode_items(dataset.items)``), rows = ``dataset.items`` rows.
        teacher: The teacher.
        two_towers: Mode -> two-tower model.
        students: Mode -> ranking student.
        stages: Every stage's result, in order.
        config: The configuration used.
    """

    encoders: FeatureEncoders
    catalog: dict[str, np.ndarray]
    teacher: TeacherRanker
    two_towers: dict[str, DistilledTwoTowerModel]
    students: dict[str, StudentRanker]
    stages: list[StageResult]
    config: CascadeConfig


def _positive_pairs(pairs: LabelledPairs, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    threshold = graded_target(np.array([dataset.schema.label.positive_threshold]), dataset.schema.label)[0]
    positive = (pairs.labels >= threshold) & ~pairs.is_sampled
    return pairs.query_index[positive], pairs.item_rows[positive]


class _UserPositives:
    """Every (user, item) training positive, to keep a user's own purchases out of mined negatives.

    Data without request ids make every row its own request, so checking a candidate against its request alone
    would let a retriever's top items — often the user's other purchases — become negatives.
    Users are identified by their encoded id (users sharing an OOV bucket share exclusions: stricter, not
    looser).
    """

    def __init__(self, pairs: LabelledPairs, dataset: Dataset, num_items: int) -> None:
        query_index, rows = _positive_pairs(pairs, dataset)
        self.num_items = num_items
        self.query_users = np.asarray(pairs.queries["user_id"], dtype=np.int64)
        self.keys = np.unique(self.query_users[query_index] * num_items + rows)

    def mask(self, query_index: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """``[n, c]`` True where ``candidates[i, j]`` is a training positive of query ``query_index[i]``'s user."""
        keys = self.query_users[query_index][:, None] * self.num_items + candidates
        found = np.searchsorted(self.keys, keys).clip(0, max(len(self.keys) - 1, 0))
        return (candidates != PAD) & (self.keys[found] == keys) if len(self.keys) else np.zeros(keys.shape, bool)


def _gather(features: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {k: np.asarray(v)[rows] for k, v in features.items()}


def add_retrieved_negatives(
    pairs: LabelledPairs,
    dataset: Dataset,
    retriever: DistilledTwoTowerModel,
    catalog: Mapping[str, np.ndarray],
    *,
    per_query: int,
    depth: int,
    seed: int,
) -> LabelledPairs:
    """Adds ``per_query`` negatives per request with a positive, drawn from the retriever's top ``depth``.

    Items logged in the request (shown, clicked or bought) are never drawn. The new pairs are labelled 0 and
    marked ``is_sampled``.
    """
    if per_query == 0:
        return pairs
    num_items = len(next(iter(catalog.values())))
    requests = np.unique(_positive_pairs(pairs, dataset)[0])
    item_emb = embed_catalog(retriever.item_tower, catalog)
    query_emb = embed_catalog(retriever.query_tower, _gather(pairs.queries, requests))
    top, _ = student_top_k(query_emb, item_emb, min(depth, num_items))
    list_queries, logged, _, _ = group_pairs_into_lists(
        pairs.query_index, pairs.item_rows, pairs.labels, max_size=max(64, per_query)
    )
    logged = logged[np.searchsorted(list_queries, requests)]
    allowed = ~(top[:, :, None] == logged[:, None, :]).any(axis=2)
    allowed &= ~_UserPositives(pairs, dataset, num_items).mask(requests, top)
    drawn = sample_columns(top, allowed, per_query, np.random.default_rng([seed, 7])).reshape(-1)
    query_index = np.repeat(requests, per_query)
    keep = drawn != PAD
    logger.info("teacher pairs: %d negatives retrieved for %d requests", int(keep.sum()), len(requests))
    return LabelledPairs(
        queries=pairs.queries,
        query_index=np.concatenate([pairs.query_index, query_index[keep]]),
        item_rows=np.concatenate([pairs.item_rows, drawn[keep]]),
        labels=np.concatenate([pairs.labels, np.zeros(int(keep.sum()), np.float32)]),
        is_sampled=np.concatenate([pairs.is_sampled, np.ones(int(keep.sum()), bool)]),
    )


def train_teacher(
    pairs: LabelledPairs,
    encoders: FeatureEncoders,
    catalog: dict[str, np.ndarray],
    stage: TeacherStage,
    *,
    directory: Path | None,
    seed: int,
    show_progress: bool = True,
) -> tuple[TeacherRanker, StageResult]:
    """Trains the teacher on per-request lists of labelled pairs (BCE plus the listwise softmax term)."""
    keras.utils.set_random_seed(seed)
    queries, rows, labels, truncated = group_pairs_into_lists(
        pairs.query_index, pairs.item_rows, pairs.labels, max_size=stage.max_list_size
    )
    if truncated:
        logger.info("teacher lists: %d pairs beyond max_list_size=%d were left out", truncated, stage.max_list_size)
    lists = RankingLists(query_index=queries, item_rows=rows, labels=labels)
    teacher = TeacherRanker(encoders, catalog, stage.model)
    optimizer = keras.optimizers.Adam(stage.learning_rate)
    weights = RankerLossWeights(label_weight=1.0, softmax_weight=stage.softmax_weight)
    result = run_stage(
        name="teacher",
        model=teacher,
        optimizer=optimizer,
        train_step=make_ranker_train_step(teacher, optimizer, catalog, weights),
        make_dataset=lambda epoch: make_list_dataset(
            lists, pairs.queries, batch_size=stage.batch_size, epoch=epoch, seed=seed
        ),
        epochs=stage.epochs,
        directory=directory,
        show_progress=show_progress,
    )
    return teacher, result


def _fit_to_catalog(config: MiningConfig, num_items: int) -> MiningConfig:
    """The mining window shrunk to a catalog smaller than ``config.top_k`` (small shops, tests)."""
    if num_items >= config.top_k:
        return config
    window_end = min(config.window_end, num_items)
    window_start = min(config.window_start, window_end - 1)
    logger.info(
        "mining: catalog of %d items < top_k=%d; window shrunk to [%d, %d)",
        num_items,
        config.top_k,
        window_start,
        window_end,
    )
    return replace(
        config,
        top_k=num_items,
        window_end=window_end,
        window_start=window_start,
        num_student_top=min(config.num_student_top, window_start),
    )


class _Miner:
    """Re-mines the two-tower's candidate lists every ``refresh_every`` epochs, cached on disk for resumes."""

    def __init__(
        self,
        model: DistilledTwoTowerModel,
        teacher: TeacherRanker,
        queries: Mapping[str, np.ndarray],
        query_index: np.ndarray,
        positive_rows: np.ndarray,
        catalog: Mapping[str, np.ndarray],
        config: MiningConfig,
        *,
        user_positives: _UserPositives,
        seed: int,
        cache_dir: Path | None,
    ) -> None:
        self.model, self.teacher, self.queries, self.catalog = model, teacher, queries, catalog
        num_items = len(next(iter(catalog.values())))
        self.query_index, self.positive_rows, self.seed = query_index, positive_rows, seed
        self.config = _fit_to_catalog(config, num_items)
        self.user_positives = user_positives
        self.cache_dir = cache_dir
        self.lists: CandidateLists | None = None
        self.mined_at = -1
        self.seconds = 0.0
        _, others, _, _ = group_pairs_into_lists(
            query_index, positive_rows, np.ones(len(query_index), np.float32), max_size=64
        )
        uniq = np.unique(query_index)
        self.exclude = others[np.searchsorted(uniq, query_index)]

    def __call__(self, epoch: int) -> None:
        refresh = epoch - epoch % self.config.refresh_every
        if refresh == self.mined_at:
            return
        path = self.cache_dir / f"mined_epoch{refresh}.npz" if self.cache_dir is not None else None
        if path is not None and path.exists():
            with np.load(path, allow_pickle=False) as data:
                self.lists = CandidateLists(data["item_rows"], data["kinds"], data["teacher_scores"])
            self.mined_at = refresh
            return
        start = time.perf_counter()
        num_items = len(next(iter(self.catalog.values())))
        item_emb = embed_catalog(self.model.item_tower, self.catalog)
        query_emb = embed_catalog(self.model.query_tower, self.queries)
        top_rows, _ = student_top_k(query_emb, item_emb, min(self.config.top_k, num_items))
        pair_top = top_rows[self.query_index]
        pair_top = np.where(self.user_positives.mask(self.query_index, pair_top), PAD, pair_top)

        def teacher_scores(rows: np.ndarray) -> np.ndarray:
            query_rows = self.query_index
            return score_lists(self.teacher, _gather(self.queries, query_rows), rows, self.catalog)

        self.lists = mine_candidate_lists(
            pair_top,
            self.positive_rows,
            num_items=num_items,
            config=self.config,
            rng=np.random.default_rng([self.seed, refresh]),
            exclude_rows=self.exclude,
            teacher_score_fn=teacher_scores,
        )
        self.mined_at = refresh
        self.seconds += time.perf_counter() - start
        logger.info(
            "mined %d candidate lists at epoch %d in %.1fs (%d candidates denoised by the teacher)",
            len(self.positive_rows),
            refresh,
            time.perf_counter() - start,
            self.lists.num_denoised,
        )
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(
                tmp, item_rows=self.lists.item_rows, kinds=self.lists.kinds, teacher_scores=self.lists.teacher_scores
            )
            tmp.replace(path)


def train_two_tower(
    mode: str,
    pairs: LabelledPairs,
    dataset: Dataset,
    encoders: FeatureEncoders,
    catalog: dict[str, np.ndarray],
    teacher: TeacherRanker | None,
    stage: TwoTowerStage,
    *,
    directory: Path | None,
    seed: int,
    show_progress: bool = True,
) -> tuple[DistilledTwoTowerModel, StageResult]:
    """Trains one two-tower student (``mode`` is ``"distilled"`` or ``"label_only"``)."""
    keras.utils.set_random_seed(seed)
    distilled = mode == "distilled"
    query_index, positive_rows = _positive_pairs(pairs, dataset)
    if len(query_index) == 0:
        raise ValueError("the training split has no positive interaction: the two-tower student has nothing to learn")
    num_items = len(next(iter(catalog.values())))
    probability = item_sampling_probability(positive_rows, num_items)
    model = DistilledTwoTowerModel(
        QueryTower.from_encoders(encoders, stage.tower),
        ItemTower.from_encoders(encoders, stage.tower),
        catalog=catalog,
        config=RetrievalConfig(temperature=stage.temperature, learning_rate=stage.learning_rate),
        kd_weight=stage.kd_weight if distilled else 0.0,
        kd_temperature=stage.kd_temperature,
    )
    queries = pairs.queries
    first = {"query": _gather(queries, query_index[:2]), "item": _gather(catalog, positive_rows[:2])}
    model.query_embeddings(first["query"])
    model.item_embeddings(first["item"])
    optimizer = keras.optimizers.Adam(stage.learning_rate)
    name = f"two_tower_{mode}"
    miner = None
    if distilled:
        if teacher is None:
            raise ValueError("the distilled two-tower needs the trained teacher. Received: teacher=None")
        miner = _Miner(
            model,
            teacher,
            queries,
            query_index,
            positive_rows,
            catalog,
            stage.mining,
            user_positives=_UserPositives(pairs, dataset, num_items),
            seed=seed,
            cache_dir=(directory / name / "mined") if directory is not None else None,
        )

    step = make_train_step(model, optimizer, lambda batch: model.compute_loss(batch, training=True))

    def make_dataset(epoch: int) -> tf.data.Dataset:
        order = np.random.default_rng([seed, epoch]).permutation(len(query_index))
        rows = positive_rows[order]
        data: dict[str, Any] = {
            "query": _gather(queries, query_index[order]),
            "item": _gather(catalog, rows),
            "item_row": rows.astype(np.int32),
            "sampling_probability": probability[rows],
        }
        if miner is not None and miner.lists is not None:
            data["kd_rows"] = miner.lists.item_rows[order].astype(np.int32)
            data["kd_scores"] = miner.lists.teacher_scores[order]
        return tf.data.Dataset.from_tensor_slices(data).batch(stage.batch_size).prefetch(tf.data.AUTOTUNE)

    result = run_stage(
        name=name,
        model=model,
        optimizer=optimizer,
        train_step=step,
        make_dataset=make_dataset,
        epochs=stage.epochs,
        directory=directory,
        on_epoch_start=miner,
        show_progress=show_progress,
    )
    return model, result


def build_ranking_lists(
    pairs: LabelledPairs,
    dataset: Dataset,
    two_tower: DistilledTwoTowerModel,
    catalog: Mapping[str, np.ndarray],
    stage: StudentStage,
) -> RankingLists:
    """Per-request lists: logged items and sampled negatives, then the two-tower's candidates for the request."""
    queries, rows, labels, truncated = group_pairs_into_lists(
        pairs.query_index, pairs.item_rows, pairs.labels, max_size=stage.max_logged_per_list
    )
    if truncated:
        logger.info("ranking lists: %d logged pairs beyond max_logged_per_list were left out", truncated)
    lists = RankingLists(query_index=queries, item_rows=rows, labels=labels)
    if stage.num_retrieved == 0:
        return lists
    num_items = len(next(iter(catalog.values())))
    item_emb = embed_catalog(two_tower.item_tower, catalog)
    query_emb = embed_catalog(two_tower.query_tower, _gather(pairs.queries, queries))
    candidates, _ = student_top_k(query_emb, item_emb, min(stage.retrieval_depth, num_items))
    # The user's positives from other requests are not negatives of this one.
    candidates = np.where(_UserPositives(pairs, dataset, num_items).mask(queries, candidates), PAD, candidates)
    return append_candidates(lists, candidates, limit=stage.num_retrieved)


def train_student(
    mode: str,
    pairs: LabelledPairs,
    dataset: Dataset,
    encoders: FeatureEncoders,
    catalog: dict[str, np.ndarray],
    teacher: TeacherRanker,
    two_tower: DistilledTwoTowerModel,
    stage: StudentStage,
    *,
    directory: Path | None,
    seed: int,
    show_progress: bool = True,
) -> tuple[StudentRanker, StageResult]:
    """Trains one ranking student (``mode`` is ``"distilled"`` or ``"label_only"``) on per-request lists."""
    keras.utils.set_random_seed(seed)
    weights = stage.distilled if mode == "distilled" else RankerLossWeights(label_weight=1.0)
    lists = build_ranking_lists(pairs, dataset, two_tower, catalog, stage)
    if weights.uses_teacher:
        scores = score_lists(teacher, _gather(pairs.queries, lists.query_index), lists.item_rows, catalog)
        lists.teacher_scores = np.where(lists.item_rows == PAD, -np.inf, scores).astype(np.float32)
    student = StudentRanker(encoders, catalog, stage.model)
    optimizer = keras.optimizers.Adam(stage.learning_rate)
    step = make_ranker_train_step(student, optimizer, catalog, weights)
    result = run_stage(
        name=f"student_{mode}",
        model=student,
        optimizer=optimizer,
        train_step=step,
        make_dataset=lambda epoch: make_list_dataset(
            lists, pairs.queries, batch_size=stage.batch_size, epoch=epoch, seed=seed
        ),
        epochs=stage.epochs,
        directory=directory,
        show_progress=show_progress,
    )
    return student, result


def train_cascade(
    dataset: Dataset,
    split: Split,
    *,
    config: CascadeConfig | None = None,
    directory: str | Path | None = None,
    show_progress: bool = True,
) -> TrainedCascade:
    """Trains the teacher, then each mode's two-tower and ranking student.

    Args:
        dataset: The data set (catalog, users, schema).
        split: Its temporal split; only ``split.train`` is read.
        config: Stage settings; ``CascadeConfig()`` by default.
        directory: Where checkpoints, TensorBoard logs and mined lists go (a rerun resumes from them);
            ``None`` keeps nothing on disk.
        show_progress: Show progress bars.

    Returns:
        A `TrainedCascade`.
    """
    config = CascadeConfig() if config is None else config
    directory = Path(directory) if directory is not None else None
    encoders = FeatureEncoders.fit(dataset, split.train, config=config.encoders)
    catalog = encoders.encode_items(dataset.items)
    started = time.perf_counter()
    pairs = make_labelled_pairs(
        dataset,
        split.train,
        encoders,
        negatives_per_query=config.teacher.negatives_per_query,
        popularity_mix=config.teacher.popularity_mix,
        seed=config.seed,
    )
    logger.info(
        "labelled pairs: %d pairs over %d requests (%.1fs)",
        len(pairs),
        pairs.num_queries,
        time.perf_counter() - started,
    )
    stages: list[StageResult] = []
    two_towers: dict[str, DistilledTwoTowerModel] = {}
    students: dict[str, StudentRanker] = {}

    def fit_two_tower(mode: str, teacher: TeacherRanker | None) -> None:
        two_towers[mode], result = train_two_tower(
            mode,
            pairs,
            dataset,
            encoders,
            catalog,
            teacher,
            config.two_tower,
            directory=directory,
            seed=config.seed,
            show_progress=show_progress,
        )
        stages.append(result)

    fit_two_tower("label_only", None)
    teacher_pairs = add_retrieved_negatives(
        pairs,
        dataset,
        two_towers["label_only"],
        catalog,
        per_query=config.teacher.retrieved_negatives,
        depth=config.teacher.retrieval_depth,
        seed=config.seed,
    )
    teacher, result = train_teacher(
        teacher_pairs,
        encoders,
        catalog,
        config.teacher,
        directory=directory,
        seed=config.seed,
        show_progress=show_progress,
    )
    stages.append(result)
    if "distilled" in config.modes:
        fit_two_tower("distilled", teacher)
    for mode in config.modes:
        students[mode], result = train_student(
            mode,
            pairs,
            dataset,
            encoders,
            catalog,
            teacher,
            two_towers[mode],
            config.student,
            directory=directory,
            seed=config.seed,
            show_progress=show_progress,
        )
        stages.append(result)
    if "label_only" not in config.modes:
        two_towers.pop("label_only")
    return TrainedCascade(
        encoders=encoders,
        catalog=catalog,
        teacher=teacher,
        two_towers=two_towers,
        students=students,
        stages=stages,
        config=config,
    )


def save_cascade(trained: TrainedCascade, directory: str | Path) -> Path:
    """Exports every trained model and the encoders into ``directory`` (which must not exist).

    Layout: ``encoders/``, ``teacher/``, ``student_<mode>/`` (SavedModels with a ``serving_default`` signature
    over flat feature tensors, returning ``{"logits"}``), ``two_tower_<mode>/`` (``query_tower/`` and
    ``item_tower/`` SavedModels returning ``{"embeddings"}``) and ``config.json``. Everything is written into a
    temporary sibling and renamed into place at the end, so a crash never leaves a half-written directory.
    """
    target = Path(directory)
    if target.exists():
        raise FileExistsError(f"{target} already exists: cascade exports are never overwritten")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        trained.encoders.save(tmp / "encoders")
        export_ranker(trained.teacher, tmp / "teacher")
        for mode, student in trained.students.items():
            export_ranker(student, tmp / f"student_{mode}")
        lengths = {k: int(np.asarray(v).shape[1]) for k, v in trained.catalog.items() if np.asarray(v).ndim == 2}
        lengths.update(
            {"query_tokens": trained.encoders.config.max_query_tokens, "history": trained.encoders.config.max_history}
        )
        for mode, model in trained.two_towers.items():
            export_towers(
                model,
                tmp / f"two_tower_{mode}",
                query_spec=model.query_tower.layout.tensor_spec(sequence_lengths=lengths),
                item_spec=model.item_tower.layout.tensor_spec(sequence_lengths=lengths),
            )
        (tmp / "config.json").write_text(json.dumps(trained.config.to_dict(), indent=2))
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


__all__ = [
    "MODES",
    "CascadeConfig",
    "StudentStage",
    "TeacherStage",
    "TrainedCascade",
    "TwoTowerStage",
    "save_cascade",
    "train_cascade",
]
