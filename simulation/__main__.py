"""`python -m simulation`: run the scaler and reaper on a job trace and report waits and cost."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

from simulation.report import HOUR, chart, comparison, summarize, table
from simulation.runner import START, Scenario, default_scenario, simulate, with_overrides
from simulation.trace import Job, TraceError, default_trace, load_csv

OUT = Path("out")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        trace = load_csv(args.trace) if args.trace else default_trace(args.seed)
        scenarios = _scenarios(args)
    except (TraceError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.moto:
        from simulation.moto_check import same_decisions  # noqa: PLC0415 - moto is slow to import

        return 0 if same_decisions(trace, next(iter(scenarios.values())), args.moto_minutes * 60.0) else 1
    return _run_all(trace, scenarios, args)


def _run_all(trace: list[Job], scenarios: dict[str, Scenario], args: argparse.Namespace) -> int:
    summaries = {}
    for label, scenario in scenarios.items():
        started = time.monotonic()
        result = simulate(trace, scenario, progress=None if args.json else _progress(label))
        summaries[label] = summarize(result)
        if not args.json:
            print(
                f"{label}: simulated {result.end / 3600:.1f} h in {time.monotonic() - started:.1f} s", file=sys.stderr
            )
        if args.chart:
            path = chart(result, OUT / f"simulation-{_slug(label)}.png", f"{label}: {len(trace)} jobs")
            if not args.json:
                print(f"chart: {path}", file=sys.stderr)
    if args.json:
        print(json.dumps({label: [asdict(s) for s in runs] for label, runs in summaries.items()}, indent=2))
    elif len(summaries) == 1:
        print(table(next(iter(summaries.values()))))
    else:
        print(comparison(summaries))
    return 0


def _scenarios(args: argparse.Namespace) -> dict[str, Scenario]:
    base = with_overrides(default_scenario(), _pairs(args.set, "--set"))
    scenarios = {"baseline": base}
    for spec in args.compare:
        label, _, settings = spec.partition(":")
        if not label or not settings:
            raise ValueError(f"--compare wants LABEL:key=value[,key=value] (got {spec!r})")
        scenarios[label] = with_overrides(base, _pairs(settings.split(","), f"--compare {label}"))
    return scenarios


def _pairs(items: list[str], where: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{where} wants key=value (got {item!r})")
        pairs[key.strip()] = value.strip()
    return pairs


def _progress(label: str) -> Callable[[float, float], None]:
    next_report = [2 * HOUR]

    def report(now: float, _until: float) -> None:
        if now >= next_report[0]:
            next_report[0] += 2 * HOUR
            clock = START + timedelta(seconds=now)
            print(f"{label}: simulated up to {clock:%H:%M}", file=sys.stderr, flush=True)

    return report


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in label)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulation",
        description="Simulate the autoscaler on a job trace: job waits, instance-hours, launches, reaps.",
    )
    parser.add_argument("--trace", type=Path, help="CSV: queue,scheduled_at,duration[,id,waits_on] (seconds)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the default trace (default 7)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting, e.g. max_instances=10, nixos-arm-aws.max_instances=2, boot_seconds=90",
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL:KEY=VALUE[,...]",
        help="also run with these settings and print side by side, e.g. prebaked:boot_seconds=90",
    )
    parser.add_argument("--json", action="store_true", help="print the summaries as JSON")
    parser.add_argument("--no-chart", dest="chart", action="store_false", help="skip the PNG chart")
    parser.add_argument("--moto", action="store_true", help="replay a window on moto and check the decisions match")
    parser.add_argument("--moto-minutes", type=int, default=90, help="length of the --moto window (default 90)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
