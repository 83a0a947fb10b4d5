"""`python -m simulation`: run the scaler and reaper on a job trace and report waits and cost.

Exit status: 0 when every figure is complete, 1 when a run left jobs unfinished
or ignored part of the trace (the warnings say what), 2 for bad input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import timedelta
from pathlib import Path

from autoscaler.config import SPOT, ConfigError
from simulation.cost import PRICE_DATE, PRICE_REGION, WORKING_DAYS_PER_MONTH, PriceError, Prices
from simulation.deployment import Deployment, TemplateError, deployment
from simulation.report import (
    HOUR,
    Pricing,
    QueueSummary,
    chart,
    compare_chart,
    fixed_cost,
    spreads,
    stack_line,
    summarize,
    table,
    unserved,
    unserved_line,
)
from simulation.runner import RunResult, Scenario, default_scenario, simulate
from simulation.settings import with_overrides
from simulation.trace import START, Trace, TraceError, default_trace, load_csv

DEFAULT_RUNS = 3
# A comma before the next key=: a JSON value's own commas (a schedule list) stay in the value.
SETTING_SEPARATOR = re.compile(r",(?=[A-Za-z0-9_.-]+=)")
SPOT_NOTE = " (spot instance-hours at 1 - spot_discount of them)"
POOL_NOTE = " (stopped pool instances: their volumes only)"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        trace = load_csv(args.trace) if args.trace else Trace(default_trace(args.seed), START, f"day-{args.seed}")
        scenarios = _scenarios(args)
        pricing = Pricing(Prices().with_overrides(_pairs(args.price, "--price")), args.days_per_month)
        deployed = deployment()
        if args.runs is not None and args.runs < 1:
            raise ConfigError(f"--runs must be >= 1 (got {args.runs})")
    except (TraceError, ConfigError, PriceError, TemplateError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.moto:
        from simulation.moto_check import same_decisions  # noqa: PLC0415 - moto is slow to import

        return 0 if same_decisions(trace.jobs, scenarios[args.label], args.moto_minutes * 60.0) else 1
    try:
        return _run_all(trace, scenarios, pricing, deployed, args)
    except PriceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run_all(
    trace: Trace, scenarios: dict[str, Scenario], pricing: Pricing, deployed: Deployment, args: argparse.Namespace
) -> int:
    runs = args.runs or DEFAULT_RUNS
    summaries: dict[str, list[list[QueueSummary]]] = {}
    firsts: dict[str, RunResult] = {}
    report: dict[str, dict[str, object]] = {}
    warned = False
    for label, scenario in scenarios.items():
        started = time.monotonic()
        seeds = [scenario.world.seed + index for index in range(runs)]
        results = [
            simulate(
                trace.jobs,
                replace(scenario, world=replace(scenario.world, seed=seed)),
                progress=None if args.json else _progress(label, trace),
                start=trace.start,
                telemetry=index == 0,  # the stack's cost comes from the first run
                pauses=trace.pauses,
            )
            for index, seed in enumerate(seeds)
        ]
        summaries[label] = [summarize(result, pricing) for result in results]
        firsts[label] = results[0]
        stack = fixed_cost(results[0], deployed)
        warnings = _warnings(results, seeds)
        warned = warned or bool(warnings)
        for warning in warnings:
            print(f"warning: {label}: {warning}", file=sys.stderr)
        report[label] = {
            "settings": _settings_text(args, label),
            "seeds": seeds,
            "runs": [[asdict(s) for s in run] for run in summaries[label]],
            "spread": [{k: asdict(v) for k, v in queue.items()} for queue in spreads(summaries[label])],
            "stack_per_month": {**asdict(stack), "total": stack.per_month},
            "warnings": warnings,
            "unserved_jobs": unserved(results[0]),
        }
        if not args.json:
            elapsed = time.monotonic() - started
            print(
                f"{label}: {runs} run(s) of {results[0].end / HOUR:.1f} h simulated in {elapsed:.1f} s", file=sys.stderr
            )
            print(stack_line(label, stack, len(results[0].telemetry.metrics)), file=sys.stderr)
            if unserved(results[0]):
                print(unserved_line(label, unserved(results[0])), file=sys.stderr)
        if args.chart:
            boot = f"boot {scenario.world.boot_seconds:.0f} s ±{scenario.world.boot_jitter:.0%}"
            title = f"{label} ({_settings_text(args, label)}; {boot}), trace {trace.name}, seed {seeds[0]}"
            _note(args, chart(results[0], summaries[label][0], _out(args, trace, label, scenario), title))
    if args.chart and len(scenarios) > 1:
        title = f"trace {trace.name}, seed {seeds[0]}: " + "; ".join(
            f"{label}: {_settings_text(args, label)}" for label in scenarios
        )
        path = _out(args, trace, "compare-" + "-".join(scenarios), next(iter(scenarios.values())))
        _note(args, compare_chart({k: v[0] for k, v in summaries.items()}, firsts, path, title))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        spot = any(queue.capacity_type == SPOT for scenario in scenarios.values() for queue in scenario.queues)
        pool = any(queue.has_pool for scenario in scenarios.values() for queue in scenario.queues)
        print(table(summaries, all_ranges=args.runs is not None and args.runs > 1, spot=spot, pool=pool))
        print(
            f"\nmedian (min-max) over seeds {seeds[0]}-{seeds[-1]}; $ = instances at {PRICE_REGION} on-demand prices "
            f"of {PRICE_DATE}{SPOT_NOTE if spot else ''} + root volumes{POOL_NOTE if pool else ''}; "
            f"$ per month = $ per day x {args.days_per_month:g} days"
        )
    return 1 if warned else 0


def _warnings(results: list[RunResult], seeds: list[int]) -> list[str]:
    """Each distinct warning once, with the seeds it happened with."""
    seen: dict[str, list[int]] = {}
    for result, seed in zip(results, seeds, strict=True):
        for warning in result.warnings:
            seen.setdefault(warning, []).append(seed)
    return [f"{w} (seed {', '.join(map(str, s))})" for w, s in seen.items()]


def _scenarios(args: argparse.Namespace) -> dict[str, Scenario]:
    base = with_overrides(default_scenario(), _pairs(args.set, "--set"))
    scenarios = {args.label: base}
    for spec in args.compare:
        label, _, settings = spec.partition(":")
        if not label or not settings or label in scenarios:
            raise ConfigError(f"--compare wants a new LABEL:key=value[,key=value] (got {spec!r})")
        scenarios[label] = with_overrides(base, _pairs(SETTING_SEPARATOR.split(settings), f"--compare {label}"))
    return scenarios


def _settings_text(args: argparse.Namespace, label: str) -> str:
    settings = list(args.set)
    settings += [spec.partition(":")[2] for spec in args.compare if spec.partition(":")[0] == label]
    return ", ".join(settings) or "the template's defaults"


def _pairs(items: list[str], where: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{where} wants key=value (got {item!r})")
        pairs[key.strip()] = value.strip()
    return pairs


def _out(args: argparse.Namespace, trace: Trace, label: str, scenario: Scenario) -> Path:
    """Named by trace, label and settings, so no run overwrites another's chart."""
    digest = hashlib.sha256(repr(scenario).encode()).hexdigest()[:6]
    return args.out / f"simulation-{_slug(trace.name)}-{_slug(label)}-{digest}.png"


