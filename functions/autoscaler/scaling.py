"""One scaler poll as a pipeline: observe → decide → execute → report.

- observe: the metrics, the fleet (with what this object launched or started
  that the listing may not show yet), in observe mode the scheduled jobs of
  each queue (`observer`), and the current images;
- decide: per queue, the pure planners and `effects.decide` give what to
  start and launch, as plain data; a queue Buildkite paused is held;
- execute: an `execute.Ec2Executor`, or a `DryRunExecutor` that changes nothing;
- report: one decision line per queue, notes on the jobs' timelines, and metrics.

The Lambda handler, the tests and the simulation all drive the same `Scaler`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

from botocore.exceptions import BotoCoreError, ClientError

from autoscaler import pool, timetable
from autoscaler.buildkite import DEFAULT_POLL_SECONDS, MetricsError, MetricsRateLimited, MetricsSnapshot
from autoscaler.config import ON_DEMAND, QueueConfig, ScalerSettings
from autoscaler.domain import Fleet, Pool
from autoscaler.effects import HELD_PAUSED, QueueEffects, after_starts, decide
from autoscaler.execute import (
    DryRunExecutor,
    Ec2Executor,
    Executor,
    LaunchContext,
    SpotPriceSource,
    TimeLeft,
    unbounded,
)
from autoscaler.fleet import EC2_CALL_SECONDS
from autoscaler.images import CurrentImage, ImageSource
from autoscaler.jobs import QueueOutcome
from autoscaler.launching import LaunchFailure, LaunchOutcome
from autoscaler.lifecycle import (
    BOOTSTRAP_PENDING,
    BOOTSTRAP_WARMING,
    LIVE_STATES,
    POOL_STATES,
    ROLE_POOL,
    Instance,
    Timeouts,
)
from autoscaler.observer import JobsObserver, JobsView
from autoscaler.planner import QueueMetrics, QueuePlan
from autoscaler.pool import PoolPlan, plan_with_pool
from autoscaler.telemetry import emit, logger
from instance.settings import ROLES

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
    markets: dict[str, str] = field(default_factory=dict)  # instance id → spot or on-demand
    # Instance id → (type, subnet) of the instances launched as capacity (floor, burst).
    placements: dict[str, Pool] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)  # why spot fell short, per launch
    spot_shortfall: int = 0
    # Instances the plan launched that did not start, after every fallback: demand left
    # unmet. A refused attempt that a fallback then covered is a failure, not a shortfall.
    shortfall: int = 0
    held: str = ""  # why nothing was started or launched (effects.HELD_PAUSED), "" when not held
    unmatched: list[str] = field(default_factory=list)  # listed jobs no configured queue can serve
    notes: int = 0  # notes posted on jobs' timelines


@dataclass
class PollResult:
    time: datetime
    next_poll_seconds: float
    error: str = ""
    queues: dict[str, QueueResult] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class Observation:
    """What one poll saw: every input of its decisions."""

    snapshot: MetricsSnapshot
    instances: list[Instance]
    # None: observe mode is off (no Stacks API, or an unclustered token).
    jobs: JobsView | None = None


class Scaler:
    def __init__(
        self,
        settings: ScalerSettings,
        source: MetricsSource,
        fleet: Fleet,
        render_user_data: RenderUserData,
        spot_prices: SpotPriceSource | None = None,
        images: ImageSource | None = None,
        jobs: JobsObserver | None = None,
    ) -> None:
        self._settings = settings
        self._jobs = jobs
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
        observed = self._observe(now, time_left)
        if isinstance(observed, PollResult):
            return observed
        executor: Executor = DryRunExecutor()
        if not dry_run:
            executor = Ec2Executor(self._fleet, self._settings.fleet_name, self._spot_prices, time_left)
        retry_after = observed.jobs.retry_after if observed.jobs else 0.0
        result = PollResult(now, max(observed.snapshot.poll_seconds, retry_after))
        for queue in self._settings.queues:
            result.queues[queue.name] = self._scale_queue(queue, observed, now, executor, time_left)
        self._report_fleet(result, observed.jobs)
        return result

    # ---- observe

    def _observe(self, now: datetime, time_left: TimeLeft) -> Observation | PollResult:
        """What the poll decides on, or the PollResult of a poll that must take no action."""
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
        jobs = self._jobs.observe(now, time_left) if self._jobs else None
        self._load_images(time_left)
        return Observation(snapshot, instances, jobs)

    def _list(self) -> list[Instance]:
        # Stopped pool instances are listed only when some queue has a pool.
        if any(queue.has_pool for queue in self._settings.queues):
            return self._fleet.list_instances(LIVE_STATES + POOL_STATES)
        return self._fleet.list_instances()

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

    # ---- decide, execute, report (per queue)

    def _scale_queue(
        self, queue: QueueConfig, observed: Observation, now: datetime, executor: Executor, time_left: TimeLeft
    ) -> QueueResult:
        metrics = observed.snapshot.for_queue(queue.name)
        scheduled = timetable.at(queue, now)
        queue = scheduled.queue
        image = self._image_of(queue)
        plan, pool_plan = plan_with_pool(
            queue, metrics, observed.instances, now, self._timeouts, image.image_id if image else ""
        )
        listed = observed.jobs.queues.get(queue.name) if observed.jobs else None
        effects = decide(plan, pool_plan, paused=bool(listed and listed.paused))
        result = QueueResult(plan, pool=pool_plan, schedule=scheduled.schedule, held=effects.held)
        refilled = self._execute(scheduled, effects, result, image, now, executor)
        on_exit = pool.on_exit(pool_plan, observed.instances, refilled)
        executor.set_on_exit(on_exit)
        if self._jobs is not None and observed.jobs is not None and listed is not None:
            # A dry run notes nothing on Buildkite either: it changes nothing anywhere.
            post = None if executor.dry_run else time_left
            review = self._jobs.review(listed, self._outcome(queue, result), observed.jobs, now, post)
            result.unmatched, result.notes = review.unmatched, review.notes
        self._report_queue(queue, executor.dry_run, scheduled, metrics, result, pool_plan, on_exit, image)
        return result

    def _execute(
        self,
        scheduled: timetable.Scheduled,
        effects: QueueEffects,
        result: QueueResult,
        image: CurrentImage | None,
        now: datetime,
        executor: Executor,
    ) -> int:
        """Start, then launch as decided; returns how many pool instances were refilled."""
        queue = scheduled.queue
        # Starting a stopped pool instance beats launching one; what did not start is launched.
        starts = executor.start(queue, effects.starts, now)
        result.started.extend(starts.started)
        result.failures.extend(starts.failures)
        for instance_id in starts.started:
            self._starting[instance_id] = Instance(
                instance_id, self._settings.fleet_name, queue.name, ROLE_POOL, BOOTSTRAP_PENDING, now
            )
        refilled = 0
        version = image.version if image else ""
        for order in after_starts(effects, starts.not_started):
            context = LaunchContext(self._user_data_for(scheduled, order.role, now), version)
            outcome = executor.launch(queue, order, now, context)
            self._remember(queue, order.role, outcome, now, version)
            self._record(result, outcome, order.role)
            if order.role == ROLE_POOL:
                # A dry run asks for nothing (requested=0) and so counts as refilled in full.
                refilled += order.count - max(outcome.shortfall, 0)
        return refilled

    def _user_data_for(self, scheduled: timetable.Scheduled, role: str, now: datetime) -> bytes:
        queue = scheduled.queue
        if role == "floor" and scheduled.floor_ends_at is not None:
            # A floor a schedule set ends with the schedule, not hours later at the usual max uptime.
            return self._render(replace(queue, max_uptime_seconds=timetable.floor_max_uptime(scheduled, now)), role)
        return self._user_data[(queue.name, role)]

    def _image_of(self, queue: QueueConfig) -> CurrentImage | None:
        return (self._current or {}).get(queue.architecture)

    def _remember(self, queue: QueueConfig, role: str, outcome: LaunchOutcome, now: datetime, version: str) -> None:
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

    @staticmethod
    def _record(result: QueueResult, outcome: LaunchOutcome, role: str) -> None:
        result.instance_ids.extend(outcome.instance_ids)
        result.failures.extend(outcome.failures)
        result.markets.update(outcome.markets)
        if role != ROLE_POOL:  # a pool refill stops after its first boot: no job's capacity
            result.placements.update(outcome.placements)
        result.spot_shortfall += outcome.spot_shortfall
        if outcome.fallback:
            result.fallbacks.append(outcome.fallback)
        result.shortfall += max(outcome.shortfall, 0)

    # ---- observe mode: what the queue's jobs are told

    @staticmethod
    def _outcome(queue: QueueConfig, result: QueueResult) -> QueueOutcome:
        return QueueOutcome(
            queue=queue.name,
            paused=bool(result.held),
            launched=result.placements,
            markets=result.markets,
            spot_fell_short=bool(result.fallbacks),
            at_max=result.plan.unmet_instances > 0,
            max_instances=queue.max_instances,
            agents_per_instance=queue.agents_per_instance,
        )

    def _report_queue(
        self,
        queue: QueueConfig,
        dry_run: bool,
        scheduled: timetable.Scheduled,
        metrics: QueueMetrics,
        result: QueueResult,
        pool_plan: PoolPlan,
        on_exit: dict[str, str],
        image: CurrentImage | None,
    ) -> None:
        plan = result.plan
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
                # Observe mode's, only when there is something to say: the log is billed by the byte.
                **{
                    key: value
                    for key, value in (
                        ("held", result.held),
                        ("unmatched_jobs", result.unmatched),
                        ("notes", result.notes),
                    )
                    if value
                },
            },
        )

    def _report_fleet(self, result: PollResult, jobs: JobsView | None) -> None:
        queues = result.queues.values()
        dims = {"fleet": self._settings.fleet_name}
        # Only what an alarm watches or a user reads over time, fleet-wide (one metric each,
        # however many queues), and emit() drops the zeros: a metric is billed only in the
        # hours it is published. The rest of the poll is in its decision lines.
        emit(
            dims,
            {
                "LaunchShortfall": sum(queue.shortfall for queue in queues),
                "SpotShortfall": sum(queue.spot_shortfall for queue in queues),
            },
        )
        if jobs is not None:
            emit(
                dims,
                {
                    "PausedQueues": sum(queue.held == HELD_PAUSED for queue in queues),
                    "UnmatchedJobs": sum(len(queue.unmatched) for queue in queues),
                    "StacksApiErrors": jobs.errors,
                },
            )
