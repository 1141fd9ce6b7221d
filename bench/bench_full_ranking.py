"""Times the teacher's exact full ranking of a catalog against a naive baseline in the same run.

Usage:
    python bench/bench_full_ranking.py --items 100000 --queries 200 --naive-queries 10 --threads 2

Builds a synthetic shop with ``--items`` items, fits the encoders on its training split, builds a default-size
`TeacherRanker` (scores do not depend on training, speed does not either; ``--train-epochs`` trains it first
anyway) and ranks the catalog for ``--queries`` test queries, top ``--k``:

- ``cached``: `ranking.FullRanker` (item side computed once, first cross layer factorised, chunked scoring
  with a running top-k in one `tf.function`); the one-off item-side cost is reported separately;
- ``cached-plain``: the same without the first-cross-layer factorisation;
- ``naive``: the Keras model called on batches of (query, item) pairs, every pair's item side recomputed, then
  a top-k per query, for ``--naive-queries`` queries (its cost per query is constant, so q/s extrapolates).

The methods take turns on blocks of queries (after one warm-up query each), so background load hits them
alike. Prints queries per second of each and the speed-up of ``cached`` over ``naive``, and checks that the cached
and naive top-k agree on the queries both ranked.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import features  # noqa: F401  (selects Keras 2 first)
from features import FeatureEncoders, SyntheticConfig, build_queries, generate_shop, temporal_leave_last_out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--interactions", type=int, default=400_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--naive-queries", type=int, default=10)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--query-batch-size", type=int, default=32)
    parser.add_argument("--item-chunk-size", type=int, default=256)
    parser.add_argument("--naive-batch-size", type=int, default=32768)
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow intra-op threads (0: TF's default)")
    parser.add_argument("--train-epochs", type=int, default=0)
    parser.add_argument("--skip-plain", action="store_true", help="skip the unfactorised cached variant")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import tensorflow as tf
    import tf_keras as keras

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from ranking import FullRanker, TeacherRanker, flops_per_pair, score_pairs

    keras.utils.set_random_seed(args.seed)
    started = time.perf_counter()
    shop = generate_shop(
        SyntheticConfig(num_users=args.users, num_items=args.items, num_interactions=args.interactions, seed=args.seed)
    )
    dataset = shop.dataset
    split = temporal_leave_last_out(dataset)
    encoders = FeatureEncoders.fit(dataset, split.train)
    items = encoders.encode_items(dataset.items)
    test = split.test.drop_duplicates("user_id").iloc[: args.queries]
    queries = encoders.encode_queries(build_queries(test, dataset))
    num_queries = len(test)
    print(f"data: {len(dataset.items):,} items, {num_queries} queries ({time.perf_counter() - started:.1f} s)")

    teacher = TeacherRanker(encoders, items)
    if args.train_epochs:
        from ranking import make_labelled_pairs, make_pair_dataset, train_ranker

        pairs = make_labelled_pairs(dataset, split.train, encoders)
        train_ranker(teacher, make_pair_dataset(pairs, items, batch_size=512, shuffle=True), epochs=args.train_epochs)
    print(
        f"teacher: {teacher.count_params():,} parameters, input width {teacher.input_dim}, "
        f"{flops_per_pair(teacher) / 1e6:.2f} MFLOPs per pair"
    )

    # Every method first ranks one query (tracing its tf.function), then the methods take turns on blocks of
    # queries, so that load from other processes on the machine hits them alike and the ratio stays fair.
    num_items = len(dataset.items)
    rankers, setup = {}, {}
    variants = [("cached", True)] + ([] if args.skip_plain else [("cached-plain", False)])
    for label, factorize in variants:
        started = time.perf_counter()
        rankers[label] = FullRanker(
            teacher, items, item_chunk_size=args.item_chunk_size, factorize_first_cross=factorize
        )
        item_side = time.perf_counter() - started
        started = time.perf_counter()
        rankers[label].rank({k: v[:1] for k, v in queries.items()}, k=args.k, query_batch_size=args.query_batch_size)
        setup[label] = f"item side once {item_side:.1f} s, trace + 1 query {time.perf_counter() - started:.1f} s"

    def naive_rank(block: slice) -> tuple[np.ndarray, np.ndarray]:
        rows, scores = [], []
        for q in range(block.start, block.stop):
            query = {k: np.repeat(v[q : q + 1], num_items, axis=0) for k, v in queries.items()}
            pair_scores = score_pairs(teacher, query, items, batch_size=args.naive_batch_size)
            top = np.argsort(-pair_scores, kind="stable")[: args.k]
            rows.append(top)
            scores.append(pair_scores[top])
        return np.array(rows), np.array(scores)

    started = time.perf_counter()
    naive_rank(slice(0, 1))
    setup["naive"] = f"trace + 1 query {time.perf_counter() - started:.1f} s"

    naive_count = min(args.naive_queries, num_queries)
    rounds = max(1, -(-num_queries // args.query_batch_size))
    seconds = dict.fromkeys([*rankers, "naive"], 0.0)
    counts = dict.fromkeys(seconds, 0)
    outputs: dict[str, list] = {label: [] for label in seconds}
    for r in range(rounds):
        block = slice(r * num_queries // rounds, (r + 1) * num_queries // rounds)
        for label, ranker in rankers.items():
            started = time.perf_counter()
            outputs[label].append(
                ranker.rank({k: v[block] for k, v in queries.items()}, k=args.k, query_batch_size=args.query_batch_size)
            )
            seconds[label] += time.perf_counter() - started
            counts[label] += block.stop - block.start
        naive_block = slice(r * naive_count // rounds, (r + 1) * naive_count // rounds)
        started = time.perf_counter()
        outputs["naive"].append(naive_rank(naive_block))
        seconds["naive"] += time.perf_counter() - started
        counts["naive"] += naive_block.stop - naive_block.start

    qps = {label: counts[label] / seconds[label] for label in seconds}
    for label in seconds:
        print(
            f"{label:>12}: {qps[label]:8.2f} q/s  ({seconds[label]:.1f} s for {counts[label]} queries; {setup[label]})"
        )
    cached_rows = np.concatenate([o.item_rows for o in outputs["cached"]])
    cached_scores = np.concatenate([o.scores for o in outputs["cached"]])
    naive_rows = np.concatenate([rows for rows, _ in outputs["naive"]])
    naive_scores = np.concatenate([scores for _, scores in outputs["naive"]])
    naive_index = np.concatenate(
        [np.arange(r * naive_count // rounds, (r + 1) * naive_count // rounds) for r in range(rounds)]
    )
    difference = np.abs(cached_scores[naive_index] - naive_scores).max()
    overlap = np.mean([len(set(cached_rows[q]) & set(naive_rows[i])) / args.k for i, q in enumerate(naive_index)])
    print(f"cached vs naive: max |score difference| {difference:.2e}, top-{args.k} overlap {overlap:.4f}")
    print(f"speed-up cached / naive: {qps['cached'] / qps['naive']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
