"""The main job: data -> train (teacher, distilled and label-only students) -> build index -> evaluate -> examples.

`run_pipeline` is what ``cascade demo`` (the built-in synthetic shop) and ``cascade run --config FILE`` (a data
set described by TOML) call. Every stage prints one line with its time; long stages show progress bars.

Output directory::

    data/        the synthetic shop as files (synthetic runs only: tables, spec.toml, truth/)
    training/    stage checkpoints and TensorBoard logs (a rerun resumes from them)
    models/      every trained model (`distill.save_cascade`)
    index/       the serving bundle of the distilled cascade (`index.build_index`)
    report/      report.json, report.md, plots, and the label-only bundle of the ablation
"""

from __future__ import annotations

import dataclasses
import logging
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import features
from cascade.evaluate import EvalConfig, evaluate, format_table, main_table
from features import Dataset

logger = logging.getLogger(__name__)

TABLES = ("data", "synthetic", "train", "build", "evaluate", "examples")


@dataclass(frozen=True)
class RunConfig:
    """Everything the main job needs (a TOML file with the tables of `TABLES`).

    Attributes:
        data: A data folder or spec (``[data] path``), relative to the working directory or to the config file;
            ``None`` for the built-in synthetic shop.
        synthetic: `features.SyntheticConfig` fields for the synthetic shop (``[synthetic]``).
        train: `distill.CascadeConfig` tables (``[train.teacher]``, ``[train.two_tower]``, ``[train.student]``, ...).
        build: `index.BuildConfig` fields (``[build]``, ``[build.index]``).
        evaluate: `cascade.evaluate.EvalConfig` fields (``[evaluate]``).
        examples: How many example searches to print.
    """

    data: str | None = None
    synthetic: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    examples: int = 5

    @classmethod
    def from_toml(cls, path: str | Path) -> RunConfig:
        """Reads a run config; relative data paths resolve against the working directory, then the file's folder."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid TOML: {e}") from e
        unknown = sorted(set(data) - set(TABLES))
        if unknown:
            raise ValueError(f"{path} has unknown table(s) {unknown}; expected a subset of {list(TABLES)}")
        for table in TABLES:
            if table in data and not isinstance(data[table], Mapping):
                raise ValueError(f"{path}: [{table}] should be a table. Received: {table} = {data[table]!r}")
        source = data.get("data", {})
        if not isinstance(source, Mapping) or set(source) - {"path"}:
            raise ValueError(f"{path}: [data] should hold only `path`. Received: {source!r}")
        data_path = source.get("path")
        if data_path is not None and not isinstance(data_path, str):
            raise ValueError(f"{path}: `data.path` should be a string. Received: path={data_path!r}")
        if data_path is not None:
            candidate = Path(data_path)
            if not candidate.is_absolute() and not candidate.exists() and (path.parent / candidate).exists():
                candidate = path.parent / candidate
            data_path = str(candidate)
        examples_table = data.get("examples", {})
        if set(examples_table) - {"count"}:
            raise ValueError(f"{path}: [examples] should hold only `count`. Received: {examples_table!r}")
        examples = examples_table.get("count", 5)
        if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
            raise ValueError(f"{path}: `examples.count` should be a non-negative integer. Received: count={examples!r}")
        config = cls(
            data=data_path,
            synthetic=dict(data.get("synthetic", {})),
            train=dict(data.get("train", {})),
            build=dict(data.get("build", {})),
            evaluate=dict(data.get("evaluate", {})),
            examples=examples,
        )
        config.resolved()  # validate every table now, before any work
        return config

    def resolved(self) -> tuple[Any, Any, EvalConfig, Any]:
        """``(CascadeConfig, BuildConfig, EvalConfig, SyntheticConfig)``, each validated."""
        from distill.trainer import CascadeConfig
        from index import BuildConfig

        known = {f.name for f in dataclasses.fields(features.SyntheticConfig)}
        unknown = sorted(set(self.synthetic) - known)
        if unknown:
            raise ValueError(f"[synthetic] has unknown key(s) {unknown}; expected a subset of {sorted(known)}")
        return (
            CascadeConfig.from_dict(self.train),
            BuildConfig.from_dict(self.build),
            EvalConfig.from_dict(self.evaluate),
            features.SyntheticConfig(**self.synthetic),
        )


def run_pipeline(
    config: RunConfig,
    out_dir: str | Path,
    *,
    show_progress: bool = True,
    echo: Callable[[str], None] = print,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Runs the whole cascade on a data set (see the module docstring); returns the evaluation report.

    Args:
        config: The run configuration.
        out_dir: The output directory (a rerun in the same directory resumes training from its checkpoints and
            rebuilds the index and report).
        show_progress: Whether to show progress bars.
        echo: Where the stage lines go (``print`` by default).
        cache_dir: The teacher-ranking cache (default: `cascade.evaluate.default_cache_dir`).
    """
    from distill.trainer import save_cascade, train_cascade
    from index import build_index

    train_config, build_config, eval_config, synthetic_config = config.resolved()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = time.perf_counter()
    steps = 5

    tick = time.perf_counter()
    truth = None
    if config.data is None:
        shop = features.generate_shop(synthetic_config)
        features.write_shop(shop, out / "data", overwrite=True)
        dataset, truth = shop.dataset, shop.truth
        what = f"generated the synthetic shop (seed {synthetic_config.seed}) and wrote it to {out / 'data'}"
    else:
        dataset = features.load_dataset(config.data)
        truth_dir = Path(config.data) / "truth"
        if truth_dir.is_dir():
            truth = features.ShopTruth.load(truth_dir)
        what = f"loaded {config.data}"
    echo(
        f"[1/{steps}] {what}: {dataset.num_users:,} users, {dataset.num_items:,} items, "
        f"{dataset.num_interactions:,} interactions ({time.perf_counter() - tick:.1f}s)"
    )

    tick = time.perf_counter()
    split = features.temporal_leave_last_out(dataset)
    trained = train_cascade(
        dataset, split, config=train_config, directory=out / "training", show_progress=show_progress
    )
    models = out / "models"
    if models.exists():
        import shutil

        shutil.rmtree(models)
    save_cascade(trained, models)
    echo(
        f"[2/{steps}] trained the teacher and both students, distilled and label-only "
        f"({time.perf_counter() - tick:.1f}s)"
    )
    for result in trained.stages:
        losses = ", ".join(f"{v:.4f}" for v in result.epoch_losses)
        echo(f"        {result.name:<22} {result.seconds:7.1f}s  loss per epoch: {losses}")

    tick = time.perf_counter()
    manifest = build_index(
        models, dataset.items, out / "index", build_config, users=dataset.users, overwrite=True, progress=show_progress
    )
    echo(
        f"[3/{steps}] built the index: {manifest.items['num_active']:,} items, FAISS {manifest.index['factory']} "
        f"({time.perf_counter() - tick:.1f}s)"
    )

    tick = time.perf_counter()
    evaluation = evaluate(
        out / "index",
        dataset,
        config=eval_config,
        out_dir=out / "report",
        model_dir=models,
        cache_dir=cache_dir,
        truth=truth,
    )
    report = evaluation.report
    queries = report["queries"]
    echo(
        f"[4/{steps}] evaluated {queries['evaluated']} held-out {queries['split']} requests over the whole catalog "
        f"({time.perf_counter() - tick:.1f}s; teacher ranking "
        f"{'from the cache' if report['teacher_cache']['hit'] else 'computed and cached'})"
    )
    echo("")
    echo(format_table(main_table(report, final_k=eval_config.final_k, num_candidates=eval_config.num_candidates)))
    echo("")
    for name, check in report["checks"].items():
        echo(f"  {'PASS' if check['holds'] else 'MISS'}  {name}  ({_describe_value(check['value'])})")
    echo(f"\nreport: {out / 'report' / 'report.md'} (and report.json, plots)")

    tick = time.perf_counter()
    echo(f"\n[5/{steps}] example searches (distilled cascade, held-out requests; * = the request's held-out item)")
    for line in example_searches(out / "index", dataset, split, count=config.examples, seed=eval_config.seed):
        echo(line)
    echo(f"\ndone in {time.perf_counter() - total:.1f}s; everything is in {out}")
    return report


