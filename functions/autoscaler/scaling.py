"""One scaler poll: read the metrics, read the fleet, plan, launch, report.

Wires the metrics source, the fleet and the pure planner; the Lambda
handler, the tests and the simulation all drive the same `Scaler`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from botocore.exceptions import BotoCoreError, ClientError

from autoscaler.buildkite import DEFAULT_POLL_SECONDS, MetricsError, MetricsRateLimited, MetricsSnapshot
from autoscaler.config import ON_DEMAND, ROLES, SPOT, QueueConfig, ScalerSettings
from autoscaler.fleet import EC2_CALL_SECONDS, Fleet, Pool
from autoscaler.images import CurrentImage, ImageSource
from autoscaler.launching import LaunchFailure, LaunchOutcome, launch
from autoscaler.lifecycle import BOOTSTRAP_PENDING, Instance, Timeouts
from autoscaler.planner import QueuePlan, plan_queue
from autoscaler.telemetry import emit, logger

RenderUserData = Callable[[QueueConfig, str], bytes]
# Seconds left in the invocation; unbounded for callers without a deadline.
TimeLeft = Callable[[], float]


def unbounded() -> float:
    return float("inf")


class MetricsSource(Protocol):
    def fetch(self, queues: Iterable[str]) -> MetricsSnapshot: ...


class SpotPriceSource(Protocol):
    def prices(self, instance_types: Sequence[str], subnet_ids: Sequence[str], now: datetime) -> dict[Pool, float]: ...


@dataclass
class QueueResult:
    plan: QueuePlan
    instance_ids: list[str] = field(default_factory=list)
    failures: list[LaunchFailure] = field(default_factory=list)
    markets: dict[str, str] = field(default_factory=dict)  # instance id → spot or on-demand
    fallbacks: list[str] = field(default_factory=list)  # why spot fell short, per launch
    spot_shortfall: int = 0
    # Instances the plan launched that did not start, after every fallback: demand left
    # unmet. A refused attempt that a fallback then covered is a failure, not a shortfall.
    shortfall: int = 0


@dataclass
class PollResult:
    time: datetime
    next_poll_seconds: float
    error: str = ""
    queues: dict[str, QueueResult] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error


class Scaler:
    def __init__(
        self,
        settings: ScalerSettings,
        source: MetricsSource,
        fleet: Fleet,
        render_user_data: RenderUserData,
        spot_prices: SpotPriceSource | None = None,
        images: ImageSource | None = None,
    ) -> None:
        self._settings = settings
        # None (the simulation, tests): spot pools are tried in configured order.
        self._spot_prices = spot_prices
        self._source = source
        self._fleet = fleet
        # Rendered up front: a value the user-data cannot carry (a mixed-architecture
        # queue, a bad bucket name) fails the invocation at its start, not at a launch.
        self._user_data = {
            (queue.name, role): render_user_data(queue, role) for queue in settings.queues for role in ROLES
        }
        # Instances launched by this object that DescribeInstances may not
        # list yet (it is eventually consistent): counted as booting until
        # seen, so a lagging listing cannot cause a second launch.
        self._unlisted: dict[str, Instance] = {}
        self._timeouts = Timeouts(
            settings.bootstrap_timeout_seconds,
            settings.ready_grace_seconds,
            settings.baked_bootstrap_timeout_seconds,
        )
        self._images = images
        # Read at the first poll that succeeds (and has the time), then kept for the
        # invocation: the pipeline publishes a new image once a week, the scaler runs every minute.
        self._current: dict[str, CurrentImage] | None = None
        # The interval the API last asked for; kept through failed polls.
        self._poll_seconds = DEFAULT_POLL_SECONDS

    def poll(self, now: datetime, dry_run: bool, time_left: TimeLeft = unbounded) -> PollResult:
        """One poll. An EC2 call is started only when `time_left()` covers its worst case
        (EC2_CALL_SECONDS: every attempt timing out), so none outlives the invocation."""
        fleet_dims = {"fleet": self._settings.fleet_name}
        names = [queue.name for queue in self._settings.queues]
        try:
            snapshot = self._source.fetch(names)
        except MetricsError as error:
            logger.error(
                "metrics API call failed; no action this poll", extra={"kind": error.kind, "error": str(error)}
            )
            emit(fleet_dims, {"MetricsApiErrors": 1})
            retry_after = error.retry_after if isinstance(error, MetricsRateLimited) and error.retry_after else 0.0
            return PollResult(now, max(retry_after, self._poll_seconds), error=f"metrics {error.kind}: {error}")
        self._poll_seconds = snapshot.poll_seconds
        if time_left() < EC2_CALL_SECONDS:
            logger.warning("too little time left to list the fleet; poll ends", extra={"time_left": time_left()})
            return PollResult(now, snapshot.poll_seconds)
        try:
            instances = self._listed_and_unlisted(self._fleet.list_instances(), now)
        except (ClientError, BotoCoreError) as error:
            logger.error("DescribeInstances failed; no action this poll", extra={"error": str(error)})
            emit(fleet_dims, {"FleetApiErrors": 1})
            return PollResult(now, snapshot.poll_seconds, error=f"ec2: {error}")

        result = PollResult(now, snapshot.poll_seconds)
        self._load_images(fleet_dims, time_left)
        for queue in self._settings.queues:
            result.queues[queue.name] = self._scale_queue(queue, snapshot, instances, now, dry_run, time_left)
        queues = result.queues.values()
        emit(
            fleet_dims,
            {
                "MetricsApiErrors": 0,
                "InstancesLaunched": sum(len(queue.instance_ids) for queue in queues),
                "LaunchErrors": sum(len(queue.failures) for queue in queues),
                "LaunchShortfall": sum(queue.shortfall for queue in queues),
            },
        )
        return result

    def _scale_queue(
        self,
        queue: QueueConfig,
        snapshot: MetricsSnapshot,
        instances: list[Instance],
        now: datetime,
        dry_run: bool,
        time_left: TimeLeft,
    ) -> QueueResult:
        metrics = snapshot.for_queue(queue.name)
        image = self._image_of(queue)
        plan = plan_queue(queue, metrics, instances, now, self._timeouts, image.image_id if image else "")
        result = QueueResult(plan)
        if not dry_run and plan.launch_total:
            prices = self._prices(queue, now, time_left)
            for role, count in (("floor", plan.launch_floor), ("burst", plan.launch_burst)):
                if count:
                    self._record(result, self._launch(queue, role, count, now, prices, time_left, image))
        logger.info(
            "scaling decision",
            extra={
                "queue": queue.name,
                "dry_run": dry_run,
                "metrics": vars(metrics),
                "plan": {**vars(plan), "launch_total": plan.launch_total},
                "image": vars(image) if image else None,
                "launched": result.instance_ids,
                "markets": result.markets,
                "fallbacks": result.fallbacks,
                "failures": [vars(failure) for failure in result.failures],
                "shortfall": result.shortfall,
            },
        )
        emit(
            {"fleet": self._settings.fleet_name, "queue": queue.name},
            {
                "ScheduledJobs": metrics.scheduled,
                "RunningJobs": metrics.running,
                "WaitingJobs": metrics.waiting,
                "ConnectedAgents": metrics.total,
                "NeededAgents": plan.needed_agents,
                "ExpectedAgents": plan.expected_agents,
                "BootingInstances": plan.booting,
                "StuckInstances": plan.stuck,
                "LiveInstances": plan.live,
                "StaleInstances": plan.stale,
                "InstancesLaunched": len(result.instance_ids),
                "SpotInstancesLaunched": sum(market == SPOT for market in result.markets.values()),
                "OnDemandInstancesLaunched": sum(market == ON_DEMAND for market in result.markets.values()),
                "SpotShortfall": result.spot_shortfall,
                "LaunchErrors": len(result.failures),
                "LaunchShortfall": result.shortfall,
            },
        )
        return result

    def _load_images(self, fleet_dims: dict[str, str], time_left: TimeLeft) -> None:
        # Two calls (GetParameters, DescribeImages); without the time for them, a later poll reads them.
        if self._images is None or self._current is not None or time_left() < 2 * EC2_CALL_SECONDS:
            return
        try:
            self._current = self._images.current()
        except (ClientError, BotoCoreError) as error:
            # Scaling goes on: launches are untagged (the stock boot's timeout applies)
            # and stale instances uncounted until a later poll reads the images.
            logger.warning("reading the current images failed", extra={"error": str(error)})
            emit(fleet_dims, {"ImageLookupErrors": 1})

    def _image_of(self, queue: QueueConfig) -> CurrentImage | None:
        return (self._current or {}).get(queue.architecture)

    def _prices(self, queue: QueueConfig, now: datetime, time_left: TimeLeft) -> dict[Pool, float]:
        """Current spot prices of the queue's pools; none (configured order) when unknown
        or when the time left is better spent on the launch itself."""
        if queue.capacity_type != SPOT or self._spot_prices is None or time_left() < 2 * EC2_CALL_SECONDS:
            return {}
        try:
            return self._spot_prices.prices(queue.instance_types, queue.subnet_ids, now)
        except (ClientError, BotoCoreError) as error:
            logger.warning(
                "spot prices unavailable; trying spot pools in configured order", extra={"error": str(error)}
            )
            return {}

    def _launch(
        self,
        queue: QueueConfig,
        role: str,
        count: int,
        now: datetime,
        prices: dict[Pool, float],
        time_left: TimeLeft,
        image: CurrentImage | None,
    ) -> LaunchOutcome:
        user_data = self._user_data[(queue.name, role)]
        version = image.version if image else ""
        try:
            outcome = launch(
                self._fleet,
                self._settings.fleet_name,
                queue,
                role,
                count,
                user_data,
                now,
                prices,
                lambda: time_left() >= EC2_CALL_SECONDS,
                version,
            )
        except Exception as error:  # noqa: BLE001 - one queue's failure must not stop the others
            logger.exception("launch failed", extra={"queue": queue.name, "role": role})
            outcome = LaunchOutcome(requested=count)
            outcome.failures.append(LaunchFailure("", "", type(error).__name__, str(error)))
        for instance_id in outcome.instance_ids:
            self._unlisted[instance_id] = Instance(
                instance_id,
                self._settings.fleet_name,
                queue.name,
                role,
                BOOTSTRAP_PENDING,
                now,
                market=outcome.markets.get(instance_id, ON_DEMAND),
                image=version,
            )
        return outcome

    @staticmethod
    def _record(result: QueueResult, outcome: LaunchOutcome) -> None:
        result.instance_ids.extend(outcome.instance_ids)
        result.failures.extend(outcome.failures)
        result.markets.update(outcome.markets)
        result.spot_shortfall += outcome.spot_shortfall
        if outcome.fallback:
            result.fallbacks.append(outcome.fallback)
        result.shortfall += max(outcome.shortfall, 0)

    def _listed_and_unlisted(self, listed: list[Instance], now: datetime) -> list[Instance]:
        seen = {instance.instance_id for instance in listed}
        horizon = now - timedelta(seconds=self._settings.bootstrap_timeout_seconds)
        self._unlisted = {
            instance_id: instance
            for instance_id, instance in self._unlisted.items()
            if instance_id not in seen and instance.launch_time > horizon
        }
        return listed + list(self._unlisted.values())
