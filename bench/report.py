"""The results as a table (rich), JSON, and PNG plots (matplotlib, Agg)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table

KINDS = (("floor_sdk", "floor: openai SDK"), ("floor_raw", "floor: raw SSE"), ("agentstream", "agentstream"))


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(results: dict[str, Any]) -> Table:
    t = Table(title=f"agentstream bench: {results['scenario']} @ {results['machine']['commit'][:10]}")
    for col in ("load", "path", "p50 ms", "p99 ms", "max ms", "ttft+ p50", "ttft+ p99", "tok/s", "rec/tok", "client cpu s", "sut cpu s"):
        t.add_column(col, justify="right" if col not in ("load", "path") else "left")
    for row in [*results.get("loads", []), *results.get("sweep", [])]:
        for key, name in KINDS:
            step = row.get(key)
            if step is None:
                continue
            lat, ttft = step["latency_ms"], step["ttft_overhead_ms"]
            sut = sum(v for k, v in step["service_cpu_s"].items() if (k != "fake-model") == (key == "agentstream"))
            t.add_row(
                row["label"],
                name,
                _f(lat["p50"]),
                _f(lat["p99"]),
                _f(lat["max"]),
                _f(ttft["p50"]),
                _f(ttft["p99"]),
                _f(step["delivered_tps"], 0),
                _f(step["records_per_token"], 2) if key == "agentstream" else "",
                _f(step["client_cpu_s"], 2),
                _f(sut, 2),
            )
        t.add_section()
    return t


def print_summary(results: dict[str, Any], console: Console) -> None:
    console.print(table(results))
    for line in summary_lines(results):
        console.print(line)


def summary_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    if "kafka_floor" in results:
        k = results["kafka_floor"]["latency_ms"]
        lines.append(f"kafka floor round trip: p50 {_f(k['p50'])} ms, p99 {_f(k['p99'])} ms")
    for row in results.get("fanout", []):
        d = row["delivery_ms"]
        lines.append(f"fan-out to {row['subscribers']}: delivery p50 {_f(d['p50'])} p99 {_f(d['p99'])} ms")
    if "idle" in results:
        i = results["idle"]
        lines.append(
            f"{i['connected']} idle subscribers: orchestrator RSS {i['orchestrator_rss_with_idle_mb']:.0f} MiB "
            f"({i['per_subscriber_kib']:.1f} KiB each)"
        )
    if "accept" in results:
        a = results["accept"]
        lines.append(f"accepted {a['per_s']:.0f} executions/s, p99 {_f(a['latency_ms']['p99'])} ms")
    for row in results.get("coalesce", []):
        lat = row["latency_ms"]
        lines.append(
            f"coalesce {row['interval_ms']:g} ms, {row['label']}: {_f(row['records_per_token'], 3)} rec/tok, "
            f"p50 {_f(lat['p50'])} p99 {_f(lat['p99'])} ms, executor {_f(row.get('cpu_ms_per_token', {}).get('executor'), 3)} ms cpu/tok"
        )
    lines.append(f"RSS idle (MiB): {_mb(results.get('rss_idle_mb', {}))}; peak: {_mb(results.get('rss_peak_mb', {}))}")
    return lines


def _mb(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in values.items())


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")


def plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    name = results["scenario"]
    made = []
    loads = results.get("loads", [])
    if loads:
        fig, axes = plt.subplots(1, len(loads), figsize=(4 * len(loads), 3.6), sharey=True, squeeze=False)
        for ax, row in zip(axes[0], loads, strict=True):
            for key, label in KINDS:
                cdf = row[key]["latency_ms"]["cdf"][:101]
                if cdf:
                    ax.plot(cdf, range(len(cdf)), label=label)
            ax.set_xscale("log")
            ax.set_title(row["label"])
            ax.set_xlabel("per-token latency, ms (log)")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("percentile")
        axes[0][0].legend(fontsize=8)
        fig.suptitle("Per-token latency CDF: fake model send -> client arrival")
        fig.tight_layout()
        made.append(_save(fig, out_dir / f"{name}-latency-cdf.png"))
    rows = sorted(
        [r for r in [*loads, *results.get("sweep", [])] if r["rate"] == 50],
        key=lambda r: r["concurrency"],
    )
    if rows:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
        xs = [r["concurrency"] for r in rows]
        ax1.plot(xs, [r["concurrency"] * r["rate"] for r in rows], "k:", label="offered")
        for key, label in KINDS:
            pts = [(r["concurrency"], r[key]) for r in rows if r.get(key)]
            ax1.plot([x for x, _ in pts], [s["delivered_tps"] or 0 for _, s in pts], "o-", label=label)
            ax2.plot([x for x, _ in pts], [s["latency_ms"]["p99"] or 0 for _, s in pts], "o-", label=label)
        ax2.axhline(100, color="grey", ls="--", lw=0.8)
        for ax, ylabel in ((ax1, "delivered tokens/s"), (ax2, "per-token p99, ms")):
            ax.set_xscale("log")
            ax.set_xlabel("concurrent streams of 50 tok/s")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        ax2.set_yscale("log")
        ax1.legend(fontsize=8)
        fig.suptitle("Throughput and p99 vs concurrency")
        fig.tight_layout()
        made.append(_save(fig, out_dir / f"{name}-throughput.png"))
    coalesce = results.get("coalesce", [])
    if coalesce:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
        for label in sorted({r["label"] for r in coalesce}):
            pts = [r for r in coalesce if r["label"] == label]
            xs = [r["interval_ms"] for r in pts]
            ax1.plot(xs, [r["records_per_token"] or 0 for r in pts], "o-", label=label)
            ax2.plot(xs, [r["latency_ms"]["p50"] or 0 for r in pts], "o-", label=f"{label} p50")
            ax2.plot(xs, [r["latency_ms"]["p99"] or 0 for r in pts], "s--", label=f"{label} p99")
        ax1.set_ylabel("Kafka records per token")
        ax2.set_ylabel("per-token latency, ms")
        for ax in (ax1, ax2):
            ax.set_xlabel("coalesce interval, ms (0: a record per token)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle("Token coalescing: records per token vs latency")
        fig.tight_layout()
        made.append(_save(fig, out_dir / f"{name}-coalescing.png"))
    return made


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
