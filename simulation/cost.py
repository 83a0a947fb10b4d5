"""Dollars: each queue's instances and volumes, and the stack's own fixed cost.

Prices are on-demand list prices for one region, with their date and source: a
small shipped table for the regions that list the same prices, a price file a
user supplies (`--set prices=FILE`) for any other, each price overridable
(`--price TYPE=USD`). Lambda and CloudWatch are priced as in us-east-1. Figures
leave out free tiers, data transfer, the NAT gateway and taxes.

The model is per queue and per term, so markets and pools plug in as data: a
spot discount per queue in `Prices.discount`, applied to the queue's spot
instance-seconds (`QueueUsage.spot_seconds`), and the EBS of stopped pool
instances as `QueueUsage.stopped_gib_seconds`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from simulation.deployment import Deployment

PRICE_REGION = "us-east-1"
# AWS's published Linux on-demand list prices for us-east-1 (EC2, EBS, Lambda and
# CloudWatch pricing pages) as of this date, written down by hand, not fetched: check
# yours (`aws pricing get-products`) and override with --price.
PRICE_DATE = "2025-06"
PRICE_SOURCE = "aws.amazon.com/ec2/pricing/on-demand, Linux"
# Regions where AWS lists these families' Linux on-demand and gp3 prices the same as us-east-1.
# Any other region: a price file (its prices differ family by family).
SAME_PRICES_AS_US_EAST_1 = ("us-east-1", "us-east-2", "us-west-2")
ON_DEMAND_PER_HOUR = {
    "c7i.2xlarge": 0.357,
    "c6i.2xlarge": 0.34,
    "c6a.2xlarge": 0.306,
    "c7a.2xlarge": 0.41056,
    "m7i.2xlarge": 0.4032,
    "c7g.2xlarge": 0.289,
    "c6g.2xlarge": 0.272,
    "m7g.2xlarge": 0.3264,
    "c8g.2xlarge": 0.31904,
    # The image bake's build instances (half the 2xlarge's price, as within every family).
    "c7i.xlarge": 0.1785,
    "c7g.xlarge": 0.1445,
}
EBS_GP3_PER_GIB_MONTH = 0.08
LAMBDA_ARM_PER_GB_SECOND = 0.0000133334
LAMBDA_PER_REQUEST = 0.20 / 1_000_000
METRIC_PER_MONTH = 0.30  # a custom metric: one name with one set of dimension values
ALARM_PER_MONTH = 0.10  # a standard-resolution alarm on one metric
DASHBOARD_PER_MONTH = 3.00
LOG_INGEST_PER_GB = 0.50
LOG_STORAGE_PER_GB_MONTH = 0.03
SNAPSHOT_PER_GB_MONTH = 0.05  # EBS snapshots, standard tier

HOURS_PER_MONTH = 730.0
DAYS_PER_MONTH = 30.4
WORKING_DAYS_PER_MONTH = 21.7
# The reaper's run: a DescribeInstances and, rarely, console reads and a termination.
# An assumption (the simulation's reaper takes no simulated time): about a second.
REAPER_SECONDS = 1.0
# Written in Lambda but not in the simulation, which runs the handlers' loops without Lambda:
# each invocation's START, END and REPORT lines, and the context keys Powertools'
# inject_lambda_context adds to each log line (cold_start, function name, memory, ARN,
# request id, X-Ray trace id), about 310 bytes as the handler tests print them.
LAMBDA_PLATFORM_BYTES = 350
LAMBDA_CONTEXT_BYTES = 310
# The image bake: ImageBuildSchedule's default is weekly; a bake takes 20-40 minutes per
# image (docs/deploy.md), taken at the long end; each kept image's snapshot is counted at
# the image volume's full size, an upper bound (EBS bills the blocks written).
BAKES_PER_MONTH = DAYS_PER_MONTH / 7
BAKE_HOURS = 40 / 60


class PriceError(ValueError):
    """A price is missing or malformed; the message names the instance type."""


@dataclass(frozen=True)
class Prices:
    per_hour: dict[str, float] = field(default_factory=lambda: dict(ON_DEMAND_PER_HOUR))
    ebs_gib_month: float = EBS_GP3_PER_GIB_MONTH
    discount: dict[str, float] = field(default_factory=dict)  # per queue, 0..1 off the price of spot seconds
    region: str = PRICE_REGION
    date: str = PRICE_DATE
    source: str = PRICE_SOURCE

    @classmethod
    def shipped(cls, region: str) -> Prices:
        if region not in SAME_PRICES_AS_US_EAST_1:
            raise PriceError(
                f"region={region}: no shipped prices (shipped: {', '.join(SAME_PRICES_AS_US_EAST_1)}); "
                "give your region's in a price file, --set prices=FILE (see README, Simulation)"
            )
        return cls(region=region)

    @classmethod
    def from_file(cls, path: Path) -> Prices:
        """{"region", "date", "source", "on_demand_per_hour": {type: USD}, "ebs_gp3_per_gib_month"}."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise PriceError(f"prices={path}: cannot read the price file ({error.strerror})") from None
        except ValueError as error:
            raise PriceError(f"prices={path}: not JSON ({error})") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("on_demand_per_hour"), dict):
            raise PriceError(f"prices={path}: wants a JSON object with on_demand_per_hour {{type: USD per hour}}")
        for key in ("region", "date", "source"):
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                raise PriceError(f"prices={path}: {key} must be a non-empty string (got {raw.get(key)!r})")
        ebs = _dollars(f"prices={path}: ebs_gp3_per_gib_month", raw.get("ebs_gp3_per_gib_month", math.nan))
        hourly = {kind: _dollars(f"prices={path}: {kind}", value) for kind, value in raw["on_demand_per_hour"].items()}
        return cls(hourly, ebs, region=raw["region"], date=raw["date"], source=raw["source"])

    def hourly(self, instance_type: str) -> float:
        if instance_type not in self.per_hour:
            raise PriceError(
                f"no price for instance type {instance_type!r}: add one with --price {instance_type}=USD_PER_HOUR"
            )
        return self.per_hour[instance_type]

    def with_overrides(self, overrides: dict[str, str]) -> Prices:
        prices = dict(self.per_hour)
        for instance_type, text in overrides.items():
            prices[instance_type] = _dollars(f"--price {instance_type}", text)
        return replace(self, per_hour=prices)