def _note(args: argparse.Namespace, path: Path) -> None:
    if not args.json:
        print(f"chart: {path}", file=sys.stderr)


def _progress(label: str, trace: Trace) -> Callable[[float, float], None]:
    next_report = [6 * HOUR]

    def report(now: float, _until: float) -> None:
        if now >= next_report[0]:
            next_report[0] += 6 * HOUR
            clock = trace.start + timedelta(seconds=now)
            print(f"{label}: simulated up to {clock:%a %H:%M}", file=sys.stderr, flush=True)

    return report


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in label)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulation",
        description="Simulate the autoscaler, as the template deploys it by default, on a job trace: "
        "job waits, instance-hours and dollars.",
    )
    parser.add_argument(
        "--trace", type=Path, help="CSV: queue,scheduled_at,duration[,id,waits_on]; seconds or ISO-8601 times"
    )
    parser.add_argument("--label", default="baseline", help="name of the run with the --set settings")
    parser.add_argument("--seed", type=int, default=7, help="seed of the default trace (default 7)")
    parser.add_argument(
        "--runs",
        type=int,
        help=f"runs with seeds seed..seed+N-1, each figure as median (range); default {DEFAULT_RUNS}, tail ranges",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting, e.g. max_instances=10, nixos-arm-aws.max_instances=2, boot_path=baked, capacity_type=spot, "
        "nixos-x86-aws.warm_pool_size=2, 'nixos-x86-aws.schedules=[{...}]' (JSON, as in QUEUES)",
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL:KEY=VALUE[,...]",
        help="also run with these settings and print side by side, e.g. baked:boot_path=baked; "
        "a comma separates settings only before the next key=",
    )
    parser.add_argument(
        "--price", action="append", default=[], metavar="TYPE=USD", help="an instance type's price per hour"
    )
    parser.add_argument(
        "--days-per-month",
        type=float,
        default=WORKING_DAYS_PER_MONTH,
        help=f"days a month like the trace's days (default {WORKING_DAYS_PER_MONTH}: working days)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--no-chart", dest="chart", action="store_false", help="skip the PNG charts")
    parser.add_argument("--out", type=Path, default=Path("out"), help="directory of the charts (default out)")
    parser.add_argument("--moto", action="store_true", help="replay a window on moto and check the decisions match")
    parser.add_argument("--moto-minutes", type=int, default=90, help="length of the --moto window (default 90)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
