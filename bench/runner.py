"""Runs a scenario: the floor and agentstream side by side, in one run, on this machine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.pool
import os
import platform
import signal
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console

from bench import clients, kafkafloor, stats, wrkload
from bench.fakemodel import model_name
from bench.procs import API_KEY, ROOT, Proc, Sampler, Services, agents_yaml, free_port, services_env, start_fake_model
from bench.scenario import Load, Scenario
from services.common.kafka import client_options
from services.common.settings import KafkaSettings

console = Console(width=180)

# Each token's text is "<stamp>;" (18 chars). Sized so a record holds as many tokens as the
# default 256 chars would of ~4-char English tokens: 64.
MAX_CHARS = 64 * 18
FANOUT_FIRST_TOKEN_DELAY_MS = 1000.0  # time for the (already connected) subscribers to subscribe
IDLE_FIRST_TOKEN_DELAY_MS = 28000.0  # under the executor's 30 s first-token timeout


def _agent(load: Load) -> str:
    return f"l-{load.rate:g}-{load.tokens}"


class Run:
    def __init__(self, scenario: Scenario, *, bootstrap: str, work: Path) -> None:
        self.s = scenario
        self.bootstrap = bootstrap
        self.work = work
        self.prefix = f"bench-{uuid.uuid4().hex[:8]}."
        self.ftd_s = scenario.first_token_delay_ms / 1000
        self.results: dict[str, Any] = {"scenario": scenario.name, "topic_prefix": self.prefix}
        self.watched: list[Proc] = []
        self.kafka = _kafka_process(bootstrap)
        self.peak: dict[str, int] = {}
        ctx = multiprocessing.get_context("spawn")
        self.workers = scenario.client_processes
        self.pool: multiprocessing.pool.Pool = ctx.Pool(self.workers + 1)
        # The end of the recovery step (monotonic), the orchestrator's peak RSS in it (bytes), its label.
        self.recovery_from: tuple[float, int, str] | None = None
        self.coalesce_env = {"AGENTSTREAM_EXECUTOR_COALESCE_MAX_CHARS": str(MAX_CHARS)}

    # -- set-up ----------------------------------------------------------------------------
    def _models(self) -> dict[str, str]:
        loads = {*self.s.loads, *(Load(n) for n in self.s.sweep)}
        if self.s.coalesce is not None:
            loads |= set(self.s.coalesce.loads)
        models = {_agent(load): model_name(load.rate, load.tokens, self.s.first_token_delay_ms) for load in loads}
        models["warmup"] = model_name(200, 5, 0)
        models["accept"] = model_name(1000, 1, 0)
        if self.s.fanout is not None:
            f = self.s.fanout
            models["fanout"] = model_name(f.rate, f.tokens, FANOUT_FIRST_TOKEN_DELAY_MS)
            models["idle"] = model_name(1, 1, IDLE_FIRST_TOKEN_DELAY_MS)
            models["live"] = model_name(f.rate, f.tokens, self.s.first_token_delay_ms)
        return models

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        fake, port = start_fake_model(self.work)
        self.fake = fake
        self.model_url = f"http://127.0.0.1:{port}/v1"
        agents = self.work / "agents.yaml"
        agents.write_text(agents_yaml(self._models()))
        http_port = free_port()
        env = services_env(prefix=self.prefix, port=http_port, work=self.work, agents_file=agents, model_url=self.model_url)
        env["AGENTSTREAM_KAFKA_BOOTSTRAP"] = self.bootstrap
        if "PYTHONPATH" not in env:  # the committed services, not whatever is being edited in the tree
            env["PYTHONPATH"] = str(_snapshot(self.work / "services-at-head"))
        self.svc = Services(prefix=self.prefix, port=http_port, env=env, log_dir=self.work)
        self.watched = [fake]
        try:
            with Sampler(self.watched):
                self.svc.start_orchestrator()
                self._watch(self.svc.orchestrator)
                self._start_executor({})
                yield
        finally:
            self._note_peaks()
            self.svc.stop()
            fake.stop()
            self.pool.terminate()
            self.pool.join()

    def _watch(self, proc: Proc | None) -> None:
        assert proc is not None
        self.watched.append(proc)

    def _note_peaks(self) -> None:
        for proc in self.watched:
            self.peak[proc.name] = max(self.peak.get(proc.name, 0), proc.peak_rss)

    def _start_executor(self, extra: dict[str, str]) -> None:
        if self.svc.executor is not None:
            self._note_peaks()
            self.watched.remove(self.svc.executor)
            self.svc.stop_executor()
        self.svc.start_executor({**self.coalesce_env, **extra})
        self._watch(self.svc.executor)
        self._warm_up()

    def _warm_up(self, timeout: float = 60.0) -> None:
        """One short execution end to end: the executor joined its group and everything is hot."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.pool.apply(clients.run_agentstream, (self.svc.url, self.svc.ws_url, "warmup", 1))
            if out["tokens"] == 5 and not out["errors"]:
                return
            time.sleep(0.5)
        raise RuntimeError(f"no execution finished within {timeout:g}s; logs in {self.work}")

    # -- measuring ------------------------------------------------------------------------
    def _cpu(self) -> dict[str, float]:
        cpu = {p.name: p.cpu() for p in self.watched}
        if self.kafka is not None:
            with contextlib.suppress(psutil.Error):
                k = self.kafka.cpu_times()
                cpu["kafka"] = k.user + k.system
        # Every process on the machine: what is neither ours nor Kafka is other people's load.
        t = psutil.cpu_times()
        cpu["machine"] = t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
        return cpu

    def _spread(self, fn: Callable[..., dict[str, Any]], n: int, args: Callable[[int], tuple[Any, ...]]) -> list[dict[str, Any]]:
        pending = [self.pool.apply_async(fn, args(share)) for share in _shares(n, self.workers)]
        return [p.get(timeout=300) for p in pending]

    def stream_step(self, kind: str, load: Load) -> dict[str, Any]:
        start_at = time.time() + 0.3
        model = model_name(load.rate, load.tokens, self.s.first_token_delay_ms)
        cpu0, wall0, overflows0 = self._cpu(), time.monotonic(), _listen_overflows()
        if kind == "sdk":
            parts = self._spread(clients.run_sdk, load.concurrency, lambda n: (self.model_url, model, n, start_at))
        elif kind == "raw":
            parts = self._spread(clients.run_raw, load.concurrency, lambda n: (self.model_url, model, n, start_at))
        else:
            args = (self.svc.url, self.svc.ws_url, _agent(load))
            parts = self._spread(clients.run_agentstream, load.concurrency, lambda n: (*args, n, start_at))
        cpu1 = self._cpu()
        out = stats.summarize(
            stats.merge(parts), expected_tokens=load.concurrency * load.tokens, first_token_delay_s=self.ftd_s, rate=load.rate
        )
        out["service_cpu_s"] = {name: cpu1[name] - cpu0.get(name, cpu1[name]) for name in cpu1 if name != "machine"}
        machine = cpu1["machine"] - cpu0["machine"]
        ours = sum(out["service_cpu_s"].values()) + out["client_cpu_s"]
        # CPU seconds spent by processes that are not part of this benchmark (other work on the machine).
        out["foreign_cpu_s"] = max(0.0, machine - ours)
        out["machine_cpu_s"] = machine
        # The whole machine's share of all its cores over the step: near 1.0, every process (a client too) waited for a core.
        out["machine_busy"] = machine / max(1e-9, (time.monotonic() - wall0) * (psutil.cpu_count() or 1))
        overflows1 = _listen_overflows()
        # Connections a listener had no room for (machine-wide): each waits >= 1 s for a retransmit.
        out["listen_overflows"] = overflows1 - overflows0 if overflows0 is not None and overflows1 is not None else None
        if out["tokens"]:
            out["cpu_ms_per_token"] = {name: 1000 * cpu / out["tokens"] for name, cpu in out["service_cpu_s"].items()}
        lat = out["latency_ms"]
        console.log(
            f"{kind:11} {load.label:>14}: p50 {_f(lat['p50'])} p99 {_f(lat['p99'])} max {_f(lat['max'])} ms, "
            f"ttft+ p50 {_f(out['ttft_overhead_ms']['p50'])}, {_f(out['delivered_tps'])} tok/s, "
            f"{out['tokens']}/{out['expected_tokens']} tokens, errors {out['error_count']}, client cpu {out['client_cpu_s']:.2f}s, "
            f"services cpu {', '.join(f'{k} {v:.2f}s' for k, v in out['service_cpu_s'].items())}, foreign cpu {out['foreign_cpu_s']:.2f}s, "
            f"listen overflows {out['listen_overflows']}"
        )
        return out

    def loads(self) -> None:
        rows = []
        for load in self.s.loads:
            row: dict[str, Any] = {"concurrency": load.concurrency, "rate": load.rate, "tokens": load.tokens, "label": load.label}
            for kind in ("sdk", "raw", "agentstream"):
                watched = kind == "agentstream" and self._recovery_step(load)
                if watched and self.svc.orchestrator is not None:
                    self.svc.orchestrator.mark()
                row["floor_sdk" if kind == "sdk" else "floor_raw" if kind == "raw" else kind] = self.stream_step(kind, load)
                if watched and self.svc.orchestrator is not None:
                    # Peak while the step ran; the clock of the recovery window starts when its last stream ended.
                    self.recovery_from = (time.monotonic(), self.svc.orchestrator.marked_peak_rss, load.label)
                time.sleep(0.5)
            rows.append(row)
        self.results["loads"] = rows
        sweep = []
        for n in self.s.sweep:
            load = Load(n)
            row = {"concurrency": n, "rate": load.rate, "tokens": load.tokens, "label": load.label}
            row["floor_raw"] = self.stream_step("raw", load)
            time.sleep(0.5)
            row["agentstream"] = self.stream_step("agentstream", load)
            time.sleep(0.5)
            sweep.append(row)
        self.results["sweep"] = sweep

    def _recovery_step(self, load: Load) -> bool:
        r = self.s.recovery
        return r is not None and load.concurrency == r.after and self.recovery_from is None

    def recovery(self, *, quiet: bool) -> None:
        """The orchestrator's RSS, sampled from the end of the recovery step until ``seconds`` after it.

        Nothing else runs in that window but, with ``quiet``, the idle stack's CPU (``quiet_stack``),
        measured in its last ``quiet_seconds``: an idle stack is what the window waits for anyway."""
        r, orch = self.s.recovery, self.svc.orchestrator
        assert r is not None and orch is not None and self.recovery_from is not None
        start, peak, label = self.recovery_from
        end = start + r.seconds
        stack_at = max(time.monotonic(), end - self.s.quiet_seconds - 1.0) if quiet and self.s.quiet_seconds else None
        samples: list[tuple[float, float]] = []
        while True:
            now = time.monotonic()
            samples.append((now - start, orch.rss() / 2**20))
            if stack_at is not None and now >= stack_at:
                stack_at = None

                def sample() -> None:
                    samples.append((time.monotonic() - start, orch.rss() / 2**20))

                self.quiet_stack(settle=0.0, after_s=now - start, tick=sample, interval=r.interval)
                continue  # on to the window's end
            if now >= end:
                break
            next_at = min(now + r.interval, end, stack_at if stack_at is not None else end)
            time.sleep(max(0.0, next_at - time.monotonic()))
        idle = self.results.get("rss_idle_mb", {}).get("orchestrator", 0.0)
        self.results["recovery"] = {
            "step": label,
            "seconds": r.seconds,
            "bound": r.bound,
            "idle_mb": idle,
            # The step's peak (sampled every 0.25 s) or the window's, if it rose after the last stream ended.
            "peak_mb": max(peak / 2**20, *(mb for _, mb in samples)),
            "after_mb": samples[-1][1],
            "after_s": samples[-1][0],
            "samples": [[round(t, 1), round(mb, 1)] for t, mb in samples],
            "quiet_inside": "quiet" in self.results,
        }
        rec = self.results["recovery"]
        console.log(
            f"orchestrator RSS after {label}: idle {idle:.0f}, peak {rec['peak_mb']:.0f}, "
            f"{rec['after_s']:.0f} s after {rec['after_mb']:.0f} MiB"
        )

    def kafka_floor(self) -> None:
        out = self.pool.apply(kafkafloor.run_kafka_floor, (self.bootstrap, self.s.kafka_floor_rate, self.s.kafka_floor_seconds))
        self.results["kafka_floor"] = {"rate": out["rate"], "latency_ms": stats.latency(out["latencies_ms"])}
        lat = self.results["kafka_floor"]["latency_ms"]
        console.log(f"kafka floor @{out['rate']:g} rec/s: p50 {_f(lat['p50'])} p99 {_f(lat['p99'])} max {_f(lat['max'])} ms")

    def _post(self, agent: str) -> str:
        request = urllib.request.Request(
            f"{self.svc.url}/v1/executions",
            data=json.dumps({"input": "go", "agent": agent}).encode(),
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            execution_id: str = json.loads(response.read())["execution_id"]
            return execution_id

    def _subscribers(self, n: int, agent: str, *, hold_until: float | None = None, release: Path | None = None) -> list[Any]:
        """Start ``n`` subscribers in the client processes; once all are connected, start the execution."""
        orch = self.svc.orchestrator
        assert orch is not None
        id_file = self.work / f"execution-{uuid.uuid4().hex[:6]}"
        pending = [
            self.pool.apply_async(clients.run_subscribers, (str(id_file), share, self.svc.ws_url, hold_until, str(release or "")))
            for share in _shares(n, self.workers)
        ]
        started = time.monotonic()
        while (ready := _ready(id_file)) < n and time.monotonic() < started + 60 + n / 100:
            time.sleep(0.2)
        self.results.setdefault("subscriber_setup", []).append({"subscribers": n, "ready": ready, "seconds": time.monotonic() - started})
        id_file.write_text(self._post(agent))
        return pending

    def fanout(self) -> None:
        f = self.s.fanout
        assert f is not None
        rows = []
        for n in f.subscribers:
            orch = self.svc.orchestrator
            assert orch is not None
            cpu0 = self._cpu()
            parts = [p.get(timeout=300) for p in self._subscribers(n, "fanout")]
            cpu1 = self._cpu()
            raw = stats.merge([{**p, "ttft_s": []} for p in parts])
            row = {
                "subscribers": n,
                "delivery_ms": stats.latency(raw["latencies_ms"]),
                "tokens_per_subscriber": raw["tokens"] / n,
                "expected_tokens_per_subscriber": f.tokens,
                "errors": raw["errors"][:5],
                "error_count": len(raw["errors"]),
                "client_cpu_s": raw["client_cpu_s"],
                "service_cpu_s": _delta(cpu0, cpu1),
                "orchestrator_rss_mb": orch.rss() / 2**20,
            }
            d = row["delivery_ms"]
            console.log(
                f"fan-out to {n}: delivery p50 {_f(d['p50'])} p99 {_f(d['p99'])} max {_f(d['max'])} ms, "
                f"{row['tokens_per_subscriber']:.1f}/{f.tokens} tokens each, errors {row['error_count']}, "
                f"client cpu {raw['client_cpu_s']:.2f}s, orchestrator cpu {row['service_cpu_s'].get('orchestrator', 0):.2f}s"
            )
            rows.append(row)
            time.sleep(1)
        self.results["fanout"] = rows

    def idle(self) -> None:
        f = self.s.fanout
        assert f is not None and self.svc.orchestrator is not None
        orch = self.svc.orchestrator
        before = orch.rss()
        release = self.work / "release-idle"
        pending = self._subscribers(f.idle, "idle", hold_until=time.time() + 600, release=release)
        time.sleep(1.0)  # the subscribe messages
        connected = _connections(orch.ps, self.svc.port)
        during = orch.rss()
        # One live stream of 50 tok/s while the idle subscribers are held (last pool slot).
        live = self.pool.apply(clients.run_agentstream, (self.svc.url, self.svc.ws_url, "live", 1))
        during = max(during, orch.rss())
        release.touch()
        for p in pending:
            with contextlib.suppress(Exception):
                p.get(timeout=60)
        lat = stats.latency(live["latencies_ms"])
        self.results["idle"] = {
            "subscribers": f.idle,
            "connected": connected,
            "orchestrator_rss_before_mb": before / 2**20,
            "orchestrator_rss_with_idle_mb": during / 2**20,
            "per_subscriber_kib": (during - before) / max(1, connected) / 1024,
            "live_stream_latency_ms": {k: v for k, v in lat.items() if k != "cdf"},
            "live_stream_errors": live["errors"][:3],
        }
        console.log(
            f"{connected} idle subscribers: orchestrator RSS {before / 2**20:.0f} -> {during / 2**20:.0f} MiB; "
            f"a live stream meanwhile p50 {_f(lat['p50'])} p99 {_f(lat['p99'])} ms"
        )

    def coalescing(self) -> None:
        c = self.s.coalesce
        assert c is not None
        rows = []
        for max_chars in c.max_chars:
            self._start_executor({"AGENTSTREAM_EXECUTOR_COALESCE_MAX_CHARS": str(max_chars)})
            for load in c.loads:
                console.log(f"coalesce at most {max_chars} chars per record:")
                out = self.stream_step("agentstream", load)
                rows.append({"max_chars": max_chars, "concurrency": load.concurrency, "rate": load.rate, "label": load.label, **out})
                time.sleep(0.5)
        self.results["coalesce"] = rows
        self._start_executor({})

    def accept(self) -> None:
        a = self.s.accept
        assert a is not None
        # The executor is stopped: this measures the orchestrator's intake (auth, limits, the
        # acknowledged Kafka sends), not executions competing for the same two cores.
        self._note_peaks()
        if self.svc.executor is not None:
            self.watched.remove(self.svc.executor)
            self.svc.stop_executor()
        body = json.dumps({"input": "go", "agent": "accept"})
        wrk = wrkload.available() if a.native else None
        if a.native and wrk is None:
            self.results["accept_native"] = {"missing": "wrk is not installed (make bench installs it: apt-get install -y wrk)"}
        if wrk is not None:
            # First: the target's own figure, on the stack as the earlier steps left it.
            self.results["accept_native"] = self._wrk(
                "/v1/executions", seconds=a.seconds, connections=a.concurrency, method="POST", body=body, expect=202, binary=wrk
            )
        self.results["accept"] = self._python_requests("/v1/executions", body.encode(), 202)
        self.results["trivial"] = self._python_requests(a.trivial_path, None, 200)
        if wrk is not None:
            self.results["trivial_native"] = self._wrk(a.trivial_path, seconds=a.seconds, connections=a.concurrency, binary=wrk)

    def _gc_pauses(self) -> dict[str, dict[str, float]]:
        """The orchestrator's collector pauses so far, by generation (agentstream_gc_pause_seconds):
        count, total seconds, and how many took over 50 ms."""
        try:
            with urllib.request.urlopen(f"{self.svc.url}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out: dict[str, dict[str, float]] = {}
        for line in text.splitlines():
            if not line.startswith("agentstream_gc_pause_seconds"):
                continue
            name, _, value = line.rpartition(" ")
            gen = name.split('generation="', 1)[1].split('"', 1)[0] if 'generation="' in name else "?"
            row = out.setdefault(gen, {"count": 0.0, "sum_s": 0.0, "le_50ms": 0.0})
            if name.startswith("agentstream_gc_pause_seconds_count"):
                row["count"] = float(value)
            elif name.startswith("agentstream_gc_pause_seconds_sum"):
                row["sum_s"] = float(value)
            elif 'le="0.05"' in name:
                row["le_50ms"] = float(value)
        return out

    def _wrk(self, path: str, **kwargs: Any) -> dict[str, Any]:
        cpu0 = self._cpu()
        gc0 = self._gc_pauses()
        try:
            out = wrkload.run(f"{self.svc.url}{path}", auth=f"Bearer {API_KEY}", **kwargs)
        except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
            console.log(f"wrk {path}: {exc}")
            return {"path": path, "failed": str(exc)}
        out["path"] = path
        out["service_cpu_s"] = _delta(cpu0, self._cpu())
        # The orchestrator's collector pauses during the run (a latency tail's usual suspect).
        gc1 = self._gc_pauses()
        out["gc_pauses"] = {
            gen: {
                "count": row["count"] - gc0.get(gen, {}).get("count", 0.0),
                "total_ms": 1000 * (row["sum_s"] - gc0.get(gen, {}).get("sum_s", 0.0)),
                "over_50ms": (row["count"] - row["le_50ms"]) - (gc0.get(gen, {}).get("count", 0.0) - gc0.get(gen, {}).get("le_50ms", 0.0)),
            }
            for gen, row in gc1.items()
        }
        lat = out["latency_ms"]
        console.log(
            f"wrk {path}: {out['per_s']:.0f}/s ({out['connections']} connections), p50 {_f(lat['p50'])} p99 {_f(lat['p99'])} ms, "
            f"errors {out['errors']}, wrk cpu {out['client_cpu_s']:.2f}s; orchestrator GC pauses "
            + ", ".join(
                f"gen{g} {r['count']:.0f} ({r['total_ms']:.0f} ms, {r['over_50ms']:.0f} over 50 ms)"
                for g, r in sorted(out["gc_pauses"].items())
            )
        )
        return out

    def _python_requests(self, path: str, body: bytes | None, expected: int) -> dict[str, Any]:
        a = self.s.accept
        assert a is not None
        cpu0 = self._cpu()
        per = max(1, a.concurrency // self.workers)
        parts = [
            self.pool.apply_async(clients.run_requests, (self.svc.url, path, body, expected, a.seconds, per)) for _ in range(self.workers)
        ]
        outs = [p.get(timeout=120) for p in parts]
        cpu1 = self._cpu()
        lat = [v for o in outs for v in o["latencies_ms"]]
        elapsed = max(o["elapsed_s"] for o in outs)
        out = {
            "path": path,
            "concurrency": per * self.workers,
            "seconds": elapsed,
            "accepted": len(lat),
            "per_s": len(lat) / elapsed,
            "latency_ms": {k: v for k, v in stats.latency(lat).items() if k != "cdf"},
            "errors": [e for o in outs for e in o["errors"]][:5],
            "client_cpu_s": sum(o["client_cpu_s"] for o in outs),
            # The busiest client process's share of a core: near 1.0, Python was the limit.
            "client_busy_max": max(o["client_cpu_s"] / o["elapsed_s"] for o in outs if o["elapsed_s"] > 0),
            "service_cpu_s": _delta(cpu0, cpu1),
        }
        console.log(
            f"python {path}: {out['per_s']:.0f}/s, p50 {_f(out['latency_ms']['p50'])} p99 {_f(out['latency_ms']['p99'])} ms, "
            f"errors {out['errors']}, client cpu {out['client_cpu_s']:.2f}s (busiest {out['client_busy_max']:.0%} of a core)"
        )
        return out

    def quiet_stack(
        self, *, settle: float = 2.0, after_s: float | None = None, tick: Callable[[], None] | None = None, interval: float = 5.0
    ) -> None:
        """An idle stack: Kafka and the services, no executions, for ``quiet_seconds`` (after ``settle``
        seconds for what the last step left behind: commits, evictions); ``tick`` every ``interval`` s
        meanwhile (the RSS window's samples)."""
        seconds = self.s.quiet_seconds
        time.sleep(settle)
        cpu0 = self._cpu()
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            time.sleep(min(interval, left) if tick is not None else left)
            if tick is not None:
                tick()
        pct = {k: 100 * v / seconds for k, v in _delta(cpu0, self._cpu()).items()}
        self.results["quiet"] = {"seconds": seconds, "core_pct": pct, "after_recovery_step_s": after_s}
        console.log(
            f"idle stack over {seconds:g}s: orchestrator {pct.get('orchestrator', 0):.2f}%, executor {pct.get('executor', 0):.2f}%, "
            f"kafka {pct.get('kafka', 0):.2f}%, other {pct.get('other', 0):.1f}% of one core"
            + (f" ({after_s:.0f} s after the recovery step)" if after_s is not None else "")
        )

    def quiet(self) -> None:
        """The idle stack (unless measured already, in the recovery window); then Kafka alone (the
        services stopped) as long: on a shared broker, that is the floor of the broker's own CPU."""
        if "quiet" not in self.results:
            self.quiet_stack()
        seconds = self.s.quiet_seconds
        self._note_peaks()
        for proc in (self.svc.executor, self.svc.orchestrator):
            if proc is not None:
                self.watched.remove(proc)
        self.svc.stop()
        time.sleep(2.0)
        cpu2 = self._cpu()
        time.sleep(seconds)
        alone = _delta(cpu2, self._cpu())
        q = self.results["quiet"]
        pct = q["core_pct"]
        ours = sum(v for k, v in pct.items() if k in ("orchestrator", "executor"))
        kafka_alone = 100 * alone.get("kafka", 0.0) / seconds
        kafka_added = max(0.0, pct.get("kafka", 0.0) - kafka_alone)
        q.update(
            {
                "kafka_alone_core_pct": kafka_alone,
                "services_core_pct": ours,
                "kafka_added_core_pct": kafka_added,
                "total_core_pct": ours + kafka_added,
            }
        )
        console.log(f"Kafka alone over {seconds:g}s: {kafka_alone:.2f}% of one core; idle stack in total {ours + kafka_added:.2f}%")

    def memory_idle(self) -> None:
        self.results["rss_idle_mb"] = {p.name: p.rss() / 2**20 for p in self.watched}


def _delete_topics(bootstrap: str, prefix: str) -> None:
    """Drop this run's topics: a shared broker should not carry every run's partitions (heap, start-up time)."""

    async def delete() -> None:
        admin = AIOKafkaAdminClient(**client_options(KafkaSettings(bootstrap=bootstrap)))
        await admin.start()
        try:
            topics = [t for t in await admin.list_topics() if t.startswith(prefix)]
            if topics:
                await admin.delete_topics(topics)
        finally:
            await admin.close()

    try:
        asyncio.run(delete())
    except Exception as exc:
        console.log(f"could not delete the topics of {prefix}*: {exc}")


def _delta(cpu0: dict[str, float], cpu1: dict[str, float]) -> dict[str, float]:
    """CPU seconds per process between two marks; ``other`` is the rest of the machine (not ours, not Kafka)."""
    out = {k: cpu1[k] - cpu0.get(k, cpu1[k]) for k in cpu1 if k != "machine"}
    out["other"] = max(0.0, cpu1["machine"] - cpu0["machine"] - sum(out.values()))
    return out


def _listen_overflows() -> int | None:
    """Linux's ListenOverflows counter (connections dropped at a full accept queue), or None."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split(), values.split(), strict=True))
            return int(row.get("ListenOverflows", 0))
    return None


def _kafka_process(bootstrap: str) -> psutil.Process | None:
    """The local broker's process (to count its CPU per token), if it listens on this machine."""
    port = int(bootstrap.rsplit(":", 1)[-1])
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
                return psutil.Process(conn.pid)
    except psutil.Error:
        pass
    return None


def _ready(id_file: Path) -> int:
    return sum(int(p.read_text() or 0) for p in id_file.parent.glob(f"{id_file.name}.ready-*"))


def _shares(n: int, workers: int) -> list[int]:
    k = min(workers, n)
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def _connections(ps: psutil.Process, port: int) -> int:
    try:
        return sum(1 for c in ps.net_connections(kind="tcp") if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port)
    except psutil.Error:
        return 0


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _snapshot(dest: Path) -> Path:
    """``schemas/`` and ``services/`` as committed at HEAD: the results then belong to one commit."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "HEAD", "schemas", "services"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def machine() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    freq = psutil.cpu_freq()
    model = ""
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty_paths": [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()],
        "cpu_model": model,
        "logical_cpus": psutil.cpu_count(),
        "cpu_mhz": freq.current if freq else None,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "kernel_load_at_start": os.getloadavg(),
    }


def run(scenario: Scenario, *, bootstrap: str, out_dir: Path, phases: set[str] | None = None) -> dict[str, Any]:
    started = time.time()
    facts = machine()
    with tempfile.TemporaryDirectory(prefix="agentstream-bench-") as tmp:
        bench = Run(scenario, bootstrap=bootstrap, work=Path(tmp))
        wanted = phases or {"kafka", "loads", "recovery", "fanout", "idle", "coalesce", "accept", "quiet"}
        try:
            with bench.running():
                bench.memory_idle()
                if "kafka" in wanted:
                    bench.kafka_floor()
                if "loads" in wanted:
                    bench.loads()
                if "recovery" in wanted and bench.recovery_from is not None:
                    # Before anything else loads the orchestrator; the idle stack's CPU inside the window.
                    bench.recovery(quiet="quiet" in wanted and bool(scenario.quiet_seconds))
                if "fanout" in wanted and scenario.fanout is not None:
                    bench.fanout()
                if "idle" in wanted and scenario.fanout is not None and scenario.fanout.idle:
                    bench.idle()
                if "coalesce" in wanted and scenario.coalesce is not None:
                    bench.coalescing()
                if "accept" in wanted and scenario.accept is not None:
                    bench.accept()
                if "quiet" in wanted and scenario.quiet_seconds:
                    bench.quiet()  # last: it stops the services (measures the stack first unless the recovery window did)
        except BaseException:
            console.print(f"[red]bench failed[/]; service logs: {tmp}")
            for name in ("orchestrator", "executor", "fake-model"):
                log = Path(tmp) / f"{name}.log"
                if log.exists():
                    console.print(f"--- {name} (tail)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
            raise
        results = bench.results
    _delete_topics(bootstrap, bench.prefix)
    results["rss_peak_mb"] = {k: v / 2**20 for k, v in bench.peak.items()}
    results["machine"] = facts
    results["settings"] = {
        "first_token_delay_ms": scenario.first_token_delay_ms,
        "coalesce_max_chars": MAX_CHARS,
        "client_processes": scenario.client_processes,
        "bootstrap": bootstrap,
        "services": os.environ.get("BENCH_SERVICES_PATH") or f"schemas/ and services/ at {facts['commit']} (git archive)",
    }
    results["duration_s"] = time.time() - started
    results["load_at_end"] = os.getloadavg()
    results["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return results


def interrupt_safe() -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)
