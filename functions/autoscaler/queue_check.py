"""Deploy-time check of the stack's queue list: a CloudFormation custom resource.

CloudFormation Rules cannot parse JSON, so the stack hands this function the
scaler's own queue settings (`QUEUES`, `LAUNCH_TEMPLATES`, `SUBNET_IDS`, as the
resource's properties) and it parses them with the scaler's configuration code.
A list the scaler would refuse fails the deploy, which CloudFormation rolls
back, with the configuration error's message, instead of failing every scaler
run after it. The answer goes to the pre-signed `ResponseURL` (the cfn-response
protocol); a delete always succeeds, so a stack can always be deleted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from autoscaler.cfn_response import respond
from autoscaler.config import ConfigError, launch_templates_from_env, queue_where, queues_from_env

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
    log.info(json.dumps({"request": event.get("RequestType"), "status": status, "reason": reason}))
    respond(event, status, reason)
