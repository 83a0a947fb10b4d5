"""A poll within its time, and launches measured by the demand they leave unmet.

Faults are injected at the AWS client (botocore event hooks); EC2 itself is moto.
A simulated clock, advanced by the hooks as a timed-out attempt would advance
real time, gives the time left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError
from tests.support.aws import FLEET, REGION, Stack, emf_records

from autoscaler import scaler
from autoscaler.buildkite import CONNECT_TIMEOUT, READ_TIMEOUT, MetricsSnapshot
from autoscaler.config import QueueConfig, ScalerSettings, UserDataSettings
from autoscaler.fleet import AWS_CONFIG, EC2_ATTEMPTS, EC2_CALL_SECONDS, EC2_CONNECT_TIMEOUT, EC2_READ_TIMEOUT, Ec2Fleet
from autoscaler.launching import NO_TIME_LEFT
from autoscaler.planner import QueueMetrics
from autoscaler.scaling import Scaler

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
X86, ARM = "nixos-x86-aws", "nixos-arm-aws"
ATTEMPT_SECONDS = EC2_CONNECT_TIMEOUT + EC2_READ_TIMEOUT


class Demand:
    """The metrics API's answer: this many scheduled jobs per queue."""

    def __init__(self, **scheduled: int) -> None:
        self._scheduled = scheduled

    def fetch(self, queues: Iterable[str]) -> MetricsSnapshot:
        return MetricsSnapshot({name: QueueMetrics(scheduled=self._scheduled.get(name, 0)) for name in queues})


def make_scaler(stack: Stack, demand: Demand, queues: list[dict[str, Any]]) -> Scaler:
    settings = ScalerSettings(
        fleet_name=FLEET,
        queues=tuple(QueueConfig(**{**q, "subnet_ids": tuple(q["subnet_ids"])}) for q in queues),
        agent_token_parameter="/bk/token",
        endpoint="https://agent.buildkite.com/v3",
        bootstrap_timeout_seconds=1200,
        ready_grace_seconds=60,
        dry_run=False,
        user_data=UserDataSettings(
            REGION,
            "cache",
            REGION,
            "c-1:k=",
            agent_token_parameter="/bk/token",
            ssh_key_parameter="/bk/ssh",
            signing_key_parameter="/bk/nix",
        ),
    )
    # The product's adapter with the product's client settings; moto answers the calls.
    return Scaler(settings, demand, Ec2Fleet.connect(FLEET), lambda queue, role: b"#cloud-config\n")


def queue(stack: Stack, name: str, **overrides: Any) -> dict[str, Any]:
    config = stack.queue(name, **overrides)
    config["instance_types"] = tuple(config["instance_types"])
    return config


def timeout(**_: Any) -> None:
    raise ReadTimeoutError(endpoint_url=f"https://ec2.{REGION}.amazonaws.com/")


def shortfall_metric(output: str) -> float:
    """The fleet-wide LaunchShortfall the alarm watches (no record at all when zero)."""
    return sum(record["LaunchShortfall"] for record in emf_records(output) if "LaunchShortfall" in record)


def launch_errors(lines: list[dict[str, Any]], queue_name: str) -> int:
    """Refused attempts, as the queue's decision log line lists them."""
    decisions = [line for line in lines if line["message"] == "scaling decision" and line["queue"] == queue_name]
    return sum(len(line["failures"]) for line in decisions)


# ----------------------------------------------------------------- one call's worst case


def test_one_ec2_call_that_times_out_makes_the_configured_attempts_within_its_worst_case(stack: Stack) -> None:
    ec2 = boto3.client("ec2", region_name=REGION, config=AWS_CONFIG)
    attempts: list[float] = []
    ec2.meta.events.register("before-send.ec2.DescribeInstances", lambda **kw: attempts.append(time.monotonic()))
    ec2.meta.events.register("before-send.ec2.DescribeInstances", timeout)
    started = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        ec2.describe_instances()
    backoff = time.monotonic() - started  # the timeouts themselves are simulated: only botocore's waits are real
    assert len(attempts) == EC2_ATTEMPTS == 2
    assert len(attempts) * ATTEMPT_SECONDS + backoff <= EC2_CALL_SECONDS == 11.0
    assert (AWS_CONFIG.connect_timeout, AWS_CONFIG.read_timeout) == (EC2_CONNECT_TIMEOUT, EC2_READ_TIMEOUT)


def test_a_throttled_call_is_retried_within_the_same_budget(stack: Stack) -> None:
    ec2 = boto3.client("ec2", region_name=REGION, config=AWS_CONFIG)
    attempts: list[float] = []
    body = (
        b"<Response><Errors><Error><Code>RequestLimitExceeded</Code>"
        b"<Message>slow down</Message></Error></Errors></Response>"
    )

    def throttled(**_: Any) -> AWSResponse:
        attempts.append(time.monotonic())
        return AWSResponse(f"https://ec2.{REGION}.amazonaws.com/", 503, {}, _Raw(body))

    ec2.meta.events.register("before-send.ec2.DescribeInstances", throttled)
    started = time.monotonic()
    with pytest.raises(ec2.exceptions.ClientError, match="RequestLimitExceeded"):
        ec2.describe_instances()
    assert len(attempts) == EC2_ATTEMPTS
    # botocore's throttling backoff before the retry: at most 2**0 s, the budget's share for it
    # (what the call's worst case leaves after its attempts), give or take a loaded machine's
    # scheduling; measured between the attempts, so the client's own setup does not count.
    backoff_share = EC2_CALL_SECONDS - EC2_ATTEMPTS * ATTEMPT_SECONDS
    assert attempts[-1] - attempts[0] <= backoff_share + 0.25
    assert time.monotonic() - started < EC2_CALL_SECONDS


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterable[bytes]:
        yield self._body


