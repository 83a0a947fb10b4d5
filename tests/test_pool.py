"""The warm pool end to end on moto: filled and stopped, started before any launch, retired by the reaper.

What an instance does to itself (tag pooled and stop) is done here with the
same EC2 calls its scripts make; tests/test_pool_instance.py runs the scripts.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError
from emulators.buildkite import FakeBuildkite
from freezegun import freeze_time
from tests.support.aws import FLEET, Stack
from tests.support.config import OFFICE
from tests.support.lambda_context import LambdaContext
from tests.support.pool import BOOTSTRAP, EVENTS, fill, instances, invoke, park, pool_members
from tests.support.scaler import tags_of, user_data_of

from autoscaler import reaper

X86 = "nixos-x86-aws"
ON_EXIT = "buildkite-autoscaler:on-exit"


def reap(monkeypatch: pytest.MonkeyPatch, queue: dict[str, Any]) -> dict[str, Any]:
    monkeypatch.setenv("QUEUES", json.dumps([queue]))
    monkeypatch.setenv("FLEET_NAME", FLEET)
    return reaper.handler(json.loads((EVENTS / "reaper-scheduled.json").read_text()), LambdaContext(60.0))


def test_a_pool_is_filled_to_its_size_and_stopped_instances_are_not_capacity(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = stack.queue(X86, warm_pool_size=2)
    buildkite.serve_metrics({})

    first = invoke(monkeypatch, buildkite, queue)

    warming = pool_members(stack)
    assert len(warming) == 2
    assert first["queues"][X86]["last_plan"]["booting"] == 0  # warming up is no capacity
    for instance in warming:
        assert tags_of(instance)[BOOTSTRAP] == "warming"
        assert b"BK_ROLE=pool" in gzip.decompress(user_data_of(stack, instance["InstanceId"]))
    assert all(call["InstanceInitiatedShutdownBehavior"] == "terminate" for call in stack.behaviour.run_calls)
    # Still warming: counted in the pool, so no second fill.
    assert invoke(monkeypatch, buildkite, queue)["queues"][X86]["launched"] == []

    park(stack, [i["InstanceId"] for i in warming])
    summary = invoke(monkeypatch, buildkite, queue)

    assert len(pool_members(stack, "stopped")) == 2
    assert summary["queues"][X86]["launched"] == []
    plan = summary["queues"][X86]["last_plan"]
    assert (plan["live"], plan["booting"], plan["expected_agents"]) == (0, 0, 0)


def test_demand_starts_pool_instances_before_any_launch_then_refills(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = stack.queue(X86, warm_pool_size=2)
    pooled = fill(stack, buildkite, monkeypatch, queue)
    buildkite.serve_metrics({X86: {"scheduled": 12}})  # three instances of 5 agents

    summary = invoke(monkeypatch, buildkite, queue)

    operations = stack.behaviour.operations
    assert operations.count("StartInstances") == 2
    assert operations.index("StartInstances") < operations.index("RunInstances")
    assert sorted(summary["queues"][X86]["started"]) == sorted(pooled)
    started = {i["InstanceId"]: i for i in instances(stack, "running") if i["InstanceId"] in pooled}
    assert len(started) == 2
    for instance in started.values():
        tags = tags_of(instance)
        assert tags[BOOTSTRAP] == "pending"
        assert "buildkite-autoscaler:started-at" in tags
    roles = [tags_of(i)["buildkite-autoscaler:role"] for i in instances(stack) if i["InstanceId"] not in pooled]
    assert sorted(roles) == ["burst", "pool", "pool"]  # one launched for the rest, two to refill

    again = invoke(monkeypatch, buildkite, queue)
    plan = again["queues"][X86]["last_plan"]
    assert (plan["booting"], plan["live"], plan["launch_total"]) == (3, 3, 0)
    assert again["queues"][X86]["started"] == []


def test_started_pool_instances_count_toward_max_instances(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = stack.queue(X86, warm_pool_size=3, max_instances=2)
    fill(stack, buildkite, monkeypatch, queue)
    buildkite.serve_metrics({X86: {"scheduled": 50}})

    summary = invoke(monkeypatch, buildkite, queue)

    assert len(summary["queues"][X86]["started"]) == 2
    assert summary["queues"][X86]["last_plan"]["unmet_instances"] == 8
    assert [c for c in stack.behaviour.run_calls if "burst" in json.dumps(c["TagSpecifications"])] == []


def test_a_pool_instance_that_fails_to_start_is_replaced_by_a_launch(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = stack.queue(X86, warm_pool_size=1)
    (pooled,) = fill(stack, buildkite, monkeypatch, queue)

    def no_capacity(**_: Any) -> None:
        error = {"Code": "InsufficientInstanceCapacity", "Message": "no capacity"}
        raise ClientError({"Error": error}, "StartInstances")

    boto3.DEFAULT_SESSION.events.register("before-call.ec2.StartInstances", no_capacity)
    buildkite.serve_metrics({X86: {"scheduled": 5}})

    summary = invoke(monkeypatch, buildkite, queue)

    assert summary["queues"][X86]["started"] == []
    assert summary["queues"][X86]["failures"][0]["code"] == "StartFailed"
    launched_roles = sorted(tags_of(i)["buildkite-autoscaler:role"] for i in instances(stack, "running"))
    assert launched_roles == ["burst", "pool"]
    (failed,) = [i for i in instances(stack, "stopped") if i["InstanceId"] == pooled]
    assert tags_of(failed)[BOOTSTRAP] == "pending"  # what the reaper retires


def test_started_pool_instances_return_on_exit_only_while_the_pool_stays_short(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = stack.queue(X86, warm_pool_size=1)
    (pooled,) = fill(stack, buildkite, monkeypatch, queue)
    stack.behaviour.no_capacity |= {(t, None) for t in queue["instance_types"]}  # the refill fails
    buildkite.serve_metrics({X86: {"scheduled": 5}})

    invoke(monkeypatch, buildkite, queue)  # starts it
    invoke(monkeypatch, buildkite, queue)  # sees it started, the refill failing again

    (started,) = instances(stack, "running")
    assert tags_of(started)[ON_EXIT] == "stop"

    stack.behaviour.no_capacity.clear()
    invoke(monkeypatch, buildkite, queue)  # the refill works now: the pool is full

    (started,) = [i for i in instances(stack) if i["InstanceId"] == pooled]
    assert tags_of(started)[ON_EXIT] == "terminate"


@pytest.mark.parametrize(
    ("when", "floor"),
    [
        # Friday 27 March 2026, CET (UTC+1): 08:00 in Berlin is 07:00 UTC.
        ("2026-03-27 06:59:30", 0),
        ("2026-03-27 07:00:00", 2),
        # Monday 30 March 2026, after the change to CEST (UTC+2): 08:00 is 06:00 UTC.
        ("2026-03-30 05:59:30", 0),
        ("2026-03-30 06:00:00", 2),
        ("2026-03-30 16:59:30", 2),
        ("2026-03-30 17:00:00", 0),
        # Saturday: not a schedule day.
        ("2026-03-28 10:00:00", 0),
    ],
)
def test_a_schedule_changes_the_floor_at_its_local_boundary_across_daylight_saving(
    stack: Stack,
    buildkite: FakeBuildkite,
    monkeypatch: pytest.MonkeyPatch,
    logs: Callable[[], list[dict[str, Any]]],
    when: str,
    floor: int,
) -> None:
    office = {**OFFICE, "warm_pool_size": 0}
    buildkite.serve_metrics({})

    with freeze_time(when):
        summary = invoke(monkeypatch, buildkite, stack.queue(X86, schedules=[office]))

    assert summary["queues"][X86]["last_plan"]["launch_floor"] == floor
    assert summary["queues"][X86]["schedule"] == ("office" if floor else "")
    (decision,) = [line for line in logs() if line["message"] == "scaling decision"]
    assert decision.get("schedule") == ("office" if floor else None)


# ----------------------------------------------------------------- the reaper's pool hygiene


def reaped(summary: dict[str, Any]) -> dict[str, str]:
    return {d["instance_id"]: d["reason"] for d in summary["decisions"] if d["action"] == "terminated"}


def test_stale_pool_instances_are_retired_after_a_new_template_version(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = stack.queue(X86, warm_pool_size=2)
    pooled = fill(stack, buildkite, monkeypatch, queue)
    assert reaped(reap(monkeypatch, queue)) == {}

    stack.ec2.create_launch_template_version(
        LaunchTemplateId=stack.templates["x86_64"], LaunchTemplateData={"ImageId": "ami-87654321"}
    )
    summary = reap(monkeypatch, queue)

    assert reaped(summary) == dict.fromkeys(pooled, "pool-stale")
    assert pool_members(stack, "stopped") == []


def test_surplus_old_and_failed_pool_instances_are_retired(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = stack.queue(X86, warm_pool_size=3)
    pooled = fill(stack, buildkite, monkeypatch, queue)
    failed_start = pooled[0]
    stack.ec2.create_tags(Resources=[failed_start], Tags=[{"Key": BOOTSTRAP, "Value": "pending"}])

    with freeze_time(datetime.now(UTC) + timedelta(minutes=5)):
        summary = reap(monkeypatch, {**queue, "warm_pool_size": 1})

    reasons = reaped(summary)
    assert reasons.pop(failed_start) == "pool-start-failed"
    assert sorted(reasons.values()) == ["pool-surplus"]  # two healthy left, one kept
    assert len(pool_members(stack, "stopped")) == 1

    with freeze_time(datetime.now(UTC) + timedelta(days=8)):
        assert list(reaped(reap(monkeypatch, {**queue, "warm_pool_size": 1})).values()) == ["pool-old"]


def test_the_reaper_never_touches_a_running_or_completed_pool_instance(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = stack.queue(X86, warm_pool_size=2)
    first, second = fill(stack, buildkite, monkeypatch, queue)
    stack.ec2.start_instances(InstanceIds=[first])
    now = datetime.now(UTC).isoformat()
    stack.ec2.create_tags(Resources=[first], Tags=[{"Key": BOOTSTRAP, "Value": "complete"}])
    stack.ec2.create_tags(
        Resources=[second],
        Tags=[{"Key": BOOTSTRAP, "Value": "complete"}, {"Key": "buildkite-autoscaler:ready-at", "Value": now}],
    )

    assert reaped(reap(monkeypatch, {**queue, "warm_pool_size": 0})) == {}
    assert len(pool_members(stack)) == 2


def test_a_started_pool_instance_is_timed_from_its_start(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = stack.queue(X86, warm_pool_size=1)
    with freeze_time(datetime.now(UTC) - timedelta(hours=3)):
        (pooled,) = fill(stack, buildkite, monkeypatch, queue)
    buildkite.serve_metrics({X86: {"scheduled": 5}})
    invoke(monkeypatch, buildkite, queue)  # starts it now

    assert pooled not in reaped(reap(monkeypatch, queue))
    with freeze_time(datetime.now(UTC) + timedelta(minutes=21)):
        assert reaped(reap(monkeypatch, queue))[pooled] == "stuck"


def test_floor_instances_a_schedule_launched_recycle_when_it_ends(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    buildkite.serve_metrics({})
    with freeze_time("2026-03-30 16:00:00"):  # 18:00 in Berlin, an hour before the office closes
        invoke(monkeypatch, buildkite, stack.queue(X86, schedules=[{**OFFICE, "warm_pool_size": 0}]))

    floors = [i for i in instances(stack) if tags_of(i)["buildkite-autoscaler:role"] == "floor"]
    assert len(floors) == 2
    for instance in floors:
        files = yaml.safe_load(gzip.decompress(user_data_of(stack, instance["InstanceId"])))["write_files"]
        (settings,) = [f["content"] for f in files if f["path"] == "/etc/buildkite-bootstrap/settings.env"]
        assert "BK_MAX_UPTIME_SECONDS=3600\n" in settings


def test_a_spot_queue_fills_its_pool_on_demand(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A one-time spot instance cannot be stopped.
    buildkite.serve_metrics({})

    invoke(monkeypatch, buildkite, stack.queue(X86, warm_pool_size=2, capacity_type="spot"))

    assert len(pool_members(stack)) == 2
    assert stack.behaviour.run_calls
    assert all("InstanceMarketOptions" not in call for call in stack.behaviour.run_calls)
    assert {tags_of(i)["buildkite-autoscaler:market"] for i in pool_members(stack)} == {"on-demand"}
