"""Scaler Lambda: poll the Buildkite metrics and launch instances, until the time is up."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from typing import Any

from aws_lambda_powertools.utilities import parameters

from autoscaler.buildkite import MetricsClient, Secret
from autoscaler.config import ScalerSettings
from autoscaler.effects import HELD_PAUSED
from autoscaler.fleet import Ec2Fleet, Ec2SpotPrices
from autoscaler.images import SsmImages
from autoscaler.invocation import Clock, SystemClock, dry_run_requested
from autoscaler.observer import JobsObserver
from autoscaler.scaling import PollResult, Scaler
from autoscaler.stacks import StacksClient, scope_of
from autoscaler.telemetry import logger
from autoscaler.userdata import render_user_data

# Stop starting polls this long before the Lambda timeout. The metrics call (at most
# CONNECT_TIMEOUT + READ_TIMEOUT, 8 s) always fits; each EC2 call after it starts only
# if its worst case (fleet.EC2_CALL_SECONDS, 11 s) still fits, so a slow poll launches
# less rather than being cut off by the timeout in the middle of a RunInstances.
SAFETY_SECONDS = 15.0
# Kept back from every EC2 call's deadline for the invocation's summary and logs.
WRAP_UP_SECONDS = 1.0
TOKEN_CACHE_SECONDS = 300


class AllPollsFailed(RuntimeError):
    """Every poll of the invocation failed; raised so the error alarm fires."""


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any, clock: Clock | None = None) -> dict[str, Any]:
    """Lambda calls it with the event and context; the offline invoke also passes a simulated clock."""
    settings = ScalerSettings.from_env(os.environ)
    dry_run = settings.dry_run or dry_run_requested(event)
    fleet = Ec2Fleet.connect(settings.fleet_name)
    token = partial(_agent_token, settings.agent_token_parameter)
    scaler = Scaler(
        settings,
        MetricsClient(settings.endpoint, token),
        fleet,
        partial(render_user_data, settings.user_data, fleet_name=settings.fleet_name),
        Ec2SpotPrices(fleet.client),
        SsmImages.connect(settings.image_parameters, settings.fleet_name) if settings.image_parameters else None,
        jobs_observer(settings, token, context.invoked_function_arn),
    )
    return run(scaler, clock or SystemClock(), lambda: context.get_remaining_time_in_millis() / 1000, dry_run)


def jobs_observer(settings: ScalerSettings, token: Callable[[], Secret], function_arn: str) -> JobsObserver:
    """Observe mode's Stacks API, on when the token turns out to be a cluster token. The stack
    keys are the ones the deploy registered (queue_check): the same fleet, account and region."""
    client = StacksClient(settings.endpoint, token)
    return JobsObserver(client, settings.fleet_name, settings.queues, scope_of(function_arn))


def run(scaler: Scaler, clock: Clock, remaining_seconds: Callable[[], float], dry_run: bool) -> dict[str, Any]:
    """Poll at the interval the API asks for until the invocation's time is nearly up."""
    polls: list[PollResult] = []
    while True:
        polls.append(scaler.poll(clock.now(), dry_run, lambda: remaining_seconds() - WRAP_UP_SECONDS))
        wait = polls[-1].next_poll_seconds
        if remaining_seconds() - wait < SAFETY_SECONDS:
            break
        clock.sleep(wait)
    summary = summarize(polls, dry_run)
    if all(not poll.ok for poll in polls):
        raise AllPollsFailed(f"all {len(polls)} poll(s) failed; last: {polls[-1].error}")
    return summary


def summarize(polls: list[PollResult], dry_run: bool) -> dict[str, Any]:
    queues: dict[str, dict[str, Any]] = {}
    for poll in polls:
        for name, result in poll.queues.items():
            entry = queues.setdefault(
                name,
                {
                    "launched": [],
                    "started": [],
                    "markets": {},
                    "fallbacks": [],
                    "failures": [],
                    "shortfall": 0,
                    "unmet_polls": 0,
                    "paused_polls": 0,
                    "unmatched_jobs": [],
                    "notes": 0,
                },
            )
            entry["launched"].extend(result.instance_ids)
            entry["started"].extend(result.started)
            entry["markets"].update(result.markets)
            entry["fallbacks"].extend(result.fallbacks)
            entry["failures"].extend(asdict(failure) for failure in result.failures)
            entry["shortfall"] += result.shortfall
            entry["unmet_polls"] += bool(result.plan.unmet_instances)
            entry["paused_polls"] += result.held == HELD_PAUSED
            entry["unmatched_jobs"] = sorted({*entry["unmatched_jobs"], *result.unmatched})
            entry["notes"] += result.notes
            entry["last_plan"] = {**asdict(result.plan), "launch_total": result.plan.launch_total}
            entry["schedule"] = result.schedule
    return {
        "dry_run": dry_run,
        "polls": len(polls),
        "failed_polls": sum(not poll.ok for poll in polls),
        "errors": [poll.error for poll in polls if not poll.ok],
        "queues": queues,
    }


def _agent_token(name: str) -> Secret:
    return Secret(parameters.get_parameter(name, decrypt=True, max_age=TOKEN_CACHE_SECONDS))