def _dollars(name: str, text: object) -> float:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise PriceError(f"{name} must be a number of dollars >= 0 (got {text!r})")
    return value


@dataclass(frozen=True)
class QueueUsage:
    queue: str
    instance_seconds: dict[str, float]  # per instance type, on-demand
    running_gib_seconds: float  # root volumes while their instance exists
    stopped_gib_seconds: float = 0.0  # root volumes of stopped pool instances
    spot_seconds: dict[str, float] = field(default_factory=dict)  # per instance type, spot


@dataclass(frozen=True)
class QueueCost:
    queue: str
    compute: float  # over the run
    ebs: float
    per_day: float
    per_month: float


def queue_cost(usage: QueueUsage, prices: Prices, days: int, days_per_month: float) -> QueueCost:
    """The run's cost of one queue, spread over the `days` the trace covers."""
    spot_factor = 1.0 - prices.discount.get(usage.queue, 0.0)
    compute = _instance_hours_cost(usage.instance_seconds, prices) + spot_factor * _instance_hours_cost(
        usage.spot_seconds, prices
    )
    gib_seconds = usage.running_gib_seconds + usage.stopped_gib_seconds
    ebs = prices.ebs_gib_month * gib_seconds / (HOURS_PER_MONTH * 3600)
    per_day = (compute + ebs) / days
    return QueueCost(usage.queue, compute, ebs, per_day, per_day * days_per_month)


def _instance_hours_cost(seconds_per_type: dict[str, float], prices: Prices) -> float:
    return sum(prices.hourly(kind) * seconds / 3600 for kind, seconds in seconds_per_type.items())


@dataclass(frozen=True)
class InvocationPattern:
    """What the stack does in a month, from the template and the run."""

    scaler_per_month: float
    scaler_seconds: float  # mean duration of one invocation (it polls for most of its minute)
    reaper_per_month: float
    log_bytes_per_scaler: float  # log lines and EMF records per invocation, at the template's level
    log_bytes_per_reaper: float
    metrics: int  # distinct custom metrics (name x dimension values) the run emitted
    log_lines_per_scaler: float = 0.0  # log lines (not EMF records) per invocation: each gets the context keys
    log_lines_per_reaper: float = 0.0


@dataclass(frozen=True)
class StackCost:
    """The stack's own monthly cost, item by item: what runs whether or not a job comes."""

    lambda_compute: float
    lambda_requests: float
    metrics: float
    logs: float
    alarms: float
    dashboard: float  # optional (DashboardEnabled)
    bake_instances: float  # the weekly image bake's build instances
    bake_snapshots: float  # the kept images' snapshots (an upper bound)

    @property
    def control_plane(self) -> float:
        """The Lambdas and what they write and are watched by: the figure held at $5 a month."""
        return self.lambda_compute + self.lambda_requests + self.metrics + self.logs + self.alarms

    @property
    def bake(self) -> float:
        return self.bake_instances + self.bake_snapshots

    @property
    def per_month(self) -> float:
        return self.control_plane + self.dashboard + self.bake


def stack_cost(pattern: InvocationPattern, deployed: Deployment, prices: Prices) -> StackCost:
    """The fixed monthly cost: the schedules run every minute of every day, whatever the queues do."""
    scaler_gb = deployed.memory_mb[deployed.scaler_function] / 1024
    reaper_gb = deployed.memory_mb[deployed.reaper_function] / 1024
    gb_seconds = (
        pattern.scaler_per_month * pattern.scaler_seconds * scaler_gb
        + pattern.reaper_per_month * REAPER_SECONDS * reaper_gb
    )
    log_bytes = pattern.scaler_per_month * (
        pattern.log_bytes_per_scaler + LAMBDA_PLATFORM_BYTES + LAMBDA_CONTEXT_BYTES * pattern.log_lines_per_scaler
    ) + pattern.reaper_per_month * (
        pattern.log_bytes_per_reaper + LAMBDA_PLATFORM_BYTES + LAMBDA_CONTEXT_BYTES * pattern.log_lines_per_reaper
    )
    log_gb = log_bytes / 1e9
    stored_gb = log_gb * min(deployed.log_retention_days, 3653) / DAYS_PER_MONTH
    snapshots_gib = deployed.images_kept * len(deployed.bake_instance_types) * deployed.image_volume_gib
    return StackCost(
        lambda_compute=gb_seconds * LAMBDA_ARM_PER_GB_SECOND,
        lambda_requests=(pattern.scaler_per_month + pattern.reaper_per_month) * LAMBDA_PER_REQUEST,
        metrics=pattern.metrics * METRIC_PER_MONTH,
        logs=log_gb * LOG_INGEST_PER_GB + stored_gb * LOG_STORAGE_PER_GB_MONTH,
        alarms=deployed.alarms * ALARM_PER_MONTH,
        dashboard=deployed.dashboards * DASHBOARD_PER_MONTH,
        bake_instances=BAKES_PER_MONTH * BAKE_HOURS * sum(prices.hourly(kind) for kind in deployed.bake_instance_types),
        bake_snapshots=snapshots_gib * SNAPSHOT_PER_GB_MONTH,
    )
