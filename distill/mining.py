"""Candidate lists for listwise distillation: the positive, hard negatives, easy negatives and the student's top.

Hard negatives come from the student's *own current* ranking (exact inner-product search with FAISS
``IndexFlatIP``, or numpy), sampled from a rank window that skips the very top (the top ranks of a decent
student are often unlabelled positives), and are **denoised** by the teacher: a candidate the teacher scores
above the query's positive is not used as a negative. Easy negatives are uniform over the catalog. A few of the
student's own top items are included so the student learns the teacher's order where its own mistakes are.

Lists are ``[num_queries, list_size]`` item rows with ``PAD`` (-1) for empty slots; column 0 is the positive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

PAD = -1
KIND_PAD, KIND_POSITIVE, KIND_HARD, KIND_EASY, KIND_TOP = -1, 0, 1, 2, 3


@dataclass(frozen=True)
class MiningConfig:
    """How candidate lists are built.

    Attributes:
        top_k: Depth of the student's ranking that is searched.
        window_start: First rank (0-based) hard negatives may come from.
        window_end: One past the last rank hard negatives may come from (``<= top_k``).
        num_hard: Hard negatives per list.
        num_easy: Uniform random negatives per list.
        num_student_top: The student's own top items (ranks ``< window_start``) per list.
        denoise: Drop hard negatives (and top items) the teacher scores above the positive.
        refresh_every: Epochs between re-mining (read by the trainer).
    """

    top_k: int = 100
    window_start: int = 5
    window_end: int = 100
    num_hard: int = 8
    num_easy: int = 8
    num_student_top: int = 2
    denoise: bool = True
    refresh_every: int = 2

    def __post_init__(self) -> None:
        for name in ("top_k", "refresh_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` should be a positive integer. Received: {name}={getattr(self, name)}")
        for name in ("num_hard", "num_easy", "num_student_top", "window_start"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` should be a non-negative integer. Received: {name}={getattr(self, name)}")
        if not self.window_start < self.window_end <= self.top_k:
            raise ValueError(
                "`window_start < window_end <= top_k` should hold. Received: "
                f"window_start={self.window_start}, window_end={self.window_end}, top_k={self.top_k}"
            )
        if self.num_student_top > self.window_start:
            raise ValueError(
                "`num_student_top` should be at most `window_start` (top items come from above the window). "
                f"Received: num_student_top={self.num_student_top}, window_start={self.window_start}"
            )

    @property
    def list_size(self) -> int:
        return 1 + self.num_hard + self.num_easy + self.num_student_top


@dataclass
class CandidateLists:
    """Per-query candidate lists.

    Attributes:
        item_rows: ``[num_queries, list_size]`` int64 catalog rows, ``PAD`` where empty; column 0 = positive.
        kinds: ``[num_queries, list_size]`` int8: ``KIND_POSITIVE``, ``KIND_HARD``, ``KIND_EASY``, ``KIND_TOP``
            or ``KIND_PAD``.
        teacher_scores: ``[num_queries, list_size]`` float32 teacher logits (``-inf`` on padding), or ``None``
            when mined without a teacher.
        num_denoised: How many hard/top candidates the teacher removed.
    """

    item_rows: np.ndarray
    kinds: np.ndarray
    teacher_scores: np.ndarray | None
    num_denoised: int = 0

    @property
    def mask(self) -> np.ndarray:
        return self.item_rows != PAD


def student_top_k(query_embeddings: np.ndarray, item_embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of every query over the catalog (FAISS ``IndexFlatIP``).

    Args:
        query_embeddings: ``[num_queries, dim]`` float32.
        item_embeddings: ``[num_items, dim]`` float32.
        k: How many items per query (at most ``num_items``).

    Returns:
        ``(item_rows [num_queries, k] int64, scores [num_queries, k] float32)``, best first.
    """
    xq = np.ascontiguousarray(query_embeddings, dtype=np.float32)
    xb = np.ascontiguousarray(item_embeddings, dtype=np.float32)
    if xq.ndim != 2 or xb.ndim != 2 or xq.shape[1] != xb.shape[1]:
        raise ValueError(
            "`query_embeddings` [num_queries, dim] and `item_embeddings` [num_items, dim] should share dim. "
            f"Received: {xq.shape} and {xb.shape}"
        )
    if not 0 < k <= xb.shape[0]:
        raise ValueError(f"`k` should be an integer in [1, num_items={xb.shape[0]}]. Received: k={k}")
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    D, I = index.search(xq, k)  # noqa: E741  (FAISS names stay at the FAISS call site)
    return I.astype(np.int64), D.astype(np.float32)


