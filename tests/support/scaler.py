"""The scaler Lambda run in tests: one invocation against the fake Buildkite API, and what it launched."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from emulators.buildkite import FakeBuildkite
from tests.support.aws import Stack, scaler_env
from tests.support.lambda_context import LambdaContext

from autoscaler import scaler

X86 = "nixos-x86-aws"
ARM = "nixos-arm-aws"
EVENTS = Path(__file__).parent.parent.parent / "events"


def invoke(
    monkeypatch: pytest.MonkeyPatch,
    buildkite: FakeBuildkite,
    queues: list[dict[str, Any]],
    event: str = "scaler-scheduled.json",
    budget: float = 20.0,
    context: LambdaContext | None = None,
    **env: str,
) -> dict[str, Any]:
    """One invocation; a 20 s budget leaves room for exactly one poll, with time for its EC2 calls."""
    for key, value in scaler_env(buildkite.endpoint, queues, **env).items():
        monkeypatch.setenv(key, value)
    context = context or LambdaContext(budget)
    return scaler.handler(json.loads((EVENTS / event).read_text()), context, clock=context.clock)


def fleet_instances(stack: Stack) -> list[dict[str, Any]]:
    pages = stack.ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    )
    return [instance for page in pages for r in page["Reservations"] for instance in r["Instances"]]


def tags_of(instance: dict[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}


def by_queue(stack: Stack, queue: str) -> list[dict[str, Any]]:
    return [i for i in fleet_instances(stack) if tags_of(i).get("buildkite-autoscaler:queue") == queue]


def user_data_of(stack: Stack, instance_id: str) -> bytes:
    value = stack.ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")["UserData"]["Value"]
    return base64.b64decode(value)
