"""Times every data-layer stage on a synthetic shop: validate, split, build queries, fit and apply encoders.

Usage:
    python bench/bench_data_pipeline.py --items 1000000 --interactions 10000000 --users 200000

Each stage is timed once after the shop is generated; the baseline is the same pipeline at 1/10 of the size in
the same run, so the printed ratio says how each stage scales (10 = linear). Peak memory is ``ru_maxrss`` of
the whole process (the full run comes second, so it is the full run's peak).
"""

from __future__ import annotations

import argparse
import gc
import resource
import time

import features
from features import FeatureEncoders, SyntheticConfig, build_queries, generate_shop, temporal_leave_last_out


def run(config: SyntheticConfig) -> dict[str, float]:
    timings: dict[str, float] = {}

    def timed(name: str, start: float) -> float:
        now = time.perf_counter()
        timings[name] = now - start
        return now

    t = time.perf_counter()
    shop = generate_shop(config)
    t = timed("generate", t)
    dataset = features.validate_dataset(shop.dataset)
    t = timed("validate", t)
    split = temporal_leave_last_out(dataset)
    t = timed("split", t)
    test_queries = build_queries(split.test, dataset)
    t = timed("test queries", t)
    train_queries = build_queries(split.train, dataset, history_source=split.train)
    t = timed("train queries", t)
    encoders = FeatureEncoders.fit(dataset, split.train)
    t = timed("fit encoders", t)
    encoders.encode_items(dataset.items)
    t = timed("encode items", t)
    encoders.encode_queries(train_queries)
    timed("encode train queries", t)
    timings["rows"] = float(len(dataset.interactions))
    del shop, dataset, split, test_queries, train_queries, encoders
    gc.collect()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--interactions", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    full = SyntheticConfig(
        num_users=args.users, num_items=args.items, num_interactions=args.interactions, seed=args.seed
    )
    small = SyntheticConfig(
        num_users=max(args.users // 10, 100),
        num_items=max(args.items // 10, 100),
        num_interactions=max(args.interactions // 10, 1000),
        seed=args.seed,
    )
    base = run(small)
    result = run(full)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{'stage':<22}{'1/10 size (s)':>14}{'full (s)':>10}{'ratio':>8}")
    for stage in base:
        if stage == "rows":
            continue
        print(f"{stage:<22}{base[stage]:>14.2f}{result[stage]:>10.2f}{result[stage] / base[stage]:>8.1f}")
    total_base = sum(v for k, v in base.items() if k != "rows")
    total = sum(v for k, v in result.items() if k != "rows")
    print(f"{'total':<22}{total_base:>14.2f}{total:>10.2f}{total / total_base:>8.1f}")
    print(f"rows: {int(base['rows']):,} and {int(result['rows']):,}; peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
