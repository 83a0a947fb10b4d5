"""The execute step of a poll: effects carried out on EC2, or by a dry run that changes nothing.

The real executor owns what touching EC2 takes: the time budget (a call is
begun only when the time left covers its worst case), the spot prices that
order a launch's pools, and turning every error into a recorded failure so
one queue's trouble never stops another's. The dry-run executor makes no
call at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

from botocore.exceptions import BotoCoreError, ClientError

from autoscaler.config import ON_DEMAND, SPOT, QueueConfig
from autoscaler.domain import Fleet, LaunchError, Pool
from autoscaler.effects import LaunchOrder
from autoscaler.fleet import EC2_CALL_SECONDS
from autoscaler.launching import LaunchFailure, LaunchOutcome, launch
from autoscaler.telemetry import logger

# Seconds left in the invocation; unbounded for callers without a deadline.
TimeLeft = Callable[[], float]


def unbounded() -> float:
    return float("inf")


class SpotPriceSource(Protocol):
    def prices(self, instance_types: Sequence[str], subnet_ids: Sequence[str], now: datetime) -> dict[Pool, float]: ...


@dataclass
class StartOutcome:
    started: list[str] = field(default_factory=list)
    failures: list[LaunchFailure] = field(default_factory=list)
    not_started: int = 0  # failed or not begun for want of time: launched as burst instead


@dataclass(frozen=True)
class LaunchContext:
    """What a launch needs besides its order: the queue's user-data and image for this poll."""

    user_data: bytes
    image: str  # IMAGE_TAG's value, "" when unknown


class Executor(Protocol):
    dry_run: bool

    def start(self, queue: QueueConfig, instance_ids: Sequence[str], now: datetime) -> StartOutcome: ...

    def launch(
        self, queue: QueueConfig, order: LaunchOrder, now: datetime, context: LaunchContext
    ) -> LaunchOutcome: ...

    def set_on_exit(self, changes: dict[str, str]) -> None: ...


class DryRunExecutor:
    """Changes nothing and asks EC2 for nothing: a launch is requested of no one (requested=0)."""

    dry_run = True

    def start(self, queue: QueueConfig, instance_ids: Sequence[str], now: datetime) -> StartOutcome:
        return StartOutcome()

    def launch(self, queue: QueueConfig, order: LaunchOrder, now: datetime, context: LaunchContext) -> LaunchOutcome:
        return LaunchOutcome(requested=0)

    def set_on_exit(self, changes: dict[str, str]) -> None:
        return None


class Ec2Executor:
    """Carries out one poll's effects on the fleet; made afresh for each poll."""

    dry_run = False

    def __init__(
        self, fleet: Fleet, fleet_name: str, spot_prices: SpotPriceSource | None, time_left: TimeLeft = unbounded
    ) -> None:
        self._fleet = fleet
        self._fleet_name = fleet_name
        # None (the simulation, tests): spot pools are tried in configured order.
        self._spot_prices = spot_prices
        self._time_left = time_left
        self._prices: dict[str, dict[Pool, float]] = {}  # per queue, read once a poll

    def _has_time(self) -> bool:
        return self._time_left() >= EC2_CALL_SECONDS

    def start(self, queue: QueueConfig, instance_ids: Sequence[str], now: datetime) -> StartOutcome:
        outcome = StartOutcome()
        for instance_id in instance_ids:
            # As for a launch: no start begun without the time for its call. One cut short
            # after its tag leaves a stopped instance tagged pending, which the reaper retires.
            if not self._has_time():
                outcome.not_started += 1
                continue
            try:
                self._fleet.start(instance_id, now)
            except (LaunchError, ClientError, BotoCoreError) as error:
                logger.warning("starting a pool instance failed", extra={"queue": queue.name, "error": str(error)})
                outcome.failures.append(LaunchFailure("", "", "StartFailed", f"{instance_id}: {error}"))
                outcome.not_started += 1
            else:
                outcome.started.append(instance_id)
        return outcome

    def launch(self, queue: QueueConfig, order: LaunchOrder, now: datetime, context: LaunchContext) -> LaunchOutcome:
        if order.on_demand:
            queue = replace(queue, capacity_type=ON_DEMAND)
        try:
            return launch(
                self._fleet,
                self._fleet_name,
                queue,
                order.role,
                order.count,
                context.user_data,
                now,
                self._prices_of(queue, now),
                self._has_time,
                context.image,
            )
        except Exception as error:  # noqa: BLE001 - one queue's failure must not stop the others
            logger.exception("launch failed", extra={"queue": queue.name, "role": order.role})
            outcome = LaunchOutcome(requested=order.count)
            outcome.failures.append(LaunchFailure("", "", type(error).__name__, str(error)))
            return outcome

    def set_on_exit(self, changes: dict[str, str]) -> None:
        for instance_id, action in changes.items():
            try:
                self._fleet.set_on_exit(instance_id, action)
            except (ClientError, BotoCoreError) as error:
                # The next poll tries again; until then the instance keeps its last instruction.
                logger.warning("tagging on-exit failed", extra={"instance_id": instance_id, "error": str(error)})

    def _prices_of(self, queue: QueueConfig, now: datetime) -> dict[Pool, float]:
        """Current spot prices of the queue's pools; none (configured order) when unknown
        or when the time left is better spent on the launch itself."""
        if queue.capacity_type != SPOT or self._spot_prices is None:
            return {}
        if queue.name not in self._prices:
            if self._time_left() < 2 * EC2_CALL_SECONDS:
                return {}
            try:
                self._prices[queue.name] = self._spot_prices.prices(queue.instance_types, queue.subnet_ids, now)
            except (ClientError, BotoCoreError) as error:
                logger.warning(
                    "spot prices unavailable; trying spot pools in configured order", extra={"error": str(error)}
                )
                self._prices[queue.name] = {}
        return self._prices[queue.name]
