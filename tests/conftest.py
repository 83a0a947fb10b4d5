"""Shared fixtures: a moto AWS account with the stack's resources, and the fake Buildkite API."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import freezegun
import pytest
from aws_lambda_powertools.utilities import parameters
from emulators import aws
from emulators.buildkite import FakeBuildkite
from moto import mock_aws
from tests.support.aws import FAKE_TOKEN, REGION, TOKEN_PARAMETER, Stack
from tests.support.custom_resource import ResponseBucket

from autoscaler.telemetry import logger


def pytest_configure() -> None:
    """pytest times each test with _pytest.timing's clock, which freezegun would freeze too
    (its own ignore list names only _pytest.runner and _pytest.terminal): --durations then
    reports the frozen tests' setup as decades long."""
    freezegun.configure(extend_ignore_list=["_pytest.timing"])


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


@pytest.fixture
def buildkite() -> Iterator[FakeBuildkite]:
    fake = FakeBuildkite().start()
    yield fake
    fake.stop()


@pytest.fixture
def stack() -> Iterator[Stack]:
    with mock_aws():
        created = aws.create_stack(REGION, TOKEN_PARAMETER, FAKE_TOKEN)
        yield Stack(**vars(created))


@pytest.fixture
def bucket() -> Iterator[ResponseBucket]:
    """A custom resource's ResponseURL, on loopback."""
    server = ResponseBucket()
    yield server
    server.stop()
