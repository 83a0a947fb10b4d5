"""A failed bake is seen: the template's EventBridge rule and queue, in moto's EventBridge
(its pattern matching and its delivery to SQS), fed events shaped as Image Builder sends them."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from moto import mock_aws
from tests.support.template import ACCOUNT, REGION, STACK, Resolver, parameter_values
from tools.invoke import load_template


def image_state_change(status: str, recipe: str) -> dict[str, Any]:
    """An "EC2 Image Builder Image State Change" event (EventBridge reference for Image Builder)."""
    return {
        "version": "0",
        "id": "8a6c0a43-5f56-4b2b-9c43-3d2f0f1f4c1a",
        "detail-type": "EC2 Image Builder Image State Change",
        "source": "aws.imagebuilder",
        "account": ACCOUNT,
        "time": "2026-12-07T04:41:12Z",
        "region": REGION,
        "resources": [f"arn:aws:imagebuilder:{REGION}:{ACCOUNT}:image/{recipe}/1.0.0/7"],
        "detail": {
            "previous-state": {"status": "BUILDING"},
            "state": {"status": status, "reason": "Step Install failed: exit status 1"},
        },
    }


@pytest.fixture(scope="module")
def pattern() -> str:
    template = load_template()
    resolver = Resolver(template, parameter_values(template))
    rule = template["Resources"]["ImageBakeFailed"]["Properties"]
    return json.dumps(resolver.resolve(rule["EventPattern"]))


CASES = {
    "the x86_64 bake failed": (image_state_change("FAILED", f"{STACK}-x86_64"), True),
    "the arm64 bake failed": (image_state_change("FAILED", f"{STACK}-arm64"), True),
    # Image Builder lower-cases the recipe's name in the ARN; the stack's name may have capitals.
    "a bake of a capitalised stack failed": (image_state_change("FAILED", f"{STACK}-X86_64".lower()), True),
    "a bake succeeded": (image_state_change("AVAILABLE", f"{STACK}-x86_64"), False),
    "a bake is building": (image_state_change("BUILDING", f"{STACK}-arm64"), False),
    "another stack's bake failed": (image_state_change("FAILED", "other-x86_64"), False),
    "a bake of a stack named after this one failed": (image_state_change("FAILED", f"{STACK}-two-x86_64"), False),
}


def delivered(pattern: str, event: dict[str, Any]) -> list[dict[str, Any]]:
    """The events a rule with this pattern delivers to its queue after EventBridge gets `event`."""
    sqs = boto3.client("sqs", region_name=REGION)
    events = boto3.client("events", region_name=REGION)
    queue_url = sqs.create_queue(QueueName="bake-failures")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="bake-failed", EventPattern=pattern)
    events.put_targets(Rule="bake-failed", Targets=[{"Id": "failures", "Arn": queue_arn}])
    entry = {
        "Source": event["source"],
        "DetailType": event["detail-type"],
        "Resources": event["resources"],
        "Detail": json.dumps(event["detail"]),
    }
    assert events.put_events(Entries=[entry])["FailedEntryCount"] == 0
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(message["Body"]) for message in messages]


@mock_aws
@pytest.mark.parametrize("name", CASES)
def test_only_this_stacks_failed_bakes_reach_the_failures_queue(pattern: str, name: str) -> None:
    event, expected = CASES[name]
    got = delivered(pattern, event)
    assert [message["detail"]["state"] for message in got] == ([event["detail"]["state"]] if expected else [])


def test_the_rule_delivers_to_the_queue_the_alarm_watches() -> None:
    resources = load_template()["Resources"]
    (target,) = resources["ImageBakeFailed"]["Properties"]["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["ImageBakeFailures", "Arn"]}
    alarm = resources["ImageBakeFailedAlarm"]["Properties"]
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["ImageBakeFailures", "QueueName"]}}]
    (statement,) = resources["ImageBakeFailuresPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["ImageBakeFailed", "Arn"]}}}
