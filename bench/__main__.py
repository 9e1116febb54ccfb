"""``python -m bench [scenario]``: the same as ``agentstream bench``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench.procs import ROOT

DEFAULT_SCENARIO = ROOT / "bench" / "scenarios" / "default.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentstream bench", description="Run a benchmark scenario against the floor.")
    parser.add_argument("scenario", nargs="?", type=Path, default=DEFAULT_SCENARIO, help="bench/scenarios/*.yaml or .toml")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where the JSON and PNGs go")
    parser.add_argument("--phases", default="", help="comma-separated subset: kafka,loads,recovery,fanout,idle,coalesce,accept,quiet")
    args = parser.parse_args(argv)
    return bench(args.scenario, out=args.out, phases=set(filter(None, args.phases.split(","))) or None)


def bench(scenario_path: Path, *, out: Path, phases: set[str] | None = None) -> int:
    # Imported here: numpy, matplotlib and the SDKs are heavy, and `--help` should not wait for them.
    from bench import report, runner
    from bench.scenario import load

    scenario = load(scenario_path)
    bootstrap = os.environ.get("AGENTSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    runner.interrupt_safe()
    results = runner.run(scenario, bootstrap=bootstrap, out_dir=out, phases=phases)
    report.write_json(results, out / f"{scenario.name}.json")
    pngs = report.plots(results, out)
    (out / f"{scenario.name}.md").write_text(report.markdown(results))
    report.print_summary(results, runner.console)
    runner.console.print(f"wrote {out / f'{scenario.name}.json'} and {', '.join(p.name for p in pngs)} in {results['duration_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
