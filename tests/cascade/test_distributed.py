"""`cascade.distributed`: the two-tower student trained by two Ray Train workers under MultiWorkerMirroredStrategy.

The Ray test starts a local Ray with 2 CPUs and two one-CPU workers, which talk to each other over gRPC on
localhost (the ``TF_CONFIG`` Ray Train writes); it is the slow one (tens of seconds, mostly worker start-up and
tracing). The config tests start nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import features
from cascade.distributed import MODEL_DIR, TOWERS_DIR, TRAINING_FILE, MultiWorkerConfig, train_multiworker


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"num_workers": 0}, "num_workers"),
        ({"cpus_per_worker": 1.5}, "cpus_per_worker"),
        ({"global_batch_size": 7, "num_workers": 2}, "global_batch_size"),
        ({"epochs": True}, "epochs"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"hidden_dims": (8, 0)}, "hidden_dims"),
        ({"seed": -1}, "seed"),
        ({"synthetic_items": 5}, "synthetic_items"),
        ({"data": 3}, "data"),
        ({"teacher_lists": "lists"}, "data"),
        ({"kd_weight": -1.0, "data": "shop"}, "kd_weight"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"`{field}` should") as info:
        MultiWorkerConfig(**overrides)
    assert f"Received: {field}=" in str(info.value)


def test_config_round_trips_through_a_dict() -> None:
    config = MultiWorkerConfig(data="some/folder", hidden_dims=[8, 4], num_workers=4, global_batch_size=8)
    assert config.hidden_dims == (8, 4)
    assert MultiWorkerConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="Unknown MultiWorkerConfig fields"):
        MultiWorkerConfig.from_dict({"batch_size": 8})


def test_the_launcher_without_ray_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ImportError, match=re.escape('pip install -e ".[ray]"')):
        train_multiworker(MultiWorkerConfig(), tmp_path)
    assert not (tmp_path / MODEL_DIR).exists()


def test_the_module_imports_without_ray() -> None:
    code = "import sys; sys.modules['ray'] = None; import cascade.distributed; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


@pytest.fixture(scope="module")
def teacher_lists(trained_shop, tmp_path_factory) -> dict[str, Path]:
    """The session's tiny shop on disk, and 64 of its training positives with 6 candidates scored by its teacher."""
    from cascade import jobs

    root = tmp_path_factory.mktemp("teacher_lists")
    data = features.write_shop(trained_shop.shop, root / "shop")
    dataset = trained_shop.shop.dataset
    rows = jobs.make_training_lists(dataset, num_candidates=6, max_rows=64, max_history=8, seed=0)
    jobs.write_shards(rows, root / "rows", 2)
    dataset.items.to_parquet(root / "catalog.parquet", index=False)
    dataset.users.to_parquet(root / "users.parquet", index=False)
    jobs.score_lists(
        trained_shop.model_dir, root / "rows", root / "catalog.parquet", root / "lists", users=root / "users.parquet"
    )
    return {"data": data, "lists": root / "lists"}


def test_teacher_lists_become_aligned_pairs_with_kd_targets(trained_shop, teacher_lists) -> None:
    from cascade import jobs
    from cascade.distributed import teacher_list_pairs

    dataset = trained_shop.shop.dataset
    encoders = features.FeatureEncoders.fit(dataset, dataset.interactions)
    queries, rows, kd = teacher_list_pairs(teacher_lists["lists"], dataset, encoders)
    frame = jobs.read_shards(teacher_lists["lists"]).sort_values("query_id").reset_index(drop=True)
    ids = dataset.items["item_id"].to_numpy()
    assert len(rows) == len(frame) == 64 and kd["kd_rows"].shape == kd["kd_scores"].shape == (64, 6)
    np.testing.assert_array_equal(ids[rows], frame["item_id"].to_numpy())
    np.testing.assert_array_equal(ids[kd["kd_rows"]], np.stack(frame["candidates"]))
    np.testing.assert_array_equal(kd["kd_rows"][:, 0], rows)  # the positive leads its list
    np.testing.assert_allclose(kd["kd_scores"], np.stack(frame["teacher_logits"]), rtol=0, atol=0)
    assert all(len(v) == 64 for v in queries.values())

    # A list shorter than the others is padded with -1; logits that do not match the candidates are refused.
    def cut(column: str, n: int) -> list:
        return [list(v)[:n] if i == 0 else list(v) for i, v in enumerate(frame[column])]

    short = frame.assign(candidates=cut("candidates", 2), teacher_logits=cut("teacher_logits", 2))
    jobs.write_shards(short, teacher_lists["lists"].parent / "short", 1)
    _, _, padded = teacher_list_pairs(teacher_lists["lists"].parent / "short", dataset, encoders)
    assert (padded["kd_rows"][0, 2:] == -1).all() and (padded["kd_rows"][1:] >= 0).all()
    short = short.assign(teacher_logits=cut("teacher_logits", 1))
    jobs.write_shards(short, teacher_lists["lists"].parent / "bad", 1)
    with pytest.raises(ValueError, match=r"one logit per candidate\. Received: query_id 0 has 2 candidates and 1"):
        teacher_list_pairs(teacher_lists["lists"].parent / "bad", dataset, encoders)


@pytest.mark.slow
def test_two_ray_workers_distil_in_sync_and_worker_zero_saves_the_towers(
    ray_local, teacher_lists, tmp_path: Path
) -> None:
    pytest.importorskip("ray.train.tensorflow")
    from retrieval import load_tower

    data = teacher_lists["data"]
    config = MultiWorkerConfig(
        data=str(data),
        teacher_lists=str(teacher_lists["lists"]),
        kd_weight=1.0,
        embedding_dim=4,
        hidden_dims=(),
        output_dim=8,
        global_batch_size=16,
        epochs=2,
        learning_rate=0.05,
        num_workers=2,
        cpus_per_worker=1,
    )
    started = time.perf_counter()
    result = train_multiworker(config, tmp_path / "out")
    print(f"multi-worker training took {time.perf_counter() - started:.1f}s: {result['epochs']}")

    epochs = result["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    for epoch in epochs:
        checksums = epoch["worker_checksums"]
        assert len(checksums) == 2, epoch  # both workers took part
        assert checksums[0] > 0
        assert checksums[0] == checksums[1], epoch  # the replicas applied identical updates
    assert epochs[0]["worker_checksums"][0] != epochs[1]["worker_checksums"][0]  # and they did train
    assert epochs[1]["loss"] < epochs[0]["loss"], epochs

    model_dir = result["model_dir"]
    assert model_dir == tmp_path / "out" / MODEL_DIR
    assert not list((tmp_path / "out").glob(f".{MODEL_DIR}.tmp-*"))  # renamed into place
    saved = json.loads((model_dir / TRAINING_FILE).read_text())
    assert saved["epochs"] == epochs
    assert saved["model"] == "DistilledTwoTowerModel" and saved["config"]["teacher_lists"] == str(
        teacher_lists["lists"]
    )
    encoders = features.FeatureEncoders.load(model_dir / "encoders")
    dataset = features.load_dataset(data)
    catalog = encoders.encode_items(dataset.items)
    item_tower = load_tower(model_dir / TOWERS_DIR / "item_tower")
    embeddings = item_tower(**{k: np.asarray(v)[:5] for k, v in catalog.items()})["embeddings"].numpy()
    assert embeddings.shape == (5, 8)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    assert (model_dir / TOWERS_DIR / "query_tower" / "saved_model.pb").is_file()
