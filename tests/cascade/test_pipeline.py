"""The main job end to end through the CLI, in-process, on a tiny synthetic shop: every stage, every report file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cascade.cli import main

TINY_RUN = """
[synthetic]
num_users = 300
num_items = 200
num_interactions = 6000
seed = 1

[train]
modes = ["distilled", "label_only"]

[train.teacher]
epochs = 2
batch_size = 128
negatives_per_query = 4
retrieved_negatives = 4
retrieval_depth = 20
model = { embedding_dim = 8, deep_layers = [32, 16] }

[train.two_tower]
epochs = 2
batch_size = 64
tower = { embedding_dim = 8, hidden_dims = [16], output_dim = 16 }
mining = { top_k = 30, window_start = 3, window_end = 30, num_hard = 4, num_easy = 2, num_student_top = 1 }

[train.student]
epochs = 1
batch_size = 32
num_retrieved = 4
retrieval_depth = 20
model = { embedding_dim = 4, deep_layers = [16] }

[build.index]
factory = "IVF4,Flat"
nprobe = 2

[evaluate]
max_queries = 60
num_candidates = 50
ks = [1, 10, 50]
candidate_ks = [10, 50]
teacher_ms = [1, 10]
latency_queries = 20
teacher_latency_queries = 3

[examples]
count = 2
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("run")
    config = root / "tiny.toml"
    config.write_text(TINY_RUN)
    out = root / "out"
    capture = root / "stdout.txt"
    import contextlib
    import io

    buffer = io.StringIO()
    previous = os.environ.get("CASCADE_CACHE_DIR")
    os.environ["CASCADE_CACHE_DIR"] = str(root / "cache")  # never the user's ~/.cache
    try:
        with contextlib.redirect_stdout(buffer):
            code = main(["run", "--config", str(config), "--out", str(out), "--no-progress"])
    finally:
        if previous is None:
            os.environ.pop("CASCADE_CACHE_DIR", None)
        else:
            os.environ["CASCADE_CACHE_DIR"] = previous
    capture.write_text(buffer.getvalue())
    assert code == 0, buffer.getvalue()
    return out, buffer.getvalue()


def test_every_stage_prints_a_line_with_its_time(run) -> None:
    _, printed = run
    for stage in ("[1/5] generated the synthetic shop", "[2/5] trained", "[3/5] built the index", "[4/5] evaluated"):
        assert stage in printed
    assert "FAISS IVF4,Flat" in printed
    assert "cascade_distilled" in printed and "cascade_label_only" in printed and "popularity" in printed
    assert "[5/5] example searches" in printed and printed.count("user ") >= 2
    assert "report: " in printed


def test_the_report_files_and_their_keys(run) -> None:
    out, _ = run
    report_dir = out / "report"
    for name in ("report.json", "report.md", "recall_at_k.png", "recall_m_at_k.png", "latency_vs_recall.png"):
        assert (report_dir / name).is_file() and (report_dir / name).stat().st_size > 0, name
    report = json.loads((report_dir / "report.json").read_text())
    systems = report["systems"]
    for system in ("teacher", "cascade_distilled", "cascade_label_only", "popularity"):
        assert system in systems
        for metric in ("truth/ndcg@10", "truth/recall@10", "teacher/ndcg@10", "teacher/recall@10@50"):
            assert 0.0 <= systems[system][metric] <= 1.0, (system, metric)
        assert "oracle/ndcg@10" in systems[system]  # the synthetic shop's true relevance
    for system in ("cascade_distilled", "cascade_label_only", "teacher"):
        assert (
            systems[system]["latency_ms/p50"] > 0
            and systems[system]["latency_ms/p99"] >= systems[system]["latency_ms/p50"]
        )
    assert systems["teacher"]["teacher/ndcg@10"] == pytest.approx(1.0)
    assert systems["teacher"]["teacher/recall@10@10"] == pytest.approx(1.0)
    assert 0.0 <= systems["two_tower_distilled"]["ann/recall@10"] <= 1.0
    assert 0 < report["queries"]["evaluated"] <= 60  # every held-out request of this tiny shop (fewer than 60)
    assert report["teacher_cache"]["hit"] is False
    assert set(report["checks"]) == {
        "cascade teacher/ndcg@10 >= 0.9",
        "cascade teacher/recall@10@50 >= 0.95",
        "distilled cascade beats label-only on truth/ndcg@10",
    }
    markdown = (report_dir / "report.md").read_text()
    assert "## Main table" in markdown and "## Ablation" in markdown and "## Stages" in markdown
    for folder in ("data", "models", "index", "training"):
        assert (out / folder).is_dir(), folder


def test_cascade_evaluate_reuses_the_cached_teacher_ranking(run, tmp_path: Path, capsys) -> None:
    out, _ = run
    first = json.loads((out / "report" / "report.json").read_text())
    cache = Path(first["teacher_cache"]["dir"])
    args = ["evaluate", "--index", str(out / "index"), "--data", str(out / "data"), "--out", str(tmp_path / "r")]
    assert main([*args, "--queries", "60", "--cache-dir", str(cache), "--config", str(out.parent / "tiny.toml")]) == 0
    second = json.loads((tmp_path / "r" / "report.json").read_text())
    assert second["teacher_cache"]["hit"] is True
    for system in ("teacher", "cascade_distilled", "popularity"):
        for metric in ("truth/ndcg@10", "teacher/ndcg@10"):
            assert second["systems"][system][metric] == pytest.approx(first["systems"][system][metric])
    printed = capsys.readouterr().out
    assert "cascade_distilled" in printed and "report:" in printed


def test_cascade_evaluate_on_data_without_a_hidden_truth(run, tmp_path: Path) -> None:
    # Real data sets have no relevance function: no oracle/ metrics, everything else as on the synthetic shop.
    out, _ = run
    data = tmp_path / "data"
    shutil.copytree(out / "data", data, ignore=shutil.ignore_patterns("truth"))
    args = ["evaluate", "--index", str(out / "index"), "--data", str(data), "--out", str(tmp_path / "r")]
    assert main([*args, "--queries", "60", "--config", str(out.parent / "tiny.toml")]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    first = json.loads((out / "report" / "report.json").read_text())
    for system in ("teacher", "cascade_distilled", "popularity"):
        metrics = report["systems"][system]
        assert not any(name.startswith("oracle/") for name in metrics)
        assert metrics["truth/ndcg@10"] == pytest.approx(first["systems"][system]["truth/ndcg@10"])
        assert metrics["teacher/ndcg@10"] == pytest.approx(first["systems"][system]["teacher/ndcg@10"])


def test_bad_run_configs_are_refused(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[trian]\nepochs = 1\n")
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "unknown table(s) ['trian']" in capsys.readouterr().err
    bad.write_text("[train.teacher]\nepoch = 1\n")
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "unknown key(s) ['epoch']" in capsys.readouterr().err
    assert main(["run", "--config", str(tmp_path / "missing.toml")]) == 2
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["synthetic", "amazon-office", "movielens-100k"])
def test_the_shipped_configs_parse_and_point_at_the_data(name: str) -> None:
    from cascade.pipeline import RunConfig

    path = Path(__file__).resolve().parents[2] / "cascade" / "configs" / f"{name}.toml"
    config = RunConfig.from_toml(path)
    train, build, evaluate, _ = config.resolved()
    assert set(train.modes) == {"distilled", "label_only"} and build.mode == "distilled"
    assert evaluate.num_candidates == 200
    if name != "synthetic":
        assert config.data is not None and config.data.startswith("../shared/data/")
