"""Sizing for a cluster: index bytes, memory per shard and embedding-job time for 10M / 100M / 1B-item catalogs.

Usage:
    python bench/sizing.py                      # dim from the default TowerConfig, ~1-3 min on 2 cores
    python bench/sizing.py --dim 128 --shards 8 32 128 --cores 16 128 1024 --shard-ram-gib 16

Everything in the tables is computed, and every formula is checked against FAISS in the same run:

- Index bytes, at the embedding dimension of the default `retrieval.TowerConfig` (``--dim`` to override), with the
  index types `index.ann.default_factory` picks (its own functions are called, not re-derived):

  * Flat: ``n * d * 4``. The project wraps Flat in an ``IndexIDMap2``, which adds ``n * 8`` bytes of slot ids.
  * IVF-Flat (``default_factory(n, d)``, nlist from `default_nlist`, ~2 x sqrt(n)):
    ``n * (d * 4 + 8) + nlist * d * 4`` (vectors and int64 ids in the lists, plus the centroids).
  * IVF-PQ (``default_factory(n, d, memory_budget_bytes=n * d * 4 - 1)``: the largest ``m`` its PQ rule allows,
    the largest divisor of d up to d // 4, 8 bits per code): ``n * (m + 8) + 256 * d * 4 + nlist * d * 4`` (codes
    and ids, the ``m`` codebooks of 256 centroids of ``d / m`` floats, the coarse centroids).

  Verification: `index.ann.AnnIndex` builds each type on ``--verify-items`` random unit vectors (default 20k and
  100k), writes it with `AnnIndex.write` (``faiss.write_index``), and the file size is compared with the formula
  (relative error printed; the remainder is FAISS's headers and per-list sizes).
- Memory per shard for ``--shards`` shards: the inverted-list data (codes + ids) split evenly, plus what every shard
  replicates (coarse centroids, PQ codebooks); and the fewest shards whose index fits ``--shard-ram-gib``. Index
  bytes only: a serving bundle also memory-maps ``item_embeddings.npy`` (``n * d * 4``) and the student's item
  tables, and the process needs its own working memory.
- Embedding-job time: the item tower's rate on one core is measured here, on an untrained default-size `ItemTower`
  (speed does not depend on the weights) over a synthetic catalog of ``--embed-items`` items, TensorFlow's intra-
  and inter-op pools and the BLAS / OpenMP pools all pinned to one thread. Two paths: `retrieval.embed_catalog`
  (Keras in a `tf.function`; its marginal rate, which leaves out the one trace per call) and
  `index.numpy_models.NumpyTower`, which is what `index.build` runs, in its batches of 65,536 rows. Feature
  encoding (`FeatureEncoders.encode_items`) is timed as well: the build job encodes every batch before embedding
  it. Time for ``n`` items on ``c`` cores is ``n / (rate * c)``, i.e. perfect scaling over independent workers.

Prints the Markdown tables and writes ``--out`` (``bench/results/sizing.json``) and the same path with ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# One thread everywhere, before numpy, FAISS or TensorFlow load: the measured rate is a per-core rate.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import features  # noqa: F401  (first: selects Keras 2)

CATALOG_SIZES = (10_000_000, 100_000_000, 1_000_000_000)
SHARD_COUNTS = (8, 32, 128)
CORE_COUNTS = (16, 128, 1024)
VERIFY_SIZES = (20_000, 100_000)
ID_BYTES = 8
FLOAT_BYTES = 4
PQ_CENTROIDS = 256  # 8-bit codes
BUILD_BATCH = 65_536  # `index.build.BuildConfig.batch_size`
GIB = 1 << 30
_PQ_FACTORY = re.compile(r"^IVF(\d+),PQ(\d+)$")
_IVF_FACTORY = re.compile(r"^IVF(\d+),Flat$")


# -- formulas ------------------------------------------------------------------------------------------------------


def ivf_factories(num_items: int, dim: int) -> tuple[str, str]:
    """The IVF-Flat and 8-bit IVF-PQ factory strings `default_factory` picks for this catalog.

    IVF-Flat is ``default_factory(n, d)`` (below its Flat threshold, ``IVF{default_nlist(n)},Flat``); IVF-PQ is
    ``default_factory`` with a budget one byte under the raw vectors, where its PQ rule takes the largest ``m``.
    """
    from index.ann import default_factory, default_nlist

    ivf_flat = default_factory(num_items, dim)
    if not ivf_flat.startswith("IVF"):
        ivf_flat = f"IVF{default_nlist(num_items)},Flat"
    ivf_pq = default_factory(num_items, dim, memory_budget_bytes=num_items * dim * FLOAT_BYTES - 1)
    if not _PQ_FACTORY.match(ivf_pq):
        raise ValueError(f"expected an 8-bit IVF-PQ factory from default_factory({num_items}, {dim}); got {ivf_pq!r}")
    return ivf_flat, ivf_pq


def index_sizes(num_items: int, dim: int) -> dict[str, dict[str, Any]]:
    """Bytes of each index type, split into the per-item list data and the parts every shard replicates."""
    ivf_flat, ivf_pq = ivf_factories(num_items, dim)
    nlist = int(_IVF_FACTORY.match(ivf_flat).group(1))  # type: ignore[union-attr]
    pq_nlist, m = (int(g) for g in _PQ_FACTORY.match(ivf_pq).groups())  # type: ignore[union-attr]
    if dim % m:
        raise ValueError(f"PQ{m} does not divide dim={dim}")
    centroids = nlist * dim * FLOAT_BYTES
    return {
        "flat": {"factory": "Flat", "lists": num_items * dim * FLOAT_BYTES, "replicated": 0},
        "ivf_flat": {
            "factory": ivf_flat,
            "nlist": nlist,
            "lists": num_items * (dim * FLOAT_BYTES + ID_BYTES),
            "replicated": centroids,
            "centroids": centroids,
        },
        "ivf_pq": {
            "factory": ivf_pq,
            "nlist": pq_nlist,
            "m": m,
            "lists": num_items * (m + ID_BYTES),
            "replicated": PQ_CENTROIDS * dim * FLOAT_BYTES + pq_nlist * dim * FLOAT_BYTES,
            "codebooks": PQ_CENTROIDS * dim * FLOAT_BYTES,
            "centroids": pq_nlist * dim * FLOAT_BYTES,
        },
    }


def total_bytes(size: dict[str, Any]) -> int:
    return int(size["lists"] + size["replicated"])


def shard_bytes(size: dict[str, Any], shards: int) -> int:
    """One shard's index: its share of the list data plus everything replicated (centroids, codebooks)."""
    return math.ceil(size["lists"] / shards) + int(size["replicated"])


