"""The decide step as tables, and the dry-run executor changing nothing (moto sees no call)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from emulators.buildkite import FakeBuildkite
from tests.support.aws import Stack, scaler_env
from tests.support.lambda_context import LambdaContext
from tests.support.pool import fill

from autoscaler import scaler
from autoscaler.effects import HELD_PAUSED, LaunchOrder, QueueEffects, after_starts, decide
from autoscaler.planner import QueuePlan
from autoscaler.pool import PoolPlan

X86 = "nixos-x86-aws"
EVENTS = Path(__file__).parent.parent / "events"


def plan(floor: int) -> QueuePlan:
    return QueuePlan(X86, 0, 0, 0, 0, 0, 0, 0, floor, 0, 0, "")


def pool_plan(start: tuple[str, ...], burst: int, refill: int) -> PoolPlan:
    return PoolPlan(X86, 0, 0, len(start), 0, 0, start, burst, refill, 0, 0)


FLOOR, BURST, POOL = LaunchOrder("floor", 1), LaunchOrder("burst", 2), LaunchOrder("pool", 3, on_demand=True)


@pytest.mark.parametrize(
    ("floor", "start", "burst", "refill", "paused", "expected"),
    [
        (0, (), 0, 0, False, QueueEffects()),
        (1, (), 2, 3, False, QueueEffects((), (FLOOR, BURST, POOL))),
        (0, ("i-1",), 2, 0, False, QueueEffects(("i-1",), (BURST,))),
        (0, (), 0, 3, False, QueueEffects((), (POOL,))),
        # Paused: nothing started, nothing launched, the pool not refilled either.
        (1, ("i-1",), 2, 3, True, QueueEffects(held=HELD_PAUSED)),
    ],
)
def test_decide_orders_starts_then_floor_burst_and_an_on_demand_refill(
    floor: int, start: tuple[str, ...], burst: int, refill: int, paused: bool, expected: QueueEffects
) -> None:
    assert decide(plan(floor), pool_plan(start, burst, refill), paused) == expected


@pytest.mark.parametrize(
    ("launches", "not_started", "expected"),
    [
        ((FLOOR, BURST, POOL), 0, (FLOOR, BURST, POOL)),
        ((FLOOR, BURST, POOL), 2, (FLOOR, LaunchOrder("burst", 4), POOL)),
        ((FLOOR, POOL), 1, (FLOOR, LaunchOrder("burst", 1), POOL)),
        ((POOL,), 1, (LaunchOrder("burst", 1), POOL)),
        ((), 2, (LaunchOrder("burst", 2),)),
    ],
)
def test_a_pool_start_that_failed_becomes_a_burst_launch_before_the_refill(
    launches: tuple[LaunchOrder, ...], not_started: int, expected: tuple[LaunchOrder, ...]
) -> None:
    assert after_starts(QueueEffects(("i-1", "i-2"), launches), not_started) == expected


def test_a_dry_run_with_starts_spot_launches_and_a_refill_to_do_makes_no_ec2_call_but_the_listing(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = stack.queue(X86, warm_pool_size=2, capacity_type="spot")
    fill(stack, buildkite, monkeypatch, queue)
    buildkite.serve_metrics({X86: {"scheduled": 40}})
    for key, value in scaler_env(buildkite.endpoint, [queue], DRY_RUN="true").items():
        monkeypatch.setenv(key, value)

    context = LambdaContext(20.0)
    summary = scaler.handler(json.loads((EVENTS / "scaler-scheduled.json").read_text()), context, clock=context.clock)

    assert summary["queues"][X86]["last_plan"]["launch_burst"] > 0
    assert summary["queues"][X86]["launched"] == []
    assert summary["queues"][X86]["started"] == []
    assert set(stack.behaviour.operations) == {"DescribeInstances"}