def test_the_last_poll_has_time_for_a_launch_when_the_metrics_and_listing_answer_promptly() -> None:
    # The last poll starts with SAFETY_SECONDS left; the metrics call's own bound always fits.
    assert CONNECT_TIMEOUT + READ_TIMEOUT < scaler.SAFETY_SECONDS
    assert EC2_CALL_SECONDS + scaler.WRAP_UP_SECONDS <= scaler.SAFETY_SECONDS - 2  # 2 s for both answers


# ----------------------------------------------------------------- the poll's deadline


class SimulatedTime:
    """Time left in the invocation; EC2 attempts that time out spend it."""

    def __init__(self, left: float) -> None:
        self.left = left
        self.calls: list[str] = []

    def time_left(self) -> float:
        return self.left

    def call_started(self, model: Any, **_: Any) -> None:
        self.calls.append(model.name)

    def attempt_timed_out(self, **_: Any) -> None:
        self.left -= ATTEMPT_SECONDS
        timeout()


def test_a_poll_never_starts_a_launch_the_time_left_cannot_finish(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = SimulatedTime(left=scaler.SAFETY_SECONDS - scaler.WRAP_UP_SECONDS)
    events = boto3.DEFAULT_SESSION.events
    events.register("before-call.ec2.RunInstances", clock.call_started)
    events.register("before-send.ec2.RunInstances", clock.attempt_timed_out)
    poller = make_scaler(stack, Demand(**{X86: 5, ARM: 10}), [queue(stack, X86), queue(stack, ARM)])

    result = poller.poll(NOW, dry_run=False, time_left=clock.time_left)

    # The first RunInstances timed out on both attempts (10 s); the 4 s left could not
    # finish another, so none was started: the poll ends in time.
    assert clock.calls == ["RunInstances"]
    assert clock.left >= 0
    x86, arm = result.queues[X86], result.queues[ARM]
    assert (x86.shortfall, arm.shortfall) == (1, 2)
    assert [failure.code for failure in arm.failures] == [NO_TIME_LEFT]
    assert shortfall_metric(capsys.readouterr().out) == 3


def test_a_poll_without_time_for_the_listing_launches_nothing(stack: Stack) -> None:
    poller = make_scaler(stack, Demand(**{X86: 5}), [queue(stack, X86)])
    result = poller.poll(NOW, dry_run=False, time_left=lambda: EC2_CALL_SECONDS - 0.5)
    assert result.ok
    assert result.queues == {}
    assert "DescribeInstances" not in stack.behaviour.operations


def test_fallbacks_stop_when_the_time_left_cannot_finish_another_call(stack: Stack) -> None:
    stack.behaviour.no_capacity = {("c7i.4xlarge", None), ("m7i.4xlarge", None)}
    clock = SimulatedTime(left=EC2_CALL_SECONDS + 3)
    calls: list[float] = []

    def slow_refusal(**_: Any) -> None:
        # Seen before the stack's capacity refusal (raised at parameter build); each takes 2 s.
        calls.append(clock.left)
        clock.left -= 2

    boto3.DEFAULT_SESSION.events.register("provide-client-params.ec2.RunInstances", slow_refusal)
    poller = make_scaler(stack, Demand(**{X86: 5}), [queue(stack, X86)])
    result = poller.poll(NOW, dry_run=False, time_left=clock.time_left)
    # 14 s left: the first type (12 s left after), then the second (10 s left after), then no more.
    assert calls == [EC2_CALL_SECONDS + 3, EC2_CALL_SECONDS + 1]
    assert [failure.code for failure in result.queues[X86].failures][-1] == NO_TIME_LEFT
    assert result.queues[X86].shortfall == 1


# ----------------------------------------------------------------- unmet demand, not fallbacks


def test_a_fallback_that_succeeds_is_a_launch_error_but_no_shortfall(
    stack: Stack, capsys: pytest.CaptureFixture[str], logs: Callable[[], list[dict[str, Any]]]
) -> None:
    stack.behaviour.no_capacity = {("c7i.4xlarge", None)}
    poller = make_scaler(stack, Demand(**{X86: 10}), [queue(stack, X86)])
    result = poller.poll(NOW, dry_run=False)
    output = capsys.readouterr().out
    assert len(result.queues[X86].instance_ids) == 2
    assert (launch_errors(logs(), X86), shortfall_metric(output)) == (1, 0)


def test_a_partial_launch_completed_elsewhere_is_no_shortfall(
    stack: Stack, capsys: pytest.CaptureFixture[str], logs: Callable[[], list[dict[str, Any]]]
) -> None:
    stack.behaviour.full_launches = False  # EC2 starts MinCount=1 of the 2 asked
    poller = make_scaler(stack, Demand(**{X86: 10}), [queue(stack, X86)])
    result = poller.poll(NOW, dry_run=False)
    output = capsys.readouterr().out
    assert len(result.queues[X86].instance_ids) == 2
    assert launch_errors(logs(), X86) == 1  # the partial launch
    assert shortfall_metric(output) == 0


def test_demand_no_type_or_subnet_could_start_is_the_shortfall(
    stack: Stack, capsys: pytest.CaptureFixture[str], logs: Callable[[], list[dict[str, Any]]]
) -> None:
    stack.behaviour.no_capacity = {("c7i.4xlarge", None), ("m7i.4xlarge", None)}
    poller = make_scaler(stack, Demand(**{X86: 15}), [queue(stack, X86)])
    result = poller.poll(NOW, dry_run=False)
    output = capsys.readouterr().out
    assert result.queues[X86].instance_ids == []
    assert launch_errors(logs(), X86) == 4  # two types in each of two subnets
    assert shortfall_metric(output) == 3
