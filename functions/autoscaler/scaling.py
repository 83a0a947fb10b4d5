"""One scaler poll: read the metrics, read the fleet, plan, launch, report.

Wires the metrics source, the fleet and the pure planner; the Lambda
handler, the tests and the simulation all drive the same `Scaler`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

from botocore.exceptions import BotoCoreError, ClientError

from autoscaler import pool, schedules
from autoscaler.buildkite import DEFAULT_POLL_SECONDS, MetricsError, MetricsRateLimited, MetricsSnapshot
from autoscaler.config import ROLES, QueueConfig, ScalerSettings
from autoscaler.fleet import Fleet, LaunchError
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


class MetricsSource(Protocol):
    def fetch(self, queues: Iterable[str]) -> MetricsSnapshot: ...


@dataclass
class QueueResult:
    plan: QueuePlan
    instance_ids: list[str] = field(default_factory=list)
    failures: list[LaunchFailure] = field(default_factory=list)
    pool: PoolPlan | None = None
    schedule: str = ""  # the schedule that set min_instances and warm_pool_size, "" for none
    started: list[str] = field(default_factory=list)  # pool instances started


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
    ) -> None:
        self._settings = settings
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
        self._timeouts = Timeouts(settings.bootstrap_timeout_seconds, settings.ready_grace_seconds)
        # The interval the API last asked for; kept through failed polls.
        self._poll_seconds = DEFAULT_POLL_SECONDS

    def poll(self, now: datetime, dry_run: bool) -> PollResult:
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
        try:
            instances = self._listed_and_unlisted(self._list(), now)
        except (ClientError, BotoCoreError) as error:
            logger.error("DescribeInstances failed; no action this poll", extra={"error": str(error)})
            emit(fleet_dims, {"FleetApiErrors": 1})
            return PollResult(now, snapshot.poll_seconds, error=f"ec2: {error}")

        result = PollResult(now, snapshot.poll_seconds)
        for queue in self._settings.queues:
            result.queues[queue.name] = self._scale_queue(queue, snapshot, instances, now, dry_run)
        launched = sum(len(queue.instance_ids) for queue in result.queues.values())
        errors = sum(len(queue.failures) for queue in result.queues.values())
        emit(fleet_dims, {"MetricsApiErrors": 0, "InstancesLaunched": launched, "LaunchErrors": errors})
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
    ) -> QueueResult:
        metrics = snapshot.for_queue(queue.name)
        scheduled = schedules.at(queue, now)
        queue = scheduled.queue
        plan, pool_plan = plan_with_pool(queue, metrics, instances, now, self._timeouts)
        result = QueueResult(plan, pool=pool_plan, schedule=scheduled.schedule)
        refilled = pool_plan.refill
        if not dry_run:
            # Starting a stopped pool instance beats launching one; what did not start is launched.
            burst = pool_plan.launch_burst + self._start(queue, result, pool_plan.start, now)
            refilled = 0
            for role, count in (("floor", plan.launch_floor), ("burst", burst), (ROLE_POOL, pool_plan.refill)):
                if count:
                    outcome = self._launch(queue, role, count, now, self._user_data_for(scheduled, role, now))
                    self._record(result, outcome)
                    refilled += len(outcome.instance_ids) if role == ROLE_POOL else 0
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
                "launched": result.instance_ids,
                "failures": [vars(failure) for failure in result.failures],
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
                "InstancesLaunched": len(result.instance_ids),
                "InstancesStarted": len(result.started),
                "WarmPoolReady": pool_plan.ready,
                "LaunchErrors": len(result.failures),
            },
        )
        return result

    def _start(self, queue: QueueConfig, result: QueueResult, instance_ids: tuple[str, ...], now: datetime) -> int:
        """Start pool instances; returns how many did not start."""
        failed = 0
        for instance_id in instance_ids:
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

    def _launch(self, queue: QueueConfig, role: str, count: int, now: datetime, user_data: bytes) -> LaunchOutcome:
        try:
            outcome = launch(self._fleet, self._settings.fleet_name, queue, role, count, user_data, now)
        except Exception as error:  # noqa: BLE001 - one queue's failure must not stop the others
            logger.exception("launch failed", extra={"queue": queue.name, "role": role})
            outcome = LaunchOutcome(requested=count)
            outcome.failures.append(LaunchFailure("", "", type(error).__name__, str(error)))
        bootstrap = BOOTSTRAP_WARMING if role == ROLE_POOL else BOOTSTRAP_PENDING
        for instance_id in outcome.instance_ids:
            self._unlisted[instance_id] = Instance(
                instance_id, self._settings.fleet_name, queue.name, role, bootstrap, now
            )
        return outcome

    @staticmethod
    def _record(result: QueueResult, outcome: LaunchOutcome) -> None:
        result.instance_ids.extend(outcome.instance_ids)
        result.failures.extend(outcome.failures)

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
