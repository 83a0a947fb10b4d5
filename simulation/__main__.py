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
from simulation.cost import (
    PRICE_REGION,
    SAME_PRICES_AS_US_EAST_1,
    WORKING_DAYS_PER_MONTH,
    PriceError,
    Prices,
    StackCost,
)
from simulation.deployment import Deployment, TemplateError, deployment
from simulation.report import (
    HOUR,
    Pricing,
    QueueSummary,
    chart,
    compare_chart,
    fixed_cost,
    monthly_total,
    spreads,
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
PRICE_SETTINGS = ("region", "prices")
SPOT_NOTE = " (spot instance-hours at 1 - spot_discount of them)"
POOL_NOTE = " (stopped pool instances: their volumes only)"
STACK_NOTE = (
    "The stack runs every day of the month: its Lambdas, metrics and logs as the first run wrote them; "
    "image bake = weekly build instances (40 min an image) + kept snapshots at full volume size, an upper bound. "
    "Left out: the Nix cache bucket (S3, grows with your closures), data transfer, NAT gateway, free tiers, taxes."
)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        trace = load_csv(args.trace) if args.trace else Trace(default_trace(args.seed), START, f"day-{args.seed}")
        scenarios, pricings = _scenarios(args)
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
        return _run_all(trace, scenarios, pricings, deployed, args)
    except PriceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run_all(
    trace: Trace,
    scenarios: dict[str, Scenario],
    pricings: dict[str, Pricing],
    deployed: Deployment,
    args: argparse.Namespace,
) -> int:
    runs = args.runs or DEFAULT_RUNS
    summaries: dict[str, list[list[QueueSummary]]] = {}
    firsts: dict[str, RunResult] = {}
    stacks: dict[str, StackCost] = {}
    report: dict[str, dict[str, object]] = {}
    warned = False
    for label, scenario in scenarios.items():
        pricing = pricings[label]
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
        stack = stacks[label] = fixed_cost(results[0], deployed, pricing.prices)
        warnings = _warnings(results, seeds)
        warned = warned or bool(warnings)
        for warning in warnings:
            print(f"warning: {label}: {warning}", file=sys.stderr)
        report[label] = {
            "settings": _settings_text(args, label),
            "seeds": seeds,
            "runs": [[asdict(s) for s in run] for run in summaries[label]],
            "spread": [{k: asdict(v) for k, v in queue.items()} for queue in spreads(summaries[label])],
            "stack_per_month": {
                **asdict(stack),
                "control_plane": stack.control_plane,
                "bake": stack.bake,
                "total": stack.per_month,
                "custom_metrics_published": len(results[0].telemetry.metrics),
            },
            "total_per_month": monthly_total(summaries[label], stack),
            "warnings": warnings,
            "unserved_jobs": unserved(results[0]),
        }
        if not args.json:
            elapsed = time.monotonic() - started
            print(
                f"{label}: {runs} run(s) of {results[0].end / HOUR:.1f} h simulated in {elapsed:.1f} s", file=sys.stderr
            )
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
        ranges = args.runs is not None and args.runs > 1
        print(table(summaries, all_ranges=ranges, spot=spot, pool=pool, stacks=stacks))
        print(
            f"\nmedian (min-max) over seeds {seeds[0]}-{seeds[-1]}; $ = instances at {_prices_text(pricings)}"
            f"{SPOT_NOTE if spot else ''} + root volumes{POOL_NOTE if pool else ''}; "
            f"$ per month = $ per day x {args.days_per_month:g} days. {STACK_NOTE}"
        )
    return 1 if warned else 0


def _prices_text(pricings: dict[str, Pricing]) -> str:
    """Each distinct price table once: its region, date and source (and the labels using it when they differ)."""
    tables: dict[str, list[str]] = {}
    for label, pricing in pricings.items():
        prices = pricing.prices
        tables.setdefault(f"{prices.region} on-demand prices of {prices.date} ({prices.source})", []).append(label)
    if len(tables) == 1:
        return next(iter(tables))
    return "; ".join(f"{', '.join(labels)}: {text}" for text, labels in tables.items())


def _warnings(results: list[RunResult], seeds: list[int]) -> list[str]:
    """Each distinct warning once, with the seeds it happened with."""
    seen: dict[str, list[int]] = {}
    for result, seed in zip(results, seeds, strict=True):
        for warning in result.warnings:
            seen.setdefault(warning, []).append(seed)
    return [f"{w} (seed {', '.join(map(str, s))})" for w, s in seen.items()]


def _scenarios(args: argparse.Namespace) -> tuple[dict[str, Scenario], dict[str, Pricing]]:
    """Each label's scenario and prices: --set for all, then each --compare's own settings."""
    base_prices, base = _split(_pairs(args.set, "--set"))
    scenarios = {args.label: with_overrides(default_scenario(), base)}
    pricings = {args.label: _pricing(base_prices, args)}
    for spec in args.compare:
        label, _, settings = spec.partition(":")
        if not label or not settings or label in scenarios:
            raise ConfigError(f"--compare wants a new LABEL:key=value[,key=value] (got {spec!r})")
        prices, rest = _split(_pairs(SETTING_SEPARATOR.split(settings), f"--compare {label}"))
        scenarios[label] = with_overrides(scenarios[args.label], rest)
        pricings[label] = _pricing({**base_prices, **prices}, args)
    return scenarios, pricings


def _split(pairs: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The price settings (region, prices) apart from the scenario's."""
    prices = {key: value for key, value in pairs.items() if key in PRICE_SETTINGS}
    return prices, {key: value for key, value in pairs.items() if key not in PRICE_SETTINGS}


def _pricing(settings: dict[str, str], args: argparse.Namespace) -> Pricing:
    """A price file, else the region's shipped prices; then each --price."""
    if "prices" in settings:
        prices = Prices.from_file(Path(settings["prices"]))
    else:
        prices = Prices.shipped(settings.get("region", PRICE_REGION))
    return Pricing(prices.with_overrides(_pairs(args.price, "--price")), args.days_per_month)


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
        "nixos-x86-aws.warm_pool_size=2, 'nixos-x86-aws.schedules=[{...}]' (JSON, as in QUEUES); your own fleet: "
        "queues=FILE (the template's Queues parameter, a JSON array), region=us-west-2 (shipped prices: "
        f"{', '.join(SAME_PRICES_AS_US_EAST_1)}), prices=FILE (your region's prices, see README)",
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
