"""The evaluation's files: ``report.json`` (every number), ``report.md`` (the tables people read first), plots.

Plots (PNG, matplotlib's Agg backend, no display needed): ``recall_at_k.png`` (truth recall@K curves per system),
``recall_m_at_k.png`` (heat map of the teacher's top-m found in the top K, for the distilled cascade and its
first stage), ``latency_vs_recall.png`` (single-query latency against truth recall for the systems timed).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cascade.evaluate import SYSTEMS_ORDER, main_table

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOTS = ("recall_at_k.png", "recall_m_at_k.png", "latency_vs_recall.png")


def write_report(report: Mapping[str, Any], directory: str | Path) -> list[Path]:
    """Writes ``report.json``, ``report.md`` and the plots into ``directory``; returns the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = [
        _write_atomic(directory / REPORT_JSON, json.dumps(report, indent=2, default=_json_default)),
        _write_atomic(directory / REPORT_MD, markdown(report)),
    ]
    written += plot(report, directory)
    return written


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _write_atomic(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def _md_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(report: Mapping[str, Any]) -> str:
    """``report.md``: the main table, the ablation, the stages, recall@m@K, the checks."""
    config = report["config"]
    final_k, candidates = config["final_k"], config["num_candidates"]
    systems = report["systems"]
    queries = report["queries"]
    parts = [
        f"# Cascade evaluation: {report['dataset']}",
        "",
        f"{queries['evaluated']} held-out {queries['split']} requests ({queries['without_relevant']} without a "
        f"relevant item in the index, excluded from the truth means); catalog of {report['catalog_items']:,} items, "
        f"every system ranks the whole catalog (exact scoring, no sampled negatives). Index: "
        f"`{report['index']['factory']}` (nprobe {report['index'].get('nprobe')}, efSearch "
        f"{report['index'].get('ef_search')}). Truth gains are the held-out labels (linear); teacher gains are the "
        f"teacher's sigmoid scores over its top {config['teacher_depth']}.",
        "",
        "## Main table",
        "",
    ]
    rows = main_table(report, final_k=final_k, num_candidates=candidates)
    headers = [h for h in rows[0] if any(r.get(h) is not None for r in rows)]
    parts.append(_md_table(headers, [[r.get(h) for h in headers] for r in rows]))
    parts += ["", "## Ablation: distilled vs label-only (same architecture, same training budget)", ""]
    metrics = [f"truth/recall@{final_k}", f"truth/ndcg@{final_k}", f"teacher/ndcg@{final_k}"]
    if any(f"oracle/ndcg@{final_k}" in m for m in systems.values()):
        metrics.append(f"oracle/ndcg@{final_k}")
    ablation = []
    for family in ("cascade", "two_tower", "student"):
        distilled = systems.get(f"{family}_distilled", {})
        label_only = systems.get(f"{family}_label_only", {})
        for metric in metrics:
            a, b = distilled.get(metric), label_only.get(metric)
            delta = None if a is None or b is None else a - b
            ablation.append([family, metric, b, a, delta])
    parts.append(_md_table(["system", "metric", "label-only", "distilled", "distilled − label-only"], ablation))
    parts += ["", "## Stages of the distilled cascade", ""]
    tt = systems.get("two_tower_distilled", {})
    cascade = systems.get("cascade_distilled", {})
    stage_rows = [
        ["(1) ANN vs exact two-tower", "ANN recall@10", tt.get("ann/recall@10")],
        ["(1) ANN vs exact two-tower", "ANN recall@100", tt.get("ann/recall@100")],
    ]
    for m in config["teacher_ms"]:
        key = f"teacher/recall@{m}@{candidates}"
        if key in tt:
            stage_rows.append([f"(2) retrieval: teacher's top-{m} in the {candidates} candidates", key, tt.get(key)])
    stage_rows += [
        ["(3) final list", f"teacher/ndcg@{final_k}", cascade.get(f"teacher/ndcg@{final_k}")],
        ["(3) final list", f"teacher/recall@{final_k}@{final_k}", cascade.get(f"teacher/recall@{final_k}@{final_k}")],
    ]
    parts.append(_md_table(["stage", "metric", "value"], stage_rows))
    parts += ["", "## Teacher's top-m found in the top K (recall@m@K)", ""]
    for name in ("cascade_distilled", "two_tower_distilled", "cascade_label_only"):
        metrics_of = systems.get(name, {})
        grid = [
            [f"m={m}", *[metrics_of.get(f"teacher/recall@{m}@{k}") for k in config["candidate_ks"]]]
            for m in config["teacher_ms"]
        ]
        parts += [f"**{name}**", "", _md_table(["", *[f"K={k}" for k in config["candidate_ks"]]], grid), ""]
    parts += ["## Cost", ""]
    cost_rows = []
    for name in SYSTEMS_ORDER:
        m = systems.get(name, {})
        if any(k in m for k in ("latency_ms/p50", "params", "flops_per_pair")):
            cost_rows.append(
                [name, m.get("latency_ms/p50"), m.get("latency_ms/p99"), m.get("params"), m.get("flops_per_pair")]
            )
    parts.append(_md_table(["system", "p50 ms / query", "p99 ms / query", "params", "FLOPs / pair"], cost_rows))
    parts += ["", "## Checks", ""]
    parts.append(
        _md_table(
            ["target", "value", "holds"],
            [
                [name, json.dumps(c["value"], default=float), "yes" if c["holds"] else "**no**"]
                for name, c in report.get("checks", {}).items()
            ],
        )
    )
    parts += ["", "## Plots", "", *[f"![{p}]({p})" for p in PLOTS], ""]
    return "\n".join(parts)


def plot(report: Mapping[str, Any], directory: Path) -> list[Path]:
    """Writes the three PNG plots; returns their paths."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    config = report["config"]
    systems = report["systems"]
    written = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in SYSTEMS_ORDER:
        metrics = systems.get(name, {})
        ks = [k for k in config["ks"] if f"truth/recall@{k}" in metrics]
        if ks:
            style = "-" if "distilled" in name or name == "teacher" else "--"
            ax.plot(ks, [metrics[f"truth/recall@{k}"] for k in ks], style, marker="o", markersize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("K (log scale)")
    ax.set_ylabel("recall@K of held-out positives")
    ax.set_title(f"{report['dataset']}: recall@K over the whole catalog")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(_save(fig, directory / PLOTS[0]))
    plt.close(fig)

    names = [n for n in ("two_tower_distilled", "cascade_distilled") if n in systems]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        ms, ks = config["teacher_ms"], config["candidate_ks"]
        grid = [[systems[name].get(f"teacher/recall@{m}@{k}", float("nan")) for k in ks] for m in ms]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(ks)), [str(k) for k in ks])
        ax.set_yticks(range(len(ms)), [str(m) for m in ms])
        ax.set_xlabel("K (list size)")
        ax.set_ylabel("m (teacher's top-m)")
        ax.set_title(name, fontsize=9)
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="w" if value < 0.6 else "k", fontsize=8)
        fig.colorbar(image, ax=ax)
    fig.suptitle("recall@m@K: the teacher's top-m found in the top K")
    fig.tight_layout()
    written.append(_save(fig, directory / PLOTS[1]))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    final_k = config["final_k"]
    for name in SYSTEMS_ORDER:
        metrics = systems.get(name, {})
        if "latency_ms/p50" in metrics and f"truth/recall@{final_k}" in metrics:
            ax.scatter(metrics["latency_ms/p50"], metrics[f"truth/recall@{final_k}"], s=40)
            ax.annotate(
                name,
                (metrics["latency_ms/p50"], metrics[f"truth/recall@{final_k}"]),
                fontsize=8,
                xytext=(4, 4),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.set_xlabel("single-query latency p50 (ms, log scale)")
    ax.set_ylabel(f"truth recall@{final_k}")
    ax.set_title("latency vs recall")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(_save(fig, directory / PLOTS[2]))
    plt.close(fig)
    return written


def _save(fig: Any, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return path


__all__ = ["PLOTS", "REPORT_JSON", "REPORT_MD", "markdown", "plot", "write_report"]
