"""A warm pool filled on moto: the scaler launches its instances, and each parks (tags pooled, stops)
with the EC2 calls its scripts make."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from emulators.buildkite import FakeBuildkite
from tests.support.aws import Stack, scaler_env
from tests.support.lambda_context import LambdaContext
from tests.support.scaler import tags_of

from autoscaler import scaler

EVENTS = Path(__file__).parent.parent.parent / "events"
BOOTSTRAP = "buildkite-autoscaler:bootstrap"


def invoke(monkeypatch: pytest.MonkeyPatch, buildkite: FakeBuildkite, queue: dict[str, Any]) -> dict[str, Any]:
    for key, value in scaler_env(buildkite.endpoint, [queue]).items():
        monkeypatch.setenv(key, value)
    # 20 s: one poll, with time for its EC2 calls (as tests/test_scaler_handler.py).
    context = LambdaContext(20.0)
    return scaler.handler(json.loads((EVENTS / "scaler-scheduled.json").read_text()), context, clock=context.clock)


def instances(stack: Stack, *states: str) -> list[dict[str, Any]]:
    pages = stack.ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": "instance-state-name", "Values": list(states or ("pending", "running", "stopped"))}]
    )
    return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]


def pool_members(stack: Stack, *states: str) -> list[dict[str, Any]]:
    return [i for i in instances(stack, *states) if tags_of(i).get("buildkite-autoscaler:role") == "pool"]


def park(stack: Stack, instance_ids: list[str]) -> None:
    """What `buildkite-bootstrap park` (or `release`) does: tag pooled, stop itself."""
    stack.ec2.create_tags(Resources=instance_ids, Tags=[{"Key": BOOTSTRAP, "Value": "pooled"}])
    stack.ec2.stop_instances(InstanceIds=instance_ids)


def fill(stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch, queue: dict[str, Any]) -> list[str]:
    buildkite.serve_metrics({})
    invoke(monkeypatch, buildkite, queue)
    ids = [i["InstanceId"] for i in pool_members(stack)]
    park(stack, ids)
    stack.behaviour.operations.clear()
    stack.behaviour.run_calls.clear()
    return ids
