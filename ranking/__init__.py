"""Rankers: the cross-feature `TeacherRanker` (DCN-v2) and the light `StudentRanker`.

Labelled pairs (`make_labelled_pairs`, `make_pair_dataset`), label-only training (`train_ranker`), exact full
ranking of a catalog with the teacher (`full_rank`), scoring of pairs and candidate lists, cost accounting
(`flops_per_pair`) and SavedModel export.
"""

import features  # noqa: F401  (selects Keras 2 before anything can touch tf.keras)
from ranking.cost import flops_per_pair
from ranking.cross_features import CrossFeatures, ItemAttributeTable, cosine_similarity, item_attribute_table
from ranking.export import export_ranker, load_ranker
from ranking.full_ranking import FullRanker, FullRanking, full_rank, score_lists, score_pairs
from ranking.pairs import LabelledPairs, graded_target, make_labelled_pairs, make_pair_dataset
from ranking.student import StudentConfig, StudentRanker
from ranking.teacher import TeacherConfig, TeacherRanker
from ranking.training import compile_ranker, graded_bce, train_ranker

__all__ = [
    "CrossFeatures",
    "FullRanker",
    "FullRanking",
    "ItemAttributeTable",
    "LabelledPairs",
    "StudentConfig",
    "StudentRanker",
    "TeacherConfig",
    "TeacherRanker",
    "compile_ranker",
    "cosine_similarity",
    "export_ranker",
    "flops_per_pair",
    "full_rank",
    "graded_bce",
    "graded_target",
    "item_attribute_table",
    "load_ranker",
    "make_labelled_pairs",
    "make_pair_dataset",
    "score_lists",
    "score_pairs",
    "train_ranker",
]
