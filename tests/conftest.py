"""Shared fixtures: a moto AWS account with the stack's resources, and the fake Buildkite API."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aws_lambda_powertools.utilities import parameters
from emulators import aws
from emulators.buildkite import FakeBuildkite
from moto import mock_aws
from tests.support.custom_resource import ResponseBucket

from autoscaler.telemetry import logger

REGION = "us-east-1"
FLEET = "test-fleet"
# Distinctive, so a test can prove it never reaches any output.
FAKE_TOKEN = "bkt_FAKEtokenTHATmustNEVERbeLOGGED0123456789"
TOKEN_PARAMETER = "/buildkite/agent-token"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "POWERTOOLS_METRICS_NAMESPACE": "BuildkiteAutoscaler",
    }.items():
        monkeypatch.setenv(key, value)
    parameters.clear_caches()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Callable[[], list[dict[str, Any]]]:
    """The Lambdas' log lines as they write them: Powertools' JSON."""
    caplog.set_level(logging.INFO, logger=logger.name)

    def lines() -> list[dict[str, Any]]:
        return [
            json.loads(logger.registered_formatter.format(record))
            for record in caplog.records
            if record.name == logger.name
        ]

    return lines


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


@pytest.fixture
def buildkite() -> Iterator[FakeBuildkite]:
    fake = FakeBuildkite().start()
    yield fake
    fake.stop()


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


@pytest.fixture
def stack() -> Iterator[Stack]:
    with mock_aws():
        created = aws.create_stack(REGION, TOKEN_PARAMETER, FAKE_TOKEN)
        yield Stack(**vars(created))


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


@pytest.fixture
def bucket() -> Iterator[ResponseBucket]:
    """A custom resource's ResponseURL, on loopback."""
    server = ResponseBucket()
    yield server
    server.stop()
