"""`cascade jobs ...` end to end on the local engine: requests -> teacher-rank -> evaluate, embed -> build-index.

The same jobs through Ray are compared with the local loop in ``test_jobs.py``; here the command line is checked:
arguments reach the jobs, outputs land where asked, errors are one ``error:`` line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import features
from cascade import jobs
from cascade.cli import main


def test_jobs_pipeline_through_the_command_line(trained_shop, flat_bundle, tmp_path: Path, capsys) -> None:
    data = features.write_shop(trained_shop.shop, tmp_path / "shop")
    model = str(trained_shop.model_dir)
    catalog = tmp_path / "catalog.parquet"
    trained_shop.shop.dataset.items.to_parquet(catalog, index=False)
    users = tmp_path / "users.parquet"
    trained_shop.shop.dataset.users.to_parquet(users, index=False)

    assert main(["jobs", "requests", "--data", str(data), "--out", str(tmp_path / "req"), "--shards", "2"]) == 0
    requests = jobs.read_shards(tmp_path / "req")
    assert len(requests) > 0 and {"query_id", "relevant", "gains", "history"} <= set(requests.columns)
    args = ["--model", model, "--queries", str(tmp_path / "req"), "--items", str(catalog), "--users", str(users)]
    assert main(["jobs", "teacher-rank", *args, "--out", str(tmp_path / "ranked"), "--depth", "20"]) == 0
    assert main(["jobs", "evaluate", "--index", str(flat_bundle), "--requests", str(tmp_path / "ranked"),
                 "--out", str(tmp_path / "eval"), "--k", "10", "20"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["requests"] == len(requests)
    assert {"truth/ndcg@10", "truth/recall@20", "teacher/ndcg@10", "teacher/recall@10@20"} <= set(summary["metrics"])
    assert "truth/ndcg@10" in out and f"{len(requests)} requests" in out

    assert main(["jobs", "training-lists", "--data", str(data), "--out", str(tmp_path / "rows"), "--candidates", "4",
                 "--max-rows", "30", "--shards", "3"]) == 0  # fmt: skip
    rows = jobs.read_shards(tmp_path / "rows")
    assert len(rows) == 30
    assert all(len(c) == 4 and c[0] == i for c, i in zip(rows["candidates"], rows["item_id"], strict=True))
    args = ["--model", model, "--lists", str(tmp_path / "rows"), "--items", str(catalog), "--users", str(users)]
    assert main(["jobs", "score-lists", *args, "--out", str(tmp_path / "lists")]) == 0
    assert all(len(v) == 4 for v in jobs.read_shards(tmp_path / "lists")["teacher_logits"])

    jobs.write_shards(trained_shop.shop.dataset.items, tmp_path / "items", 2)
    assert main(["jobs", "embed", "--model", model, "--items", str(tmp_path / "items"),
                 "--out", str(tmp_path / "emb")]) == 0  # fmt: skip
    assert main(["jobs", "build-index", "--embeddings", str(tmp_path / "emb"), "--factory", "IVF4,Flat",
                 "--out", str(tmp_path / "ivf")]) == 0  # fmt: skip
    index, item_ids = jobs.open_sharded_index(tmp_path / "ivf")
    ids, embeddings = jobs.read_embeddings(tmp_path / "emb")
    import faiss

    # Each item finds itself first (all 4 lists probed).
    _, slots = index.search(embeddings[:5], 1, params=faiss.SearchParametersIVF(nprobe=4))
    np.testing.assert_array_equal(item_ids[slots[:, 0]], ids[:5])


def test_job_errors_are_one_line(trained_shop, tmp_path: Path, capsys) -> None:
    code = main(["jobs", "embed", "--model", str(tmp_path / "nope"), "--items", str(tmp_path), "--out",
                 str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and "encoders is missing" in err and len(err.splitlines()) == 1
    code = main(["jobs", "embed", "--model", str(trained_shop.model_dir), "--items", str(tmp_path), "--out",
                 str(tmp_path / "o"), "--ray-address", "auto"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "need --engine ray" in err
    code = main(["jobs", "embed", "--model", str(trained_shop.model_dir), "--items", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 1 and "does not exist" in capsys.readouterr().err
    code = main(["train-distributed", "--out", str(tmp_path / "d"), "--teacher-lists", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "`data` should be the data set the teacher lists were made from" in err
