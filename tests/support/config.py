"""The scaler's configuration as tests write it: a queue, the environment around it, a schedule."""

from __future__ import annotations

import json
from typing import Any

from autoscaler.config import ScalerSettings

QUEUE = {
    "name": "nixos-x86-aws",
    "architecture": "x86_64",
    "launch_template_id": "lt-0123",
    "instance_types": ["c7i.4xlarge"],
    "subnet_ids": ["subnet-1"],
    "max_instances": 4,
}
ENV = {
    "AWS_REGION": "eu-west-1",
    "FLEET_NAME": "ci",
    "BUILDKITE_AGENT_TOKEN_PARAMETER": "/bk/token",
    "SSH_KEY_PARAMETER": "/bk/ssh",
    "NIX_SIGNING_KEY_PARAMETER": "/bk/nix",
    "NIX_CACHE_BUCKET": "cache",
    "NIX_CACHE_PUBLIC_KEY": "cache-1:abc=",
}


def settings(queues: Any = None, **env: str) -> ScalerSettings:
    text = queues if isinstance(queues, str) else json.dumps(queues or [QUEUE])
    return ScalerSettings.from_env({**ENV, "QUEUES": text, **env})


OFFICE = {
    "name": "office",
    "days": ["mon", "tue", "wed", "thu", "fri"],
    "start": "08:00",
    "end": "19:00",
    "time_zone": "Europe/Berlin",
    "min_instances": 2,
    "warm_pool_size": 3,
}