def sample_columns(candidates: np.ndarray, valid: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``count`` valid entries per row, uniformly at random without replacement; ``PAD`` where short."""
    if count == 0:
        return np.full((candidates.shape[0], 0), PAD, dtype=np.int64)
    keys = np.where(valid, rng.random(candidates.shape), np.inf)
    picked = np.argsort(keys, axis=1)[:, :count]
    rows = np.take_along_axis(candidates, picked, axis=1)
    ok = np.take_along_axis(valid, picked, axis=1)
    return np.where(ok, rows, PAD).astype(np.int64)


def mine_candidate_lists(
    student_top_rows: np.ndarray,
    positive_rows: np.ndarray,
    *,
    num_items: int,
    config: MiningConfig,
    rng: np.random.Generator,
    exclude_rows: np.ndarray | None = None,
    teacher_score_fn: Callable[[np.ndarray], np.ndarray] | None = None,
) -> CandidateLists:
    """Builds one candidate list per query from the student's current top-k.

    Args:
        student_top_rows: ``[num_queries, >= window_end]`` the student's ranking (catalog rows, best first).
        positive_rows: ``[num_queries]`` the positive item's row of each query.
        num_items: Catalog size (easy negatives are drawn from ``range(num_items)``).
        config: Mining settings.
        rng: Random generator (seeded by the caller).
        exclude_rows: Optional ``[num_queries, p]`` other items that must not be negatives (the query's other
            positives), ``PAD`` padded.
        teacher_score_fn: ``rows [num_queries, list_size] -> teacher logits [num_queries, list_size]``. With it,
            lists carry teacher scores and hard/top candidates scored above the positive are dropped
            (``config.denoise``).

    Returns:
        `CandidateLists`.
    """
    top = np.asarray(student_top_rows, dtype=np.int64)
    positives = np.asarray(positive_rows, dtype=np.int64)
    num_queries = len(positives)
    if top.ndim != 2 or top.shape[0] != num_queries or top.shape[1] < config.window_end:
        raise ValueError(
            f"`student_top_rows` should have shape [num_queries={num_queries}, >= window_end={config.window_end}]. "
            f"Received: {top.shape}"
        )
    forbidden = positives[:, None]
    if exclude_rows is not None:
        forbidden = np.concatenate([forbidden, np.asarray(exclude_rows, dtype=np.int64)], axis=1)

    def allowed(rows: np.ndarray) -> np.ndarray:
        return (rows != PAD) & ~(rows[:, :, None] == forbidden[:, None, :]).any(axis=2)

    window = top[:, config.window_start : config.window_end]
    hard = sample_columns(window, allowed(window), config.num_hard, rng)
    head = top[:, : config.window_start]
    top_items = sample_columns(head, allowed(head), config.num_student_top, rng) if config.num_student_top else None
    easy = rng.integers(0, num_items, size=(num_queries, config.num_easy), dtype=np.int64)
    taken = np.concatenate([hard, *([top_items] if top_items is not None else [])], axis=1)
    easy_ok = allowed(easy) & ~(easy[:, :, None] == taken[:, None, :]).any(axis=2)
    easy = np.where(easy_ok, easy, PAD)
    # Duplicates among easy negatives themselves: keep the first.
    for j in range(1, easy.shape[1]):
        dup = (easy[:, j : j + 1] == easy[:, :j]).any(axis=1) & (easy[:, j] != PAD)
        easy[dup, j] = PAD

    parts = [positives[:, None], hard, *([top_items] if top_items is not None else []), easy]
    kinds_parts = [
        np.full((num_queries, 1), KIND_POSITIVE),
        np.full(hard.shape, KIND_HARD),
        *([np.full(top_items.shape, KIND_TOP)] if top_items is not None else []),
        np.full(easy.shape, KIND_EASY),
    ]
    rows = np.concatenate(parts, axis=1)
    kinds = np.where(rows == PAD, KIND_PAD, np.concatenate(kinds_parts, axis=1)).astype(np.int8)
    if teacher_score_fn is None:
        return CandidateLists(item_rows=rows, kinds=kinds, teacher_scores=None)
    scores = np.asarray(teacher_score_fn(rows), dtype=np.float32)
    if scores.shape != rows.shape:
        raise ValueError(f"`teacher_score_fn` should return shape {rows.shape}. Received: {scores.shape}")
    num_denoised = 0
    if config.denoise:
        above = (scores > scores[:, :1]) & ((kinds == KIND_HARD) | (kinds == KIND_TOP))
        num_denoised = int(above.sum())
        rows = np.where(above, PAD, rows)
        kinds = np.where(above, KIND_PAD, kinds).astype(np.int8)
    scores = np.where(rows == PAD, -np.inf, scores).astype(np.float32)
    return CandidateLists(item_rows=rows, kinds=kinds, teacher_scores=scores, num_denoised=num_denoised)