def shards_needed(size: dict[str, Any], budget_bytes: int) -> int | None:
    """Fewest shards whose index fits ``budget_bytes`` each, or None when the replicated part alone does not."""
    room = budget_bytes - size["replicated"]
    return None if room <= 0 else max(1, math.ceil(size["lists"] / room))


# -- verification against FAISS ------------------------------------------------------------------------------------


def verify_formulas(dim: int, sizes: Sequence[int], seed: int, work_dir: Path) -> list[dict[str, Any]]:
    """Builds each index type on random unit vectors, writes it, compares the file size with the formula."""
    import faiss

    from index import AnnIndex, IndexConfig

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        x = rng.standard_normal((n, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        formula = index_sizes(n, dim)
        bare = faiss.IndexFlatIP(dim)
        bare.add(x)
        checks = [("Flat (bare IndexFlatIP)", None, total_bytes(formula["flat"]), bare)]
        checks.append(("Flat (AnnIndex: IndexIDMap2)", "Flat", total_bytes(formula["flat"]) + n * ID_BYTES, None))
        for kind in ("ivf_flat", "ivf_pq"):
            checks.append((kind, formula[kind]["factory"], total_bytes(formula[kind]), None))
        for name, factory, expected, index in checks:
            path = work_dir / f"verify-{n}-{len(rows)}.faiss"
            start = time.perf_counter()
            if index is None:
                AnnIndex.build(x, config=IndexConfig(factory=factory, seed=seed)).write(path)
            else:
                faiss.write_index(index, str(path))
            actual = path.stat().st_size
            path.unlink()
            rows.append(
                {
                    "items": n,
                    "index": name,
                    "factory": factory or "Flat",
                    "formula_bytes": int(expected),
                    "faiss_bytes": int(actual),
                    "relative_error": (actual - expected) / actual,
                    "build_s": time.perf_counter() - start,
                }
            )
    return rows


# -- embedding rate ------------------------------------------------------------------------------------------------


def _median_time(fn: Callable[[], Any], rounds: int, cpu_ratios: list[float]) -> float:
    """Median wall time of ``rounds`` calls; appends each call's CPU / wall ratio (~1.0 when on one core)."""
    times = []
    for _ in range(rounds):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        wall = time.perf_counter() - start
        times.append(wall)
        cpu_ratios.append((time.process_time() - cpu) / wall)
    return statistics.median(times)


def measure_embedding(num_items: int, rounds: int, seed: int) -> dict[str, Any]:
    """Items per second on one core: feature encoding, `embed_catalog`, `NumpyTower` (see the module docstring)."""
    import tensorflow as tf
    import tf_keras as keras

    # Before any TensorFlow op runs: one thread per pool, so the rate is per core.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    from features import FeatureEncoders, SyntheticConfig, generate_shop
    from index.numpy_models import NumpyTower
    from retrieval import ItemTower, TowerConfig, embed_catalog

    start = time.perf_counter()
    shop = generate_shop(SyntheticConfig(num_users=500, num_items=num_items, num_interactions=20_000, seed=seed))
    encoders = FeatureEncoders.fit(shop.dataset, shop.dataset.interactions)
    items = shop.dataset.items
    setup_s = time.perf_counter() - start

    ratios: list[float] = []
    encoded = encoders.encode_items(items)
    encode_s = _median_time(lambda: encoders.encode_items(items), rounds, ratios)

    keras.utils.set_random_seed(seed)
    tower = ItemTower.from_encoders(encoders, TowerConfig())
    small = {k: v[:4096] for k, v in encoded.items()}
    embed_catalog(tower, small)  # builds the weights
    keras_full_s = _median_time(lambda: embed_catalog(tower, encoded), rounds, ratios)
    keras_small_s = _median_time(lambda: embed_catalog(tower, small), rounds, ratios)
    marginal = (num_items - 4096) / (keras_full_s - keras_small_s) if keras_full_s > keras_small_s else float("nan")

    numpy_tower = NumpyTower.from_keras(tower)

    def numpy_embed() -> np.ndarray:
        out = np.empty((num_items, numpy_tower.output_dim), dtype=np.float32)
        for lo in range(0, num_items, BUILD_BATCH):
            hi = min(lo + BUILD_BATCH, num_items)
            out[lo:hi] = numpy_tower({k: v[lo:hi] for k, v in encoded.items()})
        return out

    numpy_s = _median_time(numpy_embed, rounds, ratios)
    difference = float(np.abs(numpy_embed() - embed_catalog(tower, encoded)).max())
    return {
        "items": num_items,
        "rounds": rounds,
        "setup_s": setup_s,
        "tower_config": TowerConfig().to_dict(),
        "tower_params": int(tower.count_params()),
        "vocabulary_sizes": {k: int(v) for k, v in encoders.vocabulary_sizes.items()},
        "max_abs_difference_numpy_vs_keras": difference,
        "tf_threads": {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        },
        "max_cpu_per_wall": max(ratios),
        "encode_s": encode_s,
        "encode_items_per_s": num_items / encode_s,
        "embed_catalog_s": keras_full_s,
        "embed_catalog_items_per_s": num_items / keras_full_s,
        "embed_catalog_marginal_items_per_s": marginal,
        "numpy_tower_s": numpy_s,
        "numpy_tower_items_per_s": num_items / numpy_s,
    }


# -- report --------------------------------------------------------------------------------------------------------


def _gib(num_bytes: float) -> str:
    value = num_bytes / GIB
    return f"{value:,.1f} GiB" if value >= 1 else f"{num_bytes / (1 << 20):,.1f} MiB"


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86_400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


def _items(n: int) -> str:
    return f"{n // 1_000_000_000}B" if n % 1_000_000_000 == 0 else f"{n // 1_000_000}M"


def sizing_tables(result: dict[str, Any]) -> str:
    """The Markdown report."""
    dim, lines = result["dim"], []
    lines.append(f"Command: `{result['command']}`\n")
    lines.append(f"Embedding dimension d = {dim} ({result['dim_source']}); 8-byte ids; GiB = 2^30 bytes.\n")
    lines.append("### Index size\n")
    lines.append("| items | Flat (n·d·4) | IVF-Flat | IVF-PQ | IVF-Flat factory | IVF-PQ factory | centroids |")
    lines.append("|---|---|---|---|---|---|---|")
    for row in result["catalogs"]:
        s = row["sizes"]
        lines.append(
            f"| {_items(row['items'])} | {_gib(total_bytes(s['flat']))} | {_gib(total_bytes(s['ivf_flat']))} | "
            f"{_gib(total_bytes(s['ivf_pq']))} | `{s['ivf_flat']['factory']}` | `{s['ivf_pq']['factory']}` | "
            f"{_gib(s['ivf_flat']['centroids'])} |"
        )
    m = result["catalogs"][0]["sizes"]["ivf_pq"]["m"]
    lines.append(
        f"\nIVF-Flat = n·(4d + 8) + nlist·4d; IVF-PQ = n·(m + 8) + 256·4d (codebooks) + nlist·4d, m = {m} (the "
        "largest m of `default_factory`'s PQ rule: the largest divisor of d up to d/4). The project's Flat sits in an "
        "IndexIDMap2: + 8 bytes an item.\n"
    )
    lines.append("Checked against FAISS (`AnnIndex.build` + `write`, random unit vectors):\n")
    lines.append("| items | index | factory | formula | FAISS file | error |")
    lines.append("|---|---|---|---|---|---|")
    for v in result["verification"]:
        lines.append(
            f"| {v['items']:,} | {v['index']} | `{v['factory']}` | {v['formula_bytes']:,} | {v['faiss_bytes']:,} | "
            f"{100 * v['relative_error']:+.3f}% |"
        )
    lines.append("\n### Index memory per shard\n")
    lines.append("List data split evenly; centroids (and PQ codebooks) replicated on every shard. Index bytes only.\n")
    header = " | ".join(f"{s} shards" for s in result["shards"])
    budget = result["shard_ram_gib"]
    lines.append(f"| items | index | {header} | shards for {budget:g} GiB each |")
    lines.append("|---|---|" + "---|" * len(result["shards"]) + "---|")
    for row in result["catalogs"]:
        for kind, label in (("ivf_flat", "IVF-Flat"), ("ivf_pq", "IVF-PQ")):
            size = row["sizes"][kind]
            cells = " | ".join(_gib(shard_bytes(size, s)) for s in result["shards"])
            lines.append(f"| {_items(row['items'])} | {label} | {cells} | {row['shards_for_budget'][kind]} |")
    e = result["embedding"]
    lines.append("\n### Embedding job\n")
    lines.append(
        f"Measured on one core ({e['items']:,} synthetic items, default ItemTower, {e['tower_params']:,} "
        f"parameters, median of {e['rounds']}): `NumpyTower` (what `index.build` runs) "
        f"{e['numpy_tower_items_per_s']:,.0f} items/s; "
        f"`embed_catalog` (Keras, tf.function) {e['embed_catalog_marginal_items_per_s']:,.0f} items/s marginal "
        f"({e['embed_catalog_items_per_s']:,.0f} with its trace); feature encoding "
        f"{e['encode_items_per_s']:,.0f} items/s (CPU time / wall time of every timed call <= "
        f"{e['max_cpu_per_wall']:.2f}). Time = n / (rate · cores), assuming perfect scaling over independent "
        "workers; the rate comes from a small id table that stays in cache, so a full-size one will be slower.\n"
    )
    cores = result["cores"]
    lines.append("| items | path | " + " | ".join(f"{c} cores" for c in cores) + " |")
    lines.append("|---|---|" + "---|" * len(cores))
    for row in result["catalogs"]:
        for path, label in result["embedding_paths"].items():
            rate = result["embedding_rates"][path]
            cells = " | ".join(_duration(row["items"] / (rate * c)) for c in cores)
            lines.append(f"| {_items(row['items'])} | {label} | {cells} |")
    width = e["tower_config"]["embedding_dim"]
    tables = ", ".join(
        f"{_items(row['items'])}: {_gib(row['items'] * width * FLOAT_BYTES)}" for row in result["catalogs"]
    )
    lines.append(
        f"\nEvery embedding worker also holds the tower's `item_id` table if every item has a trained id row "
        f"(n · {width} · 4 bytes: {tables}); cold items share the OOV rows.\n"
    )
    return "\n".join(lines) + "\n"


def library_versions() -> dict[str, str]:
    import faiss
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "tensorflow": tf.__version__,
    }


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    from retrieval import TowerConfig

    dim = args.dim or TowerConfig().output_dim
    dim_source = "--dim" if args.dim else "TowerConfig().output_dim"
    start = time.perf_counter()
    embedding = measure_embedding(args.embed_items, args.rounds, args.seed)
    with tempfile.TemporaryDirectory(prefix="sizing-") as tmp:
        verification = verify_formulas(dim, args.verify_items, args.seed, Path(tmp))
    budget = int(args.shard_ram_gib * GIB)
    catalogs = []
    for n in args.items:
        sizes = index_sizes(n, dim)
        catalogs.append(
            {
                "items": n,
                "sizes": sizes,
                "total_bytes": {k: total_bytes(v) for k, v in sizes.items()},
                "shard_bytes": {
                    k: {str(s): shard_bytes(v, s) for s in args.shards} for k, v in sizes.items() if k != "flat"
                },
                "shards_for_budget": {k: shards_needed(v, budget) for k, v in sizes.items()},
            }
        )
    rates = {
        "numpy_tower": embedding["numpy_tower_items_per_s"],
        "encode_plus_numpy_tower": 1 / (1 / embedding["encode_items_per_s"] + 1 / embedding["numpy_tower_items_per_s"]),
        "embed_catalog": embedding["embed_catalog_marginal_items_per_s"],
    }
    return {
        "command": command,
        "dim": dim,
        "dim_source": dim_source,
        "shards": list(args.shards),
        "shard_ram_gib": args.shard_ram_gib,
        "cores": list(args.cores),
        "verification": verification,
        "max_abs_relative_error": max(abs(v["relative_error"]) for v in verification),
        "embedding": embedding,
        "embedding_rates": rates,
        "embedding_paths": {
            "numpy_tower": "NumpyTower",
            "encode_plus_numpy_tower": "encode + NumpyTower",
            "embed_catalog": "embed_catalog (Keras)",
        },
        "catalogs": catalogs,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": library_versions(),
        "wall_s": time.perf_counter() - start,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=None, help="embedding dimension (default: TowerConfig output_dim)")
    parser.add_argument("--items", type=int, nargs="+", default=list(CATALOG_SIZES), help="catalog sizes to size")
    parser.add_argument("--shards", type=int, nargs="+", default=list(SHARD_COUNTS))
    parser.add_argument("--shard-ram-gib", type=float, default=16.0, help="index bytes a shard may hold")
    parser.add_argument("--cores", type=int, nargs="+", default=list(CORE_COUNTS))
    parser.add_argument("--embed-items", type=int, default=50_000, help="synthetic items the tower rate is timed on")
    parser.add_argument("--verify-items", type=int, nargs="+", default=list(VERIFY_SIZES))
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sizing.json")
    args = parser.parse_args(argv)
    positive = {
        "dim": [args.dim] if args.dim is not None else [],
        "items": args.items,
        "shards": args.shards,
        "cores": args.cores,
        "embed_items": [args.embed_items],
        "verify_items": args.verify_items,
        "rounds": [args.rounds],
    }
    for name, values in positive.items():
        if any(v < 1 for v in values):
            parser.error(f"--{name.replace('_', '-')} should be positive integers. Received: {values}")
    if args.embed_items <= 4096:
        parser.error(
            f"--embed-items should be above 4096 (the marginal rate subtracts a 4096-row call). "
            f"Received: {args.embed_items}"
        )
    if args.shard_ram_gib <= 0:
        parser.error(f"--shard-ram-gib should be positive. Received: {args.shard_ram_gib}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "bench/sizing.py", *(sys.argv[1:] if argv is None else argv)])
    result = run(args, command)
    report = sizing_tables(result)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    markdown = args.out.with_suffix(".md")
    markdown.write_text(report)
    print(f"wrote {args.out} and {markdown} in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
