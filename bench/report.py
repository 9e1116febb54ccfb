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

from bench.targets import targets

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
    if "quiet" in results and "total_core_pct" in results["quiet"]:
        q = results["quiet"]
        lines.append(
            f"idle stack: services {q['services_core_pct']:.2f}% + Kafka's share {q['kafka_added_core_pct']:.2f}% of one core "
            f"(Kafka {q['core_pct'].get('kafka', 0):.2f}%, alone {q['kafka_alone_core_pct']:.2f}%)"
        )
    for key, who in (("accept_native", "wrk"), ("accept", "python")):
        a = results.get(key)
        if a is not None and "per_s" in a:
            lines.append(f"accepted {a['per_s']:.0f} executions/s ({who}), p99 {_f(a['latency_ms']['p99'])} ms")
    if "recovery" in results:
        r = results["recovery"]
        lines.append(
            f"orchestrator RSS after {r['step']}: idle {r['idle_mb']:.0f}, peak {r['peak_mb']:.0f}, "
            f"{r['after_s']:.0f} s after {r['after_mb']:.0f} MiB"
        )
    for row in results.get("coalesce", []):
        lat = row["latency_ms"]
        lines.append(
            f"coalesce <= {row['max_chars']} chars, {row['label']}: {_f(row['records_per_token'], 3)} rec/tok, "
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
    if results.get("recovery"):
        r = results["recovery"]
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.plot([t for t, _ in r["samples"]], [mb for _, mb in r["samples"]], "o-", ms=3, label="orchestrator RSS")
        ax.axhline(r["idle_mb"], color="grey", ls=":", label="idle")
        ax.axhline(r["idle_mb"] * (1 + r["bound"]), color="grey", ls="--", label=f"idle + {r['bound']:.0%}")
        ax.set_xlabel(f"seconds after the {r['step']} step")
        ax.set_ylabel("MiB")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.suptitle(f"Orchestrator RSS after {r['step']} (peak {r['peak_mb']:.0f} MiB)")
        fig.tight_layout()
        made.append(_save(fig, out_dir / f"{name}-rss.png"))
    coalesce: list[dict[str, Any]] = list(results.get("coalesce", []))
    if coalesce:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
        for label in sorted({r["label"] for r in coalesce}):
            rows = [r for r in coalesce if r["label"] == label]
            xs = [r["max_chars"] for r in rows]
            ax1.plot(xs, [r["records_per_token"] or 0 for r in rows], "o-", label=label)
            ax2.plot(xs, [r["latency_ms"]["p50"] or 0 for r in rows], "o-", label=f"{label} p50")
            ax2.plot(xs, [r["latency_ms"]["p99"] or 0 for r in rows], "s--", label=f"{label} p99")
        ax1.set_ylabel("Kafka records per token")
        ax2.set_ylabel("per-token latency, ms")
        for ax in (ax1, ax2):
            ax.set_xlabel("coalesce_max_chars (1: a record per token)")
            ax.set_xscale("log")
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


# -- markdown (docs/performance.md) ---------------------------------------------------------------
def _ok(met: bool | None) -> str:
    return "n/a" if met is None else ("**met**" if met else "**missed**")


def _rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [*results.get("loads", []), *results.get("sweep", [])]


def sustained(results: dict[str, Any], key: str) -> tuple[float, str] | None:
    """Highest delivered tokens/s of ``key`` with its per-token p99 under 100 ms."""
    best = None
    for row in _rows(results):
        step = row.get(key)
        if step and step["latency_ms"]["p99"] is not None and step["latency_ms"]["p99"] < 100 and step["delivered_tps"]:
            if best is None or step["delivered_tps"] > best[0]:
                best = (step["delivered_tps"], row["label"])
    return best


def _busy(step: dict[str, Any]) -> str:
    busy = step.get("client_busy_max")
    return "" if busy is None else f" (busiest {busy:.0%})"


def _accept_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for key, who in (("accept_native", "wrk"), ("accept", "Python aiohttp"), ("trivial_native", "wrk"), ("trivial", "Python aiohttp")):
        a = results.get(key)
        if a is None or "per_s" not in a:
            continue
        what = "Accepted executions (POST -> 202" if key.startswith("accept") else f"Trivial endpoint (GET {a['path']} -> 200"
        n = a.get("connections") or a.get("concurrency")
        lines.append(
            f"{what}, {who}, {n} keep-alive connections, executor stopped): {a['per_s']:.0f}/s, "
            f"p50 {_f(a['latency_ms']['p50'])} ms, p99 {_f(a['latency_ms']['p99'])} ms, max {_f(a['latency_ms']['max'])} ms; "
            f"orchestrator CPU {a['service_cpu_s'].get('orchestrator', 0):.2f} s, client CPU {a['client_cpu_s']:.2f} s"
            + (f", errors {a['errors']}" if a.get("errors") else "")
            + "."
        )
    return ["", *lines] if lines else []


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Results of `{results['scenario']}` at commit `{m['commit'][:12]}` ({results['settings'].get('services', '')}), "
        f"{results['finished_at']}, {results['duration_s']:.0f} s. Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, "
        f"{m['memory_gib']} GiB, Python {m['python']}; load average at start {', '.join(f'{v:.1f}' for v in m['kernel_load_at_start'])}"
        f"{', at end ' + ', '.join(f'{v:.1f}' for v in results['load_at_end']) if 'load_at_end' in results else ''}.",
        "",
        "### Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
        *(f"| {t} | {v} | {_ok(met)} |" for t, v, met in targets(results)),
        "",
        "### Per-token latency and time to first token (floor beside agentstream)",
        "",
        "Per-token latency: fake model stamps the token when it writes it -> the client has it. TTFT overhead: request sent -> "
        "first token at the client, minus the model's first-token delay. Delivered tok/s: all tokens / (first to last arrival).",
        "",
        "| load | path | p50 ms | p99 ms | max ms | TTFT+ p50 | TTFT+ p99 | POST->202 p50 | tok/s (offered) | records/token "
        "| client CPU s | CPU ms/token: orchestrator / executor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in _rows(results):
        offered = row["concurrency"] * row["rate"]
        for key, name in KINDS:
            step = row.get(key)
            if step is None:
                continue
            lat, ttft = step["latency_ms"], step["ttft_overhead_ms"]
            cpu = step.get("cpu_ms_per_token", {})
            agent = key == "agentstream"
            lines.append(
                f"| {row['label']} | {name} | {_f(lat['p50'])} | {_f(lat['p99'])} | {_f(lat['max'])} | "
                f"{_f(ttft['p50'])} | {_f(ttft['p99'])} | "
                f"{_f(step.get('accepted_ms', {}).get('p50')) if agent else ''} | {_f(step['delivered_tps'], 0)} ({offered:g}) | "
                f"{_f(step['records_per_token'], 3) if agent else ''} | {step['client_cpu_s']:.2f}{_busy(step)} | "
                f"{(_f(cpu.get('orchestrator'), 3) + ' / ' + _f(cpu.get('executor'), 3)) if agent else ''} |"
            )
    best, floor = sustained(results, "agentstream"), sustained(results, "floor_raw")
    lines += [
        "",
        f"Highest sustained delivered tokens/s with p99 < 100 ms: agentstream {_f(best[0], 0) if best else '-'} "
        f"({best[1] if best else 'no load met it'}); raw-SSE floor {_f(floor[0], 0) if floor else '-'} ({floor[1] if floor else '-'}).",
    ]
    if "kafka_floor" in results:
        k = results["kafka_floor"]
        lines.append(
            f"Kafka floor (aiokafka produce -> consume, acks=all, linger 2 ms, {k['rate']:g} records/s): "
            f"p50 {_f(k['latency_ms']['p50'])} ms, p99 {_f(k['latency_ms']['p99'])} ms, max {_f(k['latency_ms']['max'])} ms."
        )
    if results.get("fanout") or "idle" in results:
        lines += [
            "",
            "### Fan-out",
            "",
            "| subscribers | delivery p50 ms | p99 ms | max ms | tokens each | orchestrator CPU s | orchestrator RSS MiB |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in results.get("fanout", []):
            d = row["delivery_ms"]
            lines.append(
                f"| {row['subscribers']:,} | {_f(d['p50'])} | {_f(d['p99'])} | {_f(d['max'])} | "
                f"{row['tokens_per_subscriber']:.1f}/{row['expected_tokens_per_subscriber']} | "
                f"{row['service_cpu_s'].get('orchestrator', 0):.2f} | {row['orchestrator_rss_mb']:.0f} |"
            )
        if "idle" in results:
            i = results["idle"]
            live = i["live_stream_latency_ms"]
            lines.append(
                f"| {i['connected']:,} idle | live stream meanwhile: {_f(live['p50'])} | {_f(live['p99'])} | {_f(live['max'])} | | | "
                f"{i['orchestrator_rss_before_mb']:.0f} -> {i['orchestrator_rss_with_idle_mb']:.0f} "
                f"({i['per_subscriber_kib']:.1f} KiB each) |"
            )
        for s in results.get("subscriber_setup", []):
            lines.append(
                f"\nConnecting and authenticating {s['subscribers']:,} WebSockets took {s['seconds']:.1f} s ({s['ready']:,} ready)."
            )
    if "quiet" in results:
        q = results["quiet"]
        inside = q.get("after_recovery_step_s")
        lines += [
            "",
            f"Idle stack ({q['seconds']:g} s, no executions"
            + (f", inside the RSS window: {inside:.0f} s after the recovery step" if inside is not None else "")
            + "), % of one core: "
            + ", ".join(f"{k} {v:.2f}" for k, v in q["core_pct"].items())
            + (f"; Kafka alone (services stopped) {q['kafka_alone_core_pct']:.2f}." if "kafka_alone_core_pct" in q else "."),
        ]
    lines += _accept_lines(results)
    if "recovery" in results:
        r = results["recovery"]
        lines += [
            "",
            f"Orchestrator RSS after the {r['step']} step (MiB): idle {r['idle_mb']:.0f}, peak in the step {r['peak_mb']:.0f}; "
            "then every few seconds: "
            + ", ".join(f"{t:.0f} s {mb:.0f}" for t, mb in r["samples"][:-1][:: max(1, len(r["samples"]) // 12)])
            + f", {r['after_s']:.0f} s {r['after_mb']:.0f}."
            + (" Nothing but the idle-stack measurement ran in that window." if r.get("quiet_inside") else ""),
        ]
    if results.get("coalesce"):
        lines += [
            "",
            "### Token coalescing",
            "",
            "| max chars | load | records/token | p50 ms | p99 ms | max ms | tok/s | CPU ms/token: executor / orchestrator |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in results["coalesce"]:
            lat, cpu = row["latency_ms"], row.get("cpu_ms_per_token", {})
            label = "1 (a record per token)" if row["max_chars"] == 1 else f"{row['max_chars']}"
            lines.append(
                f"| {label} | {row['label']} | {_f(row['records_per_token'], 3)} | "
                f"{_f(lat['p50'])} | {_f(lat['p99'])} | {_f(lat['max'])} | "
                f"{_f(row['delivered_tps'], 0)} | {_f(cpu.get('executor'), 3)} / {_f(cpu.get('orchestrator'), 3)} |"
            )
    lines += [
        "",
        f"RSS MiB at idle: {_mb(results.get('rss_idle_mb', {}))}; peak: {_mb(results.get('rss_peak_mb', {}))}.",
    ]
    return "\n".join(lines) + "\n"
