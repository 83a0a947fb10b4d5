"""The moto account's names and the scaler's environment in it: the region, fleet and agent token
the `stack` fixture creates, a queue of that stack, and the EMF records the Lambdas print."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from emulators import aws

REGION = "us-east-1"
FLEET = "test-fleet"
# Distinctive, so a test can prove it never reaches any output.
FAKE_TOKEN = "bkt_FAKEtokenTHATmustNEVERbeLOGGED0123456789"
TOKEN_PARAMETER = "/buildkite/agent-token"


def emf_records(output: str) -> list[dict[str, Any]]:
    """EMF records printed to stdout, each metric summed over its values."""
    records = []
    for line in output.splitlines():
        if line.startswith('{"_aws"'):
            record = json.loads(line)
            (directive,) = record["_aws"]["CloudWatchMetrics"]
            for metric in directive["Metrics"]:
                # Powertools writes each metric's values as a list.
                record[metric["Name"]] = sum(record[metric["Name"]])
            records.append(record)
    return records


@dataclass
class Stack(aws.Stack):
    def queue(self, name: str, **overrides: Any) -> dict[str, Any]:
        arm = "arm" in name
        architecture = "arm64" if arm else "x86_64"
        config = {
            "name": name,
            "architecture": architecture,
            "launch_template_id": self.templates[architecture],
            "instance_types": ["m7g.2xlarge", "c7g.2xlarge"] if arm else ["c7i.4xlarge", "m7i.4xlarge"],
            "subnet_ids": self.subnets,
            "min_instances": 0,
            "max_instances": 10,
            "agents_per_instance": 5,
        }
        return {**config, **overrides}


def scaler_env(endpoint: str, queues: list[dict[str, Any]], **extra: str) -> dict[str, str]:
    return {
        "FLEET_NAME": FLEET,
        "QUEUES": json.dumps(queues),
        "BUILDKITE_AGENT_TOKEN_PARAMETER": TOKEN_PARAMETER,
        "BUILDKITE_AGENT_ENDPOINT": endpoint,
        "SSH_KEY_PARAMETER": "/buildkite/ssh-deploy-key",
        "NIX_SIGNING_KEY_PARAMETER": "/buildkite/nix-cache-signing-key",
        "NIX_CACHE_BUCKET": "test-nix-cache",
        "NIX_CACHE_PUBLIC_KEY": "test-cache-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        **extra,
    }
