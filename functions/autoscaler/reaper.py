"""Reaper Lambda: terminate the fleet's instances whose bootstrap failed or never finished."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from autoscaler import timetable
from autoscaler.config import ReaperSettings
from autoscaler.domain import Fleet
from autoscaler.fleet import Ec2Fleet
from autoscaler.invocation import Clock, SystemClock, dry_run_requested
from autoscaler.lifecycle import BOOTSTRAP_POOLED, LIVE_STATES, POOL_STATES, ROLE_POOL, Instance, Timeouts
from autoscaler.pool_reaping import plan_pool_reap
from autoscaler.reaping import ReapDecision, ReapPlan, plan_reap
from autoscaler.redact import redacted_tail
from autoscaler.telemetry import logger

# Start no further termination with less time than this left: one console
# read and one termination, with retries, fit in it, and the metrics and the
# summary still get out. What is left waits for the next run.
SAFETY_SECONDS = 30.0

TERMINATED = "terminated"
WOULD_TERMINATE = "would_terminate"
FAILED = "error"
DEFERRED = "deferred"


@dataclass(frozen=True)
class Outcome:
    decision: ReapDecision
    action: str
    error: str = ""


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any, clock: Clock | None = None) -> dict[str, Any]:
    """Lambda calls it with the event and context; the offline invoke also passes a simulated clock."""
    settings = ReaperSettings.from_env(os.environ)
    dry_run = settings.dry_run or dry_run_requested(event)
    fleet = Ec2Fleet.connect(settings.fleet_name)
    return run(fleet, settings, clock or SystemClock(), dry_run, lambda: context.get_remaining_time_in_millis() / 1000)


def _no_deadline() -> float:
    return math.inf


def run(
    fleet: Fleet,
    settings: ReaperSettings,
    clock: Clock,
    dry_run: bool,
    remaining_seconds: Callable[[], float] = _no_deadline,
) -> dict[str, Any]:
    # Read before listing: a slow listing then makes instances look younger, never older.
    now = clock.now()
    try:
        # Stopped pool instances are listed when the reaper knows the queues' pools.
        instances = fleet.list_instances(LIVE_STATES + POOL_STATES) if settings.queues else fleet.list_instances()
    except (ClientError, BotoCoreError):
        # Raised, not swallowed: the invocation fails and its error alarm
        # fires, instead of stuck instances staying unnoticed.
        logger.exception("DescribeInstances failed; nothing reaped")
        raise
    timeouts = Timeouts(
        bootstrap_seconds=settings.bootstrap_timeout_seconds,
        ready_grace_seconds=0,
        baked_bootstrap_seconds=settings.baked_bootstrap_timeout_seconds,
    )
    # An instance stopping itself into the pool has no agent left; the pool policy retires it once stopped.
    booted = [instance for instance in instances if instance.bootstrap != BOOTSTRAP_POOLED]
    plan = plan_reap(booted, settings.fleet_name, now, timeouts, settings.max_terminations)
    if settings.queues:
        plan = _with_pool(plan, _pool_decisions(fleet, settings, instances, now), settings.max_terminations)
    outcomes = [
        _reap(fleet, decision, dry_run)
        if remaining_seconds() >= SAFETY_SECONDS
        else _defer(decision, dry_run, "the invocation is nearly out of time")
        for decision in plan.reap
    ]
    outcomes += [
        _defer(decision, dry_run, f"over the cap of {settings.max_terminations} terminations per run")
        for decision in plan.deferred
    ]
    summary = summarize(outcomes, dry_run)
    logger.info(
        "reaper run",
        extra={
            "dry_run": dry_run,
            "listed": len(instances),
            **{key: len(summary[key]) for key in ("terminated", "would_terminate", "deferred", "errors")},
        },
    )
    return summary


def _pool_decisions(
    fleet: Fleet, settings: ReaperSettings, instances: list[Instance], now: datetime
) -> tuple[ReapDecision, ...]:
    stopped = [i for i in instances if i.role == ROLE_POOL and i.state == "stopped"]
    if not stopped:
        return ()
    templates = fleet.latest_templates(i.launch_template_id for i in stopped if i.launch_template_id)
    sizes = {queue.name: timetable.at(queue, now).queue.warm_pool_size for queue in settings.queues}
    return plan_pool_reap(stopped, settings.fleet_name, sizes, templates, now, settings.pool_max_age_seconds)


def _with_pool(plan: ReapPlan, pool: tuple[ReapDecision, ...], cap: int) -> ReapPlan:
    """Failed and stuck instances first; pool retirements take what is left of the cap."""
    room = max(0, cap - len(plan.reap))
    return ReapPlan(reap=plan.reap + pool[:room], deferred=plan.deferred + pool[room:])


def _reap(fleet: Fleet, decision: ReapDecision, dry_run: bool) -> Outcome:
    # Read first: once terminated, the console output is gone.
    console_tail, console_error = _console_tail(fleet, decision.instance_id)
    outcome = Outcome(decision, WOULD_TERMINATE if dry_run else TERMINATED)
    if not dry_run:
        try:
            fleet.terminate(decision.instance_id)
        except (ClientError, BotoCoreError) as error:
            outcome = Outcome(decision, FAILED, str(error))
    fields = {**_fields(outcome, dry_run), "console_tail": console_tail}
    if console_error:
        fields["console_error"] = console_error
    if outcome.action == FAILED:
        logger.error("terminating an instance failed; the next run retries", extra=fields)
    elif dry_run:
        logger.info("would terminate instance (dry run)", extra=fields)
    else:
        logger.warning("terminated instance", extra=fields)
    return outcome


def _console_tail(fleet: Fleet, instance_id: str) -> tuple[str, str]:
    """The redacted end of the console output, and why it could not be read.

    Without it the operator loses the clue, but the instance must still go.
    """
    try:
        return redacted_tail(fleet.console_output(instance_id)), ""
    except (ClientError, BotoCoreError) as error:
        return "", str(error)


def _defer(decision: ReapDecision, dry_run: bool, why: str) -> Outcome:
    outcome = Outcome(decision, DEFERRED)
    logger.info("instance due, left for the next run", extra={**_fields(outcome, dry_run), "deferred_because": why})
    return outcome


def _fields(outcome: Outcome, dry_run: bool) -> dict[str, Any]:
    fields = {**_decision_json(outcome.decision), "action": outcome.action, "dry_run": dry_run}
    if outcome.error:
        fields["error"] = outcome.error
    return fields


def summarize(outcomes: list[Outcome], dry_run: bool) -> dict[str, Any]:
    def ids(action: str) -> list[str]:
        return [outcome.decision.instance_id for outcome in outcomes if outcome.action == action]

    return {
        "dry_run": dry_run,
        "terminated": ids(TERMINATED),
        "would_terminate": ids(WOULD_TERMINATE),
        "deferred": ids(DEFERRED),
        "errors": [
            {"instance_id": outcome.decision.instance_id, "error": outcome.error}
            for outcome in outcomes
            if outcome.action == FAILED
        ],
        "decisions": [{**_decision_json(outcome.decision), "action": outcome.action} for outcome in outcomes],
    }


def _decision_json(decision: ReapDecision) -> dict[str, Any]:
    return {
        "instance_id": decision.instance_id,
        "queue": decision.queue,
        "reason": decision.reason,
        "age_seconds": decision.age_seconds,
        "launch_time": decision.launch_time.isoformat(),
        "bootstrap_timeout_seconds": decision.bootstrap_timeout_seconds,
    }
