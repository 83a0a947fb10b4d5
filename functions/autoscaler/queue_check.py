"""Deploy-time check of the stack's queue list: a CloudFormation custom resource.

CloudFormation Rules cannot parse JSON, so the stack hands this function the
scaler's own queue settings (`QUEUES`, `LAUNCH_TEMPLATES`, `SUBNET_IDS`, as the
resource's properties) and it parses them with the scaler's configuration code.
A list the scaler would refuse fails the deploy, which CloudFormation rolls
back, with the configuration error's message, instead of failing every scaler
run after it. The answer goes to the pre-signed `ResponseURL` (the cfn-response
protocol); a delete always succeeds, so a stack can always be deleted.

It also keeps one Buildkite stack (Stacks API) per queue, for the scaler's
observe mode: registered on create and update when the agent token is a
cluster token, deregistered when a queue leaves the list or the stack is
deleted. Registering can fail (the organisation's stack quota, an outage);
the deploy goes on, and the scaler counts its listing errors until a later
deploy registers the stack. The token is read from SSM, never logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from autoscaler.buildkite import Secret
from autoscaler.cfn_response import respond
from autoscaler.config import (
    DEFAULT_ENDPOINT,
    ConfigError,
    QueueConfig,
    launch_templates_from_env,
    queue_where,
    queues_from_env,
)
from autoscaler.stacks import StacksClient, StacksError, scope_of, stack_key

log = logging.getLogger(__name__)
log.setLevel(logging.INFO)


def check(properties: Mapping[str, str]) -> None:
    """Raise ConfigError if the scaler would refuse these settings or could not launch with them."""
    queues = queues_from_env(properties)
    # The scaler's role may launch only through the stack's launch templates.
    own = set(launch_templates_from_env(properties).values())
    for index, queue in enumerate(queues):
        if queue.launch_template_id not in own:
            raise ConfigError(
                f"{queue_where(index, queue.name)}.launch_template_id must be left out: the stack launches only "
                f"through its own launch templates, chosen by architecture (got {queue.launch_template_id!r})"
            )


def handler(event: dict[str, Any], context: Any) -> None:
    status, reason = "SUCCESS", ""
    if event.get("RequestType") != "Delete":
        try:
            check(event.get("ResourceProperties") or {})
        except ConfigError as error:
            status, reason = "FAILED", f"Queues parameter: {error}"
        # Unanswered, CloudFormation would wait for the resource's ServiceTimeout: answer every failure.
        except Exception as error:
            log.exception("queue check crashed")
            status, reason = "FAILED", f"queue check crashed: {type(error).__name__}: {error}"
    if status == "SUCCESS":
        _keep_stacks(event)
    log.info(json.dumps({"request": event.get("RequestType"), "status": status, "reason": reason}))
    respond(event, status, reason)


def stack_keys(properties: Mapping[str, str], stack_id: str) -> dict[str, str]:
    """Stack key → queue for these properties; none without the fleet and token settings."""
    if not properties.get("FLEET_NAME") or not properties.get("BUILDKITE_AGENT_TOKEN_PARAMETER"):
        return {}
    account, region = scope_of(stack_id)
    queues: tuple[QueueConfig, ...] = queues_from_env(properties)
    return {stack_key(properties["FLEET_NAME"], queue.name, account, region): queue.name for queue in queues}


def _keep_stacks(event: Mapping[str, Any]) -> None:
    """Register the stacks of the new list, deregister those it no longer has; never fails the deploy."""
    try:
        wanted, old = _wanted_and_old(event)
        gone = [key for key in old if key not in wanted]
        if not wanted and not gone:
            return
        current = event.get("ResourceProperties") or {}
        properties = current if current.get("BUILDKITE_AGENT_TOKEN_PARAMETER") else event["OldResourceProperties"]
        client = _client(properties)
        if not client.cluster():
            log.info("the agent token is not a cluster token: no Buildkite stacks registered")
            return
        for key, queue in wanted.items():
            client.register(key, queue, {"fleet": properties["FLEET_NAME"], "stack": str(event.get("StackId"))[:256]})
            log.info(json.dumps({"registered": key, "queue": queue}))
        for key in gone:
            client.deregister(key)
            log.info(json.dumps({"deregistered": key}))
    except (StacksError, ClientError, BotoCoreError, ConfigError, ValueError, KeyError) as error:
        log.warning(json.dumps({"stacks": "not kept; the scaler scales on the metrics", "error": str(error)}))


def _wanted_and_old(event: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    stack_id = str(event.get("StackId", ""))
    current = stack_keys(event.get("ResourceProperties") or {}, stack_id)
    if event.get("RequestType") == "Delete":
        return {}, current
    return current, stack_keys(event.get("OldResourceProperties") or {}, stack_id)


def _client(properties: Mapping[str, str]) -> StacksClient:
    name = properties["BUILDKITE_AGENT_TOKEN_PARAMETER"]
    token = Secret(boto3.client("ssm").get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])
    return StacksClient(properties.get("BUILDKITE_AGENT_ENDPOINT") or DEFAULT_ENDPOINT, lambda: token)
