"""IAM judged on behaviour: requests as EC2, SSM and the other services make them, and an evaluator
(@cloud-copilot/iam-simulate, in tools/iam-simulate) that gives each the verdict AWS would."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.support.template import ACCOUNT, FLEET, REGION, STACK, Resolver, parameter_values, statements
from tools.invoke import load_template

from autoscaler.lifecycle import BOOTSTRAP_TAG, FLEET_TAG, QUEUE_TAG, ROLE_TAG

SIMULATOR = Path(__file__).resolve().parent.parent.parent / "tools" / "iam-simulate"
ALLOWED, DENIED, EXPLICITLY_DENIED = "Allowed", "ImplicitlyDenied", "ExplicitlyDenied"

SELF = "i-0aaaaaaaaaaaaaaa1"
PEER = "i-0bbbbbbbbbbbbbbb2"
EC2 = f"arn:aws:ec2:{REGION}:{ACCOUNT}"
# Tags an instance of this fleet carries while it boots.
BOOTING = {FLEET_TAG: FLEET, QUEUE_TAG: "nixos-x86-aws", ROLE_TAG: "burst", BOOTSTRAP_TAG: "pending"}


@dataclass(frozen=True)
class Request:
    action: str
    resource: str
    context: Mapping[str, Any] = field(default_factory=dict)
    # The resource's own policy where the service requires one (a KMS key's).
    resource_policy: Mapping[str, Any] | None = None


def instance(instance_id: str) -> str:
    return f"{EC2}:instance/{instance_id}"


def resource_tags(tags: Mapping[str, str]) -> dict[str, str]:
    return {f"aws:ResourceTag/{key}": value for key, value in tags.items()}


def request_tags(tags: Mapping[str, str]) -> dict[str, Any]:
    return {**{f"aws:RequestTag/{key}": value for key, value in tags.items()}, "aws:TagKeys": list(tags)}


def self_tag(target: str, tags: Mapping[str, str], target_tags: Mapping[str, str] = BOOTING, caller: str = SELF):
    """CreateTags signed with the role credentials of instance `caller`, on instance `target`."""
    context = {**resource_tags(target_tags), **request_tags(tags), "ec2:InstanceID": target}
    if caller:
        context["ec2:SourceInstanceARN"] = instance(caller)
    return Request("ec2:CreateTags", instance(target), context)


def terminate(tags: Mapping[str, str], action: str = "ec2:TerminateInstances") -> Request:
    return Request(action, instance(PEER), {**resource_tags(tags), "ec2:InstanceID": PEER})


# ----------------------------------------------------------------- the evaluator


def evaluate(policy: Mapping[str, Any], principal: str, requests: list[Request]) -> list[str]:
    node = shutil.which("node")
    assert node, "node is needed for the IAM evaluator"
    assert (SIMULATOR / "node_modules").is_dir(), "run `make iam-simulate` to install the IAM evaluator"
    payload = {
        "policies": [policy],
        "requests": [
            {
                "action": r.action,
                "resource": r.resource,
                "account": ACCOUNT,
                "principal": principal,
                "context": dict(r.context),
                **({"resourcePolicy": r.resource_policy} if r.resource_policy else {}),
            }
            for r in requests
        ],
    }
    done = subprocess.run(
        [node, "simulate.mjs"], cwd=SIMULATOR, input=json.dumps(payload), capture_output=True, text=True, check=True
    )
    results = json.loads(done.stdout)
    for request, result in zip(requests, results, strict=True):
        # A request the evaluator cannot judge, or whose context keys it drops as not
        # applying to the action, would make the verdict meaningless.
        assert result["result"] in (ALLOWED, DENIED, EXPLICITLY_DENIED), (request, result)
        assert result["ignoredContextKeys"] == [], (request, result)
    return [result["result"] for result in results]


@pytest.fixture(scope="module")
def resolver() -> Resolver:
    template = load_template()
    return Resolver(template, parameter_values(template))


def policy_of(resolver: Resolver, role: str) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": statements(resolver.template, resolver, role)}


def principal_of(role: str, session: str) -> str:
    return f"arn:aws:sts::{ACCOUNT}:assumed-role/{STACK}-{role}/{session}"


def check(resolver: Resolver, role: str, session: str, cases: Mapping[str, tuple[Request, str]]) -> None:
    requests = [request for request, _ in cases.values()]
    verdicts = evaluate(policy_of(resolver, role), principal_of(role, session), requests)
    got = dict(zip(cases, verdicts, strict=True))
    assert got == {name: expected for name, (_, expected) in cases.items()}


def secret(name: str) -> str:
    return f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{name}"
