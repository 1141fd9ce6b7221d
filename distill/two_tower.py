"""The distilled two-tower model: the logQ-corrected in-batch softmax on true positives, plus listwise KD.

TFRS's `Retrieval` task fixes its labels to the identity matrix, so the teacher's knowledge enters through a
second term: for each query, a mined candidate list (positive, hard and easy negatives, the student's own top
items, see `distill.mining`) scored by the teacher, and the KL divergence between the teacher's softmax over the
list and the student's (``<q, v> / retrieval temperature``) at the distillation temperature::

    loss = retrieval_loss(in-batch softmax, logQ, accidental hits) + kd_weight * listwise_kd(student, teacher)

With ``kd_weight = 0`` this is exactly the label-only model: the ablation uses the same class, batches and
step budget.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from distill.losses import listwise_kd_loss
from retrieval import TwoTowerModel
from retrieval.model import RetrievalConfig


class DistilledTwoTowerModel(TwoTowerModel):
    """`TwoTowerModel` whose loss adds listwise distillation over mined candidate lists.

    Batches are `TwoTowerModel` batches plus ``"kd_rows"`` (``[batch, list_size]`` int32 catalog rows, -1 =
    padding) and ``"kd_scores"`` (``[batch, list_size]`` float32 teacher logits). The candidates' item features
    are gathered from the catalog held by the model.

    Args:
        query_tower: The query tower.
        item_tower: The item tower.
        catalog: Encoded catalog, ``[num_items, ...]`` per key (``encoders.encode_items``).
        config: Retrieval settings (temperature, logQ, accidental hits).
        kd_weight: Weight of the listwise KD term (0 = label-only).
        kd_temperature: Distillation temperature ``T`` applied to both score lists.
    """

    def __init__(
        self,
        query_tower: tf.keras.Model,
        item_tower: tf.keras.Model,
        *,
        catalog: Mapping[str, np.ndarray],
        config: RetrievalConfig | None = None,
        kd_weight: float = 1.0,
        kd_temperature: float = 1.0,
    ) -> None:
        super().__init__(query_tower, item_tower, config=config)
        if kd_weight < 0:
            raise ValueError(f"`kd_weight` should be a non-negative float. Received: kd_weight={kd_weight}")
        if kd_temperature <= 0:
            raise ValueError(f"`kd_temperature` should be a positive float. Received: kd_temperature={kd_temperature}")
        self.kd_weight = float(kd_weight)
        self.kd_temperature = float(kd_temperature)
        self._catalog = {k: tf.constant(np.asarray(v)) for k, v in catalog.items()}

    def candidate_scores(self, query_emb: tf.Tensor, rows: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Student logits ``<q, v> / temperature`` of ``[batch, list_size]`` candidate rows (pads score 0)."""
        flat = tf.reshape(tf.maximum(rows, 0), [-1])
        features = {k: tf.gather(v, flat) for k, v in self._catalog.items()}
        item_emb = self.item_embeddings(features, training=training)
        item_emb = tf.reshape(item_emb, [tf.shape(rows)[0], tf.shape(rows)[1], -1])
        return tf.einsum("bd,bld->bl", query_emb, item_emb) / self.config.temperature

    def compute_loss(self, features: Mapping[str, object], training: bool = False) -> tf.Tensor:
        query_emb = self.query_embeddings(features["query"], training=training)
        item_emb = self.item_embeddings(features["item"], training=training)
        loss = self.retrieval_loss(query_emb, item_emb, features["item_row"], features["sampling_probability"])
        if self.kd_weight > 0 and "kd_rows" in features:
            rows = features["kd_rows"]
            scores = self.candidate_scores(query_emb, rows, training=training)
            kd = listwise_kd_loss(
                scores, features["kd_scores"], temperature=self.kd_temperature, mask=tf.greater_equal(rows, 0)
            )
            loss = loss + self.kd_weight * kd
        return loss
