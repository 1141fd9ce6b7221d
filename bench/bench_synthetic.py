"""Times `features.synthetic.generate_shop` at a given size, with a 1/10-size baseline from the same run.

Usage:
    python bench/bench_synthetic.py --items 1000000 --interactions 10000000 --users 200000 --seed 0

Prints wall time, interaction rows per second and peak resident memory (``ru_maxrss``) for the baseline and the
full size, and the time ratio between them (10 means linear scaling). The baseline runs first, so the second
peak-memory reading is the full run's. ``--top-k-requests N`` also times ``ShopTruth.top_k`` (k=100) for ``N``
requests against the whole catalog.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
from dataclasses import dataclass

import numpy as np

from features.synthetic import SyntheticConfig, SyntheticShop, generate_shop


@dataclass(frozen=True)
class Timing:
    label: str
    config: SyntheticConfig
    seconds: float
    peak_rss_gib: float

    @property
    def rows(self) -> int:
        return self.config.num_requests * self.config.list_size

    def line(self) -> str:
        c = self.config
        return (
            f"{self.label:>8}: {c.num_users:>9,} users {c.num_items:>10,} items {self.rows:>11,} rows  "
            f"{self.seconds:7.2f} s  {self.rows / self.seconds:>12,.0f} rows/s  peak RSS {self.peak_rss_gib:5.2f} GiB"
        )


def _peak_rss_gib() -> float:
    # Linux reports kibibytes, macOS bytes.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def time_generate(label: str, config: SyntheticConfig) -> tuple[Timing, SyntheticShop]:
    """Generates one shop and returns its timing and the shop."""
    started = time.perf_counter()
    shop = generate_shop(config)
    seconds = time.perf_counter() - started
    return Timing(label, config, seconds, _peak_rss_gib()), shop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--interactions", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top-k-requests", type=int, default=0, help="also time ShopTruth.top_k for N requests")
    args = parser.parse_args(argv)

    full = SyntheticConfig(
        num_users=args.users, num_items=args.items, num_interactions=args.interactions, seed=args.seed
    )
    baseline = SyntheticConfig(
        num_users=max(args.users // 10, 1),
        num_items=max(args.items // 10, full.list_size, 8),
        num_interactions=max(args.interactions // 10, 1),
        seed=args.seed,
    )
    small, shop = time_generate("baseline", baseline)
    print(small.line(), flush=True)
    del shop
    gc.collect()
    large, shop = time_generate("full", full)
    print(large.line(), flush=True)
    print(f"   ratio: full / baseline time = {large.seconds / small.seconds:.2f} (10 = linear in size)")

    if args.top_k_requests:
        requests = np.arange(min(args.top_k_requests, shop.truth.num_requests))
        started = time.perf_counter()
        shop.truth.top_k(requests, k=100)
        seconds = time.perf_counter() - started
        print(
            f"   top_k: {len(requests):,} requests x {shop.truth.num_items:,} items in {seconds:.2f} s, "
            f"peak RSS {_peak_rss_gib():.2f} GiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
