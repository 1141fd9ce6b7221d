"""The ``cascade`` command line: a thin layer that parses arguments, calls library functions, prints results.

Commands:
    cascade demo                      the main job on the built-in synthetic shop (what `make demo` runs)
    cascade run --config FILE         the main job on a data set described by TOML (shipped: cascade/configs/)
    cascade evaluate --index DIR --data SPEC --out DIR   offline recall / NDCG evaluation report
    cascade train --out DIR           train teacher and students (distilled, label-only), evaluate them
    cascade build-index --model DIR --items FILE --out DIR   embed the catalog, build the FAISS index bundle
                                      (--engine ray: embed on Ray)
    cascade update-index --index DIR --out DIR [--add FILE] [--remove FILE] [--replace FILE]
    cascade search --index DIR --user ID [--query TEXT]       search a bundle; a readable table or --json
    cascade jobs embed|score-lists|teacher-rank|build-index|evaluate|requests|training-lists ... [--engine ray]
                                      batch jobs over Parquet shards, in this process or on a Ray cluster
    cascade train-distributed --out DIR [--workers N] [--ray-address auto]   two-tower on Ray Train
    cascade data synth --out DIR      write a synthetic shop (Parquet tables + spec.toml + hidden truth)
    cascade data inspect PATH         describe a data set: counts, column types, coverage, problems found
    cascade data inspect --spec FILE
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import features
from features.summary import describe_dataset
from features.validation import DataValidationError

logger = logging.getLogger(__name__)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, received {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, received {value}")
    return value


def _format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _print_description(description: dict) -> None:
    summary = description["summary"]
    print(f"data set: {summary['name']}")
    print(
        _format_table(
            ["users", "items", "interactions", "positives", "with query", "requests"],
            [
                [
                    summary["users"],
                    summary["items"],
                    summary["interactions"],
                    summary["positives"],
                    summary["with_query"],
                    summary["requests"] if summary["requests"] is not None else "-",
                ]
            ],
        )
    )
    print("labels: " + ", ".join(f"{k}: {v}" for k, v in summary["labels"].items()))
    per_user, per_item = description["interactions_per_user"], description["interactions_per_item"]
    print(
        f"interactions per user: min {per_user['min']}, median {per_user['median']:g}, max {per_user['max']}; "
        f"per item: min {per_item['min']}, median {per_item['median']:g}, max {per_item['max']}; "
        f"items never interacted with: {description['items_never_interacted']}"
    )
    for table, info in description["tables"].items():
        print(f"\n{table} ({info['rows']} rows)")
        rows = [
            [c["name"], c["role"], c["dtype"], f"{100 * c['coverage']:.1f}%", c["distinct"]] for c in info["columns"]
        ]
        print(_format_table(["column", "role", "dtype", "coverage", "distinct"], rows))
    validation = description["validation"]
    print()
    if validation is None or not validation["problems"]:
        print("problems found: none")
    else:
        print(f"problems found: {len(validation['problems'])}")
        for p in validation["problems"]:
            print(
                f"  - {p['table']}.{p['column']} [{p['kind']}]: {p['message']} ({p['count']} rows; e.g. "
                f"{', '.join(p['examples'])})"
            )
        if validation["dropped"]:
            print("  dropped rows: " + ", ".join(f"{t}={n}" for t, n in validation["dropped"].items()))


def _cmd_data_inspect(args: argparse.Namespace) -> int:
    source = args.spec if args.spec is not None else args.path
    if source is None:
        print("error: give a data PATH or --spec FILE", file=sys.stderr)
        return 2
    try:
        # Inspect reports every problem instead of stopping at the first: it never writes anything back.
        dataset = features.load_dataset(source, policy=args.policy)
    except DataValidationError as e:
        print(f"error: {e}", file=sys.stderr)
        if args.json:
            print(json.dumps({"validation": e.report.to_dict()}, indent=2))
        return 1
    except (features.SpecError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    description = describe_dataset(dataset)
    if args.json:
        print(json.dumps(description, indent=2, default=str))
    else:
        _print_description(description)
    return 0


def _synthetic_config(args: argparse.Namespace):  # -> features.synthetic.SyntheticConfig
    from features.synthetic import SyntheticConfig

    fields = {
        "num_users": args.users,
        "num_items": args.items,
        "num_interactions": args.interactions,
        "seed": args.seed,
    }
    return SyntheticConfig(**{k: v for k, v in fields.items() if v is not None})


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from features.synthetic import generate_shop, write_shop

    try:
        config = _synthetic_config(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    shop = generate_shop(config)
    try:
        spec_path = write_shop(shop, args.out, overwrite=args.overwrite)
    except FileExistsError as e:
        print(f"error: {e} (pass --overwrite to replace it)", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    summary = shop.dataset.summary()
    print(
        f"wrote synthetic shop ({summary['users']} users, {summary['items']} items, "
        f"{summary['interactions']} interactions) to {Path(args.out)} in {elapsed:.1f}s"
    )
    print(f"spec: {spec_path}   inspect it with: cascade data inspect {spec_path.parent}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from cascade.pipeline import RunConfig, run_pipeline

    synthetic = {
        k: v
        for k, v in {
            "num_users": args.users,
            "num_items": args.items,
            "num_interactions": args.interactions,
            "seed": args.seed,
        }.items()
        if v is not None
    }
    try:
        config = RunConfig.from_toml(args.config) if args.config is not None else RunConfig()
        if synthetic:
            config = RunConfig(**{**config.__dict__, "synthetic": {**config.synthetic, **synthetic}})
        config.resolved()
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        "Cascade demo: a synthetic shop with a known ground truth -> a DCN-v2 teacher -> distilled two-tower "
        "retrieval + FAISS index -> distilled ranking student, evaluated against the teacher, the held-out "
        "purchases and the true relevance, with label-only twins for the ablation.\n"
    )
    run_pipeline(config, args.out, show_progress=not args.no_progress)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from cascade.pipeline import RunConfig, run_pipeline

    try:
        config = RunConfig.from_toml(args.config)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out if args.out is not None else Path("runs") / args.config.stem
    try:
        run_pipeline(config, out, show_progress=not args.no_progress)
    except (ValueError, FileNotFoundError, DataValidationError, features.SpecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from cascade.evaluate import EvalConfig, evaluate, format_table, main_table

    try:
        config = EvalConfig()
        if args.config is not None:
            import tomllib

            config = EvalConfig.from_dict(tomllib.loads(args.config.read_text(encoding="utf-8")).get("evaluate", {}))
        if args.queries is not None:
            config = EvalConfig.from_dict({**config.to_dict(), "max_queries": args.queries})
        dataset = features.load_dataset(args.data)
        truth = None
        if args.data.is_dir() and (args.data / "truth").is_dir():
            truth = features.ShopTruth.load(args.data / "truth")
        evaluation = evaluate(
            args.index,
            dataset,
            config=config,
            out_dir=args.out,
            model_dir=args.model,
            cache_dir=args.cache_dir,
            truth=truth,
            show_progress=True,
        )
    except (ValueError, FileNotFoundError, DataValidationError, features.SpecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report = evaluation.report
    print(f"{report['queries']['evaluated']} held-out requests, {report['catalog_items']} items")
    print(format_table(main_table(report, final_k=config.final_k, num_candidates=config.num_candidates)))
    for name, check in report["checks"].items():
        print(f"  {'PASS' if check['holds'] else 'MISS'}  {name}")
    print(f"report: {args.out / 'report.md'}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import tomllib

    from cascade.train import format_results, run_training
    from distill.trainer import CascadeConfig, save_cascade

    if args.out.exists() and any(args.out.iterdir()) and not args.resume:
        print(f"error: {args.out} is not empty (pass --resume to continue an interrupted run there)", file=sys.stderr)
        return 1
    try:
        config = CascadeConfig()
        if args.config is not None:
            config = CascadeConfig.from_dict(tomllib.loads(args.config.read_text(encoding="utf-8")))
        if args.data is not None:
            dataset = features.load_dataset(args.data)
        else:
            from features.synthetic import generate_shop

            dataset = generate_shop(_synthetic_config(args)).dataset
    except (ValueError, FileNotFoundError, tomllib.TOMLDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"training the cascade on {dataset.name}: {dataset.num_users} users, {dataset.num_items} items, "
        f"{dataset.num_interactions} interactions"
    )
    report = run_training(
        dataset, config=config, out_dir=args.out, max_eval_queries=args.max_eval_queries, show_progress=True
    )
    for stage in report["stages"]:
        losses = ", ".join(f"{v:.4f}" for v in stage["epoch_losses"])
        print(f"  {stage['name']:<22} {stage['seconds']:7.1f}s  loss per epoch: {losses}")
    queries = report["results"]["_queries"]
    print(f"\nheld-out test requests: {int(queries['evaluated'])} (full catalog, exact scoring)")
    print(format_results(report["results"], report["costs"]))
    models = save_cascade(report["trained"], args.out / "models") if not (args.out / "models").exists() else None
    print(f"\nreport: {args.out / 'train_report.json'}" + (f"; models: {models}" if models else ""))
    return 0


def _cmd_build_index(args: argparse.Namespace) -> int:
    import tomllib

    from index import BuildConfig, IndexConfig, build_index

    try:
        config = BuildConfig()
        if args.config is not None:
            config = BuildConfig.from_dict(tomllib.loads(args.config.read_text(encoding="utf-8")))
        if args.factory is not None or args.mode is not None:
            index_config = config.index
            if args.factory is not None:
                index_config = IndexConfig.from_dict({**index_config.to_dict(), "factory": args.factory})
            config = BuildConfig.from_dict(
                {**config.to_dict(), "index": index_config.to_dict(), "mode": args.mode or config.mode}
            )
    except (ValueError, FileNotFoundError, tomllib.TOMLDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        embedder = None
        if args.engine == "ray":
            from cascade.engine import make_engine
            from cascade.jobs import engine_embedder

            engine = make_engine("ray", address=args.ray_address)
            embedder = engine_embedder(engine, args.model, mode=config.mode, batch_size=config.batch_size)
        elif args.ray_address is not None:
            raise ValueError("--ray-address needs --engine ray")
        manifest = build_index(
            args.model,
            args.items,
            args.out,
            config,
            users=args.users,
            overwrite=args.overwrite,
            progress=True,
            embedder=embedder,
        )
    except (ValueError, FileNotFoundError, FileExistsError, ImportError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    index = manifest.index
    params = ", ".join(f"{k} {index[k]}" for k in ("nprobe", "ef_search") if index.get(k) is not None)
    print(
        f"built {args.out} in {time.perf_counter() - start:.1f}s: {manifest.items['num_active']} items, "
        f"{manifest.embedding_dim}-d, FAISS {index['factory']}" + (f" ({params})" if params else "")
    )
    return 0


def _cmd_update_index(args: argparse.Namespace) -> int:
    from index import update_index
    from index.build import read_items

    try:
        add = read_items(args.add)[0] if args.add else None
        replace = read_items(args.replace)[0] if args.replace else None
        remove = None
        if args.remove:
            table = read_items(args.remove)[0]
            if "item_id" not in table.columns:
                raise ValueError(f"`--remove` {args.remove} should have an item_id column. Received: {list(table)}")
            remove = table["item_id"].tolist()
        manifest = update_index(args.index, args.out, add=add, remove=remove, replace=replace, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"updated {args.index} -> {args.out}: {manifest.items['num_active']} items "
        f"(+{0 if add is None else len(add)} added, -{0 if remove is None else len(remove)} removed, "
        f"{0 if replace is None else len(replace)} replaced)"
    )
    return 0


def _parse_scalar(text: str) -> object:
    """A CLI value: an int when it looks like one (ids, context values), else the string."""
    try:
        return int(text)
    except ValueError:
        return text


def _split_pair(text: str, option: str, form: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name.strip() or not value:
        raise ValueError(f"`{option}` should be {form}. Received: {text!r}")
    return name, value


def _parse_filters(pairs: Sequence[str], fields: dict[str, str]) -> dict[str, object]:
    """``--filter`` options: FIELD=a|b (any of) for categorical fields, FIELD=VALUE or FIELD=LOW..HIGH for numeric."""
    filters: dict[str, object] = {}
    for pair in pairs:
        name, value = _split_pair(pair, "--filter", "FIELD=VALUE, FIELD=a|b or FIELD=LOW..HIGH")
        if fields.get(name) != "numeric":
            filters[name] = value.split("|")
            continue
        low, dots, high = value.partition("..")
        try:
            filters[name] = (float(low) if low else None, float(high) if high else None) if dots else float(value)
        except ValueError:
            raise ValueError(
                f"`--filter {name}` should be a number or LOW..HIGH (a numeric field). Received: {name}={value}"
            ) from None
    return filters


def _cmd_search(args: argparse.Namespace) -> int:
    from index import ManifestError, Query, Searcher

    try:
        searcher = Searcher.load(args.index)
    except (ValueError, FileNotFoundError, ManifestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    id_kind = searcher.encoders.user_ids.kind
    user = None if args.user is None else (_parse_scalar(args.user) if id_kind == "int" else args.user)
    item_kind = searcher.encoders.item_ids.kind
    history = [
        (_parse_scalar(h) if item_kind == "int" else h) for h in (args.history.split(",") if args.history else [])
    ]
    try:
        context = {}
        for pair in args.context or []:
            name, value = _split_pair(pair, "--context", "NAME=VALUE")
            context[name] = _parse_scalar(value)
        filters = _parse_filters(args.filter or [], searcher.filter_fields)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        query = Query(user_id=user, text=args.query or "", history=history, context=context)
        results = searcher.search(
            query,
            k=args.k,
            num_candidates=max(args.num_candidates, args.k),
            filters=filters or None,
            rerank=not args.no_rerank,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = searcher.describe(results, 0)
    if args.json:
        records = json.loads(table.to_json(orient="records", force_ascii=False))
        print(
            json.dumps(
                {
                    "query": {
                        "user_id": user,
                        "text": args.query or "",
                        "history": history,
                        "context": context,
                        "filters": {k: list(v) if isinstance(v, tuple) else v for k, v in filters.items()},
                    },
                    "results": records,
                },
                indent=2,
                ensure_ascii=False,
                default=str,
            )
        )
        return 0
    columns = ["rank", "item_id"] + [c for c in ("title", "category_leaf", "category", "brand", "price") if c in table]
    rows = [[row[c] for c in columns] + [row["score"]] for _, row in table.iterrows()]
    print(f"user {user!r}, query {args.query or ''!r}: {len(rows)} results")
    print(_format_table([*columns, "score"], rows))
    return 0


# -- batch jobs over Parquet shards (cascade.jobs), on the local loop or Ray -------------------------------------

_JOB_ERRORS = (ValueError, FileNotFoundError, FileExistsError, ImportError, RuntimeError)


def _job_engine(args: argparse.Namespace):
    from cascade.engine import make_engine

    options = {}
    if args.engine == "ray":
        options = {k: getattr(args, k) for k in ("cpus_per_actor", "actors") if getattr(args, k) is not None}
    elif args.ray_address is not None or args.cpus_per_actor is not None or args.actors is not None:
        raise ValueError("--ray-address, --cpus-per-actor and --actors need --engine ray")
    return make_engine(args.engine, address=args.ray_address, **options)


def _run_job(args: argparse.Namespace, job) -> int:
    start = time.perf_counter()
    try:
        result = job(_job_engine(args))
    except _JOB_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.job_command}: {result} ({args.engine} engine, {time.perf_counter() - start:.1f}s)")
    return 0


def _cmd_jobs_requests(args: argparse.Namespace) -> int:
    from cascade import jobs

    def job(engine) -> str:
        del engine  # grouping held-out rows by request reads the whole data set: always in this process
        dataset = features.load_dataset(args.data)
        frame = jobs.make_requests(
            dataset, split=args.split, max_history=args.max_history, max_queries=args.max_queries, seed=args.seed
        )
        shards = jobs.write_shards(frame, args.out, min(args.shards, max(len(frame), 1)), overwrite=args.overwrite)
        return f"{len(frame)} requests in {len(shards)} shards -> {args.out}"

    return _run_job(args, job)


def _cmd_jobs_training_lists(args: argparse.Namespace) -> int:
    from cascade import jobs

    def job(engine) -> str:
        del engine  # grouping the training split reads the whole data set: always in this process
        dataset = features.load_dataset(args.data)
        frame = jobs.make_training_lists(
            dataset,
            num_candidates=args.candidates,
            max_history=args.max_history,
            max_rows=args.max_rows,
            seed=args.seed,
        )
        shards = jobs.write_shards(frame, args.out, min(args.shards, max(len(frame), 1)), overwrite=args.overwrite)
        return f"{len(frame)} training rows in {len(shards)} shards -> {args.out} (next: jobs score-lists)"

    return _run_job(args, job)


def _cmd_jobs_embed(args: argparse.Namespace) -> int:
    from cascade import jobs

    def job(engine) -> str:
        shards = jobs.embed_items(
            args.model,
            args.items,
            args.out,
            engine=engine,
            mode=args.mode,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
        )
        return f"{len(shards)} embedding shards -> {args.out}"

    return _run_job(args, job)


def _cmd_jobs_score_lists(args: argparse.Namespace) -> int:
    from cascade import jobs

    def job(engine) -> str:
        shards = jobs.score_lists(
            args.model, args.lists, args.items, args.out, engine=engine, users=args.users, overwrite=args.overwrite
        )
        return f"{len(shards)} scored-list shards -> {args.out}"

    return _run_job(args, job)


def _cmd_jobs_teacher_rank(args: argparse.Namespace) -> int:
    from cascade import jobs

    def job(engine) -> str:
        shards = jobs.teacher_rank(
            args.model,
            args.queries,
            args.items,
            args.out,
            engine=engine,
            depth=args.depth,
            users=args.users,
            overwrite=args.overwrite,
        )
        return f"{len(shards)} ranking shards -> {args.out}"

    return _run_job(args, job)


def _cmd_jobs_build_index(args: argparse.Namespace) -> int:
    from cascade import jobs

    def job(engine) -> str:
        built = jobs.build_sharded_index(
            args.embeddings,
            args.out,
            factory=args.factory,
            engine=engine,
            num_shards=args.shards,
            seed=args.seed,
            overwrite=args.overwrite,
        )
        return f"{built.num_items} items in {len(built.shard_paths)} shards, merged -> {args.out}/merged"

    return _run_job(args, job)


def _cmd_jobs_evaluate(args: argparse.Namespace) -> int:
    from cascade import jobs

    def job(engine) -> str:
        summary = jobs.evaluate_requests(
            args.index,
            args.requests,
            args.out,
            engine=engine,
            ks=tuple(args.k),
            num_candidates=args.candidates,
            overwrite=args.overwrite,
        )
        rows = [[name, value, summary["excluded"][name]] for name, value in sorted(summary["metrics"].items())]
        print(_format_table(["metric", "mean", "excluded"], rows))
        return f"{summary['requests']} requests -> {args.out}/summary.json"

    return _run_job(args, job)


def _cmd_train_distributed(args: argparse.Namespace) -> int:
    from cascade.distributed import MultiWorkerConfig, train_multiworker

    try:
        config = MultiWorkerConfig(
            data=None if args.data is None else str(args.data),
            global_batch_size=args.batch_size,
            epochs=args.epochs,
            teacher_lists=None if args.teacher_lists is None else str(args.teacher_lists),
            kd_weight=args.kd_weight,
            num_workers=args.workers,
            cpus_per_worker=args.cpus_per_worker,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        result = train_multiworker(config, args.out, address=args.ray_address)
    except _JOB_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for epoch in result["epochs"]:
        print(f"epoch {epoch['epoch']}: loss {epoch['loss']:.4f}, worker checksums {epoch['worker_checksums']}")
    print(f"trained on {args.workers} workers in {time.perf_counter() - start:.1f}s -> {result['model_dir']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cascade",
        description="Cascade: distilled e-commerce search and recommendation (teacher -> two-tower + FAISS -> "
        "re-rank).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_synthetic_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--users", type=_positive_int, default=None, help="number of users")
        p.add_argument("--items", type=_positive_int, default=None, help="number of items")
        p.add_argument("--interactions", type=_positive_int, default=None, help="approximate number of rows")
        p.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")

    demo = commands.add_parser(
        "demo", help="the main job on the built-in synthetic shop: train, distil, index, evaluate, example searches"
    )
    add_synthetic_options(demo)
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    demo.add_argument("--config", type=Path, default=None, help="a run config TOML (default: the built-in one)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=_cmd_demo)

    run = commands.add_parser("run", help="the main job on a data set described by a TOML config")
    run.add_argument("--config", type=Path, required=True, help="run config: [data], [train.*], [build], [evaluate]")
    run.add_argument("--out", type=Path, default=None, help="output folder (default runs/<config name>)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.set_defaults(func=_cmd_run)

    evaluate = commands.add_parser("evaluate", help="offline recall/NDCG evaluation of an index bundle")
    evaluate.add_argument("--index", type=Path, required=True, help="bundle of the distilled models (build-index)")
    evaluate.add_argument("--data", type=Path, required=True, help="the data folder or spec the models trained on")
    evaluate.add_argument("--out", type=Path, required=True, help="report folder")
    evaluate.add_argument("--queries", type=_positive_int, default=None, help="held-out requests sampled (2000)")
    evaluate.add_argument("--model", type=Path, default=None, help="models folder (default: the bundle's source)")
    evaluate.add_argument("--config", type=Path, default=None, help="TOML with an [evaluate] table")
    evaluate.add_argument("--cache-dir", type=Path, default=None, help="teacher-ranking cache (~/.cache/cascade)")
    evaluate.set_defaults(func=_cmd_evaluate)

    train = commands.add_parser(
        "train", help="train the teacher and both students (distilled and label-only) and evaluate them"
    )
    train.add_argument("--data", type=Path, default=None, help="data folder or spec (default: the synthetic shop)")
    add_synthetic_options(train)
    train.add_argument("--config", type=Path, default=None, help="TOML with [teacher], [two_tower], [student] tables")
    train.add_argument("--out", type=Path, required=True, help="output folder: checkpoints, report, models")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    train.add_argument("--max-eval-queries", type=_positive_int, default=2000, help="held-out requests to evaluate")
    train.set_defaults(func=_cmd_train)

    build = commands.add_parser("build-index", help="embed a catalog and build the FAISS index bundle")
    build.add_argument(
        "--model", type=Path, required=True, help="models folder written by 'cascade train' (<out>/models)"
    )
    build.add_argument("--items", type=Path, required=True, help="item table (.parquet/.csv) or a data set folder")
    build.add_argument("--out", type=Path, required=True, help="bundle folder to create")
    build.add_argument("--factory", default=None, help="FAISS factory string, e.g. Flat, HNSW32, IVF4096,Flat")
    build.add_argument("--config", type=Path, default=None, help="TOML build config (mode, [index] table)")
    build.add_argument("--mode", choices=["distilled", "label_only"], default=None, help="which students serve")
    build.add_argument("--users", type=Path, default=None, help="user table (.parquet/.csv) for user attributes")
    build.add_argument("--overwrite", action="store_true", help="replace an existing bundle (atomically)")
    build.add_argument(
        "--engine", choices=["local", "ray"], default="local", help="embed the catalog in-process (default) or on Ray"
    )
    build.add_argument("--ray-address", default=None, help="join this Ray cluster ('auto', 'ray://host:10001')")
    build.set_defaults(func=_cmd_build_index)

    update = commands.add_parser("update-index", help="add, remove or replace items of a bundle (no rebuild)")
    update.add_argument("--index", type=Path, required=True, help="bundle folder to update")
    update.add_argument("--out", type=Path, required=True, help="folder of the updated bundle")
    update.add_argument("--add", type=Path, default=None, help="table of new items (.parquet/.csv)")
    update.add_argument("--remove", type=Path, default=None, help="table with an item_id column of items to remove")
    update.add_argument("--replace", type=Path, default=None, help="table of changed items (re-embedded)")
    update.add_argument("--overwrite", action="store_true", help="replace an existing --out (atomically)")
    update.set_defaults(func=_cmd_update_index)

    search = commands.add_parser("search", help="search an index bundle")
    search.add_argument("--index", type=Path, required=True, help="bundle folder written by build-index")
    search.add_argument("--user", default=None, help="user id (omit for an anonymous user)")
    search.add_argument("--query", default="", help="query text")
    search.add_argument("--history", default=None, help="recent item ids, most recent first, comma-separated")
    search.add_argument("--context", action="append", metavar="NAME=VALUE", help="request context (repeatable)")
    search.add_argument(
        "--filter", action="append", metavar="FIELD=VALUE", help="FIELD=a|b (any of), FIELD=LOW..HIGH (numeric)"
    )
    search.add_argument("-k", type=_positive_int, default=10, help="results (default 10)")
    search.add_argument("--num-candidates", type=_positive_int, default=200, help="candidates re-ranked")
    search.add_argument("--no-rerank", action="store_true", help="first-stage results only")
    search.add_argument("--json", action="store_true", help="print JSON for machines")
    search.set_defaults(func=_cmd_search)

    jobs = commands.add_parser("jobs", help="batch jobs over Parquet shards, in this process or on Ray (--engine ray)")
    job_commands = jobs.add_subparsers(dest="job_command", required=True, metavar="JOB")

    def add_job(name: str, help_text: str, func) -> argparse.ArgumentParser:
        p = job_commands.add_parser(name, help=help_text)
        p.add_argument("--out", type=Path, required=True, help="output directory (created)")
        p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
        p.add_argument("--engine", choices=["local", "ray"], default="local", help="local loop (default) or Ray")
        p.add_argument("--ray-address", default=None, help="join this Ray cluster ('auto', 'ray://host:10001')")
        p.add_argument("--cpus-per-actor", type=_positive_int, default=None, help="Ray: CPUs per worker actor")
        p.add_argument("--actors", type=_positive_int, default=None, help="Ray: worker actors (default: CPUs - 1)")
        p.set_defaults(func=func)
        return p

    p = add_job("requests", "held-out requests of a data set as Parquet shards", _cmd_jobs_requests)
    p.add_argument("--data", type=Path, required=True, help="data set folder or spec.toml")
    p.add_argument("--split", choices=["test", "validation"], default="test")
    p.add_argument("--max-queries", type=_positive_int, default=None, help="sample at most this many requests")
    p.add_argument("--max-history", type=_positive_int, default=20, help="history length (the encoders')")
    p.add_argument("--shards", type=_positive_int, default=8, help="Parquet shards to write (default 8)")
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p = add_job("training-lists", "training positives with candidate lists, for score-lists", _cmd_jobs_training_lists)
    p.add_argument("--data", type=Path, required=True, help="data set folder or spec.toml")
    p.add_argument("--candidates", type=_positive_int, default=16, help="list length, positive included")
    p.add_argument("--max-rows", type=_positive_int, default=None, help="sample at most this many positives")
    p.add_argument("--max-history", type=_positive_int, default=20, help="history length (the encoders')")
    p.add_argument("--shards", type=_positive_int, default=8, help="Parquet shards to write (default 8)")
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p = add_job("embed", "embed catalog shards with the item tower", _cmd_jobs_embed)
    p.add_argument("--model", type=Path, required=True, help="<train out>/models")
    p.add_argument("--items", type=Path, required=True, help="catalog Parquet shards (file or directory)")
    p.add_argument("--mode", choices=["distilled", "label_only"], default="distilled")
    p.add_argument("--batch-size", type=_positive_int, default=4096)
    p = add_job("score-lists", "teacher logits of candidate lists (distillation labels)", _cmd_jobs_score_lists)
    p.add_argument("--model", type=Path, required=True, help="<train out>/models")
    p.add_argument("--lists", type=Path, required=True, help="query rows with `candidates` (Parquet shards)")
    p.add_argument("--items", type=Path, required=True, help="the catalog (Parquet file or shards)")
    p.add_argument("--users", type=Path, default=None, help="user table (Parquet), for user attributes")
    p = add_job("teacher-rank", "the teacher's full ranking of the catalog per query", _cmd_jobs_teacher_rank)
    p.add_argument("--model", type=Path, required=True, help="<train out>/models")
    p.add_argument("--queries", type=Path, required=True, help="query rows (Parquet shards)")
    p.add_argument("--items", type=Path, required=True, help="the catalog (Parquet file or shards)")
    p.add_argument("--users", type=Path, default=None, help="user table (Parquet), for user attributes")
    p.add_argument("--depth", type=_positive_int, default=100, help="items per ranking (default 100)")
    p = add_job("build-index", "a sharded IVF index from embedding shards", _cmd_jobs_build_index)
    p.add_argument("--embeddings", type=Path, required=True, help="`jobs embed` output")
    p.add_argument("--factory", required=True, help="an IVF FAISS factory, e.g. IVF4096,PQ16")
    p.add_argument("--shards", type=_positive_int, default=None, help="index shards (default: one per file)")
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p = add_job("evaluate", "offline recall/NDCG of a bundle over request shards", _cmd_jobs_evaluate)
    p.add_argument("--index", type=Path, required=True, help="an index bundle (cascade build-index)")
    p.add_argument("--requests", type=Path, required=True, help="`jobs requests` (or `jobs teacher-rank`) output")
    p.add_argument("--k", type=_positive_int, nargs="+", default=[10, 100], help="cut-offs (default 10 100)")
    p.add_argument("--candidates", type=_positive_int, default=200, help="ANN candidates re-ranked (default 200)")

    dist = commands.add_parser(
        "train-distributed", help="data-parallel two-tower training on Ray Train (MultiWorkerMirroredStrategy)"
    )
    dist.add_argument("--out", type=Path, required=True, help="output directory")
    dist.add_argument("--data", type=Path, default=None, help="data set (default: a small built-in synthetic shop)")
    dist.add_argument("--workers", type=_positive_int, default=2)
    dist.add_argument("--cpus-per-worker", type=_positive_int, default=1)
    dist.add_argument("--epochs", type=_positive_int, default=2)
    dist.add_argument("--batch-size", type=_positive_int, default=64, help="global batch (divisible by --workers)")
    dist.add_argument("--ray-address", default=None, help="join this Ray cluster ('auto'); default: a local Ray")
    dist.add_argument(
        "--teacher-lists", type=Path, default=None, help="distil: `jobs score-lists` output over `jobs training-lists`"
    )
    dist.add_argument("--kd-weight", type=float, default=1.0, help="weight of the KD term (default 1)")
    dist.set_defaults(func=_cmd_train_distributed)

    data = commands.add_parser("data", help="data sets: generate and inspect")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    synth = data_commands.add_parser("synth", help="write a synthetic shop: Parquet tables, spec.toml, truth")
    synth.add_argument("--out", type=Path, required=True, help="output folder (must not exist)")
    add_synthetic_options(synth)
    synth.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    synth.set_defaults(func=_cmd_data_synth)

    inspect = data_commands.add_parser(
        "inspect", help="describe a data set: table counts, column types, coverage, problems found"
    )
    inspect.add_argument("path", nargs="?", type=Path, help="a data folder (spec.toml, MovieLens, Amazon) or spec")
    inspect.add_argument("--spec", type=Path, default=None, help="a dataset spec TOML file")
    inspect.add_argument(
        "--policy",
        choices=["error", "drop-and-report"],
        default="drop-and-report",
        help="drop-and-report (default) lists every problem; error stops at validation failure",
    )
    inspect.add_argument("--json", action="store_true", help="print JSON for machines")
    inspect.set_defaults(func=_cmd_data_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit code (0 success, 1 failure, 2 bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
