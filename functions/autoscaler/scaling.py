"""One scaler poll: read the metrics, read the fleet, plan, launch, report.

Wires the metrics source, the fleet and the pure planner; the Lambda
handler, the tests and the simulation all drive the same `Scaler`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

from botocore.exceptions import BotoCoreError, ClientError

from autoscaler import pool, schedules
from autoscaler.buildkite import DEFAULT_POLL_SECONDS, MetricsError, MetricsRateLimited, MetricsSnapshot
from autoscaler.config import ON_DEMAND, ROLES, SPOT, QueueConfig, ScalerSettings
from autoscaler.fleet import EC2_CALL_SECONDS, Fleet, LaunchError, Pool
from autoscaler.images import CurrentImage, ImageSource
from autoscaler.launching import LaunchFailure, LaunchOutcome, launch
from autoscaler.lifecycle import (
    BOOTSTRAP_PENDING,
    BOOTSTRAP_WARMING,
    LIVE_STATES,
    POOL_STATES,
    ROLE_POOL,
    Instance,
    Timeouts,
)
from autoscaler.planner import QueuePlan
from autoscaler.pool import PoolPlan, plan_with_pool
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
    pool: PoolPlan | None = None
    schedule: str = ""  # the schedule that set min_instances and warm_pool_size, "" for none
    started: list[str] = field(default_factory=list)  # pool instances started
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
        self._render = render_user_data
        # Rendered up front: a value the user-data cannot carry (a mixed-architecture
        # queue, a bad bucket name) fails the invocation at its start, not at a launch.
        self._user_data = {
            (queue.name, role): render_user_data(queue, role) for queue in settings.queues for role in ROLES
        }
        # Instances launched by this object that DescribeInstances may not
        # list yet (it is eventually consistent): counted as booting until
        # seen, so a lagging listing cannot cause a second launch.
        self._unlisted: dict[str, Instance] = {}
        # Pool instances started by this object that the listing may still
        # show stopped: counted as booting until it shows them started.
        self._starting: dict[str, Instance] = {}
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
            instances = self._listed_and_unlisted(self._list(), now)
        except (ClientError, BotoCoreError) as error:
            logger.error("DescribeInstances failed; no action this poll", extra={"error": str(error)})
            return PollResult(now, snapshot.poll_seconds, error=f"ec2: {error}")

        result = PollResult(now, snapshot.poll_seconds)
        self._load_images(time_left)
        for queue in self._settings.queues:
            result.queues[queue.name] = self._scale_queue(queue, snapshot, instances, now, dry_run, time_left)
        queues = result.queues.values()
        # Only what an alarm watches, fleet-wide (one metric each, however many queues);
        # the rest of the poll is in its decision lines.
        emit(
            fleet_dims,
            {
                "LaunchShortfall": sum(queue.shortfall for queue in queues),
                "SpotShortfall": sum(queue.spot_shortfall for queue in queues),
            },
        )
        return result

    def _list(self) -> list[Instance]:
        # Stopped pool instances are listed only when some queue has a pool.
        if any(queue.has_pool for queue in self._settings.queues):
            return self._fleet.list_instances(LIVE_STATES + POOL_STATES)
        return self._fleet.list_instances()

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
        scheduled = schedules.at(queue, now)
        queue = scheduled.queue
        image = self._image_of(queue)
        plan, pool_plan = plan_with_pool(
            queue, metrics, instances, now, self._timeouts, image.image_id if image else ""
        )
        result = QueueResult(plan, pool=pool_plan, schedule=scheduled.schedule)
        refilled = pool_plan.refill
        if not dry_run:
            refilled = self._act(scheduled, result, pool_plan, image, now, time_left)
        on_exit = pool.on_exit(pool_plan, instances, refilled)
        if not dry_run:
            self._set_on_exit(on_exit)
        logger.info(
            "scaling decision",
            extra={
                "queue": queue.name,
                "dry_run": dry_run,
                "schedule": scheduled.schedule or None,
                "metrics": vars(metrics),
                "plan": {**vars(plan), "launch_total": plan.launch_total},
                "pool": vars(pool_plan),
                "started": result.started,
                "on_exit": on_exit,
                "image": vars(image) if image else None,
                "launched": result.instance_ids,
                "markets": result.markets,
                "fallbacks": result.fallbacks,
                "failures": [vars(failure) for failure in result.failures],
                "shortfall": result.shortfall,
            },
        )
        return result

    def _act(
        self,
        scheduled: schedules.Scheduled,
        result: QueueResult,
        pool_plan: PoolPlan,
        image: CurrentImage | None,
        now: datetime,
        time_left: TimeLeft,
    ) -> int:
        """Start, launch and refill as planned; returns how many pool instances were refilled."""
        queue, plan = scheduled.queue, result.plan
        # Starting a stopped pool instance beats launching one; what did not start is launched.
        burst = pool_plan.launch_burst + self._start(queue, result, pool_plan.start, now, time_left)
        prices = self._prices(queue, now, time_left) if plan.launch_floor + burst else {}
        refilled = 0
        for role, count in (("floor", plan.launch_floor), ("burst", burst), (ROLE_POOL, pool_plan.refill)):
            if count:
                user_data = self._user_data_for(scheduled, role, now)
                outcome = self._launch(queue, role, count, now, prices, time_left, image, user_data)
                self._record(result, outcome)
                refilled += len(outcome.instance_ids) if role == ROLE_POOL else 0
        return refilled

    def _start(
        self, queue: QueueConfig, result: QueueResult, instance_ids: tuple[str, ...], now: datetime, time_left: TimeLeft
    ) -> int:
        """Start pool instances; returns how many did not start."""
        failed = 0
        for instance_id in instance_ids:
            # As for a launch: no start begun without the time for its call. One cut short
            # after its tag leaves a stopped instance tagged pending, which the reaper retires.
            if time_left() < EC2_CALL_SECONDS:
                failed += 1
                continue
            try:
                self._fleet.start(instance_id, now)
            except (LaunchError, ClientError, BotoCoreError) as error:
                logger.warning("starting a pool instance failed", extra={"queue": queue.name, "error": str(error)})
                result.failures.append(LaunchFailure("", "", "StartFailed", f"{instance_id}: {error}"))
                failed += 1
            else:
                result.started.append(instance_id)
                self._starting[instance_id] = Instance(
                    instance_id, self._settings.fleet_name, queue.name, ROLE_POOL, BOOTSTRAP_PENDING, now
                )
        return failed

    def _set_on_exit(self, changes: dict[str, str]) -> None:
        for instance_id, action in changes.items():
            try:
                self._fleet.set_on_exit(instance_id, action)
            except (ClientError, BotoCoreError) as error:
                # The next poll tries again; until then the instance keeps its last instruction.
                logger.warning("tagging on-exit failed", extra={"instance_id": instance_id, "error": str(error)})

    def _user_data_for(self, scheduled: schedules.Scheduled, role: str, now: datetime) -> bytes:
        queue = scheduled.queue
        if role == "floor" and scheduled.floor_ends_at is not None:
            # A floor a schedule set ends with the schedule, not hours later at the usual max uptime.
            return self._render(replace(queue, max_uptime_seconds=schedules.floor_max_uptime(scheduled, now)), role)
        return self._user_data[(queue.name, role)]

    def _load_images(self, time_left: TimeLeft) -> None:
        # Two calls (GetParameters, DescribeImages); without the time for them, a later poll reads them.
        if self._images is None or self._current is not None or time_left() < 2 * EC2_CALL_SECONDS:
            return
        try:
            self._current = self._images.current()
        except (ClientError, BotoCoreError) as error:
            # Scaling goes on: launches are untagged (the stock boot's timeout applies)
            # and stale instances uncounted until a later poll reads the images.
            logger.warning("reading the current images failed", extra={"error": str(error)})

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
        user_data: bytes,
    ) -> LaunchOutcome:
        if role == ROLE_POOL:
            # A one-time spot instance cannot be stopped: the pool is on-demand.
            queue = replace(queue, capacity_type=ON_DEMAND)
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
        bootstrap = BOOTSTRAP_WARMING if role == ROLE_POOL else BOOTSTRAP_PENDING
        for instance_id in outcome.instance_ids:
            self._unlisted[instance_id] = Instance(
                instance_id,
                self._settings.fleet_name,
                queue.name,
                role,
                bootstrap,
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
        seen_started = {instance.instance_id for instance in listed if not pool.is_spare(instance)}
        self._starting = {
            instance_id: instance
            for instance_id, instance in self._starting.items()
            if instance_id not in seen_started and instance.launch_time > horizon
        }
        listed = [self._starting.get(instance.instance_id, instance) for instance in listed]
        return listed + list(self._unlisted.values())