def _describe_value(value: Any) -> str:
    if isinstance(value, list):
        return " vs ".join("–" if v is None else f"{v:.4f}" for v in value)
    return "–" if value is None else f"{value:.4f}"


def example_searches(index_dir: Path, dataset: Dataset, split: Any, *, count: int, seed: int = 0) -> list[str]:
    """Readable example searches: held-out requests (with query text when there is some) and their top 5."""
    from index import Searcher, queries_from_batch

    if count <= 0:
        return []
    searcher = Searcher.load(index_dir)
    events = split.test
    rng = np.random.default_rng(seed)
    with_text = events[events["query"].fillna("").astype(str).str.len() > 0] if "query" in events else events.iloc[:0]
    pool = with_text if len(with_text) >= count else events
    rows = pool.iloc[np.sort(rng.choice(len(pool), size=min(count, len(pool)), replace=False))]
    batch = features.build_queries(rows, dataset, max_history=searcher.encoders.config.max_history)
    queries = queries_from_batch(batch)
    results = searcher.search(queries, k=5)
    columns = [c for c in ("title", "category_leaf", "brand", "price") if c in searcher.items.columns]
    lines = []
    for i, query in enumerate(queries):
        held_out = rows["item_id"].iloc[i]
        text = f'"{query.text}"' if query.text else "(no query text: recommendations)"
        lines.append(f"\n  user {query.user_id}, {len(query.history)} items in history, query {text}:")
        table = searcher.describe(results, i)
        for _, row in table.iterrows():
            mark = "*" if row["item_id"] == held_out else " "
            details = "  ".join(_short(row[c]) for c in columns)
            lines.append(f"   {mark} {int(row['rank'])}. [{row['item_id']}] {details}  (score {row['score']:.3f})")
    return lines


def _short(value: Any, width: int = 48) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


__all__ = ["RunConfig", "example_searches", "run_pipeline"]
