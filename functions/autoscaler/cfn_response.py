"""The answer of a CloudFormation custom resource: a PUT to the request's pre-signed ResponseURL
(the cfn-response protocol). Unanswered, CloudFormation waits for the resource's ServiceTimeout."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import requests

RESPONSE_TIMEOUT_SECONDS = 10
# CloudFormation shows the reason in the stack's events; the whole response must stay under 4 KB.
REASON_LIMIT = 1000


def respond(event: Mapping[str, Any], status: str, reason: str, physical_id: str = "") -> None:
    body = {
        "Status": status,
        "Reason": reason[:REASON_LIMIT] or status,
        "PhysicalResourceId": physical_id or event.get("PhysicalResourceId") or event["LogicalResourceId"],
        "StackId": event["StackId"],
        "RequestId": event["RequestId"],
        "LogicalResourceId": event["LogicalResourceId"],
        "Data": {},
    }
    # The URL is pre-signed for a PUT without a content type: any other would break the signature.
    response = requests.put(
        event["ResponseURL"],
        data=json.dumps(body).encode(),
        headers={"Content-Type": ""},
        timeout=RESPONSE_TIMEOUT_SECONDS,
    )
    response.raise_for_status()
